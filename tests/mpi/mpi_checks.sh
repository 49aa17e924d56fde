#!/usr/bin/env bash
# mpi_checks.sh DSMOE SOURCE_DIR CHECK: runs `dsmoe` under mpirun with R = 1, 2, 4 ranks and
# compares with one process. CHECK is one of
#   forward   logits, hidden states, routes bit-identical (2 and 4 sequences: idle ranks too)
#   generate  the same greedy tokens (KV cache and --no-cache)
#   train     20 steps: the loss curve within 1e-5 relative of one process, a rerun at fixed R
#             bit-identical, the checkpoint loads in one process and under mpirun -np 2, and
#             --resume with another R continues the same curve; dsmoe report plots the traffic
#   bench     dsmoe bench --train and decode on 2 ranks: the JSON has the ranks and the traffic
# Used by CTest (tests/mpi/CMakeLists.txt); needs python3 for the comparisons.
set -euo pipefail
dsmoe=$1 src=$2 check=$3
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/dsmoe_mpi_${check}_XXXXXX)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
mpi() { local ranks=$1; shift; mpirun --oversubscribe -np "$ranks" "$@"; }
compare() { python3 "$here/compare_safetensors.py" "$@"; }
model=$src/tests/data/v3-tiny/model

case $check in
forward)
  python3 "$here/make_ids.py" "$work/ids4.safetensors" 4 16 512
  for input in "$src/tests/data/v3-tiny/expected.safetensors" "$work/ids4.safetensors"; do
    "$dsmoe" forward --model "$model" --input "$input" --output "$work/one.st" --threads 1 2>/dev/null
    for ranks in 1 2 4; do
      mpi $ranks "$dsmoe" forward --model "$model" --input "$input" --output "$work/r$ranks.st" \
        --threads 1 2>/dev/null
      compare "$work/one.st" "$work/r$ranks.st"
      echo "forward $(basename "$input"), $ranks ranks: bit-identical"
    done
  done
  ;;
generate)
  for model in "$src/tests/data/v3-tiny/model" "$src/tests/data/v2-tiny/model"; do
    for cache in "" --no-cache; do
      args=(generate --model "$model" --prompt-ids 5,17,3,99,250,7 --max-new-tokens 12
            --print-ids --threads 1 $cache)
      one=$("$dsmoe" "${args[@]}" 2>/dev/null | tail -1)
      for ranks in 2 4; do
        many=$(mpi $ranks "$dsmoe" "${args[@]}" 2>/dev/null | tail -1)
        [[ "$one" == "$many" ]] || { echo "generate $cache $ranks ranks: $many vs $one"; exit 1; }
      done
      echo "generate $(basename "$(dirname "$model")") $cache: the same tokens on 1, 2, 4 ranks: $one"
    done
  done
  ;;
train)
  train() {  # train RANKS OUT [extra flags]
    local ranks=$1 out=$2; shift 2
    mpi "$ranks" "$dsmoe" train --model-config "$here/train-tiny.json" --data "$src/docs/design.md" \
      --out "$out" --batch-size 4 --seq-len 16 --seed 3 --log-every 5 --analytics-every 0 \
      --threads 1 --quiet "$@" 2>/dev/null
  }
  losses() { python3 -c "import json,sys; print(' '.join(repr(json.loads(l)['loss']) for l in open(sys.argv[1])))" "$1/metrics.jsonl"; }
  "$dsmoe" train --model-config "$here/train-tiny.json" --data "$src/docs/design.md" \
    --out "$work/one" --batch-size 4 --seq-len 16 --seed 3 --analytics-every 0 --threads 1 \
    --quiet --steps 20 2>/dev/null
  for ranks in 1 2 4; do
    train $ranks "$work/r$ranks" --steps 20 --save-every 10
    python3 "$here/close_losses.py" "$work/one/metrics.jsonl" "$work/r$ranks/metrics.jsonl" 1e-5
  done
  train 2 "$work/again2" --steps 20 --save-every 10
  [[ "$(losses "$work/r2")" == "$(losses "$work/again2")" ]] || { echo "2 ranks: reruns differ"; exit 1; }
  cmp "$work/r2/model.safetensors" "$work/again2/model.safetensors"
  echo "train: 2 ranks twice: bit-identical losses and checkpoint"
  # dsmoe report draws the traffic of the 2-rank run (without gnuplot: its data and script).
  if ! "$dsmoe" report --run "$work/r2" > /dev/null 2>&1 && command -v gnuplot > /dev/null; then
    echo "report: dsmoe report failed with gnuplot installed"; exit 1
  fi
  pictures=(parallel.dat); command -v gnuplot > /dev/null && pictures+=(a2a_bytes.png tokens_received.png comm_time.png)
  for f in "${pictures[@]}"; do [[ -s "$work/r2/report/$f" ]] || { echo "report: no $f"; exit 1; }; done
  echo "train: dsmoe report of the 2-rank run: ${pictures[*]}"
  # The 4-rank checkpoint: one Hugging Face checkpoint, loads in one process and on 2 ranks.
  python3 "$here/make_ids.py" "$work/ids.safetensors" 2 16 256
  "$dsmoe" forward --model "$work/r4" --input "$work/ids.safetensors" --output "$work/f1.st" --threads 1 2>/dev/null
  mpi 2 "$dsmoe" forward --model "$work/r4" --input "$work/ids.safetensors" --output "$work/f2.st" --threads 1 2>/dev/null
  compare "$work/f1.st" "$work/f2.st"
  echo "train: the 4-rank checkpoint loads in one process and on 2 ranks (bit-identical forward)"
  # Resume with another R: 10 steps on 4 ranks, then 10 more on 2 ranks.
  cp -r "$work/r4" "$work/resumed"
  rm -rf "$work/resumed/step-00000020"; echo step-00000010 > "$work/resumed/latest"
  train 2 "$work/resumed" --steps 20 --resume
  python3 "$here/close_losses.py" "$work/one/metrics.jsonl" "$work/resumed/metrics.jsonl" 1e-5
  echo "train: resumed on 2 ranks from a 4-rank checkpoint: the same curve"
  ;;
bench)
  # dsmoe bench --train and prefill / decode on 2 ranks: rank 0 prints one JSON object with the
  # ranks and, per phase, the traffic per rank and token (check_bench.py).
  mpi 2 "$dsmoe" bench --model "$model" --train --batch 4 --seq 16 --prompt 8 --decode 4 \
    --reps 1 --train-warmup 1 --threads 1 --json 2>/dev/null > "$work/bench.json"
  python3 "$here/check_bench.py" "$work/bench.json" 2
  ;;
*)
  echo "unknown check $check"; exit 2 ;;
esac
