// AttentionOptions and the checks both attention implementations make before they read a cache.
#pragma once

#include <cmath>
#include <cstddef>
#include <span>

#include <fmt/format.h>

#include "kvcache/cache/concept.hpp"
#include "kvcache/detail/format.hpp"
#include "kvcache/error.hpp"

namespace kvcache {

/// How attention forms q·k over q8_0 keys.
enum class ScorePrecision {
    f32,   ///< the keys dequantised to float, float multiply-adds (attention_reference's arithmetic, within 1e-5)
    int8,  ///< each query head rounded to int8 per block of 32 (scale max|q| / 127, as llama.cpp's CPU attention
           ///< rounds its queries), integer block dots with the stored codes, one float step per block: faster
           ///< (AVX-512 VNNI) at the cost of the query's rounding. Same bits on every build. Other key types: f32.
};

struct AttentionOptions {
    /// Multiplies q·k; 0 means 1/sqrt(head_dim).
    float scale = 0.0f;
    /// Causal self-attention: the n_tokens queries are the last n_tokens positions of the row, and the
    /// query at position p sees keys at positions <= p. False (cross-attention): every query sees every key.
    bool causal = true;
    /// Sliding window (causal only): 0 for none, else the query at p sees keys in (p - window, p].
    std::size_t window = 0;
    /// Threads for the fast kernel; 0 means all the hardware offers. The result does not depend on it.
    int threads = 0;
    /// q·k over q8_0 keys (attention() only; attention_reference is always exact).
    ScorePrecision scores = ScorePrecision::f32;
};

namespace detail {

/// The sizes of one attention call, checked against the cache.
struct AttentionShape {
    std::size_t n_tokens;   // queries
    std::size_t q_heads;
    std::size_t kv_heads;
    std::size_t group;      // query heads per kv head
    std::size_t head_dim;
    std::size_t keys;       // positions the row holds
    float scale;

    /// Absolute position of query t (causal), and the visible key range [lo, hi).
    std::size_t query_position(std::size_t t) const { return keys - n_tokens + t; }
    void visible(const AttentionOptions& opts, std::size_t t, std::size_t& lo, std::size_t& hi) const {
        if (!opts.causal) {
            lo = 0;
            hi = keys;
            return;
        }
        const std::size_t p = query_position(t);
        hi = p + 1;
        lo = (opts.window && p + 1 > opts.window) ? p + 1 - opts.window : 0;
    }
};

template <KVCacheReadable C>
AttentionShape check_attention(const C& cache, std::size_t layer, std::size_t row, std::span<const float> q,
                               std::size_t n_tokens, std::size_t n_q_heads, std::span<const float> out,
                               const AttentionOptions& opts) {
    detail::check_index("layer", layer, cache.num_layers());
    detail::check_index("batch row", row, cache.batch_size());
    AttentionShape s{};
    s.n_tokens = n_tokens;
    s.q_heads = n_q_heads;
    s.kv_heads = cache.num_kv_heads(layer);
    s.head_dim = cache.head_dim(layer);
    s.keys = cache.seq_len(layer, row);
    if (n_q_heads == 0 || n_q_heads % s.kv_heads != 0) {
        throw ConfigError(fmt::format("attention: {} query heads is not a positive multiple of {} kv heads",
                                      n_q_heads, s.kv_heads));
    }
    s.group = n_q_heads / s.kv_heads;
    detail::check_size("attention queries", q.size(), n_tokens * n_q_heads * s.head_dim);
    detail::check_size("attention output", out.size(), n_tokens * n_q_heads * s.head_dim);
    if (opts.causal && n_tokens > s.keys) {
        throw ShapeError(fmt::format("causal attention: {} queries but layer {} row {} holds only {} positions "
                                     "(append the new tokens' K/V before attending)",
                                     n_tokens, layer, row, s.keys));
    }
    if (n_tokens > 0 && s.keys == 0) {
        throw ShapeError(fmt::format("attention: layer {} row {} holds no keys", layer, row));
    }
    if (!opts.causal && opts.window != 0) {
        throw ConfigError("attention: a sliding window needs causal attention");
    }
    if (!(opts.scale >= 0.0f) || !std::isfinite(opts.scale)) {
        throw ConfigError(fmt::format("attention: scale must be finite and >= 0, got {}", opts.scale));
    }
    s.scale = opts.scale > 0.0f ? opts.scale : 1.0f / std::sqrt(static_cast<float>(s.head_dim));
    if constexpr (WindowedKVCache<C>) {
        // The first query sees the most of the past; positions the cache no longer holds would silently drop out.
        std::size_t lo = 0, hi = 0;
        if (n_tokens > 0) s.visible(opts, 0, lo, hi);
        const std::size_t first = cache.first_position(layer, row);
        if (n_tokens > 0 && lo < first) {
            throw ConfigError(fmt::format("attention: layer {} row {} holds positions [{}, {}) only (a window of {}); "
                                          "a query at {} with window {} needs position {}: attend with "
                                          "AttentionOptions::window <= {} and at most {} queries per step",
                                          layer, row, first, s.keys, cache.window(), s.query_position(0),
                                          opts.window, lo, cache.window(), cache.max_step()));
        }
    }
    return s;
}

}  // namespace detail
}  // namespace kvcache
