#pragma once
// The results file: one HDF5 file per run, written collectively by all ranks with parallel
// HDF5 and read back serially (verification against an earlier run, tests). The layout is
// schema version 1, documented in docs/hdf5-schema.md; change both together.

#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "moeproxy/core/config.hpp"
#include "moeproxy/core/metrics.hpp"

namespace moeproxy::io {

constexpr int results_schema_version = 1;
// /failover's `kind`: what the drill was, so that nobody reads it as a crash recovery.
constexpr const char* failover_drill_kind =
    "drill inside a healthy MPI job: the failed rank's process was not killed (docs/reliability.md)";

// Provenance, the same on all ranks except host and device.
struct RunInfo {
  std::string app_version, git_sha, command_line, kokkos_config;
  std::string layout;  // human-readable, e.g. "dp=4"
  std::string comm_backend;  // "mpi" or "nccl": what moved the layers' data
  std::string host, device;  // this rank's
  bool predicted = false;
};

// Tokens routed to each expert, [layer, expert] row-major, global and identical on all ranks.
struct ExpertCounts {
  int layers = 0, experts = 0;
  std::vector<std::uint64_t> tokens;
};

// The rows of the final hidden states that this rank owns (possibly none).
struct HiddenDump {
  int batch_offset = 0, batch_count = 0;
  std::vector<float> prefill;  // [batch_count, prompt, hidden]
  std::vector<float> decode;   // [batch_count, decode_steps, hidden]
};

// Why `path` cannot name a results file, or "" when it can: checked before any work.
std::string results_path_error(const std::string& path);

// Collective over comm. Writes path + ".partial" with the root attribute complete = 0, sets
// complete = 1 as the last write, closes, and then rank 0 renames it to path (replacing an
// older file); the parent directory is created if missing. Values that must agree across
// ranks (cfg, info except host/device, summary, experts) are taken from rank 0. Hidden-state
// rows are written by the lowest rank that owns them; together the ranks must own the whole
// batch. Any failure, on any rank, throws std::runtime_error on every rank; a failed write
// leaves at most path + ".partial" behind, still marked incomplete. `balance` (the same on
// all ranks but its suggestion, taken from rank 0) adds /balance when balancing was on.
void write_results(MPI_Comm comm, const std::string& path, const RunConfig& cfg, const RunInfo& info,
                   const RankMetrics& local, const RunSummary& summary, const ExpertCounts& experts,
                   const HiddenDump* dump /* nullptr unless cfg.output.dump_hidden */,
                   const BalanceLog* balance = nullptr);

// A modelled run (moeproxy predict), written by one process: `ranks` holds every rank's
// predicted metrics, in rank order; the file has mpi_size = ranks.size() and predicted = 1
// whatever info.predicted says. Throws std::runtime_error as write_results does.
void write_predicted_results(const std::string& path, const RunConfig& cfg, const RunInfo& info,
                             const std::vector<RankMetrics>& ranks, const RunSummary& summary,
                             const ExpertCounts& experts);

struct ResultsFile {
  bool complete = false;
  int schema_version = 0;
  std::string deck;
  int ranks = 0;
  RunSummary summary;
  std::vector<std::string> phases;
  std::vector<double> prefill_timing, decode_timing;  // [rank, layer, phase] seconds
  int layers = 0;
  ExpertCounts experts;  // empty where the run had no experts
  std::vector<float> hidden_prefill, hidden_decode;  // [batch, prompt|decode_steps, hidden]; empty if not dumped
  int batch = 0, prompt = 0, decode_steps = 0, hidden = 0;  // 0 if not dumped
  std::vector<std::string> comm_keys;  // "operation@group", sorted
  std::vector<std::uint64_t> comm_calls, comm_bytes;  // [rank, key]
  std::vector<std::uint64_t> comm_uncompressed_bytes;  // [rank, key]; comm_bytes in older files
  std::vector<double> comm_seconds;                   // [rank, key]
  std::vector<double> comm_hidden_seconds;            // [rank, key]; empty in files from before it
  std::vector<double> comm_algbw, comm_busbw;         // [rank, key] bytes/s, nccl-tests' definitions

  // The rest of the file, for analysis and tests.
  std::string app_version, git_sha, command_line, kokkos_config, layout, comm_backend;
  bool predicted = false;
  std::vector<std::string> hosts, devices;  // [rank]
  std::vector<double> prefill_wall, decode_wall, prefill_flops, decode_flops;  // [rank]
  std::vector<double> decode_step_wall;  // [rank, step]; empty in files written before 2026-12-06
  std::vector<double> comm_exposed, comm_hidden;  // [rank]; empty in files from before them
  std::vector<std::string> memory_kinds;
  std::vector<std::uint64_t> memory_bytes;  // [rank, kind]
  std::vector<int> comm_group_size;         // [key]
};

// Serial. Throws std::runtime_error if the file is missing, unreadable, not a moeproxy results
// file or of another schema version. An incomplete file (complete = 0: the writer failed or was
// killed) is not an error: it returns complete = false and schema_version, nothing else.
ResultsFile read_results(const std::string& path);

}  // namespace moeproxy::io
