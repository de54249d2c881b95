#pragma once
// A deliberately plain forward pass: host loops in double precision, weights read whole from
// the run's WeightSource (the hash or a checkpoint). It shares no kernel with the Kokkos
// path, so the two agreeing is evidence that both compute docs/model.md.

#include <vector>

#include "moeproxy/core/config.hpp"
#include "moeproxy/core/weight_source.hpp"

namespace moeproxy {

struct ReferenceOutput {
  std::vector<double> prefill;  // [count * prompt, hidden]
  std::vector<double> decode;   // [count * decode_steps, hidden], row = b * decode_steps + step
  // Per row of each: 1 where the output is determined at the model's precision, 0 from a
  // sequence's first undetermined row on: a near tie in learned routing (an expert choice the
  // run's rounding can reverse), or a later row of a tie's route group under a binding
  // capacity (docs/model.md "Verification near routing ties"). The comparison leaves them out.
  std::vector<char> prefill_determined, decode_determined;
};

// The rows each routing call sees (docs/model.md, Capacity): where a capacity factor drops
// tokens, the drops depend on them. Each list holds the first row of every group, ascending
// from 0, counting the reference's rows: prefill row b * prompt + i, decode row b (one per
// sequence, every step). Empty: all rows one group.
struct RouteGroups {
  std::vector<int> prefill, decode;
};

// Sequences [seq_begin, seq_begin + count) of a run of global_batch sequences, routed in
// `groups`. Weights from `weights` (nullptr: generated from model.seed).
ReferenceOutput reference_forward(const ModelConfig& model, const WorkloadConfig& workload,
                                  int seq_begin, int count, int global_batch,
                                  const WeightSource* weights = nullptr, const RouteGroups& groups = {});

// FLOPs the reference spends on `count` sequences, to decide whether it is affordable.
double reference_flops(const ModelConfig& model, const WorkloadConfig& workload, int count);

}  // namespace moeproxy

namespace moeproxy {

// max |got - expected| / max |expected| over all elements, or over the rows `rows` flags
// (one flag per row, empty: all): one number per comparison, insensitive to individual
// near-zero entries. Sizes must match.
double max_relative_error(const std::vector<float>& got, const std::vector<double>& expected,
                          const std::vector<char>& rows = {});

// The verification tolerance for a precision.
double verification_tolerance(Precision precision);
// What compressed transfers (parallel.comm_compression) add to it, where a layout compresses:
// the quantisation bound, or more where learned routing can flip a token's expert.
double compression_tolerance(CommCompression compression, const ModelConfig& model, const WorkloadConfig& workload);

}  // namespace moeproxy
