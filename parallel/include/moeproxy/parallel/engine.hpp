#pragma once
// Runs the forward pass (prefill, then decode) under a rank layout and measures it.

#include <cstdint>
#include <ostream>
#include <vector>

#include "moeproxy/core/config.hpp"
#include "moeproxy/core/metrics.hpp"
#include "moeproxy/core/model.hpp"
#include "moeproxy/parallel/comm.hpp"
#include "moeproxy/parallel/layout.hpp"

namespace moeproxy::parallel {

struct RunOutput {
  RankMetrics metrics;
  RunSummary summary;                       // verification fields left for the caller
  std::vector<std::uint64_t> expert_tokens;  // [layer, expert], summed over ranks
  SequenceSlice slice;                      // this rank's sequences
  bool owns_outputs = true;                 // false on tensor-parallel peers holding copies
  std::vector<float> hidden_prefill;        // [slice.count, prompt, hidden] final-normed (keep_outputs)
  std::vector<float> hidden_decode;         // [slice.count, decode_steps, hidden] (keep_outputs)
  CommBackend comm_backend = CommBackend::mpi;  // what moved the layers' data
  BalanceLog balance;  // separation with parallel.balance_threshold > 0; the same on all ranks
};

// Collective over `world`. `comm` is the backend select_comm_backend chose (not automatic).
// The final hidden states reach hidden_prefill and hidden_decode only with `keep_outputs`
// (empty otherwise): copying every prompt row to the host is no part of serving, yet it
// would sit inside the timed prefill (on a GPU, a [sequences x prompt, hidden] transfer).
// Progress lines go to `progress` (pass nullptr on ranks other than 0).
// Weights come from `weights` (nullptr: generated from the deck's seed).
RunOutput run_forward(const RunConfig& cfg, const RankLayout& layout, CommBackend comm, Communicator& world,
                      bool keep_outputs, std::ostream* progress, const WeightSource* weights = nullptr);

// The outputs of global sequences [0, count) on rank 0, in the reference's row order
// (prefill [count * prompt, hidden], decode [count * decode_steps, hidden]); empty elsewhere.
struct SampleOutputs {
  std::vector<float> prefill, decode;
};
SampleOutputs gather_sample(const RunConfig& cfg, const RankLayout& layout, const RunOutput& out,
                            Communicator& world, int count);

// Peak FLOP/s of the device this rank runs on for the run's precision; 0 when unknown.
double device_peak_flops(Precision precision);

}  // namespace moeproxy::parallel
