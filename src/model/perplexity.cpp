// perplexity(): chunked (a fresh cache per chunk, second half scored) or streaming (one sink + window cache).
#include "kvcache/model/perplexity.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <vector>

#include <fmt/format.h>

#include "kvcache/cache/context_shift.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/detail/checked.hpp"
#include "kvcache/model/context_shift.hpp"

namespace kvcache {

namespace {

/// -log softmax(logits)[target], in double.
double negative_log_likelihood(std::span<const float> logits, std::int32_t target) {
    const float max = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (float x : logits) sum += std::exp(double(x) - double(max));
    return std::log(sum) - (double(logits[static_cast<std::size_t>(target)]) - double(max));
}

}  // namespace

PerplexityResult perplexity(Decoder& model, std::span<const std::int32_t> tokens, const PerplexityOptions& o) {
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    const std::size_t vocab = model.config().vocab_size;
    if (o.context < 2) throw ConfigError(fmt::format("perplexity: context {} (needs >= 2)", o.context));
    if (o.batch == 0) throw ConfigError("perplexity: batch 0");
    const bool streaming = o.cache.window > 0;
    if (o.cache.context_shift) throw ConfigError("perplexity: a context shift is not a perplexity mode (use a window)");
    // Checked: context + 1 wrapped to 0 for a context of 2^64 - 1, so a streaming run scored nothing and
    // reported a perplexity of exactly 1.
    validate(o.cache, streaming ? detail::checked_add<ConfigError>(o.cache.sinks, o.cache.window, "perplexity: sinks + window")
                                : o.context);
    const std::size_t needed = streaming ? detail::checked_add<ConfigError>(o.context, 1, "perplexity: context + 1")
                                         : o.context;
    if (tokens.size() < needed) {
        throw ConfigError(fmt::format("perplexity: {} tokens of text, fewer than the {} one {} needs", tokens.size(),
                                      needed, streaming ? "streaming run" : "chunk"));
    }
    PerplexityResult result;
    double total_nll = 0.0;
    std::vector<float> logits;
    const auto score = [&](std::span<const float> all, std::size_t first_pos, std::size_t n, std::size_t from) {
        // all: logits of positions first_pos .. first_pos + n - 1; score predictions of positions >= from
        for (std::size_t i = 0; i < n; ++i) {
            const std::size_t p = first_pos + i;
            if (p < from || p + 1 >= tokens.size()) continue;
            total_nll += negative_log_likelihood(all.subspan(i * vocab, vocab), tokens[p + 1]);
            ++result.scored;
        }
    };
    with_cache_elements(o.cache.keys, o.cache.values, [&]<class K, class V>(std::type_identity<K>, std::type_identity<V>) {
        if (!streaming) {
            std::size_t chunks = tokens.size() / o.context;
            if (o.max_chunks) chunks = std::min(chunks, o.max_chunks);
            MultiLayerKVCache<K, V> cache(model.cache_layers(), 1, o.context);
            result.cache_bytes = cache.bytes_allocated();
            for (std::size_t c = 0; c < chunks; ++c) {
                cache.clear();
                const auto chunk = tokens.subspan(c * o.context, o.context);
                for (std::size_t at = 0; at < o.context; at += o.batch) {
                    const std::size_t n = std::min(o.batch, o.context - at);
                    logits.resize(n * vocab);
                    model.forward(chunk.subspan(at, n), cache, 0, logits,
                                  ForwardOptions{.precision = o.precision});
                    // the last token of a chunk predicts a token of the next chunk: not scored (as llama.cpp)
                    for (std::size_t i = 0; i < n; ++i) {
                        const std::size_t p = at + i;
                        if (p < o.context / 2 || p + 1 >= o.context) continue;
                        total_nll += negative_log_likelihood(std::span<const float>(logits).subspan(i * vocab, vocab),
                                                             chunk[p + 1]);
                        ++result.scored;
                    }
                }
                ++result.chunks;
                if (o.on_progress) {
                    o.on_progress((c + 1) * o.context, chunks * o.context, std::exp(total_nll / double(result.scored)));
                }
            }
        } else {
            SinkWindowCache<K, V> cache(model.cache_layers(), 1,
                                        SinkWindowOptions{o.cache.sinks, o.cache.window, o.cache.evict_block});
            result.cache_bytes = cache.bytes_allocated();
            MultiLayerKVCache<K, V>& base = cache;
            const std::size_t piece = std::min(o.batch, o.cache.evict_block);
            for (std::size_t at = 0; at + 1 < tokens.size(); at += piece) {
                const std::size_t n = std::min(piece, tokens.size() - 1 - at);
                cache.make_room(0, n, RopeShift{&model});
                logits.resize(n * vocab);
                model.forward(tokens.subspan(at, n), base, 0, logits,
                              ForwardOptions{.precision = o.precision});
                score(logits, at, n, o.context);
                if (o.on_progress && (at / piece) % 16 == 15) {
                    o.on_progress(at + n, tokens.size() - 1, result.scored ? std::exp(total_nll / double(result.scored)) : 0.0);
                }
            }
        }
        return 0;
    });
    result.mean_nll = result.scored ? total_nll / double(result.scored) : 0.0;
    result.perplexity = std::exp(result.mean_nll);
    result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return result;
}

}  // namespace kvcache
