// safetensors.h: read (mmap, validated, one file or sharded) and write (atomically) safetensors.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/tensor.h"

namespace dsmoe {

// One tensor's header entry, with its bytes inside the mapped file.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  const uint8_t* data = nullptr;  // points into the mmap
  size_t nbytes = 0;
  std::string file;  // path of the file that holds it, for error messages
};

// One .safetensors file, mmap'd read-only. The constructor validates the whole header: the
// 8-byte length, JSON syntax, known dtypes, shape x dtype size == byte length, offsets inside the
// file, no two tensors overlapping. Any violation throws dsmoe::Error naming the file (and tensor).
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;  // nullptr when absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: `model.safetensors`, or the shards listed in
// `model.safetensors.index.json` (its weight_map), or failing both every *.safetensors file in it.
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const TensorInfo* find(const std::string& name) const;  // nullptr when absent
  // Throws "<dir>: missing tensor '<name>'" when absent.
  const TensorInfo& get(const std::string& name) const;
  bool has(const std::string& name) const { return find(name) != nullptr; }
  std::vector<std::string> names() const;  // sorted

  // Loads a floating tensor as float32, checking its shape ("<file>: tensor '<name>': expected
  // shape [..], found [..]"). F32 tensors whose bytes are 4-byte aligned are viewed in place (the
  // mmap stays alive through Tensor::owner); other dtypes are converted. An F8_E4M3 tensor is
  // dequantized with its companion `<name minus .weight>.weight_scale_inv` [ceil(rows/128),
  // ceil(cols/128)] (F32 or BF16), as the DeepSeek-V3 release stores weights.
  Tensor load_f32(const std::string& name, const Shape& expected_shape) const;

  // The block scales of the F8_E4M3 weight `name` as float32 [ceil(rows/128), ceil(cols/128)]
  // (its `weight_scale_inv`, checked as load_f32 checks it), for keeping the e4m3 bytes
  // (`--weights fp8`) instead of expanding them.
  std::vector<float> f8_block_scales(const std::string& name) const;

  // Tells the kernel that the mapped pages of `name` will not be read again (madvise
  // MADV_DONTNEED on the page-aligned inside of its bytes), so that a model converted or
  // quantized tensor by tensor does not keep the whole file resident. Only for tensors whose
  // loaded copy does not view the mapping.
  void release(const std::string& name) const;

 private:
  std::string dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, const TensorInfo*>> index_;  // name -> (file, info)
};

// Reads an I64 (or I32) tensor into int64 values.
std::vector<int64_t> read_i64(const TensorInfo& info);

// Collects tensors and writes one .safetensors file: header padded to 8 bytes, tensors in the
// order added, written to `<path>.tmp`, fsync'd, then renamed over `path` (atomic).
class SafetensorsWriter {
 public:
  void add(const std::string& name, DType dtype, const Shape& shape, const void* data);
  void add_f32(const std::string& name, const Tensor& tensor) {
    add(name, DType::kF32, tensor.shape, tensor.data);
  }
  void add_f32(const std::string& name, const Shape& shape, const float* data) {
    add(name, DType::kF32, shape, data);
  }
  void add_i64(const std::string& name, const Shape& shape, const int64_t* data) {
    add(name, DType::kI64, shape, data);
  }
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes `text` to `path` atomically (temp file, fsync, rename).
void write_file_atomic(const std::string& path, const std::string& text);

}  // namespace dsmoe
