// Tests for runtime/speculative.h: MTP self-speculative decoding on tiny V3 models with MTP
// modules (trained a few steps with MTP on a periodic sequence, so that drafts are often right,
// and random): greedy output token for token that of plain greedy decoding at float32, bf16 and
// Q8_0 with 1-3 drafts, and speculative sampling against plain sampling by chi-square tests.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/mtp.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "runtime/bench.h"
#include "runtime/generate.h"
#include "runtime/kv_cache.h"
#include "runtime/speculative.h"
#include "tensor/random.h"
#include "test_util.h"
#include "train/optimizer.h"
#include "util/check.h"

namespace dsmoe {
namespace {

constexpr int64_t kPeriod = 5;

ModelConfig tiny_v3(int64_t n_mtp, int64_t vocab) {
  nlohmann::json json = {{"model_type", "deepseek_v3"},
                         {"vocab_size", vocab},
                         {"hidden_size", 32},
                         {"intermediate_size", 64},
                         {"moe_intermediate_size", 32},
                         {"num_hidden_layers", 2},
                         {"num_attention_heads", 2},
                         {"first_k_dense_replace", 1},
                         {"n_routed_experts", 8},
                         {"num_experts_per_tok", 2},
                         {"n_group", 2},
                         {"topk_group", 1},
                         {"n_shared_experts", 1},
                         {"q_lora_rank", 32},
                         {"kv_lora_rank", 32},
                         {"qk_nope_head_dim", 32},
                         {"qk_rope_head_dim", 4},
                         {"v_head_dim", 8},
                         {"max_position_embeddings", 256},
                         {"num_nextn_predict_layers", n_mtp}};
  return parse_model_config(json, "tiny_v3");
}

// Sequence b of the training data: a fixed random cycle of kPeriod tokens from offset b.
std::vector<int64_t> cycle_tokens(int64_t vocab) {
  Rng rng(3);
  std::vector<int64_t> cycle(kPeriod);
  for (int64_t& id : cycle) id = static_cast<int64_t>(rng.next_u64() % vocab);
  return cycle;
}

// A tiny V3 with n_mtp MTP modules, trained with MTP until it continues the cycle.
Model trained_model(int64_t n_mtp, int n_steps = 60, int64_t vocab = 64) {
  const ModelConfig c = tiny_v3(n_mtp, vocab);
  Model model(c, random_weights(c, 1));
  const std::vector<int64_t> cycle = cycle_tokens(c.vocab_size);
  const int64_t n_seqs = 4, T = 16;
  std::vector<int64_t> ids(n_seqs * T);
  for (int64_t b = 0; b < n_seqs; b++)
    for (int64_t t = 0; t < T; t++) ids[b * T + t] = cycle[(b + t) % kPeriod];
  ModelWeights grads = zeros_like_weights(c, n_mtp);
  AdamWState adam = make_adamw_state(c, n_mtp);
  TrainActs acts;
  for (int step = 0; step < n_steps; step++) {
    model.forward_backward(ids.data(), n_seqs, T, grads, acts);
    adamw_step(c, model.mutable_weights(), grads, adam, 1e-2f, AdamWConfig{});
  }
  return model;
}

GenerateOptions greedy(int64_t n) {
  GenerateOptions options;
  options.max_new_tokens = n;
  return options;
}

struct Totals {
  int64_t drafted = 0, accepted = 0;
};

// Plain and speculative greedy decoding of prompts in and out of the cycle, token for token.
void expect_greedy_identical(const Model& model, Totals& totals) {
  const int64_t vocab = model.config().vocab_size;
  const std::vector<int64_t> cycle = cycle_tokens(vocab);
  std::vector<std::vector<int64_t>> prompts = {{cycle[0], cycle[1], cycle[2]}, {cycle[3]}};
  Rng rng(9);
  for (int p = 0; p < 2; p++) {
    std::vector<int64_t> prompt(2 + p * 5);
    for (int64_t& id : prompt) id = static_cast<int64_t>(rng.next_u64() % vocab);
    prompts.push_back(prompt);
  }
  for (const auto& prompt : prompts) {
    const std::vector<int64_t> plain = generate(model, prompt, greedy(23));
    for (int64_t K : {1, 2, 3}) {
      SpeculativeStats stats;
      const std::vector<int64_t> spec = generate_speculative(model, prompt, greedy(23), K, &stats);
      EXPECT_EQ(spec, plain) << "draft tokens " << K;
      EXPECT_EQ(stats.generate.new_tokens, 23);
      totals.drafted += stats.drafted;
      totals.accepted += stats.accepted;
    }
  }
}

TEST(Speculative, GreedyIdenticalToPlainGreedy) {
  for (int64_t n_mtp : {1, 2}) {
    // Trained (drafts mostly right) and untrained (drafts mostly wrong).
    for (int n_steps : {60, 0}) {
      Model model = trained_model(n_mtp, n_steps);
      Totals totals;
      const std::vector<WeightFormat> formats =
          n_mtp == 1 ? std::vector<WeightFormat>{WeightFormat::kF32, WeightFormat::kBF16,
                                                 WeightFormat::kQ8_0}
                     : std::vector<WeightFormat>{WeightFormat::kQ8_0};
      for (WeightFormat format : formats) {
        SCOPED_TRACE(::testing::Message() << n_mtp << " MTP modules, " << n_steps << " steps, "
                                          << weight_format_name(format));
        Model copy(model.config(), model.weights());
        copy.quantize(format);
        expect_greedy_identical(copy, totals);
      }
      if (n_steps == 60) {
        EXPECT_GT(totals.accepted, totals.drafted * 9 / 10);
      } else if (n_steps == 0) {
        EXPECT_LT(totals.accepted, totals.drafted / 10);
      }
    }
  }
}

TEST(Speculative, StopsAtEosAndCountsForwards) {
  const Model model = trained_model(1);
  const std::vector<int64_t> cycle = cycle_tokens(model.config().vocab_size);
  GenerateOptions options = greedy(40);
  SpeculativeStats stats;
  const auto spec = generate_speculative(model, {cycle[0], cycle[1], cycle[2]}, options, 3, &stats);
  EXPECT_EQ(stats.decode_tokens, 39);
  EXPECT_GT(stats.tokens_per_forward(), 2.0);  // the cycle: most drafts right
  EXPECT_NEAR(stats.tokens_per_forward(),
              static_cast<double>(stats.decode_tokens) / stats.main_forwards, 1e-12);
  // Stop at a token of the cycle taken as end of sequence.
  ModelConfig c = model.config();
  c.eos_token_id = spec[6];
  Model with_eos(c, model.weights());
  options.stop_at_eos = true;
  const auto plain = generate(with_eos, {cycle[0], cycle[1], cycle[2]}, options);
  EXPECT_EQ(generate_speculative(with_eos, {cycle[0], cycle[1], cycle[2]}, options, 3), plain);
  EXPECT_EQ(plain.size(), 7u);
}

// Draft k comes from MTP module k as in training: module k reads module k - 1's output and draft
// k - 1. The drafts of the first step (greedy) against the argmax of each module's logits at the
// same row in the training forward (model/mtp.h, uncached) over the prompt, the first new token
// and the drafts.
TEST(Speculative, DraftKIsModuleKsPrediction) {
  for (int n_steps : {0, 5}) {
    const Model model = trained_model(3, n_steps);
    const ModelConfig& c = model.config();
    const std::vector<int64_t> prompt = {3, 9, 1, 22, 7, 40};
    for (int64_t K : {2, 3, 4}) {
      SpeculativeStats stats;
      const auto spec = generate_speculative(model, prompt, greedy(8), K, &stats);
      ASSERT_EQ(static_cast<int64_t>(stats.first_step_drafts.size()), K);
      const auto P = static_cast<int64_t>(prompt.size());
      std::vector<int64_t> ids(spec.begin(), spec.begin() + P + 1);  // prompt, first new token
      ids.insert(ids.end(), stats.first_step_drafts.begin(), stats.first_step_drafts.end() - 1);
      const auto T = static_cast<int64_t>(ids.size());
      KvCache cache(c, T);
      ForwardRecord record;
      record.keep_last_hidden = true;
      model.forward_cached(ids.data(), T, cache.view(), &record);
      std::vector<MtpActs> acts;
      mtp_forward(c, model.weights(), ids.data(), 1, T, record.last_hidden.data, acts, nullptr);
      for (int64_t k = 1; k <= std::min<int64_t>(K, 3); k++) {
        const float* row = acts[k - 1].logits.data() + (P - 1) * c.vocab_size;
        const auto argmax = std::max_element(row, row + c.vocab_size) - row;
        // The two forwards sum in different orders (their logits differ by ~1e-6 of the range):
        // the runner-up must be far behind, not a near tie that another CPU could flip (measured:
        // >= 4% of the range here).
        std::vector<float> sorted(row, row + c.vocab_size);
        std::sort(sorted.rbegin(), sorted.rend());
        std::printf("draft %lld of %lld: margin %.3g of range %.3g\n", static_cast<long long>(k),
                    static_cast<long long>(K), sorted[0] - sorted[1], sorted[0] - sorted.back());
        EXPECT_GT(sorted[0] - sorted[1], 1e-4f * (sorted[0] - sorted.back()));
        EXPECT_EQ(stats.first_step_drafts[k - 1], argmax)
            << "draft " << k << " of " << K << ", " << n_steps << " training steps";
      }
    }
  }
}

// dsmoe bench --speculative mtp's measurement on the trained model (random prompt: the model
// continues with its cycle).
TEST(Speculative, BenchMeasurement) {
  const Model model = trained_model(1);
  const SpeculativeTimes t = measure_speculative(model, 4, 24, 2, 2);
  EXPECT_EQ(t.decode.seconds.size(), 2u);
  EXPECT_EQ(t.plain_decode.seconds.size(), 2u);
  EXPECT_TRUE(t.identical);
  EXPECT_GT(t.acceptance_rate, 0.8);
  EXPECT_GT(t.tokens_per_forward, 2.4);
  EXPECT_LE(t.tokens_per_forward, 3.0);
  // Where a step's time went: both parts measured, the plain step beside them.
  EXPECT_GT(t.draft_seconds_per_step, 0.0);
  EXPECT_GT(t.verify_seconds_per_step, 0.0);
  EXPECT_GT(t.plain_seconds_per_token, 0.0);
}

TEST(Speculative, ModelWithoutMtpIsAnError) {
  const ModelConfig c = tiny_v3(0, 64);
  const Model model(c, random_weights(c, 1));
  EXPECT_THROW(generate_speculative(model, {1, 2}, greedy(4), 2), Error);
}

// Chi-square statistic of two samples' counts over the same categories (those with fewer than
// 10 expected in either merged into one); *df receives its degrees of freedom.
double two_sample_chi_square(const std::map<int64_t, int64_t>& a,
                             const std::map<int64_t, int64_t>& b, int64_t n, int* df) {
  std::map<int64_t, std::pair<double, double>> cells;
  for (const auto& [k, v] : a) cells[k].first += v;
  for (const auto& [k, v] : b) cells[k].second += v;
  std::vector<std::pair<double, double>> kept;
  std::pair<double, double> rest{0, 0};
  for (const auto& [k, cell] : cells)
    if ((cell.first + cell.second) / 2 >= 10)
      kept.push_back(cell);
    else
      rest.first += cell.first, rest.second += cell.second;
  if (rest.first + rest.second > 0) kept.push_back(rest);
  double chi = 0.0;
  for (const auto& [x, y] : kept)  // equal sample sizes: sum (x - y)^2 / (x + y)
    chi += (x - y) * (x - y) / (x + y);
  *df = static_cast<int>(kept.size()) - 1;
  (void)n;
  return chi;
}

// The chi-square quantile at 1 - 1e-4 (Wilson-Hilferty; z = 3.719).
double chi_square_critical(int df) {
  const double z = 3.719, k = df;
  const double h = 1.0 - 2.0 / (9.0 * k) + z * std::sqrt(2.0 / (9.0 * k));
  return k * h * h * h;
}

TEST(Speculative, SamplingKeepsTheTargetDistribution) {
  // A barely trained model (drafts accepted about half of the time), sampled at temperature 1
  // with top-k 12 (drafts outside the verifier's top 12 are always rejected): the second, third
  // and fourth new tokens (drafted and verified) of plain and of speculative sampling over many
  // seeds.
  const Model model = trained_model(1, 3, 16);
  const int64_t n_runs = 3000, n_new = 4;
  std::vector<std::map<int64_t, int64_t>> plain(n_new), spec(n_new);
  SpeculativeStats total;
  for (int64_t seed = 0; seed < n_runs; seed++) {
    GenerateOptions options = greedy(n_new);
    options.sampling.temperature = 1.0f;
    options.sampling.top_k = 12;
    options.sampling.seed = static_cast<uint64_t>(seed);
    const auto a = generate(model, {3, 7}, options);
    options.sampling.seed = static_cast<uint64_t>(seed + n_runs);
    SpeculativeStats stats;
    const auto b = generate_speculative(model, {3, 7}, options, 2, &stats);
    total.drafted += stats.drafted, total.accepted += stats.accepted;
    for (int64_t t = 0; t < n_new; t++) plain[t][a[2 + t]]++, spec[t][b[2 + t]]++;
  }
  // Drafts both accepted and rejected often: the test sees both branches of the rule.
  EXPECT_GT(total.accepted, total.drafted / 4);
  EXPECT_LT(total.accepted, total.drafted * 3 / 4);
  for (int64_t t = 1; t < n_new; t++) {
    int df = 0;
    const double chi = two_sample_chi_square(plain[t], spec[t], n_runs, &df);
    ASSERT_GE(df, 3) << "token " << t;
    EXPECT_LT(chi, chi_square_critical(df))
        << "token " << t << ": chi-square " << chi << " df " << df;
    std::printf("new token %lld: chi-square %.2f, df %d (critical at p = 1e-4: %.2f)\n",
                static_cast<long long>(t), chi, df, chi_square_critical(df));
  }
  std::printf("acceptance %.3f over %lld drafts\n", total.acceptance_rate(),
              static_cast<long long>(total.drafted));
}

}  // namespace
}  // namespace dsmoe
