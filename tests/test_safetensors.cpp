// Tests for io/safetensors: writer -> reader round trips, Checkpoint layouts, load_f32
// conversions (incl. FP8 block dequantization), and one clear error per kind of bad file.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <map>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "tensor/dtype.h"
#include "util/check.h"

namespace dsmoe {
namespace {

namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            fmt::format("dsmoe_test_safetensors_{}_{}", ::getpid(), counter++);
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// A hand-made safetensors file: 8-byte little-endian length (the header's own unless given),
// the header text, then `data_size` bytes of data.
void write_raw(const std::string& path, const std::string& header, size_t data_size,
               int64_t declared_len = -1) {
  uint64_t len = declared_len >= 0 ? static_cast<uint64_t>(declared_len) : header.size();
  std::string bytes;
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>(len >> (8 * i)));
  bytes += header;
  bytes.append(data_size, '\0');
  write_bytes(path, bytes);
}

// Runs fn, which must throw a dsmoe::Error whose message contains every part.
template <typename Fn>
void expect_error(Fn fn, std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const std::string& part : parts)
      EXPECT_NE(message.find(part), std::string::npos)
          << "message: " << message << "\nlacks: " << part;
    return;
  }
  ADD_FAILURE() << "no dsmoe::Error thrown; expected one containing " << *parts.begin();
}

void expect_file_error(const std::string& path, std::initializer_list<std::string> parts) {
  expect_error([&] { SafetensorsFile file(path); }, parts);
}

std::vector<uint8_t> bytes_of(const TensorInfo& info) {
  return std::vector<uint8_t>(info.data, info.data + info.nbytes);
}

class SafetensorsTest : public ::testing::Test {
 protected:
  TempDir tmp_;
};

// ---- writer -> reader ----

TEST_F(SafetensorsTest, RoundTripsEveryDtypeAndMetadata) {
  const std::vector<float> f32 = {1, 2, 3, 4, 5, 6.5f};
  std::vector<uint16_t> bf16, f16;
  for (float v : {1.0f, -2.0f, 0.5f, 3.0f}) bf16.push_back(f32_to_bf16(v));
  for (float v : {0.25f, -8.0f, 65504.0f, 0.0f}) f16.push_back(f32_to_f16(v));
  const std::vector<int64_t> i64 = {-1, 0, int64_t{1} << 40};

  SafetensorsWriter writer;
  writer.add_f32("a.f32", {2, 3}, f32.data());
  writer.add("b.bf16", DType::kBF16, {4}, bf16.data());
  writer.add("c.f16", DType::kF16, {2, 2}, f16.data());
  writer.add_i64("d.i64", {3}, i64.data());
  writer.add_f32("e.empty", {0, 5}, nullptr);
  writer.set_metadata("format", "pt");
  writer.set_metadata("note", "round trip");
  const std::string path = tmp_.file("rt.safetensors");
  writer.write(path);
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  SafetensorsFile file(path);
  EXPECT_EQ(file.path(), path);
  ASSERT_EQ(file.tensors().size(), 5u);
  EXPECT_EQ(file.metadata(),
            (std::map<std::string, std::string>{{"format", "pt"}, {"note", "round trip"}}));
  // tensors() is in data-offset order; the empty tensor sits at the end of the data.
  EXPECT_EQ(file.tensors().front().name, "a.f32");
  EXPECT_EQ(file.tensors().back().name, "e.empty");

  const TensorInfo* a = file.find("a.f32");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, DType::kF32);
  EXPECT_EQ(a->shape, (Shape{2, 3}));
  EXPECT_EQ(a->nbytes, 24u);
  EXPECT_EQ(a->file, path);
  EXPECT_EQ(std::memcmp(a->data, f32.data(), 24), 0);
  // The header is padded so that the data section starts 8-byte aligned.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a->data) % 8, 0u);

  const TensorInfo* b = file.find("b.bf16");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, DType::kBF16);
  EXPECT_EQ(bytes_of(*b).size(), 8u);
  EXPECT_EQ(std::memcmp(b->data, bf16.data(), 8), 0);

  const TensorInfo* c = file.find("c.f16");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->dtype, DType::kF16);
  EXPECT_EQ(c->shape, (Shape{2, 2}));
  EXPECT_EQ(std::memcmp(c->data, f16.data(), 8), 0);

  const TensorInfo* d = file.find("d.i64");
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(read_i64(*d), i64);

  const TensorInfo* e = file.find("e.empty");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->shape, (Shape{0, 5}));
  EXPECT_EQ(e->nbytes, 0u);
  EXPECT_EQ(file.find("nope"), nullptr);
}

TEST_F(SafetensorsTest, ReadI64HandlesI32AndUnalignedI64) {
  const uint8_t pad = 7;
  const std::vector<int32_t> i32 = {-5, 6};
  const std::vector<int64_t> i64 = {-(int64_t{1} << 50), 42};
  SafetensorsWriter writer;
  writer.add("pad", DType::kU8, {1}, &pad);  // pushes the next tensors off alignment
  writer.add("i64", DType::kI64, {2}, i64.data());
  writer.add("i32", DType::kI32, {2}, i32.data());
  writer.add_f32("f", {1}, std::vector<float>{1.0f}.data());
  const std::string path = tmp_.file("ints.safetensors");
  writer.write(path);

  SafetensorsFile file(path);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(file.find("i64")->data) % 8, 1u);
  EXPECT_EQ(read_i64(*file.find("i64")), i64);
  EXPECT_EQ(read_i64(*file.find("i32")), (std::vector<int64_t>{-5, 6}));
  expect_error([&] { read_i64(*file.find("f")); }, {path, "'f'", "F32"});
}

TEST_F(SafetensorsTest, WriterRejectsDuplicateNames) {
  SafetensorsWriter writer;
  float x = 1;
  writer.add_f32("x", {1}, &x);
  expect_error([&] { writer.add_f32("x", {1}, &x); }, {"'x'", "twice"});
}

TEST_F(SafetensorsTest, EmptyDataSectionOpens) {
  const std::string path = tmp_.file("empty.safetensors");
  write_raw(path, "{}", 0);
  SafetensorsFile file(path);
  EXPECT_TRUE(file.tensors().empty());

  SafetensorsWriter writer;
  writer.add_f32("nothing", {0}, nullptr);
  writer.write(path);  // overwrites atomically
  SafetensorsFile again(path);
  ASSERT_EQ(again.tensors().size(), 1u);
  EXPECT_EQ(again.tensors()[0].nbytes, 0u);
}

TEST_F(SafetensorsTest, WriteFileAtomic) {
  const std::string path = tmp_.file("note.txt");
  write_file_atomic(path, "first");
  write_file_atomic(path, "second\n");
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "second\n");
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

// ---- malformed files ----

TEST_F(SafetensorsTest, RejectsTruncatedFile) {
  const std::string path = tmp_.file("cut.safetensors");
  SafetensorsWriter writer;
  writer.add_f32("w", {4}, std::vector<float>{1, 2, 3, 4}.data());
  writer.write(path);
  fs::resize_file(path, fs::file_size(path) - 3);
  expect_file_error(path, {path, "'w'", "data_offsets [0, 16]", "outside the data section (13"});

  write_bytes(path, "12345");
  expect_file_error(path, {path, "file is 5 bytes, too short for the 8-byte header length"});
}

TEST_F(SafetensorsTest, RejectsHeaderLongerThanFile) {
  const std::string path = tmp_.file("long.safetensors");
  write_raw(path, "{}", 0, 1000);
  expect_file_error(path, {path, "header length 1000 exceeds file size 10"});
}

TEST_F(SafetensorsTest, RejectsInvalidJson) {
  const std::string path = tmp_.file("json.safetensors");
  write_raw(path, R"({"x": {"dtype": )", 0);
  expect_file_error(path, {path, "header is not valid JSON"});
  write_raw(path, "[1, 2]", 0);
  expect_file_error(path, {path, "not a JSON object"});
}

TEST_F(SafetensorsTest, RejectsUnknownDtype) {
  const std::string path = tmp_.file("dtype.safetensors");
  write_raw(path, R"({"x": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}})", 4);
  expect_file_error(path, {path, "tensor 'x': unknown dtype 'Q9'"});
}

TEST_F(SafetensorsTest, RejectsOffsetsBeyondData) {
  const std::string path = tmp_.file("lie.safetensors");
  write_raw(path, R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 4);
  expect_file_error(path,
                    {path, "tensor 'x': data_offsets [0, 8] outside the data section (4 bytes)"});
  write_raw(path, R"({"x": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", 8);
  expect_file_error(path, {path, "tensor 'x': data_offsets [8, 4]"});
}

TEST_F(SafetensorsTest, RejectsShapeThatDisagreesWithSpan) {
  const std::string path = tmp_.file("span.safetensors");
  write_raw(path, R"({"x": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", 24);
  expect_file_error(path, {path,
                           "tensor 'x': shape [2, 3] x F32 (4 bytes) = 24 bytes but "
                           "data_offsets span 20"});
  // A shape whose byte count overflows 64 bits must not wrap around to a small number.
  write_raw(path,
            R"({"x": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})",
            0);
  expect_file_error(path, {path, "tensor 'x'", "overflows"});
}

TEST_F(SafetensorsTest, RejectsOverlappingTensors) {
  const std::string path = tmp_.file("overlap.safetensors");
  write_raw(path,
            R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
            12);
  expect_file_error(path, {path, "tensors 'a' and 'b' overlap"});
}

TEST_F(SafetensorsTest, RejectsMalformedEntries) {
  const std::string path = tmp_.file("entry.safetensors");
  write_raw(path, R"({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4);
  expect_file_error(path, {path, "tensor 'x'", "shape [-1]"});
  write_raw(path, R"({"x": {"dtype": "F32", "shape": [1]}})", 4);
  expect_file_error(path, {path, "tensor 'x'", "data_offsets"});
  write_raw(path, R"({"x": {"shape": [1], "data_offsets": [0, 4]}})", 4);
  expect_file_error(path, {path, "tensor 'x'", "dtype"});
  write_raw(path, R"({"x": [1]})", 4);
  expect_file_error(path, {path, "tensor 'x'", "not a JSON object"});
  write_raw(path, R"({"__metadata__": {"k": 1}})", 0);
  expect_file_error(path, {path, "__metadata__ 'k' is not a string"});
}

TEST_F(SafetensorsTest, RejectsUnopenableFile) {
  const std::string path = tmp_.file("absent.safetensors");
  expect_file_error(path, {path, "cannot open: No such file or directory"});
}

// ---- Checkpoint ----

void write_f32_file(const std::string& path,
                    const std::vector<std::pair<std::string, std::vector<float>>>& tensors) {
  SafetensorsWriter writer;
  for (const auto& [name, values] : tensors)
    writer.add_f32(name, {static_cast<int64_t>(values.size())}, values.data());
  writer.write(path);
}

TEST_F(SafetensorsTest, CheckpointSingleFile) {
  write_f32_file(tmp_.file("model.safetensors"), {{"b", {1, 2}}, {"a", {3}}});
  write_f32_file(tmp_.file("other.safetensors"), {{"ignored", {0}}});  // model.safetensors wins
  Checkpoint ckpt(tmp_.str());
  EXPECT_EQ(ckpt.dir(), tmp_.str());
  EXPECT_EQ(ckpt.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(ckpt.has("a"));
  EXPECT_FALSE(ckpt.has("ignored"));
  EXPECT_EQ(ckpt.get("b").shape, (Shape{2}));
  EXPECT_EQ(ckpt.find("zzz"), nullptr);
  expect_error([&] { ckpt.get("zzz"); }, {tmp_.str() + ": missing tensor 'zzz'"});
}

TEST_F(SafetensorsTest, CheckpointShardedWithIndex) {
  write_f32_file(tmp_.file("model-00001-of-00002.safetensors"), {{"a", {1}}, {"b", {2, 2}}});
  write_f32_file(tmp_.file("model-00002-of-00002.safetensors"), {{"c", {3, 3, 3}}});
  write_bytes(tmp_.file("model.safetensors.index.json"), R"({
    "metadata": {"total_size": 24},
    "weight_map": {"a": "model-00001-of-00002.safetensors",
                   "b": "model-00001-of-00002.safetensors",
                   "c": "model-00002-of-00002.safetensors"}})");
  Checkpoint ckpt(tmp_.str());
  EXPECT_EQ(ckpt.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(ckpt.get("b").file, tmp_.file("model-00001-of-00002.safetensors"));
  EXPECT_EQ(ckpt.get("c").file, tmp_.file("model-00002-of-00002.safetensors"));
  Tensor c = ckpt.load_f32("c", {3});
  EXPECT_EQ(c.data[2], 3.0f);

  // The index names a tensor its shard lacks.
  write_bytes(tmp_.file("model.safetensors.index.json"), R"({"weight_map": {
    "a": "model-00001-of-00002.safetensors", "d": "model-00002-of-00002.safetensors"}})");
  expect_error([&] { Checkpoint bad(tmp_.str()); },
               {"model.safetensors.index.json", "'d'", "model-00002-of-00002.safetensors"});
}

TEST_F(SafetensorsTest, CheckpointGlobsShardsAndRejectsDuplicates) {
  write_f32_file(tmp_.file("b.safetensors"), {{"y", {2}}});
  write_f32_file(tmp_.file("a.safetensors"), {{"x", {1}}});
  {
    Checkpoint ckpt(tmp_.str());
    EXPECT_EQ(ckpt.names(), (std::vector<std::string>{"x", "y"}));
  }
  write_f32_file(tmp_.file("c.safetensors"), {{"x", {5}}});
  expect_error([&] { Checkpoint bad(tmp_.str()); },
               {"'x'", tmp_.file("a.safetensors"), tmp_.file("c.safetensors")});
}

TEST_F(SafetensorsTest, CheckpointEmptyDirectory) {
  expect_error([&] { Checkpoint ckpt(tmp_.str()); },
               {tmp_.str() + ": no model.safetensors, model.safetensors.index.json or "
                             "*.safetensors found"});
}

// ---- load_f32 ----

TEST_F(SafetensorsTest, LoadF32ConvertsHalfTypesAndViewsF32InPlace) {
  const std::vector<float> values = {1.0f, -0.5f, 3.25f, 1024.0f};
  std::vector<uint16_t> bf16, f16;
  for (float v : values) bf16.push_back(f32_to_bf16(v));
  for (float v : values) f16.push_back(f32_to_f16(v));
  const uint8_t pad = 0;
  SafetensorsWriter writer;
  writer.add_f32("f32", {2, 2}, values.data());
  writer.add("bf16", DType::kBF16, {2, 2}, bf16.data());
  writer.add("f16", DType::kF16, {4}, f16.data());
  writer.add("pad", DType::kU8, {1}, &pad);
  writer.add_f32("unaligned", {4}, values.data());
  writer.write(tmp_.file("model.safetensors"));

  Tensor in_place;
  {
    Checkpoint ckpt(tmp_.str());
    for (const char* name : {"bf16", "f16", "unaligned"}) {
      Tensor t = ckpt.load_f32(name, ckpt.get(name).shape);
      ASSERT_EQ(t.numel(), 4);
      EXPECT_NE(reinterpret_cast<const void*>(t.data), ckpt.get(name).data) << name;
      for (int i = 0; i < 4; ++i) EXPECT_EQ(t.data[i], values[i]) << name << " " << i;
    }
    in_place = ckpt.load_f32("f32", {2, 2});
    EXPECT_EQ(reinterpret_cast<const void*>(in_place.data), ckpt.get("f32").data);
    EXPECT_NE(in_place.owner, nullptr);
  }
  // The checkpoint is gone; the tensor's owner keeps the mapping alive.
  for (int i = 0; i < 4; ++i) EXPECT_EQ(in_place.data[i], values[i]);
}

TEST_F(SafetensorsTest, LoadF32RejectsWrongShapeAndIntegers) {
  const std::string path = tmp_.file("model.safetensors");
  SafetensorsWriter writer;
  writer.add_f32("w", {2, 3}, std::vector<float>(6, 1.0f).data());
  writer.add_i64("ids", {2}, std::vector<int64_t>{1, 2}.data());
  writer.write(path);
  Checkpoint ckpt(tmp_.str());
  expect_error(
      [&] {
        ckpt.load_f32("w", {3, 2});
      },
      {path + ": tensor 'w': expected shape [3, 2], found [2, 3]"});
  expect_error([&] { ckpt.load_f32("ids", {2}); },
               {path, "tensor 'ids' has dtype I64, expected a floating type"});
  expect_error([&] { ckpt.load_f32("nope", {1}); }, {"missing tensor 'nope'"});
}

// A 130 x 200 FP8 matrix has a [2, 2] grid of 128 x 128 scale blocks, the last ones partial.
struct Fp8Fixture {
  static constexpr int64_t kRows = 130, kCols = 200;
  std::vector<uint8_t> codes;
  Fp8Fixture() {
    for (int64_t r = 0; r < kRows; ++r)
      for (int64_t c = 0; c < kCols; ++c)
        codes.push_back(f32_to_f8e4m3(static_cast<float>((r * 7 + c * 3) % 17 - 8) * 0.25f));
  }
  void add(SafetensorsWriter& writer, const std::string& name) const {
    writer.add(name, DType::kF8_E4M3, {kRows, kCols}, codes.data());
  }
  void check(const Tensor& t, const float scale[4]) const {
    ASSERT_EQ(t.shape, (Shape{kRows, kCols}));
    for (int64_t r = 0; r < kRows; ++r)
      for (int64_t c = 0; c < kCols; ++c) {
        float expected = f8e4m3_to_f32(codes[r * kCols + c]) * scale[(r / 128) * 2 + c / 128];
        ASSERT_EQ(t.data[r * kCols + c], expected) << r << "," << c;
      }
  }
};

TEST_F(SafetensorsTest, LoadF32DequantizesFp8WithBlockScales) {
  Fp8Fixture fp8;
  const float scale[4] = {2.0f, 3.0f, 5.0f, 0.5f};
  std::vector<uint16_t> scale_bf16;
  for (float s : scale) scale_bf16.push_back(f32_to_bf16(s));
  SafetensorsWriter writer;
  fp8.add(writer, "layers.0.q.weight");
  writer.add_f32("layers.0.q.weight_scale_inv", {2, 2}, scale);
  fp8.add(writer, "layers.0.k.weight");
  writer.add("layers.0.k.weight_scale_inv", DType::kBF16, {2, 2}, scale_bf16.data());
  writer.write(tmp_.file("model.safetensors"));

  Checkpoint ckpt(tmp_.str());
  fp8.check(ckpt.load_f32("layers.0.q.weight", {130, 200}), scale);
  fp8.check(ckpt.load_f32("layers.0.k.weight", {130, 200}), scale);
}

TEST_F(SafetensorsTest, LoadF32RejectsFp8WithoutOrWithBadScale) {
  Fp8Fixture fp8;
  const std::string path = tmp_.file("model.safetensors");
  SafetensorsWriter writer;
  fp8.add(writer, "a.weight");
  fp8.add(writer, "b.weight");
  writer.add_f32("b.weight_scale_inv", {1, 2}, std::vector<float>{1, 1}.data());
  writer.write(path);

  Checkpoint ckpt(tmp_.str());
  expect_error(
      [&] {
        ckpt.load_f32("a.weight", {130, 200});
      },
      {path, "'a.weight'", "'a.weight_scale_inv'", "missing"});
  expect_error(
      [&] {
        ckpt.load_f32("b.weight", {130, 200});
      },
      {path, "'b.weight_scale_inv'", "[1, 2]", "expected [2, 2]"});
}

// ---- the checked-in fixture ----

TEST(SafetensorsFixture, V3TinyOpens) {
  Checkpoint ckpt(DSMOE_TEST_DATA "/v3-tiny/model");
  const TensorInfo& embed = ckpt.get("model.embed_tokens.weight");
  EXPECT_EQ(embed.dtype, DType::kF32);
  EXPECT_EQ(embed.shape, (Shape{512, 64}));
  Tensor t = ckpt.load_f32("model.embed_tokens.weight", {512, 64});
  EXPECT_EQ(reinterpret_cast<const void*>(t.data), embed.data);
}

}  // namespace
}  // namespace dsmoe
