// The NCCL backend of DeviceComm (CUDA variant only): device buffers in place, enqueued on
// the Kokkos execution space's stream. All-to-all-v is grouped sends and receives, the way
// NCCL composes it.
#include <nccl.h>

#include <stdexcept>
#include <string>

#include "moeproxy/parallel/device_comm.hpp"

namespace moeproxy::parallel {

namespace {

class NcclDeviceComm final : public DeviceComm {
 public:
  NcclDeviceComm(Communicator& host, const ExecSpace& space) : DeviceComm(host, space) {
    ncclUniqueId id{};
    if (host.rank() == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    MOEPROXY_MPI(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, host.handle()));
    check(ncclCommInitRank(&comm_, host.size(), id, host.rank()), "ncclCommInitRank");
  }
  ~NcclDeviceComm() override { ncclCommDestroy(comm_); }
  CommBackend backend() const override { return CommBackend::nccl; }

 protected:
  void transport_allreduce_sum(float* data, std::size_t count) override {
    check(ncclAllReduce(data, data, count, ncclFloat, ncclSum, comm_, stream()), "ncclAllReduce");
  }
  void transport_allgather(const float* send, float* recv, std::size_t count) override {
    check(ncclAllGather(send, recv, count, ncclFloat, comm_, stream()), "ncclAllGather");
  }
  void transport_reduce_scatter_sum(const float* send, float* recv, std::size_t count) override {
    check(ncclReduceScatter(send, recv, count, ncclFloat, ncclSum, comm_, stream()), "ncclReduceScatter");
  }
  void transport_alltoallv(const float* send, const std::vector<int>& send_counts, const std::vector<int>& send_displs,
                           float* recv, const std::vector<int>& recv_counts,
                           const std::vector<int>& recv_displs) override {
    check(ncclGroupStart(), "ncclGroupStart");
    for (int r = 0; r < size(); ++r) {
      if (send_counts[r] > 0)
        check(ncclSend(send + send_displs[r], send_counts[r], ncclFloat, r, comm_, stream()), "ncclSend");
      if (recv_counts[r] > 0)
        check(ncclRecv(recv + recv_displs[r], recv_counts[r], ncclFloat, r, comm_, stream()), "ncclRecv");
    }
    check(ncclGroupEnd(), "ncclGroupEnd");
  }
  void transport_send(const float* data, std::size_t count, int dest) override {
    check(ncclSend(data, count, ncclFloat, dest, comm_, stream()), "ncclSend");
  }
  void transport_recv(float* data, std::size_t count, int source) override {
    check(ncclRecv(data, count, ncclFloat, source, comm_, stream()), "ncclRecv");
  }

 private:
  cudaStream_t stream() const { return space_.cuda_stream(); }
  void check(ncclResult_t result, const char* call) const {
    if (result == ncclSuccess) return;
    std::string detail = ncclGetErrorString(result);
    if (comm_ != nullptr)
      if (const char* last = ncclGetLastError(comm_); last != nullptr && *last != '\0') detail += ": " + std::string(last);
    throw std::runtime_error(std::string(call) + " failed on group \"" + host_.name() + "\" rank " +
                             std::to_string(rank()) + ": " + detail);
  }

  ncclComm_t comm_ = nullptr;
};

}  // namespace

std::unique_ptr<DeviceComm> make_nccl_comm(Communicator& host, const ExecSpace& space) {
  return std::make_unique<NcclDeviceComm>(host, space);
}

}  // namespace moeproxy::parallel
