#pragma once
// The rank layout: which rank does what, derived once from the [parallel] keys and the
// number of ranks, with every check in one place so that errors name the key to change.
//
// Ranks form a grid pp x dp x g (separation, below, puts FFN ranks after it), where g is the
// tensor group: the ranks sharing the same sequences, g = tp, or g = m x n with head x dim
// slicing. The tensor-group index is fastest, so that a group sits on neighbouring ranks
// (one node), and the pipeline stage slowest:
//   rank = (pp_index * dp + dp_index) * g + tp_index
// e.g. dp=2, tp=2: ranks 0,1 hold sequences 0..B/2-1 with heads split in two; ranks 2,3
// the other half of the batch. With pp=2 on top, ranks 0-3 hold the first half of the
// layers and ranks 4-7 the second; stage s gets L/pp layers, the first L%pp stages one more. Expert parallelism spreads experts over `ep` consecutive
// data-parallel replicas (Megatron's EP inside DP): attention stays data-parallel, tokens
// travel to their experts with all-to-all-v. With dp=4, ep=4: rank r holds experts
// [r*E/4, (r+1)*E/4) and sequences [r*B/4, (r+1)*B/4).
//
// Head x dim slicing (parallel.head_groups = m, parallel.dim_groups = n), an alternative to
// tp (tp = 1, ep = 1): the m x n ranks of a tensor group run the same sequences. Index
// tp_index = head * n + dim (dimension slices of a head on neighbouring ranks: they reduce
// scores in every layer) holds heads [head*H/m, (head+1)*H/m) (with the kv heads they read,
// as in TP) and, of each of those heads, RoPE pairs [dim*P/n, (dim+1)*P/n) of the P = hd/2
// pairs (p, p + hd/2): dimensions p and p + hd/2 together, so that RoPE stays local. Q, K, V
// and the KV cache hold only those columns; the partial scores q.k over them are summed over
// the n ranks of the head ("dim" group) before the softmax; each rank weighs its own V
// columns and multiplies by its rows of wo, a partial sum over the whole group (the "tp"
// communicator) like TP's. The FFN is split over the m x n ranks too, tokens replicated:
// dense columns m*n ways; MoE experts over gcd(E, m*n) sets of ranks, each expert's columns
// over the m*n / gcd(E, m*n) ranks of its set (whole experts when m*n divides E; 16 ranks
// and 8 experts make 8 sets of 2 ranks, each holding one expert in column halves). Every
// rank computes its experts' rows of all its tokens; the partial sums of the group add up
// to the FFN output.
// E.g. dp=2, m=2, n=2 on 8 ranks: ranks 0-3 hold sequences 0..B/2-1, rank 1 heads
// [0, H/2) dims of pairs [P/2, P), rank 2 heads [H/2, H) dims of pairs [0, P/2).
//
// Attention/MoE separation (parallel.attn_ranks = A > 0): ranks [0, A) run attention, the
// grid above with pp = 1 and dp x tp = A (heads may split unevenly: H % tp ranks hold one
// more); they hold no FFN. Ranks [A, world) hold the FFN of every layer: F = world - A
// expert ranks, expert rank j holding experts [j*E/F, (j+1)*E/F) whole (parallel.ep is
// derived as F; a deck may state it, then it must equal F), or for a dense model columns
// [j*f/F, (j+1)*f/F) of the FFN. They run no sequences of their own: every attention rank
// routes its share of its replica's tokens (tensor-parallel peers split them) and trades
// rows with every FFN rank every layer (separation.cpp). E.g. 8 ranks, attn_ranks=4, dp=2, tp=2, 8 experts:
// ranks 0-1 sequences 0..B/2-1, ranks 2-3 the rest, rank 4 experts 0-1 ... rank 7 experts 6-7.
//
// Explicit placements replace the even splits: parallel.head_distribution gives the query
// heads of each tensor-parallel rank (consecutive ranges, any counts >= 1), and
// parallel.expert_map the experts of each rank of the expert group (the ep ranks of an
// expert group, or the FFN ranks under separation), the same in every layer or per layer
// (placement.hpp: a rank may hold no expert of a layer). E.g. 64 ranks, dp=64, ep=64 and a
// per-layer map putting layer l's 16 experts on ranks [16l, 16l+16): one expert of one
// layer per rank, attention data-parallel on all (seed 001).
// Attention replicas (parallel.attn_replicas = R, failover.cpp): every data-parallel
// replica already holds the same attention weights; R consecutive replicas form a replica
// group of failover buddies. Each serves its own sequences and keeps KV cache for the
// whole group's, so that a neighbour in the group can take over a failed replica's
// sequences (failover.hpp). E.g. attn_ranks=4, dp=2, tp=2, R=2: ranks 0-1 and 2-3 are
// buddies; if rank 1 fails, ranks 0-1 stop serving and ranks 2-3 serve all sequences.

#include <string>

#include "moeproxy/core/config.hpp"
#include "moeproxy/core/model.hpp"
#include "moeproxy/core/weights.hpp"

namespace moeproxy::parallel {

struct Coordinates {
  int dp = 0;    // data-parallel replica (which sequences)
  int tp = 0;    // index inside the tensor group (tp or m x n: which heads, FFN columns, experts)
  int head = 0;  // head slice: tp, or tp / n with head x dim slicing
  int dim = 0;   // slice of each head's RoPE pairs: tp % n
  int ep = 0;    // index inside the expert group (which experts)
  int pp = 0;    // pipeline stage (which layers)
};

class RankLayout {
 public:
  // Throws InputError when the layout cannot run on `world_size` ranks.
  static RankLayout build(const RunConfig& cfg, int world_size);

  int world_size() const { return world_; }
  // Attention/MoE separation: whether it is on, and whether `rank` holds FFN / experts only.
  bool separated() const { return cfg_.parallel.attn_ranks > 0; }
  bool ffn_rank(int rank) const { return separated() && rank >= cfg_.parallel.attn_ranks; }
  // Ranks holding the FFN under separation (the expert group, ep).
  int ffn_ranks() const { return world_ - cfg_.parallel.attn_ranks; }
  Coordinates coordinates(int rank) const;
  // Sequences rank `rank` runs.
  SequenceSlice sequences_of(int rank) const;
  // The part of every layer's weights rank `rank` holds.
  ShardSpec shard_of(int rank) const;
  // MoE: the experts of each rank of an expert group, in every layer (empty for dense models):
  // parallel.expert_map, or the even split over the ep ranks, the FFN ranks of a separated
  // layout, or the sets of an m x n group.
  ExpertPlacement placement() const;
  // The rank whose outputs stand for global sequence `seq` (tensor-parallel index 0).
  int owner_of_sequence(int seq) const;
  // Whether `rank` owns its sequences' outputs: the last stage's tensor-parallel rank 0
  // (its tensor-parallel peers hold copies; earlier stages hold none).
  bool owns_outputs(int rank) const;
  // Attention replicas and the failover drill (failover.cpp).
  int replicas() const { return cfg_.parallel.attn_replicas; }
  // The sequences `rank` keeps KV cache for: its replica group's (its own when R = 1).
  SequenceSlice cache_of(int rank) const;
  // Data-parallel replica of faults.fail_rank, and the buddy in its group that takes over.
  int failed_replica() const;
  int takeover_replica() const;
  // The rank of the buddy replica with faults.fail_rank's tensor-group index.
  int takeover_rank() const;
  // Whether `rank` stops serving at faults.fail_step: it is faults.fail_rank or one of its
  // tensor-group peers (a tensor group serves only whole).
  bool out_of_service(int rank) const;
  // Colours for MPI_Comm_split: ranks with equal colours form one group.
  int tp_group(int rank) const { return ffn_rank(rank) ? rank : rank / tensor_group(); }
  int dim_group(int rank) const { return rank / cfg_.parallel.dim_groups; }
  int ep_group(int rank) const;
  int pp_group(int rank) const { return separated() ? rank : rank % (cfg_.parallel.dp * tensor_group()); }
  // "dp=4 tp=2 ep=4" or "dp=2 mxn=2x2" style summary, for the report and the HDF5 file.
  std::string describe() const;
  // One line per rank: what it holds.
  std::string rank_map() const;
  // What rank `rank` allocates (estimate_memory), with the rows the FFN ranks of a separated
  // layout receive (balanced routing, one micro-batch of every replica at a time).
  MemoryEstimate memory_of(int rank) const;

 private:
  RankLayout(const RunConfig& cfg, int world) : cfg_(cfg), world_(world) {}
  // Ranks sharing the same sequences: tp x m x n (at most one of tp and m x n exceeds 1).
  int tensor_group() const {
    return cfg_.parallel.tp * cfg_.parallel.head_groups * cfg_.parallel.dim_groups;
  }
  // Rank `rank`'s index in placement(); -1 for an attention rank of a separated layout.
  int placement_rank(int rank) const;
  RunConfig cfg_;
  int world_;
};

}  // namespace moeproxy::parallel
