/*
 * Stand-ins for NVIDIA's libnvbufsurface / libnvbufsurftransform (Jetson Linux r36) for
 * aegis-jetson's tests: host memory (one memfd per buffer, standing in for the DMA-buf) behind
 * the same ABI. Written for this project from the layouts in src/nvbuf.rs and
 * src/transform.rs (themselves checked against NVIDIA's headers, tests/abi.rs); no NVIDIA code.
 *
 * Test hooks, exported by each library:
 *   aegis_stub_log(buf, cap)  the calls made so far, one "Name(args)" per line
 *   aegis_stub_fail(name)     make the next call of `name` fail
 */
#ifndef AEGIS_STUB_H
#define AEGIS_STUB_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define STUB_PADDING 4
#define STUB_MAX_PLANES 4

enum {
  FMT_GRAY8 = 1, FMT_YUV420 = 2, FMT_NV12 = 6, FMT_NV12_ER = 7, FMT_RGBA = 19, FMT_BGRA = 20,
  FMT_BGRX = 24, FMT_NV12_709 = 33, FMT_UYVY = 10, FMT_YUYV = 14
};
enum { LAYOUT_PITCH = 0, LAYOUT_BLOCK_LINEAR = 1 };
enum { MEM_DEFAULT = 0, MEM_SURFACE_ARRAY = 4, MEM_HANDLE = 5, MEM_SYSTEM = 6 };
enum { MAP_READ = 0, MAP_WRITE = 1, MAP_READ_WRITE = 2 };

typedef struct {
  uint32_t scanformat[STUB_MAX_PLANES];
  uint32_t secondfieldoffset[STUB_MAX_PLANES];
  uint32_t blockheightlog2[STUB_MAX_PLANES];
  uint32_t physicaladdress[STUB_MAX_PLANES];
  uint64_t flags[STUB_MAX_PLANES];
  void *reserved[STUB_PADDING * STUB_MAX_PLANES];
} StubPlaneParamsEx;

typedef struct {
  uint32_t num_planes;
  uint32_t width[STUB_MAX_PLANES];
  uint32_t height[STUB_MAX_PLANES];
  uint32_t pitch[STUB_MAX_PLANES];
  uint32_t offset[STUB_MAX_PLANES];
  uint32_t psize[STUB_MAX_PLANES];
  uint32_t bytes_per_pix[STUB_MAX_PLANES];
  void *reserved[STUB_PADDING * STUB_MAX_PLANES];
} StubPlaneParams;

typedef struct {
  uint8_t horiz, vert;
} StubChroma;

typedef struct {
  uint32_t gpu_id, width, height, size;
  bool is_contiguous;
  uint32_t color_format, layout, mem_type;
} StubCreateParams;

typedef struct {
  StubCreateParams params;
  uint32_t display_scan_format;
  StubChroma chroma;
  uint32_t memtag;
  bool disable_pitch_padding;
  uint32_t reserved_param;
  void *reserved[STUB_PADDING - 1];
} StubAllocateParams;

typedef struct {
  void *addr[STUB_MAX_PLANES];
  void *egl_image;
  void *reserved[STUB_PADDING];
} StubMappedAddr;

typedef struct {
  int32_t start_of_valid_data, size_of_valid_data;
  StubChroma chroma;
  bool is_protected;
  StubPlaneParamsEx plane_params_ex;
  void *reserved[STUB_PADDING];
} StubParamsEx;

typedef struct {
  uint32_t width, height, pitch, color_format, layout;
  uint64_t buffer_desc;
  uint32_t data_size;
  void *data_ptr;
  StubPlaneParams plane_params;
  StubMappedAddr mapped_addr;
  StubParamsEx *paramex;
  void *reserved[STUB_PADDING - 1];
} StubParams;

typedef struct {
  uint32_t gpu_id, batch_size, num_filled;
  bool is_contiguous;
  uint32_t mem_type;
  StubParams *surface_list;
  void *reserved[STUB_PADDING];
} StubSurface;

typedef struct {
  uint32_t top, left, width, height;
} StubRect;

typedef struct {
  uint32_t compute_mode;
  int32_t gpu_id;
  void *cuda_stream;
} StubConfigParams;

typedef struct {
  uint32_t transform_flag, transform_flip, transform_filter;
  StubRect *src_rect, *dst_rect;
} StubTransformParams;

/* The 64-bit sizes of the r36.3.0 header (tests/abi/r36.3.0-lp64.txt). */
_Static_assert(sizeof(StubPlaneParamsEx) == 224, "NvBufSurfacePlaneParamsEx");
_Static_assert(sizeof(StubPlaneParams) == 232, "NvBufSurfacePlaneParams");
_Static_assert(sizeof(StubCreateParams) == 32, "NvBufSurfaceCreateParams");
_Static_assert(sizeof(StubAllocateParams) == 80, "NvBufSurfaceAllocateParams");
_Static_assert(sizeof(StubMappedAddr) == 72, "NvBufSurfaceMappedAddr");
_Static_assert(sizeof(StubParamsEx) == 272, "NvBufSurfaceParamsEx");
_Static_assert(sizeof(StubParams) == 384, "NvBufSurfaceParams");
_Static_assert(sizeof(StubSurface) == 64, "NvBufSurface");
_Static_assert(sizeof(StubRect) == 16, "NvBufSurfTransformRect");
_Static_assert(sizeof(StubConfigParams) == 16, "NvBufSurfTransformConfigParams");
_Static_assert(sizeof(StubTransformParams) == 32, "NvBufSurfTransformParams");

/* What the libnvbufsurface stand-in's NvBufSurfaceMapEglImage hands out as the EGLImageKHR,
 * and the libcuda stand-in's cuGraphicsEGLRegisterImage maps: the surface's DMA-buf (a
 * memfd) and where its planes lie, so that "device memory" of the mapped frame is the
 * surface's own memory, as on a Jetson. */
#define STUB_EGL_MAGIC 0x45474c31u
typedef struct {
  uint32_t magic;
  int32_t fd;
  uint32_t width, height, color_format, layout, num_planes, data_size;
  uint32_t pitch[2], offset[2];
} StubEglImage;

#define STUB_EXPORT __attribute__((visibility("default")))

static char stub_log_buf[65536];
static size_t stub_log_len;
static char stub_fail_name[64];

/* Appends one formatted line to the call log. */
static void stub_log(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  size_t room = sizeof(stub_log_buf) - stub_log_len;
  int n = vsnprintf(stub_log_buf + stub_log_len, room, fmt, ap);
  va_end(ap);
  if (n > 0 && (size_t)n + 1 < room) {
    stub_log_len += (size_t)n;
    stub_log_buf[stub_log_len++] = '\n';
    stub_log_buf[stub_log_len] = 0;
  }
}

/* Whether the test asked `name` to fail; the request is used up. */
static bool stub_should_fail(const char *name) {
  if (strcmp(stub_fail_name, name) != 0) return false;
  stub_fail_name[0] = 0;
  return true;
}

STUB_EXPORT size_t aegis_stub_log(char *out, size_t cap) {
  size_t n = stub_log_len < cap ? stub_log_len : cap;
  memcpy(out, stub_log_buf, n);
  return n;
}

STUB_EXPORT void aegis_stub_fail(const char *name) {
  snprintf(stub_fail_name, sizeof(stub_fail_name), "%s", name);
}

#endif
