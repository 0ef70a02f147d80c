#!/usr/bin/env bash
# Builds a small, ABI-compatible stand-in for Debian 12's FFmpeg 5.1 shared libraries, so
# the `aegis` binary built here (linked against libavcodec.so.59 & co. from the Debian
# packages 7:5.1.9-0+deb12u1) runs on a machine without libav (the GPU test machine,
# Ubuntu 24.04) with LD_LIBRARY_PATH=<dir>. Debian's own libs pull in ~250 MB of
# dependencies; this build needs only glibc, libgcc_s, libz and (for SRT) libstdc++ and the
# GnuTLS stack that Ubuntu's base image ships anyway (apt links GnuTLS).
#
#   tools/device/build-ffmpeg-min.sh [OUT_DIR]      (default: .device-libav in the repo root)
#
# Steps: 1. fetch Debian's FFmpeg source (apt-get source, cached under $FFMIN_CACHE),
#        2. configure + build a minimal shared FFmpeg with Debian's sonames and symbol
#           versions (LIBAVCODEC_59 ...), install the libs (stripped, real files named by
#           soname, no symlinks) + libx264.so.164 (+ libsrt) into OUT_DIR,
#        3. verify the `aegis` binary resolves every libav lib to OUT_DIR,
#        4. smoke-test: aegis --help/version, an encode (aegis sample) and a decode+encode
#           (aegis run: file → overlay → MP4 recording), then the aegis-hal tests.
#
# Environment:
#   AEGIS_BIN       the agent binary to check (default $CARGO_TARGET_DIR/release/aegis; never rebuilt)
#   FFMIN_CACHE     source/build cache (default ~/.cache/aegis-ffmpeg-min)
#   FFMIN_SRT=0     leave out SRT (libsrt; default on: the agent accepts srt:// sources)
#   FFMIN_TESTS=0   skip building/running the aegis-hal tests (step 4b)
#   FFMIN_HAL_SRC   tree the hal tests are built from (default: `git archive HEAD` of this
#                   repo into the cache, so half-edited work trees do not break the build)
#   FFMIN_TEST_TARGET  cargo target dir for the hal tests (default $FFMIN_CACHE/target)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${1:-$REPO/.device-libav}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
AEGIS_BIN=${AEGIS_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/aegis}
CACHE=${FFMIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aegis-ffmpeg-min}
SRT=${FFMIN_SRT:-1}
TESTS=${FFMIN_TESTS:-1}
TEST_TARGET=${FFMIN_TEST_TARGET:-$CACHE/target}
DEB_VERSION=7:5.1.9-0+deb12u1   # must match the libavcodec59 the binary was linked against
UPSTREAM=5.1.9
JOBS=$(nproc)
LIBDIR=/usr/lib/x86_64-linux-gnu
mkdir -p "$CACHE"

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo

# ---------------------------------------------------------------------------------------
# 0. Build dependencies (Debian packages): nasm for the x86 SIMD (decode speed), x264 and
#    optionally libsrt headers, zlib (png decoder, compressed mov headers), pkg-config.
# ---------------------------------------------------------------------------------------
need=(nasm pkg-config libx264-dev zlib1g-dev dpkg-dev xz-utils)
[ "$SRT" = 1 ] && need+=(libsrt-gnutls-dev)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

# ---------------------------------------------------------------------------------------
# 1. Source: Debian's ffmpeg source package (upstream 5.1.9 + Debian's patches). A private
#    deb-src list in the cache is used, so the system's apt sources stay untouched.
# ---------------------------------------------------------------------------------------
SRC=$CACHE/src/ffmpeg-$UPSTREAM
if [ ! -x "$SRC/configure" ]; then
    log "fetching ffmpeg $DEB_VERSION source via apt-get source"
    APTDIR=$CACHE/apt
    mkdir -p "$APTDIR/sources.list.d" "$APTDIR/lists/partial" "$CACHE/src"
    cat > "$APTDIR/sources.list.d/deb-src.sources" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    APTO=(-o Dir::Etc::SourceList=/dev/null
          -o "Dir::Etc::SourceParts=$APTDIR/sources.list.d"
          -o "Dir::State::Lists=$APTDIR/lists")
    apt-get "${APTO[@]}" update
    (cd "$CACHE/src" && apt-get "${APTO[@]}" source "ffmpeg=$DEB_VERSION")
    [ -x "$SRC/configure" ] || die "apt-get source did not produce $SRC"
fi

# ---------------------------------------------------------------------------------------
# 2. Configure + build. --disable-everything drops every component, --disable-autodetect
#    every external library (X11, VA-API, ALSA, ... and also pthreads and zlib, which are
#    switched back on explicitly); then only what the agent and its tests use comes back.
#    Sonames (libavcodec.so.59 ...) and symbol versions (LIBAVCODEC_59 ...) come from the
#    5.1 sources' defaults, which is what Debian ships too.
# ---------------------------------------------------------------------------------------
list() { local kind=$1; shift; local x; for x in "$@"; do printf -- '--enable-%s=%s ' "$kind" "$x"; done; }
# shellcheck disable=SC2207  # list() prints one flag per word: splitting is intended.
CONF=(
    --prefix=/usr --libdir=/usr/lib
    --extra-version=0+deb12u1-aegis-min
    --enable-shared --disable-static --enable-pic
    --disable-programs --disable-doc --disable-debug
    --disable-autodetect --disable-everything
    --enable-gpl --enable-libx264 --enable-pthreads --enable-zlib
    --enable-avdevice --enable-avfilter --enable-swscale --enable-swresample --disable-postproc
    # The public av_fft_*/av_mdct_*/av_rdft_*/av_dct_* API (avfft.h), so libavcodec exports
    # what Debian's does (only av_vdpau_* stays missing: it needs libvdpau).
    --enable-fft --enable-mdct --enable-rdft --enable-dct
    # Decoders: what cameras/clips carry (H.264/HEVC/MJPEG/MPEG-4 Part 2), PNG, raw (V4L2 YUYV).
    $(list decoder h264 hevc mjpeg png rawvideo mpeg4)
    # Encoders: H.264 (recordings), MJPEG (snapshots), raw.
    $(list encoder libx264 mjpeg rawvideo)
    $(list parser h264 hevc mjpeg mpeg4video)
    # Demuxers: files (MP4/MKV/elementary streams/images), RTSP/RTP/SDP, RTMP (FLV),
    # SRT (MPEG-TS). rtsp pulls in rtpdec, asf/rm/mpegts/mov and the http protocol.
    $(list demuxer mov matroska h264 hevc rtsp rtp sdp mjpeg image2 rawvideo flv mpegts)
    $(list muxer mp4 mov matroska rtp rtsp h264)
    $(list protocol file rtp tcp udp pipe http rtmp)
    $(list bsf h264_mp4toannexb hevc_mp4toannexb extract_extradata)
    $(list indev v4l2)
    $(list filter null format scale)   # + buffer/buffersink, always built
)
[ "$SRT" = 1 ] && CONF+=(--enable-libsrt --enable-protocol=libsrt)

# One build dir per configuration, so changing the flags never reuses stale objects.
KEY=$(printf '%s\n' "${CONF[@]}" | sha256sum | cut -c1-12)
BUILD=$CACHE/build-$KEY
STAGE=$BUILD/stage
mkdir -p "$BUILD"
if [ ! -f "$BUILD/.configured" ]; then
    log "configuring in $BUILD"
    (cd "$BUILD" && "$SRC/configure" "${CONF[@]}") > "$BUILD/configure.log" 2>&1 \
        || { tail -30 "$BUILD/configure.log"; die "configure failed (see $BUILD/configure.log)"; }
    touch "$BUILD/.configured"
fi
log "building with -j$JOBS (log: $BUILD/make.log)"
make -C "$BUILD" -j"$JOBS" > "$BUILD/make.log" 2>&1 \
    || { tail -30 "$BUILD/make.log"; die "make failed (see $BUILD/make.log)"; }
rm -rf "$STAGE"
make -C "$BUILD" install DESTDIR="$STAGE" > "$BUILD/install.log" 2>&1

# Install: each library as a real file named by its soname (no symlinks: copy tools and
# the device transfer drop them), stripped. Old files in OUT are replaced.
log "installing into $OUT"
rm -f "$OUT"/lib*.so*
for f in "$STAGE"/usr/lib/lib*.so.*.*.*; do
    soname=$(readelf -d "$f" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
    install -m 0644 "$f" "$OUT/$soname"
done
# The external codec/protocol libraries libavcodec/libavformat now need, from Debian.
install -m 0644 "$(readlink -f $LIBDIR/libx264.so.164)" "$OUT/libx264.so.164"
[ "$SRT" = 1 ] && install -m 0644 "$(readlink -f $LIBDIR/libsrt-gnutls.so.1.5)" "$OUT/libsrt-gnutls.so.1.5"
strip --strip-unneeded "$OUT"/lib*.so*

# ---------------------------------------------------------------------------------------
# 3. Verify: the binary's libav* / libsw* / libx264 resolve to OUT, nothing is missing,
#    every versioned libav symbol the binary imports is defined there.
# ---------------------------------------------------------------------------------------
log "ldd $AEGIS_BIN with LD_LIBRARY_PATH=$OUT"
[ -x "$AEGIS_BIN" ] || die "$AEGIS_BIN not found (build it with cargo build --release -p aegis-agent)"
LDD=$(LD_LIBRARY_PATH=$OUT ldd "$AEGIS_BIN")
echo "$LDD"
fail=0
if grep -q 'not found' <<<"$LDD"; then echo "FAIL: unresolved libraries"; fail=1; fi
while read -r name _ path _; do
    case $path in "$OUT"/*) ;; *) echo "FAIL: $name resolves to $path, not $OUT"; fail=1 ;; esac
done < <(grep -E '^\s*lib(av|sw|postproc|x264|srt)' <<<"$LDD")

# Symbols: every name@LIBAV*/LIBSW* the binary imports must be defined in our libs.
imports=$(nm -D --undefined-only "$AEGIS_BIN" | awk '{print $2}' | grep -E '@LIB(AV|SW)' | sort -u)
exports=$(for f in "$OUT"/lib{av,sw}*.so.*; do nm -D --defined-only --with-symbol-versions "$f" | awk '{print $3}'; done \
          | sed 's/@@/@/' | sort -u)
miss=$(comm -23 <(echo "$imports") <(echo "$exports"))
if [ -n "$miss" ]; then echo "FAIL: symbols missing:"; echo "$miss"; fail=1; fi
echo "imported libav symbols: $(wc -l <<<"$imports"), all defined: $([ -z "$miss" ] && echo yes || echo no)"
# Informational: public API Debian's libs export that ours lack (none expected: the
# exported API does not depend on the enabled components).
for f in "$OUT"/lib{av,sw}*.so.*; do
    sys=$LIBDIR/$(basename "$f")
    [ -e "$sys" ] || continue
    n=$(comm -23 <(nm -D --defined-only "$sys" | awk '{print $3}' | sort -u) \
                 <(nm -D --defined-only "$f" | awk '{print $3}' | sort -u) | grep -vc '^avpriv_' || true)
    echo "$(basename "$f"): public symbols of Debian's build missing here: $n"
done

log "contents of $OUT"
ls -l "$OUT"
echo "total: $(du -sb "$OUT" | cut -f1) bytes ($(du -sh "$OUT" | cut -f1))"

# Every library still taken from the system (for OUT's libs and the binary), minus glibc.
log "non-glibc libraries still needed from the system"
for f in "$AEGIS_BIN" "$OUT"/lib*.so*; do LD_LIBRARY_PATH=$OUT ldd "$f"; done \
    | awk '$2 == "=>" {print $1, $3}' | grep -v " $OUT/" \
    | grep -vE '^(libc|libm|libdl|libpthread|librt|libresolv|libutil)\.so|^ld-linux|^linux-vdso' \
    | sort -u | sed 's/^/  /'
[ "$fail" = 0 ] || die "verification failed"

# ---------------------------------------------------------------------------------------
# 4. Smoke tests with OUT's libraries (LD_BIND_NOW: unresolved symbols fail at start).
# ---------------------------------------------------------------------------------------
run_min() { LD_BIND_NOW=1 LD_LIBRARY_PATH=$OUT "$@"; }
SMOKE=$(mktemp -d /tmp/ffmin-smoke.XXXXXX)
trap 'rm -rf "$SMOKE"' EXIT

log "aegis --help / version"
run_min "$AEGIS_BIN" --help > /dev/null && echo "--help: ok"
run_min "$AEGIS_BIN" version

log "encode: aegis sample (synthetic scene → libx264 → MP4)"
run_min "$AEGIS_BIN" sample --out "$SMOKE/clip.mp4" --width 640 --height 360 --seconds 3

log "decode + encode: aegis run (clip → decode → overlay → MP4 recording)"
cat > "$SMOKE/run.yaml" <<EOF
device: { id: ffmin-smoke }
backend: { kind: cpu }
pipeline:
  sources:
    - { id: cam0, url: "file:$SMOKE/clip.mp4", loop: false }
  stages:
    - kind: timestamp_overlay
  sinks:
    - { kind: record, dir: "$SMOKE/rec", segment_seconds: 2, disk_budget_mb: 64 }
fleet: { enabled: false }
store: { path: "$SMOKE/aegis.db" }
web: { listen: "127.0.0.1:0" }
EOF
run_min "$AEGIS_BIN" run --config "$SMOKE/run.yaml" 2>&1 | grep -v '^\s*$' | tail -4
segs=("$SMOKE"/rec/cam0/*.mp4)
[ -e "${segs[0]}" ] || die "no recording written"
# Check the recordings with the system's ffprobe when there is one (system libs, not OUT's).
frames=0
for s in "${segs[@]}"; do
    if command -v ffprobe > /dev/null; then
        n=$(ffprobe -v error -select_streams v:0 -count_frames -show_entries stream=nb_read_frames -of csv=p=0 "$s")
    else
        n='?'
    fi
    echo "  $(basename "$s"): $(stat -c %s "$s") bytes, $n frames"
    [ "$n" = '?' ] || frames=$((frames + n))
done
command -v ffprobe > /dev/null && { [ "$frames" = 90 ] || die "recordings hold $frames frames, want 90"; }
echo "decode+encode: ok"

# ---------------------------------------------------------------------------------------
# 4b. The aegis-hal tests (unit + integration binaries) against OUT's libraries. They are
#     built (against the system's libav, as the agent is) in a separate target dir, from
#     a `git archive HEAD` snapshot unless FFMIN_HAL_SRC names a tree. Tests spawn the
#     ffmpeg/ffprobe CLI and a GStreamer RTSP server; those must keep the system libs, so
#     they run through wrappers that drop LD_LIBRARY_PATH. (On the GPU machine, without
#     the CLI, the tests that need it skip themselves.)
# ---------------------------------------------------------------------------------------
[ "$TESTS" = 1 ] || exit 0
HAL_SRC=${FFMIN_HAL_SRC:-}
if [ -z "$HAL_SRC" ]; then
    HAL_SRC=$CACHE/hal-src
    rm -rf "$HAL_SRC" && mkdir -p "$HAL_SRC"
    git -C "$REPO" archive HEAD | tar -x -C "$HAL_SRC"
fi
log "building aegis-hal tests from $HAL_SRC into $TEST_TARGET"
tests=$(cd "$HAL_SRC" && CARGO_TARGET_DIR=$TEST_TARGET cargo test -p aegis-hal --no-run --message-format=json 2>"$CACHE/hal-build.log" \
        | python3 -c 'import json,sys
for l in sys.stdin:
    try: m = json.loads(l)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])') || { tail -20 "$CACHE/hal-build.log"; die "building the hal tests failed"; }

WRAP=$SMOKE/bin
mkdir -p "$WRAP"
for tool in ffmpeg ffprobe; do
    real=$(command -v "$tool" || true)
    [ -n "$real" ] || continue
    printf '#!/bin/sh\nunset LD_LIBRARY_PATH\nexec %s "$@"\n' "$real" > "$WRAP/$tool"
    chmod +x "$WRAP/$tool"
done

log "running the aegis-hal tests with LD_LIBRARY_PATH=$OUT"
total_pass=0 total_fail=0 total_ign=0 failed_bins=()
for t in $tests; do
    name=$(basename "$t")
    # (The RTSP tests start /usr/bin/python3 + GStreamer by absolute path, so it inherits
    # LD_LIBRARY_PATH; harmless: it only demuxes and payloads, no libav plugin involved.)
    # Run from HAL_SRC/hal, cargo test's working directory for this crate.
    out=$(cd "$HAL_SRC/hal" && PATH=$WRAP:$PATH LD_LIBRARY_PATH=$OUT "$t" 2>&1) && rc=0 || rc=$?
    line=$(grep -E '^test result:' <<<"$out" | tail -1)
    p=$(sed -n 's/.* \([0-9]*\) passed.*/\1/p' <<<"$line"); f=$(sed -n 's/.* \([0-9]*\) failed.*/\1/p' <<<"$line")
    i=$(sed -n 's/.* \([0-9]*\) ignored.*/\1/p' <<<"$line")
    total_pass=$((total_pass + ${p:-0})); total_fail=$((total_fail + ${f:-0})); total_ign=$((total_ign + ${i:-0}))
    printf '  %-40s rc=%s %s\n' "$name" "$rc" "${line:-(no result line)}"
    if [ "$rc" != 0 ]; then
        failed_bins+=("$name")
        grep -E '^(---- |thread .* panicked|  left|  right|failures:)' -A3 <<<"$out" | head -40 | sed 's/^/      /'
    fi
done
echo "hal tests: $total_pass passed, $total_fail failed, $total_ign ignored"
[ ${#failed_bins[@]} -eq 0 ] || die "failing test binaries: ${failed_bins[*]}"
