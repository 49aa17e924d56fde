// Tests for the meaning of each training-time routing option: capacity drops, device-limited
// routing, noisy gating, and the aux-loss-free bias update of the trainer.
#include "tiny_models.h"

namespace dsmoe {
namespace {
// ---------------------------------------------------------------------------------------------
// (b) Capacity

// y = down(silu(gate x) * up x) in double.
std::vector<double> swiglu_ref(const MlpWeights& w, const float* x, int64_t H) {
  const int64_t I = w.up_proj.dim(0);
  std::vector<double> hidden(I), y(H, 0.0);
  for (int64_t i = 0; i < I; i++) {
    double g = 0.0, u = 0.0;
    for (int64_t h = 0; h < H; h++) {
      g += static_cast<double>(w.gate_proj.data[i * H + h]) * x[h];
      u += static_cast<double>(w.up_proj.data[i * H + h]) * x[h];
    }
    hidden[i] = g / (1.0 + std::exp(-g)) * u;
  }
  for (int64_t h = 0; h < H; h++)
    for (int64_t i = 0; i < I; i++)
      y[h] += static_cast<double>(w.down_proj.data[h * I + i]) * hidden[i];
  return y;
}

// Random gate inputs sharing a common component, so that some experts are popular.
std::vector<float> skewed_inputs(int64_t n, int64_t H, uint64_t seed) {
  std::vector<float> x = random_normal(n * H, 1.0f, seed);
  const std::vector<float> common = random_normal(H, 1.0f, seed + 1);
  for (int64_t t = 0; t < n; t++)
    for (int64_t h = 0; h < H; h++) x[t * H + h] += common[h];
  return x;
}

TEST(Capacity, DropsExactlyTheOverflowInTokenOrder) {
  for (const char* arch : {"v3", "v2"}) {
    for (double factor : {0.5, 1.25}) {
      SCOPED_TRACE(fmt::format("{} capacity factor {}", arch, factor));
      const json base = std::string(arch) == "v3" ? tiny_v3_json() : tiny_v2_json("greedy");
      const ModelConfig c = parse(with(base, {{"moe_expert_capacity_factor", factor}}));
      const ModelWeights w = test_weights(c, 11);
      const MoeWeights& moe = w.layers[1].moe;
      const int64_t n = 40, H = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
      const std::vector<float> x = skewed_inputs(n, H, 21);
      std::vector<float> out(n * H), out_inference(n * H);
      MoeActs acts, acts_inference;
      MoeTraining training;
      moe_forward(c, moe, x.data(), out.data(), n, acts, &training);
      moe_forward(c, moe, x.data(), out_inference.data(), n, acts_inference);
      const Routing& r = acts.routing;
      // Capacity never changes which experts are chosen, nor the weights.
      ASSERT_EQ(r.expert, acts_inference.routing.expert);
      ASSERT_EQ(r.weight, acts_inference.routing.weight);
      // Inference never drops.
      EXPECT_EQ(acts_inference.routing.n_dropped, 0);
      EXPECT_TRUE(std::all_of(acts_inference.routing.dropped.begin(),
                              acts_inference.routing.dropped.end(), [](uint8_t d) { return !d; }));

      const int64_t capacity = static_cast<int64_t>(std::ceil(factor * n * K / E));
      std::vector<int64_t> chosen(E, 0), seen(E, 0);
      for (int32_t e : r.expert) chosen[e]++;
      int64_t overflow = 0;
      for (int64_t e = 0; e < E; e++) overflow += std::max<int64_t>(0, chosen[e] - capacity);
      ASSERT_GT(overflow, 0) << "the case must overflow some expert";
      EXPECT_EQ(r.n_dropped, overflow);
      ASSERT_EQ(static_cast<int64_t>(r.dropped.size()), n * K);
      // The first `capacity` assignments of each expert in token order are kept.
      for (int64_t i = 0; i < n * K; i++) {
        const bool expect_drop = seen[r.expert[i]]++ >= capacity;
        EXPECT_EQ(r.dropped[i] != 0, expect_drop) << "assignment " << i;
      }
      const std::vector<int64_t> loads = expert_loads(c, r);
      for (int64_t e = 0; e < E; e++) EXPECT_EQ(loads[e], std::min(chosen[e], capacity));

      // Each token's output: shared expert + its kept experts only, by hand.
      int64_t tokens_with_drop = 0;
      for (int64_t t = 0; t < n; t++) {
        std::vector<double> expected = swiglu_ref(moe.shared, x.data() + t * H, H);
        bool any_drop = false;
        for (int64_t j = 0; j < K; j++) {
          if (r.dropped[t * K + j]) {
            any_drop = true;
            continue;
          }
          const std::vector<double> y =
              swiglu_ref(moe.experts[r.expert[t * K + j]], x.data() + t * H, H);
          for (int64_t h = 0; h < H; h++) expected[h] += r.weight[t * K + j] * y[h];
        }
        tokens_with_drop += any_drop;
        double max_gap_to_full = 0.0;
        for (int64_t h = 0; h < H; h++) {
          EXPECT_NEAR(out[t * H + h], expected[h], 1e-4 * (1.0 + std::fabs(expected[h])))
              << "token " << t << " h " << h;
          max_gap_to_full = std::max<double>(max_gap_to_full,
                                             std::fabs(out[t * H + h] - out_inference[t * H + h]));
        }
        if (any_drop) {
          EXPECT_GT(max_gap_to_full, 1e-3) << "token " << t << ": a dropped expert must matter";
        } else {
          EXPECT_LT(max_gap_to_full, 1e-4) << "token " << t;
        }
      }
      EXPECT_GT(tokens_with_drop, 0);
    }
  }
}

// Through the whole model: StepStats counts the drops of every MoE layer; the loads sum to the
// kept assignments; an inference forward of the same model drops nothing.
TEST(Capacity, StepStatsAndInference) {
  const ModelConfig c = parse(with(tiny_v3_json(), {{"moe_expert_capacity_factor", 0.5}}));
  Model model(c, test_weights(c, 13));
  const int64_t n_seqs = 2, T = 10, K = c.num_experts_per_tok;
  const std::vector<int64_t> ids = random_ids(n_seqs * T, c.vocab_size, 17);
  ModelWeights grads = zeros_like_weights(c);
  TrainActs acts;
  const StepStats s = model.forward_backward(ids.data(), n_seqs, T, grads, acts);
  int64_t dropped = 0;
  for (int64_t L : {1, 2}) {
    const Routing& r = acts.layers[L].moe.routing;
    dropped += r.n_dropped;
    int64_t kept = 0;
    for (int64_t l : s.expert_load.at(L)) {
      kept += l;
      EXPECT_LE(l, static_cast<int64_t>(std::ceil(0.5 * n_seqs * T * K / c.n_routed_experts)));
    }
    EXPECT_EQ(kept, n_seqs * T * K - r.n_dropped);
  }
  EXPECT_GT(dropped, 0);
  EXPECT_EQ(s.n_dropped, dropped);
  ForwardRecord record;
  record.keep_routes = true;
  model.forward(ids.data(), n_seqs, T, &record);
  ASSERT_EQ(record.routes.size(), 2u);
  for (const auto& [L, r] : record.routes) {
    EXPECT_EQ(r.n_dropped, 0) << "layer " << L;
    EXPECT_TRUE(std::none_of(r.dropped.begin(), r.dropped.end(), [](uint8_t d) { return d; }));
  }
  // The first MoE layer sees the same input in both, so the same choices (later layers see
  // the first one's drops in training).
  EXPECT_EQ(record.routes.at(1).expert, acts.layers[1].moe.routing.expert);
}

// ---------------------------------------------------------------------------------------------
// (c) Device-limited routing

TEST(DeviceLimitedRouting, NeverMoreThanMDevicesPerToken) {
  // 16 experts on D = 4 devices (groups), top-4, M = 2: unrestricted, a token could use 4.
  const json base = with(tiny_v2_json("group_limited_greedy"),
                         {{"n_routed_experts", 16}, {"num_experts_per_tok", 4}});
  const int64_t n = 2000, D = 4, M = 2, per_device = 4;
  for (const std::string method : {"group_limited_greedy", "noaux_tc", "greedy"}) {
    SCOPED_TRACE(method);
    json j = with(base, {{"topk_method", method}});
    if (method == "noaux_tc")
      j = with(j, {{"model_type", "deepseek_v3"}, {"scoring_func", "sigmoid"}});
    const ModelConfig c = parse(j);
    ASSERT_EQ(c.n_devices(), D);
    const ModelWeights w = test_weights(c, 23);
    const MoeWeights& moe = w.layers[1].moe;
    const std::vector<float> x = random_normal(n * c.hidden_size, 1.0f, 29);
    Routing r;
    route_tokens(c, moe, x.data(), n, r);
    int64_t max_devices = 0, over_limit = 0;
    for (int64_t t = 0; t < n; t++) {
      std::set<int64_t> devices;
      for (int64_t j = 0; j < c.num_experts_per_tok; j++)
        devices.insert(r.expert[t * c.num_experts_per_tok + j] / per_device);
      max_devices = std::max<int64_t>(max_devices, devices.size());
      over_limit += static_cast<int64_t>(devices.size()) > M;
      if (method == "group_limited_greedy") {
        // DeepSeek-V2 sec. 2.2.2: the M devices holding the highest affinities, then top-K among
        // their experts.
        const float* s = r.scores.data() + t * c.n_routed_experts;
        std::vector<std::pair<float, int64_t>> device_max;
        for (int64_t d = 0; d < D; d++)
          device_max.push_back(
              {*std::max_element(s + d * per_device, s + (d + 1) * per_device), d});
        std::sort(device_max.rbegin(), device_max.rend());
        std::vector<std::pair<float, int32_t>> allowed;
        for (int64_t i = 0; i < M; i++)
          for (int64_t e = 0; e < per_device; e++) {
            const int32_t expert = static_cast<int32_t>(device_max[i].second * per_device + e);
            allowed.push_back({s[expert], expert});
          }
        std::sort(allowed.rbegin(), allowed.rend());
        std::set<int32_t> want, got;
        for (int64_t j = 0; j < c.num_experts_per_tok; j++) {
          want.insert(allowed[j].second);
          got.insert(r.expert[t * c.num_experts_per_tok + j]);
        }
        EXPECT_EQ(got, want) << "token " << t;
      }
    }
    if (method == "greedy") {
      // The control: unrestricted routing does spread tokens over more than M devices.
      EXPECT_EQ(c.max_devices_per_token(), std::min<int64_t>(4, D));
      EXPECT_GT(over_limit, 0);
    } else {
      EXPECT_EQ(c.max_devices_per_token(), M);
      EXPECT_EQ(over_limit, 0);
      EXPECT_EQ(max_devices, M);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// (d) Noisy gating

TEST(NoisyGating, InferenceIsDeterministicAndIgnoresTheNoiseWeight) {
  const ModelConfig c = parse(with(tiny_v3_json(), {{"noisy_gating", true}}));
  const ModelConfig plain_config = parse(tiny_v3_json());
  ModelWeights w = test_weights(c, 31);
  const std::vector<int64_t> ids = random_ids(2 * 8, c.vocab_size, 37);
  Model model(c, w);
  const Tensor a = model.forward(ids.data(), 2, 8);
  const Tensor b = model.forward(ids.data(), 2, 8);
  // The same weights without noisy gating: the noise weight is not even a parameter there.
  ModelWeights plain_weights = w;
  for (int64_t L : {1, 2}) plain_weights.layers[L].moe.noise_weight = Tensor{};
  const Tensor plain = Model(plain_config, plain_weights).forward(ids.data(), 2, 8);
  // Another noise weight changes nothing in inference.
  for (int64_t L : {1, 2}) {
    Tensor& nw = model.mutable_weights().layers[L].moe.noise_weight;
    for (int64_t i = 0; i < nw.numel(); i++) nw.data[i] = 10.0f * (i % 7) - 30.0f;
  }
  const Tensor changed = model.forward(ids.data(), 2, 8);
  ASSERT_EQ(a.numel(), plain.numel());
  for (int64_t i = 0; i < a.numel(); i++) {
    ASSERT_EQ(a.data[i], b.data[i]) << i;
    ASSERT_EQ(a.data[i], plain.data[i]) << i;
    ASSERT_EQ(a.data[i], changed.data[i]) << i;
  }
}

TEST(NoisyGating, TrainingRoutingDependsOnTheDraws) {
  const ModelConfig c = parse(with(tiny_v2_json("greedy"), {{"noisy_gating", true}}));
  const ModelWeights w = test_weights(c, 41);
  const MoeWeights& moe = w.layers[1].moe;
  const int64_t n = 64;
  const std::vector<float> x = random_normal(n * c.hidden_size, 1.0f, 43);
  // training: a training forward's routing with noise drawn from Rng(seed); else inference.
  auto route = [&](bool training, uint64_t seed) {
    Routing r;
    Rng rng(seed);
    RouterTraining options;
    options.noise_rng = &rng;
    route_tokens(c, moe, x.data(), n, r, training ? &options : nullptr);
    return r;
  };
  const Routing clean = route(false, 0), clean_again = route(false, 1);
  const Routing noisy1 = route(true, 5), noisy1_again = route(true, 5), noisy2 = route(true, 6);
  EXPECT_EQ(clean.expert, clean_again.expert);
  EXPECT_EQ(clean.scores, clean_again.scores);
  EXPECT_TRUE(clean.noise.empty());
  EXPECT_EQ(noisy1.expert, noisy1_again.expert);
  EXPECT_EQ(noisy1.scores, noisy1_again.scores);
  EXPECT_NE(noisy1.expert, clean.expert);
  EXPECT_NE(noisy1.expert, noisy2.expert);
}

// KeepTopK (Shazeer et al. 2017): H(x)_i = (x W_g)_i + N(0, 1) softplus((x W_noise)_i). With
// sigmoid scores the logits can be read back: over many draws for one x, each logit has mean
// (x W_g)_i and standard deviation softplus((x W_noise)_i).
TEST(NoisyGating, NoiseStdIsSoftplusOfNoiseProjection) {
  const ModelConfig c = parse(with(tiny_v3_json(), {{"noisy_gating", true}}));
  ModelWeights w = test_weights(c, 47);
  MoeWeights& moe = w.layers[1].moe;
  const int64_t H = c.hidden_size, E = c.n_routed_experts, n = 4000;
  const std::vector<float> x0 = random_normal(H, 1.0f, 53);
  // Noise projection giving pre-activations -2 .. 1.5 across the experts: W_noise = a_e x0/|x0|^2.
  double norm2 = 0.0;
  for (float v : x0) norm2 += static_cast<double>(v) * v;
  std::vector<double> pre(E), clean(E, 0.0);
  for (int64_t e = 0; e < E; e++) {
    pre[e] = -2.0 + 0.5 * static_cast<double>(e);
    for (int64_t h = 0; h < H; h++) {
      moe.noise_weight.data[e * H + h] = static_cast<float>(pre[e] * x0[h] / norm2);
      clean[e] += static_cast<double>(moe.gate.data[e * H + h]) * x0[h];
    }
  }
  std::vector<float> x(n * H);
  for (int64_t t = 0; t < n; t++) std::copy(x0.begin(), x0.end(), x.begin() + t * H);
  Rng rng(59);
  RouterTraining training;
  training.noise_rng = &rng;
  Routing r;
  route_tokens(c, moe, x.data(), n, r, &training);
  for (int64_t e = 0; e < E; e++) {
    double sum = 0.0, sum_sq = 0.0;
    for (int64_t t = 0; t < n; t++) {
      const double s = r.scores[t * E + e];
      const double logit = std::log(s / (1.0 - s));
      sum += logit - clean[e];
      sum_sq += (logit - clean[e]) * (logit - clean[e]);
    }
    const double mean = sum / n, std = std::sqrt(sum_sq / n - mean * mean);
    const double softplus = std::log1p(std::exp(pre[e]));
    EXPECT_NEAR(std, softplus, 0.05 * softplus) << "expert " << e;
    EXPECT_NEAR(mean, 0.0, 4.0 * softplus / std::sqrt(static_cast<double>(n))) << "expert " << e;
  }
}

// ---------------------------------------------------------------------------------------------


std::string training_text() {
  const char* sentences[] = {"the quick brown fox jumps over the lazy dog. ",
                             "experts route tokens to the best of eight. ", "1234 5678 1234 5678 ",
                             "ABABABAB CDCDCDCD "};
  std::string text;
  for (int i = 0; i < 40; i++) text += sentences[(i * 7) % 4];
  return text;
}


// Starts a checkpoint (step 0) from weights whose router sends most tokens to expert 0, then
// trains with learning rate 0: only the bias moves. Each step must move every bias by exactly
// gamma * sign(mean load - load); the load must become more even; and the gate weights must not
// see the bias.
TEST(ExpertBiasUpdate, MovesASkewedLoadTowardBalance) {
  TempDir dir("run");
  const float gamma = 0.02f;
  const nlohmann::ordered_json config_json = nlohmann::ordered_json::parse(
      with(tiny_v3_json(2, 256),
           {{"moe_router_enable_expert_bias", true}, {"moe_router_bias_update_rate", gamma}})
          .dump());
  const ModelConfig c = parse(json::parse(config_json.dump()));
  write_text(dir / "data.txt", training_text());
  const uint64_t seed = 3;
  const int64_t batch = 4, seq_len = 32, E = c.n_routed_experts, H = c.hidden_size;

  // Skew: add to expert 0's gate row a multiple of the mean gate input on this data.
  ModelWeights w = random_weights(c, seed);
  std::vector<float> gate_inputs;  // (batch * seq_len, H)
  {
    Model probe(c, w);
    std::vector<int64_t> ids(batch * seq_len);
    const std::string text = training_text();
    for (int64_t i = 0; i < batch * seq_len; i++)
      ids[i] = static_cast<unsigned char>(text[(i * 13) % text.size()]);
    ModelWeights g = zeros_like_weights(c);
    TrainActs acts;
    probe.forward_backward(ids.data(), batch, seq_len, g, acts);
    gate_inputs = acts.layers[1].normed2;
  }
  const int64_t n = static_cast<int64_t>(gate_inputs.size()) / H;
  std::vector<double> mean(H, 0.0);
  for (int64_t t = 0; t < n; t++)
    for (int64_t h = 0; h < H; h++) mean[h] += gate_inputs[t * H + h] / n;
  double norm2 = 0.0;
  for (double m : mean) norm2 += m * m;
  Tensor& gate = w.layers[1].moe.gate;
  for (int64_t h = 0; h < H; h++) gate.data[h] += static_cast<float>(8.0 * mean[h] / norm2);

  AdamWState adam = make_adamw_state(c, 0);
  TrainerState state;
  state.data_rng = Rng(seed + 1).snapshot();
  state.noise_rng = Rng(seed + 2).snapshot();
  save_checkpoint(dir.str(), config_json, c, w, adam, state);

  TrainConfig tc;
  tc.data_files = {dir / "data.txt"};
  tc.out_dir = dir.str();
  tc.steps = 30;
  tc.batch_size = batch;
  tc.seq_len = seq_len;
  tc.schedule.max_lr = tc.schedule.min_lr = 0.0f;  // only the bias rule moves anything
  tc.adamw.weight_decay = 0.0f;
  tc.seed = seed;
  tc.resume = true;
  tc.quiet = true;
  train(tc);

  const std::vector<json> lines = read_metrics(dir / "metrics.jsonl");
  ASSERT_EQ(lines.size(), 30u);
  std::vector<float> bias(E, 0.0f);  // the checkpoint's
  std::vector<double> ratio;
  for (const json& line : lines) {
    const std::vector<int64_t> load = line["expert_load"]["1"].get<std::vector<int64_t>>();
    const std::vector<float> next = line["expert_bias"]["1"].get<std::vector<float>>();
    double mean_load = 0.0;
    int64_t max_load = 0;
    for (int64_t l : load)
      mean_load += static_cast<double>(l) / E, max_load = std::max(max_load, l);
    ratio.push_back(max_load / mean_load);
    EXPECT_NEAR(line["load_max_over_mean"].get<double>(), ratio.back(), 1e-9);
    for (int64_t e = 0; e < E; e++) {
      const double gap = mean_load - static_cast<double>(load[e]);
      const float expected = gamma * static_cast<float>((gap > 0) - (gap < 0));
      EXPECT_NEAR(next[e] - bias[e], expected, 1e-6) << "step " << line["step"] << " expert " << e;
    }
    bias = next;
  }
  double late = 0.0;
  for (size_t i = ratio.size() - 10; i < ratio.size(); i++) late += ratio[i] / 10;
  EXPECT_GT(ratio.front(), 2.5) << "the skew must be strong to begin with";
  EXPECT_LT(late, ratio.front() - 1.0) << "the load must become more even";
  EXPECT_LT(bias[0], 0.0f) << "the overloaded expert's bias must fall";

  // Gate weights ignore the bias: the same expert set gives the same weights as without it,
  // each = 2.5 * s_e / sum of the chosen s (V3: normalised, then scaled).
  MoeWeights biased = w.layers[1].moe;
  biased.e_score_correction_bias = Tensor::zeros({E});
  std::copy(bias.begin(), bias.end(), biased.e_score_correction_bias.data);
  Routing with_bias, without_bias;
  route_tokens(c, biased, gate_inputs.data(), n, with_bias);
  route_tokens(c, w.layers[1].moe, gate_inputs.data(), n, without_bias);  // bias 0 (initial)
  ASSERT_EQ(with_bias.scores, without_bias.scores);
  int64_t same = 0, different = 0;
  const int64_t K = c.num_experts_per_tok;
  for (int64_t t = 0; t < n; t++) {
    std::map<int32_t, float> a, b;
    double chosen_sum = 0.0;
    for (int64_t j = 0; j < K; j++) {
      a[with_bias.expert[t * K + j]] = with_bias.weight[t * K + j];
      b[without_bias.expert[t * K + j]] = without_bias.weight[t * K + j];
      chosen_sum += with_bias.scores[t * E + with_bias.expert[t * K + j]];
    }
    for (const auto& [e, weight] : a)
      EXPECT_NEAR(weight, 2.5 * with_bias.scores[t * E + e] / chosen_sum, 1e-5);
    if (a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                           [](auto& p, auto& q) { return p.first == q.first; })) {
      same++;
      EXPECT_EQ(a, b) << "token " << t;
    } else {
      different++;
    }
  }
  EXPECT_GT(same, 0);
  EXPECT_GT(different, 0) << "the learned bias must change some selections";
}

}  // namespace
}  // namespace dsmoe
