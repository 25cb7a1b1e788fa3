// The contract between caches, attention and models: what "a per-layer KV cache" must offer.
#pragma once

#include <concepts>
#include <cstddef>
#include <ranges>
#include <span>

#include "kvcache/cache/kv_chunk.hpp"
#include "kvcache/element_types.hpp"

namespace kvcache {

namespace detail {
/// A cache's key and value storage types: key_element_type / value_element_type where it names them (caches
/// whose keys and values may differ), else element_type for both.
template <class C>
struct CacheElements {
    using key = typename C::element_type;
    using value = typename C::element_type;
};
template <class C>
    requires requires {
        typename C::key_element_type;
        typename C::value_element_type;
    }
struct CacheElements<C> {
    using key = typename C::key_element_type;
    using value = typename C::value_element_type;
};
}  // namespace detail

/// The storage type of a cache's keys.
template <class C>
using key_element_t = typename detail::CacheElements<C>::key;
/// The storage type of a cache's values.
template <class C>
using value_element_t = typename detail::CacheElements<C>::value;

/// A cache attention can read: per layer and batch row, how many positions it holds and their keys and
/// values for each kv head, as a range of KVChunk in position order. Each layer keeps its own length per
/// row, because a model appends layer by layer. Keys and values may be stored as different types
/// (key_element_type / value_element_type); a cache with one type for both may just name element_type.
template <class C>
concept KVCacheReadable = requires(const C& cache, std::size_t layer, std::size_t row, std::size_t head) {
    requires StorageElement<key_element_t<C>>;
    requires StorageElement<value_element_t<C>>;
    { cache.num_layers() } -> std::convertible_to<std::size_t>;
    { cache.batch_size() } -> std::convertible_to<std::size_t>;
    { cache.num_kv_heads(layer) } -> std::convertible_to<std::size_t>;
    { cache.head_dim(layer) } -> std::convertible_to<std::size_t>;
    { cache.seq_len(layer, row) } -> std::convertible_to<std::size_t>;
    { cache.chunks(layer, row, head) } -> std::ranges::input_range;
    requires std::same_as<std::ranges::range_value_t<decltype(cache.chunks(layer, row, head))>,
                          KVChunk<key_element_t<C>, value_element_t<C>>>;
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
    { cache.key_data(layer, row) } -> std::same_as<const key_element_t<C>*>;
    { cache.value_data(layer, row) } -> std::same_as<const value_element_t<C>*>;
    { cache.capacity() } -> std::convertible_to<std::size_t>;
};

}  // namespace kvcache
