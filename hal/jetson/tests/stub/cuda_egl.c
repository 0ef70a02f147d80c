/*
 * A stand-in for libcuda.so.1's EGL interop (cuGraphicsEGLRegisterImage,
 * cuGraphicsResourceGetMappedEglFrame, cuGraphicsUnregisterResource, cuGetErrorString) for
 * aegis-jetson's tests: "registering" an EGL image hands out a resource whose frame is two
 * pitched planes of host memory. Written for this project from CUDA 12.6's documented
 * signatures and the layout in src/cuda_egl.rs (checked against the header, tests/abi.rs).
 *
 * An image from the libnvbufsurface stand-in (StubEglImage, stub.h) is mapped onto that
 * surface's own memory (a shared mapping of its memfd): the frame's planes are the surface's
 * planes, pitch-linear surfaces as a pitch frame and block-linear ones as an array frame
 * (which the wrapper refuses), the colour format from the surface's. Any other image gets a
 * 64x48 frame of fresh memory.
 *
 * Extra test hooks: aegis_stub_frame_format(type, planes, colour format) sets what the next
 * mapped frames report; aegis_stub_live() counts registered, not yet unregistered resources;
 * aegis_stub_register_host(1) makes the mapped planes reachable by a real GPU: a surface's
 * memory is page-locked with the real libcuda (cuMemHostRegister, in the context current at
 * registration) and its device address handed out instead of the host one, so CUDA kernels
 * work on the "NVMM" memory in place, as Orin's iGPU does on real NVMM (GPU tests only).
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/mman.h>
#include "stub.h"

typedef struct {
  void *planes[3];
  unsigned int width, height, depth, pitch, plane_count, num_channels;
  int frame_type, color_format, cu_format;
} StubEglFrame;
_Static_assert(sizeof(StubEglFrame) == 64, "CUeglFrame (tests/abi/cuda-egl-12.6-lp64.txt)");

typedef struct {
  void *image;
  unsigned char *memory;
  size_t mapped; /* bytes of a surface's memfd mapped at memory, or 0 for calloc'ed memory */
  unsigned long long device; /* the memory's device address once registered with a GPU */
} StubResource;

/* The real libcuda's page-locking calls (cuda.h: the _v2 entry points). */
typedef int (*HostRegisterFn)(void *, size_t, unsigned int);
typedef int (*HostUnregisterFn)(void *);
typedef int (*HostDevicePointerFn)(unsigned long long *, void *, unsigned int);
static int register_host;
static HostRegisterFn host_register;
static HostUnregisterFn host_unregister;
static HostDevicePointerFn host_device_pointer;

STUB_EXPORT int aegis_stub_register_host(int on) {
  if (on && !host_register) {
    /* By name: the process's real libcuda (this file is loaded by its path). */
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW);
    if (!cuda) return -1;
    host_register = (HostRegisterFn)dlsym(cuda, "cuMemHostRegister_v2");
    host_unregister = (HostUnregisterFn)dlsym(cuda, "cuMemHostUnregister");
    host_device_pointer = (HostDevicePointerFn)dlsym(cuda, "cuMemHostGetDevicePointer_v2");
    if (!host_register || !host_unregister || !host_device_pointer) return -2;
  }
  register_host = on;
  return 0;
}

enum { CUDA_ERROR_INVALID_VALUE = 1, CUDA_ERROR_INVALID_HANDLE = 400 };
enum { WIDTH = 64, HEIGHT = 48, PITCH = 256 };

static int next_type = 1, next_planes = 2, next_format = 0x01, overridden;
static int live;

STUB_EXPORT void aegis_stub_frame_format(int type, int planes, int format) {
  overridden = 1;
  next_type = type;
  next_planes = planes;
  next_format = format;
}

STUB_EXPORT int aegis_stub_live(void) { return live; }

STUB_EXPORT int cuGraphicsEGLRegisterImage(StubResource **out, void *image, unsigned int flags) {
  stub_log("cuGraphicsEGLRegisterImage(%u)", flags);
  if (stub_should_fail("cuGraphicsEGLRegisterImage")) return CUDA_ERROR_INVALID_VALUE;
  if (!out || !image) return CUDA_ERROR_INVALID_VALUE;
  StubResource *r = calloc(1, sizeof *r);
  if (!r) return CUDA_ERROR_INVALID_VALUE;
  r->image = image;
  const StubEglImage *im = image;
  if (im->magic == STUB_EGL_MAGIC) {
    void *m = mmap(NULL, im->data_size, PROT_READ | PROT_WRITE, MAP_SHARED, im->fd, 0);
    if (m == MAP_FAILED) { free(r); return CUDA_ERROR_INVALID_VALUE; }
    r->memory = m;
    r->mapped = im->data_size;
    /* CU_MEMHOSTREGISTER_DEVICEMAP */
    if (register_host && (host_register(m, im->data_size, 0x02) != 0 ||
                          host_device_pointer(&r->device, m, 0) != 0)) {
      munmap(m, im->data_size);
      free(r);
      return CUDA_ERROR_INVALID_VALUE;
    }
  } else {
    r->memory = calloc(1, (size_t)PITCH * HEIGHT * 3 / 2);
  }
  live++;
  *out = r;
  return 0;
}

STUB_EXPORT int cuGraphicsResourceGetMappedEglFrame(StubEglFrame *frame, StubResource *r,
                                                    unsigned int index, unsigned int mip) {
  stub_log("cuGraphicsResourceGetMappedEglFrame(%u, %u)", index, mip);
  if (stub_should_fail("cuGraphicsResourceGetMappedEglFrame")) return CUDA_ERROR_INVALID_HANDLE;
  if (!frame || !r || index != 0 || mip != 0) return CUDA_ERROR_INVALID_VALUE;
  memset(frame, 0, sizeof *frame);
  const StubEglImage *im = r->image;
  if (r->mapped) {
    unsigned char *base = r->device ? (unsigned char *)(uintptr_t)r->device : r->memory;
    frame->planes[0] = base + im->offset[0];
    frame->planes[1] = im->num_planes > 1 ? base + im->offset[1] : NULL;
    frame->width = im->width;
    frame->height = im->height;
    frame->pitch = im->pitch[0];
    frame->plane_count = im->num_planes;
    frame->frame_type = im->layout == LAYOUT_BLOCK_LINEAR ? 0 : 1;
    switch (im->color_format) {
    case FMT_NV12: frame->color_format = 0x01; break;
    case FMT_NV12_ER: frame->color_format = 0x26; break;
    case FMT_NV12_709: frame->color_format = 0x57; break;
    default: frame->color_format = 0x7fffffff; break; /* not a semi-planar YUV format */
    }
  } else {
    frame->planes[0] = r->memory;
    frame->planes[1] = r->memory + (size_t)PITCH * HEIGHT;
    frame->width = WIDTH;
    frame->height = HEIGHT;
    frame->pitch = PITCH;
    frame->plane_count = 2;
    frame->frame_type = 1;
    frame->color_format = 0x01;
  }
  if (overridden) {
    frame->plane_count = (unsigned int)next_planes;
    if (next_planes < 2) frame->planes[1] = NULL;
    frame->frame_type = next_type;
    frame->color_format = next_format;
  }
  frame->depth = 1;
  frame->num_channels = 1;
  return 0;
}

STUB_EXPORT int cuGraphicsUnregisterResource(StubResource *r) {
  stub_log("cuGraphicsUnregisterResource");
  if (!r) return CUDA_ERROR_INVALID_HANDLE;
  /* Page-locked memory the driver will not release stays registered (and counted live). */
  if (r->device && host_unregister(r->memory) != 0) return CUDA_ERROR_INVALID_VALUE;
  if (r->mapped) munmap(r->memory, r->mapped);
  else free(r->memory);
  free(r);
  live--;
  return stub_should_fail("cuGraphicsUnregisterResource") ? CUDA_ERROR_INVALID_HANDLE : 0;
}

STUB_EXPORT int cuGetErrorString(int code, const char **out) {
  switch (code) {
  case CUDA_ERROR_INVALID_VALUE: *out = "invalid argument"; return 0;
  case CUDA_ERROR_INVALID_HANDLE: *out = "invalid resource handle"; return 0;
  default: return CUDA_ERROR_INVALID_VALUE;
  }
}
