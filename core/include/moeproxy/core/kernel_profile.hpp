#pragma once
// Measured kernel times for the performance model (docs/predict.md, "Kernel profiles"):
// `moeproxy calibrate` times each kernel of the forward pass at several sizes, and the model
// looks a kernel's time up at the size of the call it models instead of deriving it from a
// peak rate. Small kernels on a CPU are bound by fork/join, packing and fences, GEMMs by
// their shape: a single rate per kind (the roofline's efficiency) is off by 2x for them.
//
// Every profiled kernel has one size measure, computed by the functions in `kernel_size`
// for both the calibration and the model, so that the two count the same thing.

#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "moeproxy/core/attention_tile.hpp"

namespace moeproxy {

// Seconds of one call at increasing sizes. Between two measured sizes the time is
// interpolated log-log; below the smallest it is the smallest's (the fixed cost of a call
// is its floor); above the largest it grows in proportion to the size (the largest's rate).
struct KernelProfile {
  std::vector<std::pair<double, double>> points;  // (size, seconds), sizes strictly increasing

  bool empty() const { return points.empty(); }
  double seconds(double size) const;
};

// GEMM seconds over rows for square weights of several sizes. A [rows, inner] x [inner, cols]
// call takes, at its rows, the FLOP rate of the measured weights whose inner x cols brackets
// its own, interpolated log-log in the weight's elements (above the largest, the largest's
// rate; below the smallest, the smallest's time).
struct GemmProfile {
  std::vector<std::pair<double, KernelProfile>> by_weight;  // (inner x cols, profile over rows)

  bool empty() const { return by_weight.empty(); }
  double seconds(double rows, double inner, double cols) const;
};

// A kernel profiled over its size at several values of a second parameter that changes its
// time at the same size (profiled_by_parameter). Attention, by head width: a team's fixed
// work (its query tile, the softmax state, the write) grows with the width, its work per key
// partly not (the softmax). RoPE, by the heads that share each angle: its angles (a pow and
// a sincos each) cost more than the rotations on a CPU, and the rotations per angle are the
// heads. The router, by the hidden width: its GEMM's bytes grow with the width, its top-k's
// exponentials per token not (at 48 columns the top-k took 4 times the GEMM's time, at 256
// about as long, AMD VM 2026-12-06). A call takes, at its size, the time interpolated
// log-log in the parameter between the two measured values around its own (outside them,
// the nearest's).
struct ParameterProfile {
  std::vector<std::pair<double, KernelProfile>> by_value;  // (parameter, profile over size)

  bool empty() const { return by_value.empty(); }
  double seconds(double value, double size) const;
};

// The profiled kernels by name (see kernel_size), those by a parameter, and the GEMM.
struct KernelProfiles {
  std::map<std::string, KernelProfile> kernels;
  std::map<std::string, ParameterProfile> by_parameter;
  GemmProfile gemm;

  const KernelProfile* find(const std::string& name) const {
    const auto it = kernels.find(name);
    return it == kernels.end() || it->second.empty() ? nullptr : &it->second;
  }
  const ParameterProfile* find_by_parameter(const std::string& name) const {
    const auto it = by_parameter.find(name);
    return it == by_parameter.end() || it->second.empty() ? nullptr : &it->second;
  }
};

// A kernel's time depends on where its data is when it starts, which a forward pass decides:
// between two calls of one kernel, the rank's weights, KV cache and other activations pass
// through the caches. calibrate times every kernel after reading `swept` bytes through the
// caches (its inputs read back in, as the kernel before would have written them), at a few
// sweeps; a rank looks its kernels up at the footprint of its pass (the bytes the pass moves:
// perf_model.cpp, pass_footprint and cache_footprint), interpolated log-log between the sweeps around it
// (outside them, the nearest). The wait at a synchronisation is measured once.
//
// What passed through the caches matters as well as how much: a prefill's kernels meet the
// caches after its activations, a decode step's after its weights, read by GEMMs of a few
// rows. At the same bytes, the profiles after a linear read put the medium validation deck's
// steady decode (32 steps, one rank, Xeon VM, 2026-12-06) 27-45% above its measured
// projections and experts; those after GEMMs of 8 rows through weights came within 6%.
// So calibrate sweeps both ways: a read of the bytes (by_sweep, for prefill passes) and GEMMs
// through weights of the bytes (by_weight_sweep, for decode passes).
enum class Sweep { read, weights };

struct MachineProfiles {
  std::vector<std::pair<double, KernelProfiles>> by_sweep;         // (bytes read, profiles), increasing
  std::vector<std::pair<double, KernelProfiles>> by_weight_sweep;  // (bytes of weights, profiles); may be empty
  KernelProfile sync_wait;
  // The calibration's ranks: sync_wait and the collectives' profiles were measured on a
  // group of this many (0: one rank, no collectives).
  int ranks = 0;
  // The calibration's ranks shared the caches the sweeps went through (CPU cores of one
  // node), each sweeping at once: a sweep's profiles are those of `ranks` times its bytes
  // through the shared caches (perf_model.cpp, cache_footprint).
  bool shared_caches = false;

  bool empty() const { return by_sweep.empty() && sync_wait.empty(); }
  // The profiles of the smallest sweep, which hold the same kernels as the others.
  const KernelProfiles* any() const { return by_sweep.empty() ? nullptr : &by_sweep.front().second; }
  // The profiles after sweeps of kind `kind`: the read sweeps where a machine file (older
  // than 2026-12-06) has no weight sweeps.
  const std::vector<std::pair<double, KernelProfiles>>& sweeps(Sweep kind) const {
    return kind == Sweep::weights && !by_weight_sweep.empty() ? by_weight_sweep : by_sweep;
  }
  // `of` (the seconds of a call under one sweep's profiles) at `footprint` bytes of `kind`.
  double at(double footprint, Sweep kind, const std::function<double(const KernelProfiles&)>& of) const;
};

// The names of the profiled kernels other than the GEMM and those by a parameter, as machine
// files spell them.
inline const std::vector<std::string>& profiled_kernels() {
  static const std::vector<std::string> names = {"norm",    "store_kv", "add",     "activate",  "input",
                                                 "permute", "gather",   "combine", "allreduce", "alltoallv",
                                                 "send",    "stage"};
  return names;
}
// The kernels profiled by a parameter, and the parameter's name in machine files.
inline const std::map<std::string, std::string>& profiled_by_parameter() {
  static const std::map<std::string, std::string> names = {
      {"attention_prefill", "head_dim"}, {"attention_decode", "head_dim"}, {"rope", "heads"}, {"router", "hidden"}};
  return names;
}

// The size of one call of each profiled kernel, in the element size `es` of its activations:
// bytes it reads and writes, except RoPE (its angles) and attention (per team, below). Names
// are the profile keys.
namespace kernel_size {
// "input": the prefill's input rows [t, d] generated in place (fill_inputs), outside every
// phase but inside the prefill's wall, as an embedding lookup would be.
inline double input(double t, double d, double es) { return es * t * d; }
// "norm": RMSNorm or LayerNorm of [t, d].
inline double norm(double t, double d, double es) { return es * 2.0 * t * d; }
// "rope": rotary embedding in place on t rows of heads x head_dim, by its heads: its angles,
// one per (row, pair of dimensions), each read from the table and serving every head.
inline double rope(double t, double head_dim) { return t * head_dim / 2.0; }
// "store_kv": k and v rows [t, width] into the cache.
inline double store_kv(double t, double width, double es) { return es * 4.0 * t * width; }
// "add": x += y over [t, d].
inline double add(double t, double d, double es) { return es * 3.0 * t * d; }
// "activate": GELU on [rows, cols] (mats = 2) or SwiGLU a = silu(a) * b (mats = 3).
inline double activate(double rows, double cols, double mats, double es) { return es * mats * rows * cols; }
// The top-k of [t, experts] logits (or synthetic routing), indices and weights out.
inline double top_k(double t, double experts, double k, double es) { return es * t * experts + 8.0 * t * k; }
// "router": the logits [t, d] x [d, experts], then their top-k. Its few columns make the GEMM
// a pass over the rows, which the square-weight GEMM profile does not describe (the medium
// deck's router ran at about half the rate of a square GEMM of its FLOPs): the rows, the
// weight and the logits written, then the top-k's bytes.
inline double router(double t, double d, double experts, double k, double es) {
  return es * (t * d + d * experts + t * experts) + top_k(t, experts, k, es);
}
// "permute": the routed rows' expert indices scanned once per expert (one kernel), the counts'
// round trip through the host, and the scatter.
inline double permute(double routed, double experts) { return 4.0 * routed * (experts + 2.0); }
// "gather": routed rows [routed, d] gathered from [t, d].
inline double gather(double routed, double d, double es) { return es * 2.0 * routed * d; }
// "combine": zero [t, d], then add the weighted routed rows [routed, d] into it.
inline double combine(double t, double routed, double d, double es) { return es * (routed * d + 2.0 * t * d); }
// Attention is profiled per team, as its kernels divide the work: a point is the seconds of
// one team of the point's size, measured over many teams, and a call takes its teams times
// the time of one of its teams. A team's cost is not its share of the whole call's bytes
// or FLOPs: at short contexts and small heads its fixed work dominates.
struct AttentionTeams {
  double teams = 0.0;  // teams of the call
  double size = 0.0;   // the profile's size of each
};
// "attention_prefill": a team per (sequence, head, tile of attention_tile(head_dim) queries);
// its size is the FLOPs over the rectangle of keys the tile visits (its rows x the keys up to
// its last query), averaged over the tiles.
inline AttentionTeams attention_prefill(double seqs, double heads, int head_dim, int n, int pos0) {
  const int tile = attention_tile(head_dim), q_tiles = (n + tile - 1) / tile;
  double pairs = 0.0;
  for (int i = 0; i < q_tiles; ++i) {
    const int rows = std::min(tile, n - i * tile);
    pairs += static_cast<double>(rows) * (pos0 + i * tile + rows);
  }
  return {seqs * heads * q_tiles, 4.0 * head_dim * pairs / q_tiles};
}
// "attention_decode": a team per (sequence, head); its size is the bytes of K and V it reads.
inline AttentionTeams attention_decode(double seqs, double heads, double head_dim, double ctx, double es) {
  return {seqs * heads, es * 2.0 * ctx * head_dim};
}
// FLOPs of causal attention over `keys` (query, key) pairs per head: the roofline's measure,
// of which calibrate's attention_efficiency is a rate.
inline double attention_flops(double seqs, double heads, double head_dim, double keys) {
  return 4.0 * seqs * heads * head_dim * keys;
}
// "allreduce": the bytes each rank contributes; "alltoallv": the bytes each rank sends to the
// others in all. Both are profiled on the calibration's ranks (MachineProfiles::ranks), all
// of them entering together: waiting for the slowest is sync_wait's.
inline double allreduce(double bytes) { return bytes; }
inline double alltoallv(double bytes) { return bytes; }
// "stage": rows [rows, d] copied from a host staging buffer to the device, as MPI's rows
// leave and arrive (separation's transfers); the bytes read and written. Host to host on a
// CPU, across PCIe on a GPU.
inline double stage(double rows, double d, double es) { return es * 2.0 * rows * d; }
// "send": the bytes of one point-to-point message to a rank of the same node, the sender's
// time (profiled on ranks 0 and 1 of the calibration).
inline double send(double bytes) { return bytes; }
// "sync_wait": microseconds of compute since the group's previous synchronisation; the
// profile's time is what a rank waits in the next for the slowest of the group.
inline double sync_wait(double work_seconds) { return work_seconds * 1e6; }
}  // namespace kernel_size

}  // namespace moeproxy
