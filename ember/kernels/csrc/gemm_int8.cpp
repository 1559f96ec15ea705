// Batched matmul in int8: activations quantized to int8 with one scale per 32 values, weights
// unpacked panel by panel to int8 codes in VNNI order, and a register-blocked vpdpbusd kernel
// (64 multiply-adds per instruction, twice vdpbf16ps's 32).
//
// A panel is 64 weight rows. Its codes are stored group-major: for each group of 4 k values,
// 64 rows x 4 bytes (one 64-byte vector per 16 rows), so one vector load feeds 16 output
// columns and one 32-bit broadcast of an activation row feeds all of them. The int32 sums are
// turned into floats once per scale block (32 weights; 16 for Q6_K):
//   out += float(sum(code * q) - offset * sum(q)) * (weight scale * activation scale)
//          [+ weight min * activation scale * sum(q)]
// vpdpbusd multiplies unsigned by signed bytes: the weights' codes are the unsigned side (the
// decoders in blocks.h shift signed formats up by an offset) and the offset's share is folded
// into each block's starting sum.
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "blocks.h"
#include "ember_kernels.h"

namespace ember {
namespace {

#define EMBER_INLINE inline __attribute__((always_inline))

constexpr int64_t kPanel = kGemmPanelRows;  // 64: four vectors of 16 columns
constexpr int kVectors = kPanel / 16;
constexpr int64_t kGroupBytes = kPanel * 4;  // one group of 4 k values for the whole panel
constexpr int kMaxRows = 6;                  // activation rows per kernel call

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }
int64_t aligned(int64_t bytes) { return round_up(bytes, 64); }

// How one GGML type looks to the int8 GEMM. Activations get one scale per 32 values for every
// type: for the K-quants that is finer than llama.cpp's Q8_K (one per 256), which halves the
// output error on Gemma-3's activations at no cost here (the kernel applies a scale product per
// block anyway).
struct Layout {
  int scale_block;  // weights per (scale, min) pair: 32, or 16 for Q6_K
  int offset;       // code offset: w = scale * (code - offset) [+ min]
  bool has_min;
};

bool layout_of(int64_t qtype, Layout* layout) {
  switch (qtype) {
    case kQ4_0: *layout = {32, 8, false}; return true;
    case kQ4_1: *layout = {32, 0, true}; return true;
    case kQ5_0: *layout = {32, 16, false}; return true;
    case kQ5_1: *layout = {32, 0, true}; return true;
    case kQ8_0: *layout = {32, 128, false}; return true;
    case kQ4_K: *layout = {32, 0, true}; return true;
    case kQ5_K: *layout = {32, 0, true}; return true;
    case kQ6_K: *layout = {16, 32, false}; return true;
    default: return false;
  }
}

// ---- quantized activations ----
// For `rows` rows: int8 q [rows][Kp] | float scale [rows][S] | int32 -offset * sum(q) [rows][S]
// | float scale * sum(q) [rows][S], with S = K / scale_block and Kp = K rounded up to 64.
// (Q6_K's 16-value scale blocks share their 32-value activation block's scale.)
template <class Int8, class Float, class Int32>
struct ActsOf {
  Int8* q;
  Float* scale;
  Int32* corr;
  Float* sum;
  int64_t kp, n_scales;
};
using Acts = ActsOf<const int8_t, const float, const int32_t>;
using ActsMut = ActsOf<int8_t, float, int32_t>;

ActsMut acts_view(const Layout& l, uint8_t* base, int64_t rows, int64_t K) {
  ActsMut a;
  a.kp = round_up(K, 64);
  a.n_scales = K / l.scale_block;
  const int64_t codes = aligned(rows * a.kp), table = aligned(rows * a.n_scales * 4);
  a.q = reinterpret_cast<int8_t*>(base);
  a.scale = reinterpret_cast<float*>(base + codes);
  a.corr = reinterpret_cast<int32_t*>(base + codes + table);
  a.sum = reinterpret_cast<float*>(base + codes + 2 * table);
  return a;
}

// Lane i of the result = op over the 16 lanes of v[i], in order (45 shuffles and ops for 16).
template <class Op>
EMBER_INLINE __m512 fold16(const __m512* v, Op op) {
  __m512 t[8], u[4];
  for (int i = 0; i < 8; ++i)
    t[i] = op(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
              _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[2 * i]), b = _mm512_castps_pd(t[2 * i + 1]);
    u[i] = op(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
              _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  const __m512 w0 =
      op(_mm512_shuffle_f32x4(u[0], u[1], 0x44), _mm512_shuffle_f32x4(u[0], u[1], 0xEE));
  const __m512 w1 =
      op(_mm512_shuffle_f32x4(u[2], u[3], 0x44), _mm512_shuffle_f32x4(u[2], u[3], 0xEE));
  return op(_mm512_shuffle_f32x4(w0, w1, 0x88), _mm512_shuffle_f32x4(w0, w1, 0xDD));
}

struct MaxOp {
  EMBER_INLINE __m512 operator()(__m512 a, __m512 b) const { return _mm512_max_ps(a, b); }
};
struct AddIntOp {
  EMBER_INLINE __m512 operator()(__m512 a, __m512 b) const {
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)));
  }
};

// kVecs * 16 values of a row (at most 512: 16 activation blocks). The blocks' maxima and sums
// come out of 16-way folds instead of one horizontal reduction per block; vectors past kVecs
// are compile-time zeros. Same arithmetic as the integer path's quantizer (scale amax / 127,
// values rounded to nearest even).
template <int kScaleBlock, int kVecs>
EMBER_INLINE void quantize_chunk(int offset, const float* x, int8_t* q, float* scale,
                                 int32_t* corr, float* sum) {
  static_assert(kVecs % 2 == 0 && kVecs <= 32);
  auto load = [&](int i) { return i < kVecs ? _mm512_loadu_ps(x + 16 * i) : _mm512_setzero_ps(); };
  __m512 block_max[16];
#pragma GCC unroll 16
  for (int b = 0; b < 16; ++b)
    block_max[b] = _mm512_max_ps(_mm512_abs_ps(load(2 * b)), _mm512_abs_ps(load(2 * b + 1)));
  const __m512 amax = fold16(block_max, MaxOp{});
  const __m512 d = _mm512_div_ps(amax, _mm512_set1_ps(127.0f));
  const __m512 inv = _mm512_maskz_div_ps(_mm512_cmp_ps_mask(amax, _mm512_setzero_ps(), _CMP_GT_OQ),
                                         _mm512_set1_ps(127.0f), amax);
  alignas(64) float inv_of[16];
  _mm512_store_ps(inv_of, inv);
  // Integer sums per scale block: per 32 values, or per 16 for kScaleBlock 16.
  __m512 part[32];
#pragma GCC unroll 16
  for (int b = 0; b < 16; ++b) {
    if (2 * b >= kVecs) {
      if constexpr (kScaleBlock == 16) {
        part[2 * b] = part[2 * b + 1] = _mm512_setzero_ps();
      } else {
        part[b] = _mm512_setzero_ps();
      }
      continue;
    }
    const __m512 scale_b = _mm512_set1_ps(inv_of[b]);
    const __m512i v0 = _mm512_cvtps_epi32(_mm512_mul_ps(load(2 * b), scale_b));
    const __m512i v1 = _mm512_cvtps_epi32(_mm512_mul_ps(load(2 * b + 1), scale_b));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 32 * b),
                        _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtsepi32_epi8(v0)),
                                                _mm512_cvtsepi32_epi8(v1), 1));
    if constexpr (kScaleBlock == 16) {
      part[2 * b] = _mm512_castsi512_ps(v0);
      part[2 * b + 1] = _mm512_castsi512_ps(v1);
    } else {
      part[b] = _mm512_castsi512_ps(_mm512_add_epi32(v0, v1));
    }
  }
  constexpr int kBlocks = kVecs * 16 / kScaleBlock;
  for (int f = 0; f < (kBlocks + 15) / 16; ++f) {
    const int valid = kBlocks - 16 * f < 16 ? kBlocks - 16 * f : 16;
    const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1);
    const __m512i sums = _mm512_castps_si512(fold16(part + 16 * f, AddIntOp{}));
    // Scale block j of fold f lies in activation block 8 f + j / 2 (kScaleBlock 16) or j.
    const __m512 d_of = kScaleBlock == 16
                            ? _mm512_permutexvar_ps(
                                  _mm512_add_epi32(_mm512_set1_epi32(8 * f),
                                                   _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3,
                                                                    2, 2, 1, 1, 0, 0)),
                                  d)
                            : d;
    _mm512_mask_storeu_ps(scale + 16 * f, mask, d_of);
    _mm512_mask_storeu_epi32(corr + 16 * f, mask,
                             _mm512_mullo_epi32(sums, _mm512_set1_epi32(-offset)));
    _mm512_mask_storeu_ps(sum + 16 * f, mask, _mm512_mul_ps(d_of, _mm512_cvtepi32_ps(sums)));
  }
}

template <int kScaleBlock>
void quantize_row(int offset, const float* x, int64_t K, int8_t* q, float* scale, int32_t* corr,
                  float* sum) {
  int64_t k = 0;
  auto step = [&](auto vecs) {
    constexpr int kVecs = decltype(vecs)::value;
    const int64_t s = k / kScaleBlock;
    quantize_chunk<kScaleBlock, kVecs>(offset, x + k, q + k, scale + s, corr + s, sum + s);
    k += 16 * kVecs;
  };
  // K is a whole number of 32-value blocks: 512-value chunks, then the rest in binary steps.
  while (K - k >= 512) step(std::integral_constant<int, 32>{});
  if (K - k >= 256) step(std::integral_constant<int, 16>{});
  if (K - k >= 128) step(std::integral_constant<int, 8>{});
  if (K - k >= 64) step(std::integral_constant<int, 4>{});
  if (K - k >= 32) step(std::integral_constant<int, 2>{});
}

void quantize_row(const Layout& l, const float* x, int64_t K, int64_t row, const ActsMut& a) {
  int8_t* q = a.q + row * a.kp;
  float* scale = a.scale + row * a.n_scales;
  int32_t* corr = a.corr + row * a.n_scales;
  float* sum = a.sum + row * a.n_scales;
  if (l.scale_block == 16) {
    quantize_row<16>(l.offset, x, K, q, scale, corr, sum);
  } else {
    quantize_row<32>(l.offset, x, K, q, scale, corr, sum);
  }
  std::memset(q + K, 0, a.kp - K);
}

// ---- weight panels ----
// codes [Kp / 4][64][4] | float scale [S][64] | float min [S][64] (types with a min only)

struct PanelMut {
  uint8_t* codes;
  float* scale;
  float* min;
};

PanelMut panel_view(const Layout& l, uint8_t* base, int64_t K) {
  const int64_t kp = round_up(K, 64), n_scales = K / l.scale_block;
  PanelMut p;
  p.codes = base;
  p.scale = reinterpret_cast<float*>(base + kp * kPanel);
  p.min = reinterpret_cast<float*>(base + kp * kPanel + aligned(n_scales * kPanel * 4));
  return p;
}

// Chunk of one weight row: codes of k in [k0, k0 + n) (n <= 256, whole blocks) into `codes`,
// and its scale blocks' scale / min into scale[j * 64], min[j * 64].
template <class T>
void decode_legacy(const uint8_t* row, int64_t k0, int n, uint8_t* codes, float* scale,
                   float* min) {
  const uint8_t* p = row + k0 / 32 * T::kBytes;
  const int blocks = n / 32;
  alignas(16) float f[4];
  int b = 0;
  for (; b + 2 <= blocks; b += 2) {
    const BlockPair pair = T::template decode<false>(p + b * T::kBytes);
    _mm512_storeu_si512(codes + 32 * b, pair.codes);
    _mm_store_ps(f, pair.fields);
    if constexpr (T::kHasMin) {
      scale[b * kPanel] = f[0];
      min[b * kPanel] = f[1];
      scale[(b + 1) * kPanel] = f[2];
      min[(b + 1) * kPanel] = f[3];
    } else {
      scale[b * kPanel] = f[0];
      scale[(b + 1) * kPanel] = f[1];
    }
  }
  if (b < blocks) {
    const BlockPair single = T::template decode<true>(p + b * T::kBytes);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + 32 * b),
                        _mm512_castsi512_si256(single.codes));
    _mm_store_ps(f, single.fields);
    scale[b * kPanel] = f[0];
    if constexpr (T::kHasMin) min[b * kPanel] = f[1];
  }
}

template <bool kFiveBit>
void decode_k4(const uint8_t* row, int64_t k0, int /*n = 256*/, uint8_t* codes, float* scale,
               float* min) {
  const uint8_t* p = row + k0 / 256 * (kFiveBit ? 176 : 144);
  const float d = f16_at(p), dmin = f16_at(p + 2);
  uint64_t sc, mn;
  k4_scales_mins(p + 4, &sc, &mn);
  const SuperCodes s = kFiveBit ? q5k_codes(p + 16, p + 48) : q4k_codes(p + 16);
  for (int c = 0; c < 4; ++c) _mm512_storeu_si512(codes + 64 * c, s.c[c]);
  for (int j = 0; j < 8; ++j) {
    scale[j * kPanel] = d * static_cast<float>((sc >> (8 * j)) & 0xFF);
    min[j * kPanel] = -(dmin * static_cast<float>((mn >> (8 * j)) & 0xFF));
  }
}

void decode_q6k(const uint8_t* row, int64_t k0, int /*n = 256*/, uint8_t* codes, float* scale,
                float* /*min*/) {
  const uint8_t* p = row + k0 / 256 * 210;
  const float d = f16_at(p + 208);
  const SuperCodes s = q6k_codes(p, p + 128);
  for (int c = 0; c < 4; ++c) _mm512_storeu_si512(codes + 64 * c, s.c[c]);
  const int8_t* sc = reinterpret_cast<const int8_t*>(p + 192);
  for (int j = 0; j < 16; ++j) scale[j * kPanel] = d * static_cast<float>(sc[j]);
}

// r[i] = dword row i (16 dwords each) -> r[j] = dword j of every row.
EMBER_INLINE void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // u[4i + e], 128-bit lane L: element 4L + e of rows 4i .. 4i+3.
  __m512i u[16];
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int e = 0; e < 4; ++e) {
    const __m512i a = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x44);
    const __m512i b = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xEE);
    const __m512i c = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x44);
    const __m512i d = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xEE);
    r[e] = _mm512_shuffle_i32x4(a, c, 0x88);
    r[4 + e] = _mm512_shuffle_i32x4(a, c, 0xDD);
    r[8 + e] = _mm512_shuffle_i32x4(b, d, 0x88);
    r[12 + e] = _mm512_shuffle_i32x4(b, d, 0xDD);
  }
}

using DecodeFn = void (*)(const uint8_t*, int64_t, int, uint8_t*, float*, float*);

DecodeFn decoder_of(int64_t qtype) {
  switch (qtype) {
    case kQ4_0: return decode_legacy<Q4_0>;
    case kQ4_1: return decode_legacy<Q4_1>;
    case kQ5_0: return decode_legacy<Q5_0>;
    case kQ5_1: return decode_legacy<Q5_1>;
    case kQ8_0: return decode_legacy<Q8_0>;
    case kQ4_K: return decode_k4<false>;
    case kQ5_K: return decode_k4<true>;
    case kQ6_K: return decode_q6k;
    default: return nullptr;
  }
}

// ---- the kernel: `Rows` activation rows x 64 columns over the whole K ----
// 6 x 4 int32 accumulators (24 registers) plus 4 weight vectors and one broadcast fill the 32
// registers, so the fp32 sums live in a small stack tile (L1), updated once per scale block.
// On Zen 5 this runs vpdpbusd at ~1.4 per cycle (~330 GMAC/s per core with the data in cache);
// without the per-block rescale it reaches ~1.9, so the int8 -> fp32 step is the main cost.
template <int Rows, int kGroups, bool kCorr, bool kMin>
void kernel(const Acts& a, int64_t m0, const uint8_t* codes, const float* wscale,
            const float* wmin, int64_t n_scales, float* out, int64_t ldo, int64_t n_valid) {
  alignas(64) float c[Rows][kPanel];
  std::memset(c, 0, sizeof(c));
  const int8_t* q[Rows];
  const float* ascale[Rows];
  const int32_t* acorr[Rows];
  const float* asum[Rows];
  for (int m = 0; m < Rows; ++m) {
    q[m] = a.q + (m0 + m) * a.kp;
    ascale[m] = a.scale + (m0 + m) * a.n_scales;
    acorr[m] = a.corr + (m0 + m) * a.n_scales;
    asum[m] = a.sum + (m0 + m) * a.n_scales;
  }
  for (int64_t s = 0; s < n_scales; ++s) {
    __m512i acc[Rows][kVectors];
#pragma GCC unroll 8
    for (int m = 0; m < Rows; ++m) {
      const __m512i init = kCorr ? _mm512_set1_epi32(acorr[m][s]) : _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int v = 0; v < kVectors; ++v) acc[m][v] = init;
    }
    const uint8_t* b = codes + s * kGroups * kGroupBytes;
#pragma GCC unroll 8
    for (int g = 0; g < kGroups; ++g) {
      __m512i w[kVectors];
#pragma GCC unroll 4
      for (int v = 0; v < kVectors; ++v) w[v] = _mm512_load_si512(b + g * kGroupBytes + 64 * v);
#pragma GCC unroll 8
      for (int m = 0; m < Rows; ++m) {
        int32_t four;
        std::memcpy(&four, q[m] + 4 * (s * kGroups + g), 4);
        const __m512i x = _mm512_set1_epi32(four);
#pragma GCC unroll 4
        for (int v = 0; v < kVectors; ++v) acc[m][v] = _mm512_dpbusd_epi32(acc[m][v], w[v], x);
      }
    }
#pragma GCC unroll 4
    for (int v = 0; v < kVectors; ++v) {
      const __m512 ws = _mm512_load_ps(wscale + s * kPanel + 16 * v);
      __m512 wm;
      if constexpr (kMin) wm = _mm512_load_ps(wmin + s * kPanel + 16 * v);
#pragma GCC unroll 8
      for (int m = 0; m < Rows; ++m) {
        __m512 cm = _mm512_load_ps(c[m] + 16 * v);
        cm = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[m][v]),
                             _mm512_mul_ps(ws, _mm512_set1_ps(ascale[m][s])), cm);
        if constexpr (kMin) cm = _mm512_fmadd_ps(wm, _mm512_set1_ps(asum[m][s]), cm);
        _mm512_store_ps(c[m] + 16 * v, cm);
      }
    }
  }
  for (int m = 0; m < Rows; ++m) {
    float* dst = out + (m0 + m) * ldo;
    if (n_valid == kPanel) {
      for (int v = 0; v < kVectors; ++v)
        _mm512_storeu_ps(dst + 16 * v, _mm512_load_ps(c[m] + 16 * v));
    } else {
      std::memcpy(dst, c[m], n_valid * sizeof(float));
    }
  }
}

using KernelFn = void (*)(const Acts&, int64_t, const uint8_t*, const float*, const float*,
                          int64_t, float*, int64_t, int64_t);

template <int kGroups, bool kCorr, bool kMin>
KernelFn kernel_for_rows(int rows) {
  switch (rows) {
    case 1: return kernel<1, kGroups, kCorr, kMin>;
    case 2: return kernel<2, kGroups, kCorr, kMin>;
    case 3: return kernel<3, kGroups, kCorr, kMin>;
    case 4: return kernel<4, kGroups, kCorr, kMin>;
    case 5: return kernel<5, kGroups, kCorr, kMin>;
    default: return kernel<6, kGroups, kCorr, kMin>;
  }
}

KernelFn kernel_of(const Layout& l, int rows) {
  if (l.scale_block == 16) return kernel_for_rows<4, true, false>(rows);
  if (l.has_min) return kernel_for_rows<8, false, true>(rows);
  return kernel_for_rows<8, true, false>(rows);
}

}  // namespace

int64_t gemm_i8_acts_bytes(int64_t qtype, int64_t rows, int64_t K) {
  Layout l;
  if (!layout_of(qtype, &l)) return 0;
  return aligned(rows * round_up(K, 64)) + 3 * aligned(rows * (K / l.scale_block) * 4);
}

void gemm_i8_quantize(int64_t qtype, const float* x, int64_t rows, int64_t K, int64_t r0,
                      int64_t r1, uint8_t* acts) {
  Layout l;
  if (!layout_of(qtype, &l)) return;
  const ActsMut a = acts_view(l, acts, rows, K);
  for (int64_t r = r0; r < r1; ++r) quantize_row(l, x + r * K, K, r, a);
}

int64_t gemm_i8_panel_bytes(int64_t qtype, int64_t K) {
  Layout l;
  if (!layout_of(qtype, &l)) return 0;
  return round_up(K, 64) * kPanel + 2 * aligned((K / l.scale_block) * kPanel * 4);
}

void gemm_i8_unpack(int64_t qtype, const uint8_t* weights, int64_t row_bytes, int64_t K,
                    int64_t n0, int64_t n_rows, uint8_t* panel) {
  Layout l;
  const DecodeFn decode = decoder_of(qtype);
  if (!layout_of(qtype, &l) || decode == nullptr) return;
  const PanelMut p = panel_view(l, panel, K);
  const int64_t valid = n_rows - n0 < kPanel ? n_rows - n0 : kPanel;
  const int64_t kp = round_up(K, 64);
  // Pass 1: decode row after row into [64][kp] codes, reading the panel's weight bytes in
  // address order (the hardware prefetcher then streams them; hopping between rows a chunk at a
  // time left the loads waiting on DRAM). Pass 2 transposes 4-byte groups so that each 64-byte
  // vector holds one group of 16 rows.
  thread_local std::vector<uint8_t> staging;
  if (static_cast<int64_t>(staging.size()) < kPanel * kp + 64) staging.resize(kPanel * kp + 64);
  uint8_t* rows = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(staging.data()) + 63) & ~static_cast<uintptr_t>(63));
  for (int64_t r = 0; r < kPanel; ++r) {
    uint8_t* codes = rows + r * kp;
    if (r < valid) {
      for (int64_t k0 = 0; k0 < K; k0 += 256) {
        const int n = static_cast<int>(K - k0 < 256 ? K - k0 : 256);
        decode(weights + (n0 + r) * row_bytes, k0, n, codes + k0,
               p.scale + (k0 / l.scale_block) * kPanel + r,
               p.min + (k0 / l.scale_block) * kPanel + r);
      }
      if (kp > K) std::memset(codes + K, 0, kp - K);
    } else {
      std::memset(codes, 0, kp);
      for (int64_t s = 0; s < K / l.scale_block; ++s) {
        p.scale[s * kPanel + r] = 0.0f;
        p.min[s * kPanel + r] = 0.0f;
      }
    }
  }
  for (int v = 0; v < kVectors; ++v) {
    for (int64_t c = 0; c < kp / 64; ++c) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(rows + (16 * v + i) * kp + 64 * c);
      transpose16(r);
      uint8_t* dst = p.codes + 16 * c * kGroupBytes + 64 * v;
      for (int j = 0; j < 16; ++j) _mm512_store_si512(dst + j * kGroupBytes, r[j]);
    }
  }
}

void gemm_i8_panel(int64_t qtype, const uint8_t* acts, int64_t rows, int64_t K, int64_t m0,
                   int64_t m1, const uint8_t* panel, float* out, int64_t ldo, int64_t n_valid) {
  Layout l;
  if (!layout_of(qtype, &l)) return;
  // The views are built by the writers' code; nothing here writes through them.
  const ActsMut am = acts_view(l, const_cast<uint8_t*>(acts), rows, K);
  const Acts a{am.q, am.scale, am.corr, am.sum, am.kp, am.n_scales};
  const PanelMut p = panel_view(l, const_cast<uint8_t*>(panel), K);
  for (int64_t m = m0; m < m1; m += kMaxRows) {
    const int r = static_cast<int>(m1 - m < kMaxRows ? m1 - m : kMaxRows);
    kernel_of(l, r)(a, m, p.codes, p.scale, p.min, a.n_scales, out, ldo, n_valid);
  }
}

}  // namespace ember
