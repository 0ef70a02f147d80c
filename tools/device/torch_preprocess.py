"""The model preprocess of aegis-cuda-bench in PyTorch eager on the same GPU (the baseline
the issue names): NV12 1080p (uint8 on the device) -> BT.601 limited-range RGB float 0..1
-> bilinear resize to 256x256 (corner-aligned, like Fit::Stretch) -> planar. Prints and
writes {"preprocess_us": ...} (mean over back-to-back runs, CUDA events)."""
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


for _ in range(10):
    preprocess(nv12)
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(RUNS):
    out = preprocess(nv12)
end.record()
torch.cuda.synchronize()
us = start.elapsed_time(end) * 1000.0 / RUNS
print(f"PyTorch {torch.__version__} eager preprocess on {torch.cuda.get_device_name()}: {us:.1f} us/frame")
if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        json.dump({"preprocess_us": us, "torch": torch.__version__, "gpu": torch.cuda.get_device_name()}, f)
