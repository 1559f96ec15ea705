// Prefill attention: many new queries of one sequence (a prompt or a long chunk of one) over its
// cached keys and values, with the scores and the weighted sum as bf16 dot products (vdpbf16ps,
// fp32 accumulation) in the flash-attention order: key tiles stream past a block of queries
// whose running max, sum and output stay in fp32, so no [T, S] score matrix is ever built.
//
// Why its own kernel: torch's SDPA runs these shapes in fp32 at a fraction of the FMA units' rate
// and, past the first chunk of a prompt, needs an explicit [T, S] mask; the decode kernel reads
// every key once per query. Here every key tile is packed once per call into the layouts the
// dot products want and then reused by every query block that sees it.
//
// Precision: keys and values are rounded to bf16 (the serving cache holds bf16 already; the
// layers send other caches to the reference). Queries and softmax weights are each split into
// two bf16 parts, so they keep ~16 bits; scores, maxima, sums and outputs are fp32. The
// reference is SDPA in fp32 (ember.kernels.fused.prefill_attention_reference).
//
// Keys and values are read through a block table: position p of kv head h is row p % block_size
// of block table[p / block_size]. A contiguous cache is one block.
#include <ATen/ATen.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "fused.h"
#include "paged_checks.h"
#include "parallel.h"

namespace {

namespace vec = ember::vec;

constexpr int64_t kTileKeys = 64;       // keys per tile: four 16-lane score vectors per row
constexpr int64_t kTilePairs = kTileKeys / 2;
constexpr int64_t kTileRows = 4;        // query rows held in registers at once
constexpr int64_t kUnitPositions = 16;  // query positions per task (times the GQA group: rows)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

#define EMBER_INLINE inline __attribute__((always_inline))

// Where one kv head's rows live, and how to widen them to fp32.
template <typename KV>
struct KeyRows {
  const KV* base;
  int64_t block_stride, row_stride, head_stride, block_size, kv_heads;
  const int32_t* table;
  const float* scales;  // int8 pages: [blocks, kv_heads, block_size]; else null

  const KV* row(int64_t position, int64_t head, float* scale) const {
    const int64_t block = table[position / block_size], offset = position % block_size;
    *scale = scales != nullptr ? scales[(block * kv_heads + head) * block_size + offset] : 1.0f;
    return base + block * block_stride + offset * row_stride + head * head_stride;
  }
};

// Parts a cache's values take as bf16: one for bf16 pages (exact), two (high, and what high
// left) for fp16 / int8 / fp32 ones, which keep ~16 bits: exact for fp16, the KV dtype
// llama.cpp uses, so the kernel adds no rounding of its own to any cache it reads.
template <typename KV>
constexpr int kv_parts() {
  return std::is_same_v<KV, vec::Bf16> ? 1 : 2;
}

// One row of `dim` values (a multiple of 16) as round-to-nearest-even bf16 parts: high, and
// (two parts) low = x - high.
template <typename KV>
EMBER_INLINE void row_to_bf16(const KV* src, float scale, int64_t dim, uint16_t* high,
                              uint16_t* low) {
  if constexpr (kv_parts<KV>() == 1) {
    std::memcpy(high, src, dim * sizeof(uint16_t));
  } else {
    const __m512 s = _mm512_set1_ps(scale);
    for (int64_t d = 0; d < dim; d += 16) {
      const __m512 v = _mm512_mul_ps(vec::load(src + d, 0xFFFF), s);
      const __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
      const __m512 rest =
          _mm512_sub_ps(v, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(high + d), h);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(low + d), (__m256i)_mm512_cvtneps_pbh(rest));
    }
  }
}

// Sizes (in pairs) of one part of a packed tile.
inline int64_t key_part_size(int64_t dim) { return dim / 2 * kTileKeys; }
inline int64_t value_part_size(int64_t dim) { return kTilePairs * dim; }

// Packs keys [k0, k0 + count) of one head (count <= kTileKeys; the rest of the tile is zero)
// into `tile`: the key parts, then the value parts. Keys as [dim / 2][kTileKeys] pairs (a pair:
// two consecutive dims of one key), so one vector holds the same dim pair of 16 keys; values as
// [kTilePairs][dim] pairs (a pair: one dim of two consecutive keys), so one vector holds 16 dims
// of a key pair. `rows`: room for 4 * dim values.
template <typename KV>
void pack_tile(const KeyRows<KV>& keys, const KeyRows<KV>& values, int64_t head, int64_t k0,
               int64_t count, int64_t dim, uint32_t* tile, uint16_t* rows) {
  constexpr int parts = kv_parts<KV>();
  const int64_t half = dim / 2, k_part = key_part_size(dim), v_part = value_part_size(dim);
  for (int64_t n = 0; n < kTileKeys; ++n) {
    if (n < count) {
      float scale;
      const KV* src = keys.row(k0 + n, head, &scale);
      row_to_bf16(src, scale, dim, rows, rows + dim);
      for (int p = 0; p < parts; ++p) {
        const uint32_t* pairs = reinterpret_cast<const uint32_t*>(rows + p * dim);
        for (int64_t d2 = 0; d2 < half; ++d2) tile[p * k_part + d2 * kTileKeys + n] = pairs[d2];
      }
    } else {
      for (int p = 0; p < parts; ++p)
        for (int64_t d2 = 0; d2 < half; ++d2) tile[p * k_part + d2 * kTileKeys + n] = 0;
    }
  }
  uint32_t* v_tile = tile + parts * k_part;
  uint16_t* second = rows + 2 * dim;  // the next key's parts
  for (int64_t j = 0; j < kTilePairs; ++j) {
    const int64_t n = 2 * j;
    if (n >= count) {  // zeros, not garbage: a zero weight times NaN would still be NaN
      for (int p = 0; p < parts; ++p)
        std::fill(v_tile + p * v_part + j * dim, v_tile + p * v_part + (j + 1) * dim, 0u);
      continue;
    }
    float scale;
    const KV* src = values.row(k0 + n, head, &scale);
    row_to_bf16(src, scale, dim, rows, rows + dim);
    if (n + 1 < count) {
      src = values.row(k0 + n + 1, head, &scale);
      row_to_bf16(src, scale, dim, second, second + dim);
    } else {
      std::fill(second, second + 2 * dim, uint16_t{0});
    }
    for (int p = 0; p < parts; ++p) {
      uint32_t* dst = v_tile + p * v_part + j * dim;
      const uint16_t *a_row = rows + p * dim, *b_row = second + p * dim;
      for (int64_t d = 0; d < dim; d += 16) {
        const __m512i a = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(a_row + d)));
        const __m512i b = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(b_row + d)));
        _mm512_storeu_si512(dst + d, _mm512_or_si512(a, _mm512_slli_epi32(b, 16)));
      }
    }
  }
}

// A row of fp32 values (queries, softmax weights) as two bf16 rows, high and low = x - high,
// interleaved by pair: [pair][2] (pair: two consecutive values). Two parts keep ~16 bits of
// mantissa: one bf16 rounding of a query moves a score of 30 by ~0.06 and its weight by 6%;
// two bring the kernel within ~1e-5 of fp32 attention (a third part cost a sixth more time and
// gained nothing measurable: the matmuls around it round their activations at 4e-3).
EMBER_INLINE void split_to_bf16_pairs(const float* x, int64_t dim, uint32_t* dst) {
  for (int64_t d = 0; d < dim; d += 16) {  // dim is a multiple of 16
    const __m512 v = _mm512_loadu_ps(x + d);
    const __m256i high = (__m256i)_mm512_cvtneps_pbh(v);  // 8 pairs
    const __m512 wide = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(high), 16));
    const __m256i low = (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(v, wide));
    // Within 128-bit lanes: (h0 l0 h1 l1), (h2 l2 h3 l3); then the lanes back in pair order.
    const __m256i first = _mm256_unpacklo_epi32(high, low);
    const __m256i second = _mm256_unpackhi_epi32(high, low);
    __m256i* out = reinterpret_cast<__m256i*>(dst + d);
    _mm256_storeu_si256(out, _mm256_permute2x128_si256(first, second, 0x20));
    _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(first, second, 0x31));
  }
}

constexpr int kQueryParts = 2;
constexpr int kWeightParts = 2;

// scores[i][c] (16 keys each) = dot(query row i, keys of the tile) for R rows; queries as
// split_to_bf16_pairs gives them, keys in KVParts parts (the low-by-low product, ~2^-16 of
// the score, is left out).
template <int R, int KVParts>
EMBER_INLINE void tile_scores(const uint32_t* queries, int64_t half, const uint32_t* k_tile,
                              __m512 scores[R][4]) {
  static_assert(kQueryParts == 2);
  const int64_t k_part = half * kTileKeys;
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < 4; ++c) scores[i][c] = _mm512_setzero_ps();
  for (int64_t d2 = 0; d2 < half; ++d2) {
    const uint32_t* k = k_tile + d2 * kTileKeys;
    __m512bh high[4], low[4];
    for (int c = 0; c < 4; ++c) high[c] = (__m512bh)_mm512_loadu_si512(k + 16 * c);
    if constexpr (KVParts == 2)
      for (int c = 0; c < 4; ++c) low[c] = (__m512bh)_mm512_loadu_si512(k + k_part + 16 * c);
    for (int i = 0; i < R; ++i) {
      const uint32_t* parts = queries + kQueryParts * (i * half + d2);
      const __m512bh q_high = (__m512bh)_mm512_set1_epi32(static_cast<int>(parts[0]));
      const __m512bh q_low = (__m512bh)_mm512_set1_epi32(static_cast<int>(parts[1]));
      for (int c = 0; c < 4; ++c) {
        scores[i][c] = _mm512_dpbf16_ps(scores[i][c], q_high, high[c]);
        scores[i][c] = _mm512_dpbf16_ps(scores[i][c], q_low, high[c]);
        if constexpr (KVParts == 2) scores[i][c] = _mm512_dpbf16_ps(scores[i][c], q_high, low[c]);
      }
    }
  }
}

// out[i][d0 .. d0 + 16C) = out * correction[i] + sum_j weights[i][j] * value pair j, R rows;
// weights as split_to_bf16_pairs gives them, [kTilePairs][kWeightParts] per row; values in
// KVParts parts (low-by-low left out).
template <int R, int C, int KVParts>
EMBER_INLINE void tile_values(const uint32_t* weights, const float* correction,
                              const uint32_t* v_tile, int64_t pairs, int64_t dim, int64_t d0,
                              float* out) {
  static_assert(kWeightParts == 2);
  const int64_t v_part = kTilePairs * dim;
  __m512 acc[R][C];
  for (int i = 0; i < R; ++i) {
    const __m512 f = _mm512_set1_ps(correction[i]);
    for (int c = 0; c < C; ++c)
      acc[i][c] = _mm512_mul_ps(_mm512_loadu_ps(out + i * dim + d0 + 16 * c), f);
  }
  for (int64_t j = 0; j < pairs; ++j) {
    const uint32_t* v = v_tile + j * dim + d0;
    __m512bh high[C], low[C];
    for (int c = 0; c < C; ++c) high[c] = (__m512bh)_mm512_loadu_si512(v + 16 * c);
    if constexpr (KVParts == 2)
      for (int c = 0; c < C; ++c) low[c] = (__m512bh)_mm512_loadu_si512(v + v_part + 16 * c);
    for (int i = 0; i < R; ++i) {
      const uint32_t* parts = weights + kWeightParts * (i * kTilePairs + j);
      const __m512bh w_high = (__m512bh)_mm512_set1_epi32(static_cast<int>(parts[0]));
      const __m512bh w_low = (__m512bh)_mm512_set1_epi32(static_cast<int>(parts[1]));
      for (int c = 0; c < C; ++c) {
        acc[i][c] = _mm512_dpbf16_ps(acc[i][c], w_high, high[c]);
        acc[i][c] = _mm512_dpbf16_ps(acc[i][c], w_low, high[c]);
        if constexpr (KVParts == 2) acc[i][c] = _mm512_dpbf16_ps(acc[i][c], w_high, low[c]);
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(out + i * dim + d0 + 16 * c, acc[i][c]);
}

// Lanes l of a 16-key vector starting at key `first` with lo <= first + l <= hi.
EMBER_INLINE __mmask16 lanes_between(int64_t first, int64_t lo, int64_t hi) {
  const int64_t a = std::max<int64_t>(lo - first, 0), b = std::min<int64_t>(hi - first, 15);
  if (b < a) return 0;
  return static_cast<__mmask16>(((1u << (b - a + 1)) - 1u) << a);
}

struct Shape {
  int64_t tokens, q_heads, kv_heads, group, dim, start, window;
  float scale;
  int64_t first_key(int64_t t) const {
    return window > 0 ? std::max<int64_t>(0, start + t - window + 1) : 0;
  }
  int64_t last_key(int64_t t) const { return start + t; }  // inclusive
};

// Per-row state of one task's rows.
struct Rows {
  const uint32_t* queries;  // [count][dim / 2][kQueryParts] bf16 pairs
  float* out;               // [count][dim]
  float* max;
  float* sum;
  const int64_t* first;  // visible keys of each row: [first, last]
  const int64_t* last;
};

// One key tile against R rows: scores, the online softmax update, the weighted values.
template <int R, int KVParts>
void attend_tile(const Shape& s, const Rows& rows, int64_t r0, int64_t k0, int64_t valid,
                 const uint32_t* k_tile, const uint32_t* v_tile, uint32_t* weights) {
  const int64_t half = s.dim / 2;
  __m512 scores[R][4];
  tile_scores<R, KVParts>(rows.queries + kQueryParts * r0 * half, half, k_tile, scores);
  float correction[R];
  const __m512 scale = _mm512_set1_ps(s.scale);
  for (int i = 0; i < R; ++i) {
    const int64_t lo = rows.first[r0 + i], hi = std::min(rows.last[r0 + i], k0 + valid - 1);
    __mmask16 masks[4];
    __m512 tile_max = _mm512_set1_ps(kNegInf);
    for (int c = 0; c < 4; ++c) {
      masks[c] = lanes_between(k0 + 16 * c, lo, hi);
      scores[i][c] = _mm512_mul_ps(scores[i][c], scale);
      tile_max = _mm512_mask_max_ps(tile_max, masks[c], tile_max, scores[i][c]);
    }
    const float m_tile = _mm512_reduce_max_ps(tile_max);
    uint32_t* w = weights + kWeightParts * i * kTilePairs;
    if (m_tile == kNegInf) {  // this row sees no key of the tile
      correction[i] = 1.0f;
      std::fill(w, w + kWeightParts * kTilePairs, 0u);
      continue;
    }
    const float m_old = rows.max[r0 + i], m_new = std::max(m_old, m_tile);
    correction[i] = std::exp(m_old - m_new);  // 0 for the first tile a row sees
    const __m512 shift = _mm512_set1_ps(m_new);
    __m512 p[4];
    __m512 total = _mm512_setzero_ps();
    for (int c = 0; c < 4; ++c) {
      p[c] = _mm512_maskz_mov_ps(masks[c], vec::exp(_mm512_sub_ps(scores[i][c], shift)));
      total = _mm512_add_ps(total, p[c]);
    }
    rows.max[r0 + i] = m_new;
    rows.sum[r0 + i] = rows.sum[r0 + i] * correction[i] + _mm512_reduce_add_ps(total);
    // Keys 2j and 2j + 1 side by side: the pair layout of the value tile.
    alignas(64) float probabilities[kTileKeys];
    for (int c = 0; c < 4; ++c) _mm512_store_ps(probabilities + 16 * c, p[c]);
    split_to_bf16_pairs(probabilities, kTileKeys, w);
  }
  const int64_t pairs = (valid + 1) / 2;
  float* out = rows.out + r0 * s.dim;
  int64_t d0 = 0;
  for (; d0 + 64 <= s.dim; d0 += 64)
    tile_values<R, 4, KVParts>(weights, correction, v_tile, pairs, s.dim, d0, out);
  switch ((s.dim - d0) / 16) {
    case 3:
      tile_values<R, 3, KVParts>(weights, correction, v_tile, pairs, s.dim, d0, out);
      break;
    case 2:
      tile_values<R, 2, KVParts>(weights, correction, v_tile, pairs, s.dim, d0, out);
      break;
    case 1:
      tile_values<R, 1, KVParts>(weights, correction, v_tile, pairs, s.dim, d0, out);
      break;
    default:
      break;
  }
}

template <typename KV>
void prefill_attend(const Shape& s, const float* q, int64_t q_stride0, int64_t q_stride1,
                    const KeyRows<KV>& keys, const KeyRows<KV>& values, float* out) {
  const int64_t lo = s.first_key(0), hi = s.last_key(s.tokens - 1) + 1;  // keys [lo, hi)
  const int64_t tiles = (hi - lo + kTileKeys - 1) / kTileKeys;
  const int64_t half = s.dim / 2;
  constexpr int parts = kv_parts<KV>();
  const int64_t keys_size = parts * key_part_size(s.dim);
  const int64_t tile_size = keys_size + parts * value_part_size(s.dim);
  // Every tile of every kv head, packed once; tasks below read them in any order.
  std::unique_ptr<uint32_t[]> packed(new uint32_t[s.kv_heads * tiles * tile_size]);
  auto tile_of = [&](int64_t head, int64_t tile) {
    return packed.get() + (head * tiles + tile) * tile_size;
  };
  ember::parallel_grain(s.kv_heads * tiles, 1, [&](int64_t u0, int64_t u1) {
    std::vector<uint16_t> rows(4 * s.dim);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t head = u / tiles, tile = u % tiles;
      const int64_t k0 = lo + tile * kTileKeys;
      pack_tile(keys, values, head, k0, std::min(kTileKeys, hi - k0), s.dim, tile_of(head, tile),
                rows.data());
    }
  });

  // Tasks: (block of query positions, kv head), the last positions (most keys) first so the
  // pool's shrinking pieces end on the cheap ones.
  const int64_t blocks = (s.tokens + kUnitPositions - 1) / kUnitPositions;
  ember::parallel_grain(blocks * s.kv_heads, 1, [&](int64_t u0, int64_t u1) {
    const int64_t max_rows = kUnitPositions * s.group;
    std::vector<uint32_t> queries(kQueryParts * max_rows * half);
    std::vector<float> acc(max_rows * s.dim);
    std::vector<float> row_max(max_rows), row_sum(max_rows);
    std::vector<int64_t> first(max_rows), last(max_rows);
    alignas(64) uint32_t weights[kWeightParts * kTileRows * kTilePairs];
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t block = blocks - 1 - u / s.kv_heads, head = u % s.kv_heads;
      const int64_t t0 = block * kUnitPositions;
      const int64_t t1 = std::min(s.tokens, t0 + kUnitPositions);
      const int64_t count = (t1 - t0) * s.group;
      // Row r: position t0 + r / group, query head head * group + r % group.
      for (int64_t r = 0; r < count; ++r) {
        const int64_t t = t0 + r / s.group, h = head * s.group + r % s.group;
        split_to_bf16_pairs(q + t * q_stride0 + h * q_stride1, s.dim,
                                         queries.data() + kQueryParts * r * half);
        first[r] = s.first_key(t);
        last[r] = s.last_key(t);
        row_max[r] = kNegInf;
        row_sum[r] = 0.f;
      }
      std::fill(acc.begin(), acc.begin() + count * s.dim, 0.f);
      const Rows rows{queries.data(), acc.data(), row_max.data(), row_sum.data(),
                      first.data(), last.data()};
      const int64_t tile0 = (s.first_key(t0) - lo) / kTileKeys;
      const int64_t tile1 = (s.last_key(t1 - 1) - lo) / kTileKeys;  // inclusive
      for (int64_t tile = tile0; tile <= tile1; ++tile) {
        const int64_t k0 = lo + tile * kTileKeys;
        const int64_t valid = std::min(kTileKeys, hi - k0);
        const uint32_t* k_tile = tile_of(head, tile);
        const uint32_t* v_tile = k_tile + keys_size;
        int64_t r0 = 0;
        for (; r0 + kTileRows <= count; r0 += kTileRows) {
          // Rows are in position order: skip the tile when every row's keys end before it
          // (causal) or start after it (window).
          if (rows.last[r0 + kTileRows - 1] < k0 || rows.first[r0] > k0 + valid - 1) continue;
          attend_tile<kTileRows, parts>(s, rows, r0, k0, valid, k_tile, v_tile, weights);
        }
        switch (count - r0) {
          case 3:
            attend_tile<3, parts>(s, rows, r0, k0, valid, k_tile, v_tile, weights);
            break;
          case 2:
            attend_tile<2, parts>(s, rows, r0, k0, valid, k_tile, v_tile, weights);
            break;
          case 1:
            attend_tile<1, parts>(s, rows, r0, k0, valid, k_tile, v_tile, weights);
            break;
          default:
            break;
        }
      }
      for (int64_t r = 0; r < count; ++r) {
        const int64_t t = t0 + r / s.group, h = head * s.group + r % s.group;
        const __m512 inv = _mm512_set1_ps(1.0f / row_sum[r]);
        float* dst = out + (t * s.q_heads + h) * s.dim;
        const float* src = acc.data() + r * s.dim;
        for (int64_t d = 0; d < s.dim; d += 16)
          _mm512_storeu_ps(dst + d, _mm512_mul_ps(_mm512_loadu_ps(src + d), inv));
      }
    }
  });
}

// q: [T, Hq, D] float32 (last dim contiguous); k_cache / v_cache: [blocks, block_size, Hk, D]
// (any strides but the last), float32, bfloat16, float16 or int8 with per-row scales;
// block_table: int32 [n], the sequence's blocks in order. Queries are positions
// [seq_len - T, seq_len); window > 0 limits each to its last `window` keys.
at::Tensor prefill_attention(const at::Tensor& q, const at::Tensor& k_cache,
                             const at::Tensor& v_cache, const at::Tensor& block_table,
                             int64_t seq_len, double scale, int64_t window,
                             const std::optional<at::Tensor>& k_scales,
                             const std::optional<at::Tensor>& v_scales) {
  TORCH_CHECK(q.device().is_cpu() && q.scalar_type() == at::kFloat && q.dim() == 3 &&
                  q.stride(2) == 1,
              "ember prefill_attention: q must be CPU float32 [T, heads, head_dim] with a "
              "contiguous last dim");
  constexpr const char* kOp = "ember prefill_attention";
  ember::check_paged_caches(k_cache, v_cache, kOp);
  // The scales are indexed [block][kv head][row]: the pages' own (head-major) layout.
  ember::check_page_scales(k_cache.transpose(1, 2), k_scales, "k_scales", kOp);
  ember::check_page_scales(v_cache.transpose(1, 2), v_scales, "v_scales", kOp);
  TORCH_CHECK(block_table.scalar_type() == at::kInt && block_table.dim() == 1,
              "ember prefill_attention: block_table must be an int32 vector");
  Shape s{};
  s.tokens = q.size(0);
  s.q_heads = q.size(1);
  s.dim = q.size(2);
  s.kv_heads = k_cache.size(2);
  s.window = window;
  s.scale = static_cast<float>(scale);
  s.start = seq_len - s.tokens;
  TORCH_CHECK(s.dim % 16 == 0 && s.dim > 0 && k_cache.size(3) == s.dim,
              "ember prefill_attention: head_dim ", s.dim, " must be a multiple of 16 and match "
              "the caches' ", k_cache.size(3));
  TORCH_CHECK(s.kv_heads > 0 && s.q_heads % s.kv_heads == 0, "ember prefill_attention: ",
              s.q_heads, " query heads do not share ", s.kv_heads, " kv heads evenly");
  s.group = s.q_heads / s.kv_heads;
  const int64_t block_size = k_cache.size(1);
  TORCH_CHECK(s.start >= 0 && seq_len <= block_table.size(0) * block_size,
              "ember prefill_attention: ", s.tokens, " queries ending at position ", seq_len - 1,
              " need more than the ", block_table.size(0), " blocks of ", block_size, " given");
  const at::Tensor table = block_table.contiguous();
  const int32_t* tb = table.const_data_ptr<int32_t>();
  // Every block the kernel will read is checked before any is read.
  const int64_t lo = s.first_key(0);
  for (int64_t i = lo / block_size; i * block_size < seq_len; ++i)
    TORCH_CHECK(tb[i] >= 0 && tb[i] < k_cache.size(0), "ember prefill_attention: block id ",
                tb[i], " outside the pool of ", k_cache.size(0));
  at::Tensor out = at::empty({s.tokens, s.q_heads, s.dim}, q.options());
  if (s.tokens == 0) return out;
  auto run = [&](auto* type, const float* ks, const float* vs) {
    using T = std::remove_pointer_t<decltype(type)>;
    const KeyRows<T> keys{static_cast<const T*>(k_cache.const_data_ptr()),
                          k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_size,
                          s.kv_heads, tb, ks};
    const KeyRows<T> values{static_cast<const T*>(v_cache.const_data_ptr()),
                            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_size,
                            s.kv_heads, tb, vs};
    prefill_attend(s, q.const_data_ptr<float>(), q.stride(0), q.stride(1), keys, values,
                   out.mutable_data_ptr<float>());
  };
  switch (k_cache.scalar_type()) {
    case at::kFloat:
      run(static_cast<float*>(nullptr), nullptr, nullptr);
      break;
    case at::kBFloat16:
      run(static_cast<vec::Bf16*>(nullptr), nullptr, nullptr);
      break;
    case at::kHalf:
      run(static_cast<vec::Fp16*>(nullptr), nullptr, nullptr);
      break;
    case at::kChar:
      run(static_cast<int8_t*>(nullptr), k_scales->const_data_ptr<float>(),
          v_scales->const_data_ptr<float>());
      break;
    default:
      TORCH_CHECK(false, "ember prefill_attention: KV cache dtype ", k_cache.scalar_type(),
                  " is not float32, bfloat16, float16 or int8");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ember, m) {
  m.def(
      "prefill_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, "
      "int seq_len, float scale, int window, Tensor? k_scales=None, Tensor? v_scales=None) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(ember, CPU, m) { m.impl("prefill_attention", &prefill_attention); }
