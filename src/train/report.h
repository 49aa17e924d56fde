// report.h: turns a training run's metrics.jsonl into pictures a person can open (gnuplot):
// loss curves, the expert-load heatmap of each MoE layer, router-bias trajectories, and a
// Markdown page with the tokens each expert takes; under mpirun, the all-to-all traffic.
#pragma once
#include <string>

namespace dsmoe {

// Reads run_dir/metrics.jsonl, writes out_dir/{loss.png, expert_load.png, expert_bias.png,
// report.md} (and the .dat / .gp files behind them). Returns the path of report.md. A run under
// mpirun (metrics lines with a "parallel" object) also gets a2a_bytes.png (all-to-all bytes sent
// and received per rank and step), tokens_received.png (rows each rank's experts took, and
// their max / mean over ranks) and comm_time.png (time in collectives per rank against the step
// time), from parallel.dat. The data and plots.gp are written first; run_gnuplot false stops
// there (else a failing or missing gnuplot is an error after they are written).
std::string write_report(const std::string& run_dir, const std::string& out_dir,
                         bool run_gnuplot = true);

}  // namespace dsmoe
