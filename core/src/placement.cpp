#include "moeproxy/core/placement.hpp"

#include <algorithm>
#include <numeric>
#include <utility>

namespace moeproxy {

ExpertPlacement::ExpertPlacement(std::vector<std::vector<std::vector<int>>> map) : map_(std::move(map)) {}

ExpertPlacement ExpertPlacement::even(int layers, int experts, int ranks) {
  std::vector<std::vector<int>> layer(ranks);
  const int per = experts / ranks;
  for (int r = 0; r < ranks; ++r) {
    layer[r].resize(per);
    std::iota(layer[r].begin(), layer[r].end(), r * per);
  }
  return ExpertPlacement(std::vector<std::vector<std::vector<int>>>(layers, layer));
}

int ExpertPlacement::first(int layer, int rank) const {
  int position = 0;
  for (int r = 0; r < rank; ++r) position += count(layer, r);
  return position;
}

std::vector<int> ExpertPlacement::order(int layer) const {
  std::vector<int> out;
  for (const std::vector<int>& held : map_[layer]) out.insert(out.end(), held.begin(), held.end());
  return out;
}

bool ExpertPlacement::in_id_order() const {
  for (std::size_t l = 0; l < map_.size(); ++l) {
    const std::vector<int> o = order(static_cast<int>(l));
    for (std::size_t p = 0; p < o.size(); ++p)
      if (o[p] != static_cast<int>(p)) return false;
  }
  return true;
}

int ExpertPlacement::max_count(int layer) const {
  int most = 0;
  for (const std::vector<int>& held : map_[layer]) most = std::max(most, static_cast<int>(held.size()));
  return most;
}

std::string ExpertPlacement::describe(const std::vector<int>& experts) {
  if (experts.empty()) return "none";
  bool consecutive = true;
  for (std::size_t i = 1; i < experts.size(); ++i) consecutive = consecutive && experts[i] == experts[i - 1] + 1;
  if (consecutive)
    return experts.size() == 1 ? std::to_string(experts.front())
                               : std::to_string(experts.front()) + "-" + std::to_string(experts.back());
  std::string out;
  for (const int e : experts) out += (out.empty() ? "" : ",") + std::to_string(e);
  return out;
}

}  // namespace moeproxy
