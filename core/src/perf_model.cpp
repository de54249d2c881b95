#include "moeproxy/core/perf_model.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <sstream>

namespace moeproxy {

double forward_flops(const ModelConfig& m, int batch, int tokens, int pos0) {
  const double t = static_cast<double>(batch) * tokens;
  const double d = m.hidden, hd = m.effective_head_dim();
  const double proj = 2.0 * t * d * (2.0 * m.q_width() + 2.0 * m.kv_width());
  // Query i attends to pos0 + i + 1 keys: QK^T and PV, 2 FLOPs per multiply-add each.
  const double keys = tokens * (pos0 + 0.5 * (tokens + 1));
  const double attn = 4.0 * batch * m.heads * hd * keys;
  const double mats = m.activation == Activation::swiglu ? 3.0 : 2.0;
  const double per_token_ffn = 2.0 * mats * d * m.ffn_hidden * (m.is_moe() ? m.top_k : 1);
  const double router = m.is_moe() ? 2.0 * d * m.experts : 0.0;
  return m.layers * (proj + attn + t * (per_token_ffn + router));
}

double kernel_seconds(const MachineSpec& m, Precision p, KernelKind kind, double flops, double bytes) {
  const double efficiency = kind == KernelKind::gemm ? m.gemm_efficiency
                            : kind == KernelKind::attention ? m.attention_efficiency
                                                            : 1.0;
  const double compute = flops > 0.0 ? flops / (m.peak_flops(p) * efficiency) : 0.0;
  const double streaming = m.memory_bandwidth * m.memory_efficiency *
                           (kind == KernelKind::gemm ? m.gemm_memory_efficiency : 1.0);
  const double memory = bytes > 0.0 ? bytes / streaming : 0.0;
  return m.kernel_overhead + std::max(compute, memory);
}

namespace {

const Link& link_of(const MachineSpec& m, bool across_nodes) { return across_nodes ? m.inter : m.intra; }
double busbw(const Link& l) { return l.bandwidth * l.efficiency; }

}  // namespace

double allreduce_seconds(const MachineSpec& m, const GroupShape& g, double bytes) {
  if (g.size <= 1) return 0.0;
  const Link& l = link_of(m, g.crosses_nodes());
  const double n = g.size;
  return 2.0 * (n - 1.0) * l.latency + 2.0 * (n - 1.0) / n * bytes / busbw(l);
}

double alltoallv_seconds(const MachineSpec& m, const GroupShape& g, double bytes) {
  if (g.size <= 1) return 0.0;
  const double peers = g.size - 1;
  const double local_peers = std::min(g.size, g.per_node) - 1;
  const double intra = bytes * local_peers / peers, inter = bytes - intra;
  const double alpha = g.crosses_nodes() ? m.inter.latency : m.intra.latency;
  double move = intra / busbw(m.intra);
  if (inter > 0.0) move = std::max(move, inter / busbw(m.inter));
  return alpha + peers * m.peer_overhead + move;
}

double sendrecv_seconds(const MachineSpec& m, bool across_nodes, double bytes) {
  const Link& l = link_of(m, across_nodes);
  return l.latency + bytes / busbw(l);
}

double pipeline_seconds(const std::vector<double>& stage_seconds, int micro_batches) {
  if (stage_seconds.empty()) return 0.0;
  const double sum = std::accumulate(stage_seconds.begin(), stage_seconds.end(), 0.0);
  const double slowest = *std::max_element(stage_seconds.begin(), stage_seconds.end());
  return sum + (micro_batches - 1) * slowest;
}

int deck_ranks(const ParallelConfig& p) {
  if (p.attn_ranks > 0) {
    const int expert_ranks = p.expert_map.empty() ? std::max(1, p.ep) : static_cast<int>(p.expert_map.front().size());
    return p.attn_ranks + expert_ranks;
  }
  return p.dp * p.tp * p.pp * p.head_groups * p.dim_groups;
}

namespace {

std::string kv(const char* key, int value) { return std::string(key) + "=" + std::to_string(value); }

void must_divide(int degree, const char* degree_key, int value, const char* value_key) {
  if (degree <= 0 || value % degree != 0)
    throw InputError(kv(degree_key, degree) + " does not divide " + kv(value_key, value) + "; choose a " +
                     degree_key + " that divides " + std::to_string(value));
}

// splitmix64 (Steele, Lea, Flood 2014): a fixed sequence of uniform doubles in [0, 1).
struct UniformSequence {
  std::uint64_t state = 0x9e3779b97f4a7c15ULL;
  double next() {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return static_cast<double>((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
  }
};

}  // namespace

std::vector<double> expert_shares(const ModelConfig& m, const WorkloadConfig& w) {
  const int experts = std::max(1, m.experts), k = std::clamp(m.top_k, 1, experts);
  std::vector<double> shares(static_cast<std::size_t>(experts), 1.0 / experts);
  if (w.routing != RoutingMode::zipf || experts == 1) return shares;
  std::vector<double> cdf(shares.size());
  double total = 0.0, acc = 0.0;
  for (int e = 0; e < experts; ++e) total += std::pow(e + 1.0, -w.zipf_exponent);
  for (int e = 0; e < experts; ++e) cdf[e] = (acc += std::pow(e + 1.0, -w.zipf_exponent) / total);
  // route_synthetic's draws: the first expert whose cumulative share exceeds u, again where a
  // token already has it, up to 64 tries, then the lowest expert it lacks.
  constexpr int tokens = 1 << 16, max_draws = 64;
  UniformSequence u;
  std::vector<double> picks(shares.size(), 0.0);
  std::vector<int> chosen;
  for (int t = 0; t < tokens; ++t) {
    chosen.clear();
    for (int j = 0; j < k; ++j) {
      auto lacks = [&](int e) { return std::find(chosen.begin(), chosen.end(), e) == chosen.end(); };
      int pick = -1;
      for (int a = 0; a < max_draws && pick < 0; ++a) {
        const int e = std::min(experts - 1, static_cast<int>(std::upper_bound(cdf.begin(), cdf.end(), u.next()) - cdf.begin()));
        if (lacks(e)) pick = e;
      }
      for (int e = 0; pick < 0; ++e)
        if (lacks(e)) pick = e;
      chosen.push_back(pick);
      picks[pick] += 1.0;
    }
  }
  for (std::size_t e = 0; e < shares.size(); ++e) shares[e] = picks[e] / (static_cast<double>(tokens) * k);
  return shares;
}

namespace {

// ---- What one rank holds and runs.

// The part of every layer a rank holds. Attention-less ranks (experts of a separated layout)
// have heads = 0; FFN-less ranks (attention of a separated layout) have experts = 0.
// The most experts one rank of an expert group of `ranks` holds in any layer: the deck's
// parallel.expert_map, else the even split. The busiest rank sets the pace of each layer's
// all-to-all; its share of the group's routed rows is busiest / experts.
int busiest_experts(const RunConfig& cfg, int ranks) {
  const auto& map = cfg.parallel.expert_map;
  if (map.empty()) return cfg.model.experts / ranks;
  std::size_t most = 0;
  for (const auto& layer : map)
    for (const auto& held : layer) most = std::max(most, held.size());
  return static_cast<int>(most);
}

// A holder of experts (a placement rank: parallel.expert_map's ranks, else contiguous blocks
// of the experts) and its expected share of the routed rows (expert_shares) in one layer.
struct ExpertHolder {
  double share = 0.0;            // of all routed rows
  std::vector<double> weights;   // each held expert's part of the holder's rows
};

// holders[layer][holder] of the deck's placement over `count` holders.
std::vector<std::vector<ExpertHolder>> expert_holders(const RunConfig& cfg, int count) {
  const std::vector<double> shares = expert_shares(cfg.model, cfg.workload);
  const auto& map = cfg.parallel.expert_map;
  std::vector<std::vector<ExpertHolder>> out(static_cast<std::size_t>(cfg.model.layers));
  for (int l = 0; l < cfg.model.layers; ++l)
    for (int h = 0; h < count; ++h) {
      std::vector<int> held;
      if (!map.empty()) {
        held = map[cfg.parallel.expert_map_per_layer ? static_cast<std::size_t>(l) : 0][static_cast<std::size_t>(h)];
      } else {
        held.resize(static_cast<std::size_t>(cfg.model.experts / count));
        std::iota(held.begin(), held.end(), h * static_cast<int>(held.size()));
      }
      ExpertHolder holder;
      for (const int e : held) holder.share += shares[static_cast<std::size_t>(e)];
      if (holder.share > 0.0)  // else it receives no rows
        for (const int e : held) holder.weights.push_back(shares[static_cast<std::size_t>(e)] / holder.share);
      out[static_cast<std::size_t>(l)].push_back(holder);
    }
  return out;
}

// The holder with the largest share of one layer's rows: it sets the pace of the layer.
const ExpertHolder& busiest(const std::vector<ExpertHolder>& layer) {
  return *std::max_element(layer.begin(), layer.end(),
                           [](const ExpertHolder& a, const ExpertHolder& b) { return a.share < b.share; });
}

// The busiest holder of any layer.
ExpertHolder busiest_holder(const std::vector<std::vector<ExpertHolder>>& holders) {
  ExpertHolder most;
  for (const auto& layer : holders)
    if (busiest(layer).share > most.share) most = busiest(layer);
  return most;
}

struct Shard {
  int heads = 0, kv_heads = 0, head_dims = 0;
  int ffn = 0;         // columns of each FFN held
  int experts = 0;     // local experts (1 for a dense FFN), the most any rank holds: its memory
  std::vector<double> expert_weights{1.0};  // the busiest holder's experts' parts of its rows: its compute
  double rows = 1.0;   // routed rows computed here per token of the rank's routing group
  bool router = true;  // routes its tokens (MoE)
};

// Communicators, as placed on the machine.
struct Groups {
  GroupShape tensor;  // reduces partial sums after attention and FFN (tp or m x n)
  GroupShape dim;     // sums partial attention scores (n)
  GroupShape expert;  // all-to-all-v of routed rows (ep)
};

struct CommKey {
  std::string operation, group;
  bool operator<(const CommKey& o) const { return std::tie(operation, group) < std::tie(o.operation, o.group); }
};

// Seconds per phase and communication records of one piece of work.
struct Cost {
  std::array<double, phase_count> phase{};
  std::map<CommKey, CommRecord> comm;
  double outside = 0.0;     // seconds of the pass outside every phase (the input rows written)
  double since_sync = 0.0;  // compute seconds since the last synchronisation (Model::synchronise)
  double hidden = 0.0;      // transfer seconds that overlapped the rank's compute (Cost::overlap)

  void add(Phase p, double s) {
    phase[static_cast<int>(p)] += s;
    if (p < Phase::allreduce) since_sync += s;
  }
  void communicate(Phase p, const char* op, const char* group, int size, double bytes, double s) {
    add(p, s);
    CommRecord& r = comm[{op, group}];
    r.operation = op;
    r.group = group;
    r.group_size = size;
    r.calls += 1;
    r.bytes += static_cast<std::uint64_t>(bytes);
    r.uncompressed_bytes = r.bytes;
    r.seconds += s;
  }
  // `s` seconds of phase p's transfers, of the records `keys` (shared evenly), ran while the
  // rank computed: hidden, no longer in the phase nor in the records' exposed seconds.
  void overlap(Phase p, double s, std::initializer_list<CommKey> keys) {
    phase[static_cast<int>(p)] -= s;
    hidden += s;
    for (const CommKey& k : keys) {
      comm[k].seconds -= s / static_cast<double>(keys.size());
      comm[k].hidden_seconds += s / static_cast<double>(keys.size());
    }
  }
  void add(const Cost& o, double times = 1.0) {
    for (int p = 0; p < phase_count; ++p) phase[p] += times * o.phase[p];
    outside += times * o.outside;
    hidden += times * o.hidden;
    for (const auto& [key, r] : o.comm) {
      CommRecord& mine = comm[key];
      mine.operation = r.operation;
      mine.group = r.group;
      mine.group_size = r.group_size;
      mine.calls += static_cast<std::uint64_t>(std::llround(times * r.calls));
      mine.bytes += static_cast<std::uint64_t>(std::llround(times * r.bytes));
      mine.uncompressed_bytes = mine.bytes;
      mine.seconds += times * r.seconds;
      mine.hidden_seconds += times * r.hidden_seconds;
    }
  }
  double total() const { return outside + std::accumulate(phase.begin(), phase.end(), 0.0); }
  double of(std::initializer_list<Phase> ps) const {
    double s = 0.0;
    for (Phase p : ps) s += phase[static_cast<int>(p)];
    return s;
  }
};

// Where a pass leaves a kernel's data: the bytes through the rank's caches since the kernel
// last touched it, at which its profile is looked up between the sweeps (MachineProfiles).
// The weights and the KV cache are read once a pass, so the GEMMs and attention find them
// after the whole pass. The hot set (the pass's activations and buffers, the norms' gains,
// the router's weight) is touched kernel after kernel, and a decode step's stream of
// weights leaves it in the caches: the medium validation deck's decode norm, router,
// permute and combine ran as after the 1 MiB sweep; looked up at the step's footprint they
// were predicted 26-98% high (docs/predict-validation-history.md, 2026-12-07). Between two of its
// touches a layer streams a GEMM's weights or a layer's KV cache through (hot_gap), as a
// sweep streams its bytes between two calls: the tiny deck, whose whole pass fits in an L2,
// ran its decode as after a sweep within the L2, the medium deck's hot set as after one
// beyond it. The collectives stay at the pass's: their MPI buffers are not the pass's, and
// looked up after the hot set the same runs' all-reduces and dispatches were predicted
// 57-65% low.
struct Footprint {
  double pass = 0.0;  // what the pass moves through the rank's caches
  double hot = 0.0;   // the hot set and the gap streamed between two of its touches
};

class Model {
 public:
  // A rank's model for a pass of `n` new tokens per sequence: its kernels see the caches that
  // the pass's `footprint` leaves (Footprint), a prefill's (n > 1) as its activations pass, a
  // decode step's as its weights do (MachineProfiles).
  Model(const RunConfig& cfg, const MachineSpec& machine, Footprint footprint, int n)
      : m_(cfg.model), mc_(machine), p_(cfg.model.precision), es_(element_size(cfg.model.precision)),
        footprint_(footprint), sweep_(n > 1 ? Sweep::read : Sweep::weights), routing_(cfg.workload.routing) {}

  static double element_size(Precision p) { return p == Precision::fp16 ? 2.0 : 4.0; }
  double es() const { return es_; }

  double kernel(KernelKind kind, double flops, double bytes, int launches = 1) const {
    return kernel_seconds(mc_, p_, kind, flops, bytes) + (launches - 1) * mc_.kernel_overhead;
  }
  double gemm(double rows, double inner, double cols) const {
    return measured_or([](const KernelProfiles& k) { return k.gemm.empty() ? nullptr : &k.gemm; },
                       [&](const GemmProfile& p) { return p.seconds(rows, inner, cols); },
                       kernel(KernelKind::gemm, 2.0 * rows * inner * cols, es_ * (rows * inner + inner * cols + rows * cols)),
                       footprint_.pass);
  }
  double stream(double bytes, int launches = 1) const { return kernel(KernelKind::memory, 0.0, bytes, launches); }
  // One call of a bandwidth-bound kernel of `bytes` (its kernel_size), a kernel of the hot set
  // (Footprint): the machine's measured time where it profiles the kernel, else the roofline
  // of `launches` launches.
  double op(const char* name, double bytes, int launches = 1) const {
    return profiled(name, bytes, stream(bytes, launches), footprint_.hot);
  }
  // One call of profiled kernel `name` at `size`, its data where `footprint` bytes through the
  // caches leave it, where the machine profiles it; else `fallback`.
  double profiled(const char* name, double size, double fallback, double footprint) const {
    return measured_or([&](const KernelProfiles& k) { return k.find(name); },
                       [&](const KernelProfile& p) { return p.seconds(size); }, fallback, footprint);
  }
  // One call of a kernel profiled by a parameter (ParameterProfile) at `value` and `size`;
  // `roofline` where the machine does not profile it.
  double op_by(const char* name, double value, double size, double roofline, double footprint) const {
    return measured_or([&](const KernelProfiles& k) { return k.find_by_parameter(name); },
                       [&](const ParameterProfile& p) { return p.seconds(value, size); }, roofline, footprint);
  }
  // A collective of `bytes` (its kernel_size) in group g: the machine's measured time where it
  // profiles the collective on a group of g's size, else `modelled` (alpha-beta).
  double collective(const char* name, const GroupShape& g, double bytes, double modelled) const {
    if (g.size != mc_.profiles.ranks || g.crosses_nodes()) return modelled;
    return profiled(name, bytes, modelled, footprint_.pass);
  }
  double allreduce(const GroupShape& g, double bytes) const {
    return collective("allreduce", g, kernel_size::allreduce(bytes), allreduce_seconds(mc_, g, bytes));
  }
  double alltoallv(const GroupShape& g, double bytes) const {
    return collective("alltoallv", g, kernel_size::alltoallv(bytes), alltoallv_seconds(mc_, g, bytes));
  }
  // A point-to-point message of `bytes`: measured where the machine profiles sends and the
  // peer is on the same node, else alpha-beta.
  double send(bool across_nodes, double bytes) const {
    const double modelled = sendrecv_seconds(mc_, across_nodes, bytes);
    if (mc_.profiles.ranks < 2 || across_nodes) return modelled;
    return profiled("send", kernel_size::send(bytes), modelled, footprint_.pass);
  }
  double rope(double t, double heads, double head_dim) const {
    return op_by("rope", heads, kernel_size::rope(t, head_dim), stream(es_ * 2.0 * t * heads * head_dim), footprint_.hot);
  }
  // `time` of the profile `find` picks from a sweep's profiles, at `footprint` between the
  // sweeps, where the machine has that profile; else `fallback`.
  template <class Find, class Time>
  double measured_or(Find&& find, Time&& time, double fallback, double footprint) const {
    const KernelProfiles* first = mc_.profiles.any();
    if (!first || !find(*first)) return fallback;
    return mc_.profiles.at(footprint, sweep_, [&](const KernelProfiles& k) {
      const auto* p = find(k);
      return p ? time(*p) : fallback;
    });
  }
  // Rows [rows, d] from a host staging buffer to the device or back: the machine's "stage"
  // profile; a machine file calibrated before it was profiled (2026-12-08) prices the copy
  // as its row gather, as the model did then.
  double stage(double rows) const {
    const double bytes = kernel_size::stage(rows, m_.hidden, es_);
    return profiled("stage", bytes, op("gather", kernel_size::gather(rows, m_.hidden, es_)), footprint_.hot);
  }
  double input(double t) const { return op("input", kernel_size::input(t, m_.hidden, es_)); }
  double norm(double t) const { return op("norm", kernel_size::norm(t, m_.hidden, es_)); }
  double add(double t) const { return op("add", kernel_size::add(t, m_.hidden, es_)); }

  // Attention half of one layer for `seqs` sequences of `n` new tokens from position pos0,
  // as Transformer::layer runs it: norm, QKV (+ RoPE, cache store), attention core,
  // output projection, reduction of the partial sums, residual add.
  void attention(Cost& c, const Shard& s, const Groups& g, int seqs, int n, int pos0) const {
    const double t = static_cast<double>(seqs) * n, d = m_.hidden;
    const double q = s.heads * static_cast<double>(s.head_dims), kvw = s.kv_heads * static_cast<double>(s.head_dims);
    c.add(Phase::norm, norm(t));
    const double rotary = m_.rope ? rope(t, s.heads, s.head_dims) + rope(t, s.kv_heads, s.head_dims) : 0.0;
    c.add(Phase::attn_qkv, gemm(t, d, q) + 2.0 * gemm(t, d, kvw) + rotary + op("store_kv", kernel_size::store_kv(t, kvw, es_)));
    const double keys = n * (pos0 + 0.5 * (n + 1.0));
    const double ctx = pos0 + n;
    // Partial scores [t, heads, ctx], summed over the dimension slices before the softmax.
    const double scores = g.dim.size > 1 ? es_ * s.heads * keys * seqs : 0.0;
    const bool prefill = n > 1;
    const char* name = prefill ? "attention_prefill" : "attention_decode";
    const KernelProfiles* measured = mc_.profiles.any();
    if (measured && measured->find_by_parameter(name)) {
      const kernel_size::AttentionTeams teams = prefill ? kernel_size::attention_prefill(seqs, s.heads, s.head_dims, n, pos0)
                                           : kernel_size::attention_decode(seqs, s.heads, s.head_dims, ctx, es_);
      c.add(Phase::attn_core, teams.teams * op_by(name, s.head_dims, teams.size, 0.0, footprint_.pass) +
                                  (scores > 0.0 ? stream(2.0 * scores) : 0.0));
    } else {
      const double flops = kernel_size::attention_flops(seqs, s.heads, s.head_dims, keys);
      const double bytes = es_ * 2.0 * (t * q + seqs * ctx * kvw);
      c.add(Phase::attn_core, kernel(KernelKind::attention, flops, bytes + 2.0 * scores, scores > 0.0 ? 2 : 1));
    }
    if (scores > 0.0) {
      synchronise(c, Phase::allreduce, g.dim.size);
      c.communicate(Phase::allreduce, "allreduce", "dim", g.dim.size, scores, allreduce(g.dim, scores));
    }
    c.add(Phase::attn_out, gemm(t, q, d) + add(t));
    reduce(c, g, t);
  }

  // Router, permutation and combination of t tokens' routed rows, wherever the rank that
  // holds the attention routes them.
  // Synthetic routing (uniform, zipf) draws each token's experts without the router's GEMM.
  double router(double t) const {
    const double choice = stream(kernel_size::top_k(t, m_.experts, m_.top_k, es_));
    if (routing_ != RoutingMode::learned) return choice;
    return op_by("router", m_.hidden, kernel_size::router(t, m_.hidden, m_.experts, m_.top_k, es_),
                 gemm(t, m_.hidden, m_.experts) + choice, footprint_.hot);
  }
  double permute(double t) const {
    const double routed = t * m_.top_k;
    return op("permute", kernel_size::permute(routed, m_.experts), 3) + op("gather", kernel_size::gather(routed, m_.hidden, es_));
  }
  double combine(double t) const {
    return op("combine", kernel_size::combine(t, t * m_.top_k, m_.hidden, es_), 2) + add(t);
  }

  // FFN half: norm, then the dense MLP or route -> permute -> dispatch -> experts ->
  // undispatch -> combine, then the reduction of the partial sums, for t tokens; the rank
  // computes the share s.rows of their routed rows.
  void ffn(Cost& c, const Shard& s, const Groups& g, double t, int ep_chunks) const {
    const double d = m_.hidden;
    const double mats = m_.activation == Activation::swiglu ? 3.0 : 2.0;
    c.add(Phase::norm, norm(t));
    if (!m_.is_moe()) {
      c.add(Phase::ffn, expert_block(t, s.ffn, {1.0}, mats) + add(t));
      reduce(c, g, t);
      return;
    }
    const double k = m_.top_k, routed = t * k;
    c.add(Phase::router, router(t));
    c.add(Phase::permute, permute(t));
    synchronise(c, Phase::dispatch, g.expert.size);
    Cost exchange;
    if (g.expert.size > 1) {
      // Each rank sends its routed rows for the others; the busiest receives s.rows times its
      // even share of them, and the exchange ends when it has.
      const double leaving = es_ * routed * d * (g.expert.size - 1) / g.expert.size;
      const double each = alltoallv(g.expert, leaving * std::max(1.0, s.rows));
      const double counts = alltoallv(g.expert, 4.0 * m_.experts);
      exchange.communicate(Phase::dispatch, "alltoall", "ep", g.expert.size, 4.0 * m_.experts, counts);
      exchange.communicate(Phase::dispatch, "alltoallv", "ep", g.expert.size, leaving, each);
      exchange.communicate(Phase::dispatch, "alltoallv", "ep", g.expert.size, leaving, each);
    }
    const double expert = experts(s, g, t);
    c.add(Phase::expert, expert);
    synchronise(c, Phase::dispatch, g.expert.size);
    c.add(Phase::combine, combine(t));
    if (g.expert.size > 1 && ep_chunks > 1) {
      // Chunk i's routed rows travel while chunk i-1's experts compute (parallel.ep_chunks):
      // two resources in a pipeline of ep_chunks items; the communication exposed is what
      // the experts' compute cannot cover.
      const double compute = expert, comm = exchange.total();
      const double both = compute + comm + (ep_chunks - 1) * std::max(compute, comm);
      const double exposed = std::max(0.0, both / ep_chunks - compute);
      const double scale = comm > 0.0 ? exposed / comm : 0.0;
      for (double& x : exchange.phase) x *= scale;
    }
    c.add(exchange);
    reduce(c, g, t);
  }

  // The experts' compute of a rank holding shard s, for t tokens of each rank of its group.
  double experts(const Shard& s, const Groups& g, double t) const {
    const double mats = m_.activation == Activation::swiglu ? 3.0 : 2.0;
    return expert_block(t * m_.top_k * s.rows, s.ffn, s.expert_weights, mats, g.expert.size);
  }

  // The experts' GEMMs over `rows` rows, each row going to an expert of `cols` columns with
  // its part of `weights` (one per expert held): an expert with at least one row reads its
  // weights once. One activation runs over all the rows (Transformer::expert_ffn): priced per
  // expert, its fixed cost, which decode's few rows per expert are bound by, would count once
  // per expert. Rows from several `sources` are gathered expert by expert first and put back
  // after (Transformer::ffn_rows).
  double expert_block(double rows, double cols, const std::vector<double>& weights, double mats,
                      double sources = 1.0) const {
    if (rows <= 0.0 || weights.empty()) return 0.0;
    const double d = m_.hidden;
    const double regroup = sources > 1.0 ? 2.0 * op("gather", kernel_size::gather(rows, d, es_)) : 0.0;
    // One expert: W1 (and W3), then W2, each a GEMM of its own.
    auto one = [&](double per) { return (mats - 1.0) * gemm(per, d, cols) + gemm(per, cols, d); };
    double seconds = 0.0, last_weight = -1.0, last = 0.0;
    for (const double w : weights) {
      if (w <= 0.0) continue;
      if (w != last_weight) {  // an even split prices one expert
        const double active = w >= 1.0 ? 1.0 : 1.0 - std::pow(1.0 - w, rows);
        last_weight = w;
        last = active * one(rows * w / active);
      }
      seconds += last;
    }
    return seconds + op("activate", kernel_size::activate(rows, cols, mats, es_)) + regroup;
  }

  // What a rank of a `size`-rank group waits at a synchronisation for the slowest of the
  // group, as the machine's sync_wait profile has it for the compute since the previous one
  // (none without the profile). A wait counts in the phase of the collective it precedes.
  void synchronise(Cost& c, Phase p, int size) const {
    if (size <= 1) return;
    const double work = c.since_sync;
    c.since_sync = 0.0;
    if (work <= 0.0) return;
    if (!mc_.profiles.sync_wait.empty()) c.add(p, mc_.profiles.sync_wait.seconds(kernel_size::sync_wait(work)));
  }

  void reduce(Cost& c, const Groups& g, double t) const {
    if (g.tensor.size <= 1) return;
    synchronise(c, Phase::allreduce, g.tensor.size);
    const double bytes = es_ * t * m_.hidden;
    c.communicate(Phase::allreduce, "allreduce", "tp", g.tensor.size, bytes, allreduce(g.tensor, bytes));
  }

 private:
  ModelConfig m_;
  const MachineSpec& mc_;
  Precision p_;
  double es_;
  Footprint footprint_;
  Sweep sweep_;
  RoutingMode routing_;
};

// Bytes of the weights of the hot set (Footprint): the norms' gains and the router.
double hot_weights(const ModelConfig& m, const Shard& s, int layers, double es, bool holds_attention) {
  const double d = m.hidden, norms = m.norm == NormKind::layernorm ? 2 : 1;
  const double per_layer = (holds_attention ? 2 * norms * d : 0.0) + (m.is_moe() && s.router ? d * m.experts : 0.0);
  return es * (layers * per_layer + norms * d);
}

// Floats one layer holds on a rank: its weights by the GEMM that reads them, and its KV
// cache of `sequences` (none where the rank holds no attention).
struct LayerFloats {
  double qkv = 0.0, out = 0.0, ffn = 0.0;  // weights
  double kv = 0.0;
};

LayerFloats layer_floats(const ModelConfig& m, const WorkloadConfig& w, const Shard& s, int sequences,
                         bool holds_attention) {
  const double d = m.hidden, q = s.heads * static_cast<double>(s.head_dims);
  const double kvw = s.kv_heads * static_cast<double>(s.head_dims);
  const double mats = m.activation == Activation::swiglu ? 3 : 2;
  const double positions = static_cast<double>(w.prompt) + w.decode_steps;
  LayerFloats f;
  f.ffn = s.experts * mats * d * s.ffn;
  if (!holds_attention) return f;
  f.qkv = d * (q + 2 * kvw);
  f.out = q * d;
  f.kv = 2 * sequences * positions * kvw;
  return f;
}

// The most bytes a layer streams through the caches between two touches of the hot set:
// the attention's QKV weights; one layer's KV cache and the output weights (read by
// attention and the output GEMM, no hot kernel between them); or the FFN's weights (the
// rank's experts', read one after another between permute and combine).
double hot_gap(const LayerFloats& f, double es) { return es * std::max({f.qkv, f.kv + f.out, f.ffn}); }

// The bytes a pass of n new tokens per sequence moves through a rank's caches: its weights
// and KV cache, and the share of its activations and buffers (sized for the prompt) that the
// pass's tokens use. The hot set's: that share, the `hot` weights, and the `gap` streamed
// between two touches of them (hot_gap), as a sweep streams its bytes between two calls.
Footprint pass_footprint(const std::array<std::uint64_t, memory_kind_count>& memory, double hot, double gap, int n,
                         int prompt) {
  const auto of = [&](MemoryKind k) { return static_cast<double>(memory[static_cast<int>(k)]); };
  const double used = static_cast<double>(n) / prompt * (of(MemoryKind::activations) + of(MemoryKind::comm_buffers));
  return {of(MemoryKind::weights) + of(MemoryKind::kv_cache) + used, used + hot + gap};
}

// Where a rank's kernels are looked up between the sweeps: at its own footprint where each
// rank has its caches to itself (a GPU's L2), else at its share of what the node's
// `node_ranks` move through the caches they share, as calibrate's ranks swept at once. The
// calibration on both cores of the 2-core VM swept twice each sweep's bytes through the
// shared L3; a rank alone there ran its medium-deck decode as the sweep of half its
// footprint predicted (2026-12-06).
Footprint cache_footprint(const MachineSpec& machine, Footprint footprint, int node_ranks) {
  if (!machine.profiles.shared_caches) return footprint;
  const double share = static_cast<double>(node_ranks) / std::max(1, machine.profiles.ranks);
  return {footprint.pass * share, footprint.hot * share};
}

// Memory of one rank from the shapes, as estimate_memory counts it (core/src/model.cpp), in
// the deck's element size.
std::array<std::uint64_t, memory_kind_count> memory_of(const ModelConfig& m, const WorkloadConfig& w,
                                                        const Shard& s, int layers, int sequences, double es,
                                                        double comm_bytes, bool holds_attention) {
  const double d = m.hidden, q = s.heads * static_cast<double>(s.head_dims);
  const double kvw = s.kv_heads * static_cast<double>(s.head_dims);
  const double mats = m.activation == Activation::swiglu ? 3 : 2;
  const LayerFloats layer = layer_floats(m, w, s, sequences, holds_attention);
  const double per_layer = layer.qkv + layer.out + layer.ffn;
  const double positions = static_cast<double>(w.prompt) + w.decode_steps;
  const double t = static_cast<double>(sequences) * w.prompt;
  const double routed = m.is_moe() ? t * m.top_k : t;
  double floats = holds_attention ? t * (4 * d + 2 * q + 2 * kvw) : 0.0;
  floats += routed * s.rows * s.ffn * (mats - 1);
  if (m.is_moe()) floats += t * (m.experts + m.top_k) + 2 * routed * d;
  const double rope_table = holds_attention && m.rope ? sizeof(double) * positions * s.head_dims : 0.0;
  std::array<std::uint64_t, memory_kind_count> mem{};
  auto set = [&](MemoryKind k, double bytes) { mem[static_cast<int>(k)] = static_cast<std::uint64_t>(bytes); };
  set(MemoryKind::weights, es * layers * per_layer + hot_weights(m, s, layers, es, holds_attention));
  set(MemoryKind::kv_cache, es * layers * layer.kv);
  set(MemoryKind::activations, es * floats + rope_table);
  set(MemoryKind::comm_buffers, comm_bytes);
  std::uint64_t sum = 0;
  for (int k = 0; k < static_cast<int>(MemoryKind::high_water); ++k) sum += mem[k];
  mem[static_cast<int>(MemoryKind::high_water)] = sum;
  return mem;
}

// Ranks of a communicator whose members are `stride` ranks apart, as many as fit on a node.
GroupShape group_shape(int size, int stride, int per_node) {
  return GroupShape{size, std::max(1, std::min(size, per_node / std::max(1, stride)))};
}

int kv_heads_held(const ModelConfig& m, int heads_held) {
  const int group = m.heads / m.effective_kv_heads();
  // A shard whose heads straddle kv groups holds both kv heads (parallel/src/layout.cpp).
  return std::max(1, (heads_held + group - 1) / group);
}

// [layer][holder of experts]: how much less than the layer's busiest holder a holder computes,
// waited instead at the collective that brings the rows back (or for the next rows).
using Idle = std::vector<std::vector<double>>;

// Moves `holder`'s idle time, `times` over, from its expert phase to `waits_in`. A holder
// without rows in a layer is idle for all of it: the busiest's time, added step by step,
// less the same `times` over can differ in the last bit and leave -1e-18 s, which a results
// file must not hold; at most what the phase holds moves.
void wait_idle(const Idle& idle, int layer_begin, int holder, double times, Phase waits_in, PhaseTable& table) {
  for (std::size_t l = 0; l < idle.size(); ++l) {
    if (idle[l].empty()) continue;
    const int layer = layer_begin + static_cast<int>(l);
    const double seconds = std::min(times * idle[l][static_cast<std::size_t>(holder)], table.at(layer, Phase::expert));
    table.add(layer, Phase::expert, -seconds);
    table.add(layer, waits_in, seconds);
  }
}

struct Stage {
  // Of one micro-batch, over the stage's layers.
  Idle idle_prefill;
  std::vector<Idle> idle_decode;  // [step]
  Cost prefill_per_mb;  // one micro-batch, this stage's layers (and the hand-off)
  std::vector<Cost> decode_per_mb;  // [step]
  std::vector<Cost> layer_prefill;  // [layer of the stage], one micro-batch
  std::vector<std::vector<Cost>> layer_decode;  // [step][layer]
  int layer_begin = 0, layer_count = 0;
  std::array<std::uint64_t, memory_kind_count> memory{};  // of each of the stage's ranks
};

void add_layers(const std::vector<Cost>& layers, int layer_begin, double times, PhaseTable& table) {
  for (std::size_t i = 0; i < layers.size(); ++i)
    for (int p = 0; p < phase_count; ++p)
      if (layers[i].phase[p] != 0.0) table.add(layer_begin + static_cast<int>(i), static_cast<Phase>(p), times * layers[i].phase[p]);
}

void collect_comm(std::map<CommKey, CommRecord>& into, const Cost& c, double times) {
  Cost tmp;
  tmp.comm = into;
  tmp.add(c, times);
  into = tmp.comm;
}

double comm_phase_seconds(const PhaseTable& t) {
  double s = 0.0;
  for (int l = 0; l < t.layers(); ++l)
    for (Phase p : {Phase::allreduce, Phase::dispatch, Phase::send, Phase::recv, Phase::wait}) s += t.at(l, p);
  return s;
}

void summarize(const RunConfig& cfg, const MachineSpec& machine, Prediction& out) {
  const WorkloadConfig& w = cfg.workload;
  double pre = 0.0, dec = 0.0, flops = 0.0, comm = 0.0, hidden = 0.0;
  // The communication phases are what the model did not overlap: exposed; what it overlapped
  // (the separated ping-pong) each rank carries as comm_hidden_seconds.
  for (RankMetrics& r : out.per_rank) {
    pre = std::max(pre, r.prefill_seconds);
    dec = std::max(dec, r.decode_seconds);
    flops += r.prefill_flops + r.decode_flops;
    r.comm_exposed_seconds = comm_phase_seconds(r.prefill) + comm_phase_seconds(r.decode);
    comm += r.comm_exposed_seconds;
    hidden += r.comm_hidden_seconds;
  }
  RunSummary& s = out.summary;
  s.prefill_tokens_per_s = pre > 0.0 ? static_cast<double>(w.batch) * w.prompt / pre : 0.0;
  s.ttft_s = pre;
  s.tpot_s = w.decode_steps > 0 ? dec / w.decode_steps : 0.0;
  s.decode_tokens_per_s = w.decode_steps > 0 && dec > 0.0 ? static_cast<double>(w.batch) * w.decode_steps / dec : 0.0;
  s.peak_flops = machine.peak_flops(cfg.model.precision) * out.ranks;
  s.mfu = s.peak_flops > 0.0 ? flops / (pre + dec) / s.peak_flops : 0.0;
  s.comm_seconds_raw = comm + hidden;
  s.comm_exposed_seconds = comm;
  s.comm_hidden_seconds = hidden;
  s.comm_fraction = comm / out.ranks / (pre + dec);
  s.verification = "SKIPPED";
  s.verification_note = "predicted by the performance model for machine " + machine.name + ", not run";
  if (cfg.model.is_moe()) {
    const double routed = static_cast<double>(w.batch) * w.prompt * cfg.model.top_k;
    const std::vector<double> shares = expert_shares(cfg.model, w);
    for (int l = 0; l < cfg.model.layers; ++l)
      for (const double share : shares) out.expert_tokens.push_back(static_cast<std::uint64_t>(std::llround(routed * share)));
    const double most = *std::max_element(shares.begin(), shares.end());
    s.expert_imbalance = most * cfg.model.experts - 1.0;
  }
}

// ---- dp x tp x pp x ep x (m x n): the layouts parallel/src/layout.cpp builds.

Prediction predict_grid(const RunConfig& cfg, const MachineSpec& machine, int ranks) {
  const ParallelConfig& p = cfg.parallel;
  const ModelConfig& m = cfg.model;
  const WorkloadConfig& w = cfg.workload;
  const int group = p.tp * p.head_groups * p.dim_groups;
  const long needed = static_cast<long>(p.dp) * p.pp * group;
  if (needed != ranks)
    throw InputError("parallel.dp=" + std::to_string(p.dp) + " x parallel.tp=" + std::to_string(p.tp) +
                     " x parallel.pp=" + std::to_string(p.pp) + " x head_groups x dim_groups = " +
                     std::to_string(needed) + " ranks, but --ranks is " + std::to_string(ranks) +
                     "; pass --ranks " + std::to_string(needed) + " or change the degrees");
  must_divide(p.dp, "parallel.dp", w.batch, "workload.batch");
  must_divide(p.tp * p.head_groups, "parallel.tp x parallel.head_groups", m.heads, "model.heads");
  if (p.pp > m.layers) throw InputError(kv("parallel.pp", p.pp) + " exceeds " + kv("model.layers", m.layers));
  const int per_replica = w.batch / p.dp;
  must_divide(p.micro_batches, "parallel.micro_batches", per_replica, "sequences per data-parallel replica");
  if (p.ep > 1) {
    if (!m.is_moe()) throw InputError(kv("parallel.ep", p.ep) + " needs an MoE model");
    if (p.expert_map.empty()) must_divide(p.ep, "parallel.ep", m.experts, "model.experts");
    must_divide(p.ep, "parallel.ep", p.dp, "parallel.dp");
  }
  const int gpn = machine.devices_per_node, node_ranks = std::min(ranks, gpn);
  const int sets = m.is_moe() ? std::gcd(m.experts, p.head_groups * p.dim_groups) : 1;
  const int columns = group / sets;
  Shard s;
  s.heads = m.heads / (p.tp * p.head_groups);
  s.head_dims = m.effective_head_dim() / p.dim_groups;
  s.kv_heads = kv_heads_held(m, s.heads);
  s.ffn = m.ffn_hidden / columns;
  s.experts = m.is_moe() ? (p.expert_map.empty() ? m.experts / (p.ep * sets) : busiest_experts(cfg, p.ep)) : 1;
  // Each layer is paced by its busiest holder of experts; the other holders compute less and
  // wait for it at the all-to-all that brings the rows back.
  const int holder_count = m.is_moe() ? (p.expert_map.empty() ? p.ep * sets : p.ep) : 0;
  const auto holders = m.is_moe() ? expert_holders(cfg, holder_count) : std::vector<std::vector<ExpertHolder>>{};
  auto holding = [&](const ExpertHolder& h) {
    Shard shard = s;
    shard.expert_weights = h.weights;
    shard.rows = p.ep * h.share;
    return shard;
  };
  if (m.is_moe()) s = holding(busiest_holder(holders));  // the memory of the busiest of any layer
  auto holder_of_rank = [&](int rank) {
    const int tp = rank % group, ep = (rank / group) % p.dp % p.ep;
    return p.expert_map.empty() ? ep * sets + tp / columns : ep;
  };
  Groups g;
  g.tensor = group_shape(group, 1, gpn);
  g.dim = group_shape(p.dim_groups, 1, gpn);
  g.expert = group_shape(p.ep, group, gpn);
  const bool overlap = p.ep > 1 && p.ep_chunks > 1;
  const double es = Model::element_size(m.precision), d = m.hidden;
  const int mb = p.micro_batches, seqs = per_replica / mb;
  const int stride = p.dp * group;  // ranks between neighbouring stages
  const bool stage_link_inter = stride >= gpn;

  Prediction out;
  out.ranks = ranks;
  std::vector<Stage> stages(p.pp);
  const int per = m.layers / p.pp, extra = m.layers % p.pp;
  for (int st = 0; st < p.pp; ++st) {
    Stage& S = stages[st];
    S.layer_begin = st * per + std::min(st, extra);
    S.layer_count = per + (st < extra ? 1 : 0);
    const bool last = st == p.pp - 1;
    double comm_bytes = 0.0;
    if (p.ep > 1) comm_bytes += es * 2.0 * per_replica * w.prompt * m.top_k * d;
    if (p.pp > 1) comm_bytes += es * static_cast<double>(seqs) * w.prompt * d;
    S.memory = memory_of(m, w, s, S.layer_count, per_replica, es, comm_bytes, true);
    auto pass = [&](int n, int pos0, std::vector<Cost>& layers, Cost& whole, Idle& idle) {
      const Footprint f = pass_footprint(S.memory, hot_weights(m, s, S.layer_count, es, true),
                                         hot_gap(layer_floats(m, w, s, per_replica, true), es), n, w.prompt);
      const Model model(cfg, machine, cache_footprint(machine, f, node_ranks), n);
      const double t = static_cast<double>(seqs) * n;
      for (int l = 0; l < S.layer_count; ++l) {
        Cost c;
        if (st == 0 && l == 0 && pos0 == 0) c.outside += model.input(t);
        model.attention(c, s, g, seqs, n, pos0);
        idle.emplace_back();
        if (holders.empty()) {
          model.ffn(c, s, g, t, p.ep_chunks);
        } else {
          const auto& layer = holders[static_cast<std::size_t>(S.layer_begin + l)];
          const Shard pace = holding(busiest(layer));
          model.ffn(c, pace, g, t, p.ep_chunks);
          const double most = model.experts(pace, g, t);
          for (const ExpertHolder& h : layer) idle.back().push_back(most - model.experts(holding(h), g, t));
        }
        layers.push_back(c);
      }
      Cost& tail = layers.back();
      if (last) {
        tail.add(Phase::norm, model.norm(t));
        if (p.pp > 1) {  // newest rows back to the first stage
          const double bytes = es * seqs * d;
          tail.communicate(Phase::send, "send", "pp", p.pp, bytes, model.send(stage_link_inter, bytes));
        }
      } else {
        const double bytes = es * t * d;
        tail.communicate(Phase::send, "send", "pp", p.pp, bytes, model.send(stage_link_inter, bytes));
      }
      for (const Cost& c : layers) whole.add(c);
    };
    pass(w.prompt, 0, S.layer_prefill, S.prefill_per_mb, S.idle_prefill);
    for (int step = 0; step < w.decode_steps; ++step) {
      S.layer_decode.emplace_back();
      S.decode_per_mb.emplace_back();
      S.idle_decode.emplace_back();
      pass(1, w.prompt + step, S.layer_decode.back(), S.decode_per_mb.back(), S.idle_decode.back());
    }
  }
  // Stage s receives what stage s - 1 sends: the transfer shows in its recv phase, with the
  // time it waits for the pipeline to fill; the first stage waits for the feedback instead.
  auto stage_times = [&](auto get) {
    std::vector<double> t;
    for (const Stage& S : stages) t.push_back(get(S).total());
    return t;
  };
  const double prefill_wall = pipeline_seconds(stage_times([](const Stage& S) -> const Cost& { return S.prefill_per_mb; }), mb);
  std::vector<double> decode_walls;
  for (int step = 0; step < w.decode_steps; ++step)
    decode_walls.push_back(pipeline_seconds(
        stage_times([step](const Stage& S) -> const Cost& { return S.decode_per_mb[step]; }), mb));
  const double decode_wall = std::accumulate(decode_walls.begin(), decode_walls.end(), 0.0);

  std::vector<RankMetrics> stage_metrics(p.pp);
  std::vector<std::map<CommKey, CommRecord>> stage_comm(p.pp);
  for (int st = 0; st < p.pp; ++st) {
    const Stage& S = stages[st];
    RankMetrics& r = stage_metrics[st];
    r.prefill = PhaseTable(m.layers);
    r.decode = PhaseTable(m.layers);
    add_layers(S.layer_prefill, S.layer_begin, mb, r.prefill);
    collect_comm(stage_comm[st], S.prefill_per_mb, mb);
    const Phase idle = st == 0 ? Phase::wait : Phase::recv;
    if (p.pp > 1) r.prefill.add(S.layer_begin, idle, prefill_wall - mb * S.prefill_per_mb.total());
    for (int step = 0; step < w.decode_steps; ++step) {
      add_layers(S.layer_decode[step], S.layer_begin, mb, r.decode);
      collect_comm(stage_comm[st], S.decode_per_mb[step], mb);
      if (p.pp > 1) r.decode.add(S.layer_begin, idle, decode_walls[step] - mb * S.decode_per_mb[step].total());
    }
    r.prefill_seconds = prefill_wall;
    r.decode_seconds = decode_wall;
    r.decode_step_seconds = decode_walls;
    const double share = static_cast<double>(S.layer_count) / m.layers / (p.tp * p.head_groups * p.dim_groups);
    r.prefill_flops = share * forward_flops(m, per_replica, w.prompt, 0);
    for (int step = 0; step < w.decode_steps; ++step) r.decode_flops += share * forward_flops(m, per_replica, 1, w.prompt + step);
    r.memory = S.memory;
    for (const auto& entry : stage_comm[st]) r.comm.push_back(entry.second);
  }
  // A holder waits at the collective that brings the rows back: the all-to-all with EP, else
  // the tensor group's all-reduce.
  const Phase waits_in = p.ep > 1 ? Phase::dispatch : Phase::allreduce;
  for (int rank = 0; rank < ranks; ++rank) {
    const int st = rank / stride;
    out.per_rank.push_back(stage_metrics[st]);
    if (holder_count > 1) {
      const Stage& S = stages[st];
      RankMetrics& r = out.per_rank.back();
      wait_idle(S.idle_prefill, S.layer_begin, holder_of_rank(rank), mb, waits_in, r.prefill);
      for (int step = 0; step < w.decode_steps; ++step)
        wait_idle(S.idle_decode[step], S.layer_begin, holder_of_rank(rank), mb, waits_in, r.decode);
    }
    out.roles.push_back(p.pp > 1 ? "stage " + std::to_string(st) : "all layers");
  }
  std::ostringstream layout;
  layout << "dp=" << p.dp;
  if (p.tp > 1) layout << " tp=" << p.tp;
  if (p.pp > 1) layout << " pp=" << p.pp;
  if (p.ep > 1) layout << " ep=" << p.ep;
  if (p.head_groups * p.dim_groups > 1) layout << " mxn=" << p.head_groups << "x" << p.dim_groups;
  if (mb > 1) layout << " micro_batches=" << mb;
  if (overlap) layout << " ep_chunks=" << p.ep_chunks;
  out.layout = layout.str();
  if (overlap)
    out.assumptions.push_back("expert dispatch and combine overlapped with the experts' compute in " +
                              std::to_string(p.ep_chunks) + " chunks (parallel.ep_chunks)");
  return out;
}

// ---- Attention/MoE separation: ranks [0, attn_ranks) run attention (and route), the rest
// hold the experts; every layer's routed rows go attention -> experts -> attention.

Prediction predict_separated(const RunConfig& cfg, const MachineSpec& machine, int ranks) {
  const ParallelConfig& p = cfg.parallel;
  const ModelConfig& m = cfg.model;
  const WorkloadConfig& w = cfg.workload;
  const int A = p.attn_ranks, E = ranks - A;
  if (!m.is_moe()) throw InputError(kv("parallel.attn_ranks", A) + " separates attention from the experts: it needs model.ffn = \"moe\"");
  if (E < 1)
    throw InputError(kv("parallel.attn_ranks", A) + " leaves no rank for the experts of a " + std::to_string(ranks) +
                     "-rank job; pass --ranks " + std::to_string(A + std::max(1, p.ep)) + " or lower parallel.attn_ranks");
  if (p.pp > 1) throw InputError(kv("parallel.pp", p.pp) + " with parallel.attn_ranks is not modelled; set parallel.pp = 1");
  if (p.expert_map.empty() && m.experts % E != 0)
    throw InputError(std::to_string(E) + " expert ranks (" + std::to_string(ranks) + " - " + kv("parallel.attn_ranks", A) +
                     ") do not divide " + kv("model.experts", m.experts));
  const int gpn = machine.devices_per_node, node_ranks = std::min(ranks, gpn);
  // Attention ranks: the deck's tensor group (tp or m x n) replicated data-parallel; when the
  // replicas cannot split the batch evenly and there are no more attention ranks than heads,
  // the heads spread over all of them, as the seeds do; otherwise the busiest replica holds
  // ceil(batch / replicas) sequences.
  const int tensor = p.tp * p.head_groups * p.dim_groups;
  const bool even = A % tensor == 0 && w.batch % (A / tensor) == 0;
  const bool data_parallel = even || A > m.heads;
  if (data_parallel && A % tensor != 0)
    throw InputError(kv("parallel.attn_ranks", A) + " is not a multiple of the attention tensor group of " +
                     std::to_string(tensor) + " ranks (parallel.tp x head_groups x dim_groups)");
  const int attn_dp = data_parallel ? A / tensor : 1;
  const int attn_group = data_parallel ? tensor : A;
  const int seqs_rank = (w.batch + attn_dp - 1) / attn_dp;
  if (even && seqs_rank % p.micro_batches != 0)
    throw InputError(kv("parallel.micro_batches", p.micro_batches) + " does not divide the " + std::to_string(seqs_rank) +
                     " sequences of each attention replica");
  const int mb = p.micro_batches, seqs = (seqs_rank + mb - 1) / mb;
  Shard attn;
  attn.heads = data_parallel ? m.heads / (p.tp * p.head_groups) : (m.heads + A - 1) / A;
  attn.head_dims = m.effective_head_dim() / (data_parallel ? p.dim_groups : 1);
  attn.kv_heads = kv_heads_held(m, attn.heads);
  attn.experts = 0;
  attn.rows = 0.0;
  Groups ga;
  ga.tensor = group_shape(attn_group, 1, gpn);
  if (data_parallel) ga.dim = group_shape(p.dim_groups, 1, gpn);
  Shard moe;
  moe.experts = busiest_experts(cfg, E);
  // Each layer is paced by its busiest expert rank; the others compute their own shares and
  // wait for it, as in the grid.
  const auto holders = expert_holders(cfg, E);
  const ExpertHolder most = busiest_holder(holders);  // sizes every expert rank's buffers
  moe.expert_weights = most.weights;
  moe.ffn = m.ffn_hidden;
  moe.router = false;
  const double es = Model::element_size(m.precision), d = m.hidden, k = m.top_k;
  RankMetrics ra, re;
  const double t_rank = static_cast<double>(seqs_rank) * w.prompt;
  ra.memory = memory_of(m, w, attn, m.layers, seqs_rank, es, es * 2.0 * t_rank * k * d / (data_parallel ? 1.0 : A), true);
  moe.rows = static_cast<double>(w.batch) / seqs_rank * most.share;  // routed rows here per token of an attention replica
  re.memory = memory_of(m, w, moe, m.layers, seqs_rank, es, es * 2.0 * w.batch * w.prompt * k * d / E, false);
  const bool across = ranks > gpn;

  struct Layer {
    Cost attn, moe;  // moe: the busiest expert rank's
    std::vector<double> idle;  // [expert rank], all micro-batches
    double wall = 0.0;
    double work_a = 0.0, work_e = 0.0, hop = 0.0;  // one micro-batch
  };
  // One layer for all micro-batches of a pass: the two sides and the link form a loop that
  // micro-batches circulate through; with enough of them the busiest resource paces it.
  auto layer = [&](int n, int pos0, int l) {
    const bool first = l == 0, last = l == m.layers - 1;
    const auto& held = holders[static_cast<std::size_t>(l)];
    const ExpertHolder& pace = busiest(held);
    const Footprint fa = pass_footprint(ra.memory, hot_weights(m, attn, m.layers, es, true),
                                         hot_gap(layer_floats(m, w, attn, seqs_rank, true), es), n, w.prompt),
                    fe = pass_footprint(re.memory, hot_weights(m, moe, m.layers, es, false),
                                         hot_gap(layer_floats(m, w, moe, seqs_rank, false), es), n, w.prompt);
    const Model attn_model(cfg, machine, cache_footprint(machine, fa, node_ranks), n),
        moe_model(cfg, machine, cache_footprint(machine, fe, node_ranks), n);
    Layer L;
    const double t = static_cast<double>(seqs) * n;           // one micro-batch of an attention replica
    const double all = static_cast<double>(w.batch) / mb * n;  // one micro-batch, all replicas
    Cost a;
    if (first && pos0 == 0) a.outside += attn_model.input(t);
    attn_model.attention(a, attn, ga, seqs, n, pos0);
    a.add(Phase::norm, attn_model.norm(t));
    a.add(Phase::router, attn_model.router(t));
    a.add(Phase::permute, attn_model.permute(t));
    a.add(Phase::combine, attn_model.combine(t));
    if (last) a.add(Phase::norm, attn_model.norm(t));
    // Replicas send their own rows; ranks sharing heads hold every row and send 1/group each.
    const double rows_a = t * k / (data_parallel ? 1.0 : A);
    const double rows_e = all * k * pace.share;  // per (busiest) expert rank
    const double sent = es * rows_a * d, received = es * rows_e * d;
    // A message each way, as the machine's point-to-point send has it (its profile within a
    // node where calibrated, else alpha-beta), and a peer's overhead for each expert rank.
    const double hop = moe_model.send(across, std::max(sent, received)) + E * machine.peer_overhead;
    const double mats = m.activation == Activation::swiglu ? 3.0 : 2.0;
    auto computes = [&](const ExpertHolder& h) {
      return moe_model.expert_block(all * k * h.share, m.ffn_hidden, h.weights, mats, A);
    };
    const double paced = computes(pace);
    Cost e;
    e.add(Phase::expert, paced);
    for (const ExpertHolder& h : held) L.idle.push_back(mb * (paced - computes(h)));
    // Rows leave and arrive through host staging buffers (Separation::send, finish, run_ffn):
    // a copy each way on each side, as the runtime times them (on a GPU across PCIe). The
    // transfers themselves happen while the receiving side waits for them.
    a.add(Phase::dispatch, 2.0 * attn_model.stage(rows_a));
    const double copy_e = moe_model.stage(rows_e);
    e.add(Phase::recv, copy_e);
    e.add(Phase::send, copy_e);
    L.work_a = a.total();
    L.work_e = e.total();
    L.hop = hop;
    const double loop = L.work_a + 2.0 * hop + L.work_e;
    L.wall = std::max(loop, mb * std::max({L.work_a, L.work_e, hop}));
    // A side waits for its transfers, except for what exceeds the layer's wall: that ran while
    // it computed another micro-batch (the ping-pong), hidden. Its idle time is waited too.
    auto settle = [&](Cost& side) {
      const double over = std::min(side.total() - L.wall, side.of({Phase::wait}));
      if (over > 0.0) side.overlap(Phase::wait, over, {{"send", "attn-moe"}, {"recv", "attn-moe"}});
      side.add(Phase::wait, std::max(0.0, L.wall - side.total()));
    };
    L.attn.add(a, mb);
    L.attn.communicate(Phase::wait, "send", "attn-moe", ranks, sent * mb, hop * mb);
    L.attn.communicate(Phase::wait, "recv", "attn-moe", ranks, sent * mb, hop * mb);
    settle(L.attn);
    L.moe.add(e, mb);
    L.moe.communicate(Phase::wait, "recv", "attn-moe", ranks, received * mb, hop * mb);
    L.moe.communicate(Phase::wait, "send", "attn-moe", ranks, received * mb, hop * mb);
    settle(L.moe);
    return L;
  };

  ra.prefill = PhaseTable(m.layers);
  ra.decode = PhaseTable(m.layers);
  re.prefill = PhaseTable(m.layers);
  re.decode = PhaseTable(m.layers);
  std::map<CommKey, CommRecord> ca, ce;
  // Summed over the steps in decode.
  Idle idle_prefill(m.layers, std::vector<double>(E)), idle_decode = idle_prefill;
  // Micro-batch i's layer l waits only for its own layer l - 1 (Separation::run_attention),
  // so the layers pipeline into each other and their walls add up, but for the pass's ends:
  // the experts get no rows before the first micro-batch's attention, and the last
  // micro-batch still goes to the experts and back after the attention ranks' last compute.
  // Both sides wait for that (the experts at the first layer, the attention at the last).
  auto pass = [&](int n, int pos0, PhaseTable& ta, PhaseTable& te, Idle& idle) {
    double wall = 0.0, attention = 0.0, experts = 0.0;
    std::vector<Layer> layers;
    for (int l = 0; l < m.layers; ++l) {
      layers.push_back(layer(n, pos0, l));
      const Layer& L = layers.back();
      attention += mb * L.work_a;
      experts += mb * L.work_e;
      wall += L.wall;
    }
    Layer &first = layers.front(), &last = layers.back();
    const double fill = first.work_a + first.hop, back = last.hop, drain = 2.0 * last.hop + last.work_e;
    const double ends = std::max({0.0, fill + experts + back - wall, attention + drain - wall});
    last.attn.add(Phase::wait, ends);
    first.moe.add(Phase::wait, ends);
    // The experts end the pass waiting for their last results to leave, which the runtime
    // times as their `send` (Separation::run_ffn): out of the pass's waits, the last layer's first.
    double leave = back;
    for (auto L = layers.rbegin(); L != layers.rend() && leave > 0.0; ++L) {
      const double moved = std::min(leave, L->moe.of({Phase::wait}));
      L->moe.add(Phase::wait, -moved);
      last.moe.add(Phase::send, moved);
      leave -= moved;
    }
    for (int l = 0; l < m.layers; ++l) {
      const Layer& L = layers[static_cast<std::size_t>(l)];
      add_layers({L.attn}, l, 1.0, ta);
      add_layers({L.moe}, l, 1.0, te);
      for (int h = 0; h < E; ++h) idle[l][h] += L.idle[h];
      collect_comm(ca, L.attn, 1.0);
      collect_comm(ce, L.moe, 1.0);
      ra.comm_hidden_seconds += L.attn.hidden;
      re.comm_hidden_seconds += L.moe.hidden;
    }
    return wall + ends;
  };
  const double prefill_wall = pass(w.prompt, 0, ra.prefill, re.prefill, idle_prefill);
  std::vector<double> decode_walls;
  for (int step = 0; step < w.decode_steps; ++step)
    decode_walls.push_back(pass(1, w.prompt + step, ra.decode, re.decode, idle_decode));
  const double decode_wall = std::accumulate(decode_walls.begin(), decode_walls.end(), 0.0);
  for (RankMetrics* r : {&ra, &re}) {
    r->prefill_seconds = prefill_wall;
    r->decode_seconds = decode_wall;
    r->decode_step_seconds = decode_walls;
  }
  // Model FLOPs split by where they run: attention (and router) on one side, experts on the other.
  const double total_pre = forward_flops(m, w.batch, w.prompt, 0);
  double total_dec = 0.0;
  for (int step = 0; step < w.decode_steps; ++step) total_dec += forward_flops(m, w.batch, 1, w.prompt + step);
  const double mats = m.activation == Activation::swiglu ? 3.0 : 2.0;
  const double expert_pre = m.layers * 2.0 * mats * d * m.ffn_hidden * k * w.batch * w.prompt;
  const double expert_dec = m.layers * 2.0 * mats * d * m.ffn_hidden * k * w.batch * w.decode_steps;
  ra.prefill_flops = (total_pre - expert_pre) / A;
  ra.decode_flops = (total_dec - expert_dec) / A;
  re.prefill_flops = expert_pre / E;
  re.decode_flops = expert_dec / E;
  for (const auto& entry : ca) ra.comm.push_back(entry.second);
  for (const auto& entry : ce) re.comm.push_back(entry.second);

  Prediction out;
  out.ranks = ranks;
  for (int r = 0; r < ranks; ++r) {
    out.per_rank.push_back(r < A ? ra : re);
    out.roles.push_back(r < A ? "attention" : "experts");
    if (r < A) continue;
    wait_idle(idle_prefill, 0, r - A, 1.0, Phase::wait, out.per_rank.back().prefill);
    wait_idle(idle_decode, 0, r - A, 1.0, Phase::wait, out.per_rank.back().decode);
  }
  std::ostringstream layout;
  layout << "attn=" << A << " experts=" << E;
  if (data_parallel) {
    layout << " attn_dp=" << attn_dp;
    if (p.tp > 1) layout << " tp=" << p.tp;
    if (p.head_groups * p.dim_groups > 1) layout << " mxn=" << p.head_groups << "x" << p.dim_groups;
  } else {
    layout << " heads over " << A;
  }
  if (mb > 1) layout << " micro_batches=" << mb;
  out.layout = layout.str();
  out.assumptions.push_back(
      "attention/MoE separation: micro-batches circulate attention -> experts -> attention, each side and the link "
      "a stage");
  if (data_parallel && !even)
    out.assumptions.push_back("the batch does not split evenly over " + std::to_string(attn_dp) +
                              " attention replicas: the busiest holds " + std::to_string(seqs_rank) + " sequences");
  if (!data_parallel)
    out.assumptions.push_back("heads spread over the " + std::to_string(A) + " attention ranks (at most " +
                              std::to_string(attn.heads) + " each), partial sums all-reduced over them");
  return out;
}

}  // namespace

namespace {

std::string routing_assumption(const RunConfig& cfg) {
  const WorkloadConfig& w = cfg.workload;
  switch (w.routing) {
    case RoutingMode::uniform:
      return "uniform routing: every expert gets its even share of the routed rows";
    case RoutingMode::learned:
      return "learned routing predicted as even: every expert gets its even share of the routed rows (the "
             "router's choice depends on weights and activations the model does not see; a measured run's "
             "expert_imbalance shows how far from even they are)";
    case RoutingMode::zipf: break;
  }
  const std::vector<double> shares = expert_shares(cfg.model, w);
  std::ostringstream line;
  line.precision(3);
  line << to_string(w.routing, w.zipf_exponent) << " routing: each expert's expected share of the routed rows "
       << "from workload.routing's draws (expert 0: " << 100.0 * shares.front() << "%, expert " << shares.size() - 1
       << ": " << 100.0 * shares.back() << "%); the expert rank with the largest share paces every layer, the others compute their "
       << "own shares and wait for it";
  return line.str();
}

}  // namespace

Prediction predict(const RunConfig& cfg, const MachineSpec& machine, int ranks) {
  if (ranks < 1) throw InputError("--ranks " + std::to_string(ranks) + ": need at least one rank");
  if (machine.peak_flops(cfg.model.precision) <= 0.0 || machine.memory_bandwidth <= 0.0 ||
      machine.intra.bandwidth <= 0.0 || machine.inter.bandwidth <= 0.0 || machine.devices_per_node < 1)
    throw InputError("machine " + machine.name + " lacks a peak FLOP/s for " + to_string(cfg.model.precision) +
                     ", a memory bandwidth, link bandwidths or devices_per_node");
  Prediction out = cfg.parallel.attn_ranks > 0 ? predict_separated(cfg, machine, ranks) : predict_grid(cfg, machine, ranks);
  summarize(cfg, machine, out);
  if (cfg.model.is_moe()) out.assumptions.push_back(routing_assumption(cfg));
  out.assumptions.push_back("warm passes: no first-call costs, as a run with workload.warmup >= 1 measures");
  if (cfg.model.precision == Precision::fp16)
    out.assumptions.push_back("fp16: activations and transfers at 2 bytes, as a deployment with 16-bit activations "
                              "moves them; moeproxy's own fp16 runs keep them in float32 and round each GEMM's "
                              "operand in a kernel of its own (docs/predict.md, \"Not modelled\")");
  if (const KernelProfiles* measured = machine.profiles.any()) {
    std::string names = measured->gemm.empty() ? "" : "gemm";
    for (const auto& [name, profile] : measured->kernels) names += (names.empty() ? "" : ", ") + name;
    for (const auto& [name, profile] : measured->by_parameter) names += (names.empty() ? "" : ", ") + name;
    out.assumptions.push_back("kernel times from the machine file's measured profiles (" + names +
                              "), rooflines for the rest");
    out.assumptions.push_back(
        "a rank's GEMMs, attention and collectives find the caches as a sweep of its pass's footprint (its "
        "weights, KV cache and the pass's activations) leaves them, its other kernels as a sweep of the hot set "
        "(the pass's activations, the norms' gains, the router), between the profiles' sweeps: in prefill a read of "
        "the bytes, in decode " +
        std::string(machine.profiles.by_weight_sweep.empty() ? "the same (this machine file has no weight sweeps)"
                                                             : "GEMMs through weights of the bytes"));
    out.assumptions.push_back("decode steps in their steady state: the first steps after a prefill, slower where "
                              "the caches still hold the prefill's state, are not modelled");
    if (machine.profiles.ranks > 1 && (measured->find("allreduce") || measured->find("alltoallv")))
      out.assumptions.push_back("collectives of groups of " + std::to_string(machine.profiles.ranks) +
                                " ranks within a node from the machine file's profiles, alpha-beta for other groups");
    if (machine.profiles.ranks > 1 && measured->find("send"))
      out.assumptions.push_back("point-to-point sends within a node from the machine file's profile, alpha-beta "
                                "across nodes");
    if (cfg.model.precision == Precision::fp16)
      out.assumptions.push_back("the profiles were measured in fp32: fp16 kernels are looked up at their byte counts");
  } else {
    out.assumptions.push_back("kernels as rooflines of the machine's peak rates and efficiencies");
  }
  if (!machine.profiles.sync_wait.empty())
    out.assumptions.push_back("the wait at a synchronisation is the machine file's sync_wait, measured on its "
                              "calibration's ranks, for groups of any size");
  return out;
}

RankSplitSuggestion suggest_attention_split(const RunConfig& cfg, const MachineSpec& machine, int ranks) {
  RankSplitSuggestion out;
  const ParallelConfig& p = cfg.parallel;
  out.machine = machine.name;
  out.current_attn_ranks = p.attn_ranks;
  if (!cfg.model.is_moe()) {
    out.note = "the performance model separates attention from experts only: a dense FFN is not modelled";
    return out;
  }
  std::string first_refusal;
  for (int a = 1; a < ranks; ++a) {
    // The deck's replicas with wider or narrower tensor groups, else its tensor group
    // replicated more or less often.
    int dp = 0, tp = 0;
    if (a % p.dp == 0 && a / p.dp <= cfg.model.heads)
      dp = p.dp, tp = a / p.dp;
    else if (a % p.tp == 0)
      dp = a / p.tp, tp = p.tp;
    if (dp == 0 || cfg.workload.batch % dp != 0 || (cfg.workload.batch / dp) % p.micro_batches != 0 ||
        cfg.model.experts % (ranks - a) != 0)
      continue;
    RunConfig candidate = cfg;
    candidate.parallel.attn_ranks = a;
    candidate.parallel.dp = dp;
    candidate.parallel.tp = tp;
    candidate.parallel.ep = ranks - a;
    try {
      const double tpot = predict(candidate, machine, ranks).summary.tpot_s;
      if (a == p.attn_ranks) out.current_tpot_s = tpot;
      if (out.attn_ranks == 0 || tpot < out.tpot_s) {
        out.attn_ranks = a;
        out.tpot_s = tpot;
      }
    } catch (const InputError& e) {
      if (first_refusal.empty()) first_refusal = e.what();
    }
  }
  if (out.attn_ranks == 0)
    out.note = "no attention/FFN split of " + std::to_string(ranks) + " ranks could be modelled" +
               (first_refusal.empty() ? std::string() : ": " + first_refusal);
  return out;
}

}  // namespace moeproxy
