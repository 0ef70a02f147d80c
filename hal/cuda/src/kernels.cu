// Aegis Edge CUDA kernels, compiled at start-up with NVRTC (--fmad=false so float results
// match the CPU implementations bit for bit). Every kernel mirrors a CPU function; the
// comment above each names it and the device tests compare against its output.
//
// Frames are NV12 in pitched device memory: luma rows of `pitch` bytes, then h/2 rows of
// interleaved CbCr at `uv` (also `pitch` bytes per row).
//
// The BT.601 coefficients, offsets and rounding (BT601_*) are not written here: aegis-cuda
// prepends them as #defines generated from the aegis-bt601 crate, the one copy the CPU
// kernels use too (a test fails if a literal copy appears in this file).

typedef unsigned char u8;
typedef unsigned int u32;
typedef long long i64;

// --- NV12 -> planar RGB float, corner-aligned bilinear stretch -------------------------
// Mirrors aegis_models::preprocess::planar with Fit::Stretch, ChannelOrder::Rgb.

__device__ __forceinline__ void yuv_to_rgb01(u8 y8, u8 u8v, u8 v8v, float* r, float* g, float* b) {
    float y = ((float)y8 - BT601_F_Y_MIN) * BT601_F_Y_SCALE;
    float u = ((float)u8v - BT601_F_C_ZERO) * BT601_F_C_SCALE;
    float v = ((float)v8v - BT601_F_C_ZERO) * BT601_F_C_SCALE;
    float rr = y + BT601_F_RV * v;
    float gg = y - BT601_F_GU * u - BT601_F_GV * v;
    float bb = y + BT601_F_BU * u;
    *r = fminf(fmaxf(rr / 255.0f, 0.0f), 1.0f);
    *g = fminf(fmaxf(gg / 255.0f, 0.0f), 1.0f);
    *b = fminf(fmaxf(bb / 255.0f, 0.0f), 1.0f);
}

__device__ __forceinline__ void px_rgb(const u8* y, const u8* uv, int pitch, int x, int yy,
                                       float* r, float* g, float* b) {
    u8 l = y[(size_t)yy * pitch + x];
    size_t c = (size_t)(yy >> 1) * pitch + 2 * (x >> 1);
    yuv_to_rgb01(l, uv[c], uv[c + 1], r, g, b);
}

extern "C" __global__ void nv12_to_rgb_planar_stretch(
    const u8* __restrict__ y, const u8* __restrict__ uv, int pitch, int w, int h,
    float* __restrict__ out, int ow, int oh)
{
    int dx = blockIdx.x * blockDim.x + threadIdx.x;
    int dy = blockIdx.y * blockDim.y + threadIdx.y;
    if (dx >= ow || dy >= oh) return;
    double rx = (double)w / (double)ow, ry = (double)h / (double)oh;
    double sx = (double)dx * rx, sy = (double)dy * ry;
    int x0 = min((int)floor(sx), w - 1), x1 = min(x0 + 1, w - 1);
    int y0 = min((int)floor(sy), h - 1), y1 = min(y0 + 1, h - 1);
    float fx = (float)(sx - floor(sx)), fy = (float)(sy - floor(sy));
    float a[3], b[3], c[3], d[3];
    px_rgb(y, uv, pitch, x0, y0, &a[0], &a[1], &a[2]);
    px_rgb(y, uv, pitch, x1, y0, &b[0], &b[1], &b[2]);
    px_rgb(y, uv, pitch, x0, y1, &c[0], &c[1], &c[2]);
    px_rgb(y, uv, pitch, x1, y1, &d[0], &d[1], &d[2]);
    int plane = ow * oh, i = dy * ow + dx;
    for (int ch = 0; ch < 3; ch++) {
        float top = a[ch] + (b[ch] - a[ch]) * fx;
        float bottom = c[ch] + (d[ch] - c[ch]) * fx;
        out[ch * plane + i] = top + (bottom - top) * fy;
    }
}

// --- NV12 -> planar float, letterboxed (half-pixel centres) --------------------------------
// Mirrors aegis_models::preprocess::planar with Fit::PadBottomRight (NudeNet: BGR, pad 0,
// samples clamp at the padded square's edge) and Fit::Centred (Ultralytics: RGB, grey pad).
// `rx`/`ry` = 1/scale, `ox`/`oy` the letterbox offsets, `len_x`/`len_y` where samples clamp.

struct Half { int i0, i1; float f; };

__device__ __forceinline__ Half axis_half(int d, double ratio, double offset, int len) {
    double s = ((double)d + 0.5 - offset) * ratio - 0.5;
    bool inside = s >= -0.5 && s < (double)len - 0.5;
    double sc = inside ? fmin(fmax(s, 0.0), (double)(len - 1)) : s;
    Half t;
    t.i0 = (int)floor(sc);
    t.i1 = inside ? min(t.i0 + 1, len - 1) : t.i0 + 1;
    t.f = (float)(sc - floor(sc));
    return t;
}

__device__ __forceinline__ void px_or_pad(const u8* y, const u8* uv, int pitch, int w, int h,
                                          int x, int yy, float pad, float* c) {
    if (x < 0 || yy < 0 || x >= w || yy >= h) { c[0] = pad; c[1] = pad; c[2] = pad; return; }
    px_rgb(y, uv, pitch, x, yy, &c[0], &c[1], &c[2]);
}

extern "C" __global__ void nv12_to_planar_fit(
    const u8* __restrict__ y, const u8* __restrict__ uv, int pitch, int w, int h,
    float* __restrict__ out, int ow, int oh, double rx, double ry, double ox, double oy,
    int len_x, int len_y, float pad, int bgr)
{
    int dx = blockIdx.x * blockDim.x + threadIdx.x;
    int dy = blockIdx.y * blockDim.y + threadIdx.y;
    if (dx >= ow || dy >= oh) return;
    Half ty = axis_half(dy, ry, oy, len_y), tx = axis_half(dx, rx, ox, len_x);
    float a[3], b[3], c[3], d[3];
    px_or_pad(y, uv, pitch, w, h, tx.i0, ty.i0, pad, a);
    px_or_pad(y, uv, pitch, w, h, tx.i1, ty.i0, pad, b);
    px_or_pad(y, uv, pitch, w, h, tx.i0, ty.i1, pad, c);
    px_or_pad(y, uv, pitch, w, h, tx.i1, ty.i1, pad, d);
    int plane = ow * oh, i = dy * ow + dx;
    for (int ch = 0; ch < 3; ch++) {
        float top = a[ch] + (b[ch] - a[ch]) * tx.f;
        float bottom = c[ch] + (d[ch] - c[ch]) * tx.f;
        int p = bgr ? 2 - ch : ch;
        out[p * plane + i] = top + (bottom - top) * ty.f;
    }
}

// --- Box outline into luma (aegis_models::stages::pixels::outline: 2 px, clamped) ---------

extern "C" __global__ void outline_luma(u8* __restrict__ y, int pitch, int rx, int ry, int rw,
                                        int rh, u8 value)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int t = blockIdx.y; // 0 or 1: the two rings
    int x2 = rx + rw - 1, y2 = ry + rh - 1;
    int tw = min(t, rw - 1), th = min(t, rh - 1);
    if (i < rw) {
        y[(size_t)(ry + th) * pitch + rx + i] = value;
        y[(size_t)(y2 - th) * pitch + rx + i] = value;
    }
    if (i < rh) {
        y[(size_t)(ry + i) * pitch + rx + tw] = value;
        y[(size_t)(ry + i) * pitch + x2 - tw] = value;
    }
}

// --- Mask upsample + alpha composite -----------------------------------------------------
// Mirrors the CPU virtual background: aegis_hal::pixel::scale_plane (fixed-point bilinear,
// pixel-centre aligned, 32-bit position, 8-bit weights) of the s x s mask to the luma and
// chroma sizes, then aegis_models::stages::pixels::composite ((f*a + g*(255-a) + 127) / 255).

struct Taps { int i0, i1; u32 f; };

// `step` = (src << 32) / dst, computed once per axis by the caller (a 64-bit division per
// pixel would dominate the kernel).
__device__ __forceinline__ Taps axis_step(int src, i64 step, int i) {
    i64 start = step / 2 - ((i64)1 << 31);
    i64 pos = start + (i64)i * step;
    Taps t;
    if (pos <= 0) { t.i0 = 0; t.i1 = 0; t.f = 0; return t; }
    int i0 = (int)(pos >> 32);
    if (i0 + 1 >= src) { t.i0 = src - 1; t.i1 = src - 1; t.f = 0; return t; }
    t.i0 = i0; t.i1 = i0 + 1; t.f = (u32)(pos >> 24) & 255u;
    return t;
}

__device__ __forceinline__ Taps axis_linear(int src, int dst, int i) {
    return axis_step(src, ((i64)src << 32) / (i64)dst, i);
}

__device__ __forceinline__ u32 mask_at(const u8* mask, int s, i64 step_x, i64 step_y, int x, int y) {
    Taps tx = axis_step(s, step_x, x), ty = axis_step(s, step_y, y);
    u32 wy0 = 256u - ty.f, wy1 = ty.f, wx0 = 256u - tx.f, wx1 = tx.f;
    u32 v0 = (u32)mask[ty.i0 * s + tx.i0] * wy0 + (u32)mask[ty.i1 * s + tx.i0] * wy1;
    u32 v1 = (u32)mask[ty.i0 * s + tx.i1] * wy0 + (u32)mask[ty.i1 * s + tx.i1] * wy1;
    return (v0 * wx0 + v1 * wx1 + (1u << 15)) >> 16;
}

__device__ __forceinline__ u8 blend(u32 f, u32 g, u32 a) {
    return (u8)((f * a + g * (255u - a) + 127u) / 255u);
}

// One thread per 2x2 luma block (one chroma pair): frame = frame over bg with the mask.
extern "C" __global__ void composite_nv12(
    u8* __restrict__ y, u8* __restrict__ uv, int pitch, int w, int h,
    const u8* __restrict__ bg_y, const u8* __restrict__ bg_uv, int bg_pitch,
    const u8* __restrict__ mask, int s, i64 sy_w, i64 sy_h, i64 sc_w, i64 sc_h)
{
    // sy_* / sc_*: the mask's (s << 32) / size steps for the luma and chroma axes.
    int cx = blockIdx.x * blockDim.x + threadIdx.x;
    int cy = blockIdx.y * blockDim.y + threadIdx.y;
    int cw = w / 2, ch = h / 2;
    if (cx >= cw || cy >= ch) return;
    for (int k = 0; k < 4; k++) {
        int x = 2 * cx + (k & 1), yy = 2 * cy + (k >> 1);
        u32 a = mask_at(mask, s, sy_w, sy_h, x, yy);
        size_t i = (size_t)yy * pitch + x;
        y[i] = blend(y[i], bg_y[(size_t)yy * bg_pitch + x], a);
    }
    u32 a = mask_at(mask, s, sc_w, sc_h, cx, cy);
    size_t i = (size_t)cy * pitch + 2 * cx, j = (size_t)cy * bg_pitch + 2 * cx;
    uv[i] = blend(uv[i], bg_uv[j], a);
    uv[i + 1] = blend(uv[i + 1], bg_uv[j + 1], a);
}

// --- Plane scaling (moderation blur: down by a factor, then back up) ----------------------
// Mirrors aegis_hal::pixel::scale_plane / scale_plane_uv exactly: per axis, a box filter
// over [i*s/d, (i+1)*s/d) when shrinking by 2x or more, else fixed-point bilinear taps;
// the result is the weighted sum rounded half up. `bpp` is 1 (luma) or 2 (NV12 CbCr).

__device__ __forceinline__ void axis_taps(int src, int dst, int i, int* t0, int* t1, u32* w0,
                                          u32* w1, int* boxed_end) {
    if (src >= 2 * dst) {
        int start = (int)((i64)i * src / dst);
        int end = (int)((i64)(i + 1) * src / dst);
        *t0 = start;
        *boxed_end = max(end, start + 1);
        return;
    }
    Taps t = axis_linear(src, dst, i);
    *t0 = t.i0; *t1 = t.i1; *w0 = 256u - t.f; *w1 = t.f; *boxed_end = -1;
}

extern "C" __global__ void scale_plane(
    const u8* __restrict__ src, int spitch, int sw, int sh,
    u8* __restrict__ dst, int dpitch, int dw, int dh, int bpp)
{
    int dx = blockIdx.x * blockDim.x + threadIdx.x;
    int dy = blockIdx.y * blockDim.y + threadIdx.y;
    if (dx >= dw || dy >= dh) return;
    if (sw == dw && sh == dh) {
        for (int c = 0; c < bpp; c++) dst[(size_t)dy * dpitch + dx * bpp + c] = src[(size_t)dy * spitch + dx * bpp + c];
        return;
    }
    int x0, x1 = 0, y0, y1 = 0, xe, ye;
    u32 wx0 = 0, wx1 = 0, wy0 = 0, wy1 = 0;
    axis_taps(sw, dw, dx, &x0, &x1, &wx0, &wx1, &xe);
    axis_taps(sh, dh, dy, &y0, &y1, &wy0, &wy1, &ye);
    unsigned long long tx = xe >= 0 ? (unsigned long long)(xe - x0) : 256ull;
    unsigned long long ty = ye >= 0 ? (unsigned long long)(ye - y0) : 256ull;
    unsigned long long total = tx * ty;
    for (int c = 0; c < bpp; c++) {
        unsigned long long acc = 0;
        int ny = ye >= 0 ? ye - y0 : 2;
        for (int ky = 0; ky < ny; ky++) {
            int sy; unsigned long long wy;
            if (ye >= 0) { sy = y0 + ky; wy = 1; } else { sy = ky == 0 ? y0 : y1; wy = ky == 0 ? wy0 : wy1; }
            if (wy == 0) continue;
            const u8* row = src + (size_t)sy * spitch;
            unsigned long long hsum = 0;
            int nx = xe >= 0 ? xe - x0 : 2;
            for (int kx = 0; kx < nx; kx++) {
                int sx; unsigned long long wx;
                if (xe >= 0) { sx = x0 + kx; wx = 1; } else { sx = kx == 0 ? x0 : x1; wx = kx == 0 ? wx0 : wx1; }
                if (wx == 0) continue;
                hsum += wx * row[sx * bpp + c];
            }
            acc += wy * hsum;
        }
        dst[(size_t)dy * dpitch + dx * bpp + c] = (u8)((acc + total / 2) / total);
    }
}

// --- Packed RGB24 -> NV12 -----------------------------------------------------------------
// Mirrors aegis_hal::pixel::rgb24_to_nv12 (BT601_SHIFT-bit fixed point, luma clamped to
// BT601_Y_MIN..BT601_Y_MAX, chroma from the 2x2 sum with two more fractional bits, clamped to
// BT601_C_MIN..BT601_C_MAX).
#define BT601_CSHIFT (BT601_SHIFT + 2)
extern "C" __global__ void rgb_to_nv12(
    const u8* __restrict__ rgb, int rgb_pitch, int w, int h,
    u8* __restrict__ y, u8* __restrict__ uv, int pitch)
{
    int cx = blockIdx.x * blockDim.x + threadIdx.x;
    int cy = blockIdx.y * blockDim.y + threadIdx.y;
    if (cx >= w / 2 || cy >= h / 2) return;
    int rs = 0, gs = 0, bs = 0;
    for (int k = 0; k < 4; k++) {
        int x = 2 * cx + (k & 1), yy = 2 * cy + (k >> 1);
        const u8* p = rgb + (size_t)yy * rgb_pitch + 3 * x;
        int r = p[0], g = p[1], b = p[2];
        int l = (BT601_YR * r + BT601_YG * g + BT601_YB * b + (BT601_Y_MIN << BT601_SHIFT)
                 + (1 << (BT601_SHIFT - 1))) >> BT601_SHIFT;
        y[(size_t)yy * pitch + x] = (u8)min(max(l, BT601_Y_MIN), BT601_Y_MAX);
        rs += r; gs += g; bs += b;
    }
    int u = (BT601_UR * rs + BT601_UG * gs + BT601_UB * bs + (BT601_C_ZERO << BT601_CSHIFT)
             + (1 << (BT601_CSHIFT - 1))) >> BT601_CSHIFT;
    int v = (BT601_VR * rs + BT601_VG * gs + BT601_VB * bs + (BT601_C_ZERO << BT601_CSHIFT)
             + (1 << (BT601_CSHIFT - 1))) >> BT601_CSHIFT;
    size_t i = (size_t)cy * pitch + 2 * cx;
    uv[i] = (u8)min(max(u, BT601_C_MIN), BT601_C_MAX);
    uv[i + 1] = (u8)min(max(v, BT601_C_MIN), BT601_C_MAX);
}

// The virtual-background stage's mask refinement (aegis_models' VirtualBackground::
// infer_mask), in three passes over the s*s model output, each with the CPU's operations in
// its order (no fused multiply-add: NVRTC runs with --fmad=false).
//
// 1. Temporal smoothing of `prob` into `prev` (in place): an uncertain pixel keeps `ratio`
//    of its previous value; on the first frame (`have_prev` 0) `prev` takes `prob`.
extern "C" __global__ void mask_smooth(float* __restrict__ prev, const float* __restrict__ prob,
                                       int n, float ratio, int have_prev)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float p = prob[i];
    if (have_prev) {
        float u = 1.0f - fabsf(2.0f * p - 1.0f);
        prev[i] = p + (prev[i] - p) * ratio * u;
    } else {
        prev[i] = p;
    }
}

// 2. Horizontal box blur of radius r (edges clamp), `norm` = 1/(2r+1) as the CPU computes it.
extern "C" __global__ void mask_blur_h(const float* __restrict__ src, float* __restrict__ dst,
                                       int s, int r, float norm)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= s || y >= s) return;
    const float* row = src + (size_t)y * s;
    float acc = 0.0f;
    for (int k = 0; k <= 2 * r; k++) {
        int i = x + k - r;
        i = i < 0 ? 0 : (i > s - 1 ? s - 1 : i);
        acc += row[i];
    }
    dst[(size_t)y * s + x] = acc * norm;
}

// 3. Vertical box blur, then the soft threshold to 0..255: below `lo` background, above `hi`
//    person, linear in between, rounded half up (Rust's clamp, then `as u8`).
extern "C" __global__ void mask_blur_v_threshold(const float* __restrict__ src,
                                                 u8* __restrict__ mask, int s, int r,
                                                 float norm, float lo, float hi)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= s || y >= s) return;
    float acc = 0.0f;
    for (int k = 0; k <= 2 * r; k++) {
        int j = y + k - r;
        j = j < 0 ? 0 : (j > s - 1 ? s - 1 : j);
        acc += src[(size_t)j * s + x];
    }
    float m = acc * norm;
    float t = (m - lo) / (hi - lo);
    if (t < 0.0f) t = 0.0f;
    if (t > 1.0f) t = 1.0f;
    float v = t * 255.0f + 0.5f;
    mask[(size_t)y * s + x] = v >= 255.0f ? (u8)255 : (v > 0.0f ? (u8)v : (u8)0);
}

// A YOLOv8 detector's output for one item, `[4 + classes, n]` row-major (box centre and size,
// then one score per class, for each of n anchors), reduced to the anchors worth decoding:
// each anchor whose best class score reaches `min_score` (the best being the first class
// with the highest score, as aegis_models::yolo::decode picks it) is appended to `cand`
// after its count. `cand[0]` holds the count as an unsigned integer (zeroed by the caller);
// entry k is the 7 floats at 1 + 7k: anchor index, cx, cy, w, h, class, score. At most
// `cap` entries are written; the count says how many qualified, so a caller that sees more
// than `cap` knows the list is cut. Entries come in no particular order.
extern "C" __global__ void yolo_candidates(const float* __restrict__ out, int classes, int n,
                                           float min_score, float* __restrict__ cand, int cap)
{
    int a = blockIdx.x * blockDim.x + threadIdx.x;
    if (a >= n) return;
    float best = -3.40282347e+38f;  // f32::MIN, where the CPU starts
    int cls = 0;
    for (int c = 0; c < classes; c++) {
        float s = out[(size_t)(4 + c) * n + a];
        if (s > best) {
            best = s;
            cls = c;
        }
    }
    if (best < min_score) return;
    unsigned k = atomicAdd((unsigned*)cand, 1u);
    if (k >= (unsigned)cap) return;
    float* e = cand + 1 + (size_t)k * 7;
    e[0] = (float)a;
    e[1] = out[a];
    e[2] = out[(size_t)n + a];
    e[3] = out[(size_t)2 * n + a];
    e[4] = out[(size_t)3 * n + a];
    e[5] = (float)cls;
    e[6] = best;
}
