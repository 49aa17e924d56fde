// test_gguf.cpp: the GGUF writer (io/gguf.h) read back by an independent reader written here
// from the format's specification (header, every metadata type, tensor infos, alignment, data),
// its errors, and `dsmoe export --format gguf` on the V2/V3 fixtures: llama.cpp's deepseek2
// tensor names and shapes, the kv_b_proj split, the stacked experts, the quantized blocks equal
// to dsmoe's own, and the vocabulary.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstring>
#include <map>
#include <variant>

#include "io/gguf.h"
#include "io/safetensors.h"
#include "kernels/quant.h"
#include "tensor/dtype.h"
#include "test_util.h"
#include "util/check.h"

namespace dsmoe {
namespace {

namespace fs = std::filesystem;
const std::string kData = DSMOE_TEST_DATA;
const std::string kCli = DSMOE_CLI;

// ---- A reader, independent of the writer --------------------------------------------------------

using Scalar = std::variant<uint64_t, int64_t, double, bool, std::string>;
struct ReadValue {
  GgufType type = GgufType::kUint8;
  GgufType element_type = GgufType::kUint8;
  Scalar scalar;
  std::vector<Scalar> array;
};
struct ReadTensor {
  GgmlType type;
  std::vector<int64_t> ne;
  uint64_t offset;
};
struct ReadFile {
  uint32_t version = 0;
  std::vector<std::string> key_order;
  std::map<std::string, ReadValue> kv;
  std::vector<std::string> tensor_order;
  std::map<std::string, ReadTensor> tensors;
  size_t data_start = 0;
  std::string bytes;

  const char* data(const std::string& name) const {
    return bytes.data() + data_start + tensors.at(name).offset;
  }
  std::string str(const std::string& key) const { return std::get<std::string>(kv.at(key).scalar); }
  uint64_t u(const std::string& key) const { return std::get<uint64_t>(kv.at(key).scalar); }
  double f(const std::string& key) const { return std::get<double>(kv.at(key).scalar); }
};

class Cursor {
 public:
  explicit Cursor(const std::string& bytes) : bytes_(bytes) {}
  template <typename T>
  T pod() {
    if (pos_ + sizeof(T) > bytes_.size()) throw std::runtime_error("truncated GGUF");
    T value;
    std::memcpy(&value, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }
  std::string string() {
    const uint64_t n = pod<uint64_t>();
    if (pos_ + n > bytes_.size()) throw std::runtime_error("truncated GGUF string");
    std::string s = bytes_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  Scalar scalar(GgufType type) {
    switch (type) {
      case GgufType::kUint8:
        return uint64_t{pod<uint8_t>()};
      case GgufType::kUint16:
        return uint64_t{pod<uint16_t>()};
      case GgufType::kUint32:
        return uint64_t{pod<uint32_t>()};
      case GgufType::kUint64:
        return pod<uint64_t>();
      case GgufType::kInt8:
        return int64_t{pod<int8_t>()};
      case GgufType::kInt16:
        return int64_t{pod<int16_t>()};
      case GgufType::kInt32:
        return int64_t{pod<int32_t>()};
      case GgufType::kInt64:
        return pod<int64_t>();
      case GgufType::kFloat32:
        return double{pod<float>()};
      case GgufType::kFloat64:
        return pod<double>();
      case GgufType::kBool: {
        const uint8_t b = pod<uint8_t>();
        if (b > 1) throw std::runtime_error("bool byte not 0/1");
        return b == 1;
      }
      case GgufType::kString:
        return string();
      case GgufType::kArray:
        break;
    }
    throw std::runtime_error("bad scalar type");
  }
  size_t pos() const { return pos_; }

 private:
  const std::string& bytes_;
  size_t pos_ = 0;
};

ReadFile read_gguf(const std::string& path) {
  ReadFile file;
  file.bytes = read_bytes(path);
  Cursor in(file.bytes);
  EXPECT_EQ(in.pod<uint32_t>(), kGgufMagic);
  file.version = in.pod<uint32_t>();
  const uint64_t n_tensors = in.pod<uint64_t>(), n_kv = in.pod<uint64_t>();
  for (uint64_t i = 0; i < n_kv; i++) {
    const std::string key = in.string();
    ReadValue value;
    value.type = static_cast<GgufType>(in.pod<uint32_t>());
    if (value.type == GgufType::kArray) {
      value.element_type = static_cast<GgufType>(in.pod<uint32_t>());
      const uint64_t n = in.pod<uint64_t>();
      for (uint64_t j = 0; j < n; j++) value.array.push_back(in.scalar(value.element_type));
    } else {
      value.scalar = in.scalar(value.type);
    }
    EXPECT_EQ(file.kv.count(key), 0u) << key;
    file.key_order.push_back(key);
    file.kv[key] = value;
  }
  for (uint64_t i = 0; i < n_tensors; i++) {
    const std::string name = in.string();
    ReadTensor t;
    const uint32_t n_dims = in.pod<uint32_t>();
    for (uint32_t d = 0; d < n_dims; d++) t.ne.push_back(static_cast<int64_t>(in.pod<uint64_t>()));
    t.type = static_cast<GgmlType>(in.pod<uint32_t>());
    t.offset = in.pod<uint64_t>();
    file.tensor_order.push_back(name);
    file.tensors[name] = t;
  }
  uint64_t alignment = kGgufDefaultAlignment;
  if (file.kv.count("general.alignment")) alignment = file.u("general.alignment");
  file.data_start = (in.pos() + alignment - 1) / alignment * alignment;
  for (const auto& [name, t] : file.tensors) {
    EXPECT_EQ(t.offset % alignment, 0u) << name;
    size_t nbytes = ggml_row_size(t.type, t.ne[0]);
    for (size_t d = 1; d < t.ne.size(); d++) nbytes *= t.ne[d];
    EXPECT_LE(file.data_start + t.offset + nbytes, file.bytes.size()) << name;
  }
  return file;
}

// ---- The writer -------------------------------------------------------------------------------

TEST(GgufWriter, EveryMetadataTypeAndTensorReadsBack) {
  TempDir dir;
  const std::string path = dir / "all.gguf";
  std::vector<float> f32_data(3 * 5);
  for (size_t i = 0; i < f32_data.size(); i++) f32_data[i] = 0.25f * static_cast<float>(i) - 1.0f;
  std::vector<uint8_t> q8_data(2 * 2 * sizeof(BlockQ8_0)), q4_data(7 * sizeof(BlockQ4_0));
  for (size_t i = 0; i < q8_data.size(); i++) q8_data[i] = static_cast<uint8_t>(i * 7 + 1);
  for (size_t i = 0; i < q4_data.size(); i++) q4_data[i] = static_cast<uint8_t>(i * 13 + 5);
  std::vector<uint16_t> bf16_data(2 * 3 * 4 * 5);
  for (size_t i = 0; i < bf16_data.size(); i++) bf16_data[i] = f32_to_bf16(static_cast<float>(i));
  {
    GgufWriter w(path);
    w.add_kv("t.u8", GgufValue::u8(250));
    w.add_kv("t.i8", GgufValue::i8(-120));
    w.add_kv("t.u16", GgufValue::u16(65000));
    w.add_kv("t.i16", GgufValue::i16(-32000));
    w.add_kv("t.u32", GgufValue::u32(4000000000u));
    w.add_kv("t.i32", GgufValue::i32(-2000000000));
    w.add_kv("t.f32", GgufValue::f32(0.1f));
    w.add_kv("t.bool", GgufValue::boolean(true));
    w.add_kv("t.string", GgufValue::string("h\xc3\xa9llo"));
    w.add_kv("t.empty", GgufValue::string(""));
    w.add_kv("t.u64", GgufValue::u64(1ull << 60));
    w.add_kv("t.i64", GgufValue::i64(-(1ll << 60)));
    w.add_kv("t.f64", GgufValue::f64(0.1));
    w.add_kv("t.strings", GgufValue::strings({"a", "", "b c"}));
    w.add_kv("t.i32s", GgufValue::i32s({1, -2, 3}));
    w.add_kv("t.u32s", GgufValue::u32s({7}));
    w.add_kv("t.f32s", GgufValue::f32s({}));
    w.add_tensor("vec", GgmlType::kF32, {15});
    w.add_tensor("mat.q8", GgmlType::kQ8_0, {64, 2});
    w.add_tensor("q4", GgmlType::kQ4_0, {224});
    w.add_tensor("cube.bf16", GgmlType::kBF16, {5, 4, 3, 2});
    EXPECT_EQ(w.tensor_bytes("mat.q8"), q8_data.size());
    w.write_tensor("vec", f32_data.data(), f32_data.size() * 4);
    w.write_tensor("mat.q8", q8_data.data(), q8_data.size());
    w.write_tensor("q4", q4_data.data(), q4_data.size());
    w.write_tensor("cube.bf16", bf16_data.data(), bf16_data.size() * 2);
    w.finish();
  }
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  const ReadFile file = read_gguf(path);
  EXPECT_EQ(file.version, 3u);
  EXPECT_EQ(file.key_order.size(), 17u);  // default alignment: no general.alignment
  EXPECT_EQ(file.kv.at("t.u8").type, GgufType::kUint8);
  EXPECT_EQ(file.u("t.u8"), 250u);
  EXPECT_EQ(std::get<int64_t>(file.kv.at("t.i8").scalar), -120);
  EXPECT_EQ(file.u("t.u16"), 65000u);
  EXPECT_EQ(std::get<int64_t>(file.kv.at("t.i16").scalar), -32000);
  EXPECT_EQ(file.kv.at("t.u32").type, GgufType::kUint32);
  EXPECT_EQ(file.u("t.u32"), 4000000000u);
  EXPECT_EQ(std::get<int64_t>(file.kv.at("t.i32").scalar), -2000000000);
  EXPECT_EQ(file.f("t.f32"), static_cast<double>(0.1f));
  EXPECT_EQ(std::get<bool>(file.kv.at("t.bool").scalar), true);
  EXPECT_EQ(file.str("t.string"), "h\xc3\xa9llo");
  EXPECT_EQ(file.str("t.empty"), "");
  EXPECT_EQ(file.u("t.u64"), 1ull << 60);
  EXPECT_EQ(std::get<int64_t>(file.kv.at("t.i64").scalar), -(1ll << 60));
  EXPECT_EQ(file.kv.at("t.f64").type, GgufType::kFloat64);
  EXPECT_EQ(file.f("t.f64"), 0.1);
  const ReadValue& strings = file.kv.at("t.strings");
  ASSERT_EQ(strings.type, GgufType::kArray);
  EXPECT_EQ(strings.element_type, GgufType::kString);
  ASSERT_EQ(strings.array.size(), 3u);
  EXPECT_EQ(std::get<std::string>(strings.array[2]), "b c");
  EXPECT_EQ(file.kv.at("t.i32s").element_type, GgufType::kInt32);
  EXPECT_EQ(std::get<int64_t>(file.kv.at("t.i32s").array[1]), -2);
  EXPECT_EQ(std::get<uint64_t>(file.kv.at("t.u32s").array[0]), 7u);
  EXPECT_EQ(file.kv.at("t.f32s").element_type, GgufType::kFloat32);
  EXPECT_TRUE(file.kv.at("t.f32s").array.empty());

  EXPECT_EQ(file.tensor_order, (std::vector<std::string>{"vec", "mat.q8", "q4", "cube.bf16"}));
  EXPECT_EQ(file.data_start % 32, 0u);
  EXPECT_EQ(file.tensors.at("vec").offset, 0u);
  EXPECT_EQ(file.tensors.at("mat.q8").offset, 64u);    // 60 bytes, padded to 64
  EXPECT_EQ(file.tensors.at("q4").offset, 64u + 160);  // 136 bytes, padded to 160
  EXPECT_EQ(file.tensors.at("cube.bf16").offset, 64u + 160 + 128);
  EXPECT_EQ(file.tensors.at("cube.bf16").ne, (std::vector<int64_t>{5, 4, 3, 2}));
  EXPECT_EQ(file.tensors.at("q4").type, GgmlType::kQ4_0);
  EXPECT_EQ(std::memcmp(file.data("vec"), f32_data.data(), f32_data.size() * 4), 0);
  EXPECT_EQ(std::memcmp(file.data("mat.q8"), q8_data.data(), q8_data.size()), 0);
  EXPECT_EQ(std::memcmp(file.data("q4"), q4_data.data(), q4_data.size()), 0);
  EXPECT_EQ(std::memcmp(file.data("cube.bf16"), bf16_data.data(), bf16_data.size() * 2), 0);
  EXPECT_EQ(file.bytes.size(), file.data_start + 64 + 160 + 128 + 256);  // the last one padded too
}

TEST(GgufWriter, OtherAlignmentIsRecordedAndKept) {
  TempDir dir;
  const std::string path = dir / "a64.gguf";
  const float one = 1.0f;
  {
    GgufWriter w(path, 64);
    w.add_tensor("a", GgmlType::kF32, {1});
    w.add_tensor("b", GgmlType::kF32, {1});
    w.write_tensor("a", &one, 4);
    w.write_tensor("b", &one, 4);
    w.finish();
  }
  const ReadFile file = read_gguf(path);
  EXPECT_EQ(file.u("general.alignment"), 64u);
  EXPECT_EQ(file.data_start % 64, 0u);
  EXPECT_EQ(file.tensors.at("b").offset, 64u);
}

// The message of the Error that `body` throws.
template <typename Body>
std::string error_of(Body body) {
  try {
    body();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(GgufWriter, MistakesAreErrorsNamingTheKeyOrTensor) {
  TempDir dir;
  const std::string path = dir / "bad.gguf";
  const std::vector<float> data(64, 0.0f);
  EXPECT_NE(error_of([&] {
              GgufWriter w(path);
              w.add_kv("k", GgufValue::u32(1));
              w.add_kv("k", GgufValue::u32(2));
            }).find("metadata key 'k' added twice"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              GgufWriter w(path);
              w.add_tensor("t", GgmlType::kF32, {4});
              w.add_tensor("t", GgmlType::kF32, {4});
            }).find("tensor 't' added twice"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              GgufWriter w(path);
              w.add_tensor("blk.0.odd", GgmlType::kQ8_0, {48, 2});
            }).find("tensor 'blk.0.odd': its first dimension 48 is not a multiple of q8_0's"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              GgufWriter w(path);
              w.add_tensor(std::string(64, 'x'), GgmlType::kF32, {4});
            }).find("must have 1 to 63 characters"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              GgufWriter w(path);
              w.add_tensor("five", GgmlType::kF32, {1, 1, 1, 1, 1});
            }).find("tensor 'five' has 5 dimensions"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              GgufWriter w(path);
              w.add_tensor("w", GgmlType::kF32, {4, 2});
              w.write_tensor("w", data.data(), 4 * 4);
            }).find("tensor 'w' (f32 [4, 2]) needs 32 bytes of data, got 16"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              GgufWriter w(path);
              w.add_tensor("first", GgmlType::kF32, {4});
              w.add_tensor("second", GgmlType::kF32, {4});
              w.write_tensor("second", data.data(), 16);
            }).find("expected the data of tensor 'first' next, got 'second'"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              GgufWriter w(path);
              w.add_tensor("late", GgmlType::kF32, {4});
              w.write_tensor("late", data.data(), 16);
              w.add_kv("after", GgufValue::u32(1));
            }).find("metadata key 'after' added after the header"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              GgufWriter w(path);
              w.add_tensor("missing", GgmlType::kF32, {4});
              w.finish();
            }).find("finished before the data of tensor 'missing'"),
            std::string::npos);
  // Nothing half-written is left behind.
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

// ---- dsmoe export
// --------------------------------------------------------------------------------

int run_cli(const std::string& args, std::string* output = nullptr) {
  FILE* pipe = popen((kCli + " " + args + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  std::array<char, 4096> buffer;
  std::string text;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) text.append(buffer.data(), n);
  const int status = pclose(pipe);
  if (output != nullptr) *output = text;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

ReadFile export_model(const TempDir& dir, const std::string& model, const std::string& type) {
  const std::string out = dir / (type + ".gguf");
  std::string log;
  EXPECT_EQ(
      run_cli(fmt::format("export --format gguf --model {} --out {} --type {}", model, out, type),
              &log),
      0)
      << log;
  return read_gguf(out);
}

std::vector<float> as_floats(const char* bytes, size_t n) {
  std::vector<float> v(n);
  std::memcpy(v.data(), bytes, n * sizeof(float));
  return v;
}

TEST(GgufExport, V3LayoutMatchesLlamaCppDeepseek2) {
  TempDir dir;
  const std::string model = kData + "/v3-tiny/model";
  const ReadFile file = export_model(dir, model, "f32");
  EXPECT_EQ(file.str("general.architecture"), "deepseek2");
  EXPECT_EQ(file.u("general.file_type"), 0u);
  EXPECT_EQ(file.u("deepseek2.block_count"), 3u);
  EXPECT_EQ(file.u("deepseek2.embedding_length"), 64u);
  EXPECT_EQ(file.u("deepseek2.leading_dense_block_count"), 1u);
  EXPECT_EQ(file.u("deepseek2.attention.head_count_kv"), 1u);
  EXPECT_EQ(file.u("deepseek2.attention.q_lora_rank"), 32u);
  EXPECT_EQ(file.u("deepseek2.attention.key_length"), 32u + 8);
  EXPECT_EQ(file.u("deepseek2.attention.value_length"), 32u);
  EXPECT_EQ(file.u("deepseek2.attention.key_length_mla"), 24u);
  EXPECT_EQ(file.u("deepseek2.attention.value_length_mla"), 16u);
  EXPECT_EQ(file.u("deepseek2.rope.dimension_count"), 8u);
  EXPECT_EQ(file.u("deepseek2.expert_gating_func"), 2u);  // sigmoid
  EXPECT_EQ(file.u("deepseek2.expert_group_count"), 4u);
  EXPECT_EQ(file.u("deepseek2.expert_group_used_count"), 2u);
  EXPECT_EQ(std::get<bool>(file.kv.at("deepseek2.expert_weights_norm").scalar), true);
  EXPECT_FLOAT_EQ(file.f("deepseek2.expert_weights_scale"), 2.5);
  EXPECT_EQ(file.kv.at("deepseek2.expert_weights_scale").type, GgufType::kFloat32);
  EXPECT_EQ(file.kv.at("deepseek2.attention.layer_norm_rms_epsilon").type, GgufType::kFloat32);
  // Layer 0 dense, layers 1-2 MoE; the MTP module (layer 3) is not exported.
  EXPECT_TRUE(file.tensors.count("blk.0.ffn_gate.weight"));
  EXPECT_FALSE(file.tensors.count("blk.0.ffn_gate_inp.weight"));
  EXPECT_FALSE(file.tensors.count("blk.3.attn_norm.weight"));
  EXPECT_EQ(file.tensors.at("token_embd.weight").ne, (std::vector<int64_t>{64, 512}));
  EXPECT_EQ(file.tensors.at("output.weight").ne, (std::vector<int64_t>{64, 512}));
  EXPECT_EQ(file.tensors.at("blk.1.attn_q_a.weight").ne, (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(file.tensors.at("blk.1.attn_q_b.weight").ne, (std::vector<int64_t>{32, 4 * 24}));
  EXPECT_EQ(file.tensors.at("blk.1.attn_kv_a_mqa.weight").ne, (std::vector<int64_t>{64, 40}));
  EXPECT_EQ(file.tensors.at("blk.1.attn_k_b.weight").ne, (std::vector<int64_t>{16, 32, 4}));
  EXPECT_EQ(file.tensors.at("blk.1.attn_v_b.weight").ne, (std::vector<int64_t>{32, 16, 4}));
  EXPECT_EQ(file.tensors.at("blk.1.ffn_gate_exps.weight").ne, (std::vector<int64_t>{64, 32, 16}));
  EXPECT_EQ(file.tensors.at("blk.1.ffn_down_exps.weight").ne, (std::vector<int64_t>{32, 64, 16}));
  EXPECT_EQ(file.tensors.at("blk.1.ffn_up_shexp.weight").ne, (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(file.tensors.at("blk.1.exp_probs_b.bias").ne, (std::vector<int64_t>{16}));
  EXPECT_EQ(file.tensors.at("blk.2.ffn_gate_inp.weight").ne, (std::vector<int64_t>{64, 16}));

  // Values: kv_b_proj split per head (W_UK transposed, W_UV as is), experts stacked.
  const Checkpoint checkpoint(model);
  const int64_t nope = 16, dv = 16, rank = 32, heads = 4;
  const Tensor kv_b =
      checkpoint.load_f32("model.layers.2.self_attn.kv_b_proj.weight", {heads * (nope + dv), rank});
  const std::vector<float> k_b = as_floats(file.data("blk.2.attn_k_b.weight"), heads * rank * nope);
  const std::vector<float> v_b = as_floats(file.data("blk.2.attn_v_b.weight"), heads * dv * rank);
  for (int64_t h = 0; h < heads; h++)
    for (int64_t r = 0; r < rank; r++) {
      for (int64_t i = 0; i < nope; i++)
        ASSERT_EQ(k_b[(h * rank + r) * nope + i], kv_b.data[(h * (nope + dv) + i) * rank + r]);
      for (int64_t j = 0; j < dv; j++)
        ASSERT_EQ(v_b[(h * dv + j) * rank + r], kv_b.data[(h * (nope + dv) + nope + j) * rank + r]);
    }
  const Tensor expert5 =
      checkpoint.load_f32("model.layers.1.mlp.experts.5.down_proj.weight", {64, 32});
  const std::vector<float> down = as_floats(file.data("blk.1.ffn_down_exps.weight"), 16 * 64 * 32);
  for (int64_t i = 0; i < 64 * 32; i++) ASSERT_EQ(down[5 * 64 * 32 + i], expert5.data[i]);
  const Tensor bias = checkpoint.load_f32("model.layers.1.mlp.gate.e_score_correction_bias", {16});
  EXPECT_EQ(as_floats(file.data("blk.1.exp_probs_b.bias"), 16),
            std::vector<float>(bias.data, bias.data + 16));
}

TEST(GgufExport, QuantizedBlocksAreDsmoesOwn) {
  TempDir dir;
  const std::string model = kData + "/v3-tiny/model";
  const Checkpoint checkpoint(model);
  for (const char* type : {"q8_0", "q4_0", "bf16"}) {
    SCOPED_TRACE(type);
    const WeightFormat format = *parse_weight_format(type);
    const ReadFile file = export_model(dir, model, type);
    // A linear weight whose rows fit the blocks: the bytes dsmoe --weights TYPE holds.
    const ReadTensor& t = file.tensors.at("blk.1.attn_kv_a_mqa.weight");
    EXPECT_EQ(t.type, static_cast<GgmlType>(format == WeightFormat::kBF16   ? 30
                                            : format == WeightFormat::kQ8_0 ? 8
                                                                            : 2));
    const Tensor w =
        checkpoint.load_f32("model.layers.1.self_attn.kv_a_proj_with_mqa.weight", {40, 64});
    const QuantMatrix m = quantize_matrix(w.data, 40, 64, format, /*panels=*/false);
    std::vector<uint8_t> expected(m.size_bytes());
    for (int64_t r = 0; r < 40; r++) {
      uint8_t* out = expected.data() + r * m.row_bytes;
      if (format == WeightFormat::kBF16)
        std::memcpy(out, m.row(r), m.row_bytes);
      else
        join_blocks(format, m.row(r), 64 / kQuantBlock, out);
    }
    EXPECT_EQ(
        std::memcmp(file.data("blk.1.attn_kv_a_mqa.weight"), expected.data(), expected.size()), 0);
    // Kept float32 as dsmoe keeps them: the router, norms, and the embedding of a float32
    // checkpoint; the absorbed halves do not fit 32-blocks here (qk_nope_head_dim 16).
    EXPECT_EQ(file.tensors.at("blk.1.ffn_gate_inp.weight").type, GgmlType::kF32);
    EXPECT_EQ(file.tensors.at("blk.1.attn_norm.weight").type, GgmlType::kF32);
    EXPECT_EQ(file.tensors.at("token_embd.weight").type, GgmlType::kF32);
    EXPECT_EQ(file.tensors.at("blk.1.attn_k_b.weight").type,
              format == WeightFormat::kBF16 ? GgmlType::kBF16 : GgmlType::kF32);
    // The experts' down_proj rows (32 wide) are blocks; their gate/up rows (64 wide) too.
    EXPECT_EQ(file.tensors.at("blk.1.ffn_down_exps.weight").type, t.type);
  }
}

TEST(GgufExport, V2SyntheticVocabularyAndRouting) {
  TempDir dir;
  const ReadFile file = export_model(dir, kData + "/v2-tiny/model", "f32");
  EXPECT_EQ(file.u("deepseek2.attention.q_lora_rank"), 0u);
  EXPECT_TRUE(file.tensors.count("blk.1.attn_q.weight"));
  EXPECT_FALSE(file.tensors.count("blk.1.attn_q_a.weight"));
  EXPECT_FALSE(file.tensors.count("blk.1.exp_probs_b.bias"));
  EXPECT_EQ(file.u("deepseek2.expert_gating_func"), 1u);  // softmax
  EXPECT_FALSE(file.kv.count("deepseek2.expert_weights_norm"));
  EXPECT_FLOAT_EQ(file.f("deepseek2.expert_weights_scale"), 1.0);
  EXPECT_EQ(file.str("tokenizer.ggml.model"), "gpt2");
  const ReadValue& tokens = file.kv.at("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.array.size(), 512u);
  EXPECT_EQ(std::get<std::string>(tokens.array['a']), "a");
  EXPECT_EQ(std::get<std::string>(tokens.array['\n']), "\xc4\x8a");  // GPT-2's "Ċ"
  EXPECT_EQ(std::get<std::string>(tokens.array[' ']), "\xc4\xa0");   // "Ġ"
  EXPECT_EQ(std::get<std::string>(tokens.array[300]), "<t300>");
  const ReadValue& types = file.kv.at("tokenizer.ggml.token_type");
  EXPECT_EQ(types.element_type, GgufType::kInt32);
  EXPECT_EQ(std::get<int64_t>(types.array[1]), 3);  // bos: control
  EXPECT_EQ(std::get<int64_t>(types.array[300]), 1);
  EXPECT_TRUE(file.kv.at("tokenizer.ggml.merges").array.empty());
  EXPECT_EQ(file.u("tokenizer.ggml.bos_token_id"), 1u);
  EXPECT_EQ(file.u("tokenizer.ggml.eos_token_id"), 2u);
}

TEST(GgufExport, TokenizerJsonVocabulary) {
  TempDir dir;
  const std::string model = dir / "model";
  fs::create_directories(model);
  for (const char* name : {"config.json", "model.safetensors"})
    fs::copy_file(kData + "/v3-tiny/model/" + name, model + "/" + name);
  write_text(model + "/tokenizer.json", R"({
    "model": {"type": "BPE", "vocab": {"a": 2, "b": 3, "ab": 4, "\u0120a": 5},
              "merges": ["a b", ["\u0120", "a"]]},
    "added_tokens": [{"id": 0, "content": "<bos>", "special": true},
                     {"id": 6, "content": "<user>", "special": false}]})");
  write_text(model + "/tokenizer_config.json", R"({"add_bos_token": true})");
  const ReadFile file = export_model(dir, model, "f32");
  const ReadValue& tokens = file.kv.at("tokenizer.ggml.tokens");
  const ReadValue& types = file.kv.at("tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.array.size(), 512u);
  EXPECT_EQ(std::get<std::string>(tokens.array[0]), "<bos>");
  EXPECT_EQ(std::get<std::string>(tokens.array[4]), "ab");
  EXPECT_EQ(std::get<std::string>(tokens.array[5]),
            "\xc4\xa0"
            "a");
  EXPECT_EQ(std::get<std::string>(tokens.array[7]), "[PAD7]");
  EXPECT_EQ(std::get<int64_t>(types.array[0]), 3);  // special: control
  EXPECT_EQ(std::get<int64_t>(types.array[1]), 3);  // config eos: control
  EXPECT_EQ(std::get<int64_t>(types.array[2]), 1);
  EXPECT_EQ(std::get<int64_t>(types.array[6]), 4);  // added, not special: user-defined
  EXPECT_EQ(std::get<int64_t>(types.array[7]), 5);  // unused
  const ReadValue& merges = file.kv.at("tokenizer.ggml.merges");
  ASSERT_EQ(merges.array.size(), 2u);
  EXPECT_EQ(std::get<std::string>(merges.array[1]), "\xc4\xa0 a");
  EXPECT_EQ(file.str("tokenizer.ggml.pre"), "deepseek-v3");
  EXPECT_EQ(std::get<bool>(file.kv.at("tokenizer.ggml.add_bos_token").scalar), true);

  write_text(model + "/tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"far": 9999}}})");
  std::string log;
  EXPECT_EQ(run_cli(fmt::format("export --model {} --out {}", model, dir / "x.gguf"), &log), 1);
  EXPECT_NE(log.find("tokenizer.json: token 'far' has id 9999, outside the model's vocabulary"),
            std::string::npos)
      << log;
}

TEST(GgufExport, RefusesWhatDeepseek2CannotHold) {
  TempDir dir;
  std::string log;
  EXPECT_EQ(
      run_cli(fmt::format("export --model {} --out {}", kData + "/v1-tiny/model", dir / "v1.gguf"),
              &log),
      1);
  EXPECT_NE(log.find("V1 is llama.cpp's 'deepseek' architecture"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(dir / "v1.gguf"));
  EXPECT_EQ(run_cli(fmt::format("export --model {} --out {} --type q5_k", kData + "/v3-tiny/model",
                                dir / "x.gguf"),
                    &log),
            1);
  EXPECT_NE(log.find("--type must be f32, bf16, q8_0 or q4_0, got 'q5_k'"), std::string::npos);
}

}  // namespace
}  // namespace dsmoe
