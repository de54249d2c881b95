#include <catch2/catch.hpp>
#include <cstring>

#include "moeproxy/core/weights.hpp"
#include "test_helpers.hpp"

using namespace moeproxy;
using moeproxy::testing::to_host;

TEST_CASE("hash: uniform values are deterministic, between -1 and 1, and spread", "[weights]") {
  const std::uint64_t s = tensor_stream(7, TensorKind::wq, 3, 0);
  double sum = 0.0, sq = 0.0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    const float u = uniform_at(s, static_cast<std::uint64_t>(i), 5);
    REQUIRE(u >= -1.0f);
    REQUIRE(u < 1.0f);
    REQUIRE(u == uniform_at(s, static_cast<std::uint64_t>(i), 5));
    sum += u;
    sq += u * u;
  }
  CHECK(std::abs(sum / n) < 0.01);
  CHECK(sq / n == Approx(1.0 / 3.0).epsilon(0.01));
  CHECK(uniform_at(s, 1, 2) != uniform_at(s, 2, 1));
  CHECK(tensor_stream(7, TensorKind::wq, 3, 0) != tensor_stream(7, TensorKind::wk, 3, 0));
  CHECK(tensor_stream(7, TensorKind::wq, 3, 0) != tensor_stream(8, TensorKind::wq, 3, 0));
}

TEST_CASE("weights: a shard equals the matching slice of the whole model", "[weights]") {
  ModelConfig cfg;
  cfg.hidden = 24;
  cfg.heads = 6;
  cfg.kv_heads = 6;
  cfg.ffn_hidden = 20;
  cfg.experts = 6;
  ExecSpace space;
  const ModelWeights full = make_weights(space, cfg, ShardSpec{}, 0, 2);
  ShardSpec shard;
  shard.head_begin = 2;
  shard.head_count = 3;
  shard.expert_begin = 4;
  shard.expert_count = 2;
  shard.ffn_begin = 5;
  shard.ffn_count = 10;
  const ModelWeights part = make_weights(space, cfg, shard, 1, 2);
  REQUIRE(part.layers.size() == 1);
  const int hd = cfg.effective_head_dim();
  auto fq = to_host(full.layers[1].wq.f32), pq = to_host(part.layers[0].wq.f32);
  auto fo = to_host(full.layers[1].wo.f32), po = to_host(part.layers[0].wo.f32);
  REQUIRE(pq.extent(1) == static_cast<std::size_t>(3 * hd));
  for (int i = 0; i < cfg.hidden; ++i)
    for (int j = 0; j < 3 * hd; ++j) {
      REQUIRE(pq(i, j) == fq(i, 2 * hd + j));
      REQUIRE(po(j, i) == fo(2 * hd + j, i));
    }
  auto f1 = to_host(full.layers[1].w1.f32), p1 = to_host(part.layers[0].w1.f32);
  auto f2 = to_host(full.layers[1].w2.f32), p2 = to_host(part.layers[0].w2.f32);
  for (int e = 0; e < 2; ++e)
    for (int i = 0; i < cfg.hidden; ++i)
      for (int j = 0; j < 10; ++j) {
        REQUIRE(p1(e, i, j) == f1(4 + e, i, 5 + j));
        REQUIRE(p2(e, j, i) == f2(4 + e, 5 + j, i));
      }
}

TEST_CASE("weights: a dimension slice holds whole RoPE pairs of its heads and kv heads", "[weights]") {
  ModelConfig cfg;
  cfg.hidden = 24;
  cfg.heads = 6;
  cfg.head_dim = 12;
  cfg.kv_heads = 2;  // group 3: query heads 2-3 read kv heads 0 and 1
  ExecSpace space;
  const ModelWeights full = make_weights(space, cfg, ShardSpec{}, 0, 1);
  ShardSpec shard;
  shard.head_begin = 2;
  shard.head_count = 2;
  shard.dim_begin = 2;  // pairs 2-3: dimensions 2, 3 and 8, 9 of each head
  shard.dim_count = 2;
  const ModelWeights part = make_weights(space, cfg, shard, 0, 1);
  const int hd = 12, w = 4;
  const int dims[w] = {2, 3, 8, 9};
  REQUIRE(shard.head_dims(cfg) == w);
  const LayerWeights &f = full.layers[0], &p = part.layers[0];
  auto fq = to_host(f.wq.f32), pq = to_host(p.wq.f32), fk = to_host(f.wk.f32), pk = to_host(p.wk.f32);
  auto fv = to_host(f.wv.f32), pv = to_host(p.wv.f32), fo = to_host(f.wo.f32), po = to_host(p.wo.f32);
  REQUIRE(pq.extent(1) == static_cast<std::size_t>(2 * w));
  REQUIRE(pk.extent(1) == static_cast<std::size_t>(2 * w));
  REQUIRE(po.extent(0) == static_cast<std::size_t>(2 * w));
  for (int i = 0; i < cfg.hidden; ++i)
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < w; ++j) {
        REQUIRE(pq(i, h * w + j) == fq(i, (2 + h) * hd + dims[j]));
        REQUIRE(pk(i, h * w + j) == fk(i, h * hd + dims[j]));
        REQUIRE(pv(i, h * w + j) == fv(i, h * hd + dims[j]));
        REQUIRE(po(h * w + j, i) == fo((2 + h) * hd + dims[j], i));
      }
}

TEST_CASE("weights: inputs of a sequence slice equal the rows of the whole batch", "[weights]") {
  ModelConfig cfg;
  ExecSpace space;
  const int prompt = 5;
  const Matrix all_rows("all", 6 * prompt, cfg.hidden), part_rows("part", 3 * prompt, cfg.hidden);
  fill_inputs(space, cfg, 0, prompt, all_rows);
  fill_inputs(space, cfg, 2, prompt, part_rows);
  auto all = to_host(all_rows);
  auto part = to_host(part_rows);
  for (int r = 0; r < 3 * prompt; ++r)
    for (int j = 0; j < cfg.hidden; ++j) REQUIRE(part(r, j) == all(2 * prompt + r, j));
}

TEST_CASE("weights: byte counts match the views", "[weights]") {
  ModelConfig cfg;
  cfg.norm = NormKind::layernorm;
  ExecSpace space;
  const ModelWeights w = make_weights(space, cfg, ShardSpec{}, 0, cfg.layers);
  const std::uint64_t d = cfg.hidden, f = cfg.ffn_hidden, e = cfg.experts;
  const std::uint64_t per_layer = 4 * d * d + 4 * d + d * e + 3 * e * d * f;
  CHECK(w.bytes() == 4 * (cfg.layers * per_layer + 2 * d));
}

namespace {

// The hash's values through the host read path, as a checkpoint's would come.
class StagedWeights : public WeightSource {
 public:
  explicit StagedWeights(const ModelConfig& cfg) : generated_(cfg) {}
  void read(const TensorRef& t, const IndexSpans& rows, const IndexSpans& cols, float* out) const override {
    ++reads;
    generated_.read(t, rows, cols, out);
  }
  std::string describe() const override { return "staged"; }
  mutable int reads = 0;

 private:
  GeneratedWeights generated_;
};

template <class View>
void require_equal(const View& a, const View& b) {
  auto ha = to_host(a), hb = to_host(b);
  REQUIRE(ha.span() == hb.span());
  // Bit patterns: also right for binary16 storage. (An absent tensor has no data at all.)
  if (ha.span() > 0) REQUIRE(std::memcmp(ha.data(), hb.data(), ha.span() * sizeof(*ha.data())) == 0);
}

template <class Stored>
void require_equal_stored(const Stored& a, const Stored& b) {
  REQUIRE(a.is_half() == b.is_half());
  if (a.is_half())
    require_equal(a.f16, b.f16);
  else
    require_equal(a.f32, b.f32);
}
void require_equal(const StoredMatrix& a, const StoredMatrix& b) { require_equal_stored(a, b); }
void require_equal(const StoredStack& a, const StoredStack& b) { require_equal_stored(a, b); }

}  // namespace

TEST_CASE("weights: a source read through host buffers equals the device-generated shard", "[weights]") {
  ModelConfig cfg;
  cfg.hidden = 24;
  cfg.heads = 6;
  cfg.head_dim = 12;
  cfg.kv_heads = 2;
  cfg.ffn_hidden = 20;
  cfg.experts = 6;
  cfg.norm = GENERATE(NormKind::rmsnorm, NormKind::layernorm);
  cfg.precision = GENERATE(Precision::fp32, Precision::fp16);
  ExecSpace space;
  ShardSpec shard;
  shard.head_begin = 2;
  shard.head_count = 2;
  shard.dim_begin = 1;
  shard.dim_count = 3;
  shard.expert_begin = 3;
  shard.expert_count = 2;
  shard.ffn_begin = 4;
  shard.ffn_count = 8;
  const StagedWeights staged(cfg);
  const ModelWeights generated = make_weights(space, cfg, shard, 1, 2);
  const ModelWeights loaded = make_weights(space, cfg, shard, 1, 2, &staged);
  CHECK(staged.reads > 0);
  const LayerWeights &g = generated.layers[0], &l = loaded.layers[0];
  require_equal(g.attn_norm.gain, l.attn_norm.gain);
  require_equal(g.attn_norm.bias, l.attn_norm.bias);
  require_equal(g.wq, l.wq);
  require_equal(g.wk, l.wk);
  require_equal(g.wv, l.wv);
  require_equal(g.wo, l.wo);
  require_equal(g.ffn_norm.gain, l.ffn_norm.gain);
  require_equal(g.router, l.router);
  require_equal(g.w1, l.w1);
  require_equal(g.w2, l.w2);
  require_equal(g.w3, l.w3);
  require_equal(generated.final_norm.gain, loaded.final_norm.gain);
  require_equal(generated.final_norm.bias, loaded.final_norm.bias);
}

TEST_CASE("weights: spans of a head-sliced axis ascend and cover each head's pairs and partners", "[weights]") {
  const IndexSpans spans = spans_of(AxisMap::head_slice(2, 12, 1, 3), 12);
  REQUIRE(spans.size() == 4);
  const std::int64_t want[4][2] = {{25, 3}, {31, 3}, {37, 3}, {43, 3}};
  for (int i = 0; i < 4; ++i) {
    CHECK(spans[i].begin == want[i][0]);
    CHECK(spans[i].count == want[i][1]);
  }
  CHECK(total_count(spans) == 12);
  const IndexSpans whole = spans_of(AxisMap::contiguous(5), 7);
  REQUIRE(whole.size() == 1);
  CHECK(whole[0].begin == 5);
  CHECK(whole[0].count == 7);
}

TEST_CASE("weights: the catalogue lists every tensor once with docs/checkpoint.md's shapes", "[weights]") {
  ModelConfig cfg;
  cfg.layers = 2;
  cfg.hidden = 16;
  cfg.heads = 4;
  cfg.head_dim = 6;
  cfg.kv_heads = 2;
  cfg.experts = 3;
  cfg.ffn_hidden = 10;
  const std::vector<TensorShape> moe = weight_tensors(cfg);
  CHECK(moe.size() == 2 * 10 + 1);  // 2 norm gains, wq, wk, wv, wo, router, w1, w3, w2; final gain
  for (const TensorShape& t : moe) {
    if (t.name == "layers/1/wk") CHECK(t.stored_dims() == std::vector<std::int64_t>{16, 12});
    if (t.name == "layers/0/wo") CHECK(t.stored_dims() == std::vector<std::int64_t>{24, 16});
    if (t.name == "layers/0/w2") CHECK(t.stored_dims() == std::vector<std::int64_t>{3, 10, 16});
    if (t.name == "final_gain") CHECK(t.stored_dims() == std::vector<std::int64_t>{16});
  }
  cfg.ffn = FfnKind::dense;
  cfg.activation = Activation::gelu;
  cfg.norm = NormKind::layernorm;
  const std::vector<TensorShape> dense = weight_tensors(cfg);
  CHECK(dense.size() == 2 * 10 + 2);  // norm gains and biases, no router, no w3; final gain, bias
  for (const TensorShape& t : dense)
    if (t.name == "layers/0/w1") CHECK(t.stored_dims() == std::vector<std::int64_t>{16, 10});
}
