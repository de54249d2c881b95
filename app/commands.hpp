#pragma once
// Subcommands that live in their own files, so that main.cpp stays a driver.

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace moeproxy::app {

struct PredictOptions {
  std::string deck, machine, out;
  std::vector<std::string> sets;
  int ranks = 0;  // 0: the deck's own rank count
};

// `moeproxy predict`: the performance model on one process (docs/predict.md). Returns the
// exit code: 0, or 2 for bad input.
CLI::App* add_predict(CLI::App& app, PredictOptions& opt);
int predict_command(const PredictOptions& opt, int argc, char** argv);

struct CalibrateOptions {
  std::string out;
  std::string name;
  double seconds = 0.2;  // per measurement
  std::vector<double> sweeps_mib = {0.25, 1, 8, 16, 32, 64};  // read through the caches before each profiled call
};

// `moeproxy calibrate`: measures this machine's kernels and, on several ranks, its MPI
// collectives, and writes a machine file predict reads.
CLI::App* add_calibrate(CLI::App& app, CalibrateOptions& opt);
int calibrate_command(const CalibrateOptions& opt, int argc, char** argv);

}  // namespace moeproxy::app
