// The contract between caches, attention and models: what "a per-layer KV cache" must offer.
#pragma once

#include <concepts>
#include <cstddef>
#include <ranges>
#include <span>

#include "kvcache/cache/kv_chunk.hpp"
#include "kvcache/element_types.hpp"

namespace kvcache {

/// A cache attention can read: per layer and batch row, how many positions it holds and their keys and
/// values for each kv head, as a range of KVChunk in position order. Each layer keeps its own length per
/// row, because a model appends layer by layer.
template <class C>
concept KVCacheReadable = requires(const C& cache, std::size_t layer, std::size_t row, std::size_t head) {
    typename C::element_type;
    requires StorageElement<typename C::element_type>;
    { cache.num_layers() } -> std::convertible_to<std::size_t>;
    { cache.batch_size() } -> std::convertible_to<std::size_t>;
    { cache.num_kv_heads(layer) } -> std::convertible_to<std::size_t>;
    { cache.head_dim(layer) } -> std::convertible_to<std::size_t>;
    { cache.seq_len(layer, row) } -> std::convertible_to<std::size_t>;
    { cache.chunks(layer, row, head) } -> std::ranges::input_range;
    requires std::same_as<std::ranges::range_value_t<decltype(cache.chunks(layer, row, head))>,
                          KVChunk<typename C::element_type>>;
};

/// A cache a model can also append to: `append(layer, row, keys, values, n_tokens)` stores the K and V
/// of n_tokens new positions, each given as [n_tokens][kv_heads * head_dim] floats — the natural output
/// of a K or V projection — and converts them to the cache's element type.
template <class C>
concept KVCacheLike = KVCacheReadable<C> && requires(C& cache, std::size_t layer, std::size_t row,
                                                     std::span<const float> keys, std::span<const float> values,
                                                     std::size_t n_tokens) {
    cache.append(layer, row, keys, values, n_tokens);
};

}  // namespace kvcache

namespace kvcache {

/// A cache whose (layer, row) keys are one block [kv_heads][capacity][head_dim] (and values likewise):
/// what zero-copy views need. KVCache and MultiLayerKVCache are; a paged cache is not.
template <class C>
concept ContiguousKVCache = KVCacheReadable<C> && requires(const C& cache, std::size_t layer, std::size_t row) {
    { cache.key_data(layer, row) } -> std::same_as<const typename C::element_type*>;
    { cache.value_data(layer, row) } -> std::same_as<const typename C::element_type*>;
    { cache.capacity() } -> std::convertible_to<std::size_t>;
};

}  // namespace kvcache
