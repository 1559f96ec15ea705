// Small-M matmul straight from GGML blocks: int8 activations, VNNI integer dot products.
//
// Activations are quantized like GGML's Q8_0 (one scale per 32 values) for the 32-weight block
// types and like Q8_K (one scale per 256) for the K-quants, whose 6-bit / int8 sub-block scales
// are then applied in the integer domain (vpmaddubsw + vpdpwssd). Each weight row is streamed
// once for up to kGemvMaxRows activation rows.
#include <cstring>

#include "blocks.h"
#include "ember_kernels.h"

namespace ember {
namespace {

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

#define EMBER_INLINE inline __attribute__((always_inline))

// ---- Quantized activations, interleaved unit-major: [unit][activation row][fields] ----
// so that every load in the kernels is one base pointer plus a compile-time offset.
//
// 32-weight types: a unit is a block pair (64 values), 256 bytes per row:
//   [0, 64) int8 q | [64, 128) float scale per lane | [128, 192) int32 -(sum of the lane's q)
//   | [192, 256) float scale * (sum of the lane's q)
// where a "lane" is the 4 consecutive values one vpdpbusd int32 lane covers.
constexpr int64_t kPairBytes = 256;
// K-quants: a unit is a super-block (256 values), 320 bytes per row:
//   [0, 256) int8 q | [256, 288) int16 sum per 16 | [288, 304) int16 sum per 32 | [304] float scale
constexpr int64_t kSuperBytes = 320;

// Weight rows are streamed once: asking for the lines 2 KB ahead keeps more DRAM reads in
// flight than the hardware prefetcher alone (about 10% on a 178 MB Q8_0 LM head).
constexpr int64_t kPrefetchBytes = 2048;

inline void prefetch_lines(const uint8_t* p, int lines) {
  for (int i = 0; i < lines; ++i)
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes + 64 * i), _MM_HINT_T0);
}

void quantize_legacy(const float* x, int n_act, int64_t K, uint8_t* dst) {
  const int64_t n_units = round_up(K, 64) / 64;
  const __m512i ones = _mm512_set1_epi8(1);
  for (int m = 0; m < n_act; ++m) {
    for (int64_t u = 0; u < n_units; ++u) {
      uint8_t* unit = dst + (u * n_act + m) * kPairBytes;
      int8_t* q = reinterpret_cast<int8_t*>(unit);
      float* scale = reinterpret_cast<float*>(unit + 64);
      for (int half = 0; half < 2; ++half) {
        const int64_t k0 = 64 * u + 32 * half;
        __m512 v0 = _mm512_setzero_ps(), v1 = _mm512_setzero_ps();
        if (k0 < K) {  // K is a multiple of 32: blocks are whole or padding
          v0 = _mm512_loadu_ps(x + m * K + k0);
          v1 = _mm512_loadu_ps(x + m * K + k0 + 16);
        }
        const float amax =
            _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 32 * half),
                         _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, inv))));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 32 * half + 16),
                         _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, inv))));
        _mm256_storeu_ps(scale + 8 * half, _mm256_set1_ps(amax / 127.0f));
      }
      const __m512i sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, _mm512_loadu_si512(q));
      _mm512_storeu_si512(unit + 128, _mm512_sub_epi32(_mm512_setzero_si512(), sums));
      _mm512_storeu_ps(reinterpret_cast<float*>(unit + 192),
                       _mm512_mul_ps(_mm512_cvtepi32_ps(sums), _mm512_loadu_ps(scale)));
    }
  }
}

void quantize_k(const float* x, int n_act, int64_t K, uint8_t* dst) {
  for (int m = 0; m < n_act; ++m) {
    for (int64_t sb = 0; sb < K / 256; ++sb) {
      uint8_t* unit = dst + (sb * n_act + m) * kSuperBytes;
      int8_t* q = reinterpret_cast<int8_t*>(unit);
      int16_t* sum16 = reinterpret_cast<int16_t*>(unit + 256);
      int16_t* sum32 = reinterpret_cast<int16_t*>(unit + 288);
      const float* xs = x + m * K + 256 * sb;
      __m512 amax_v = _mm512_setzero_ps();
      for (int i = 0; i < 16; ++i)
        amax_v = _mm512_max_ps(amax_v, _mm512_abs_ps(_mm512_loadu_ps(xs + 16 * i)));
      const float amax = _mm512_reduce_max_ps(amax_v);
      const float scale = amax / 127.0f;
      std::memcpy(unit + 304, &scale, sizeof(float));
      const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
      for (int i = 0; i < 16; ++i) {
        const __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xs + 16 * i), inv));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * i), _mm512_cvtsepi32_epi8(qi));
        sum16[i] = static_cast<int16_t>(_mm512_reduce_add_epi32(qi));
      }
      for (int j = 0; j < 8; ++j) sum32[j] = static_cast<int16_t>(sum16[2 * j] + sum16[2 * j + 1]);
    }
  }
}

// Index vector for vpermps: lanes 0..7 take entry `lo`, lanes 8..15 entry `hi`.
inline __m512i pair_index(int lo, int hi) {
  return _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(lo), _mm512_set1_epi32(hi));
}

constexpr int log2_of(int v) { return v <= 1 ? 0 : 1 + log2_of(v / 2); }

// ---- 32-weight block types ----

struct PairWeights {
  __m512i codes;
  __m512 scale;  // per lane: the scale of the lane's block
  __m512 min;    // per lane: the "_1" types' offset m
};

template <class T, bool kSingle>
EMBER_INLINE PairWeights load_pair(const uint8_t* blocks, __m512i scale_index, __m512i min_index) {
  const BlockPair b = T::template decode<kSingle>(blocks);
  const __m512 fields = _mm512_castps128_ps512(b.fields);
  PairWeights p;
  p.codes = b.codes;
  p.scale = _mm512_permutexvar_ps(scale_index, fields);
  p.min = T::kHasMin ? _mm512_permutexvar_ps(min_index, fields) : fields;
  return p;
}

// into + this pair's share of one row's dot product (`a`: the row's 256 activation bytes).
template <class T>
EMBER_INLINE __m512 pair_dot(const PairWeights& w, const uint8_t* a, __m512 into) {
  __m512i acc;
  if constexpr (T::kOffset != 0) {
    // Start each lane at -kOffset * (sum of its activations): the code offset's share.
    acc = _mm512_slli_epi32(_mm512_load_si512(a + 128), log2_of(T::kOffset));
  } else {
    acc = _mm512_setzero_si512();
  }
  acc = _mm512_dpbusd_epi32(acc, w.codes, _mm512_load_si512(a));
  into = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(w.scale, _mm512_load_ps(a + 64)),
                         into);
  if constexpr (T::kHasMin) into = _mm512_fmadd_ps(w.min, _mm512_load_ps(a + 192), into);
  return into;
}

template <class T, int M>
void gemv_legacy(const uint8_t* weights, int64_t row_bytes, int64_t K, const uint8_t* acts,
                 float* out, int64_t ldo, int64_t r0, int64_t r1) {
  constexpr int64_t kUnit = kPairBytes * M;
  const int64_t n_blocks = K / 32, n_pairs = n_blocks / 2;
  const __m512i scale_index = T::kHasMin ? pair_index(0, 2) : pair_index(0, 1);
  const __m512i min_index = pair_index(1, 3);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* w = weights + r * row_bytes;
    __m512 total[M];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) total[m] = _mm512_setzero_ps();
    // Two pairs per step, summed before touching `total`: the loop-carried dependency is one
    // add per 4 blocks instead of a chain of FMAs per block.
    int64_t p = 0;
    for (; p + 2 <= n_pairs; p += 2) {
      const PairWeights w0 = load_pair<T, false>(w + 2 * p * T::kBytes, scale_index, min_index);
      const PairWeights w1 =
          load_pair<T, false>(w + 2 * (p + 1) * T::kBytes, scale_index, min_index);
      const uint8_t* a = acts + p * kUnit;
      prefetch_lines(w + 2 * p * T::kBytes, (4 * T::kBytes + 63) / 64);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const __m512 part = pair_dot<T>(w0, a + kPairBytes * m, _mm512_setzero_ps());
        total[m] = _mm512_add_ps(total[m], pair_dot<T>(w1, a + kUnit + kPairBytes * m, part));
      }
    }
    if (p < n_pairs) {
      const PairWeights w0 = load_pair<T, false>(w + 2 * p * T::kBytes, scale_index, min_index);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m)
        total[m] = pair_dot<T>(w0, acts + p * kUnit + kPairBytes * m, total[m]);
    }
    if (n_blocks & 1) {
      const PairWeights w0 =
          load_pair<T, true>(w + 2 * n_pairs * T::kBytes, scale_index, min_index);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m)
        total[m] = pair_dot<T>(w0, acts + n_pairs * kUnit + kPairBytes * m, total[m]);
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) out[m * ldo + r] = _mm512_reduce_add_ps(total[m]);
  }
}

// Word-index vectors for vpermw: words 0..15 take entry `lo`, words 16..31 entry `hi`.
inline __m512i two_entry_index(int lo, int hi) {
  return _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16(static_cast<short>(lo)),
                                 _mm512_set1_epi16(static_cast<short>(hi)));
}

inline float scale_of(const uint8_t* unit) {
  float scale;
  std::memcpy(&scale, unit + 304, sizeof(float));
  return scale;
}

inline float hsum128(__m128 v) {
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
}

// Q4_K / Q5_K: w = d*sc_j * q - dmin*mn_j per 32-weight sub-block j.
template <bool kFiveBit, int M>
void gemv_k4(const uint8_t* weights, int64_t row_bytes, int64_t K, const uint8_t* acts, float* out,
             int64_t ldo, int64_t r0, int64_t r1) {
  constexpr int64_t kBytes = kFiveBit ? 176 : 144;
  constexpr int64_t kUnit = kSuperBytes * M;
  const int64_t n_super = K / 256;
  __m512i scale_index[4];
  for (int i = 0; i < 4; ++i) scale_index[i] = two_entry_index(2 * i, 2 * i + 1);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* w = weights + r * row_bytes;
    __m512 total[M];
    __m128 min_total[M];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      total[m] = _mm512_setzero_ps();
      min_total[m] = _mm_setzero_ps();
    }
    for (int64_t s = 0; s < n_super; ++s) {
      const uint8_t* p = w + s * kBytes;
      prefetch_lines(p, (kBytes + 63) / 64);
      const float d = f16_at(p), dmin = f16_at(p + 2);
      uint64_t sc, mn;
      k4_scales_mins(p + 4, &sc, &mn);
      const SuperCodes codes = kFiveBit ? q5k_codes(p + 16, p + 48) : q4k_codes(p + 16);
      const __m512i sc16 = _mm512_cvtepu8_epi16(
          _mm256_zextsi128_si256(_mm_cvtsi64_si128(static_cast<int64_t>(sc))));
      const __m128i mn16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(mn)));
      __m512i sub_scale[4];
      for (int i = 0; i < 4; ++i) sub_scale[i] = _mm512_permutexvar_epi16(scale_index[i], sc16);
      const uint8_t* a = acts + s * kUnit;
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const uint8_t* x = a + kSuperBytes * m;
        __m512i acc = _mm512_setzero_si512();
        for (int i = 0; i < 4; ++i) {
          const __m512i prod = _mm512_maddubs_epi16(codes.c[i], _mm512_load_si512(x + 64 * i));
          acc = _mm512_dpwssd_epi32(acc, prod, sub_scale[i]);
        }
        const float dx = scale_of(x);
        total[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(d * dx), total[m]);
        const __m128i mins =
            _mm_madd_epi16(mn16, _mm_load_si128(reinterpret_cast<const __m128i*>(x + 288)));
        min_total[m] = _mm_fmadd_ps(_mm_cvtepi32_ps(mins), _mm_set1_ps(dmin * dx), min_total[m]);
      }
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m)
      out[m * ldo + r] = _mm512_reduce_add_ps(total[m]) - hsum128(min_total[m]);
  }
}

// Q6_K: w = d * sc_j * (q - 32) per 16-weight sub-block j (int8 scales).
template <int M>
void gemv_q6k(const uint8_t* weights, int64_t row_bytes, int64_t K, const uint8_t* acts,
              float* out, int64_t ldo, int64_t r0, int64_t r1) {
  constexpr int64_t kBytes = 210;
  constexpr int64_t kUnit = kSuperBytes * M;
  const int64_t n_super = K / 256;
  // Register c covers weights 64c..64c+63: sub-blocks 4c..4c+3, 8 words each.
  __m512i scale_index[4];
  const __m512i word = _mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18,
                                        17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1,
                                        0);
  for (int c = 0; c < 4; ++c)
    scale_index[c] =
        _mm512_add_epi16(_mm512_set1_epi16(static_cast<short>(4 * c)), _mm512_srli_epi16(word, 3));
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* w = weights + r * row_bytes;
    __m512 total[M];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) total[m] = _mm512_setzero_ps();
    for (int64_t s = 0; s < n_super; ++s) {
      const uint8_t* p = w + s * kBytes;
      prefetch_lines(p, (kBytes + 63) / 64);
      const float d = f16_at(p + 208);
      const __m256i sc16 =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 192)));
      const SuperCodes codes = q6k_codes(p, p + 128);
      __m512i sub_scale[4];
      for (int c = 0; c < 4; ++c)
        sub_scale[c] = _mm512_permutexvar_epi16(scale_index[c], _mm512_castsi256_si512(sc16));
      const uint8_t* a = acts + s * kUnit;
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const uint8_t* x = a + kSuperBytes * m;
        __m512i acc = _mm512_setzero_si512();
        for (int c = 0; c < 4; ++c) {
          const __m512i prod = _mm512_maddubs_epi16(codes.c[c], _mm512_load_si512(x + 64 * c));
          acc = _mm512_dpwssd_epi32(acc, prod, sub_scale[c]);
        }
        // The code offset: 32 * sum_j sc_j * (sum of sub-block j's activations).
        const __m256i offset =
            _mm256_madd_epi16(sc16, _mm256_load_si256(reinterpret_cast<const __m256i*>(x + 256)));
        acc = _mm512_sub_epi32(acc, _mm512_zextsi256_si512(_mm256_slli_epi32(offset, 5)));
        total[m] =
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(d * scale_of(x)), total[m]);
      }
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) out[m * ldo + r] = _mm512_reduce_add_ps(total[m]);
  }
}

using GemvFn = void (*)(const uint8_t*, int64_t, int64_t, const uint8_t*, float*, int64_t, int64_t,
                        int64_t);

template <int M>
GemvFn pick(int64_t qtype) {
  switch (qtype) {
    case kQ4_0: return gemv_legacy<Q4_0, M>;
    case kQ4_1: return gemv_legacy<Q4_1, M>;
    case kQ5_0: return gemv_legacy<Q5_0, M>;
    case kQ5_1: return gemv_legacy<Q5_1, M>;
    case kQ8_0: return gemv_legacy<Q8_0, M>;
    case kQ4_K: return gemv_k4<false, M>;
    case kQ5_K: return gemv_k4<true, M>;
    case kQ6_K: return gemv_q6k<M>;
    default: return nullptr;
  }
}

}  // namespace

const TypeInfo* find_type(int64_t qtype) {
  // The integer path's cost grows with the batch (a float rescale per block and row) while
  // the bf16 path pays one dequantization: the 4/5-bit 32-weight types cross over near 8 rows,
  // Q8_0 and the K-quants (cheaper per byte) near 16.
  static const TypeInfo q4_0{32, 18, false, 8}, q4_1{32, 20, false, 8}, q5_0{32, 22, false, 8},
      q5_1{32, 24, false, 8}, q8_0{32, 34, false, 16}, q4_k{256, 144, true, 16},
      q5_k{256, 176, true, 16}, q6_k{256, 210, true, 16};
  switch (qtype) {
    case kQ4_0: return &q4_0;
    case kQ4_1: return &q4_1;
    case kQ5_0: return &q5_0;
    case kQ5_1: return &q5_1;
    case kQ8_0: return &q8_0;
    case kQ4_K: return &q4_k;
    case kQ5_K: return &q5_k;
    case kQ6_K: return &q6_k;
    default: return nullptr;
  }
}

int64_t acts_bytes(const TypeInfo& info, int n_act, int64_t K) {
  return info.k_quant ? K / 256 * n_act * kSuperBytes : round_up(K, 64) / 64 * n_act * kPairBytes;
}

void quantize_acts(const TypeInfo& info, const float* x, int n_act, int64_t K, uint8_t* dst) {
  if (info.k_quant) {
    quantize_k(x, n_act, K, dst);
  } else {
    quantize_legacy(x, n_act, K, dst);
  }
}

void gemv(int64_t qtype, int n_act, const uint8_t* weights, int64_t row_bytes, int64_t K,
          const uint8_t* acts, float* out, int64_t ldo, int64_t r0, int64_t r1) {
  GemvFn fn = nullptr;
  switch (n_act) {
    case 1: fn = pick<1>(qtype); break;
    case 2: fn = pick<2>(qtype); break;
    case 3: fn = pick<3>(qtype); break;
    case 4: fn = pick<4>(qtype); break;
    case 5: fn = pick<5>(qtype); break;
    case 6: fn = pick<6>(qtype); break;
    case 7: fn = pick<7>(qtype); break;
    case 8: fn = pick<8>(qtype); break;
    default: break;
  }
  if (fn != nullptr) fn(weights, row_bytes, K, acts, out, ldo, r0, r1);
}

}  // namespace ember
