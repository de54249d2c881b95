#pragma once
// What a run measures, as plain host data: core/ and parallel/ fill it, io/ writes it.

#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace moeproxy {

// Phases of one layer's forward. Communication phases stay zero where a layout has none.
enum class Phase : int {
  norm,
  attn_qkv,
  attn_core,
  attn_out,
  router,
  permute,
  expert,
  combine,
  ffn,  // dense MLP
  allreduce,
  dispatch,
  send,
  recv,
  wait,
  count
};
constexpr int phase_count = static_cast<int>(Phase::count);
const char* phase_name(Phase p);

enum class MemoryKind : int { weights, kv_cache, activations, workspace, comm_buffers, high_water, count };
constexpr int memory_kind_count = static_cast<int>(MemoryKind::count);
const char* memory_kind_name(MemoryKind k);

// Seconds per [layer, phase] for one rank and one stage (prefill or decode, summed over steps).
class PhaseTable {
 public:
  PhaseTable() = default;
  explicit PhaseTable(int layers) : layers_(layers), seconds_(static_cast<std::size_t>(layers) * phase_count, 0.0) {}
  void add(int layer, Phase p, double s) { seconds_[index(layer, p)] += s; }
  double at(int layer, Phase p) const { return seconds_[index(layer, p)]; }
  int layers() const { return layers_; }
  const std::vector<double>& data() const { return seconds_; }
  double total() const;

 private:
  std::size_t index(int layer, Phase p) const {
    return static_cast<std::size_t>(layer) * phase_count + static_cast<std::size_t>(p);
  }
  int layers_ = 0;
  std::vector<double> seconds_;
};

// One communication operation on one group, accumulated over the run.
struct CommRecord {
  std::string operation;  // "allreduce", "allgather", "alltoallv", ...
  std::string group;      // "world", "dp", "tp", ...
  int group_size = 1;
  std::uint64_t calls = 0;
  std::uint64_t bytes = 0;  // payload bytes leaving this rank, self-traffic excluded
  double seconds = 0.0;
  // nccl-tests' figures (parallel/comm_stats.hpp): algbw = alg_bytes / seconds,
  // busbw = bus_bytes / seconds.
  std::uint64_t alg_bytes = 0;
  std::uint64_t bus_bytes = 0;
  // What `bytes` would have been without parallel.comm_compression (equal when nothing was
  // compressed).
  std::uint64_t uncompressed_bytes = 0;
  // "wait" records only: wall time in which the group's non-blocking transfers were in
  // flight while the rank computed (docs/hdf5-schema.md, "Hidden and exposed communication").
  double hidden_seconds = 0.0;
};

// Everything one rank measured.
struct RankMetrics {
  PhaseTable prefill;
  PhaseTable decode;
  std::array<std::uint64_t, memory_kind_count> memory{};
  std::vector<CommRecord> comm;
  double prefill_seconds = 0.0;  // wall time of the whole prefill on this rank
  double decode_seconds = 0.0;
  // Wall time of each decode step on this rank, a failover's recovery and a balancing check
  // included in their step: the first steps after a prefill can take twice the steady one.
  std::vector<double> decode_step_seconds;
  double prefill_flops = 0.0;    // model FLOPs this rank computed
  double decode_flops = 0.0;
  // Communication in the prefill and decode: exposed = the communication phases (the rank
  // waited); hidden = asynchronous transfers in flight while it computed.
  double comm_exposed_seconds = 0.0;
  double comm_hidden_seconds = 0.0;
};

// Balancing the two sides of attention/MoE separation (parallel/balance.hpp). Every record
// is the same on all ranks: the figures come from one all-reduce per check.
struct BalanceCheck {
  int step = 0;                 // decode steps done when checked
  int micro_batches = 1;        // the split the interval ran with
  double attention_busy = 0.0;  // compute seconds per decode step, busiest attention rank
  double ffn_busy = 0.0;        // compute seconds per decode step, busiest FFN rank
  double imbalance = 0.0;       // (busier - idler) / busier of the two sides
  double step_seconds = 0.0;    // decode wall per step, slowest rank
  std::string action;           // "none", "finer", "coarser", "keep", "revert"
  int next_micro_batches = 1;   // the split from this check on
};

// A re-split tried at one check and judged at the next: kept when the decode step got faster.
struct BalanceTrial {
  int step = 0;  // decode steps done when it was tried
  int from_micro_batches = 1, to_micro_batches = 1;
  double imbalance_before = 0.0, step_seconds_before = 0.0;
  // NaN while unjudged.
  double imbalance_after = std::numeric_limits<double>::quiet_NaN();
  double step_seconds_after = std::numeric_limits<double>::quiet_NaN();
  std::string verdict = "unjudged";  // "kept", "reverted", or "unjudged" when the run ended first
};

// The attention/FFN split of the same ranks the performance model (perf_model.hpp) predicts
// fastest for the deck's decode.
struct RankSplitSuggestion {
  int attn_ranks = 0;  // 0: no suggestion (note says why)
  double tpot_s = 0.0;
  int current_attn_ranks = 0;
  double current_tpot_s = 0.0;
  std::string machine, note;
};

struct BalanceLog {
  double threshold = 0.0;  // 0: balancing off, nothing recorded
  int interval = 0;
  std::vector<BalanceCheck> checks;
  std::vector<BalanceTrial> trials;
  RankSplitSuggestion suggestion;
};

// Run-wide figures, identical on every rank after the reduction.
// What a failover drill measured ([faults]; a drill inside a healthy job, no process killed).
struct FailoverSummary {
  bool ran = false;
  int fail_rank = -1, fail_step = -1;
  int takeover_rank = -1;          // the buddy replica's rank with fail_rank's tensor-group index
  int sequences = 0;               // sequences taken over
  double recovery_s = 0.0;         // failure to the buddy serving again (KV cache rebuilt)
  double tokens_per_s_before = 0.0;  // decode steps [0, fail_step); 0 when fail_step = 0
  double tokens_per_s_after = 0.0;   // decode steps [fail_step, decode_steps), recovery excluded
};

struct RunSummary {
  double prefill_tokens_per_s = 0.0;
  double ttft_s = 0.0;
  double tpot_s = 0.0;
  double decode_tokens_per_s = 0.0;
  double mfu = 0.0;
  double peak_flops = 0.0;       // of all devices used, for the MFU
  double comm_fraction = 0.0;     // exposed communication / ranks / wall time
  double comm_seconds_raw = 0.0;  // exposed + hidden, summed over ranks
  double comm_exposed_seconds = 0.0;  // summed over ranks
  double comm_hidden_seconds = 0.0;   // summed over ranks
  double expert_imbalance = 0.0;  // (max - mean) / mean over experts, prefill, all layers
  std::uint64_t dropped_tokens = 0;
  std::string verification = "SKIPPED";  // "PASS" | "FAIL" | "SKIPPED"
  double max_rel_error = 0.0;
  double tolerance = 0.0;         // what max_rel_error was compared with
  std::string verification_note;
  std::string comm_compression = "none";  // parallel.comm_compression
  // The part of `tolerance` compression adds (0 when nothing was compressed), and the bytes
  // it kept off the network, all ranks.
  double compression_tolerance = 0.0;
  std::uint64_t comm_bytes_saved = 0;
  FailoverSummary failover;
};

}  // namespace moeproxy
