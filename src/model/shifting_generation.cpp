// generate_with_cache_options: the generation loop of generate_with_step over a cache of the chosen element
// types, making room when it is full by a context shift or by dropping the oldest window positions.
#include "kvcache/model/shifting_generation.hpp"

#include <algorithm>
#include <optional>

#include <fmt/format.h>

#include "kvcache/cache/context_shift.hpp"
#include "kvcache/detail/checked.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/model/context_shift.hpp"

namespace kvcache {

namespace {

std::size_t capacity_for(std::size_t prompt, const GenerateOptions& o) {
    const CacheOptions& c = o.cache;
    if (c.window > 0) return detail::checked_add(c.sinks, c.window, "generate: sinks + window");
    const std::size_t capacity =
        o.cache_capacity ? *o.cache_capacity
                         : detail::checked_add(prompt, o.max_new_tokens, "generate: prompt + max_new_tokens");
    if (capacity == 0) throw ConfigError("generate: cache capacity 0");
    // Compared without forming prompt + max_new_tokens, which may not fit in 64 bits (with a context shift a
    // huge max_new_tokens is legitimate: "go on until the end of the text").
    if (!c.context_shift && (capacity < prompt || capacity - prompt < o.max_new_tokens)) {
        throw CapacityError(fmt::format("generate: cache capacity {} is below prompt ({} tokens) + max_new_tokens ({}); "
                                        "a context shift or a window would let generation go on",
                                        capacity, prompt, o.max_new_tokens));
    }
    return capacity;
}

}  // namespace

std::size_t cache_options_bytes(const Decoder& model, std::size_t prompt_tokens, const GenerateOptions& options) {
    const std::size_t capacity = capacity_for(prompt_tokens, options);
    const auto layers = model.cache_layers();
    return with_cache_elements(options.cache.keys, options.cache.values,
                               [&]<class K, class V>(std::type_identity<K>, std::type_identity<V>) {
                                   return MultiLayerKVCache<K, V>::bytes_for(layers, 1, capacity);
                               });
}

GenerationResult generate_with_cache_options(Decoder& model, const Tokenizer& tokenizer,
                                             std::span<const std::int32_t> prompt_tokens,
                                             const GenerateOptions& options) {
    const CacheOptions& co = options.cache;
    const std::size_t capacity = capacity_for(prompt_tokens.size(), options);
    validate(co, capacity);
    return with_cache_elements(co.keys, co.values, [&]<class K, class V>(std::type_identity<K>, std::type_identity<V>) {
        std::optional<MultiLayerKVCache<K, V>> plain;
        std::optional<SinkWindowCache<K, V>> sink;
        if (co.window > 0) {
            sink.emplace(model.cache_layers(), 1, SinkWindowOptions{co.sinks, co.window, co.evict_block});
        } else {
            plain.emplace(model.cache_layers(), 1, capacity);
        }
        // The decoder sees the base type either way: one instantiation of forward per element-type pair.
        MultiLayerKVCache<K, V>& cache = sink ? static_cast<MultiLayerKVCache<K, V>&>(*sink) : *plain;
        std::size_t fed = 0;  // tokens of the sequence already run through the model
        const auto step = [&](std::span<const std::int32_t> sequence, std::span<float> logits) {
            std::span<const std::int32_t> rest = sequence.subspan(fed);
            while (!rest.empty()) {
                std::size_t n = 0;
                if (sink) {
                    n = std::min(rest.size(), co.window);
                    sink->make_room(0, n, RopeShift{&model});
                } else {
                    std::size_t length = cache.seq_len(0, 0);
                    if (length == capacity) {
                        if (!co.context_shift) {
                            throw CapacityError(fmt::format("generate: the cache is full ({} positions)", capacity));
                        }
                        const std::size_t n_discard =
                            co.n_discard ? co.n_discard : std::max<std::size_t>(1, (length - co.n_keep) / 2);
                        shift_context(model, cache, 0, co.n_keep, n_discard);
                        length = cache.seq_len(0, 0);
                    }
                    n = std::min(rest.size(), capacity - length);
                }
                model.forward(rest.first(n), cache, 0, logits,
                              ForwardOptions{.threads = options.threads, .precision = options.precision});
                rest = rest.subspan(n);
                fed += n;
            }
        };
        GenerationResult result = generate_with_step(model, tokenizer, prompt_tokens, options, step);
        result.cache_bytes = cache.bytes_allocated();
        return result;
    });
}

}  // namespace kvcache
