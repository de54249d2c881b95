#include "moeproxy/parallel/layout.hpp"

#include <algorithm>
#include <sstream>

namespace moeproxy::parallel {

namespace {

std::string kv(const char* key, int value) { return std::string(key) + "=" + std::to_string(value); }

void not_yet(int value, int neutral, const char* key, const char* what) {
  if (value != neutral)
    throw InputError(kv(key, value) + ": " + what + " is not available in this version; set " + key +
                     " = " + std::to_string(neutral) + " (data, tensor, pipeline and expert parallelism are)");
}

void must_divide(int degree, const char* degree_key, int value, const char* value_key) {
  if (value % degree != 0)
    throw InputError(kv(degree_key, degree) + " does not divide " + kv(value_key, value) +
                     "; choose a " + degree_key + " that divides " + std::to_string(value));
}

}  // namespace

RankLayout RankLayout::build(const RunConfig& cfg, int world_size) {
  const ParallelConfig& p = cfg.parallel;
  const ModelConfig& m = cfg.model;
  not_yet(p.head_groups, 1, "parallel.head_groups", "head x dim slicing");
  not_yet(p.dim_groups, 1, "parallel.dim_groups", "head x dim slicing");
  not_yet(p.attn_ranks, 0, "parallel.attn_ranks", "attention/MoE separation");
  const long needed = static_cast<long>(p.dp) * p.tp * p.pp;
  if (needed != world_size)
    throw InputError("parallel.dp=" + std::to_string(p.dp) + " x parallel.tp=" + std::to_string(p.tp) +
                     " x parallel.pp=" + std::to_string(p.pp) + " needs " + std::to_string(needed) +
                     " ranks but the job has " + std::to_string(world_size) + "; launch with mpiexec -n " +
                     std::to_string(needed) + " or change parallel.dp / tp / pp so that dp x tp x pp = " +
                     std::to_string(world_size));
  must_divide(p.dp, "parallel.dp", cfg.workload.batch, "workload.batch");
  if (p.pp > m.layers)
    throw InputError(kv("parallel.pp", p.pp) + " exceeds " + kv("model.layers", m.layers) +
                     ": every pipeline stage needs at least one layer");
  const int per_replica = cfg.workload.batch / p.dp;
  if (per_replica % p.micro_batches != 0)
    throw InputError(kv("parallel.micro_batches", p.micro_batches) + " does not divide the " +
                     std::to_string(per_replica) + " sequences of each data-parallel replica (workload.batch=" +
                     std::to_string(cfg.workload.batch) + " / parallel.dp=" + std::to_string(p.dp) +
                     "); choose a divisor of " + std::to_string(per_replica));
  must_divide(p.tp, "parallel.tp", m.heads, "model.heads");
  must_divide(p.tp, "parallel.tp", m.ffn_hidden, "model.ffn_hidden");
  if (p.ep > 1) {
    if (!m.is_moe())
      throw InputError(kv("parallel.ep", p.ep) + " needs an MoE model (model.ffn = \"moe\"); set parallel.ep = 1");
    must_divide(p.ep, "parallel.ep", m.experts, "model.experts");
    if (p.dp % p.ep != 0)
      throw InputError(kv("parallel.ep", p.ep) + " must divide " + kv("parallel.dp", p.dp) +
                       ": expert parallelism spreads the experts over data-parallel replicas, whose "
                       "attention stays data-parallel; e.g. set parallel.dp=" + std::to_string(p.ep));
  }
  return RankLayout(cfg, world_size);
}

Coordinates RankLayout::coordinates(int rank) const {
  const ParallelConfig& p = cfg_.parallel;
  Coordinates c;
  c.tp = rank % p.tp;
  c.dp = (rank / p.tp) % p.dp;
  c.pp = rank / (p.tp * p.dp);
  c.ep = c.dp % p.ep;
  return c;
}

bool RankLayout::owns_outputs(int rank) const {
  const Coordinates c = coordinates(rank);
  return c.tp == 0 && c.pp == cfg_.parallel.pp - 1;
}

int RankLayout::ep_group(int rank) const {
  const ParallelConfig& p = cfg_.parallel;
  const Coordinates c = coordinates(rank);
  return (c.pp * (p.dp / p.ep) + c.dp / p.ep) * p.tp + c.tp;
}

SequenceSlice RankLayout::sequences_of(int rank) const {
  const int per = cfg_.workload.batch / cfg_.parallel.dp;
  return SequenceSlice{coordinates(rank).dp * per, per, cfg_.workload.batch};
}

ShardSpec RankLayout::shard_of(int rank) const {
  const Coordinates c = coordinates(rank);
  const ModelConfig& m = cfg_.model;
  ShardSpec s;
  s.head_count = m.heads / cfg_.parallel.tp;
  s.head_begin = c.tp * s.head_count;
  s.ffn_count = m.ffn_hidden / cfg_.parallel.tp;
  s.ffn_begin = c.tp * s.ffn_count;
  if (m.is_moe()) {
    s.expert_count = m.experts / cfg_.parallel.ep;
    s.expert_begin = c.ep * s.expert_count;
  }
  const int per = m.layers / cfg_.parallel.pp, extra = m.layers % cfg_.parallel.pp;
  s.layer_begin = c.pp * per + std::min(c.pp, extra);
  s.layer_count = per + (c.pp < extra ? 1 : 0);
  return s;
}

int RankLayout::owner_of_sequence(int seq) const {
  const ParallelConfig& p = cfg_.parallel;
  const int per = cfg_.workload.batch / p.dp;
  return ((p.pp - 1) * p.dp + seq / per) * p.tp;
}

std::string RankLayout::describe() const {
  const ParallelConfig& p = cfg_.parallel;
  std::string s = "dp=" + std::to_string(p.dp);
  if (p.tp > 1) s += " tp=" + std::to_string(p.tp);
  if (p.pp > 1) s += " pp=" + std::to_string(p.pp);
  if (p.ep > 1) s += " ep=" + std::to_string(p.ep);
  if (p.micro_batches > 1) s += " micro_batches=" + std::to_string(p.micro_batches);
  return s;
}

std::string RankLayout::rank_map() const {
  std::ostringstream out;
  const int hd = cfg_.model.effective_head_dim();
  for (int r = 0; r < world_; ++r) {
    const SequenceSlice q = sequences_of(r);
    const ShardSpec s = shard_of(r);
    out << "  rank " << r << ": layers " << s.layer_begin << "-" << s.layer_begin + s.layer_count - 1 << ", heads " << s.head_begin << "-"
        << s.head_begin + s.head_count - 1 << " (x" << hd << ")";
    if (cfg_.model.is_moe())
      out << ", experts " << s.expert_begin << "-" << s.expert_begin + s.expert_count - 1;
    if (cfg_.parallel.tp > 1) out << ", ffn columns " << s.ffn_begin << "-" << s.ffn_begin + s.ffn_count - 1;
    out << ", sequences " << q.begin << "-" << q.begin + q.count - 1 << "\n";
  }
  return out.str();
}

}  // namespace moeproxy::parallel
