// gguf.h: writes GGUF files (version 3, the format llama.cpp and its tools read): a header, typed
// metadata key/value pairs, tensor infos, and the tensors' data, each aligned, streamed tensor by
// tensor so that a model larger than memory can be written.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace dsmoe {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" as little-endian bytes
constexpr uint32_t kGgufVersion = 3;
constexpr uint32_t kGgufDefaultAlignment = 32;  // general.alignment when absent
constexpr size_t kGgufMaxTensorName = 63;       // GGML_MAX_NAME (64) less the terminating NUL
constexpr int kGgufMaxDims = 4;                 // GGML_MAX_DIMS

// gguf_type: the type of a metadata value (and of an array's elements).
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};
const char* gguf_type_name(GgufType type);

// ggml_type: the storage of a tensor's elements; the ones dsmoe writes.
enum class GgmlType : uint32_t { kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ8_0 = 8, kBF16 = 30 };
const char* ggml_type_name(GgmlType type);
// Elements per block (32 for Q8_0 / Q4_0, 1 otherwise) and bytes per block.
int64_t ggml_block_size(GgmlType type);
size_t ggml_type_size(GgmlType type);
// Bytes of a row of ne0 elements (ne0 a multiple of the block size).
size_t ggml_row_size(GgmlType type, int64_t ne0);

// One metadata value, held encoded as it goes into the file (little-endian payload without the
// type tag), so that long arrays (a vocabulary) cost one buffer.
class GgufValue {
 public:
  static GgufValue u8(uint8_t v);
  static GgufValue i8(int8_t v);
  static GgufValue u16(uint16_t v);
  static GgufValue i16(int16_t v);
  static GgufValue u32(uint32_t v);
  static GgufValue i32(int32_t v);
  static GgufValue f32(float v);
  static GgufValue boolean(bool v);
  static GgufValue string(const std::string& v);
  static GgufValue u64(uint64_t v);
  static GgufValue i64(int64_t v);
  static GgufValue f64(double v);
  static GgufValue strings(const std::vector<std::string>& v);
  static GgufValue i32s(const std::vector<int32_t>& v);
  static GgufValue u32s(const std::vector<uint32_t>& v);
  static GgufValue f32s(const std::vector<float>& v);

  GgufType type() const { return type_; }
  GgufType element_type() const { return element_type_; }  // arrays only
  const std::vector<uint8_t>& payload() const { return payload_; }

 private:
  GgufValue(GgufType type, GgufType element_type) : type_(type), element_type_(element_type) {}
  GgufType type_;
  GgufType element_type_;
  std::vector<uint8_t> payload_;
};

// Usage: GgufWriter w(path); w.add_kv(...)...; w.add_tensor(...)...; then, in the order the
// tensors were added, w.write_tensor(name, data, nbytes); w.finish().
// The header goes out with the first write_tensor (or finish). Data go to `<path>.tmp`, which
// finish() fsyncs and renames over `path`; a writer destroyed unfinished removes it.
// Every mistake (a duplicate key or tensor, a name too long, a shape the type cannot hold, data
// of the wrong size or out of order) is an Error naming the key or tensor.
class GgufWriter {
 public:
  explicit GgufWriter(const std::string& path, uint32_t alignment = kGgufDefaultAlignment);
  ~GgufWriter();
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  void add_kv(const std::string& key, GgufValue value);
  // ne: ggml's dimensions, innermost (contiguous) first: a [rows, cols] matrix is {cols, rows}.
  void add_tensor(const std::string& name, GgmlType type, const std::vector<int64_t>& ne);
  // Bytes a tensor's data must have.
  size_t tensor_bytes(const std::string& name) const;
  void write_tensor(const std::string& name, const void* data, size_t nbytes);
  void finish();

  size_t n_tensors() const { return tensors_.size(); }

 private:
  struct TensorEntry {
    std::string name;
    GgmlType type;
    std::vector<int64_t> ne;
    size_t nbytes = 0;
    uint64_t offset = 0;  // from the start of the data section
  };
  struct KvEntry {
    std::string key;
    GgufValue value;
  };

  const TensorEntry& find_tensor(const std::string& name) const;
  void write_header();
  void write_bytes(const void* data, size_t nbytes);
  void pad_to_alignment();

  std::string path_, tmp_path_;
  uint32_t alignment_;
  std::vector<KvEntry> kvs_;
  std::vector<TensorEntry> tensors_;
  uint64_t data_bytes_ = 0;  // the data section's size so far (offsets of the tensors added)
  size_t next_tensor_ = 0;
  bool header_written_ = false;
  std::FILE* file_ = nullptr;
  uint64_t file_pos_ = 0;
};

}  // namespace dsmoe
