// The shared half of DeviceComm and its MPI backend.
#include "moeproxy/parallel/device_comm.hpp"

#include <algorithm>
#include <climits>
#include <stdexcept>
#include <utility>

#ifdef KOKKOS_ENABLE_CUDA
#include <cuda_runtime.h>
#endif

namespace moeproxy::parallel {

#ifdef MOEPROXY_HAVE_NCCL
std::unique_ptr<DeviceComm> make_nccl_comm(Communicator& host, const ExecSpace& space);  // device_comm_nccl.cpp
#endif

namespace {

void check_counts(const char* op, const std::vector<int>& counts, const std::vector<int>& displs, int size) {
  if (static_cast<int>(counts.size()) != size || static_cast<int>(displs.size()) != size)
    throw std::logic_error(std::string(op) + ": counts and displacements need one entry per rank of the group");
}

int as_int(std::size_t count, const char* op) {
  if (count > static_cast<std::size_t>(INT_MAX))
    throw std::runtime_error(std::string(op) + ": " + std::to_string(count) + " floats exceed one MPI message");
  return static_cast<int>(count);
}

std::vector<std::uint64_t> float_bytes(const std::vector<int>& counts) {
  std::vector<std::uint64_t> bytes(counts.begin(), counts.end());
  for (auto& b : bytes) b *= sizeof(float);
  return bytes;
}

using DeviceFloats = Kokkos::View<float*, MemSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
using HostFloats = DeviceFloats::HostMirror;

// MPI on staged copies. The group's communicator is duplicated so that its messages never
// match the control plane's on the same ranks.
class MpiDeviceComm final : public DeviceComm {
 public:
  MpiDeviceComm(Communicator& host, const ExecSpace& space) : DeviceComm(host, space) {
    MOEPROXY_MPI(MPI_Comm_dup(host.handle(), &comm_));
  }
  ~MpiDeviceComm() override { MPI_Comm_free(&comm_); }
  CommBackend backend() const override { return CommBackend::mpi; }

 protected:
  void transport_allreduce_sum(float* data, std::size_t count) override {
    HostFloats h = to_host(data, count);
    MOEPROXY_MPI(MPI_Allreduce(MPI_IN_PLACE, h.data(), as_int(count, "allreduce"), MPI_FLOAT, MPI_SUM, comm_));
    from_host(h, data, count);
  }
  void transport_allgather(const float* send, float* recv, std::size_t count) override {
    HostFloats s = to_host(send, count), r = host_buffer(recv, count * size());
    MOEPROXY_MPI(MPI_Allgather(s.data(), as_int(count, "allgather"), MPI_FLOAT, r.data(), as_int(count, "allgather"),
                               MPI_FLOAT, comm_));
    from_host(r, recv, count * size());
  }
  void transport_reduce_scatter_sum(const float* send, float* recv, std::size_t count) override {
    HostFloats s = to_host(send, count * size()), r = host_buffer(recv, count);
    MOEPROXY_MPI(MPI_Reduce_scatter_block(s.data(), r.data(), as_int(count, "reduce_scatter"), MPI_FLOAT, MPI_SUM,
                                          comm_));
    from_host(r, recv, count);
  }
  void transport_alltoallv(const float* send, const std::vector<int>& send_counts, const std::vector<int>& send_displs,
                           float* recv, const std::vector<int>& recv_counts,
                           const std::vector<int>& recv_displs) override {
    const std::size_t sent = extent(send_counts, send_displs), received = extent(recv_counts, recv_displs);
    HostFloats s = to_host(send, sent), r = host_buffer(recv, received);
    MOEPROXY_MPI(MPI_Alltoallv(s.data(), send_counts.data(), send_displs.data(), MPI_FLOAT, r.data(),
                               recv_counts.data(), recv_displs.data(), MPI_FLOAT, comm_));
    from_host(r, recv, received);
  }
  // MPI reads the counts and the staged buffers until the request completes: they live here.
  struct PostedAlltoallv final : Posted {
    MPI_Request request = MPI_REQUEST_NULL;
    std::vector<int> send_counts, send_displs, recv_counts, recv_displs;
    HostFloats send, recv;
    float* result = nullptr;
    std::size_t received = 0;
  };
  std::unique_ptr<Posted> transport_ialltoallv(const float* send, const std::vector<int>& send_counts,
                                               const std::vector<int>& send_displs, float* recv,
                                               const std::vector<int>& recv_counts,
                                               const std::vector<int>& recv_displs) override {
    auto p = std::make_unique<PostedAlltoallv>();
    p->send_counts = send_counts;
    p->send_displs = send_displs;
    p->recv_counts = recv_counts;
    p->recv_displs = recv_displs;
    p->received = extent(recv_counts, recv_displs);
    p->send = to_host(send, extent(send_counts, send_displs));
    p->recv = host_buffer(recv, p->received);
    p->result = recv;
    MOEPROXY_MPI(MPI_Ialltoallv(p->send.data(), p->send_counts.data(), p->send_displs.data(), MPI_FLOAT,
                                p->recv.data(), p->recv_counts.data(), p->recv_displs.data(), MPI_FLOAT, comm_,
                                &p->request));
    return p;
  }
  bool transport_test(Posted& posted) override {
    int done = 0;
    MOEPROXY_MPI(MPI_Test(&static_cast<PostedAlltoallv&>(posted).request, &done, MPI_STATUS_IGNORE));
    return done != 0;
  }
  void transport_wait(Posted& posted) override {
    auto& p = static_cast<PostedAlltoallv&>(posted);
    MOEPROXY_MPI(MPI_Wait(&p.request, MPI_STATUS_IGNORE));
    // Only the received blocks: the rest of the span may be another transfer's.
    for (std::size_t r = 0; r < p.recv_counts.size(); ++r)
      if (p.recv_counts[r] > 0) {
        const auto block = std::make_pair(static_cast<std::size_t>(p.recv_displs[r]),
                                          static_cast<std::size_t>(p.recv_displs[r]) + p.recv_counts[r]);
        from_host(Kokkos::subview(p.recv, block), p.result + block.first, block.second - block.first);
      }
  }
  void transport_send(const float* data, std::size_t count, int dest) override {
    HostFloats h = to_host(data, count);
    MOEPROXY_MPI(MPI_Send(h.data(), as_int(count, "send"), MPI_FLOAT, dest, 0, comm_));
  }
  void transport_recv(float* data, std::size_t count, int source) override {
    HostFloats h = host_buffer(data, count);
    MOEPROXY_MPI(MPI_Recv(h.data(), as_int(count, "recv"), MPI_FLOAT, source, 0, comm_, MPI_STATUS_IGNORE));
    from_host(h, data, count);
  }

 private:
  // Where the host holds the data already these alias it (create_mirror_view on host memory).
  static HostFloats to_host(const float* data, std::size_t count) {
    return Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), DeviceFloats(const_cast<float*>(data), count));
  }
  static HostFloats host_buffer(float* data, std::size_t count) {
    return Kokkos::create_mirror_view(DeviceFloats(data, count));
  }
  template <class HostView>
  static void from_host(const HostView& h, float* data, std::size_t count) {
    const DeviceFloats d(data, count);
    if (h.data() != d.data()) Kokkos::deep_copy(d, h);
  }
  static std::size_t extent(const std::vector<int>& counts, const std::vector<int>& displs) {
    std::size_t end = 0;
    for (std::size_t r = 0; r < counts.size(); ++r)
      if (counts[r] > 0) end = std::max(end, static_cast<std::size_t>(displs[r]) + counts[r]);
    return end;
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
};

}  // namespace

DeviceComm::DeviceComm(Communicator& host, const ExecSpace& space)
    : host_(host), space_(space), log_(host.name(), host.size()) {}

template <class Call>
void DeviceComm::timed(CommOp op, const CommVolume& volume, Call&& call) {
  named_fence(space_, "moeproxy::comm::buffer_ready");
  enter_call();
  Kokkos::Timer timer;
  call();
  named_fence(space_, "moeproxy::comm::done");
  log_.add(op, volume, timer.seconds());
  leave_call();
}

void DeviceComm::allreduce_sum(float* data, std::size_t count) {
  timed(CommOp::allreduce, collective_volume(CommOp::allreduce, sizeof(float) * count, size()),
        [&] { transport_allreduce_sum(data, count); });
}

void DeviceComm::allgather(const float* send, float* recv, std::size_t count) {
  timed(CommOp::allgather, collective_volume(CommOp::allgather, sizeof(float) * count * size(), size()),
        [&] { transport_allgather(send, recv, count); });
}

void DeviceComm::reduce_scatter_sum(const float* send, float* recv, std::size_t count) {
  timed(CommOp::reduce_scatter, collective_volume(CommOp::reduce_scatter, sizeof(float) * count * size(), size()),
        [&] { transport_reduce_scatter_sum(send, recv, count); });
}

void DeviceComm::alltoallv(const float* send, const std::vector<int>& send_counts,
                           const std::vector<int>& send_displs, float* recv, const std::vector<int>& recv_counts,
                           const std::vector<int>& recv_displs, const std::vector<int>& uncompressed_send_counts) {
  check_counts("alltoallv send", send_counts, send_displs, size());
  check_counts("alltoallv recv", recv_counts, recv_displs, size());
  CommVolume volume = alltoallv_volume(float_bytes(send_counts), rank());
  if (!uncompressed_send_counts.empty())
    volume.saved = alltoallv_volume(float_bytes(uncompressed_send_counts), rank()).bytes - volume.bytes;
  timed(CommOp::alltoallv, volume,
        [&] { transport_alltoallv(send, send_counts, send_displs, recv, recv_counts, recv_displs); });
}

std::unique_ptr<DeviceComm::Posted> DeviceComm::transport_ialltoallv(
    const float* send, const std::vector<int>& send_counts, const std::vector<int>& send_displs, float* recv,
    const std::vector<int>& recv_counts, const std::vector<int>& recv_displs) {
  transport_alltoallv(send, send_counts, send_displs, recv, recv_counts, recv_displs);
  return std::make_unique<Posted>();
}

bool DeviceComm::transport_test(Posted&) { return true; }

void DeviceComm::transport_wait(Posted&) {}

void DeviceComm::enter_call() {
  const double now = clock_.seconds();
  if (open_ > 0) log_.add_hidden(CommOp::wait, now - left_call_);
  left_call_ = now;
}

DeviceComm::Ticket DeviceComm::ialltoallv(const float* send, const std::vector<int>& send_counts,
                                          const std::vector<int>& send_displs, float* recv,
                                          const std::vector<int>& recv_counts, const std::vector<int>& recv_displs,
                                          const std::vector<int>& uncompressed_send_counts) {
  check_counts("ialltoallv send", send_counts, send_displs, size());
  check_counts("ialltoallv recv", recv_counts, recv_displs, size());
  CommVolume volume = alltoallv_volume(float_bytes(send_counts), rank());
  if (!uncompressed_send_counts.empty())
    volume.saved = alltoallv_volume(float_bytes(uncompressed_send_counts), rank()).bytes - volume.bytes;
  named_fence(space_, "moeproxy::comm::buffer_ready");
  enter_call();
  Kokkos::Timer timer;
  InFlight f;
  f.posted = transport_ialltoallv(send, send_counts, send_displs, recv, recv_counts, recv_displs);
  log_.add(CommOp::ialltoallv, volume, timer.seconds());
  ++open_;
  leave_call();
  in_flight_.emplace(next_ticket_, std::move(f));
  return next_ticket_++;
}

bool DeviceComm::test(Ticket ticket) {
  InFlight& f = in_flight_.at(ticket);
  if (f.seen_complete) return true;
  enter_call();
  Kokkos::Timer timer;
  f.seen_complete = transport_test(*f.posted);
  if (f.seen_complete) --open_;
  log_.add(CommOp::wait, {}, timer.seconds());
  leave_call();
  return f.seen_complete;
}

void DeviceComm::wait(Ticket ticket) {
  const auto found = in_flight_.find(ticket);
  if (found == in_flight_.end()) throw std::logic_error("DeviceComm::wait: no transfer in flight with this ticket");
  enter_call();
  if (!found->second.seen_complete) --open_;
  Kokkos::Timer timer;
  transport_wait(*found->second.posted);
  named_fence(space_, "moeproxy::comm::done");
  log_.add(CommOp::wait, {}, timer.seconds());
  leave_call();
  in_flight_.erase(found);
}

void DeviceComm::send(const float* data, std::size_t count, int dest) {
  timed(CommOp::send, send_volume(sizeof(float) * count, rank(), dest), [&] { transport_send(data, count, dest); });
}

void DeviceComm::recv(float* data, std::size_t count, int source) {
  timed(CommOp::recv, recv_volume(sizeof(float) * count, rank(), source),
        [&] { transport_recv(data, count, source); });
}

void DeviceComm::barrier() {
  timed(CommOp::barrier, {}, [&] { MOEPROXY_MPI(MPI_Barrier(host_.handle())); });
}

std::unique_ptr<DeviceComm> make_device_comm(CommBackend backend, Communicator& host, const ExecSpace& space) {
  switch (backend) {
    case CommBackend::mpi: return std::make_unique<MpiDeviceComm>(host, space);
    case CommBackend::nccl:
#ifdef MOEPROXY_HAVE_NCCL
      return make_nccl_comm(host, space);
#else
      throw std::logic_error("make_device_comm: this build has no NCCL backend");
#endif
    case CommBackend::automatic: break;
  }
  throw std::logic_error("make_device_comm: resolve parallel.comm = \"auto\" with select_comm_backend first");
}

int gpu_sharers(MPI_Comm comm) {
  int sharing = 0;  // stays 0 on a rank without a GPU
#ifdef KOKKOS_ENABLE_CUDA
  int device = 0;
  cudaDeviceProp prop{};
  const bool known = cudaGetDevice(&device) == cudaSuccess && cudaGetDeviceProperties(&prop, device) == cudaSuccess;
  // Ranks on one node with the same PCI address share a GPU; every rank takes part in the
  // splits, also one without a GPU.
  const int color = known ? ((prop.pciDomainID & 0x7fff) << 16) | (prop.pciBusID << 8) | prop.pciDeviceID : INT_MAX;
  MPI_Comm node, gpu;
  MOEPROXY_MPI(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
  MOEPROXY_MPI(MPI_Comm_split(node, color, 0, &gpu));
  if (known) MOEPROXY_MPI(MPI_Comm_size(gpu, &sharing));
  MOEPROXY_MPI(MPI_Comm_free(&gpu));
  MOEPROXY_MPI(MPI_Comm_free(&node));
#else
  static_cast<void>(comm);
#endif
  return sharing;
}

int ranks_per_gpu(MPI_Comm comm) {
  const int sharing = gpu_sharers(comm);
  int most = 0, fewest = 0;
  MOEPROXY_MPI(MPI_Allreduce(&sharing, &most, 1, MPI_INT, MPI_MAX, comm));
  MOEPROXY_MPI(MPI_Allreduce(&sharing, &fewest, 1, MPI_INT, MPI_MIN, comm));
  return fewest == 0 ? 0 : most;
}

}  // namespace moeproxy::parallel
