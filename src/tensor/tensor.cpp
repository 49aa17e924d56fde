#include "tensor/tensor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "util/check.h"

namespace dsmoe {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

Tensor Tensor::zeros(Shape shape) {
  for (int64_t d : shape) DSMOE_CHECK(d >= 0, "negative dimension in shape {}", shape_str(shape));
  auto storage = std::make_shared<std::vector<float>>(static_cast<size_t>(shape_numel(shape)), 0.0f);
  Tensor t;
  t.shape = std::move(shape);
  t.data = storage->data();
  t.owner = storage;
  return t;
}

Tensor Tensor::view(float* data, Shape shape, std::shared_ptr<void> owner) {
  Tensor t;
  t.shape = std::move(shape);
  t.data = data;
  t.owner = std::move(owner);
  return t;
}

}  // namespace dsmoe
