#!/usr/bin/env bash
# run.sh: the main job. Installs dependencies, builds dsmoe, then
#  1. trains a small DeepSeek-V3-style model (sigmoid routing with the aux-loss-free bias, a
#     shared expert, multi-token prediction) on a generated corpus that mixes prose, arithmetic,
#     code, JSON records and DNA, and writes the report (loss, expert load, router bias, which
#     tokens each expert takes);
#  2. samples from it;
#  3. runs inference on the DeepSeek-V3 reference model shipped in tests/data, with and without
#     the latent KV cache;
#  4. text through DeepSeek-V3's own tokenizer and chat template (tests/data/tokenizer-v3) on a
#     random-weight model with V3's vocabulary: tokenize, generate --prompt, a two-turn chat.
# Everything goes to out/demo/ (override with DSMOE_DEMO_DIR); STEPS=N changes the training length.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== building (release)"
bash scripts/build.sh release >/dev/null
dsmoe=build/release/dsmoe
demo=${DSMOE_DEMO_DIR:-out/demo}
steps=${STEPS:-600}
say() { printf '\n== %s\n' "$*"; }
rm -rf "$demo" && mkdir -p "$demo"

say "1. A training corpus of five kinds of text (generated, license-clean): $demo/corpus.txt"
$dsmoe corpus --out "$demo/corpus.txt" --bytes 400000
head -n 6 "$demo/corpus.txt"

say "2. Training configs/train-demo-v3.json ($steps steps, batch 8 x 128 bytes, AdamW, warm-up + cosine)"
grep -E '"(num_hidden_layers|n_routed_experts|num_experts_per_tok|n_shared_experts|scoring_func|topk_method|moe_router_enable_expert_bias|num_nextn_predict_layers)"' configs/train-demo-v3.json
$dsmoe train --model-config configs/train-demo-v3.json --data "$demo/corpus.txt" --out "$demo/run" \
  --steps "$steps" --batch-size 8 --seq-len 128 --lr 3e-3 --min-lr 3e-4 --warmup 30 \
  --save-every 200 --log-every 50 --analytics-every 100
first=$(head -n 1 "$demo/run/metrics.jsonl" | grep -o '"loss":[0-9.]*' | cut -d: -f2)
last=$(tail -n 1 "$demo/run/metrics.jsonl" | grep -o '"loss":[0-9.]*' | cut -d: -f2)
balance=$(tail -n 1 "$demo/run/metrics.jsonl" | grep -o '"load_max_over_mean":[0-9.]*' | cut -d: -f2)
echo "loss: $first at step 1 -> $last at step $steps (nats per byte); worst max/mean expert load at the end: $balance"

say "3. Samples from the trained model (greedy, byte-level)"
for prompt in "the engineer " "417 + 86 = " '{"id": ' "int scale_value(int x) "; do
  # Up to the end of the line the prompt starts (the model continues with other lines).
  $dsmoe generate --model "$demo/run" --prompt "$prompt" --max-new-tokens 60 2>/dev/null \
    | sed -n 1p
done

say "4. The report: $demo/run/report/report.md with loss.png, expert_load.png, expert_bias.png"
$dsmoe report --run "$demo/run" 2>&1 | grep -v warning || true
sed -n '/## Expert specialisation/,/### Layer 2/p' "$demo/run/report/report.md"

model=tests/data/v3-tiny/model
say "5. Inference on the reference DeepSeek-V3 model $model: latent KV cache + absorbed MLA decode"
$dsmoe generate --model "$model" --prompt-ids 5,17,3,42,7 --max-new-tokens 16 --print-ids
say "   the same without a cache (recomputing every step): the tokens agree"
$dsmoe generate --model "$model" --prompt-ids 5,17,3,42,7 --max-new-tokens 16 --print-ids --no-cache

chat=$demo/chat-v3
say "6. DeepSeek-V3's tokenizer.json and chat template on a random-weight model with its vocabulary"
$dsmoe init --config configs/chat-v3-tiny.json --out "$chat" 2>&1 | tail -n 1
cp tests/data/tokenizer-v3/tokenizer.json tests/data/tokenizer-v3/tokenizer_config.json "$chat/"
echo '{"text": "DeepSeek-V3 在 14.8T tokens 上训练"}' | $dsmoe tokenize --tokenizer "$chat"
echo '{"messages": [{"role": "user", "content": "Hi!"}], "add_generation_prompt": true}' \
  | $dsmoe tokenize --tokenizer "$chat"
say "   generate --prompt: the text is encoded with tokenizer.json (random weights: random words)"
$dsmoe generate --model "$chat" --prompt "The capital of France is" --max-new-tokens 12 2>/dev/null
say "   dsmoe chat, two turns on stdin: the second reuses the KV cache of the first"
printf 'Hello!\nTell me more.\n' | $dsmoe chat --model "$chat" --max-new-tokens 12 --seed 1 \
  --temperature 0.7 2>&1 | grep -v '^loaded'
