// report.h: turns a training run's metrics.jsonl into pictures a person can open (gnuplot):
// loss curves, the expert-load heatmap of each MoE layer, router-bias trajectories, and a
// Markdown page with the tokens each expert takes.
#pragma once
#include <string>

namespace dsmoe {

// Reads run_dir/metrics.jsonl, writes out_dir/{loss.png, expert_load.png, expert_bias.png,
// report.md} (and the .dat / .gp files behind them). Returns the path of report.md.
std::string write_report(const std::string& run_dir, const std::string& out_dir);

}  // namespace dsmoe
