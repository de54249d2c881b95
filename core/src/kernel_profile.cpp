#include "moeproxy/core/kernel_profile.hpp"

#include <algorithm>
#include <cmath>

namespace moeproxy {

namespace {

// log-log between (x0, y0) and (x1, y1) at x, x0 < x < x1, all positive.
double log_interpolate(double x, double x0, double y0, double x1, double y1) {
  const double f = std::log(x / x0) / std::log(x1 / x0);
  return std::exp(std::log(y0) + f * (std::log(y1) - std::log(y0)));
}

// `of` the entry of `by` (keys increasing) at `key`: the nearest entry's outside the keys, and
// between the two entries around it log-log in the key (linearly where either is not positive).
template <class Entry, class Of>
double between(const std::vector<std::pair<double, Entry>>& by, double key, Of&& of) {
  if (key <= by.front().first) return of(by.front().second);
  if (key >= by.back().first) return of(by.back().second);
  const auto hi = std::upper_bound(by.begin(), by.end(), key,
                                   [](double k, const std::pair<double, Entry>& e) { return k < e.first; });
  const auto lo = hi - 1;
  const double y_lo = of(lo->second), y_hi = of(hi->second);
  if (y_lo <= 0.0 || y_hi <= 0.0) return y_lo + (y_hi - y_lo) * (key - lo->first) / (hi->first - lo->first);
  return log_interpolate(key, lo->first, y_lo, hi->first, y_hi);
}

}  // namespace

double KernelProfile::seconds(double size) const {
  if (points.empty() || size <= 0.0) return 0.0;
  if (size <= points.front().first) return points.front().second;
  if (size >= points.back().first) return points.back().second * size / points.back().first;
  const auto hi = std::upper_bound(points.begin(), points.end(), size,
                                   [](double s, const std::pair<double, double>& p) { return s < p.first; });
  const auto lo = hi - 1;
  return log_interpolate(size, lo->first, lo->second, hi->first, hi->second);
}

double ParameterProfile::seconds(double value, double size) const {
  if (by_value.empty() || size <= 0.0) return 0.0;
  return between(by_value, value, [&](const KernelProfile& p) { return p.seconds(size); });
}

double GemmProfile::seconds(double rows, double inner, double cols) const {
  if (by_weight.empty() || rows <= 0.0 || inner <= 0.0 || cols <= 0.0) return 0.0;
  const double elements = inner * cols;
  // At the same rows, a weight of the measured size w takes (elements / w) of its time; a
  // smaller weight than any measured takes the smallest's time, the floor of a call.
  auto scaled = [&](const std::pair<double, KernelProfile>& w) { return w.second.seconds(rows) * elements / w.first; };
  if (elements <= by_weight.front().first) return by_weight.front().second.seconds(rows);
  if (elements >= by_weight.back().first) return scaled(by_weight.back());
  const auto hi = std::upper_bound(by_weight.begin(), by_weight.end(), elements,
                                   [](double e, const std::pair<double, KernelProfile>& w) { return e < w.first; });
  const auto lo = hi - 1;
  return log_interpolate(elements, lo->first, scaled(*lo), hi->first, scaled(*hi));
}

double MachineProfiles::at(double footprint, Sweep kind, const std::function<double(const KernelProfiles&)>& of) const {
  const auto& profiles = sweeps(kind);
  if (profiles.empty()) return 0.0;
  return between(profiles, footprint, of);
}

}  // namespace moeproxy
