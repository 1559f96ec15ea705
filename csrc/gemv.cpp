// Small-M matmul straight from GGML blocks: int8 activations, VNNI integer dot products.
//
// Activations are quantized like GGML's Q8_0 (one scale per 32 values) for the 32-weight block
// types and like Q8_K (one scale per 256) for the K-quants, whose 6-bit / int8 sub-block scales
// are then applied in the integer domain (vpmaddubsw + vpdpwssd). Each weight row is streamed
// once for up to kGemvMaxRows activation rows.
#include <algorithm>
#include <cmath>

#include "blocks.h"
#include "ember_kernels.h"

namespace ember {
namespace {

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

// ---- Activation rows for the 32-weight types (K padded to a multiple of 64) ----
// [int8 q: Kp][float lane scale: Kp/4][int32 -sum of the lane's 4 q: Kp/4][float scale * sum: Kp/4]
// A "lane" is the 4 consecutive values one vpdpbusd int32 lane covers.
struct LegacyRow {
  const int8_t* q;
  const float* scale;
  const int32_t* neg_sum;
  const float* scaled_sum;
  LegacyRow(const uint8_t* base, int64_t kp)
      : q(reinterpret_cast<const int8_t*>(base)),
        scale(reinterpret_cast<const float*>(base + kp)),
        neg_sum(reinterpret_cast<const int32_t*>(base + 2 * kp)),
        scaled_sum(reinterpret_cast<const float*>(base + 3 * kp)) {}
};

// ---- Activation rows for the K-quants ----
// [int8 q: K][float scale per 256: pad64(K/64)][int16 sum per 16: pad64(K/8)][int16 sum per 32: pad64(K/16)]
struct KRow {
  const int8_t* q = nullptr;
  const float* scale = nullptr;
  const int16_t* sum16 = nullptr;
  const int16_t* sum32 = nullptr;
  KRow() = default;
  KRow(const uint8_t* base, int64_t K)
      : q(reinterpret_cast<const int8_t*>(base)),
        scale(reinterpret_cast<const float*>(base + K)),
        sum16(reinterpret_cast<const int16_t*>(base + K + round_up(K / 64, 64))),
        sum32(reinterpret_cast<const int16_t*>(base + K + round_up(K / 64, 64) +
                                               round_up(K / 8, 64))) {}
};

int64_t k_row_bytes(int64_t K) {
  return K + round_up(K / 64, 64) + round_up(K / 8, 64) + round_up(K / 16, 64);
}

void quantize_legacy_row(const float* x, int64_t K, uint8_t* dst) {
  const int64_t kp = round_up(K, 64);
  int8_t* q = reinterpret_cast<int8_t*>(dst);
  float* scale = reinterpret_cast<float*>(dst + kp);
  int32_t* neg_sum = reinterpret_cast<int32_t*>(dst + 2 * kp);
  float* scaled_sum = reinterpret_cast<float*>(dst + 3 * kp);
  for (int64_t b = 0; b < kp / 32; ++b) {
    __m512 v0 = _mm512_setzero_ps(), v1 = _mm512_setzero_ps();
    if (b * 32 < K) {  // K is a multiple of 32: blocks are either whole or padding
      v0 = _mm512_loadu_ps(x + 32 * b);
      v1 = _mm512_loadu_ps(x + 32 * b + 16);
    }
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    const float d = amax / 127.0f;
    const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 32 * b),
                     _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, inv))));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 32 * b + 16),
                     _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, inv))));
    _mm256_storeu_ps(scale + 8 * b, _mm256_set1_ps(d));
  }
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t g = 0; g < kp / 64; ++g) {
    const __m512i sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, _mm512_loadu_si512(q + 64 * g));
    _mm512_storeu_si512(neg_sum + 16 * g, _mm512_sub_epi32(_mm512_setzero_si512(), sums));
    _mm512_storeu_ps(scaled_sum + 16 * g,
                     _mm512_mul_ps(_mm512_cvtepi32_ps(sums), _mm512_loadu_ps(scale + 16 * g)));
  }
}

void quantize_k_row(const float* x, int64_t K, uint8_t* dst) {
  int8_t* q = reinterpret_cast<int8_t*>(dst);
  float* scale = reinterpret_cast<float*>(dst + K);
  int16_t* sum16 = reinterpret_cast<int16_t*>(dst + K + round_up(K / 64, 64));
  int16_t* sum32 = reinterpret_cast<int16_t*>(dst + K + round_up(K / 64, 64) + round_up(K / 8, 64));
  for (int64_t sb = 0; sb < K / 256; ++sb) {
    const float* xs = x + 256 * sb;
    __m512 amax_v = _mm512_setzero_ps();
    for (int i = 0; i < 16; ++i) amax_v = _mm512_max_ps(amax_v, _mm512_abs_ps(_mm512_loadu_ps(xs + 16 * i)));
    const float amax = _mm512_reduce_max_ps(amax_v);
    scale[sb] = amax / 127.0f;
    const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    for (int i = 0; i < 16; ++i) {
      const __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xs + 16 * i), inv));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 256 * sb + 16 * i), _mm512_cvtsepi32_epi8(qi));
      sum16[16 * sb + i] = static_cast<int16_t>(_mm512_reduce_add_epi32(qi));
    }
  }
  for (int64_t j = 0; j < K / 32; ++j) sum32[j] = static_cast<int16_t>(sum16[2 * j] + sum16[2 * j + 1]);
}

// Index vector for vpermps: lanes 0..7 take entry `lo`, lanes 8..15 entry `hi`.
inline __m512i pair_index(int lo, int hi) {
  return _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(lo), _mm512_set1_epi32(hi));
}

constexpr int log2_of(int v) { return v <= 1 ? 0 : 1 + log2_of(v / 2); }

// ---- 32-weight block types ----
template <class T, int M>
void gemv_legacy(const uint8_t* weights, int64_t row_bytes, int64_t K, const uint8_t* acts,
                 float* out, int64_t ldo, int64_t r0, int64_t r1) {
  const int64_t kp = round_up(K, 64);
  const int64_t stride = 4 * kp;
  const int64_t n_blocks = K / 32, n_pairs = n_blocks / 2;
  const int8_t* q[M];
  const float* scale[M];
  const int32_t* neg_sum[M];
  const float* scaled_sum[M];
  for (int m = 0; m < M; ++m) {
    const LegacyRow row(acts + m * stride, kp);
    q[m] = row.q;
    scale[m] = row.scale;
    neg_sum[m] = row.neg_sum;
    scaled_sum[m] = row.scaled_sum;
  }
  const __m512i scale_index = T::kHasMin ? pair_index(0, 2) : pair_index(0, 1);
  const __m512i min_index = pair_index(1, 3);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* w = weights + r * row_bytes;
    __m512 total[M];
    for (int m = 0; m < M; ++m) total[m] = _mm512_setzero_ps();
    // Adds one block pair's products for activation row m to `into`.
    auto add_pair = [&](const BlockPair& b, int64_t pair, int m, __m512 into) {
      const __m512 fields = _mm512_castps128_ps512(b.fields);
      const __m512 wscale = _mm512_permutexvar_ps(scale_index, fields);
      __m512i acc;
      if constexpr (T::kOffset != 0) {
        // Start each lane at -kOffset * (sum of its activations): the code offset's share.
        acc = _mm512_slli_epi32(_mm512_loadu_si512(neg_sum[m] + 16 * pair), log2_of(T::kOffset));
      } else {
        acc = _mm512_setzero_si512();
      }
      acc = _mm512_dpbusd_epi32(acc, b.codes, _mm512_loadu_si512(q[m] + 64 * pair));
      into = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc),
                             _mm512_mul_ps(wscale, _mm512_loadu_ps(scale[m] + 16 * pair)), into);
      if constexpr (T::kHasMin) {
        const __m512 wmin = _mm512_permutexvar_ps(min_index, fields);
        into = _mm512_fmadd_ps(wmin, _mm512_loadu_ps(scaled_sum[m] + 16 * pair), into);
      }
      return into;
    };
    // Two pairs per step, summed before touching `total`: the loop-carried dependency is one
    // add per 4 blocks instead of a chain of FMAs per block.
    int64_t p = 0;
    for (; p + 2 <= n_pairs; p += 2) {
      const BlockPair b0 = T::template decode<false>(w + 2 * p * T::kBytes);
      const BlockPair b1 = T::template decode<false>(w + 2 * (p + 1) * T::kBytes);
      for (int m = 0; m < M; ++m)
        total[m] = _mm512_add_ps(total[m], add_pair(b1, p + 1, m, add_pair(b0, p, m, _mm512_setzero_ps())));
    }
    if (p < n_pairs) {
      const BlockPair b = T::template decode<false>(w + 2 * p * T::kBytes);
      for (int m = 0; m < M; ++m) total[m] = add_pair(b, p, m, total[m]);
    }
    if (n_blocks & 1) {
      const BlockPair b = T::template decode<true>(w + 2 * n_pairs * T::kBytes);
      for (int m = 0; m < M; ++m) total[m] = add_pair(b, n_pairs, m, total[m]);
    }
    for (int m = 0; m < M; ++m) out[m * ldo + r] = _mm512_reduce_add_ps(total[m]);
  }
}

// Word-index vectors for vpermw: words 0..15 take entry `lo`, words 16..31 entry `hi`.
inline __m512i two_entry_index(int lo, int hi) {
  return _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16(static_cast<short>(lo)),
                                 _mm512_set1_epi16(static_cast<short>(hi)));
}

// Q4_K / Q5_K: w = d*sc_j * q - dmin*mn_j per 32-weight sub-block j.
template <bool kFiveBit, int M>
void gemv_k4(const uint8_t* weights, int64_t row_bytes, int64_t K, const uint8_t* acts, float* out,
             int64_t ldo, int64_t r0, int64_t r1) {
  constexpr int64_t kBytes = kFiveBit ? 176 : 144;
  const int64_t stride = k_row_bytes(K);
  const int64_t n_super = K / 256;
  KRow rows[M];
  for (int m = 0; m < M; ++m) rows[m] = KRow(acts + m * stride, K);
  __m512i scale_index[4];
  for (int i = 0; i < 4; ++i) scale_index[i] = two_entry_index(2 * i, 2 * i + 1);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* w = weights + r * row_bytes;
    __m512 total[M];
    __m128 min_total[M];
    for (int m = 0; m < M; ++m) {
      total[m] = _mm512_setzero_ps();
      min_total[m] = _mm_setzero_ps();
    }
    for (int64_t s = 0; s < n_super; ++s) {
      const uint8_t* p = w + s * kBytes;
      const float d = f16_at(p), dmin = f16_at(p + 2);
      uint64_t sc, mn;
      k4_scales_mins(p + 4, &sc, &mn);
      const SuperCodes codes = kFiveBit ? q5k_codes(p + 16, p + 48) : q4k_codes(p + 16);
      const __m512i sc16 = _mm512_cvtepu8_epi16(_mm256_zextsi128_si256(_mm_cvtsi64_si128(static_cast<int64_t>(sc))));
      const __m128i mn16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(mn)));
      __m512i sub_scale[4];
      for (int i = 0; i < 4; ++i) sub_scale[i] = _mm512_permutexvar_epi16(scale_index[i], sc16);
      for (int m = 0; m < M; ++m) {
        const int8_t* x = rows[m].q + 256 * s;
        __m512i acc = _mm512_setzero_si512();
        for (int i = 0; i < 4; ++i) {
          const __m512i prod = _mm512_maddubs_epi16(codes.c[i], _mm512_loadu_si512(x + 64 * i));
          acc = _mm512_dpwssd_epi32(acc, prod, sub_scale[i]);
        }
        const float dx = rows[m].scale[s];
        total[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(d * dx), total[m]);
        const __m128i mins = _mm_madd_epi16(
            mn16, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[m].sum32 + 8 * s)));
        min_total[m] = _mm_fmadd_ps(_mm_cvtepi32_ps(mins), _mm_set1_ps(dmin * dx), min_total[m]);
      }
    }
    for (int m = 0; m < M; ++m) {
      __m128 h = _mm_add_ps(min_total[m], _mm_movehl_ps(min_total[m], min_total[m]));
      h = _mm_add_ss(h, _mm_movehdup_ps(h));
      out[m * ldo + r] = _mm512_reduce_add_ps(total[m]) - _mm_cvtss_f32(h);
    }
  }
}

// Q6_K: w = d * sc_j * (q - 32) per 16-weight sub-block j (int8 scales).
template <int M>
void gemv_q6k(const uint8_t* weights, int64_t row_bytes, int64_t K, const uint8_t* acts, float* out,
              int64_t ldo, int64_t r0, int64_t r1) {
  constexpr int64_t kBytes = 210;
  const int64_t stride = k_row_bytes(K);
  const int64_t n_super = K / 256;
  KRow rows[M];
  for (int m = 0; m < M; ++m) rows[m] = KRow(acts + m * stride, K);
  // Register c covers weights 64c..64c+63: sub-blocks 4c..4c+3, 8 words each.
  __m512i scale_index[4];
  for (int c = 0; c < 4; ++c) {
    const __m512i lo = _mm512_set1_epi16(static_cast<short>(4 * c));
    const __m512i idx = _mm512_add_epi16(
        lo, _mm512_srli_epi16(_mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19,
                                               18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5,
                                               4, 3, 2, 1, 0),
                              3));
    scale_index[c] = idx;
  }
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* w = weights + r * row_bytes;
    __m512 total[M];
    for (int m = 0; m < M; ++m) total[m] = _mm512_setzero_ps();
    for (int64_t s = 0; s < n_super; ++s) {
      const uint8_t* p = w + s * kBytes;
      const float d = f16_at(p + 208);
      const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 192)));
      const SuperCodes codes = q6k_codes(p, p + 128);
      __m512i sub_scale[4];
      for (int c = 0; c < 4; ++c)
        sub_scale[c] = _mm512_permutexvar_epi16(scale_index[c], _mm512_castsi256_si512(sc16));
      for (int m = 0; m < M; ++m) {
        const int8_t* x = rows[m].q + 256 * s;
        __m512i acc = _mm512_setzero_si512();
        for (int c = 0; c < 4; ++c) {
          const __m512i prod = _mm512_maddubs_epi16(codes.c[c], _mm512_loadu_si512(x + 64 * c));
          acc = _mm512_dpwssd_epi32(acc, prod, sub_scale[c]);
        }
        // The code offset: 32 * sum_j sc_j * (sum of sub-block j's activations).
        const __m256i offset = _mm256_madd_epi16(
            sc16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[m].sum16 + 16 * s)));
        acc = _mm512_sub_epi32(acc, _mm512_zextsi256_si512(_mm256_slli_epi32(offset, 5)));
        total[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(d * rows[m].scale[s]),
                                   total[m]);
      }
    }
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
  static const TypeInfo q4_0{32, 18, false}, q4_1{32, 20, false}, q5_0{32, 22, false},
      q5_1{32, 24, false}, q8_0{32, 34, false}, q4_k{256, 144, true}, q5_k{256, 176, true},
      q6_k{256, 210, true};
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

int64_t act_row_bytes(const TypeInfo& info, int64_t K) {
  return info.k_quant ? k_row_bytes(K) : 4 * round_up(K, 64);
}

void quantize_act_row(const TypeInfo& info, const float* x, int64_t K, uint8_t* dst) {
  if (info.k_quant) {
    quantize_k_row(x, K, dst);
  } else {
    quantize_legacy_row(x, K, dst);
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
