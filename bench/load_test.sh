#!/usr/bin/env bash
# bench/load_test.sh [DSMOE] [-- load_test.py flags]: `dsmoe serve` under N concurrent clients.
#
# Builds nothing: DSMOE is the dsmoe binary (default build/release/dsmoe). Makes a random-weight
# model with the engine (`dsmoe init --config configs/chat-v3-tiny.json`: DeepSeek-V3's layout and
# vocabulary at hidden size 64, 2 layers, 16 routed experts, ~17 M parameters, with V3's
# tokenizer.json and chat template from tests/data/tokenizer-v3, so that both endpoints and the
# real tokenizer are exercised; small enough that 64 clients make progress on 2 cores), starts
# `dsmoe serve` on 127.0.0.1 at a free port, runs bench/load_test.py (default 64 clients for
# 300 s: --clients N --duration S to shorten), stops the server and prints its last log lines.
# Exits with load_test.py's status: nonzero on any failed request, or when /metrics does not show
# an idle server after the run.
# Environment: LOAD_DIR (scratch, default bench/out/load), SERVE_ARGS (extra `dsmoe serve`
# flags, default "--max-concurrent 16").
set -euo pipefail
cd "$(dirname "$0")/.."
dsmoe=build/release/dsmoe
if [ $# -gt 0 ] && [ "$1" != "--" ]; then dsmoe=$1; shift; fi
[ "${1:-}" = "--" ] && shift
[ -x "$dsmoe" ] || { echo "load_test.sh: no dsmoe binary at $dsmoe (build it first)"; exit 2; }
dir=${LOAD_DIR:-bench/out/load}
serve_args=${SERVE_ARGS:---max-concurrent 16}
mkdir -p "$dir"

model=$dir/model
if [ ! -s "$model/model.safetensors" ]; then
  "$dsmoe" init --config configs/chat-v3-tiny.json --out "$model" --seed 1 >/dev/null 2>&1
  cp tests/data/tokenizer-v3/tokenizer.json tests/data/tokenizer-v3/tokenizer_config.json "$model/"
fi

log=$dir/serve.log
# shellcheck disable=SC2086  # SERVE_ARGS is a list of flags
"$dsmoe" serve --model "$model" --served-model-name load --host 127.0.0.1 --port 0 \
  $serve_args >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
port=""
for _ in $(seq 1 600); do
  port=$(sed -n 's|.*serving .* on http://127\.0\.0\.1:\([0-9]*\) .*|\1|p' "$log" | head -n 1)
  [ -n "$port" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$log"; echo "load_test.sh: the server exited"; exit 2; }
  sleep 0.1
done
[ -n "$port" ] || { cat "$log"; echo "load_test.sh: the server did not start"; exit 2; }
echo "load_test.sh: $(sed -n 's/.*\(serving .*\)/\1/p' "$log" | head -n 1), pid $server"
echo "load_test.sh: load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

status=0
python3 bench/load_test.py --port "$port" --model load --server-pid "$server" "$@" || status=$?

echo "load_test.sh: load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
posts=$(grep "^request .* POST" "$log" || true)  # one line per generation request
count() { if [ -z "$posts" ]; then echo 0; else grep -c "$@" <<<"$posts" || true; fi; }
echo "load_test.sh: server log: $(count .) generation requests: $(count status=200) status=200," \
  "$(count status=499) status=499 (client closed), $(count -v -e status=200 -e status=499) other"
kill "$server"
wait "$server" || true
trap - EXIT
exit "$status"
