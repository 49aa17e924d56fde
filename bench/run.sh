#!/usr/bin/env bash
# bench/run.sh: reproduces the benchmark table of bench/README.md in one run on a fresh Debian 12
# machine (as root):
#   1. installs the dependencies (scripts/setup.sh, and python3-torch for the baseline) and builds
#      dsmoe (scripts/build.sh release);
#   2. checks the PyTorch baseline against the golden logits of tests/data (BENCH_CHECK=0 skips);
#   3. writes random-weight checkpoints with `dsmoe init`: infer-lite8 (DeepSeek-V2-Lite shapes,
#      8 layers, bf16, ~9.2 GB on disk) and train-s (V3-style, 141 M parameters, f32, ~0.6 GB);
#   4. runs `dsmoe bench --json` on infer-lite8 at bf16, q8_0 and q4_0 (pp512 / tg128), on
#      train-s with --train (batch 8 x 256, AdamW; f32 and bf16 mixed precision), and on the full
#      27-layer V2-Lite shape at q4_0 (peak RSS), then bench/torch_baseline.py on the same
#      checkpoints (infer-lite8 at bf16, train-s training in f32);
#   5. prints the table with the dsmoe / PyTorch ratios and the roofline fractions, with the
#      machine and the date, and writes it to $BENCH_DIR/results.md.
# Expect ~45-60 minutes on 2 idle cores (build ~5-10, init ~5 + ~7 for the full V2-Lite shape,
# each infer-lite8 run ~2-4), about 45 GB of disk in $BENCH_DIR at its peak (BENCH_FULL=0 skips
# the 27-layer V2-Lite run: ~12 GB) and ~20 GB of RAM. Numbers mean something only on an idle
# machine.
# Environment: BENCH_DIR (default bench/out), THREADS (default: all cores), REPS (default 3),
# TRAIN_REPS (timed training steps, default 5, after 3 untimed ones in both engines),
# BENCH_OPENBLAS_CORETYPE (force OpenBLAS's kernels, e.g. Haswell; default: OPENBLAS_CORETYPE
# unset, OpenBLAS picks the CPU's),
# BENCH_CHECK=0 (skip the baseline check), BENCH_SKIP_BUILD=1 (use build/release as it is),
# BENCH_KEEP=1 (keep the checkpoints; otherwise the ~9 GB infer-lite8 is deleted at the end),
# LITE_DTYPE=f32 (write infer-lite8 in f32, 18.4 GB: Model::load views f32 tensors in the mmap but
# converts bf16 ones to float32 in memory, ~18 GB, before re-storing them; f32 keeps that off the
# anonymous memory when RAM is short).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${BENCH_DIR:-bench/out}
threads=${THREADS:-$(nproc)}
reps=${REPS:-3}
train_reps=${TRAIN_REPS:-5}  # training steps timed, after 3 untimed ones (both engines)
# A forced OpenBLAS core type (this workplace's environment sets OPENBLAS_CORETYPE=Haswell: AVX2
# kernels on an AVX-512 CPU, half the float32 GEMM speed) is dropped, so that both engines get
# the kernels a fresh Debian machine picks for its CPU; BENCH_OPENBLAS_CORETYPE=X forces X.
if [ -n "${BENCH_OPENBLAS_CORETYPE:-}" ]; then
  export OPENBLAS_CORETYPE=$BENCH_OPENBLAS_CORETYPE
else
  unset OPENBLAS_CORETYPE
fi
dsmoe=build/release/dsmoe
py=/usr/bin/python3
say() { printf '\n== [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
start=$(date +%s)

say "0. Setup and build (scripts/setup.sh, python3-torch, scripts/build.sh release)"
bash scripts/setup.sh
if ! $py -c "import torch" 2>/dev/null; then
  echo "installing python3-torch (Debian's PyTorch 1.13, for the baseline)"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3-torch >/dev/null
fi
[ "${BENCH_SKIP_BUILD:-0}" = 1 ] || bash scripts/build.sh release >/dev/null
mkdir -p "$out"
load=$(cut -d' ' -f1 /proc/loadavg)
echo "threads $threads, reps $reps, results in $out; load average now $load"
if awk "BEGIN { exit !($load > 1.5) }"; then
  echo "WARNING: load average $load > 1.5: other work is running; the numbers will be low"
fi
# The baseline runs as a good PyTorch user runs it: threads = cores, glibc malloc keeping freed
# memory rather than unmapping it (as preloading jemalloc would: PyTorch's CPU allocator does not
# cache, so each step's gradients and AdamW temporaries otherwise fault in fresh zeroed pages; 2-3x
# on the backward pass here), and its OpenMP threads waiting as dsmoe's do (util/threads.h): a
# short spin (GOMP_SPINCOUNT=10000) when no other task is runnable, else OMP_WAIT_POLICY=PASSIVE
# (on an idle machine PASSIVE cost PyTorch's training 4-15% against the short spin, bench/README.md).
# dsmoe runs in the caller's environment and chooses itself (its JSON records the choice).
torch_tunables=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
torch_wait() {  # dsmoe's choice: the median of 5 samples of the runnable count, 2 ms apart
  local samples=() tasks running _
  for _ in 1 2 3 4 5; do
    read -r _ _ _ tasks _ </proc/loadavg  # (a builtin: only this shell runs while it reads)
    samples+=("${tasks%/*}")
    sleep 0.002
  done
  running=$(printf '%s\n' "${samples[@]}" | sort -n | sed -n 3p)
  if [ $((running - 1 + threads)) -le "$(nproc --all)" ]; then
    echo GOMP_SPINCOUNT=10000
  else
    echo OMP_WAIT_POLICY=PASSIVE
  fi
}
torch_py() {
  env "$(torch_wait)" GLIBC_TUNABLES=$torch_tunables $py bench/torch_baseline.py "$@"
}

if [ "${BENCH_CHECK:-1}" = 1 ]; then
  say "1. Checking the PyTorch baseline against the golden logits (tests/data, float32, 1e-4)"
  for fixture in v2-tiny v3-tiny v3-yarn; do
    torch_py --model "tests/data/$fixture/model" --threads "$threads" \
      --check "tests/data/$fixture/expected.safetensors"
  done
fi

say "2. Random checkpoints with dsmoe init (infer-lite8 bf16 ~9.2 GB: a few minutes)"
for spec in "infer-lite8 ${LITE_DTYPE:-bf16}" "train-s f32"; do
  read -r name dtype <<< "$spec"
  if [ -f "$out/$name/model.safetensors" ]; then
    echo "$out/$name exists; reused"
  else
    $dsmoe init --config "bench/configs/$name.json" --out "$out/$name" --dtype "$dtype" --seed 1
  fi
done

say "3. dsmoe bench (each infer-lite8 run loads ~9 GB and takes a few minutes)"
for w in bf16 q8_0 q4_0; do
  echo "dsmoe infer-lite8 $w: pp512 / tg128"
  $dsmoe bench --model "$out/infer-lite8" --weights "$w" --prompt 512 --decode 128 \
    --threads "$threads" --reps "$reps" --json > "$out/dsmoe-infer-lite8-$w.json"
done
echo "dsmoe train-s: training step 8 x 256 (f32, then bf16 mixed precision)"
$dsmoe bench --model "$out/train-s" --train --batch 8 --seq 256 --prompt 512 --decode 128 \
  --threads "$threads" --reps "$train_reps" --json > "$out/dsmoe-train-s.json"
$dsmoe bench --model "$out/train-s" --train --precision bf16 --batch 8 --seq 256 --prompt 512 \
  --decode 128 --threads "$threads" --reps "$train_reps" --json --no-roofline > "$out/dsmoe-train-s-bf16.json"
if [ "${BENCH_FULL:-1}" = 1 ]; then
  echo "dsmoe v2-lite (all 27 layers, bf16 on disk ~31 GB) at q4_0: peak RSS (target <= 10 GiB)"
  [ -f "$out/v2-lite/model.safetensors" ] ||
    $dsmoe init --config bench/configs/v2-lite.json --out "$out/v2-lite" --dtype bf16 --seed 1
  $dsmoe bench --model "$out/v2-lite" --weights q4_0 --prompt 512 --decode 128 \
    --threads "$threads" --reps 1 --json --no-roofline > "$out/dsmoe-v2-lite-q4_0.json"
  [ "${BENCH_KEEP:-0}" = 1 ] || rm -rf "$out/v2-lite"
fi

say "4. PyTorch baseline ($($py -c 'import torch; print(torch.__version__)'), $(torch_wait), GLIBC_TUNABLES=$torch_tunables)"
echo "pytorch infer-lite8 bf16: pp512 / tg128 (decode at ~9 tokens/s: ~1 minute per repetition)"
torch_py --model "$out/infer-lite8" --weights bf16 --prompt 512 --decode 128 \
  --threads "$threads" --reps "$reps" > "$out/torch-infer-lite8-bf16.json"
echo "pytorch train-s: training step 8 x 256 (f32)"
torch_py --model "$out/train-s" --train --no-inference --batch 8 --seq 256 \
  --threads "$threads" --reps "$train_reps" > "$out/torch-train-s.json"

say "5. Results"
$py bench/table.py "$out" | tee "$out/results.md"
[ "${BENCH_KEEP:-0}" = 1 ] || rm -rf "$out/infer-lite8"
echo "done in $(( ($(date +%s) - start) / 60 )) minutes; JSON in $out/, table in $out/results.md"
