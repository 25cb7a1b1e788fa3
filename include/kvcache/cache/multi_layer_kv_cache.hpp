// MultiLayerKVCache<T>: a KV cache whose dimensions come at run time (from a model file), per layer.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include <fmt/format.h>

#include "kvcache/cache/layer_shape.hpp"
#include "kvcache/detail/aligned_buffer.hpp"
#include "kvcache/detail/contiguous_cache_base.hpp"
#include "kvcache/detail/format.hpp"
#include "kvcache/detail/head_major.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/error.hpp"

namespace kvcache {

/// A KV cache with one allocation per layer, each [batch][kv_head][capacity][head_dim] for K and again
/// for V. Layers may differ in kv-head count and head size. Each (layer, row) keeps its own length.
/// Keys are stored as K and values as V (V defaults to K; see element_types.hpp): a block type (q8_0, q4_0)
/// needs every head size to be a multiple of its block (ConfigError at construction otherwise).
template <StorageElement K = float, StorageElement V = K>
class MultiLayerKVCache : public detail::ContiguousCacheBase<MultiLayerKVCache<K, V>, K, V> {
    using Base = detail::ContiguousCacheBase<MultiLayerKVCache<K, V>, K, V>;
    friend Base;

public:
    MultiLayerKVCache(std::vector<LayerShape> layers, std::size_t batch, std::size_t capacity,
                      Growth growth = Growth::Fixed)
        : Base(layers.size(), batch, capacity), shapes_(std::move(layers)), growth_(growth) {
        if (shapes_.empty() || batch == 0 || capacity == 0) {
            throw ConfigError(fmt::format(
                "MultiLayerKVCache needs >= 1 layer, batch >= 1 and capacity >= 1, got {} layers, batch {}, capacity {}",
                shapes_.size(), batch, capacity));
        }
        for (std::size_t l = 0; l < shapes_.size(); ++l) {
            if (shapes_[l].kv_heads == 0 || shapes_[l].head_dim == 0) {
                throw ConfigError(fmt::format("MultiLayerKVCache layer {} has {} kv heads of size {}; both must be >= 1",
                                              l, shapes_[l].kv_heads, shapes_[l].head_dim));
            }
            detail::check_head_dim_fits<K, V>("MultiLayerKVCache", l, shapes_[l].head_dim);
        }
        allocate(capacity);
    }

    /// Every layer the same shape.
    MultiLayerKVCache(const CacheShape& shape, std::size_t batch, std::size_t capacity, Growth growth = Growth::Fixed)
        : MultiLayerKVCache(shape.per_layer(), batch, capacity, growth) {}

    MultiLayerKVCache(MultiLayerKVCache&&) noexcept = default;
    MultiLayerKVCache& operator=(MultiLayerKVCache&&) noexcept = default;
    MultiLayerKVCache(const MultiLayerKVCache&) = delete;  // use copy()
    MultiLayerKVCache& operator=(const MultiLayerKVCache&) = delete;

    /// Deep copy of storage and lengths.
    MultiLayerKVCache copy() const {
        MultiLayerKVCache out(shapes_, this->batch_, this->capacity_, growth_);
        out.lengths_ = this->lengths_;
        for (std::size_t l = 0; l < shapes_.size(); ++l) out.storage_[l] = storage_[l].copy();
        return out;
    }

    std::size_t num_layers() const { return shapes_.size(); }
    Growth growth() const { return growth_; }
    const LayerShape& layer_shape(std::size_t layer) const {
        detail::check_index("layer", layer, shapes_.size());
        return shapes_[layer];
    }
    std::size_t num_kv_heads(std::size_t layer) const { return layer_shape(layer).kv_heads; }
    std::size_t head_dim(std::size_t layer) const { return layer_shape(layer).head_dim; }

    /// Makes room for at least `positions` per row without changing any length (a Growth::Grow cache then
    /// need not reallocate later; on a Fixed cache it throws if positions > capacity).
    void reserve(std::size_t positions) {
        if (positions <= this->capacity_) return;
        if (growth_ == Growth::Fixed) {
            throw CapacityError(fmt::format("MultiLayerKVCache: cannot reserve {} positions, fixed capacity is {}",
                                            positions, this->capacity_));
        }
        reallocate(positions);
    }

    /// Appends n_tokens positions to (layer, row); keys and values are [n_tokens][kv_heads * head_dim] floats.
    void append(std::size_t layer, std::size_t row, std::span<const float> keys, std::span<const float> values,
                std::size_t n_tokens) {
        this->check_layer_row(layer, row);
        const LayerShape& shape = shapes_[layer];
        detail::check_rows("keys", keys.size(), n_tokens, shape.token_width());
        detail::check_rows("values", values.size(), n_tokens, shape.token_width());
        make_room(layer, row, n_tokens);
        const std::size_t length = this->length(layer, row);
        detail::scatter_tokens(keys.data(), n_tokens, shape.kv_heads, shape.head_dim, this->key_block(layer, row),
                               this->capacity_, length);
        detail::scatter_tokens(values.data(), n_tokens, shape.kv_heads, shape.head_dim, this->value_block(layer, row),
                               this->capacity_, length);
        this->length(layer, row) = static_cast<std::uint32_t>(length + n_tokens);
    }

    std::size_t bytes_allocated() const {
        std::size_t bytes = 0;
        for (const auto& s : storage_) bytes += s.bytes();
        return bytes;
    }

    /// Bytes a cache of this shape takes at a given capacity: to report memory before allocating it.
    static std::size_t bytes_for(std::span<const LayerShape> layers, std::size_t batch, std::size_t capacity) {
        std::size_t bytes = 0;
        for (const auto& s : layers) {
            bytes += batch * (Base::region_bytes(KV::Keys, s.kv_heads, s.head_dim, capacity) +
                              Base::region_bytes(KV::Values, s.kv_heads, s.head_dim, capacity));
        }
        return bytes;
    }

private:
    // Makes n_tokens more positions fit (layer, row): a fixed cache throws CapacityError, a growing one
    // reallocates to at least twice its capacity (amortised O(1) per token).
    void make_room(std::size_t layer, std::size_t row, std::size_t n_tokens) {
        if (this->fits(layer, row, n_tokens)) return;
        const std::size_t length = this->length(layer, row);
        if (growth_ == Growth::Fixed) {
            throw CapacityError(
                fmt::format("MultiLayerKVCache layer {} row {}: appending {} tokens to {} exceeds capacity {}", layer,
                            row, n_tokens, length, this->capacity_));
        }
        reallocate(std::max(length + n_tokens, 2 * this->capacity_));
    }
    void allocate(std::size_t capacity) {
        storage_.clear();
        key_bytes_.clear();
        value_bytes_.clear();
        for (const auto& s : shapes_) {
            key_bytes_.push_back(Base::region_bytes(KV::Keys, s.kv_heads, s.head_dim, capacity));
            value_bytes_.push_back(Base::region_bytes(KV::Values, s.kv_heads, s.head_dim, capacity));
            storage_.emplace_back(
                detail::checked_product<ConfigError>("MultiLayerKVCache", this->batch_,
                                                     key_bytes_.back() + value_bytes_.back()));
        }
        this->capacity_ = capacity;
    }
    void reallocate(std::size_t new_capacity) {
        std::vector<detail::AlignedBuffer<std::byte>> old = std::move(storage_);
        std::vector<std::size_t> old_key_bytes = key_bytes_, old_value_bytes = value_bytes_;
        const std::size_t old_capacity = this->capacity_;
        try {
            allocate(new_capacity);
        } catch (...) {  // a failed growth must leave the cache as it was, not without storage
            storage_ = std::move(old);
            key_bytes_ = std::move(old_key_bytes);
            value_bytes_ = std::move(old_value_bytes);
            this->capacity_ = old_capacity;
            throw;
        }
        for (std::size_t l = 0; l < shapes_.size(); ++l) {
            const LayerShape& s = shapes_[l];
            for (std::size_t r = 0; r < this->batch_; ++r) {
                const std::byte* base = old[l].data();
                const auto* keys = reinterpret_cast<const K*>(base + r * old_key_bytes[l]);
                const auto* values = reinterpret_cast<const V*>(base + this->batch_ * old_key_bytes[l] + r * old_value_bytes[l]);
                detail::copy_heads(keys, old_capacity, this->key_block(l, r), new_capacity, s.kv_heads, s.head_dim,
                                   this->length(l, r));
                detail::copy_heads(values, old_capacity, this->value_block(l, r), new_capacity, s.kv_heads, s.head_dim,
                                   this->length(l, r));
            }
        }
    }
    const std::byte* region(std::size_t layer, KV kind, std::size_t row) const {
        return storage_[layer].data() +
               (kind == KV::Values ? this->batch_ * key_bytes_[layer] + row * value_bytes_[layer] : row * key_bytes_[layer]);
    }

    std::vector<LayerShape> shapes_;
    Growth growth_;
    std::vector<std::size_t> key_bytes_, value_bytes_;  // per layer: one row's K region, V region (padded)
    std::vector<detail::AlignedBuffer<std::byte>> storage_;  // per layer: K of rows 0..batch-1, then V of each row
};

}  // namespace kvcache
