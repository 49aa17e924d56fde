#!/usr/bin/env bash
# test.sh: installs dependencies, then builds and runs the whole test suite twice: optimised, and
# under AddressSanitizer + UndefinedBehaviorSanitizer; then, in the optimised build, the golden,
# gradient and kernel programs as a CPU without AVX-512 runs them (CTest label avx2:
# DSMOE_MAX_ISA=avx2 and OPENBLAS_CORETYPE=Haswell, tests/CMakeLists.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY=passive  # 2 shared cores: sleeping, not spinning, idle threads
for kind in release asan; do
  echo "== tests: $kind build"
  bash scripts/build.sh "$kind"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir "build/$kind" --output-on-failure -j "$(nproc)" -LE avx2
done
echo "== tests: release build capped at AVX2 (label avx2)"
ctest --test-dir build/release --output-on-failure -j "$(nproc)" -L avx2
