// profile.h: wall-clock totals per kind of work of a forward pass (`dsmoe bench --profile`: where
// a decoded token's time goes). Kept only while enabled; off, a scope costs one relaxed load.
#pragma once
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

namespace dsmoe {

// The kinds timed. The first ones do not overlap (they are timed on the thread that runs the
// forward, around whole ops); the nested ones are parts of them.
enum class ProfileOp : int {
  kAttention,   // a layer's attention block (MLA incl. absorbed decode, or MHA), products included
  kRouter,      // the MoE gate: scores and expert selection
  kExperts,     // a MoE layer's expert MLPs (routed and shared, one grouped product per phase)
  kMoeCombine,  // gathering expert inputs and summing the weighted expert outputs
  kDenseMlp,    // a dense layer's MLP
  kNormResidual,  // the layers' RMSNorms and residual adds
  // nested: parts of the kinds above
  kActQuant,          // rounding activations for the weight format, once per product or group
  kParallelWait,      // quantized products: a parallel region's wall time beyond the work of its
                      // first thread (waking the team, waiting for the slowest thread at the join)
  kLatentAttention,   // MLA's absorbed decode: attention over the cached latent rows
  kAbsorbedProducts,  // MLA's absorbed decode: the per-head products with W_UK and W_UV
  kCount
};
constexpr int kProfileOps = static_cast<int>(ProfileOp::kCount);
constexpr int kProfileTopLevelOps = static_cast<int>(ProfileOp::kActQuant);
inline constexpr const char* kProfileOpNames[kProfileOps] = {
    "attention",     "router",    "experts",       "moe_combine",      "dense_mlp",
    "norm_residual", "act_quant", "parallel_wait", "latent_attention", "absorbed_products"};

// Nanoseconds and calls per kind since the last profile_reset().
struct ProfileTotals {
  std::array<int64_t, kProfileOps> ns{}, calls{};
};

namespace profile_detail {
inline std::atomic<bool> enabled{false};
inline std::array<std::atomic<int64_t>, kProfileOps> ns{}, calls{};
}  // namespace profile_detail

inline bool profiling() { return profile_detail::enabled.load(std::memory_order_relaxed); }
inline void profile_enable(bool on) { profile_detail::enabled.store(on); }
inline void profile_reset() {
  for (int i = 0; i < kProfileOps; i++) profile_detail::ns[i] = 0, profile_detail::calls[i] = 0;
}
inline ProfileTotals profile_totals() {
  ProfileTotals t;
  for (int i = 0; i < kProfileOps; i++)
    t.ns[i] = profile_detail::ns[i], t.calls[i] = profile_detail::calls[i];
  return t;
}

inline int64_t profile_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
inline void profile_add(ProfileOp op, int64_t ns) {
  const auto i = static_cast<size_t>(op);
  profile_detail::ns[i].fetch_add(ns, std::memory_order_relaxed);
  profile_detail::calls[i].fetch_add(1, std::memory_order_relaxed);
}

// Adds the wall time of its lifetime to `op` when profiling was on at its start.
class ProfileScope {
 public:
  explicit ProfileScope(ProfileOp op) : op_(op), start_ns_(profiling() ? profile_now_ns() : -1) {}
  ~ProfileScope() {
    if (start_ns_ >= 0) profile_add(op_, profile_now_ns() - start_ns_);
  }
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  ProfileOp op_;
  int64_t start_ns_;
};

}  // namespace dsmoe
