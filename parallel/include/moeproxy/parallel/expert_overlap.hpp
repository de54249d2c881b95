#pragma once
// Expert parallelism with the all-to-all-v overlapped by the experts' compute
// (parallel.ep_chunks = C > 1): every rank's rows for every destination are cut into C
// nearly equal pieces, chunk c being piece c of each. Chunk c+1's dispatch is posted while
// the experts compute chunk c, and chunk c's combine while they compute chunk c+1:
//
//   post D0
//   for c: post D(c+1); wait D(c); experts on chunk c; post U(c)
//   wait U(0 .. C-1)
//
// Each piece a rank receives lands in chunk c's slab of x_in [received, d], by source rank
// then local expert, so a chunk is one contiguous block for the grouped GEMMs; its outputs
// go back from the same slab of y_in straight into the rows of yp they came from. Every
// row meets its own expert exactly as without chunks: the results are the unchunked ones.
//
// Compressed (compression.hpp), the pieces travel as wire rows: xp is encoded once, each
// slab is decoded when its dispatch completes, each slab's outputs are encoded into wire rows
// of their own (the combines of several chunks are in flight at once), and yp is decoded
// when every combine is in.

#include <vector>

#include "moeproxy/core/exchange.hpp"
#include "moeproxy/core/metrics.hpp"
#include "moeproxy/parallel/compression.hpp"
#include "moeproxy/parallel/device_comm.hpp"

namespace moeproxy::parallel {

// One MoE step's traffic over the expert group, in rows.
struct ExpertTraffic {
  int local_experts = 1;
  std::vector<int> send_rows;         // [dest]: consecutive blocks of xp, in rank order
  std::vector<int> recv_expert_rows;  // [src * local_experts + e]: rows for local expert e
};

// The rows a rank's experts receive and their outputs (the exchange's own buffers, which the
// unchunked exchange uses for the same rows), and (compressed) the wire rows of both and of
// the rows coming back: grown to the largest layer's and kept across layers and passes.
struct ChunkBuffers {
  Matrix& x_in;
  Matrix& y_in;
  Matrix x_wire, y_wire, yp_wire;
};

// xp [kept, d] through the experts of the group `ep` into yp [kept, d] in `chunks` chunks
// (collective over `ep`), as `codec`'s wire rows, in `buffers`; communication is timed as
// Phase::dispatch of `layer`.
void run_chunked_experts(const ExecSpace& space, DeviceComm& ep, RowCodec& codec, const ExpertTraffic& traffic,
                         int chunks, const Matrix& xp, const Matrix& yp, const ExpertCompute& compute,
                         PhaseTable& timing, int layer, ChunkBuffers& buffers);

}  // namespace moeproxy::parallel
