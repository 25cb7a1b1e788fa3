// The decoder over paged sequences and a prefix cache (PagedSession): the headline guarantee that a prefix
// hit, a fork, token-by-token decoding, a paged cache and a cold contiguous run give bitwise the same logits
// — on a random-weight model and on the real SmolLM2 — plus many sequences in one pool, branching, pool
// pressure, generation, and every error path.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <utility>
#include <random>
#include <span>
#include <vector>

#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/cache/prefix_cache.hpp"
#include "kvcache/error.hpp"
#include "kvcache/model/chat.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/generate.hpp"
#include "kvcache/model/gguf.hpp"
#include "kvcache/model/paged_session.hpp"
#include "kvcache/model/sampling.hpp"
#include "kvcache/model/tokenizer.hpp"

using namespace kvcache;

static_assert(KVCacheLike<PagedSequence<float>>);

namespace {

Decoder& random_decoder() {
    static Decoder d(DecoderWeights::random(DecoderConfig::small_test_model(), 4321), 2);
    return d;
}

std::filesystem::path model_path() {
    if (const char* env = std::getenv("KVCACHE_MODEL")) return env;
    return std::filesystem::path(KVCACHE_SOURCE_DIR) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

struct RealModel {
    gguf::File file;
    Tokenizer tokenizer;
    Decoder decoder;
};

/// The real model, or null (with a warning) if its file is missing.
RealModel* real_model() {
    static std::unique_ptr<RealModel> m = []() -> std::unique_ptr<RealModel> {
        if (!std::filesystem::exists(model_path())) return nullptr;
        auto file = gguf::File::open(model_path());
        auto tokenizer = Tokenizer::from_gguf(file);
        Decoder decoder(DecoderWeights::from_gguf(file), 2);
        return std::make_unique<RealModel>(RealModel{std::move(file), std::move(tokenizer), std::move(decoder)});
    }();
    if (!m) WARN("model file " << model_path() << " is missing (run scripts/fetch-model.sh): real-model test skipped");
    return m.get();
}

std::vector<std::int32_t> some_tokens(std::size_t n, std::uint64_t seed, std::size_t vocab) {
    std::mt19937_64 g(seed);
    std::vector<std::int32_t> t(n);
    for (auto& x : t) x = static_cast<std::int32_t>(g() % vocab);
    return t;
}

std::vector<std::int32_t> concat(std::span<const std::int32_t> a, std::span<const std::int32_t> b) {
    std::vector<std::int32_t> out(a.begin(), a.end());
    out.insert(out.end(), b.begin(), b.end());
    return out;
}

bool same_bits(std::span<const float> a, std::span<const float> b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

/// The reference: the last token's logits of a cold, one-shot prefill into a contiguous cache. Remembered
/// per (decoder, tokens), because Catch runs a test case once per section (the decoders here are statics).
std::vector<float> cold_logits(Decoder& d, std::span<const std::int32_t> tokens) {
    static std::map<std::pair<const Decoder*, std::vector<std::int32_t>>, std::vector<float>> memo;
    auto key = std::make_pair(&d, std::vector<std::int32_t>(tokens.begin(), tokens.end()));
    if (auto it = memo.find(key); it != memo.end()) return it->second;
    auto cache = d.make_cache(tokens.size());
    std::vector<float> logits(d.config().vocab_size);
    d.forward(tokens, cache, 0, logits);
    memo.emplace(std::move(key), logits);
    return logits;
}

/// Every way of reaching the last token of `tokens` gives the cold logits bit for bit: prefix hits (a
/// cached request that shares `shared` tokens, block-aligned or not), token-by-token decoding, a fork, a
/// branch from a longer sequence, a paged cold run, and other thread counts.
void check_every_path_is_bitwise_cold(Decoder& d, const std::vector<std::int32_t>& tokens, std::size_t shared,
                                      std::size_t block_size, bool token_by_token = true) {
    const std::size_t vocab = d.config().vocab_size;
    const std::vector<float> cold = cold_logits(d, tokens);
    const std::size_t n = tokens.size();
    PagedKVPool<float> pool(d.cache_layers(), 4 * PagedKVPool<float>::blocks_for(2 * n, block_size) + 8, block_size);
    PrefixCache<float> prefixes(pool, pool.bytes_allocated());
    PagedSession<float> session(d, pool, &prefixes);
    std::vector<float> logits(vocab);

    SECTION("paged cold, one shot") {
        PagedSession<float> plain(d, pool);
        const PagedPrefill p = plain.start(tokens, logits);
        CHECK(p.reused_tokens == 0);
        CHECK(p.computed_tokens == n);
        CHECK(same_bits(logits, cold));
    }
    SECTION("prefix hit: an earlier request shared the first tokens, the rest runs in one chunk") {
        // the earlier request: the shared prefix, then something else
        auto other = concat(std::span(tokens).first(shared), some_tokens(9, 77, vocab));
        const PagedPrefill first = session.start(other, logits);
        session.finish(first.sequence);
        const PagedPrefill hit = session.start(tokens, logits);
        CHECK(hit.reused_tokens >= shared);
        CHECK(hit.computed_tokens == n - hit.reused_tokens);
        CHECK(hit.match == (hit.reused_tokens % block_size == 0 ? PrefixMatchKind::BlockAligned
                                                                : PrefixMatchKind::TokenExact));
        CHECK(same_bits(logits, cold));
        // the same prompt again: all but the last token come from the cache
        session.finish(hit.sequence);
        const PagedPrefill again = session.start(tokens, logits);
        CHECK(again.reused_tokens == n - 1);
        CHECK(again.computed_tokens == 1);
        CHECK(same_bits(logits, cold));
    }
    if (token_by_token) {
        SECTION("token by token") {
            const PagedPrefill p = session.start(std::span(tokens).first(1), logits);
            for (std::size_t i = 1; i < n; ++i) session.extend(p.sequence, std::span(tokens).subspan(i, 1), logits);
            CHECK(same_bits(logits, cold));
            CHECK(std::vector<std::int32_t>(session.tokens(p.sequence).begin(), session.tokens(p.sequence).end()) ==
                  tokens);
        }
    }
    SECTION("fork: the parent continues one way, the fork the way of `tokens`") {
        const PagedPrefill p = session.start(std::span(tokens).first(shared), logits);
        const SequenceId fork = session.branch(p.sequence);
        session.extend(p.sequence, some_tokens(5, 3, vocab), logits);
        session.extend(fork, std::span(tokens).subspan(shared), logits);
        CHECK(same_bits(logits, cold));
        // and the parent is what a cold run of its own tokens gives
        const auto parent_tokens = std::vector<std::int32_t>(session.tokens(p.sequence).begin(),
                                                             session.tokens(p.sequence).end());
        std::vector<float> parent_logits(vocab);
        session.extend(p.sequence, std::span(tokens).first(1), parent_logits);
        CHECK(same_bits(parent_logits, cold_logits(d, concat(parent_tokens, std::span(tokens).first(1)))));
    }
    SECTION("branch from an earlier point of a longer conversation") {
        auto longer = concat(std::span(tokens).first(shared), some_tokens(20, 8, vocab));
        const PagedPrefill p = session.start(longer, logits);
        const SequenceId branch = session.branch(p.sequence, shared);
        CHECK(session.tokens(branch).size() == shared);
        session.extend(branch, std::span(tokens).subspan(shared), logits);
        CHECK(same_bits(logits, cold));
    }
    SECTION("every token's logits, in mixed chunks, at other thread counts") {
        std::vector<float> all_cold(n * vocab), all_paged(n * vocab);
        auto flat = d.make_cache(n);
        d.forward(tokens, flat, 0, all_cold);
        const int saved = d.threads();
        d.set_threads(1);
        const PagedPrefill p = session.start(std::span(tokens).first(3), std::span(all_paged).first(3 * vocab));
        std::size_t at = 3;
        for (std::size_t piece : {std::size_t{1}, std::size_t{17}, std::size_t{2}}) {
            if (at + piece >= n) break;
            session.extend(p.sequence, std::span(tokens).subspan(at, piece),
                           std::span(all_paged).subspan(at * vocab, piece * vocab));
            at += piece;
        }
        d.set_threads(3);
        session.extend(p.sequence, std::span(tokens).subspan(at), std::span(all_paged).subspan(at * vocab));
        d.set_threads(saved);
        CHECK(same_bits(all_paged, all_cold));
    }
}

}  // namespace

TEST_CASE("random decoder: a paged sequence gives the contiguous cache's logits bit for bit") {
    Decoder& d = random_decoder();
    const auto tokens = some_tokens(70, 1, d.config().vocab_size);
    const std::size_t vocab = d.config().vocab_size;
    for (std::size_t block_size : {16u, 5u}) {
        PagedKVPool<float> pool(d.cache_layers(), 20, block_size);
        auto paged = pool.sequence(pool.create_sequence());
        auto flat = d.make_cache(70);
        std::vector<float> a(70 * vocab), b(70 * vocab);
        std::size_t at = 0;
        for (std::size_t piece : {5u, 17u, 1u, 1u, 46u}) {
            d.forward(std::span(tokens).subspan(at, piece), paged, 0, std::span(a).subspan(at * vocab, piece * vocab));
            d.forward(std::span(tokens).subspan(at, piece), flat, 0, std::span(b).subspan(at * vocab, piece * vocab));
            at += piece;
        }
        CHECK(same_bits(a, b));
    }
    // fp16 storage too
    PagedKVPool<fp16> pool(d.cache_layers(), 8);
    auto paged = pool.sequence(pool.create_sequence());
    MultiLayerKVCache<fp16> flat(d.cache_layers(), 1, 70);
    std::vector<float> a(vocab), b(vocab);
    d.forward(tokens, paged, 0, a);
    d.forward(tokens, flat, 0, b);
    CHECK(same_bits(a, b));
}

TEST_CASE("random decoder: an fp16 pool and prefix cache reuse prefixes bitwise like an fp16 contiguous cache") {
    Decoder& d = random_decoder();
    const std::size_t vocab = d.config().vocab_size;
    const auto tokens = some_tokens(50, 12, vocab);
    MultiLayerKVCache<fp16> flat(d.cache_layers(), 1, 50);
    std::vector<float> cold(vocab), logits(vocab);
    d.forward(tokens, flat, 0, cold);

    PagedKVPool<fp16> pool(d.cache_layers(), 16);
    PrefixCache<fp16> prefixes(pool, pool.bytes_allocated());
    PagedSession<fp16> session(d, pool, &prefixes);
    const PagedPrefill first = session.start(concat(std::span(tokens).first(37), some_tokens(4, 13, vocab)), logits);
    session.finish(first.sequence);
    const PagedPrefill hit = session.start(tokens, logits);
    CHECK(hit.reused_tokens == 37);
    CHECK(hit.match == PrefixMatchKind::TokenExact);
    CHECK(same_bits(logits, cold));
}

TEST_CASE("random decoder: prefix hit, fork, branch and token-by-token logits are bitwise the cold ones") {
    Decoder& d = random_decoder();
    const auto tokens = some_tokens(45, 2, d.config().vocab_size);
    SECTION("block-aligned prefix (32 of 45, blocks of 16)") { check_every_path_is_bitwise_cold(d, tokens, 32, 16); }
    SECTION("token-exact prefix (27 of 45, blocks of 16)") { check_every_path_is_bitwise_cold(d, tokens, 27, 16); }
    SECTION("small blocks (27 of 45, blocks of 4)") { check_every_path_is_bitwise_cold(d, tokens, 27, 4); }
}

TEST_CASE("random decoder: bitwise across an attention segment boundary (1100 positions)") {
    // Attention splits contexts into 1024-position segments merged at the end; a hit that resumes past the
    // boundary, and queries on both sides of it, must still give the cold bits.
    Decoder& d = random_decoder();
    const std::size_t vocab = d.config().vocab_size;
    const auto tokens = some_tokens(1100, 21, vocab);
    const std::vector<float> cold = cold_logits(d, tokens);
    PagedKVPool<float> pool(d.cache_layers(), 2 * PagedKVPool<float>::blocks_for(1100) + 4);
    PrefixCache<float> prefixes(pool, pool.bytes_allocated());
    PagedSession<float> session(d, pool, &prefixes);
    std::vector<float> logits(vocab);
    const PagedPrefill before = session.start(std::span(tokens).first(1000), logits);  // ends before 1024
    const SequenceId fork = session.branch(before.sequence, 990);
    session.finish(before.sequence);
    const PagedPrefill hit = session.start(std::span(tokens).first(1050), logits);   // resumes at 1000
    CHECK(hit.reused_tokens == 1000);
    session.extend(hit.sequence, std::span(tokens).subspan(1050), logits);
    CHECK(same_bits(logits, cold));
    session.extend(fork, std::span(tokens).subspan(990), logits);
    CHECK(same_bits(logits, cold));
}

TEST_CASE("SmolLM2: prefix hit, fork, branch and token-by-token logits are bitwise the cold ones") {
    RealModel* m = real_model();
    if (!m) return;
    const std::vector<ChatMessage> chat{{"user", "Explain in two sentences why caching the keys and values of a "
                                                 "transformer makes generation faster."}};
    auto tokens = m->tokenizer.encode(apply_chat_template(m->tokenizer.chat_template(), chat, {.add_generation_prompt = true}), {.add_special = true, .parse_special = true});
    REQUIRE(tokens.size() > 40);
    // the shared part ends inside a block (token-exact) for the first, on a boundary for the second
    const std::size_t shared = tokens.size() - 11;
    SECTION("token-exact") { check_every_path_is_bitwise_cold(m->decoder, tokens, shared, 16); }
    SECTION("block-aligned") {  // token by token once is enough on the real model (it is the slow path)
        check_every_path_is_bitwise_cold(m->decoder, tokens, shared / 16 * 16, 16, false);
    }
}

TEST_CASE("SmolLM2: generation through the session reuses the prompt and gives the same tokens") {
    RealModel* m = real_model();
    if (!m) return;
    const std::vector<ChatMessage> chat{{"user", "What is the capital of France?"}};
    const auto prompt = m->tokenizer.encode(apply_chat_template(m->tokenizer.chat_template(), chat, {.add_generation_prompt = true}), {.add_special = true, .parse_special = true});
    GenerateOptions o;
    o.max_new_tokens = 12;
    const GenerationResult cold = generate_with_cache(m->decoder, m->tokenizer, prompt, o);

    PagedKVPool<float> pool(m->decoder.cache_layers(), 64);
    PrefixCache<float> prefixes(pool, 32 * pool.block_bytes());
    PagedSession<float> session(m->decoder, pool, &prefixes);
    const GenerationResult first = session.generate(m->tokenizer, prompt, o);
    CHECK(first.reused_prompt_tokens == 0);
    CHECK(first.tokens == cold.tokens);
    CHECK(first.text == cold.text);
    const GenerationResult second = session.generate(m->tokenizer, prompt, o);
    CHECK(second.reused_prompt_tokens == prompt.size() - 1);
    CHECK(second.tokens == cold.tokens);
    CHECK(pool.num_sequences() == 0);
    CHECK(prefixes.stats().hits == 1);
    // a follow-up turn in the same conversation reuses the first answer too
    std::vector<ChatMessage> turn2 = chat;
    turn2.push_back({"assistant", cold.text});
    turn2.push_back({"user", "And of Italy?"});
    const auto prompt2 =
        m->tokenizer.encode(apply_chat_template(m->tokenizer.chat_template(), turn2, {.add_generation_prompt = true}), {.add_special = true, .parse_special = true});
    const GenerationResult follow = session.generate(m->tokenizer, prompt2, o);
    CHECK(follow.reused_prompt_tokens >= prompt.size());
    CHECK(follow.tokens == generate_with_cache(m->decoder, m->tokenizer, prompt2, o).tokens);
}

TEST_CASE("random decoder: many conversations share one pool; each equals its cold run") {
    // Example-level use: a shared system prompt, four users, interleaved decode steps, one branch.
    Decoder& model = random_decoder();
    const std::size_t vocab = model.config().vocab_size;
    PagedKVPool<float> pool(model.cache_layers(), /*num_blocks=*/64);  // 16 positions per block
    PrefixCache<float> prefixes(pool, /*byte_budget=*/16 * pool.block_bytes());
    PagedSession<float> session(model, pool, &prefixes);

    const auto system = some_tokens(40, 10, vocab);
    std::vector<float> logits(vocab);
    {  // a first request leaves the system prompt in the prefix cache
        const PagedPrefill warm = session.start(concat(system, some_tokens(3, 11, vocab)), logits);
        session.finish(warm.sequence);
    }
    std::vector<SequenceId> users;
    for (std::uint64_t u = 0; u < 4; ++u) {
        const auto prompt = concat(system, some_tokens(6, 20 + u, vocab));
        const PagedPrefill p = session.start(prompt, logits);
        CHECK(p.reused_tokens == 40);  // the system prompt, token-exact (40 = 2.5 blocks)
        CHECK(p.computed_tokens == 6);
        CHECK(same_bits(logits, cold_logits(model, prompt)));
        users.push_back(p.sequence);
    }
    // the system prompt's first two blocks are stored once for all four
    CHECK(pool.ref_count(pool.block_table(users[0])[0]) == 5);  // 4 users + the prefix cache
    // greedy decode steps, round robin
    std::vector<std::vector<float>> last(users.size());
    for (std::size_t u = 0; u < users.size(); ++u) last[u] = cold_logits(model, session.tokens(users[u]));
    for (int step = 0; step < 3; ++step) {
        for (std::size_t u = 0; u < users.size(); ++u) {
            const std::int32_t next = argmax(last[u]);
            session.extend(users[u], std::span(&next, 1), logits);
            last[u] = cold_logits(model, session.tokens(users[u]));
            CHECK(same_bits(logits, last[u]));
        }
    }
    // user 2 branches from just after the system prompt and asks something else
    const SequenceId branch = session.branch(users[2], 40);
    const auto question = some_tokens(4, 99, vocab);
    session.extend(branch, question, logits);
    CHECK(same_bits(logits, cold_logits(model, concat(system, question))));
    for (const SequenceId u : users) session.finish(u);
    session.finish(branch);
    CHECK(pool.num_sequences() == 0);
    CHECK(prefixes.bytes() <= prefixes.byte_budget());
    CHECK(pool.used_blocks() == prefixes.cached_blocks());
}

TEST_CASE("random decoder: a full pool evicts unreferenced prefix entries, then fails cleanly") {
    Decoder& model = random_decoder();
    const std::size_t vocab = model.config().vocab_size;
    PagedKVPool<float> pool(model.cache_layers(), 6, 8);  // 48 positions in all
    PrefixCache<float> prefixes(pool, pool.bytes_allocated());
    PagedSession<float> session(model, pool, &prefixes);
    std::vector<float> logits(vocab);
    const PagedPrefill a = session.start(some_tokens(30, 1, vocab), logits);
    session.finish(a.sequence);
    CHECK(prefixes.cached_blocks() == 4);
    CHECK(pool.free_blocks() == 2);
    // 30 new tokens need 4 blocks: the cache gives back what it must
    const auto b_tokens = some_tokens(30, 2, vocab);
    const PagedPrefill b = session.start(b_tokens, logits);
    CHECK(same_bits(logits, cold_logits(model, b_tokens)));
    CHECK(prefixes.stats().blocks_evicted >= 2);
    // now b holds 4 blocks; 30 more tokens cannot fit even after evicting everything else
    const std::size_t used = pool.used_blocks();
    const std::size_t sequences = pool.num_sequences();
    try {
        session.start(some_tokens(30, 3, vocab), logits);
        FAIL("no exception");
    } catch (const CapacityError& e) {
        CHECK_THAT(e.what(), Catch::Contains("positions"));
    }
    CHECK(pool.num_sequences() == sequences);  // nothing half-started
    CHECK(pool.used_blocks() <= used);
    CHECK_THROWS_AS(session.extend(b.sequence, some_tokens(30, 4, vocab), logits), CapacityError);
    CHECK(session.tokens(b.sequence).size() == 30);  // b is unchanged and still usable
    CHECK(pool.seq_len(b.sequence) == 30);
    session.extend(b.sequence, some_tokens(2, 5, vocab), logits);
    CHECK(same_bits(logits, cold_logits(model, concat(b_tokens, some_tokens(2, 5, vocab)))));
}

TEST_CASE("PagedSession: errors") {
    Decoder& model = random_decoder();
    const std::size_t vocab = model.config().vocab_size;
    PagedKVPool<float> pool(model.cache_layers(), 16);
    PrefixCache<float> prefixes(pool, 1 << 24);
    std::vector<float> logits(vocab);

    PagedKVPool<float> wrong_layers(CacheShape{5, 8, 64}, 4);
    CHECK_THROWS_AS(PagedSession<float>(model, wrong_layers), ShapeError);
    PagedKVPool<float> wrong_heads(CacheShape{6, 4, 64}, 4);
    CHECK_THROWS_AS(PagedSession<float>(model, wrong_heads), ShapeError);
    PagedKVPool<float> other(model.cache_layers(), 4);
    PrefixCache<float> other_prefixes(other, 1 << 20);
    CHECK_THROWS_AS(PagedSession<float>(model, pool, &other_prefixes), ConfigError);

    PagedSession<float> session(model, pool, &prefixes);
    CHECK(&session.model() == &model);
    CHECK(&session.pool() == &pool);
    CHECK(session.prefix_cache() == &prefixes);
    CHECK_THROWS_AS(session.start({}, logits), ConfigError);
    const std::vector<std::int32_t> bad{1, 2, static_cast<std::int32_t>(vocab)};
    CHECK_THROWS_AS(session.start(bad, logits), IndexError);
    std::vector<float> short_logits(vocab - 1);
    CHECK_THROWS_AS(session.start(std::vector<std::int32_t>{1, 2}, short_logits), ShapeError);
    CHECK(pool.num_sequences() == 0);  // failed starts leave nothing behind
    CHECK(pool.used_blocks() == 0);

    const PagedPrefill p = session.start(std::vector<std::int32_t>{1, 2, 3}, logits);
    CHECK_THROWS_AS(session.extend(p.sequence, bad, logits), IndexError);
    CHECK(session.tokens(p.sequence).size() == 3);
    CHECK(pool.seq_len(p.sequence) == 3);
    CHECK_THROWS_AS(session.branch(p.sequence, 4), IndexError);
    CHECK(pool.num_sequences() == 1);
    auto view = session.cache(p.sequence);
    CHECK(view.seq_len() == 3);

    // a sequence of the pool that the session did not start is not the session's
    const SequenceId foreign = pool.create_sequence();
    CHECK_THROWS_AS(session.extend(foreign, bad, logits), IndexError);
    CHECK_THROWS_AS(session.tokens(foreign), IndexError);
    CHECK_THROWS_AS(session.finish(foreign), IndexError);
    session.finish(p.sequence, CachePrefix::no);  // not cached
    CHECK(prefixes.cached_blocks() == 0);
    CHECK_THROWS_AS(session.extend(p.sequence, bad, logits), IndexError);
    CHECK_THROWS_AS(session.tokens(p.sequence), IndexError);
    CHECK_THROWS_AS(session.branch(p.sequence), IndexError);
    CHECK_THROWS_AS(session.cache(p.sequence), IndexError);
    CHECK_THROWS_AS(session.finish(p.sequence), IndexError);

    // without a prefix cache: nothing is reused, finish just frees
    PagedSession<float> plain(model, pool);
    const PagedPrefill q = plain.start(std::vector<std::int32_t>{1, 2, 3}, logits);
    const PagedPrefill r = plain.start(std::vector<std::int32_t>{1, 2, 3, 4}, logits);
    CHECK(r.reused_tokens == 0);
    plain.finish(q.sequence);
    plain.finish(r.sequence);
    pool.free_sequence(foreign);
    CHECK(pool.used_blocks() == 0);
}

TEST_CASE("generate_with_step: errors pass through; the sequence is released") {
    RealModel* m = real_model();
    if (!m) return;
    GenerateOptions o;
    o.max_new_tokens = 4;
    CHECK_THROWS_AS(generate_with_step(m->decoder, m->tokenizer, std::vector<std::int32_t>{1}, o, {}), ConfigError);
    CHECK_THROWS_AS(generate_with_step(m->decoder, m->tokenizer, {}, o,
                                       [](std::span<const std::int32_t>, std::span<float>) {}),
                    ConfigError);
    PagedKVPool<float> pool(m->decoder.cache_layers(), 1, 4);  // 4 positions: too small for the prompt
    PagedSession<float> session(m->decoder, pool);
    const std::vector<std::int32_t> prompt{1, 2, 3, 4, 5, 6};
    CHECK_THROWS_AS(session.generate(m->tokenizer, prompt, o), CapacityError);
    CHECK(pool.num_sequences() == 0);
    PagedKVPool<float> exact(m->decoder.cache_layers(), 2, 4);  // the prompt fits, the third token does not
    PagedSession<float> tight(m->decoder, exact);
    o.stop_at_eos = false;
    CHECK_THROWS_AS(tight.generate(m->tokenizer, prompt, o), CapacityError);
    CHECK(exact.num_sequences() == 0);
    CHECK(exact.used_blocks() == 0);
}
