#include "moeproxy/parallel/pipeline.hpp"

namespace moeproxy::parallel {

namespace {
// The feedback's tag on the control plane (the forward rows travel on the DeviceComm).
constexpr int feedback_tag = 1;
}  // namespace

void NewestRows::copy(const ConstMatrix& rows, int sequences, float* dst) {
  const int n = static_cast<int>(rows.extent(0)) / sequences, d = static_cast<int>(rows.extent(1));
  using Rows3 = Kokkos::View<const float***, Kokkos::LayoutRight, MemSpace, Kokkos::MemoryUnmanaged>;
  const auto newest = Kokkos::subview(Rows3(rows.data(), sequences, n, d), Kokkos::ALL, n - 1, Kokkos::ALL);
  const Matrix packed = reserved_rows(packed_, sequences, d, "moeproxy::newest_rows");
  Kokkos::deep_copy(packed, newest);
  Kokkos::deep_copy(Kokkos::View<float**, Kokkos::LayoutRight, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(
                        dst, sequences, d),
                    packed);
}

Pipeline::Pipeline(Transformer& model, DeviceComm& stages, int sequences,
                   int micro_batches, int layer_begin, int layer_end)
    : model_(model), stages_(stages), layer_begin_(layer_begin), layer_end_(layer_end) {
  const int per = sequences / micro_batches;
  for (int m = 0; m < micro_batches; ++m) micro_batches_.push_back(MicroBatch{m * per, per});
}

void Pipeline::run(int step, const Input& input, const Output& output, std::vector<float>& feedback,
                   PhaseTable& timing) {
  const int stage = stages_.rank(), last = stages_.size() - 1;
  const int n = step < 0 ? model_.prompt() : 1;
  const int d = model_.hidden();
  // The first stage posts its feedback receives up front, so that the last stage's sends
  // can never wait on a first stage that is itself blocked sending the next micro-batch.
  if (first_stage() && !last_stage())
    for (const MicroBatch& mb : micro_batches_)
      stages_.host().irecv(feedback.data() + static_cast<std::size_t>(mb.first) * d, mb.count * d, last, feedback_tag);

  for (const MicroBatch& mb : micro_batches_) {
    const int rows = mb.count * n;
    const Matrix x = reserved_rows(buffer_, rows, d, "moeproxy::pp::rows");
    Kokkos::Timer timer;
    if (first_stage()) {
      input(mb, x);
    } else {
      stages_.recv(x.data(), x.span(), stage - 1);
      timing.add(layer_begin_, Phase::recv, timer.seconds());
    }
    model_.run_layers(x, mb, step, timing);
    if (!last_stage()) {
      timer.reset();
      stages_.send(x.data(), x.span(), stage + 1);
      timing.add(layer_end_ - 1, Phase::send, timer.seconds());
      continue;
    }
    const Matrix out = model_.final_norm(x, timing);
    output(mb, out);
    // Each sequence's newest row goes back to the first stage: a send where that is another
    // rank (the copy out of the device included), a copy outside every phase where it is this one.
    timer.reset();
    if (first_stage()) {
      newest_.copy(out, mb.count, feedback.data() + static_cast<std::size_t>(mb.first) * d);
      continue;
    }
    std::vector<float> newest(static_cast<std::size_t>(mb.count) * d);
    newest_.copy(out, mb.count, newest.data());
    stages_.host().send(newest.data(), static_cast<int>(newest.size()), 0, feedback_tag);
    timing.add(layer_end_ - 1, Phase::send, timer.seconds());
  }
  if (first_stage() && !last_stage()) {
    Kokkos::Timer timer;
    stages_.host().wait_all();
    timing.add(layer_begin_, Phase::wait, timer.seconds());
  }
}

}  // namespace moeproxy::parallel
