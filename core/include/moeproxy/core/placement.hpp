#pragma once
// Expert placement: which experts of each layer every rank of an expert group holds (the
// EP group, or the FFN ranks of attention/MoE separation). Plain C++, shared with io/.
//
// The group's ranks take turns in "placement order": rank 0's experts of a layer, then rank
// 1's, ... The router's expert ids are relabelled to their positions in that order before
// the rows are permuted, so that every rank's experts are one contiguous block of the
// permuted rows whatever the map (the default even split is the identity relabelling):
//   map[l] = [[1, 3], [0, 2]]   order(l) = [1, 3, 0, 2]   position_of(l, e) = [2, 0, 3, 1]
//   rank 0: positions [0, 2) (experts 1 and 3), rank 1: positions [2, 4) (experts 0 and 2).
// A rank may hold no expert of a layer (an empty list): its block is empty.

#include <string>
#include <vector>

namespace moeproxy {

class ExpertPlacement {
 public:
  // No placement: the experts in id order, the holder's range given elsewhere (ShardSpec).
  ExpertPlacement() = default;
  // map[layer][rank]: the global experts `rank` holds in `layer`, in its local order. The
  // caller has checked that each layer's lists hold every expert exactly once.
  explicit ExpertPlacement(std::vector<std::vector<std::vector<int>>> map);
  // `experts` split evenly and contiguously over `ranks` in every one of `layers`.
  static ExpertPlacement even(int layers, int experts, int ranks);

  bool empty() const { return map_.empty(); }
  int ranks() const { return map_.empty() ? 1 : static_cast<int>(map_.front().size()); }
  const std::vector<int>& experts(int layer, int rank) const { return map_[layer][rank]; }
  int count(int layer, int rank) const { return static_cast<int>(map_[layer][rank].size()); }
  // Position of `rank`'s first expert in the layer's placement order.
  int first(int layer, int rank) const;
  // The layer's global experts in placement order.
  std::vector<int> order(int layer) const;
  // Whether every layer's placement order is 0, 1, ..., E-1 (relabelling changes nothing).
  bool in_id_order() const;
  // The most experts any rank holds of `layer`.
  int max_count(int layer) const;
  // "1,3" or "2-5" (consecutive ids) or "none".
  static std::string describe(const std::vector<int>& experts);

 private:
  std::vector<std::vector<std::vector<int>>> map_;
};

}  // namespace moeproxy
