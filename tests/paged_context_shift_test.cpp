// Context shift on a paged sequence: the same drop, move and re-rotation as on a contiguous cache (bit for
// bit), blocks shared with a fork never written, a model continuing from a shifted paged sequence exactly as
// from a shifted contiguous cache, and every misuse a typed error that changes nothing.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "kvcache/cache/context_shift.hpp"
#include "kvcache/cache/layout.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/model/context_shift.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/testing/random.hpp"

using namespace kvcache;
using kvcache::testing::random_normal;

namespace {

static_assert(ShiftableCache<PagedSequence<float>> && ShiftableCache<PagedSequence<q4_0h>>);

/// A stand-in for RoPE that every key value notices: adds delta (and the layer) to it.
void add_delta(std::size_t layer, std::span<float> keys, std::size_t, std::ptrdiff_t delta) {
    for (float& k : keys) k += static_cast<float>(delta) + static_cast<float>(layer);
}

template <class C>
std::vector<float> contents(const C& cache, std::size_t layers) {
    std::vector<float> all;
    for (std::size_t l = 0; l < layers; ++l) {
        for (const KV kv : {KV::Keys, KV::Values}) {
            const auto part = export_shd(cache, l, 0, kv);
            all.insert(all.end(), part.begin(), part.end());
        }
    }
    return all;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEMPLATE_TEST_CASE("a context shift on a paged sequence equals the shift on a contiguous cache, bit for bit",
                   "[context_shift][paged]", float, q8_0, q4_0h) {
    using T = TestType;
    constexpr std::size_t L = 2, H = 2, D = 64, N = 45;
    const auto k = random_normal(N * H * D, 61), v = random_normal(N * H * D, 62);
    for (const std::size_t block : {std::size_t(7), std::size_t(16)}) {
        for (const auto& [n_keep, n_discard] : {std::pair<std::size_t, std::size_t>{4, 13}, {0, 9}, {7, 7}, {5, 40}}) {
            INFO("block " << block << " n_keep " << n_keep << " n_discard " << n_discard);
            MultiLayerKVCache<T> flat(CacheShape{L, H, D}, 1, N);
            PagedKVPool<T> pool(CacheShape{L, H, D}, PagedKVPool<T>::blocks_for(N, block), block);
            auto seq = pool.sequence(pool.create_sequence());
            for (std::size_t l = 0; l < L; ++l) {
                flat.append(l, 0, k, v, N);
                seq.append(l, 0, k, v, N);
            }
            context_shift(flat, 0, n_keep, n_discard, add_delta);
            context_shift(seq, 0, n_keep, n_discard, add_delta);
            CHECK(seq.seq_len() == N - n_discard);
            CHECK(same_bits(contents(seq, L), contents(flat, L)));
            // the blocks past the shorter sequence went back to the pool
            CHECK(pool.used_blocks() == PagedKVPool<T>::blocks_for(N - n_discard, block));
        }
    }
}

TEST_CASE("a paged context shift copies blocks shared with a fork instead of writing them", "[context_shift][paged]") {
    constexpr std::size_t H = 2, D = 32, N = 30, block = 8;
    const auto k = random_normal(N * H * D, 63), v = random_normal(N * H * D, 64);
    PagedKVPool<float> pool(CacheShape{1, H, D}, 16, block);
    auto parent = pool.sequence(pool.create_sequence());
    parent.append(0, 0, k, v, N);
    const auto before = contents(parent, 1);
    auto child = pool.sequence(pool.fork(parent.id()));
    MultiLayerKVCache<float> flat(CacheShape{1, H, D}, 1, N);
    flat.append(0, 0, k, v, N);
    context_shift(child, 0, 3, 10, add_delta);
    context_shift(flat, 0, 3, 10, add_delta);
    CHECK(same_bits(contents(parent, 1), before));  // the parent's blocks are untouched
    CHECK(same_bits(contents(child, 1), contents(flat, 1)));
    // parent 4 blocks; the child's 20 positions in 3 fresh ones (its first block, shared and written, copied)
    CHECK(pool.used_blocks() == 4 + 3);
}

TEST_CASE("a model continues from a shifted paged sequence as from a shifted contiguous cache",
          "[context_shift][paged][model]") {
    DecoderConfig c = DecoderConfig::small_test_model();
    c.n_layers = 2;
    Decoder model(DecoderWeights::random(c, 78), 1);
    const std::size_t capacity = 40, n_keep = 4, n_discard = 17;
    std::vector<std::int32_t> tokens(capacity + 3);
    for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<std::int32_t>((i * 7 + 3) % c.vocab_size);
    auto flat = model.make_cache(capacity);
    PagedKVPool<float> pool(model.cache_layers(), PagedKVPool<float>::blocks_for(capacity, 16), 16);
    auto seq = pool.sequence(pool.create_sequence());
    std::vector<float> a(c.vocab_size), b(c.vocab_size);
    model.forward(std::span(tokens).first(capacity), flat, 0, a);
    model.forward(std::span(tokens).first(capacity), seq, 0, b);
    shift_context(model, flat, 0, n_keep, n_discard);
    shift_context(model, seq, 0, n_keep, n_discard);
    for (std::size_t t = capacity; t < tokens.size(); ++t) {
        model.forward(std::span(tokens).subspan(t, 1), flat, 0, a);
        model.forward(std::span(tokens).subspan(t, 1), seq, 0, b);
        CHECK(same_bits(a, b));
    }
}

TEST_CASE("paged context shift misuse is a typed error and changes nothing", "[context_shift][paged]") {
    constexpr std::size_t H = 1, D = 32, N = 32, block = 8;
    const auto kv = random_normal(N * H * D, 65);
    PagedKVPool<float> pool(CacheShape{2, H, D}, 4, block);  // exactly the sequence's blocks: no free block left
    auto seq = pool.sequence(pool.create_sequence());
    seq.append(0, 0, kv, kv, N);
    seq.append(1, 0, kv, kv, N);
    const auto before = contents(seq, 2);
    int calls = 0;
    const auto counting = [&](std::size_t, std::span<float>, std::size_t, std::ptrdiff_t) { ++calls; };
    CHECK_THROWS_AS(context_shift(seq, 0, 2, 0, counting), ConfigError);   // nothing to drop
    CHECK_THROWS_AS(context_shift(seq, 0, 4, 29, counting), ConfigError);  // past the sequence's length
    CHECK_THROWS_AS(context_shift(seq, 1, 0, 1, counting), IndexError);    // a sequence has one row
    CHECK_THROWS_AS(seq.transform_keys(0, 3, 33, [](std::size_t, std::span<float>, std::size_t) {}), IndexError);
    // a fork holds every block: rewriting the tail needs copies, and no block is free
    auto child = pool.sequence(pool.fork(seq.id()));
    CHECK_THROWS_AS(context_shift(child, 0, 4, 8, counting), CapacityError);
    CHECK(calls == 0);
    CHECK(same_bits(contents(seq, 2), before));
    CHECK(same_bits(contents(child, 2), before));
    CHECK(pool.free_blocks() == 0);
}
