// MultiLayerKVCache<T>: a KV cache whose dimensions come at run time (from a model file), per layer.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include <fmt/format.h>

#include "kvcache/cache/kv_chunk.hpp"
#include "kvcache/cache/layer_shape.hpp"
#include "kvcache/detail/aligned_buffer.hpp"
#include "kvcache/detail/format.hpp"
#include "kvcache/detail/head_major.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/error.hpp"

namespace kvcache {

/// A KV cache with one allocation per layer, each [batch][kv_head][capacity][head_dim] for K and again
/// for V. Layers may differ in kv-head count and head size. Each (layer, row) keeps its own length.
template <StorageElement T = float>
class MultiLayerKVCache {
public:
    using element_type = T;

    MultiLayerKVCache(std::vector<LayerShape> layers, std::size_t batch, std::size_t capacity,
                      Growth growth = Growth::Fixed)
        : shapes_(std::move(layers)), batch_(batch), capacity_(capacity), growth_(growth),
          lengths_(shapes_.size() * batch, 0) {
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
        }
        allocate(capacity_);
    }

    /// Every layer the same shape.
    MultiLayerKVCache(std::size_t n_layers, std::size_t kv_heads, std::size_t head_dim, std::size_t batch,
                      std::size_t capacity, Growth growth = Growth::Fixed)
        : MultiLayerKVCache(std::vector<LayerShape>(n_layers, LayerShape{kv_heads, head_dim}), batch, capacity,
                            growth) {}

    MultiLayerKVCache(MultiLayerKVCache&&) noexcept = default;
    MultiLayerKVCache& operator=(MultiLayerKVCache&&) noexcept = default;
    MultiLayerKVCache(const MultiLayerKVCache&) = delete;  // use copy()
    MultiLayerKVCache& operator=(const MultiLayerKVCache&) = delete;

    /// Deep copy of storage and lengths.
    MultiLayerKVCache copy() const {
        MultiLayerKVCache out(shapes_, batch_, capacity_, growth_);
        out.lengths_ = lengths_;
        for (std::size_t l = 0; l < shapes_.size(); ++l) out.storage_[l] = storage_[l].copy();
        return out;
    }

    std::size_t num_layers() const { return shapes_.size(); }
    std::size_t batch_size() const { return batch_; }
    std::size_t capacity() const { return capacity_; }
    Growth growth() const { return growth_; }
    const LayerShape& layer_shape(std::size_t layer) const {
        detail::check_index("layer", layer, shapes_.size());
        return shapes_[layer];
    }
    std::size_t num_kv_heads(std::size_t layer) const { return layer_shape(layer).kv_heads; }
    std::size_t head_dim(std::size_t layer) const { return layer_shape(layer).head_dim; }

    std::size_t seq_len(std::size_t layer, std::size_t row) const {
        check_layer_row(layer, row);
        return lengths_[layer * batch_ + row];
    }
    /// Positions held by a row once a step is complete (layer 0's count).
    std::size_t seq_len(std::size_t row = 0) const { return seq_len(0, row); }

    /// Makes room for at least `positions` per row without changing any length (Growth::Grow caches only
    /// need this to avoid reallocating later; on a Fixed cache it throws if positions > capacity).
    void reserve(std::size_t positions) {
        if (positions <= capacity_) return;
        if (growth_ == Growth::Fixed) {
            throw CapacityError(
                fmt::format("MultiLayerKVCache: cannot reserve {} positions, fixed capacity is {}", positions, capacity_));
        }
        reallocate(positions);
    }

    /// Appends n_tokens positions to (layer, row); keys and values are [n_tokens][kv_heads * head_dim] floats.
    void append(std::size_t layer, std::size_t row, std::span<const float> keys, std::span<const float> values,
                std::size_t n_tokens) {
        check_layer_row(layer, row);
        const LayerShape& shape = shapes_[layer];
        detail::check_size("keys", keys.size(), n_tokens * shape.token_width());
        detail::check_size("values", values.size(), n_tokens * shape.token_width());
        const std::size_t length = lengths_[layer * batch_ + row];
        if (length + n_tokens > capacity_) {
            if (growth_ == Growth::Fixed) {
                throw CapacityError(
                    fmt::format("MultiLayerKVCache layer {} row {}: appending {} tokens to {} exceeds capacity {}",
                                layer, row, n_tokens, length, capacity_));
            }
            reallocate(std::max(length + n_tokens, 2 * capacity_));
        }
        detail::scatter_tokens(keys.data(), n_tokens, shape.kv_heads, shape.head_dim, block(layer, 0, row), capacity_,
                               length);
        detail::scatter_tokens(values.data(), n_tokens, shape.kv_heads, shape.head_dim, block(layer, 1, row),
                               capacity_, length);
        lengths_[layer * batch_ + row] = static_cast<std::uint32_t>(length + n_tokens);
    }

    /// Keys of one head up to the current length: seq_len * head_dim elements, position-major.
    std::span<const T> keys(std::size_t layer, std::size_t row, std::size_t head) const {
        return head_span(layer, 0, row, head);
    }
    std::span<const T> values(std::size_t layer, std::size_t row, std::size_t head) const {
        return head_span(layer, 1, row, head);
    }
    /// Start of (layer, row)'s keys: [kv_heads][capacity][head_dim]; heads are capacity * head_dim apart.
    const T* key_data(std::size_t layer, std::size_t row) const {
        check_layer_row(layer, row);
        return block(layer, 0, row);
    }
    const T* value_data(std::size_t layer, std::size_t row) const {
        check_layer_row(layer, row);
        return block(layer, 1, row);
    }

    std::array<KVChunk<T>, 1> chunks(std::size_t layer, std::size_t row, std::size_t head) const {
        const std::size_t n = seq_len(layer, row);
        detail::check_index("kv head", head, shapes_[layer].kv_heads);
        return {KVChunk<T>{head_ptr(layer, 0, row, head), head_ptr(layer, 1, row, head), 0, n, 0}};
    }

    /// Keeps the first n positions of every layer of every row.
    void truncate(std::size_t n) {
        for (auto& length : lengths_) length = static_cast<std::uint32_t>(std::min<std::size_t>(length, n));
    }
    /// Keeps the first n positions of every layer of one row.
    void truncate_row(std::size_t row, std::size_t n) {
        detail::check_index("batch row", row, batch_);
        for (std::size_t l = 0; l < shapes_.size(); ++l) {
            auto& length = lengths_[l * batch_ + row];
            length = static_cast<std::uint32_t>(std::min<std::size_t>(length, n));
        }
    }
    void clear() { std::fill(lengths_.begin(), lengths_.end(), 0u); }

    std::size_t bytes_used() const {
        std::size_t bytes = 0;
        for (std::size_t l = 0; l < shapes_.size(); ++l) {
            for (std::size_t r = 0; r < batch_; ++r) {
                bytes += lengths_[l * batch_ + r] * 2 * shapes_[l].token_width() * sizeof(T);
            }
        }
        return bytes;
    }
    std::size_t bytes_allocated() const {
        std::size_t bytes = 0;
        for (const auto& s : storage_) bytes += s.bytes();
        return bytes;
    }

    /// Bytes a cache of this shape takes at a given capacity: to report memory before allocating it.
    static std::size_t bytes_for(std::span<const LayerShape> layers, std::size_t batch, std::size_t capacity) {
        std::size_t bytes = 0;
        for (const auto& s : layers) bytes += 2 * batch * capacity * s.token_width() * sizeof(T);
        return bytes;
    }

private:
    void check_layer_row(std::size_t layer, std::size_t row) const {
        detail::check_index("layer", layer, shapes_.size());
        detail::check_index("batch row", row, batch_);
    }
    void allocate(std::size_t capacity) {
        storage_.clear();
        for (const auto& s : shapes_) storage_.emplace_back(2 * batch_ * s.kv_heads * capacity * s.head_dim);
        capacity_ = capacity;
    }
    void reallocate(std::size_t new_capacity) {
        std::vector<detail::AlignedBuffer<T>> old = std::move(storage_);
        const std::size_t old_capacity = capacity_;
        allocate(new_capacity);
        for (std::size_t l = 0; l < shapes_.size(); ++l) {
            const LayerShape& s = shapes_[l];
            for (std::size_t kind = 0; kind < 2; ++kind) {
                for (std::size_t r = 0; r < batch_; ++r) {
                    const T* src = old[l].data() + (kind * batch_ + r) * s.kv_heads * old_capacity * s.head_dim;
                    detail::copy_heads(src, old_capacity, block(l, kind, r), new_capacity, s.kv_heads, s.head_dim,
                                       lengths_[l * batch_ + r]);
                }
            }
        }
    }
    T* block(std::size_t layer, std::size_t kind, std::size_t row) {
        const LayerShape& s = shapes_[layer];
        return storage_[layer].data() + (kind * batch_ + row) * s.kv_heads * capacity_ * s.head_dim;
    }
    const T* block(std::size_t layer, std::size_t kind, std::size_t row) const {
        const LayerShape& s = shapes_[layer];
        return storage_[layer].data() + (kind * batch_ + row) * s.kv_heads * capacity_ * s.head_dim;
    }
    const T* head_ptr(std::size_t layer, std::size_t kind, std::size_t row, std::size_t head) const {
        return block(layer, kind, row) + head * capacity_ * shapes_[layer].head_dim;
    }
    std::span<const T> head_span(std::size_t layer, std::size_t kind, std::size_t row, std::size_t head) const {
        const std::size_t n = seq_len(layer, row);
        detail::check_index("kv head", head, shapes_[layer].kv_heads);
        return {head_ptr(layer, kind, row, head), n * shapes_[layer].head_dim};
    }

    std::vector<LayerShape> shapes_;
    std::size_t batch_;
    std::size_t capacity_;
    Growth growth_;
    std::vector<std::uint32_t> lengths_;               // (layer, row)
    std::vector<detail::AlignedBuffer<T>> storage_;    // per layer: (K|V, row, head, capacity, head_dim)
};

}  // namespace kvcache
