#include <catch2/catch.hpp>

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
  auto all = to_host(make_inputs(space, cfg, 0, 6, prompt));
  auto part = to_host(make_inputs(space, cfg, 2, 3, prompt));
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
