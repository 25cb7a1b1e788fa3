// KVCache<Layers, Heads, HeadDim, T>: a KV cache whose dimensions are fixed at compile time.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include <fmt/format.h>

#include "kvcache/cache/kv_chunk.hpp"
#include "kvcache/detail/aligned_buffer.hpp"
#include "kvcache/detail/format.hpp"
#include "kvcache/detail/head_major.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/error.hpp"

namespace kvcache {

/// A KV cache for `Layers` layers of `Heads` kv heads of size `HeadDim`, stored as T (float, fp16, bf16).
/// Batch size and capacity (the most positions a row can hold) are chosen at construction; the memory is
/// one 64-byte aligned allocation made then and never again.
///
/// Layout: element (layer, kind, row, head, position, d) with kind 0 = K, 1 = V lives at
///   ((((layer * 2 + kind) * batch + row) * Heads + head) * capacity + position) * HeadDim + d,
/// so the keys of one head are one contiguous [position][HeadDim] matrix that decode attention streams.
/// Each (layer, row) has its own length, because a model appends layer by layer.
template <std::size_t Layers, std::size_t Heads, std::size_t HeadDim, StorageElement T = float>
class KVCache {
    static_assert(Layers > 0 && Heads > 0 && HeadDim > 0, "KVCache dimensions must be positive");

public:
    using element_type = T;
    static constexpr std::size_t kLayers = Layers;
    static constexpr std::size_t kHeads = Heads;
    static constexpr std::size_t kHeadDim = HeadDim;
    /// Floats per token of one layer: K (or V) of all heads, the row width of append's input.
    static constexpr std::size_t kTokenWidth = Heads * HeadDim;

    KVCache(std::size_t batch, std::size_t capacity)
        : batch_(batch), capacity_(capacity), lengths_(Layers * batch, 0) {
        if (batch == 0 || capacity == 0) {
            throw ConfigError(fmt::format("KVCache needs batch >= 1 and capacity >= 1, got batch {} capacity {}",
                                          batch, capacity));
        }
        storage_ = detail::AlignedBuffer<T>(Layers * 2 * batch * Heads * capacity * HeadDim);
    }

    KVCache(KVCache&&) noexcept = default;
    KVCache& operator=(KVCache&&) noexcept = default;
    KVCache(const KVCache&) = delete;  // use copy(): a deep copy should be visible where it happens
    KVCache& operator=(const KVCache&) = delete;

    /// Deep copy of the storage and lengths.
    KVCache copy() const { return KVCache(*this, CopyTag{}); }

    std::size_t num_layers() const { return Layers; }
    std::size_t batch_size() const { return batch_; }
    std::size_t num_kv_heads(std::size_t = 0) const { return Heads; }
    std::size_t head_dim(std::size_t = 0) const { return HeadDim; }
    std::size_t capacity() const { return capacity_; }

    /// Positions held by (layer, row).
    std::size_t seq_len(std::size_t layer, std::size_t row) const {
        check_layer_row(layer, row);
        return lengths_[layer * batch_ + row];
    }
    /// Positions held by a row once a step is complete (layer 0's count, as every layer has the same then).
    std::size_t seq_len(std::size_t row = 0) const { return seq_len(0, row); }

    /// Appends n_tokens positions to (layer, row); keys and values are [n_tokens][Heads * HeadDim] floats.
    void append(std::size_t layer, std::size_t row, std::span<const float> keys, std::span<const float> values,
                std::size_t n_tokens) {
        check_layer_row(layer, row);
        detail::check_size("keys", keys.size(), n_tokens * kTokenWidth);
        detail::check_size("values", values.size(), n_tokens * kTokenWidth);
        std::uint32_t& length = lengths_[layer * batch_ + row];
        if (length + n_tokens > capacity_) {
            throw CapacityError(fmt::format("KVCache layer {} row {}: appending {} tokens to {} exceeds capacity {}",
                                            layer, row, n_tokens, length, capacity_));
        }
        detail::scatter_tokens(keys.data(), n_tokens, Heads, HeadDim, block(layer, 0, row), capacity_, length);
        detail::scatter_tokens(values.data(), n_tokens, Heads, HeadDim, block(layer, 1, row), capacity_, length);
        length += static_cast<std::uint32_t>(n_tokens);
    }

    /// Keys of one head up to the current length: seq_len * HeadDim elements, position-major.
    std::span<const T> keys(std::size_t layer, std::size_t row, std::size_t head) const {
        return head_span(layer, 0, row, head);
    }
    std::span<const T> values(std::size_t layer, std::size_t row, std::size_t head) const {
        return head_span(layer, 1, row, head);
    }
    /// Start of (layer, row)'s keys: [Heads][capacity][HeadDim]; heads are capacity * HeadDim apart.
    const T* key_data(std::size_t layer, std::size_t row) const {
        check_layer_row(layer, row);
        return block(layer, 0, row);
    }
    const T* value_data(std::size_t layer, std::size_t row) const {
        check_layer_row(layer, row);
        return block(layer, 1, row);
    }

    /// The whole of one head as a single chunk (what attention reads).
    std::array<KVChunk<T>, 1> chunks(std::size_t layer, std::size_t row, std::size_t head) const {
        const std::size_t n = seq_len(layer, row);
        detail::check_index("kv head", head, Heads);
        return {KVChunk<T>{head_ptr(layer, 0, row, head), head_ptr(layer, 1, row, head), 0, n, 0}};
    }

    /// Keeps the first n positions of every layer of every row (rows shorter than n are unchanged).
    void truncate(std::size_t n) {
        for (auto& length : lengths_) length = static_cast<std::uint32_t>(std::min<std::size_t>(length, n));
    }
    /// Keeps the first n positions of every layer of one row.
    void truncate_row(std::size_t row, std::size_t n) {
        detail::check_index("batch row", row, batch_);
        for (std::size_t l = 0; l < Layers; ++l) {
            auto& length = lengths_[l * batch_ + row];
            length = static_cast<std::uint32_t>(std::min<std::size_t>(length, n));
        }
    }
    /// Forgets every position (the memory stays allocated).
    void clear() { std::fill(lengths_.begin(), lengths_.end(), 0u); }

    /// Bytes holding cached positions now (K and V, all layers and rows).
    std::size_t bytes_used() const {
        std::size_t positions = 0;
        for (auto length : lengths_) positions += length;
        return positions * 2 * kTokenWidth * sizeof(T);
    }
    /// Bytes of the one allocation.
    std::size_t bytes_allocated() const { return storage_.bytes(); }

private:
    struct CopyTag {};
    KVCache(const KVCache& other, CopyTag)
        : batch_(other.batch_), capacity_(other.capacity_), lengths_(other.lengths_), storage_(other.storage_.copy()) {}

    void check_layer_row(std::size_t layer, std::size_t row) const {
        detail::check_index("layer", layer, Layers);
        detail::check_index("batch row", row, batch_);
    }
    T* block(std::size_t layer, std::size_t kind, std::size_t row) {
        return storage_.data() + ((layer * 2 + kind) * batch_ + row) * Heads * capacity_ * HeadDim;
    }
    const T* block(std::size_t layer, std::size_t kind, std::size_t row) const {
        return storage_.data() + ((layer * 2 + kind) * batch_ + row) * Heads * capacity_ * HeadDim;
    }
    const T* head_ptr(std::size_t layer, std::size_t kind, std::size_t row, std::size_t head) const {
        return block(layer, kind, row) + head * capacity_ * HeadDim;
    }
    std::span<const T> head_span(std::size_t layer, std::size_t kind, std::size_t row, std::size_t head) const {
        const std::size_t n = seq_len(layer, row);
        detail::check_index("kv head", head, Heads);
        return {head_ptr(layer, kind, row, head), n * HeadDim};
    }

    std::size_t batch_;
    std::size_t capacity_;
    std::vector<std::uint32_t> lengths_;  // (layer, row)
    detail::AlignedBuffer<T> storage_;    // (layer, K|V, row, head, capacity, HeadDim)
};

}  // namespace kvcache
