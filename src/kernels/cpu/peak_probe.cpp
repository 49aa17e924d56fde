// peak_probe.cpp (cpu): register-only instruction loops for the arithmetic peaks (peak_probe.h).
// Twelve independent accumulators per thread hide the instructions' latency; the loop count is
// opaque to the compiler (an argument), and the sums are stored so that nothing is optimized
// away. Compiled per x86 target like quant_ops.cpp; the bf16 and int8 loops exist on AVX3_DL.

// clang-format off
#ifndef HWY_WANT_AVX3_DL
#define HWY_WANT_AVX3_DL
#endif
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/peak_probe.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// clang-format on

#include "kernels/cpu/peak_probe.h"

#include <omp.h>

#include <chrono>
#include <cstdint>

#include "kernels/cpu/isa_dispatch.h"
#include "util/cpu_cap.h"

HWY_BEFORE_NAMESPACE();
#if HWY_TARGET == HWY_AVX3_DL
HWY_PUSH_ATTRIBUTES("avx512vnni")
#endif
namespace dsmoe::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

constexpr int kAccumulators = 12;

// Float32 FMAs over vectors of the target's width; returns FLOPs done by this thread.
double FmaLoop(int64_t iterations) {
  const hn::ScalableTag<float> d;
  // Distinct starting values, or the compiler merges the identical chains into one.
  auto acc0 = hn::Set(d, 1.0f), acc1 = hn::Set(d, 1.1f), acc2 = hn::Set(d, 1.2f),
       acc3 = hn::Set(d, 1.3f), acc4 = hn::Set(d, 1.4f), acc5 = hn::Set(d, 1.5f),
       acc6 = hn::Set(d, 1.6f), acc7 = hn::Set(d, 1.7f), acc8 = hn::Set(d, 1.8f),
       acc9 = hn::Set(d, 1.9f), acc10 = hn::Set(d, 2.0f), acc11 = hn::Set(d, 2.1f);
  const auto a = hn::Set(d, 0.999999f), b = hn::Set(d, 1e-7f);
  for (int64_t i = 0; i < iterations; i++) {
    acc0 = hn::MulAdd(acc0, a, b), acc1 = hn::MulAdd(acc1, a, b), acc2 = hn::MulAdd(acc2, a, b);
    acc3 = hn::MulAdd(acc3, a, b), acc4 = hn::MulAdd(acc4, a, b), acc5 = hn::MulAdd(acc5, a, b);
    acc6 = hn::MulAdd(acc6, a, b), acc7 = hn::MulAdd(acc7, a, b), acc8 = hn::MulAdd(acc8, a, b);
    acc9 = hn::MulAdd(acc9, a, b), acc10 = hn::MulAdd(acc10, a, b);
    acc11 = hn::MulAdd(acc11, a, b);
  }
  auto sum = hn::Add(hn::Add(hn::Add(acc0, acc1), hn::Add(acc2, acc3)),
                     hn::Add(hn::Add(acc4, acc5), hn::Add(acc6, acc7)));
  sum = hn::Add(sum, hn::Add(hn::Add(acc8, acc9), hn::Add(acc10, acc11)));
  volatile float sink = hn::GetLane(sum);
  (void)sink;
  return 2.0 * kAccumulators * static_cast<double>(hn::Lanes(d)) * static_cast<double>(iterations);
}

#if HWY_TARGET == HWY_AVX3_DL
// Twelve accumulators of one instruction `step(acc)`, iterations times; their sum (`add`) is
// returned so that none is dead.
template <class V, class Init, class Step, class Add>
HWY_INLINE V RunTwelve(const Init& init, int64_t iterations, const Step& step, const Add& add) {
  V acc[kAccumulators];  // distinct starting values: identical chains would be merged
  for (int j = 0; j < kAccumulators; j++) acc[j] = init(j);
  for (int64_t i = 0; i < iterations; i++)
    for (int j = 0; j < kAccumulators; j++) acc[j] = step(acc[j]);
  V sum = acc[0];
  for (int j = 1; j < kAccumulators; j++) sum = add(sum, acc[j]);
  return sum;
}

__attribute__((target("avx512bf16"))) double Bf16Loop(int64_t iterations) {
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3F80), b = (__m512bh)_mm512_set1_epi16(0x3F00);
  const __m512 sum =
      RunTwelve<__m512>([](int j) { return _mm512_set1_ps(static_cast<float>(j)); }, iterations,
                        [&](__m512 acc) { return _mm512_dpbf16_ps(acc, a, b); },
                        [](__m512 x, __m512 y) { return _mm512_add_ps(x, y); });
  volatile float sink = _mm_cvtss_f32(_mm512_castps512_ps128(sum));
  (void)sink;
  return 64.0 * kAccumulators * static_cast<double>(iterations);  // 32 pairs x 2 per instruction
}

double Int8Loop(int64_t iterations) {
  const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
  const __m512i sum =
      RunTwelve<__m512i>([](int j) { return _mm512_set1_epi32(j); }, iterations,
                         [&](__m512i acc) { return _mm512_dpbusd_epi32(acc, a, b); },
                         [](__m512i x, __m512i y) { return _mm512_add_epi32(x, y); });
  volatile int sink = _mm_cvtsi128_si32(_mm512_castsi512_si128(sum));
  (void)sink;
  return 128.0 * kAccumulators * static_cast<double>(iterations);  // 64 products x 2
}
#endif

// 0: FMA, 1: bf16 dot, 2: int8 dot. Ops of this thread, or 0 where unavailable.
double RunLoop(int kind, int64_t iterations) {
  if (kind == 0) return FmaLoop(iterations);
#if HWY_TARGET == HWY_AVX3_DL
  if (kind == 1) return cpu_allows_avx512_bf16() ? Bf16Loop(iterations) : 0.0;
  if (kind == 2) return Int8Loop(iterations);
#endif
  return 0.0;
}

}  // namespace HWY_NAMESPACE
}  // namespace dsmoe::cpu
#if HWY_TARGET == HWY_AVX3_DL
HWY_POP_ATTRIBUTES
#endif
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dsmoe::cpu {

HWY_EXPORT(RunLoop);
namespace {
// DSMOE_MAX_ISA holds before the first dispatch (kernels/cpu/isa_dispatch.h).
[[maybe_unused]] const int64_t kIsaCapApplied = apply_isa_cap();
}  // namespace

namespace {

// All threads run the loop at once; total ops / the slowest thread's wall time (best of 3).
double peak(int kind, int64_t iterations) {
  double best = 0.0;
  for (int rep = 0; rep < 3; rep++) {
    double ops = 0.0;
    const auto start = std::chrono::steady_clock::now();
#pragma omp parallel reduction(+ : ops)
    ops += HWY_DYNAMIC_DISPATCH(RunLoop)(kind, iterations);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (seconds > 0.0 && ops / seconds > best) best = ops / seconds;
  }
  return best;
}

}  // namespace

double fp32_fma_peak(int64_t iterations) { return peak(0, iterations); }
double bf16_dot_peak(int64_t iterations) { return peak(1, iterations); }
double int8_dot_peak(int64_t iterations) { return peak(2, iterations); }

}  // namespace dsmoe::cpu
#endif  // HWY_ONCE
