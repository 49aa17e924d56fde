// cpu_cap.h: the instruction-set cap. DSMOE_MAX_ISA=avx2 (or sse4) makes the engine's own vector
// code run as on a CPU without AVX-512 (or AVX2): the Highway targets (kernels/cpu/isa_dispatch.h),
// the two-copy loops of util/multiversion.h and the AVX-512 / BF16 / VNNI checks all ask here.
// OpenBLAS chooses its kernels itself, at load: set OPENBLAS_CORETYPE=Haswell with the cap.
#pragma once

namespace dsmoe {

// The widest instruction set the vector code may use, in increasing order.
enum class IsaCap { kSse4, kAvx2, kAvx512, kNative };

// DSMOE_MAX_ISA (unset, "native", "avx512", "avx2" or "sse4"), read once; any other value throws
// dsmoe::Error naming the variable and the values it takes.
IsaCap isa_cap();
const char* isa_cap_name(IsaCap cap);

// What the CPU has and the cap allows (each computed once).
bool cpu_allows_avx2();         // AVX2 + FMA (x86-64-v3)
bool cpu_allows_avx512();       // AVX-512 F/BW/CD/DQ/VL (x86-64-v4)
bool cpu_allows_avx512_bf16();  // and AVX512-BF16
bool cpu_allows_avx512_vnni();  // and AVX512-VNNI
bool cpu_allows_avx512_gfni();  // and GFNI + AVX512-VBMI (512-bit vgf2p8affineqb, vpermb)

}  // namespace dsmoe
