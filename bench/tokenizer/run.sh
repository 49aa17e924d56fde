#!/usr/bin/env bash
# bench/tokenizer/run.sh: dsmoe's tokenizer against Hugging Face tokenizers (npm `tokenizers`
# 0.23.2, the official Node binding of the Rust library) on the same text, one thread each.
#   bench/tokenizer/run.sh [TOKENIZER_DIR] [MEGABYTES]
# TOKENIZER_DIR defaults to tests/data/tokenizer-v3 (DeepSeek-V3's tokenizer.json), MEGABYTES to 4.
# 1. writes the text: `dsmoe corpus` output mixed with gen_text.py's English prose, code and
#    Chinese (bench/tokenizer/out/text.txt);
# 2. installs npm tokenizers into bench/tokenizer/node_modules (gitignored) if it is not there;
# 3. runs each side REPS times (default 3), alternating, in both modes: the whole file as one
#    string, and line by line (dsmoe: one encode call per line; tokenizers: one encodeBatch with
#    parallelism off);
# 4. checks both gave the same ids (count and hash), prints a table of medians (MB/s by the wall
#    clock and MB per CPU-second, which a busy shared machine disturbs less), the ratio, the CPU
#    and the date, and writes it to bench/tokenizer/out/results.md.
# Needs build/release/bench_tokenizer (and build/release/dsmoe for the corpus; without it the text
# is gen_text.py's alone), node and npm.
set -euo pipefail
cd "$(dirname "$0")/../.."
tokenizer_dir=${1:-tests/data/tokenizer-v3}
megabytes=${2:-4}
reps=${REPS:-3}
out=bench/tokenizer/out
mkdir -p "$out"

[[ -x build/release/bench_tokenizer ]] || {
  echo "run.sh: build/release/bench_tokenizer is missing: ninja -C build/release bench_tokenizer" >&2
  exit 1
}
corpus_flag=()
if [[ -x build/release/dsmoe ]]; then
  build/release/dsmoe corpus --out "$out/corpus.txt" --bytes 1000000 >/dev/null
  corpus_flag=(--corpus "$out/corpus.txt")
fi
python3 bench/tokenizer/gen_text.py "$out/text.txt" --megabytes "$megabytes" "${corpus_flag[@]}"
if [[ ! -d bench/tokenizer/node_modules/tokenizers ]]; then
  (cd bench/tokenizer && npm install --no-save --no-audit --no-fund tokenizers@0.23.2 >/dev/null)
fi

: >"$out/runs.jsonl"
for rep in $(seq "$reps"); do
  for mode in whole lines; do
    build/release/bench_tokenizer "$tokenizer_dir" "$out/text.txt" 3 "$mode" >>"$out/runs.jsonl"
    TOKENIZERS_PARALLELISM=false RAYON_NUM_THREADS=1 \
      node bench/tokenizer/hf_tokenizers.js "$tokenizer_dir" "$out/text.txt" 3 "$mode" >>"$out/runs.jsonl"
  done
done

python3 - "$out/runs.jsonl" "$out/text.txt" <<'PY' | tee "$out/results.md"
import json, statistics, subprocess, sys, datetime, platform
runs = [json.loads(line) for line in open(sys.argv[1])]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
           platform.processor())
load = open("/proc/loadavg").read().split()[:3]
print(f"Text: {sys.argv[2]}, {runs[0]['bytes'] / 1e6:.2f} MB. CPU: {cpu}, {len(open('/proc/cpuinfo').read().split('processor')) - 1} cores, load average {' '.join(load)}.")
print(f"Date: {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC. Medians over {len(runs) // 4} runs of each side (each run: the median of 3 passes; the first pass of a run starts with empty caches).")
print()
print("| mode | dsmoe MB/s | tokenizers MB/s | ratio | dsmoe MB/CPU-s | tokenizers MB/CPU-s | ratio | first pass MB/CPU-s (dsmoe / tokenizers) | load s (dsmoe / tokenizers) | same ids |")
print("|---|---|---|---|---|---|---|---|---|---|")
for mode in ("whole", "lines"):
    mine = [r for r in runs if r["impl"] == "dsmoe" and r["mode"] == mode]
    theirs = [r for r in runs if r["impl"] == "hf-tokenizers" and r["mode"] == mode]
    same = all((r["tokens"], r["ids_hash"]) == (theirs[0]["tokens"], theirs[0]["ids_hash"]) for r in mine + theirs)
    med = lambda rs, key: statistics.median(r[key] for r in rs)
    wall = (med(mine, "mb_per_s_median"), med(theirs, "mb_per_s_median"))
    cpu_rate = (med(mine, "mb_per_cpu_s_median"), med(theirs, "mb_per_cpu_s_median"))
    first = [statistics.median(r["mb_per_cpu_s_passes"][0] for r in rs) for rs in (mine, theirs)]
    print(f"| {mode} | {wall[0]:.2f} | {wall[1]:.2f} | {wall[0] / wall[1]:.1f}x | {cpu_rate[0]:.2f} | {cpu_rate[1]:.2f} | {cpu_rate[0] / cpu_rate[1]:.1f}x | {first[0]:.2f} / {first[1]:.2f} | {med(mine, 'load_s'):.2f} / {med(theirs, 'load_s'):.2f} | {'yes' if same else 'NO'} |")
PY
