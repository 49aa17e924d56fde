#!/usr/bin/env bash
# bench/speculative.sh: MTP self-speculative decoding against plain decoding, end to end (the
# speculative table of bench/README.md):
#   1. builds dsmoe (scripts/build.sh release; SPEC_SKIP_BUILD=1 uses build/release as it is);
#   2. makes the corpus: the C++ sources and the Markdown files of this repository, concatenated
#      (byte-level tokens);
#   3. trains bench/configs/train-mtp-wide.json (V3-style, 2 dense layers of hidden 768 and MLP
#      8192 plus one MoE MTP module, 48 M parameters; CONFIG=bench/configs/train-mtp2-wide.json:
#      two MTP modules, draft k by module k) with `dsmoe train --precision bf16`;
#   4. runs `dsmoe bench --speculative mtp --weights bf16` for K = 1, 2, 3 drafts (greedy,
#      plain and speculative decoding alternating in the same run) and prints the table
#      (acceptance, tokens per main forward, tokens/s, speed-up, greedy identical, and where a
#      verification step's time goes), also written to $SPEC_DIR/results.md.
# About 10-15 minutes on 2 busy cores (training ~8-9 of them), a few on idle ones.
# Environment: SPEC_DIR (default bench/out/speculative), CONFIG, STEPS (default 250), TRAIN_THREADS
# (default: all cores), THREADS (decode threads, default 1: one core's read bandwidth, the
# least disturbed by other work), PROMPT (default 32), DECODE (default 128), REPS (default 3),
# SPEC_SKIP_TRAIN=1 (bench the model already in $SPEC_DIR/model).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${SPEC_DIR:-bench/out/speculative}
steps=${STEPS:-250}
train_threads=${TRAIN_THREADS:-$(nproc)}
threads=${THREADS:-1}
prompt=${PROMPT:-32}
decode=${DECODE:-128}
reps=${REPS:-3}
config=${CONFIG:-bench/configs/train-mtp-wide.json}
# (no OMP_WAIT_POLICY: dsmoe spins briefly on idle cores and sleeps on busy ones, util/threads.h)
mkdir -p "$out"

if [ "${SPEC_SKIP_BUILD:-0}" != 1 ]; then bash scripts/build.sh release; fi
dsmoe=build/release/dsmoe

if [ "${SPEC_SKIP_TRAIN:-0}" != 1 ]; then
  git ls-files '*.h' '*.cpp' '*.md' | grep -v '^tests/data/' | xargs cat >"$out/corpus.txt"
  rm -rf "$out/model"
  start=$(date +%s)
  "$dsmoe" train --model-config "$config" --data "$out/corpus.txt" --steps "$steps" \
    --batch-size 4 --seq-len 128 --lr 2e-3 --warmup 10 --precision bf16 --seed 1 \
    --threads "$train_threads" --log-every 10 --out "$out/model" 2>&1 | tee "$out/train.log"
  echo "$(($(date +%s) - start))" >"$out/train_seconds"
fi

for k in 1 2 3; do
  "$dsmoe" bench --model "$out/model" --weights bf16 --prompt "$prompt" --decode "$decode" \
    --reps "$reps" --threads "$threads" --speculative mtp --draft-tokens "$k" --json \
    >"$out/bench_k$k.json"
done

python3 - "$out" "$steps" "$config" <<'EOF'
import json, os, platform, subprocess, sys, time
out, steps, config = sys.argv[1], sys.argv[2], sys.argv[3]
def cpu_model():
    for line in open('/proc/cpuinfo'):
        if line.startswith('model name'):
            return line.split(':', 1)[1].strip()
    return platform.processor()
metrics = [json.loads(l) for l in open(os.path.join(out, 'model', 'metrics.jsonl'))]
seconds = open(os.path.join(out, 'train_seconds')).read().strip() \
    if os.path.exists(os.path.join(out, 'train_seconds')) else '?'
lines = [f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_model()}, "
         f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {config}: {steps} "
         f"training steps in {seconds} s, final loss {metrics[-1]['loss']:.3f}", '',
         '| K | acceptance | tokens per main forward | speculative tokens/s | plain tokens/s '
         '| speed-up | greedy identical | draft / verify / other ms per step | plain ms per token |',
         '|---|---|---|---|---|---|---|---|---|']
for k in (1, 2, 3):
    d = json.load(open(os.path.join(out, f'bench_k{k}.json')))
    ms = lambda key: 1e3 * d[key]
    lines.append(
        f"| {k} | {100 * d['speculative_acceptance_rate']:.1f}% "
        f"| {d['speculative_tokens_per_forward']:.2f} | {d['decode_tokens_per_s']:.1f} "
        f"| {d['plain_decode_tokens_per_s']:.1f} | {d['speculative_speedup']:.2f}x "
        f"| {'yes' if d['speculative_greedy_identical'] else 'NO'} "
        f"| {ms('speculative_draft_seconds_per_step'):.2f} / "
        f"{ms('speculative_verify_seconds_per_step'):.2f} / "
        f"{ms('speculative_other_seconds_per_step'):.2f} "
        f"| {ms('speculative_plain_seconds_per_token'):.2f} |")
text = '\n'.join(lines) + '\n'
open(os.path.join(out, 'results.md'), 'w').write(text)
print(text)
EOF
