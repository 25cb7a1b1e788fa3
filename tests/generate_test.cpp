// Tests of generation on the real model: with the cache == without it, stopping, callbacks, errors.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <limits>
#include <string_view>
#include <vector>

#include "kvcache/error.hpp"
#include "kvcache/model/chat.hpp"
#include "kvcache/model/generate.hpp"
#include "kvcache/model/gguf.hpp"
#include "kvcache/model/tokenizer.hpp"

using namespace kvcache;

namespace {

struct Model {
    gguf::File file;
    Tokenizer tokenizer;
    Decoder decoder;
};

Model& model() {
    static Model m = [] {
        std::filesystem::path path = std::getenv("KVCACHE_MODEL")
                                         ? std::filesystem::path(std::getenv("KVCACHE_MODEL"))
                                         : std::filesystem::path(KVCACHE_SOURCE_DIR) / "models" /
                                               "SmolLM2-135M-Instruct.Q4_1.gguf";
        INFO("model file " << path << " (run scripts/fetch-model.sh)");
        REQUIRE(std::filesystem::exists(path));
        auto file = gguf::File::open(path);
        auto tok = Tokenizer::from_gguf(file);
        Decoder dec(DecoderWeights::from_gguf(file), 2);
        return Model{std::move(file), std::move(tok), std::move(dec)};
    }();
    return m;
}

std::vector<std::int32_t> chat_prompt(const std::string& user) {
    const std::vector<ChatMessage> messages{{"user", user}};
    return model().tokenizer.encode(apply_chat_template(model().tokenizer.chat_template(), messages, {.add_generation_prompt = true}), {.add_special = true, .parse_special = true});
}

}  // namespace

// Without the cache every step recomputes the whole sequence (O(n^2)), so these compare on short raw prompts:
// 48 steps over a 6-token prompt cost ~1400 token-forwards instead of ~5000 for a chat-templated prompt.
static std::vector<std::int32_t> raw_prompt(const std::string& text) { return model().tokenizer.encode(text, {.add_special = true}); }

TEST_CASE("greedy generation with the cache equals generation without it (48 tokens)") {
    GenerateOptions o;
    o.max_new_tokens = 48;
    o.stop_at_eos = false;  // always run all 48 steps
    const auto prompt = raw_prompt("The sea is");
    auto with = generate_with_cache(model().decoder, model().tokenizer, prompt, o);
    auto without = generate_without_cache(model().decoder, model().tokenizer, prompt, o);
    REQUIRE(with.tokens.size() == 48);
    CHECK(with.tokens == without.tokens);
    CHECK(with.text == without.text);
    CHECK(!with.text.empty());
    CHECK(with.cache_bytes == generation_cache_bytes(model().decoder, prompt.size(), o));
    CHECK(without.cache_bytes == 0);
    CHECK(with.prompt_seconds > 0);
    CHECK(with.tokens_per_second > 0);
    CHECK(with.seconds_per_token == Approx(1.0 / with.tokens_per_second));
    CHECK(with.total_seconds >= with.prompt_seconds);
}

TEST_CASE("seeded sampling gives the same tokens with and without the cache, and differs by seed") {
    GenerateOptions o;
    o.max_new_tokens = 16;
    o.stop_at_eos = false;
    o.sampling = SamplingOptions{.temperature = 0.9f, .top_k = 40, .top_p = 0.95f, .seed = 17};
    const auto prompt = raw_prompt("Once upon a time");
    auto a = generate_with_cache(model().decoder, model().tokenizer, prompt, o);
    auto b = generate_without_cache(model().decoder, model().tokenizer, prompt, o);
    CHECK(a.tokens == b.tokens);
    o.sampling.seed = 18;
    auto c = generate_with_cache(model().decoder, model().tokenizer, prompt, o);
    CHECK(c.tokens != a.tokens);
}

TEST_CASE("generation stops at the end-of-turn token, and the stop token is not in the text") {
    GenerateOptions o;
    o.max_new_tokens = 40;
    auto r = generate_with_cache(model().decoder, model().tokenizer, chat_prompt("What is the capital of France?"), o);
    REQUIRE(!r.tokens.empty());
    CHECK(model().tokenizer.is_end_of_generation(r.tokens.back()));
    CHECK(r.tokens.size() < 40);
    CHECK(r.text == "The capital of France is Paris.");  // as the numpy reference generates it
}

TEST_CASE("the callback streams the text and can stop generation") {
    GenerateOptions o;
    o.max_new_tokens = 30;
    o.stop_at_eos = false;
    std::string streamed;
    int calls = 0;
    o.on_token = [&](std::int32_t, std::string_view piece) {
        streamed += piece;
        return ++calls < 5;
    };
    auto r = generate_with_cache(model().decoder, model().tokenizer, chat_prompt("Count to ten."), o);
    CHECK(r.tokens.size() == 5);
    CHECK(streamed == r.text);
}

TEST_CASE("generation errors") {
    Decoder& d = model().decoder;
    const Tokenizer& t = model().tokenizer;
    const auto prompt = chat_prompt("Hi");
    GenerateOptions o;
    o.max_new_tokens = 8;
    o.cache_capacity = prompt.size() + 7;
    CHECK_THROWS_AS(generate_with_cache(d, t, prompt, o), CapacityError);
    CHECK_THROWS_AS(generation_cache_bytes(d, prompt.size(), o), CapacityError);
    o.cache_capacity = prompt.size() + 8;
    CHECK(generation_cache_bytes(d, prompt.size(), o) == d.cache_bytes(prompt.size() + 8));
    o.cache_capacity.reset();
    CHECK_THROWS_AS(generate_with_cache(d, t, std::vector<std::int32_t>{}, o), ConfigError);
    CHECK_THROWS_AS(generate_without_cache(d, t, std::vector<std::int32_t>{}, o), ConfigError);
    std::vector<std::int32_t> bad{1, 999999};
    CHECK_THROWS_AS(generate_with_cache(d, t, bad, o), IndexError);
    o.sampling.top_p = 0;
    CHECK_THROWS_AS(generate_with_cache(d, t, prompt, o), ConfigError);
    CHECK_THROWS_AS(generate_without_cache(d, t, prompt, o), ConfigError);
    // threads option is applied for the call and restored afterwards
    GenerateOptions one;
    one.max_new_tokens = 2;
    one.threads = 1;
    const int before = d.threads();
    generate_with_cache(d, t, prompt, one);
    CHECK(d.threads() == before);
}

TEST_CASE("a max_new_tokens near 2^64 is a CapacityError or a limit, never a wrapped size", "[issue9]") {
    Decoder& d = model().decoder;
    const Tokenizer& t = model().tokenizer;
    const auto prompt = raw_prompt("Hi");
    const std::size_t max = std::numeric_limits<std::size_t>::max();
    CHECK(d.cache_bytes(10) == d.config().n_layers * 2 * 10 * d.config().kv_dim() * sizeof(float));
    CHECK_THROWS_AS(d.cache_bytes(max / 8), CapacityError);  // was the product modulo 2^64
    CHECK_THROWS_AS(d.cache_bytes(1, max / 2), CapacityError);
    GenerateOptions o;
    o.max_new_tokens = max;  // prompt + this wrapped to a few positions
    CHECK_THROWS_AS(generation_cache_bytes(d, prompt.size(), o), CapacityError);
    CHECK_THROWS_WITH(generation_cache_bytes(d, prompt.size(), o), Catch::Contains("prompt + max_new_tokens"));
    CHECK_THROWS_AS(generate_with_cache(d, t, prompt, o), CapacityError);
    CHECK_THROWS_AS(generate_batch(d, t, std::vector<std::vector<std::int32_t>>{prompt}, o), CapacityError);
    o.max_new_tokens = max / 64;  // the sum fits, the bytes do not
    CHECK_THROWS_AS(generation_cache_bytes(d, prompt.size(), o), CapacityError);
    CHECK_THROWS_WITH(generate_with_cache(d, t, prompt, o), Catch::Contains("KV cache bytes"));
    o.cache_capacity = 64;  // the capacity check must not wrap either: 64 < prompt + max_new_tokens
    o.max_new_tokens = max;
    CHECK_THROWS_WITH(generate_with_cache(d, t, prompt, o), Catch::Contains("is below prompt"));
    o.cache.context_shift = true;  // ... unless a context shift lets generation go on past the capacity
    o.cache.n_keep = 4;
    o.cache.n_discard = 8;
    o.stop_at_eos = false;
    int calls = 0;
    o.on_token = [&](std::int32_t, std::string_view) { return ++calls < 3; };
    CHECK(generate_with_cache(d, t, prompt, o).tokens.size() == 3);
    // Without a cache, max_new_tokens is only a limit: it is not reserved up front (was std::length_error).
    GenerateOptions limit;
    limit.max_new_tokens = max / 2;
    limit.stop_at_eos = false;
    calls = 0;
    limit.on_token = [&](std::int32_t, std::string_view) { return ++calls < 3; };
    CHECK(generate_without_cache(d, t, prompt, limit).tokens.size() == 3);
}
