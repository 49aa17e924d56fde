#include "io/safetensors_stream.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "util/check.h"

namespace dsmoe {

SafetensorsStreamWriter::SafetensorsStreamWriter(const std::string& path,
                                                 std::vector<TensorSpec> specs)
    : path_(path), tmp_path_(path + ".tmp"), specs_(std::move(specs)) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  // transformers refuses a safetensors checkpoint without format metadata.
  header["__metadata__"] = {{"format", "pt"}};
  size_t offset = 0;
  for (const TensorSpec& spec : specs_) {
    const size_t nbytes = static_cast<size_t>(shape_numel(spec.shape)) * dtype_size(spec.dtype);
    header[spec.name] = {{"dtype", dtype_name(spec.dtype)},
                         {"shape", spec.shape},
                         {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  file_ = std::fopen(tmp_path_.c_str(), "wb");
  DSMOE_CHECK(file_ != nullptr, "{}: cannot create: {}", tmp_path_, std::strerror(errno));
  const uint64_t length = text.size();
  DSMOE_CHECK(std::fwrite(&length, 8, 1, file_) == 1 &&
                  std::fwrite(text.data(), 1, text.size(), file_) == text.size(),
              "{}: write failed: {}", tmp_path_, std::strerror(errno));
}

SafetensorsStreamWriter::~SafetensorsStreamWriter() {
  if (file_ != nullptr) {  // not finished: leave no partial file behind
    std::fclose(file_);
    std::remove(tmp_path_.c_str());
  }
}

void SafetensorsStreamWriter::write_f32(const float* data) {
  DSMOE_ASSERT(next_ < specs_.size() && file_ != nullptr);
  const TensorSpec& spec = specs_[next_++];
  const size_t n = static_cast<size_t>(shape_numel(spec.shape));
  std::vector<uint8_t> bytes(n * dtype_size(spec.dtype));
  switch (spec.dtype) {
    case DType::kF32:
      std::memcpy(bytes.data(), data, n * sizeof(float));
      break;
    case DType::kBF16:
      for (size_t i = 0; i < n; i++) {
        const uint16_t v = f32_to_bf16(data[i]);
        std::memcpy(bytes.data() + 2 * i, &v, 2);
      }
      break;
    case DType::kF16:
      for (size_t i = 0; i < n; i++) {
        const uint16_t v = f32_to_f16(data[i]);
        std::memcpy(bytes.data() + 2 * i, &v, 2);
      }
      break;
    default:
      fail(fmt::format("{}: tensor '{}': cannot write dtype {}", path_, spec.name,
                       dtype_name(spec.dtype)));
  }
  DSMOE_CHECK(std::fwrite(bytes.data(), 1, bytes.size(), file_) == bytes.size(),
              "{}: write failed: {}", tmp_path_, std::strerror(errno));
}

void SafetensorsStreamWriter::finish() {
  DSMOE_CHECK(next_ == specs_.size(), "{}: {} of {} tensors written", path_, next_,
              specs_.size());
  DSMOE_CHECK(std::fflush(file_) == 0 && ::fsync(fileno(file_)) == 0, "{}: flush failed: {}",
              tmp_path_, std::strerror(errno));
  std::fclose(file_);
  file_ = nullptr;
  std::filesystem::rename(tmp_path_, path_);
}

}  // namespace dsmoe
