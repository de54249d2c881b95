#pragma once
// What `moeproxy calibrate` (calibrate.cpp) and its kernel profiles (calibrate_profiles.cpp)
// share: the timing loop every rank runs together.

#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <functional>
#include <string>

#include "moeproxy/core/kernel_profile.hpp"
#include "moeproxy/core/types.hpp"

namespace moeproxy::app {

struct CalibrationContext {
  ExecSpace space;
  MPI_Comm world = MPI_COMM_WORLD;
  int rank = 0, size = 1;
  double budget = 0.2;  // seconds per measurement
  std::vector<double> sweeps;  // bytes through the caches before each profiled call (both kinds), increasing
};

// Mean seconds of `work` over repetitions filling the budget, after one warm-up; all ranks
// start together and repeat the same number of times (rank 0's choice), as collectives must.
template <class Work>
double time_it(const CalibrationContext& c, Work&& work) {
  // The first call pays for set-up (connections, first touch); the next few set the count.
  work();
  named_fence(c.space, "moeproxy::calibrate::warm");
  constexpr int probe = 5;
  Kokkos::Timer warm;
  for (int i = 0; i < probe; ++i) work();
  named_fence(c.space, "moeproxy::calibrate::warm");
  int reps = std::max(3, static_cast<int>(c.budget * probe / std::max(1e-9, warm.seconds())));
  reps = std::min(reps, 100000);
  MPI_Bcast(&reps, 1, MPI_INT, 0, c.world);
  MPI_Barrier(c.world);
  Kokkos::Timer timer;
  for (int i = 0; i < reps; ++i) {
    work();
    named_fence(c.space, "moeproxy::calibrate::rep");
  }
  return timer.seconds() / reps;
}

inline double mean_over_ranks(const CalibrationContext& c, double v) {
  MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_SUM, c.world);
  return v / c.size;
}

inline Matrix filled(const std::string& label, int rows, int cols, float value) {
  Matrix m(label, rows, cols);
  Kokkos::deep_copy(m, value);
  return m;
}

// Times every kernel of the forward pass that the performance model profiles, at several
// sizes (kernel_profile.hpp), fp32; `say` reports progress on rank 0.
MachineProfiles measure_profiles(const CalibrationContext& c, const std::function<void(const std::string&)>& say);

}  // namespace moeproxy::app
