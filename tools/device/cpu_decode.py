"""CPU decode baseline for the NVDEC benchmark, on the same GPU machine: libavcodec's H.264
decoder (PyAV, installed from a wheel carried in .device-nvdec) on all cores, the same
Annex-B clip. Also checks that NVDEC's frames 0 and 100 (dumped by aegis-cuda-bench as NV12)
equal the CPU decoder's (H.264 decoding is exact). Usage: cpu_decode.py CLIP DUMP_DIR OUT.json"""
import json
import os
import sys
import time

sys.path.insert(0, os.environ.get("PYAV_DIR", "/tmp/pyav"))
import av  # noqa: E402
import numpy as np  # noqa: E402

clip, dump, out = sys.argv[1], sys.argv[2], sys.argv[3]


def decode(keep=(), threads=None):
    c = av.open(clip, format="h264")
    s = c.streams.video[0]
    s.thread_type = "AUTO"
    s.codec_context.thread_count = threads or os.cpu_count()
    kept, n = {}, 0
    t0 = time.perf_counter()
    for f in c.decode(s):
        if n in keep:
            kept[n] = [np.asarray(p).copy() for p in (f.to_ndarray(format="yuv420p"),)]
        n += 1
    return n, time.perf_counter() - t0, kept


decode()  # warm-up (page cache, thread start)
n, secs, _ = decode()
_, secs1, _ = decode(threads=1)
_, _, kept = decode(keep=(0, 100))
result = {"frames": n, "cpu_decode_fps": n / secs, "threads": os.cpu_count(),
          "cpu_decode_fps_1_thread": n / secs1, "pyav": av.__version__}
for k, planes in kept.items():
    yuv = planes[0]  # (h*3/2, w) yuv420p
    h = yuv.shape[0] * 2 // 3
    w = yuv.shape[1]
    y = yuv[:h]
    u = yuv[h : h + h // 4].reshape(h // 2, w // 2)
    v = yuv[h + h // 4 :].reshape(h // 2, w // 2)
    path = os.path.join(dump, f"nvdec-{k}.nv12")
    if os.path.exists(path):
        nv = np.fromfile(path, dtype=np.uint8)
        ny = nv[: w * h].reshape(h, w)
        uv = nv[w * h :].reshape(h // 2, w // 2, 2)
        diff = int((ny != y).sum() + (uv[..., 0] != u).sum() + (uv[..., 1] != v).sum())
        result[f"frame{k}_bytes_differing"] = diff
print(json.dumps(result))
with open(out, "w") as f:
    json.dump(result, f)
