#!/usr/bin/env bash
# test.sh: installs dependencies, then builds and runs the whole test suite (CTest: GoogleTest
# programs, pytest for the Python module, the node OpenAI client against the server, MPI runs):
#  1. optimised (release);
#  2. in the release build, the golden, gradient and kernel programs as a CPU without AVX-512 runs
#     them (CTest label avx2: DSMOE_MAX_ISA=avx2 and OPENBLAS_CORETYPE=Haswell);
#  3. the libFuzzer targets (fuzz/run.sh, clang): their corpora replayed and a short run of each
#     (FUZZ_SECONDS, default 10);
#  4. the whole suite again under AddressSanitizer + UndefinedBehaviorSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY=passive  # 2 shared cores: sleeping, not spinning, idle threads
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
run_suite() {  # run_suite KIND: build and run every test but the avx2 repeats
  echo "== tests: $1 build"
  bash scripts/build.sh "$1"
  ctest --test-dir "build/$1" --output-on-failure -j "$(nproc)" -LE avx2
}
run_suite release
echo "== tests: release build capped at AVX2 (label avx2)"
ctest --test-dir build/release --output-on-failure -j "$(nproc)" -L avx2
echo "== fuzz targets"
bash fuzz/run.sh "${FUZZ_SECONDS:-10}"
run_suite asan
