// Tests for Model::forward_cached_batch: several sequences of different lengths in one step, mixing
// prefill chunks, decode steps and all-logits steps; each sequence's logits bit for bit those of
// forward_cached on its steps alone, on the V1/V2/V3 fixtures at float32, bf16, Q8_0 and Q4_0.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "model/transformer.h"
#include "runtime/bench.h"
#include "runtime/kv_cache.h"
#include "tensor/random.h"
#include "test_util.h"
#include "util/check.h"
#include "util/threads.h"

namespace dsmoe {
namespace {

const std::string kData = DSMOE_TEST_DATA;

// One sequence's step in a round: its next n_tokens tokens.
struct ScriptStep {
  int sequence;
  int64_t n_tokens;
  bool all_logits;
};
using Round = std::vector<ScriptStep>;

// Four sequences: a prompt of 3 in one chunk, 7 in chunks of 4 and 3, 1 alone, 5 with every
// logit; then rounds of decode steps with changing company, and an all-logits step of 3 tokens
// (a speculative verification) next to decode steps; last, 9 rows together (the bf16 kernels'
// GEMMs start at 8).
std::vector<Round> script() {
  return {{{0, 3, false}, {1, 4, false}, {2, 1, false}, {3, 5, true}},
          {{0, 1, false}, {1, 3, false}, {2, 1, false}, {3, 1, false}},
          {{0, 1, false}, {1, 1, false}, {2, 1, false}, {3, 1, false}},
          {{2, 1, false}},
          {{3, 1, false}, {0, 3, true}, {1, 1, false}},
          {{1, 1, false}, {3, 1, false}, {2, 2, true}, {0, 1, false}},
          {{0, 1, false}, {1, 1, false}, {2, 1, false}, {3, 1, false}},
          {{0, 3, true}, {1, 3, true}, {2, 2, true}, {3, 1, false}}};
}

constexpr int kSequences = 4;

// Each sequence's token ids, as many as the script consumes.
std::vector<std::vector<int64_t>> script_tokens(const std::vector<Round>& rounds, int64_t vocab) {
  std::vector<std::vector<int64_t>> tokens(kSequences);
  Rng rng(17);
  for (const Round& round : rounds)
    for (const ScriptStep& s : round)
      for (int64_t t = 0; t < s.n_tokens; t++)
        tokens[s.sequence].push_back(static_cast<int64_t>(rng.next_u64() % vocab));
  return tokens;
}

// The logits rows of the script: per round, per step in order (all_logits: one row per token).
// `companions`: more sequences in every batched round, one decode step each (their rows left
// out of the result).
std::vector<std::vector<float>> run_script(const Model& model, bool batched, int companions = 0) {
  const ModelConfig& c = model.config();
  const std::vector<Round> rounds = script();
  const auto tokens = script_tokens(rounds, c.vocab_size);
  std::vector<std::unique_ptr<KvCache>> caches;
  for (int i = 0; i < kSequences + companions; i++)
    caches.push_back(std::make_unique<KvCache>(c, 32));
  const std::vector<int64_t> companion_ids = {5, 9, 2, 7, 1, 3, 8, 4, 6, 0};
  std::vector<int64_t> used(kSequences, 0);
  std::vector<std::vector<float>> rows;
  auto push_rows = [&](const Tensor& logits, int64_t n_rows) {
    for (int64_t r = 0; r < n_rows; r++)
      rows.emplace_back(logits.data + r * c.vocab_size, logits.data + (r + 1) * c.vocab_size);
  };
  for (const Round& round : rounds) {
    std::vector<CachedStep> steps;
    for (const ScriptStep& s : round) {
      KvCache& cache = *caches[s.sequence];
      const int64_t* ids = tokens[s.sequence].data() + used[s.sequence];
      if (batched) {
        steps.push_back({ids, s.n_tokens, &cache.view(), s.all_logits});
      } else if (s.all_logits) {  // alone, one token at a time
        for (int64_t t = 0; t < s.n_tokens; t++) {
          push_rows(model.forward_cached(ids + t, 1, cache.view()), 1);
          cache.advance(1);
        }
        cache.advance(-s.n_tokens);
      } else {
        push_rows(model.forward_cached(ids, s.n_tokens, cache.view()), 1);
      }
      if (!batched) cache.advance(s.n_tokens);
      used[s.sequence] += s.n_tokens;
    }
    if (!batched) continue;
    for (int i = kSequences; i < kSequences + companions; i++)
      steps.push_back({&companion_ids[caches[i]->n_past() % companion_ids.size()], 1,
                       &caches[i]->view(), false});
    const Tensor logits = model.forward_cached_batch(steps);
    push_rows(logits, logits.dim(0) - companions);
    for (const ScriptStep& s : round) caches[s.sequence]->advance(s.n_tokens);
    for (int i = kSequences; i < kSequences + companions; i++) caches[i]->advance(1);
  }
  return rows;
}

void expect_batch_matches_alone(const std::string& fixture, WeightFormat format) {
  const Model model = Model::load(kData + "/" + fixture + "/model", format);
  const auto alone = run_script(model, false);
  const auto batched = run_script(model, true);
  ASSERT_EQ(alone.size(), batched.size());
  for (size_t r = 0; r < alone.size(); r++) {
    ASSERT_EQ(alone[r].size(), batched[r].size());
    int64_t differing = 0;
    for (size_t v = 0; v < alone[r].size(); v++)
      differing += std::memcmp(&alone[r][v], &batched[r][v], sizeof(float)) != 0;
    EXPECT_EQ(differing, 0) << fixture << " logits row " << r << " differs in " << differing
                            << " of " << alone[r].size() << " (first: " << alone[r][0] << " vs "
                            << batched[r][0] << ")";
  }
}

class BatchedDecode : public ::testing::TestWithParam<std::tuple<std::string, WeightFormat>> {};

TEST_P(BatchedDecode, EachSequenceBitIdenticalToAlone) {
  expect_batch_matches_alone(std::get<0>(GetParam()), std::get<1>(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, BatchedDecode,
    ::testing::Combine(::testing::Values("v1-tiny", "v2-tiny", "v3-tiny"),
                       ::testing::Values(WeightFormat::kF32, WeightFormat::kBF16,
                                         WeightFormat::kQ8_0, WeightFormat::kQ4_0)),
    [](const auto& info) {
      std::string name =
          std::get<0>(info.param) + "_" + weight_format_name(std::get<1>(info.param));
      for (char& ch : name)
        if (ch == '-') ch = '_';
      return name;
    });

// Two threads split the weight rows of every product: the same bits.
TEST(BatchedDecodeThreads, TwoThreadsBitIdenticalToAlone) {
  set_num_threads(2);
  expect_batch_matches_alone("v3-tiny", WeightFormat::kQ4_0);
  expect_batch_matches_alone("v2-tiny", WeightFormat::kF32);
  set_num_threads(1);
}

TEST(BatchedDecodeErrors, StepsSharingACacheOrOverflowingAreRejected) {
  const Model model = Model::load(kData + "/v2-tiny/model");
  KvCache cache(model.config(), 4);
  const std::vector<int64_t> ids = {1, 2, 3, 4, 5};
  EXPECT_THROW(model.forward_cached_batch(
                   {{ids.data(), 1, &cache.view(), false}, {ids.data(), 1, &cache.view(), false}}),
               Error);
  EXPECT_THROW(model.forward_cached_batch({{ids.data(), 5, &cache.view(), false}}), Error);
  EXPECT_THROW(model.forward_cached_batch({{ids.data(), 0, &cache.view(), false}}), Error);
  const std::vector<int64_t> bad = {model.config().vocab_size};
  EXPECT_THROW(model.forward_cached_batch({{bad.data(), 1, &cache.view(), false}}), Error);
  EXPECT_EQ(cache.n_past(), 0);
}

// set_exact_batches(false): the GEMMs at the batch's row count, whose rows do not depend on the
// count from 2 rows on (Q8_0 / Q4_0): with one companion sequence or three in every round, the
// script's logits are the same bits (they differ from the sequences alone by the order of float32
// sums, which a routing decision near a tie can turn into a different expert).
TEST(BatchedDecodeGemm, IndependentOfCompanionsFromTwoRows) {
  for (WeightFormat format : {WeightFormat::kQ8_0, WeightFormat::kQ4_0}) {
    Model model = Model::load(kData + "/v3-tiny/model", format);
    model.set_exact_batches(false);
    const auto one = run_script(model, true, 1);
    const auto three = run_script(model, true, 3);
    ASSERT_EQ(one.size(), three.size());
    for (size_t r = 0; r < one.size(); r++)
      EXPECT_EQ(std::memcmp(one[r].data(), three[r].data(), one[r].size() * sizeof(float)), 0)
          << weight_format_name(format) << " row " << r;
    model.set_exact_batches(true);  // (and the exact kernels are not these)
    EXPECT_NE(run_script(model, true, 1), one) << weight_format_name(format);
  }
}

// dsmoe bench --concurrent's measurement: timed repetitions and the union of routed experts.
TEST(BatchedDecodeBench, MeasureConcurrentCountsTheUnionOfRoutedExperts) {
  const Model model = Model::load(kData + "/v3-tiny/model", WeightFormat::kQ8_0);
  const ModelConfig& c = model.config();
  const ConcurrentTimes one = measure_concurrent(model, 1, 6, 3, 2);
  EXPECT_EQ(one.decode.seconds.size(), 2u);
  EXPECT_DOUBLE_EQ(one.routed_experts_per_step, static_cast<double>(c.num_experts_per_tok));
  const ConcurrentTimes four = measure_concurrent(model, 4, 6, 3, 1);
  EXPECT_EQ(four.prompt_lengths, (std::vector<int64_t>{6, 6, 5, 4}));
  EXPECT_GT(four.routed_experts_per_step, static_cast<double>(c.num_experts_per_tok));
  EXPECT_LE(four.routed_experts_per_step,
            static_cast<double>(std::min<int64_t>(c.n_routed_experts, 4 * c.num_experts_per_tok)));
  // Two MoE layers (of three): K = 4 experts of 100 bytes per token become 10 per step.
  EXPECT_DOUBLE_EQ(batched_step_weight_bytes(c, 5000, 100, 10.0), 5000.0 + 2 * 6 * 100);
  EXPECT_THROW(measure_concurrent(model, 0, 6, 3, 1), Error);
}

}  // namespace
}  // namespace dsmoe
