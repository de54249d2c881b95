#include "moeproxy/parallel/layout.hpp"

#include <sstream>

namespace moeproxy::parallel {

namespace {

void require_unit(int value, const char* key) {
  if (value != 1)
    throw InputError(std::string("parallel.") + key + "=" + std::to_string(value) +
                     ": this version runs data parallelism only; set parallel." + key +
                     " = 1 (tensor, pipeline, expert and head x dim layouts are coming)");
}

}  // namespace

RankLayout RankLayout::build(const RunConfig& cfg, int world_size) {
  const ParallelConfig& p = cfg.parallel;
  require_unit(p.tp, "tp");
  require_unit(p.pp, "pp");
  require_unit(p.ep, "ep");
  require_unit(p.head_groups, "head_groups");
  require_unit(p.dim_groups, "dim_groups");
  if (p.attn_ranks != 0)
    throw InputError("parallel.attn_ranks=" + std::to_string(p.attn_ranks) +
                     ": attention/MoE separation is not available yet; set parallel.attn_ranks = 0");
  if (p.dp != world_size)
    throw InputError("parallel.dp=" + std::to_string(p.dp) + " needs " + std::to_string(p.dp) +
                     " ranks but the job has " + std::to_string(world_size) +
                     "; launch with mpiexec -n " + std::to_string(p.dp) + " or set parallel.dp=" +
                     std::to_string(world_size));
  if (cfg.workload.batch % p.dp != 0)
    throw InputError("parallel.dp=" + std::to_string(p.dp) + " does not divide workload.batch=" +
                     std::to_string(cfg.workload.batch) + "; choose a batch that is a multiple of dp");
  return RankLayout(cfg, world_size);
}

SequenceSlice RankLayout::sequences_of(int rank) const {
  const int per = cfg_.workload.batch / cfg_.parallel.dp;
  return SequenceSlice{rank * per, per, cfg_.workload.batch};
}

int RankLayout::owner_of_sequence(int seq) const {
  return seq / (cfg_.workload.batch / cfg_.parallel.dp);
}

std::string RankLayout::describe() const {
  return "dp=" + std::to_string(cfg_.parallel.dp);
}

std::string RankLayout::rank_map() const {
  std::ostringstream out;
  for (int r = 0; r < world_; ++r) {
    const SequenceSlice s = sequences_of(r);
    out << "  rank " << r << ": layers 0-" << cfg_.model.layers - 1 << ", all heads";
    if (cfg_.model.is_moe()) out << ", experts 0-" << cfg_.model.experts - 1;
    out << ", sequences " << s.begin << "-" << s.begin + s.count - 1 << "\n";
  }
  return out.str();
}

}  // namespace moeproxy::parallel
