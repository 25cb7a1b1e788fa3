// SlidingWindowCache: the cache of a sliding-window attention layer — a ring of the last positions, memory
// fixed at construction however long the sequence grows, positions explicit so attention is exact.
//
// A layer whose query at position p sees only keys in (p - W, p] (Mistral's sliding_window, the local layers of
// Gemma-2/3) never reads a key again once W newer ones exist. This cache keeps each (layer, row, kv head)'s keys
// and values in a ring of W + max_step - 1 slots: position p lives in slot p mod slots. A step appends up to
// max_step tokens and then attends; its first query, at p - n + 1, reaches back to p - n - W + 2, which the ring
// still holds. seq_len counts every position ever appended (it is the position of the next token, as RoPE and
// the causal mask need), and chunks() give the held positions with their absolute start, oldest first (two
// chunks once the ring has wrapped). Attention cuts its tiles at absolute positions and reads a chunk's rows
// the same way whether it is whole or split, so attention with AttentionOptions::window <= W over this cache
// is bit for bit attention with that window over a full cache of the same positions. A window attention that
// would reach a position the ring no longer holds is refused (first_position, checked by attention), never
// silently read from a shorter context.
//
// Layout: per layer, keys then values, each [batch][kv_head][slot][storage_units(head_dim)]; one aligned
// allocation per half. Memory: layers x batch x kv_heads x slots x (bytes of a key row + a value row).
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "kvcache/cache/concept.hpp"
#include "kvcache/cache/kv_chunk.hpp"
#include "kvcache/cache/layer_shape.hpp"
#include "kvcache/detail/aligned_buffer.hpp"
#include "kvcache/detail/checked.hpp"
#include "kvcache/detail/contiguous_cache_base.hpp"
#include "kvcache/detail/format.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/error.hpp"

namespace kvcache {

/// The chunks of one (layer, row, kv head) of a ring: at most two, oldest positions first.
template <class K, class V>
struct RingChunks {
    std::array<KVChunk<K, V>, 2> parts{};
    std::size_t count = 0;
    const KVChunk<K, V>* begin() const { return parts.data(); }
    const KVChunk<K, V>* end() const { return parts.data() + count; }
};

template <StorageElement K = float, StorageElement V = K>
class SlidingWindowCache {
public:
    using key_element_type = K;
    using value_element_type = V;

    /// `window` positions per (layer, row) are what a query attends to (W >= 1); `max_step` is the most tokens
    /// one append may add (1 for token-by-token decoding; a prefill chunk size otherwise). ConfigError for 0
    /// layers, batch, window or max_step, or a head size that is not whole blocks of K and V.
    SlidingWindowCache(std::vector<LayerShape> layers, std::size_t batch, std::size_t window, std::size_t max_step = 1)
        : layers_(std::move(layers)), batch_(batch), window_(window), max_step_(max_step) {
        if (layers_.empty() || batch_ == 0) {
            throw ConfigError(fmt::format("SlidingWindowCache: {} layers and batch {}; both must be at least 1",
                                          layers_.size(), batch_));
        }
        if (window_ == 0) throw ConfigError("SlidingWindowCache: a window of 0 positions; it must be at least 1");
        if (max_step_ == 0) throw ConfigError("SlidingWindowCache: max_step 0; a step appends at least 1 token");
        slots_ = detail::checked_add(window_, max_step_ - 1, "SlidingWindowCache: slots");
        std::size_t key_units = 0, value_units = 0;
        for (std::size_t l = 0; l < layers_.size(); ++l) {
            const LayerShape& s = layers_[l];
            if (s.kv_heads == 0 || s.head_dim == 0) {
                throw ConfigError(fmt::format("SlidingWindowCache layer {}: {} kv heads of size {}", l, s.kv_heads,
                                              s.head_dim));
            }
            detail::check_head_dim_fits<K, V>("SlidingWindowCache", l, s.head_dim);
            key_offset_.push_back(key_units);
            value_offset_.push_back(value_units);
            key_units += detail::checked_product("SlidingWindowCache: key storage", batch_, s.kv_heads, slots_,
                                                 storage_units<K>(s.head_dim));
            value_units += detail::checked_product("SlidingWindowCache: value storage", batch_, s.kv_heads, slots_,
                                                   storage_units<V>(s.head_dim));
        }
        keys_ = detail::AlignedBuffer<K>(key_units);
        values_ = detail::AlignedBuffer<V>(value_units);
        lengths_.assign(layers_.size() * batch_, 0);
    }
    SlidingWindowCache(const CacheShape& shape, std::size_t batch, std::size_t window, std::size_t max_step = 1)
        : SlidingWindowCache(shape.per_layer(), batch, window, max_step) {}

    std::size_t num_layers() const { return layers_.size(); }
    std::size_t batch_size() const { return batch_; }
    std::size_t num_kv_heads(std::size_t layer) const { return layers_.at(layer).kv_heads; }
    std::size_t head_dim(std::size_t layer) const { return layers_.at(layer).head_dim; }
    /// Positions a query may attend to: the W of "sees keys in (p - W, p]".
    std::size_t window() const { return window_; }
    /// The most tokens one append may add.
    std::size_t max_step() const { return max_step_; }
    /// Ring slots per (layer, row, kv head): window + max_step - 1.
    std::size_t slots() const { return slots_; }
    /// Every position ever appended to (layer, row) — the position of its next token, not what it holds.
    std::size_t seq_len(std::size_t layer, std::size_t row) const { return lengths_[index(layer, row)]; }
    /// The oldest position (layer, row) still holds; positions [first_position, seq_len) are readable.
    std::size_t first_position(std::size_t layer, std::size_t row) const {
        const std::size_t n = seq_len(layer, row);
        return n > slots_ ? n - slots_ : 0;
    }
    /// Bytes of keys and values allocated at construction: what the cache holds whatever the sequence length.
    std::size_t bytes_allocated() const { return keys_.bytes() + values_.bytes(); }

    /// The held positions of (layer, row, kv head), oldest first, with their absolute positions.
    RingChunks<K, V> chunks(std::size_t layer, std::size_t row, std::size_t head) const {
        detail::check_index("kv head", head, num_kv_heads(layer));
        const std::size_t n = seq_len(layer, row), first = first_position(layer, row);
        const K* k = keys_.data() + key_offset_[layer] + (row * num_kv_heads(layer) + head) * slots_ * key_units(layer);
        const V* v = values_.data() + value_offset_[layer] +
                     (row * num_kv_heads(layer) + head) * slots_ * value_units(layer);
        RingChunks<K, V> out;
        const std::size_t slot = first % slots_, held = n - first;
        const std::size_t run = std::min(held, slots_ - slot);  // up to the end of the ring
        if (run > 0) {
            out.parts[out.count++] =
                KVChunk<K, V>{k + slot * key_units(layer), v + slot * value_units(layer), first, run, 0};
        }
        if (held > run) out.parts[out.count++] = KVChunk<K, V>{k, v, first + run, held - run, 0};
        return out;
    }

    /// Appends n_tokens positions to (layer, row), each [kv_heads * head_dim] floats, converted to K and V; the
    /// positions max_step older than the newest are overwritten. CapacityError when n_tokens > max_step (its
    /// first queries would need keys the ring cannot hold), ShapeError for spans of the wrong size.
    void append(std::size_t layer, std::size_t row, std::span<const float> keys, std::span<const float> values,
                std::size_t n_tokens) {
        detail::check_index("layer", layer, num_layers());
        detail::check_index("batch row", row, batch_);
        if (n_tokens > max_step_) {
            throw CapacityError(fmt::format("SlidingWindowCache: {} tokens in one append; this cache takes at most "
                                            "max_step = {} (window {}, {} slots)",
                                            n_tokens, max_step_, window_, slots_));
        }
        const std::size_t heads = num_kv_heads(layer), dim = head_dim(layer);
        detail::check_size("SlidingWindowCache keys", keys.size(), n_tokens * heads * dim);
        detail::check_size("SlidingWindowCache values", values.size(), n_tokens * heads * dim);
        std::size_t& n = lengths_[index(layer, row)];
        for (std::size_t t = 0; t < n_tokens; ++t) {
            const std::size_t slot = (n + t) % slots_;
            for (std::size_t h = 0; h < heads; ++h) {
                const std::size_t ring = row * heads + h;
                K* k = keys_.data() + key_offset_[layer] + (ring * slots_ + slot) * key_units(layer);
                V* v = values_.data() + value_offset_[layer] + (ring * slots_ + slot) * value_units(layer);
                convert_from_float(keys.data() + (t * heads + h) * dim, k, dim);
                convert_from_float(values.data() + (t * heads + h) * dim, v, dim);
            }
        }
        n += n_tokens;
    }

    /// Forgets every position of every row (the memory stays allocated).
    void clear() { std::fill(lengths_.begin(), lengths_.end(), std::size_t{0}); }

private:
    std::size_t index(std::size_t layer, std::size_t row) const {
        detail::check_index("layer", layer, layers_.size());
        detail::check_index("batch row", row, batch_);
        return layer * batch_ + row;
    }
    std::size_t key_units(std::size_t layer) const { return storage_units<K>(layers_[layer].head_dim); }
    std::size_t value_units(std::size_t layer) const { return storage_units<V>(layers_[layer].head_dim); }

    std::vector<LayerShape> layers_;
    std::size_t batch_, window_, max_step_, slots_ = 0;
    std::vector<std::size_t> key_offset_, value_offset_;  // per layer, in storage objects
    detail::AlignedBuffer<K> keys_;
    detail::AlignedBuffer<V> values_;
    std::vector<std::size_t> lengths_;  // [layer][row]: positions ever appended
};

}  // namespace kvcache
