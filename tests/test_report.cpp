// test_report.cpp: `dsmoe report` (train/report.h) on hand-written metrics.jsonl files: the
// communication plots of a run under mpirun (metrics lines with a "parallel" object) are written,
// and only for such a run; gnuplot, where installed, draws every picture from the script.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "test_util.h"
#include "train/report.h"

namespace dsmoe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int64_t kSteps = 3;

// A per-rank quantity as TrainParallel::step_traffic writes it.
json per_rank_entry(const std::vector<double>& values) {
  double max = 0.0, mean = 0.0;
  for (double v : values) max = std::max(max, v), mean += v / static_cast<double>(values.size());
  return {{"per_rank", values}, {"max", max}, {"mean", mean}};
}

// A metrics.jsonl of kSteps steps; with n_ranks > 1 each line has a "parallel" object.
std::string metrics_text(int n_ranks) {
  std::string text;
  for (int64_t step = 1; step <= kSteps; step++) {
    json line = {{"step", step},
                 {"loss", 5.0 - 0.1 * step},
                 {"aux_loss", 0.01},
                 {"lr", 1e-3},
                 {"tokens_per_s", 1000.0},
                 {"step_seconds", 0.25},
                 {"load_max_over_mean", 1.5},
                 {"expert_load", {{"1", {10, 20, 30, 40}}}}};
    if (n_ranks > 1) {
      std::vector<double> tokens, sent, received, comm;
      for (int r = 0; r < n_ranks; r++) {
        tokens.push_back(100.0 + 10 * r + step);
        sent.push_back(2000.0 * (r + 1));
        received.push_back(1800.0 * (r + 1));
        comm.push_back(0.05 * (r + 1));
      }
      line["parallel"] = {{"ranks", n_ranks},
                          {"ranks_per_token", 1.4},
                          {"max_ranks_per_token", 2},
                          {"tokens_received", per_rank_entry(tokens)},
                          {"a2a_bytes_sent", per_rank_entry(sent)},
                          {"a2a_bytes_received", per_rank_entry(received)},
                          {"comm_seconds", per_rank_entry(comm)}};
    }
    text += line.dump() + "\n";
  }
  return text;
}

// The whitespace-separated fields of each non-comment line of a .dat file.
std::vector<std::vector<std::string>> data_rows(const std::string& path) {
  std::vector<std::vector<std::string>> rows;
  std::istringstream lines(read_bytes(path));
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::vector<std::string> row;
    for (std::string field; fields >> field;) row.push_back(field);
    rows.push_back(row);
  }
  return rows;
}

bool gnuplot_installed() { return std::system("command -v gnuplot > /dev/null 2>&1") == 0; }

const char* kTrafficPictures[] = {"a2a_bytes.png", "tokens_received.png", "comm_time.png"};

TEST(Report, ParallelRunGetsTrafficDataAndPlots) {
  TempDir dir;
  write_text(dir / "metrics.jsonl", metrics_text(2));
  const std::string report = write_report(dir.str(), dir / "out", /*run_gnuplot=*/false);
  const std::vector<std::vector<std::string>> rows = data_rows(dir / "out/parallel.dat");
  ASSERT_EQ(rows.size(), static_cast<size_t>(kSteps));
  // 6 columns, then 4 per rank: tokens received, bytes sent, bytes received, comm seconds.
  ASSERT_EQ(rows[0].size(), 6u + 2 * 4);
  EXPECT_EQ(rows[0][0], "1");
  EXPECT_DOUBLE_EQ(std::stod(rows[0][1]), 0.25);                         // step seconds
  EXPECT_DOUBLE_EQ(std::stod(rows[0][2]), 111.0 / ((101 + 111) / 2.0));  // max / mean tokens
  EXPECT_DOUBLE_EQ(std::stod(rows[0][6 + 4 + 1]), 4000.0);               // rank 1's bytes sent
  EXPECT_DOUBLE_EQ(std::stod(rows[0][6 + 4 + 3]), 0.1);                  // rank 1's comm seconds
  const std::string script = read_bytes(dir / "out/plots.gp");
  for (const char* picture : kTrafficPictures)
    EXPECT_NE(script.find(picture), std::string::npos) << picture;
  EXPECT_NE(read_bytes(report).find("## Communication (2 ranks)"), std::string::npos);
}

TEST(Report, SingleProcessRunHasNoTrafficPlots) {
  TempDir dir;
  write_text(dir / "metrics.jsonl", metrics_text(1));
  const std::string report = write_report(dir.str(), dir / "out", /*run_gnuplot=*/false);
  EXPECT_TRUE(fs::exists(dir / "out/loss.dat"));
  EXPECT_TRUE(fs::exists(dir / "out/plots.gp"));
  EXPECT_FALSE(fs::exists(dir / "out/parallel.dat"));
  const std::string script = read_bytes(dir / "out/plots.gp");
  for (const char* picture : kTrafficPictures)
    EXPECT_EQ(script.find(picture), std::string::npos) << picture;
  EXPECT_EQ(read_bytes(report).find("Communication"), std::string::npos);
}

// The script gnuplot runs: every picture is drawn (4 ranks), none of the traffic ones without.
TEST(Report, GnuplotDrawsTheTrafficPictures) {
  if (!gnuplot_installed()) GTEST_SKIP() << "gnuplot is not installed";
  for (int n_ranks : {1, 4}) {
    TempDir dir(std::to_string(n_ranks));
    write_text(dir / "metrics.jsonl", metrics_text(n_ranks));
    write_report(dir.str(), dir / "out");
    EXPECT_GT(fs::file_size(dir / "out/loss.png"), 0u);
    for (const char* picture : kTrafficPictures) {
      const fs::path path = fs::path(dir / "out") / picture;
      if (n_ranks > 1)
        EXPECT_TRUE(fs::exists(path) && fs::file_size(path) > 0) << path;
      else
        EXPECT_FALSE(fs::exists(path)) << path;
    }
  }
}

}  // namespace
}  // namespace dsmoe
