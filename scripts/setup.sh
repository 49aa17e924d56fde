#!/usr/bin/env bash
# Installs dsmoe's build and test dependencies from Debian 12 packages (run as root; no other
# downloads). Skips apt-get when everything is already installed.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config
  libopenblas-openmp-dev      # BLAS, sharing OpenMP's thread pool
  nlohmann-json3-dev          # config.json, safetensors headers
  libcli11-dev                # the dsmoe command line
  libfmt-dev                  # formatting
  libgtest-dev                # tests
  libhwy-dev                  # Highway: SIMD kernels with run-time dispatch
  gnuplot-nox                 # dsmoe report: training plots
  libpcre2-dev                # tokenizer.json pre-tokenizer regexes (Unicode properties)
  pybind11-dev python3-dev python3-numpy python3-pytest  # the Python module and its tests
  libcpp-httplib-dev          # dsmoe serve: the HTTP server
  openmpi-bin libopenmpi-dev  # expert / data parallelism over MPI
  clang libclang-rt-14-dev    # libFuzzer targets (fuzz/)
  nodejs                      # the OpenAI client in the server tests; tokenizer peer bench
  stress                      # bench/shared_load.sh: busy processes competing for the cores
)
# Debian's nodejs comes without npm (a separate package); NodeSource's carries its own npm and
# conflicts with Debian's.
command -v npm >/dev/null 2>&1 || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "setup: dependencies present"
