// cmd_train.cpp: dsmoe train --model-config CONFIG.json --data FILE... --steps N --out DIR
#include <memory>

#include "apps/cli/commands.h"
#include "apps/cli/parallel.h"
#include "train/trainer.h"
#include "util/log.h"
#include "util/threads.h"

namespace dsmoe::cli {
namespace {

struct TrainArgs {
  TrainConfig config;
  int threads = 0;
};

int run_train(TrainArgs& args) {
  set_num_threads(args.threads);
  const double loss = train(args.config);
  log_info("done: final loss {:.4f}; checkpoint in {} (dsmoe generate --model {})", loss,
           args.config.out_dir, args.config.out_dir);
  return 0;
}

}  // namespace

Command add_train(CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  TrainConfig& c = args->config;
  app.add_option("--model-config", c.model_config,
                 "config.json of the model (random init); optional with --resume");
  app.add_option("--data", c.data_files, "text files (byte-level tokens)")->required();
  app.add_option("--steps", c.steps, "optimizer steps in total")->required();
  app.add_option("--out", c.out_dir, "output directory (checkpoints, metrics.jsonl)")->required();
  app.add_option("--seed", c.seed, "seed of weights, data order and noise");
  app.add_option("--save-every", c.save_every, "checkpoint every N steps (0: at the end)");
  app.add_flag("--resume", c.resume, "continue from the newest checkpoint in --out");
  app.add_option("--batch-size", c.batch_size, "sequences per micro-batch");
  app.add_option("--seq-len", c.seq_len, "tokens per sequence");
  app.add_option("--grad-accum", c.grad_accum, "micro-batches per step");
  app.add_option("--lr", c.schedule.max_lr, "peak learning rate");
  app.add_option("--min-lr", c.schedule.min_lr, "final learning rate of the cosine decay");
  app.add_option("--warmup", c.schedule.warmup_steps, "linear warm-up steps");
  app.add_option("--weight-decay", c.adamw.weight_decay, "AdamW decoupled weight decay");
  app.add_option("--beta1", c.adamw.beta1, "AdamW beta1");
  app.add_option("--beta2", c.adamw.beta2, "AdamW beta2");
  app.add_option("--grad-clip", c.grad_clip, "max global gradient norm (0: off)");
  app.add_option("--max-nonfinite-steps", c.max_nonfinite_steps,
                 "stop after this many non-finite (skipped) steps in a row (0: never)");
  app.add_option("--log-every", c.log_every, "progress line every N steps");
  app.add_option("--analytics-every", c.analytics_every,
                 "record which tokens each expert takes every N steps (0: never)");
  app.add_option("--precision", c.precision,
                 "f32 (default) or bf16: matrix products on bf16 inputs with float32 sums, "
                 "float32 master weights and AdamW state")
      ->check(CLI::IsMember({"f32", "bf16"}));
  app.add_flag("--quiet", c.quiet, "no progress output");
  app.add_flag("--ep-node-limit", c.ep_node_limit,
               "under mpirun: check that the routing groups map onto nodes (node-limited routing, "
               "DeepSeek-V3) and report the bound per node");
  app.add_option("--threads", args->threads, "threads (default: all cores)");
  return [args] { return run_on_ranks([args] { return run_train(*args); }); };
}

}  // namespace dsmoe::cli
