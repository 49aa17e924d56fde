// peak_probe.h (cpu): the machine's arithmetic peaks measured by register-only instruction loops
// (no memory traffic), for the roofline of `dsmoe bench`: float32 FMA, bf16 dot product
// (vdpbf16ps) and int8 dot product (vpdpbusd), on all OpenMP threads. No SIMD types here.
#pragma once
#include <cstdint>

namespace dsmoe::cpu {

// Operations per second (an FMA or a multiply-add counts 2) over `iterations` steps of the loop
// on every thread; 0 where this CPU lacks the instruction (bf16 needs AVX512-BF16, int8
// AVX512-VNNI; fp32 uses the widest FMA Highway dispatches to).
double fp32_fma_peak(int64_t iterations);
double bf16_dot_peak(int64_t iterations);
double int8_dot_peak(int64_t iterations);

}  // namespace dsmoe::cpu
