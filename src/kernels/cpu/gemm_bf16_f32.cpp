// gemm_bf16_f32.cpp (cpu): bf16-weight products on float32 arithmetic (see gemm_bf16.h): where
// vdpbf16ps is missing or slow, and the choice.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu/gemm_bf16.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/peak_probe.h"

namespace dsmoe::cpu {
namespace {

inline float bf16_bits_to_f32(uint32_t high16_in_place) {
  float f;
  std::memcpy(&f, &high16_in_place, sizeof(f));
  return f;
}

// Rows [r0, r0 + nr) of a row-major bf16 matrix (row stride `stride`) as float32 dst[nr, K].
void expand_rows(const uint16_t* w, int64_t stride, int64_t K, int64_t r0, int64_t nr, float* dst) {
  for (int64_t r = 0; r < nr; r++) {
    const uint16_t* src = w + (r0 + r) * stride;
    float* d = dst + r * K;
    for (int64_t k = 0; k < K; k++) d[k] = bf16_bits_to_f32(static_cast<uint32_t>(src[k]) << 16);
  }
}

// Enough multiply-adds to be worth waking the OpenMP team.
constexpr int64_t kMinParallelWork = int64_t{1} << 16;
// Weight rows a thread expands and multiplies at a time.
constexpr int64_t kBlockRows = 64;

}  // namespace

bool bf16_products_prefer_f32() {
  static const bool prefer = [] {
    if (!gemm_bf16_native()) return true;
    // Register-only loops on every thread, ~1 ms each: vdpbf16ps does two multiply-adds per
    // float32 lane; where it does not run at more than 1.25x the FMAs' rate in multiply-adds
    // (Sapphire Rapids: half of it), float32 sgemm on expanded weights is the faster product.
    constexpr int64_t kIterations = 1 << 17;
    return bf16_dot_peak(kIterations) < 1.25 * fp32_fma_peak(kIterations);
  }();
  return prefer;
}

void gemm_bf16_expanded(float* out, const float* x, int64_t M, const uint16_t* w, int64_t N,
                        int64_t K, int64_t w_stride) {
  if (M <= 0 || N <= 0) return;
  const int64_t n_blocks = (N + kBlockRows - 1) / kBlockRows;
  // Threads take whole blocks; BLAS inside runs on the calling thread (in a parallel region
  // OpenBLAS starts no threads of its own).
#pragma omp parallel for schedule(static) if (M * N * K >= kMinParallelWork)
  for (int64_t b = 0; b < n_blocks; b++) {
    const int64_t r0 = b * kBlockRows, nr = std::min(kBlockRows, N - r0);
    thread_local std::vector<float> expanded;  // [nr, K]
    expanded.resize(static_cast<size_t>(nr * K));
    expand_rows(w, w_stride, K, r0, nr, expanded.data());
    gemm(false, true, M, nr, K, 1.0f, x, K, expanded.data(), K, 0.0f, out + r0, N);
  }
}

}  // namespace dsmoe::cpu
