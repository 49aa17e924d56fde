#!/usr/bin/env bash
# run.sh DSMOE MODEL_DIR: starts `dsmoe serve` on a free port of 127.0.0.1 and runs client.mjs,
# which drives it with the real OpenAI client (npm `openai`, installed here on first use into
# tests/server/node_modules). Exits 77 (CTest: skipped) when node or the package is unavailable.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dsmoe="$1"
model="$2"
if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
  echo "SKIP: node and npm are needed for the OpenAI client test"
  exit 77
fi
if [ ! -d "$here/node_modules/openai" ]; then
  if ! timeout 300 npm install --prefix "$here" --no-save --no-audit --no-fund --loglevel=error \
    --fetch-timeout=60000 --fetch-retries=1 openai; then
    echo "SKIP: npm could not install the 'openai' package (no registry access?)"
    exit 77
  fi
fi
log="$(mktemp)"
"$dsmoe" serve --model "$model" --port 0 --api-key node-test-key --served-model-name tiny \
  --max-concurrent 8 --threads 1 > "$log" 2>&1 &
server=$!
trap 'kill "$server" 2> /dev/null || true; wait "$server" 2> /dev/null || true; rm -f "$log"' EXIT
port=""
for _ in $(seq 1 300); do
  port="$(sed -n 's|.*serving .* on http://127.0.0.1:\([0-9]*\) .*|\1|p' "$log")"
  [ -n "$port" ] && break
  kill -0 "$server" 2> /dev/null || { cat "$log"; echo "dsmoe serve exited"; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { cat "$log"; echo "dsmoe serve did not start"; exit 1; }
status=0
node "$here/client.mjs" "http://127.0.0.1:$port" node-test-key tiny || status=$?
echo "--- server log (last lines)"
tail -n 5 "$log"
exit "$status"
