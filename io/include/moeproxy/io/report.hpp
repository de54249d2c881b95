#pragma once
// The console report rank 0 prints at the end of a run. It ends with greppable summary
// lines (PERFORMANCE, FRACTION, MEMORY, VERIFICATION) and the verdict alone on the last line.

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "moeproxy/core/config.hpp"
#include "moeproxy/core/metrics.hpp"

namespace moeproxy::io {

// Seconds per phase (summed over layers), reduced over ranks.
struct PhaseStats {
  std::vector<double> min, mean, max;  // [phase]
};

struct ReportInput {
  std::string app_version, git_sha, backend, layout, output_file;
  std::string comm_backend;  // "mpi" or "nccl": what moved the layers' data
  int ranks = 1;
  PhaseStats prefill, decode;
  std::uint64_t max_memory[memory_kind_count] = {};  // largest over ranks, per kind
  const BalanceLog* balance = nullptr;  // separation balancing, when on
};

void print_report(std::ostream& out, const RunConfig& cfg, const RunSummary& summary,
                  const ReportInput& in);

}  // namespace moeproxy::io
