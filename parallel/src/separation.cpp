// Attention/MoE separation, one layer of one micro-batch:
//
//   attention rank (its share of the tokens)          FFN rank j (its L_j experts of the layer)
//   attention_half: attention, router, permute
//   rows [kept, d] by placement position, counts[E]
//   isend j's L_j counts and that block ---------->  recv every attention rank's counts, then rows
//   irecv the block's outputs                         [rows by source, then local expert]
//   ... the next micro-batch's attention ...          ffn_rows: the experts on them
//   wait <------------------------------------------  isend each attention rank its block
//   combine with the router weights, reduce over tp, add to the residual
//
// A dense model sends every FFN rank all the normed rows (counts = {rows}); each returns the
// partial sum of its FFN columns and the attention rank adds the F partials. Tensor-parallel
// peers hold the same rows after attention: each routes and sends a contiguous share of
// them, combines its share's outputs into rows that are zero elsewhere, and the tp
// all-reduce of the FFN output assembles the whole. Messages between a pair of ranks keep
// their order (MPI does not overtake), so both sides walk layers and micro-batches in the
// same order and three tags suffice. Rows travel as wire rows (compression.hpp): each side
// encodes what it sends and decodes what it receives.
#include "moeproxy/parallel/separation.hpp"

#include "moeproxy/parallel/route_groups.hpp"

#include <algorithm>
#include <numeric>
#include <string>

namespace moeproxy::parallel {

namespace {

constexpr int counts_tag = 40, rows_tag = 41, results_tag = 42;

}  // namespace

Separation::Separation(const ExecSpace& space, Transformer& model, Communicator& sep, LayerExchange& tp,
                       const RankLayout& layout, const RunConfig& cfg)
    : space_(space), model_(model), sep_(sep), tp_(tp), cfg_(cfg), attn_ranks_(cfg.parallel.attn_ranks),
      ffn_ranks_(layout.ffn_ranks()), placement_(layout.placement()),
      tp_index_(layout.coordinates(sep.rank()).tp), tp_size_(cfg.parallel.tp),
      sequences_(layout.sequences_of(sep.rank()).count), codec_(cfg.parallel.comm_compression) {
  split(cfg.parallel.micro_batches);
  for (int r = 0; r < attn_ranks_; ++r) sources_.push_back(r);
}

// The first sequences % count micro-batches hold one sequence more: the balancer may choose
// a count that does not divide the sequences. A re-split keeps the sequences being served
// where they are: an attention replica's own start at an offset in the cache its replica
// group shares (failover.hpp).
void Separation::split(int count) {
  int first = 0, sequences = sequences_;
  if (!micro_batches_.empty()) {
    first = micro_batches_.front().first;
    sequences = micro_batches_.back().first + micro_batches_.back().count - first;
  }
  const int per = sequences / count, extra = sequences % count;
  micro_batches_.clear();
  for (int m = 0; m < count; ++m) {
    const int size = per + (m < extra ? 1 : 0);
    micro_batches_.push_back(MicroBatch{first, size});
    first += size;
  }
  flights_.resize(micro_batches_.size());
}

void Separation::serve(std::vector<MicroBatch> micro_batches) {
  micro_batches_ = std::move(micro_batches);
  flights_.resize(micro_batches_.size());
}

std::uint64_t Separation::buffer_bytes() const {
  // An attention rank's x_ holds its sequences' rows (activations); an FFN rank's, rows received.
  const bool attention = sep_.rank() < attn_ranks_;
  std::size_t floats = (attention ? 0 : x_.span()) + y_.span() + partial_.span() + in_host_.span() + out_host_.span();
  for (const InFlight& f : flights_) floats += f.sent.span() + f.received.span() + f.in.rows_buffer.span();
  return floats * sizeof(float) + codec_.buffer_bytes();
}

void Separation::run(int step, const Pipeline::Input& input, const Pipeline::Output& output,
                     std::vector<float>& feedback, PhaseTable& timing) {
  if (sep_.rank() < attn_ranks_)
    run_attention(step, input, output, feedback, timing);
  else
    run_ffn(timing);
}

void Separation::run_attention(int step, const Pipeline::Input& input, const Pipeline::Output& output,
                               std::vector<float>& feedback, PhaseTable& timing) {
  const int n = step < 0 ? cfg_.workload.prompt : 1, d = cfg_.model.hidden, layers = cfg_.model.layers;
  const int mbs = static_cast<int>(micro_batches_.size());
  const int base = micro_batches_.front().first;
  reserve_rows(x_, (micro_batches_.back().first - base + micro_batches_.back().count) * n, d, "moeproxy::sep::rows");
  auto rows_of = [&](const MicroBatch& mb) {
    return Matrix(
        Kokkos::subview(x_, std::make_pair((mb.first - base) * n, (mb.first - base + mb.count) * n), Kokkos::ALL));
  };
  for (const MicroBatch& mb : micro_batches_) input(mb, rows_of(mb));
  // Layer-major: micro-batch i's layer l waits only for its own layer l-1 FFN rows, which
  // the FFN ranks computed while this rank ran the other micro-batches' attention.
  for (int l = 0; l < layers; ++l)
    for (int i = 0; i < mbs; ++i) {
      const Matrix x = rows_of(micro_batches_[i]);
      if (l > 0) finish(l - 1, x, flights_[i], timing);
      model_.attention_half(l, x, micro_batches_[i], step, share(static_cast<int>(x.extent(0))), flights_[i].in,
                            timing);
      send(l, flights_[i], timing);
    }
  for (int i = 0; i < mbs; ++i) {
    const MicroBatch& mb = micro_batches_[i];
    finish(layers - 1, rows_of(mb), flights_[i], timing);
    const Matrix out = model_.final_norm(rows_of(mb), timing);
    output(mb, out);
    newest_.copy(out, mb.count, feedback.data() + static_cast<std::size_t>(mb.first) * d);
  }
}

std::pair<int, int> Separation::share(int rows) const { return tensor_share(rows, tp_index_, tp_size_); }

void Separation::send(int l, InFlight& f, PhaseTable& timing) {
  Kokkos::Timer timer;
  const bool moe = cfg_.model.is_moe();
  const int rows = static_cast<int>(f.in.rows.extent(0)), d = cfg_.model.hidden, wire = codec_.wire_width(d);
  const Matrix encoded = codec_.encode(space_, f.in.rows);
  named_fence(space_, "moeproxy::sep::before_send");
  reserve_rows(f.received, moe ? rows : ffn_ranks_ * rows, wire, "moeproxy::sep::received");
  Kokkos::deep_copy(reserved_rows(f.sent, rows, wire, "moeproxy::sep::sent"), encoded);
  f.counts.resize(ffn_ranks_);
  int offset = 0;
  for (int j = 0, position = 0; j < ffn_ranks_; ++j) {
    const int dest = attn_ranks_ + j;
    if (moe) {
      const int held = placement_.count(l, j);
      f.counts[j].assign(f.in.counts.begin() + position, f.in.counts.begin() + position + held);
      position += held;
    } else {
      f.counts[j].assign(1, rows);
    }
    const int block = std::accumulate(f.counts[j].begin(), f.counts[j].end(), 0);
    // Experts' rows go to their rank and come back to where they were; every FFN rank gets
    // all dense rows and returns a partial sum of its own.
    const std::size_t from = static_cast<std::size_t>(moe ? offset : 0) * wire;
    const std::size_t to = static_cast<std::size_t>(moe ? offset : j * rows) * wire;
    f.requests.push_back(sep_.post_send(f.counts[j].data(), static_cast<int>(f.counts[j].size()), dest, counts_tag));
    f.requests.push_back(sep_.post_send(f.sent.data() + from, block * wire, block * d, dest, rows_tag));
    f.requests.push_back(sep_.post_recv(f.received.data() + to, block * wire, dest, results_tag));
    offset += block;
  }
  timing.add(l, Phase::dispatch, timer.seconds());
}

void Separation::finish(int l, const Matrix& x, InFlight& f, PhaseTable& timing) {
  const int tokens = static_cast<int>(x.extent(0)), d = cfg_.model.hidden;
  const std::pair<int, int> mine = share(tokens);
  const int own = mine.second - mine.first;
  const Matrix partial = reserved_rows(partial_, tokens, d, "moeproxy::sep::partial");
  const Matrix partial_own = Kokkos::subview(partial, mine, Kokkos::ALL);
  Kokkos::Timer timer;
  sep_.wait(f.requests);
  timing.add(l, Phase::wait, timer.seconds());
  const bool moe = cfg_.model.is_moe();
  const int got = moe ? static_cast<int>(f.in.rows.extent(0)) : ffn_ranks_ * own;
  const Matrix y = reserved_rows(y_, got, d, "moeproxy::sep::ffn_out");
  timed(space_, timing, l, Phase::dispatch, [&] { codec_.decode(space_, first_rows(f.received, got), y); });
  timed(space_, timing, l, moe ? Phase::combine : Phase::ffn, [&] {
    Kokkos::deep_copy(space_, partial, 0.0f);
    if (moe) {
      combine(space_, y, f.in.perm.position, f.in.route_w, partial_own);
      return;
    }
    for (int j = 0; j < ffn_ranks_; ++j)
      add_into(space_, Kokkos::subview(y, std::make_pair(j * own, (j + 1) * own), Kokkos::ALL), partial_own);
  });
  tp_.timed_reduce_partial(space_, partial, timing, l);
  timed(space_, timing, l, Phase::combine, [&] { add_into(space_, partial, x); });
}

// The FFN side serves whatever rows arrive: prefill and decode differ only in their counts.
void Separation::run_ffn(PhaseTable& timing) {
  const int d = cfg_.model.hidden, wire = codec_.wire_width(d), j = sep_.rank() - attn_ranks_;
  const int sources = static_cast<int>(sources_.size());
  std::vector<int> counts, rows(sources), offsets(sources);
  std::vector<MPI_Request> requests;
  for (int l = 0; l < cfg_.model.layers; ++l)
    for (std::size_t i = 0; i < micro_batches_.size(); ++i) {
      // This rank's experts of the layer (none is possible: it still answers every message).
      const int per_source = placement_.empty() ? 1 : placement_.count(l, j);
      counts.assign(static_cast<std::size_t>(sources) * per_source, 0);
      // Idle until every attention rank has sent this micro-batch.
      Kokkos::Timer timer;
      for (int c = 0; c < sources; ++c)
        requests.push_back(sep_.post_recv(counts.data() + c * per_source, per_source, sources_[c], counts_tag));
      sep_.wait(requests);
      int total = 0;
      for (int c = 0; c < sources; ++c) {
        offsets[c] = total;
        rows[c] = std::accumulate(counts.begin() + c * per_source, counts.begin() + (c + 1) * per_source, 0);
        total += rows[c];
      }
      reserve_rows(in_host_, total, wire, "moeproxy::sep::ffn_in_host");
      for (int c = 0; c < sources; ++c)
        requests.push_back(sep_.post_recv(in_host_.data() + static_cast<std::size_t>(offsets[c]) * wire,
                                          rows[c] * wire, sources_[c], rows_tag));
      sep_.wait(requests);
      timing.add(l, Phase::wait, timer.seconds());

      const Matrix x = reserved_rows(x_, total, d, "moeproxy::sep::ffn_in");
      const Matrix y = reserved_rows(y_, total, d, "moeproxy::sep::ffn_out");
      timed(space_, timing, l, Phase::recv, [&] { codec_.decode(space_, first_rows(in_host_, total), x); });
      model_.ffn_rows(l, x, cfg_.model.is_moe() ? counts : rows, y, timing);

      // The previous results must have left before their staging buffer is reused.
      timer.reset();
      const Matrix encoded = codec_.encode(space_, y);
      sep_.wait(out_requests_);
      reserve_rows(out_host_, total, wire, "moeproxy::sep::ffn_out_host");
      Kokkos::deep_copy(first_rows(out_host_, total), encoded);
      for (int c = 0; c < sources; ++c)
        out_requests_.push_back(sep_.post_send(out_host_.data() + static_cast<std::size_t>(offsets[c]) * wire,
                                               rows[c] * wire, rows[c] * d, sources_[c], results_tag));
      timing.add(l, Phase::send, timer.seconds());
    }
  Kokkos::Timer timer;
  sep_.wait(out_requests_);
  timing.add(cfg_.model.layers - 1, Phase::send, timer.seconds());
}

}  // namespace moeproxy::parallel
