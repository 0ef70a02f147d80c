/*
 * Prints the sizes, field offsets and enum values that aegis-jetson's bindings must match,
 * computed by a C compiler from NVIDIA's own headers (which are not in this repository: their
 * licence does not allow redistribution). Build and run, once per target:
 *
 *   cc -I <jetson_multimedia_api/include> probe.c -o probe && ./probe
 *   aarch64-linux-gnu-gcc -I <...> probe.c -o probe-arm64 && qemu-aarch64-static -L /usr/aarch64-linux-gnu ./probe-arm64
 *
 * The output is one `name value` per line; tests/abi.rs holds the recorded output and, when
 * AEGIS_JETSON_MMAPI_INCLUDE points at the headers, builds and runs this file to compare again.
 */
#include <stddef.h>
#include <stdio.h>
#include "nvbufsurftransform.h"

#define SIZE(t) printf("size %s %zu\n", #t, sizeof(t))
#define OFF(t, f) printf("offset %s.%s %zu\n", #t, #f, offsetof(t, f))
#define VAL(e) printf("value %s %lld\n", #e, (long long)(e))

int main(void) {
  SIZE(NvBufSurfacePlaneParamsEx);
  OFF(NvBufSurfacePlaneParamsEx, scanformat);
  OFF(NvBufSurfacePlaneParamsEx, secondfieldoffset);
  OFF(NvBufSurfacePlaneParamsEx, blockheightlog2);
  OFF(NvBufSurfacePlaneParamsEx, physicaladdress);
  OFF(NvBufSurfacePlaneParamsEx, flags);
  OFF(NvBufSurfacePlaneParamsEx, _reserved);

  SIZE(NvBufSurfacePlaneParams);
  OFF(NvBufSurfacePlaneParams, num_planes);
  OFF(NvBufSurfacePlaneParams, width);
  OFF(NvBufSurfacePlaneParams, height);
  OFF(NvBufSurfacePlaneParams, pitch);
  OFF(NvBufSurfacePlaneParams, offset);
  OFF(NvBufSurfacePlaneParams, psize);
  OFF(NvBufSurfacePlaneParams, bytesPerPix);
  OFF(NvBufSurfacePlaneParams, _reserved);

  SIZE(NvBufSurfaceChromaSubsamplingParams);
  OFF(NvBufSurfaceChromaSubsamplingParams, chromaLocHoriz);
  OFF(NvBufSurfaceChromaSubsamplingParams, chromaLocVert);

  SIZE(NvBufSurfaceCreateParams);
  OFF(NvBufSurfaceCreateParams, gpuId);
  OFF(NvBufSurfaceCreateParams, width);
  OFF(NvBufSurfaceCreateParams, height);
  OFF(NvBufSurfaceCreateParams, size);
  OFF(NvBufSurfaceCreateParams, isContiguous);
  OFF(NvBufSurfaceCreateParams, colorFormat);
  OFF(NvBufSurfaceCreateParams, layout);
  OFF(NvBufSurfaceCreateParams, memType);

  SIZE(NvBufSurfaceAllocateParams);
  OFF(NvBufSurfaceAllocateParams, params);
  OFF(NvBufSurfaceAllocateParams, displayscanformat);
  OFF(NvBufSurfaceAllocateParams, chromaSubsampling);
  OFF(NvBufSurfaceAllocateParams, memtag);
  OFF(NvBufSurfaceAllocateParams, disablePitchPadding);
  OFF(NvBufSurfaceAllocateParams, _reservedParam);
  OFF(NvBufSurfaceAllocateParams, _reserved);

  SIZE(NvBufSurfaceMappedAddr);
  OFF(NvBufSurfaceMappedAddr, addr);
  OFF(NvBufSurfaceMappedAddr, eglImage);
  OFF(NvBufSurfaceMappedAddr, _reserved);

  SIZE(NvBufSurfaceParamsEx);
  OFF(NvBufSurfaceParamsEx, startofvaliddata);
  OFF(NvBufSurfaceParamsEx, sizeofvaliddatainbytes);
  OFF(NvBufSurfaceParamsEx, chromaSubsampling);
  OFF(NvBufSurfaceParamsEx, is_protected);
  OFF(NvBufSurfaceParamsEx, planeParamsex);
  OFF(NvBufSurfaceParamsEx, _reserved);

  SIZE(NvBufSurfaceParams);
  OFF(NvBufSurfaceParams, width);
  OFF(NvBufSurfaceParams, height);
  OFF(NvBufSurfaceParams, pitch);
  OFF(NvBufSurfaceParams, colorFormat);
  OFF(NvBufSurfaceParams, layout);
  OFF(NvBufSurfaceParams, bufferDesc);
  OFF(NvBufSurfaceParams, dataSize);
  OFF(NvBufSurfaceParams, dataPtr);
  OFF(NvBufSurfaceParams, planeParams);
  OFF(NvBufSurfaceParams, mappedAddr);
  OFF(NvBufSurfaceParams, paramex);
  OFF(NvBufSurfaceParams, _reserved);

  SIZE(NvBufSurface);
  OFF(NvBufSurface, gpuId);
  OFF(NvBufSurface, batchSize);
  OFF(NvBufSurface, numFilled);
  OFF(NvBufSurface, isContiguous);
  OFF(NvBufSurface, memType);
  OFF(NvBufSurface, surfaceList);
  OFF(NvBufSurface, _reserved);

  SIZE(NvBufSurfTransformRect);
  OFF(NvBufSurfTransformRect, top);
  OFF(NvBufSurfTransformRect, left);
  OFF(NvBufSurfTransformRect, width);
  OFF(NvBufSurfTransformRect, height);

  SIZE(NvBufSurfTransformConfigParams);
  OFF(NvBufSurfTransformConfigParams, compute_mode);
  OFF(NvBufSurfTransformConfigParams, gpu_id);
  OFF(NvBufSurfTransformConfigParams, cuda_stream);

  SIZE(NvBufSurfTransformParams);
  OFF(NvBufSurfTransformParams, transform_flag);
  OFF(NvBufSurfTransformParams, transform_flip);
  OFF(NvBufSurfTransformParams, transform_filter);
  OFF(NvBufSurfTransformParams, src_rect);
  OFF(NvBufSurfTransformParams, dst_rect);

  /* Enums: every enum the bindings use is 4 bytes (C gives them int/unsigned int). */
  SIZE(NvBufSurfaceColorFormat);
  SIZE(NvBufSurfaceLayout);
  SIZE(NvBufSurfaceMemType);
  SIZE(NvBufSurfaceMemMapFlags);
  SIZE(NvBufSurfaceTag);
  SIZE(NvBufSurfaceDisplayScanFormat);
  SIZE(NvBufSurfTransform_Compute);
  SIZE(NvBufSurfTransform_Flip);
  SIZE(NvBufSurfTransform_Inter);
  SIZE(NvBufSurfTransform_Error);
  SIZE(bool);

  VAL(STRUCTURE_PADDING);
  VAL(NVBUF_MAX_PLANES);
  VAL(NVBUF_MAP_READ);
  VAL(NVBUF_MAP_WRITE);
  VAL(NVBUF_MAP_READ_WRITE);
  VAL(NvBufSurfaceTag_NONE);
  VAL(NvBufSurfaceTag_CAMERA);
  VAL(NvBufSurfaceTag_VIDEO_ENC);
  VAL(NvBufSurfaceTag_VIDEO_DEC);
  VAL(NvBufSurfaceTag_VIDEO_CONVERT);
  VAL(NVBUF_COLOR_FORMAT_INVALID);
  VAL(NVBUF_COLOR_FORMAT_GRAY8);
  VAL(NVBUF_COLOR_FORMAT_YUV420);
  VAL(NVBUF_COLOR_FORMAT_YVU420);
  VAL(NVBUF_COLOR_FORMAT_YUV420_ER);
  VAL(NVBUF_COLOR_FORMAT_YVU420_ER);
  VAL(NVBUF_COLOR_FORMAT_NV12);
  VAL(NVBUF_COLOR_FORMAT_NV12_ER);
  VAL(NVBUF_COLOR_FORMAT_NV21);
  VAL(NVBUF_COLOR_FORMAT_NV21_ER);
  VAL(NVBUF_COLOR_FORMAT_UYVY);
  VAL(NVBUF_COLOR_FORMAT_YUYV);
  VAL(NVBUF_COLOR_FORMAT_YUV444);
  VAL(NVBUF_COLOR_FORMAT_RGBA);
  VAL(NVBUF_COLOR_FORMAT_BGRA);
  VAL(NVBUF_COLOR_FORMAT_ARGB);
  VAL(NVBUF_COLOR_FORMAT_ABGR);
  VAL(NVBUF_COLOR_FORMAT_RGBx);
  VAL(NVBUF_COLOR_FORMAT_BGRx);
  VAL(NVBUF_COLOR_FORMAT_xRGB);
  VAL(NVBUF_COLOR_FORMAT_xBGR);
  VAL(NVBUF_COLOR_FORMAT_RGB);
  VAL(NVBUF_COLOR_FORMAT_BGR);
  VAL(NVBUF_COLOR_FORMAT_NV12_10LE);
  VAL(NVBUF_COLOR_FORMAT_YUV420_709);
  VAL(NVBUF_COLOR_FORMAT_YUV420_709_ER);
  VAL(NVBUF_COLOR_FORMAT_NV12_709);
  VAL(NVBUF_COLOR_FORMAT_NV12_709_ER);
  VAL(NVBUF_COLOR_FORMAT_NV12_2020);
  VAL(NVBUF_LAYOUT_PITCH);
  VAL(NVBUF_LAYOUT_BLOCK_LINEAR);
  VAL(NVBUF_MEM_DEFAULT);
  VAL(NVBUF_MEM_CUDA_PINNED);
  VAL(NVBUF_MEM_CUDA_DEVICE);
  VAL(NVBUF_MEM_CUDA_UNIFIED);
  VAL(NVBUF_MEM_SURFACE_ARRAY);
  VAL(NVBUF_MEM_HANDLE);
  VAL(NVBUF_MEM_SYSTEM);
  VAL(NVBUF_DISPLAYSCANFORMAT_PROGRESSIVE);
  VAL(NVBUF_DISPLAYSCANFORMAT_INTERLACED);
  VAL(NvBufSurfTransformCompute_Default);
  VAL(NvBufSurfTransformCompute_GPU);
  VAL(NvBufSurfTransformCompute_VIC);
  VAL(NvBufSurfTransform_None);
  VAL(NvBufSurfTransform_Rotate90);
  VAL(NvBufSurfTransform_Rotate180);
  VAL(NvBufSurfTransform_Rotate270);
  VAL(NvBufSurfTransform_FlipX);
  VAL(NvBufSurfTransform_FlipY);
  VAL(NvBufSurfTransform_Transpose);
  VAL(NvBufSurfTransform_InvTranspose);
  VAL(NvBufSurfTransformInter_Nearest);
  VAL(NvBufSurfTransformInter_Bilinear);
  VAL(NvBufSurfTransformInter_Algo1);
  VAL(NvBufSurfTransformInter_Algo2);
  VAL(NvBufSurfTransformInter_Algo3);
  VAL(NvBufSurfTransformInter_Algo4);
  VAL(NvBufSurfTransformInter_Default);
  VAL(NvBufSurfTransformError_ROI_Error);
  VAL(NvBufSurfTransformError_Invalid_Params);
  VAL(NvBufSurfTransformError_Execution_Error);
  VAL(NvBufSurfTransformError_Unsupported);
  VAL(NvBufSurfTransformError_Success);
  VAL(NVBUFSURF_TRANSFORM_CROP_SRC);
  VAL(NVBUFSURF_TRANSFORM_CROP_DST);
  VAL(NVBUFSURF_TRANSFORM_FILTER);
  VAL(NVBUFSURF_TRANSFORM_FLIP);
  VAL(NVBUFSURF_TRANSFORM_NORMALIZE);
  VAL(NVBUFSURF_TRANSFORM_ALLOW_ODD_CROP);
  return 0;
}
