// perplexity(): chunked mode against a direct computation, quantised caches close to float, streaming mode
// through a sink + window cache, and its typed errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <limits>
#include <vector>

#include "kvcache/model/decoder.hpp"
#include "kvcache/model/perplexity.hpp"
#include "decoder_test_support.hpp"

using namespace kvcache;

namespace {

Decoder& model() {
    static Decoder d = test::small_random_decoder(2, 31);
    return d;
}

std::vector<std::int32_t> text(std::size_t n) {
    std::vector<std::int32_t> t(n);
    std::uint32_t x = 5;
    for (auto& id : t) {
        x = x * 1103515245u + 12345u;
        id = static_cast<std::int32_t>((x >> 10) % 97);  // a small alphabet: a learnable-looking stream
    }
    return t;
}

}  // namespace

TEST_CASE("chunked perplexity equals the mean NLL of each chunk's second half computed directly", "[perplexity]") {
    Decoder& m = model();
    const std::size_t vocab = m.config().vocab_size, ctx = 48;
    const auto tokens = text(3 * ctx + 10);  // three chunks; the tail is not used
    PerplexityOptions o;
    o.context = ctx;
    o.batch = 20;  // pieces that do not divide the chunk
    std::size_t progress_calls = 0;
    o.on_progress = [&](std::size_t, std::size_t, double) { ++progress_calls; };
    const PerplexityResult r = perplexity(m, tokens, o);

    double nll = 0.0;
    std::size_t scored = 0;
    for (std::size_t c = 0; c < 3; ++c) {
        auto cache = m.make_cache(ctx);
        std::vector<float> logits(ctx * vocab);
        m.forward(std::span(tokens).subspan(c * ctx, ctx), cache, 0, logits);
        for (std::size_t p = ctx / 2; p + 1 < ctx; ++p) {
            const float* l = logits.data() + p * vocab;
            double mx = l[0], sum = 0.0;
            for (std::size_t i = 0; i < vocab; ++i) mx = std::max(mx, double(l[i]));
            for (std::size_t i = 0; i < vocab; ++i) sum += std::exp(double(l[i]) - mx);
            nll += std::log(sum) - (double(l[tokens[c * ctx + p + 1]]) - mx);
            ++scored;
        }
    }
    CHECK(r.chunks == 3);
    CHECK(r.scored == scored);
    CHECK(progress_calls == 3);
    CHECK(r.mean_nll == Approx(nll / double(scored)).epsilon(1e-6));
    CHECK(r.perplexity == Approx(std::exp(nll / double(scored))).epsilon(1e-6));
    CHECK(r.cache_bytes == m.cache_bytes(ctx));

    o.max_chunks = 2;
    CHECK(perplexity(m, tokens, o).chunks == 2);
}

TEST_CASE("quantised caches give a perplexity close to float's, and smaller caches", "[perplexity][quantised]") {
    Decoder& m = model();
    const auto tokens = text(2 * 64);
    PerplexityOptions o;
    o.context = 64;
    const auto f32 = perplexity(m, tokens, o);
    o.cache.keys = o.cache.values = CacheElement::Q8_0;
    const auto q8 = perplexity(m, tokens, o);
    o.cache.keys = o.cache.values = CacheElement::Q4_0;
    const auto q4 = perplexity(m, tokens, o);
    o.cache.keys = CacheElement::F16;
    o.cache.values = CacheElement::Q8_0;
    const auto mixed = perplexity(m, tokens, o);
    CHECK(q8.perplexity != f32.perplexity);
    CHECK(std::fabs(q8.perplexity / f32.perplexity - 1.0) < 0.01);
    CHECK(std::fabs(q4.perplexity / f32.perplexity - 1.0) < 0.1);
    CHECK(std::fabs(mixed.perplexity / f32.perplexity - 1.0) < 0.01);
    CHECK(q8.cache_bytes * 128 == f32.cache_bytes * 34);  // 34 bytes per 32 values against 4 per value
    CHECK(q4.cache_bytes * 128 == f32.cache_bytes * 18);
}

TEST_CASE("streaming perplexity runs a long text through a sink + window cache of constant size", "[perplexity][sinks]") {
    Decoder& m = model();
    const auto tokens = text(4 * 32 + 1);
    PerplexityOptions o;
    o.context = 16;
    o.cache.sinks = 4;
    o.cache.window = 28;
    o.cache.evict_block = 8;
    const auto sinks = perplexity(m, tokens, o);
    CHECK(sinks.scored == tokens.size() - 1 - 16);
    CHECK(sinks.cache_bytes == m.cache_bytes(32));
    CHECK(std::isfinite(sinks.perplexity));
    o.cache.sinks = 0;
    o.cache.window = 32;
    const auto window = perplexity(m, tokens, o);
    CHECK(window.scored == sinks.scored);
    CHECK(window.perplexity != sinks.perplexity);
}

TEST_CASE("perplexity misuse is a typed error", "[perplexity]") {
    Decoder& m = model();
    const auto tokens = text(40);
    PerplexityOptions o;
    o.context = 64;
    CHECK_THROWS_AS(perplexity(m, tokens, o), ConfigError);  // shorter than one chunk
    o.context = 1;
    CHECK_THROWS_AS(perplexity(m, tokens, o), ConfigError);
    o.context = 16;
    o.cache.context_shift = true;
    CHECK_THROWS_AS(perplexity(m, tokens, o), ConfigError);
    o.cache.context_shift = false;
    o.cache.keys = CacheElement::Q4_0;
    o.cache.values = CacheElement::F32;  // an unsupported mix
    CHECK_THROWS_AS(perplexity(m, tokens, o), ConfigError);
    o.cache.values = CacheElement::Q4_0;
    o.batch = 0;
    CHECK_THROWS_AS(perplexity(m, tokens, o), ConfigError);
}

TEST_CASE("a streaming context of 2^64 - 1 is refused, not a run that scores nothing", "[perplexity][issue9]") {
    Decoder& m = model();
    const auto tokens = text(40);
    PerplexityOptions o;
    o.cache.window = 16;
    o.context = std::numeric_limits<std::size_t>::max();  // context + 1 wrapped to 0: perplexity 1 from 0 scores
    CHECK_THROWS_AS(perplexity(m, tokens, o), ConfigError);
    o.context = 8;
    o.cache.sinks = std::numeric_limits<std::size_t>::max();  // sinks + window wrapped
    CHECK_THROWS_AS(perplexity(m, tokens, o), ConfigError);
}
