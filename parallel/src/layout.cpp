#include "moeproxy/parallel/layout.hpp"

#include <sstream>

namespace moeproxy::parallel {

namespace {

std::string kv(const char* key, int value) { return std::string(key) + "=" + std::to_string(value); }

void not_yet(int value, int neutral, const char* key, const char* what) {
  if (value != neutral)
    throw InputError(kv(key, value) + ": " + what + " is not available in this version; set " + key +
                     " = " + std::to_string(neutral) + " (data, tensor and expert parallelism are)");
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
  not_yet(p.pp, 1, "parallel.pp", "pipeline parallelism");
  not_yet(p.head_groups, 1, "parallel.head_groups", "head x dim slicing");
  not_yet(p.dim_groups, 1, "parallel.dim_groups", "head x dim slicing");
  not_yet(p.attn_ranks, 0, "parallel.attn_ranks", "attention/MoE separation");
  const int needed = p.dp * p.tp;
  if (needed != world_size)
    throw InputError("parallel.dp=" + std::to_string(p.dp) + " x parallel.tp=" + std::to_string(p.tp) +
                     " needs " + std::to_string(needed) + " ranks but the job has " +
                     std::to_string(world_size) + "; launch with mpiexec -n " + std::to_string(needed) +
                     " or change parallel.dp / parallel.tp so that dp x tp = " + std::to_string(world_size));
  must_divide(p.dp, "parallel.dp", cfg.workload.batch, "workload.batch");
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
  Coordinates c;
  c.tp = rank % cfg_.parallel.tp;
  c.dp = rank / cfg_.parallel.tp;
  c.ep = c.dp % cfg_.parallel.ep;
  return c;
}

int RankLayout::ep_group(int rank) const {
  const Coordinates c = coordinates(rank);
  return (c.dp / cfg_.parallel.ep) * cfg_.parallel.tp + c.tp;
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
  return s;
}

int RankLayout::owner_of_sequence(int seq) const {
  const int per = cfg_.workload.batch / cfg_.parallel.dp;
  return (seq / per) * cfg_.parallel.tp;
}

std::string RankLayout::describe() const {
  const ParallelConfig& p = cfg_.parallel;
  std::string s = "dp=" + std::to_string(p.dp);
  if (p.tp > 1) s += " tp=" + std::to_string(p.tp);
  if (p.ep > 1) s += " ep=" + std::to_string(p.ep);
  return s;
}

std::string RankLayout::rank_map() const {
  std::ostringstream out;
  const int hd = cfg_.model.effective_head_dim();
  for (int r = 0; r < world_; ++r) {
    const SequenceSlice q = sequences_of(r);
    const ShardSpec s = shard_of(r);
    out << "  rank " << r << ": layers 0-" << cfg_.model.layers - 1 << ", heads " << s.head_begin << "-"
        << s.head_begin + s.head_count - 1 << " (x" << hd << ")";
    if (cfg_.model.is_moe())
      out << ", experts " << s.expert_begin << "-" << s.expert_begin + s.expert_count - 1;
    if (cfg_.parallel.tp > 1) out << ", ffn columns " << s.ffn_begin << "-" << s.ffn_begin + s.ffn_count - 1;
    out << ", sequences " << q.begin << "-" << q.begin + q.count - 1 << "\n";
  }
  return out.str();
}

}  // namespace moeproxy::parallel
