#!/usr/bin/env bash
# bench/shared_load.sh: how much dsmoe slows down on cores it shares with other busy processes.
# Runs the same three jobs idle and then under `stress -c C` (C busy processes, default C = P,
# the cores this process may use), in one run, with no OpenMP variable set (as a new user would):
#   train    `dsmoe train` on configs/train-demo-v3.json (the README's main job: batch 8 x 128),
#            the median tokens/s of its steps after the first 5
#   prefill  `dsmoe bench` on a ~40 M-parameter V3-style model: a 256-token prompt (median of 3)
#   decode   the same: 64 tokens after it
# and prints each slowdown (idle tokens/s / loaded tokens/s) against the fair share (P + C) / P:
# "ok" when it is within 1.5x of it. SPIN=1 adds a loaded run with OMP_WAIT_POLICY=active (the
# spinning that dsmoe turns off when other tasks are runnable) for comparison; it is 10-100x slower, so each of
# its commands stops after SPIN_LIMIT seconds (default 120): training then reports the steps it
# made, and a bench that did not finish shows 0.
# Environment: DSMOE (default build/release/dsmoe), LOAD (C), STEPS (training steps, default 40),
# SHARED_DIR (scratch, default bench/out/shared), SPIN=1, SPIN_LIMIT.
# The numbers mean something only when nothing else runs: "idle" is whatever the machine was
# doing besides this script (the load average is printed before each phase).
set -euo pipefail
cd "$(dirname "$0")/.."
dsmoe=${DSMOE:-build/release/dsmoe}
cores=$(nproc)  # the cores this process may use (affinity)
load=${LOAD:-$cores}
steps=${STEPS:-40}
dir=${SHARED_DIR:-bench/out/shared}
command -v stress >/dev/null || { echo "shared_load.sh: needs stress (scripts/setup.sh)"; exit 1; }
[ -x "$dsmoe" ] || { echo "shared_load.sh: no $dsmoe (bash scripts/build.sh release)"; exit 1; }
mkdir -p "$dir"
# No OpenMP variable from the caller's environment: the defaults are what is measured.
clean_env=(env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u OMP_NUM_THREADS -u OMP_PROC_BIND)

# The inputs: a corpus for training and a random-weight model for prefill and decode.
[ -s "$dir/corpus.txt" ] || "$dsmoe" corpus --out "$dir/corpus.txt" --bytes 200000 >/dev/null 2>&1
if [ ! -s "$dir/model/model.safetensors" ]; then
  python3 - "$dir/bench-config.json" <<'EOF'
import json, sys
config = json.load(open("configs/train-demo-v3.json"))
config.update(vocab_size=2048, hidden_size=512, intermediate_size=1024, moe_intermediate_size=256,
              num_hidden_layers=4, num_attention_heads=8, q_lora_rank=128, kv_lora_rank=64,
              qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=32,
              num_experts_per_tok=2, n_group=4, topk_group=2, num_nextn_predict_layers=0,
              max_position_embeddings=1024)
json.dump(config, open(sys.argv[1], "w"), indent=2)
EOF
  "$dsmoe" init --config "$dir/bench-config.json" --out "$dir/model" >/dev/null 2>&1
fi

# Prints "TRAIN PREFILL DECODE" tokens/s; arguments: a time limit per command in seconds (0: none),
# then extra NAME=VALUE for the environment.
measure() {
  local limit=$1
  shift
  rm -rf "$dir/run" "$dir/bench.json"
  timeout "$limit" "${clean_env[@]}" "$@" "$dsmoe" train --model-config configs/train-demo-v3.json \
    --data "$dir/corpus.txt" --out "$dir/run" --steps "$steps" --batch-size 8 --seq-len 128 \
    --lr 3e-3 --warmup 10 --analytics-every 0 --quiet 2>/dev/null || true
  local train
  train=$(python3 -c '
import json, os, statistics, sys
lines = open(sys.argv[1]).readlines() if os.path.exists(sys.argv[1]) else []
rates = [json.loads(l)["tokens_per_s"] for l in lines if l.endswith("\n")]
print(f"{statistics.median(rates[5:] or rates or [0]):.1f}")' "$dir/run/metrics.jsonl")
  timeout "$limit" "${clean_env[@]}" "$@" "$dsmoe" bench --model "$dir/model" --prompt 256 \
    --decode 64 --reps 3 --json --no-roofline 2>/dev/null >"$dir/bench.json" || true
  python3 -c '
import json, sys
text = open(sys.argv[1]).read()
b = json.loads(text) if text.strip() else {}
prefill, decode = (b.get(k, {}).get("median_tokens_per_s", 0) for k in ("prefill", "decode"))
print(sys.argv[2], f"{prefill:.1f}", f"{decode:.1f}")' "$dir/bench.json" "$train"
}

say() { printf '== [%s] %s (load average %s)\n' "$(date +%H:%M:%S)" "$*" "$(cut -d' ' -f1 /proc/loadavg)"; }
say "idle: $cores usable cores"
idle=$(measure 0)
say "under stress -c $load"
setsid stress -c "$load" >/dev/null 2>&1 &
stress_pid=$!
trap 'kill -TERM -- -"$stress_pid" 2>/dev/null || true' EXIT
sleep 2
loaded=$(measure 0)
spin=""
if [ "${SPIN:-0}" = 1 ]; then
  say "under stress -c $load, OMP_WAIT_POLICY=active"
  spin=$(measure "${SPIN_LIMIT:-120}" OMP_WAIT_POLICY=active)
fi
kill -TERM -- -"$stress_pid" 2>/dev/null || true
trap - EXIT

python3 - "$cores" "$load" "$idle" "$loaded" "$spin" <<'EOF'
import sys
cores, load = int(sys.argv[1]), int(sys.argv[2])
idle, loaded = [list(map(float, a.split())) for a in sys.argv[3:5]]
spin = list(map(float, sys.argv[5].split())) if sys.argv[5] else None
fair = (cores + load) / cores
print(f"\n{cores} cores, {load} busy processes: fair-share slowdown (P + C) / P = {fair:.2f}, "
      f"limit 1.5x = {1.5 * fair:.2f}")
header = f"{'job':<8} {'idle tok/s':>11} {'loaded tok/s':>13} {'slowdown':>9} {'vs fair':>8}"
if spin: header += f" {'spin tok/s':>11} {'slowdown':>9}"
print(header)
for i, job in enumerate(["train", "prefill", "decode"]):
    slowdown = idle[i] / loaded[i]
    line = (f"{job:<8} {idle[i]:>11.1f} {loaded[i]:>13.1f} {slowdown:>8.2f}x {slowdown / fair:>7.2f}x"
            f" {'ok' if slowdown <= 1.5 * fair else 'SLOW'}")
    if spin:
        line += f" {spin[i]:>11.1f} " + (f"{idle[i] / spin[i]:>8.2f}x" if spin[i] else "  timeout")
    print(line)
EOF
