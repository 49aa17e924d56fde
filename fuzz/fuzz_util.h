// fuzz_util.h: what the fuzz targets share: a scratch directory of this process (in /dev/shm when
// it exists, removed at a normal exit) for parsers that read files.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace dsmoe::fuzz {

inline void remove_scratch_dir();

// Removed when the process exits normally (a crash leaves it, with the input that caused it).
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    const std::filesystem::path base =
        std::filesystem::exists("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path();
    std::filesystem::path path = base / ("dsmoe_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
    return path;
  }();
  // Registered after `dir` is constructed, so that it runs before `dir` is destroyed.
  static const bool removed_at_exit = (std::atexit(remove_scratch_dir), true);
  (void)removed_at_exit;
  return dir;
}

inline void remove_scratch_dir() {
  std::error_code ignored;
  std::filesystem::remove_all(scratch_dir(), ignored);
}

inline std::string write_scratch(const std::string& name, std::string_view bytes) {
  const std::string path = (scratch_dir() / name).string();
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size());
  return path;
}

inline std::string_view as_view(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

}  // namespace dsmoe::fuzz
