// moeproxy predict: the deck through the performance model (core/perf_model.hpp) for a machine
// file, on one process; the same console report and results file as a run, marked predicted.

#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "commands.hpp"
#include "moeproxy/core/perf_model.hpp"
#include "moeproxy/io/deck.hpp"
#include "moeproxy/io/machine.hpp"
#include "moeproxy/io/report.hpp"
#include "moeproxy/io/results.hpp"
#include "version.hpp"

namespace moeproxy::app {

namespace {

// Beside the deck's measured results, never over them: results/x.h5 -> results/x-predicted.h5.
std::string default_output(const std::string& measured) {
  const std::filesystem::path p(measured);
  return (p.parent_path() / (p.stem().string() + "-predicted" + p.extension().string())).string();
}

io::PhaseStats stats(const std::vector<RankMetrics>& ranks, const PhaseTable RankMetrics::*table) {
  io::PhaseStats s;
  s.min.assign(phase_count, 0.0);
  s.max.assign(phase_count, 0.0);
  s.mean.assign(phase_count, 0.0);
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    const PhaseTable& t = ranks[r].*table;
    for (int p = 0; p < phase_count; ++p) {
      double sum = 0.0;
      for (int l = 0; l < t.layers(); ++l) sum += t.at(l, static_cast<Phase>(p));
      s.min[p] = r == 0 ? sum : std::min(s.min[p], sum);
      s.max[p] = std::max(s.max[p], sum);
      s.mean[p] += sum / ranks.size();
    }
  }
  return s;
}

std::string command_line(int argc, char** argv) {
  std::string s;
  for (int i = 0; i < argc; ++i) s += (i ? " " : "") + std::string(argv[i]);
  return s;
}

}  // namespace

CLI::App* add_predict(CLI::App& app, PredictOptions& opt) {
  auto* cmd = app.add_subcommand("predict",
                                 "Predict a deck's timings, memory and communication on a described machine\n"
                                 "with the performance model (one process, seconds; docs/predict.md).");
  cmd->add_option("deck", opt.deck, "TOML input deck")->required();
  cmd->add_option("--machine", opt.machine, "Machine file (inputs/machines/*.toml)")->required();
  cmd->add_option("--ranks", opt.ranks, "Ranks to predict for (default: the deck's dp x tp x pp x m x n, "
                                        "or attn_ranks + the expert ranks (expert_map's, else ep) with separation)")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--set", opt.sets, "Override a deck key: --set section.key=value (repeatable)");
  cmd->add_option("--out", opt.out, "Results file (default: output.file with -predicted before the extension)");
  return cmd;
}

int predict_command(const PredictOptions& opt, int argc, char** argv) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) return 0;  // one process models every rank
  RunConfig cfg;
  MachineSpec machine;
  Prediction prediction;
  std::string file;
  try {
    cfg = io::load_deck(opt.deck, opt.sets);
    file = opt.out.empty() ? default_output(cfg.output.file) : opt.out;
    if (const std::string error = io::results_path_error(file); !error.empty())
      throw InputError("results file " + file + " " + error);
    machine = io::load_machine(opt.machine);
    const int ranks = opt.ranks > 0 ? opt.ranks : deck_ranks(cfg.parallel);
    prediction = predict(cfg, machine, ranks);
  } catch (const InputError& e) {
    std::cerr << "moeproxy: input error: " << e.what() << "\n";
    return 2;
  }

  io::RunInfo info;
  info.app_version = version();
  info.git_sha = git_sha();
  info.command_line = command_line(argc, argv);
  info.layout = prediction.layout;
  info.host = "predicted";
  info.device = machine.name;
  info.predicted = true;
  io::ExpertCounts experts;
  if (cfg.model.is_moe()) {
    experts.layers = cfg.model.layers;
    experts.experts = cfg.model.experts;
    experts.tokens = prediction.expert_tokens;
  }
  io::write_predicted_results(file, cfg, info, prediction.per_rank, prediction.summary, experts);

  io::ReportInput report;
  report.app_version = version();
  report.git_sha = git_sha();
  report.backend = "PREDICTED for " + machine.name;
  report.layout = prediction.layout;
  report.output_file = file;
  report.ranks = prediction.ranks;
  report.prefill = stats(prediction.per_rank, &RankMetrics::prefill);
  report.decode = stats(prediction.per_rank, &RankMetrics::decode);
  std::uint64_t largest = 0;
  for (const RankMetrics& r : prediction.per_rank)
    for (int k = 0; k < memory_kind_count; ++k) {
      report.max_memory[k] = std::max(report.max_memory[k], r.memory[k]);
      if (k == static_cast<int>(MemoryKind::high_water)) largest = std::max(largest, r.memory[k]);
    }
  std::cout << "[moeproxy] predicted, not run: " << cfg.deck_path << " on " << prediction.ranks << " ranks of "
            << machine.name << "\n";
  for (const std::string& a : prediction.assumptions) std::cout << "[moeproxy] model: " << a << "\n";
  char fits[160];
  std::snprintf(fits, sizeof fits, "[moeproxy] memory: largest rank needs %.1f GB of %.1f GB per device: %s\n",
                largest / 1e9, machine.memory_bytes / 1e9,
                largest <= machine.memory_bytes ? "fits" : "DOES NOT FIT");
  std::cout << fits;
  io::print_report(std::cout, cfg, prediction.summary, report);
  return 0;
}

}  // namespace moeproxy::app
