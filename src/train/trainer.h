// trainer.h: the training loop: batches, forward/backward (+ balance losses, MTP), gradient
// accumulation, clipping, AdamW, the aux-loss-free bias update, metrics, checkpoints, resume.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "train/optimizer.h"

namespace dsmoe {

struct TrainConfig {
  std::string model_config;  // config.json of the model to train from random weights
  std::vector<std::string> data_files;
  std::string out_dir;
  int64_t steps = 100;
  int64_t batch_size = 8;
  int64_t seq_len = 128;
  int64_t grad_accum = 1;  // micro-batches per optimizer step
  LrSchedule schedule;     // total_steps is set to `steps`
  AdamWConfig adamw;
  float grad_clip = 1.0f;  // max global gradient norm; 0: no clipping
  int64_t save_every = 0;  // 0: only at the end
  int64_t log_every = 1;
  int64_t analytics_every = 50;  // routing analytics (which tokens each expert takes)
  uint64_t seed = 0;
  bool resume = false;
  // A non-finite loss or gradient skips the step; this many in a row stop the run (0: never).
  int64_t max_nonfinite_steps = 5;
  bool quiet = false;  // no progress bar
  // "f32", or "bf16": mixed precision, the matrix products' inputs rounded to bf16 with float32
  // sums (cpu::MatmulPrecision::kBF16); weights, gradients and AdamW state stay float32, and so
  // do the MoE router's and attention's products.
  std::string precision = "f32";
  bool ep_node_limit = false;  // under mpirun: the routing groups must map onto nodes
};

// Trains and writes checkpoints and out_dir/metrics.jsonl. Returns the final loss.
double train(const TrainConfig& config);

}  // namespace dsmoe
