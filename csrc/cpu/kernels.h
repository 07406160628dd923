// The six full-size passes (cbam_fused/passes.py is the contract) as templates over the scalar type
// T and the layout. Compiled once per ISA: the including .cpp defines CPU_CAPABILITY (and
// CPU_CAPABILITY_AVX2 / _AVX512 plus `#pragma GCC target`) before this header, so everything here,
// including at::vec::Vectorized, lives in `inline namespace CPU_CAPABILITY`.
//
// Conventions: A is the accumulation type (double for double, float otherwise); Vec = Vectorized<A>
// with L lanes. Reductions keep per-lane accumulators and fold the lanes in lane order; pixel
// blocks have fixed sizes (dispatch.h), so results are bitwise independent of the thread count.
// The pooled value of the channel pool is the plain product acc(x) * a everywhere (forward and both
// backward comparisons), so split-style tie tests are exact.
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY before including kernels.h"
#endif

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "cpu/dispatch.h"

namespace cbam_fused::cpu {
inline namespace CPU_CAPABILITY {

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename A>
using Vec = at::vec::Vectorized<A>;

// The index of the lowest set bit of a nonzero mask. Not std::countr_zero: that is C++20, and torch
// 2.11 builds extensions as C++17. The CPU kernels are GCC/Clang-only already (__builtin_prefetch,
// __builtin_cpu_supports in ops_cpu.cpp).
inline int lowest_set_bit(unsigned mask) { return __builtin_ctz(mask); }

// Loads and stores of L values of T as a Vec<acc_t<T>>; the `n` overloads handle a partial vector
// (loads fill the missing lanes with zeros).
template <typename T>
struct Io {
  using A = acc_t<T>;
  static constexpr int64_t L = Vec<A>::size();

  static Vec<A> load(const T* p) {
    if constexpr (std::is_same_v<T, A>) {
      return Vec<A>::loadu(p);
    } else {
      Vec<float> out;
      at::vec::load_to_float(p, out);
      return out;
    }
  }
  static Vec<A> load(const T* p, int64_t n) {
    if constexpr (std::is_same_v<T, A>) {
      return Vec<A>::loadu(p, n);
    } else {
      T buf[L] = {};
      std::memcpy(buf, p, n * sizeof(T));
      return load(buf);
    }
  }
  static void store(T* p, const Vec<A>& v) {
    if constexpr (std::is_same_v<T, A>) {
      v.store(p);
    } else {
      at::vec::convert_from_float<T>(v, v).store(p, L);
    }
  }
  static void store(T* p, const Vec<A>& v, int64_t n) {
    if constexpr (std::is_same_v<T, A>) {
      v.store(p, n);
    } else {
      at::vec::convert_from_float<T>(v, v).store(p, n);
    }
  }
};

template <typename A>
Vec<A> load_small(const A* p, int64_t n, int64_t L) {  // acc-typed small arrays
  return n == L ? Vec<A>::loadu(p) : Vec<A>::loadu(p, n);
}

template <typename A>
A fold_sum(const Vec<A>& v) {
  alignas(64) A lanes[Vec<A>::size()];
  v.store(lanes);
  A s = 0;
  for (int64_t i = 0; i < Vec<A>::size(); ++i) s += lanes[i];
  return s;
}

#if defined(CPU_CAPABILITY_AVX512)
template <typename A>
struct VecArgMax;
template <typename A>
struct VecMax;

// The unmasked updates of VecArgMax and VecMax in AVX-512 mask registers (defined below them).
template <typename A>
void update_in_mask_registers(VecArgMax<A>& t, const Vec<A>& v, const Vec<A>& at);
template <typename A>
void update_in_mask_registers(VecMax<A>& t, const Vec<A>& v, const Vec<A>& at);
#endif

// Running max with first position and count of maxima; NaN wins and keeps its first position
// (torch.max semantics). cnt == 0 marks "nothing seen yet".
template <typename A>
struct ArgMax {
  A max = -std::numeric_limits<A>::infinity();
  A pos = 0;
  A cnt = 0;

  // Merge a state covering other positions; ties keep the smaller position.
  void merge(const ArgMax& o) {
    if (o.cnt == 0) return;
    if (cnt == 0) {
      *this = o;
      return;
    }
    const bool nan = std::isnan(max), o_nan = std::isnan(o.max);
    if (nan || o_nan) {
      if (nan && o_nan) {
        pos = std::min(pos, o.pos);
      } else if (o_nan) {
        *this = o;
      }
      return;
    }
    if (o.max > max) {
      *this = o;
    } else if (o.max == max) {
      pos = std::min(pos, o.pos);
      cnt += o.cnt;
    }
  }
};

template <typename A>
Vec<A> all_lanes() {
  return Vec<A>(0) == Vec<A>(0);
}

// What VecArgMax and VecMax share: feed() starts a tracker with init() on its first elements and
// updates it after that (in AVX-512 mask registers where the build has them and no lane is masked).
template <typename A, typename Tracker>
struct FedLanes {
  template <bool kMasked = false>
  void feed(bool first, const Vec<A>& v, const Vec<A>& at, const Vec<A>& valid = Vec<A>(0)) {
    auto& self = static_cast<Tracker&>(*this);
    if (first) {
      self.init(v, at, kMasked ? valid : all_lanes<A>());
      return;
    }
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (!kMasked) {
      update_in_mask_registers(self, v, at);
      return;
    }
#endif
    self.template update<kMasked>(v, at, valid);
  }
};

// The same per lane: lane i tracks the elements it was fed, in increasing position order. Start
// with init() on the first elements (lanes outside `valid` stay empty: cnt == 0, never fed again).
template <typename A>
struct VecArgMax : FedLanes<A, VecArgMax<A>> {
  Vec<A> max, pos, cnt;

  void init(const Vec<A>& v, const Vec<A>& at, const Vec<A>& valid) {
    max = Vec<A>::blendv(Vec<A>(-std::numeric_limits<A>::infinity()), v, valid);
    pos = at;
    cnt = valid & Vec<A>(1);
  }

  template <bool kMasked>
  void update(const Vec<A>& v, const Vec<A>& at, const Vec<A>& valid) {
    const Vec<A> one(1);
    // v takes over if it is larger or NaN (!(v <= max)), unless the lane already holds a NaN
    Vec<A> takes = ((v <= max) ^ all_lanes<A>()) & (max == max);
    Vec<A> ties = v == max;  // false for NaN
    if constexpr (kMasked) {
      takes = takes & valid;
      ties = ties & valid;
    }
    max = Vec<A>::blendv(max, v, takes);
    pos = Vec<A>::blendv(pos, at, takes);
    cnt = Vec<A>::blendv(cnt + (ties & one), one, takes);
  }
};

// VecArgMax's maximum alone (inference: no argmax, no count), updated by the same rule, so the max
// is bitwise the tracking one's.
template <typename A>
struct VecMax : FedLanes<A, VecMax<A>> {
  Vec<A> max;

  void init(const Vec<A>& v, const Vec<A>&, const Vec<A>& valid) {
    max = Vec<A>::blendv(Vec<A>(-std::numeric_limits<A>::infinity()), v, valid);
  }

  template <bool kMasked>
  void update(const Vec<A>& v, const Vec<A>&, const Vec<A>& valid) {
    Vec<A> takes = ((v <= max) ^ all_lanes<A>()) & (max == max);
    if constexpr (kMasked) takes = takes & valid;
    max = Vec<A>::blendv(max, v, takes);
  }
};

#if defined(CPU_CAPABILITY_AVX512)
// VecArgMax's and VecMax's unmasked updates in AVX-512 mask registers: at::vec's comparisons
// return vector masks and its blendv compares them back into a mask register, about twice the
// instructions of the rule itself, and the pools that track a maximum spend their time there. The
// same rule, lane for lane, so the same bits: v takes over where !(v <= max) (larger, or NaN) unless
// max is NaN; ties (v == max, never NaN) add one to the count. Below: the rule's masks and masked
// moves, on 16 floats or 8 doubles.
template <typename A>
using Raw512 = std::conditional_t<std::is_same_v<A, float>, __m512, __m512d>;
inline __mmask16 takes_over(__m512 v, __m512 mx) {
  return _mm512_cmp_ps_mask(v, mx, _CMP_NLE_UQ) & _mm512_cmp_ps_mask(mx, mx, _CMP_ORD_Q);
}
inline __mmask8 takes_over(__m512d v, __m512d mx) {
  return _mm512_cmp_pd_mask(v, mx, _CMP_NLE_UQ) & _mm512_cmp_pd_mask(mx, mx, _CMP_ORD_Q);
}
inline __mmask16 ties_with(__m512 v, __m512 mx) { return _mm512_cmp_ps_mask(v, mx, _CMP_EQ_OQ); }
inline __mmask8 ties_with(__m512d v, __m512d mx) { return _mm512_cmp_pd_mask(v, mx, _CMP_EQ_OQ); }
inline __m512 where(__mmask16 k, __m512 yes, __m512 no) { return _mm512_mask_mov_ps(no, k, yes); }
inline __m512d where(__mmask8 k, __m512d yes, __m512d no) { return _mm512_mask_mov_pd(no, k, yes); }
inline __m512 add_where(__mmask16 k, __m512 a, __m512 b) { return _mm512_mask_add_ps(a, k, a, b); }
inline __m512d add_where(__mmask8 k, __m512d a, __m512d b) { return _mm512_mask_add_pd(a, k, a, b); }

template <typename A>
void update_in_mask_registers(VecArgMax<A>& t, const Vec<A>& v, const Vec<A>& at) {
  using R = Raw512<A>;
  const R vv = v, mx = t.max, one = Vec<A>(1), cnt = t.cnt;
  const auto takes = takes_over(vv, mx);
  t.max = where(takes, vv, mx);
  t.pos = where(takes, static_cast<R>(at), static_cast<R>(t.pos));
  t.cnt = where(takes, one, add_where(ties_with(vv, mx), cnt, one));
}
template <typename A>
void update_in_mask_registers(VecMax<A>& t, const Vec<A>& v, const Vec<A>&) {
  using R = Raw512<A>;
  const R vv = v, mx = t.max;
  t.max = where(takes_over(vv, mx), vv, mx);
}
#endif

// kTrack: the pool keeps argmax and count (training), else the max alone (inference).
template <typename A, bool kTrack>
using Tracker = std::conditional_t<kTrack, VecArgMax<A>, VecMax<A>>;

template <typename A>
Vec<A> lanes_below(int64_t first, int64_t limit) {  // mask of lanes whose position first+i < limit
  return Vec<A>::arange(static_cast<A>(first), 1) < Vec<A>(static_cast<A>(limit));
}

template <bool kTrack, typename A>
void write_pool(const ArgMax<A>& st, A sum, int64_t len, int64_t i, A* mean, A* max, int32_t* argmax,
                int32_t* count) {
  mean[i] = sum / static_cast<A>(len);
  max[i] = st.max;
  if constexpr (kTrack) {  // each only where the caller wants it (null: not computed either)
    if (argmax) argmax[i] = static_cast<int32_t>(st.pos);
    if (count) count[i] = static_cast<int32_t>(st.cnt);
  }
}

// Rows reduced together by reduce_rows: each row keeps its own sum and max chains (its order is that
// of one row alone), and R rows give the core R independent chains of each, where one row's chains
// waited on the latency of every add and max.
constexpr int64_t kRowsTogether = 4;

// Sum and argmax of v[i] = x[i] * scale[i] over each of R contiguous rows (rows[r], scales[r];
// a null scale: x itself), in chunks small enough to stay in L1 or L2: a vectorised sum and max over
// the chunk, the R rows interleaved, then (kTrack only) a second read of each row's chunk for the
// first position of its max (if want_pos) and the count of it (if want_cnt; from the first position
// on, or over the chunk without want_pos). Chunk states merge in position order
// (ArgMax::merge), the same way with or without tracking, so the max is bitwise the same; the sum
// runs in one vector accumulator per row over the whole row. Horizontal folds use vec_reduce_all,
// whose order is fixed. Each row's result is bitwise what it would be alone, whatever R.
template <typename T, bool kTrack, int64_t R>
void reduce_rows(const T* const (&rows)[R], const acc_t<T>* const (&scales)[R], int64_t len, bool want_pos,
                 bool want_cnt, acc_t<T> (&sum)[R], ArgMax<acc_t<T>> (&st)[R]) {
  using A = acc_t<T>;
  constexpr int64_t L = Vec<A>::size();
  constexpr int64_t kChunk = 16384 / static_cast<int64_t>(sizeof(A));  // 16 KB, a multiple of L
  const auto value = [&](int64_t r, int64_t i, int64_t n) {  // lanes past n are 0
    Vec<A> v = n == L ? Io<T>::load(rows[r] + i) : Io<T>::load(rows[r] + i, n);
    if (scales[r]) v = v * load_small(scales[r] + i, n, L);
    return v;
  };
  const auto add = [](const Vec<A>& p, const Vec<A>& q) { return p + q; };
  const Vec<A> ninf(-std::numeric_limits<A>::infinity());
  Vec<A> vsum[R];
  for (int64_t r = 0; r < R; ++r) {
    vsum[r] = Vec<A>(0);
    st[r] = ArgMax<A>{};
  }
  for (int64_t c0 = 0; c0 < len; c0 += kChunk) {
    const int64_t rest = (std::min(len, c0 + kChunk) - c0) % L;
    const int64_t full = std::min(len, c0 + kChunk) - rest;
    const Vec<A> tail = rest ? lanes_below<A>(0, rest) : Vec<A>(0);
    Vec<A> vmax[R];
    for (int64_t r = 0; r < R; ++r) vmax[r] = ninf;
    for (int64_t i = c0; i < full; i += L) {
      for (int64_t r = 0; r < R; ++r) {
        const Vec<A> v = value(r, i, L);
        vsum[r] = vsum[r] + v;
        vmax[r] = at::vec::maximum(vmax[r], v);  // NaN-propagating
      }
    }
    if (rest) {
      for (int64_t r = 0; r < R; ++r) {
        const Vec<A> v = value(r, full, rest);
        vsum[r] = vsum[r] + v;
        vmax[r] = at::vec::maximum(vmax[r], Vec<A>::blendv(ninf, v, tail));
      }
    }
    for (int64_t r = 0; r < R; ++r) {
      ArgMax<A> part{at::vec::vec_reduce_all([](const Vec<A>& p, const Vec<A>& q) { return at::vec::maximum(p, q); },
                                             vmax[r]),
                     static_cast<A>(c0), 1};
      if constexpr (kTrack) {
        // The first position: vectors are tested until one holds the max (a lane bit test, no
        // per-lane position tracking); then the count from that vector on (none before it), in two
        // accumulators: counts are small integers, exact in any order.
        const bool nan = std::isnan(part.max);
        const Vec<A> target(part.max), one(1);
        const auto hits = [&](int64_t i) {  // lanes of the vector at i that hold the max
          const bool partial = i == full;
          const Vec<A> v = value(r, i, partial ? rest : L);
          const Vec<A> hit = nan ? v.isnan() : v == target;
          return partial ? hit & tail : hit;
        };
        const int64_t stop = rest ? full + L : full;  // vectors start at c0, c0 + L, .. < stop
        constexpr int kLanes = (1 << L) - 1;
        int64_t i = c0;
        part.pos = static_cast<A>(len);  // stays only if nothing matched: cannot be, part.max is a value
        for (; want_pos && i < stop; i += L) {
          const int lanes = ~hits(i).zero_mask() & kLanes;  // hit lanes are all ones, never zero
          if (lanes) {
            part.pos = static_cast<A>(i + lowest_set_bit(static_cast<unsigned>(lanes)));
            break;
          }
        }
        if (want_cnt && !nan) {  // a NaN max counts 1 (its position alone)
          Vec<A> vcnt0(0), vcnt1(0);
          for (; i + L < stop; i += 2 * L) {
            vcnt0 = vcnt0 + (hits(i) & one);
            vcnt1 = vcnt1 + (hits(i + L) & one);
          }
          if (i < stop) vcnt0 = vcnt0 + (hits(i) & one);
          part.cnt = at::vec::vec_reduce_all(add, vcnt0 + vcnt1);
        }
      }
      st[r].merge(part);
    }
  }
  for (int64_t r = 0; r < R; ++r) sum[r] = at::vec::vec_reduce_all(add, vsum[r]);
}

// Writes the pooled results of the first `width` lanes of a lane-per-output accumulator.
template <typename A, typename Tr>
void write_lanes(const Tr& tr, const Vec<A>& vsum, int64_t len, int64_t first, int64_t width, A* mean,
                 A* max, int32_t* argmax, int32_t* count) {
  constexpr int64_t L = Vec<A>::size();
  constexpr bool kTrack = std::is_same_v<Tr, VecArgMax<A>>;
  alignas(64) A s[L], m[L], p[L] = {}, c[L] = {};
  vsum.store(s);
  tr.max.store(m);
  if constexpr (kTrack) {
    tr.pos.store(p);
    tr.cnt.store(c);
  }
  for (int64_t i = 0; i < width; ++i) {
    write_pool<kTrack>(ArgMax<A>{m[i], p[i], c[i]}, s[i], len, first + i, mean, max, argmax, count);
  }
}

inline int64_t grain_for(int64_t elems_per_item) {  // ~32K elements per task
  return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, elems_per_item));
}

// NCHW passes that walk the channels of a pixel block read row segments one image plane apart
// (pool_c's blocks of kLaneBlockVecs vectors; gate_grads and pool_c_grad_a only on planes above
// kNchwPixelBlock pixels); the hardware prefetchers do not follow that pattern and the loads wait on
// memory.
// So the segment a few channels ahead is prefetched by hand (about kPrefetchBytes ahead; a prefetch
// never faults, but only rows that exist are fetched). A block that spans the whole image is read
// sequentially, which the prefetchers follow: no prefetch there (0 rows ahead). Changes no result.
constexpr int64_t kPrefetchBytes = 8192;

template <typename T>
int64_t prefetch_rows_ahead(int64_t segment_elems, int64_t plane_elems) {
  if (segment_elems >= plane_elems) return 0;
  return std::max<int64_t>(1, kPrefetchBytes / std::max<int64_t>(1, segment_elems * static_cast<int64_t>(sizeof(T))));
}

template <typename T>
void prefetch_segment(const T* p, int64_t elems) {
  const char* b = reinterpret_cast<const char*>(p);
  const int64_t bytes = elems * static_cast<int64_t>(sizeof(T));
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(b + i, 0, 3);
}

// Rows at most this long are pooled with lanes = rows (reduce_rows_as_lanes): per-row horizontal
// folds would cost as much as the row itself.
constexpr int64_t kShortRowVecs = 16;

// Row tiles of L rows pooled together: their max (and argmax) chains are independent, which hides
// the latency of one compare-and-blend chain per tile. As many tiles as the vector registers hold
// with their accumulators (sum, max, and position and count when tracked); the tiling changes no bit.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int64_t kVecRegisters = 32;
#else
constexpr int64_t kVecRegisters = 16;
#endif
template <bool kTrack>
constexpr int64_t kRowTiles = (kTrack ? 2 : 4) * kVecRegisters / 16;

// Sum and argmax of `rows` <= kRowTiles * L contiguous rows of `len` elements (row r at x + r * len),
// with lanes = rows of a tile: L x L blocks are transposed through an L1 buffer and fed column by
// column, so each row is reduced in position order and nothing is folded across lanes.
// v = x * scale[position] (scale == nullptr: x itself). Results go to first_out .. + rows - 1.
template <typename T, bool kTrack>
void reduce_rows_as_lanes(const T* x, const acc_t<T>* scale, int64_t len, int64_t rows, int64_t first_out,
                          acc_t<T>* mean, acc_t<T>* max, int32_t* argmax, int32_t* count) {
  using A = acc_t<T>;
  constexpr int64_t L = Vec<A>::size();
  constexpr int64_t kTiles = kRowTiles<kTrack>;
  alignas(64) T tile[kTiles][L * L];  // tile[t][j * L + i] = x[row t * L + i, column k + j]
  Vec<A> vsum[kTiles];
  Tracker<A, kTrack> tr[kTiles];
  for (int64_t t = 0; t < kTiles; ++t) vsum[t] = Vec<A>(0);
  for (int64_t k = 0; k < len; k += L) {
    const int64_t cols = std::min(L, len - k);
    for (int64_t t = 0; t < kTiles; ++t) {
      const int64_t tile_rows = std::clamp<int64_t>(rows - t * L, 0, L);
      const T* src = x + t * L * len + k;
      if (tile_rows == L && cols == L) {
        at::vec::transpose_mxn<T, L, L>(src, len, tile[t], L);
      } else {  // edge tile: missing rows are zeros, columns past `cols` are not fed
        std::fill(tile[t], tile[t] + L * L, T(0));
        for (int64_t i = 0; i < tile_rows; ++i) {
          for (int64_t j = 0; j < cols; ++j) tile[t][j * L + i] = src[i * len + j];
        }
      }
    }
    for (int64_t j = 0; j < cols; ++j) {
      const Vec<A> at(static_cast<A>(k + j));
      for (int64_t t = 0; t < kTiles; ++t) {
        Vec<A> v = Io<T>::load(tile[t] + j * L);
        if (scale) v = v * Vec<A>(scale[k + j]);
        vsum[t] = vsum[t] + v;
        tr[t].feed(k + j == 0, v, at);
      }
    }
  }
  for (int64_t t = 0; t * L < rows; ++t) {
    write_lanes(tr[t], vsum[t], len, first_out + t * L, std::min(L, rows - t * L), mean, max, argmax, count);
  }
}

// Pools every contiguous row of x viewed as [groups, rows_per_group, len] (scale: [groups, len] or
// nullptr) into [groups * rows_per_group] outputs. Work items are fixed blocks of rows inside one
// group, so results do not depend on the thread count.
template <typename T, bool kTrack>
void pool_rows(const T* x, const acc_t<T>* scale, int64_t groups, int64_t rows_per_group, int64_t len,
               acc_t<T>* mean, acc_t<T>* max, int32_t* argmax, int32_t* count) {
  using A = acc_t<T>;
  constexpr int64_t L = Vec<A>::size();
  if (len <= kShortRowVecs * L) {
    constexpr int64_t kRows = kRowTiles<kTrack> * L;
    const int64_t blocks = (rows_per_group + kRows - 1) / kRows;
    at::parallel_for(0, groups * blocks, grain_for(kRows * len), [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t g = item / blocks, r0 = (item % blocks) * kRows;
        const int64_t first = g * rows_per_group + r0;
        reduce_rows_as_lanes<T, kTrack>(x + first * len, scale ? scale + g * len : nullptr, len,
                                std::min(kRows, rows_per_group - r0), first, mean, max, argmax, count);
      }
    });
    return;
  }
  // rows r .. r + R - 1, reduced together and written out
  const auto pool_from = [&](int64_t r, auto rows_together) {
    constexpr int64_t R = decltype(rows_together)::value;
    const T* rows[R];
    const A* scales[R];
    for (int64_t k = 0; k < R; ++k) {
      rows[k] = x + (r + k) * len;
      scales[k] = scale ? scale + ((r + k) / rows_per_group) * len : nullptr;
    }
    A sums[R];
    ArgMax<A> sts[R];
    reduce_rows<T, kTrack>(rows, scales, len, argmax != nullptr, count != nullptr, sums, sts);
    for (int64_t k = 0; k < R; ++k) write_pool<kTrack>(sts[k], sums[k], len, r + k, mean, max, argmax, count);
  };
  at::parallel_for(0, groups * rows_per_group, grain_for(len), [&](int64_t begin, int64_t end) {
    int64_t r = begin;
    for (; r + kRowsTogether <= end; r += kRowsTogether) pool_from(r, std::integral_constant<int64_t, kRowsTogether>{});
    for (; r < end; ++r) pool_from(r, std::integral_constant<int64_t, 1>{});
  });
}

// A pool whose lanes are outputs: `steps` rows `stride` apart, each holding `width` contiguous
// outputs' elements (NCHW pool_c: rows are channels, lanes pixels; channels_last pool_hw: rows are
// pixels, lanes channels). v = acc(x) * scale[step] (scale == nullptr: x), pooled over the rows in
// order. At most kLaneBlockVecs vectors per item; V = width / L of them full, then `rest` lanes.
// V is a compile-time constant, so the loops unroll and the accumulators stay in registers:
// indexed at run time they lived in memory, and NCHW pool_c took 1.2-1.7x as long (README.md,
// "Results (CPU)"). S samples at once (x by sample_stride, scale by `steps`, outputs by
// out_stride): where an item has few vectors, one sample's max chains alone would wait on their
// latency at every row.
constexpr int64_t kLaneBlockVecs = 8;

template <typename T, bool kTrack, int64_t V, int64_t S>
void pool_lane_block(const T* x, const acc_t<T>* scale, int64_t steps, int64_t stride, int64_t sample_stride,
                     int64_t width, int64_t first_out, int64_t out_stride, acc_t<T>* mean, acc_t<T>* mx,
                     int32_t* argmax, int32_t* count) {
  using A = acc_t<T>;
  constexpr int64_t L = Vec<A>::size();
  const int64_t rest = width % L;
  const int64_t ahead = prefetch_rows_ahead<T>(width, stride);
  Vec<A> sum[S][V + 1];  // the last one of each sample for the partial vector
  Tracker<A, kTrack> tr[S][V + 1];
  for (int64_t k = 0; k < S; ++k) {
    for (int64_t j = 0; j <= V; ++j) sum[k][j] = Vec<A>(0);
  }
  for (int64_t i = 0; i < steps; ++i) {
    const Vec<A> at(static_cast<A>(i));
    for (int64_t k = 0; k < S; ++k) {
      const T* row = x + k * sample_stride + i * stride;
      if (ahead && i + ahead < steps) prefetch_segment(row + ahead * stride, width);
      const Vec<A> sc(scale ? scale[k * steps + i] : A(1));
      for (int64_t j = 0; j < V; ++j) {
        Vec<A> v = Io<T>::load(row + j * L);
        if (scale) v = v * sc;
        sum[k][j] = sum[k][j] + v;
        tr[k][j].feed(i == 0, v, at);
      }
      if (rest) {
        Vec<A> v = Io<T>::load(row + V * L, rest);
        if (scale) v = v * sc;
        sum[k][V] = sum[k][V] + v;
        tr[k][V].feed(i == 0, v, at);  // its lanes past `rest` pool zeros and are never written
      }
    }
  }
  for (int64_t k = 0; k < S; ++k) {
    for (int64_t j = 0; j * L < width; ++j) {
      write_lanes(tr[k][j], sum[k][j], steps, first_out + k * out_stride + j * L, std::min(L, width - j * L), mean,
                  mx, argmax, count);
    }
  }
}

// f(std::integral_constant<int64_t, min(full, V)>{}): a run-time count of vectors as a template argument.
template <int64_t V, typename F>
void with_full_vecs(int64_t full, F&& f) {
  if constexpr (V > 0) {
    if (full < V) return with_full_vecs<V - 1>(full, f);
  }
  f(std::integral_constant<int64_t, V>{});
}

// Runs pool_lane_block over N samples x blocks of `len` lanes (kLaneBlockVecs vectors each, the last
// one shorter): sample n's block at x + n * sample_stride + lane0, its scale at scale + n * steps, its
// outputs at n * len + lane0. An item of at most kPairVecs vectors takes two samples (untracked only:
// the tracked accumulators of two samples would not fit in the registers), while every thread still
// gets items. Outputs do not depend on the blocking.
template <typename T, bool kTrack>
void pool_lanes(const T* x, const acc_t<T>* scale, int64_t N, int64_t len, int64_t steps, int64_t stride,
                int64_t sample_stride, acc_t<T>* mean, acc_t<T>* mx, int32_t* argmax, int32_t* count) {
  constexpr int64_t L = Vec<acc_t<T>>::size();
  constexpr int64_t kBlock = kLaneBlockVecs * L;
  constexpr int64_t kPairVecs = 4;
  const int64_t blocks = (len + kBlock - 1) / kBlock;
  const int64_t vecs = (std::min(len, kBlock) + L - 1) / L;
  const int64_t S = !kTrack && blocks == 1 && vecs <= kPairVecs && N >= 2 * at::get_num_threads() ? 2 : 1;
  at::parallel_for(0, (N + S - 1) / S * blocks, grain_for(S * steps * kBlock), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / blocks * S, lane0 = (item % blocks) * kBlock;
      const int64_t width = std::min(kBlock, len - lane0);
      const auto block = [&](auto full_vecs, auto samples) {
        pool_lane_block<T, kTrack, decltype(full_vecs)::value, decltype(samples)::value>(
            x + n * sample_stride + lane0, scale ? scale + n * steps : nullptr, steps, stride, sample_stride, width,
            n * len + lane0, len, mean, mx, argmax, count);
      };
      const bool pair = S == 2 && n + 1 < N;  // an odd N leaves the last sample alone
      with_full_vecs<kLaneBlockVecs>(width / L, [&](auto full_vecs) {
        if constexpr (decltype(full_vecs)::value <= kPairVecs) {
          if (pair) return block(full_vecs, std::integral_constant<int64_t, 2>{});
        }
        block(full_vecs, std::integral_constant<int64_t, 1>{});
      });
    }
  });
}

// ------------------------------------------------------------------------------------ pool_hw
// Reads x once (|x|); writes four [N,C] arrays (two without kTrack).
template <typename T, Layout kLayout, bool kTrack>
void pool_hw(const PoolHwArgs& args) {
  using A = acc_t<T>;
  constexpr int64_t L = Vec<A>::size();
  const int64_t N = args.shape.n, C = args.shape.c, P = args.shape.p;
  const T* x = static_cast<const T*>(args.x);
  A* avg = static_cast<A*>(args.avg);
  A* mx = static_cast<A*>(args.max);
  if constexpr (kLayout == Layout::NCHW) {  // one contiguous row of P pixels per (n, c)
    pool_rows<T, kTrack>(x, nullptr, 1, N * C, P, avg, mx, args.argmax, args.count);
  } else if (C <= kLaneBlockVecs * L) {  // rows of C channels: one item per sample, lanes are channels
    pool_lanes<T, kTrack>(x, nullptr, N, C, P, C, P * C, avg, mx, args.argmax, args.count);
  } else {  // per (n, block of channels): walk the pixels, lanes are channels
    // Wider rows keep blocks of 256 channels: measured against pool_lanes' 128 (2 threads, AMD EPYC
    // VM), this reads fewer, longer row segments and took 0.77-0.9x the time at 256-2048 channels.
    constexpr int64_t kBlock = 256;
    constexpr int64_t kVecs = kBlock / L;
    const int64_t blocks = (C + kBlock - 1) / kBlock;
    at::parallel_for(0, N * blocks, grain_for(P * kBlock), [&](int64_t begin, int64_t end) {
      Vec<A> sums[kVecs];
      Tracker<A, kTrack> trs[kVecs];
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / blocks, c0 = (item % blocks) * kBlock;
        const int64_t width = std::min(kBlock, C - c0);
        const int64_t full = width / L, rest = width % L;
        for (int64_t j = 0; j < kVecs; ++j) sums[j] = Vec<A>(0);
        const Vec<A> valid = rest ? lanes_below<A>(0, rest) : Vec<A>(0);
        for (int64_t p = 0; p < P; ++p) {
          const T* row = x + (n * P + p) * C + c0;
          const Vec<A> at(static_cast<A>(p));
          for (int64_t j = 0; j < full; ++j) {
            const Vec<A> v = Io<T>::load(row + j * L);
            sums[j] = sums[j] + v;
            trs[j].feed(p == 0, v, at);
          }
          if (rest) {
            const Vec<A> v = Io<T>::load(row + full * L, rest);
            sums[full] = sums[full] + v;
            trs[full].template feed<true>(p == 0, v, at, valid);
          }
        }
        for (int64_t j = 0; j * L < width; ++j) {
          write_lanes(trs[j], sums[j], P, n * C + c0 + j * L, std::min(L, width - j * L), avg, mx, args.argmax,
                      args.count);
        }
      }
    });
  }
}

// ------------------------------------------------------------------------------------- pool_c
// Reads x once (|x|); writes four [N,P] arrays (two without kTrack). Pools v = acc(x) * a[c] over channels.
template <typename T, Layout kLayout, bool kTrack>
void pool_c(const PoolCArgs& args) {
  using A = acc_t<T>;
  const int64_t N = args.shape.n, C = args.shape.c, P = args.shape.p;
  const T* x = static_cast<const T*>(args.x);
  const A* a = static_cast<const A*>(args.a);
  A* mean = static_cast<A*>(args.mean);
  A* mx = static_cast<A*>(args.max);
  if constexpr (kLayout == Layout::NCHW) {  // per (sample, pixel block): walk the channels, lanes are pixels
    pool_lanes<T, kTrack>(x, a, N, P, C, P, C * P, mean, mx, args.argmax, args.count);
  } else {  // one contiguous row of C channels per (n, p), scaled by a[n]
    pool_rows<T, kTrack>(x, a, a ? N : 1, a ? P : N * P, C, mean, mx, args.argmax, args.count);
  }
}

// -------------------------------------------------------------------------------- apply_gates
// Reads x, writes y (2|x|): y = (acc(x) * a[c]) * s[p].
template <typename T, Layout kLayout>
void apply_gates(const ApplyGatesArgs& args) {
  using A = acc_t<T>;
  constexpr int64_t L = Vec<A>::size();
  const int64_t N = args.shape.n, C = args.shape.c, P = args.shape.p;
  const T* x = static_cast<const T*>(args.x);
  T* y = static_cast<T*>(args.y);
  const A* a = static_cast<const A*>(args.a);
  const A* s = static_cast<const A*>(args.s);
  // rows are contiguous: (n, c) rows of P pixels in NCHW, (n, p) rows of C channels in NHWC
  constexpr bool kNchw = kLayout == Layout::NCHW;
  const int64_t len = kNchw ? P : C;
  at::parallel_for(0, kNchw ? N * C : N * P, grain_for(len), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = kNchw ? r / C : r / P;
      const A* a_row = a ? a + n * C : nullptr;  // per-channel gate
      const A* s_row = s ? s + n * P : nullptr;  // per-pixel gate
      // the gate that is constant along this row
      const bool has_row_gate = kNchw ? a != nullptr : s != nullptr;
      const Vec<A> row_gate(has_row_gate ? (kNchw ? a[r] : s[r]) : A(1));
      const A* lane_gate = kNchw ? s_row : a_row;
      const T* xr = x + r * len;
      T* yr = y + r * len;
      for (int64_t i = 0; i < len; i += L) {
        const int64_t m = std::min(L, len - i);
        Vec<A> v = m == L ? Io<T>::load(xr + i) : Io<T>::load(xr + i, m);
        if (kNchw) {  // (x * a) * s
          if (has_row_gate) v = v * row_gate;
          if (lane_gate) v = v * load_small(lane_gate + i, m, L);
        } else {
          if (lane_gate) v = v * load_small(lane_gate + i, m, L);
          if (has_row_gate) v = v * row_gate;
        }
        if (m == L) {
          Io<T>::store(yr + i, v);
        } else {
          Io<T>::store(yr + i, v, m);
        }
      }
    }
  });
}

// Sums the per-block partials [N, blocks, C] in block order into out [N, C], or, with `accumulate`,
// adds that sum to out (one rounding more: out + sum).
template <typename A>
void reduce_partials(const A* partials, A* out, int64_t N, int64_t blocks, int64_t C, bool accumulate = false) {
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const A* part = partials + n * blocks * C;
      for (int64_t c = 0; c < C; ++c) {
        A sum = 0;
        for (int64_t b = 0; b < blocks; ++b) sum += part[b * C + c];
        out[n * C + c] = accumulate ? out[n * C + c] + sum : sum;
      }
    }
  });
}

// gy where the backward passes read it: the full-size tensor, or (kGyC) gy_c[n,c], the value of a
// gy that is constant over pixels (y.sum(), a sum over pixels), read in place of a broadcast copy.
// Lanes past `m` are 0 either way, as a partial load of the full-size gy leaves them.
template <typename T, bool kGyC>
struct GyRead {
  using A = acc_t<T>;
  static constexpr int64_t L = Vec<A>::size();
  const T* gy;
  const A* gy_c;

  // `m` values from element `off` of gy, on a row along which gy_c is constant (its value at `nc`)
  Vec<A> along_pixels(int64_t off, int64_t nc, int64_t m) const {
    if constexpr (kGyC) {
      return m == L ? Vec<A>(gy_c[nc]) : Vec<A>::set(Vec<A>(0), Vec<A>(gy_c[nc]), m);
    } else {
      return m == L ? Io<T>::load(gy + off) : Io<T>::load(gy + off, m);
    }
  }
  // `m` values from element `off` of gy, on a row of channels starting at channel index `nc`
  Vec<A> along_channels(int64_t off, int64_t nc, int64_t m) const {
    if constexpr (kGyC) {
      return load_small(gy_c + nc, m, L);
    } else {
      return m == L ? Io<T>::load(gy + off) : Io<T>::load(gy + off, m);
    }
  }
  A at(int64_t off, int64_t nc) const {
    if constexpr (kGyC) {
      return gy_c[nc];
    } else {
      return static_cast<A>(gy[off]);
    }
  }
};

// --------------------------------------------------------------------------------- gate_grads
// Reads gy and x once (2|x|; |x| with kGyC): ga[n,c] = sum_p gy*x*s, gs[n,p] = sum_c gy*x*a.
template <typename T, Layout kLayout, bool kGyC>
void gate_grads(const GateGradsArgs& args) {
  using A = acc_t<T>;
  constexpr int64_t L = Vec<A>::size();
  const int64_t N = args.shape.n, C = args.shape.c, P = args.shape.p;
  const GyRead<T, kGyC> gy{static_cast<const T*>(args.gy), static_cast<const A*>(args.gy_c)};
  const T* x = static_cast<const T*>(args.x);
  const A* a = static_cast<const A*>(args.a);
  const A* s = static_cast<const A*>(args.s);
  A* ga = static_cast<A*>(args.ga);
  A* gs = static_cast<A*>(args.gs);
  const ReduceTiles tiles = reduce_tiles(kLayout, C, P);
  const int64_t blocks = tiles.blocks;
  A* partials = static_cast<A*>(args.partials);  // ga's [N, blocks, C], then gs's [N, groups, P]
  if constexpr (kLayout == Layout::NCHW) {  // per (n, pixel block, channel group): lanes are pixels
    constexpr int64_t kVecs = kNchwPixelBlock / L;
    const int64_t groups = tiles.groups;
    A* gs_partials = groups > 1 && gs ? partials + N * blocks * C : nullptr;
    at::parallel_for(0, N * blocks * groups, grain_for(tiles.group * tiles.block), [&](int64_t begin, int64_t end) {
      Vec<A> gs_acc[kVecs];
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / (blocks * groups), b = item / groups % blocks, g = item % groups;
        const int64_t p0 = b * tiles.block, width = std::min(tiles.block, P - p0);
        const int64_t c_begin = g * tiles.group, c_end = std::min(C, c_begin + tiles.group);
        const int64_t vecs = (width + L - 1) / L;
        for (int64_t j = 0; j < vecs; ++j) gs_acc[j] = Vec<A>(0);
        // kG channels at a time: each pixel vector's gs accumulator and s are loaded once per group,
        // the group's ga accumulators stay in registers. Every sum keeps its order (gs over channels,
        // ga over pixels), so the grouping does not change a bit.
        const int64_t ahead = prefetch_rows_ahead<T>(width, P);
        const auto channels = [&](int64_t c0, auto group) {
          constexpr int64_t kG = decltype(group)::value;
          Vec<A> ac[kG], ga_acc[kG];
          for (int64_t k = 0; k < kG; ++k) {
            ac[k] = Vec<A>(a ? a[n * C + c0 + k] : A(1));
            ga_acc[k] = Vec<A>(0);
            if (ahead && c0 + k + ahead < c_end) {
              const int64_t off = (n * C + c0 + k + ahead) * P + p0;
              if (!kGyC) prefetch_segment(gy.gy + off, width);
              prefetch_segment(x + off, width);
            }
          }
          for (int64_t j = 0; j < vecs; ++j) {
            const int64_t m = std::min(L, width - j * L);
            const Vec<A> sj = s ? load_small(s + n * P + p0 + j * L, m, L) : Vec<A>(1);
            Vec<A> gsj = gs_acc[j];
            for (int64_t k = 0; k < kG; ++k) {
              const int64_t off = (n * C + c0 + k) * P + p0 + j * L;
              const Vec<A> gv = gy.along_pixels(off, n * C + c0 + k, m) *
                                (m == L ? Io<T>::load(x + off) : Io<T>::load(x + off, m));
              if (gs) gsj = gsj + (a ? gv * ac[k] : gv);
              if (ga) ga_acc[k] = ga_acc[k] + (s ? gv * sj : gv);
            }
            gs_acc[j] = gsj;
          }
          if (ga) {
            for (int64_t k = 0; k < kG; ++k) partials[(n * blocks + b) * C + c0 + k] = fold_sum(ga_acc[k]);
          }
        };
        constexpr int64_t kGroup = 4;
        int64_t c = c_begin;
        for (; c + kGroup <= c_end; c += kGroup) channels(c, std::integral_constant<int64_t, kGroup>{});
        for (; c < c_end; ++c) channels(c, std::integral_constant<int64_t, 1>{});
        if (gs) {
          A* out = gs_partials ? gs_partials + (n * groups + g) * P : gs + n * P;
          for (int64_t j = 0; j < vecs; ++j) {
            const int64_t m = std::min(L, width - j * L);
            gs_acc[j].store(out + p0 + j * L, m);
          }
        }
      }
    });
    if (gs_partials) reduce_partials(gs_partials, gs, N, groups, P);
  } else {  // per (n, pixel chunk): rows of C channels, lanes are channels
    at::parallel_for(0, N * blocks, grain_for(C * kNhwcPixelChunk), [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / blocks, b = item % blocks, p0 = b * kNhwcPixelChunk;
        const int64_t p1 = std::min(P, p0 + kNhwcPixelChunk);
        A* part = partials ? partials + (n * blocks + b) * C : nullptr;
        if (ga) std::fill(part, part + C, A(0));
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t off = (n * P + p) * C;
          const Vec<A> sp(s ? s[n * P + p] : A(1));
          Vec<A> gs_acc(0);
          for (int64_t c = 0; c < C; c += L) {
            const int64_t m = std::min(L, C - c);
            const Vec<A> g = gy.along_channels(off + c, n * C + c, m) *
                             (m == L ? Io<T>::load(x + off + c) : Io<T>::load(x + off + c, m));
            if (gs) gs_acc = gs_acc + (a ? g * load_small(a + n * C + c, m, L) : g);
            if (ga) {
              const Vec<A> sum = load_small(part + c, m, L) + (s ? g * sp : g);
              sum.store(part + c, m);
            }
          }
          if (gs) gs[n * P + p] = fold_sum(gs_acc);
        }
      }
    });
  }
  if (ga) reduce_partials(partials, ga, N, blocks, C);
}

// ------------------------------------------------------------------------------ pool_c_grad_a
// Reads x once (|x|): ga[n,c] = sum_p acc(x) * (u[p] + T(c,p) * v[p]), T the tie indicator of the
// channel pool (index-style: c == argmax[p]; split-style: acc(x) * a[c] == max[p]); with
// args.accumulate, ga += that sum.
template <typename T, Layout kLayout>
void pool_c_grad_a(const PoolCGradAArgs& args) {
  using A = acc_t<T>;
  constexpr int64_t L = Vec<A>::size();
  const int64_t N = args.shape.n, C = args.shape.c, P = args.shape.p;
  const T* x = static_cast<const T*>(args.x);
  const A* a = static_cast<const A*>(args.a);
  const A* u = static_cast<const A*>(args.u);
  const A* v = static_cast<const A*>(args.v);
  const A* argmax = static_cast<const A*>(args.argmax);
  const A* mx = static_cast<const A*>(args.max);
  const bool split = args.split;
  A* partials = static_cast<A*>(args.partials);
  const ReduceTiles tiles = reduce_tiles(kLayout, C, P);
  const int64_t blocks = tiles.blocks;
  const Vec<A> one(1);
  if constexpr (kLayout == Layout::NCHW) {  // per (n, pixel block, channel group): lanes are pixels
    const int64_t groups = tiles.groups;
    at::parallel_for(0, N * blocks * groups, grain_for(tiles.group * tiles.block), [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / (blocks * groups), b = item / groups % blocks, g = item % groups;
        const int64_t p0 = b * tiles.block, width = std::min(tiles.block, P - p0);
        const int64_t c_begin = g * tiles.group, c_end = std::min(C, c_begin + tiles.group);
        const int64_t q = n * P + p0;  // offset of the block in the [N,P] arrays
        A* part = partials + (n * blocks + b) * C;
        const int64_t ahead = prefetch_rows_ahead<T>(width, P);
        for (int64_t c = c_begin; c < c_end; ++c) {
          const T* row = x + (n * C + c) * P + p0;
          if (ahead && c + ahead < c_end) prefetch_segment(row + ahead * P, width);
          const Vec<A> ac(a[n * C + c]);
          Vec<A> acc(0);
          for (int64_t i = 0; i < width; i += L) {
            const int64_t m = std::min(L, width - i);
            const Vec<A> xv = m == L ? Io<T>::load(row + i) : Io<T>::load(row + i, m);
            Vec<A> w = load_small(u + q + i, m, L);
            if (split) w = w + (((xv * ac) == load_small(mx + q + i, m, L)) & one) * load_small(v + q + i, m, L);
            acc = acc + xv * w;  // padding lanes: x = 0 and w = 0
          }
          part[c] = fold_sum(acc);
        }
        if (!split) {  // index-style: one tied channel per pixel, added after the dense sums
          // Only the pixels whose tied channel is in this group, found a vector at a time: a branch
          // per pixel would be mispredicted for about every other pixel when there are groups.
          const Vec<A> lo(static_cast<A>(c_begin)), hi(static_cast<A>(c_end));
          for (int64_t i = 0; i < width; i += L) {
            const int64_t m = std::min(L, width - i);
            const Vec<A> k = load_small(argmax + q + i, m, L);  // padding lanes: 0, cut by `lanes`
            auto lanes = static_cast<unsigned>(~((k >= lo) & (k < hi)).zero_mask()) & ((1u << m) - 1u);
            for (; lanes != 0; lanes &= lanes - 1) {
              const int64_t p = i + lowest_set_bit(lanes), c = static_cast<int64_t>(argmax[q + p]);
              part[c] += static_cast<A>(x[(n * C + c) * P + p0 + p]) * v[q + p];
            }
          }
        }
      }
    });
  } else {  // per (n, pixel chunk): rows of C channels, lanes are channels
    at::parallel_for(0, N * blocks, grain_for(C * kNhwcPixelChunk), [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / blocks, b = item % blocks, p0 = b * kNhwcPixelChunk;
        const int64_t p1 = std::min(P, p0 + kNhwcPixelChunk);
        A* part = partials + (n * blocks + b) * C;
        std::fill(part, part + C, A(0));
        for (int64_t p = p0; p < p1; ++p) {
          const T* row = x + (n * P + p) * C;
          const Vec<A> up(u[n * P + p]), vp(v[n * P + p]), mp(mx[n * P + p]);
          for (int64_t c = 0; c < C; c += L) {
            const int64_t m = std::min(L, C - c);
            const Vec<A> xv = m == L ? Io<T>::load(row + c) : Io<T>::load(row + c, m);
            Vec<A> w = up;
            if (split) w = w + (((xv * load_small(a + n * C + c, m, L)) == mp) & one) * vp;
            const Vec<A> sum = load_small(part + c, m, L) + xv * w;
            sum.store(part + c, m);
          }
          if (!split) {  // index-style: the one tied channel also gets v
            const auto k = static_cast<int64_t>(argmax[n * P + p]);
            part[k] += static_cast<A>(row[k]) * v[n * P + p];
          }
        }
      }
    });
  }
  reduce_partials(partials, static_cast<A*>(args.ga), N, blocks, C, args.accumulate);
}

// --------------------------------------------------------------------------------- input_grad
// Reads gy, writes gx (2|x|; split-style ties also read x):
// gx = A*(gy*S + u_c[p] + Tc*v_c[p]) + u_hw[c] + Thw*v_hw[c].
// One element of input_grad with index-style ties, written the way the vector code evaluates it.
template <typename A>
A input_grad_element(A gy, A s, A u_c, A v_c, bool tie_c, A a, A u_hw, A v_hw, bool tie_hw) {
  A g = gy * s;
  g = g + u_c + static_cast<A>(tie_c) * v_c;
  g = g * a;
  return g + u_hw + static_cast<A>(tie_hw) * v_hw;
}

// The whole block with index-style ties (every operand present): the tie that is sparse along a
// row (one element per row) is left out of the vector loop and that element is rewritten after it.
template <typename T, Layout kLayout, bool kGyC>
void input_grad_index_full(const InputGradArgs& args) {
  using A = acc_t<T>;
  constexpr int64_t L = Vec<A>::size();
  const int64_t N = args.shape.n, C = args.shape.c, P = args.shape.p;
  const GyRead<T, kGyC> gy{static_cast<const T*>(args.gy), static_cast<const A*>(args.gy_c)};
  T* gx = static_cast<T*>(args.gx);
  const auto small = [](const void* p) { return static_cast<const A*>(p); };
  const A *a = small(args.a), *s = small(args.s);
  const A *u_c = small(args.u_c), *v_c = small(args.v_c), *k_c = small(args.argmax_c);
  const A *u_hw = small(args.u_hw), *v_hw = small(args.v_hw), *k_hw = small(args.argmax_hw);
  const Vec<A> one(1);
  constexpr bool kNchw = kLayout == Layout::NCHW;
  const int64_t len = kNchw ? P : C;
  at::parallel_for(0, kNchw ? N * C : N * P, grain_for(len), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = kNchw ? r / C : r / P;
      const int64_t row = r * len;
      T* gxr = gx + row;
      if constexpr (kNchw) {  // row (n, c): per-pixel terms vary along it; the pixel tie is sparse
        const int64_t c = r % C;
        const A* sp = s + n * P;
        const A *ucp = u_c + n * P, *vcp = v_c + n * P, *kcp = k_c + n * P;
        const Vec<A> ac(a[r]), uhw(u_hw[r]), at(static_cast<A>(c));
        for (int64_t i = 0; i < len; i += L) {
          const int64_t m = std::min(L, len - i);
          Vec<A> g = gy.along_pixels(row + i, r, m);
          const Vec<A> tie = (at == load_small(kcp + i, m, L)) & one;
          g = g * load_small(sp + i, m, L) + load_small(ucp + i, m, L) + tie * load_small(vcp + i, m, L);
          g = g * ac + uhw;
          if (m == L) {
            Io<T>::store(gxr + i, g);
          } else {
            Io<T>::store(gxr + i, g, m);
          }
        }
        const auto p = static_cast<int64_t>(k_hw[r]);
        gxr[p] = static_cast<T>(input_grad_element<A>(gy.at(row + p, r), sp[p], ucp[p], vcp[p],
                                                      static_cast<int64_t>(kcp[p]) == c, a[r], u_hw[r], v_hw[r], true));
      } else {  // row (n, p): per-channel terms vary along it; the channel tie is sparse
        const int64_t p = r % P;
        const A *ap = a + n * C, *uhp = u_hw + n * C, *vhp = v_hw + n * C, *khp = k_hw + n * C;
        const Vec<A> sv(s[r]), uc(u_c[r]), at(static_cast<A>(p));
        for (int64_t i = 0; i < len; i += L) {
          const int64_t m = std::min(L, len - i);
          Vec<A> g = gy.along_channels(row + i, n * C + i, m);
          const Vec<A> tie = (at == load_small(khp + i, m, L)) & one;
          g = (g * sv + uc) * load_small(ap + i, m, L);
          g = g + load_small(uhp + i, m, L) + tie * load_small(vhp + i, m, L);
          if (m == L) {
            Io<T>::store(gxr + i, g);
          } else {
            Io<T>::store(gxr + i, g, m);
          }
        }
        const auto c = static_cast<int64_t>(k_c[r]);
        gxr[c] = static_cast<T>(input_grad_element<A>(gy.at(row + c, n * C + c), s[r], u_c[r], v_c[r], true, ap[c],
                                                      uhp[c], vhp[c], static_cast<int64_t>(khp[c]) == p));
      }
    }
  });
}

template <typename T, Layout kLayout, bool kGyC>
void input_grad(const InputGradArgs& args) {
  if (!args.split && args.a && args.s && args.u_c && args.u_hw) {
    return input_grad_index_full<T, kLayout, kGyC>(args);
  }
  using A = acc_t<T>;
  constexpr int64_t L = Vec<A>::size();
  const int64_t N = args.shape.n, C = args.shape.c, P = args.shape.p;
  const GyRead<T, kGyC> gy{static_cast<const T*>(args.gy), static_cast<const A*>(args.gy_c)};
  const T* x = static_cast<const T*>(args.x);
  T* gx = static_cast<T*>(args.gx);
  const auto small = [](const void* p) { return static_cast<const A*>(p); };
  const A *a = small(args.a), *s = small(args.s);
  const A *u_c = small(args.u_c), *v_c = small(args.v_c), *k_c = small(args.argmax_c), *m_c = small(args.max_c);
  const A *u_hw = small(args.u_hw), *v_hw = small(args.v_hw), *k_hw = small(args.argmax_hw),
          *m_hw = small(args.max_hw);
  const bool split = args.split;
  const Vec<A> one(1);
  constexpr bool kNchw = kLayout == Layout::NCHW;
  const int64_t len = kNchw ? P : C;
  at::parallel_for(0, kNchw ? N * C : N * P, grain_for(len), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = kNchw ? r / C : r / P;
      const int64_t row_c = kNchw ? r % C : 0, row_p = kNchw ? 0 : r % P;
      // Per-channel terms ([N,C]) are broadcast along an NCHW row and loaded along an NHWC row;
      // per-pixel terms ([N,P]) the other way round. `lane` loads a lane-varying small array at
      // i, `bcast` broadcasts a row-constant one; `chan`/`pix` pick whichever applies.
      const int64_t chan0 = n * C + row_c, pix0 = n * P + row_p;
      const int64_t row = r * len;
      const T* xr = x ? x + row : nullptr;
      T* gxr = gx + r * len;
      for (int64_t i = 0; i < len; i += L) {
        const int64_t m = std::min(L, len - i);
        const auto chan = [&](const A* t) {
          return kNchw ? Vec<A>(t[chan0]) : load_small(t + chan0 + i, m, L);
        };
        const auto pix = [&](const A* t) {
          return kNchw ? load_small(t + pix0 + i, m, L) : Vec<A>(t[pix0]);
        };
        const Vec<A> at_c = kNchw ? Vec<A>(static_cast<A>(row_c)) : Vec<A>::arange(static_cast<A>(i), 1);
        const Vec<A> at_p = kNchw ? Vec<A>::arange(static_cast<A>(i), 1) : Vec<A>(static_cast<A>(row_p));
        Vec<A> g = kNchw ? gy.along_pixels(row + i, chan0, m) : gy.along_channels(row + i, chan0 + i, m);
        Vec<A> xv(0);
        if (split) xv = m == L ? Io<T>::load(xr + i) : Io<T>::load(xr + i, m);
        if (s) g = g * pix(s);
        if (u_c) {
          const Vec<A> tie = split ? (a ? xv * chan(a) : xv) == pix(m_c) : at_c == pix(k_c);
          g = g + pix(u_c) + (tie & one) * pix(v_c);
        }
        if (a) g = g * chan(a);
        if (u_hw) {
          const Vec<A> tie = split ? xv == chan(m_hw) : at_p == chan(k_hw);
          g = g + chan(u_hw) + (tie & one) * chan(v_hw);
        }
        if (m == L) {
          Io<T>::store(gxr + i, g);
        } else {
          Io<T>::store(gxr + i, g, m);
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------ the table
template <typename T>
void fill_dtype(KernelTable& t, DType d) {
  const int i = static_cast<int>(d);
  constexpr int kN = static_cast<int>(Layout::NCHW), kC = static_cast<int>(Layout::NHWC);
  t.pool_hw[i][kN][0] = &pool_hw<T, Layout::NCHW, false>;
  t.pool_hw[i][kC][0] = &pool_hw<T, Layout::NHWC, false>;
  t.pool_c[i][kN][0] = &pool_c<T, Layout::NCHW, false>;
  t.pool_c[i][kC][0] = &pool_c<T, Layout::NHWC, false>;
  t.pool_hw[i][kN][1] = &pool_hw<T, Layout::NCHW, true>;
  t.pool_hw[i][kC][1] = &pool_hw<T, Layout::NHWC, true>;
  t.pool_c[i][kN][1] = &pool_c<T, Layout::NCHW, true>;
  t.pool_c[i][kC][1] = &pool_c<T, Layout::NHWC, true>;
  t.apply_gates[i][kN] = &apply_gates<T, Layout::NCHW>;
  t.apply_gates[i][kC] = &apply_gates<T, Layout::NHWC>;
  t.gate_grads[i][kN][0] = &gate_grads<T, Layout::NCHW, false>;
  t.gate_grads[i][kC][0] = &gate_grads<T, Layout::NHWC, false>;
  t.gate_grads[i][kN][1] = &gate_grads<T, Layout::NCHW, true>;
  t.gate_grads[i][kC][1] = &gate_grads<T, Layout::NHWC, true>;
  t.pool_c_grad_a[i][kN] = &pool_c_grad_a<T, Layout::NCHW>;
  t.pool_c_grad_a[i][kC] = &pool_c_grad_a<T, Layout::NHWC>;
  t.input_grad[i][kN][0] = &input_grad<T, Layout::NCHW, false>;
  t.input_grad[i][kC][0] = &input_grad<T, Layout::NHWC, false>;
  t.input_grad[i][kN][1] = &input_grad<T, Layout::NCHW, true>;
  t.input_grad[i][kC][1] = &input_grad<T, Layout::NHWC, true>;
}

inline void fill_table(KernelTable& t) {
  fill_dtype<float>(t, DType::F32);
  fill_dtype<double>(t, DType::F64);
  fill_dtype<c10::BFloat16>(t, DType::BF16);
  fill_dtype<c10::Half>(t, DType::F16);
}

}  // namespace CPU_CAPABILITY
}  // namespace cbam_fused::cpu
