#!/usr/bin/env bash
# fp8.sh: the "FP8 as shipped" table of bench/README.md: `dsmoe bench` on one checkpoint at
# --weights fp8, q8_0 and bf16, one after the other in one run, with the CPU, the date (UTC) and
# the load average before each, and a Markdown table of decode and prefill tokens/s.
#
#   MODEL=bench/out/infer-lite8 bash bench/fp8.sh     # (bench/run.sh writes that checkpoint)
#
# Knobs: MODEL, DSMOE (default build/release/dsmoe), PROMPT (128), DECODE (32), REPS (2),
# THREADS (all cores), BENCH_DIR (bench/out; the JSON lands in $BENCH_DIR/fp8/).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-bench/out/infer-lite8}
dsmoe=${DSMOE:-build/release/dsmoe}
out=${BENCH_DIR:-bench/out}/fp8
prompt=${PROMPT:-128} decode=${DECODE:-32} reps=${REPS:-2} threads=${THREADS:-$(nproc)}
mkdir -p "$out"
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; threads $threads"
  echo "model: $model; prompt $prompt, decode $decode, reps $reps"
} | tee "$out/machine.txt"
for w in fp8 q8_0 bf16; do
  echo "$w: load average before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.txt"
  "$dsmoe" bench --model "$model" --weights "$w" --prompt "$prompt" --decode "$decode" \
    --reps "$reps" --threads "$threads" --no-roofline --json > "$out/$w.json"
done
echo "after: load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.txt"
python3 - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
print("| weights | bytes read per decoded token | decode tokens/s (median, best) | "
      "prefill tokens/s (median, best) | peak RSS |")
print("| --- | --- | --- | --- | --- |")
for w in ["fp8", "q8_0", "bf16"]:
    j = json.load(open(f"{out}/{w}.json"))
    print(f"| {w} | {j['active_bytes_per_token'] / 1e6:.0f} MB | "
          f"{j['decode_tokens_per_s']:.2f}, {j['decode_tokens_per_s_best']:.2f} | "
          f"{j['prefill_tokens_per_s']:.1f}, {j['prefill_tokens_per_s_best']:.1f} | "
          f"{j['peak_rss_bytes'] / 2**30:.2f} GiB |")
EOF
