#!/usr/bin/env python3
"""Reference outputs of the Python implementations, for the Rust model tests.

    reference.py seg OUT [--onnx MODEL.onnx] PHOTO.png...
    reference.py nudenet OUT PHOTO.png...

seg: for each photo, OUT/<stem>.256.png (the photo resized to 256x256, RGB8, cv2 INTER_AREA),
OUT/<stem>.mask.f32 (MediaPipe's selfie mask of that 256x256 image: 256*256 little-endian
float32, row-major) and OUT/<stem>.full.f32 (MediaPipe's mask of the full-size photo,
width*height float32), plus OUT/seg.json {"images":[{stem, photo, width, height}]}. Then checks
the converted ONNX model (if given and present) against the 256x256 masks: max abs diff <= 1e-3.
MediaPipe on a 256x256 image is the raw model on u8/255 input (its resize is the identity).

nudenet: OUT/nudenet.json {"images":[{photo, detections:[{class, score, box:[x,y,w,h]}]}]} from
nudenet.NudeDetector() (the default 320n model).

Runs in .tools/ref-venv (tools/models/reference.sh builds it).
"""
import json
import os
import sys
import types

import cv2
import numpy as np

TOL = 1e-3


def stub_matplotlib():
    """mediapipe.solutions imports matplotlib.pyplot for its landmark plotting only, which
    nothing here uses: a stub saves installing matplotlib and its dependencies."""
    try:
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        mpl, plt = types.ModuleType("matplotlib"), types.ModuleType("matplotlib.pyplot")
        mpl.pyplot = plt
        sys.modules.update({"matplotlib": mpl, "matplotlib.pyplot": plt})


def read_rgb(path):
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)  # 8-bit, 3 channels (alpha dropped)
    if bgr is None:
        raise SystemExit(f"cannot read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def mediapipe_mask(rgb):
    """MediaPipe's selfie mask; a fresh graph per image (no state from a previous frame)."""
    import mediapipe as mp
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        mask = seg.process(rgb).segmentation_mask
    assert mask.shape == rgb.shape[:2] and mask.dtype == np.float32
    return mask


def mediapipe_like_full(session, rgb):
    """What MediaPipe does around the model on a full-size photo (CPU graph): a perspective
    warp mapping the image corners to the tensor corners (bilinear, no half-pixel offset, no
    antialiasing), and cv2.resize (bilinear, half-pixel) of the 256x256 mask back."""
    h, w = rgb.shape[:2]
    src = np.float32([[0, h], [0, 0], [w, 0], [w, h]])
    dst = np.float32([[0, 256], [0, 0], [256, 0], [256, 256]])
    small = cv2.warpPerspective(rgb, cv2.getPerspectiveTransform(src, dst), (256, 256),
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    mask = run_onnx(session, small[None])[0]
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)


def run_onnx(session, batch_u8):
    """ONNX model on NHWC u8 RGB images -> [N,256,256] masks (input NCHW, u8/255)."""
    x = np.ascontiguousarray(batch_u8.transpose(0, 3, 1, 2), np.float32) / np.float32(255)
    return session.run(["mask"], {"input": x})[0][:, 0]


def seg(out, photos, onnx_path):
    stub_matplotlib()
    images, smalls, masks, fulls = [], [], [], []
    for photo in photos:
        stem = os.path.splitext(os.path.basename(photo))[0]
        rgb = read_rgb(photo)
        small = cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_AREA)
        cv2.imwrite(os.path.join(out, f"{stem}.256.png"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        mask = mediapipe_mask(small)
        mask.astype("<f4").tofile(os.path.join(out, f"{stem}.mask.f32"))
        full = mediapipe_mask(rgb)
        full.astype("<f4").tofile(os.path.join(out, f"{stem}.full.f32"))
        h, w = rgb.shape[:2]
        images.append({"stem": stem, "photo": photo, "width": w, "height": h})
        smalls.append(small), masks.append(mask), fulls.append((rgb, full))
        print(f"seg: {stem} {w}x{h}: person pixels (>0.5) {float((mask > 0.5).mean()):.3f} "
              f"at 256, {float((full > 0.5).mean()):.3f} full size")
    with open(os.path.join(out, "seg.json"), "w") as f:
        json.dump({"images": images}, f, indent=1)

    if not onnx_path or not os.path.exists(onnx_path):
        print(f"seg: no ONNX model at {onnx_path!r}: comparison skipped")
        return
    import onnxruntime as ort
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = run_onnx(session, np.stack(smalls))  # one batch: exercises the dynamic batch dim
    worst = 0.0
    for img, small, ref, g, (rgb, full) in zip(images, smalls, masks, got, fulls):
        d = float(np.abs(g - ref).max())
        d1 = float(np.abs(run_onnx(session, small[None])[0] - ref).max())
        df = float(np.abs(mediapipe_like_full(session, rgb) - full).max())
        worst = max(worst, d, d1)
        print(f"seg: {img['stem']}: ONNX vs MediaPipe max abs diff {d:.2e} (batch), {d1:.2e} "
              f"(alone); full size via warp+resize emulation {df:.2e}")
    if worst > TOL:
        raise SystemExit(f"seg: ONNX model differs from MediaPipe by {worst:.2e} > {TOL}")
    print(f"seg: ONNX matches MediaPipe on {len(images)} photos (max abs diff {worst:.2e})")


def nudenet(out, photos):
    from nudenet import NudeDetector
    detector = NudeDetector()
    images = []
    for photo in photos:
        dets = detector.detect(photo)
        images.append({"photo": photo, "detections": [
            {"class": d["class"], "score": float(d["score"]), "box": [int(v) for v in d["box"]]}
            for d in dets]})
        print(f"nudenet: {os.path.basename(photo)}: " +
              (", ".join(f"{d['class']} {d['score']:.2f}" for d in dets) or "nothing"))
    with open(os.path.join(out, "nudenet.json"), "w") as f:
        json.dump({"images": images}, f, indent=1)


def main():
    args = sys.argv[1:]
    if len(args) < 3 or args[0] not in ("seg", "nudenet"):
        raise SystemExit(__doc__)
    cmd, out, rest = args[0], args[1], args[2:]
    onnx_path = None
    if cmd == "seg" and rest[:1] == ["--onnx"]:
        onnx_path, rest = rest[1], rest[2:]
    os.makedirs(out, exist_ok=True)
    seg(out, rest, onnx_path) if cmd == "seg" else nudenet(out, rest)


if __name__ == "__main__":
    main()
