// Plain C++ interface between the kernel files and the torch op layer (ops.cpp).
// Only ops.cpp includes torch headers, so the kernel files compile in a second or two.
#pragma once

#include <cstdint>

namespace ember {

// GGML type ids (the values of ggml_type in the GGUF format).
enum GgmlType : int64_t {
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
};

struct TypeInfo {
  int64_t block_size;         // weights per block
  int64_t type_size;          // bytes per block
  bool k_quant;               // 256-weight super-blocks, activations quantized per 256
  int64_t integer_max_rows;   // batches up to this size take the int8 path (measured crossover)
};

// nullptr when the type has no fast kernel.
const TypeInfo* find_type(int64_t qtype);

// ---- integer path (small M): activations quantized to int8, VNNI dot products ----
constexpr int kGemvMaxRows = 8;  // activation rows handled in one pass over the weights

// Bytes of (64-byte aligned) scratch for n_act quantized activation rows of K values.
int64_t acts_bytes(const TypeInfo& info, int n_act, int64_t K);
// Quantizes rows x[0 .. n_act) (row stride K) into the interleaved layout gemv reads.
void quantize_acts(const TypeInfo& info, const float* x, int n_act, int64_t K, uint8_t* dst);

// out[m * ldo + r] = dot(activation row m, weight row r) for m < n_act, r in [r0, r1).
// `acts` comes from quantize_acts with the same n_act.
void gemv(int64_t qtype, int n_act, const uint8_t* weights, int64_t row_bytes, int64_t K,
          const uint8_t* acts, float* out, int64_t ldo, int64_t r0, int64_t r1);

// ---- dequantization (embedding rows, bf16 weight tiles) ----
// Exactly the reference dequantizer's values (same float operations in the same order).
void dequant_row_f32(int64_t qtype, const uint8_t* row, int64_t K, float* out);
void dequant_row_bf16(int64_t qtype, const uint8_t* row, int64_t K, uint16_t* out);

// ---- bf16 path (large M) ----
void f32_to_bf16(const float* x, int64_t n, uint16_t* out);

// C[m * ldc + n] = dot(A row m, B row n) for m < m_valid, n < n_valid, in fp32.
// A and B are bf16 rows of K values (K a multiple of 32); both must hold rows up to the next
// multiple of 4 past m_valid / n_valid (zero padding is fine).
void gemm_bf16(const uint16_t* A, int64_t lda, int64_t m_valid, const uint16_t* B, int64_t ldb,
               int64_t n_valid, int64_t K, float* C, int64_t ldc);

// ---- int8 GEMM path (large M): per-block int8 activations, weight panels unpacked to int8 ----
// A panel is kGemmPanelRows weight rows, unpacked once and multiplied with every activation row.
constexpr int64_t kGemmPanelRows = 64;

bool gemm_i8_supported(int64_t qtype);
// Bytes of (64-byte aligned) scratch for `rows` quantized activation rows of K values.
int64_t gemm_i8_acts_bytes(int64_t qtype, int64_t rows, int64_t K);
// Quantizes rows [r0, r1) of x (`rows` rows, row stride K) into `acts` (sized for `rows`).
void gemm_i8_quantize(int64_t qtype, const float* x, int64_t rows, int64_t K, int64_t r0,
                      int64_t r1, uint8_t* acts);
// Bytes of (64-byte aligned) scratch for one unpacked panel.
int64_t gemm_i8_panel_bytes(int64_t qtype, int64_t K);
// Unpacks weight rows [n0, n0 + kGemmPanelRows) of an n_rows-row matrix (rows past the end
// become zeros) into `panel`.
void gemm_i8_unpack(int64_t qtype, const uint8_t* weights, int64_t row_bytes, int64_t K,
                    int64_t n0, int64_t n_rows, uint8_t* panel);
// out[m * ldo + n] = dot(activation row m, panel row n) for m in [m0, m1), n < n_valid.
void gemm_i8_panel(int64_t qtype, const uint8_t* acts, int64_t rows, int64_t K, int64_t m0,
                   int64_t m1, const uint8_t* panel, float* out, int64_t ldo, int64_t n_valid);

}  // namespace ember
