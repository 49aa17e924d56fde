// main.cpp: the dsmoe command: forward, generate, chat, init, train, report, corpus, tokenize,
// bench, serve, export.
#include <malloc.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <map>
#include <string>

#include "apps/cli/commands.h"
#include "util/check.h"
#include "util/threads.h"

int main(int argc, char** argv) {
  // How idle OpenMP threads wait: a short spin on an idle machine, else sleep (may re-execute
  // the program once: threads.h).
  dsmoe::reexec_with_chosen_wait(argv);
  // Activation and gradient buffers are freed and reallocated every step; keep freed memory in
  // the heap instead of returning it to the kernel, which would zero fresh pages again each time
  // (15% of a training step on train-s).
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, -1);  // -1: never trim (inference trims once, after loading)
  CLI::App app{"dsmoe: inference and training for DeepSeekMoE-family models (V1, V2, V3)"};
  app.require_subcommand(1);
  std::map<CLI::App*, dsmoe::cli::Command> commands;
  auto add = [&](const char* name, const char* help, auto make) {
    CLI::App* sub = app.add_subcommand(name, help);
    commands[sub] = make(*sub);
  };
  add("forward", "Run a checkpoint on input ids; write logits, loss, hidden states, routes",
      dsmoe::cli::add_forward);
  add("generate", "Generate tokens from prompt ids with the (latent) KV cache",
      dsmoe::cli::add_generate);
  add("chat", "Chat with a checkpoint through its tokenizer and chat template",
      dsmoe::cli::add_chat);
  add("init", "Write a random-weight checkpoint for a config.json", dsmoe::cli::add_init);
  add("train", "Train a model on text files (AdamW, balance losses, MTP, checkpoints)",
      dsmoe::cli::add_train);
  add("report", "Plot a training run: loss, expert load, router bias, expert tokens",
      dsmoe::cli::add_report);
  add("corpus", "Write the generated training corpus (prose, arithmetic, code, JSON, DNA)",
      dsmoe::cli::add_corpus);
  add("tokenize", "Encode/decode JSON lines with tokenizer.json", dsmoe::cli::add_tokenize);
  add("bench", "Measure prefill, decode and training tokens/s against the machine's roofline",
      dsmoe::cli::add_bench);
  add("serve", "OpenAI-compatible HTTP server with batched decoding", dsmoe::cli::add_serve);
  add("export", "Write a checkpoint as GGUF (llama.cpp's deepseek2) in f32, bf16, q8_0 or q4_0",
      dsmoe::cli::add_export);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, run] : commands)
      if (sub->parsed()) return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsmoe: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
