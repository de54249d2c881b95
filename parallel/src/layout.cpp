#include "moeproxy/parallel/layout.hpp"

#include "moeproxy/parallel/failover.hpp"

#include <algorithm>
#include <numeric>
#include <sstream>
#include <utility>
#include <vector>

namespace moeproxy::parallel {

namespace {

std::string kv(const char* key, int value) { return std::string(key) + "=" + std::to_string(value); }

void must_divide(int degree, const char* degree_key, int value, const char* value_key) {
  if (value % degree != 0)
    throw InputError(kv(degree_key, degree) + " does not divide " + kv(value_key, value) +
                     "; choose a " + degree_key + " that divides " + std::to_string(value));
}

std::string mxn(const ParallelConfig& p) {
  return kv("parallel.head_groups", p.head_groups) + " x " + kv("parallel.dim_groups", p.dim_groups);
}

// Sets of ranks an m x n group spreads the experts over, tokens replicated; the ranks of a
// set split the columns of its experts. 1 without head x dim slicing.
int expert_sets(const RunConfig& cfg) {
  const int group = cfg.parallel.head_groups * cfg.parallel.dim_groups;
  return cfg.model.is_moe() ? std::gcd(cfg.model.experts, group) : 1;
}

std::string list_text(const std::vector<int>& v) {
  std::string out;
  for (const int x : v) out += (out.empty() ? "" : ", ") + std::to_string(x);
  return "[" + out + "]";
}

// Query heads [first, second) of tensor-parallel index `index` of `slices`: the deck's
// parallel.head_distribution, else an even split (with separation the first heads % slices
// ranks take one more).
std::pair<int, int> head_range(const RunConfig& cfg, int index, int slices) {
  const std::vector<int>& given = cfg.parallel.head_distribution;
  if (!given.empty()) {
    const int begin = std::accumulate(given.begin(), given.begin() + index, 0);
    return {begin, begin + given[index]};
  }
  const int per = cfg.model.heads / slices, extra = cfg.model.heads % slices;
  const int begin = index * per + std::min(index, extra);
  return {begin, begin + per + (index < extra ? 1 : 0)};
}

void check_head_distribution(const RunConfig& cfg) {
  const ParallelConfig& p = cfg.parallel;
  const std::vector<int>& h = p.head_distribution;
  if (h.empty()) return;
  const std::string key = "parallel.head_distribution = " + list_text(h);
  if (p.head_groups * p.dim_groups > 1)
    throw InputError(key + " with " + mxn(p) +
                     ": head x dim slicing splits the heads evenly over its head groups; remove "
                     "parallel.head_distribution, or use parallel.tp instead of head x dim slicing");
  if (static_cast<int>(h.size()) != p.tp)
    throw InputError(key + " has " + std::to_string(h.size()) + " entries but " + kv("parallel.tp", p.tp) +
                     ": give one query-head count per tensor-parallel rank");
  for (std::size_t i = 0; i < h.size(); ++i)
    if (h[i] < 1)
      throw InputError(key + ": entry " + std::to_string(i) + " is " + std::to_string(h[i]) +
                       "; every tensor-parallel rank needs at least one head");
  const long sum = std::accumulate(h.begin(), h.end(), 0L);
  if (sum != cfg.model.heads)
    throw InputError(key + " sums to " + std::to_string(sum) + " but " + kv("model.heads", cfg.model.heads) +
                     ": the entries must add up to " + std::to_string(cfg.model.heads));
}

// parallel.expert_map over an expert group of `group` ranks (`group_text` says which).
void check_expert_map(const RunConfig& cfg, int group, const std::string& group_text) {
  const ParallelConfig& p = cfg.parallel;
  const ModelConfig& m = cfg.model;
  if (p.expert_map.empty()) return;
  const std::string key = "parallel.expert_map";
  if (!m.is_moe())
    throw InputError(key + " needs an MoE model (model.ffn = \"moe\"); remove parallel.expert_map");
  if (p.head_groups * p.dim_groups > 1)
    throw InputError(key + " with " + mxn(p) +
                     ": head x dim slicing places the experts over its m x n ranks itself; remove "
                     "parallel.expert_map, or use parallel.ep or parallel.attn_ranks");
  const int lists = static_cast<int>(p.expert_map.size());
  if (p.expert_map_per_layer && lists != m.layers)
    throw InputError(key + " gives rank lists for " + std::to_string(lists) + " layers but " +
                     kv("model.layers", m.layers) +
                     ": give one list of rank lists per layer, or a single list of rank lists for every layer");
  for (int l = 0; l < lists; ++l) {
    const std::string where = p.expert_map_per_layer ? key + " (layer " + std::to_string(l) + ")" : key;
    const std::vector<std::vector<int>>& ranks = p.expert_map[l];
    if (static_cast<int>(ranks.size()) != group)
      throw InputError(where + " has " + std::to_string(ranks.size()) + " rank lists but the expert group has " +
                       std::to_string(group) + " ranks (" + group_text + "); give one list of experts per rank");
    std::vector<int> holder(m.experts, -1);
    for (int r = 0; r < group; ++r)
      for (const int e : ranks[r]) {
        if (e < 0 || e >= m.experts)
          throw InputError(where + ": expert " + std::to_string(e) + " on rank " + std::to_string(r) +
                           " is not an expert of " + kv("model.experts", m.experts) + " (ids 0-" +
                           std::to_string(m.experts - 1) + ")");
        if (holder[e] >= 0)
          throw InputError(where + ": expert " + std::to_string(e) + " is on ranks " + std::to_string(holder[e]) +
                           " and " + std::to_string(r) + "; every expert must be on exactly one rank");
        holder[e] = r;
      }
    for (int e = 0; e < m.experts; ++e)
      if (holder[e] < 0)
        throw InputError(where + ": expert " + std::to_string(e) + " is on no rank; every expert of " +
                         kv("model.experts", m.experts) + " must be on exactly one rank");
  }
}

void check_head_dim(const RunConfig& cfg) {
  const ParallelConfig& p = cfg.parallel;
  const ModelConfig& m = cfg.model;
  const int group = p.head_groups * p.dim_groups;
  if (group == 1) return;
  if (p.tp > 1)
    throw InputError(kv("parallel.tp", p.tp) + " cannot be combined with " + mxn(p) +
                     ": head x dim slicing takes the place of tensor parallelism inside its group of "
                     "m x n ranks; set parallel.tp = 1 (or parallel.head_groups = parallel.dim_groups = 1)");
  if (p.ep > 1)
    throw InputError(kv("parallel.ep", p.ep) + " with " + mxn(p) +
                     " is not available in this version: the m x n ranks already split the experts among "
                     "themselves; set parallel.ep = 1");
  must_divide(p.head_groups, "parallel.head_groups", m.heads, "model.heads");
  if (p.dim_groups > 1) {
    const int hd = m.effective_head_dim();
    if (hd % 2 != 0)
      throw InputError(kv("parallel.dim_groups", p.dim_groups) + " slices each head into whole RoPE pairs (p, p + " +
                       "head_dim/2), which needs an even head dimension, but " + kv("model.head_dim", hd) +
                       " is odd; set parallel.dim_groups = 1 or an even model.head_dim");
    if ((hd / 2) % p.dim_groups != 0)
      throw InputError(kv("parallel.dim_groups", p.dim_groups) + " does not divide the " + std::to_string(hd / 2) +
                       " RoPE pairs (p, p + head_dim/2) of " + kv("model.head_dim", hd) +
                       ": each dimension slice holds whole pairs; choose a parallel.dim_groups that divides " +
                       std::to_string(hd / 2));
  }
  const int sets = expert_sets(cfg), columns = group / sets;
  if (m.ffn_hidden % columns != 0) {
    const std::string how = m.is_moe() ? "puts the " + kv("model.experts", m.experts) + " experts on " +
                                             std::to_string(sets) + " sets of ranks and splits each expert's columns "
                                       : "splits the FFN columns ";
    throw InputError(mxn(p) + " " + how + std::to_string(columns) + " ways, but " + std::to_string(columns) +
                     " does not divide " + kv("model.ffn_hidden", m.ffn_hidden) +
                     "; choose head_groups and dim_groups for which it does");
  }
}

// Attention/MoE separation: ranks [0, attn_ranks) attention (dp x tp), the rest the FFN.
void check_separation(const RunConfig& cfg, int world_size) {
  const ParallelConfig& p = cfg.parallel;
  const ModelConfig& m = cfg.model;
  const int attn = p.attn_ranks, ffn = world_size - attn;
  const std::string sep = kv("parallel.attn_ranks", attn);
  if (ffn < 1)
    throw InputError(sep + " leaves none of the job's " + std::to_string(world_size) +
                     " ranks for the FFN/experts: ranks [0, attn_ranks) run attention, the others the FFN; set "
                     "parallel.attn_ranks below " + std::to_string(world_size) + " or launch more ranks");
  if (p.pp > 1)
    throw InputError(kv("parallel.pp", p.pp) + " with " + sep +
                     ": pipeline parallelism is not available with attention/MoE separation in this version; set "
                     "parallel.pp = 1");
  if (p.head_groups * p.dim_groups > 1)
    throw InputError(mxn(p) + " with " + sep +
                     ": head x dim slicing of the attention ranks is not available in this version; split them with "
                     "parallel.dp and parallel.tp (dp x tp = attn_ranks) and set parallel.head_groups = "
                     "parallel.dim_groups = 1");
  if (static_cast<long>(p.dp) * p.tp != attn)
    throw InputError(kv("parallel.dp", p.dp) + " x " + kv("parallel.tp", p.tp) + " = " +
                     std::to_string(static_cast<long>(p.dp) * p.tp) + " but " + sep +
                     ": with separation dp x tp arranges the attention ranks; set parallel.dp and parallel.tp so that "
                     "dp x tp = " + std::to_string(attn) +
                     (attn % p.tp == 0 ? " (e.g. parallel.dp = " + std::to_string(attn / p.tp) + ")" : std::string()));
  if (p.ep != 1 && p.ep != ffn)
    throw InputError(kv("parallel.ep", p.ep) + " but " + sep + " on " + std::to_string(world_size) +
                     " ranks leaves " + std::to_string(ffn) +
                     " expert ranks: with separation ep is derived as ranks - attn_ranks; set parallel.ep = " +
                     std::to_string(ffn) + " or leave it at 1");
  if (p.tp > m.heads)
    throw InputError(kv("parallel.tp", p.tp) + " exceeds " + kv("model.heads", m.heads) +
                     ": every attention rank needs at least one head; choose parallel.tp <= " + std::to_string(m.heads));
  check_expert_map(cfg, ffn, "the " + std::to_string(ffn) + " ranks after " + sep);
  const int split = m.is_moe() ? m.experts : m.ffn_hidden;
  if (p.expert_map.empty() && split % ffn != 0)
    throw InputError(sep + " on " + std::to_string(world_size) + " ranks leaves " + std::to_string(ffn) +
                     " FFN ranks, which do not divide " +
                     (m.is_moe() ? kv("model.experts", m.experts) : kv("model.ffn_hidden", m.ffn_hidden)) +
                     ": each holds an equal share of the " + (m.is_moe() ? "experts" : "FFN columns") +
                     "; choose attn_ranks (or the rank count) so that ranks - attn_ranks divides " +
                     std::to_string(split) + (m.is_moe() ? ", or place the experts with parallel.expert_map" : ""));
}

}  // namespace

RankLayout RankLayout::build(const RunConfig& cfg, int world_size) {
  const ParallelConfig& p = cfg.parallel;
  const ModelConfig& m = cfg.model;
  const bool separated = p.attn_ranks > 0;
  check_head_distribution(cfg);
  if (separated) check_separation(cfg, world_size);
  check_head_dim(cfg);
  check_replicas(cfg, world_size);
  const bool sliced = p.head_groups * p.dim_groups > 1;
  const long needed = static_cast<long>(p.dp) * p.tp * p.pp * p.head_groups * p.dim_groups;
  if (!separated && needed != world_size)
    throw InputError("parallel.dp=" + std::to_string(p.dp) + " x parallel.tp=" + std::to_string(p.tp) +
                     " x parallel.pp=" + std::to_string(p.pp) + (sliced ? " x " + mxn(p) : std::string()) +
                     " needs " + std::to_string(needed) + " ranks but the job has " + std::to_string(world_size) +
                     "; launch with mpiexec -n " + std::to_string(needed) + " or change parallel.dp / tp / pp" +
                     (sliced ? " / head_groups / dim_groups so that dp x tp x pp x head_groups x dim_groups = "
                             : " so that dp x tp x pp = ") +
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
  if (p.ep_chunks > 1 && separated)
    throw InputError(kv("parallel.ep_chunks", p.ep_chunks) + " chunks the all-to-all-v of expert parallelism, which a "
                     "separated layout (parallel.attn_ranks > 0) does not use: its rows overlap by micro-batches; "
                     "set parallel.ep_chunks = 1 and use parallel.micro_batches");
  if (separated) return RankLayout(cfg, world_size);
  if (p.ep_chunks > 1 && p.ep == 1)
    throw InputError(kv("parallel.ep_chunks", p.ep_chunks) + " overlaps the all-to-all-v of expert parallelism with "
                     "the experts' compute, and parallel.ep = 1 has none; set parallel.ep > 1 or parallel.ep_chunks = 1");
  if (p.head_distribution.empty() && m.heads % p.tp != 0)
    throw InputError(kv("parallel.tp", p.tp) + " does not divide " + kv("model.heads", m.heads) +
                     "; choose a parallel.tp that divides " + std::to_string(m.heads) +
                     ", or give each rank's heads with parallel.head_distribution");
  must_divide(p.tp, "parallel.tp", m.ffn_hidden, "model.ffn_hidden");
  check_expert_map(cfg, p.ep, p.ep > 1 ? kv("parallel.ep", p.ep)
                                       : "parallel.ep=1: every rank holds every expert, a single list");
  if (p.ep > 1) {
    if (!m.is_moe())
      throw InputError(kv("parallel.ep", p.ep) + " needs an MoE model (model.ffn = \"moe\"); set parallel.ep = 1");
    if (p.expert_map.empty() && m.experts % p.ep != 0)
      throw InputError(kv("parallel.ep", p.ep) + " does not divide " + kv("model.experts", m.experts) +
                       "; choose a parallel.ep that divides " + std::to_string(m.experts) +
                       ", or place the experts with parallel.expert_map");
    if (p.dp % p.ep != 0)
      throw InputError(kv("parallel.ep", p.ep) + " must divide " + kv("parallel.dp", p.dp) +
                       ": expert parallelism spreads the experts over data-parallel replicas, whose "
                       "attention stays data-parallel; e.g. set parallel.dp=" + std::to_string(p.ep));
  }
  return RankLayout(cfg, world_size);
}

Coordinates RankLayout::coordinates(int rank) const {
  const ParallelConfig& p = cfg_.parallel;
  const int g = tensor_group();
  Coordinates c;
  c.tp = rank % g;
  c.head = c.tp / p.dim_groups;
  c.dim = c.tp % p.dim_groups;
  c.dp = (rank / g) % p.dp;
  c.pp = rank / (g * p.dp);
  c.ep = c.dp % p.ep;
  return c;
}

bool RankLayout::owns_outputs(int rank) const {
  if (ffn_rank(rank)) return false;
  const Coordinates c = coordinates(rank);
  return c.tp == 0 && c.pp == cfg_.parallel.pp - 1 && !out_of_service(rank);
}

int RankLayout::ep_group(int rank) const {
  // Separation trades rows point to point (separation.cpp), not within an expert group.
  if (separated()) return rank;
  const ParallelConfig& p = cfg_.parallel;
  const Coordinates c = coordinates(rank);
  return (c.pp * (p.dp / p.ep) + c.dp / p.ep) * tensor_group() + c.tp;
}

SequenceSlice RankLayout::sequences_of(int rank) const {
  if (ffn_rank(rank)) return SequenceSlice{0, 0, cfg_.workload.batch};
  const int per = cfg_.workload.batch / cfg_.parallel.dp;
  return SequenceSlice{coordinates(rank).dp * per, per, cfg_.workload.batch};
}

ExpertPlacement RankLayout::placement() const {
  const ModelConfig& m = cfg_.model;
  const ParallelConfig& p = cfg_.parallel;
  if (!m.is_moe()) return ExpertPlacement();
  if (!p.expert_map.empty())
    return ExpertPlacement(p.expert_map_per_layer ? p.expert_map
                                                  : std::vector<std::vector<std::vector<int>>>(m.layers, p.expert_map[0]));
  return ExpertPlacement::even(m.layers, m.experts, separated() ? ffn_ranks() : p.ep * expert_sets(cfg_));
}

int RankLayout::placement_rank(int rank) const {
  if (separated()) return ffn_rank(rank) ? rank - cfg_.parallel.attn_ranks : -1;
  const Coordinates c = coordinates(rank);
  const int sets = expert_sets(cfg_), columns = tensor_group() / sets;
  return c.ep * sets + c.tp / columns;
}

ShardSpec RankLayout::shard_of(int rank) const {
  const Coordinates c = coordinates(rank);
  const ModelConfig& m = cfg_.model;
  const ParallelConfig& p = cfg_.parallel;
  ShardSpec s;
  if (m.is_moe()) {
    // Attention ranks of a separated layout route by the placement but hold no expert.
    s.placement = placement();
    s.placement_rank = placement_rank(rank);
  }
  if (separated()) {
    s.layer_begin = 0;
    s.layer_count = m.layers;
    if (ffn_rank(rank)) {
      s.head_count = 0;
      if (!m.is_moe()) {
        const int j = rank - p.attn_ranks, f = ffn_ranks();
        s.ffn_count = m.ffn_hidden / f;
        s.ffn_begin = j * s.ffn_count;
      }
      return s;
    }
    const std::pair<int, int> heads = head_range(cfg_, c.tp, p.tp);
    s.head_begin = heads.first;
    s.head_count = heads.second - heads.first;
    s.ffn_count = 0;
    return s;
  }
  const std::pair<int, int> heads = head_range(cfg_, c.head, p.tp * p.head_groups);
  s.head_begin = heads.first;
  s.head_count = heads.second - heads.first;
  if (p.dim_groups > 1) {
    s.dim_count = m.effective_head_dim() / 2 / p.dim_groups;
    s.dim_begin = c.dim * s.dim_count;
  }
  // The tensor group's experts go to `sets` sets of ranks; the ranks of a set split columns.
  const int sets = expert_sets(cfg_), columns = tensor_group() / sets;
  s.ffn_count = m.ffn_hidden / columns;
  s.ffn_begin = (c.tp % columns) * s.ffn_count;
  const int per = m.layers / cfg_.parallel.pp, extra = m.layers % cfg_.parallel.pp;
  s.layer_begin = c.pp * per + std::min(c.pp, extra);
  s.layer_count = per + (c.pp < extra ? 1 : 0);
  return s;
}

int RankLayout::owner_of_sequence(int seq) const {
  const ParallelConfig& p = cfg_.parallel;
  const int per = cfg_.workload.batch / p.dp;
  const int replica = cfg_.faults.drill() && seq / per == failed_replica() ? takeover_replica() : seq / per;
  return ((p.pp - 1) * p.dp + replica) * tensor_group();
}

std::string RankLayout::describe() const {
  const ParallelConfig& p = cfg_.parallel;
  std::string s = "dp=" + std::to_string(p.dp);
  if (p.tp > 1) s += " tp=" + std::to_string(p.tp);
  if (p.pp > 1) s += " pp=" + std::to_string(p.pp);
  if (p.ep > 1) s += " ep=" + std::to_string(p.ep);
  if (p.head_groups * p.dim_groups > 1)
    s += " mxn=" + std::to_string(p.head_groups) + "x" + std::to_string(p.dim_groups);
  if (separated()) s += " attn_ranks=" + std::to_string(p.attn_ranks) + " ep=" + std::to_string(ffn_ranks());
  if (!p.head_distribution.empty()) s += " head_distribution=" + list_text(p.head_distribution);
  if (!p.expert_map.empty()) s += p.expert_map_per_layer ? " expert_map(per layer)" : " expert_map";
  if (p.micro_batches > 1) s += " micro_batches=" + std::to_string(p.micro_batches);
  if (p.attn_replicas > 1) s += " attn_replicas=" + std::to_string(p.attn_replicas);
  if (p.ep_chunks > 1) s += " ep_chunks=" + std::to_string(p.ep_chunks);
  return s;
}

MemoryEstimate RankLayout::memory_of(int rank) const {
  const ModelConfig& m = cfg_.model;
  MemoryEstimate e = estimate_memory(m, cfg_.workload, cache_of(rank).count, shard_of(rank));
  if (!ffn_rank(rank)) return e;
  // One micro-batch of every replica's prompts: rows in and out on the device and their host
  // staging, plus the FFN's hidden activations (two with SwiGLU).
  const std::uint64_t tokens = static_cast<std::uint64_t>(cfg_.workload.batch) / cfg_.parallel.micro_batches *
                               cfg_.workload.prompt;
  const ShardSpec s = shard_of(rank);
  // Balanced routing brings each expert tokens * top_k / experts rows: the most in the layer
  // where this rank holds the most experts.
  std::uint64_t held = 0;
  for (int l = 0; m.is_moe() && l < m.layers; ++l) held = std::max<std::uint64_t>(held, s.experts_in(m, l).size());
  const std::uint64_t rows = m.is_moe() ? tokens * m.top_k * held / m.experts : tokens;
  const std::uint64_t columns = s.ffn_count < 0 ? m.ffn_hidden : s.ffn_count;
  const std::uint64_t hidden_mats = m.activation == Activation::swiglu ? 2 : 1;
  e.activations += sizeof(float) * rows * (4 * static_cast<std::uint64_t>(m.hidden) + hidden_mats * columns);
  return e;
}

namespace {

// "experts 1,3" when the shard holds the same experts in each of its layers, else
// "experts by layer 0:1,3 1:none ...".
std::string experts_text(const ModelConfig& m, const ShardSpec& s) {
  const int first = s.layer_begin, last = s.layer_count < 0 ? m.layers : s.layer_begin + s.layer_count;
  bool same = true;
  for (int l = first + 1; l < last; ++l) same = same && s.experts_in(m, l) == s.experts_in(m, first);
  if (same) return "experts " + ExpertPlacement::describe(s.experts_in(m, first));
  std::string out = "experts by layer";
  for (int l = first; l < last; ++l) out += " " + std::to_string(l) + ":" + ExpertPlacement::describe(s.experts_in(m, l));
  return out;
}

}  // namespace

std::string RankLayout::rank_map() const {
  std::ostringstream out;
  const int hd = cfg_.model.effective_head_dim();
  for (int r = 0; r < world_; ++r) {
    const SequenceSlice q = sequences_of(r);
    const ShardSpec s = shard_of(r);
    if (ffn_rank(r)) {
      out << "  rank " << r << ": FFN, layers 0-" << cfg_.model.layers - 1;
      if (cfg_.model.is_moe())
        out << ", " << experts_text(cfg_.model, s);
      else
        out << ", ffn columns " << s.ffn_begin << "-" << s.ffn_begin + s.ffn_count - 1;
      out << ", rows from attention ranks 0-" << cfg_.parallel.attn_ranks - 1 << "\n";
      continue;
    }
    out << "  rank " << r << ": " << (separated() ? "attention, " : "") << "layers " << s.layer_begin << "-" << s.layer_begin + s.layer_count - 1 << ", heads " << s.head_begin << "-"
        << s.head_begin + s.head_count - 1;
    if (s.slices_dims())
      out << " (dims " << s.dim_begin << "-" << s.dim_begin + s.dim_count - 1 << "," << hd / 2 + s.dim_begin << "-"
          << hd / 2 + s.dim_begin + s.dim_count - 1 << " of " << hd << ")";
    else
      out << " (x" << hd << ")";
    if (cfg_.model.is_moe() && !separated()) out << ", " << experts_text(cfg_.model, s);
    if (!separated() && s.ffn_count < cfg_.model.ffn_hidden) out << ", ffn columns " << s.ffn_begin << "-" << s.ffn_begin + s.ffn_count - 1;
    out << ", sequences " << q.begin << "-" << q.begin + q.count - 1;
    if (replicas() > 1) {
      const SequenceSlice cache = cache_of(r);
      out << " (kv cache for its replica group's " << cache.begin << "-" << cache.begin + cache.count - 1 << ")";
    }
    if (cfg_.faults.drill() && out_of_service(r)) out << ", stops at decode step " << cfg_.faults.fail_step;
    if (cfg_.faults.drill() && coordinates(r).dp == takeover_replica())
      out << ", takes over replica " << failed_replica() << "'s sequences at decode step " << cfg_.faults.fail_step;
    out << "\n";
  }
  return out.str();
}

}  // namespace moeproxy::parallel
