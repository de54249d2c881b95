// The performance model on cases small enough to check by hand.

#include <catch2/catch.hpp>
#include <cmath>
#include <numeric>

#include "moeproxy/core/model.hpp"
#include "moeproxy/core/perf_model.hpp"
#include "moeproxy/io/machine.hpp"

using namespace moeproxy;

namespace {

// Compute-bound by construction: memory and links far faster than the arithmetic.
MachineSpec compute_bound() {
  MachineSpec m;
  m.name = "test";
  m.peak_flops_fp32 = m.peak_flops_fp16 = 100e9;
  m.gemm_efficiency = 0.5;
  m.memory_bandwidth = 1e18;
  m.memory_bytes = 1e12;
  m.devices_per_node = 4;
  m.intra = Link{10e9, 1e-6, 1.0};
  m.inter = Link{1e9, 5e-6, 0.5};
  return m;
}

RunConfig dense_one_layer() {
  RunConfig cfg;
  cfg.model.layers = 1;
  cfg.model.hidden = 64;
  cfg.model.heads = 4;
  cfg.model.ffn = FfnKind::dense;
  cfg.model.ffn_hidden = 256;
  cfg.model.activation = Activation::gelu;
  cfg.workload.batch = 2;
  cfg.workload.prompt = 32;
  cfg.workload.decode_steps = 2;
  return cfg;
}

// Two pipeline stages of one layer each, 4 sequences in `micro_batches` micro-batches.
RunConfig two_stages(int micro_batches) {
  RunConfig cfg = dense_one_layer();
  cfg.model.layers = 2;
  cfg.workload.batch = 4;
  cfg.parallel.pp = 2;
  cfg.parallel.micro_batches = micro_batches;
  return cfg;
}

double phase_sum(const PhaseTable& t) {
  double s = 0.0;
  for (double x : t.data()) s += x;
  return s;
}

// A machine file's required sections, 15 lines, before a [profile] section.
std::string machine_without_profile() {
  return "[machine]\nname = \"x\"\ndevices_per_node = 1\n[compute]\npeak_tflops_fp16 = 2\npeak_tflops_fp32 = 1\n"
         "[memory]\nbandwidth_gbs = 100\ncapacity_gb = 16\n"
         "[intra_node]\nbandwidth_gbs = 50\nlatency_us = 2\n[inter_node]\nbandwidth_gbs = 10\nlatency_us = 4\n";
}

// Whether one of the prediction's assumptions says `text`.
bool assumes(const Prediction& p, const std::string& text) {
  for (const std::string& a : p.assumptions)
    if (a.find(text) != std::string::npos) return true;
  return false;
}

// The profiles of a machine measured at a single sweep, to be filled in.
KernelProfiles& single_sweep(MachineSpec& m) {
  m.profiles.by_sweep.assign(1, {1024.0 * 1024, KernelProfiles{}});
  return m.profiles.by_sweep.front().second;
}

// Attention/MoE separation: 3 attention ranks of a 2-layer MoE, 4 experts, batch 12.
RunConfig separated_3_4() {
  RunConfig cfg;
  cfg.model.layers = 2;
  cfg.model.hidden = 64;
  cfg.model.heads = 8;
  cfg.model.experts = 4;
  cfg.workload.batch = 12;
  cfg.parallel.attn_ranks = 3;
  cfg.parallel.ep = 1;
  return cfg;
}

}  // namespace

TEST_CASE("perf model: a GEMM-bound kernel takes FLOPs / (peak x efficiency)", "[perf]") {
  const MachineSpec m = compute_bound();
  const double flops = 2.0 * 512 * 512 * 512;
  CHECK(kernel_seconds(m, Precision::fp32, KernelKind::gemm, flops, 1e6) == Approx(flops / 50e9));
  MachineSpec slow_memory = m;
  slow_memory.memory_bandwidth = 1e9;
  slow_memory.kernel_overhead = 2e-6;
  // Bandwidth-bound once the bytes take longer than the FLOPs, plus the launch overhead.
  CHECK(kernel_seconds(slow_memory, Precision::fp32, KernelKind::memory, 0.0, 4e6) == Approx(4e-3 + 2e-6));
  // A bandwidth-bound GEMM streams at gemm_memory_efficiency of that rate; other kernels do not.
  slow_memory.gemm_memory_efficiency = 0.25;
  CHECK(kernel_seconds(slow_memory, Precision::fp32, KernelKind::gemm, 1e3, 4e6) == Approx(16e-3 + 2e-6));
  CHECK(kernel_seconds(slow_memory, Precision::fp32, KernelKind::memory, 0.0, 4e6) == Approx(4e-3 + 2e-6));
}

TEST_CASE("perf model: all-reduce time is 2(n-1) alpha + 2(n-1)/n bytes / busbw", "[perf]") {
  const MachineSpec m = compute_bound();
  // 4 ranks on one node: intra link, 10 GB/s, 1 us.
  CHECK(allreduce_seconds(m, GroupShape{4, 4}, 1e6) == Approx(6e-6 + 1.5e6 / 10e9));
  // 8 ranks over two nodes: the ring crosses the inter link, 1 GB/s at efficiency 0.5, 5 us.
  CHECK(allreduce_seconds(m, GroupShape{8, 4}, 1e6) == Approx(14 * 5e-6 + 1.75e6 / 0.5e9));
  CHECK(allreduce_seconds(m, GroupShape{1, 1}, 1e6) == 0.0);
  // Send/recv: one message, alpha + bytes / bandwidth.
  CHECK(sendrecv_seconds(m, false, 1e6) == Approx(1e-6 + 1e-4));
  // All-to-all over 8 ranks, 4 per node: 3/7 of the bytes stay inside the node, 4/7 cross.
  CHECK(alltoallv_seconds(m, GroupShape{8, 4}, 7e6) == Approx(5e-6 + 4e6 / 0.5e9));
}

TEST_CASE("perf model: pipeline bubble fraction is (P-1)/(M+P-1)", "[perf]") {
  const std::vector<double> stages(4, 1.0);
  const double wall = pipeline_seconds(stages, 8);
  CHECK(wall == Approx(11.0));
  CHECK((wall - 8.0) / wall == Approx(3.0 / 11.0));
  CHECK(pipeline_seconds({1.0, 3.0}, 2) == Approx(7.0));  // the slow stage paces the second micro-batch
}

TEST_CASE("perf model: a single GEMM-bound dense layer", "[perf]") {
  const RunConfig cfg = dense_one_layer();
  const MachineSpec m = compute_bound();
  const Prediction p = predict(cfg, m, 1);
  REQUIRE(p.per_rank.size() == 1);
  const double t = 2.0 * 32, d = 64, f = 256;
  // W1, W2: 2 x 2 t d f FLOPs at 50 GFLOP/s; the activation and residual add cost nothing here.
  CHECK(p.per_rank[0].prefill.at(0, Phase::ffn) == Approx(2.0 * 2.0 * t * d * f / 50e9));
  CHECK(p.per_rank[0].prefill.at(0, Phase::allreduce) == 0.0);
  // One rank, no pipeline: the wall is the sum of the phases and of the input rows' writing.
  const double input = kernel_seconds(m, Precision::fp32, KernelKind::memory, 0.0, 4.0 * t * d);
  CHECK(p.per_rank[0].prefill_seconds == Approx(phase_sum(p.per_rank[0].prefill) + input));
  CHECK(p.summary.ttft_s == Approx(p.per_rank[0].prefill_seconds));
  CHECK(p.summary.prefill_tokens_per_s == Approx(2.0 * 32 / p.summary.ttft_s));
}

TEST_CASE("perf model: tensor parallelism adds an all-reduce of the layer's rows", "[perf]") {
  RunConfig cfg = dense_one_layer();
  cfg.parallel.tp = 2;
  const MachineSpec m = compute_bound();
  const Prediction p = predict(cfg, m, 2);
  const double bytes = 4.0 * 2 * 32 * 64;
  // Two reductions per layer (after attention and after the FFN), on the intra link.
  CHECK(p.per_rank[1].prefill.at(0, Phase::allreduce) == Approx(2.0 * allreduce_seconds(m, GroupShape{2, 4}, bytes)));
  REQUIRE_THROWS_AS(predict(cfg, m, 3), InputError);
}

TEST_CASE("perf model: pipeline stages wait for the fill and drain", "[perf]") {
  const Prediction p = predict(two_stages(4), compute_bound(), 2);
  for (const RankMetrics& r : p.per_rank) {
    // Every rank's phases, waiting included, add up to the common wall time (the input rows,
    // outside every phase, cost nothing on this machine).
    CHECK(phase_sum(r.prefill) == Approx(r.prefill_seconds));
    CHECK(phase_sum(r.decode) == Approx(r.decode_seconds));
  }
  CHECK(p.per_rank[0].prefill.at(0, Phase::wait) > 0.0);
  CHECK(p.per_rank[1].prefill.at(1, Phase::recv) > 0.0);
}

TEST_CASE("perf model: the prefill's input rows are in the first stage's wall, outside every phase", "[perf]") {
  MachineSpec m = compute_bound();
  m.memory_bandwidth = 1e9;  // 4 B x 64 rows x 64 columns: 16 us a micro-batch
  m.kernel_overhead = 1e-6;
  const Prediction p = predict(two_stages(2), m, 2);
  const double per_micro_batch = 1e-6 + 4.0 * (2 * 32) * 64 / 1e9;
  const RankMetrics &first = p.per_rank[0], &last = p.per_rank[1];
  CHECK(first.prefill_seconds - phase_sum(first.prefill) == Approx(2 * per_micro_batch));
  CHECK(last.prefill_seconds == Approx(phase_sum(last.prefill)));  // its recv waited for them
  for (const RankMetrics* r : {&first, &last}) {
    CHECK(r->decode_seconds == Approx(phase_sum(r->decode)));
    // Each decode step's wall, as a measured run writes them (timing/decode_step_wall).
    REQUIRE(r->decode_step_seconds.size() == static_cast<std::size_t>(two_stages(2).workload.decode_steps));
    CHECK(std::accumulate(r->decode_step_seconds.begin(), r->decode_step_seconds.end(), 0.0) ==
          Approx(r->decode_seconds));
  }
}

TEST_CASE("perf model: memory per rank agrees with estimate_memory in fp32", "[perf]") {
  RunConfig cfg;
  cfg.model = ModelConfig{};
  cfg.workload = WorkloadConfig{};
  const Prediction p = predict(cfg, compute_bound(), 1);
  const MemoryEstimate e = estimate_memory(cfg.model, cfg.workload, cfg.workload.batch);
  const auto& mem = p.per_rank[0].memory;
  CHECK(mem[static_cast<int>(MemoryKind::weights)] == e.weights);
  CHECK(mem[static_cast<int>(MemoryKind::kv_cache)] == e.kv_cache);
  // The estimate also counts the router's int indices; the model counts them as floats.
  CHECK(static_cast<double>(mem[static_cast<int>(MemoryKind::activations)]) == Approx(e.activations).epsilon(0.01));
}

TEST_CASE("perf model: attention/MoE separation from the deck keys", "[perf]") {
  RunConfig cfg = separated_3_4();
  const MachineSpec m = compute_bound();
  CHECK(deck_ranks(cfg.parallel) == 4);
  // An expert map lists the expert ranks, as the seed's separated deck has it with ep unset.
  RunConfig mapped = cfg;
  mapped.parallel.expert_map = {{{0}, {1}, {2, 3}}};
  CHECK(deck_ranks(mapped.parallel) == 6);
  const Prediction p = predict(cfg, m, 7);  // 3 attention ranks, 4 expert ranks
  REQUIRE(p.roles.size() == 7);
  CHECK(p.roles[2] == "attention");
  CHECK(p.roles[3] == "experts");
  CHECK(p.per_rank[0].prefill.at(0, Phase::expert) == 0.0);
  CHECK(p.per_rank[3].prefill.at(0, Phase::attn_core) == 0.0);
  CHECK(p.per_rank[3].prefill.at(0, Phase::expert) > 0.0);
  REQUIRE_THROWS_AS(predict(cfg, m, 6), InputError);  // 3 expert ranks do not divide 4 experts
}

TEST_CASE("perf model: separation's ping-pong hides the transfers it overlaps, never more than the wall", "[perf]") {
  RunConfig cfg = separated_3_4();
  MachineSpec m = compute_bound();
  // A slow link, so that transfers exceed what a micro-batch computes.
  m.intra.bandwidth = m.inter.bandwidth = 1e6;
  const Prediction one = predict(cfg, m, 7);
  CHECK(one.summary.comm_hidden_seconds == 0.0);
  cfg.parallel.micro_batches = 2;
  const Prediction two = predict(cfg, m, 7);
  CHECK(two.summary.comm_hidden_seconds > 0.0);
  CHECK(two.summary.comm_fraction <= 1.0);
  CHECK(two.summary.comm_seconds_raw ==
        Approx(two.summary.comm_exposed_seconds + two.summary.comm_hidden_seconds));
  double hidden = 0.0;
  for (const RankMetrics& r : two.per_rank) {
    hidden += r.comm_hidden_seconds;
    // The phases add up to the wall: what is hidden is no longer in them.
    CHECK(phase_sum(r.prefill) == Approx(r.prefill_seconds));
    CHECK(phase_sum(r.decode) == Approx(r.decode_seconds));
    double records = 0.0;
    for (const CommRecord& c : r.comm) records += c.hidden_seconds;
    CHECK(records == Approx(r.comm_hidden_seconds));
  }
  CHECK(hidden == Approx(two.summary.comm_hidden_seconds));
}

TEST_CASE("perf model: separation's micro-batches fill and drain the ping-pong once per pass", "[perf]") {
  RunConfig cfg = separated_3_4();
  cfg.parallel.micro_batches = 2;
  MachineSpec m = compute_bound();
  m.intra = m.inter = Link{1e15, 1e-9, 1.0};  // the sides' compute paces the loop
  const Prediction p = predict(cfg, m, 7);
  const RankMetrics &attention = p.per_rank[0], &experts = p.per_rank[3];
  auto compute = [](const PhaseTable& t, int l) {
    double s = 0.0;
    for (int q = 0; q < static_cast<int>(Phase::allreduce); ++q) s += t.at(l, static_cast<Phase>(q));
    return s;
  };
  const double a0 = compute(attention.prefill, 0) / 2, e1 = compute(experts.prefill, 1) / 2;  // one micro-batch
  REQUIRE(a0 > 0.0);
  REQUIRE(e1 > 0.0);
  const double attention_total = compute(attention.prefill, 0) + compute(attention.prefill, 1);
  const double experts_total = compute(experts.prefill, 0) + compute(experts.prefill, 1);
  // The experts' first rows arrive after one micro-batch's attention; the last micro-batch
  // still goes through the experts after the attention ranks' last compute.
  CHECK(experts.prefill.at(0, Phase::wait) >= a0);
  CHECK(p.summary.ttft_s >= experts_total + a0);
  CHECK(p.summary.ttft_s >= attention_total + e1);
  CHECK(phase_sum(attention.prefill) == Approx(attention.prefill_seconds));
  CHECK(phase_sum(experts.prefill) == Approx(experts.prefill_seconds));
}

TEST_CASE("perf model: separation's experts end each pass in `send`, waiting for their last results to leave", "[perf]") {
  const RunConfig cfg = separated_3_4();
  MachineSpec m = compute_bound();
  const Prediction before = predict(cfg, m, 7);
  const double slower = 1e-3;  // each message's latency
  m.intra.latency += slower;
  m.inter.latency += slower;
  const Prediction after = predict(cfg, m, 7);
  const RankMetrics &e0 = before.per_rank[3], &e1 = after.per_rank[3];
  CHECK(e1.prefill.at(1, Phase::send) - e0.prefill.at(1, Phase::send) == Approx(slower));
  CHECK(e1.decode.at(1, Phase::send) - e0.decode.at(1, Phase::send) == Approx(cfg.workload.decode_steps * slower));
  CHECK(e1.prefill.at(0, Phase::send) == Approx(e0.prefill.at(0, Phase::send)));
  CHECK(phase_sum(e1.prefill) == Approx(e1.prefill_seconds));
  CHECK(phase_sum(e1.decode) == Approx(e1.decode_seconds));
  // Within a node each message takes the machine's measured send, as a pipeline stage's does.
  m = compute_bound();
  m.devices_per_node = 8;
  const double modelled = predict(cfg, m, 7).per_rank[3].prefill.at(1, Phase::send);
  single_sweep(m).kernels["send"] = KernelProfile{{{1.0, 1.0}, {1e12, 1.0}}};
  m.profiles.ranks = 2;
  CHECK(predict(cfg, m, 7).per_rank[3].prefill.at(1, Phase::send) >= 1.0);
  CHECK(modelled < 1e-2);
}

TEST_CASE("perf model: with separation under zipf routing each expert rank computes its share and waits for the busiest",
          "[perf]") {
  RunConfig cfg = separated_3_4();  // 4 expert ranks, one expert each
  cfg.workload.routing = RoutingMode::zipf;
  cfg.workload.zipf_exponent = 1.2;
  const MachineSpec m = compute_bound();
  const std::vector<double> shares = expert_shares(cfg.model, cfg.workload);
  const Prediction z = predict(cfg, m, 7);
  REQUIRE(z.per_rank.size() == 7);
  const RankMetrics& first = z.per_rank[3];
  for (int r = 4; r < 7; ++r) {
    const RankMetrics& other = z.per_rank[static_cast<std::size_t>(r)];
    for (int l = 0; l < 2; ++l) {
      // Compute-bound GEMMs: an expert rank's time is linear in its expert's rows.
      CHECK(other.prefill.at(l, Phase::expert) ==
            Approx(shares[r - 3] / shares[0] * first.prefill.at(l, Phase::expert)).epsilon(0.01));
      CHECK(other.decode.at(l, Phase::expert) < z.per_rank[static_cast<std::size_t>(r - 1)].decode.at(l, Phase::expert));
      CHECK(other.prefill.at(l, Phase::wait) - first.prefill.at(l, Phase::wait) ==
            Approx(first.prefill.at(l, Phase::expert) - other.prefill.at(l, Phase::expert)));
    }
    CHECK(phase_sum(other.prefill) == Approx(other.prefill_seconds));
    CHECK(phase_sum(other.decode) == Approx(other.decode_seconds));
  }
  // Even routing: every expert rank the same.
  cfg.workload.routing = RoutingMode::uniform;
  const Prediction e = predict(cfg, m, 7);
  for (int r = 4; r < 7; ++r)
    CHECK(e.per_rank[static_cast<std::size_t>(r)].prefill.at(0, Phase::expert) ==
          Approx(e.per_rank[3].prefill.at(0, Phase::expert)));
}

TEST_CASE("perf model: the suggested attention/FFN split is the fastest one the runtime accepts", "[perf]") {
  RunConfig cfg = separated_3_4();
  cfg.parallel.dp = 3;
  const MachineSpec m = compute_bound();
  // On 7 ranks the FFN ranks divide the 4 experts for 3 (4 FFN ranks), 5 (2) and 6 (1)
  // attention ranks: 3 as the deck, 6 as 3 replicas of tp = 2; 5 is not a multiple of the 3
  // replicas, and 5 replicas of tp = 1 do not split 12 sequences.
  const RankSplitSuggestion s = suggest_attention_split(cfg, m, 7);
  auto tpot = [&](int attn, int tp) {
    RunConfig c = cfg;
    c.parallel.attn_ranks = attn;
    c.parallel.dp = attn / tp;
    c.parallel.tp = tp;
    c.parallel.ep = 7 - attn;
    return predict(c, m, 7).summary.tpot_s;
  };
  const double t3 = tpot(3, 1), t6 = tpot(6, 2);
  CHECK(s.attn_ranks == (t6 < t3 ? 6 : 3));
  CHECK(s.tpot_s == std::min(t3, t6));
  CHECK(s.current_attn_ranks == 3);
  CHECK(s.current_tpot_s == t3);
  CHECK(s.machine == "test");
  cfg.model.ffn = FfnKind::dense;
  const RankSplitSuggestion dense = suggest_attention_split(cfg, m, 7);
  CHECK(dense.attn_ranks == 0);
  CHECK(dense.note.find("dense") != std::string::npos);
}

TEST_CASE("machine file: figures in human units, unknown keys named with their line", "[perf]") {
  const std::string text =
      "[machine]\nname = \"x\"\ndevices_per_node = 4\n[compute]\npeak_tflops_fp16 = 2\npeak_tflops_fp32 = 1\n"
      "kernel_overhead_us = 3\n[memory]\nbandwidth_gbs = 100\ncapacity_gb = 16\n"
      "[intra_node]\nbandwidth_gbs = 50\nlatency_us = 2\n[inter_node]\nbandwidth_gbs = 10\nlatency_us = 4\n";
  const MachineSpec m = io::parse_machine(text, "m.toml");
  CHECK(m.peak_flops_fp32 == Approx(1e12));
  CHECK(m.kernel_overhead == Approx(3e-6));
  CHECK(m.memory_bandwidth == Approx(100e9));
  CHECK(m.inter.latency == Approx(4e-6));
  CHECK(m.gemm_efficiency == 1.0);
  const MachineSpec back = io::parse_machine(io::format_machine(m, {{"memory.capacity_gb", "a note"}}), "back.toml");
  CHECK(back.memory_bytes == Approx(m.memory_bytes));
  CHECK(back.intra.bandwidth == Approx(m.intra.bandwidth));
  try {
    io::parse_machine(text + "[memory]\n", "m.toml");
    FAIL("a repeated table was accepted");
  } catch (const InputError&) {
  }
  try {
    io::parse_machine("[machine]\nname = \"x\"\ndevices_per_node = 1\n[compute]\npeak_tflop = 3\n", "bad.toml");
    FAIL("an unknown key was accepted");
  } catch (const InputError& e) {
    const std::string what = e.what();
    CHECK(what.find("bad.toml:5") != std::string::npos);
    CHECK(what.find("compute.peak_tflop") != std::string::npos);
    CHECK(what.find("peak_tflops_fp16") != std::string::npos);
  }
  REQUIRE_THROWS_AS(io::parse_machine("[machine]\nname = \"x\"\ndevices_per_node = 1\n", "short.toml"), InputError);
}

TEST_CASE("kernel profile: the floor below, log-log between, the largest's rate above", "[perf]") {
  const KernelProfile p{{{100.0, 1e-6}, {10000.0, 1e-4}}};
  CHECK(p.seconds(10.0) == Approx(1e-6));
  CHECK(p.seconds(100.0) == Approx(1e-6));
  CHECK(p.seconds(1000.0) == Approx(1e-5));
  CHECK(p.seconds(10000.0) == Approx(1e-4));
  CHECK(p.seconds(40000.0) == Approx(4e-4));
}

TEST_CASE("gemm profile: the measured rate of the bracketing weights at the call's rows", "[perf]") {
  GemmProfile g;
  // rows 1 and 100: 2 us and 20 us at 100 x 100; 8 us and 800 us at 1000 x 1000.
  g.by_weight.push_back({1e4, KernelProfile{{{1.0, 2e-6}, {100.0, 2e-5}}}});
  g.by_weight.push_back({1e6, KernelProfile{{{1.0, 8e-6}, {100.0, 8e-4}}}});
  CHECK(g.seconds(1.0, 100.0, 100.0) == Approx(2e-6));
  CHECK(g.seconds(100.0, 1000.0, 1000.0) == Approx(8e-4));
  CHECK(g.seconds(10.0, 100.0, 100.0) == Approx(std::sqrt(2e-6 * 2e-5)));
  // 1e5 elements lies halfway (log) between: the geometric mean of the two scaled times.
  CHECK(g.seconds(100.0, 100.0, 1000.0) == Approx(std::sqrt(2e-5 * 10.0 * 8e-4 / 10.0)));
  CHECK(g.seconds(100.0, 2000.0, 1000.0) == Approx(2.0 * 8e-4));
  CHECK(g.seconds(100.0, 10.0, 10.0) == Approx(2e-5));
}

TEST_CASE("perf model: a profiled kernel takes its measured time at the call's size", "[perf]") {
  RunConfig cfg = dense_one_layer();
  MachineSpec m = compute_bound();
  const double roofline = predict(cfg, m, 1).per_rank[0].prefill.at(0, Phase::norm);
  single_sweep(m).kernels["norm"] = KernelProfile{{{1.0, 5e-3}}};
  const Prediction p = predict(cfg, m, 1);
  const double t = static_cast<double>(cfg.workload.batch) * cfg.workload.prompt;
  const double one = m.profiles.any()->find("norm")->seconds(kernel_size::norm(t, cfg.model.hidden, 4.0));
  CHECK(one == Approx(5e-3 * kernel_size::norm(t, cfg.model.hidden, 4.0)));
  // Two norms per layer and the final norm.
  CHECK(p.per_rank[0].prefill.at(0, Phase::norm) == Approx(3.0 * one));
  CHECK(roofline < 1e-6);
  CHECK(assumes(p, "measured profiles (norm)"));
}

TEST_CASE("perf model: a synchronising collective waits as sync_wait has it for the compute since the last", "[perf]") {
  RunConfig cfg = dense_one_layer();
  MachineSpec m = compute_bound();
  // Above its one point a profile grows in proportion: a wait of 1e-3 of the work.
  m.profiles.sync_wait = KernelProfile{{{1e-3, 1e-12}}};
  const Prediction alone = predict(cfg, m, 1);
  CHECK(alone.per_rank[0].prefill.at(0, Phase::allreduce) == 0.0);
  cfg.parallel.tp = 2;
  const Prediction p = predict(cfg, m, 2);
  const PhaseTable& t = p.per_rank[0].prefill;
  double compute = 0.0;
  for (int ph = 0; ph < static_cast<int>(Phase::allreduce); ++ph) compute += t.at(0, static_cast<Phase>(ph));
  // Both reductions of the layer follow compute; the final norm comes after the second.
  const double synchronised = compute - t.at(0, Phase::norm) / 3.0;
  const double reductions = 2.0 * allreduce_seconds(m, GroupShape{2, 4}, 4.0 * 2 * 32 * 64);
  CHECK(t.at(0, Phase::allreduce) == Approx(reductions + 1e-3 * synchronised));
}

TEST_CASE("machine file: [profile] reads back as written, and bad points are named with their line", "[perf]") {
  const std::string base = machine_without_profile();
  const MachineSpec m = io::parse_machine(base +
                                              "[profile]\nranks = 2\nshared_caches = true\nsync_wait = [[100, 2], [1000, 30]]\n"
                                              "[[profile.sweep]]\nbytes = 1048576\nnorm = [[1024, 2.5], [4096, 6]]\n"
                                              "gemm = [[1, 64, 3], [8, 64, 4], [1, 256, 9]]\n"
                                              "[[profile.sweep]]\nbytes = 67108864\nnorm = [[1024, 5], [4096, 12]]\n"
                                              "gemm = [[1, 64, 6], [8, 64, 8], [1, 256, 18]]\n"
                                              "[[profile.weight_sweep]]\nbytes = 1048576\nnorm = [[1024, 2], [4096, 5]]\n"
                                              "gemm = [[1, 64, 2], [8, 64, 3], [1, 256, 7]]\n",
                                          "p.toml");
  REQUIRE(m.profiles.by_sweep.size() == 2);
  CHECK(m.profiles.by_sweep[1].first == 67108864.0);
  const KernelProfile* norm = m.profiles.any()->find("norm");
  REQUIRE(norm != nullptr);
  CHECK(norm->seconds(4096.0) == Approx(6e-6));
  CHECK(m.profiles.by_sweep[1].second.find("norm")->seconds(4096.0) == Approx(12e-6));
  REQUIRE(m.profiles.any()->gemm.by_weight.size() == 2);
  CHECK(m.profiles.any()->gemm.seconds(8.0, 64.0, 64.0) == Approx(4e-6));
  CHECK(m.profiles.sync_wait.seconds(1000.0) == Approx(30e-6));
  const MachineSpec back = io::parse_machine(io::format_machine(m, {{"profile.norm", "a note"}}), "back.toml");
  REQUIRE(back.profiles.by_sweep.size() == 2);
  for (std::size_t i = 0; i < 2; ++i) {
    CHECK(back.profiles.by_sweep[i].first == m.profiles.by_sweep[i].first);
    CHECK(back.profiles.by_sweep[i].second.find("norm")->points == m.profiles.by_sweep[i].second.find("norm")->points);
  }
  CHECK(back.profiles.by_sweep[1].second.gemm.seconds(1.0, 256.0, 256.0) == Approx(18e-6));
  REQUIRE(back.profiles.by_weight_sweep.size() == 1);
  CHECK(back.profiles.by_weight_sweep[0].first == 1048576.0);
  CHECK(back.profiles.by_weight_sweep[0].second.find("norm")->seconds(4096.0) == Approx(5e-6));
  CHECK(back.profiles.by_weight_sweep[0].second.gemm.seconds(1.0, 256.0, 256.0) == Approx(7e-6));
  CHECK(back.profiles.sync_wait.points == m.profiles.sync_wait.points);
  CHECK(back.profiles.ranks == 2);
  CHECK(back.profiles.shared_caches);
  // base is 15 lines: [profile] is line 16, a sweep's first kernel line 19.
  auto refused_at = [&](const std::string& text, const std::string& expect, const std::string& line) {
    try {
      io::parse_machine(base + text, "bad.toml");
      FAIL("accepted: " + text);
    } catch (const InputError& e) {
      const std::string what = e.what();
      INFO(what);
      CHECK(what.find("bad.toml:" + line) != std::string::npos);
      CHECK(what.find(expect) != std::string::npos);
    }
  };
  auto refused = [&](const std::string& profile, const std::string& expect) {
    refused_at("[profile]\n[[profile.sweep]]\nbytes = 1048576\n" + profile, expect, "19");
  };
  refused("nrom = [[1, 2]]\n", "valid keys of [[profile.sweep]]: bytes, gemm, norm");
  refused("norm = [[4096, 2], [1024, 6]]\n", "sizes must increase");
  refused("norm = [[1024, -2]]\n", "[size, microseconds]");
  refused("norm = [1024, 2]\n", "[size, microseconds]");
  refused("gemm = [[8, 64, 3], [1, 64, 4]]\n", "rows must increase");
  refused("attention_decode = [[512, 0.3]]\n", "run moeproxy calibrate again");
  refused("attention_decode = [[64, 512, 1, 2]]\n", "must be an array of [head_dim, size, microseconds]");
  refused("attention_decode = [[64, 2048, 0.6], [64, 512, 0.3]]\n", "sizes must increase for each head_dim");
  refused("rope = [[4096, 6.7]]\n", "rope by heads: rows are [heads, size, microseconds] now");
  refused("route = [[48, 0.4]]\n", "top-k alone");
  refused("route = [[48, 0.4]]\n", "run moeproxy calibrate again");
  refused_at("[profile]\nnorm = [[1024, 2.5]]\n", "outside [[profile.sweep]]", "17");
  refused_at("[profile]\nnorm = [[1024, 2.5]]\n", "run moeproxy calibrate again", "17");
  refused_at("[profile]\nshared_caches = 1\n", "profile.shared_caches must be true or false", "17");
  refused_at("[profile]\nsweeps = 3\n", "valid keys of [profile]: ranks, shared_caches, sync_wait, sweep, weight_sweep",
             "17");
  refused_at("[profile]\nranks = 0\n", "profile.ranks must be a positive integer", "17");
  refused_at("[profile]\n[[profile.sweep]]\nbytes = -1\n", "bytes must be a positive number", "18");
  refused_at("[profile]\n[[profile.sweep]]\nbytes = 2048\nnorm = [[1, 2]]\n[[profile.sweep]]\nbytes = 1024\n"
             "norm = [[1, 3]]\n",
             "the sweeps' bytes must increase", "21");
  refused_at("[profile]\n[[profile.sweep]]\nbytes = 1024\nnorm = [[1, 2]]\n[[profile.sweep]]\nbytes = 2048\n"
             "add = [[1, 3]]\n",
             "every sweep holds the same kernels", "20");
  refused_at("[profile]\n[[profile.weight_sweep]]\nbytes = 1024\nnrom = [[1, 2]]\n",
             "valid keys of [[profile.weight_sweep]]: bytes, gemm, norm", "19");
  refused_at("[profile]\n[[profile.sweep]]\nbytes = 1024\nnorm = [[1, 2]]\n[[profile.weight_sweep]]\nbytes = 1024\n"
             "add = [[1, 3]]\n",
             "both kinds of sweep hold the same kernels", "");
  refused_at("[profile]\n[[profile.weight_sweep]]\nbytes = 1024\nnorm = [[1, 2]]\n",
             "both kinds of sweep hold the same kernels", "");
}

TEST_CASE("machine file: attention profiles by head width read back as written", "[perf]") {
  const std::string base = machine_without_profile();
  const MachineSpec m = io::parse_machine(base +
                                              "[profile]\n[[profile.sweep]]\nbytes = 1048576\n"
                                              "attention_prefill = [[64, 1024, 3], [64, 16384, 12], [16, 256, 1], "
                                              "[16, 4096, 4]]\n",
                                          "a.toml");
  const ParameterProfile* p = m.profiles.any()->find_by_parameter("attention_prefill");
  REQUIRE(p != nullptr);
  REQUIRE(p->by_value.size() == 2);
  CHECK(p->by_value[0].first == 16.0);
  CHECK(p->seconds(64.0, 16384.0) == Approx(12e-6));
  CHECK(p->seconds(16.0, 4096.0) == Approx(4e-6));
  const MachineSpec back = io::parse_machine(io::format_machine(m, {}), "back.toml");
  const ParameterProfile* q = back.profiles.any()->find_by_parameter("attention_prefill");
  REQUIRE(q != nullptr);
  REQUIRE(q->by_value.size() == 2);
  for (std::size_t i = 0; i < 2; ++i) {
    CHECK(q->by_value[i].first == p->by_value[i].first);
    CHECK(q->by_value[i].second.points == p->by_value[i].second.points);
  }
}

TEST_CASE("sweep profiles: the nearest sweep outside, log-log in the footprint between", "[perf]") {
  MachineProfiles p;
  p.by_sweep.push_back({1e6, KernelProfiles{}});
  p.by_sweep.push_back({1e8, KernelProfiles{}});
  p.by_sweep[0].second.kernels["norm"] = KernelProfile{{{1.0, 1e-6}}};
  p.by_sweep[1].second.kernels["norm"] = KernelProfile{{{1.0, 1e-4}}};
  const auto norm = [](const KernelProfiles& k) { return k.find("norm")->seconds(1.0); };
  CHECK(p.at(1e3, Sweep::read, norm) == Approx(1e-6));
  CHECK(p.at(1e6, Sweep::read, norm) == Approx(1e-6));
  CHECK(p.at(1e9, Sweep::read, norm) == Approx(1e-4));
  // 1e7 lies halfway (log) between the sweeps: the geometric mean of their times.
  CHECK(p.at(1e7, Sweep::read, norm) == Approx(1e-5));
  // Without weight sweeps (a machine file before them) the read sweeps serve both kinds.
  CHECK(p.at(1e7, Sweep::weights, norm) == Approx(1e-5));
  p.by_weight_sweep.push_back({1e6, KernelProfiles{}});
  p.by_weight_sweep.push_back({1e8, KernelProfiles{}});
  p.by_weight_sweep[0].second.kernels["norm"] = KernelProfile{{{1.0, 2e-6}}};
  p.by_weight_sweep[1].second.kernels["norm"] = KernelProfile{{{1.0, 8e-6}}};
  CHECK(p.at(1e7, Sweep::weights, norm) == Approx(4e-6));
  CHECK(p.at(1e7, Sweep::read, norm) == Approx(1e-5));
}

// Profiles of `norm` and the GEMM, each a fixed time per call, after a sweep of `bytes`.
std::pair<double, KernelProfiles> fixed_times(double bytes, double norm, double gemm) {
  KernelProfiles k;
  k.kernels["norm"] = KernelProfile{{{1e12, norm}}};
  // One weight larger than any call's: every GEMM takes the time at any rows.
  k.gemm.by_weight.push_back({1e12, KernelProfile{{{1e12, gemm}}}});
  return {bytes, k};
}

TEST_CASE("perf model: a rank's kernels are looked up at the footprint of their data", "[perf]") {
  RunConfig cfg = dense_one_layer();
  MachineSpec m = compute_bound();
  const Prediction plain = predict(cfg, m, 1);
  const auto& memory = plain.per_rank[0].memory;
  const auto bytes = [&](MemoryKind k) { return static_cast<double>(memory[static_cast<int>(k)]); };
  // Prefill moves every byte the rank holds; sweeps at a quarter and four times that, 100x
  // slower after the larger.
  const double prefill = bytes(MemoryKind::weights) + bytes(MemoryKind::kv_cache) + bytes(MemoryKind::activations) +
                         bytes(MemoryKind::comm_buffers);
  m.profiles.by_sweep.push_back(fixed_times(prefill / 4.0, 1e-6, 1e-6));
  m.profiles.by_sweep.push_back(fixed_times(prefill * 4.0, 1e-4, 1e-4));
  const auto after = [&](double footprint) {
    const double f = std::log(footprint / (prefill / 4.0)) / std::log(16.0);
    return f <= 0.0 ? 1e-6 : std::exp(std::log(1e-6) + f * std::log(100.0));
  };
  const Prediction p = predict(cfg, m, 1);
  // The FFN's two GEMMs read weights: the whole pass went through the caches since, at the
  // geometric mean of the sweeps.
  CHECK(p.per_rank[0].prefill.at(0, Phase::ffn) == Approx(2.0 * 1e-5));
  // A decode step moves the weights, the KV cache and one prompt position's share of the rest.
  const double activations = bytes(MemoryKind::activations) + bytes(MemoryKind::comm_buffers);
  const double step = bytes(MemoryKind::weights) + bytes(MemoryKind::kv_cache) + activations / cfg.workload.prompt;
  const int steps = cfg.workload.decode_steps;
  CHECK(p.per_rank[0].decode.at(0, Phase::ffn) == Approx(2.0 * steps * after(step)));
  // A norm reads the hot set: the pass's share of the activations and buffers, and the gains
  // of the layer's two norms and the final one; between two of its touches the layer streams
  // at most the FFN's two weights (the QKV weights and the KV cache with the output weights
  // are smaller here).
  const double gains = 4.0 * 3 * cfg.model.hidden;
  const double d = cfg.model.hidden, positions = cfg.workload.prompt + cfg.workload.decode_steps;
  const double gap = 4.0 * 2 * d * cfg.model.ffn_hidden;
  REQUIRE(gap > 4.0 * 3 * d * d);
  REQUIRE(gap > 4.0 * (2 * cfg.workload.batch * positions * d + d * d));
  REQUIRE(after(activations + gains + gap) > 1e-6);
  CHECK(p.per_rank[0].prefill.at(0, Phase::norm) == Approx(3.0 * after(activations + gains + gap)));
  CHECK(p.per_rank[0].decode.at(0, Phase::norm) ==
        Approx(3.0 * steps * after(activations / cfg.workload.prompt + gains + gap)));
  // A context long enough that one layer's KV cache and output weights outgrow the FFN's.
  RunConfig longer = cfg;
  longer.workload.prompt = 8 * cfg.workload.prompt;
  const double long_positions = longer.workload.prompt + longer.workload.decode_steps;
  const double kv_gap = 4.0 * (2 * longer.workload.batch * long_positions * d + d * d);
  REQUIRE(kv_gap > gap);
  const RankMetrics long_rank = predict(longer, m, 1).per_rank[0];
  const auto& long_memory = long_rank.memory;
  const double long_activations = static_cast<double>(long_memory[static_cast<int>(MemoryKind::activations)]) +
                                  static_cast<double>(long_memory[static_cast<int>(MemoryKind::comm_buffers)]);
  CHECK(long_rank.decode.at(0, Phase::norm) ==
        Approx(3.0 * steps * after(long_activations / longer.workload.prompt + gains + kv_gap)));
  // With weight sweeps, a decode step's kernels are looked up in them, a prefill's still in
  // the read sweeps: a decode step's traffic is its weights (kernel_profile.hpp, Sweep).
  m.profiles.by_weight_sweep = m.profiles.by_sweep;
  for (auto& [swept, k] : m.profiles.by_weight_sweep) k.gemm.by_weight[0].second.points[0].second *= 3.0;
  const Prediction w = predict(cfg, m, 1);
  CHECK(w.per_rank[0].prefill.at(0, Phase::ffn) == Approx(2.0 * 1e-5));
  CHECK(w.per_rank[0].decode.at(0, Phase::ffn) == Approx(3.0 * 2.0 * steps * after(step)));
}

TEST_CASE("perf model: on caches the calibration's ranks shared, a rank's footprint counts as its share of the node's",
          "[perf]") {
  RunConfig cfg = dense_one_layer();
  MachineSpec m = compute_bound();
  m.devices_per_node = 4;
  const Prediction alone = predict(cfg, m, 1);
  const auto& memory = alone.per_rank[0].memory;
  double prefill = 0.0;  // what prefill moves (the test above)
  for (MemoryKind k : {MemoryKind::weights, MemoryKind::kv_cache, MemoryKind::activations, MemoryKind::comm_buffers})
    prefill += static_cast<double>(memory[static_cast<int>(k)]);
  // Profiles from 4 ranks sweeping at once: a sweep of a quarter of the rank's footprint, and
  // one of all of it, 16 times slower.
  m.profiles.ranks = 4;
  m.profiles.by_sweep.push_back(fixed_times(prefill / 4.0, 1e-6, 1e-6));
  m.profiles.by_sweep.push_back(fixed_times(prefill, 16e-6, 16e-6));
  const auto prefill_of = [&](int ranks, Phase phase) {
    RunConfig c = cfg;
    c.workload.batch = cfg.workload.batch * ranks;
    c.parallel.dp = ranks;
    return predict(c, m, ranks).per_rank[0].prefill.at(0, phase);
  };
  // The FFN's two GEMMs. Each GPU's L2 is its own: the rank's footprint, however many ranks
  // the node holds.
  CHECK(prefill_of(1, Phase::ffn) == Approx(2.0 * 16e-6));
  CHECK(prefill_of(4, Phase::ffn) == Approx(2.0 * 16e-6));
  const double hot_alone = prefill_of(1, Phase::norm);
  m.profiles.shared_caches = true;
  // Alone on the node a rank meets a quarter of the calibration's traffic: the first sweep's
  // time; four ranks, as the calibration's four, their own footprint; two, halfway (log).
  CHECK(prefill_of(1, Phase::ffn) == Approx(2.0 * 1e-6));
  CHECK(prefill_of(2, Phase::ffn) == Approx(2.0 * 4e-6));
  CHECK(prefill_of(4, Phase::ffn) == Approx(2.0 * 16e-6));
  // Beyond the node's devices the node holds devices_per_node of them.
  CHECK(prefill_of(8, Phase::ffn) == Approx(2.0 * 16e-6));
  // The hot set's footprint counts the same way: four ranks find it as one rank alone did.
  REQUIRE(hot_alone > 3.0 * 1e-6);
  CHECK(prefill_of(1, Phase::norm) == Approx(3.0 * 1e-6));
  CHECK(prefill_of(4, Phase::norm) == Approx(hot_alone));
}

TEST_CASE("head-width profile: the nearest width outside, log-log in the width between", "[perf]") {
  ParameterProfile p;
  p.by_value.push_back({16.0, KernelProfile{{{100.0, 1e-6}, {10000.0, 1e-4}}}});
  p.by_value.push_back({64.0, KernelProfile{{{100.0, 4e-6}, {10000.0, 4e-4}}}});
  CHECK(p.seconds(8.0, 1000.0) == Approx(1e-5));
  CHECK(p.seconds(16.0, 100.0) == Approx(1e-6));
  CHECK(p.seconds(128.0, 100.0) == Approx(4e-6));
  // 32 lies halfway (log) between 16 and 64: the geometric mean of their times.
  CHECK(p.seconds(32.0, 100.0) == Approx(2e-6));
  CHECK(p.seconds(32.0, 10000.0) == Approx(2e-4));
}

TEST_CASE("perf model: a collective takes its profile's time on a group of the calibration's ranks", "[perf]") {
  RunConfig cfg = dense_one_layer();
  cfg.parallel.tp = 2;
  MachineSpec m = compute_bound();
  const double modelled = predict(cfg, m, 2).per_rank[0].prefill.at(0, Phase::allreduce);
  single_sweep(m).kernels["allreduce"] = KernelProfile{{{1.0, 1e-3}, {1e12, 1e-3}}};
  m.profiles.ranks = 4;
  CHECK(predict(cfg, m, 2).per_rank[0].prefill.at(0, Phase::allreduce) == Approx(modelled));
  m.profiles.ranks = 2;
  // The attention output's and the FFN's reductions.
  CHECK(predict(cfg, m, 2).per_rank[0].prefill.at(0, Phase::allreduce) == Approx(2e-3));
  CHECK(modelled < 1e-4);
}

TEST_CASE("perf model: a pipeline stage's send takes the send profile's time within a node", "[perf]") {
  RunConfig cfg = dense_one_layer();
  cfg.model.layers = 2;
  cfg.parallel.pp = 2;
  MachineSpec m = compute_bound();
  const double modelled = predict(cfg, m, 2).per_rank[0].prefill.at(0, Phase::send);
  single_sweep(m).kernels["send"] = KernelProfile{{{1.0, 1e-3}, {1e12, 1e-3}}};
  CHECK(predict(cfg, m, 2).per_rank[0].prefill.at(0, Phase::send) == Approx(modelled));  // one-rank calibration
  m.profiles.ranks = 2;
  CHECK(predict(cfg, m, 2).per_rank[0].prefill.at(0, Phase::send) == Approx(1e-3));
  m.devices_per_node = 1;  // the stages on two nodes
  CHECK(predict(cfg, m, 2).per_rank[0].prefill.at(0, Phase::send) == Approx(sendrecv_seconds(m, true, 4.0 * 64 * 64)));
  CHECK(modelled < 1e-4);
}

TEST_CASE("perf model: separation's staging copies take the stage profile's time, else the gather's", "[perf]") {
  RunConfig cfg = separated_3_4();
  cfg.parallel.micro_batches = 2;
  MachineSpec m = compute_bound();
  single_sweep(m).kernels["gather"] = KernelProfile{{{1.0, 1e-3}, {1e12, 1e-3}}};
  const Prediction before = predict(cfg, m, 7);
  single_sweep(m).kernels["stage"] = KernelProfile{{{1.0, 2e-3}, {1e12, 2e-3}}};
  const Prediction p = predict(cfg, m, 7);
  // Per layer and micro-batch, the expert rank copies its rows in (`recv`); the attention
  // rank copies its rows out and the results in (`dispatch`).
  for (const Prediction* q : {&before, &p}) {
    const double copy = q == &before ? 1e-3 : 2e-3;
    CHECK(q->per_rank[3].prefill.at(0, Phase::recv) == Approx(2.0 * copy));
    CHECK(q->per_rank[3].decode.at(1, Phase::recv) == Approx(2.0 * copy * cfg.workload.decode_steps));
    CHECK(q->per_rank[0].prefill.at(0, Phase::dispatch) == Approx(4.0 * copy));
  }
}

TEST_CASE("perf model: the router takes its profile's time at its width, rows, weight and logits' bytes", "[perf]") {
  RunConfig cfg = dense_one_layer();
  cfg.model.ffn = FfnKind::moe;
  cfg.model.experts = 4;
  cfg.model.top_k = 2;
  MachineSpec m = compute_bound();
  // 64 prompt tokens: rows 64 x 64, weight 64 x 4, logits 64 x 4 in fp32, then the top-k.
  const double bytes = 4.0 * (64 * 64 + 64 * 4 + 64 * 4) + 4.0 * 64 * 4 + 8.0 * 64 * 2;
  CHECK(kernel_size::router(64, 64, 4, 2, 4.0) == Approx(bytes));
  // Profiled at widths 16 and 256; the deck's 64 lies halfway in log-log.
  ParameterProfile& router = single_sweep(m).by_parameter["router"];
  router.by_value = {{16.0, KernelProfile{{{bytes, 4e-3}, {2.0 * bytes, 6e-3}}}},
                     {256.0, KernelProfile{{{bytes, 16e-3}, {2.0 * bytes, 18e-3}}}}};
  CHECK(predict(cfg, m, 1).per_rank[0].prefill.at(0, Phase::router) == Approx(8e-3));
  // Two decode steps of two rows, below the profile's smallest size: its time each.
  CHECK(predict(cfg, m, 1).per_rank[0].decode.at(0, Phase::router) == Approx(2 * 8e-3));
}

TEST_CASE("perf model: RoPE takes its angles' time at the heads that share them", "[perf]") {
  RunConfig cfg = dense_one_layer();
  cfg.model.rope = true;
  cfg.model.kv_heads = 1;
  MachineSpec m = compute_bound();
  const double before = predict(cfg, m, 1).per_rank[0].prefill.at(0, Phase::attn_qkv);
  // 1 us per angle for one head, 4 us for 16: 2 us at 4 heads, the query's.
  ParameterProfile& rope = single_sweep(m).by_parameter["rope"];
  rope.by_value.push_back({1.0, KernelProfile{{{1.0, 1e-6}, {1e12, 1e6}}}});
  rope.by_value.push_back({16.0, KernelProfile{{{1.0, 4e-6}, {1e12, 4e6}}}});
  REQUIRE(cfg.model.heads == 4);
  const double t = static_cast<double>(cfg.workload.batch) * cfg.workload.prompt;
  const double angles = kernel_size::rope(t, cfg.model.effective_head_dim());
  const double after = predict(cfg, m, 1).per_rank[0].prefill.at(0, Phase::attn_qkv);
  // Less the two roofline rotations it replaces (bandwidth-bound, far below a microsecond).
  CHECK(after - before == Approx(angles * (2e-6 + 1e-6)).epsilon(1e-3));
}

TEST_CASE("perf model: attention takes its teams times the team's time at the deck's head width", "[perf]") {
  RunConfig cfg = dense_one_layer();
  cfg.model.heads = 2;  // head_dim 32, between the profile's widths
  MachineSpec m = compute_bound();
  ParameterProfile& prefill = single_sweep(m).by_parameter["attention_prefill"];
  // A team takes 1 us at width 16 and 1 ms at 1024 whatever its size: at 32, 1/6 of the way
  // (log) from 16 to 1024, 10^0.5 us.
  prefill.by_value.push_back({16.0, KernelProfile{{{1.0, 1e-6}, {1e12, 1e-6}}}});
  prefill.by_value.push_back({1024.0, KernelProfile{{{1.0, 1e-3}, {1e12, 1e-3}}}});
  const int hd = cfg.model.effective_head_dim();
  REQUIRE(hd == 32);
  const kernel_size::AttentionTeams teams =
      kernel_size::attention_prefill(cfg.workload.batch, cfg.model.heads, hd, cfg.workload.prompt, 0);
  const Prediction p = predict(cfg, m, 1);
  CHECK(p.per_rank[0].prefill.at(0, Phase::attn_core) == Approx(teams.teams * std::sqrt(10.0) * 1e-6));
}

namespace {

// An MoE layer of 8 experts, top-2, on `ep` expert ranks of a dp = ep layout: 64 sequences of
// 32 tokens, so that every expert gets rows in every pass.
RunConfig moe_on(int ep, RoutingMode routing) {
  RunConfig cfg;
  cfg.model.layers = 1;
  cfg.model.hidden = 64;
  cfg.model.heads = 4;
  cfg.model.experts = 8;
  cfg.model.top_k = 2;
  cfg.model.ffn_hidden = 128;
  cfg.workload.batch = 64;
  cfg.workload.prompt = 32;
  cfg.workload.decode_steps = 1;
  cfg.workload.routing = routing;
  cfg.workload.zipf_exponent = 1.2;
  cfg.parallel.dp = ep;
  cfg.parallel.ep = ep;
  return cfg;
}

}  // namespace

TEST_CASE("expert shares: even under uniform and learned routing, zipf's as its top-k draws pick experts", "[perf]") {
  ModelConfig m;
  m.experts = 8;
  m.top_k = 2;
  WorkloadConfig w;
  for (const RoutingMode even : {RoutingMode::uniform, RoutingMode::learned}) {
    w.routing = even;
    for (const double share : expert_shares(m, w)) CHECK(share == 1.0 / 8);
  }
  w.routing = RoutingMode::zipf;
  w.zipf_exponent = 1.2;
  const std::vector<double> shares = expert_shares(m, w);
  CHECK(shares == expert_shares(m, w));
  CHECK(std::accumulate(shares.begin(), shares.end(), 0.0) == Approx(1.0));
  for (std::size_t e = 1; e < shares.size(); ++e) CHECK(shares[e] < shares[e - 1]);
  // One draw: the Zipf probabilities themselves. Two draws of three experts without
  // replacement: e first, or second after i: p_e + sum over i != e of p_i p_e / (1 - p_i).
  auto zipf = [&](int experts) {
    std::vector<double> p(static_cast<std::size_t>(experts));
    for (int e = 0; e < experts; ++e) p[e] = std::pow(e + 1.0, -w.zipf_exponent);
    const double total = std::accumulate(p.begin(), p.end(), 0.0);
    for (double& x : p) x /= total;
    return p;
  };
  m.top_k = 1;
  const std::vector<double> one = expert_shares(m, w), p8 = zipf(8);
  for (std::size_t e = 0; e < one.size(); ++e) CHECK(one[e] == Approx(p8[e]).margin(0.005));
  m.experts = 3;
  m.top_k = 2;
  const std::vector<double> two = expert_shares(m, w), p3 = zipf(3);
  for (int e = 0; e < 3; ++e) {
    double pi = p3[e];
    for (int i = 0; i < 3; ++i)
      if (i != e) pi += p3[i] * p3[e] / (1.0 - p3[i]);
    CHECK(two[e] == Approx(pi / 2.0).margin(0.005));
  }
}

TEST_CASE("perf model: under zipf routing the expert rank with the largest share paces each layer, the others wait",
          "[perf]") {
  const MachineSpec m = compute_bound();
  const RunConfig even = moe_on(2, RoutingMode::uniform), skewed = moe_on(2, RoutingMode::zipf);
  const std::vector<double> shares = expert_shares(skewed.model, skewed.workload);
  // Experts 0-3 on the first expert rank, 4-7 on the second.
  const double busiest = std::accumulate(shares.begin(), shares.begin() + 4, 0.0);
  REQUIRE(busiest > 0.6);
  const Prediction e = predict(even, m, 2), z = predict(skewed, m, 2);
  // Compute-bound GEMMs with rows on every expert: the experts' time is linear in the rows.
  CHECK(z.per_rank[0].prefill.at(0, Phase::expert) ==
        Approx(2.0 * busiest * e.per_rank[0].prefill.at(0, Phase::expert)).epsilon(0.01));
  CHECK(z.summary.ttft_s > e.summary.ttft_s);
  // The second rank computes the rest of the rows and waits for the first at the all-to-all.
  const RankMetrics &first = z.per_rank[0], &second = z.per_rank[1];
  CHECK(second.prefill.at(0, Phase::expert) ==
        Approx(2.0 * (1.0 - busiest) * e.per_rank[0].prefill.at(0, Phase::expert)).epsilon(0.01));
  CHECK(second.prefill.at(0, Phase::dispatch) - first.prefill.at(0, Phase::dispatch) ==
        Approx(first.prefill.at(0, Phase::expert) - second.prefill.at(0, Phase::expert)));
  CHECK(phase_sum(second.prefill) == Approx(phase_sum(first.prefill)));
  CHECK(phase_sum(second.decode) == Approx(phase_sum(first.decode)));
  CHECK(second.decode.at(0, Phase::expert) < first.decode.at(0, Phase::expert));
  CHECK(e.per_rank[1].prefill.at(0, Phase::dispatch) == Approx(e.per_rank[0].prefill.at(0, Phase::dispatch)));
  // Every rank's buffers are sized for the busiest's rows.
  const auto activations = [](const Prediction& p) { return p.per_rank[1].memory[static_cast<int>(MemoryKind::activations)]; };
  CHECK(activations(z) > activations(e));
  // On one rank the same rows reach the same experts' GEMMs, however they are spread.
  const Prediction e1 = predict(moe_on(1, RoutingMode::uniform), m, 1), z1 = predict(moe_on(1, RoutingMode::zipf), m, 1);
  CHECK(z1.per_rank[0].prefill.at(0, Phase::expert) == Approx(e1.per_rank[0].prefill.at(0, Phase::expert)).epsilon(0.01));
  // The expected prefill tokens per expert and their imbalance, as a measured run counts them.
  REQUIRE(z.expert_tokens.size() == 8);
  const double routed = 64.0 * 32 * 2;
  for (std::size_t x = 0; x < 8; ++x) CHECK(static_cast<double>(z.expert_tokens[x]) == Approx(routed * shares[x]).margin(0.5));
  CHECK(z.summary.expert_imbalance == Approx(8.0 * shares[0] - 1.0));
  CHECK(e.summary.expert_imbalance == Approx(0.0).margin(1e-12));
  bool said = false;
  for (const std::string& a : z.assumptions) said = said || a.rfind("zipf:1.2 routing", 0) == 0;
  CHECK(said);
}

TEST_CASE("perf model: one activation runs over all the experts' rows, as Transformer::expert_ffn calls it", "[perf]") {
  RunConfig cfg;  // one rank, 4 experts of which every one gets rows
  cfg.model.layers = 1;
  cfg.model.hidden = 64;
  cfg.model.heads = 8;
  cfg.workload.batch = 12;
  MachineSpec m = compute_bound();
  const Prediction roofline = predict(cfg, m, 1);
  const double fixed = 1.0;  // seconds of one activation call, whatever its size
  single_sweep(m).kernels["activate"] = KernelProfile{{{1.0, fixed}, {1e12, fixed}}};
  const Prediction p = predict(cfg, m, 1);
  const RankMetrics &r0 = roofline.per_rank[0], &r1 = p.per_rank[0];
  CHECK(r1.prefill.at(0, Phase::expert) - r0.prefill.at(0, Phase::expert) == Approx(fixed).epsilon(1e-6));
  CHECK(r1.decode.at(0, Phase::expert) - r0.decode.at(0, Phase::expert) ==
        Approx(cfg.workload.decode_steps * fixed).epsilon(1e-6));
}

TEST_CASE("perf model: an fp16 prediction says its activations are 16-bit, unlike moeproxy's fp16 runs", "[perf]") {
  RunConfig cfg = dense_one_layer();
  const MachineSpec m = compute_bound();
  const std::string fp16 = "fp16: activations and transfers at 2 bytes";
  CHECK_FALSE(assumes(predict(cfg, m, 1), fp16));
  cfg.model.precision = Precision::fp16;
  CHECK(assumes(predict(cfg, m, 1), fp16));
}

TEST_CASE("perf model: synthetic routing draws experts without the router's GEMM", "[perf]") {
  const MachineSpec m = compute_bound();
  const Prediction learned = predict(moe_on(1, RoutingMode::learned), m, 1);
  const double gemm = 2.0 * 64 * 32 * 64 * 8 / (m.peak_flops_fp32 * m.gemm_efficiency);
  CHECK(learned.per_rank[0].prefill.at(0, Phase::router) >= gemm);
  for (const RoutingMode synthetic : {RoutingMode::uniform, RoutingMode::zipf})
    CHECK(predict(moe_on(1, synthetic), m, 1).per_rank[0].prefill.at(0, Phase::router) < 1e-3 * gemm);
}
