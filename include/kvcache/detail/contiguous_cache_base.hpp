// ContiguousCacheBase: the bookkeeping and read API that KVCache and MultiLayerKVCache share — per
// (layer, row) lengths, views, chunks, truncate, clear and the moves of a context shift — over storage the
// derived class lays out.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "kvcache/cache/concept.hpp"
#include "kvcache/cache/kv_chunk.hpp"
#include "kvcache/detail/aligned_buffer.hpp"
#include "kvcache/detail/format.hpp"
#include "kvcache/detail/head_major.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/error.hpp"

namespace kvcache::detail {

/// element_type for caches whose keys and values share one storage type (a mixed cache names only
/// key_element_type and value_element_type, so code that assumes one type does not compile against it).
template <class K, class V>
struct ElementTypeName {};
template <class K>
struct ElementTypeName<K, K> {
    using element_type = K;
};

/// Throws ConfigError unless a head of head_dim values is a whole number of K and of V blocks.
template <StorageElement K, StorageElement V>
inline void check_head_dim_fits(std::string_view cache, std::size_t layer, std::size_t head_dim) {
    if (!fits_blocks<K>(head_dim) || !fits_blocks<V>(head_dim)) {
        const bool keys_bad = !fits_blocks<K>(head_dim);
        throw ConfigError(fmt::format("{} layer {}: head size {} is not a multiple of the {}-value blocks of {} ({})",
                                      cache, layer, head_dim, keys_bad ? block_values_v<K> : block_values_v<V>,
                                      keys_bad ? element_name<K>() : element_name<V>(), keys_bad ? "keys" : "values"));
    }
}

/// Bytes of one kind's region, padded to the allocation's alignment so the next region (perhaps of another
/// storage type) starts aligned.
inline std::size_t padded_bytes(std::size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

/// Derived provides num_layers(), num_kv_heads(layer), head_dim(layer) and
/// `const std::byte* region(layer, KV kind, row) const` — the start of [kv_heads][capacity][row] storage objects
/// of the keys (as K) or the values (as V). Heads within a region are capacity rows apart.
template <class Derived, StorageElement K, StorageElement V>
class ContiguousCacheBase : public ElementTypeName<K, V> {
public:
    using key_element_type = K;
    using value_element_type = V;

    std::size_t batch_size() const { return batch_; }
    std::size_t capacity() const { return capacity_; }

    /// Positions held by (layer, row).
    std::size_t seq_len(std::size_t layer, std::size_t row) const {
        check_layer_row(layer, row);
        return lengths_[layer * batch_ + row];
    }
    /// Positions held by a row once a step is complete (layer 0's count: every layer has the same then).
    std::size_t seq_len(std::size_t row = 0) const { return seq_len(0, row); }

    /// Keys of one head up to the current length, position-major: seq_len rows of storage_units<K>(head_dim)
    /// objects (seq_len * head_dim elements for float/fp16/bf16).
    std::span<const K> keys(std::size_t layer, std::size_t row, std::size_t head) const {
        const std::size_t n = seq_len(layer, row);
        check_index("kv head", head, self().num_kv_heads(layer));
        return {key_head(layer, row, head), n * storage_units<K>(self().head_dim(layer))};
    }
    std::span<const V> values(std::size_t layer, std::size_t row, std::size_t head) const {
        const std::size_t n = seq_len(layer, row);
        check_index("kv head", head, self().num_kv_heads(layer));
        return {value_head(layer, row, head), n * storage_units<V>(self().head_dim(layer))};
    }
    /// Start of (layer, row)'s keys: [kv_heads][capacity][head_dim] values.
    const K* key_data(std::size_t layer, std::size_t row) const {
        check_layer_row(layer, row);
        return key_block(layer, row);
    }
    const V* value_data(std::size_t layer, std::size_t row) const {
        check_layer_row(layer, row);
        return value_block(layer, row);
    }

    /// The whole of one head as a single chunk (what attention reads).
    std::array<KVChunk<K, V>, 1> chunks(std::size_t layer, std::size_t row, std::size_t head) const {
        const std::size_t n = seq_len(layer, row);
        check_index("kv head", head, self().num_kv_heads(layer));
        return {KVChunk<K, V>{key_head(layer, row, head), value_head(layer, row, head), 0, n, 0}};
    }

    /// Appends n_tokens positions already in the storage types: keys are [n_tokens][kv_heads][row] objects of K
    /// and values likewise of V (a cache file's payload), copied bit for bit with no float round trip.
    /// Like append: a full fixed cache throws CapacityError and a growing one grows; nothing is written then.
    void append_elements(std::size_t layer, std::size_t row, const K* keys, const V* values, std::size_t n_tokens) {
        check_layer_row(layer, row);
        if (n_tokens == 0) return;
        if (keys == nullptr || values == nullptr) {
            throw ShapeError(fmt::format("append_elements: null keys or values for {} tokens", n_tokens));
        }
        if (n_tokens > std::numeric_limits<std::uint32_t>::max() - seq_len(layer, row)) {  // lengths are 32-bit
            throw CapacityError(fmt::format("append_elements: {} tokens after {} overflow a 32-bit length", n_tokens,
                                            seq_len(layer, row)));
        }
        Derived& cache = static_cast<Derived&>(*this);
        cache.make_room(layer, row, n_tokens);
        const std::size_t heads = cache.num_kv_heads(layer), dim = cache.head_dim(layer);
        std::uint32_t& n = length(layer, row);
        detail::scatter_elements(keys, n_tokens, heads, dim, key_block(layer, row), capacity_, n);
        detail::scatter_elements(values, n_tokens, heads, dim, value_block(layer, row), capacity_, n);
        n += static_cast<std::uint32_t>(n_tokens);
    }

    /// Keeps the first n positions of every layer of every row (shorter rows are unchanged).
    void truncate(std::size_t n) {
        for (auto& length : lengths_) length = static_cast<std::uint32_t>(std::min<std::size_t>(length, n));
    }
    /// Keeps the first n positions of every layer of one row.
    void truncate_row(std::size_t row, std::size_t n) {
        check_index("batch row", row, batch_);
        for (std::size_t l = 0; l < self().num_layers(); ++l) {
            auto& length = lengths_[l * batch_ + row];
            length = static_cast<std::uint32_t>(std::min<std::size_t>(length, n));
        }
    }
    /// Forgets every position; the memory stays allocated.
    void clear() { std::fill(lengths_.begin(), lengths_.end(), 0u); }

    /// Removes positions [n_keep, n_keep + n_discard) of every layer of `row` and moves the positions after them
    /// down by n_discard (stored bits unchanged). Keys that carry a position (RoPE) then sit n_discard lower than
    /// they were rotated for: context_shift() (cache/context_shift.hpp) re-rotates them. ConfigError unless
    /// n_discard >= 1 and n_keep + n_discard <= the row's length in every layer; nothing changes then.
    void discard_positions(std::size_t row, std::size_t n_keep, std::size_t n_discard) {
        check_index("batch row", row, batch_);
        for (std::size_t l = 0; l < self().num_layers(); ++l) {
            const std::size_t n = lengths_[l * batch_ + row];
            if (n_discard == 0 || n_keep > n || n_discard > n - n_keep) {
                throw ConfigError(fmt::format("discard_positions: cannot drop {} positions after the first {} of layer "
                                              "{} row {}, which holds {}",
                                              n_discard, n_keep, l, row, n));
            }
        }
        for (std::size_t l = 0; l < self().num_layers(); ++l) {
            std::uint32_t& n = length(l, row);
            const std::size_t heads = self().num_kv_heads(l), dim = self().head_dim(l);
            const std::size_t moved = n - n_keep - n_discard;
            detail::move_positions(key_block(l, row), capacity_, heads, dim, n_keep + n_discard, n_keep, moved);
            detail::move_positions(value_block(l, row), capacity_, heads, dim, n_keep + n_discard, n_keep, moved);
            n = static_cast<std::uint32_t>(n - n_discard);
        }
    }

    /// Calls f(layer, keys, n) with positions [from, to) of row's keys in every layer decoded to floats as
    /// [n][kv_heads][head_dim] (n = to - from), and stores what f leaves there back (re-encoded as K): how a
    /// context shift re-rotates keys. IndexError unless to <= the row's length in every layer.
    template <class F>
    void transform_keys(std::size_t row, std::size_t from, std::size_t to, F&& f) {
        check_index("batch row", row, batch_);
        for (std::size_t l = 0; l < self().num_layers(); ++l) {
            if (from > to || to > lengths_[l * batch_ + row]) {
                throw IndexError(fmt::format("transform_keys: positions [{}, {}) of layer {} row {}, which holds {}",
                                             from, to, l, row, lengths_[l * batch_ + row]));
            }
        }
        std::vector<float> scratch;
        for (std::size_t l = 0; l < self().num_layers(); ++l) {
            const std::size_t heads = self().num_kv_heads(l), dim = self().head_dim(l), n = to - from;
            scratch.resize(n * heads * dim);
            detail::gather_tokens(key_block(l, row), capacity_, from, n, heads, dim, scratch.data());
            f(l, std::span<float>(scratch), n);
            detail::scatter_tokens(scratch.data(), n, heads, dim, key_block(l, row), capacity_, from);
        }
    }

    /// Bytes holding cached positions now (K and V, all layers and rows).
    std::size_t bytes_used() const {
        std::size_t bytes = 0;
        for (std::size_t l = 0; l < self().num_layers(); ++l) {
            const std::size_t heads = self().num_kv_heads(l), dim = self().head_dim(l);
            const std::size_t per_position = heads * (storage_units<K>(dim) * sizeof(K) + storage_units<V>(dim) * sizeof(V));
            for (std::size_t r = 0; r < batch_; ++r) bytes += lengths_[l * batch_ + r] * per_position;
        }
        return bytes;
    }

protected:
    ContiguousCacheBase(std::size_t layers, std::size_t batch, std::size_t capacity)
        : batch_(batch), capacity_(capacity) {
        const std::size_t rows = checked_product<ConfigError>("cache lengths", layers, batch);
        try {
            lengths_.assign(rows, 0);
        } catch (const std::bad_alloc&) {
            throw CapacityError(fmt::format("cannot allocate lengths for {} layers x {} rows", layers, batch));
        }
    }

    void check_layer_row(std::size_t layer, std::size_t row) const {
        check_index("layer", layer, self().num_layers());
        check_index("batch row", row, batch_);
    }
    /// Whether n more positions fit (layer, row) at the current capacity.
    bool fits(std::size_t layer, std::size_t row, std::size_t n) const {
        return lengths_[layer * batch_ + row] + n <= capacity_;
    }
    std::uint32_t& length(std::size_t layer, std::size_t row) { return lengths_[layer * batch_ + row]; }

    const K* key_block(std::size_t layer, std::size_t row) const {
        return reinterpret_cast<const K*>(self().region(layer, KV::Keys, row));
    }
    const V* value_block(std::size_t layer, std::size_t row) const {
        return reinterpret_cast<const V*>(self().region(layer, KV::Values, row));
    }
    K* key_block(std::size_t layer, std::size_t row) {
        return const_cast<K*>(std::as_const(*this).key_block(layer, row));
    }
    V* value_block(std::size_t layer, std::size_t row) {
        return const_cast<V*>(std::as_const(*this).value_block(layer, row));
    }
    /// Bytes of one (kind, row) region: kv_heads * capacity rows — padded to the alignment when keys and values
    /// have different types (so the other type's regions start aligned), packed when they share one.
    static std::size_t region_bytes(KV kind, std::size_t kv_heads, std::size_t head_dim, std::size_t capacity) {
        const std::size_t row = kind == KV::Keys ? storage_units<K>(head_dim) * sizeof(K) : storage_units<V>(head_dim) * sizeof(V);
        const std::size_t bytes = checked_product<ConfigError>("cache region", kv_heads, capacity, row);
        return std::same_as<K, V> ? bytes : padded_bytes(bytes);
    }

    std::size_t batch_;
    std::size_t capacity_;
    std::vector<std::uint32_t> lengths_;  // (layer, row)

private:
    const Derived& self() const { return static_cast<const Derived&>(*this); }
    const K* key_head(std::size_t layer, std::size_t row, std::size_t head) const {
        return key_block(layer, row) + head * capacity_ * storage_units<K>(self().head_dim(layer));
    }
    const V* value_head(std::size_t layer, std::size_t row, std::size_t head) const {
        return value_block(layer, row) + head * capacity_ * storage_units<V>(self().head_dim(layer));
    }
};

}  // namespace kvcache::detail
