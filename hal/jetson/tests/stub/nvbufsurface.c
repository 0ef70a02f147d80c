/*
 * Stand-in for libnvbufsurface.so.1.0.0 (see stub.h). Each buffer is a memfd (its fd is the
 * "DMA-buf" in bufferDesc); planes are mapped for the CPU with mmap, one mapping per plane,
 * as NvBufSurfaceMap documents. Batch size 1 only; formats GRAY8, YUV420, NV12 (+ER, 709),
 * RGBA, BGRA, BGRx, YUYV, UYVY; pitch rows aligned to 64 bytes and planes to the page size, so callers
 * must use the reported pitch/offsets. Block-linear surfaces are stored linearly (the stub
 * has no tiling). Building with -DAEGIS_STUB_WITHOUT_SYNC_FOR_DEVICE leaves out that symbol.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "stub.h"

#define MAX_SURFACES 64
static StubSurface *registry[MAX_SURFACES];

static uint32_t align_up(uint32_t v, uint32_t a) { return (v + a - 1) / a * a; }

/* Fills the plane table of `p` for `format`; 0 when the stub does not know the format. */
static int describe_planes(StubParams *p, uint32_t format, uint32_t w, uint32_t h) {
  uint32_t widths[3], heights[3], bpp[3], n;
  switch (format) {
  case FMT_GRAY8:
    n = 1; widths[0] = w; heights[0] = h; bpp[0] = 1;
    break;
  case FMT_YUV420:
    n = 3; widths[0] = w; heights[0] = h; bpp[0] = 1;
    widths[1] = widths[2] = (w + 1) / 2; heights[1] = heights[2] = (h + 1) / 2; bpp[1] = bpp[2] = 1;
    break;
  case FMT_NV12: case FMT_NV12_ER: case FMT_NV12_709:
    n = 2; widths[0] = w; heights[0] = h; bpp[0] = 1;
    widths[1] = (w + 1) / 2; heights[1] = (h + 1) / 2; bpp[1] = 2;
    break;
  case FMT_RGBA: case FMT_BGRA: case FMT_BGRX:
    n = 1; widths[0] = w; heights[0] = h; bpp[0] = 4;
    break;
  case FMT_YUYV: case FMT_UYVY: /* packed 4:2:2: one plane, 2 bytes a pixel */
    n = 1; widths[0] = w; heights[0] = h; bpp[0] = 2;
    break;
  default:
    return 0;
  }
  uint32_t page = (uint32_t)sysconf(_SC_PAGESIZE), offset = 0;
  p->plane_params.num_planes = n;
  for (uint32_t i = 0; i < n; i++) {
    p->plane_params.width[i] = widths[i];
    p->plane_params.height[i] = heights[i];
    p->plane_params.bytes_per_pix[i] = bpp[i];
    p->plane_params.pitch[i] = align_up(widths[i] * bpp[i], 64);
    p->plane_params.offset[i] = offset;
    p->plane_params.psize[i] = align_up(p->plane_params.pitch[i] * heights[i], page);
    offset += p->plane_params.psize[i];
  }
  p->pitch = p->plane_params.pitch[0];
  p->data_size = offset;
  return 1;
}

static void destroy(StubSurface *s) {
  StubParams *p = &s->surface_list[0];
  for (int i = 0; i < STUB_MAX_PLANES; i++)
    if (p->mapped_addr.addr[i]) munmap(p->mapped_addr.addr[i], p->plane_params.psize[i]);
  free(p->mapped_addr.egl_image);
  if (p->data_ptr) munmap(p->data_ptr, p->data_size);
  close((int)p->buffer_desc);
  for (int i = 0; i < MAX_SURFACES; i++)
    if (registry[i] == s) registry[i] = NULL;
  free(p->paramex);
  free(s->surface_list);
  free(s);
}

STUB_EXPORT int NvBufSurfaceAllocate(StubSurface **out, uint32_t batch, StubAllocateParams *a) {
  StubCreateParams *c = &a->params;
  stub_log("NvBufSurfaceAllocate(%ux%u format=%u layout=%u mem=%u tag=%#x)", c->width, c->height,
           c->color_format, c->layout, c->mem_type, a->memtag);
  if (stub_should_fail("NvBufSurfaceAllocate") || batch != 1 || c->size != 0) return -1;
  uint32_t mem = c->mem_type == MEM_DEFAULT ? MEM_SURFACE_ARRAY : c->mem_type;
  if (mem != MEM_SURFACE_ARRAY && mem != MEM_HANDLE && mem != MEM_SYSTEM) return -1;
  int slot = -1;
  for (int i = 0; i < MAX_SURFACES && slot < 0; i++)
    if (!registry[i]) slot = i;
  if (slot < 0) return -1;

  StubSurface *s = calloc(1, sizeof *s);
  StubParams *p = calloc(1, sizeof *p);
  StubParamsEx *ex = calloc(1, sizeof *ex);
  int fd = memfd_create("aegis-stub-nvbuf", MFD_CLOEXEC);
  if (!s || !p || !ex || fd < 0) goto fail;
  s->surface_list = p;
  p->paramex = ex;
  p->buffer_desc = (uint64_t)fd;
  if (!describe_planes(p, c->color_format, c->width, c->height)) goto fail;
  if (ftruncate(fd, p->data_size) != 0) goto fail;
  if (mem == MEM_SYSTEM) { /* host memory: dataPtr is valid, as for malloc'ed buffers */
    p->data_ptr = mmap(NULL, p->data_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p->data_ptr == MAP_FAILED) { p->data_ptr = NULL; goto fail; }
  }
  s->batch_size = 1;
  s->num_filled = 1;
  s->mem_type = mem;
  p->width = c->width;
  p->height = c->height;
  p->color_format = c->color_format;
  p->layout = c->layout;
  ex->chroma = a->chroma;
  registry[slot] = s;
  *out = s;
  return 0;
fail:
  if (fd >= 0) close(fd);
  if (p) free(p->paramex);
  free(p);
  free(s);
  return -1;
}

STUB_EXPORT int NvBufSurfaceCreate(StubSurface **out, uint32_t batch, StubCreateParams *c) {
  StubAllocateParams a;
  memset(&a, 0, sizeof a);
  a.params = *c;
  return NvBufSurfaceAllocate(out, batch, &a);
}

STUB_EXPORT int NvBufSurfaceDestroy(StubSurface *s) {
  StubParams *p = &s->surface_list[0];
  int mapped = 0;
  for (int i = 0; i < STUB_MAX_PLANES; i++) mapped += p->mapped_addr.addr[i] != NULL;
  stub_log("NvBufSurfaceDestroy(fd=%d mapped_planes=%d egl=%d)", (int)p->buffer_desc, mapped,
           p->mapped_addr.egl_image != NULL);
  if (stub_should_fail("NvBufSurfaceDestroy")) return -1;
  destroy(s);
  return 0;
}

/* The buffer and plane a per-plane call addresses, or NULL when they do not exist. */
static StubParams *plane_of(StubSurface *s, int index, int plane) {
  if (!s || index != 0 || plane < 0 || (uint32_t)plane >= s->surface_list[0].plane_params.num_planes)
    return NULL;
  return &s->surface_list[0];
}

STUB_EXPORT int NvBufSurfaceMap(StubSurface *s, int index, int plane, int type) {
  stub_log("NvBufSurfaceMap(%d,%d,%d)", index, plane, type);
  StubParams *p = plane_of(s, index, plane);
  if (stub_should_fail("NvBufSurfaceMap") || !p || type < MAP_READ || type > MAP_READ_WRITE) return -1;
  if (p->mapped_addr.addr[plane]) return 0;
  int prot = type == MAP_READ ? PROT_READ : PROT_READ | PROT_WRITE;
  void *a = mmap(NULL, p->plane_params.psize[plane], prot, MAP_SHARED, (int)p->buffer_desc,
                 p->plane_params.offset[plane]);
  if (a == MAP_FAILED) return -1;
  p->mapped_addr.addr[plane] = a;
  return 0;
}

STUB_EXPORT int NvBufSurfaceUnMap(StubSurface *s, int index, int plane) {
  stub_log("NvBufSurfaceUnMap(%d,%d)", index, plane);
  StubParams *p = plane_of(s, index, plane);
  if (!p || !p->mapped_addr.addr[plane]) return -1;
  munmap(p->mapped_addr.addr[plane], p->plane_params.psize[plane]);
  p->mapped_addr.addr[plane] = NULL;
  return stub_should_fail("NvBufSurfaceUnMap") ? -1 : 0;
}

/* Cache syncs are no-ops on host memory; they must name a mapped plane. */
static int sync_plane(const char *name, StubSurface *s, int index, int plane) {
  stub_log("%s(%d,%d)", name, index, plane);
  StubParams *p = plane_of(s, index, plane);
  if (stub_should_fail(name) || !p || !p->mapped_addr.addr[plane]) return -1;
  return 0;
}

STUB_EXPORT int NvBufSurfaceSyncForCpu(StubSurface *s, int index, int plane) {
  return sync_plane("NvBufSurfaceSyncForCpu", s, index, plane);
}

#ifndef AEGIS_STUB_WITHOUT_SYNC_FOR_DEVICE
STUB_EXPORT int NvBufSurfaceSyncForDevice(StubSurface *s, int index, int plane) {
  return sync_plane("NvBufSurfaceSyncForDevice", s, index, plane);
}
#endif

STUB_EXPORT int NvBufSurfaceMapEglImage(StubSurface *s, int index) {
  stub_log("NvBufSurfaceMapEglImage(%d)", index);
  if (stub_should_fail("NvBufSurfaceMapEglImage") || !s || index != 0) return -1;
  if (s->mem_type != MEM_SURFACE_ARRAY) return -1; /* as documented: NVMM only */
  StubParams *p = &s->surface_list[0];
  if (!p->mapped_addr.egl_image) {
    StubEglImage *im = calloc(1, sizeof *im); /* what the libcuda stand-in maps */
    if (!im) return -1;
    im->magic = STUB_EGL_MAGIC;
    im->fd = (int32_t)p->buffer_desc;
    im->width = p->width;
    im->height = p->height;
    im->color_format = p->color_format;
    im->layout = p->layout;
    im->num_planes = p->plane_params.num_planes;
    im->data_size = p->data_size;
    for (int i = 0; i < 2; i++) {
      im->pitch[i] = p->plane_params.pitch[i];
      im->offset[i] = p->plane_params.offset[i];
    }
    p->mapped_addr.egl_image = im;
  }
  return 0;
}

STUB_EXPORT int NvBufSurfaceUnMapEglImage(StubSurface *s, int index) {
  stub_log("NvBufSurfaceUnMapEglImage(%d)", index);
  if (!s || index != 0 || !s->surface_list[0].mapped_addr.egl_image) return -1;
  free(s->surface_list[0].mapped_addr.egl_image);
  s->surface_list[0].mapped_addr.egl_image = NULL;
  return stub_should_fail("NvBufSurfaceUnMapEglImage") ? -1 : 0;
}

STUB_EXPORT int NvBufSurfaceFromFd(int fd, void **out) {
  stub_log("NvBufSurfaceFromFd(%d)", fd);
  if (stub_should_fail("NvBufSurfaceFromFd")) return -1;
  for (int i = 0; i < MAX_SURFACES; i++)
    if (registry[i] && (int)registry[i]->surface_list[0].buffer_desc == fd) {
      *out = registry[i];
      return 0;
    }
  return -1;
}
