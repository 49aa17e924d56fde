#!/usr/bin/env bash
# test.sh: installs dependencies, then builds and runs the whole test suite twice: optimised, and
# under AddressSanitizer + UndefinedBehaviorSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY=passive  # 2 shared cores: sleeping, not spinning, idle threads
for kind in release asan; do
  echo "== tests: $kind build"
  bash scripts/build.sh "$kind"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir "build/$kind" --output-on-failure -j "$(nproc)"
done
