// The kernel profiles of `moeproxy calibrate` (docs/predict.md, "Kernel profiles"): every
// kernel the forward pass runs, timed at sizes from one row to thousands, with all ranks
// running at once. Sizes are counted by kernel_size, as the model counts them.
//
// A forward pass meets each kernel with its caches full of other kernels' data: between two
// calls of one kernel pass the layer's other activations, its weights and the KV cache. Timed
// in a loop over its own buffers, a kernel runs from cache: RMSNorm of [1024, 256] took 175 us
// so and 244 us in a forward pass; with the caches emptied before each call and only its input
// read back in, 214-237 us (Xeon VM, 2026-12-03). So every call here is timed alone, after a
// sweep of some bytes through the caches and with the inputs that the kernel before it would
// just have written read back in (ColdCaller), at several sweeps (kernel_profile.hpp,
// MachineProfiles).

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <sstream>
#include <vector>

#include "calibrate.hpp"
#include "moeproxy/core/kernels.hpp"
#include "moeproxy/core/weights.hpp"

namespace moeproxy::app {

namespace {

constexpr double es = sizeof(float);
constexpr int width = 512;        // columns of the elementwise kernels' rows
constexpr int heads = 8, hd = 64;  // heads x head_dim = width, for the cache
const std::vector<int> rope_heads = {1, 8, 32};
const std::vector<int> attention_head_dims = {16, 64, 128};
// Positions of a decode's cache beyond the context it attends over: a pass allocates the
// cache for the prompt and every decode step, so each (sequence, head) reads a prefix of its
// rows and the next one's rows start further on. From cold caches that break in the stream
// costs each team 0.3-1 us (AMD VM, 2026-12-07, a [8, 8, ctx, 32] cache after a 16 MiB
// sweep: ctx 32 0.56-0.66 -> 0.90-1.3 us a team, ctx 145 2.3-2.6 -> 2.7-3.7 us, from 4 rows of
// room on); with the rows packed, the medium deck's decode attention was predicted 14-51% low.
constexpr int decode_room = 16;
constexpr int experts = 8, top_k = 2;
const std::vector<int> router_widths = {64, 512};
const std::vector<int> row_counts = {1, 8, 64, 512, 4096};
// The sweeps (CalibrationContext::sweeps, calibrate --sweeps) are read, not written, as a
// forward pass reads its weights and KV cache between two calls of a kernel; the difference
// is large: on the AMD VM (2026-12-06) a [4, 256] x [256, 256] GEMM ran at 68-98 GFLOP/s after
// 8 MiB were written through the caches and at 17 after 8 MiB were read (28 after a write of
// 16 MiB, 15-20 after 64 MiB either way).

// GEMMs of 8 rows through copies of an [n, n] weight, together about `bytes`, each read in
// turn as a decode step reads its weights: the weight sweeps, and sync_wait's work. Copies of
// 1 MiB ([512, 512] fp32), smaller below a sweep of 1 MiB.
class WeightReader {
 public:
  WeightReader(double bytes, int least_copies)
      : n_(std::max(16, std::min(512, static_cast<int>(std::sqrt(bytes / es))))),
        weights_("moeproxy::calibrate::weights", std::max(least_copies, static_cast<int>(std::lround(bytes / (es * n_ * n_)))),
                 n_, n_),
        rows_(filled("moeproxy::calibrate::weight_rows", 8, n_, 0.5f)),
        out_("moeproxy::calibrate::weight_out", 8, n_) {
    Kokkos::deep_copy(weights_, 0.25f);
  }
  int copies() const { return static_cast<int>(weights_.extent(0)); }
  // The next copy through one GEMM.
  void next(const ExecSpace& space) {
    gemm(space, rows_, Kokkos::subview(weights_, next_, Kokkos::ALL, Kokkos::ALL), out_);
    next_ = (next_ + 1) % copies();
  }
  void all(const ExecSpace& space) {
    for (int i = 0; i < copies(); ++i) next(space);
  }

 private:
  int n_;
  Stack weights_;
  Matrix rows_, out_;
  int next_ = 0;
};

// A copy into `to` from `from` before each call, for kernels that work in place: their
// input is then what the kernel before wrote, not what the previous call left (SwiGLU with
// a gate of 0.25 applied to its own output shrinks it toward zero, through the denormal
// numbers that a CPU computes slowly).
struct Refill {
  Matrix to;
  Matrix from;
};

// A collective's host buffer, written before each call as the kernel before would have.
struct HostRows {
  std::vector<float>* rows;
};
// All ranks of `comm` start the timed call together (waiting for the slowest is sync_wait's).
struct Together {
  MPI_Comm comm;
};

// Reads every element of `v` (contiguous) into the caches.
template <class View>
void read_back(const ExecSpace& space, const View& v, const char* label = "moeproxy::calibrate::read_back") {
  const auto* data = v.data();
  double sum = 0.0;
  Kokkos::parallel_reduce(
      label, Kokkos::RangePolicy<ExecSpace>(space, 0, v.span()),
      KOKKOS_LAMBDA(const std::size_t i, double& s) { s += static_cast<double>(data[i]); }, sum);
}

// Sweeps `sweep` bytes through the caches before each timed call, read (Sweep::read) or as
// weights through GEMMs (Sweep::weights), then reads the call's inputs back in.
class ColdCaller {
 public:
  ColdCaller(const CalibrationContext& c, double sweep, Sweep kind)
      : c_(c),
        read_("moeproxy::calibrate::sweep", kind == Sweep::read ? static_cast<std::size_t>(sweep / sizeof(float)) : 0) {
    if (kind == Sweep::weights) weights_.emplace(sweep, 1);
  }

  // Median seconds of one call of `work` after the sweep, over calls filling the budget (at
  // least three); every rank calls the same number of times (rank 0's choice). The median, as
  // a stall of the VM's core of milliseconds in one call set the mean of a small kernel's
  // hundreds of calls (AMD VM, 2026-12-06: combine of 4 MB 1476 us after an 8 MiB sweep,
  // 616-619 us after 1 and 64 MiB).
  template <class Work, class... Inputs>
  double seconds(Work&& work, const Inputs&... inputs) {
    (prepare(inputs), ...);
    work();  // set-up: first touch of the outputs, allocations inside the kernel
    Kokkos::Timer probe;
    call(work, inputs...);
    int reps = std::clamp(static_cast<int>(c_.budget / std::max(1e-9, probe.seconds())), 3, 100000);
    MPI_Bcast(&reps, 1, MPI_INT, 0, c_.world);
    MPI_Barrier(c_.world);
    std::vector<double> times(static_cast<std::size_t>(reps));
    for (double& t : times) t = call(work, inputs...);
    std::nth_element(times.begin(), times.begin() + reps / 2, times.end());
    return times[static_cast<std::size_t>(reps / 2)];
  }

 private:
  template <class Work, class... Inputs>
  double call(Work& work, const Inputs&... inputs) {
    if (weights_) weights_->all(c_.space);
    else read_back(c_.space, read_, "moeproxy::calibrate::sweep");
    (prepare(inputs), ...);
    named_fence(c_.space, "moeproxy::calibrate::cold");
    Kokkos::Timer timer;
    work();
    named_fence(c_.space, "moeproxy::calibrate::cold");
    return timer.seconds();
  }

  void prepare(const Refill& r) { Kokkos::deep_copy(c_.space, r.to, r.from); }
  void prepare(const HostRows& h) {
    for (float& x : *h.rows) x = 0.5f * x + 1.0f;
  }
  void prepare(const Together& t) { MPI_Barrier(t.comm); }
  template <class View>
  void prepare(const View& v) {
    read_back(c_.space, v);
  }

  const CalibrationContext& c_;
  Kokkos::View<float*, MemSpace> read_;
  std::optional<WeightReader> weights_;
};

// `label`, then a profile's points as "size: microseconds".
std::string points_line(const std::string& label, const KernelProfile& profile) {
  std::ostringstream line;
  line.precision(3);
  line << label;
  for (const auto& [size, seconds] : profile.points) line << " " << size << ": " << seconds * 1e6;
  return line.str();
}

IndexMatrix spread_experts(int tokens) {
  IndexMatrix idx("moeproxy::calibrate::idx", tokens, top_k);
  auto h = Kokkos::create_mirror_view(idx);
  for (int t = 0; t < tokens; ++t)
    for (int j = 0; j < top_k; ++j) h(t, j) = (t * top_k + j * 3) % experts;
  Kokkos::deep_copy(idx, h);
  return idx;
}

// "sync_wait": after `work` of compute, the time ranks spend in a collective waiting for
// the slowest (their compute times differ run to run: shared caches and memory, the OS):
// an 8-byte all-reduce after k decode-sized GEMMs on cold weights, less the
// same all-reduce without work before it. The size is the microseconds of work.
KernelProfile measure_sync_wait(const CalibrationContext& c) {
  KernelProfile profile;
  if (c.size < 2) return profile;
  WeightReader weights(64.0 * 1024 * 1024, 2);
  auto interval = [&](int calls, double& work, double& wait) {
    Kokkos::Timer timer;
    for (int i = 0; i < calls; ++i) weights.next(c.space);
    named_fence(c.space, "moeproxy::calibrate::sync");
    work += timer.seconds();
    timer.reset();
    float token = 1.0f;
    MPI_Allreduce(MPI_IN_PLACE, &token, 1, MPI_FLOAT, MPI_SUM, c.world);
    wait += timer.seconds();
  };
  // The wait is the median over the reps of the ranks' mean: the mean of the few reps that
  // fill the budget at 512 GEMMs is set by a rare stall of one rank's core (two calibrations
  // of one build on the AMD VM, 2026-12-06: 1.1 ms and 10 ms waited after 97 ms of work).
  auto measure = [&](int calls, double& work, double& wait) {
    double w0 = 0.0, s0 = 0.0;
    interval(calls, w0, s0);
    int reps = std::max(5, static_cast<int>(c.budget / std::max(1e-7, w0 + s0)));
    MPI_Bcast(&reps, 1, MPI_INT, 0, c.world);
    MPI_Barrier(c.world);
    std::vector<double> waits(static_cast<std::size_t>(reps), 0.0);
    for (double& w : waits) interval(calls, work, w);
    work = mean_over_ranks(c, work / reps);
    MPI_Allreduce(MPI_IN_PLACE, waits.data(), reps, MPI_DOUBLE, MPI_SUM, c.world);
    std::nth_element(waits.begin(), waits.begin() + reps / 2, waits.end());
    wait = waits[static_cast<std::size_t>(reps / 2)] / c.size;
  };
  double none = 0.0, idle = 0.0;
  measure(0, none, idle);
  for (const int calls : {1, 8, 64, 512}) {
    double work = 0.0, wait = 0.0;
    measure(calls, work, wait);
    // Log-log interpolation needs a positive time: a wait below the timer's reach is 1 ns.
    profile.points.emplace_back(work * 1e6, std::max(1e-9, wait - idle));
  }
  return profile;
}

class Profiler {
 public:
  Profiler(const CalibrationContext& c, double sweep, Sweep kind, KernelProfiles& out)
      : c_(c), out_(out), cold_(c, sweep, kind) {}

  // One point of kernel `name`: `work` timed after the sweep, its `inputs` read back in, at
  // `size` (its kernel_size).
  template <class Work, class... Inputs>
  void point(const char* name, double size, Work&& work, const Inputs&... inputs) {
    out_.kernels[name].points.emplace_back(size, timed(work, inputs...));
  }
  // One point of kernel `name` profiled by a parameter (ParameterProfile): `seconds` at the
  // parameter's `value` and `size`; a kernel's values come in order, each with its sizes.
  void point_by(const char* name, double value, double size, double seconds) {
    auto& by = out_.by_parameter[name].by_value;
    if (by.empty() || by.back().first != value) by.emplace_back(value, KernelProfile{});
    by.back().second.points.emplace_back(size, seconds);
  }
  // Seconds of one call of `work` after the sweep, its `inputs` read back in, mean over ranks.
  template <class Work, class... Inputs>
  double timed(Work&& work, const Inputs&... inputs) {
    return mean_over_ranks(c_, cold_.seconds(work, inputs...));
  }

  void elementwise() {
    NormWeights gain;
    gain.gain = Vector("moeproxy::calibrate::gain", width);
    Kokkos::deep_copy(gain.gain, 1.0f);
    for (const int r : row_counts) {
      const Matrix x = filled("moeproxy::calibrate::x", r, width, 0.5f), y = filled("moeproxy::calibrate::y", r, width, 0.25f);
      const Matrix z("moeproxy::calibrate::z", r, width);
      // The prefill's input rows, generated in place: r sequences of one token.
      point("input", kernel_size::input(r, width, es), [&] { fill_inputs(c_.space, ModelConfig{}, 0, 1, z); });
      point("norm", kernel_size::norm(r, width, es), [&] { normalize(c_.space, NormKind::rmsnorm, 1e-5, x, gain, z); }, x);
      const Cache k("moeproxy::calibrate::k", 1, heads, r, hd), v("moeproxy::calibrate::v", 1, heads, r, hd);
      point("store_kv", kernel_size::store_kv(r, width, es), [&] { store_kv<float>(c_.space, x, y, k, v, r, 0); }, x, y);
      // The residual stream x was written a whole block earlier, the partial sum just now.
      point("add", kernel_size::add(r, width, es), [&] { add_into(c_.space, z, x); }, z);
      const Matrix gate = filled("moeproxy::calibrate::gate", r, width, 0.5f);
      point("activate", kernel_size::activate(r, width, 3.0, es), [&] { activate(c_.space, Activation::swiglu, z, y); },
            Refill{z, gate}, y);
    }
  }

  // "rope" on rows of 1, 8 and 32 heads of 64, each angle rotating a pair in every head.
  void rope() {
    for (const int head_count : rope_heads)
      for (const int r : row_counts) {
        const Matrix x = filled("moeproxy::calibrate::rope", r, head_count * hd, 0.5f);
        const RopeTable table = rope_table(c_.space, r, hd, 10000.0);
        point_by("rope", head_count, kernel_size::rope(r, hd),
                 timed([&] { apply_rope(c_.space, x, table, head_count, r, 0); }, x, table));
      }
  }

  // "allreduce" and "alltoallv" on the calibration's ranks, as the forward pass calls them:
  // the buffer just written, the rest of the caches swept, every rank entering together.
  // Looped, an 8 KB all-reduce on 2 ranks of the Xeon VM took 3 us; timed this way, 16 us.
  void collectives() {
    // On a GPU the pass's collectives run on device buffers, through NCCL or MPI
    // (parallel.comm), which these host-buffer MPI calls would not describe.
    if (c_.size < 2 || !Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible) return;
    for (const int floats : {2, 2048, 65536, 1 << 20}) {
      std::vector<float> buf(static_cast<std::size_t>(floats), 1.0f);
      point("allreduce", kernel_size::allreduce(sizeof(float) * floats), [&] {
        MPI_Allreduce(MPI_IN_PLACE, buf.data(), floats, MPI_FLOAT, MPI_SUM, c_.world);
      }, HostRows{&buf}, Together{c_.world});
    }
    for (const int per : {1, 256, 16384, (1 << 20) / (c_.size - 1)}) {
      std::vector<int> counts(c_.size, per), displs(c_.size, 0);
      counts[c_.rank] = 0;
      for (int r = 1; r < c_.size; ++r) displs[r] = displs[r - 1] + counts[r - 1];
      const int total = displs.back() + counts.back();
      std::vector<float> send(static_cast<std::size_t>(total), 1.0f), recv(static_cast<std::size_t>(total));
      point("alltoallv", kernel_size::alltoallv(sizeof(float) * per * (c_.size - 1.0)), [&] {
        MPI_Alltoallv(send.data(), counts.data(), displs.data(), MPI_FLOAT, recv.data(), counts.data(), displs.data(),
                      MPI_FLOAT, c_.world);
      }, HostRows{&send}, Together{c_.world});
    }
    // "send": a pipeline stage's rows to the next stage (parallel/src/pipeline.cpp), rank 0 to
    // rank 1, the receiver entering its receive together with the sender; the sender's time,
    // as the stage's send phase has it.
    for (const int floats : {2, 2048, 65536, 1 << 20}) {
      std::vector<float> buf(static_cast<std::size_t>(floats), 1.0f);
      double sender = cold_.seconds([&] {
        if (c_.rank == 0) MPI_Send(buf.data(), floats, MPI_FLOAT, 1, 0, c_.world);
        if (c_.rank == 1) MPI_Recv(buf.data(), floats, MPI_FLOAT, 0, 0, c_.world, MPI_STATUS_IGNORE);
      }, HostRows{&buf}, Together{c_.world});
      MPI_Bcast(&sender, 1, MPI_DOUBLE, 0, c_.world);
      out_.kernels["send"].points.emplace_back(kernel_size::send(sizeof(float) * floats), sender);
    }
  }

  // "router" over rows of each of router_widths, then the permutation, gather and combine.
  void routing() {
    for (const int w : router_widths) {
      const Matrix router_weight = filled("moeproxy::calibrate::router", w, experts, 0.01f);
      for (const int t : row_counts) {
        const Matrix h = filled("moeproxy::calibrate::h", t, w, 0.5f);
        const Matrix logits("moeproxy::calibrate::logits", t, experts);
        IndexMatrix chosen("moeproxy::calibrate::chosen", t, top_k);
        const Matrix weight("moeproxy::calibrate::weight", t, top_k);
        point_by("router", w, kernel_size::router(t, w, experts, top_k, es), timed([&] {
          gemm(c_.space, h, router_weight, logits);
          route_top_k(c_.space, logits, top_k, true, chosen, weight);
        }, h));
      }
    }
    for (const int t : row_counts) {
      const double routed = static_cast<double>(t) * top_k;
      const IndexMatrix idx = spread_experts(t);
      Permutation perm;
      point("permute", kernel_size::permute(routed, experts), [&] { permute(c_.space, idx, experts, -1, perm); }, idx);
      const Matrix x = filled("moeproxy::calibrate::rows", t, width, 0.5f);
      const Matrix xp("moeproxy::calibrate::permuted", t * top_k, width);
      point("gather", kernel_size::gather(routed, width, es), [&] { gather_rows(c_.space, x, perm.source, xp); }, x, perm.source);
      const Matrix partial("moeproxy::calibrate::partial", t, width), weight("moeproxy::calibrate::weight", t, top_k);
      Kokkos::deep_copy(weight, 0.5f);
      point("combine", kernel_size::combine(t, routed, width, es), [&] {
        Kokkos::deep_copy(c_.space, partial, 0.0f);
        combine(c_.space, xp, perm.position, weight, partial);
      }, xp);
      const StagingMatrix staged("moeproxy::calibrate::staged", t * top_k, width);
      point("stage", kernel_size::stage(routed, width, es), [&] { Kokkos::deep_copy(xp, staged); }, staged);
    }
  }

  // Per team (kernel_size::AttentionTeams) and head width: every call has seqs x heads x
  // (query tiles) teams, and a point is the call's time over its teams, at heads of 16, 64
  // and 128 across the same 512 columns, from 1 to 8192 keys.
  void attention_kernels() {
    for (const int head_dim : attention_head_dims) {
      const int head_count = width / head_dim;
      const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
      auto team_point = [&](const char* name, const kernel_size::AttentionTeams& teams, auto&& work, const auto&... inputs) {
        point_by(name, head_dim, teams.size, timed(work, inputs...) / teams.teams);
      };
      constexpr int seqs = 2;
      for (const int n : {2, 8, 32, 128, 512}) {
        const Matrix q = filled("moeproxy::calibrate::q", seqs * n, width, 0.01f);
        const Matrix out("moeproxy::calibrate::attn", seqs * n, width);
        const Cache k("moeproxy::calibrate::k", seqs, head_count, n, head_dim),
            v("moeproxy::calibrate::v", seqs, head_count, n, head_dim);
        Kokkos::deep_copy(k, 0.01f);
        Kokkos::deep_copy(v, 0.02f);
        team_point("attention_prefill", kernel_size::attention_prefill(seqs, head_count, head_dim, n, 0),
                   [&] { attention<float>(c_.space, q, k, v, out, n, 0, scale, 0, 1); }, q, k, v);
      }
      constexpr int batch = 8;
      for (const int ctx : {1, 4, 16, 128, 1024, 8192}) {
        const Matrix q = filled("moeproxy::calibrate::q", batch, width, 0.01f);
        const Matrix out("moeproxy::calibrate::attn", batch, width);
        const Cache k("moeproxy::calibrate::k", batch, head_count, ctx + decode_room, head_dim),
            v("moeproxy::calibrate::v", batch, head_count, ctx + decode_room, head_dim);
        Kokkos::deep_copy(k, 0.01f);
        Kokkos::deep_copy(v, 0.02f);
        team_point("attention_decode", kernel_size::attention_decode(batch, head_count, head_dim, ctx, es),
                   [&] { attention<float>(c_.space, q, k, v, out, 1, ctx - 1, scale, 0, 1); }, q);
      }
    }
  }

  // [rows, n] x [n, n]: decode's few rows to prefill's many, small to large weights, the
  // weight cold (a forward pass reads each weight once per step) and the rows warm.
  void gemms() {
    for (const int n : {16, 32, 64, 256, 512, 1024, 2048}) {
      const Matrix b = filled("moeproxy::calibrate::b", n, n, 0.25f);
      KernelProfile profile;
      for (const int rows : {1, 4, 16, 64, 256, 1024}) {
        const Matrix a = filled("moeproxy::calibrate::a", rows, n, 0.5f), out("moeproxy::calibrate::c", rows, n);
        profile.points.emplace_back(rows, timed([&] { gemm(c_.space, a, b, out); }, a));
      }
      out_.gemm.by_weight.emplace_back(static_cast<double>(n) * n, profile);
    }
  }

 private:
  const CalibrationContext& c_;
  KernelProfiles& out_;
  ColdCaller cold_;
};

std::string swept_label(double sweep, Sweep kind) {
  std::ostringstream s;
  s << sweep / (1024 * 1024) << (kind == Sweep::read ? " MiB read: " : " MiB of weights: ");
  return s.str();
}

using SweepProfiles = std::vector<std::pair<double, KernelProfiles>>;

// Every kernel after every sweep of `kind`, once (a round).
SweepProfiles measure_round(const CalibrationContext& c, Sweep kind, const std::string& round,
                            const std::function<void(const std::string&)>& say) {
  SweepProfiles by_sweep;
  for (const double sweep : c.sweeps) {
    Profiler profiler(c, sweep, kind, by_sweep.emplace_back(sweep, KernelProfiles{}).second);
    profiler.elementwise();
    profiler.rope();
    profiler.routing();
    profiler.attention_kernels();
    profiler.gemms();
    profiler.collectives();
    say(round + swept_label(sweep, kind) + "profiled input, norm, store_kv, add, activate, router, permute, gather, "
                                           "combine, rope, attention, gemm");
  }
  return by_sweep;
}

// Point by point, the median of the rounds' times (the rounds measure the same points).
KernelProfile median_of(const std::vector<const KernelProfile*>& rounds) {
  KernelProfile merged = *rounds.front();
  for (std::size_t i = 0; i < merged.points.size(); ++i) {
    std::vector<double> times;
    for (const KernelProfile* r : rounds) times.push_back(r->points.at(i).second);
    std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
    merged.points[i].second = times[times.size() / 2];
  }
  return merged;
}

// The same for profiles keyed by a weight's size or a parameter: entry by entry.
std::vector<std::pair<double, KernelProfile>> median_of(
    const std::vector<const std::vector<std::pair<double, KernelProfile>>*>& rounds) {
  std::vector<std::pair<double, KernelProfile>> merged = *rounds.front();
  for (std::size_t i = 0; i < merged.size(); ++i) {
    std::vector<const KernelProfile*> entry;
    for (const auto* r : rounds) entry.push_back(&r->at(i).second);
    merged[i].second = median_of(entry);
  }
  return merged;
}

KernelProfiles median_of(const std::vector<const KernelProfiles*>& rounds) {
  KernelProfiles merged = *rounds.front();
  for (auto& [name, profile] : merged.kernels) {
    std::vector<const KernelProfile*> of;
    for (const KernelProfiles* r : rounds) of.push_back(&r->kernels.at(name));
    profile = median_of(of);
  }
  for (auto& [name, profile] : merged.by_parameter) {
    std::vector<const std::vector<std::pair<double, KernelProfile>>*> of;
    for (const KernelProfiles* r : rounds) of.push_back(&r->by_parameter.at(name).by_value);
    profile.by_value = median_of(of);
  }
  std::vector<const std::vector<std::pair<double, KernelProfile>>*> gemms;
  for (const KernelProfiles* r : rounds) gemms.push_back(&r->gemm.by_weight);
  merged.gemm.by_weight = median_of(gemms);
  return merged;
}

// "gemm [rows, n] x [n, n] GFLOP/s: rows: rate ..." of a GEMM profile's square weight n^2.
std::string gemm_line(double weight, const KernelProfile& profile) {
  const long n = std::lround(std::sqrt(weight));
  std::ostringstream line;
  line.precision(3);
  line << "gemm [rows, " << n << "] x [" << n << ", " << n << "] GFLOP/s:";
  for (const auto& [rows, seconds] : profile.points)
    line << " " << std::lround(rows) << ": " << 2.0 * rows * weight / seconds / 1e9;
  return line.str();
}

}  // namespace

MachineProfiles measure_profiles(const CalibrationContext& c, const std::function<void(const std::string&)>& say) {
  // Three rounds of every point, each with a third of the budget, merged by the median: the
  // cold profiles depend on what other tenants of the host keep in the shared caches, which
  // moves within minutes; one pass over the points put all of a kernel's sweeps in one such
  // state (AMD VM, 2026-12-06: a [4, 256] x [256, 256] GEMM after an 8 MiB sweep at 16.3,
  // 29.5, 19.9 and 29.0 GFLOP/s in four calibrations within an hour).
  constexpr int rounds = 3;
  CalibrationContext share = c;
  share.budget = c.budget / rounds;
  std::map<Sweep, std::vector<SweepProfiles>> measured;
  for (int r = 0; r < rounds; ++r)
    for (const Sweep kind : {Sweep::read, Sweep::weights})
      measured[kind].push_back(
          measure_round(share, kind, "round " + std::to_string(r + 1) + " of " + std::to_string(rounds) + ", ", say));
  MachineProfiles p;
  for (const Sweep kind : {Sweep::read, Sweep::weights}) {
    SweepProfiles& merged = kind == Sweep::read ? p.by_sweep : p.by_weight_sweep;
    for (std::size_t s = 0; s < c.sweeps.size(); ++s) {
      std::vector<const KernelProfiles*> of;
      for (const SweepProfiles& round : measured[kind]) of.push_back(&round[s].second);
      const KernelProfiles& k = merged.emplace_back(c.sweeps[s], median_of(of)).second;
      const std::string swept = swept_label(c.sweeps[s], kind);
      for (const auto& [weight, profile] : k.gemm.by_weight) say(swept + gemm_line(weight, profile));
      if (const KernelProfile* a = k.find("allreduce"))
        say(points_line(swept + "allreduce " + std::to_string(c.size) + " ranks (bytes: us):", *a));
    }
  }
  p.ranks = c.size > 1 ? c.size : 0;
  // Host ranks sweep the node's shared caches; each GPU sweeps its own L2.
  p.shared_caches = Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible;
  p.sync_wait = measure_sync_wait(c);
  if (!p.sync_wait.empty()) say(points_line("sync_wait (us of work: us waited in a collective):", p.sync_wait));
  return p;
}

}  // namespace moeproxy::app
