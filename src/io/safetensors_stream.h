// safetensors_stream.h: writes a .safetensors file tensor by tensor, so that a checkpoint larger
// than memory can be produced (dsmoe init of a full-size model).
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/tensor.h"

namespace dsmoe {

struct TensorSpec {
  std::string name;
  DType dtype;
  Shape shape;
};

// Usage: StreamWriter w(path, specs); for each spec in order: w.write_f32(data); w.finish().
// Data go to `<path>.tmp`, which finish() fsyncs and renames over `path`.
class SafetensorsStreamWriter {
 public:
  SafetensorsStreamWriter(const std::string& path, std::vector<TensorSpec> specs);
  ~SafetensorsStreamWriter();
  SafetensorsStreamWriter(const SafetensorsStreamWriter&) = delete;
  SafetensorsStreamWriter& operator=(const SafetensorsStreamWriter&) = delete;

  // Writes the next tensor from float32 values, converted to its spec's dtype.
  void write_f32(const float* data);
  void finish();

 private:
  std::string path_, tmp_path_;
  std::vector<TensorSpec> specs_;
  size_t next_ = 0;
  std::FILE* file_ = nullptr;
};

}  // namespace dsmoe
