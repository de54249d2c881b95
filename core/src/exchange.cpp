#include "moeproxy/core/exchange.hpp"

namespace moeproxy {

void LayerExchange::reduce_partial(const ExecSpace&, const Matrix&) {}

Matrix LayerExchange::dispatch(const ExecSpace&, const Matrix& xp, const std::vector<int>& counts,
                               std::vector<int>& counts_in) {
  counts_in = counts;
  return xp;
}

void LayerExchange::undispatch(const ExecSpace& space, const Matrix& y_in, const Matrix& yp) {
  if (y_in.data() != yp.data()) Kokkos::deep_copy(space, yp, y_in);
}

}  // namespace moeproxy
