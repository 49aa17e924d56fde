#!/usr/bin/env bash
# bench/scale_out.sh: expert parallelism on this machine, R = 1, 2, 4 ranks, as one Markdown
# table (docs/scale-out.md): `dsmoe bench --train` (the global batch split between the ranks,
# the experts spread over them) and prefill / decode (one sequence per rank), with the all-to-all
# bytes per token against the bound of device-limited routing, the share of time in collectives
# and the tokens each rank's experts received (max / mean). Then a ping-pong between two ranks
# over shared memory (--mca btl self,vader) and TCP (self,tcp): the latency and bandwidth that
# bench/scale_out_model.py takes for its model of 8 to 256 ranks (printed last). Prints the CPU
# model, the date and the load averages before and after: on a shared machine the numbers are
# what it allowed.
#
# Environment: DSMOE (default build/release/dsmoe), CONFIG (default bench/configs/train-s.json),
# RANKS (default "1 2 4"), BATCH x SEQ (default 8 x 256), REPS (timed training steps, default 3),
# WARMUP (untimed, default 1), PROMPT / DECODE (default 64 / 16), THREADS (per rank, default
# cores / R, at least 1), OUT (scratch directory, default bench/out/scale_out).
# Runs at the caller's priority (`nice -n 0`); R > cores is oversubscribed (mpirun --oversubscribe).
set -euo pipefail
cd "$(dirname "$0")/.."
dsmoe=${DSMOE:-build/release/dsmoe}
config=${CONFIG:-bench/configs/train-s.json}
ranks_list=${RANKS:-1 2 4}
batch=${BATCH:-8} seq=${SEQ:-256} reps=${REPS:-3} warmup=${WARMUP:-1}
prompt=${PROMPT:-64} decode=${DECODE:-16}
out=${OUT:-bench/out/scale_out}
cores=$(nproc)
[ -x "$dsmoe" ] || { echo "scale_out.sh: no $dsmoe (cmake --build build/release)"; exit 1; }
command -v mpirun > /dev/null || { echo "scale_out.sh: needs mpirun (openmpi-bin)"; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$out"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

name=$(basename "$config" .json)
model=$out/$name
if ! cmp -s "$config" "$model/source-config.json"; then  # random weights, made once
  "$dsmoe" init --config "$config" --out "$model" --seed 1 > /dev/null 2>&1
  cp "$config" "$model/source-config.json"
fi

for ranks in $ranks_list; do
  threads=${THREADS:-$(( cores / ranks > 0 ? cores / ranks : 1 ))}
  args=(bench --model "$model" --train --batch "$batch" --seq "$seq" --reps "$reps"
        --train-warmup "$warmup" --prompt "$prompt" --decode "$decode" --threads "$threads"
        --no-roofline --json)
  echo "R = $ranks: $dsmoe ${args[*]}" >&2
  if [ "$ranks" = 1 ]; then
    "$dsmoe" "${args[@]}" 2> "$out/r$ranks.log" > "$out/r$ranks.json"
  else
    mpirun --oversubscribe -np "$ranks" "$dsmoe" "${args[@]}" 2> "$out/r$ranks.log" \
      > "$out/r$ranks.json"
  fi
done

# The ping-pong (bench/pingpong.c) over shared memory and over TCP.
mpicc -O2 -o "$out/pingpong" bench/pingpong.c
for btl in vader tcp; do
  mpirun --oversubscribe -np 2 --mca btl "self,$btl" "$out/pingpong" 50 > "$out/pingpong-$btl.json"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$out" "$name" "$load_before" "$load_after" $ranks_list <<'EOF'
import json, sys
out, name, load_before, load_after, *ranks = sys.argv[1:]
runs = {int(r): json.load(open(f"{out}/r{r}.json")) for r in ranks}
first = runs[min(runs)]
c = first["config"]
print(f"{name} ({c['model_type']}, hidden {c['hidden_size']}, {c['layers']} layers, "
      f"{c['n_routed_experts']} routed experts top-{c['num_experts_per_tok']}), training batch "
      f"{first['batch']} x {first['seq']}, f32, {first['reps']} timed steps after "
      f"{first['train_warmup']}; prefill {first['prompt']} + decode {first['decode_tokens']} tokens "
      f"per sequence (one sequence per rank)")
print(f"{first['machine']['cpu']}, {first['machine']['cores']} cores; {first['date']}; "
      f"load averages (1, 5, 15 min) {load_before} before, {load_after} after\n")
print("| R | threads/rank | train tokens/s | a2a B/token (train, sent) | bound (M remote ranks) "
      "| ranks/token | comm share | tokens recv max/mean | decode tokens/s (all ranks) "
      "| a2a B/token (decode) | bound |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in sorted(runs):
    b = runs[r]
    p = b.get("parallel")
    decode_all = b["decode_tokens_per_s"] * r
    if p is None:
        print(f"| {r} | {b['threads']} | {b['train_tokens_per_s']:.0f} | 0 | 0 | 1 | 0% | 1.00 "
              f"| {decode_all:.1f} | 0 | 0 |")
        continue
    t, d = p["train"], p["decode"]
    remote = min(t["max_ranks_per_token"], r - 1)
    print(f"| {r} | {b['threads']} | {b['train_tokens_per_s']:.0f} "
          f"| {t['a2a_bytes_sent_per_token']['mean']:.0f} "
          f"| {t['a2a_bytes_per_token_bound']} ({remote}) | {t['ranks_per_token']:.2f} "
          f"| {100 * t['comm_share']['mean']:.0f}% | {t['tokens_received']['max_over_mean']:.2f} "
          f"| {decode_all:.1f} | {d['a2a_bytes_sent_per_token']['mean']:.0f} "
          f"| {d['a2a_bytes_per_token_bound']} |")
print()
for btl in ("vader", "tcp"):
    pp = json.load(open(f"{out}/pingpong-{btl}.json"))
    print(f"ping-pong, 2 ranks, --mca btl self,{btl}: latency {pp['latency_s'] * 1e6:.2f} us "
          f"(8 B one way), bandwidth {pp['bandwidth_bytes_per_s'] / 1e9:.2f} GB/s "
          f"({pp['sizes'][-1] >> 20} MiB one way)")
EOF
echo
python3 bench/scale_out_model.py --pingpong "$out"
