#include "apps/cli/bench_parallel.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <vector>

#include "train/data_parallel.h"
#include "util/check.h"

namespace dsmoe::cli {
namespace {

// The PhaseTraffic fields every rank contributes to the summary, in this order.
enum Field {
  kTokens,
  kTokensReceived,
  kTokensSent,
  kRowsSent,
  kBytesSent,
  kBytesReceived,
  kComm,
  kSeconds
};
constexpr int kFields = kSeconds + 1;

std::array<double, kFields> fields_of(const PhaseTraffic& p) {
  return {static_cast<double>(p.tokens),
          static_cast<double>(p.tokens_received),
          static_cast<double>(p.tokens_sent),
          static_cast<double>(p.rows_sent),
          static_cast<double>(p.bytes_sent),
          static_cast<double>(p.bytes_received),
          p.comm_seconds,
          p.seconds};
}

// {per_rank, max, mean} of one value per rank.
nlohmann::json over_ranks(const std::vector<double>& per_rank) {
  double max = 0.0, mean = 0.0;
  for (double v : per_rank)
    max = std::max(max, v), mean += v / static_cast<double>(per_rank.size());
  return {{"per_rank", per_rank}, {"max", max}, {"mean", mean}};
}

double ratio(double a, double b) { return b > 0 ? a / b : 0.0; }

}  // namespace

Model BenchRanks::load(const std::string& model_dir, const std::string& weights) {
  return load_parallel_model(comm_, model_dir, weights, &ep_);
}

SeqRange BenchRanks::train_share(int64_t batch) const {
  DSMOE_CHECK(batch % size() == 0, "--batch {} is not a multiple of the {} ranks", batch, size());
  return rank_sequences(batch, rank(), size());
}

void BenchRanks::shard_training(const ModelConfig& c, ModelWeights& grads, AdamWState& adam) const {
  if (ep_ == nullptr) return;
  for (ModelWeights* w : {&grads, &adam.m, &adam.v}) drop_foreign_experts(c, *w, ep_->shard());
}

void BenchRanks::reduce_gradients(const ModelConfig& c, ModelWeights& grads) const {
  TrainParallel(comm_).reduce_gradients(c, grads);
}

void BenchRanks::start() {
  stats_at_start_ = comm_.stats();
  if (ep_ != nullptr) traffic_at_start_ = ep_->traffic();
}

void BenchRanks::stop(PhaseTraffic& phase, int64_t tokens, double seconds) const {
  const CommStats& now = comm_.stats();
  phase.bytes_sent += now.bytes_sent - stats_at_start_.bytes_sent;
  phase.bytes_received += now.bytes_received - stats_at_start_.bytes_received;
  phase.comm_seconds += now.seconds - stats_at_start_.seconds;
  if (ep_ != nullptr) {
    phase.tokens_received += ep_->traffic().tokens_received - traffic_at_start_.tokens_received;
    phase.rows_sent += ep_->traffic().rows_sent - traffic_at_start_.rows_sent;
    phase.tokens_sent += ep_->traffic().tokens_sent - traffic_at_start_.tokens_sent;
  }
  phase.tokens += tokens;
  phase.seconds += seconds;
}

nlohmann::json BenchRanks::summary(const PhaseTraffic& phase, const ModelConfig& c,
                                   int64_t n_moe_blocks, int64_t bytes_per_remote) const {
  const std::array<double, kFields> mine = fields_of(phase);
  std::vector<double> all(static_cast<size_t>(kFields) * size());  // [ranks, kFields]
  comm_.allgather(mine.data(), sizeof(mine), all.data());
  auto field = [&](int r, Field f) { return all[static_cast<size_t>(r) * kFields + f]; };
  std::vector<double> tokens, sent, received, comm_share, tokens_received;
  double total_tokens = 0, total_dispatched = 0, total_rows = 0, total_sent = 0;
  for (int r = 0; r < size(); r++) {
    tokens.push_back(field(r, kTokens));
    sent.push_back(ratio(field(r, kBytesSent), field(r, kTokens)));
    received.push_back(ratio(field(r, kBytesReceived), field(r, kTokens)));
    comm_share.push_back(ratio(field(r, kComm), field(r, kSeconds)));
    tokens_received.push_back(field(r, kTokensReceived));
    total_tokens += field(r, kTokens), total_rows += field(r, kRowsSent);
    total_dispatched += field(r, kTokensSent);
    total_sent += field(r, kBytesSent);
  }
  const int64_t max_ranks = ep_ != nullptr ? ep_->max_ranks_per_token(c, false) : 1;
  const int64_t max_remote = std::min<int64_t>(max_ranks, size() - 1);
  nlohmann::json out = {
      {"tokens_per_rank", tokens},
      {"a2a_bytes_sent_per_token", over_ranks(sent)},
      {"a2a_bytes_received_per_token", over_ranks(received)},
      {"comm_share", over_ranks(comm_share)},
      {"tokens_received", over_ranks(tokens_received)},
      {"a2a_bytes_per_token", ratio(total_sent, total_tokens)},
      {"ranks_per_token", ratio(total_rows, total_dispatched)},  // own rank included
      {"max_ranks_per_token", max_ranks},
      {"moe_blocks", n_moe_blocks},
      {"a2a_bytes_per_remote_rank_and_block", bytes_per_remote},
      {"a2a_bytes_per_token_bound", n_moe_blocks * max_remote * bytes_per_remote}};
  out["tokens_received"]["max_over_mean"] = ratio(out["tokens_received"]["max"].get<double>(),
                                                  out["tokens_received"]["mean"].get<double>());
  return out;
}

void add_traffic_hooks(BenchRanks& ranks, int64_t n_prompt, int64_t n_decode, InferenceHooks& hooks,
                       InferenceTraffic& traffic) {
  hooks.before_prefill = [&ranks] { ranks.start(); };
  hooks.beside_decode = [&ranks, n_prompt, n_decode, &traffic] {
    if (traffic.beside_decode_calls++ % 2 == 0) {
      ranks.stop(traffic.prefill, n_prompt, 0.0);
      ranks.start();
    } else {
      ranks.stop(traffic.decode, n_decode, 0.0);
    }
  };
}

nlohmann::json parallel_json(const BenchRanks& ranks, const ModelConfig& c, int64_t n_mtp,
                             InferenceTraffic& inference, const InferenceTimes& times,
                             const PhaseTraffic* train, double decode_tps) {
  inference.prefill.seconds = total_seconds(times.prefill);
  inference.decode.seconds = total_seconds(times.decode);
  const int64_t forward_bytes = moe_bytes_per_remote_rank(c, false);
  nlohmann::json out = {{"ranks", ranks.size()}, {"nodes", ranks.comm().n_nodes()}};
  if (train != nullptr)
    out["train"] =
        ranks.summary(*train, c, moe_blocks(c, n_mtp), moe_bytes_per_remote_rank(c, true));
  out["prefill"] = ranks.summary(inference.prefill, c, moe_blocks(c, 0), forward_bytes);
  out["decode"] = ranks.summary(inference.decode, c, moe_blocks(c, 0), forward_bytes);
  out["decode"]["aggregate_tokens_per_s"] = decode_tps * ranks.size();  // one sequence per rank
  return out;
}

double total_seconds(const RepTimes& times) {
  double sum = 0;
  for (double s : times.seconds) sum += s;
  return sum;
}

int64_t moe_bytes_per_remote_rank(const ModelConfig& c, bool backward) {
  const int64_t H = c.hidden_size, K = c.num_experts_per_tok;
  const int64_t forward = static_cast<int64_t>(sizeof(float)) * (H + 2 * K) +  // dispatch
                          static_cast<int64_t>(sizeof(double)) * H;            // combine
  const int64_t back = static_cast<int64_t>(sizeof(float)) * H +       // d out, dispatch route
                       static_cast<int64_t>(sizeof(float)) * (H + K);  // d x, d gate weights
  return backward ? forward + back : forward;
}

int64_t moe_blocks(const ModelConfig& c, int64_t n_mtp) {
  int64_t n = 0;
  for (int64_t L = 0; L < c.num_hidden_layers; L++) n += c.is_moe_layer(L);
  return c.n_routed_experts > 0 ? n + n_mtp : n;
}

void print_parallel_summary(const nlohmann::json& parallel) {
  fmt::print(
      "\n{} ranks (experts spread; training: the batch split; inference: one sequence per "
      "rank):\n",
      parallel["ranks"].get<int64_t>());
  fmt::print("{:<10} {:>16} {:>16} {:>14} {:>12} {:>18}\n", "phase", "a2a B/token sent",
             "bound B/token", "ranks/token", "comm share", "tokens recv max/mean");
  for (const char* phase : {"train", "prefill", "decode"}) {
    if (!parallel.contains(phase)) continue;
    const nlohmann::json& p = parallel[phase];
    fmt::print("{:<10} {:>16.0f} {:>16} {:>14.2f} {:>11.1f}% {:>18.2f}\n", phase,
               p["a2a_bytes_sent_per_token"]["mean"].get<double>(),
               p["a2a_bytes_per_token_bound"].get<int64_t>(), p["ranks_per_token"].get<double>(),
               100 * p["comm_share"]["mean"].get<double>(),
               p["tokens_received"]["max_over_mean"].get<double>());
  }
}

}  // namespace dsmoe::cli
