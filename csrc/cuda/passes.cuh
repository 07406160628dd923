// CUDA kernels and launchers of the six full-size passes (cbam_fused/passes.py is the contract).
//
// This header is free of ATen runtime calls: launchers take a pass's argument struct (csrc/pass_args.h)
// and a cudaStream_t and return a cudaError_t, so the same code compiles with nvcc (csrc/cuda/pass_table.cuh,
// used by the glue passes_cuda.cu) and with the CPU emulator's cucc (tests/cudaemu/emu_shim.cu). Kernels
// are templated on the scalar type and the layout only; optional operands (a, s, the gradient groups)
// and the tie style are runtime arguments. Each pass has kernels of its own name (pool_hw_tiles,
// pool_hw_finish, ...), thin __global__ wrappers over the shared bodies, so that a launch log or a
// profile attributes every launch to its pass.
//
// Geometry. x is [N, C, P] with P = H*W, NCHW (p contiguous) or channels_last (c contiguous). Each
// sample is a matrix of Ls "rows" along the strided axis by Lc "columns" along the contiguous axis:
// NCHW: rows are channels, columns pixels; channels_last: rows are pixels, columns channels. A block
// (32 lanes x 8 warps) owns a tile of `rows` rows by 32*VEC columns (fewer for short rows, below);
// lane l loads the VEC columns [l*VEC, l*VEC+VEC) of each of its warp's rows with one 16-byte load
// when the address is aligned and the chunk is full, else element by element (the scalar tail).
// All element offsets are int64.
// The small [N, C] and [N, P] operands are loaded once per column chunk (those of the columns) and
// once per row (that of the row), not per element (see "the small operands" below).
//
// Reductions are deterministic two-stage reductions, no atomics: a reduction along the columns is
// a warp shuffle tree per row (four rows share one merge, warp_reduce_rows), along the rows a
// per-thread running value then an ordered pass over the 8 warps in shared memory (StatSmem); each
// tile writes one partial, and a finishing kernel folds the partials of every output in tile
// order. So any shape works (several blocks per (n, c) or (n, p)) and the result is bitwise the
// same on every run on one device (the tiles depend on its SM count).
//
// Byte budget (docs/design.md §3), |x| = bytes of x; small [N,C]/[N,P] tensors are noise, partials mostly (below):
//   forward  4|x|: pool_hw reads x (1), pool_c reads x (1), apply_gates reads x, writes y (2).
//   backward 5|x|: gate_grads reads gy and x (2), pool_c_grad_a reads x (1), input_grad reads gy and
//                  writes gx (2); it reads x as well only for split-style ties (then 6|x|).
// Partials add at most sizeof(Stat) bytes per 32*VEC elements of a row (along the columns) or per
// `rows` elements of a column (across the rows): about 3% of |x| for 16-bit pools with 256-row tiles.
// Tiles that reduce_tiling shortens to fill the device at small batches make more (up to about |x|
// with 8-row tiles), on tensors small enough to stay in L2. Short rows (at most 16*VEC elements:
// NCHW 7x7, channels_last with C <= 128 in 16-bit types) share a warp: groups of row_lanes lanes
// (8 or 16, at least 4) take a row each, so that a warp works on several rows at once
// (row_lanes_for). Rows that are 8- but not 16-byte aligned (NCHW 14x14 in 16-bit types: every
// other row) load and store 8 bytes at a time (Access); rows not 8-byte aligned, element by element.
#pragma once

#include <cuda_runtime.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "pass_args.h"

// Rows per reduction tile, 0 for the default (kMaxReduceRows). Only the emulator's test builds
// (tests/cudaemu/emu_shim.cu, asan_driver.cu) define it, to a variable of their own, to force several
// tiles per reduction on small shapes; the extension keeps the constant.
#ifndef CBAM_CUDA_TEST_REDUCE_ROWS
#define CBAM_CUDA_TEST_REDUCE_ROWS 0
#endif

namespace cbam_fused::cuda {

using index_t = std::int64_t;

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_of = typename AccOf<T>::type;

constexpr int kLanes = 32;
constexpr int kWarps = 8;
constexpr int kThreads = kLanes * kWarps;
constexpr int kMapRows = 32;        // rows per tile of the elementwise passes
constexpr int kMaxReduceRows = 256; // rows per tile of the reductions (bounds the partials' size)
constexpr int kCtasPerSm = 2;       // a pass's grid aims at this many CTAs per SM (shorten_to_fill)
constexpr int kMaxGridY = 65535;
constexpr int kRowUnroll = 4;       // rows whose loads a reduction thread issues before it folds the first

template <typename T> constexpr int vec_of() { return 16 / int(sizeof(T)); }  // elements per 16 bytes

// Lanes that share one row: 32, or fewer where a row is short (at most 16 * vec elements), so that
// a warp takes kLanes / row_lanes rows at once and keeps its lanes busy (NCHW 7x7, channels_last
// with few channels). At least kMinRowLanes, the rows a reduction thread merges at once
// (warp_reduce_rows needs as many lanes per row).
constexpr int kMinRowLanes = kRowUnroll;

inline int row_lanes_for(index_t cols_len, int vec) {
  int lanes = kLanes;
  while (lanes > kMinRowLanes && index_t(lanes / 2) * vec >= cols_len) lanes /= 2;
  return lanes;
}

constexpr int kLog2Lanes = 5;
static_assert(kLanes == 1 << kLog2Lanes, "kLog2Lanes");

inline int log2_of(int pow2) {
  int k = 0;
  while ((1 << k) < pow2) ++k;
  return k;
}

// Problem shape and tiling, computed on the host.
struct Tiling {
  index_t n = 0, c = 0, p = 0;
  bool channels_last = false;
  index_t rows_len = 0, cols_len = 0;  // Ls, Lc
  // log2 of the lanes per row (row_lanes_for): the device splits a lane's index with shifts, not divisions
  int row_lanes_log2 = kLog2Lanes;
  index_t rows = 0;                    // rows per tile, a multiple of kWarps
  index_t row_tiles = 0, col_tiles = 0;
  __host__ __device__ int row_lanes() const { return 1 << row_lanes_log2; }
  // rows the CTA's warps take in one step, one per lane group
  __host__ __device__ index_t step_rows() const { return index_t(kWarps) << (kLog2Lanes - row_lanes_log2); }
};

// t with tiles of `rows` rows; the columns stay as they are.
inline Tiling with_rows(Tiling t, index_t rows) {
  t.rows = rows;
  t.row_tiles = (t.rows_len + rows - 1) / rows;
  return t;
}

// The tiling of a shape into tiles of `rows` rows (of kLanes * vec columns, or row_lanes * vec).
template <typename T>
inline Tiling make_tiling(index_t n, index_t c, index_t p, bool channels_last, index_t rows) {
  Tiling t;
  t.n = n; t.c = c; t.p = p; t.channels_last = channels_last;
  t.rows_len = channels_last ? p : c;
  t.cols_len = channels_last ? c : p;
  t.row_lanes_log2 = log2_of(row_lanes_for(t.cols_len, vec_of<T>()));
  const index_t tile_cols = index_t(t.row_lanes()) * vec_of<T>();
  t.col_tiles = (t.cols_len + tile_cols - 1) / tile_cols;
  return with_rows(t, rows);
}

// Rows per reduction tile before reduce_tiling shortens them: up to kMaxReduceRows rounded up to
// whole steps of the CTA's warps (`step` rows), or the test override rounded up to whole warps.
inline index_t reduce_rows(index_t rows_len, index_t step) {
  const index_t max_rows = CBAM_CUDA_TEST_REDUCE_ROWS;
  const index_t cap = max_rows > 0 ? max_rows : kMaxReduceRows;
  const index_t unit = max_rows > 0 ? kWarps : step;
  const index_t r = rows_len < cap ? rows_len : cap;
  return ((r + unit - 1) / unit) * unit;
}

// A thread's place in its warp's rows: lane group `group` (of kLanes / row_lanes) takes row
// group of each step, lane `lane` of that group the columns [lane * vec, lane * vec + vec).
struct RowLane {
  int width;   // lanes per row
  int group;   // which of the warp's rows of a step
  int lane;    // lane within the row
  int groups;  // rows per warp and step
};

__device__ inline RowLane row_lane(const Tiling& t, int lane) {
  const int k = t.row_lanes_log2;
  return {1 << k, lane >> k, lane & ((1 << k) - 1), kLanes >> k};
}

// ------------------------------------------------------------------------------ partial statistics
template <typename A> struct SumStat {
  A sum;
  __host__ __device__ static SumStat identity() { return {A(0)}; }
  __device__ void add(A v, int) { sum += v; }
  __device__ void merge(const SumStat& o) { sum += o.sum; }
  __device__ SumStat shfl_xor(int mask) const { return {__shfl_xor_sync(0xffffffffu, sum, mask)}; }
};

// Sum, max, first argmax and count of maxima. NaN wins the max and the first NaN is the argmax (its
// count is 1), as torch.max. The merge is order-free for max/argmax/count (ties keep the smaller
// index), and the sums are folded in a fixed order by the callers.
template <typename A> struct PoolStat {
  A sum, max;
  int arg, count;
  __host__ __device__ static PoolStat identity() { return {A(0), -A(INFINITY), 0x7fffffff, 0}; }
  __device__ void add(A v, int i) {
    sum += v;
    merge_max(v, i, 1);
  }
  __device__ void merge(const PoolStat& o) {
    sum += o.sum;
    if (o.count > 0) merge_max(o.max, o.arg, o.count);
  }
  __device__ void merge_max(A v, int i, int cnt) {
    bool nan_here = max != max, nan_there = v != v;
    if (nan_here || nan_there) {
      if (nan_here && nan_there) { arg = i < arg ? i : arg; count = 1; }
      else if (nan_there) { max = v; arg = i; count = 1; }
    } else if (v > max) {
      max = v; arg = i; count = cnt;
    } else if (v == max) {
      arg = i < arg ? i : arg; count += cnt;
    }
  }
  __device__ PoolStat shfl_xor(int mask) const {
    return {__shfl_xor_sync(0xffffffffu, sum, mask), __shfl_xor_sync(0xffffffffu, max, mask),
            __shfl_xor_sync(0xffffffffu, arg, mask), __shfl_xor_sync(0xffffffffu, count, mask)};
  }
};

// Merges R rows' per-lane stats over each group of `width` lanes (a power of two, >= R) at once;
// returns, in every lane, row (lane % width) / (width / R) of its group complete. A transpose: at the
// first log2(R) steps (xor width/2, width/4, ...) a lane keeps the half of its rows whose index bit
// matches its lane bit and receives its partner's copy of them, so R rows cost R-1 + log2(width/R)
// shuffles per stat field (6 for R = 4 over 32 lanes), not R log2(width). Every row is still the
// pairwise tree of its group's lanes, pairs (l, l ^ width/2) first, then ^ width/4, ...: the tree a
// shfl_down reduction forms in the group's first lane, and addition commutes, so the sums are
// bitwise those. The shuffles span the whole warp; every lane must call it.
template <int R, class Stat> __device__ Stat warp_reduce_rows(Stat (&s)[R], int lane, int width) {
  static_assert(R >= 1 && (R & (R - 1)) == 0 && R <= kMinRowLanes, "R is a power of two, at most kMinRowLanes");
  int delta = width / 2;
#pragma unroll
  for (int half = R / 2; half >= 1; half /= 2, delta /= 2) {
    const bool upper = (lane & delta) != 0;
#pragma unroll
    for (int i = 0; i < half; ++i) {
      Stat keep = upper ? s[i + half] : s[i];
      const Stat give = upper ? s[i] : s[i + half];
      keep.merge(give.shfl_xor(delta));
      s[i] = keep;
    }
  }
  Stat v = s[0];
#pragma unroll
  for (int d = kLanes / (2 * R); d > 0; d /= 2)  // unrolled over the widest group; the first steps skip narrower ones
    if (d <= delta) v.merge(v.shfl_xor(d));
  return v;
}

// The per-column stats of a tile's 8 warps in shared memory, for the ordered pass over the warps in
// reduce_tiles (per warp, the stats of each lane group, whose columns repeat: lane g*width + l holds
// columns l*V.. of the group's rows). Column l*V+k of lane l lives in slot k*kLanes + (l ^ k*(kLanes/V)), as 32-bit words
// in separate planes (word w of every slot, then word w+1), so that every access is one word per
// lane on 32 distinct banks: the stores (fixed k, lanes 0..31: a permutation of one row of 32 slots)
// and the loads (32 consecutive columns: kLanes/V lanes by V values of k; the xor puts each k in its
// own group of kLanes/V banks). Lane-major slots (l*V+k) put V lanes on one bank.
template <class Stat, int V> struct StatSmem {
  static_assert(sizeof(Stat) % 4 == 0 && kLanes % V == 0, "stats are whole 32-bit words");
  static constexpr int kWords = int(sizeof(Stat) / 4);
  std::uint32_t word[kWords][kWarps][kLanes * V];
  __device__ static int slot(int lane, int k) { return k * kLanes + (lane ^ (k * (kLanes / V))); }
  __device__ void put(int warp, int at, const Stat& s) {
    std::uint32_t w[kWords];
    memcpy(w, &s, sizeof s);
#pragma unroll
    for (int i = 0; i < kWords; ++i) word[i][warp][at] = w[i];
  }
  __device__ Stat get(int warp, int at) const {
    std::uint32_t w[kWords];
#pragma unroll
    for (int i = 0; i < kWords; ++i) w[i] = word[i][warp][at];
    Stat s;
    memcpy(&s, w, sizeof s);
    return s;
  }
};

// -------------------------------------------------------------------------------- vector load/store
template <typename T, int V> struct alignas(16) Pack { T v[V]; };

template <typename T> __device__ inline bool aligned16(const T* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0;
}

// How a chunk's 16 bytes are accessed: as one 16-byte word (full and 16-byte aligned), as two
// 8-byte halves (full and 8- but not 16-byte aligned: NCHW 14x14 rows in 16-bit types, every other
// row), or element by element (the rest, and every partial chunk). Ordered from narrowest.
enum class Access { kElements, kHalves, kWhole };

template <typename T> __device__ inline Access access_of(const T* p) {
  const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(p);
  return (a & 15u) == 0 ? Access::kWhole : (a & 7u) == 0 ? Access::kHalves : Access::kElements;
}

__device__ inline Access narrower(Access a, Access b) { return a < b ? a : b; }

// The access for `cnt` elements at p.
template <typename T, int V> __device__ inline Access chunk_access(const T* p, int cnt) {
  return cnt == V ? access_of(p) : Access::kElements;
}

// The 16 bytes of a chunk as stored, as four 32-bit words, read as `how` says (the caller found the
// chunk full for kWhole and kHalves); elements past cnt read as 0. The reductions load several rows'
// words before they convert and fold the first (reduce_tiles), with one `how` for all of them, so
// that these loads are issued together and are in flight together; as words, 16-bit elements are
// not split out of the loaded registers before use.
template <typename T, int V>
__device__ inline uint4 load_words(const T* __restrict__ p, int cnt, Access how) {
  uint4 raw;
  if (how == Access::kWhole) {
    raw = *reinterpret_cast<const uint4*>(p);
  } else if (how == Access::kHalves) {
    const uint2 lo = reinterpret_cast<const uint2*>(p)[0], hi = reinterpret_cast<const uint2*>(p)[1];
    raw = make_uint4(lo.x, lo.y, hi.x, hi.y);
  } else {
    Pack<T, V> pk;
#pragma unroll
    for (int k = 0; k < V; ++k) pk.v[k] = k < cnt ? p[k] : T(0);
    memcpy(&raw, &pk, sizeof raw);
  }
  return raw;
}

// Words' elements as acc values (the conversion is exact: the same values as load_chunk's).
template <typename T, int V, typename A>
__device__ inline void unpack(const uint4& raw, A (&out)[V]) {
  Pack<T, V> pk;
  memcpy(&pk, &raw, sizeof raw);
#pragma unroll
  for (int k = 0; k < V; ++k) out[k] = static_cast<A>(pk.v[k]);
}

// The words of the M full-size tensors a reduction op reads, for one chunk.
template <int M> struct Loaded { uint4 w[M]; };

// Loads `cnt` (<= V) elements at p as acc values; lanes past cnt read as 0.
template <typename T, int V, typename A>
__device__ inline void load_chunk(const T* p, int cnt, A (&out)[V]) {
  unpack<T, V>(load_words<T, V>(p, cnt, chunk_access<T, V>(p, cnt)), out);
}

// Stores `cnt` (<= V) elements at p, accessed as chunk_access says.
template <typename T, int V, typename A>
__device__ inline void store_chunk(T* p, int cnt, const A (&in)[V]) {
  const Access how = chunk_access<T, V>(p, cnt);
  if (how != Access::kElements) {
    Pack<T, V> pk;
#pragma unroll
    for (int k = 0; k < V; ++k) pk.v[k] = static_cast<T>(in[k]);
    uint4 raw;  // one 16-byte store; through a plain assignment nvcc was seen to split it into scalars
    memcpy(&raw, &pk, sizeof raw);
    if (how == Access::kWhole) {
      __stwb(reinterpret_cast<uint4*>(p), raw);
    } else {
      __stwb(reinterpret_cast<uint2*>(p), make_uint2(raw.x, raw.y));
      __stwb(reinterpret_cast<uint2*>(p) + 1, make_uint2(raw.z, raw.w));
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k)
      if (k < cnt) p[k] = static_cast<T>(in[k]);
  }
}

// Where a chunk lives: sample n, row r, first column col, `cnt` valid columns, element offset off.
// chan(k) / pix(k) give the channel and pixel of column col+k.
template <bool CL> struct Chunk {
  index_t n, r, col, off;
  int cnt;
  __device__ index_t chan(int k) const { return CL ? col + k : r; }
  __device__ index_t pix(int k) const { return CL ? r : col + k; }
};

// ------------------------------------------------------------------------------ the small operands
// The [N, C] and [N, P] operands (a, s, u, v, the tie's max or argmax) are loaded once per tile, not
// per element: those of the columns (per pixel in NCHW, per channel in channels_last) once per
// column chunk, before the row loop, and kept in registers; that of a row (one value) once per row.
// Loaded per element, they were scalar, L1-bound loads: up to ten per element in input_grad.

// `cnt` (<= W) values at p, the rest 0: 16-byte loads (8-byte for two ints) when W > 1, the chunk is
// full and p aligned for them, else one by one. Never reads past cnt.
template <typename E, int W>
__device__ inline void load_small(const E* p, int cnt, E (&out)[W]) {
  constexpr int kBytes = W * int(sizeof(E));
  if constexpr (W > 1 && kBytes % 16 == 0) {
    if (cnt == W && aligned16(p)) {
#pragma unroll
      for (int i = 0; i < kBytes / 16; ++i) {
        const uint4 w = reinterpret_cast<const uint4*>(p)[i];
        memcpy(&out[i * int(16 / sizeof(E))], &w, 16);
      }
      return;
    }
  } else if constexpr (W > 1 && kBytes == 8) {
    if (cnt == W && (reinterpret_cast<std::uintptr_t>(p) & 7u) == 0) {
      const uint2 w = *reinterpret_cast<const uint2*>(p);
      memcpy(&out[0], &w, 8);
      return;
    }
  }
#pragma unroll
  for (int k = 0; k < W; ++k) out[k] = k < cnt ? p[k] : E(0);
}

// The small operands of W consecutive channels (a, u_hw, v_hw, the tie of the pixel pool) or pixels
// (s, u_c, v_c, the tie of the channel pool) of one sample. The tie is max (split-style ties) or
// argmax (index-style), both kept as the bits of an acc value: only one is set, and one register
// array serves both. Unset operands read as 0 and are not used.
template <typename A, int W> struct Operands {
  using Bits = std::conditional_t<sizeof(A) == 8, std::uint64_t, std::uint32_t>;
  A gate[W], u[W], v[W];
  Bits tie[W];
  __device__ A max(int k) const { A m; memcpy(&m, &tie[k], sizeof m); return m; }
  __device__ index_t arg(int k) const { return index_t(int(tie[k])); }
};

// Loads the operands at element `at` of [N, C] or [N, P] (cnt of them). u, v and the tie are read
// only when u is set (a gradient group), the tie's max for split-style ties, else its argmax.
template <typename A, int W>
__device__ inline Operands<A, W> load_operands(const A* gate, const A* u, const A* v, const A* max, const int* arg,
                                               bool split, index_t at, int cnt) {
  Operands<A, W> o;
#pragma unroll
  for (int k = 0; k < W; ++k) { o.gate[k] = o.u[k] = o.v[k] = A(0); o.tie[k] = 0; }
  if (gate != nullptr) load_small(gate + at, cnt, o.gate);
  if (u != nullptr) {
    load_small(u + at, cnt, o.u);
    load_small(v + at, cnt, o.v);
    if (split) {
      A m[W];
      load_small(max + at, cnt, m);
      memcpy(&o.tie, &m, sizeof m);
    } else {
      int i[W];
      load_small(arg + at, cnt, i);
#pragma unroll
      for (int k = 0; k < W; ++k) o.tie[k] = typename Operands<A, W>::Bits(unsigned(i[k]));
    }
  }
  return o;
}

// The operands of an op that reads none on a side: all unset (0), never read.
template <typename A, int W> __device__ inline Operands<A, W> no_operands() {
  return load_operands<A, W>(nullptr, nullptr, nullptr, nullptr, nullptr, false, 0, 0);
}

// A row's operands (one value), as W columns' (the same value in each), so that values() reads
// both sides alike; the copies cost no registers.
template <typename A, int W> __device__ inline Operands<A, W> broadcast(const Operands<A, 1>& one) {
  Operands<A, W> o;
#pragma unroll
  for (int k = 0; k < W; ++k) {
    o.gate[k] = one.gate[0]; o.u[k] = one.u[0]; o.v[k] = one.v[0]; o.tie[k] = one.tie[0];
  }
  return o;
}

// The operands of a chunk's columns (V of them, once per column chunk: `cols`) and of its row
// (`row`, once per row), from the op's channel_operands / pixel_operands: which side is the
// columns follows from the layout.
template <bool CL, int V, class Op>
__device__ inline auto col_operands(const Op& op, index_t n, index_t col, int cnt) {
  if constexpr (CL) return op.template channel_operands<V>(n, col, cnt);
  else return op.template pixel_operands<V>(n, col, cnt);
}

template <bool CL, int V, class Op> __device__ inline auto row_operands(const Op& op, const Chunk<CL>& ch) {
  if constexpr (CL) return broadcast<typename Op::A, V>(op.template pixel_operands<1>(ch.n, ch.r, 1));
  else return broadcast<typename Op::A, V>(op.template channel_operands<1>(ch.n, ch.r, 1));
}

// ------------------------------------------------------------------------------------- reductions
// A reduction op loads, per chunk, the 16 bytes of each full-size tensor it reads (`load`, into its
// `Raw`), then fills from them and the small operands (those of the columns from `cols`, once per
// column chunk) the values reduced over pixels (result per channel, `over_p`)
// and/or over channels (result per pixel, `over_c`). In NCHW "over pixels" runs along the columns
// and "over channels" along the rows; in channels_last the other way round. The body of every
// pass's *_tiles reduction kernel.
template <typename T, bool CL, class Op>
__device__ __forceinline__ void reduce_tiles(const Op& op, const Tiling& t, typename Op::Stat* row_part,
                                             typename Op::Stat* col_part) {
  using A = acc_of<T>;
  using Stat = typename Op::Stat;
  constexpr int V = vec_of<T>();
  constexpr bool kAlongCols = CL ? Op::kOverC : Op::kOverP;  // reduced within a row
  constexpr bool kAlongRows = CL ? Op::kOverP : Op::kOverC;  // reduced across rows
  const int lane = threadIdx.x, warp = threadIdx.y;
  const RowLane rl = row_lane(t, lane);
  const index_t n = blockIdx.x / t.row_tiles, row_tile = blockIdx.x % t.row_tiles;
  const index_t r0 = row_tile * t.rows;
  const index_t r1 = r0 + t.rows < t.rows_len ? r0 + t.rows : t.rows_len;
  const index_t stride = t.step_rows();  // between a thread's successive rows
  for (index_t col_tile = blockIdx.y; col_tile < t.col_tiles; col_tile += gridDim.y) {
    const index_t col = col_tile * (index_t(rl.width) * V) + index_t(rl.lane) * V;
    const index_t left = t.cols_len - col;
    const int cnt = left <= 0 ? 0 : (left < V ? int(left) : V);
    const auto cols = col_operands<CL, V>(op, n, col, cnt);  // once per column chunk
    Stat down[V];  // per column, across this thread's rows
#pragma unroll
    for (int k = 0; k < V; ++k) down[k] = Stat::identity();
    const auto chunk = [&](index_t r) {  // a row of the tile
      return Chunk<CL>{n, r, col, (n * t.rows_len + r) * t.cols_len + col, cnt};
    };
    // rows past the tile's end (the last step's) are empty chunks: they load nothing and fold nothing
    const auto chunk_or_empty = [&](index_t r) {
      Chunk<CL> ch = chunk(r);
      if (r >= r1) ch.cnt = 0;
      return ch;
    };
    // One row as loaded: its columns into this lane's `across` (within the row) and into `down`.
    const auto fold = [&](const Chunk<CL>& ch, const typename Op::Raw& raw, Stat& across) {
      A over_p[V], over_c[V];
      if (ch.cnt > 0) op.values(ch, cols, raw, over_p, over_c);
      if constexpr (kAlongCols) {
#pragma unroll
        for (int k = 0; k < V; ++k)
          if (k < ch.cnt) across.add(CL ? over_c[k] : over_p[k], int(col + k));
      }
      if constexpr (kAlongRows) {
#pragma unroll
        for (int k = 0; k < V; ++k)
          if (k < ch.cnt) down[k].add(CL ? over_p[k] : over_c[k], int(ch.r));
      }
    };
    // The first m rows of the thread's group at r (r, r + stride, ...): one merge over the lane group
    // for all of them (warp_reduce_rows); the group's lane u * (width / kRowUnroll) writes row u's
    // partial, where the row is in the tile.
    const auto write_rows = [&](index_t r, Stat (&across)[kRowUnroll], int m) {
      const Stat s = warp_reduce_rows(across, lane, rl.width);
      const int per_row = rl.width / kRowUnroll, u = rl.lane / per_row;
      const index_t row = r + index_t(u) * stride;
      if (rl.lane % per_row == 0 && u < m && row < r1)
        row_part[(n * t.rows_len + row) * t.col_tiles + col_tile] = s;
    };
    // The warp takes rows in steps of `groups` consecutive rows, a lane group each: step i of warp w
    // is rows r0 + (i * kWarps + w) * groups + [0, groups). A thread's rows r, r + stride, ... go in
    // groups of kRowUnroll: their loads are issued first, then the rows are folded one after another
    // in row order, as one at a time would (the same sums, bitwise), and merged over the lane group
    // together. The steps left over (at most kRowUnroll, the last maybe partly past the tile) are
    // loaded one row at a time (fewer registers) and merged together. A group's rows are accessed
    // alike, the narrowest way one of them needs (Access); that costs no wide loads, since a thread's
    // rows lie a multiple of 8 rows apart (8 * Lc elements, a multiple of 16 bytes): aligned alike.
    index_t base = r0 + index_t(warp) * rl.groups;  // the warp's first row of a step (warp-uniform)
    const index_t r_of = index_t(rl.group);
    for (; base + (kRowUnroll - 1) * stride + (rl.groups - 1) < r1; base += kRowUnroll * stride) {
      const index_t r = base + r_of;
      Access how = cnt == V ? Access::kWhole : Access::kElements;
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) how = narrower(how, op.access(chunk(r + u * stride).off));
      typename Op::Raw raw[kRowUnroll];
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) raw[u] = op.load(chunk(r + u * stride), how);
      Stat across[kRowUnroll];
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
        across[u] = Stat::identity();
        fold(chunk(r + u * stride), raw[u], across[u]);
      }
      if constexpr (kAlongCols) write_rows(r, across, kRowUnroll);
    }
    if (base < r1) {  // the short group: m steps, 1 <= m <= kRowUnroll, one row at a time, merged together
      const int m = int((r1 - base + stride - 1) / stride);
      const index_t r = base + r_of;
      Stat across[kRowUnroll];
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) across[u] = Stat::identity();
      for (int u = 0; u < m; ++u) {
        const Chunk<CL> ch = chunk_or_empty(r + u * stride);
        Stat a = Stat::identity();
        fold(ch, op.load(ch, ch.cnt == V ? op.access(ch.off) : Access::kElements), a);
#pragma unroll
        for (int i = 0; i < kRowUnroll; ++i)  // constant indices keep `across` in registers
          if (i == u) across[i] = a;
      }
      if constexpr (kAlongCols) write_rows(r, across, m);
    }
    if constexpr (kAlongRows) {
      __shared__ StatSmem<Stat, V> smem;
#pragma unroll
      for (int k = 0; k < V; ++k) smem.put(warp, StatSmem<Stat, V>::slot(lane, k), down[k]);
      __syncthreads();
      // column j of the tile: its threads' partials folded in a fixed order, warp by warp and, within a
      // warp, lane group by lane group
      for (int j = warp * kLanes + lane; j < rl.width * V; j += kThreads) {
        const index_t cj = col_tile * (index_t(rl.width) * V) + j;
        if (cj < t.cols_len && r0 < r1) {
          Stat s = smem.get(0, StatSmem<Stat, V>::slot(j / V, j % V));
          for (int i = 1; i < kWarps * rl.groups; ++i)  // i = w * groups + g: warp w, lane group g
            s.merge(smem.get(i / rl.groups, StatSmem<Stat, V>::slot(i % rl.groups * rl.width + j / V, j % V)));
          col_part[(n * t.cols_len + cj) * t.row_tiles + row_tile] = s;
        }
      }
      __syncthreads();  // smem is reused by the next column tile
    }
  }
}

// Folds the `tiles` partials of each of `outputs` results in tile order (bodies of the *_finish kernels);
// `block` is the block's index within the blocks doing this job. With `accumulate`, out += the sum.
template <typename A>
__device__ __forceinline__ void finish_sum(const SumStat<A>* part, index_t tiles, index_t outputs, A* out,
                                           index_t block, bool accumulate) {
  const index_t i = block * blockDim.x + threadIdx.x;
  if (i >= outputs) return;
  SumStat<A> s = part[i * tiles];
  for (index_t t = 1; t < tiles; ++t) s.merge(part[i * tiles + t]);
  out[i] = accumulate ? out[i] + s.sum : s.sum;
}

// arg and count may be null (not wanted).
template <typename A>
__device__ __forceinline__ void finish_pool(const PoolStat<A>* part, index_t tiles, index_t outputs, A len,
                                            A* mean, A* max, int* arg, int* count) {
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= outputs) return;
  PoolStat<A> s = part[i * tiles];
  for (index_t t = 1; t < tiles; ++t) s.merge(part[i * tiles + t]);
  mean[i] = s.sum / len;  // a division, as torch's mean
  max[i] = s.max;
  if (arg != nullptr) arg[i] = s.arg;
  if (count != nullptr) count[i] = s.count;
}

// -------------------------------------------------------------------------------- the reduction ops
// pool_hw: pool x over pixels (result per channel).
template <typename T, bool CL> struct PoolHwOp {
  using A = acc_of<T>;
  using Stat = PoolStat<A>;
  static constexpr bool kOverP = true, kOverC = false;
  using Raw = Loaded<1>;
  const T* x;
  __device__ Access access(index_t off) const { return access_of(x + off); }
  __device__ Raw load(const Chunk<CL>& ch, Access how) const {
    return {{load_words<T, vec_of<T>()>(x + ch.off, ch.cnt, how)}};
  }
  template <int W> __device__ Operands<A, W> channel_operands(index_t, index_t, int) const { return no_operands<A, W>(); }
  template <int W> __device__ Operands<A, W> pixel_operands(index_t, index_t, int) const { return no_operands<A, W>(); }
  template <int V>
  __device__ void values(const Chunk<CL>&, const Operands<A, V>&, const Raw& raw, A (&over_p)[V], A (&)[V]) const {
    unpack<T>(raw.w[0], over_p);
  }
};

// pool_c: pool acc(x) * a over channels (result per pixel); a may be null (all ones).
template <typename T, bool CL> struct PoolCOp {
  using A = acc_of<T>;
  using Stat = PoolStat<A>;
  static constexpr bool kOverP = false, kOverC = true;
  using Raw = Loaded<1>;
  const T* x;
  const A* a;
  index_t c;
  __device__ Access access(index_t off) const { return access_of(x + off); }
  __device__ Raw load(const Chunk<CL>& ch, Access how) const {
    return {{load_words<T, vec_of<T>()>(x + ch.off, ch.cnt, how)}};
  }
  template <int W> __device__ Operands<A, W> channel_operands(index_t n, index_t c0, int cnt) const {
    return load_operands<A, W>(a, nullptr, nullptr, nullptr, nullptr, false, n * c + c0, cnt);
  }
  template <int W> __device__ Operands<A, W> pixel_operands(index_t, index_t, int) const { return no_operands<A, W>(); }
  template <int V>
  __device__ void values(const Chunk<CL>& ch, const Operands<A, V>& cols, const Raw& raw, A (&)[V],
                         A (&over_c)[V]) const {
    unpack<T>(raw.w[0], over_c);
    if (a != nullptr) {
      const Operands<A, V> row = row_operands<CL, V>(*this, ch);
      const Operands<A, V>& chan = CL ? cols : row;
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (k < ch.cnt) over_c[k] = over_c[k] * chan.gate[k];
    }
  }
};

// gate_grads: ga = sum_p gy*x*s (per channel), gs = sum_c gy*x*a (per pixel), each when wanted.
template <typename T, bool CL> struct GateGradsOp {
  using A = acc_of<T>;
  using Stat = SumStat<A>;
  static constexpr bool kOverP = true, kOverC = true;
  using Raw = Loaded<2>;  // gy, x
  const T *gy, *x;
  const A *a, *s;
  index_t c, p;
  __device__ Access access(index_t off) const { return narrower(access_of(gy + off), access_of(x + off)); }
  __device__ Raw load(const Chunk<CL>& ch, Access how) const {
    return {{load_words<T, vec_of<T>()>(gy + ch.off, ch.cnt, how),
             load_words<T, vec_of<T>()>(x + ch.off, ch.cnt, how)}};
  }
  template <int W> __device__ Operands<A, W> channel_operands(index_t n, index_t c0, int cnt) const {
    return load_operands<A, W>(a, nullptr, nullptr, nullptr, nullptr, false, n * c + c0, cnt);
  }
  template <int W> __device__ Operands<A, W> pixel_operands(index_t n, index_t p0, int cnt) const {
    return load_operands<A, W>(s, nullptr, nullptr, nullptr, nullptr, false, n * p + p0, cnt);
  }
  template <int V>
  __device__ void values(const Chunk<CL>& ch, const Operands<A, V>& cols, const Raw& raw, A (&over_p)[V],
                         A (&over_c)[V]) const {
    A g[V], v[V];
    unpack<T>(raw.w[0], g);
    unpack<T>(raw.w[1], v);
    const Operands<A, V> row = row_operands<CL, V>(*this, ch);
    const Operands<A, V>&chan = CL ? cols : row, &pix = CL ? row : cols;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const A gyx = g[k] * v[k];
      over_p[k] = s != nullptr && k < ch.cnt ? gyx * pix.gate[k] : gyx;
      over_c[k] = a != nullptr && k < ch.cnt ? gyx * chan.gate[k] : gyx;
    }
  }
};

// pool_c_grad_a: ga += sum_p acc(x) * (u[p] + T(c,p) * v[p]), T the tie of the channel pool of x*a:
// max is read for split-style ties, arg for index-style ones (the other is not read, and may be null).
template <typename T, bool CL> struct PoolCGradAOp {
  using A = acc_of<T>;
  using Stat = SumStat<A>;
  static constexpr bool kOverP = true, kOverC = false;
  using Raw = Loaded<1>;
  const T* x;
  const A *a, *u, *v, *max;
  const int* arg;
  bool split;
  index_t c, p;
  __device__ Access access(index_t off) const { return access_of(x + off); }
  __device__ Raw load(const Chunk<CL>& ch, Access how) const {
    return {{load_words<T, vec_of<T>()>(x + ch.off, ch.cnt, how)}};
  }
  // a is read only for split-style ties (the tie compares acc(x) * a with max)
  template <int W> __device__ Operands<A, W> channel_operands(index_t n, index_t c0, int cnt) const {
    return load_operands<A, W>(split ? a : nullptr, nullptr, nullptr, nullptr, nullptr, split, n * c + c0, cnt);
  }
  template <int W> __device__ Operands<A, W> pixel_operands(index_t n, index_t p0, int cnt) const {
    return load_operands<A, W>(nullptr, u, v, max, arg, split, n * p + p0, cnt);
  }
  template <int V>
  __device__ void values(const Chunk<CL>& ch, const Operands<A, V>& cols, const Raw& raw, A (&over_p)[V],
                         A (&)[V]) const {
    A xv[V];
    unpack<T>(raw.w[0], xv);
    const Operands<A, V> row = row_operands<CL, V>(*this, ch);
    const Operands<A, V>&chan = CL ? cols : row, &pix = CL ? row : cols;
    if constexpr (CL) {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const bool tie = k < ch.cnt && (split ? xv[k] * chan.gate[k] == pix.max(k) : ch.col + k == pix.arg(k));
        over_p[k] = xv[k] * (pix.u[k] + A(tie ? 1 : 0) * pix.v[k]);
      }
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        if (k >= ch.cnt) { over_p[k] = A(0); continue; }
        const bool tie = split ? xv[k] * chan.gate[k] == pix.max(k) : ch.r == pix.arg(k);
        over_p[k] = xv[k] * (pix.u[k] + A(tie ? 1 : 0) * pix.v[k]);
      }
    }
  }
};

// ----------------------------------------------------------------------------- elementwise passes
// The body of the elementwise passes' *_tiles kernels: per column chunk, `cols` (the columns'
// small operands, loaded before the row loop), then one row at a time `values` from them. Rows go
// to lane groups as in reduce_tiles (several rows per warp where rows are short).
template <typename T, bool CL, class Op>
__device__ __forceinline__ void map_tiles(const Op& op, const Tiling& t, T* out) {
  using A = acc_of<T>;
  constexpr int V = vec_of<T>();
  const RowLane rl = row_lane(t, threadIdx.x);
  const int first = int(threadIdx.y) * rl.groups + rl.group;  // the thread's first row in the tile
  const index_t n = blockIdx.x / t.row_tiles, r0 = (blockIdx.x % t.row_tiles) * t.rows;
  const index_t r1 = r0 + t.rows < t.rows_len ? r0 + t.rows : t.rows_len;
  for (index_t col_tile = blockIdx.y; col_tile < t.col_tiles; col_tile += gridDim.y) {
    const index_t col = col_tile * (index_t(rl.width) * V) + index_t(rl.lane) * V;
    const index_t left = t.cols_len - col;
    if (left <= 0) continue;
    const int cnt = left < V ? int(left) : V;
    const auto cols = col_operands<CL, V>(op, n, col, cnt);  // once per column chunk
    int from = first;
    // kept from being hoisted out of the column loop as a 64-bit row, which ptxas spilled in
    // input_grad's 16-bit kernels (at their register cap, kInputGradMinCtas)
    asm volatile("" : "+r"(from));
    for (index_t r = r0 + from; r < r1; r += t.step_rows()) {
      Chunk<CL> ch{n, r, col, (n * t.rows_len + r) * t.cols_len + col, cnt};
      A y[V];
      op.values(ch, cols, y);
      store_chunk(out + ch.off, cnt, y);
    }
  }
}

// apply_gates: y = (acc(x) * a[c]) * s[p]; a, s may be null.
template <typename T, bool CL> struct ApplyGatesOp {
  using A = acc_of<T>;
  const T* x;
  const A *a, *s;
  index_t c, p;
  template <int W> __device__ Operands<A, W> channel_operands(index_t n, index_t c0, int cnt) const {
    return load_operands<A, W>(a, nullptr, nullptr, nullptr, nullptr, false, n * c + c0, cnt);
  }
  template <int W> __device__ Operands<A, W> pixel_operands(index_t n, index_t p0, int cnt) const {
    return load_operands<A, W>(s, nullptr, nullptr, nullptr, nullptr, false, n * p + p0, cnt);
  }
  template <int V> __device__ void values(const Chunk<CL>& ch, const Operands<A, V>& cols, A (&y)[V]) const {
    const Operands<A, V> row = row_operands<CL, V>(*this, ch);
    const Operands<A, V>&chan = CL ? cols : row, &pix = CL ? row : cols;
    load_chunk(x + ch.off, ch.cnt, y);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      if (k >= ch.cnt) continue;
      if (a != nullptr) y[k] = y[k] * chan.gate[k];
      if (s != nullptr) y[k] = y[k] * pix.gate[k];
    }
  }
};

// input_grad: gx = A*(gy*S + u_c[p] + Tc*v_c[p]) + u_hw[c] + Thw*v_hw[c] (see passes.py). Either
// group (u_c.. or u_hw..) may be null; x is read only for split-style ties.
template <typename T, bool CL> struct InputGradOp {
  using A = acc_of<T>;
  const T *gy, *x;
  const A *a, *s;
  const A *u_c, *v_c, *max_c;
  const int* arg_c;
  const A *u_hw, *v_hw, *max_hw;
  const int* arg_hw;
  bool split;
  index_t c, p;
  template <int W> __device__ Operands<A, W> channel_operands(index_t n, index_t c0, int cnt) const {
    return load_operands<A, W>(a, u_hw, v_hw, max_hw, arg_hw, split, n * c + c0, cnt);
  }
  template <int W> __device__ Operands<A, W> pixel_operands(index_t n, index_t p0, int cnt) const {
    return load_operands<A, W>(s, u_c, v_c, max_c, arg_c, split, n * p + p0, cnt);
  }
  template <int V> __device__ void values(const Chunk<CL>& ch, const Operands<A, V>& cols, A (&g)[V]) const {
    const Operands<A, V> row = row_operands<CL, V>(*this, ch);
    const Operands<A, V>&chan = CL ? cols : row, &pix = CL ? row : cols;  // a, u_hw, ...; s, u_c, ...
    A xv[V];
    load_chunk(gy + ch.off, ch.cnt, g);
    if (split) load_chunk(x + ch.off, ch.cnt, xv);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      if (k >= ch.cnt) continue;
      const A av = a != nullptr ? chan.gate[k] : A(1);
      if (s != nullptr) g[k] = g[k] * pix.gate[k];
      if (u_c != nullptr) {
        const bool tie = split ? xv[k] * av == pix.max(k) : ch.chan(k) == pix.arg(k);
        g[k] = g[k] + pix.u[k] + A(tie ? 1 : 0) * pix.v[k];
      }
      if (a != nullptr) g[k] = g[k] * av;
      if (u_hw != nullptr) {
        const bool tie = split ? xv[k] == chan.max(k) : ch.pix(k) == chan.arg(k);
        g[k] = g[k] + chan.u[k] + A(tie ? 1 : 0) * chan.v[k];
      }
    }
  }
};

// ------------------------------------------------------------------------- the kernels, per pass
// Thin wrappers over the shared bodies: one name per pass and role.

// Resident CTAs per SM that ptxas must allow in input_grad (__launch_bounds__): its 16-bit column
// operands in registers took it from 3 to 2 otherwise. No spills at this bound on the checked
// archs (tests/test_cuda_build.py); the other kernels spilled at their old occupancy, so have none.
constexpr int kInputGradMinCtas = 3;

template <typename T, bool CL>
__global__ void pool_hw_tiles(PoolHwOp<T, CL> op, Tiling t, PoolStat<acc_of<T>>* __restrict__ row_part,
                              PoolStat<acc_of<T>>* __restrict__ col_part) {
  reduce_tiles<T, CL>(op, t, row_part, col_part);
}

template <typename T, bool CL>
__global__ void pool_c_tiles(PoolCOp<T, CL> op, Tiling t, PoolStat<acc_of<T>>* __restrict__ row_part,
                             PoolStat<acc_of<T>>* __restrict__ col_part) {
  reduce_tiles<T, CL>(op, t, row_part, col_part);
}

template <typename T, bool CL>
__global__ void gate_grads_tiles(GateGradsOp<T, CL> op, Tiling t, SumStat<acc_of<T>>* __restrict__ row_part,
                                 SumStat<acc_of<T>>* __restrict__ col_part) {
  reduce_tiles<T, CL>(op, t, row_part, col_part);
}

template <typename T, bool CL>
__global__ void pool_c_grad_a_tiles(PoolCGradAOp<T, CL> op, Tiling t, SumStat<acc_of<T>>* __restrict__ row_part,
                                    SumStat<acc_of<T>>* __restrict__ col_part) {
  reduce_tiles<T, CL>(op, t, row_part, col_part);
}

template <typename A>
__global__ void pool_hw_finish(const PoolStat<A>* part, index_t tiles, index_t outputs, A len, A* mean, A* max,
                               int* arg, int* count) {
  finish_pool(part, tiles, outputs, len, mean, max, arg, count);
}

template <typename A>
__global__ void pool_c_finish(const PoolStat<A>* part, index_t tiles, index_t outputs, A len, A* mean, A* max,
                              int* arg, int* count) {
  finish_pool(part, tiles, outputs, len, mean, max, arg, count);
}

// A finishing job: the partials of `outputs` sums, folded into `out` by `blocks` blocks.
template <typename A> struct SumFinish {
  const SumStat<A>* part;
  index_t tiles, outputs;
  A* out;
  unsigned blocks;  // 0: not wanted
};

// Both of gate_grads' results in one launch: blocks [0, ga.blocks) fold ga, the rest gs.
template <typename A>
__global__ void gate_grads_finish(SumFinish<A> ga, SumFinish<A> gs) {
  if (blockIdx.x < ga.blocks)
    finish_sum(ga.part, ga.tiles, ga.outputs, ga.out, index_t(blockIdx.x), false);
  else
    finish_sum(gs.part, gs.tiles, gs.outputs, gs.out, index_t(blockIdx.x - ga.blocks), false);
}

// Adds its sums to ga (the PassTable contract: ga += ...), which saves the caller an add.
template <typename A>
__global__ void pool_c_grad_a_finish(const SumStat<A>* part, index_t tiles, index_t outputs, A* ga) {
  finish_sum(part, tiles, outputs, ga, index_t(blockIdx.x), true);
}

template <typename T, bool CL>
__global__ void apply_gates_tiles(ApplyGatesOp<T, CL> op, Tiling t, T* out) {
  map_tiles<T, CL>(op, t, out);
}

template <typename T, bool CL>
__global__ void __launch_bounds__(kThreads, kInputGradMinCtas) input_grad_tiles(InputGradOp<T, CL> op, Tiling t,
                                                                                T* out) {
  map_tiles<T, CL>(op, t, out);
}

// --------------------------------------------------------------------------------------- launchers
inline dim3 tile_grid(const Tiling& t) {
  const index_t y = t.col_tiles < kMaxGridY ? t.col_tiles : kMaxGridY;
  return dim3(unsigned(t.n * t.row_tiles), unsigned(y < 1 ? 1 : y));
}

inline bool grid_ok(const Tiling& t) {
  return t.n * t.row_tiles <= 0x7fffffffLL && t.n > 0 && t.rows_len > 0 && t.cols_len > 0;
}

inline bool layout_ok(const Geometry& g) { return g.layout == Layout::NCHW || g.layout == Layout::NHWC; }

inline std::size_t round16(std::size_t b) { return (b + 15) / 16 * 16; }

// CTAs in a tile kernel's grid
inline index_t ctas(const Tiling& t) {
  const dim3 grid = tile_grid(t);
  return index_t(grid.x) * grid.y;
}

// Multiprocessors of the current device, the unit reduction grids are sized in (0 when it cannot be
// asked; the launch then reports the error). Asked of the driver once per device, not per launch:
// the host path counts at small shapes. Threads that race store the same count.
inline int device_sm_count() {
  constexpr int kCachedDevices = 64;
  static std::atomic<int> cached[kCachedDevices] = {};  // 0: not asked yet
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  const bool cacheable = device >= 0 && device < kCachedDevices;
  if (cacheable && (sms = cached[device].load(std::memory_order_relaxed)) > 0) return sms;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) return 0;
  if (cacheable && sms > 0) cached[device].store(sms, std::memory_order_relaxed);
  return sms;
}

// Shortens t's tiles a step of rows at a time (a row per lane group of each warp) until the grid has
// kCtasPerSm CTAs per SM of the current device, or the tiles are one step. Small batches need it: at
// N=8 the four ResNet stage shapes made 32 to 104 reduction CTAs with full tiles.
inline Tiling shorten_to_fill(Tiling t) {
  const index_t min_ctas = index_t(kCtasPerSm) * device_sm_count();
  const index_t step = t.step_rows();
  while (t.rows > step && ctas(t) < min_ctas) t = with_rows(t, t.rows - step);
  return t;
}

// The tiles of a reduction on the current device: up to kMaxReduceRows rows, shortened to fill the
// device. Shorter tiles make more partials across the rows, each folded in tile order, so the result
// depends on the SM count but is bitwise the same on every run on one device. workspace_bytes and
// the launch compute it alike.
template <typename T> inline Tiling reduce_tiling(const Geometry& g) {
  const Tiling t = make_tiling<T>(g.n, g.c, g.p, g.layout == Layout::NHWC, kWarps);
  return shorten_to_fill(with_rows(t, reduce_rows(t.rows_len, t.step_rows())));
}

// The tiles of an elementwise pass: kMapRows rows per lane group (a thread stores kMapRows / kWarps
// rows of a tile whatever the lanes per row, reusing the columns' operands), shortened to fill the
// device; no sum depends on the tiling.
template <typename T> inline Tiling map_tiling(const Geometry& g) {
  const Tiling t = make_tiling<T>(g.n, g.c, g.p, g.layout == Layout::NHWC, kMapRows);
  return shorten_to_fill(with_rows(t, kMapRows * (kLanes / t.row_lanes())));
}

// A reduction's workspace: partials along the columns, then partials across the rows.
template <class Stat> struct Partials {
  Stat* along_cols;
  Stat* along_rows;
};

template <class Op, bool CL>
inline std::size_t partial_bytes(const Tiling& t, std::size_t* rows_offset = nullptr) {
  using Stat = typename Op::Stat;
  constexpr bool kAlongCols = CL ? Op::kOverC : Op::kOverP, kAlongRows = CL ? Op::kOverP : Op::kOverC;
  const std::size_t along_cols = kAlongCols ? round16(sizeof(Stat) * t.n * t.rows_len * t.col_tiles) : 0;
  const std::size_t along_rows = kAlongRows ? round16(sizeof(Stat) * t.n * t.cols_len * t.row_tiles) : 0;
  if (rows_offset) *rows_offset = along_cols;
  return along_cols + along_rows;
}

template <class Op, bool CL>
inline Partials<typename Op::Stat> partials(const Tiling& t, void* workspace) {
  using Stat = typename Op::Stat;
  std::size_t rows_offset = 0;
  partial_bytes<Op, CL>(t, &rows_offset);
  auto* base = static_cast<unsigned char*>(workspace);
  return {reinterpret_cast<Stat*>(base), reinterpret_cast<Stat*>(base + rows_offset)};
}

// Where the partials of a per-channel (or per-pixel) result are, and how many per output: the
// column partials in NCHW, the row partials in channels_last; per-pixel results the other way round.
template <class Stat> struct ResultParts {
  const Stat* part;
  index_t tiles;
};

template <class Stat>
inline ResultParts<Stat> result_parts(const Tiling& t, const Partials<Stat>& p, bool per_channel) {
  const bool cols = per_channel != t.channels_last;
  return {cols ? p.along_cols : p.along_rows, cols ? t.col_tiles : t.row_tiles};
}

inline unsigned blocks_for(index_t count) { return unsigned((count + kThreads - 1) / kThreads); }

template <typename T, bool CL>
inline std::size_t workspace_bytes_of(Pass pass, const Tiling& t) {
  switch (pass) {
    case Pass::PoolHw: return partial_bytes<PoolHwOp<T, CL>, CL>(t);
    case Pass::PoolC: return partial_bytes<PoolCOp<T, CL>, CL>(t);
    case Pass::GateGrads: return partial_bytes<GateGradsOp<T, CL>, CL>(t);
    case Pass::PoolCGradA: return partial_bytes<PoolCGradAOp<T, CL>, CL>(t);
    default: return 0;  // apply_gates, input_grad: elementwise, no workspace
  }
}

// ---- public launchers: one per pass on its argument struct (csrc/pass_args.h), plus the workspace
// size of every pass. Launches are asynchronous on `stream`; a cudaError_t says whether they started.
template <typename T>
std::size_t workspace_bytes(Pass pass, const Geometry& g) {
  const Tiling t = reduce_tiling<T>(g);
  return g.layout == Layout::NHWC ? workspace_bytes_of<T, true>(pass, t) : workspace_bytes_of<T, false>(pass, t);
}

template <typename T, bool CL>
cudaError_t pool_hw_layout(const PoolHwArgs& a, const Tiling& t, cudaStream_t stream) {
  using A = acc_of<T>;
  using Op = PoolHwOp<T, CL>;
  const auto parts = partials<Op, CL>(t, a.workspace);
  pool_hw_tiles<T, CL><<<tile_grid(t), dim3(kLanes, kWarps), 0, stream>>>(Op{static_cast<const T*>(a.x)}, t,
                                                                             parts.along_cols, parts.along_rows);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  const auto r = result_parts(t, parts, true);
  pool_hw_finish<<<blocks_for(t.n * t.c), kThreads, 0, stream>>>(r.part, r.tiles, t.n * t.c, A(t.p),
                                                                  static_cast<A*>(a.mean), static_cast<A*>(a.max),
                                                                  a.argmax, a.count);
  return cudaGetLastError();
}

// pool_hw: mean, max, first argmax and count of x over pixels, each [N, C]; argmax/count may be null.
template <typename T>
cudaError_t launch_pool_hw(const PoolHwArgs& a, cudaStream_t stream) {
  const Tiling t = reduce_tiling<T>(a.g);
  if (!layout_ok(a.g) || !grid_ok(t) || a.mean == nullptr || a.max == nullptr) return cudaErrorInvalidValue;
  return t.channels_last ? pool_hw_layout<T, true>(a, t, stream) : pool_hw_layout<T, false>(a, t, stream);
}

template <typename T, bool CL>
cudaError_t pool_c_layout(const PoolCArgs& a, const Tiling& t, cudaStream_t stream) {
  using A = acc_of<T>;
  using Op = PoolCOp<T, CL>;
  const auto parts = partials<Op, CL>(t, a.workspace);
  pool_c_tiles<T, CL><<<tile_grid(t), dim3(kLanes, kWarps), 0, stream>>>(
      Op{static_cast<const T*>(a.x), static_cast<const A*>(a.a), t.c}, t, parts.along_cols, parts.along_rows);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  const auto r = result_parts(t, parts, false);
  pool_c_finish<<<blocks_for(t.n * t.p), kThreads, 0, stream>>>(r.part, r.tiles, t.n * t.p, A(t.c),
                                                                 static_cast<A*>(a.mean), static_cast<A*>(a.max),
                                                                 a.argmax, a.count);
  return cudaGetLastError();
}

// pool_c: mean, max, first argmax and count of acc(x) * a over channels, each [N, P]; a, argmax and
// count may be null.
template <typename T>
cudaError_t launch_pool_c(const PoolCArgs& a, cudaStream_t stream) {
  const Tiling t = reduce_tiling<T>(a.g);
  if (!layout_ok(a.g) || !grid_ok(t) || a.mean == nullptr || a.max == nullptr) return cudaErrorInvalidValue;
  return t.channels_last ? pool_c_layout<T, true>(a, t, stream) : pool_c_layout<T, false>(a, t, stream);
}

template <typename T, bool CL>
cudaError_t gate_grads_layout(const GateGradsArgs& a, const Tiling& t, cudaStream_t stream) {
  using A = acc_of<T>;
  using Op = GateGradsOp<T, CL>;
  const auto parts = partials<Op, CL>(t, a.workspace);
  gate_grads_tiles<T, CL><<<tile_grid(t), dim3(kLanes, kWarps), 0, stream>>>(
      Op{static_cast<const T*>(a.gy), static_cast<const T*>(a.x), static_cast<const A*>(a.a),
         static_cast<const A*>(a.s), t.c, t.p},
      t, parts.along_cols, parts.along_rows);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  auto job = [&](bool per_channel, void* out) {
    const auto r = result_parts(t, parts, per_channel);
    const index_t outputs = per_channel ? t.n * t.c : t.n * t.p;
    return SumFinish<A>{r.part, r.tiles, outputs, static_cast<A*>(out), out != nullptr ? blocks_for(outputs) : 0u};
  };
  const SumFinish<A> ga = job(true, a.ga), gs = job(false, a.gs);
  gate_grads_finish<<<ga.blocks + gs.blocks, kThreads, 0, stream>>>(ga, gs);
  return cudaGetLastError();
}

// gate_grads: ga = sum_p gy*x*s ([N, C]) and gs = sum_c gy*x*a ([N, P]), each when its pointer is set,
// from one read of gy and x. Both partial directions are always formed (they are small).
template <typename T>
cudaError_t launch_gate_grads(const GateGradsArgs& a, cudaStream_t stream) {
  const Tiling t = reduce_tiling<T>(a.g);
  if (!layout_ok(a.g) || !grid_ok(t)) return cudaErrorInvalidValue;
  if (a.ga == nullptr && a.gs == nullptr) return cudaSuccess;  // nothing wanted
  return t.channels_last ? gate_grads_layout<T, true>(a, t, stream) : gate_grads_layout<T, false>(a, t, stream);
}

template <typename T, bool CL>
cudaError_t pool_c_grad_a_layout(const PoolCGradAArgs& a, const Tiling& t, cudaStream_t stream) {
  using A = acc_of<T>;
  using Op = PoolCGradAOp<T, CL>;
  const auto parts = partials<Op, CL>(t, a.workspace);
  const bool split = a.tie.argmax == nullptr;
  pool_c_grad_a_tiles<T, CL><<<tile_grid(t), dim3(kLanes, kWarps), 0, stream>>>(
      Op{static_cast<const T*>(a.x), static_cast<const A*>(a.a), static_cast<const A*>(a.u),
         static_cast<const A*>(a.v), static_cast<const A*>(a.tie.max), a.tie.argmax, split, t.c, t.p},
      t, parts.along_cols, parts.along_rows);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  const auto r = result_parts(t, parts, true);
  pool_c_grad_a_finish<<<blocks_for(t.n * t.c), kThreads, 0, stream>>>(r.part, r.tiles, t.n * t.c,
                                                                        static_cast<A*>(a.ga));
  return cudaGetLastError();
}

// pool_c_grad_a: ga[n,c] += sum_p acc(x) * (u[p] + T(c,p) * v[p]) ([N, C]); a, u, v are required.
// tie.argmax selects index-style ties; without it, split-style ties read tie.max.
template <typename T>
cudaError_t launch_pool_c_grad_a(const PoolCGradAArgs& a, cudaStream_t stream) {
  const Tiling t = reduce_tiling<T>(a.g);
  if (!layout_ok(a.g) || !grid_ok(t) || a.a == nullptr || a.u == nullptr || a.v == nullptr || a.ga == nullptr ||
      (a.tie.argmax == nullptr && a.tie.max == nullptr))
    return cudaErrorInvalidValue;
  return t.channels_last ? pool_c_grad_a_layout<T, true>(a, t, stream) : pool_c_grad_a_layout<T, false>(a, t, stream);
}

// apply_gates: y = (acc(x) * a) * s in x's dtype and layout; a, s may be null.
template <typename T>
cudaError_t launch_apply_gates(const ApplyGatesArgs& a, cudaStream_t stream) {
  using A = acc_of<T>;
  const Tiling t = map_tiling<T>(a.g);
  if (!layout_ok(a.g) || !grid_ok(t)) return cudaErrorInvalidValue;
  const auto* x = static_cast<const T*>(a.x);
  const auto *ga = static_cast<const A*>(a.a), *gs = static_cast<const A*>(a.s);
  if (t.channels_last)
    apply_gates_tiles<T, true><<<tile_grid(t), dim3(kLanes, kWarps), 0, stream>>>(
        ApplyGatesOp<T, true>{x, ga, gs, t.c, t.p}, t, static_cast<T*>(a.y));
  else
    apply_gates_tiles<T, false><<<tile_grid(t), dim3(kLanes, kWarps), 0, stream>>>(
        ApplyGatesOp<T, false>{x, ga, gs, t.c, t.p}, t, static_cast<T*>(a.y));
  return cudaGetLastError();
}

// Whether a gradient group (u, v, tie) is complete: v and the tie operand of the style are set.
inline bool group_ok(const void* u, const void* v, const TieOperand& tie, bool split) {
  return u == nullptr || (v != nullptr && (split ? tie.max != nullptr : tie.argmax != nullptr));
}

template <typename T, bool CL>
inline InputGradOp<T, CL> input_grad_op(const InputGradArgs& a, const Tiling& t) {
  using A = acc_of<T>;
  auto acc = [](const void* p) { return static_cast<const A*>(p); };
  return {static_cast<const T*>(a.gy), static_cast<const T*>(a.x), acc(a.a), acc(a.s), acc(a.u_c), acc(a.v_c),
          acc(a.tie_c.max), a.tie_c.argmax, acc(a.u_hw), acc(a.v_hw), acc(a.tie_hw.max), a.tie_hw.argmax,
          a.split, t.c, t.p};
}

// input_grad: see InputGradOp. x is read (and required) only for split-style ties.
template <typename T>
cudaError_t launch_input_grad(const InputGradArgs& a, cudaStream_t stream) {
  const Tiling t = map_tiling<T>(a.g);
  if (!layout_ok(a.g) || !grid_ok(t) || (a.split && a.x == nullptr) ||
      !group_ok(a.u_c, a.v_c, a.tie_c, a.split) || !group_ok(a.u_hw, a.v_hw, a.tie_hw, a.split))
    return cudaErrorInvalidValue;
  if (t.channels_last)
    input_grad_tiles<T, true><<<tile_grid(t), dim3(kLanes, kWarps), 0, stream>>>(input_grad_op<T, true>(a, t), t,
                                                                                   static_cast<T*>(a.gx));
  else
    input_grad_tiles<T, false><<<tile_grid(t), dim3(kLanes, kWarps), 0, stream>>>(input_grad_op<T, false>(a, t), t,
                                                                                    static_cast<T*>(a.gx));
  return cudaGetLastError();
}

}  // namespace cbam_fused::cuda
