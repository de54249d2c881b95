// Attention/MoE separation, one layer of one micro-batch:
//
//   attention rank (tp index 0 of a replica)          FFN rank j (experts [j*L, (j+1)*L))
//   attention_half: attention, router, permute
//   rows [kept, d] by global expert, counts[E]
//   isend counts[j*L, (j+1)*L) and that block ---->  recv every client's counts, then rows
//   irecv the block's outputs                         [rows by client, then local expert]
//   ... the next micro-batch's attention ...          ffn_rows: the experts on them
//   wait <------------------------------------------  isend each client its block back
//   combine with the router weights, reduce over tp, add to the residual
//
// A dense model sends every FFN rank all the normed rows (counts = {rows}); each returns the
// partial sum of its FFN columns and the attention rank adds the F partials. Tensor-parallel
// peers of the trading rank hold the same rows: they contribute zero to the tp reduction,
// which hands them the FFN output. Messages between a pair of ranks keep their order (MPI
// does not overtake), so both sides walk layers and micro-batches in the same order and
// three tags suffice.
#include "moeproxy/parallel/separation.hpp"

#include <algorithm>
#include <numeric>
#include <string>

namespace moeproxy::parallel {

namespace {

constexpr int counts_tag = 40, rows_tag = 41, results_tag = 42;

template <class Work>
void timed(const ExecSpace& space, PhaseTable& table, int layer, Phase phase, Work&& work) {
  Kokkos::Timer timer;
  work();
  named_fence(space, "moeproxy::sep::phase_end");
  table.add(layer, phase, timer.seconds());
}

// Matrix or HostMatrix (the same type on a host build).
template <class View>
View front(const View& m, int rows) {
  return Kokkos::subview(m, std::make_pair(0, rows), Kokkos::ALL);
}

template <class View>
void reserve(View& v, int rows, int cols, const std::string& label) {
  if (static_cast<int>(v.extent(0)) < rows) v = View(label, rows, cols);
}

}  // namespace

Separation::Separation(const ExecSpace& space, Transformer& model, Communicator& sep, LayerExchange& tp,
                       const RankLayout& layout, const RunConfig& cfg)
    : space_(space), model_(model), sep_(sep), tp_(tp), cfg_(cfg), attn_ranks_(cfg.parallel.attn_ranks),
      ffn_ranks_(layout.ffn_ranks()),
      local_experts_(cfg.model.is_moe() ? cfg.model.experts / layout.ffn_ranks() : 1),
      clients_(layout.ffn_clients()) {
  client_ = std::find(clients_.begin(), clients_.end(), sep_.rank()) != clients_.end();
  const int sequences = layout.sequences_of(sep_.rank()).count;
  const int per = sequences / cfg.parallel.micro_batches;
  for (int m = 0; m < cfg.parallel.micro_batches; ++m) micro_batches_.push_back(MicroBatch{m * per, per});
  flights_.resize(micro_batches_.size());
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
  reserve(x_, micro_batches_.back().first * n + micro_batches_.back().count * n, d, "moeproxy::sep::rows");
  auto rows_of = [&](const MicroBatch& mb) {
    return Matrix(Kokkos::subview(x_, std::make_pair(mb.first * n, (mb.first + mb.count) * n), Kokkos::ALL));
  };
  for (const MicroBatch& mb : micro_batches_) input(mb, rows_of(mb));
  // Layer-major: micro-batch i's layer l waits only for its own layer l-1 FFN rows, which
  // the FFN ranks computed while this rank ran the other micro-batches' attention.
  for (int l = 0; l < layers; ++l)
    for (int i = 0; i < mbs; ++i) {
      const Matrix x = rows_of(micro_batches_[i]);
      if (l > 0) finish(l - 1, x, flights_[i], timing);
      model_.attention_half(l, x, micro_batches_[i], step, flights_[i].in, timing);
      if (client_) send(l, flights_[i], timing);
    }
  for (int i = 0; i < mbs; ++i) {
    const MicroBatch& mb = micro_batches_[i];
    finish(layers - 1, rows_of(mb), flights_[i], timing);
    const Matrix out = model_.final_norm(rows_of(mb), timing);
    output(mb, out);
    auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), out);
    for (int b = 0; b < mb.count; ++b)
      std::copy_n(host.data() + (static_cast<std::size_t>(b) * n + n - 1) * d, d,
                  feedback.begin() + static_cast<std::ptrdiff_t>(mb.first + b) * d);
  }
}

void Separation::send(int l, InFlight& f, PhaseTable& timing) {
  Kokkos::Timer timer;
  const bool moe = cfg_.model.is_moe();
  const int rows = static_cast<int>(f.in.rows.extent(0)), d = cfg_.model.hidden;
  named_fence(space_, "moeproxy::sep::before_send");
  reserve(f.sent, rows, d, "moeproxy::sep::sent");
  reserve(f.received, moe ? rows : ffn_ranks_ * rows, d, "moeproxy::sep::received");
  Kokkos::deep_copy(front(f.sent, rows), f.in.rows);
  f.counts.resize(ffn_ranks_);
  int offset = 0;
  for (int j = 0; j < ffn_ranks_; ++j) {
    const int dest = attn_ranks_ + j;
    if (moe)
      f.counts[j].assign(f.in.counts.begin() + j * local_experts_, f.in.counts.begin() + (j + 1) * local_experts_);
    else
      f.counts[j].assign(1, rows);
    const int block = std::accumulate(f.counts[j].begin(), f.counts[j].end(), 0);
    // Experts' rows go to their rank and come back to where they were; every FFN rank gets
    // all dense rows and returns a partial sum of its own.
    const std::size_t from = static_cast<std::size_t>(moe ? offset : 0) * d;
    const std::size_t to = static_cast<std::size_t>(moe ? offset : j * rows) * d;
    f.requests.push_back(sep_.post_send(f.counts[j].data(), static_cast<int>(f.counts[j].size()), dest, counts_tag));
    f.requests.push_back(sep_.post_send(f.sent.data() + from, block * d, dest, rows_tag));
    f.requests.push_back(sep_.post_recv(f.received.data() + to, block * d, dest, results_tag));
    offset += block;
  }
  timing.add(l, Phase::dispatch, timer.seconds());
}

void Separation::finish(int l, const Matrix& x, InFlight& f, PhaseTable& timing) {
  const int tokens = static_cast<int>(x.extent(0)), d = cfg_.model.hidden;
  reserve(partial_, tokens, d, "moeproxy::sep::partial");
  const Matrix partial = front(partial_, tokens);
  if (client_) {
    Kokkos::Timer timer;
    sep_.wait(f.requests);
    timing.add(l, Phase::wait, timer.seconds());
    const bool moe = cfg_.model.is_moe();
    const int got = moe ? static_cast<int>(f.in.rows.extent(0)) : ffn_ranks_ * tokens;
    reserve(y_, got, d, "moeproxy::sep::ffn_out");
    const Matrix y = front(y_, got);
    timed(space_, timing, l, Phase::dispatch, [&] { Kokkos::deep_copy(y, front(f.received, got)); });
    timed(space_, timing, l, moe ? Phase::combine : Phase::ffn, [&] {
      if (moe) {
        Kokkos::deep_copy(space_, partial, 0.0f);
        combine(space_, y, f.in.perm.position, f.in.route_w, partial);
        return;
      }
      Kokkos::deep_copy(space_, partial, Kokkos::subview(y, std::make_pair(0, tokens), Kokkos::ALL));
      for (int j = 1; j < ffn_ranks_; ++j)
        add_into(space_, Kokkos::subview(y, std::make_pair(j * tokens, (j + 1) * tokens), Kokkos::ALL), partial);
    });
  } else {
    Kokkos::deep_copy(space_, partial, 0.0f);
  }
  timed(space_, timing, l, Phase::allreduce, [&] { tp_.reduce_partial(space_, partial); });
  timed(space_, timing, l, Phase::combine, [&] { add_into(space_, partial, x); });
}

// The FFN side serves whatever rows arrive: prefill and decode differ only in their counts.
void Separation::run_ffn(PhaseTable& timing) {
  const int d = cfg_.model.hidden, per_client = local_experts_, clients = static_cast<int>(clients_.size());
  std::vector<int> counts(static_cast<std::size_t>(clients) * per_client), rows(clients), offsets(clients);
  std::vector<MPI_Request> requests;
  for (int l = 0; l < cfg_.model.layers; ++l)
    for (std::size_t i = 0; i < micro_batches_.size(); ++i) {
      // Idle until every attention client has sent this micro-batch.
      Kokkos::Timer timer;
      for (int c = 0; c < clients; ++c)
        requests.push_back(sep_.post_recv(counts.data() + c * per_client, per_client, clients_[c], counts_tag));
      sep_.wait(requests);
      int total = 0;
      for (int c = 0; c < clients; ++c) {
        offsets[c] = total;
        rows[c] = std::accumulate(counts.begin() + c * per_client, counts.begin() + (c + 1) * per_client, 0);
        total += rows[c];
      }
      reserve(in_host_, total, d, "moeproxy::sep::ffn_in_host");
      for (int c = 0; c < clients; ++c)
        requests.push_back(sep_.post_recv(in_host_.data() + static_cast<std::size_t>(offsets[c]) * d, rows[c] * d,
                                          clients_[c], rows_tag));
      sep_.wait(requests);
      timing.add(l, Phase::wait, timer.seconds());

      reserve(x_, total, d, "moeproxy::sep::ffn_in");
      reserve(y_, total, d, "moeproxy::sep::ffn_out");
      const Matrix x = front(x_, total), y = front(y_, total);
      timed(space_, timing, l, Phase::recv, [&] { Kokkos::deep_copy(x, front(in_host_, total)); });
      model_.ffn_rows(l, x, cfg_.model.is_moe() ? counts : rows, y, timing);

      // The previous results must have left before their staging buffer is reused.
      timer.reset();
      sep_.wait(out_requests_);
      reserve(out_host_, total, d, "moeproxy::sep::ffn_out_host");
      Kokkos::deep_copy(front(out_host_, total), y);
      for (int c = 0; c < clients; ++c)
        out_requests_.push_back(sep_.post_send(out_host_.data() + static_cast<std::size_t>(offsets[c]) * d,
                                               rows[c] * d, clients_[c], results_tag));
      timing.add(l, Phase::send, timer.seconds());
    }
  Kokkos::Timer timer;
  sep_.wait(out_requests_);
  timing.add(cfg_.model.layers - 1, Phase::send, timer.seconds());
}

}  // namespace moeproxy::parallel
