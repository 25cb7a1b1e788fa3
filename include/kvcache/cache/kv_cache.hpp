// KVCache<Layers, Heads, HeadDim, T>: a KV cache whose dimensions are fixed at compile time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include <fmt/format.h>

#include "kvcache/detail/aligned_buffer.hpp"
#include "kvcache/detail/contiguous_cache_base.hpp"
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
class KVCache : public detail::ContiguousCacheBase<KVCache<Layers, Heads, HeadDim, T>, T> {
    static_assert(Layers > 0 && Heads > 0 && HeadDim > 0, "KVCache dimensions must be positive");
    using Base = detail::ContiguousCacheBase<KVCache<Layers, Heads, HeadDim, T>, T>;
    friend Base;

public:
    static constexpr std::size_t kLayers = Layers;
    static constexpr std::size_t kHeads = Heads;
    static constexpr std::size_t kHeadDim = HeadDim;
    /// Floats per token of one layer: K (or V) of all heads, the row width of append's input.
    static constexpr std::size_t kTokenWidth = Heads * HeadDim;

    KVCache(std::size_t batch, std::size_t capacity) : Base(Layers, batch, capacity) {
        if (batch == 0 || capacity == 0) {
            throw ConfigError(fmt::format("KVCache needs batch >= 1 and capacity >= 1, got batch {} capacity {}",
                                          batch, capacity));
        }
        storage_ = detail::AlignedBuffer<T>(detail::checked_product({Layers * 2 * Heads * HeadDim, batch, capacity}, "KVCache"));
    }

    KVCache(KVCache&&) noexcept = default;
    KVCache& operator=(KVCache&&) noexcept = default;
    KVCache(const KVCache&) = delete;  // use copy(): a deep copy should be visible where it happens
    KVCache& operator=(const KVCache&) = delete;

    /// Deep copy of the storage and lengths.
    KVCache copy() const {
        KVCache out(this->batch_, this->capacity_);
        out.lengths_ = this->lengths_;
        out.storage_ = storage_.copy();
        return out;
    }

    static constexpr std::size_t num_layers() { return Layers; }
    static constexpr std::size_t num_kv_heads(std::size_t = 0) { return Heads; }
    static constexpr std::size_t head_dim(std::size_t = 0) { return HeadDim; }

    /// Appends n_tokens positions to (layer, row); keys and values are [n_tokens][Heads * HeadDim] floats.
    void append(std::size_t layer, std::size_t row, std::span<const float> keys, std::span<const float> values,
                std::size_t n_tokens) {
        this->check_layer_row(layer, row);
        detail::check_rows("keys", keys.size(), n_tokens, kTokenWidth);
        detail::check_rows("values", values.size(), n_tokens, kTokenWidth);
        make_room(layer, row, n_tokens);
        std::uint32_t& length = this->length(layer, row);
        detail::scatter_tokens(keys.data(), n_tokens, Heads, HeadDim, block(layer, 0, row), this->capacity_, length);
        detail::scatter_tokens(values.data(), n_tokens, Heads, HeadDim, block(layer, 1, row), this->capacity_, length);
        length += static_cast<std::uint32_t>(n_tokens);
    }

    /// Bytes of the one allocation.
    std::size_t bytes_allocated() const { return storage_.bytes(); }

private:
    // Throws CapacityError unless n_tokens more positions fit (layer, row): a fixed cache never grows.
    void make_room(std::size_t layer, std::size_t row, std::size_t n_tokens) const {
        if (!this->fits(layer, row, n_tokens)) {
            throw CapacityError(fmt::format("KVCache layer {} row {}: appending {} tokens to {} exceeds capacity {}",
                                            layer, row, n_tokens, this->seq_len(layer, row), this->capacity_));
        }
    }
    T* block(std::size_t layer, std::size_t kind, std::size_t row) {
        return storage_.data() + ((layer * 2 + kind) * this->batch_ + row) * Heads * this->capacity_ * HeadDim;
    }
    const T* block(std::size_t layer, std::size_t kind, std::size_t row) const {
        return storage_.data() + ((layer * 2 + kind) * this->batch_ + row) * Heads * this->capacity_ * HeadDim;
    }

    detail::AlignedBuffer<T> storage_;  // (layer, K|V, row, head, capacity, HeadDim)
};

}  // namespace kvcache
