// Tests of bf16 mixed-precision training (cpu::MatmulPrecision::kBF16, `dsmoe train --precision
// bf16`): the matrix products take bf16-rounded inputs with float32 sums, everything else stays
// float32. Gradients must stay within bf16's rounding of the float32 ones, the loss curve close
// to the float32 run, and the process-wide setting must be restored after training.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "tiny_models.h"

namespace dsmoe {
namespace {

// Relative L2 distance |a - b| / |b| over every tensor of two weight sets.
double relative_l2(const ModelConfig& c, ModelWeights& a, ModelWeights& b) {
  std::map<std::string, Tensor> ta = by_name(c, a), tb = by_name(c, b);
  double diff = 0.0, norm = 0.0;
  for (const auto& [name, t] : tb)
    for (int64_t i = 0; i < t.numel(); i++) {
      const double d = static_cast<double>(ta[name].data[i]) - t.data[i];
      diff += d * d;
      norm += static_cast<double>(t.data[i]) * t.data[i];
    }
  return std::sqrt(diff / norm);
}

// bf16 keeps 8 significant bits: each product input is off by up to 2^-9 relative, so gradients
// move by about that much (a few 2^-9 through the chain of products), far less than 5%.
TEST(MixedPrecision, GradientsStayWithinBf16Rounding) {
  const ModelConfig c = parse(tiny_v3_json(3, 64));
  Model model(c, test_weights(c, 7));
  const std::vector<int64_t> ids = random_ids(2 * 16, c.vocab_size, 8);
  auto gradients = [&](cpu::MatmulPrecision precision, double* loss) {
    const cpu::MatmulPrecisionScope scope(precision);
    ModelWeights grads = zeros_like_weights(c, 0);
    TrainActs acts;
    *loss = model.forward_backward(ids.data(), 2, 16, grads, acts, TrainOptions{}).loss;
    return grads;
  };
  double loss_f32 = 0, loss_bf16 = 0;
  ModelWeights g_f32 = gradients(cpu::MatmulPrecision::kF32, &loss_f32);
  ModelWeights g_bf16 = gradients(cpu::MatmulPrecision::kBF16, &loss_bf16);
  EXPECT_EQ(cpu::matmul_precision(), cpu::MatmulPrecision::kF32);  // the scope restored it
  EXPECT_NEAR(loss_bf16, loss_f32, 1e-2 * loss_f32);
  const double rel = relative_l2(c, g_bf16, g_f32);
  EXPECT_GT(rel, 0.0) << "bf16 products should differ from float32 somewhere";
  EXPECT_LT(rel, 0.05);
}

// Same seed and data: the bf16 run's loss follows the float32 run. Single steps of a tiny model
// wander apart by a few percent (the trajectories diverge), so the curve is compared in windows
// of 10 steps. The learning rate is 5e-3: at 1e-2 the tiny model is chaotic (with seeds 1-8 the
// worst window of the two runs differs by 0.2% to 8.7%, and a small change of rounding, such as
// float32 exps in the softmax, moved seed 1 from 1.4% to 3.3%); at 5e-3 all stay within 0.7%.
TEST(MixedPrecision, LossCurveFollowsFloat32) {
  TempDir dir;
  write_text(dir / "config.json", tiny_v3_json(2, 256).dump(2));
  std::string text;
  for (int i = 0; i < 120; i++) text += i % 2 ? "the cat sat on the mat. " : "0101 1010 0101. ";
  write_text(dir / "data.txt", text);
  auto run = [&](const std::string& precision) {
    TrainConfig tc;
    tc.model_config = dir / "config.json";
    tc.data_files = {dir / "data.txt"};
    tc.out_dir = dir / precision;
    tc.steps = 30;
    tc.batch_size = 4;
    tc.seq_len = 32;
    tc.schedule.max_lr = 5e-3f;
    tc.schedule.warmup_steps = 2;
    tc.seed = 1;
    tc.quiet = true;
    tc.precision = precision;
    train(tc);
    std::vector<double> losses;
    for (const json& line : read_metrics(tc.out_dir + "/metrics.jsonl"))
      losses.push_back(line["loss"].get<double>());
    return losses;
  };
  const std::vector<double> f32 = run("f32"), bf16 = run("bf16");
  EXPECT_EQ(cpu::matmul_precision(), cpu::MatmulPrecision::kF32);
  ASSERT_EQ(f32.size(), bf16.size());
  EXPECT_LT(f32.back(), 0.5 * f32.front());
  for (size_t begin = 0; begin + 10 <= f32.size(); begin += 10) {
    double mean_f32 = 0, mean_bf16 = 0;
    for (size_t i = begin; i < begin + 10; i++) mean_f32 += f32[i] / 10, mean_bf16 += bf16[i] / 10;
    EXPECT_NEAR(mean_bf16, mean_f32, 0.02 * mean_f32)
        << "steps " << begin + 1 << ".." << begin + 10;
  }
}

std::vector<float> values(const Tensor& t) {
  return std::vector<float>(t.data, t.data + t.numel());
}

// DeepSeek-V3's low-precision training keeps the MoE gating at higher precision: under kBF16 the
// router's products (gate and noise projections, forward and backward) give float32's very bits,
// and the same bits with 1 and 2 threads (bf16 training is identical across thread counts).
TEST(MixedPrecision, RouterProductsStayFloat32) {
  const ModelConfig c = parse(with(tiny_v3_json(), {{"noisy_gating", true}}));
  const ModelWeights w = test_weights(c, 3);
  const MoeWeights& moe = w.layers[1].moe;
  const int64_t n = 300, H = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const std::vector<float> x = random_normal(n * H, 1.0f, 5);
  const std::vector<float> dweight = random_normal(n * K, 1.0f, 6);
  const std::vector<float> dscores = random_normal(n * E, 0.1f, 7);
  struct Result {
    Routing routing;
    ModelWeights grads;
    std::vector<float> dx;
  };
  auto route = [&](cpu::MatmulPrecision precision, int threads) {
    const int default_threads = num_threads();
    set_num_threads(threads);
    const cpu::MatmulPrecisionScope scope(precision);
    Result out;
    Rng rng(9);
    RouterTraining training;
    training.noise_rng = &rng;
    route_tokens(c, moe, x.data(), n, out.routing, &training);
    out.grads = zeros_like_weights(c, 0);
    out.dx.assign(n * H, 0.0f);
    route_backward(c, moe, out.grads.layers[1].moe, x.data(), out.routing, dweight.data(),
                   dscores.data(), out.dx.data(), n);
    set_num_threads(default_threads);
    return out;
  };
  const Result f32 = route(cpu::MatmulPrecision::kF32, 2);
  for (int threads : {1, 2}) {
    SCOPED_TRACE(testing::Message() << threads << " threads");
    const Result bf16 = route(cpu::MatmulPrecision::kBF16, threads);
    EXPECT_EQ(bf16.routing.scores, f32.routing.scores);
    EXPECT_EQ(bf16.routing.noise_pre, f32.routing.noise_pre);
    EXPECT_EQ(bf16.routing.expert, f32.routing.expert);
    EXPECT_EQ(bf16.routing.weight, f32.routing.weight);
    EXPECT_EQ(values(bf16.grads.layers[1].moe.gate), values(f32.grads.layers[1].moe.gate));
    EXPECT_EQ(values(bf16.grads.layers[1].moe.noise_weight),
              values(f32.grads.layers[1].moe.noise_weight));
    EXPECT_EQ(bf16.dx, f32.dx);
  }
  // The same product outside the router does change under kBF16 (so the test can fail).
  std::vector<float> logits_f32(n * E), logits_bf16(n * E);
  cpu::linear_forward(logits_f32.data(), x.data(), moe.gate.data, n, H, E);
  {
    const cpu::MatmulPrecisionScope scope(cpu::MatmulPrecision::kBF16);
    cpu::linear_forward(logits_bf16.data(), x.data(), moe.gate.data, n, H, E);
  }
  EXPECT_NE(logits_bf16, logits_f32);
}

// The router's float32 products: the same bits with 1 and 2 threads, and under either precision,
// at a size where OpenBLAS's own threading splits the work (several tiles each way).
TEST(MixedPrecision, Float32LinearIsThreadCountInvariant) {
  const int64_t K = 512, N = 300;
  for (const int64_t M : {600, 1, 3}) {  // (few rows: narrow column tiles)
    SCOPED_TRACE(testing::Message() << "M " << M);
    const std::vector<float> x = random_normal(M * K, 1.0f, 1), w = random_normal(N * K, 1.0f, 2);
    const std::vector<float> dy = random_normal(M * N, 1.0f, 3);
    const int default_threads = num_threads();
    std::vector<std::vector<float>> runs;
    for (int threads : {1, 2})
      for (cpu::MatmulPrecision precision :
           {cpu::MatmulPrecision::kF32, cpu::MatmulPrecision::kBF16}) {
        set_num_threads(threads);
        const cpu::MatmulPrecisionScope scope(precision);
        std::vector<float> out(M * N), dx(M * K, 0.0f), dw(N * K, 0.0f);
        cpu::linear_forward_f32(out.data(), x.data(), w.data(), M, K, N);
        cpu::linear_backward_f32(dx.data(), dw.data(), dy.data(), x.data(), w.data(), M, K, N);
        out.insert(out.end(), dx.begin(), dx.end());
        out.insert(out.end(), dw.begin(), dw.end());
        runs.push_back(out);
      }
    set_num_threads(default_threads);
    for (size_t i = 1; i < runs.size(); i++) EXPECT_EQ(runs[i], runs[0]) << "run " << i;
    // and float32 products: within float32 rounding of the plain product
    std::vector<float> plain(M * N);
    cpu::linear_forward(plain.data(), x.data(), w.data(), M, K, N);
    for (int64_t i = 0; i < M * N; i++) ASSERT_NEAR(runs[0][i], plain[i], 1e-4f) << i;
  }
}

TEST(MixedPrecision, UnknownPrecisionIsAnError) {
  TrainConfig tc;
  tc.out_dir = "unused";
  tc.precision = "fp8";
  try {
    train(tc);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fp8"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dsmoe
