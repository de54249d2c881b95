// Attention replicas and the failover drill (failover.hpp): the checks, the replica-group
// geometry of RankLayout, and each rank's part in the drill.
#include "moeproxy/parallel/failover.hpp"

#include <algorithm>
#include <string>

namespace moeproxy::parallel {

namespace {

std::string kv(const char* key, int value) { return std::string(key) + "=" + std::to_string(value); }

}  // namespace

void check_replicas(const RunConfig& cfg, int world_size) {
  const ParallelConfig& p = cfg.parallel;
  const int r = p.attn_replicas;
  const bool separated = p.attn_ranks > 0;
  if (p.dp % r != 0) {
    std::string hint = "; choose a parallel.dp that is a multiple of " + std::to_string(r);
    if (separated && p.attn_ranks % r == 0)
      hint += " with dp x tp = attn_ranks, e.g. parallel.dp=" + std::to_string(r) +
              " and parallel.tp=" + std::to_string(p.attn_ranks / r);
    throw InputError(kv("parallel.attn_replicas", r) + " does not divide " + kv("parallel.dp", p.dp) +
                     ": the replicas of an attention shard are data-parallel replicas (same weights, "
                     "own sequences), grouped " + std::to_string(r) + " at a time" + hint);
  }
  if (r > 1 && !separated && p.pp > 1)
    throw InputError(kv("parallel.attn_replicas", r) + " with " + kv("parallel.pp", p.pp) +
                     ": replicas of pipelined layers are not available in this version; set parallel.pp = 1");
  if (r > 1 && !separated && p.ep > 1)
    throw InputError(kv("parallel.attn_replicas", r) + " with " + kv("parallel.ep", p.ep) +
                     ": expert parallelism puts different experts on the data-parallel replicas, so a failed "
                     "replica's experts would have no copy; set parallel.ep = 1, or separate attention from "
                     "the experts with parallel.attn_ranks");
  const FaultConfig& f = cfg.faults;
  if (!f.drill()) return;
  const int attention = separated ? p.attn_ranks : world_size;
  if (f.fail_rank >= world_size)
    throw InputError(kv("faults.fail_rank", f.fail_rank) + " is not a rank of this " + std::to_string(world_size) +
                     "-rank job; choose an attention rank 0.." + std::to_string(attention - 1));
  if (f.fail_rank >= attention)
    throw InputError(kv("faults.fail_rank", f.fail_rank) + " is an FFN rank (with " +
                     kv("parallel.attn_ranks", p.attn_ranks) + " ranks " + std::to_string(attention) + ".." +
                     std::to_string(world_size - 1) +
                     " hold the experts, which have no replica); choose an attention rank 0.." +
                     std::to_string(attention - 1));
  if (r == 1)
    throw InputError(kv("faults.fail_rank", f.fail_rank) + " with " + kv("parallel.attn_replicas", r) +
                     ": without a replica no rank can take over the failed rank's sequences; set "
                     "parallel.attn_replicas = 2 (parallel.dp a multiple of 2), or remove [faults]");
  if (f.fail_step >= cfg.workload.decode_steps)
    throw InputError(kv("faults.fail_step", f.fail_step) + " is not a decode step of " +
                     kv("workload.decode_steps", cfg.workload.decode_steps) + ": choose 0.." +
                     std::to_string(cfg.workload.decode_steps - 1));
}

SequenceSlice RankLayout::cache_of(int rank) const {
  if (ffn_rank(rank)) return sequences_of(rank);
  const int per = cfg_.workload.batch / cfg_.parallel.dp, r = replicas();
  const int group = coordinates(rank).dp / r;
  return SequenceSlice{group * r * per, r * per, cfg_.workload.batch};
}

int RankLayout::failed_replica() const { return coordinates(cfg_.faults.fail_rank).dp; }

int RankLayout::takeover_replica() const {
  const int failed = failed_replica(), member = failed % replicas();
  return member + 1 < replicas() ? failed + 1 : failed - 1;
}

int RankLayout::takeover_rank() const {
  return takeover_replica() * tensor_group() + coordinates(cfg_.faults.fail_rank).tp;
}

bool RankLayout::out_of_service(int rank) const {
  return cfg_.faults.drill() && !ffn_rank(rank) && coordinates(rank).dp == failed_replica();
}

Failover::Failover(const RankLayout& layout, const RunConfig& cfg, int rank)
    : layout_(layout), per_replica_(cfg.workload.batch / cfg.parallel.dp),
      micro_batches_(cfg.parallel.micro_batches),
      attn_ranks_(layout.separated() ? cfg.parallel.attn_ranks : layout.world_size()),
      drill_(cfg.faults.drill()), ffn_rank_(layout.ffn_rank(rank)), fail_step_(cfg.faults.fail_step),
      cache_(layout.cache_of(rank)), own_slice_(layout.sequences_of(rank)) {
  if (ffn_rank_) return;
  const int dp = layout.coordinates(rank).dp;
  own_replica_ = dp % layout.replicas();
  if (!drill_) return;
  failed_replica_ = layout.failed_replica() % layout.replicas();
  out_of_service_ = layout.out_of_service(rank);
  takes_over_ = dp == layout.takeover_replica();
}

std::vector<Failover::MicroBatch> Failover::split(int member) const {
  std::vector<MicroBatch> mbs;
  const int per = per_replica_ / micro_batches_;
  for (int i = 0; i < micro_batches_; ++i) mbs.push_back(MicroBatch{member * per_replica_ + i * per, per});
  return mbs;
}

// The buddy is the failed replica's neighbour: the two blocks are adjacent in the cache.
std::vector<Failover::MicroBatch> Failover::merged() const {
  std::vector<MicroBatch> mbs;
  const int first = std::min(own_replica_, failed_replica_) * per_replica_, per = 2 * per_replica_ / micro_batches_;
  for (int i = 0; i < micro_batches_; ++i) mbs.push_back(MicroBatch{first + i * per, per});
  return mbs;
}

std::vector<int> Failover::recovery_sources() const {
  std::vector<int> ranks;
  for (int r = 0; r < attn_ranks_; ++r)
    if (layout_.coordinates(r).dp == layout_.takeover_replica()) ranks.push_back(r);
  return ranks;
}

std::vector<int> Failover::sources_after() const {
  std::vector<int> ranks;
  for (int r = 0; r < attn_ranks_; ++r)
    if (!layout_.out_of_service(r)) ranks.push_back(r);
  return ranks;
}

SequenceSlice Failover::served() const {
  if (!takes_over_) return own_slice_;
  return SequenceSlice{cache_.begin + std::min(own_replica_, failed_replica_) * per_replica_, 2 * per_replica_,
                       cache_.global_batch};
}

}  // namespace moeproxy::parallel
