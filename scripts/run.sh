#!/usr/bin/env bash
# run.sh: the main job. Installs dependencies, builds dsmoe, and runs it on the small DeepSeek-V3
# model shipped in tests/data (random weights, the layout of a real checkpoint), saying what each
# step does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh release >/dev/null
dsmoe=build/release/dsmoe
model=tests/data/v3-tiny/model
say() { printf '\n== %s\n' "$*"; }

say "The model: $model (DeepSeek-V3 layout: MLA with q LoRA, 16 routed experts top-4 with sigmoid + bias routing in 4 groups, 1 shared expert, 1 dense layer)"
grep -E '"(model_type|num_hidden_layers|n_routed_experts|num_experts_per_tok|kv_lora_rank|n_group|topk_group)"' "$model/config.json"

say "Greedy generation of 16 tokens with the latent KV cache (absorbed MLA decode)"
$dsmoe generate --model "$model" --prompt-ids 5,17,3,42,7 --max-new-tokens 16 --print-ids

say "The same without any cache (every step recomputes the whole sequence): the tokens must agree"
$dsmoe generate --model "$model" --prompt-ids 5,17,3,42,7 --max-new-tokens 16 --print-ids --no-cache

say "Sampling: temperature 0.8, top-p 0.9, seed 1"
$dsmoe generate --model "$model" --prompt-ids 5,17,3,42,7 --max-new-tokens 16 --temperature 0.8 --top-p 0.9 --seed 1 --print-ids

say "Forward pass on the reference inputs: logits, loss, hidden states and routes to /tmp/dsmoe-forward.safetensors"
$dsmoe forward --model "$model" --input tests/data/v3-tiny/expected.safetensors --output /tmp/dsmoe-forward.safetensors

say "A fresh random DeepSeek-V2-style checkpoint from a config (dsmoe init), then generation on it"
$dsmoe init --config tests/data/v2-tiny/model/config.json --out /tmp/dsmoe-init-v2 --seed 3 --dtype bf16
$dsmoe generate --model /tmp/dsmoe-init-v2 --prompt-ids 1,2,3 --max-new-tokens 8 --print-ids
