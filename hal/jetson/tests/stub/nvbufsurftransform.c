/*
 * Stand-in for libnvbufsurftransform.so.1.0.0 (see stub.h): nearest-neighbour scaling with
 * source/destination crops and conversion between the stand-in libnvbufsurface's formats
 * (BT.601 integer matrices, limited range for NV12/YUV420, full range for NV12_ER; BT.709
 * for NV12_709; packed 4:2:2 YUYV/UYVY read as BT.601 limited, its samples resampled into
 * NV12/YUV420 unconverted), computed on the CPU through the buffers' memfds. Whatever filter is asked
 * for, it samples the nearest pixel (the filter is logged); flips are refused (Unsupported).
 */
#define _GNU_SOURCE
#include <sys/mman.h>

#include "stub.h"

enum {
  OK = 0, UNSUPPORTED = -1, EXECUTION = -2, INVALID = -3, ROI = -4
};
enum { CROP_SRC = 1, CROP_DST = 2, FILTER = 4, FLIP = 8 };

static uint32_t session_compute;

STUB_EXPORT int NvBufSurfTransformSetSessionParams(StubConfigParams *c) {
  stub_log("NvBufSurfTransformSetSessionParams(compute=%u gpu=%d)", c->compute_mode, c->gpu_id);
  if (stub_should_fail("NvBufSurfTransformSetSessionParams")) return EXECUTION;
  session_compute = c->compute_mode;
  return OK;
}

typedef struct {
  int y, u, v, r, g, b, a;
} Pixel;

static int clamp8(int v) { return v < 0 ? 0 : v > 255 ? 255 : v; }
static int is_packed422(uint32_t f) { return f == FMT_YUYV || f == FMT_UYVY; }
static int is_yuv(uint32_t f) {
  return f == FMT_YUV420 || f == FMT_NV12 || f == FMT_NV12_ER || f == FMT_NV12_709 || is_packed422(f);
}
/* Same matrix and range (BT.601 limited): samples are resampled, not converted. */
static int same_yuv(uint32_t a, uint32_t b) {
  int a601 = a == FMT_YUV420 || a == FMT_NV12 || is_packed422(a);
  int b601 = b == FMT_YUV420 || b == FMT_NV12 || is_packed422(b);
  return a601 && b601 && (is_packed422(a) || is_packed422(b));
}

static void yuv_to_rgb(Pixel *p, uint32_t f) {
  int c = p->y - 16, d = p->u - 128, e = p->v - 128;
  if (f == FMT_NV12_ER) {
    p->r = clamp8((256 * p->y + 359 * e + 128) >> 8);
    p->g = clamp8((256 * p->y - 88 * d - 183 * e + 128) >> 8);
    p->b = clamp8((256 * p->y + 454 * d + 128) >> 8);
  } else if (f == FMT_NV12_709) {
    p->r = clamp8((298 * c + 459 * e + 128) >> 8);
    p->g = clamp8((298 * c - 55 * d - 136 * e + 128) >> 8);
    p->b = clamp8((298 * c + 541 * d + 128) >> 8);
  } else {
    p->r = clamp8((298 * c + 409 * e + 128) >> 8);
    p->g = clamp8((298 * c - 100 * d - 208 * e + 128) >> 8);
    p->b = clamp8((298 * c + 516 * d + 128) >> 8);
  }
  p->a = 255;
}

static void rgb_to_yuv(Pixel *p, uint32_t f) {
  if (f == FMT_NV12_ER) {
    p->y = clamp8((77 * p->r + 150 * p->g + 29 * p->b + 128) >> 8);
    p->u = clamp8(((-43 * p->r - 85 * p->g + 128 * p->b + 128) >> 8) + 128);
    p->v = clamp8(((128 * p->r - 107 * p->g - 21 * p->b + 128) >> 8) + 128);
  } else {
    p->y = clamp8(((66 * p->r + 129 * p->g + 25 * p->b + 128) >> 8) + 16);
    p->u = clamp8(((-38 * p->r - 74 * p->g + 112 * p->b + 128) >> 8) + 128);
    p->v = clamp8(((112 * p->r - 94 * p->g - 18 * p->b + 128) >> 8) + 128);
  }
}

typedef struct {
  StubParams *p;
  uint8_t *base;
} Image;

static uint8_t *at(Image *im, int plane, uint32_t x, uint32_t y) {
  StubPlaneParams *pp = &im->p->plane_params;
  return im->base + pp->offset[plane] + (size_t)y * pp->pitch[plane] + (size_t)x * pp->bytes_per_pix[plane];
}

static Pixel read_pixel(Image *im, uint32_t x, uint32_t y) {
  Pixel px = {0};
  uint8_t *q;
  switch (im->p->color_format) {
  case FMT_GRAY8:
    px.r = px.g = px.b = *at(im, 0, x, y);
    px.a = 255;
    break;
  case FMT_RGBA: q = at(im, 0, x, y); px.r = q[0]; px.g = q[1]; px.b = q[2]; px.a = q[3]; break;
  case FMT_BGRA: q = at(im, 0, x, y); px.b = q[0]; px.g = q[1]; px.r = q[2]; px.a = q[3]; break;
  case FMT_BGRX: q = at(im, 0, x, y); px.b = q[0]; px.g = q[1]; px.r = q[2]; px.a = 255; break;
  case FMT_YUV420:
    px.y = *at(im, 0, x, y); px.u = *at(im, 1, x / 2, y / 2); px.v = *at(im, 2, x / 2, y / 2);
    break;
  case FMT_YUYV: /* Y0 Cb Y1 Cr */
    q = at(im, 0, x & ~1u, y); px.y = q[(x & 1) * 2]; px.u = q[1]; px.v = q[3];
    break;
  case FMT_UYVY: /* Cb Y0 Cr Y1 */
    q = at(im, 0, x & ~1u, y); px.y = q[1 + (x & 1) * 2]; px.u = q[0]; px.v = q[2];
    break;
  default: /* NV12 family */
    px.y = *at(im, 0, x, y); q = at(im, 1, x / 2, y / 2); px.u = q[0]; px.v = q[1];
    break;
  }
  return px;
}

static void write_pixel(Image *im, uint32_t x, uint32_t y, Pixel px) {
  uint8_t *q;
  int chroma = x % 2 == 0 && y % 2 == 0; /* 4:2:0: the top-left pixel of each 2x2 sets it */
  switch (im->p->color_format) {
  case FMT_GRAY8: *at(im, 0, x, y) = (uint8_t)clamp8((77 * px.r + 150 * px.g + 29 * px.b + 128) >> 8); break;
  case FMT_RGBA: q = at(im, 0, x, y); q[0] = px.r; q[1] = px.g; q[2] = px.b; q[3] = px.a; break;
  case FMT_BGRA: q = at(im, 0, x, y); q[0] = px.b; q[1] = px.g; q[2] = px.r; q[3] = px.a; break;
  case FMT_BGRX: q = at(im, 0, x, y); q[0] = px.b; q[1] = px.g; q[2] = px.r; q[3] = 255; break;
  case FMT_YUV420:
    *at(im, 0, x, y) = px.y;
    if (chroma) { *at(im, 1, x / 2, y / 2) = px.u; *at(im, 2, x / 2, y / 2) = px.v; }
    break;
  default:
    *at(im, 0, x, y) = px.y;
    if (chroma) { q = at(im, 1, x / 2, y / 2); q[0] = px.u; q[1] = px.v; }
    break;
  }
}

static int rect_ok(StubRect r, StubParams *p) {
  return r.width > 0 && r.height > 0 && r.left + r.width <= p->width && r.top + r.height <= p->height;
}

static int map_image(Image *im, StubSurface *s, int prot) {
  if (!s || s->batch_size != 1 || !s->surface_list) return 0;
  im->p = &s->surface_list[0];
  im->base = mmap(NULL, im->p->data_size, prot, MAP_SHARED, (int)im->p->buffer_desc, 0);
  return im->base != MAP_FAILED;
}

STUB_EXPORT int NvBufSurfTransform(StubSurface *src, StubSurface *dst, StubTransformParams *t) {
  StubRect sr = t->src_rect ? *t->src_rect : (StubRect){0};
  StubRect dr = t->dst_rect ? *t->dst_rect : (StubRect){0};
  stub_log("NvBufSurfTransform(flag=%#x flip=%u filter=%u src=%u,%u+%ux%u dst=%u,%u+%ux%u session=%u)",
           t->transform_flag, t->transform_flip, t->transform_filter, sr.left, sr.top, sr.width,
           sr.height, dr.left, dr.top, dr.width, dr.height, session_compute);
  if (stub_should_fail("NvBufSurfTransform")) return EXECUTION;
  if ((t->transform_flag & FLIP) && t->transform_flip != 0) return UNSUPPORTED;
  /* Packed 4:2:2 is read (camera buffers), never written, by this stand-in. */
  if (dst && dst->surface_list && is_packed422(dst->surface_list[0].color_format)) return UNSUPPORTED;
  Image in, out;
  if (!map_image(&in, src, PROT_READ)) return INVALID;
  if (!map_image(&out, dst, PROT_READ | PROT_WRITE)) {
    munmap(in.base, in.p->data_size);
    return INVALID;
  }
  if (!(t->transform_flag & CROP_SRC)) sr = (StubRect){0, 0, in.p->width, in.p->height};
  if (!(t->transform_flag & CROP_DST)) dr = (StubRect){0, 0, out.p->width, out.p->height};
  int rc = OK;
  uint32_t sf = in.p->color_format, df = out.p->color_format;
  if (!rect_ok(sr, in.p) || !rect_ok(dr, out.p)) {
    rc = ROI;
  } else {
    for (uint32_t y = 0; y < dr.height; y++)
      for (uint32_t x = 0; x < dr.width; x++) {
        uint32_t sx = sr.left + (uint32_t)((uint64_t)x * sr.width / dr.width);
        uint32_t sy = sr.top + (uint32_t)((uint64_t)y * sr.height / dr.height);
        Pixel px = read_pixel(&in, sx, sy);
        if (sf != df && !same_yuv(sf, df)) { /* else: copy samples unchanged */
          if (is_yuv(sf)) yuv_to_rgb(&px, sf);
          if (is_yuv(df)) rgb_to_yuv(&px, df);
        }
        write_pixel(&out, dr.left + x, dr.top + y, px);
      }
  }
  munmap(in.base, in.p->data_size);
  munmap(out.base, out.p->data_size);
  return rc;
}
