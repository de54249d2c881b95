#pragma once
// The rank layout: which rank does what, derived once from the [parallel] keys and the
// number of ranks, with every check in one place so that errors name the key to change.

#include <string>

#include "moeproxy/core/config.hpp"
#include "moeproxy/core/model.hpp"

namespace moeproxy::parallel {

class RankLayout {
 public:
  // Throws InputError when the layout cannot run on `world_size` ranks.
  static RankLayout build(const RunConfig& cfg, int world_size);

  int world_size() const { return world_; }
  // Sequences rank `rank` runs.
  SequenceSlice sequences_of(int rank) const;
  // Rank holding global sequence `seq`.
  int owner_of_sequence(int seq) const;
  // "dp=4" style summary, for the report and the HDF5 file.
  std::string describe() const;
  // One line per rank: what it holds.
  std::string rank_map() const;

 private:
  RankLayout(const RunConfig& cfg, int world) : cfg_(cfg), world_(world) {}
  RunConfig cfg_;
  int world_;
};

}  // namespace moeproxy::parallel
