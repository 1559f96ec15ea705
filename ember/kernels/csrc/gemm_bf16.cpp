// Dequantization (embedding rows, bf16 weight tiles) and the bf16 GEMM used for large M.
//
// Large-M matmul dequantizes a tile of weight rows to bf16 once and multiplies every activation
// row with it using vdpbf16ps (fp32 accumulation): the dequantization is paid once per tile, not
// once per activation row, and the dot products run at the bf16 units' rate.
#include <cstring>

#include "blocks.h"
#include "ember_kernels.h"

namespace ember {
namespace {

// out[0..15] = (codes - offset) * scale [+ add], in the reference dequantizer's order.
template <bool kAdd>
inline void emit16(__m128i codes, int offset, float scale, float add, float* out) {
  const __m512i ints = _mm512_sub_epi32(_mm512_cvtepu8_epi32(codes), _mm512_set1_epi32(offset));
  __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(ints), _mm512_set1_ps(scale));
  if constexpr (kAdd) v = _mm512_add_ps(v, _mm512_set1_ps(add));
  _mm512_storeu_ps(out, v);
}

inline __m128i lane_of(__m512i v, int i) {
  switch (i) {
    case 0: return _mm512_extracti32x4_epi32(v, 0);
    case 1: return _mm512_extracti32x4_epi32(v, 1);
    case 2: return _mm512_extracti32x4_epi32(v, 2);
    default: return _mm512_extracti32x4_epi32(v, 3);
  }
}

template <class T>
void dequant_legacy(const uint8_t* blocks, int64_t n_blocks, float* out) {
  auto emit = [&](const BlockPair& b, float* dst, int n) {
    for (int i = 0; i < 2 * n; ++i) {
      const __m128i codes = lane_of(b.codes, i);
      alignas(16) float f[4];
      _mm_store_ps(f, b.fields);
      const int block = i / 2;
      const float d = T::kHasMin ? f[2 * block] : f[block];
      const float m = T::kHasMin ? f[2 * block + 1] : 0.0f;
      emit16<T::kHasMin>(codes, T::kOffset, d, m, dst + 16 * i);
    }
  };
  const int64_t n_pairs = n_blocks / 2;
  for (int64_t p = 0; p < n_pairs; ++p)
    emit(T::template decode<false>(blocks + 2 * p * T::kBytes), out + 64 * p, 2);
  if (n_blocks & 1) {
    emit(T::template decode<true>(blocks + 2 * n_pairs * T::kBytes), out + 64 * n_pairs, 1);
  }
}

template <bool kFiveBit>
void dequant_k4(const uint8_t* blocks, int64_t n_super, float* out) {
  constexpr int64_t kBytes = kFiveBit ? 176 : 144;
  for (int64_t s = 0; s < n_super; ++s) {
    const uint8_t* p = blocks + s * kBytes;
    const float d = f16_at(p), dmin = f16_at(p + 2);
    uint64_t sc, mn;
    k4_scales_mins(p + 4, &sc, &mn);
    const SuperCodes codes = kFiveBit ? q5k_codes(p + 16, p + 48) : q4k_codes(p + 16);
    for (int c = 0; c < 4; ++c) {
      for (int l = 0; l < 4; ++l) {
        const int j = 2 * c + l / 2;  // 32-weight sub-block of weights 64c + 16l ..
        const float scale = d * static_cast<float>((sc >> (8 * j)) & 0xFF);
        const float min = dmin * static_cast<float>((mn >> (8 * j)) & 0xFF);
        emit16<true>(lane_of(codes.c[c], l), 0, scale, -min, out + 256 * s + 64 * c + 16 * l);
      }
    }
  }
}

void dequant_q6k(const uint8_t* blocks, int64_t n_super, float* out) {
  for (int64_t s = 0; s < n_super; ++s) {
    const uint8_t* p = blocks + s * 210;
    const float d = f16_at(p + 208);
    const int8_t* scales = reinterpret_cast<const int8_t*>(p + 192);
    const SuperCodes codes = q6k_codes(p, p + 128);
    for (int c = 0; c < 4; ++c) {
      for (int l = 0; l < 4; ++l) {
        const float scale = d * static_cast<float>(scales[4 * c + l]);
        emit16<false>(lane_of(codes.c[c], l), 32, scale, 0.0f, out + 256 * s + 64 * c + 16 * l);
      }
    }
  }
}

// Dequantizes n_weights (a whole number of blocks) starting at `blocks`.
void dequant_span(int64_t qtype, const uint8_t* blocks, int64_t n_weights, float* out) {
  switch (qtype) {
    case kQ4_0: dequant_legacy<Q4_0>(blocks, n_weights / 32, out); break;
    case kQ4_1: dequant_legacy<Q4_1>(blocks, n_weights / 32, out); break;
    case kQ5_0: dequant_legacy<Q5_0>(blocks, n_weights / 32, out); break;
    case kQ5_1: dequant_legacy<Q5_1>(blocks, n_weights / 32, out); break;
    case kQ8_0: dequant_legacy<Q8_0>(blocks, n_weights / 32, out); break;
    case kQ4_K: dequant_k4<false>(blocks, n_weights / 256, out); break;
    case kQ5_K: dequant_k4<true>(blocks, n_weights / 256, out); break;
    case kQ6_K: dequant_q6k(blocks, n_weights / 256, out); break;
    default: break;
  }
}

#define EMBER_INLINE inline __attribute__((always_inline))

// (a, b) -> lanes 0..7 hold partial sums of a, lanes 8..15 of b.
EMBER_INLINE __m512 fold_halves(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}

// (a, b) with halves [a0|a1], [b0|b1] -> 128-bit lanes hold partial sums of a0, a1, b0, b1.
EMBER_INLINE __m512 fold_quarters(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}

// Within 128-bit lanes: [a0 a1 a2 a3], [b0 b1 b2 b3] -> [a0+a2, a1+a3, b0+b2, b1+b3].
EMBER_INLINE __m512 fold_pairs(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}

// Within 128-bit lanes: [a0 a1 a2 a3], [b0 b1 b2 b3] -> [a0+a1, a2+a3, b0+b1, b2+b3].
EMBER_INLINE __m512 fold_singles(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}

// 4 rows of A times 4 rows of B over K (a multiple of 32, > 0), as one vector whose lane 4m + n
// is dot(a_m, b_n). Accumulator c_nm sums a_m . b_n 32 values at a time; the folds then reduce
// all 16 accumulators at once, leaving the tile in row-major order.
EMBER_INLINE __m512 kernel4x4(const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb,
                              int64_t K) {
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00,
         c12 = c00, c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00,
         c32 = c00, c33 = c00;
  for (int64_t k = 0; k < K; k += 32) {
    const __m512bh a0 = (__m512bh)_mm512_loadu_si512(a + k);
    const __m512bh a1 = (__m512bh)_mm512_loadu_si512(a + lda + k);
    const __m512bh a2 = (__m512bh)_mm512_loadu_si512(a + 2 * lda + k);
    const __m512bh a3 = (__m512bh)_mm512_loadu_si512(a + 3 * lda + k);
    __m512bh bn = (__m512bh)_mm512_loadu_si512(b + k);
    c00 = _mm512_dpbf16_ps(c00, a0, bn);
    c01 = _mm512_dpbf16_ps(c01, a1, bn);
    c02 = _mm512_dpbf16_ps(c02, a2, bn);
    c03 = _mm512_dpbf16_ps(c03, a3, bn);
    bn = (__m512bh)_mm512_loadu_si512(b + ldb + k);
    c10 = _mm512_dpbf16_ps(c10, a0, bn);
    c11 = _mm512_dpbf16_ps(c11, a1, bn);
    c12 = _mm512_dpbf16_ps(c12, a2, bn);
    c13 = _mm512_dpbf16_ps(c13, a3, bn);
    bn = (__m512bh)_mm512_loadu_si512(b + 2 * ldb + k);
    c20 = _mm512_dpbf16_ps(c20, a0, bn);
    c21 = _mm512_dpbf16_ps(c21, a1, bn);
    c22 = _mm512_dpbf16_ps(c22, a2, bn);
    c23 = _mm512_dpbf16_ps(c23, a3, bn);
    bn = (__m512bh)_mm512_loadu_si512(b + 3 * ldb + k);
    c30 = _mm512_dpbf16_ps(c30, a0, bn);
    c31 = _mm512_dpbf16_ps(c31, a1, bn);
    c32 = _mm512_dpbf16_ps(c32, a2, bn);
    c33 = _mm512_dpbf16_ps(c33, a3, bn);
  }
  // Accumulator index v = 4n + m (c_nm); after the folds lane 4L + e holds v = L + 4e, so
  // lane 4m + n holds c_nm: row m of the output in 128-bit lane m.
  const __m512 x0 = fold_quarters(fold_halves(c00, c01), fold_halves(c02, c03));
  const __m512 x1 = fold_quarters(fold_halves(c10, c11), fold_halves(c12, c13));
  const __m512 x2 = fold_quarters(fold_halves(c20, c21), fold_halves(c22, c23));
  const __m512 x3 = fold_quarters(fold_halves(c30, c31), fold_halves(c32, c33));
  return fold_singles(fold_pairs(x0, x1), fold_pairs(x2, x3));
}

}  // namespace

void dequant_row_f32(int64_t qtype, const uint8_t* row, int64_t K, float* out) {
  dequant_span(qtype, row, K, out);
}

void dequant_row_bf16(int64_t qtype, const uint8_t* row, int64_t K, uint16_t* out) {
  const TypeInfo* info = find_type(qtype);
  if (info == nullptr) return;
  alignas(64) float tmp[256];
  for (int64_t k0 = 0; k0 < K; k0 += 256) {
    const int64_t n = K - k0 < 256 ? K - k0 : 256;  // a multiple of 32 (whole blocks)
    dequant_span(qtype, row + k0 / info->block_size * info->type_size, n, tmp);
    for (int64_t i = 0; i < n; i += 32) {
      const __m512bh packed =
          _mm512_cvtne2ps_pbh(_mm512_load_ps(tmp + i + 16), _mm512_load_ps(tmp + i));
      _mm512_storeu_si512(out + k0 + i, (__m512i)packed);
    }
  }
}

void f32_to_bf16(const float* x, int64_t n, uint16_t* out) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512bh packed =
        _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
    _mm512_storeu_si512(out + i, (__m512i)packed);
  }
  for (; i < n; i += 16) {
    const __mmask16 mask = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m256bh packed = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, x + i));
    _mm256_mask_storeu_epi16(out + i, mask, (__m256i)packed);
  }
}

void gemm_bf16(const uint16_t* A, int64_t lda, int64_t m_valid, const uint16_t* B, int64_t ldb,
               int64_t n_valid, int64_t K, float* C, int64_t ldc) {
  alignas(64) float tile[16];
  for (int64_t m0 = 0; m0 < m_valid; m0 += 4) {
    const int64_t mr = m_valid - m0 < 4 ? m_valid - m0 : 4;
    for (int64_t n0 = 0; n0 < n_valid; n0 += 4) {
      const int64_t nr = n_valid - n0 < 4 ? n_valid - n0 : 4;
      const __m512 sums = kernel4x4(A + m0 * lda, lda, B + n0 * ldb, ldb, K);
      if (mr == 4 && nr == 4) {
        _mm_storeu_ps(C + m0 * ldc + n0, _mm512_extractf32x4_ps(sums, 0));
        _mm_storeu_ps(C + (m0 + 1) * ldc + n0, _mm512_extractf32x4_ps(sums, 1));
        _mm_storeu_ps(C + (m0 + 2) * ldc + n0, _mm512_extractf32x4_ps(sums, 2));
        _mm_storeu_ps(C + (m0 + 3) * ldc + n0, _mm512_extractf32x4_ps(sums, 3));
        continue;
      }
      _mm512_store_ps(tile, sums);
      for (int64_t m = 0; m < mr; ++m)
        for (int64_t n = 0; n < nr; ++n) C[(m0 + m) * ldc + n0 + n] = tile[4 * m + n];
    }
  }
}

}  // namespace ember
