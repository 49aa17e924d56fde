#include "train/report.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "util/check.h"
#include "util/log.h"

namespace dsmoe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::vector<json> read_metrics(const std::string& path) {
  std::ifstream in(path);
  DSMOE_CHECK(in.good(), "{}: cannot open (is this a dsmoe train output directory?)", path);
  std::vector<json> lines;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    number++;
    if (line.empty()) continue;
    json j = json::parse(line, nullptr, false);
    DSMOE_CHECK(!j.is_discarded() && j.contains("step"), "{}:{}: not a metrics line", path, number);
    lines.push_back(std::move(j));
  }
  DSMOE_CHECK(!lines.empty(), "{}: no metrics yet", path);
  return lines;
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  DSMOE_CHECK(out.good(), "{}: cannot write", path.string());
  out << text;
}

// The MoE layers that appear in the metrics, in order.
std::vector<std::string> moe_layers(const std::vector<json>& lines, const char* key) {
  std::vector<std::string> layers;
  for (const json& line : lines)
    if (line.contains(key))
      for (auto& [layer, values] : line[key].items())
        if (std::find(layers.begin(), layers.end(), layer) == layers.end()) layers.push_back(layer);
  std::sort(layers.begin(), layers.end(),
            [](auto& a, auto& b) { return std::stoi(a) < std::stoi(b); });
  return layers;
}

std::string loss_plot(const std::vector<json>& lines, const fs::path& dir) {
  std::string data = "# step loss aux_loss lr load_max_over_mean\n";
  for (const json& l : lines)
    data += fmt::format("{} {} {} {} {}\n", l["step"].get<int64_t>(), l.value("loss", 0.0),
                        l.value("aux_loss", 0.0), l.value("lr", 0.0),
                        l.value("load_max_over_mean", 0.0));
  write_file(dir / "loss.dat", data);
  return "set terminal pngcairo size 1000,700\nset output 'loss.png'\n"
         "set multiplot layout 2,1 title 'dsmoe training run'\n"
         "set xlabel 'step'\nset ylabel 'loss (nats/token)'\nset y2label 'balance loss'\n"
         "set y2tics\nset grid\n"
         "plot 'loss.dat' using 1:2 with lines lw 2 title 'cross-entropy', "
         "'' using 1:3 axes x1y2 with lines title 'balance (aux) loss'\n"
         "unset y2tics\nunset y2label\nset ylabel 'max / mean expert load'\nset y2label 'lr'\n"
         "set y2tics\n"
         "plot 'loss.dat' using 1:5 with lines lw 2 title 'worst layer max/mean load', "
         "'' using 1:4 axes x1y2 with lines title 'learning rate'\n"
         "unset multiplot\n";
}

// One heatmap per layer: x = step, y = expert, colour = share of the layer's assignments.
std::string load_plot(const std::vector<json>& lines, const std::vector<std::string>& layers,
                      const fs::path& dir) {
  std::string script = fmt::format(
      "reset\nset terminal pngcairo size 1000,{}\nset output 'expert_load.png'\n"
      "set autoscale xfix\nset autoscale yfix\nset multiplot layout {},1 title 'expert load (share "
      "of assignments) over training'\n"
      "set palette rgb 33,13,10\nset xlabel 'step'\nset ylabel 'expert'\nset cblabel 'load "
      "share'\n",
      std::max<size_t>(350, 300 * layers.size()), layers.size());
  for (const std::string& layer : layers) {
    std::string data;
    for (const json& l : lines) {
      if (!l.contains("expert_load") || !l["expert_load"].contains(layer)) continue;
      const std::vector<int64_t> load = l["expert_load"][layer].get<std::vector<int64_t>>();
      int64_t total = 0;
      for (int64_t x : load) total += x;
      for (size_t e = 0; e < load.size(); e++)
        data += fmt::format("{} {} {}\n", l["step"].get<int64_t>(), e,
                            total > 0 ? static_cast<double>(load[e]) / total : 0.0);
      data += "\n";
    }
    write_file(dir / ("load_" + layer + ".dat"), data);
    script += fmt::format(
        "set title 'layer {}'\nplot 'load_{}.dat' using 1:2:3 with image notitle\n", layer, layer);
  }
  return script + "unset multiplot\n";
}

std::string bias_plot(const std::vector<json>& lines, const std::vector<std::string>& layers,
                      const fs::path& dir) {
  std::string script = fmt::format(
      "reset\nset terminal pngcairo size 1000,{}\nset output 'expert_bias.png'\n"
      "set multiplot layout {},1 title 'router bias (aux-loss-free balancing) per expert'\n"
      "set xlabel 'step'\nset ylabel 'bias'\nset grid\nset key off\n",
      std::max<size_t>(350, 300 * layers.size()), layers.size());
  for (const std::string& layer : layers) {
    std::string data;
    size_t n_experts = 0;
    for (const json& l : lines) {
      if (!l.contains("expert_bias") || !l["expert_bias"].contains(layer)) continue;
      const std::vector<double> bias = l["expert_bias"][layer].get<std::vector<double>>();
      n_experts = bias.size();
      data += std::to_string(l["step"].get<int64_t>());
      for (double b : bias) data += fmt::format(" {}", b);
      data += "\n";
    }
    write_file(dir / ("bias_" + layer + ".dat"), data);
    script +=
        fmt::format("set title 'layer {}'\nplot for [e=2:{}] 'bias_{}.dat' using 1:e with lines\n",
                    layer, n_experts + 1, layer);
  }
  return script + "unset multiplot\n";
}

// The metrics lines with a "parallel" object (training under mpirun), and their rank count.
std::vector<const json*> parallel_lines(const std::vector<json>& lines, int64_t& n_ranks) {
  std::vector<const json*> out;
  n_ranks = 0;
  for (const json& l : lines)
    if (l.contains("parallel") && l["parallel"].is_object()) {
      out.push_back(&l);
      n_ranks = std::max(n_ranks, l["parallel"].value("ranks", int64_t{0}));
    }
  return out;
}

// One of the parallel object's per-rank quantities of rank r (0 when missing).
double per_rank(const json& parallel, const char* key, int64_t r) {
  if (!parallel.contains(key) || !parallel[key].contains("per_rank")) return 0.0;
  const json& values = parallel[key]["per_rank"];
  return r < static_cast<int64_t>(values.size()) ? values[r].get<double>() : 0.0;
}

// Columns of parallel.dat: 1 step, 2 step seconds, 3 tokens received max / mean over ranks,
// 4 comm seconds max over ranks, 5 mean, 6 ranks reached per token, then per rank r four
// columns from 7 + 4 r: tokens received, a2a bytes sent, a2a bytes received, comm seconds.
constexpr int kFirstRankColumn = 7;
constexpr int kColumnsPerRank = 4;
constexpr const char* kPerRankKeys[kColumnsPerRank] = {"tokens_received", "a2a_bytes_sent",
                                                       "a2a_bytes_received", "comm_seconds"};

void write_parallel_data(const std::vector<const json*>& lines, int64_t n_ranks,
                         const fs::path& dir) {
  std::string data =
      "# step step_seconds tokens_received_max/mean comm_seconds_max comm_seconds_mean "
      "ranks_per_token, then per rank: tokens_received a2a_bytes_sent a2a_bytes_received "
      "comm_seconds\n";
  for (const json* l : lines) {
    const json& p = (*l)["parallel"];
    const double mean_tokens =
        p.contains("tokens_received") ? p["tokens_received"].value("mean", 0.0) : 0.0;
    const double max_tokens =
        p.contains("tokens_received") ? p["tokens_received"].value("max", 0.0) : 0.0;
    const json comm = p.value("comm_seconds", json::object());
    data +=
        fmt::format("{} {} {} {} {} {}", (*l)["step"].get<int64_t>(), l->value("step_seconds", 0.0),
                    mean_tokens > 0 ? max_tokens / mean_tokens : 0.0, comm.value("max", 0.0),
                    comm.value("mean", 0.0), p.value("ranks_per_token", 0.0));
    for (int64_t r = 0; r < n_ranks; r++)
      for (const char* key : kPerRankKeys) data += fmt::format(" {}", per_rank(p, key, r));
    data += "\n";
  }
  write_file(dir / "parallel.dat", data);
}

// Three pictures of the all-to-all traffic of a run under mpirun: bytes per rank and step,
// tokens each rank's experts received (and their max / mean: the imbalance), time in
// communication against the step time.
std::string parallel_plots(const std::vector<const json*>& lines, int64_t n_ranks,
                           const fs::path& dir) {
  write_parallel_data(lines, n_ranks, dir);
  const int last = static_cast<int>(n_ranks) - 1;
  auto column = [](int k) {
    return fmt::format("(column({} + {}*r))", kFirstRankColumn + k, kColumnsPerRank);
  };
  std::string script = fmt::format(
      "reset\nset terminal pngcairo size 1000,700\nset output 'a2a_bytes.png'\n"
      "set multiplot layout 2,1 title 'all-to-all traffic per rank ({} ranks)'\n"
      "set xlabel 'step'\nset grid\nset key outside right\n"
      "set ylabel 'bytes sent'\n"
      "plot for [r=0:{}] 'parallel.dat' using 1:{} with linespoints title sprintf('rank %d', r)\n"
      "set ylabel 'bytes received'\n"
      "plot for [r=0:{}] 'parallel.dat' using 1:{} with linespoints title sprintf('rank %d', r)\n"
      "unset multiplot\n",
      n_ranks, last, column(1), last, column(2));
  script += fmt::format(
      "reset\nset terminal pngcairo size 1000,500\nset output 'tokens_received.png'\n"
      "set title 'tokens received by each rank''s experts'\nset xlabel 'step'\nset grid\n"
      "set key outside right\nset ylabel 'tokens (rows) received'\n"
      "set y2label 'max / mean over ranks'\nset y2tics\nset ytics nomirror\n"
      "plot for [r=0:{}] 'parallel.dat' using 1:{} with linespoints title sprintf('rank %d', r), "
      "'' using 1:3 axes x1y2 with lines lw 2 dt 2 title 'max/mean'\n",
      last, column(0));
  script += fmt::format(
      "reset\nset terminal pngcairo size 1000,500\nset output 'comm_time.png'\n"
      "set title 'time in communication per step (collectives, waiting included)'\n"
      "set xlabel 'step'\nset ylabel 'seconds'\nset grid\nset key outside right\n"
      "plot 'parallel.dat' using 1:2 with lines lw 2 title 'step time', "
      "for [r=0:{}] '' using 1:{} with linespoints title sprintf('comm, rank %d', r)\n",
      last, column(3));
  return script;
}

std::string token_label(int64_t token) {
  if (token >= 33 && token < 127 && token != '|' && token != '`')
    return std::string(1, static_cast<char>(token));
  if (token == ' ') return "␠";
  if (token == '\n') return "\\n";
  return fmt::format("0x{:02x}", token);
}

// Markdown: the tokens each expert took most at the last analytics step.
std::string expert_tokens_markdown(const std::vector<json>& lines) {
  const json* last = nullptr;
  for (const json& l : lines)
    if (l.contains("expert_tokens")) last = &l;
  if (last == nullptr) return "No routing analytics recorded (train with --analytics-every N).\n";
  std::string md = fmt::format(
      "Tokens each expert took most often in the batch of step {} "
      "(byte tokens; count in parentheses):\n\n",
      (*last)["step"].get<int64_t>());
  for (auto& [layer, experts] : (*last)["expert_tokens"].items()) {
    md += fmt::format("### Layer {}\n\n| expert | top tokens |\n| --- | --- |\n", layer);
    for (size_t e = 0; e < experts.size(); e++) {
      std::string cells;
      for (const json& pair : experts[e])
        cells +=
            fmt::format("`{}` ({}) ", token_label(pair[0].get<int64_t>()), pair[1].get<int64_t>());
      md += fmt::format("| {} | {}|\n", e, cells);
    }
    md += "\n";
  }
  return md;
}

}  // namespace

std::string write_report(const std::string& run_dir, const std::string& out_dir, bool run_gnuplot) {
  const std::vector<json> lines = read_metrics(run_dir + "/metrics.jsonl");
  const fs::path dir = out_dir.empty() ? fs::path(run_dir) / "report" : fs::path(out_dir);
  fs::create_directories(dir);
  const std::vector<std::string> load_layers = moe_layers(lines, "expert_load");
  const std::vector<std::string> bias_layers = moe_layers(lines, "expert_bias");
  std::string script = loss_plot(lines, dir);
  std::string md = fmt::format("# Training report: {}\n\n![loss](loss.png)\n\n", run_dir);
  if (!load_layers.empty()) {
    script += load_plot(lines, load_layers, dir);
    md += "![expert load](expert_load.png)\n\n";
  }
  if (!bias_layers.empty()) {
    script += bias_plot(lines, bias_layers, dir);
    md += "![router bias](expert_bias.png)\n\n";
  }
  int64_t n_ranks = 0;
  const std::vector<const json*> traffic = parallel_lines(lines, n_ranks);
  if (!traffic.empty() && n_ranks > 0) {
    script += parallel_plots(traffic, n_ranks, dir);
    md += fmt::format(
        "## Communication ({} ranks)\n\n![all-to-all bytes](a2a_bytes.png)\n\n"
        "![tokens received](tokens_received.png)\n\n![communication time](comm_time.png)\n\n",
        n_ranks);
  }
  const json& last = lines.back();
  md += fmt::format(
      "Final step {}: loss {:.4f}, balance loss {:.6f}, worst max/mean expert load "
      "{:.2f}.\n\n## Expert specialisation\n\n",
      last["step"].get<int64_t>(), last.value("loss", 0.0), last.value("aux_loss", 0.0),
      last.value("load_max_over_mean", 0.0));
  md += expert_tokens_markdown(lines);
  write_file(dir / "plots.gp", script);
  write_file(dir / "report.md", md);
  if (!run_gnuplot) return (dir / "report.md").string();
  const std::string command = fmt::format("cd '{}' && gnuplot plots.gp", dir.string());
  const int rc = std::system(command.c_str());
  DSMOE_CHECK(rc == 0,
              "gnuplot failed (exit {}) on {}/plots.gp; is gnuplot installed "
              "(apt-get install gnuplot-nox)?",
              rc, dir.string());
  return (dir / "report.md").string();
}

}  // namespace dsmoe
