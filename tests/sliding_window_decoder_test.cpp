// A model with sliding-window attention (the mistral fixture: sliding_window 4 in its GGUF metadata) decoded over
// a SlidingWindowCache gives bit for bit the logits of the same model over a full cache, over 10x the window, in
// steps of 1 to max_step tokens, with the cache's memory fixed; the decoder refuses a ring that does not fit the
// model (no window, a smaller window) or a step longer than max_step, before touching the cache.
#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "kvcache/cache/sliding_window_cache.hpp"
#include "kvcache/error.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/gguf.hpp"

using namespace kvcache;

namespace {

Decoder load_fixture(const std::string& name) {
    const auto file = gguf::File::open(std::filesystem::path(KVCACHE_FIXTURES_DIR) / "decoder" / name);
    return Decoder(DecoderWeights::from_gguf(file), 1);
}

SlidingWindowCache<float> ring_for(const Decoder& d, std::size_t window, std::size_t max_step) {
    const DecoderConfig& c = d.config();
    return SlidingWindowCache<float>(CacheShape{c.n_layers, c.n_kv_heads, c.head_dim}, 1, window, max_step);
}

}  // namespace

TEST_CASE("sliding-window model: a ring of the window gives the full cache's logits bit for bit", "[sliding_window]") {
    Decoder d = load_fixture("mistral_tiny.gguf");
    const DecoderConfig& c = d.config();
    REQUIRE(c.sliding_window == 4);  // read from mistral.attention.sliding_window
    constexpr std::size_t step = 3, N = 40;  // 10x the window
    auto ring = ring_for(d, c.sliding_window, step);
    auto full = d.make_cache(N);
    const std::size_t allocated = ring.bytes_allocated();
    std::vector<std::int32_t> tokens(N);
    for (std::size_t i = 0; i < N; ++i) tokens[i] = static_cast<std::int32_t>((i * 7 + 3) % c.vocab_size);
    std::size_t at = 0, mismatches = 0;
    for (std::size_t n = 1; at < N; n = n % step + 1) {
        n = std::min(n, N - at);
        const std::span<const std::int32_t> chunk(tokens.data() + at, n);
        std::vector<float> a(n * c.vocab_size), b(a.size());  // every token's logits
        d.forward(chunk, ring, 0, a);
        d.forward(chunk, full, 0, b);
        mismatches += std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) != 0;
        at += n;
    }
    CHECK(mismatches == 0);
    CHECK(ring.seq_len(0, 0) == N);
    CHECK(ring.first_position(0, 0) == N - ring.slots());
    CHECK(ring.bytes_allocated() == allocated);
    CHECK(allocated == c.n_layers * c.n_kv_heads * ring.slots() * c.head_dim * 2 * sizeof(float));
    // the ring is what makes the difference: the window really drops the past (a full-attention model differs)
    DecoderWeights no_window = DecoderWeights::from_gguf(
        gguf::File::open(std::filesystem::path(KVCACHE_FIXTURES_DIR) / "decoder" / "mistral_tiny.gguf"));
    no_window.config.sliding_window = 0;
    Decoder unwindowed(std::move(no_window), 1);
    auto unwindowed_cache = unwindowed.make_cache(N);
    std::vector<float> all(N * c.vocab_size), ours(N * c.vocab_size);
    unwindowed.forward(tokens, unwindowed_cache, 0, all);
    auto full_again = d.make_cache(N);
    d.forward(tokens, full_again, 0, ours);
    CHECK(std::memcmp(all.data(), ours.data(), all.size() * sizeof(float)) != 0);
}

TEST_CASE("sliding-window model: the decoder refuses a ring that does not fit, before touching it", "[sliding_window]") {
    Decoder mistral = load_fixture("mistral_tiny.gguf");
    const std::vector<std::int32_t> tokens{1, 2, 3};
    std::vector<float> logits(mistral.config().vocab_size);
    auto narrow = ring_for(mistral, 3, 4);  // the model attends over 4
    CHECK_THROWS_WITH(mistral.forward(tokens, narrow, 0, logits),
                      Catch::Contains("window 3") && Catch::Contains("sliding_window is 4"));
    auto short_steps = ring_for(mistral, 4, 2);
    CHECK_THROWS_AS(mistral.forward(tokens, short_steps, 0, logits), CapacityError);
    CHECK(narrow.seq_len(0, 0) + short_steps.seq_len(0, 0) == 0);
    auto wider = ring_for(mistral, 6, 3);  // a ring wider than the model's window is fine
    CHECK_NOTHROW(mistral.forward(tokens, wider, 0, logits));

    Decoder qwen = load_fixture("qwen2_tiny.gguf");  // full attention: no ring holds what it reads
    REQUIRE(qwen.config().sliding_window == 0);
    auto ring = ring_for(qwen, 8, 4);
    std::vector<float> qwen_logits(qwen.config().vocab_size);
    CHECK_THROWS_WITH(qwen.forward(tokens, ring, 0, qwen_logits), Catch::Contains("sliding_window is 0"));
    CHECK(ring.seq_len(0, 0) == 0);
}
