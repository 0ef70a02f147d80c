"""CPU decode baseline for the NVDEC benchmark, on the same GPU machine: libavcodec's H.264
decoder (PyAV, installed from a wheel carried in .device-nvdec) on all cores, the same
Annex-B clip. Also CHECKS that NVDEC decoded exactly what libavcodec decodes: H.264's decoding
process is exact (integer arithmetic the standard fixes bit for bit), so every picture must be
identical. aegis-cuda-bench --dump writes the SHA-256 of every NVDEC picture as packed NV12
(nvdec-frames.sha256, display order) and frames 0 and 100 as raw NV12; this script hashes
libavcodec's pictures the same way. Exits 1 when the frame counts differ, any picture
differs, or NVDEC's hashes are missing. Usage: cpu_decode.py CLIP DUMP_DIR OUT.json"""
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.environ.get("PYAV_DIR", "/tmp/pyav"))
import av  # noqa: E402
import numpy as np  # noqa: E402

clip, dump, out = sys.argv[1], sys.argv[2], sys.argv[3]


def nv12(frame):
    """A yuv420p picture as packed NV12 bytes (luma, then interleaved CbCr), and its size."""
    yuv = frame.to_ndarray(format="yuv420p")  # (h*3/2, w): Y, then U and V planes
    h = yuv.shape[0] * 2 // 3
    w = yuv.shape[1]
    y = yuv[:h]
    u = yuv[h : h + h // 4].reshape(h // 2, w // 2)
    v = yuv[h + h // 4 :].reshape(h // 2, w // 2)
    return y.tobytes() + np.stack([u, v], axis=-1).tobytes(), w, h


def decode(threads=None, check=False):
    c = av.open(clip, format="h264")
    s = c.streams.video[0]
    s.thread_type = "AUTO"
    s.codec_context.thread_count = threads or os.cpu_count()
    hashes, raw, n = [], {}, 0
    t0 = time.perf_counter()
    for f in c.decode(s):
        if check:
            data, w, h = nv12(f)
            hashes.append(hashlib.sha256(data).hexdigest())
            if n in (0, 100):
                raw[n] = (data, w, h)
        n += 1
    return n, time.perf_counter() - t0, hashes, raw


decode()  # warm-up (page cache, thread start)
n, secs, _, _ = decode()
_, secs1, _, _ = decode(threads=1)
_, _, cpu_hashes, cpu_raw = decode(check=True)
result = {"frames": n, "cpu_decode_fps": n / secs, "threads": os.cpu_count(),
          "cpu_decode_fps_1_thread": n / secs1, "pyav": av.__version__}

problems = []
hash_file = os.path.join(dump, "nvdec-frames.sha256")
if not os.path.exists(hash_file):
    problems.append(f"{hash_file} is missing: aegis-cuda-bench --dump did not write it")
    nv_hashes = []
else:
    with open(hash_file) as f:
        nv_hashes = f.read().split()
if nv_hashes and len(nv_hashes) != len(cpu_hashes):
    problems.append(f"NVDEC gave {len(nv_hashes)} pictures, libavcodec {len(cpu_hashes)}")
differing = [i for i, (a, b) in enumerate(zip(nv_hashes, cpu_hashes)) if a != b]
if differing:
    problems.append(f"{len(differing)} pictures differ, first {differing[:10]}")
result["frames_compared"] = min(len(nv_hashes), len(cpu_hashes))
result["frames_differing"] = len(differing)
# Where raw frames were dumped, say how many bytes differ (a diagnosis, not the check).
for k, (data, w, h) in cpu_raw.items():
    path = os.path.join(dump, f"nvdec-{k}.nv12")
    if os.path.exists(path):
        nv = np.fromfile(path, dtype=np.uint8)
        cpu = np.frombuffer(data, dtype=np.uint8)
        result[f"frame{k}_bytes_differing"] = (
            int((nv != cpu).sum()) if nv.size == cpu.size else f"size {nv.size} vs {cpu.size}")
print(json.dumps(result))
with open(out, "w") as f:
    json.dump(result, f)
if problems:
    for p in problems:
        print(f"NVDEC vs libavcodec: {p}", file=sys.stderr)
    sys.exit(1)
print(f"NVDEC vs libavcodec: all {result['frames_compared']} pictures identical")
