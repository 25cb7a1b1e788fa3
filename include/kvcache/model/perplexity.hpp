// Perplexity of the reference decoder over a token stream, through a cache of any element types: how much a
// quantised cache, or a cache that drops positions (sinks + window), costs in prediction quality.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>

#include "kvcache/model/cache_options.hpp"
#include "kvcache/model/decoder.hpp"

namespace kvcache {

struct PerplexityOptions {
    /// Chunked mode (llama.cpp's perplexity): the text is cut into chunks of `context` tokens, each run through
    /// a fresh cache of `context` positions, and the predictions of the second half of each chunk are scored
    /// (every scored token sees at least context / 2 tokens before it).
    std::size_t context = 2048;
    /// Element types of keys and values. With cache.window > 0 the mode is streaming instead: the whole text
    /// runs through one SinkWindowCache (cache.sinks + cache.window positions) and every prediction after the
    /// first `context` tokens is scored — `context` then only sets where scoring starts.
    CacheOptions cache;
    /// At most this many chunks (0: all that fit the text).
    std::size_t max_chunks = 0;
    /// Tokens per forward pass (a prefill piece); results do not depend on it beyond float rounding.
    std::size_t batch = 256;
    /// The matmuls' arithmetic (ForwardOptions::precision): measures what int8 costs in prediction quality.
    MatmulPrecision precision = MatmulPrecision::f32;
    /// Called after each chunk (or streaming piece): tokens processed, tokens in all, perplexity so far.
    std::function<void(std::size_t done, std::size_t total, double perplexity)> on_progress;
};

struct PerplexityResult {
    double perplexity = 0;       ///< exp(mean negative log-likelihood)
    double mean_nll = 0;         ///< natural log
    std::size_t scored = 0;      ///< predictions scored
    std::size_t chunks = 0;      ///< chunks run (chunked mode)
    std::size_t cache_bytes = 0; ///< KV cache allocated
    double seconds = 0;
};

/// Runs `tokens` through `model` as PerplexityOptions says. ConfigError for a context below 2, a text shorter
/// than one chunk (or than context + 1 in streaming mode), or bad cache options.
PerplexityResult perplexity(Decoder& model, std::span<const std::int32_t> tokens, const PerplexityOptions& options);

}  // namespace kvcache
