#pragma once
// The analytic performance model behind `moeproxy predict` (docs/predict.md): for a deck and
// a machine description, the seconds of every [layer, phase] of every rank, for prefill and
// decode, from the same kernel sequence the forward pass runs (core/src/model.cpp):
//   - each kernel as its measured time at the call's size, for the caches a rank holding
//     its footprint leaves it, where the machine file profiles it (kernel_profile.hpp),
//     else as a roofline: max(FLOPs / (peak x efficiency), bytes /
//     (bandwidth x efficiency)) plus a launch overhead;
//   - each communication as alpha-beta over a two-level topology (a link inside a node of
//     `devices_per_node`, another across nodes), with the nccl-tests bus-bandwidth factors;
//   - pipeline stages with micro-batches (fill and drain bubbles), and overlap where the
//     layout overlaps communication with compute.
// Plain computation: no Kokkos, no MPI, so that it builds into the host-only config library
// and predicts 1024 ranks in one process.

#include <array>
#include <string>
#include <vector>

#include "moeproxy/core/config.hpp"
#include "moeproxy/core/kernel_profile.hpp"
#include "moeproxy/core/metrics.hpp"

namespace moeproxy {

// Model FLOPs of one forward over `tokens` new tokens per sequence of `batch` sequences
// whose queries start at position `pos0` (multiply-add = 2 FLOPs; causal attention counts
// only the scores it computes).
double forward_flops(const ModelConfig& model, int batch, int tokens, int pos0);

// The expected share of the routed rows that each expert receives (the shares sum to 1): even
// under "uniform" and "learned" routing (a learned router's preferences depend on weights and
// activations the model does not see); under "zipf:s", how often a token's top_k draws without
// replacement from P(e) ~ (e + 1)^-s pick e, as the runtime draws them (route_synthetic),
// estimated from 65536 tokens of a fixed sequence: the same shares on every call.
std::vector<double> expert_shares(const ModelConfig& model, const WorkloadConfig& workload);

// One level of the interconnect, per device and direction.
struct Link {
  double bandwidth = 0.0;   // bytes/s
  double latency = 0.0;     // seconds per message (alpha)
  double efficiency = 1.0;  // achieved bus bandwidth / bandwidth
};

// A machine as the model sees it (inputs/machines/*.toml). Rates are per device.
struct MachineSpec {
  std::string name;
  double peak_flops_fp16 = 0.0;  // FLOP/s, dense
  double peak_flops_fp32 = 0.0;
  double memory_bandwidth = 0.0;  // bytes/s
  double memory_bytes = 0.0;      // per device
  int devices_per_node = 1;
  Link intra;  // inside a node
  Link inter;  // across nodes
  double gemm_efficiency = 1.0;       // of peak, for large GEMMs
  double attention_efficiency = 1.0;  // of peak, for the attention kernel's FLOPs
  double memory_efficiency = 1.0;     // of memory_bandwidth, for bandwidth-bound kernels
  // Of that streaming rate, what a GEMM reaches when its bytes bound it (few rows: decode's
  // projections and experts), where a BLAS may pack or re-read the weights.
  double gemm_memory_efficiency = 1.0;
  double kernel_overhead = 0.0;       // seconds per kernel launch (and its fence)
  double peer_overhead = 0.0;         // seconds per peer of an all-to-all(v)
  // Measured kernel times (calibrate); a kernel without a profile is a roofline of the above.
  MachineProfiles profiles;

  double peak_flops(Precision p) const { return p == Precision::fp16 ? peak_flops_fp16 : peak_flops_fp32; }
};

// Which roof and efficiency a kernel is held to.
enum class KernelKind { gemm, attention, memory };

// Roofline time of one kernel launch.
double kernel_seconds(const MachineSpec& m, Precision p, KernelKind kind, double flops, double bytes);

// A communicator as placed on the machine: `size` ranks of which `per_node` share a node.
struct GroupShape {
  int size = 1;
  int per_node = 1;
  bool crosses_nodes() const { return size > per_node; }
};

// Ring all-reduce of `bytes` per rank: 2(n-1) alpha + 2(n-1)/n bytes / busbw (nccl-tests);
// the ring's slowest link sets the bandwidth (across nodes when the group spans nodes).
double allreduce_seconds(const MachineSpec& m, const GroupShape& g, double bytes);
// All-to-all(v) in which each rank sends `bytes` to every other rank of the group in total
// (self-traffic excluded), spread evenly: the intra-node and inter-node shares move
// concurrently; alpha plus a per-peer overhead for the n - 1 messages.
double alltoallv_seconds(const MachineSpec& m, const GroupShape& g, double bytes);
// One message of `bytes` between two ranks.
double sendrecv_seconds(const MachineSpec& m, bool across_nodes, double bytes);

// Wall time of a pipeline whose stage s takes stage_seconds[s] per micro-batch, running
// `micro_batches` micro-batches: every micro-batch passes every stage once, the slowest
// stage paces the rest: sum(stage) + (micro_batches - 1) * max(stage).
double pipeline_seconds(const std::vector<double>& stage_seconds, int micro_batches);

// Everything predicted for one run: the same shape as a measured run's metrics.
struct Prediction {
  int ranks = 1;
  std::string layout;                 // "dp=16 ep=16", "attn=12 moe=4 tp=..."
  std::vector<RankMetrics> per_rank;  // [rank]
  std::vector<std::string> roles;     // [rank]: "stage 0", "attention", "experts", ...
  RunSummary summary;
  std::vector<std::uint64_t> expert_tokens;  // [layer, expert], expected prefill counts
  std::vector<std::string> assumptions;      // printed with the report, one line each
};

// The rank count a deck describes: dp x tp x pp x m x n, or attn_ranks plus the expert ranks
// with attention/MoE separation (the ranks of parallel.expert_map where it has one, else
// parallel.ep, at least 1).
int deck_ranks(const ParallelConfig& p);

// Throws InputError when the layout cannot be modelled on `ranks` ranks (the same divisibility
// rules as the runtime's layout, and for separation: attn_ranks < ranks).
Prediction predict(const RunConfig& cfg, const MachineSpec& machine, int ranks);

// For a separated deck (parallel.attn_ranks > 0) on `ranks` ranks: the attention rank count
// whose predicted decode step (TPOT) is shortest among the splits the runtime accepts: the
// attention ranks as the deck's parallel.dp replicas of a wider or narrower tensor group
// (at most one head each), else as more or fewer replicas of its parallel.tp group; the
// replicas splitting the batch and its micro-batches evenly, the FFN ranks the experts. The
// deck's own split's prediction comes with it for comparison. A deck the model cannot
// describe gets attn_ranks = 0 and a note.
RankSplitSuggestion suggest_attention_split(const RunConfig& cfg, const MachineSpec& machine, int ranks);

}  // namespace moeproxy
