// Zero-copy xtensor views of a contiguous cache's memory (read-only; valid until the cache reallocates).
// Opt-in: not in kvcache.hpp; link kvcache::xtensor (kvcache::kvcache + xtensor) to use it.
#pragma once

#include <array>
#include <cstddef>

#include <xtensor/xadapt.hpp>

#include "kvcache/cache/concept.hpp"
#include "kvcache/cache/layout.hpp"
#include "kvcache/detail/format.hpp"

namespace kvcache {

/// Keys or values of (layer, row) as an xtensor expression of shape {kv_heads, seq_len, head_dim}, with
/// strides {capacity * head_dim, head_dim, 1}: it aliases the cache, no element is copied. The element
/// type is the cache's (float, fp16 or bf16).
template <ContiguousKVCache C>
auto xtensor_view(const C& cache, std::size_t layer, std::size_t row, KV kind) {
    const std::size_t heads = cache.num_kv_heads(layer), d = cache.head_dim(layer);
    const std::size_t seq = cache.seq_len(layer, row), capacity = cache.capacity();
    const auto* data = kind == KV::Keys ? cache.key_data(layer, row) : cache.value_data(layer, row);
    std::array<std::size_t, 3> shape{heads, seq, d};
    std::array<std::size_t, 3> strides{capacity * d, d, 1};
    // The size given must be the element count of the shape (xtensor checks it against shape, not strides,
    // and cannot resize a borrowed buffer); the strides still reach across the whole capacity.
    return xt::adapt(data, heads * seq * d, xt::no_ownership(), shape, strides);
}

}  // namespace kvcache
