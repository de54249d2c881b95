#pragma once
// `moeproxy bench`: the speed cases of issue 7 (docs/benchmarks.md) on the real kernels and
// Transformer, one rank, each against the same run's dense GEMM ceiling.

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace moeproxy::bench {

struct Options {
  std::vector<std::string> cases;  // empty: all
  int scale = 0;                   // 0: 1, or 16 with --cpu
  bool cpu = false;
  int warmup = -1, iterations = -1;  // -1: the preset's
  std::string precision = "fp32";
};

// Registers the subcommand on `app`; `opt` receives its options.
CLI::App* add_subcommand(CLI::App& app, Options& opt);
// Runs it (Kokkos is initialised here). Returns the process exit code.
int run(const Options& opt, int argc, char** argv);

}  // namespace moeproxy::bench
