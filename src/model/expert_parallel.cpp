#include "model/expert_parallel.h"

#include <algorithm>
#include <functional>
#include <numeric>
#include <vector>

#include "util/check.h"

namespace dsmoe {
namespace {

// A dispatched row: [hidden state H | gate weight K | expert id K (as float, exact below 2^24)];
// a slot whose expert lives elsewhere (or was dropped) has id -1 and weight 0.
int64_t dispatch_width(const ModelConfig& c) { return c.hidden_size + 2 * c.num_experts_per_tok; }

// The row count sent in place of a real one to tell expert servers to stop.
constexpr int64_t kStopRows = -1;

std::vector<int64_t> times(const std::vector<int64_t>& rows, int64_t bytes_per_row) {
  std::vector<int64_t> bytes(rows.size());
  for (size_t r = 0; r < rows.size(); r++) bytes[r] = rows[r] * bytes_per_row;
  return bytes;
}

int64_t total(const std::vector<int64_t>& v) { return std::accumulate(v.begin(), v.end(), 0L); }

// Dispatch of one layer, started: packs each local token once per rank holding one of its kept
// experts (ranks in order, tokens in order within a rank), exchanges the row counts (or a stop
// signal) and starts sending the rows. Returns false when a peer sent the stop signal instead.
bool start_dispatch(const ModelConfig& c, ExpertParallel& ep, const float* x, int64_t n_tokens,
                    bool stop, MoeActs& a) {
  const int64_t H = c.hidden_size, K = c.num_experts_per_tok, W = dispatch_width(c);
  const int R = ep.size();
  ExpertExchange& ex = a.exchange;
  const Routing& routing = a.routing;
  auto kept = [&](int64_t i) { return routing.dropped.empty() || !routing.dropped[i]; };
  ex.send_rows.assign(R, 0);
  ex.sent_token.clear();
  std::vector<float>& send = ex.send;  // (rows, W)
  send.clear();
  for (int q = 0; q < R && !stop; q++) {
    for (int64_t t = 0; t < n_tokens; t++) {
      bool to_q = false;
      for (int64_t j = 0; j < K; j++)
        to_q = to_q || (kept(t * K + j) && ep.owner(routing.expert[t * K + j]) == q);
      if (!to_q) continue;
      ex.send_rows[q]++;
      ex.sent_token.push_back(t);
      send.insert(send.end(), x + t * H, x + (t + 1) * H);
      for (int64_t j = 0; j < K; j++) {
        const bool here = kept(t * K + j) && ep.owner(routing.expert[t * K + j]) == q;
        send.push_back(here ? routing.weight[t * K + j] : 0.0f);
      }
      for (int64_t j = 0; j < K; j++) {
        const bool here = kept(t * K + j) && ep.owner(routing.expert[t * K + j]) == q;
        send.push_back(here ? static_cast<float>(routing.expert[t * K + j]) : -1.0f);
      }
    }
  }
  std::vector<int64_t> announce = ex.send_rows;
  if (stop) std::fill(announce.begin(), announce.end(), kStopRows);
  ex.recv_rows.assign(R, 0);
  ep.comm().alltoall(announce.data(), ex.recv_rows.data());
  if (stop) return false;
  if (std::any_of(ex.recv_rows.begin(), ex.recv_rows.end(), [](int64_t n) { return n < 0; }))
    return false;
  ex.recv.resize(total(ex.recv_rows) * W);
  ep.comm().start_alltoallv(send.data(), times(ex.send_rows, W * sizeof(float)), ex.recv.data(),
                            times(ex.recv_rows, W * sizeof(float)));
  ep.traffic().rows_sent += total(ex.send_rows);
  ep.traffic().tokens_sent += n_tokens;
  return true;
}

// Completes the dispatch: unpacks what this rank's experts take into acts.exchange (x_rows,
// row_weight) and acts.slot_expert.
void finish_dispatch(const ModelConfig& c, ExpertParallel& ep, MoeActs& a) {
  const int64_t H = c.hidden_size, K = c.num_experts_per_tok, W = dispatch_width(c);
  ExpertExchange& ex = a.exchange;
  ep.comm().wait_alltoallv();
  const int64_t n_rows = total(ex.recv_rows);
  const std::vector<float>& recv = ex.recv;
  ex.x_rows.resize(n_rows * H);
  ex.row_weight.resize(n_rows * K);
  a.slot_expert.resize(n_rows * K);
  for (int64_t i = 0; i < n_rows; i++) {
    const float* row = recv.data() + i * W;
    std::copy(row, row + H, ex.x_rows.data() + i * H);
    for (int64_t j = 0; j < K; j++) {
      ex.row_weight[i * K + j] = row[H + j];
      a.slot_expert[i * K + j] = static_cast<int32_t>(row[H + K + j]);
    }
  }
  ep.traffic().tokens_received += n_rows;
}

// Sends each received row's reply [n_rows, width] back to the rank it came from; returns the
// replies to this rank's sent rows [sum send_rows, width], in the order they were sent.
template <typename T>
std::vector<T> reply(ExpertParallel& ep, const ExpertExchange& ex, const std::vector<T>& rows,
                     int64_t width) {
  std::vector<T> back(total(ex.send_rows) * width);
  ep.comm().alltoallv(rows.data(), times(ex.recv_rows, width * sizeof(T)), back.data(),
                      times(ex.send_rows, width * sizeof(T)));
  return back;
}

// One MoE layer's routed experts across ranks, `overlap` (the shared experts, writing out)
// running while the dispatch is in flight; false when stopped (expert servers).
bool routed_forward(const ModelConfig& c, const MoeWeights& moe, const float* x, float* out,
                    int64_t n_tokens, bool stop, MoeActs& a,
                    const std::function<void()>& overlap = nullptr) {
  const int64_t H = c.hidden_size;
  ExpertParallel& ep = *moe.expert_parallel;
  if (!start_dispatch(c, ep, x, n_tokens, stop, a)) return false;
  if (overlap) overlap();
  finish_dispatch(c, ep, a);
  const ExpertExchange& ex = a.exchange;
  const int64_t n_rows = total(ex.recv_rows);
  std::vector<double> partial(n_rows * H);  // (rows, H) this rank's experts' sums per row
  routed_experts_forward(c, moe, ex.x_rows.data(), n_rows, ex.row_weight.data(), partial.data(), a);
  // Combine: out = shared + the partial sums of the ranks in rank order, in double, rounded
  // once (in one process: shared + one partial sum; docs/scale-out.md).
  const std::vector<double> back = reply(ep, ex, partial, H);
  std::vector<double> sum(n_tokens * H);  // (n, H)
  for (int64_t i = 0; i < n_tokens * H; i++) sum[i] = out[i];
  for (size_t i = 0; i < ex.sent_token.size(); i++) {
    double* dst = sum.data() + ex.sent_token[i] * H;
    const double* src = back.data() + i * H;
    for (int64_t h = 0; h < H; h++) dst[h] += src[h];
  }
  for (int64_t i = 0; i < n_tokens * H; i++) out[i] = static_cast<float>(sum[i]);
  return true;
}

}  // namespace

ExpertParallel::ExpertParallel(Comm& comm, const ModelConfig& config)
    : comm_(comm), per_rank_(config.n_routed_experts / std::max(comm.size(), 1)) {
  DSMOE_CHECK(config.n_routed_experts == 0 || config.n_routed_experts % comm.size() == 0,
              "expert parallelism: {} ranks do not divide n_routed_experts={}", comm.size(),
              config.n_routed_experts);
}

int64_t ExpertParallel::max_ranks_per_token(const ModelConfig& c, bool node_limit) const {
  const int64_t K = c.num_experts_per_tok, R = size();
  const bool grouped = c.topk_method != TopkMethod::kGreedy;
  if (!node_limit)
    return grouped && c.n_group % R == 0 ? std::min(c.topk_group, R) : std::min(K, R);
  // Nodes: consecutive blocks of ranks of equal size, each holding whole groups.
  const std::vector<int>& node = comm_.node_of_rank();
  const int64_t n_nodes = comm_.n_nodes(), per_node = R / n_nodes;
  bool blocks = R % n_nodes == 0;
  for (int r = 0; r < R && blocks; r++) blocks = node[r] == r / per_node;
  DSMOE_CHECK(grouped && blocks && c.n_group % n_nodes == 0,
              "--ep-node-limit: the routing groups do not map onto the {} nodes (n_group={}, {}, "
              "{} ranks{})",
              n_nodes, c.n_group, grouped ? "group-limited routing" : "greedy routing has none", R,
              blocks ? "" : ", nodes not in equal consecutive rank blocks");
  return std::min(c.topk_group, n_nodes);
}

void use_expert_parallel(const ModelConfig& c, ModelWeights& w,
                         std::shared_ptr<ExpertParallel> ep) {
  for (int64_t L = 0; L < c.num_hidden_layers; L++)
    if (c.is_moe_layer(L)) w.layers[L].moe.expert_parallel = ep;
  for (MtpWeights& module : w.mtp) module.block.moe.expert_parallel = ep;
}

void drop_foreign_experts(const ModelConfig& c, ModelWeights& w, ExpertShard shard) {
  auto drop = [&](MoeWeights& moe) {
    for (size_t e = 0; e < moe.experts.size(); e++)
      if (!shard.holds(static_cast<int64_t>(e))) moe.experts[e] = MlpWeights{};
  };
  for (int64_t L = 0; L < c.num_hidden_layers; L++)
    if (c.is_moe_layer(L)) drop(w.layers[L].moe);
  for (MtpWeights& module : w.mtp) drop(module.block.moe);
}

bool expert_parallel_active(const MoeWeights& moe) {
  return moe.expert_parallel != nullptr && moe.expert_parallel->size() > 1;
}

void moe_routed_forward_parallel(const ModelConfig& c, const MoeWeights& moe, const float* x,
                                 float* out, int64_t n_tokens, MoeActs& a,
                                 const std::function<void()>& overlap) {
  DSMOE_CHECK(routed_forward(c, moe, x, out, n_tokens, false, a, overlap),
              "expert parallelism: a rank stopped serving experts during a forward pass");
}

void moe_routed_backward_parallel(const ModelConfig& c, const MoeWeights& moe, MoeWeights& g,
                                  const float* dout, float* dx, float* dweight, int64_t n_tokens,
                                  const MoeActs& a) {
  const int64_t H = c.hidden_size, K = c.num_experts_per_tok;
  ExpertParallel& ep = *moe.expert_parallel;
  const ExpertExchange& ex = a.exchange;
  // d out of each sent row travels the forward's dispatch route (the rows' slots are known
  // there); d x and d gate weights come back along the combine route.
  std::vector<float> dout_sent(ex.sent_token.size() * H);  // (sent rows, H)
  for (size_t i = 0; i < ex.sent_token.size(); i++)
    std::copy(dout + ex.sent_token[i] * H, dout + (ex.sent_token[i] + 1) * H,
              dout_sent.data() + i * H);
  const int64_t n_rows = total(ex.recv_rows);
  std::vector<float> dout_rows(n_rows * H);  // (rows, H)
  ep.comm().alltoallv(dout_sent.data(), times(ex.send_rows, H * sizeof(float)), dout_rows.data(),
                      times(ex.recv_rows, H * sizeof(float)));
  std::vector<float> dx_rows(n_rows * H, 0.0f), dweight_rows(n_rows * K);
  routed_experts_backward(c, moe, g, dout_rows.data(), ex.row_weight.data(), n_rows, dx_rows.data(),
                          dweight_rows.data(), a);
  std::vector<float> replies(n_rows * (H + K));  // (rows, H + K): d x partial | d weight
  for (int64_t i = 0; i < n_rows; i++) {
    std::copy(dx_rows.data() + i * H, dx_rows.data() + (i + 1) * H, replies.data() + i * (H + K));
    std::copy(dweight_rows.data() + i * K, dweight_rows.data() + (i + 1) * K,
              replies.data() + i * (H + K) + H);
  }
  const std::vector<float> back = reply(ep, ex, replies, H + K);
  for (size_t i = 0; i < ex.sent_token.size(); i++) {  // ranks in order
    const int64_t t = ex.sent_token[i];
    DSMOE_ASSERT(t < n_tokens);
    const float* src = back.data() + i * (H + K);
    for (int64_t h = 0; h < H; h++) dx[t * H + h] += src[h];
    for (int64_t j = 0; j < K; j++) dweight[t * K + j] += src[H + j];  // one rank per slot
  }
}

void serve_experts(const ModelConfig& c, const ModelWeights& w) {
  MoeActs acts;
  for (;;)
    for (int64_t L = 0; L < c.num_hidden_layers; L++) {
      if (!c.is_moe_layer(L) || !expert_parallel_active(w.layers[L].moe)) continue;
      acts.routing = Routing{};
      if (!routed_forward(c, w.layers[L].moe, nullptr, nullptr, 0, false, acts)) return;
    }
}

void release_expert_servers(const ModelConfig& c, const ModelWeights& w) {
  for (int64_t L = 0; L < c.num_hidden_layers; L++)
    if (c.is_moe_layer(L) && expert_parallel_active(w.layers[L].moe)) {
      MoeActs acts;
      routed_forward(c, w.layers[L].moe, nullptr, nullptr, 0, true, acts);
      return;
    }
}

}  // namespace dsmoe
