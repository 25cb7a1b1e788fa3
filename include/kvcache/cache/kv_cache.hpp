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

/// A KV cache for `Layers` layers of `Heads` kv heads of size `HeadDim`, keys stored as K and values as V
/// (float, fp16, bf16, q8_0, q4_0 or a user's ElementTraits type; V defaults to K). Batch size and capacity (the
/// most positions a row can hold) are chosen at construction; the memory is one 64-byte aligned allocation made
/// then and never again. A block type needs HeadDim to be a multiple of its block (checked at compile time).
///
/// Layout: when K == V, element (layer, kind, row, head, position, d) with kind 0 = K, 1 = V lives at
///   ((((layer * 2 + kind) * batch + row) * Heads + head) * capacity + position) * R + d,
/// where R = HeadDim storage objects per row for float/fp16/bf16 (HeadDim / 32 blocks for q8_0/q4_0, d then
/// counting blocks). So the keys of one head are one contiguous [position][HeadDim] matrix that decode attention
/// streams. When K != V the same order holds, with each (layer, kind, row) region padded to 64 bytes.
/// Each (layer, row) has its own length, because a model appends layer by layer.
template <std::size_t Layers, std::size_t Heads, std::size_t HeadDim, StorageElement K = float, StorageElement V = K>
class KVCache : public detail::ContiguousCacheBase<KVCache<Layers, Heads, HeadDim, K, V>, K, V> {
    static_assert(Layers > 0 && Heads > 0 && HeadDim > 0, "KVCache dimensions must be positive");
    static_assert(HeadDim % block_values_v<K> == 0 && HeadDim % block_values_v<V> == 0,
                  "KVCache: HeadDim must be a multiple of the key and value storage blocks (32 for q8_0/q4_0)");
    using Base = detail::ContiguousCacheBase<KVCache<Layers, Heads, HeadDim, K, V>, K, V>;
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
        key_bytes_ = Base::region_bytes(KV::Keys, Heads, HeadDim, capacity);
        value_bytes_ = Base::region_bytes(KV::Values, Heads, HeadDim, capacity);
        layer_bytes_ = detail::checked_product<ConfigError>("KVCache", batch, key_bytes_ + value_bytes_);
        storage_ =
            detail::AlignedBuffer<std::byte>(detail::checked_product<ConfigError>("KVCache", Layers, layer_bytes_));
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
        detail::scatter_tokens(keys.data(), n_tokens, Heads, HeadDim, this->key_block(layer, row), this->capacity_, length);
        detail::scatter_tokens(values.data(), n_tokens, Heads, HeadDim, this->value_block(layer, row), this->capacity_,
                               length);
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
    const std::byte* region(std::size_t layer, KV kind, std::size_t row) const {
        return storage_.data() + layer * layer_bytes_ + (kind == KV::Values ? this->batch_ * key_bytes_ + row * value_bytes_ : row * key_bytes_);
    }

    std::size_t key_bytes_ = 0, value_bytes_ = 0, layer_bytes_ = 0;  // one row's K region, V region; one layer
    detail::AlignedBuffer<std::byte> storage_;  // per layer: K of rows 0..batch-1, then V of rows 0..batch-1
};

}  // namespace kvcache
