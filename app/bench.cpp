// moeproxy bench: issue 7's cases, timed on the real kernels (core/kernels.hpp) and the real
// Transformer (core/model.hpp) on one rank. Every case runs warm-up iterations, then timed
// iterations fenced on both sides; it prints the minimum and median seconds and, from the
// median, tokens/s, TFLOP/s and the fraction of the dense GEMM ceiling measured first in the
// same run, so that figures compare within one run on one machine; the best (minimum-time)
// TFLOP/s and fraction follow, steadier on a machine shared with other work.
//
// The layer cases time the phases of a one-layer Transformer's prefill (PhaseTable, fenced
// per phase): the MoE layer is router + permute + expert + combine, with one token per
// sequence so that the attention around it costs next to nothing; the attention block is
// QKV + causal attention + output projection, with a token-sized dense FFN after it.
#include "bench.hpp"

#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "moeproxy/core/gemm.hpp"
#include "moeproxy/core/kernels.hpp"
#include "moeproxy/core/model.hpp"

#ifdef KOKKOS_ENABLE_CUDA
#include <cuda_runtime.h>
#endif

namespace moeproxy::bench {

namespace {

constexpr int exit_ok = 0, exit_input = 2;

enum class Kind { gemm, moe_layer, attention, prefill, decode };

struct Case {
  std::string name, shape;
  Kind kind = Kind::gemm;
  ModelConfig model;
  WorkloadConfig workload;
  int n = 0;  // gemm: m = n = k
};

const char* const case_names[] = {"gemm",         "moe-d8192-top1", "moe-d4096-top2", "attn-32x128",
                                  "attn-16x512", "model-prefill",  "model-decode"};

int shrink(int full, int scale, int least) { return std::max(least, full / scale); }

ModelConfig moe_layer_model(int hidden, int ffn, int top_k, Precision precision) {
  ModelConfig m;
  m.layers = 1;
  m.hidden = hidden;
  m.heads = std::max(1, hidden / 128);
  m.ffn = FfnKind::moe;
  m.ffn_hidden = ffn;
  m.experts = 16;
  m.top_k = top_k;
  m.activation = Activation::gelu;
  m.precision = precision;
  return m;
}

ModelConfig attention_model(int heads, int head_dim, Precision precision) {
  ModelConfig m;
  m.layers = 1;
  m.heads = heads;
  m.head_dim = head_dim;
  m.hidden = heads * head_dim;
  m.ffn = FfnKind::dense;
  m.ffn_hidden = 64;
  m.activation = Activation::gelu;
  m.precision = precision;
  return m;
}

// The whole model of issue 7: Mixtral-like, 4 layers.
ModelConfig whole_model(int scale, Precision precision) {
  ModelConfig m;
  m.layers = 4;
  m.heads = shrink(32, scale, 1);
  m.head_dim = 128;
  m.hidden = m.heads * m.head_dim;
  m.ffn = FfnKind::moe;
  m.ffn_hidden = shrink(16384, scale, 64);
  m.experts = 16;
  m.top_k = 2;
  m.activation = Activation::swiglu;
  m.precision = precision;
  return m;
}

WorkloadConfig workload(int batch, int prompt, int decode_steps, RoutingMode routing) {
  WorkloadConfig w;
  w.batch = batch;
  w.prompt = prompt;
  w.decode_steps = decode_steps;
  w.routing = routing;
  return w;
}

std::string describe(const ModelConfig& m) {
  std::ostringstream s;
  s << "d=" << m.hidden << " " << m.heads << "x" << m.effective_head_dim() << " heads";
  if (m.is_moe()) s << ", " << m.experts << " experts top-" << m.top_k << " x " << m.ffn_hidden << " " << to_string(m.activation);
  return s.str();
}

// Issue 7's cases at 1/scale of their size (scale 1: the H100 table's shapes).
std::vector<Case> make_cases(int s, Precision precision) {
  std::vector<Case> cases;
  Case gemm;
  gemm.name = "gemm";
  gemm.kind = Kind::gemm;
  gemm.n = shrink(8192, s, 64);
  gemm.model.precision = precision;
  gemm.shape = std::to_string(gemm.n) + "^3";
  cases.push_back(gemm);

  // Synthetic uniform routing: every expert gets its share, as a load-balanced layer would.
  const auto moe = [&](const char* name, int d, int f, int k, int tokens) {
    Case c;
    c.name = name;
    c.kind = Kind::moe_layer;
    c.model = moe_layer_model(shrink(d, s, 64), shrink(f, s, 64), k, precision);
    c.workload = workload(shrink(tokens, s, 16), 1, 0, RoutingMode::uniform);
    c.shape = "d=" + std::to_string(c.model.hidden) + " f=" + std::to_string(c.model.ffn_hidden) + " 16 experts top-" +
              std::to_string(k) + " gelu, " + std::to_string(c.workload.batch) + " tokens";
    cases.push_back(c);
  };
  moe("moe-d8192-top1", 8192, 32768, 1, 16384);
  moe("moe-d4096-top2", 4096, 16384, 2, 32768);

  const auto attn = [&](const char* name, int heads, int head_dim, int batch, int seq) {
    Case c;
    c.name = name;
    c.kind = Kind::attention;
    c.model = attention_model(shrink(heads, s, 1), head_dim, precision);
    c.workload = workload(batch, shrink(seq, s, 16), 0, RoutingMode::learned);
    c.shape = std::to_string(c.model.heads) + "x" + std::to_string(head_dim) + " heads, " + std::to_string(batch) +
              "x" + std::to_string(c.workload.prompt) + " tokens, causal";
    cases.push_back(c);
  };
  attn("attn-32x128", 32, 128, 8, 2048);
  attn("attn-16x512", 16, 512, 4, 2048);

  Case prefill;
  prefill.name = "model-prefill";
  prefill.kind = Kind::prefill;
  prefill.model = whole_model(s, precision);
  prefill.workload = workload(1, shrink(4096, s, 16), 0, RoutingMode::learned);
  prefill.shape = "4 layers " + describe(prefill.model) + ", " + std::to_string(prefill.workload.prompt) + " tokens";
  cases.push_back(prefill);

  Case decode;
  decode.name = "model-decode";
  decode.kind = Kind::decode;
  decode.model = whole_model(s, precision);
  decode.workload = workload(shrink(32, s, 1), shrink(2048, s, 16), 1, RoutingMode::learned);
  decode.shape = "same model, batch " + std::to_string(decode.workload.batch) + ", context " +
                 std::to_string(decode.workload.prompt);
  cases.push_back(decode);
  return cases;
}

// FLOPs of one timed iteration, counted as the peers count them.
double case_flops(const Case& c) {
  const ModelConfig& m = c.model;
  const WorkloadConfig& w = c.workload;
  switch (c.kind) {
    case Kind::gemm: return 2.0 * c.n * c.n * static_cast<double>(c.n);
    case Kind::moe_layer: {  // the experts' GEMMs: router, permutation and combine excluded
      const double mats = m.activation == Activation::swiglu ? 3.0 : 2.0;
      return static_cast<double>(w.batch) * m.top_k * 2.0 * mats * m.hidden * m.ffn_hidden;
    }
    case Kind::attention: {  // projections and causal attention: forward_flops without an FFN
      ModelConfig no_ffn = m;
      no_ffn.ffn_hidden = 0;
      return forward_flops(no_ffn, w.batch, w.prompt, 0);
    }
    case Kind::prefill: return forward_flops(m, w.batch, w.prompt, 0);
    case Kind::decode: return forward_flops(m, w.batch, 1, w.prompt);
  }
  return 0.0;
}

// Tokens one timed iteration processes.
double case_tokens(const Case& c) {
  switch (c.kind) {
    case Kind::gemm: return 0.0;
    case Kind::decode: return c.workload.batch;
    default: return static_cast<double>(c.workload.batch) * c.workload.prompt;
  }
}

std::uint64_t case_bytes(const Case& c) {
  if (c.kind == Kind::gemm) return 3ull * c.n * c.n * sizeof(float);
  return estimate_memory(c.model, c.workload, c.workload.batch).total();
}

// Memory the case may use: the GPU's free memory, or the host's MemAvailable.
std::optional<std::uint64_t> available_bytes() {
#ifdef KOKKOS_ENABLE_CUDA
  std::size_t free_bytes = 0, total = 0;
  if (cudaMemGetInfo(&free_bytes, &total) == cudaSuccess) return free_bytes;
  return std::nullopt;
#else
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::uint64_t kib = 0;
  while (in >> key >> kib) {
    if (key == "MemAvailable:") return kib * 1024;
    in.ignore(64, '\n');
  }
  return std::nullopt;
#endif
}

std::string device_name() {
  std::ostringstream s;
#ifdef KOKKOS_ENABLE_CUDA
  int device = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&device) == cudaSuccess && cudaGetDeviceProperties(&prop, device) == cudaSuccess)
    s << prop.name << ", ";
#endif
  s << "Kokkos " << ExecSpace::name() << " (concurrency " << ExecSpace().concurrency() << ")";
  return s.str();
}

struct Timing {
  double min = 0.0, median = 0.0;
};

Timing summarize(std::vector<double> seconds) {
  std::sort(seconds.begin(), seconds.end());
  const std::size_t n = seconds.size();
  return Timing{seconds.front(), n % 2 ? seconds[n / 2] : 0.5 * (seconds[n / 2 - 1] + seconds[n / 2])};
}

double phase_sum(const PhaseTable& t, std::initializer_list<Phase> phases) {
  double s = 0.0;
  for (int l = 0; l < t.layers(); ++l)
    for (Phase p : phases) s += t.at(l, p);
  return s;
}

// Seconds of each timed iteration of `c`, after `warmup` untimed ones.
std::vector<double> measure(const Case& c, int warmup, int iterations) {
  ExecSpace space;
  std::vector<double> seconds;
  const auto repeat = [&](auto&& once) {
    for (int i = 0; i < warmup + iterations; ++i) {
      const double s = once();
      if (i >= warmup) seconds.push_back(s);
    }
  };
  const auto fenced = [&](auto&& work) {
    named_fence(space, "moeproxy::bench::before");
    Kokkos::Timer timer;
    work();
    named_fence(space, "moeproxy::bench::after");
    return timer.seconds();
  };
  if (c.kind == Kind::gemm) {
    Matrix a("moeproxy::bench::a", c.n, c.n), b("moeproxy::bench::b", c.n, c.n), out("moeproxy::bench::c", c.n, c.n);
    Kokkos::deep_copy(a, 0.01f);
    Kokkos::deep_copy(b, 0.02f);
    // The ceiling uses the weight storage the other cases use: binary16 for fp16.
    StoredMatrix weight = ConstMatrix(b);
    if (c.model.precision == Precision::fp16) {
      HalfMatrix half("moeproxy::bench::b16", c.n, c.n);
      round_into(space, b, half);
      weight = ConstHalfMatrix(half);
    }
    repeat([&] { return fenced([&] { gemm(space, a, weight, out); }); });
    return seconds;
  }
  const SequenceSlice slice{0, c.workload.batch, c.workload.batch};
  Transformer model(space, c.model, c.workload, slice);
  named_fence(space, "moeproxy::bench::weights_ready");
  switch (c.kind) {
    case Kind::moe_layer:
      repeat([&] {
        PhaseTable t(c.model.layers);
        model.prefill(t);
        return phase_sum(t, {Phase::router, Phase::permute, Phase::expert, Phase::combine});
      });
      break;
    case Kind::attention:
      repeat([&] {
        PhaseTable t(c.model.layers);
        model.prefill(t);
        return phase_sum(t, {Phase::attn_qkv, Phase::attn_core, Phase::attn_out});
      });
      break;
    case Kind::prefill:
      repeat([&] {
        PhaseTable t(c.model.layers);
        return fenced([&] { model.prefill(t); });
      });
      break;
    case Kind::decode: {
      PhaseTable t(c.model.layers);
      model.prefill(t);  // fills the KV cache: every step attends to the whole context
      Matrix x("moeproxy::bench::decode_in", c.workload.batch, c.model.hidden);
      Kokkos::deep_copy(x, 0.01f);
      // Step 0 again and again: the same context length, the same cache position rewritten.
      repeat([&] { return fenced([&] { model.decode_step(x, 0, t); }); });
      break;
    }
    case Kind::gemm: break;
  }
  return seconds;
}

std::string gib(std::uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GiB", bytes / 1073741824.0);
  return buf;
}

}  // namespace

CLI::App* add_subcommand(CLI::App& app, Options& opt) {
  std::string names;
  for (const char* n : case_names) names += std::string(names.empty() ? "" : ", ") + n;
  auto* cmd = app.add_subcommand(
      "bench",
      "Time issue 7's speed cases (MoE layers, attention blocks, whole-model prefill and decode) on one rank,\n"
      "each as tokens/s, TFLOP/s and the fraction of the dense GEMM ceiling measured in the same run\n"
      "(docs/benchmarks.md). Full size is the H100 table's; --cpu or --scale shrink the shapes.");
  cmd->add_option("--case", opt.cases, "Run only these cases (repeatable; default all): " + names)
      ->check(CLI::IsMember(std::vector<std::string>(std::begin(case_names), std::end(case_names))));
  cmd->add_flag("--cpu", opt.cpu, "Laptop-CPU preset: shapes divided by 16, 1 warm-up and 3 timed iterations");
  cmd->add_option("--scale", opt.scale, "Divide dimensions, tokens and heads by this (default 1, or 16 with --cpu)")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--warmup", opt.warmup, "Untimed iterations per case (default 2, 1 with --cpu)")
      ->check(CLI::Range(0, 1000));
  cmd->add_option("--iterations", opt.iterations, "Timed iterations per case (default 5, 3 with --cpu)")
      ->check(CLI::Range(1, 1000));
  cmd->add_option("--precision", opt.precision, "Model precision, as model.precision")
      ->check(CLI::IsMember({"fp32", "fp16"}))
      ->capture_default_str();
  return cmd;
}

int run(const Options& opt, int argc, char** argv) {
  int ranks = 1, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (ranks > 1) {
    if (rank == 0) std::cerr << "moeproxy: input error: moeproxy bench runs on one rank; launch it without mpiexec -n " << ranks << "\n";
    return exit_input;
  }
  const Precision precision = opt.precision == "fp16" ? Precision::fp16 : Precision::fp32;
  const int scale = opt.scale > 0 ? opt.scale : (opt.cpu ? 16 : 1);
  const int warmup = opt.warmup >= 0 ? opt.warmup : (opt.cpu ? 1 : 2);
  const int iterations = opt.iterations > 0 ? opt.iterations : (opt.cpu ? 3 : 5);

  Kokkos::ScopeGuard kokkos(argc, argv);
  std::vector<Case> cases = make_cases(scale, precision);
  // The ceiling runs first whatever was asked for: the other cases' fractions need it.
  if (!opt.cases.empty())
    cases.erase(std::remove_if(cases.begin() + 1, cases.end(),
                               [&](const Case& c) {
                                 return std::find(opt.cases.begin(), opt.cases.end(), c.name) == opt.cases.end();
                               }),
                cases.end());

  std::printf("moeproxy bench: %s, %s, scale 1/%d, %d warm-up + %d timed iterations per case\n",
              device_name().c_str(), to_string(precision), scale, warmup, iterations);
  std::printf("tokens/s, TFLOP/s, of gemm: median; best: minimum time; ceiling = the gemm case (moeproxy::gemm, "
              "weights in the run's precision) of this run\n");
  std::printf("%-15s %-70s %11s %11s %12s %10s %8s %10s %8s\n", "case", "shape", "min s", "median s", "tokens/s",
              "TFLOP/s", "of gemm", "best TF/s", "best of");
  double ceiling = 0.0, best_ceiling = 0.0;
  for (const Case& c : cases) {
    const std::uint64_t need = case_bytes(c);
    const std::optional<std::uint64_t> room = available_bytes();
    if (room && need > *room) {
      std::printf("%-15s %-70s skipped: needs about %s, %s available\n", c.name.c_str(), c.shape.c_str(),
                  gib(need).c_str(), gib(*room).c_str());
      std::fflush(stdout);
      continue;
    }
    const Timing t = summarize(measure(c, warmup, iterations));
    const double flops = case_flops(c) / t.median, best = case_flops(c) / t.min, tokens = case_tokens(c);
    if (c.kind == Kind::gemm) ceiling = flops, best_ceiling = best;
    char tokens_text[32] = "-";
    if (tokens > 0.0) std::snprintf(tokens_text, sizeof tokens_text, "%.4g", tokens / t.median);
    std::printf("%-15s %-70s %11.4e %11.4e %12s %10.4g %8.3f %10.4g %8.3f\n", c.name.c_str(), c.shape.c_str(), t.min,
                t.median, tokens_text, flops / 1e12, flops / ceiling, best / 1e12, best / best_ceiling);
    if (c.kind == Kind::decode)
      std::printf("%-15s %-70s %.3f ms per step\n", "", "", t.median * 1e3);
    std::fflush(stdout);
  }
  return exit_ok;
}

}  // namespace moeproxy::bench
