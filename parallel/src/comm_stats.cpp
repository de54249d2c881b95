#include "moeproxy/parallel/comm_stats.hpp"

namespace moeproxy::parallel {

const char* to_string(CommOp op) {
  switch (op) {
    case CommOp::allreduce: return "allreduce";
    case CommOp::allgather: return "allgather";
    case CommOp::reduce_scatter: return "reducescatter";
    case CommOp::alltoall: return "alltoall";
    case CommOp::alltoallv: return "alltoallv";
    case CommOp::ialltoallv: return "ialltoallv";
    case CommOp::send: return "send";
    case CommOp::recv: return "recv";
    case CommOp::isend: return "isend";
    case CommOp::irecv: return "irecv";
    case CommOp::wait: return "wait";
    case CommOp::broadcast: return "broadcast";
    case CommOp::gather: return "gather";
    case CommOp::barrier: return "barrier";
  }
  return "?";
}

double bus_factor(CommOp op, int n) {
  if (n <= 1 || op == CommOp::barrier || op == CommOp::wait) return 0.0;
  switch (op) {
    case CommOp::allreduce: return 2.0 * (n - 1) / n;
    case CommOp::allgather:
    case CommOp::reduce_scatter:
    case CommOp::alltoall:
    case CommOp::alltoallv:
    case CommOp::ialltoallv:
    case CommOp::gather: return static_cast<double>(n - 1) / n;
    default: return 1.0;
  }
}

CommVolume collective_volume(CommOp op, std::uint64_t size, int n, bool root) {
  CommVolume v;
  v.alg = size;
  v.bus = static_cast<std::uint64_t>(bus_factor(op, n) * static_cast<double>(size));
  switch (op) {
    // A rank's share of the gathered (scattered) buffer is size / n; it sends the rest.
    case CommOp::allreduce:
    case CommOp::allgather:
    case CommOp::reduce_scatter:
    case CommOp::alltoall: v.bytes = v.bus; break;
    case CommOp::broadcast: v.bytes = root ? size * static_cast<std::uint64_t>(n - 1) : 0; break;
    case CommOp::gather: v.bytes = root || n <= 1 ? 0 : size / n; break;
    default: v.bytes = 0;
  }
  return v;
}

CommVolume alltoallv_volume(const std::vector<std::uint64_t>& send_bytes, int rank) {
  CommVolume v;
  for (std::size_t r = 0; r < send_bytes.size(); ++r) {
    v.alg += send_bytes[r];
    if (static_cast<int>(r) != rank) v.bus += send_bytes[r];
  }
  v.bytes = v.bus;
  return v;
}

CommVolume send_volume(std::uint64_t size, int rank, int peer) {
  const std::uint64_t moved = rank == peer ? 0 : size;
  return CommVolume{moved, size, moved, 0};
}

CommVolume recv_volume(std::uint64_t size, int rank, int peer) {
  return CommVolume{0, size, rank == peer ? 0 : size, 0};
}

std::vector<int> displacements(const std::vector<int>& counts) {
  std::vector<int> displs(counts.size(), 0);
  for (std::size_t i = 1; i < counts.size(); ++i) displs[i] = displs[i - 1] + counts[i - 1];
  return displs;
}

void CommLog::add(CommOp op, const CommVolume& v, double seconds) {
  CommRecord& r = records_[to_string(op)];
  r.operation = to_string(op);
  r.group = group_;
  r.group_size = group_size_;
  r.calls += 1;
  r.bytes += v.bytes;
  r.uncompressed_bytes += v.bytes + v.saved;
  r.alg_bytes += v.alg;
  r.bus_bytes += v.bus;
  r.seconds += seconds;
}

void CommLog::add_hidden(CommOp op, double seconds) {
  CommRecord& r = records_[to_string(op)];
  r.operation = to_string(op);
  r.group = group_;
  r.group_size = group_size_;
  r.hidden_seconds += seconds;
}

std::vector<CommRecord> CommLog::records() const {
  std::vector<CommRecord> out;
  for (const auto& kv : records_) out.push_back(kv.second);
  return out;
}

CommBackend select_comm_backend(CommBackend requested, bool nccl_is_built, int ranks_per_gpu) {
  const bool own_gpus = ranks_per_gpu == 1;
  if (requested == CommBackend::mpi) return CommBackend::mpi;
  if (requested == CommBackend::automatic) return nccl_is_built && own_gpus ? CommBackend::nccl : CommBackend::mpi;
  if (!nccl_is_built)
    throw InputError(
        "parallel.comm = \"nccl\": this moeproxy is the host (CPU) build, which has no NCCL backend; "
        "build the CUDA variant (cmake --preset cuda) to use NCCL, or set parallel.comm = \"auto\" or \"mpi\"");
  if (ranks_per_gpu < 1)
    throw InputError(
        "parallel.comm = \"nccl\": no GPU is visible to some rank, and NCCL communicates between GPUs; "
        "set parallel.comm = \"auto\" or \"mpi\"");
  if (!own_gpus)
    throw InputError("parallel.comm = \"nccl\": " + std::to_string(ranks_per_gpu) +
                     " ranks share one GPU, and NCCL refuses two ranks on one GPU; launch at most one rank "
                     "per GPU (e.g. --kokkos-num-devices=<GPUs per node>), or set parallel.comm = \"auto\" "
                     "(MPI here) or \"mpi\"");
  return CommBackend::nccl;
}

bool nccl_built() {
#ifdef MOEPROXY_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

}  // namespace moeproxy::parallel
