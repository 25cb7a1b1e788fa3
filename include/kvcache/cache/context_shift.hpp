// Context shift and the sink + window cache: how a fixed-capacity cache keeps generating when it is full.
//
// A context shift (llama.cpp's, with --keep) keeps the first n_keep positions of a row, drops the next n_discard
// and moves the rest down by n_discard. The moved keys were rotated (RoPE) for their old positions, so they are
// re-rotated by -n_discard: afterwards the row holds exactly what a cold run over the shifted token sequence
// would have computed at positions 0, 1, 2, ... (up to float rounding), and the next token simply goes at the
// row's new length — positions stay implicit. The cache does not know the model's RoPE, so the caller passes the
// re-rotation (the reference model's is rope_shift_keys in model/context_shift.hpp).
//
// SinkWindowCache (StreamingLLM's attention sinks) is a cache of S + W positions that, when full, drops the
// oldest `evict_block` positions after the S sinks the same way — memory stays bounded by S + W however long
// the generation runs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "kvcache/cache/layer_shape.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/error.hpp"

namespace kvcache {

/// A cache a context shift can run on: positions can be dropped and keys rewritten (KVCache, MultiLayerKVCache).
template <class C>
concept ShiftableCache = requires(C& cache, std::size_t row, std::size_t n,
                                  void (*f)(std::size_t, std::span<float>, std::size_t)) {
    cache.discard_positions(row, n, n);
    cache.transform_keys(row, n, n, f);
    { cache.capacity() } -> std::convertible_to<std::size_t>;
};

/// Keeps positions [0, n_keep) of `row`, drops [n_keep, n_keep + n_discard), moves the rest down and calls
/// rotate(layer, keys, n, delta) on the moved keys — [n][kv_heads][head_dim] floats, decoded from the storage
/// type and re-encoded after — with delta = -n_discard, the position change to apply to their rotary
/// embedding. ConfigError (nothing changed) unless 1 <= n_discard and n_keep + n_discard <= the row's length
/// in every layer, and n_keep < capacity (keeping everything frees nothing).
template <ShiftableCache C, class RotateKeys>
void context_shift(C& cache, std::size_t row, std::size_t n_keep, std::size_t n_discard, RotateKeys&& rotate) {
    if (n_keep >= cache.capacity()) {
        throw ConfigError(fmt::format("context shift: n_keep {} must be below the cache's capacity {}", n_keep,
                                      static_cast<std::size_t>(cache.capacity())));
    }
    if (n_discard == 0) throw ConfigError(fmt::format("context shift: n_discard must be >= 1 (n_keep {})", n_keep));
    cache.discard_positions(row, n_keep, n_discard);  // checks the lengths first; throws before any change
    const std::size_t length = cache.seq_len(0, row);
    const auto delta = -static_cast<std::ptrdiff_t>(n_discard);
    if (length > n_keep) {
        cache.transform_keys(row, n_keep, length, [&](std::size_t layer, std::span<float> keys, std::size_t n) {
            rotate(layer, keys, n, delta);
        });
    }
}

/// Sizes of a SinkWindowCache.
struct SinkWindowOptions {
    std::size_t sinks = 4;         ///< S: the first positions, always kept (StreamingLLM's attention sinks)
    std::size_t window = 1020;     ///< W: the most recent positions kept after the sinks
    std::size_t evict_block = 32;  ///< positions dropped at once when full (one re-rotation per block, not per token)
};

/// A cache of capacity S + W for every row that keeps the first S positions and the most recent ones: when an
/// append would not fit, make_room() drops the oldest evict_block positions after the sinks (a context shift).
/// Its memory is allocated once, S + W positions. ConfigError for a window smaller than one evict block (it
/// could not make room) or an evict block of 0.
template <StorageElement K = float, StorageElement V = K>
class SinkWindowCache : public MultiLayerKVCache<K, V> {
public:
    SinkWindowCache(std::vector<LayerShape> layers, std::size_t batch, SinkWindowOptions options)
        : MultiLayerKVCache<K, V>(std::move(layers), batch, checked_capacity(options)), options_(options) {}

    const SinkWindowOptions& options() const { return options_; }

    /// Makes room for n_tokens more positions in `row` by dropping the oldest window positions, evict_block at a
    /// time, re-rotating the moved keys with rotate (see context_shift). Returns the positions dropped.
    /// CapacityError if n_tokens alone exceed the window (feed a long prompt in pieces).
    template <class RotateKeys>
    std::size_t make_room(std::size_t row, std::size_t n_tokens, RotateKeys&& rotate) {
        if (n_tokens > options_.window) {
            throw CapacityError(fmt::format("SinkWindowCache: {} tokens at once exceed the window of {}; feed them in "
                                            "pieces of at most the window",
                                            n_tokens, options_.window));
        }
        const std::size_t length = this->seq_len(0, row);
        if (length + n_tokens <= this->capacity()) return 0;
        const std::size_t over = length + n_tokens - this->capacity();
        const std::size_t drop = (over + options_.evict_block - 1) / options_.evict_block * options_.evict_block;
        const std::size_t n_discard = std::min(drop, length - options_.sinks);
        context_shift(*this, row, options_.sinks, n_discard, std::forward<RotateKeys>(rotate));
        return n_discard;
    }

private:
    static std::size_t checked_capacity(const SinkWindowOptions& o) {
        if (o.evict_block == 0 || o.window < o.evict_block) {
            throw ConfigError(fmt::format("SinkWindowCache: the window ({}) must hold at least one evict block ({} "
                                          "positions, >= 1)",
                                          o.window, o.evict_block));
        }
        return o.sinks + o.window;
    }

    SinkWindowOptions options_;
};

}  // namespace kvcache
