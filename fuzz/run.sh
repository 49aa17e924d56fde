#!/usr/bin/env bash
# fuzz/run.sh [SECONDS]: builds the libFuzzer targets with clang (build/fuzz), replays each
# target's seed corpus (fuzz/corpus/<target>: the regression inputs, and seeds from tests/data),
# then fuzzes each for SECONDS (default 0: replay only). New inputs go to build/fuzz/corpus/, not
# into the repository; a crash leaves its input in build/fuzz/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-0}
build=build/fuzz
CXX=clang++ cmake -S fuzz -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j "$(nproc)"
targets=(safetensors checkpoint_index config tokenizer_json tokenizer_encode chat_template
         server_request trainer_state)
# Seeds: the repository's own inputs for each parser (trainer_state's are in its regression
# corpus: the files of a real two-step training checkpoint, fuzz/corpus/trainer_state/seed-*).
seed_dir() {
  local target=$1 dir="$build/seeds/$1"
  mkdir -p "$dir"
  case $target in
    safetensors) cp tests/data/*/model/model.safetensors "$dir/" 2>/dev/null || true
                 for f in tests/data/*/model/model.safetensors; do
                   head -c 4096 "$f" >"$dir/head-$(basename "$(dirname "$(dirname "$f")")")"; done ;;
    config) for f in tests/data/*/model/config.json configs/*.json bench/configs/*.json; do
              cp "$f" "$dir/$(echo "$f" | tr / _)"; done ;;
    tokenizer_json) cp tests/data/tokenizer-v3/tokenizer_config.json "$dir/" ;;
    tokenizer_encode) head -c 3000 tests/data/tokenizer-v3/cases.jsonl >"$dir/cases" ;;
    chat_template) for f in tests/data/chat_templates/*.jinja; do cp "$f" "$dir/"; done ;;
    *) ;;
  esac
  echo "$dir"
}
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for target in "${targets[@]}"; do
  regression=fuzz/corpus/$target
  mkdir -p "$regression" "$build/corpus/$target"
  seeds=$(seed_dir "$target")
  echo "== fuzz_$target: replaying $(ls "$regression" | wc -l) regression inputs and $(ls "$seeds" | wc -l) seeds"
  "$build/fuzz_$target" -runs=0 -rss_limit_mb=4096 "$regression" "$seeds" 2>&1 | tail -n 2
  if ((seconds > 0)); then
    echo "== fuzz_$target: fuzzing for ${seconds} s"
    "$build/fuzz_$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
      -max_len=65536 -artifact_prefix="$build/" "$build/corpus/$target" "$regression" "$seeds" \
      2>&1 | tail -n 3
  fi
done
echo "fuzz: every target ran without a crash, hang or leak"
