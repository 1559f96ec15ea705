// Register-level decoders for GGML blocks, shared by the integer dot products (gemv.cpp) and
// the dequantizers (gemm_bf16.cpp).
//
// Every decoder yields weight codes as UNSIGNED bytes in natural weight order (byte i of a
// register is weight i of the span it covers), because vpdpbusd / vpmaddubsw take their
// unsigned operand from the weights and the signed one from the int8 activations. Types with
// a signed code range are shifted up by a per-type `kOffset` (w = code - kOffset).
#pragma once

#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__) || \
    !defined(__AVX512VNNI__) || !defined(__AVX512BF16__) || !defined(__F16C__)
#error "Ember's kernels need AVX-512 F/BW/VL/VNNI/BF16 and F16C (built with -march=native)"
#endif

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace ember {

inline float f16_at(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return _cvtsh_ss(bits);
}

inline uint32_t u32_at(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// ---------------------------------------------------------------------------------------------
// 32-weight block types, decoded two blocks at a time: 64 codes in one register, block 0 in
// bytes 0..31 and block 1 in bytes 32..63. kSingle decodes block 0 only (odd block counts) and
// never touches the second block's bytes.

struct BlockPair {
  __m512i codes;
  // fp32 per-block fields: [d0, d1, 0, 0], or [d0, m0, d1, m1] for the "_1" types.
  __m128 fields;
};

inline uint16_t u16_at(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// [f16(a), f16(b), 0, 0] (b unread when kSingle).
template <bool kSingle>
inline __m128 two_f16(const uint8_t* a, const uint8_t* b) {
  __m128i h = _mm_cvtsi32_si128(u16_at(a));
  if constexpr (!kSingle) h = _mm_insert_epi16(h, u16_at(b), 1);
  return _mm_cvtph_ps(h);
}

// [f16(a), f16(a + 2), f16(b), f16(b + 2)] (b unread when kSingle).
template <bool kSingle>
inline __m128 two_f16_pairs(const uint8_t* a, const uint8_t* b) {
  __m128i h = _mm_cvtsi32_si128(static_cast<int>(u32_at(a)));
  if constexpr (!kSingle) h = _mm_insert_epi32(h, static_cast<int>(u32_at(b)), 1);
  return _mm_cvtph_ps(h);
}

// Low nibbles of a block's 16 code bytes are weights 0..15, high nibbles 16..31: broadcast the
// bytes to two 128-bit lanes and shift the second one right by 4.
template <bool kSingle>
inline __m512i nibble_pair(const uint8_t* qs0, const uint8_t* qs1) {
  __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs0)));
  if constexpr (kSingle) {
    v = _mm512_maskz_mov_epi32(0x00FF, v);
  } else {
    v = _mm512_mask_broadcast_i32x4(v, 0xFF00,
                                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs1)));
  }
  const __m512i shifts = _mm512_set_epi64(0x0004000400040004LL, 0x0004000400040004LL, 0, 0,
                                          0x0004000400040004LL, 0x0004000400040004LL, 0, 0);
  return _mm512_and_si512(_mm512_srlv_epi16(v, shifts), _mm512_set1_epi8(0x0F));
}

// Adds 16 to the codes whose fifth bit is set (bit j of a block's 32-bit qh is weight j's).
template <bool kSingle>
inline __m512i add_fifth_bits(__m512i codes, const uint8_t* qh0, const uint8_t* qh1) {
  uint64_t bits = u32_at(qh0);
  if constexpr (!kSingle) bits |= static_cast<uint64_t>(u32_at(qh1)) << 32;
  return _mm512_mask_add_epi8(codes, _cvtu64_mask64(bits), codes, _mm512_set1_epi8(16));
}

struct Q4_0 {  // d | qs[16];  w = d * (q - 8)
  static constexpr int64_t kBytes = 18;
  static constexpr int kOffset = 8;
  static constexpr bool kHasMin = false;
  template <bool kSingle>
  static inline BlockPair decode(const uint8_t* p) {
    return {nibble_pair<kSingle>(p + 2, p + kBytes + 2), two_f16<kSingle>(p, p + kBytes)};
  }
};

struct Q4_1 {  // d | m | qs[16];  w = d * q + m
  static constexpr int64_t kBytes = 20;
  static constexpr int kOffset = 0;
  static constexpr bool kHasMin = true;
  template <bool kSingle>
  static inline BlockPair decode(const uint8_t* p) {
    return {nibble_pair<kSingle>(p + 4, p + kBytes + 4), two_f16_pairs<kSingle>(p, p + kBytes)};
  }
};

struct Q5_0 {  // d | qh[4] | qs[16];  w = d * (q - 16)
  static constexpr int64_t kBytes = 22;
  static constexpr int kOffset = 16;
  static constexpr bool kHasMin = false;
  template <bool kSingle>
  static inline BlockPair decode(const uint8_t* p) {
    return {add_fifth_bits<kSingle>(nibble_pair<kSingle>(p + 6, p + kBytes + 6), p + 2,
                                    p + kBytes + 2),
            two_f16<kSingle>(p, p + kBytes)};
  }
};

struct Q5_1 {  // d | m | qh[4] | qs[16];  w = d * q + m
  static constexpr int64_t kBytes = 24;
  static constexpr int kOffset = 0;
  static constexpr bool kHasMin = true;
  template <bool kSingle>
  static inline BlockPair decode(const uint8_t* p) {
    return {add_fifth_bits<kSingle>(nibble_pair<kSingle>(p + 8, p + kBytes + 8), p + 4,
                                    p + kBytes + 4),
            two_f16_pairs<kSingle>(p, p + kBytes)};
  }
};

struct Q8_0 {  // d | qs[32] (int8);  w = d * q, codes stored as q + 128
  static constexpr int64_t kBytes = 34;
  static constexpr int kOffset = 128;
  static constexpr bool kHasMin = false;
  template <bool kSingle>
  static inline BlockPair decode(const uint8_t* p) {
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2));
    const __m256i hi =
        kSingle ? _mm256_setzero_si256()
                : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + kBytes + 2));
    // Flipping the sign bit maps int8 q to the unsigned byte q + 128.
    const __m512i codes = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1),
                                           _mm512_set1_epi8(static_cast<char>(0x80)));
    return {codes, two_f16<kSingle>(p, p + kBytes)};
  }
};

// ---------------------------------------------------------------------------------------------
// K-quants: one 256-weight super-block as four registers of 64 codes (weights 64c .. 64c+63).

struct SuperCodes {
  __m512i c[4];
};

// Q4_K / Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins packed in 12 bytes.
// Returns them as 8 bytes each (byte j = sub-block j).
inline void k4_scales_mins(const uint8_t* packed, uint64_t* scales, uint64_t* mins) {
  const uint32_t a = u32_at(packed), b = u32_at(packed + 4), c = u32_at(packed + 8);
  const uint32_t sc_hi = (c & 0x0F0F0F0Fu) | ((a >> 2) & 0x30303030u);
  const uint32_t mn_hi = ((c >> 4) & 0x0F0F0F0Fu) | ((b >> 2) & 0x30303030u);
  *scales = (a & 0x3F3F3F3Fu) | (static_cast<uint64_t>(sc_hi) << 32);
  *mins = (b & 0x3F3F3F3Fu) | (static_cast<uint64_t>(mn_hi) << 32);
}

// Sub-blocks 2i and 2i+1 are the low and high nibbles of qs[32i .. 32i+31].
inline SuperCodes q4k_codes(const uint8_t* qs) {
  const __m512i shifts = _mm512_set_epi64(0x0004000400040004LL, 0x0004000400040004LL,
                                          0x0004000400040004LL, 0x0004000400040004LL, 0, 0, 0, 0);
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  SuperCodes s;
  for (int i = 0; i < 4; ++i) {
    const __m512i v =
        _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * i)));
    s.c[i] = _mm512_and_si512(_mm512_srlv_epi16(v, shifts), low4);
  }
  return s;
}

// Q5_K: the fifth bit of weight l in sub-block j is bit j of qh[l]. A 32-bit rotate per half
// brings bit j of every byte to bit 4 of the same byte.
inline SuperCodes q5k_codes(const uint8_t* qh, const uint8_t* qs) {
  SuperCodes s = q4k_codes(qs);
  const __m512i h =
      _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh)));
  const __m512i bit4 = _mm512_set1_epi8(0x10);
  for (int i = 0; i < 4; ++i) {
    // Sub-block 2i wants bit 2i at bit 4 (rotate left 4 - 2i), sub-block 2i+1 bit 2i+1.
    const int r0 = (4 - 2 * i + 32) % 32, r1 = (3 - 2 * i + 32) % 32;
    const __m512i rot = _mm512_rolv_epi32(
        h, _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(r0), _mm512_set1_epi32(r1)));
    s.c[i] = _mm512_or_si512(s.c[i], _mm512_and_si512(rot, bit4));
  }
  return s;
}

// Q6_K: codes 0..63 (w = d * sc * (q - 32)). Per 128-weight half: weights 0..63 are the low
// nibbles of ql[0..63], 64..127 the high nibbles; weight 32g + l takes bits 2g, 2g+1 of qh[l]
// as its bits 4, 5.
inline SuperCodes q6k_codes(const uint8_t* ql, const uint8_t* qh) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i bits45 = _mm512_set1_epi8(0x30);
  // Rotations bringing bits (0,1), (2,3), (4,5), (6,7) to (4,5): 4, 2, 0, 30.
  const __m512i rot_low =
      _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(4), _mm512_set1_epi32(2));
  const __m512i rot_high =
      _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(0), _mm512_set1_epi32(30));
  SuperCodes s;
  for (int h = 0; h < 2; ++h) {
    const __m512i l = _mm512_loadu_si512(ql + 64 * h);
    const __m512i hb =
        _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh + 32 * h)));
    const __m512i high_low = _mm512_and_si512(_mm512_rolv_epi32(hb, rot_low), bits45);
    const __m512i high_high = _mm512_and_si512(_mm512_rolv_epi32(hb, rot_high), bits45);
    s.c[2 * h] = _mm512_or_si512(_mm512_and_si512(l, low4), high_low);
    s.c[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), low4), high_high);
  }
  return s;
}

}  // namespace ember
