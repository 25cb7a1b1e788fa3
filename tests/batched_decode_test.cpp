// Tests of the batched forward pass: each sequence's logits are bitwise what they are alone, whatever else is
// in the batch, in any order, at any thread count, with sequences joining and leaving mid-way (random decoder
// and SmolLM2); errors leave every cache unchanged; generate_batch gives generate_with_cache's results.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <vector>

#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/generate.hpp"
#include "kvcache/model/gguf.hpp"
#include "scheduler_test_support.hpp"

using namespace kvcache;
using kvcache::test::numbered_prompt;
using kvcache::test::numbered_tokenizer;
using kvcache::test::random_decoder;

namespace {

bool same_bits(std::span<const float> a, std::span<const float> b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

/// Every token's logits of `tokens` run alone through a fresh cache in one pass: [n][vocab].
std::vector<float> alone_logits(Decoder& d, std::span<const std::int32_t> tokens,
                                MatmulPrecision precision = MatmulPrecision::f32) {
    auto cache = d.make_cache(tokens.size());
    std::vector<float> all(tokens.size() * d.config().vocab_size);
    d.forward(tokens, cache, 0, all, ForwardOptions{.threads = 1, .precision = precision});
    return all;
}

/// A sequence of the batched run: its tokens, fed as a first chunk of `first_chunk` tokens and then one
/// token per step, starting at step `join`.
struct Plan {
    std::vector<std::int32_t> tokens;
    std::size_t first_chunk;
    std::size_t join;
};

/// Runs the plans batched (over caches made by make_cache(i)), items in an order that changes every step,
/// and checks every logits row against the sequence alone. `all_logits_every`: every k-th item asks for every
/// token's logits instead of the last one's.
/// `alone` (when given) computes a sequence's one-pass logits instead of alone_logits (another cache type).
template <class Cache, class MakeCache>
void check_batched_equals_alone(Decoder& d, const std::vector<Plan>& plans, int threads, MakeCache&& make_cache,
                                MatmulPrecision precision = MatmulPrecision::f32,
                                const std::function<std::vector<float>(std::span<const std::int32_t>)>& alone = {}) {
    const std::size_t vocab = d.config().vocab_size;
    std::vector<std::vector<float>> expected;
    for (const Plan& p : plans) expected.push_back(alone ? alone(p.tokens) : alone_logits(d, p.tokens, precision));

    std::vector<Cache> caches;
    caches.reserve(plans.size());
    for (std::size_t i = 0; i < plans.size(); ++i) caches.push_back(make_cache(i));
    std::vector<std::size_t> fed(plans.size(), 0);
    std::vector<std::vector<float>> out(plans.size());
    std::size_t checked = 0;
    for (std::size_t step = 0;; ++step) {
        std::vector<ForwardItem<Cache>> items;
        std::vector<std::size_t> who;
        for (std::size_t i = 0; i < plans.size(); ++i) {
            const Plan& p = plans[i];
            if (step < p.join || fed[i] == p.tokens.size()) continue;
            const std::size_t n = fed[i] == 0 ? p.first_chunk : 1;
            const bool every = (i + step) % 3 == 0;
            out[i].assign((every ? n : 1) * vocab, 0.0f);
            items.push_back({std::span<const std::int32_t>(p.tokens).subspan(fed[i], n), &caches[i], 0, out[i]});
            who.push_back(i);
        }
        if (items.empty() && std::all_of(plans.begin(), plans.end(), [&](const Plan& p) { return step > p.join; })) {
            break;
        }
        // Another order each step: rotate, and reverse on odd steps.
        if (!items.empty()) {
            const std::size_t r = step % items.size();
            std::rotate(items.begin(), items.begin() + static_cast<std::ptrdiff_t>(r), items.end());
            std::rotate(who.begin(), who.begin() + static_cast<std::ptrdiff_t>(r), who.end());
            if (step % 2) {
                std::reverse(items.begin(), items.end());
                std::reverse(who.begin(), who.end());
            }
        }
        // Every other step the items' logits are one array in item order (as a scheduler's are), which the
        // decoder writes straight into; on the others each item has a buffer of its own.
        std::vector<float> one_array;
        if (step % 2 == 0) {
            std::size_t total = 0;
            for (const auto& item : items) total += item.logits.size();
            one_array.assign(total, 0.0f);
            std::size_t at = 0;
            for (auto& item : items) {
                item.logits = std::span<float>(one_array).subspan(at, item.logits.size());
                at += item.logits.size();
            }
        }
        d.forward(std::span<const ForwardItem<Cache>>(items), ForwardOptions{.threads = threads, .precision = precision});
        for (std::size_t k = 0; k < items.size(); ++k) {
            const std::size_t i = who[k];
            if (!one_array.empty()) std::copy(items[k].logits.begin(), items[k].logits.end(), out[i].begin());
            const std::size_t n = items[k].tokens.size();
            const std::size_t rows = out[i].size() / vocab;
            const std::size_t first_row = fed[i] + n - rows;
            INFO("sequence " << i << " step " << step << " positions " << fed[i] << ".." << fed[i] + n);
            CHECK(same_bits(out[i], std::span<const float>(expected[i]).subspan(first_row * vocab, rows * vocab)));
            fed[i] += n;
            ++checked;
        }
    }
    for (std::size_t i = 0; i < plans.size(); ++i) CHECK(fed[i] == plans[i].tokens.size());
    CHECK(checked > plans.size());
}

std::vector<Plan> plans_for(std::size_t count, std::size_t max_prompt, std::size_t decode_steps) {
    std::vector<Plan> plans;
    for (std::size_t i = 0; i < count; ++i) {
        const std::size_t prompt = 1 + (i * 7 + 3) % max_prompt;
        const std::size_t steps = 1 + (i * 5) % decode_steps;  // different lengths: they leave at different steps
        plans.push_back({numbered_prompt(prompt + steps, static_cast<std::uint32_t>(i)), prompt, (i * 3) % 5});
    }
    return plans;
}

/// `m` (F32) rounded to Q8_0 or Q4_1 blocks, so the int8 path has integer codes to work on.
WeightMatrix quantised(const WeightMatrix& m, WeightFormat f) {
    const std::size_t bb = f == WeightFormat::Q8_0 ? 34 : 20;
    std::vector<std::byte> bytes(m.rows() * m.cols() / 32 * bb);
    std::vector<float> row(m.cols());
    for (std::size_t r = 0; r < m.rows(); ++r) {
        m.dequantize_row(r, row.data());
        for (std::size_t b = 0; b < m.cols() / 32; ++b) {
            std::byte* blk = bytes.data() + (r * m.cols() / 32 + b) * bb;
            const float* x = row.data() + b * 32;
            const auto [lo, hi] = std::minmax_element(x, x + 32);
            if (f == WeightFormat::Q8_0) {
                const float d = std::max(std::fabs(*lo), std::fabs(*hi)) / 127.0f;
                const std::uint16_t dh = fp16::from_float(d);
                std::memcpy(blk, &dh, 2);
                for (int j = 0; j < 32; ++j) {
                    blk[2 + j] = static_cast<std::byte>(static_cast<std::int8_t>(d > 0 ? std::lround(x[j] / d) : 0));
                }
            } else {
                const float d = (*hi - *lo) / 15.0f;
                const std::uint16_t dh = fp16::from_float(d), mh = fp16::from_float(*lo);
                std::memcpy(blk, &dh, 2);
                std::memcpy(blk + 2, &mh, 2);
                const auto code = [&](int j) { return d > 0 ? std::clamp<long>(std::lround((x[j] - *lo) / d), 0, 15) : 0L; };
                for (int j = 0; j < 16; ++j) blk[4 + j] = static_cast<std::byte>(code(j) | (code(j + 16) << 4));
            }
        }
    }
    return WeightMatrix::from_blocks(f, m.rows(), m.cols(), bytes);
}

/// The random test decoder with its layers' matrices in Q4_1 (the int8 path) and its embedding and output in
/// Q8_0 (which takes the f32 path in either precision), like SmolLM2's file.
Decoder& quantised_random_decoder() {
    static Decoder d = [] {
        DecoderWeights w = DecoderWeights::random(DecoderConfig::small_test_model(), 11);
        for (auto& l : w.layers) {
            for (WeightMatrix* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) {
                *m = quantised(*m, WeightFormat::Q4_1);
            }
        }
        w.token_embedding = quantised(w.token_embedding, WeightFormat::Q8_0);
        if (w.output.rows() > 0) w.output = quantised(w.output, WeightFormat::Q8_0);
        return Decoder(std::move(w), 1);
    }();
    return d;
}

std::filesystem::path smollm2_path() {
    return std::getenv("KVCACHE_MODEL") ? std::filesystem::path(std::getenv("KVCACHE_MODEL"))
                                        : std::filesystem::path(KVCACHE_SOURCE_DIR) / "models" /
                                              "SmolLM2-135M-Instruct.Q4_1.gguf";
}

}  // namespace

TEST_CASE("batched forward, int8 matmuls (quantised random decoder): batched gives the logits alone, bitwise") {
    Decoder& d = quantised_random_decoder();
    for (const std::size_t count : {1, 3, 9}) {
        for (const int threads : {1, 2}) {
            INFO(count << " sequences, " << threads << " threads");
            const auto plans = plans_for(count, 21, 6);
            check_batched_equals_alone<MultiLayerKVCache<float>>(
                d, plans, threads, [&](std::size_t i) { return d.make_cache(plans[i].tokens.size()); },
                MatmulPrecision::int8);
        }
    }
    // and the int8 logits really are another computation than the f32 ones
    const auto tokens = numbered_prompt(5, 1);
    CHECK_FALSE(same_bits(alone_logits(d, tokens, MatmulPrecision::int8), alone_logits(d, tokens)));
}

TEST_CASE("batched forward, int8 matmuls and integer q·k over q8_0 pools: batched gives the logits alone, bitwise") {
    Decoder& d = quantised_random_decoder();
    const auto alone_q8 = [&](MatmulPrecision precision) {
        return [&d, precision](std::span<const std::int32_t> tokens) {
            PagedKVPool<q8_0> pool(d.cache_layers(), PagedKVPool<q8_0>::blocks_for(tokens.size(), 16));
            auto seq = pool.sequence(pool.create_sequence());
            std::vector<float> all(tokens.size() * d.config().vocab_size);
            d.forward(tokens, seq, 0, all, ForwardOptions{.threads = 1, .precision = precision});
            return all;
        };
    };
    for (const std::size_t count : {1, 4, 9}) {
        for (const int threads : {1, 2}) {
            INFO(count << " sequences, " << threads << " threads");
            const auto plans = plans_for(count, 70, 6);  // prompts past one 64-position tile
            PagedKVPool<q8_0> pool(d.cache_layers(), count * PagedKVPool<q8_0>::blocks_for(90, 16));
            check_batched_equals_alone<PagedSequence<q8_0>>(
                d, plans, threads, [&](std::size_t) { return pool.sequence(pool.create_sequence()); },
                MatmulPrecision::int8, alone_q8(MatmulPrecision::int8));
        }
    }
    // int8 precision over q8_0 keys is its own computation (the queries rounded), not f32's
    const auto tokens = numbered_prompt(40, 1);
    CHECK_FALSE(same_bits(alone_q8(MatmulPrecision::int8)(tokens), alone_q8(MatmulPrecision::f32)(tokens)));
}

TEST_CASE("batched forward (random decoder): 1-16 sequences joining and leaving give their logits alone, bitwise") {
    Decoder& d = random_decoder();
    for (const std::size_t count : {1, 2, 5, 16}) {
        for (const int threads : {1, 2, 3}) {
            INFO(count << " sequences, " << threads << " threads");
            const auto plans = plans_for(count, 21, 6);
            check_batched_equals_alone<MultiLayerKVCache<float>>(d, plans, threads, [&](std::size_t i) {
                return d.make_cache(plans[i].tokens.size());
            });
        }
    }
}

TEST_CASE("batched forward (random decoder): sequences of one paged pool, prefix-shared and forked") {
    Decoder& d = random_decoder();
    PagedKVPool<float> pool(d.cache_layers(), 128);
    auto plans = plans_for(9, 40, 5);
    // Two sequences start as forks of a third's first 20 tokens (shared blocks, copy-on-write in one batch).
    const SequenceId base = pool.create_sequence();
    {
        std::vector<std::int32_t> prefix = numbered_prompt(20, 99);
        std::vector<float> logits(d.config().vocab_size);
        auto c = pool.sequence(base);
        d.forward(std::span<const std::int32_t>(prefix), c, 0, logits);
        for (std::size_t i : {0, 1}) {
            plans[i].tokens.insert(plans[i].tokens.begin(), prefix.begin(), prefix.end());
        }
    }
    std::vector<Plan> shifted = plans;  // the forked ones feed after the shared 20 tokens
    for (std::size_t i : {0, 1}) shifted[i].tokens.erase(shifted[i].tokens.begin(), shifted[i].tokens.begin() + 20);
    // Alone logits for the forked ones are over prefix + own tokens; compare on the own part.
    const std::size_t vocab = d.config().vocab_size;
    std::vector<SequenceId> ids;
    for (std::size_t i = 0; i < plans.size(); ++i) ids.push_back(i < 2 ? pool.fork(base, 20) : pool.create_sequence());
    std::vector<std::vector<float>> expected;
    for (const Plan& p : plans) expected.push_back(alone_logits(d, p.tokens));
    std::vector<PagedSequence<float>> caches;
    for (SequenceId id : ids) caches.push_back(pool.sequence(id));
    std::vector<std::vector<float>> out(plans.size(), std::vector<float>(vocab));
    std::vector<std::size_t> fed(plans.size(), 0);
    for (std::size_t step = 0; step < 12; ++step) {
        std::vector<ForwardItem<PagedSequence<float>>> items;
        std::vector<std::size_t> who;
        for (std::size_t i = plans.size(); i-- > 0;) {
            if (fed[i] == shifted[i].tokens.size()) continue;
            const std::size_t n = fed[i] == 0 ? std::min<std::size_t>(shifted[i].tokens.size(), 7) : 1;
            items.push_back({std::span<const std::int32_t>(shifted[i].tokens).subspan(fed[i], n), &caches[i], 0, out[i]});
            who.push_back(i);
        }
        if (items.empty()) break;
        d.forward(std::span<const ForwardItem<PagedSequence<float>>>(items), ForwardOptions{.threads = 2});
        for (std::size_t k = 0; k < items.size(); ++k) {
            const std::size_t i = who[k];
            fed[i] += items[k].tokens.size();
            const std::size_t row = (i < 2 ? 20 : 0) + fed[i] - 1;
            INFO("sequence " << i << " step " << step);
            CHECK(same_bits(out[i], std::span<const float>(expected[i]).subspan(row * vocab, vocab)));
        }
    }
    CHECK(pool.seq_len(base) == 20);  // the forks' appends copied the shared block; the base is untouched
}

TEST_CASE("batched forward: errors are reported before any cache changes") {
    Decoder& d = random_decoder();
    const std::size_t vocab = d.config().vocab_size;
    auto a = d.make_cache(8), b = d.make_cache(8);
    std::vector<float> la(vocab), lb(vocab);
    const std::vector<std::int32_t> ok{5, 6, 7}, bad{5, static_cast<std::int32_t>(vocab)};
    using Item = ForwardItem<MultiLayerKVCache<float>>;
    const auto unchanged = [&] { return a.seq_len(0, 0) == 0 && b.seq_len(0, 0) == 0; };

    std::vector<Item> items{{ok, &a, 0, la}, {bad, &b, 0, lb}};
    CHECK_THROWS_AS(d.forward(std::span<const Item>(items)), IndexError);
    CHECK(unchanged());
    items = {{ok, &a, 0, la}, {ok, nullptr, 0, lb}};
    CHECK_THROWS_AS(d.forward(std::span<const Item>(items)), ConfigError);
    items = {{ok, &a, 0, la}, {ok, &a, 0, lb}};  // the same row twice
    CHECK_THROWS_AS(d.forward(std::span<const Item>(items)), ConfigError);
    std::vector<float> wrong(vocab + 1);
    items = {{ok, &a, 0, la}, {ok, &b, 0, wrong}};
    CHECK_THROWS_AS(d.forward(std::span<const Item>(items)), ShapeError);
    const std::vector<std::int32_t> nine(9, 4);
    items = {{ok, &a, 0, la}, {nine, &b, 0, lb}};
    CHECK_THROWS_AS(d.forward(std::span<const Item>(items)), CapacityError);
    items = {{ok, &a, 1, la}};
    CHECK_THROWS_AS(d.forward(std::span<const Item>(items)), IndexError);
    CHECK(unchanged());

    // No logits wanted (an empty span): the tokens still go into the cache. Empty items are skipped.
    items = {{ok, &a, 0, {}}, {{}, &b, 0, lb}};
    d.forward(std::span<const Item>(items));
    CHECK(a.seq_len(0, 0) == 3);
    CHECK(b.seq_len(0, 0) == 0);

    // Two sequences of one pool that each fit alone but not together: CapacityError, nothing appended.
    PagedKVPool<float> pool(d.cache_layers(), 3, 4);  // 3 blocks of 4 positions
    const SequenceId s1 = pool.create_sequence(), s2 = pool.create_sequence();
    auto c1 = pool.sequence(s1), c2 = pool.sequence(s2);
    const std::vector<std::int32_t> six(6, 3);
    using PItem = ForwardItem<PagedSequence<float>>;
    std::vector<PItem> pitems{{six, &c1, 0, la}, {six, &c2, 0, lb}};
    CHECK_THROWS_AS(d.forward(std::span<const PItem>(pitems)), CapacityError);
    CHECK(pool.seq_len(s1) == 0);
    CHECK(pool.seq_len(s2) == 0);
    CHECK(pool.used_blocks() == 0);
    auto c1_again = pool.sequence(s1);  // another handle to the same sequence
    pitems = {{ok, &c1, 0, la}, {ok, &c1_again, 0, lb}};
    CHECK_THROWS_AS(d.forward(std::span<const PItem>(pitems)), ConfigError);
    pitems = {{six, &c1, 0, la}, {ok, &c2, 0, lb}};  // 2 + 1 blocks: fits
    d.forward(std::span<const PItem>(pitems));
    CHECK(pool.seq_len(s1) == 6);
    CHECK(pool.seq_len(s2) == 3);
}

TEST_CASE("generate_batch gives each prompt what generate_with_cache gives it alone") {
    Decoder& d = random_decoder();
    const Tokenizer& t = numbered_tokenizer();
    std::vector<std::vector<std::int32_t>> prompts;
    std::vector<GenerateOptions> options;
    for (std::uint32_t i = 0; i < 5; ++i) {
        prompts.push_back(numbered_prompt(2 + 5 * i, i));
        GenerateOptions o;
        o.max_new_tokens = 3 + 2 * i;  // they finish at different steps
        o.sampling.temperature = i % 2 ? 0.8f : 0.0f;
        o.sampling.seed = 40 + i;
        o.stop_at_eos = false;
        options.push_back(o);
    }
    std::vector<std::string> streamed(prompts.size());
    for (std::size_t i = 0; i < prompts.size(); ++i) {
        options[i].on_token = [&streamed, i](std::int32_t, std::string_view piece) {
            streamed[i] += piece;
            return true;
        };
    }
    const auto results = generate_batch(d, t, prompts, options);
    REQUIRE(results.size() == prompts.size());
    for (std::size_t i = 0; i < prompts.size(); ++i) {
        INFO("prompt " << i);
        const GenerationResult ref = generate_with_cache(d, t, prompts[i], options[i]);
        CHECK(results[i].tokens == ref.tokens);
        CHECK(results[i].text == ref.text);
        CHECK(results[i].cache_bytes == ref.cache_bytes);
        CHECK(streamed[i] == ref.text + ref.text);  // once batched, once alone
    }
    // One set of options for all.
    GenerateOptions shared;
    shared.max_new_tokens = 4;
    shared.stop_at_eos = false;
    const auto same = generate_batch(d, t, prompts, shared);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
        CHECK(same[i].tokens == generate_with_cache(d, t, prompts[i], shared).tokens);
    }
    // Errors before anything runs.
    CHECK_THROWS_AS(generate_batch(d, t, prompts, std::span<const GenerateOptions>(options).first(2)), ConfigError);
    std::vector<std::vector<std::int32_t>> with_empty = prompts;
    with_empty[3].clear();
    CHECK_THROWS_AS(generate_batch(d, t, with_empty, shared), ConfigError);
    std::vector<std::vector<std::int32_t>> with_bad = prompts;
    with_bad[1][0] = 5000;
    CHECK_THROWS_AS(generate_batch(d, t, with_bad, shared), IndexError);
    GenerateOptions small = shared;
    small.cache_capacity = 2;
    CHECK_THROWS_AS(generate_batch(d, t, prompts, small), CapacityError);
    CHECK(generate_batch(d, t, std::vector<std::vector<std::int32_t>>{}, shared).empty());
}

TEST_CASE("batched forward (SmolLM2): sequences batched give their logits alone, bitwise, at 1 and 2 threads") {
    const std::filesystem::path path = smollm2_path();
    INFO("model file " << path << " (run scripts/fetch-model.sh)");
    REQUIRE(std::filesystem::exists(path));
    Decoder d = Decoder::load(path, DecoderOptions{.threads = 2});
    const std::size_t vocab = d.config().vocab_size;
    // Short: every batched step is checked against the one-pass logits of the whole sequence.
    std::vector<Plan> plans;
    for (std::uint32_t i = 0; i < 5; ++i) {
        auto tokens = numbered_prompt(3 + 4 * i + 3, i);
        for (auto& tok : tokens) tok = static_cast<std::int32_t>(static_cast<std::size_t>(tok) * 37 % vocab);
        plans.push_back({tokens, 3 + 4 * i, i % 3});
    }
    for (const int threads : {1, 2}) {
        for (const MatmulPrecision precision : {MatmulPrecision::f32, MatmulPrecision::int8}) {
            INFO(threads << " threads, " << matmul_precision_name(precision) << " matmuls");
            PagedKVPool<float> pool(d.cache_layers(), 64);
            check_batched_equals_alone<PagedSequence<float>>(
                d, plans, threads, [&](std::size_t) { return pool.sequence(pool.create_sequence()); }, precision);
        }
    }
}
