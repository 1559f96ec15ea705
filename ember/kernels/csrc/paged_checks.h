// Argument checks shared by the ops that read paged KV caches (fused.cpp's paged attention,
// prefill_attention.cpp), so both refuse the same inputs with the same one-line reasons.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace ember {

// Key and value pages as [blocks, block_size, kv_heads, head_dim] views.
inline void check_paged_caches(const at::Tensor& k_cache, const at::Tensor& v_cache,
                               const char* op) {
  TORCH_CHECK(k_cache.device().is_cpu() && k_cache.dim() == 4 && k_cache.stride(3) == 1 &&
                  v_cache.sizes() == k_cache.sizes() && v_cache.stride(3) == 1 &&
                  v_cache.scalar_type() == k_cache.scalar_type() && v_cache.device().is_cpu(),
              op, ": paged caches must be CPU [blocks, block_size, kv_heads, head_dim] of one ",
              "shape and dtype with a contiguous last dim");
}

// Per-row scales [blocks, kv_heads, block_size] of head-major pages [blocks, kv_heads,
// block_size, head_dim]: required with int8 pages, refused with any other dtype.
inline void check_page_scales(const at::Tensor& pages, const std::optional<at::Tensor>& scales,
                              const char* name, const char* op) {
  if (pages.scalar_type() != at::kChar) {
    TORCH_CHECK(!scales.has_value(), op, ": ", name, " only go with int8 pages");
    return;
  }
  TORCH_CHECK(scales.has_value() && scales->scalar_type() == at::kFloat &&
                  scales->is_contiguous() && scales->dim() == 3 &&
                  scales->size(0) == pages.size(0) && scales->size(1) == pages.size(1) &&
                  scales->size(2) == pages.size(2),
              op, ": int8 pages need float32 contiguous ", name, " [blocks, kv_heads, block_size]");
}

}  // namespace ember
