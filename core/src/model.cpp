#include "moeproxy/core/model.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

namespace moeproxy {

namespace {

int capacity_for(const ModelConfig& cfg, int tokens) {
  if (cfg.capacity_factor <= 0.0) return -1;
  return static_cast<int>(std::ceil(cfg.capacity_factor * tokens * cfg.top_k / cfg.experts));
}

}  // namespace

Transformer::Transformer(const ExecSpace& space, const ModelConfig& model,
                         const WorkloadConfig& workload, const SequenceSlice& slice,
                         const ShardSpec& shard, LayerExchange* exchange, const WeightSource* weights)
    : space_(space), cfg_(model), workload_(workload), slice_(slice),
      exchange_(exchange ? exchange : &default_exchange_) {
  head_begin_ = shard.head_begin;
  heads_ = shard.head_count < 0 ? cfg_.heads : shard.head_count;
  kv_heads_ = kv_heads_of(cfg_, head_begin_, heads_).count;
  pair_begin_ = shard.dim_begin;
  pairs_ = shard.dim_count;
  head_dims_ = shard.head_dims(cfg_);
  ffn_ = shard.ffn_count < 0 ? cfg_.ffn_hidden : shard.ffn_count;
  layer_begin_ = shard.layer_begin;
  layer_end_ = shard.layer_count < 0 ? cfg_.layers : shard.layer_begin + shard.layer_count;
  weights_ = make_weights(space_, cfg_, shard, layer_begin_, layer_end_, weights);
  const int positions = workload_.prompt + workload_.decode_steps;
  for (int l = layer_begin_; l < layer_end_; ++l) {
    if (cfg_.precision == Precision::fp16) {
      k_half_.emplace_back("moeproxy::model::k_cache", slice_.count, kv_heads_, positions, head_dims_);
      v_half_.emplace_back("moeproxy::model::v_cache", slice_.count, kv_heads_, positions, head_dims_);
    } else {
      k_cache_.emplace_back("moeproxy::model::k_cache", slice_.count, kv_heads_, positions, head_dims_);
      v_cache_.emplace_back("moeproxy::model::v_cache", slice_.count, kv_heads_, positions, head_dims_);
    }
  }
  if (cfg_.rope)
    rope_ = rope_table(space_, positions, cfg_.effective_head_dim(), cfg_.rope_theta, pair_begin_, pairs_);
  const int t = slice_.count * workload_.prompt;
  ws_.x = Matrix("moeproxy::model::x", t, cfg_.hidden);
  ws_.h = Matrix("moeproxy::model::h", t, cfg_.hidden);
  ws_.q = Matrix("moeproxy::model::q", t, heads_ * head_dims_);
  ws_.k = Matrix("moeproxy::model::k", t, kv_heads_ * head_dims_);
  ws_.v = Matrix("moeproxy::model::v", t, kv_heads_ * head_dims_);
  ws_.attn = Matrix("moeproxy::model::attn", t, heads_ * head_dims_);
  // Prefill's [t, heads, prompt] or the last decode step's [batch, heads, positions].
  if (shard.slices_dims())
    ws_.scores = Vector("moeproxy::model::scores",
                        static_cast<std::size_t>(heads_) *
                            std::max(static_cast<std::size_t>(t) * workload_.prompt,
                                     static_cast<std::size_t>(slice_.count) * positions));
  ws_.partial = Matrix("moeproxy::model::partial", t, cfg_.hidden);
  ws_.out = Matrix("moeproxy::model::out", t, cfg_.hidden);
  if (cfg_.is_moe()) {
    ws_.logits = Matrix("moeproxy::model::router_logits", t, cfg_.experts);
    ws_.route_w = Matrix("moeproxy::model::route_weight", t, cfg_.top_k);
    ws_.route_idx = IndexMatrix("moeproxy::model::route_index", t, cfg_.top_k);
    ws_.xp = Matrix("moeproxy::model::permuted_in", t * cfg_.top_k, cfg_.hidden);
    ws_.yp = Matrix("moeproxy::model::permuted_out", t * cfg_.top_k, cfg_.hidden);
    expert_tokens_.assign(static_cast<std::size_t>(cfg_.layers) * cfg_.experts, 0);
    if (workload_.routing != RoutingMode::learned)
      routing_cdf_ = routing_cdf(space_, cfg_.experts,
                                 workload_.routing == RoutingMode::zipf ? workload_.zipf_exponent : 0.0);
    if (!shard.placement.in_id_order()) {
      expert_position_ = IndexMatrix("moeproxy::model::expert_position", cfg_.layers, cfg_.experts);
      auto position = Kokkos::create_mirror_view(expert_position_);
      for (int l = 0; l < cfg_.layers; ++l) {
        expert_order_.push_back(shard.placement.order(l));
        for (int p = 0; p < cfg_.experts; ++p) position(l, expert_order_.back()[p]) = p;
      }
      Kokkos::deep_copy(expert_position_, position);
    }
  }
  reserve_expert_rows(cfg_.is_moe() ? t * cfg_.top_k : t);
}

void Transformer::reserve_expert_rows(int rows) {
  if (static_cast<int>(ws_.ffn_a.extent(0)) >= rows) return;
  ws_.ffn_a = Matrix("moeproxy::model::ffn_a", rows, ffn_);
  if (cfg_.activation == Activation::swiglu) ws_.ffn_b = Matrix("moeproxy::model::ffn_b", rows, ffn_);
}

std::uint64_t Transformer::kv_cache_bytes() const {
  std::uint64_t total = 0;
  for (std::size_t l = 0; l < k_cache_.size(); ++l)
    total += (k_cache_[l].span() + v_cache_[l].span()) * sizeof(float);
  for (std::size_t l = 0; l < k_half_.size(); ++l)
    total += (k_half_[l].span() + v_half_[l].span()) * sizeof(Half);
  return total;
}

std::uint64_t Transformer::activation_bytes() const {
  const std::size_t floats = ws_.x.span() + ws_.h.span() + ws_.q.span() + ws_.k.span() +
                             ws_.v.span() + ws_.attn.span() + ws_.partial.span() +
                             ws_.ffn_a.span() + ws_.ffn_b.span() +
                             ws_.logits.span() + ws_.route_w.span() + ws_.xp.span() +
                             ws_.yp.span() + ws_.out.span() + ws_.scores.span();
  return floats * sizeof(float) + (ws_.route_idx.span() + ws_.expert_rows.span()) * sizeof(int) +
         rope_.span() * sizeof(double);
}

Transformer::Workspace Transformer::rows(int tokens) const {
  Workspace w;
  const int routed = cfg_.is_moe() ? tokens * cfg_.top_k : tokens;
  w.x = first_rows(ws_.x, tokens);
  w.h = first_rows(ws_.h, tokens);
  w.q = first_rows(ws_.q, tokens);
  w.k = first_rows(ws_.k, tokens);
  w.v = first_rows(ws_.v, tokens);
  w.attn = first_rows(ws_.attn, tokens);
  w.partial = first_rows(ws_.partial, tokens);
  w.ffn_a = first_rows(ws_.ffn_a, routed);
  if (ws_.ffn_b.extent(0) > 0) w.ffn_b = first_rows(ws_.ffn_b, routed);
  w.out = first_rows(ws_.out, tokens);
  if (cfg_.is_moe()) {
    w.logits = first_rows(ws_.logits, tokens);
    w.route_w = first_rows(ws_.route_w, tokens);
    w.route_idx = first_rows(ws_.route_idx, tokens);
    w.xp = ws_.xp;
    w.yp = ws_.yp;
  }
  return w;
}

void Transformer::fill_inputs(const MicroBatch& mb, const Matrix& x) const {
  moeproxy::fill_inputs(space_, cfg_, slice_.begin + mb.first, workload_.prompt, x);
}

void Transformer::run_layers(const Matrix& x, const MicroBatch& mb, int step, PhaseTable& timing) {
  const bool prefill = step < 0;
  const int n = prefill ? workload_.prompt : 1;
  const int pos0 = prefill ? 0 : workload_.prompt + step;
  const std::int64_t token0 = first_token(mb, step);
  for (int l = layer_begin_; l < layer_end_; ++l) layer(l, x, mb, n, pos0, token0, timing, prefill);
}

// Global token ids (docs/model.md) of the first row, for synthetic routing.
std::int64_t Transformer::first_token(const MicroBatch& mb, int step) const {
  const std::int64_t seq0 = slice_.begin + mb.first;
  return step < 0 ? seq0 * workload_.prompt
                  : static_cast<std::int64_t>(slice_.global_batch) * workload_.prompt +
                        static_cast<std::int64_t>(step) * slice_.global_batch + seq0;
}

Matrix Transformer::final_norm(const ConstMatrix& x, PhaseTable& timing) {
  const Matrix out = first_rows(ws_.out, static_cast<int>(x.extent(0)));
  timed(space_, timing, layer_end_ - 1, Phase::norm,
        [&] { normalize(space_, cfg_.norm, cfg_.norm_eps, x, weights_.final_norm, out); });
  return out;
}

Matrix Transformer::prefill(PhaseTable& timing) {
  const Matrix x = rows(slice_.count * workload_.prompt).x;
  fill_inputs(all_sequences(), x);
  run_layers(x, all_sequences(), -1, timing);
  return final_norm(x, timing);
}

Matrix Transformer::decode_step(const ConstMatrix& x, int step, PhaseTable& timing) {
  const Matrix xs = rows(slice_.count).x;
  Kokkos::deep_copy(space_, xs, x);
  run_layers(xs, all_sequences(), step, timing);
  return final_norm(xs, timing);
}

void Transformer::layer(int l, const Matrix& x, const MicroBatch& mb, int n, int pos0,
                        std::int64_t token0, PhaseTable& timing, bool count_experts) {
  const Matrix h = attention_block(l, x, mb, n, pos0, timing);
  if (cfg_.is_moe())
    moe(l, x, h, token0, timing, count_experts);
  else
    dense_ffn(l, x, h, timing);
}

Matrix Transformer::attention_block(int l, const Matrix& x, const MicroBatch& mb, int n, int pos0,
                                    PhaseTable& timing) {
  const LayerWeights& lw = weights_.layers[l - layer_begin_];
  const int tokens = static_cast<int>(x.extent(0));
  Workspace w = rows(tokens);

  timed(space_, timing, l, Phase::norm,
        [&] { normalize(space_, cfg_.norm, cfg_.norm_eps, x, lw.attn_norm, w.h); });
  timed(space_, timing, l, Phase::attn_qkv, [&] {
    gemm(space_, w.h, lw.wq, w.q, gemm_scratch_);
    gemm(space_, w.h, lw.wk, w.k, gemm_scratch_);
    gemm(space_, w.h, lw.wv, w.v, gemm_scratch_);
    if (cfg_.rope) {
      apply_rope(space_, w.q, rope_, heads_, n, pos0);
      apply_rope(space_, w.k, rope_, kv_heads_, n, pos0);
    }
  });
  const std::size_t held = static_cast<std::size_t>(l - layer_begin_);
  if (cfg_.precision == Precision::fp16)
    attend<Half>(l, w, mb, k_half_[held], v_half_[held], n, pos0, timing);
  else
    attend<float>(l, w, mb, k_cache_[held], v_cache_[held], n, pos0, timing);
  // Row-parallel output projection: each rank's heads give a partial sum, reduced before
  // the residual add.
  timed(space_, timing, l, Phase::attn_out, [&] { gemm(space_, w.attn, lw.wo, w.partial, gemm_scratch_); });
  exchange_->timed_reduce_partial(space_, w.partial, timing, l);
  timed(space_, timing, l, Phase::attn_out, [&] { add_into(space_, w.partial, x); });

  timed(space_, timing, l, Phase::norm,
        [&] { normalize(space_, cfg_.norm, cfg_.norm_eps, x, lw.ffn_norm, w.h); });
  return w.h;
}

void Transformer::attention_half(int l, const Matrix& x, const MicroBatch& mb, int step, std::pair<int, int> share,
                                 FfnInput& in, PhaseTable& timing) {
  const bool prefill = step < 0;
  const int n = prefill ? workload_.prompt : 1;
  const Matrix h = Kokkos::subview(attention_block(l, x, mb, n, prefill ? 0 : workload_.prompt + step, timing),
                                   share, Kokkos::ALL);
  const int tokens = share.second - share.first;
  const int routed = cfg_.is_moe() ? tokens * cfg_.top_k : tokens;
  reserve_rows(in.rows_buffer, routed, cfg_.hidden, "moeproxy::model::ffn_input");
  if (!cfg_.is_moe()) {
    in.counts.assign(1, tokens);
    in.rows = first_rows(in.rows_buffer, tokens);
    Kokkos::deep_copy(space_, in.rows, h);
    return;
  }
  reserve_rows(in.route_w_buffer, tokens, cfg_.top_k, "moeproxy::model::ffn_route_weight");
  in.route_w = first_rows(in.route_w_buffer, tokens);
  in.counts.assign(cfg_.experts, 0);
  const int kept = route(l, h, first_token(mb, step) + share.first, timing, prefill, in.route_w, in.perm,
                         in.counts, in.rows_buffer);
  in.rows = first_rows(in.rows_buffer, kept);
}

void Transformer::ffn_rows(int l, const Matrix& x, const std::vector<int>& counts, const Matrix& y,
                           PhaseTable& timing) {
  const LayerWeights& lw = weights_.layers[l - layer_begin_];
  const int rows = static_cast<int>(x.extent(0));
  reserve_expert_rows(rows);
  const Matrix b = ws_.ffn_b.extent(0) > 0 ? first_rows(ws_.ffn_b, rows) : Matrix();
  const Matrix a = first_rows(ws_.ffn_a, rows);
  if (!cfg_.is_moe()) {
    timed(space_, timing, l, Phase::ffn, [&] { expert_ffn(lw, {GemmGroup{rows, 0}}, x, a, b, y); });
    return;
  }
  // Blocks of rows by (source rank, local expert), block b for local expert b % held. Where
  // several sources send rows to one expert, its rows are gathered into one block, computed
  // there and put back: each expert's weights are then read once per layer, not once per
  // source, which decode's few rows per block are bound by.
  const int held = static_cast<int>(lw.experts.size()), blocks = static_cast<int>(counts.size());
  std::vector<int> sources(held, 0);
  for (int block = 0; block < blocks; ++block) sources[block % held] += counts[block] > 0 ? 1 : 0;
  if (std::all_of(sources.begin(), sources.end(), [](int n) { return n <= 1; })) {
    std::vector<GemmGroup> groups;
    for (int block = 0; block < blocks; ++block) groups.push_back(GemmGroup{counts[block], block % held});
    timed(space_, timing, l, Phase::expert, [&] { expert_ffn(lw, groups, x, a, b, y); });
    return;
  }
  std::vector<int> first(blocks, 0);
  for (int block = 1; block < blocks; ++block) first[block] = first[block - 1] + counts[block - 1];
  if (static_cast<int>(ws_.expert_rows.extent(0)) < 2 * rows) {
    ws_.expert_rows = IndexVector("moeproxy::model::expert_rows", 2 * rows);
    ws_.expert_rows_host = Kokkos::create_mirror_view(StagingSpace(), ws_.expert_rows);
  }
  const auto both = std::make_pair(0, 2 * rows);
  const IndexVector order = Kokkos::subview(ws_.expert_rows, std::make_pair(0, rows));
  const IndexVector back = Kokkos::subview(ws_.expert_rows, std::make_pair(rows, 2 * rows));
  const StagingIndexVector host = ws_.expert_rows_host;
  std::vector<GemmGroup> groups;
  for (int e = 0, row = 0; e < held; ++e) {
    groups.push_back(GemmGroup{0, e});
    for (int block = e; block < blocks; block += held)
      for (int i = 0; i < counts[block]; ++i, ++row) {
        host(row) = first[block] + i;
        host(rows + first[block] + i) = row;
        ++groups.back().rows;
      }
  }
  timed(space_, timing, l, Phase::expert, [&] {
    Kokkos::deep_copy(space_, Kokkos::subview(ws_.expert_rows, both), Kokkos::subview(host, both));
    gather_rows(space_, x, order, y);
    expert_ffn(lw, groups, y, a, b, x);
    gather_rows(space_, x, back, y);
  });
}

// Causal attention of the layer's queries against the cache. A rank holding a slice of each
// head's dimensions computes partial scores only; the ranks holding the other slices of the
// same heads sum them before the softmax, then each weighs its own slice of V.
template <class T>
void Transformer::attend(int l, const Workspace& w, const MicroBatch& mb, const CacheOf<T>& k_layer,
                         const CacheOf<T>& v_layer, int n, int pos0, PhaseTable& timing) {
  const auto seqs = std::make_pair(mb.first, mb.first + mb.count);
  const CacheOf<T> k_cache = Kokkos::subview(k_layer, seqs, Kokkos::ALL, Kokkos::ALL, Kokkos::ALL);
  const CacheOf<T> v_cache = Kokkos::subview(v_layer, seqs, Kokkos::ALL, Kokkos::ALL, Kokkos::ALL);
  timed(space_, timing, l, Phase::attn_qkv, [&] { store_kv<T>(space_, w.k, w.v, k_cache, v_cache, n, pos0); });
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(cfg_.effective_head_dim())));
  const int group = cfg_.heads / cfg_.effective_kv_heads();
  if (pairs_ < 0) {
    timed(space_, timing, l, Phase::attn_core,
          [&] { attention<T>(space_, w.q, k_cache, v_cache, w.attn, n, pos0, scale, head_begin_, group); });
    return;
  }
  // [T, heads, pos0 + n] over the front of the scores buffer.
  const Scores scores(ws_.scores.data(), w.q.extent(0), heads_, pos0 + n);
  timed(space_, timing, l, Phase::attn_core,
        [&] { attention_scores<T>(space_, w.q, k_cache, scores, n, pos0, head_begin_, group); });
  exchange_->timed_reduce_scores(space_, scores, timing, l);
  timed(space_, timing, l, Phase::attn_core,
        [&] { attention_apply<T>(space_, scores, v_cache, w.attn, n, pos0, scale, head_begin_, group); });
}

void Transformer::expert_ffn(const LayerWeights& lw, const std::vector<GemmGroup>& groups, const Matrix& x,
                             const Matrix& a, const Matrix& b, const Matrix& y) {
  gemm_grouped(space_, x, groups, lw.w1, a, gemm_scratch_);
  if (cfg_.activation == Activation::swiglu) gemm_grouped(space_, x, groups, lw.w3, b, gemm_scratch_);
  activate(space_, cfg_.activation, a, b);
  gemm_grouped(space_, a, groups, lw.w2, y, gemm_scratch_);
}

// Column-parallel W1 (and W3), row-parallel W2: a partial sum per rank, reduced, added.
void Transformer::dense_ffn(int l, const Matrix& x, const Matrix& h, PhaseTable& timing) {
  Workspace w = rows(static_cast<int>(x.extent(0)));
  timed(space_, timing, l, Phase::ffn,
        [&] { expert_ffn(weights_.layers[l - layer_begin_], {GemmGroup{static_cast<int>(h.extent(0)), 0}}, h,
                         w.ffn_a, w.ffn_b, w.partial); });
  exchange_->timed_reduce_partial(space_, w.partial, timing, l);
  timed(space_, timing, l, Phase::ffn, [&] { add_into(space_, w.partial, x); });
}

// The MoE step as route -> permute -> dispatch -> experts -> undispatch -> combine.
//   h [T, d] -> logits [T, E] -> (idx, weight) [T, k] -> xp [kept, d] grouped by expert
//   -> dispatch: x_in [received, d], grouped by source rank then local expert
//   -> per (source, local expert) block: W1, act, W2 -> y_in -> undispatch -> yp [kept, d]
//   -> partial[t] = sum_j weight[t, j] * yp[position(t, j)] -> reduce -> x += partial
// The reduction sums the partials of ranks holding other FFN columns (TP) or, with tokens
// replicated over ranks that split the experts (head x dim slicing), other experts' rows.
void Transformer::moe(int l, const Matrix& x, const Matrix& h, std::int64_t token0,
                      PhaseTable& timing, bool count_experts) {
  const int tokens = static_cast<int>(x.extent(0));
  Workspace w = rows(tokens);
  std::vector<int> counts(cfg_.experts);
  const int kept = route(l, h, token0, timing, count_experts, w.route_w, perm_, counts, w.xp);

  exchange_->run_experts(
      space_, first_rows(w.xp, kept), counts, first_rows(w.yp, kept),
      [&](const Matrix& x, const std::vector<int>& blocks, const Matrix& y) { ffn_rows(l, x, blocks, y, timing); },
      timing, l);
  timed(space_, timing, l, Phase::combine, [&] {
    Kokkos::deep_copy(space_, w.partial, 0.0f);
    combine(space_, w.yp, perm_.position, w.route_w, w.partial);
  });
  exchange_->timed_reduce_partial(space_, w.partial, timing, l);
  timed(space_, timing, l, Phase::combine, [&] { add_into(space_, w.partial, x); });
}

void Transformer::reset_statistics() {
  std::fill(expert_tokens_.begin(), expert_tokens_.end(), 0);
  dropped_ = 0;
}

int Transformer::route(int l, const Matrix& h, std::int64_t token0, PhaseTable& timing, bool count_experts,
                       const Matrix& route_w, Permutation& perm, std::vector<int>& counts, const Matrix& xp) {
  const LayerWeights& lw = weights_.layers[l - layer_begin_];
  const int tokens = static_cast<int>(h.extent(0));
  Workspace w = rows(tokens);
  w.route_w = route_w;
  timed(space_, timing, l, Phase::router, [&] {
    if (workload_.routing == RoutingMode::learned) {
      gemm(space_, h, lw.router, w.logits);
      route_top_k(space_, w.logits, cfg_.top_k, cfg_.renormalize, w.route_idx, w.route_w);
    } else {
      route_synthetic(space_, cfg_.seed, l, token0, routing_cdf_, w.route_idx, w.route_w);
    }
    if (!expert_order_.empty())
      relabel_experts(space_, w.route_idx, Kokkos::subview(expert_position_, l, Kokkos::ALL));
  });
  int kept = 0;
  timed(space_, timing, l, Phase::permute, [&] {
    dropped_ += permute(space_, w.route_idx, cfg_.experts, capacity_for(cfg_, tokens), perm);
    for (int e = 0; e < cfg_.experts; ++e) kept += (counts[e] = perm.host_counts(e));
    gather_rows(space_, h, perm.source, first_rows(xp, kept));
  });
  // counts are by placement position; the statistics stay by global expert.
  if (count_experts)
    for (int p = 0; p < cfg_.experts; ++p) {
      const int e = expert_order_.empty() ? p : expert_order_[l][p];
      expert_tokens_[static_cast<std::size_t>(l) * cfg_.experts + e] += counts[p];
    }
  return kept;
}

}  // namespace moeproxy

namespace moeproxy {

MemoryEstimate estimate_memory(const ModelConfig& m, const WorkloadConfig& w, int sequences,
                               const ShardSpec& shard) {
  const std::uint64_t f = sizeof(float);
  const int heads = shard.head_count < 0 ? m.heads : shard.head_count;
  const std::uint64_t dims = shard.head_dims(m);
  const std::uint64_t d = m.hidden, q = heads * dims;
  const std::uint64_t kv = kv_heads_of(m, shard.head_begin, heads).count * dims;
  const std::uint64_t ff = shard.ffn_count < 0 ? m.ffn_hidden : shard.ffn_count;
  const int first_layer = shard.layer_begin, held_layers = shard.layer_count < 0 ? m.layers : shard.layer_count;
  // Expert matrices summed over the layers held: a placement may hold different counts per layer.
  std::uint64_t expert_layers = held_layers;
  if (m.is_moe()) {
    expert_layers = 0;
    for (int l = first_layer; l < first_layer + held_layers; ++l) expert_layers += shard.experts_in(m, l).size();
  }
  const std::uint64_t mats = m.activation == Activation::swiglu ? 3 : 2;
  const std::uint64_t norms = m.norm == NormKind::layernorm ? 2 : 1;
  // Projections, experts and the KV cache in the storage precision; norms and router in fp32.
  const std::uint64_t stored = m.precision == Precision::fp16 ? sizeof(Half) : sizeof(float);
  MemoryEstimate e;
  const std::uint64_t per_layer_stored = d * (q + 2 * kv) + q * d;
  const std::uint64_t per_layer_fp32 = 2 * norms * d + (m.is_moe() ? d * m.experts : 0);
  const std::uint64_t layers = held_layers;
  e.weights = stored * (layers * per_layer_stored + expert_layers * mats * d * ff) +
              f * (layers * per_layer_fp32 + norms * d);
  const std::uint64_t positions = static_cast<std::uint64_t>(w.prompt) + w.decode_steps;
  e.kv_cache = stored * layers * 2 * sequences * positions * kv;
  const std::uint64_t t = static_cast<std::uint64_t>(sequences) * w.prompt;
  const std::uint64_t routed = m.is_moe() ? t * m.top_k : t;
  std::uint64_t floats = t * (4 * d + 2 * q + 2 * kv) + routed * ff * (mats - 1);
  if (m.is_moe()) floats += t * (m.experts + m.top_k) + 2 * routed * d;
  if (shard.slices_dims()) floats += heads * std::max(t * w.prompt, sequences * positions);
  const std::uint64_t rope_table = m.rope ? sizeof(double) * 2 * positions * (dims / 2) : 0;
  e.activations = f * floats + (m.is_moe() ? sizeof(int) * t * m.top_k : 0) + rope_table;
  return e;
}

}  // namespace moeproxy
