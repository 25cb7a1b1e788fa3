// What the scheduler and batched-decode tests share: a small random decoder, a tokenizer over its vocabulary,
// the "alone" reference (generate_with_cache) a scheduled request must reproduce, and the pool, prefix cache
// and scheduler most scheduler tests start from.
#pragma once

#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/cache/prefix_cache.hpp"

#include "kvcache/model/decoder.hpp"
#include "kvcache/model/generate.hpp"
#include "kvcache/model/scheduler.hpp"
#include "kvcache/model/tokenizer.hpp"

namespace kvcache::test {

/// The random test decoder (6 layers, d_model 512, vocab 1024), one thread: the tests that use it also
/// run under ThreadSanitizer, which must not see OpenMP regions.
inline Decoder& random_decoder() {
    static Decoder d(DecoderWeights::random(DecoderConfig::small_test_model(), 11), 1);
    return d;
}

/// A byte-level vocabulary of the decoder's size whose token i reads "<i>" (token 2, the decoder's EOS, is a
/// control token): decoded text shows which tokens were generated.
inline const Tokenizer& numbered_tokenizer() {
    static const Tokenizer t = [] {
        TokenizerSpec spec;
        spec.model = "gpt2";
        spec.pre = "default";
        for (std::size_t i = 0; i < DecoderConfig::small_test_model().vocab_size; ++i) {
            std::string text = "<";
            text += std::to_string(i);
            text += '>';
            spec.tokens.push_back(std::move(text));
        }
        spec.token_types.assign(spec.tokens.size(), static_cast<std::int32_t>(TokenType::Normal));
        spec.token_types[2] = static_cast<std::int32_t>(TokenType::Control);
        spec.bos_id = 1;
        spec.eos_id = 2;
        return Tokenizer(spec);
    }();
    return t;
}

/// A prompt of n tokens in [3, vocab), different for each seed.
inline std::vector<std::int32_t> numbered_prompt(std::size_t n, std::uint32_t seed) {
    std::vector<std::int32_t> p(n);
    std::uint32_t x = seed * 2654435761u + 12345u;
    for (auto& t : p) {
        x = x * 1664525u + 1013904223u;
        t = static_cast<std::int32_t>(3 + (x >> 8) % 1021);
    }
    return p;
}

/// generate_with_cache's options for what a request asks.
inline GenerateOptions alone_options(const RequestOptions& o) {
    GenerateOptions g;
    g.max_new_tokens = o.max_new_tokens;
    g.sampling = o.sampling;
    g.stop_at_eos = o.stop_at_eos;
    return g;
}

/// What the request would give alone: generate_with_cache over a fresh cache.
inline GenerationResult alone(const std::vector<std::int32_t>& prompt, const RequestOptions& o) {
    return generate_with_cache(random_decoder(), numbered_tokenizer(), prompt, alone_options(o));
}

/// max_new tokens, greedy (temperature 0) or sampled from the top 40 with a seed; EOS does not stop.
inline RequestOptions options(std::size_t max_new, float temperature, std::uint64_t seed) {
    RequestOptions o;
    o.max_new_tokens = max_new;
    o.sampling.temperature = temperature;
    o.sampling.top_k = temperature > 0 ? 40 : 0;
    o.sampling.seed = seed;
    o.stop_at_eos = false;
    return o;
}

/// The random decoder's cache in a pool of `blocks` blocks, a prefix cache with a budget of `prefix_blocks`
/// blocks (none if 0), and a scheduler over both with `options` (one thread by default: see random_decoder).
/// Tests take it apart with `auto& [pool, prefixes, s] = rig;`.
template <StorageElement T = float>
struct SchedulerRig {
    PagedKVPool<T> pool;
    std::unique_ptr<PrefixCache<T>> prefixes;  // null without a prefix cache
    BasicScheduler<T> scheduler;

    explicit SchedulerRig(std::size_t blocks, std::size_t prefix_blocks = 0,
                          const SchedulerOptions& options = SchedulerOptions{.threads = 1})
        : pool(random_decoder().cache_layers(), blocks),
          prefixes(prefix_blocks == 0 ? nullptr
                                      : std::make_unique<PrefixCache<T>>(pool, prefix_blocks * pool.block_bytes())),
          scheduler(random_decoder(), numbered_tokenizer(), pool, prefixes.get(), options) {}
};

/// Steps the scheduler until it has nothing left to do (a bounded loop: a scheduler that never ends fails).
template <StorageElement T>
void run_to_end(BasicScheduler<T>& s) {
    for (int i = 0; i < 10000 && s.step(); ++i) {
    }
    REQUIRE_FALSE(s.step());
}

}  // namespace kvcache::test
