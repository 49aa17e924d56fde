// gguf.cpp: the GGUF writer (layout as in ggml's gguf.cpp and gguf-py: magic, version,
// tensor count, kv count, the kv pairs, the tensor infos, padding, then the data section with
// every tensor at an offset that is a multiple of the alignment).
#include "io/gguf.h"

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>

#include "util/check.h"

namespace dsmoe {

static_assert(std::endian::native == std::endian::little,
              "GGUF files are little-endian; this writer copies native values");

const char* gguf_type_name(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
      return "uint8";
    case GgufType::kInt8:
      return "int8";
    case GgufType::kUint16:
      return "uint16";
    case GgufType::kInt16:
      return "int16";
    case GgufType::kUint32:
      return "uint32";
    case GgufType::kInt32:
      return "int32";
    case GgufType::kFloat32:
      return "float32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kUint64:
      return "uint64";
    case GgufType::kInt64:
      return "int64";
    case GgufType::kFloat64:
      return "float64";
  }
  return "unknown";
}

const char* ggml_type_name(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return "f32";
    case GgmlType::kF16:
      return "f16";
    case GgmlType::kQ4_0:
      return "q4_0";
    case GgmlType::kQ8_0:
      return "q8_0";
    case GgmlType::kBF16:
      return "bf16";
  }
  return "unknown";
}

int64_t ggml_block_size(GgmlType type) {
  return type == GgmlType::kQ4_0 || type == GgmlType::kQ8_0 ? 32 : 1;
}

size_t ggml_type_size(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return 4;
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return 2;
    case GgmlType::kQ4_0:
      return 2 + 16;  // block_q4_0: f16 scale + 32 nibbles
    case GgmlType::kQ8_0:
      return 2 + 32;  // block_q8_0: f16 scale + 32 int8
  }
  return 0;
}

size_t ggml_row_size(GgmlType type, int64_t ne0) {
  return ggml_type_size(type) * static_cast<size_t>(ne0 / ggml_block_size(type));
}

namespace {

template <typename T>
void append_pod(std::vector<uint8_t>& out, T value) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &value, sizeof(T));
}

// gguf_string: uint64 length, then the bytes (no terminator).
void append_string(std::vector<uint8_t>& out, const std::string& s) {
  append_pod<uint64_t>(out, s.size());
  const size_t at = out.size();
  out.resize(at + s.size());
  if (!s.empty()) std::memcpy(out.data() + at, s.data(), s.size());
}

}  // namespace

#define DSMOE_GGUF_SCALAR(fn, ctype, tag)          \
  GgufValue GgufValue::fn(ctype v) {               \
    GgufValue value(GgufType::tag, GgufType::tag); \
    append_pod<ctype>(value.payload_, v);          \
    return value;                                  \
  }
DSMOE_GGUF_SCALAR(u8, uint8_t, kUint8)
DSMOE_GGUF_SCALAR(i8, int8_t, kInt8)
DSMOE_GGUF_SCALAR(u16, uint16_t, kUint16)
DSMOE_GGUF_SCALAR(i16, int16_t, kInt16)
DSMOE_GGUF_SCALAR(u32, uint32_t, kUint32)
DSMOE_GGUF_SCALAR(i32, int32_t, kInt32)
DSMOE_GGUF_SCALAR(f32, float, kFloat32)
DSMOE_GGUF_SCALAR(u64, uint64_t, kUint64)
DSMOE_GGUF_SCALAR(i64, int64_t, kInt64)
DSMOE_GGUF_SCALAR(f64, double, kFloat64)
#undef DSMOE_GGUF_SCALAR

GgufValue GgufValue::boolean(bool v) {
  GgufValue value(GgufType::kBool, GgufType::kBool);
  append_pod<uint8_t>(value.payload_, v ? 1 : 0);  // one byte, 0 or 1
  return value;
}

GgufValue GgufValue::string(const std::string& v) {
  GgufValue value(GgufType::kString, GgufType::kString);
  append_string(value.payload_, v);
  return value;
}

// Arrays: element type (uint32), count (uint64), then the elements.
GgufValue GgufValue::strings(const std::vector<std::string>& v) {
  GgufValue value(GgufType::kArray, GgufType::kString);
  append_pod<uint32_t>(value.payload_, static_cast<uint32_t>(GgufType::kString));
  append_pod<uint64_t>(value.payload_, v.size());
  for (const std::string& s : v) append_string(value.payload_, s);
  return value;
}

#define DSMOE_GGUF_ARRAY(fn, ctype, tag)                                        \
  GgufValue GgufValue::fn(const std::vector<ctype>& v) {                        \
    GgufValue value(GgufType::kArray, GgufType::tag);                           \
    append_pod<uint32_t>(value.payload_, static_cast<uint32_t>(GgufType::tag)); \
    append_pod<uint64_t>(value.payload_, v.size());                             \
    for (ctype x : v) append_pod<ctype>(value.payload_, x);                     \
    return value;                                                               \
  }
DSMOE_GGUF_ARRAY(i32s, int32_t, kInt32)
DSMOE_GGUF_ARRAY(u32s, uint32_t, kUint32)
DSMOE_GGUF_ARRAY(f32s, float, kFloat32)
#undef DSMOE_GGUF_ARRAY

GgufWriter::GgufWriter(const std::string& path, uint32_t alignment)
    : path_(path), tmp_path_(path + ".tmp"), alignment_(alignment) {
  DSMOE_CHECK(alignment > 0 && alignment % 8 == 0,
              "{}: GGUF alignment must be a positive multiple of 8, got {}", path, alignment);
  if (alignment != kGgufDefaultAlignment) add_kv("general.alignment", GgufValue::u32(alignment));
}

GgufWriter::~GgufWriter() {
  if (file_ != nullptr) {
    std::fclose(file_);
    std::error_code ignored;
    std::filesystem::remove(tmp_path_, ignored);
  }
}

void GgufWriter::add_kv(const std::string& key, GgufValue value) {
  DSMOE_CHECK(!header_written_, "{}: metadata key '{}' added after the header was written", path_,
              key);
  DSMOE_CHECK(!key.empty(), "{}: empty metadata key", path_);
  for (const KvEntry& kv : kvs_)
    DSMOE_CHECK(kv.key != key, "{}: metadata key '{}' added twice", path_, key);
  kvs_.push_back({key, std::move(value)});
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type,
                            const std::vector<int64_t>& ne) {
  DSMOE_CHECK(!header_written_, "{}: tensor '{}' added after the header was written", path_, name);
  DSMOE_CHECK(!name.empty() && name.size() <= kGgufMaxTensorName,
              "{}: tensor name '{}' must have 1 to {} characters", path_, name, kGgufMaxTensorName);
  DSMOE_CHECK(!ne.empty() && ne.size() <= static_cast<size_t>(kGgufMaxDims),
              "{}: tensor '{}' has {} dimensions; GGUF holds 1 to {}", path_, name, ne.size(),
              kGgufMaxDims);
  for (int64_t n : ne)
    DSMOE_CHECK(n > 0, "{}: tensor '{}' has a dimension {} (ne {})", path_, name, n, ne);
  DSMOE_CHECK(ne[0] % ggml_block_size(type) == 0,
              "{}: tensor '{}': its first dimension {} is not a multiple of {}'s block of {}",
              path_, name, ne[0], ggml_type_name(type), ggml_block_size(type));
  for (const TensorEntry& t : tensors_)
    DSMOE_CHECK(t.name != name, "{}: tensor '{}' added twice", path_, name);
  TensorEntry entry{name, type, ne};
  entry.nbytes = ggml_row_size(type, ne[0]);
  for (size_t d = 1; d < ne.size(); d++) entry.nbytes *= static_cast<size_t>(ne[d]);
  entry.offset = data_bytes_;
  data_bytes_ += (entry.nbytes + alignment_ - 1) / alignment_ * alignment_;
  tensors_.push_back(std::move(entry));
}

const GgufWriter::TensorEntry& GgufWriter::find_tensor(const std::string& name) const {
  for (const TensorEntry& t : tensors_)
    if (t.name == name) return t;
  fail(fmt::format("{}: no tensor '{}' was added", path_, name));
}

size_t GgufWriter::tensor_bytes(const std::string& name) const { return find_tensor(name).nbytes; }

void GgufWriter::write_bytes(const void* data, size_t nbytes) {
  if (nbytes == 0) return;
  DSMOE_CHECK(std::fwrite(data, 1, nbytes, file_) == nbytes, "{}: write failed", tmp_path_);
  file_pos_ += nbytes;
}

void GgufWriter::pad_to_alignment() {
  static const uint8_t kZeros[256] = {};
  while (file_pos_ % alignment_ != 0) {
    const size_t n = std::min<size_t>(sizeof(kZeros), alignment_ - file_pos_ % alignment_);
    write_bytes(kZeros, n);
  }
}

void GgufWriter::write_header() {
  file_ = std::fopen(tmp_path_.c_str(), "wb");
  DSMOE_CHECK(file_ != nullptr, "{}: cannot create", tmp_path_);
  header_written_ = true;
  std::vector<uint8_t> header;
  append_pod<uint32_t>(header, kGgufMagic);
  append_pod<uint32_t>(header, kGgufVersion);
  append_pod<uint64_t>(header, tensors_.size());
  append_pod<uint64_t>(header, kvs_.size());
  for (const KvEntry& kv : kvs_) {
    append_string(header, kv.key);
    append_pod<uint32_t>(header, static_cast<uint32_t>(kv.value.type()));
    header.insert(header.end(), kv.value.payload().begin(), kv.value.payload().end());
  }
  for (const TensorEntry& t : tensors_) {
    append_string(header, t.name);
    append_pod<uint32_t>(header, static_cast<uint32_t>(t.ne.size()));
    for (int64_t n : t.ne) append_pod<uint64_t>(header, static_cast<uint64_t>(n));
    append_pod<uint32_t>(header, static_cast<uint32_t>(t.type));
    append_pod<uint64_t>(header, t.offset);
  }
  write_bytes(header.data(), header.size());
  pad_to_alignment();
}

void GgufWriter::write_tensor(const std::string& name, const void* data, size_t nbytes) {
  if (!header_written_) write_header();
  DSMOE_CHECK(next_tensor_ < tensors_.size(), "{}: data for tensor '{}' after the last tensor",
              path_, name);
  const TensorEntry& t = tensors_[next_tensor_];
  DSMOE_CHECK(t.name == name, "{}: expected the data of tensor '{}' next, got '{}'", path_, t.name,
              name);
  DSMOE_CHECK(nbytes == t.nbytes, "{}: tensor '{}' ({} {}) needs {} bytes of data, got {}", path_,
              name, ggml_type_name(t.type), t.ne, t.nbytes, nbytes);
  write_bytes(data, nbytes);
  pad_to_alignment();
  next_tensor_++;
}

void GgufWriter::finish() {
  if (!header_written_) write_header();
  DSMOE_CHECK(next_tensor_ == tensors_.size(), "{}: finished before the data of tensor '{}'", path_,
              next_tensor_ < tensors_.size() ? tensors_[next_tensor_].name : "");
  DSMOE_CHECK(std::fflush(file_) == 0 && ::fsync(fileno(file_)) == 0, "{}: flush failed",
              tmp_path_);
  std::fclose(file_);
  file_ = nullptr;
  std::error_code error;
  std::filesystem::rename(tmp_path_, path_, error);
  DSMOE_CHECK(!error, "{}: cannot rename {} over it: {}", path_, tmp_path_, error.message());
}

}  // namespace dsmoe
