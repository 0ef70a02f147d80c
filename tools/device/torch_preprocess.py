"""The model preprocess of aegis-cuda-bench in PyTorch eager on the same GPU (the baseline
the issue names): NV12 1080p (uint8 on the device) -> BT.601 limited-range RGB float 0..1
-> bilinear resize to 256x256 (corner-aligned, like Fit::Stretch) -> planar. Prints and
writes {"eager_us": [...], "graph_us": [...]}: eager and captured in a CUDA graph, each the
mean over back-to-back runs by CUDA events, five times."""
import json
import sys

import torch
import torch.nn.functional as F

W, H, S, RUNS = 1920, 1080, 256, 200
dev = torch.device("cuda")
nv12 = (torch.arange(W * H * 3 // 2, device=dev) * 7 % 251).to(torch.uint8)


def preprocess(buf):
    y = buf[: W * H].view(H, W).float()
    uv = buf[W * H :].view(H // 2, W // 2, 2).float()
    u = uv[..., 0].repeat_interleave(2, 0).repeat_interleave(2, 1)
    v = uv[..., 1].repeat_interleave(2, 0).repeat_interleave(2, 1)
    y = (y - 16.0) * (255.0 / 219.0)
    u = (u - 128.0) * (255.0 / 224.0)
    v = (v - 128.0) * (255.0 / 224.0)
    r = y + 1.402 * v
    g = y - 0.344136 * u - 0.714136 * v
    b = y + 1.772 * u
    rgb = (torch.stack([r, g, b]) / 255.0).clamp(0.0, 1.0)
    return F.interpolate(rgb[None], size=(S, S), mode="bilinear", align_corners=True)[0]


REPS = 5


def timed(fn):
    """Mean microseconds per call of `fn` over RUNS back-to-back calls, by CUDA events."""
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(RUNS):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000.0 / RUNS


# The same code captured in a CUDA graph (static input and output), replayed: what PyTorch
# gives without its per-op launch overhead.
side = torch.cuda.Stream()
side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side):
    for _ in range(3):
        preprocess(nv12)
torch.cuda.current_stream().wait_stream(side)
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    static_out = preprocess(nv12)
eager, graphed = [], []
for _ in range(REPS):
    eager.append(timed(lambda: preprocess(nv12)))
    graphed.append(timed(graph.replay))
# The graph computes what eager does.
assert torch.equal(static_out, preprocess(nv12))
name = torch.cuda.get_device_name()
print(f"PyTorch {torch.__version__} preprocess on {name}, us/frame over {REPS} runs:")
print(f"  eager {min(eager):.1f}-{max(eager):.1f}, CUDA graph {min(graphed):.1f}-{max(graphed):.1f}")
if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        json.dump({"eager_us": eager, "graph_us": graphed, "torch": torch.__version__, "gpu": name}, f)
