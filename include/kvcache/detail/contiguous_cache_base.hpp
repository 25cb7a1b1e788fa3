// ContiguousCacheBase: the bookkeeping and read API that KVCache and MultiLayerKVCache share — per
// (layer, row) lengths, views, chunks, truncate and clear — over storage the derived class lays out.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <span>
#include <vector>

#include <fmt/format.h>

#include "kvcache/cache/kv_chunk.hpp"
#include "kvcache/detail/aligned_buffer.hpp"
#include "kvcache/detail/format.hpp"
#include "kvcache/detail/head_major.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/error.hpp"

namespace kvcache::detail {

/// Derived provides num_layers(), num_kv_heads(layer), head_dim(layer) and
/// `const T* block(layer, kind, row) const` — the start of [kv_heads][capacity][head_dim] for kind 0 (K)
/// or 1 (V). Heads within a block are capacity * head_dim elements apart.
template <class Derived, StorageElement T>
class ContiguousCacheBase {
public:
    using element_type = T;

    std::size_t batch_size() const { return batch_; }
    std::size_t capacity() const { return capacity_; }

    /// Positions held by (layer, row).
    std::size_t seq_len(std::size_t layer, std::size_t row) const {
        check_layer_row(layer, row);
        return lengths_[layer * batch_ + row];
    }
    /// Positions held by a row once a step is complete (layer 0's count: every layer has the same then).
    std::size_t seq_len(std::size_t row = 0) const { return seq_len(0, row); }

    /// Keys of one head up to the current length: seq_len * head_dim elements, position-major.
    std::span<const T> keys(std::size_t layer, std::size_t row, std::size_t head) const {
        return head_span(layer, 0, row, head);
    }
    std::span<const T> values(std::size_t layer, std::size_t row, std::size_t head) const {
        return head_span(layer, 1, row, head);
    }
    /// Start of (layer, row)'s keys: [kv_heads][capacity][head_dim].
    const T* key_data(std::size_t layer, std::size_t row) const {
        check_layer_row(layer, row);
        return self().block(layer, 0, row);
    }
    const T* value_data(std::size_t layer, std::size_t row) const {
        check_layer_row(layer, row);
        return self().block(layer, 1, row);
    }

    /// The whole of one head as a single chunk (what attention reads).
    std::array<KVChunk<T>, 1> chunks(std::size_t layer, std::size_t row, std::size_t head) const {
        const std::size_t n = seq_len(layer, row);
        check_index("kv head", head, self().num_kv_heads(layer));
        return {KVChunk<T>{head_ptr(layer, 0, row, head), head_ptr(layer, 1, row, head), 0, n, 0}};
    }

    /// Appends n_tokens positions already in the storage type: keys and values are [n_tokens][kv_heads *
    /// head_dim] elements of T each (a cache file's payload), copied bit for bit with no float round trip.
    /// Like append: a full fixed cache throws CapacityError and a growing one grows; nothing is written then.
    void append_elements(std::size_t layer, std::size_t row, const T* keys, const T* values, std::size_t n_tokens) {
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
        detail::scatter_elements(keys, n_tokens, heads, dim, cache.block(layer, 0, row), capacity_, n);
        detail::scatter_elements(values, n_tokens, heads, dim, cache.block(layer, 1, row), capacity_, n);
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

    /// Bytes holding cached positions now (K and V, all layers and rows).
    std::size_t bytes_used() const {
        std::size_t bytes = 0;
        for (std::size_t l = 0; l < self().num_layers(); ++l) {
            const std::size_t width = self().num_kv_heads(l) * self().head_dim(l);
            for (std::size_t r = 0; r < batch_; ++r) bytes += lengths_[l * batch_ + r] * 2 * width * sizeof(T);
        }
        return bytes;
    }

protected:
    ContiguousCacheBase(std::size_t layers, std::size_t batch, std::size_t capacity)
        : batch_(batch), capacity_(capacity) {
        const std::size_t rows = checked_product({layers, batch}, "cache lengths");
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

    std::size_t batch_;
    std::size_t capacity_;
    std::vector<std::uint32_t> lengths_;  // (layer, row)

private:
    const Derived& self() const { return static_cast<const Derived&>(*this); }
    const T* head_ptr(std::size_t layer, std::size_t kind, std::size_t row, std::size_t head) const {
        return self().block(layer, kind, row) + head * capacity_ * self().head_dim(layer);
    }
    std::span<const T> head_span(std::size_t layer, std::size_t kind, std::size_t row, std::size_t head) const {
        const std::size_t n = seq_len(layer, row);
        check_index("kv head", head, self().num_kv_heads(layer));
        return {head_ptr(layer, kind, row, head), n * self().head_dim(layer)};
    }
};

}  // namespace kvcache::detail
