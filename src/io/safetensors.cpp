#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "util/check.h"

namespace dsmoe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int64_t kScaleBlock = 128;  // DeepSeek-V3 FP8 weights carry one scale per 128x128 block

std::string errno_message() { return std::strerror(errno); }

// Closes a file descriptor on every path out of a scope.
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

// A JSON integer that fits in [0, INT64_MAX], or nullopt. Rejects floats like 3.0 on purpose: a
// header that writes offsets as floats is not one we understand.
std::optional<int64_t> json_non_negative(const json& value) {
  if (value.is_number_unsigned()) {
    uint64_t v = value.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(v);
  }
  if (value.is_number_integer()) {
    int64_t v = value.get<int64_t>();
    if (v < 0) return std::nullopt;
    return v;
  }
  return std::nullopt;
}

// numel(shape) * elem_size, or nullopt on overflow.
std::optional<uint64_t> shape_bytes(const Shape& shape, size_t elem_size) {
  uint64_t bytes = elem_size;
  for (int64_t d : shape)
    if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes)) return std::nullopt;
  return bytes;
}

// A header entry being validated: its info plus where its bytes start in the data section.
struct ParsedEntry {
  TensorInfo info;
  uint64_t begin = 0;
};

ParsedEntry parse_entry(const std::string& path, const std::string& name, const json& entry,
                        const uint8_t* data, uint64_t data_size) {
  const std::string where = fmt::format("{}: tensor '{}'", path, name);
  DSMOE_CHECK(entry.is_object(), "{}: entry is not a JSON object", where);
  auto dtype_it = entry.find("dtype");
  DSMOE_CHECK(dtype_it != entry.end() && dtype_it->is_string(), "{}: missing or non-string 'dtype'",
              where);
  std::optional<DType> dtype = parse_dtype(dtype_it->get<std::string>());
  DSMOE_CHECK(dtype, "{}: unknown dtype '{}'", where, dtype_it->get<std::string>());

  ParsedEntry parsed;
  parsed.info.name = name;
  parsed.info.dtype = *dtype;
  parsed.info.file = path;
  auto shape_it = entry.find("shape");
  DSMOE_CHECK(shape_it != entry.end() && shape_it->is_array(), "{}: missing or non-array 'shape'",
              where);
  for (const json& dim : *shape_it) {
    std::optional<int64_t> d = json_non_negative(dim);
    DSMOE_CHECK(d, "{}: shape {} has a dimension that is not a non-negative integer", where,
                shape_it->dump());
    parsed.info.shape.push_back(*d);
  }

  auto offsets_it = entry.find("data_offsets");
  DSMOE_CHECK(offsets_it != entry.end() && offsets_it->is_array() && offsets_it->size() == 2,
              "{}: missing 'data_offsets' or not a [begin, end] pair", where);
  std::optional<int64_t> begin = json_non_negative((*offsets_it)[0]);
  std::optional<int64_t> end = json_non_negative((*offsets_it)[1]);
  DSMOE_CHECK(begin && end, "{}: data_offsets {} are not non-negative integers", where,
              offsets_it->dump());
  DSMOE_CHECK(*begin <= *end, "{}: data_offsets [{}, {}] end before they begin", where, *begin,
              *end);
  DSMOE_CHECK(static_cast<uint64_t>(*end) <= data_size,
              "{}: data_offsets [{}, {}] outside the data section ({} bytes)", where, *begin, *end,
              data_size);

  const size_t elem = dtype_size(*dtype);
  std::optional<uint64_t> bytes = shape_bytes(parsed.info.shape, elem);
  DSMOE_CHECK(bytes, "{}: shape {} x {} overflows 64 bits", where, shape_str(parsed.info.shape),
              dtype_name(*dtype));
  const uint64_t span = static_cast<uint64_t>(*end - *begin);
  DSMOE_CHECK(*bytes == span, "{}: shape {} x {} ({} bytes) = {} bytes but data_offsets span {}",
              where, shape_str(parsed.info.shape), dtype_name(*dtype), elem, *bytes, span);
  parsed.begin = static_cast<uint64_t>(*begin);
  parsed.info.data = data + parsed.begin;
  parsed.info.nbytes = static_cast<size_t>(span);
  return parsed;
}

void parse_metadata(const std::string& path, const json& value,
                    std::map<std::string, std::string>* metadata) {
  DSMOE_CHECK(value.is_object(), "{}: __metadata__ is not a JSON object", path);
  for (const auto& [key, item] : value.items()) {
    DSMOE_CHECK(item.is_string(), "{}: __metadata__ '{}' is not a string", path, key);
    (*metadata)[key] = item.get<std::string>();
  }
}

// Sorted by offset, a tensor overlaps an earlier one exactly when it starts before the furthest
// end seen so far. Empty tensors occupy no bytes and may sit anywhere.
void check_no_overlap(const std::string& path, const std::vector<ParsedEntry>& sorted) {
  const ParsedEntry* furthest = nullptr;
  for (const ParsedEntry& e : sorted) {
    if (e.info.nbytes == 0) continue;
    if (furthest != nullptr) {
      DSMOE_CHECK(e.begin >= furthest->begin + furthest->info.nbytes,
                  "{}: tensors '{}' and '{}' overlap", path, furthest->info.name, e.info.name);
    }
    if (furthest == nullptr || e.begin + e.info.nbytes > furthest->begin + furthest->info.nbytes)
      furthest = &e;
  }
}

// Validates the header of a mapped file. Tensors come back in file order (by data offset, then
// by end, then by name) rather than header order, which JSON does not reliably preserve.
std::vector<TensorInfo> parse_header(const std::string& path, const uint8_t* base, size_t size,
                                     std::map<std::string, std::string>* metadata) {
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];  // little-endian
  DSMOE_CHECK(header_len <= size - 8, "{}: header length {} exceeds file size {}", path, header_len,
              size);
  const char* header = reinterpret_cast<const char*>(base + 8);
  json root;
  try {
    root = json::parse(header, header + header_len);
  } catch (const json::exception& e) {
    fail(fmt::format("{}: header is not valid JSON: {}", path, e.what()));
  }
  DSMOE_CHECK(root.is_object(), "{}: header is not a JSON object", path);

  const uint8_t* data = base + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  std::vector<ParsedEntry> entries;
  for (const auto& [name, value] : root.items()) {
    if (name == "__metadata__") {
      parse_metadata(path, value, metadata);
      continue;
    }
    entries.push_back(parse_entry(path, name, value, data, data_size));
  }
  std::sort(entries.begin(), entries.end(), [](const ParsedEntry& a, const ParsedEntry& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.info.nbytes != b.info.nbytes) return a.info.nbytes < b.info.nbytes;
    return a.info.name < b.info.name;
  });
  check_no_overlap(path, entries);
  std::vector<TensorInfo> tensors;
  tensors.reserve(entries.size());
  for (ParsedEntry& e : entries) tensors.push_back(std::move(e.info));
  return tensors;
}

json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  DSMOE_CHECK(in, "{}: cannot open: {}", path, errno_message());
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return json::parse(buffer.str());
  } catch (const json::exception& e) {
    fail(fmt::format("{}: not valid JSON: {}", path, e.what()));
  }
}

// The weight_map of an index file as tensor name -> shard path (joined onto dir).
std::map<std::string, std::string> read_weight_map(const fs::path& dir, const std::string& path) {
  json index = read_json_file(path);
  DSMOE_CHECK(index.is_object(), "{}: not a JSON object", path);
  auto map_it = index.find("weight_map");
  DSMOE_CHECK(map_it != index.end() && map_it->is_object(), "{}: missing 'weight_map' object",
              path);
  DSMOE_CHECK(!map_it->empty(), "{}: weight_map is empty", path);
  std::map<std::string, std::string> weight_map;
  for (const auto& [name, shard] : map_it->items()) {
    DSMOE_CHECK(shard.is_string(), "{}: weight_map entry '{}' is not a string", path, name);
    weight_map[name] = (dir / shard.get<std::string>()).string();
  }
  return weight_map;
}

// Every regular *.safetensors file directly in dir, sorted.
std::vector<std::string> glob_safetensors(const std::string& dir) {
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  DSMOE_CHECK(!ec, "{}: cannot list directory: {}", dir, ec.message());
  std::vector<std::string> paths;
  for (const fs::directory_entry& entry : it) {
    if (entry.path().extension() == ".safetensors" && entry.is_regular_file(ec))
      paths.push_back(entry.path().string());
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

// Writes the pieces to `<path>.tmp`, fsyncs it, renames it over `path`, then fsyncs the directory
// (best effort) so that the rename itself survives a crash.
void write_pieces_atomic(const std::string& path,
                         const std::vector<std::pair<const void*, size_t>>& pieces) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  DSMOE_CHECK(fd >= 0, "{}: cannot create: {}", tmp, errno_message());
  auto fail_and_unlink = [&](const char* what) {
    std::string message = fmt::format("{}: {}: {}", tmp, what, errno_message());
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    fail(message);
  };
  for (const auto& [ptr, len] : pieces) {
    const auto* bytes = static_cast<const uint8_t*>(ptr);
    size_t done = 0;
    while (done < len) {
      ssize_t n = ::write(fd, bytes + done, len - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail_and_unlink("write failed");
      done += static_cast<size_t>(n);
    }
  }
  if (::fsync(fd) != 0) fail_and_unlink("fsync failed");
  int closed = ::close(fd);
  fd = -1;
  if (closed != 0) fail_and_unlink("close failed");
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail_and_unlink("rename failed");

  std::string dir = fs::path(path).parent_path().string();
  int dir_fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);  // best effort: some filesystems refuse fsync on a directory
    ::close(dir_fd);
  }
}

// out[r][c] = f8[r][c] * scale[r / 128][c / 128], one row at a time.
void dequantize_f8(const uint8_t* src, const std::vector<float>& scale, int64_t rows, int64_t cols,
                   float* out) {
  const int64_t scale_cols = (cols + kScaleBlock - 1) / kScaleBlock;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float* row = out + r * cols;
    convert_to_f32(src + r * cols, DType::kF8_E4M3, static_cast<size_t>(cols), row);
    const float* scale_row = scale.data() + (r / kScaleBlock) * scale_cols;
    for (int64_t c = 0; c < cols; ++c) row[c] *= scale_row[c / kScaleBlock];
  }
}

}  // namespace

// ---- SafetensorsFile ----

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  FdCloser fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  DSMOE_CHECK(fd.fd >= 0, "{}: cannot open: {}", path, errno_message());
  struct stat st {};
  DSMOE_CHECK(::fstat(fd.fd, &st) == 0, "{}: cannot stat: {}", path, errno_message());
  DSMOE_CHECK(S_ISREG(st.st_mode), "{}: not a regular file", path);
  const size_t size = static_cast<size_t>(st.st_size);
  DSMOE_CHECK(size >= 8, "{}: file is {} bytes, too short for the 8-byte header length", path,
              size);
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.fd, 0);
  DSMOE_CHECK(map != MAP_FAILED, "{}: cannot mmap: {}", path, errno_message());
  map_ = map;
  map_size_ = size;
  // The destructor does not run when a constructor throws, so unmap here.
  try {
    tensors_ = parse_header(path, static_cast<const uint8_t*>(map_), map_size_, &metadata_);
  } catch (...) {
    ::munmap(map_, map_size_);
    throw;
  }
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

// ---- Checkpoint ----

Checkpoint::Checkpoint(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  DSMOE_CHECK(fs::is_directory(dir, ec), "{}: not a directory", dir);
  const std::string index_path = (fs::path(dir) / "model.safetensors.index.json").string();
  const std::string single_path = (fs::path(dir) / "model.safetensors").string();

  std::map<std::string, std::string> weight_map;
  std::vector<std::string> paths;
  if (fs::exists(index_path, ec)) {
    weight_map = read_weight_map(dir, index_path);
    for (const auto& [name, shard] : weight_map) paths.push_back(shard);
    std::sort(paths.begin(), paths.end());
    paths.erase(std::unique(paths.begin(), paths.end()), paths.end());  // each shard once
  } else if (fs::exists(single_path, ec)) {
    paths.push_back(single_path);
  } else {
    paths = glob_safetensors(dir);
  }
  DSMOE_CHECK(!paths.empty(),
              "{}: no model.safetensors, model.safetensors.index.json or *.safetensors found", dir);

  for (const std::string& path : paths) {
    files_.push_back(std::make_shared<SafetensorsFile>(path));
    const size_t file_index = files_.size() - 1;
    for (const TensorInfo& info : files_.back()->tensors()) {
      auto [it, inserted] = index_.try_emplace(info.name, file_index, &info);
      DSMOE_CHECK(inserted, "{}: tensor '{}' is in both {} and {}", dir, info.name,
                  it->second.second->file, info.file);
    }
  }
  for (const auto& [name, shard] : weight_map) {
    const TensorInfo* info = find(name);
    DSMOE_CHECK(info != nullptr && info->file == shard,
                "{}: weight_map puts tensor '{}' in {}, but that file does not contain it",
                index_path, name, shard);
  }
}

const TensorInfo* Checkpoint::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second.second;
}

const TensorInfo& Checkpoint::get(const std::string& name) const {
  const TensorInfo* info = find(name);
  DSMOE_CHECK(info != nullptr, "{}: missing tensor '{}'", dir_, name);
  return *info;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [name, entry] : index_) names.push_back(name);
  return names;
}

void Checkpoint::release(const std::string& name) const {
  const TensorInfo& info = get(name);
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(info.data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(info.data) + info.nbytes) / page * page;
  if (end > begin)  // advice only: a failure changes nothing but memory use
    ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

Tensor Checkpoint::load_f32(const std::string& name, const Shape& expected_shape) const {
  const TensorInfo& info = get(name);
  DSMOE_CHECK(info.shape == expected_shape, "{}: tensor '{}': expected shape {}, found {}",
              info.file, name, shape_str(expected_shape), shape_str(info.shape));
  DSMOE_CHECK(dtype_is_float(info.dtype), "{}: tensor '{}' has dtype {}, expected a floating type",
              info.file, name, dtype_name(info.dtype));

  if (info.dtype == DType::kF32 && reinterpret_cast<uintptr_t>(info.data) % alignof(float) == 0) {
    // The mapping is PROT_READ, so writing through this pointer would fault; weights are never
    // written, which is why casting away const is acceptable. The file (and its mapping) lives as
    // long as the returned tensor through Tensor::owner.
    const auto& file = files_[index_.at(name).first];
    return Tensor::view(const_cast<float*>(reinterpret_cast<const float*>(info.data)), info.shape,
                        file);
  }

  Tensor out = Tensor::zeros(info.shape);
  const size_t numel = static_cast<size_t>(out.numel());
  if (info.dtype != DType::kF8_E4M3) {
    convert_to_f32(info.data, info.dtype, numel, out.data);
    return out;
  }

  const std::vector<float> scale_values = f8_block_scales(name);
  dequantize_f8(info.data, scale_values, info.shape[0], info.shape[1], out.data);
  return out;
}

std::vector<float> Checkpoint::f8_block_scales(const std::string& name) const {
  const TensorInfo& info = get(name);
  DSMOE_CHECK(info.dtype == DType::kF8_E4M3, "{}: tensor '{}' has dtype {}, not F8_E4M3", info.file,
              name, dtype_name(info.dtype));
  DSMOE_CHECK(info.shape.size() == 2, "{}: tensor '{}': F8_E4M3 weights must be 2-D, found {}",
              info.file, name, shape_str(info.shape));
  const std::string suffix = ".weight";
  DSMOE_CHECK(name.size() >= suffix.size() && name.ends_with(suffix),
              "{}: tensor '{}' is F8_E4M3 but its name does not end in '.weight', so it has no "
              "scale",
              info.file, name);
  const std::string scale_name = name + "_scale_inv";  // "<prefix>.weight_scale_inv"
  const TensorInfo* scale = find(scale_name);
  DSMOE_CHECK(scale != nullptr, "{}: tensor '{}' is F8_E4M3 but its scale '{}' is missing",
              info.file, name, scale_name);
  const int64_t rows = info.shape[0], cols = info.shape[1];
  const Shape scale_shape = {(rows + kScaleBlock - 1) / kScaleBlock,
                             (cols + kScaleBlock - 1) / kScaleBlock};
  DSMOE_CHECK(scale->shape == scale_shape,
              "{}: tensor '{}' {}: scale '{}' has shape {}, expected {}", scale->file, name,
              shape_str(info.shape), scale_name, shape_str(scale->shape), shape_str(scale_shape));
  DSMOE_CHECK(scale->dtype == DType::kF32 || scale->dtype == DType::kBF16,
              "{}: scale '{}' has dtype {}, expected F32 or BF16", scale->file, scale_name,
              dtype_name(scale->dtype));
  std::vector<float> scale_values(static_cast<size_t>(shape_numel(scale_shape)));
  convert_to_f32(scale->data, scale->dtype, scale_values.size(), scale_values.data());
  return scale_values;
}

// ---- read_i64 ----

std::vector<int64_t> read_i64(const TensorInfo& info) {
  const size_t elem = dtype_size(info.dtype);
  const size_t n = info.nbytes / elem;
  std::vector<int64_t> values(n);
  if (info.dtype == DType::kI64) {
    if (n > 0) std::memcpy(values.data(), info.data, n * sizeof(int64_t));
  } else if (info.dtype == DType::kI32) {
    for (size_t i = 0; i < n; ++i) {
      int32_t v;
      std::memcpy(&v, info.data + i * sizeof v, sizeof v);
      values[i] = v;
    }
  } else {
    fail(fmt::format("{}: tensor '{}' has dtype {}, expected I64 or I32", info.file, info.name,
                     dtype_name(info.dtype)));
  }
  return values;
}

// ---- SafetensorsWriter ----

void SafetensorsWriter::add(const std::string& name, DType dtype, const Shape& shape,
                            const void* data) {
  DSMOE_CHECK(name != "__metadata__", "safetensors: '__metadata__' is reserved, not a tensor name");
  // A linear scan: writers hold at most a few thousand tensors, and the header keeps no set.
  for (const Entry& e : entries_)
    DSMOE_CHECK(e.name != name, "safetensors: tensor '{}' added twice", name);
  for (int64_t d : shape)
    DSMOE_CHECK(d >= 0, "safetensors: tensor '{}': negative dimension in {}", name,
                shape_str(shape));
  std::optional<uint64_t> bytes = shape_bytes(shape, dtype_size(dtype));
  DSMOE_CHECK(bytes, "safetensors: tensor '{}': shape {} overflows", name, shape_str(shape));
  DSMOE_CHECK(*bytes == 0 || data != nullptr, "safetensors: tensor '{}': null data", name);
  Entry entry{name, dtype, shape, {}};
  if (*bytes > 0) {
    const auto* src = static_cast<const uint8_t*>(data);
    entry.bytes.assign(src, src + *bytes);
  }
  entries_.push_back(std::move(entry));
}

void SafetensorsWriter::write(const std::string& path) const {
  // ordered_json keeps __metadata__ first and tensors in the order added, for human readers.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  uint64_t offset = 0;
  for (const Entry& e : entries_) {
    header[e.name] = {{"dtype", dtype_name(e.dtype)},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + e.bytes.size()}}};
    offset += e.bytes.size();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    fail(fmt::format("{}: cannot encode the safetensors header: {}", path, e.what()));
  }
  // Padding the header to a multiple of 8 starts the data section 8-byte aligned in the file.
  text.append((8 - text.size() % 8) % 8, ' ');
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(text.size() >> (8 * i));

  std::vector<std::pair<const void*, size_t>> pieces = {{length, sizeof length},
                                                        {text.data(), text.size()}};
  for (const Entry& e : entries_) pieces.emplace_back(e.bytes.data(), e.bytes.size());
  write_pieces_atomic(path, pieces);
}

void write_file_atomic(const std::string& path, const std::string& text) {
  write_pieces_atomic(path, {{text.data(), text.size()}});
}

}  // namespace dsmoe
