// Tests of the decoder with int8 matmuls (MatmulPrecision::int8) on SmolLM2: how far its logits move from the
// f32 path's, that greedy decoding of a short prompt picks the same tokens, and the options that carry it.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "kvcache/error.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/generate.hpp"
#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/model/gguf.hpp"
#include "kvcache/model/scheduler.hpp"
#include "kvcache/model/tokenizer.hpp"
#include "scheduler_test_support.hpp"

using namespace kvcache;

namespace {

std::filesystem::path smollm2_path() {
    return std::getenv("KVCACHE_MODEL") ? std::filesystem::path(std::getenv("KVCACHE_MODEL"))
                                        : std::filesystem::path(KVCACHE_SOURCE_DIR) / "models" /
                                              "SmolLM2-135M-Instruct.Q4_1.gguf";
}

}  // namespace

TEST_CASE("int8 matmuls (SmolLM2): logits close to f32's, same top token where f32 is sure, same greedy start") {
    const auto path = smollm2_path();
    INFO("model file " << path << " (run scripts/fetch-model.sh)");
    REQUIRE(std::filesystem::exists(path));
    const auto file = gguf::File::open(path);
    const Tokenizer tokenizer = Tokenizer::from_gguf(file);
    Decoder d(DecoderWeights::from_gguf(file), 2);
    const std::size_t vocab = d.config().vocab_size;
    const auto tokens = tokenizer.encode("The sea is large and deep, and the ships sail on it.", {.add_special = true});
    const auto run = [&](MatmulPrecision p) {
        auto cache = d.make_cache(tokens.size());
        std::vector<float> logits(tokens.size() * vocab);
        d.forward(tokens, cache, 0, logits, ForwardOptions{.precision = p});
        return logits;
    };
    const auto f32 = run(MatmulPrecision::f32);
    const auto int8 = run(MatmulPrecision::int8);
    // Measured on this prompt (14 positions): largest |difference| at most 6.4 % of the logit range (30-35),
    // KL(f32 || int8) of the next-token distributions at most 0.057 nats. The bounds leave ~1.4-1.7x room.
    double worst_kl = 0, worst_share = 0;
    for (std::size_t t = 0; t < tokens.size(); ++t) {
        const float* a = f32.data() + t * vocab;
        const float* b = int8.data() + t * vocab;
        const auto [lo, hi] = std::minmax_element(a, a + vocab);
        const float top_b = *std::max_element(b, b + vocab);
        double worst = 0, za = 0, zb = 0;
        for (std::size_t v = 0; v < vocab; ++v) {
            worst = std::max(worst, double(std::fabs(a[v] - b[v])));
            za += std::exp(double(a[v] - *hi));
            zb += std::exp(double(b[v] - top_b));
        }
        double kl = 0;
        for (std::size_t v = 0; v < vocab; ++v) {
            const double la = double(a[v] - *hi) - std::log(za), lb = double(b[v] - top_b) - std::log(zb);
            kl += std::exp(la) * (la - lb);
        }
        worst_kl = std::max(worst_kl, kl);
        worst_share = std::max(worst_share, worst / double(*hi - *lo));
        // Where f32 puts more than half the probability on one token, int8 picks it too.
        if (1.0 / za > 0.5) CHECK(std::max_element(b, b + vocab) - b == hi - a);
    }
    WARN("int8 against f32 on SmolLM2: largest |logit difference| " << worst_share * 100
                                                                     << " % of the logit range, largest KL " << worst_kl);
    CHECK(worst_share < 0.09);
    CHECK(worst_kl < 0.1);

    // Greedy generation of a short chat prompt: measured, the first 6 of 24 tokens agree, then a near-tie
    // goes the other way and the texts part (both stay fluent).
    GenerateOptions o;
    o.max_new_tokens = 24;
    o.sampling.temperature = 0;
    o.threads = 2;
    const auto prompt = tokenizer.encode("<|im_start|>user\nTell me about the sea.<|im_end|>\n<|im_start|>assistant\n",
                                         {.add_special = true, .parse_special = true});
    const auto greedy_f32 = generate_with_cache(d, tokenizer, prompt, o);
    o.precision = MatmulPrecision::int8;
    const auto greedy_int8 = generate_with_cache(d, tokenizer, prompt, o);
    WARN("greedy f32: " << greedy_f32.text << "\ngreedy int8: " << greedy_int8.text);
    REQUIRE(greedy_int8.tokens.size() >= 6);
    REQUIRE(greedy_f32.tokens.size() >= 6);
    CHECK(std::equal(greedy_f32.tokens.begin(), greedy_f32.tokens.begin() + 6, greedy_int8.tokens.begin()));

    // The scheduler carries SchedulerOptions::precision to its steps: the int8 tokens, not the f32 ones.
    PagedKVPool<float> pool(d.cache_layers(), 64);
    Scheduler s(d, tokenizer, pool, nullptr, SchedulerOptions{.threads = 2, .precision = MatmulPrecision::int8});
    Request r;
    r.prompt = prompt;
    r.options.max_new_tokens = o.max_new_tokens;
    r.options.sampling.temperature = 0;
    std::vector<std::int32_t> scheduled;
    r.on_done = [&](const RequestResult& res) { scheduled = res.tokens; };
    s.submit(std::move(r));
    for (int i = 0; i < 1000 && s.step(); ++i) {
    }
    CHECK(scheduled == greedy_int8.tokens);
    CHECK(scheduled != greedy_f32.tokens);
}

TEST_CASE("generate_batch: prompts asking for different matmul precisions are a ConfigError") {
    Decoder& d = kvcache::test::random_decoder();
    const std::vector<std::vector<std::int32_t>> prompts{kvcache::test::numbered_prompt(3, 0),
                                                         kvcache::test::numbered_prompt(4, 1)};
    std::vector<GenerateOptions> options(2);
    for (auto& o : options) o.max_new_tokens = 2;
    options[1].precision = MatmulPrecision::int8;
    CHECK_THROWS_AS(generate_batch(d, kvcache::test::numbered_tokenizer(), prompts, options), ConfigError);
    options[0].precision = MatmulPrecision::int8;
    CHECK(generate_batch(d, kvcache::test::numbered_tokenizer(), prompts, options).size() == 2);
}
