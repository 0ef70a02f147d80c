/*
 * Prints the layout of CUDA's EGL interop types that src/cuda_egl.rs binds, computed by a C
 * compiler from CUDA 12.6's own cudaEGL.h and cuda.h (JetPack 6's CUDA; the same headers are in
 * the PyPI wheel nvidia-cuda-runtime-cu12==12.6.77 under nvidia/cuda_runtime/include; EGL's
 * headers from Debian's libegl-dev). Not in this repository: NVIDIA's licence. Build and run:
 *
 *   cc -I <cuda include> probe_cuda_egl.c -o probe && ./probe
 *   aarch64-linux-gnu-gcc -I <cuda include> -I /usr/include probe_cuda_egl.c -o probe-arm64 \
 *     && qemu-aarch64-static -L /usr/aarch64-linux-gnu ./probe-arm64
 *
 * tests/abi.rs holds the recorded output (cuda-egl-12.6-lp64.txt; both targets printed it).
 */
#include <stddef.h>
#include <stdio.h>
#include "cudaEGL.h"

#define SIZE(t) printf("size %s %zu\n", #t, sizeof(t))
#define OFF(t, f) printf("offset %s.%s %zu\n", #t, #f, offsetof(t, f))
#define VAL(e) printf("value %s %lld\n", #e, (long long)(e))

int main(void) {
  SIZE(CUeglFrame);
  OFF(CUeglFrame, frame);
  OFF(CUeglFrame, width);
  OFF(CUeglFrame, height);
  OFF(CUeglFrame, depth);
  OFF(CUeglFrame, pitch);
  OFF(CUeglFrame, planeCount);
  OFF(CUeglFrame, numChannels);
  OFF(CUeglFrame, frameType);
  OFF(CUeglFrame, eglColorFormat);
  OFF(CUeglFrame, cuFormat);
  SIZE(CUresult);
  SIZE(CUgraphicsResource);
  VAL(MAX_PLANES);
  VAL(CU_EGL_FRAME_TYPE_ARRAY);
  VAL(CU_EGL_FRAME_TYPE_PITCH);
  VAL(CU_EGL_COLOR_FORMAT_YUV420_SEMIPLANAR);
  VAL(CU_EGL_COLOR_FORMAT_YVU420_SEMIPLANAR);
  VAL(CU_EGL_COLOR_FORMAT_YUV420_SEMIPLANAR_ER);
  VAL(CU_EGL_COLOR_FORMAT_YUV420_SEMIPLANAR_709);
  VAL(CU_GRAPHICS_REGISTER_FLAGS_NONE);
  return 0;
}
