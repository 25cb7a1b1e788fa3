// PrefixCache: longest-prefix matching (block-aligned and token-exact), insertion, partial blocks that
// grow, LRU eviction under a byte budget that never frees a block a live sequence holds, statistics, errors.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <numeric>
#include <span>
#include <vector>

#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/cache/prefix_cache.hpp"
#include "kvcache/testing/random.hpp"

using namespace kvcache;

namespace {

constexpr std::size_t kBlock = 4;
const std::vector<LayerShape> kShapes{{1, 4}, {2, 2}};

std::vector<std::int32_t> range_tokens(std::int32_t first, std::size_t n) {
    std::vector<std::int32_t> t(n);
    std::iota(t.begin(), t.end(), first);
    return t;
}

/// K and V of a token at a position: a pure function of (token, position), as a causal model's first
/// layer would give, so sequences with the same tokens hold the same values and tests can check contents.
float value_of(std::int32_t token, std::size_t pos, std::size_t layer, std::size_t i, bool key) {
    return static_cast<float>(token) * 1000.0f + static_cast<float>(pos) + 0.25f * static_cast<float>(layer) +
           0.01f * static_cast<float>(i) + (key ? 0.0f : 0.5f);
}

/// Appends tokens to every layer of a sequence, each at its next position.
void feed(PagedKVPool<float>& pool, SequenceId id, std::span<const std::int32_t> tokens) {
    auto seq = pool.sequence(id);
    for (std::size_t l = 0; l < pool.num_layers(); ++l) {
        const std::size_t width = pool.layer_shape(l).token_width();
        const std::size_t at = seq.seq_len(l, 0);
        std::vector<float> k(tokens.size() * width), v(tokens.size() * width);
        for (std::size_t t = 0; t < tokens.size(); ++t) {
            for (std::size_t i = 0; i < width; ++i) {
                k[t * width + i] = value_of(tokens[t], at + t, l, i, true);
                v[t * width + i] = value_of(tokens[t], at + t, l, i, false);
            }
        }
        seq.append(l, 0, k, v, tokens.size());
    }
}

/// Whether a sequence holds exactly the K/V of `tokens` (read through its chunks).
bool holds(PagedKVPool<float>& pool, SequenceId id, std::span<const std::int32_t> tokens) {
    auto seq = pool.sequence(id);
    for (std::size_t l = 0; l < pool.num_layers(); ++l) {
        if (seq.seq_len(l, 0) != tokens.size()) return false;
        const std::size_t heads = pool.num_kv_heads(l), d = pool.head_dim(l);
        for (std::size_t h = 0; h < heads; ++h) {
            for (const auto& c : seq.chunks(l, 0, h)) {
                for (std::size_t i = 0; i < c.length; ++i) {
                    const std::size_t p = c.start + i;
                    for (std::size_t k = 0; k < d; ++k) {
                        if (c.keys[i * d + k] != value_of(tokens[p], p, l, h * d + k, true)) return false;
                        if (c.values[i * d + k] != value_of(tokens[p], p, l, h * d + k, false)) return false;
                    }
                }
            }
        }
    }
    return true;
}

/// A sequence holding `tokens`, inserted into the cache and freed (as a finished request would be).
void cache_request(PagedKVPool<float>& pool, PrefixCache<float>& cache, std::span<const std::int32_t> tokens) {
    const SequenceId id = pool.create_sequence();
    feed(pool, id, tokens);
    cache.insert(tokens, id);
    pool.free_sequence(id);
}

/// A sequence made from a match of `tokens`, the rest fed: what a request with a prefix hit does.
SequenceId start_from_match(PagedKVPool<float>& pool, PrefixCache<float>& cache, std::span<const std::int32_t> tokens,
                            PrefixMatch* out = nullptr) {
    const PrefixMatch m = cache.match(tokens);
    const SequenceId id = pool.create_sequence(m.blocks, m.tokens);
    feed(pool, id, tokens.subspan(m.tokens));
    if (out) *out = m;
    return id;
}

}  // namespace

TEST_CASE("PrefixCache: an empty cache misses; a cached sequence matches block-aligned and token-exact") {
    PagedKVPool<float> pool(kShapes, 32, kBlock);
    PrefixCache<float> cache(pool, 1 << 20);
    CHECK(&cache.pool() == &pool);
    const auto a = range_tokens(100, 10);  // blocks [100..103] [104..107] [108 109]
    PrefixMatch m = cache.match(a);
    CHECK(m.tokens == 0);
    CHECK(m.blocks.empty());
    CHECK(m.kind == PrefixMatchKind::None);
    CHECK_FALSE(m.block_aligned());

    cache_request(pool, cache, a);
    CHECK(cache.cached_blocks() == 3);
    CHECK(cache.bytes() == 3 * pool.block_bytes());
    CHECK(pool.used_blocks() == 3);  // the cache keeps them after the sequence is gone
    CHECK(pool.num_sequences() == 0);

    // the same tokens: everything (the partial block included)
    m = cache.match(a);
    CHECK(m.tokens == 10);
    CHECK(m.blocks.size() == 3);
    CHECK(m.kind == PrefixMatchKind::TokenExact);
    // a longer prompt with the same start
    auto longer = a;
    longer.push_back(7);
    longer.push_back(8);
    CHECK(cache.match(longer).tokens == 10);
    // block-aligned: the first 8 tokens, then something else
    auto other = range_tokens(100, 8);
    other.push_back(5);
    m = cache.match(other);
    CHECK(m.tokens == 8);
    CHECK(m.blocks.size() == 2);
    CHECK(m.kind == PrefixMatchKind::BlockAligned);
    CHECK(m.block_aligned());
    // token-exact inside a full block: 100..105 then a different token
    auto diverge = range_tokens(100, 6);
    diverge.push_back(-1);
    m = cache.match(diverge);
    CHECK(m.tokens == 6);
    CHECK(m.blocks.size() == 2);
    CHECK(m.kind == PrefixMatchKind::TokenExact);
    // shorter than one block
    m = cache.match(range_tokens(100, 3));
    CHECK(m.tokens == 3);
    CHECK(m.blocks.size() == 1);
    // a different first token
    CHECK(cache.match(range_tokens(5, 10)).tokens == 0);
    CHECK(cache.match({}).tokens == 0);
}

TEST_CASE("PrefixCache: a sequence made from a match holds the right K/V, and its appends leave the cache intact") {
    PagedKVPool<float> pool(kShapes, 32, kBlock);
    PrefixCache<float> cache(pool, 1 << 20);
    const auto a = range_tokens(100, 10);
    cache_request(pool, cache, a);

    // token-exact inside block 1: the shared block is copied on the first append
    auto b = range_tokens(100, 6);
    for (std::int32_t t : {900, 901, 902, 903, 904}) b.push_back(t);
    PrefixMatch m;
    const SequenceId sb = start_from_match(pool, cache, b, &m);
    CHECK(m.tokens == 6);
    CHECK(holds(pool, sb, b));
    // the cache still serves the original tokens with the original values
    const SequenceId sa = start_from_match(pool, cache, a, &m);
    CHECK(m.tokens == 10);
    CHECK(holds(pool, sa, a));
    // and a partial block matched whole, then extended
    auto c = a;
    c.push_back(555);
    const SequenceId sc = start_from_match(pool, cache, c, &m);
    CHECK(m.tokens == 10);
    CHECK(holds(pool, sc, c));
    CHECK(holds(pool, sa, a));
    const SequenceId sa2 = start_from_match(pool, cache, a);
    CHECK(holds(pool, sa2, a));
}

TEST_CASE("PrefixCache: insert reuses cached blocks, grows partial blocks and branches the tree") {
    PagedKVPool<float> pool(kShapes, 64, kBlock);
    PrefixCache<float> cache(pool, 1 << 20);
    const auto a = range_tokens(100, 6);  // [100..103] [104 105]
    cache_request(pool, cache, a);
    CHECK(cache.cached_blocks() == 2);
    CHECK(cache.stats().blocks_inserted == 2);

    // the same tokens again: nothing new
    cache_request(pool, cache, a);
    CHECK(cache.cached_blocks() == 2);
    CHECK(cache.stats().blocks_inserted == 2);
    CHECK(pool.used_blocks() == 2);  // the duplicate sequence's blocks went back to the pool
    // a prefix of what is cached (shorter partial block): nothing new
    const SequenceId s = pool.create_sequence();
    feed(pool, s, range_tokens(100, 5));
    CHECK(cache.insert(range_tokens(100, 5), s) == 0);
    pool.free_sequence(s);
    CHECK(cache.cached_blocks() == 2);

    // the partial block grows: [104 105] is replaced by [104 105 106], the old block goes back
    const auto longer = range_tokens(100, 7);
    cache_request(pool, cache, longer);
    CHECK(cache.cached_blocks() == 2);
    CHECK(pool.used_blocks() == 2);
    PrefixMatch m = cache.match(longer);
    CHECK(m.tokens == 7);
    const SequenceId check = pool.create_sequence(m.blocks, m.tokens);
    CHECK(holds(pool, check, longer));
    pool.free_sequence(check);
    // ... to a full block, with a child after it
    const auto full = range_tokens(100, 10);
    cache_request(pool, cache, full);
    CHECK(cache.cached_blocks() == 3);
    CHECK(cache.match(full).tokens == 10);

    // another branch after the first block
    auto branch = range_tokens(100, 4);
    for (std::int32_t t : {7, 8, 9, 10, 11}) branch.push_back(t);
    cache_request(pool, cache, branch);
    CHECK(cache.cached_blocks() == 5);
    m = cache.match(branch);
    CHECK(m.tokens == 9);
    const SequenceId sb = pool.create_sequence(m.blocks, m.tokens);
    CHECK(holds(pool, sb, branch));
    pool.free_sequence(sb);
    CHECK(cache.match(full).tokens == 10);  // the first branch is still there

    // insert only part of a sequence's tokens
    const SequenceId part = pool.create_sequence();
    const auto long_tokens = range_tokens(2000, 12);
    feed(pool, part, long_tokens);
    CHECK(cache.insert(std::span(long_tokens).first(8), part) == 2);
    pool.free_sequence(part);
    CHECK(cache.match(long_tokens).tokens == 8);
    CHECK(cache.insert({}, pool.create_sequence()) == 0);
}

TEST_CASE("PrefixCache: insert errors") {
    PagedKVPool<float> pool(kShapes, 8, kBlock);
    PrefixCache<float> cache(pool, 1 << 20);
    const SequenceId s = pool.create_sequence();
    feed(pool, s, range_tokens(1, 5));
    try {
        cache.insert(range_tokens(1, 6), s);  // more tokens than the sequence holds
        FAIL("no exception");
    } catch (const ShapeError& e) {
        CHECK_THAT(e.what(), Catch::Contains("6 tokens") && Catch::Contains("5 positions"));
    }
    // a layer that lags behind counts: only complete positions may be cached
    const std::vector<float> k(4);
    pool.sequence(s).append(0, 0, k, k, 1);
    CHECK_THROWS_AS(cache.insert(range_tokens(1, 6), s), ShapeError);
    CHECK(cache.cached_blocks() == 0);
    pool.free_sequence(s);
    CHECK_THROWS_AS(cache.insert(range_tokens(1, 1), s), IndexError);  // a freed sequence
    CHECK(cache.cached_blocks() == 0);
}

TEST_CASE("PrefixCache: LRU eviction under the byte budget never frees a block a live sequence holds") {
    PagedKVPool<float> pool(kShapes, 64, kBlock);
    const std::size_t block = pool.block_bytes();
    PrefixCache<float> cache(pool, 4 * block);
    CHECK(cache.byte_budget() == 4 * block);

    const auto a = range_tokens(100, 8), b = range_tokens(200, 8), c = range_tokens(300, 8);
    cache_request(pool, cache, a);
    cache_request(pool, cache, b);  // 4 blocks: at the budget
    CHECK(cache.cached_blocks() == 4);
    CHECK(cache.stats().blocks_evicted == 0);
    cache.match(a);  // a is now more recent than b
    cache_request(pool, cache, c);  // over budget: b (least recently used) goes, leaf first then its parent
    CHECK(cache.cached_blocks() == 4);
    CHECK(cache.stats().blocks_evicted == 2);
    CHECK(cache.match(a).tokens == 8);
    CHECK(cache.match(b).tokens == 0);
    CHECK(cache.match(c).tokens == 8);
    CHECK(pool.used_blocks() == 4);

    // a live sequence holding a's blocks: they cannot be evicted, even far over budget
    const SequenceId live = start_from_match(pool, cache, a);
    CHECK(holds(pool, live, a));
    cache.set_byte_budget(0);
    CHECK(cache.byte_budget() == 0);
    CHECK(cache.cached_blocks() == 2);  // c's went; a's stay (referenced)
    CHECK(cache.match(a).tokens == 8);
    CHECK(cache.match(c).tokens == 0);
    CHECK(holds(pool, live, a));
    // a parent whose child is referenced is not a leaf; a referenced leaf keeps its parent too
    auto a_branch = range_tokens(100, 4);
    a_branch.push_back(77);
    const SequenceId live2 = start_from_match(pool, cache, a_branch);  // shares a's first block only
    pool.free_sequence(live);
    cache.trim();
    CHECK(cache.cached_blocks() == 1);  // a's second block went; the first is held by live2
    CHECK(holds(pool, live2, a_branch));
    pool.free_sequence(live2);
    cache.trim();
    CHECK(cache.cached_blocks() == 0);
    CHECK(pool.used_blocks() == 0);
    CHECK(cache.stats().blocks_evicted == 6);
}

TEST_CASE("PrefixCache: evict_for frees pool blocks on demand, least recently used first") {
    PagedKVPool<float> pool(kShapes, 6, kBlock);
    PrefixCache<float> cache(pool, 1 << 20);
    cache_request(pool, cache, range_tokens(100, 8));
    cache_request(pool, cache, range_tokens(200, 8));
    cache_request(pool, cache, range_tokens(300, 8));
    CHECK(pool.free_blocks() == 0);
    cache.match(range_tokens(100, 8));
    const SequenceId held = start_from_match(pool, cache, range_tokens(300, 8));
    CHECK(cache.evict_for(0) == 0);
    CHECK(cache.evict_for(1) == 1);  // 200's leaf
    CHECK(cache.match(range_tokens(200, 8)).tokens == 4);
    CHECK(cache.evict_for(3) == 3);  // 100's two (older), then 200's first (touched by that match)
    CHECK(cache.evict_for(5) == 0);  // only 300's remain, and a live sequence holds them
    CHECK(cache.cached_blocks() == 2);
    CHECK(holds(pool, held, range_tokens(300, 8)));
}

TEST_CASE("PrefixCache: statistics count requests and tokens; clear and destruction release blocks") {
    PagedKVPool<float> pool(kShapes, 16, kBlock);
    {
        PrefixCache<float> cache(pool, 1 << 20);
        cache.match(range_tokens(100, 10));  // miss
        cache_request(pool, cache, range_tokens(100, 10));
        cache.match(range_tokens(100, 10));  // 10 of 10
        cache.match(range_tokens(100, 6));   // 6 of 6
        auto mixed = range_tokens(100, 5);
        mixed.push_back(1);
        cache.match(mixed);                   // 5 of 6
        cache.match(range_tokens(1, 3));      // miss, 3 tokens
        const PrefixCacheStats& s = cache.stats();
        CHECK(s.requests == 5);
        CHECK(s.hits == 3);
        CHECK(s.misses == 2);
        CHECK(s.tokens_requested == 10 + 10 + 6 + 6 + 3);
        CHECK(s.tokens_matched == 10 + 6 + 5);
        CHECK(s.tokens_missed() == 35 - 21);
        CHECK(s.token_hit_rate() == Approx(21.0 / 35.0));
        CHECK(s.blocks_inserted == 3);
        cache.reset_stats();
        CHECK(cache.stats().requests == 0);
        CHECK(cache.stats().token_hit_rate() == 0.0);

        const SequenceId live = start_from_match(pool, cache, range_tokens(100, 10));
        cache.clear();
        CHECK(cache.cached_blocks() == 0);
        CHECK(cache.match(range_tokens(100, 10)).tokens == 0);
        CHECK(holds(pool, live, range_tokens(100, 10)));  // the sequence keeps its blocks
        pool.free_sequence(live);
        CHECK(pool.used_blocks() == 0);
        cache_request(pool, cache, range_tokens(100, 10));
        CHECK(pool.used_blocks() == 3);
    }
    CHECK(pool.used_blocks() == 0);  // the destructor released them
}

TEST_CASE("PrefixCache: randomised requests against a model of the longest common prefix") {
    // Many short requests over a small alphabet, so prefixes collide; every match must equal the longest
    // common prefix with some inserted sequence (capped to what is still cached) and hold the right K/V.
    PagedKVPool<float> pool(kShapes, 700, kBlock);
    PrefixCache<float> cache(pool, 1 << 30);  // no eviction: the model can be exact
    std::vector<std::vector<std::int32_t>> inserted;
    std::mt19937_64 rng(99);
    for (int r = 0; r < 150; ++r) {
        std::vector<std::int32_t> t(1 + rng() % 14);
        for (auto& x : t) x = static_cast<std::int32_t>(rng() % 3);
        std::size_t expected = 0;
        for (const auto& prev : inserted) {
            std::size_t i = 0;
            while (i < t.size() && i < prev.size() && t[i] == prev[i]) ++i;
            expected = std::max(expected, i);
        }
        PrefixMatch m;
        const SequenceId id = start_from_match(pool, cache, t, &m);
        INFO("request " << r);
        REQUIRE(m.tokens == expected);
        REQUIRE(holds(pool, id, t));
        cache.insert(t, id);
        pool.free_sequence(id);
        inserted.push_back(t);
    }
}
