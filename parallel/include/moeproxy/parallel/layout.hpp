#pragma once
// The rank layout: which rank does what, derived once from the [parallel] keys and the
// number of ranks, with every check in one place so that errors name the key to change.
//
// Ranks form a grid pp x dp x tp (the attention/MoE split comes later), tensor-parallel
// index fastest, so that a tensor-parallel group sits on neighbouring ranks (one node),
// and pipeline stage slowest:
//   rank = (pp_index * dp + dp_index) * tp + tp_index
// e.g. dp=2, tp=2: ranks 0,1 hold sequences 0..B/2-1 with heads split in two; ranks 2,3
// the other half of the batch. With pp=2 on top, ranks 0-3 hold the first half of the
// layers and ranks 4-7 the second; stage s gets L/pp layers, the first L%pp stages one more. Expert parallelism spreads experts over `ep` consecutive
// data-parallel replicas (Megatron's EP inside DP): attention stays data-parallel, tokens
// travel to their experts with all-to-all-v. With dp=4, ep=4: rank r holds experts
// [r*E/4, (r+1)*E/4) and sequences [r*B/4, (r+1)*B/4).

#include <string>

#include "moeproxy/core/config.hpp"
#include "moeproxy/core/model.hpp"
#include "moeproxy/core/weights.hpp"

namespace moeproxy::parallel {

struct Coordinates {
  int dp = 0;  // data-parallel replica (which sequences)
  int tp = 0;  // tensor-parallel index (which heads and FFN columns)
  int ep = 0;  // index inside the expert group (which experts)
  int pp = 0;  // pipeline stage (which layers)
};

class RankLayout {
 public:
  // Throws InputError when the layout cannot run on `world_size` ranks.
  static RankLayout build(const RunConfig& cfg, int world_size);

  int world_size() const { return world_; }
  Coordinates coordinates(int rank) const;
  // Sequences rank `rank` runs.
  SequenceSlice sequences_of(int rank) const;
  // The part of every layer's weights rank `rank` holds.
  ShardSpec shard_of(int rank) const;
  // The rank whose outputs stand for global sequence `seq` (tensor-parallel index 0).
  int owner_of_sequence(int seq) const;
  // Whether `rank` owns its sequences' outputs: the last stage's tensor-parallel rank 0
  // (its tensor-parallel peers hold copies; earlier stages hold none).
  bool owns_outputs(int rank) const;
  // Colours for MPI_Comm_split: ranks with equal colours form one group.
  int tp_group(int rank) const { return rank / cfg_.parallel.tp; }
  int ep_group(int rank) const;
  int pp_group(int rank) const { return rank % (cfg_.parallel.dp * cfg_.parallel.tp); }
  // "dp=4 tp=2 ep=4" style summary, for the report and the HDF5 file.
  std::string describe() const;
  // One line per rank: what it holds.
  std::string rank_map() const;

 private:
  RankLayout(const RunConfig& cfg, int world) : cfg_(cfg), world_(world) {}
  RunConfig cfg_;
  int world_;
};

}  // namespace moeproxy::parallel
