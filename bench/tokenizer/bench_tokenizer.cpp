// bench_tokenizer.cpp: encoding speed of dsmoe's tokenizer.json tokenizer on one thread.
//   bench_tokenizer TOKENIZER_DIR FILE [PASSES] [whole|lines]
// Loads the tokenizer (timed), encodes the file PASSES times (default 3; the first pass starts
// with an empty piece cache), either as one string (whole, the default) or line by line (lines:
// each line with its '\n', one encode call each), and prints one JSON line: load seconds, MB/s of
// each pass and their median, the token count and a hash of the ids (bench/tokenizer/run.sh checks
// that Hugging Face tokenizers gives the same ids).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "text/tokenizer.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// CPU seconds of the whole process (as node's process.cpuUsage()): on a shared, busy machine the
// wall clock also counts the time other processes held the core.
double process_cpu_seconds() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

std::string json_list(const std::vector<double>& values) {
  std::string list;
  for (const double value : values) list += (list.empty() ? "" : ", ") + std::to_string(value);
  return "[" + list + "]";
}

// The same hash as hf_tokenizers.js: h = h * 31 + id (mod 2^32).
uint32_t hash_ids(const std::vector<int64_t>& ids) {
  uint32_t hash = 0;
  for (const int64_t id : ids) hash = hash * 31u + static_cast<uint32_t>(id);
  return hash;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: bench_tokenizer TOKENIZER_DIR FILE [PASSES] [whole|lines]\n");
    return 2;
  }
  const int passes = argc > 3 ? std::max(1, std::atoi(argv[3])) : 3;
  const std::string mode = argc > 4 ? argv[4] : "whole";
  if (mode != "whole" && mode != "lines") {
    std::fprintf(stderr, "bench_tokenizer: mode '%s' is not whole or lines\n", mode.c_str());
    return 2;
  }
  std::ifstream in(argv[2], std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "bench_tokenizer: cannot open %s\n", argv[2]);
    return 1;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  const double megabytes = static_cast<double>(text.size()) / 1e6;
  std::vector<std::string_view> lines;
  for (size_t start = 0; start < text.size();) {
    const size_t end = std::min(text.find('\n', start), text.size() - 1) + 1;
    lines.push_back(std::string_view(text).substr(start, end - start));
    start = end;
  }

  try {
    const auto load_start = std::chrono::steady_clock::now();
    const auto tokenizer = dsmoe::text::Tokenizer::load(argv[1]);
    const double load_seconds = seconds_since(load_start);
    std::vector<double> mb_per_s, mb_per_cpu_s;
    std::vector<int64_t> ids;
    for (int pass = 0; pass < passes; ++pass) {
      const auto start = std::chrono::steady_clock::now();
      const double cpu_start = process_cpu_seconds();
      if (mode == "whole") {
        ids = tokenizer.encode(text);
      } else {
        ids.clear();
        for (const std::string_view line : lines) {
          const std::vector<int64_t> line_ids = tokenizer.encode(line);
          ids.insert(ids.end(), line_ids.begin(), line_ids.end());
        }
      }
      mb_per_s.push_back(megabytes / seconds_since(start));
      mb_per_cpu_s.push_back(megabytes / (process_cpu_seconds() - cpu_start));
    }
    std::printf(
        "{\"impl\": \"dsmoe\", \"mode\": \"%s\", \"load_s\": %.3f, \"bytes\": %zu, \"tokens\": "
        "%zu, \"ids_hash\": %u, "
        "\"mb_per_s_passes\": %s, \"mb_per_s_median\": %.3f, \"mb_per_cpu_s_passes\": %s, "
        "\"mb_per_cpu_s_median\": %.3f}\n",
        mode.c_str(), load_seconds, text.size(), ids.size(), hash_ids(ids), json_list(mb_per_s).c_str(),
        median(mb_per_s), json_list(mb_per_cpu_s).c_str(), median(mb_per_cpu_s));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 1;
  }
  return 0;
}
