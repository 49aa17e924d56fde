#include "train/data_parallel.h"

#include <fmt/format.h>

#include <algorithm>
#include <string>

#include "util/check.h"
#include "util/log.h"

namespace dsmoe {
namespace {

bool is_expert(const std::string& name) { return routed_expert_of(name) >= 0; }

// Visits the routed-expert tensors of `weights` that rank `owner` holds, in for_each_tensor order.
template <typename Fn>
void for_each_expert_of(const ModelConfig& c, ModelWeights& weights, const ExpertParallel& ep,
                        int owner, Fn&& fn) {
  for_each_tensor(c, weights, [&](const std::string& name, const Shape&, TensorRole, Tensor& t) {
    const int64_t expert = routed_expert_of(name);
    if (expert >= 0 && ep.owner(expert) == owner) fn(t);
  });
}

}  // namespace

ModelConfig TrainParallel::placed(ModelConfig config) const {
  if (active() && config.ep_size == 1) config.ep_size = size();
  return config;
}

void TrainParallel::shard(const ModelConfig& c, ModelWeights& weights, ModelWeights& grads,
                          AdamWState& adam, bool node_limit) {
  if (!active()) return;
  ep_ = std::make_shared<ExpertParallel>(comm_, c);
  max_ranks_per_token_ = ep_->max_ranks_per_token(c, node_limit);
  node_limit_ = node_limit;
  log_info(
      "expert parallelism: {} ranks on {} node(s), {} experts each; a token reaches at most "
      "{} {}",
      size(), comm_.n_nodes(), c.n_routed_experts / size(), max_ranks_per_token_,
      node_limit ? "nodes" : "ranks");
  use_expert_parallel(c, weights, ep_);
  const ExpertShard mine = ep_->shard();
  drop_foreign_experts(c, grads, mine);
  if (rank() != 0)
    for (ModelWeights* w : {&weights, &adam.m, &adam.v}) drop_foreign_experts(c, *w, mine);
  last_stats_ = comm_.stats();
}

void TrainParallel::reduce_gradients(const ModelConfig& c, ModelWeights& grads) const {
  if (!active()) return;
  std::vector<Tensor*> replicated;
  int64_t n = 0;
  for_each_tensor(c, grads, [&](const std::string& name, const Shape&, TensorRole, Tensor& g) {
    if (!is_expert(name) && !g.empty()) replicated.push_back(&g), n += g.numel();
  });
  std::vector<float> flat(n);  // every replicated gradient, one all-reduce
  int64_t at = 0;
  for (Tensor* g : replicated)
    at = std::copy(g->data, g->data + g->numel(), flat.data() + at) - flat.data();
  comm_.allreduce_sum(flat.data(), n);
  at = 0;
  for (Tensor* g : replicated) {
    std::copy(flat.data() + at, flat.data() + at + g->numel(), g->data);
    at += g->numel();
  }
  scale_grads(c, grads, 1.0f / static_cast<float>(size()));
}

double TrainParallel::grad_norm(const ModelConfig& c, ModelWeights& grads) const {
  if (!active()) return global_grad_norm(c, grads);
  double experts = grad_sum_of_squares(c, grads, is_expert);
  comm_.allreduce_sum(&experts, 1);
  const double replicated =
      grad_sum_of_squares(c, grads, [](const std::string& name) { return !is_expert(name); });
  return std::sqrt(replicated + experts);
}

void TrainParallel::reduce_stats(double& loss, double& aux_loss, std::vector<double>& mtp_loss,
                                 int64_t& n_dropped,
                                 std::map<int64_t, std::vector<int64_t>>& loads) const {
  if (!active()) return;
  std::vector<double> losses = {loss, aux_loss};  // then the MTP depths (as many on every rank)
  losses.insert(losses.end(), mtp_loss.begin(), mtp_loss.end());
  comm_.allreduce_sum(losses.data(), static_cast<int64_t>(losses.size()));
  for (double& l : losses) l /= size();
  loss = losses[0], aux_loss = losses[1];
  std::copy(losses.begin() + 2, losses.end(), mtp_loss.begin());
  comm_.allreduce_sum(&n_dropped, 1);
  for (auto& [layer, load] : loads)
    comm_.allreduce_sum(load.data(), static_cast<int64_t>(load.size()));
}

void TrainParallel::gather_experts(const ModelConfig& c, ModelWeights& weights,
                                   AdamWState& adam) const {
  if (!active()) return;
  for (ModelWeights* w : {&weights, &adam.m, &adam.v}) {
    std::vector<float> mine;  // this rank's experts, in for_each_tensor order
    for_each_expert_of(c, *w, *ep_, rank(),
                       [&](Tensor& t) { mine.insert(mine.end(), t.data, t.data + t.numel()); });
    const std::vector<char> all =
        gatherv(comm_, mine.data(), static_cast<int64_t>(mine.size() * sizeof(float)), 0);
    if (rank() != 0) continue;
    const char* at = all.data();
    for (int r = 0; r < size(); r++)
      for_each_expert_of(c, *w, *ep_, r, [&](Tensor& t) {
        std::copy(at, at + t.numel() * sizeof(float), reinterpret_cast<char*>(t.data));
        at += t.numel() * sizeof(float);
      });
    DSMOE_CHECK(at == all.data() + all.size(), "gathering experts: {} bytes left over",
                all.data() + all.size() - at);
  }
}

nlohmann::json TrainParallel::step_traffic() {
  const CommStats now = comm_.stats();
  ExpertParallel::Traffic traffic = ep_ != nullptr ? ep_->traffic() : ExpertParallel::Traffic{};
  double mine[4] = {static_cast<double>(traffic.tokens_received - last_traffic_.tokens_received),
                    static_cast<double>(now.bytes_sent - last_stats_.bytes_sent),
                    static_cast<double>(now.bytes_received - last_stats_.bytes_received),
                    now.seconds - last_stats_.seconds};
  const double rows = static_cast<double>(traffic.rows_sent - last_traffic_.rows_sent);
  const double tokens = static_cast<double>(traffic.tokens_sent - last_traffic_.tokens_sent);
  last_stats_ = now;
  last_traffic_ = traffic;
  std::vector<double> all(4 * size());
  comm_.allgather(mine, sizeof(mine), all.data());
  static const char* kNames[4] = {"tokens_received", "a2a_bytes_sent", "a2a_bytes_received",
                                  "comm_seconds"};
  double reach[2] = {rows, tokens};  // summed over ranks: mean ranks reached per token
  comm_.allreduce_sum(reach, 2);
  nlohmann::json out = {
      {"ranks", size()},
      {"ranks_per_token", reach[1] > 0 ? reach[0] / reach[1] : 0.0},
      {node_limit_ ? "max_nodes_per_token" : "max_ranks_per_token", max_ranks_per_token_}};
  for (int k = 0; k < 4; k++) {
    std::vector<double> per_rank(size());
    double max = 0.0, mean = 0.0;
    for (int r = 0; r < size(); r++) {
      per_rank[r] = all[r * 4 + k];
      max = std::max(max, per_rank[r]);
      mean += per_rank[r] / size();
    }
    out[kNames[k]] = {{"per_rank", per_rank}, {"max", max}, {"mean", mean}};
  }
  return out;
}

std::string TrainParallel::traffic_summary(const nlohmann::json& t, double step_seconds) const {
  const double mean_tokens = t["tokens_received"]["mean"].get<double>();
  return fmt::format(
      " | {} ranks: a2a {:.2f} MB sent/rank, comm {:.0f}% | tokens/rank max/mean {:.2f}", size(),
      t["a2a_bytes_sent"]["mean"].get<double>() / 1e6,
      100.0 * t["comm_seconds"]["mean"].get<double>() / std::max(step_seconds, 1e-9),
      mean_tokens > 0 ? t["tokens_received"]["max"].get<double>() / mean_tokens : 0.0);
}

}  // namespace dsmoe
