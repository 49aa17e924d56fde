#!/usr/bin/env bash
# build.sh [release|asan]: configures and builds into build/<kind>.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-release}
case "$kind" in
  release) flags=(-DCMAKE_BUILD_TYPE=Release) ;;
  asan) flags=(-DCMAKE_BUILD_TYPE=Debug -DDSMOE_SANITIZE=ON) ;;
  *) echo "build.sh: unknown kind '$kind' (release or asan)" >&2; exit 2 ;;
esac
cmake -S . -B "build/$kind" -G Ninja "${flags[@]}" >/dev/null
cmake --build "build/$kind" -j "$(nproc)"
