#!/usr/bin/env bash
# bench/peers.sh: dsmoe and mainline llama.cpp in the same run, on the same random checkpoint
# (bench/README.md, "Peers"), on a fresh Debian 12 machine (as root):
#   1. installs the dependencies (scripts/setup.sh: also node + npm) and builds dsmoe;
#   2. fetches the llama.cpp source that the npm package node-llama-cpp ships (pinned: 3.22.1,
#      whose llama/gitRelease.bundle holds llama.cpp de3ff81, the "v0.5.0" bundle) with `npm pack`
#      from the npm registry (the only download), and builds llama-bench, libllama and
#      bench/peers_logits.cpp (ours: logits of given ids through llama.h) with cmake, CPU only,
#      native, under `nice -n 19` with $PEERS_JOBS (2) jobs;
#   3. writes the random checkpoint with `dsmoe init` ($PEERS_CONFIG) and converts it with
#      `dsmoe export --format gguf --type F` for each format F;
#   4. same-model check: the logits of $PEERS_CHECK_TOKENS positions of random ids from llama.cpp
#      (peers_logits, float32 KV cache) and from `dsmoe forward --weights F`, cosine and argmax
#      per position (bench/peers_compare.py; the script stops on a different model): the V3
#      fixtures of tests/data (sigmoid routing with exp_probs_b, groups, q_lora, YaRN) and, with
#      PEERS_REFERENCE=1 (default except for infer-lite8 / v2-lite, whose float32 copies take
#      ~18 GB), the model itself at f32, all strict (cosine >= $PEERS_MIN_COS); then each format F
#      against the format's own rounding (dsmoe's F vs float32 logits: see peers_compare.py), or,
#      without the reference, cosine >= $PEERS_MIN_COS_BF16 (bf16) / $PEERS_MIN_COS_QUANT (Q8_0, Q4_0);
#   5. per format, $PEERS_PAIRS pairs run alternately (llama-bench, then dsmoe bench: A B A B ..),
#      the read bandwidth probed before and after each pair (`dsmoe bench` on the tiny V3
#      fixture, its probe only). Prefill: pp$PROMPT from an empty context in both. Decode: tg$DECODE
#      at the same context: llama-bench with depth -d $PROMPT, dsmoe bench after its $PROMPT-token
#      prompt;
#   6. prints the table (bench/peers_table.py): each engine's median tokens/s, the median of the
#      per-pair ratios dsmoe / llama.cpp with their spread (min-max), the bandwidth probes, the CPU
#      family, the load average and the date; also to $PEERS_DIR/table.md.
# Raw results stay in $PEERS_DIR/runs/<format>/pair<i>/ (llama-bench and dsmoe JSON).
# ik_llama.cpp, the issue's anchor, is built by hand (this repository holds no script that builds
# it; bench/README.md, "Peers", says how): with PEERS_IK_BENCH=/path/to/its/llama-bench each pair
# runs it too, after mainline (A B C A B C ..), with $PEERS_IK_ARGS ("-mla 3 -fmoe 1 -fa 1"),
# decode as its -gp $PROMPT,$DECODE (tg$DECODE after a $PROMPT-token prompt), and the table gets
# its columns and the ratios dsmoe / ik_llama.cpp.
# Environment: PEERS_DIR (bench/out/peers), PEERS_CONFIG (bench/configs/infer-lite8.json),
# PEERS_DTYPE (checkpoint dtype: bf16 for infer-lite8 as bench/run.sh writes it, f32 otherwise),
# PEERS_FORMATS ("bf16 q8_0 q4_0"), PEERS_PAIRS (3), PROMPT (512), DECODE (128), THREADS (all
# cores), PEERS_JOBS (build jobs, 2), PEERS_CHECK_TOKENS (16), PEERS_MIN_COS (0.9999),
# PEERS_MIN_COS_BF16 (0.999), PEERS_MIN_COS_QUANT (0.998), PEERS_REFERENCE (see 4),
# PEERS_SKIP_SETUP=1 / PEERS_SKIP_BUILD=1 (use what is installed / build/release as it is),
# PEERS_SKIP_BENCH=1 (stop after the same-model check), PEERS_IK_BENCH, PEERS_IK_ARGS, PEERS_KEEP=1 (keep the checkpoint and the
# GGUF files). Numbers mean something only on an idle machine: the load average is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${PEERS_DIR:-bench/out/peers}
config=${PEERS_CONFIG:-bench/configs/infer-lite8.json}
formats=${PEERS_FORMATS:-bf16 q8_0 q4_0}
pairs=${PEERS_PAIRS:-3}
prompt=${PROMPT:-512}
decode=${DECODE:-128}
threads=${THREADS:-$(nproc)}
jobs=${PEERS_JOBS:-2}
check_tokens=${PEERS_CHECK_TOKENS:-16}
min_cos=${PEERS_MIN_COS:-0.9999}
min_cos_bf16=${PEERS_MIN_COS_BF16:-0.999}  # llama.cpp rounds the activations to bf16 too
min_cos_quant=${PEERS_MIN_COS_QUANT:-0.998}
npm_package=node-llama-cpp@3.22.1
llama_commit=de3ff815ea7d559ee917f063901b8986f038abc6
ik_bench=${PEERS_IK_BENCH:-}
read -r -a ik_args <<<"${PEERS_IK_ARGS:--mla 3 -fmoe 1 -fa 1}"
dsmoe=$PWD/build/release/dsmoe
py=/usr/bin/python3
unset OPENBLAS_CORETYPE  # both engines get the kernels a fresh machine picks (bench/run.sh)
say() { printf '\n== [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
case "$(basename "$config" .json)" in
  infer-lite8 | v2-lite) dtype=${PEERS_DTYPE:-bf16} use_reference=${PEERS_REFERENCE:-0} ;;
  *) dtype=${PEERS_DTYPE:-f32} use_reference=${PEERS_REFERENCE:-1} ;;
esac

say "1. Setup and dsmoe build"
[ "${PEERS_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh
if ! command -v git >/dev/null; then  # to unpack llama.cpp's git bundle
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git >/dev/null
fi
[ "${PEERS_SKIP_BUILD:-0}" = 1 ] || bash scripts/build.sh release >/dev/null
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

say "2. llama.cpp from npm ($npm_package), built with $jobs jobs under nice"
if [ ! -d "$dir/package/llama" ]; then
  (cd "$dir" && npm pack --silent "$npm_package" >/dev/null && tar xzf node-llama-cpp-*.tgz)
fi
cat "$dir/package/llama/llama.cpp.info.json"
src=$dir/llama.cpp
[ -d "$src/.git" ] || git clone --quiet "$dir/package/llama/gitRelease.bundle" "$src"
head=$(git -C "$src" rev-parse HEAD)
[ "$head" = "$llama_commit" ] || { echo "llama.cpp is at $head, expected $llama_commit"; exit 1; }
echo "llama.cpp $head"
# Native, except AMX: llama.cpp's AMX weight buffer takes deepseek2's Q8_0 attn_k_b, whose product
# (a permuted, non-contiguous q_nope) only the CPU backend runs, and no backend may then run it
# (de3ff81 aborts: GGML_ASSERT(*cur_backend_id != -1)). On a CPU with AMX the build names the
# CPU's other instruction sets one by one (ggml's non-native x86 options) and leaves AMX out.
cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
has() { for f in "$@"; do [[ $cpu_flags == *" $f "* ]] || return 1; done; }
onoff() { if has "$@"; then echo ON; else echo OFF; fi; }
if has amx_int8; then
  isa="-DGGML_NATIVE=OFF -DGGML_SSE42=$(onoff sse4_2) -DGGML_F16C=$(onoff f16c)
    -DGGML_FMA=$(onoff fma) -DGGML_BMI2=$(onoff bmi2) -DGGML_AVX=$(onoff avx)
    -DGGML_AVX2=$(onoff avx2) -DGGML_AVX_VNNI=$(onoff avx_vnni)
    -DGGML_AVX512=$(onoff avx512f avx512cd avx512vl avx512dq avx512bw)
    -DGGML_AVX512_VBMI=$(onoff avx512vbmi) -DGGML_AVX512_VNNI=$(onoff avx512_vnni)
    -DGGML_AVX512_BF16=$(onoff avx512_bf16) -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF
    -DGGML_AMX_BF16=OFF"
  echo "CPU with AMX: llama.cpp built for its instruction sets without AMX"
else
  isa="-DGGML_NATIVE=ON"
fi
# shellcheck disable=SC2086
nice -n 19 cmake -S "$src" -B "$src/build" -G Ninja -DCMAKE_BUILD_TYPE=Release $isa \
  -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF >"$dir/llama-cmake.log"
echo "llama.cpp build options: $(echo $isa)" | tee "$dir/llama-isa.txt"
nice -n 19 ninja -C "$src/build" -j "$jobs" llama-bench llama >"$dir/llama-build.log"
logits_tool=$dir/peers_logits
nice -n 19 g++ -O2 -std=c++17 bench/peers_logits.cpp -I "$src/include" -I "$src/ggml/include" \
  -L "$src/build/bin" -lllama -Wl,-rpath,"$src/build/bin" -o "$logits_tool"
llama_bench=$src/build/bin/llama-bench

say "3. Checkpoint ($config, $dtype) and its GGUF exports ($formats)"
model=$dir/model-$(basename "$config" .json)
if [ ! -f "$model/model.safetensors" ]; then
  "$dsmoe" init --config "$config" --out "$model" --seed 1 --dtype "$dtype"
fi
for f in $formats; do
  [ -f "$model-$f.gguf" ] || "$dsmoe" export --format gguf --model "$model" --out "$model-$f.gguf" --type "$f"
done

say "4. Same-model check: llama.cpp's logits vs dsmoe forward ($check_tokens positions)"
checks=$dir/checks.jsonl
: >"$checks"
same_model() {  # same_model LABEL MODEL_DIR GGUF FORMAT [REFERENCE.safetensors]
  local label=$1 model_dir=$2 gguf=$3 format=$4 reference=${5:-} vocab ids status=0
  local criterion=(--min-cos "$min_cos")
  if [ "$format" = bf16 ]; then criterion=(--min-cos "$min_cos_bf16"); fi
  [ "$format" = f32 ] || [ "$format" = bf16 ] || criterion=(--min-cos "$min_cos_quant")
  [ -z "$reference" ] || criterion=(--reference "$reference")
  vocab=$($py -c "import json,sys; print(json.load(open(sys.argv[1]+'/config.json'))['vocab_size'])" "$model_dir")
  ids=$($py bench/peers_compare.py input --vocab "$vocab" --n "$check_tokens" --out "$dir/check-ids.safetensors")
  "$dsmoe" forward --model "$model_dir" --weights "$format" --threads "$threads" \
    --input "$dir/check-ids.safetensors" --output "$dir/check-dsmoe.safetensors" 2>/dev/null
  "$logits_tool" "$gguf" "$ids" "$dir/check-llama.f32" "$threads" 2>"$dir/check-llama.log" ||
    { tail -5 "$dir/check-llama.log"; exit 1; }
  $py bench/peers_compare.py compare --dsmoe "$dir/check-dsmoe.safetensors" \
    --llama "$dir/check-llama.f32" --label "$label" "${criterion[@]}" >"$dir/check.out" || status=$?
  head -1 "$dir/check.out"
  tail -1 "$dir/check.out" >>"$checks"
  return $status
}
for fixture in v3-tiny v3-yarn; do
  "$dsmoe" export --format gguf --model "tests/data/$fixture/model" --out "$dir/$fixture.gguf" 2>/dev/null
  same_model "$fixture f32" "tests/data/$fixture/model" "$dir/$fixture.gguf" f32
done
name=$(basename "$model")
reference=""
if [ "$use_reference" = 1 ]; then
  # The model itself at float32 in both engines (strict), and dsmoe's float32 logits as the
  # yardstick of each format's own rounding.
  [ -f "$model-f32.gguf" ] || "$dsmoe" export --format gguf --model "$model" --out "$model-f32.gguf" --type f32
  same_model "$name f32" "$model" "$model-f32.gguf" f32
  reference=$dir/check-reference.safetensors
  cp "$dir/check-dsmoe.safetensors" "$reference"
fi
for f in $formats; do same_model "$name $f" "$model" "$model-$f.gguf" "$f" "$reference"; done
[ "${PEERS_SKIP_BENCH:-0}" = 1 ] && exit 0

say "5. Alternating pairs: llama-bench${ik_bench:+, ik_llama.cpp (llama-bench)}, dsmoe bench ($pairs pairs per format, $threads threads)"
probe() {  # the read-bandwidth probe of dsmoe bench, alone (the tiny fixture's model work is ~0)
  "$dsmoe" bench --model tests/data/v3-tiny/model --prompt 1 --decode 0 --reps 1 \
    --peak-size small --threads "$threads" --json 2>/dev/null >"$1"
}
for f in $formats; do
  for pair in $(seq 1 "$pairs"); do
    run=$dir/runs/$f/pair$pair
    mkdir -p "$run"
    cut -d' ' -f1-3 /proc/loadavg >"$run/load"
    probe "$run/bw_before.json"
    "$llama_bench" -m "$model-$f.gguf" -t "$threads" -p "$prompt" -n 0 -r 1 -o json \
      >"$run/llama_pp.json" 2>"$run/llama.log"
    "$llama_bench" -m "$model-$f.gguf" -t "$threads" -p 0 -n "$decode" -d "$prompt" -r 1 -o json \
      >"$run/llama_tg.json" 2>>"$run/llama.log"
    if [ -n "$ik_bench" ]; then
      "$ik_bench" -m "$model-$f.gguf" -t "$threads" -p "$prompt" -n 0 -r 1 "${ik_args[@]}" -o json \
        >"$run/ik_pp.json" 2>"$run/ik.log"
      "$ik_bench" -m "$model-$f.gguf" -t "$threads" -p 0 -n 0 -gp "$prompt,$decode" -r 1 \
        "${ik_args[@]}" -o json >"$run/ik_tg.json" 2>>"$run/ik.log"
    fi
    "$dsmoe" bench --model "$model" --weights "$f" --prompt "$prompt" --decode "$decode" \
      --reps 1 --threads "$threads" --no-roofline --json >"$run/dsmoe.json" 2>"$run/dsmoe.log"
    probe "$run/bw_after.json"
    $py bench/peers_table.py --pair "$run"
  done
done

say "6. Table"
$py bench/peers_table.py --dir "$dir" --checks "$checks" | tee "$dir/table.md"
if [ "${PEERS_KEEP:-0}" != 1 ]; then rm -rf "$model" "$model"-*.gguf; fi
