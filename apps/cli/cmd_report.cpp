// cmd_report.cpp: dsmoe report --run DIR [--out DIR]; dsmoe corpus --out FILE [--bytes N]
#include <memory>

#include "apps/cli/commands.h"
#include "io/safetensors.h"
#include "train/corpus.h"
#include "train/report.h"
#include "util/log.h"

namespace dsmoe::cli {

Command add_report(CLI::App& app) {
  auto run_dir = std::make_shared<std::string>();
  auto out_dir = std::make_shared<std::string>();
  app.add_option("--run", *run_dir, "a dsmoe train output directory (metrics.jsonl)")->required();
  app.add_option("--out", *out_dir, "where to write the pictures (default: RUN/report)");
  return [run_dir, out_dir] {
    const std::string report = write_report(*run_dir, *out_dir);
    log_info("wrote {} (loss.png, expert_load.png, expert_bias.png beside it)", report);
    return 0;
  };
}

Command add_corpus(CLI::App& app) {
  auto out = std::make_shared<std::string>();
  auto bytes = std::make_shared<int64_t>(400000);
  auto seed = std::make_shared<uint64_t>(0);
  app.add_option("--out", *out, "text file to write")->required();
  app.add_option("--bytes", *bytes, "approximate size (default 400000)");
  app.add_option("--seed", *seed, "seed (default 0)");
  return [out, bytes, seed] {
    write_file_atomic(*out, generate_corpus(*bytes, *seed));
    log_info("wrote {}: {} bytes of mixed prose, arithmetic, code, JSON records and DNA", *out,
             *bytes);
    return 0;
  };
}

}  // namespace dsmoe::cli
