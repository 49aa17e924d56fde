// multiversion.h: functions compiled twice, for x86-64 as a whole and for AVX-512
// (x86-64-v4), the copy picked when the program loads (GCC function multi-versioning). For
// plain loops the compiler vectorizes: they run 16 lanes wide where the CPU allows, with the
// same operations per element, so the same results, either way.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define DSMOE_MULTIVERSION __attribute__((target_clones("default", "arch=x86-64-v4")))
#else
#define DSMOE_MULTIVERSION
#endif
