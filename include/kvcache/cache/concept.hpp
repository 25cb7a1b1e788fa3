// The contract between caches, attention and models: what "a per-layer KV cache" must offer, and the optional
// capabilities (bounded, truncatable, element-appendable, pooled) the library uses where a cache has them.
// docs/cache-types.md is the written form of this contract for a user's own cache type.
#pragma once

#include <concepts>
#include <cstddef>
#include <ranges>
#include <span>
#include <utility>

#include "kvcache/cache/kv_chunk.hpp"
#include "kvcache/cache/layer_shape.hpp"
#include "kvcache/element_types.hpp"

namespace kvcache {

/// Which half of a cache: its keys or its values (export/import, views, cache-file sections, storage regions).
enum class KV { Keys, Values };

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

// ---- Optional capabilities. Attention, the decoder and cache files work without any of them and use the ones a
// ---- cache has. (Two functions need more than KVCacheLike, and say so in their constraints: context_shift needs
// ---- ShiftableCache, the zero-copy Eigen/xtensor views ContiguousKVCache.)

/// A cache with room for capacity() positions per (layer, row). Without growth() it is fixed: an append past
/// capacity throws CapacityError. The library checks capacity before it changes anything (the decoder before a
/// forward pass, append_rows before any row, load_cache_file before reading the payload).
template <class C>
concept BoundedKVCache = KVCacheReadable<C> && requires(const C& cache) {
    { cache.capacity() } -> std::convertible_to<std::size_t>;
};

/// A bounded cache that may grow past its capacity: growth() says whether it does now (Growth::Grow) and
/// reserve(n) makes room for n positions per row at once, so a load allocates once.
template <class C>
concept GrowableKVCache = BoundedKVCache<C> && requires(C& cache, std::size_t n) {
    { std::as_const(cache).growth() } -> std::same_as<Growth>;
    cache.reserve(n);
};

/// A cache that can forget positions: truncate(n) keeps the first n of every layer (and every row).
template <class C>
concept TruncatableKVCache = KVCacheReadable<C> && requires(C& cache, std::size_t n) { cache.truncate(n); };

/// A cache that can forget positions of one batch row: truncate_row(row, n) keeps its first n in every layer.
template <class C>
concept RowTruncatableKVCache = KVCacheReadable<C> && requires(C& cache, std::size_t row, std::size_t n) {
    cache.truncate_row(row, n);
};

/// A cache that takes rows already in its storage types: append_elements(layer, row, keys, values, n) with
/// [n][kv_heads][storage_units(head_dim)] objects of each, copied bit for bit (cache files load through it
/// without a float round trip; other caches load through append(floats)).
template <class C>
concept ElementAppendableKVCache =
    KVCacheLike<C> && requires(C& cache, std::size_t layer, std::size_t row, const key_element_t<C>* keys,
                               const value_element_t<C>* values, std::size_t n) {
        cache.append_elements(layer, row, keys, values, n);
    };

/// A cache that holds only the newest positions of a row (SlidingWindowCache): positions
/// [first_position(layer, row), seq_len(layer, row)) are readable, older ones are gone. Attention refuses a query
/// whose visible range reaches before first_position (ConfigError) rather than read a shorter context.
template <class C>
concept WindowedKVCache = KVCacheReadable<C> && requires(const C& cache, std::size_t layer, std::size_t row) {
    { cache.first_position(layer, row) } -> std::convertible_to<std::size_t>;
    { cache.window() } -> std::convertible_to<std::size_t>;
    { cache.max_step() } -> std::convertible_to<std::size_t>;
};

/// One sequence of a block pool shared with other sequences (PagedSequence): pool() and id(). Two such caches
/// of one pool draw on the same free blocks, and two views of one (pool, id) are the same sequence — the
/// decoder counts blocks per pool and refuses such a pair in one batch.
template <class C>
concept PooledKVCache = KVCacheLike<C> && requires(const C& cache, std::size_t n) {
    cache.id();
    { cache.pool().blocks_needed(cache.id(), n) } -> std::convertible_to<std::size_t>;
    { cache.pool().free_blocks() } -> std::convertible_to<std::size_t>;
};

/// Whether n more positions fit (layer, row) without the append throwing for lack of room: always for a cache
/// that is not bounded or that grows now, else seq_len + n <= capacity. (A pooled cache's capacity() is what its
/// pool's free blocks reach; several sequences of one pool are checked together by the decoder.)
template <KVCacheReadable C>
bool can_append(const C& cache, std::size_t layer, std::size_t row, std::size_t n) {
    if constexpr (GrowableKVCache<C>) {
        if (cache.growth() == Growth::Grow) return true;
    }
    if constexpr (BoundedKVCache<C>) {
        const std::size_t capacity = cache.capacity(), held = cache.seq_len(layer, row);
        return held <= capacity && n <= capacity - held;
    } else {
        return true;
    }
}

}  // namespace kvcache
