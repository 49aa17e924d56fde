// tensor.h: Tensor, a float32 array with a shape that owns its memory or views someone else's
// (an mmap'd checkpoint, an arena).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dsmoe {

struct QuantMatrix;  // kernels/quant.h: a matrix in a bf16 / int8 / int4 block format

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[2, 3]"

struct Tensor {
  Shape shape;
  float* data = nullptr;
  std::shared_ptr<void> owner;  // keeps data alive (a vector, an mmap); null for a bare view
  // Inference only: the matrix in a compact format (then data is null); see quantize_weights.
  std::shared_ptr<const QuantMatrix> quant;

  int64_t numel() const { return shape_numel(shape); }
  int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
  bool empty() const { return data == nullptr && quant == nullptr; }

  static Tensor zeros(Shape shape);
  // A view of external memory that the caller keeps alive.
  static Tensor view(float* data, Shape shape, std::shared_ptr<void> owner = nullptr);
};

}  // namespace dsmoe
