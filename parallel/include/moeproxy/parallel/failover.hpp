#pragma once
// Attention replicas and the failover drill (docs/reliability.md, docs/layouts.md).
//
// parallel.attn_replicas = R groups the data-parallel replicas of the attention side into
// replica groups of R consecutive ones (dp index / R). All replicas hold the same attention
// weights anyway; what replication adds is KV cache: each replica keeps room for its whole
// group's sequences, so that a buddy can take over a failed replica's sequences without
// borrowing memory. In normal operation each serves only its own sequences.
//
// The drill ([faults] fail_rank = r, fail_step = g) runs inside a healthy MPI job; no
// process is killed. Before decode step g, rank r's tensor group (the replica holding r;
// its peers cannot serve without r's heads) stops serving. The buddy replica, the next one
// in the group (the previous one for the group's last), rebuilds what it lacks: the KV
// cache of the failed replica's sequences, by re-running their prefill over the prompts and
// then decode steps 0..g-1, each step's input the previous step's output as the serving
// front end would feed back its token. Nothing is read from the failed ranks. From step g
// on it serves its own and the failed replica's sequences, as the same number of
// micro-batches, each twice as large. Under separation the FFN ranks serve the recovery
// passes of the buddy's ranks alone, then stop expecting the failed replica's rows.

#include <vector>

#include "moeproxy/core/config.hpp"
#include "moeproxy/core/model.hpp"
#include "moeproxy/parallel/layout.hpp"

namespace moeproxy::parallel {

// Refuses attn_replicas and [faults] settings the layout cannot run (RankLayout::build).
void check_replicas(const RunConfig& cfg, int world_size);

// This rank's part in the replica groups and the drill; micro-batches are numbered inside
// the rank's cache slice (RankLayout::cache_of), as its Transformer numbers its sequences.
class Failover {
 public:
  using MicroBatch = Transformer::MicroBatch;
  Failover(const RankLayout& layout, const RunConfig& cfg, int rank);

  // Micro-batches of this rank's own sequences, of the failed replica's, and of both
  // together (what the buddy serves from the failure on).
  std::vector<MicroBatch> own() const { return split(own_replica_); }
  std::vector<MicroBatch> failed() const { return split(failed_replica_); }
  std::vector<MicroBatch> merged() const;

  bool fails_at(int step) const { return drill_ && step == fail_step_; }
  // Whether this rank is out of service at decode step `step`.
  bool stopped(int step) const { return out_of_service_ && step >= fail_step_; }
  // Whether this rank belongs to the buddy replica that takes over.
  bool takes_over() const { return takes_over_; }
  // Whether this rank runs the recovery passes: the buddy replica, and the FFN ranks.
  bool rebuilds() const { return takes_over_ || (drill_ && ffn_rank_); }
  // Attention ranks whose rows the FFN ranks serve during the recovery, and after it.
  std::vector<int> recovery_sources() const;
  std::vector<int> sources_after() const;
  // The global sequences this rank holds outputs of at the end of the run.
  SequenceSlice served() const;

 private:
  // Micro-batches of sequence block `replica` (a member of the group, 0..R-1).
  std::vector<MicroBatch> split(int member) const;

  const RankLayout& layout_;
  int per_replica_, micro_batches_, attn_ranks_;
  bool drill_, ffn_rank_, out_of_service_ = false, takes_over_ = false;
  int fail_step_, own_replica_ = 0, failed_replica_ = 0;  // members of the replica group
  SequenceSlice cache_, own_slice_;
};

}  // namespace moeproxy::parallel
