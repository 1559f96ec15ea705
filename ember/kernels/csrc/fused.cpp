// Fused per-token ops: RMSNorm (+ residual add), gated activations, RoPE, KV-cache writes and
// attention of a few queries over a long cache. Each replaces several eager torch ops whose
// dispatch costs more than their arithmetic at decode sizes. Activations are float32; caches
// may be float32, bfloat16 or float16. Their pure-torch twins are in ember/kernels/fused.py.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "fused.h"
#include "paged_checks.h"
#include "parallel.h"

namespace {

namespace vec = ember::vec;
using ember::check_page_scales;
using ember::check_paged_caches;

constexpr const char* kOp = "ember fused ops";  // how the paged checks name these ops

// ---------------------------------------------------------------------------------------------
// Row access: tensors of 1 to 3 dims whose last dim is contiguous, any strides elsewhere (views
// into a fused QKV output work without a copy).

struct Rows {
  int64_t count = 0;  // number of rows
  int64_t inner = 1;  // rows per step of the outer stride
  int64_t outer_stride = 0;
  int64_t inner_stride = 0;
  int64_t width = 0;

  int64_t offset(int64_t row) const {
    return (row / inner) * outer_stride + (row % inner) * inner_stride;
  }
};

Rows rows_of(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() >= 1 && x.dim() <= 3 && x.stride(-1) == 1, "ember fused ops: ", name,
              " must have 1 to 3 dims and a contiguous last dim");
  Rows rows;
  rows.width = x.size(-1);
  if (x.dim() == 1) {
    rows.count = 1;
  } else if (x.dim() == 2) {
    rows.count = x.size(0);
    rows.outer_stride = x.stride(0);
  } else {
    rows.count = x.size(0) * x.size(1);
    rows.inner = std::max<int64_t>(1, x.size(1));
    rows.outer_stride = x.stride(0);
    rows.inner_stride = x.stride(1);
  }
  return rows;
}

void check_float_cpu(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "ember fused ops: ", name,
              " must be a float32 CPU tensor");
}

// Splits [0, n) over torch's threads only when each part gets about `min_work` units.
template <typename F>
void parallel_rows(int64_t n, int64_t work_per_row, int64_t min_work, const F& body) {
  const int64_t grain = std::max<int64_t>(1, min_work / std::max<int64_t>(1, work_per_row));
  ember::parallel_grain(n, grain, body);
}

// About 20 us of streaming work per thread before splitting pays for waking the others.
constexpr int64_t kMinParallelFloats = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// RMSNorm: out = (x * (1 / sqrt(mean(x^2) + eps))) * weight, the reference's operation order.

float sum_of_squares(const float* x, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
    acc0 = _mm512_fmadd_ps(a, a, acc0);
    acc1 = _mm512_fmadd_ps(b, b, acc1);
  }
  for (; i < n; i += 16) {
    const __m512 a = vec::load(x + i, vec::first_lanes(n - i));
    acc0 = _mm512_fmadd_ps(a, a, acc0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

void rms_norm_row(const float* x, const float* weight, float eps, int64_t n, float* out) {
  const float inv_rms = 1.0f / std::sqrt(sum_of_squares(x, n) / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] * inv_rms) * weight[i];
}

void check_weight(const at::Tensor& weight, int64_t width) {
  check_float_cpu(weight, "weight");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == width && weight.stride(0) == 1,
              "ember fused ops: weight must be a contiguous [", width, "] tensor");
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_float_cpu(x, "x");
  const at::Tensor src = x.dim() > 3 ? x.contiguous().view({-1, x.size(-1)}) : x;
  const Rows rows = rows_of(src, "x");
  check_weight(weight, rows.width);
  at::Tensor out = at::empty(x.sizes(), x.options());
  const float* in = src.const_data_ptr<float>();
  const float* w = weight.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  const float eps_f = static_cast<float>(eps);
  parallel_rows(rows.count, rows.width, kMinParallelFloats, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      rms_norm_row(in + rows.offset(r), w, eps_f, rows.width, dst + r * rows.width);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& residual,
                                                const at::Tensor& weight, double eps) {
  check_float_cpu(x, "x");
  check_float_cpu(residual, "residual");
  TORCH_CHECK(x.sizes() == residual.sizes(), "ember fused ops: x ", x.sizes(),
              " and residual ", residual.sizes(), " differ in shape");
  const at::Tensor a = x.dim() > 3 ? x.contiguous().view({-1, x.size(-1)}) : x;
  const at::Tensor b = x.dim() > 3 ? residual.contiguous().view({-1, x.size(-1)}) : residual;
  const Rows rows_a = rows_of(a, "x"), rows_b = rows_of(b, "residual");
  check_weight(weight, rows_a.width);
  at::Tensor normed = at::empty(x.sizes(), x.options());
  at::Tensor sum = at::empty(x.sizes(), x.options());
  const float *pa = a.const_data_ptr<float>(), *pb = b.const_data_ptr<float>();
  const float* w = weight.const_data_ptr<float>();
  float *dst = normed.mutable_data_ptr<float>(), *total = sum.mutable_data_ptr<float>();
  const float eps_f = static_cast<float>(eps);
  const int64_t width = rows_a.width;
  parallel_rows(rows_a.count, width, kMinParallelFloats, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *xa = pa + rows_a.offset(r), *xb = pb + rows_b.offset(r);
      float* h = total + r * width;
      for (int64_t i = 0; i < width; ++i) h[i] = xa[i] + xb[i];
      rms_norm_row(h, w, eps_f, width, dst + r * width);
    }
  });
  return {normed, sum};
}

// Gemma's sandwich: h = residual + rms_norm(x, x_weight); returns (rms_norm(h, weight), h).
std::tuple<at::Tensor, at::Tensor> norm_add_rms_norm(const at::Tensor& x,
                                                     const at::Tensor& residual,
                                                     const at::Tensor& x_weight,
                                                     const at::Tensor& weight, double eps) {
  check_float_cpu(x, "x");
  check_float_cpu(residual, "residual");
  TORCH_CHECK(x.sizes() == residual.sizes(), "ember fused ops: x ", x.sizes(),
              " and residual ", residual.sizes(), " differ in shape");
  const at::Tensor a = x.dim() > 3 ? x.contiguous().view({-1, x.size(-1)}) : x;
  const at::Tensor b = x.dim() > 3 ? residual.contiguous().view({-1, x.size(-1)}) : residual;
  const Rows rows_a = rows_of(a, "x"), rows_b = rows_of(b, "residual");
  check_weight(x_weight, rows_a.width);
  check_weight(weight, rows_a.width);
  at::Tensor normed = at::empty(x.sizes(), x.options());
  at::Tensor sum = at::empty(x.sizes(), x.options());
  const float *pa = a.const_data_ptr<float>(), *pb = b.const_data_ptr<float>();
  const float *wx = x_weight.const_data_ptr<float>(), *w = weight.const_data_ptr<float>();
  float *dst = normed.mutable_data_ptr<float>(), *total = sum.mutable_data_ptr<float>();
  const float eps_f = static_cast<float>(eps);
  const int64_t width = rows_a.width;
  parallel_rows(rows_a.count, 2 * width, kMinParallelFloats, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xb = pb + rows_b.offset(r);
      float* h = total + r * width;
      rms_norm_row(pa + rows_a.offset(r), wx, eps_f, width, h);
      for (int64_t i = 0; i < width; ++i) h[i] = xb[i] + h[i];
      rms_norm_row(h, w, eps_f, width, dst + r * width);
    }
  });
  return {normed, sum};
}

// ---------------------------------------------------------------------------------------------
// Gated activations over [T, 2F] (gate | up) -> [T, F].

// silu(g) * u = g / (1 + e^-g) * u, the reference's operation order.
inline __m512 silu_times(__m512 g, __m512 u) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 e = vec::exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
  return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u);
}

// gelu_tanh(g) * u. 0.5 g (1 + tanh(z)) equals g / (1 + e^(-2z)): the same value without the
// cancellation of 1 + tanh(z) for very negative g, where torch's own result loses digits.
inline __m512 gelu_tanh_times(__m512 g, __m512 u) {
  const __m512 beta = _mm512_set1_ps(static_cast<float>(M_SQRT2 * M_2_SQRTPI * 0.5));
  const __m512 kappa = _mm512_set1_ps(0.044715f);
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 cube = _mm512_mul_ps(_mm512_mul_ps(g, g), g);
  const __m512 z = _mm512_mul_ps(beta, _mm512_add_ps(g, _mm512_mul_ps(kappa, cube)));
  const __m512 e = vec::exp(_mm512_mul_ps(_mm512_set1_ps(-2.0f), z));
  return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u);
}

template <__m512 (*Act)(__m512, __m512)>
at::Tensor gated(const at::Tensor& gate_up) {
  check_float_cpu(gate_up, "gate_up");
  const at::Tensor src = gate_up.dim() > 3 ? gate_up.contiguous().view({-1, gate_up.size(-1)})
                                           : gate_up;
  const Rows rows = rows_of(src, "gate_up");
  TORCH_CHECK(rows.width % 2 == 0, "ember fused ops: gate_up's last dim (", rows.width,
              ") must be even");
  const int64_t width = rows.width / 2;
  std::vector<int64_t> shape(gate_up.sizes().begin(), gate_up.sizes().end());
  shape.back() = width;
  at::Tensor out = at::empty(shape, gate_up.options());
  const float* in = src.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  parallel_rows(rows.count, width, kMinParallelFloats / 2, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* gate = in + rows.offset(r);
      const float* up = gate + width;
      float* o = dst + r * width;
      for (int64_t i = 0; i < width; i += 16) {
        const __mmask16 m = vec::first_lanes(width - i);
        _mm512_mask_storeu_ps(o + i, m, Act(vec::load(gate + i, m), vec::load(up + i, m)));
      }
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// RoPE in place. Angles as the reference computes them in float32: (pos / scale) * inv_freq.

void rotate(float* x, const float* cos, const float* sin, int64_t half, bool interleaved) {
  if (interleaved) {
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = x[2 * i], x2 = x[2 * i + 1];
      x[2 * i] = x1 * cos[i] - x2 * sin[i];
      x[2 * i + 1] = x2 * cos[i] + x1 * sin[i];
    }
  } else {
    float* y = x + half;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = x[i], x2 = y[i];
      x[i] = x1 * cos[i] - x2 * sin[i];
      y[i] = x2 * cos[i] + x1 * sin[i];
    }
  }
}

void check_heads(const at::Tensor& x, const char* name) {
  check_float_cpu(x, name);
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1, "ember fused ops: ", name,
              " must be [tokens, heads, head_dim] with a contiguous last dim");
}

void rope_(const at::Tensor& q, const at::Tensor& k, const at::Tensor& positions,
           const at::Tensor& inv_freq, int64_t rotary_dim, bool interleaved,
           double position_scale) {
  check_heads(q, "q");
  check_heads(k, "k");
  const int64_t tokens = q.size(0), half = rotary_dim / 2;
  TORCH_CHECK(k.size(0) == tokens && positions.dim() == 1 && positions.size(0) == tokens &&
                  positions.scalar_type() == at::kLong && positions.device().is_cpu(),
              "ember fused ops: positions must be int64 [", tokens, "] like q and k's tokens");
  TORCH_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= q.size(2) &&
                  rotary_dim <= k.size(2),
              "ember fused ops: rotary_dim ", rotary_dim, " must be even and <= head_dim");
  check_float_cpu(inv_freq, "inv_freq");
  TORCH_CHECK(inv_freq.numel() == half, "ember fused ops: inv_freq must have rotary_dim / 2 = ",
              half, " values");
  const at::Tensor pos_c = positions.contiguous(), freq_c = inv_freq.contiguous();
  const int64_t* pos = pos_c.const_data_ptr<int64_t>();
  const float* freq = freq_c.const_data_ptr<float>();
  const float scale = static_cast<float>(position_scale);
  float* qd = q.mutable_data_ptr<float>();
  float* kd = k.mutable_data_ptr<float>();
  const int64_t q_heads = q.size(1), k_heads = k.size(1);
  const int64_t work = (q_heads + k_heads) * rotary_dim + 8 * half;  // sin/cos cost ~ 8 muls
  parallel_rows(tokens, work, kMinParallelFloats / 4, [&](int64_t t0, int64_t t1) {
    std::vector<float> table(2 * half);
    float *cos = table.data(), *sin = table.data() + half;
    for (int64_t t = t0; t < t1; ++t) {
      const float scaled = static_cast<float>(pos[t]) / scale;
      for (int64_t i = 0; i < half; ++i) {
        const float angle = scaled * freq[i];
        cos[i] = std::cos(angle);
        sin[i] = std::sin(angle);
      }
      for (int64_t h = 0; h < q_heads; ++h)
        rotate(qd + t * q.stride(0) + h * q.stride(1), cos, sin, half, interleaved);
      for (int64_t h = 0; h < k_heads; ++h)
        rotate(kd + t * k.stride(0) + h * k.stride(1), cos, sin, half, interleaved);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// KV cache: dtype dispatch, row writes.

template <typename F>
void with_cache_type(const at::Tensor& cache, const F& body) {
  switch (cache.scalar_type()) {
    case at::kFloat:
      body(static_cast<float*>(nullptr));
      break;
    case at::kBFloat16:
      body(static_cast<vec::Bf16*>(nullptr));
      break;
    case at::kHalf:
      body(static_cast<vec::Fp16*>(nullptr));
      break;
    default:
      TORCH_CHECK(false, "ember fused ops: KV cache dtype ", cache.scalar_type(),
                  " is not float32, bfloat16 or float16");
  }
}

// torch's own conversions (round to nearest even), so cached values equal `cache[i] = x`.
inline void store_row(float* dst, const float* src, int64_t n) {
  std::copy(src, src + n, dst);
}
inline void store_row(vec::Bf16* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i].bits = c10::BFloat16(src[i]).x;
}
inline void store_row(vec::Fp16* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i].bits = c10::Half(src[i]).x;
}

void check_caches(const at::Tensor& k_cache, const at::Tensor& v_cache) {
  TORCH_CHECK(k_cache.device().is_cpu() && k_cache.dim() == 3 && k_cache.stride(2) == 1 &&
                  v_cache.sizes() == k_cache.sizes() && v_cache.stride(2) == 1 &&
                  v_cache.scalar_type() == k_cache.scalar_type() && v_cache.device().is_cpu(),
              "ember fused ops: k_cache and v_cache must be CPU [slots, kv_heads, head_dim] of "
              "one shape and dtype with a contiguous last dim");
}

void write_kv_(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k,
               const at::Tensor& v, int64_t start) {
  check_caches(k_cache, v_cache);
  check_heads(k, "k");
  check_heads(v, "v");
  const int64_t tokens = k.size(0), heads = k.size(1), dim = k.size(2);
  TORCH_CHECK(v.sizes() == k.sizes() && heads == k_cache.size(1) && dim == k_cache.size(2),
              "ember fused ops: k and v must be [tokens, ", k_cache.size(1), ", ",
              k_cache.size(2), "] like the cache");
  TORCH_CHECK(start >= 0 && start + tokens <= k_cache.size(0), "ember fused ops: writing ",
              tokens, " positions at ", start, " overflows a cache of ", k_cache.size(0));
  with_cache_type(k_cache, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    T* kc = static_cast<T*>(k_cache.data_ptr());
    T* vc = static_cast<T*>(v_cache.data_ptr());
    const float *ks = k.const_data_ptr<float>(), *vs = v.const_data_ptr<float>();
    parallel_rows(tokens, 2 * heads * dim, kMinParallelFloats, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t slot = (start + t) * k_cache.stride(0) + h * k_cache.stride(1);
          const int64_t vslot = (start + t) * v_cache.stride(0) + h * v_cache.stride(1);
          store_row(kc + slot, ks + t * k.stride(0) + h * k.stride(1), dim);
          store_row(vc + vslot, vs + t * v.stride(0) + h * v.stride(1), dim);
        }
      }
    });
  });
}

// Paged pages [blocks, kv_heads, block_size, head_dim]: token t's k and v go to block
// slot_blocks[t], row slot_offsets[t], of every head (converted to the pages' dtype).
// Per-row symmetric int8: scale = max |x| / 127, code = round-to-even(x * (127 / max |x|)).
void quantize_row_int8(const float* x, int64_t n, int8_t* codes, float* scale) {
  float amax = 0.f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float inv = amax > 0.f ? 127.f / amax : 0.f;
  for (int64_t i = 0; i < n; ++i) codes[i] = static_cast<int8_t>(std::nearbyint(x[i] * inv));
  *scale = amax / 127.f;
}

void write_kv_paged_(const at::Tensor& k_pages, const at::Tensor& v_pages, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& slot_blocks,
                     const at::Tensor& slot_offsets, const std::optional<at::Tensor>& k_scales,
                     const std::optional<at::Tensor>& v_scales) {
  check_heads(k, "k");
  check_heads(v, "v");
  TORCH_CHECK(k_pages.device().is_cpu() && k_pages.dim() == 4 && k_pages.stride(3) == 1 &&
                  v_pages.sizes() == k_pages.sizes() && v_pages.stride(3) == 1 &&
                  v_pages.scalar_type() == k_pages.scalar_type(),
              "ember fused ops: pages must be CPU [blocks, kv_heads, block_size, head_dim] of one "
              "shape and dtype with a contiguous last dim");
  const int64_t tokens = k.size(0), heads = k.size(1), dim = k.size(2);
  const int64_t blocks = k_pages.size(0), block_size = k_pages.size(2);
  TORCH_CHECK(v.sizes() == k.sizes() && heads == k_pages.size(1) && dim == k_pages.size(3),
              "ember fused ops: k and v must be [tokens, ", k_pages.size(1), ", ",
              k_pages.size(3), "] like the pages");
  TORCH_CHECK(slot_blocks.scalar_type() == at::kLong && slot_offsets.scalar_type() == at::kLong &&
                  slot_blocks.dim() == 1 && slot_offsets.dim() == 1 &&
                  slot_blocks.size(0) == tokens && slot_offsets.size(0) == tokens,
              "ember fused ops: slot_blocks and slot_offsets must be int64 [", tokens, "]");
  const at::Tensor sb = slot_blocks.contiguous(), so = slot_offsets.contiguous();
  const int64_t* block_of = sb.const_data_ptr<int64_t>();
  const int64_t* row_of = so.const_data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t)
    TORCH_CHECK(block_of[t] >= 0 && block_of[t] < blocks && row_of[t] >= 0 &&
                    row_of[t] < block_size,
                "ember fused ops: slot (", block_of[t], ", ", row_of[t], ") outside ", blocks,
                " blocks of ", block_size);
  check_page_scales(k_pages, k_scales, "k_scales", kOp);
  check_page_scales(v_pages, v_scales, "v_scales", kOp);
  if (k_pages.scalar_type() == at::kChar) {
    int8_t* kp = static_cast<int8_t*>(k_pages.data_ptr());
    int8_t* vp = static_cast<int8_t*>(v_pages.data_ptr());
    float* kscale = k_scales->mutable_data_ptr<float>();
    float* vscale = v_scales->mutable_data_ptr<float>();
    const float *ks = k.const_data_ptr<float>(), *vs = v.const_data_ptr<float>();
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t row = (block_of[t] * heads + h) * block_size + row_of[t];
        quantize_row_int8(ks + t * k.stride(0) + h * k.stride(1), dim,
                          kp + block_of[t] * k_pages.stride(0) + h * k_pages.stride(1) +
                              row_of[t] * k_pages.stride(2),
                          kscale + row);
        quantize_row_int8(vs + t * v.stride(0) + h * v.stride(1), dim,
                          vp + block_of[t] * v_pages.stride(0) + h * v_pages.stride(1) +
                              row_of[t] * v_pages.stride(2),
                          vscale + row);
      }
    }
    return;
  }
  with_cache_type(k_pages, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    T* kp = static_cast<T*>(k_pages.data_ptr());
    T* vp = static_cast<T*>(v_pages.data_ptr());
    const float *ks = k.const_data_ptr<float>(), *vs = v.const_data_ptr<float>();
    parallel_rows(tokens, 2 * heads * dim, kMinParallelFloats, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t kslot = block_of[t] * k_pages.stride(0) + h * k_pages.stride(1) +
                                row_of[t] * k_pages.stride(2);
          const int64_t vslot = block_of[t] * v_pages.stride(0) + h * v_pages.stride(1) +
                                row_of[t] * v_pages.stride(2);
          store_row(kp + kslot, ks + t * k.stride(0) + h * k.stride(1), dim);
          store_row(vp + vslot, vs + t * v.stride(0) + h * v.stride(1), dim);
        }
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Attention of T queries at positions start .. start+T-1 over cached keys (flash-decoding).
//
// Work is split into tasks (token, kv head, chunk of key positions). A task scores its keys
// against the kv head's `group` query heads, takes a softmax local to the chunk, and leaves
// (max, sum of exps, unnormalised weighted sum of values) per query head; the chunks of one
// query head are then merged with the usual rescaling. Every query sees at least its own key,
// so each merged sum is positive.

constexpr int64_t kMaxChunk = 1024;  // keys per task: group * kMaxChunk scores stay in L1/L2
constexpr int64_t kMaxGroup = 64;    // query heads per kv head

struct AttentionShape {
  int64_t tokens, q_heads, kv_heads, group, dim;
  int64_t start, window;  // window <= 0: unlimited
  float scale;

  int64_t first_key(int64_t t) const {
    return window > 0 ? std::max<int64_t>(0, start + t - window + 1) : 0;
  }
  int64_t last_key(int64_t t) const { return start + t; }  // inclusive
};

// Partial result of one query head over one chunk: max score, sum of exps, then `dim` values.
inline int64_t partial_size(int64_t dim) { return dim + 2; }

// scores[n] = scale * dot(q, key row n0 + n) for the 16 rows of one block.
inline void score_block(const float* q, const float* const rows[16], int64_t dim, float scale,
                        int64_t valid, float* scores) {
  __m512 acc[16];
  for (int n = 0; n < 16; ++n) acc[n] = _mm512_setzero_ps();
  for (int64_t d = 0; d < dim; d += 16) {
    const __mmask16 m = vec::first_lanes(dim - d);
    const __m512 qv = vec::load(q + d, m);
    for (int n = 0; n < 16; ++n) acc[n] = _mm512_fmadd_ps(qv, vec::load(rows[n] + d, m), acc[n]);
  }
  _mm512_mask_storeu_ps(scores, vec::first_lanes(valid),
                        _mm512_mul_ps(vec::sum16(acc), _mm512_set1_ps(scale)));
}

// scores[j][n] = scale * dot(query head j, key row p0 + n) for n < count, j < group, 16 keys
// at a time. bf16 / fp16 keys are widened once per block into `tile` (16 x dim floats), not
// once per query head.
template <typename KV>
void score_keys(const float* const* queries, int64_t group, const KV* keys, int64_t key_stride,
                int64_t p0, int64_t count, int64_t dim, float scale, float* scores,
                int64_t scores_stride, float* tile) {
  for (int64_t n0 = 0; n0 < count; n0 += 16) {
    const int64_t valid = std::min<int64_t>(16, count - n0);
    const float* rows[16];
    for (int64_t n = 0; n < 16; ++n) {
      const KV* row = keys + (p0 + n0 + std::min(n, valid - 1)) * key_stride;  // pad: a real row
      if constexpr (std::is_same_v<KV, float>) {
        rows[n] = row;
      } else {
        float* wide = tile + n * dim;
        for (int64_t d = 0; d < dim; d += 16) {
          const __mmask16 m = vec::first_lanes(dim - d);
          _mm512_mask_storeu_ps(wide + d, m, vec::load(row + d, m));
        }
        rows[n] = wide;
      }
    }
    for (int64_t j = 0; j < group; ++j)
      score_block(queries[j], rows, dim, scale, valid, scores + j * scores_stride + n0);
  }
}

// Turns scores[0 .. count) into exp(score - max) in place; returns (max, sum).
std::pair<float, float> softmax_terms(float* scores, int64_t count) {
  __m512 max_v = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t n = 0; n < count; n += 16) {
    const __mmask16 m = vec::first_lanes(count - n);
    max_v = _mm512_mask_max_ps(max_v, m, max_v, _mm512_maskz_loadu_ps(m, scores + n));
  }
  const float max = _mm512_reduce_max_ps(max_v);
  const __m512 max_b = _mm512_set1_ps(max);
  __m512 sum_v = _mm512_setzero_ps();
  for (int64_t n = 0; n < count; n += 16) {
    const __mmask16 m = vec::first_lanes(count - n);
    const __m512 e = vec::exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + n), max_b));
    _mm512_mask_storeu_ps(scores + n, m, e);
    sum_v = _mm512_mask_add_ps(sum_v, m, sum_v, e);
  }
  return {max, _mm512_reduce_add_ps(sum_v)};
}

// out[j][:] (+)= sum_n weights[j][n] * value row n, for the group's query heads j.
template <typename KV>
void weigh_values(const float* weights, int64_t weights_stride, int64_t group, const KV* values,
                  int64_t value_stride, int64_t p0, int64_t count, int64_t dim, float* out,
                  int64_t out_stride, bool accumulate = false) {
  if (!accumulate)
    for (int64_t j = 0; j < group; ++j)
      std::fill(out + j * out_stride, out + j * out_stride + dim, 0.f);
  int64_t n = 0;
  // Four keys per pass: each output vector is loaded and stored once per four value rows.
  for (; n + 4 <= count; n += 4) {
    const KV* v0 = values + (p0 + n) * value_stride;
    const KV* v1 = v0 + value_stride;
    const KV* v2 = v1 + value_stride;
    const KV* v3 = v2 + value_stride;
    for (int64_t d = 0; d < dim; d += 16) {
      const __mmask16 m = vec::first_lanes(dim - d);
      const __m512 a = vec::load(v0 + d, m), b = vec::load(v1 + d, m);
      const __m512 c = vec::load(v2 + d, m), e = vec::load(v3 + d, m);
      for (int64_t j = 0; j < group; ++j) {
        const float* w = weights + j * weights_stride + n;
        float* o = out + j * out_stride + d;
        __m512 acc = _mm512_maskz_loadu_ps(m, o);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(w[0]), a, acc);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(w[1]), b, acc);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(w[2]), c, acc);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(w[3]), e, acc);
        _mm512_mask_storeu_ps(o, m, acc);
      }
    }
  }
  for (; n < count; ++n) {
    const KV* v0 = values + (p0 + n) * value_stride;
    for (int64_t d = 0; d < dim; d += 16) {
      const __mmask16 m = vec::first_lanes(dim - d);
      const __m512 a = vec::load(v0 + d, m);
      for (int64_t j = 0; j < group; ++j) {
        float* o = out + j * out_stride + d;
        const __m512 acc = _mm512_fmadd_ps(_mm512_set1_ps(weights[j * weights_stride + n]), a,
                                           _mm512_maskz_loadu_ps(m, o));
        _mm512_mask_storeu_ps(o, m, acc);
      }
    }
  }
}

// Merge the chunks' partials of every query head, laid out [token][kv head][chunk][group]:
// out = sum_c e^(m_c - M) o_c / sum_c e^(m_c - M) l_c, M the largest m_c.
void merge_partials(const float* partials, int64_t tokens, int64_t q_heads, int64_t kv_heads,
                    int64_t group, int64_t chunks, int64_t dim, float* out) {
  const int64_t psize = partial_size(dim);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < q_heads; ++h) {
      const int64_t kv_head = h / group, j = h % group;
      const float* first = partials + ((t * kv_heads + kv_head) * chunks * group + j) * psize;
      const int64_t step = group * psize;  // next chunk of the same query head
      float max = -std::numeric_limits<float>::infinity();
      for (int64_t c = 0; c < chunks; ++c) max = std::max(max, first[c * step]);
      float* o = out + (t * q_heads + h) * dim;
      std::fill(o, o + dim, 0.f);
      float total = 0.f;
      for (int64_t c = 0; c < chunks; ++c) {
        const float* part = first + c * step;
        if (part[1] == 0.f) continue;
        const float factor = std::exp(part[0] - max);
        total += factor * part[1];
        for (int64_t d = 0; d < dim; ++d) o[d] += factor * part[2 + d];
      }
      const float inv = 1.0f / total;
      for (int64_t d = 0; d < dim; ++d) o[d] *= inv;
    }
  }
}

template <typename KV>
void attend(const AttentionShape& s, const float* q, int64_t q_stride0, int64_t q_stride1,
            const KV* k_cache, const KV* v_cache, int64_t k_strides[2], int64_t v_strides[2],
            float* out) {
  // Chunks of key positions, counted from the first key any query sees. Split keys only as far
  // as needed to give every thread several tasks, and only when the whole job is big enough.
  const int64_t lo = s.first_key(0), hi = s.last_key(s.tokens - 1);
  const int64_t span = hi - lo + 1;
  const int64_t work = span * s.tokens * s.q_heads * s.dim;
  const int64_t threads = at::get_num_threads();
  const bool parallel = threads > 1 && work >= 2 * kMinParallelFloats;
  const int64_t rows = s.tokens * s.kv_heads;
  const int64_t wanted = parallel ? (8 * threads + rows - 1) / rows : 1;
  const int64_t chunk = std::clamp<int64_t>((span + wanted - 1) / wanted, 16, kMaxChunk);
  const int64_t chunks = (span + chunk - 1) / chunk;
  const int64_t tasks = rows * chunks;
  const int64_t psize = partial_size(s.dim);
  std::vector<float> partials(tasks * s.group * psize);

  auto run = [&](int64_t task0, int64_t task1) {
    thread_local std::vector<float> scratch;
    const int64_t padded = (chunk + 15) / 16 * 16;
    // group rows of scores, then the widened key tile
    const int64_t needed = s.group * padded + 16 * s.dim;
    if (static_cast<int64_t>(scratch.size()) < needed) scratch.resize(needed);
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t c = task % chunks, row = task / chunks;
      const int64_t t = row / s.kv_heads, kv_head = row % s.kv_heads;
      const int64_t p0 = std::max(lo + c * chunk, s.first_key(t));
      const int64_t p1 = std::min(lo + (c + 1) * chunk, s.last_key(t) + 1);
      float* partial = partials.data() + task * s.group * psize;
      if (p1 <= p0) {
        for (int64_t j = 0; j < s.group; ++j) {
          partial[j * psize] = -std::numeric_limits<float>::infinity();
          std::fill(partial + j * psize + 1, partial + (j + 1) * psize, 0.f);
        }
        continue;
      }
      const KV* keys = k_cache + kv_head * k_strides[1];
      const KV* values = v_cache + kv_head * v_strides[1];
      const float* queries[kMaxGroup];
      for (int64_t j = 0; j < s.group; ++j)
        queries[j] = q + t * q_stride0 + (kv_head * s.group + j) * q_stride1;
      score_keys(queries, s.group, keys, k_strides[0], p0, p1 - p0, s.dim, s.scale,
                 scratch.data(), padded, scratch.data() + s.group * padded);
      for (int64_t j = 0; j < s.group; ++j) {
        const auto [max, sum] = softmax_terms(scratch.data() + j * padded, p1 - p0);
        partial[j * psize] = max;
        partial[j * psize + 1] = sum;
      }
      weigh_values(scratch.data(), padded, s.group, values, v_strides[0], p0, p1 - p0, s.dim,
                   partial + 2, psize);
    }
  };
  if (parallel) {
    ember::parallel_grain(tasks, 1, run);
  } else {
    run(0, tasks);
  }

  merge_partials(partials.data(), s.tokens, s.q_heads, s.kv_heads, s.group, chunks, s.dim, out);
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, int64_t start, double scale,
                            int64_t window) {
  check_heads(q, "q");
  check_caches(k_cache, v_cache);
  AttentionShape s{};
  s.tokens = q.size(0);
  s.q_heads = q.size(1);
  s.kv_heads = k_cache.size(1);
  s.dim = q.size(2);
  s.start = start;
  s.window = window;
  s.scale = static_cast<float>(scale);
  TORCH_CHECK(s.tokens > 0 && s.kv_heads > 0 && s.q_heads % s.kv_heads == 0 &&
                  k_cache.size(2) == s.dim,
              "ember fused ops: q [", s.tokens, ", ", s.q_heads, ", ", s.dim,
              "] does not fit caches of ", s.kv_heads, " kv heads x ", k_cache.size(2));
  TORCH_CHECK(start >= 0 && start + s.tokens <= k_cache.size(0), "ember fused ops: queries at ",
              start, "..", start + s.tokens - 1, " need keys the cache of ", k_cache.size(0),
              " slots does not hold");
  s.group = s.q_heads / s.kv_heads;
  TORCH_CHECK(s.group <= kMaxGroup, "ember fused ops: more than ", kMaxGroup,
              " query heads per kv head");
  at::Tensor out = at::empty({s.tokens, s.q_heads, s.dim}, q.options());
  int64_t k_strides[2] = {k_cache.stride(0), k_cache.stride(1)};
  int64_t v_strides[2] = {v_cache.stride(0), v_cache.stride(1)};
  with_cache_type(k_cache, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    attend(s, q.const_data_ptr<float>(), q.stride(0), q.stride(1),
           static_cast<const T*>(k_cache.const_data_ptr()),
           static_cast<const T*>(v_cache.const_data_ptr()), k_strides, v_strides,
           out.mutable_data_ptr<float>());
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Paged attention: several sequences' new tokens, flattened, over keys and values stored in
// fixed-size blocks of a shared pool. Sequence b's tokens are rows query_start[b] ..
// query_start[b+1]-1 of q and are the last ones of its seq_lens[b] positions; its position p
// lives in block block_table[b][p / block_size], row p % block_size. Tasks are (token, kv head,
// chunk of whole blocks), merged like decode_attention's.

// Asks for `rows` rows of `dim` values, `stride` elements apart, to be brought into the cache.
template <typename KV>
inline void prefetch_rows(const KV* first, int64_t stride, int64_t rows, int64_t dim) {
  const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(KV));
  for (int64_t r = 0; r < rows; ++r) {
    const char* row = reinterpret_cast<const char*>(first + r * stride);
    for (int64_t b = 0; b < row_bytes; b += 64) _mm_prefetch(row + b, _MM_HINT_T0);
  }
}

struct PagedShape {
  int64_t tokens, sequences, q_heads, kv_heads, group, dim, block_size, window, fixed_chunk;
  float scale;
};

template <typename KV>
void paged_attend(const PagedShape& s, const float* q, int64_t q_stride0, int64_t q_stride1,
                  const KV* k_cache, const KV* v_cache, const int64_t k_strides[3],
                  const int64_t v_strides[3], const int32_t* tables, int64_t table_stride,
                  const int64_t* query_start, const int64_t* seq_lens, float* out,
                  const float* k_scales = nullptr, const float* v_scales = nullptr) {
  // int8 pages: scales [blocks, kv_heads, block_size], one per stored row.
  auto row_scales = [&](const float* scales, int64_t block, int64_t kv_head) {
    return scales + (block * s.kv_heads + kv_head) * s.block_size;
  };
  std::vector<int64_t> seq_of(s.tokens), position(s.tokens);
  int64_t longest = 1;
  for (int64_t b = 0; b < s.sequences; ++b) {
    for (int64_t t = query_start[b]; t < query_start[b + 1]; ++t) {
      seq_of[t] = b;
      position[t] = seq_lens[b] - (query_start[b + 1] - t);
    }
    longest = std::max(longest, s.window > 0 ? std::min(s.window, seq_lens[b]) : seq_lens[b]);
  }
  auto first_key = [&](int64_t t) {
    return s.window > 0 ? std::max<int64_t>(0, position[t] - s.window + 1) : 0;
  };
  const int64_t threads = at::get_num_threads();
  const int64_t rows = s.tokens * s.kv_heads;
  const bool parallel = threads > 1 && longest * s.tokens * s.q_heads * s.dim >= 2 * kMinParallelFloats;
  // Split keys only when there are too few (token, kv head) rows to keep every thread busy.
  const int64_t wanted = parallel ? (8 * threads + rows - 1) / rows : 1;
  // fixed_chunk > 0: the same split whatever else is in the batch (batch-invariant results).
  int64_t chunk = s.fixed_chunk > 0
                      ? s.fixed_chunk
                      : std::clamp<int64_t>((longest + wanted - 1) / wanted, 16, kMaxChunk);
  chunk = (chunk + s.block_size - 1) / s.block_size * s.block_size;
  // Chunks are counted from each token's first visible block.
  const int64_t chunks = (longest + s.block_size + chunk - 1) / chunk;
  const int64_t tasks = rows * chunks;
  const int64_t psize = partial_size(s.dim);
  std::vector<float> partials(tasks * s.group * psize);

  auto run = [&](int64_t task0, int64_t task1) {
    thread_local std::vector<float> scratch;
    const int64_t padded = (chunk + 15) / 16 * 16;
    const int64_t needed = s.group * padded + 16 * s.dim;
    if (static_cast<int64_t>(scratch.size()) < needed) scratch.resize(needed);
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t c = task % chunks, row = task / chunks;
      const int64_t t = row / s.kv_heads, kv_head = row % s.kv_heads;
      const int64_t lo = first_key(t) / s.block_size * s.block_size;
      const int64_t p0 = std::max(lo + c * chunk, first_key(t));
      const int64_t p1 = std::min(lo + (c + 1) * chunk, position[t] + 1);
      float* partial = partials.data() + task * s.group * psize;
      if (p1 <= p0) {
        for (int64_t j = 0; j < s.group; ++j) {
          partial[j * psize] = -std::numeric_limits<float>::infinity();
          std::fill(partial + j * psize + 1, partial + (j + 1) * psize, 0.f);
        }
        continue;
      }
      const int32_t* table = tables + seq_of[t] * table_stride;
      const float* queries[kMaxGroup];
      for (int64_t j = 0; j < s.group; ++j)
        queries[j] = q + t * q_stride0 + (kv_head * s.group + j) * q_stride1;
      float* scores = scratch.data();
      for (int64_t p = p0; p < p1;) {  // one run of keys per block
        const int64_t offset = p % s.block_size, n = std::min(s.block_size - offset, p1 - p);
        const int64_t block = p / s.block_size;
        // Blocks are scattered over the pool, beyond the hardware prefetcher's reach: ask for
        // the next block's keys and this block's values while this block is scored.
        if (p + n < p1)
          prefetch_rows(k_cache + table[block + 1] * k_strides[0] + kv_head * k_strides[2],
                        k_strides[1], std::min(s.block_size, p1 - p - n), s.dim);
        prefetch_rows(v_cache + table[block] * v_strides[0] + kv_head * v_strides[2] +
                          offset * v_strides[1],
                      v_strides[1], n, s.dim);
        const KV* keys = k_cache + table[block] * k_strides[0] + kv_head * k_strides[2];
        score_keys(queries, s.group, keys, k_strides[1], offset, n, s.dim, s.scale,
                   scores + (p - p0), padded, scratch.data() + s.group * padded);
        if (k_scales != nullptr) {  // the codes' dot products times each key row's scale
          const float* ks = row_scales(k_scales, table[block], kv_head) + offset;
          for (int64_t j = 0; j < s.group; ++j)
            for (int64_t i = 0; i < n; ++i) scores[j * padded + (p - p0) + i] *= ks[i];
        }
        p += n;
      }
      for (int64_t j = 0; j < s.group; ++j) {
        const auto [max, sum] = softmax_terms(scores + j * padded, p1 - p0);
        partial[j * psize] = max;
        partial[j * psize + 1] = sum;
      }
      for (int64_t p = p0; p < p1;) {
        const int64_t offset = p % s.block_size, n = std::min(s.block_size - offset, p1 - p);
        const KV* values =
            v_cache + table[p / s.block_size] * v_strides[0] + kv_head * v_strides[2];
        if (v_scales != nullptr) {  // fold each value row's scale into its weights
          const float* vs = row_scales(v_scales, table[p / s.block_size], kv_head) + offset;
          for (int64_t j = 0; j < s.group; ++j)
            for (int64_t i = 0; i < n; ++i) scores[j * padded + (p - p0) + i] *= vs[i];
        }
        weigh_values(scores + (p - p0), padded, s.group, values, v_strides[1], offset, n, s.dim,
                     partial + 2, psize, p != p0);
        p += n;
      }
    }
  };
  if (parallel) {
    ember::parallel_grain(tasks, 1, run);
  } else {
    run(0, tasks);
  }
  merge_partials(partials.data(), s.tokens, s.q_heads, s.kv_heads, s.group, chunks, s.dim, out);
}

at::Tensor paged_attention(const at::Tensor& q, const at::Tensor& k_cache,
                           const at::Tensor& v_cache, const at::Tensor& block_tables,
                           const at::Tensor& query_start, const at::Tensor& seq_lens,
                           double scale, int64_t window, int64_t fixed_chunk,
                           const std::optional<at::Tensor>& k_scales,
                           const std::optional<at::Tensor>& v_scales) {
  check_heads(q, "q");
  check_paged_caches(k_cache, v_cache, kOp);
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && block_tables.dim() == 2 &&
                  query_start.scalar_type() == at::kLong && query_start.dim() == 1 &&
                  seq_lens.scalar_type() == at::kLong && seq_lens.dim() == 1,
              "ember fused ops: block_tables must be int32 [seqs, blocks], query_start and "
              "seq_lens int64 vectors");
  PagedShape s{};
  s.tokens = q.size(0);
  s.sequences = seq_lens.size(0);
  s.q_heads = q.size(1);
  s.kv_heads = k_cache.size(2);
  s.dim = q.size(2);
  s.block_size = k_cache.size(1);
  s.window = window;
  s.scale = static_cast<float>(scale);
  TORCH_CHECK(fixed_chunk >= 0 && fixed_chunk <= kMaxChunk, "ember fused ops: fixed_chunk ",
              fixed_chunk, " outside [0, ", kMaxChunk, "]");
  // Whole blocks per chunk.
  s.fixed_chunk = fixed_chunk > 0 ? (fixed_chunk + s.block_size - 1) / s.block_size * s.block_size
                                  : 0;
  TORCH_CHECK(s.kv_heads > 0 && s.q_heads % s.kv_heads == 0 && k_cache.size(3) == s.dim,
              "ember fused ops: q heads ", s.q_heads, " x ", s.dim, " do not fit caches of ",
              s.kv_heads, " kv heads x ", k_cache.size(3));
  s.group = s.q_heads / s.kv_heads;
  TORCH_CHECK(s.group <= kMaxGroup, "ember fused ops: more than ", kMaxGroup,
              " query heads per kv head");
  TORCH_CHECK(query_start.size(0) == s.sequences + 1 && block_tables.size(0) == s.sequences,
              "ember fused ops: query_start needs seqs + 1 entries and block_tables seqs rows");
  const at::Tensor tables = block_tables.contiguous();
  const at::Tensor starts = query_start.contiguous(), lens = seq_lens.contiguous();
  const int64_t* qs = starts.const_data_ptr<int64_t>();
  const int64_t* sl = lens.const_data_ptr<int64_t>();
  const int32_t* tb = tables.const_data_ptr<int32_t>();
  // Every index the kernel will follow is checked here, before any is followed.
  TORCH_CHECK(qs[0] == 0 && qs[s.sequences] == s.tokens, "ember fused ops: query_start must run "
              "from 0 to the number of tokens");
  const int64_t blocks_per_seq = block_tables.size(1), pool = k_cache.size(0);
  for (int64_t b = 0; b < s.sequences; ++b) {
    const int64_t count = qs[b + 1] - qs[b];
    TORCH_CHECK(count >= 0 && sl[b] >= count && sl[b] <= blocks_per_seq * s.block_size,
                "ember fused ops: sequence ", b, " has ", count, " queries, ", sl[b],
                " positions and room for ", blocks_per_seq * s.block_size);
    const int64_t first = window > 0 ? std::max<int64_t>(0, sl[b] - count - window + 1) : 0;
    for (int64_t i = first / s.block_size; i * s.block_size < sl[b]; ++i)
      TORCH_CHECK(tb[b * blocks_per_seq + i] >= 0 && tb[b * blocks_per_seq + i] < pool,
                  "ember fused ops: block id ", tb[b * blocks_per_seq + i],
                  " outside the pool of ", pool);
  }
  at::Tensor out = at::empty({s.tokens, s.q_heads, s.dim}, q.options());
  if (s.tokens == 0) return out;
  const int64_t k_strides[3] = {k_cache.stride(0), k_cache.stride(1), k_cache.stride(2)};
  const int64_t v_strides[3] = {v_cache.stride(0), v_cache.stride(1), v_cache.stride(2)};
  if (k_cache.scalar_type() == at::kChar) {
    // The scales are indexed [block][kv head][row]: the pages' own (head-major) layout.
    const at::Tensor pages = k_cache.transpose(1, 2);
    check_page_scales(pages, k_scales, "k_scales", kOp);
    check_page_scales(v_cache.transpose(1, 2), v_scales, "v_scales", kOp);
    paged_attend(s, q.const_data_ptr<float>(), q.stride(0), q.stride(1),
                 static_cast<const int8_t*>(k_cache.const_data_ptr()),
                 static_cast<const int8_t*>(v_cache.const_data_ptr()), k_strides, v_strides, tb,
                 blocks_per_seq, qs, sl, out.mutable_data_ptr<float>(),
                 k_scales->const_data_ptr<float>(), v_scales->const_data_ptr<float>());
    return out;
  }
  TORCH_CHECK(!k_scales.has_value() && !v_scales.has_value(),
              "ember fused ops: KV scales only go with int8 pages");
  with_cache_type(k_cache, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    paged_attend(s, q.const_data_ptr<float>(), q.stride(0), q.stride(1),
                 static_cast<const T*>(k_cache.const_data_ptr()),
                 static_cast<const T*>(v_cache.const_data_ptr()), k_strides, v_strides, tb,
                 blocks_per_seq, qs, sl, out.mutable_data_ptr<float>());
  });
  return out;
}

// rms_norm of every [head_dim] row of x [T, H, Dh], in place.
void norm_heads_(const at::Tensor& x, const at::Tensor& weight, float eps) {
  const Rows rows = rows_of(x, "q / k");
  check_weight(weight, rows.width);
  float* data = x.mutable_data_ptr<float>();
  const float* w = weight.const_data_ptr<float>();
  parallel_rows(rows.count, rows.width, kMinParallelFloats, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = data + rows.offset(r);
      rms_norm_row(row, w, eps, rows.width, row);
    }
  });
}

// One attention layer's work between the QKV projection and the output projection:
// optional per-head QK-norm and RoPE on q, k (in place), k, v into the caches at `start`,
// then decode_attention.
at::Tensor cached_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& positions, const at::Tensor& inv_freq,
                            int64_t rotary_dim, bool interleaved, double position_scale,
                            int64_t start, double scale, int64_t window,
                            const std::optional<at::Tensor>& q_norm,
                            const std::optional<at::Tensor>& k_norm, double norm_eps) {
  check_heads(q, "q");
  check_heads(k, "k");
  check_caches(k_cache, v_cache);
  TORCH_CHECK(q_norm.has_value() == k_norm.has_value(),
              "ember fused ops: give both q_norm and k_norm or neither");
  // Refuse an overflow before q and k are changed in place.
  TORCH_CHECK(start >= 0 && start + q.size(0) <= k_cache.size(0), "ember fused ops: writing ",
              q.size(0), " positions at ", start, " overflows a cache of ", k_cache.size(0));
  if (q_norm.has_value()) {
    norm_heads_(q, *q_norm, static_cast<float>(norm_eps));
    norm_heads_(k, *k_norm, static_cast<float>(norm_eps));
  }
  rope_(q, k, positions, inv_freq, rotary_dim, interleaved, position_scale);
  write_kv_(k_cache, v_cache, k, v, start);
  return decode_attention(q, k_cache, v_cache, start, scale, window);
}

// The paged twin of cached_attention: optional QK-norm and RoPE on q, k (in place), k, v into
// their pages, then paged_attention; one call per layer for a batch of decode steps.
at::Tensor paged_cached_attention(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_pages,
    const at::Tensor& v_pages, const at::Tensor& slot_blocks, const at::Tensor& slot_offsets,
    const at::Tensor& positions, const at::Tensor& inv_freq, int64_t rotary_dim,
    bool interleaved, double position_scale, const at::Tensor& block_tables,
    const at::Tensor& query_start, const at::Tensor& seq_lens, double scale, int64_t window,
    int64_t fixed_chunk, const std::optional<at::Tensor>& k_scales,
    const std::optional<at::Tensor>& v_scales, const std::optional<at::Tensor>& q_norm,
    const std::optional<at::Tensor>& k_norm, double norm_eps) {
  check_heads(q, "q");
  check_heads(k, "k");
  TORCH_CHECK(q_norm.has_value() == k_norm.has_value(),
              "ember fused ops: give both q_norm and k_norm or neither");
  if (q_norm.has_value()) {
    norm_heads_(q, *q_norm, static_cast<float>(norm_eps));
    norm_heads_(k, *k_norm, static_cast<float>(norm_eps));
  }
  rope_(q, k, positions, inv_freq, rotary_dim, interleaved, position_scale);
  write_kv_paged_(k_pages, v_pages, k, v, slot_blocks, slot_offsets, k_scales, v_scales);
  return paged_attention(q, k_pages.transpose(1, 2), v_pages.transpose(1, 2), block_tables,
                         query_start, seq_lens, scale, window, fixed_chunk, k_scales, v_scales);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ember, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def(
      "norm_add_rms_norm(Tensor x, Tensor residual, Tensor x_weight, Tensor weight, float eps) "
      "-> (Tensor, Tensor)");
  m.def("silu_mul(Tensor gate_up) -> Tensor");
  m.def("gelu_tanh_mul(Tensor gate_up) -> Tensor");
  m.def(
      "rope_(Tensor(a!) q, Tensor(b!) k, Tensor positions, Tensor inv_freq, int rotary_dim, "
      "bool interleaved, float position_scale) -> ()");
  m.def(
      "write_kv_(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k, Tensor v, int start) -> ()");
  m.def(
      "write_kv_paged_(Tensor(a!) k_pages, Tensor(b!) v_pages, Tensor k, Tensor v, "
      "Tensor slot_blocks, Tensor slot_offsets, Tensor(c!)? k_scales=None, "
      "Tensor(d!)? v_scales=None) -> ()");
  m.def(
      "decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, int start, float scale, "
      "int window) -> Tensor");
  m.def(
      "paged_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
      "Tensor query_start, Tensor seq_lens, float scale, int window, int fixed_chunk=0, "
      "Tensor? k_scales=None, Tensor? v_scales=None) -> Tensor");
  m.def(
      "paged_cached_attention(Tensor(a!) q, Tensor(b!) k, Tensor v, Tensor(c!) k_pages, "
      "Tensor(d!) v_pages, Tensor slot_blocks, Tensor slot_offsets, Tensor positions, "
      "Tensor inv_freq, int rotary_dim, bool interleaved, float position_scale, "
      "Tensor block_tables, Tensor query_start, Tensor seq_lens, float scale, int window, "
      "int fixed_chunk=0, Tensor(e!)? k_scales=None, Tensor(f!)? v_scales=None, "
      "Tensor? q_norm=None, Tensor? k_norm=None, float norm_eps=1e-6) -> Tensor");
  m.def(
      "cached_attention(Tensor(a!) q, Tensor(b!) k, Tensor v, Tensor(c!) k_cache, "
      "Tensor(d!) v_cache, Tensor positions, Tensor inv_freq, int rotary_dim, bool interleaved, "
      "float position_scale, int start, float scale, int window, Tensor? q_norm=None, "
      "Tensor? k_norm=None, float norm_eps=1e-6) -> Tensor");
}

TORCH_LIBRARY_IMPL(ember, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("add_rms_norm", &add_rms_norm);
  m.impl("norm_add_rms_norm", &norm_add_rms_norm);
  m.impl("silu_mul", &gated<silu_times>);
  m.impl("gelu_tanh_mul", &gated<gelu_tanh_times>);
  m.impl("rope_", &rope_);
  m.impl("write_kv_", &write_kv_);
  m.impl("write_kv_paged_", &write_kv_paged_);
  m.impl("decode_attention", &decode_attention);
  m.impl("paged_attention", &paged_attention);
  m.impl("cached_attention", &cached_attention);
  m.impl("paged_cached_attention", &paged_cached_attention);
}
