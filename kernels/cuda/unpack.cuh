// 16 bytes of f32, bf16 or f16 elements (one uint4 load) -> floats, for the kernels that read
// rows with 16-byte loads (attention's K/V, the 16-bit GEMV's weights). The pointer argument only
// picks the element type: 4 floats for f32, 8 for bf16 / f16.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace shardlm::cuda {

__device__ __forceinline__ void Unpack16Bytes(const uint4& raw, const float*, float* f) {
  f[0] = __uint_as_float(raw.x);
  f[1] = __uint_as_float(raw.y);
  f[2] = __uint_as_float(raw.z);
  f[3] = __uint_as_float(raw.w);
}
__device__ __forceinline__ void Unpack16Bytes(const uint4& raw, const __nv_bfloat16*, float* f) {
  const auto* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
__device__ __forceinline__ void Unpack16Bytes(const uint4& raw, const __half*, float* f) {
  const auto* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __half22float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

}  // namespace shardlm::cuda
