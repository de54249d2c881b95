#pragma once
// The launch shared by the element-wise kernels over row-major [rows, cols] blocks.

#include "moeproxy/core/types.hpp"

namespace moeproxy {

// f(r, j) for every element, a team per row. On a CPU a row's columns are one loop the
// compiler vectorises: Kokkos 3.4's 2D MDRange on OpenMP ran an add of rows of 48 to 512
// columns 2 to 4x slower (one core, 2026-12-06). On a GPU a row's columns are spread over the
// team's threads, adjacent threads on adjacent floats.
template <class F>
void for_each_in_rows(const ExecSpace& space, const char* name, int rows, int cols, const F& f) {
  if (rows == 0 || cols == 0) return;
  using Team = Kokkos::TeamPolicy<ExecSpace>::member_type;
  Kokkos::parallel_for(
      name, Kokkos::TeamPolicy<ExecSpace>(space, rows, Kokkos::AUTO), KOKKOS_LAMBDA(const Team& team) {
        const int r = team.league_rank();
        Kokkos::parallel_for(Kokkos::TeamVectorRange(team, cols), [&](const int j) { f(r, j); });
      });
}

}  // namespace moeproxy
