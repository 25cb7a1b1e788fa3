// CrossAttentionCache (written once per source, read every step) and EncoderDecoderCache.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "cache_test_support.hpp"
#include "kvcache/attention/attention.hpp"
#include "kvcache/attention/reference.hpp"
#include "kvcache/cache/concept.hpp"
#include "kvcache/cache/cross_attention_cache.hpp"
#include "kvcache/testing/compare.hpp"
#include "kvcache/testing/random.hpp"

using namespace kvcache;
using cache_test::RowModel;

static_assert(KVCacheReadable<CrossAttentionCache<float>>);
static_assert(KVCacheReadable<CrossAttentionCache<bf16>>);
static_assert(!KVCacheLike<CrossAttentionCache<float>>);  // written with write(), never appended to

namespace {

/// Writes n random source positions to (layer, row) and records them.
template <class T>
void write_random(CrossAttentionCache<T>& cache, RowModel& model, std::size_t layer, std::size_t row, std::size_t n,
                  std::uint64_t seed) {
    const std::size_t width = cache.num_kv_heads(layer) * cache.head_dim(layer);
    const auto k = testing::random_uniform(n * width, seed), v = testing::random_uniform(n * width, seed + 1);
    cache.write(layer, row, k, v, n);
    model.width = width;
    const auto ks = cache_test::stored<T>(k), vs = cache_test::stored<T>(v);
    model.keys.insert(model.keys.end(), ks.begin(), ks.end());
    model.values.insert(model.values.end(), vs.begin(), vs.end());
}

/// keys()/values()/chunks() of a cross cache against the model (it offers no key_data).
template <class T>
std::size_t mismatches(const CrossAttentionCache<T>& cache, std::size_t layer, std::size_t row, const RowModel& m) {
    const std::size_t heads = cache.num_kv_heads(layer), d = cache.head_dim(layer), n = m.length();
    if (cache.seq_len(layer, row) != n) return 1000000;
    std::size_t bad = 0;
    for (std::size_t h = 0; h < heads; ++h) {
        const auto ks = cache.keys(layer, row, h), vs = cache.values(layer, row, h);
        bad += ks.size() != n * d || vs.size() != n * d;
        for (const auto& chunk : cache.chunks(layer, row, h)) bad += chunk.keys != ks.data() || chunk.length != n;
        for (std::size_t p = 0; p < n && ks.size() == n * d; ++p)
            for (std::size_t i = 0; i < d; ++i) {
                bad += to_float(ks[p * d + i]) != m.keys[(p * heads + h) * d + i];
                bad += to_float(vs[p * d + i]) != m.values[(p * heads + h) * d + i];
            }
    }
    return bad;
}

}  // namespace

TEMPLATE_TEST_CASE("CrossAttentionCache: write once, read back, second write is an error", "[cross]", float, fp16, bf16) {
    CrossAttentionCache<TestType> cache(std::vector<LayerShape>{{2, 4}, {1, 6}}, 2, 10);
    CHECK(cache.num_layers() == 2);
    CHECK(cache.batch_size() == 2);
    CHECK(cache.capacity() == 10);
    CHECK(cache.num_kv_heads(1) == 1);
    CHECK(cache.head_dim(1) == 6);
    CHECK(cache.bytes_allocated() == 2 * 2 * 10 * (8 + 6) * sizeof(TestType));
    CHECK_FALSE(cache.is_written(0, 0));
    CHECK_FALSE(cache.is_complete(0));

    RowModel m00, m10, m01;
    write_random(cache, m00, 0, 0, 7, 1);
    CHECK(cache.is_written(0, 0));
    CHECK_FALSE(cache.is_written(1, 0));
    CHECK_FALSE(cache.is_written(0, 1));
    CHECK_FALSE(cache.is_complete(0));  // layer 1 still missing
    write_random(cache, m10, 1, 0, 7, 2);
    CHECK(cache.is_complete(0));
    CHECK_FALSE(cache.is_complete(1));
    write_random(cache, m01, 0, 1, 10, 3);  // a full-length source in another row
    CHECK(mismatches(cache, 0, 0, m00) == 0);
    CHECK(mismatches(cache, 1, 0, m10) == 0);
    CHECK(mismatches(cache, 0, 1, m01) == 0);
    CHECK(cache.bytes_used() == ((7 + 10) * 8 + 7 * 6) * 2 * sizeof(TestType));

    const std::vector<float> one_token(8, 0.5f);
    CHECK_THROWS_AS(cache.write(0, 0, one_token, one_token, 1), Error);
    try {
        cache.write(0, 0, one_token, one_token, 1);
        FAIL("no exception");
    } catch (const Error& e) {
        CHECK_THAT(e.what(), Catch::Contains("already written"));
    }
    CHECK(mismatches(cache, 0, 0, m00) == 0);  // the refused write changed nothing

    cache.reset();
    CHECK_FALSE(cache.is_written(0, 0));
    CHECK_FALSE(cache.is_complete(0));
    CHECK(cache.seq_len(0, 1) == 0);
    CHECK(cache.bytes_used() == 0);
    RowModel again;
    write_random(cache, again, 0, 0, 3, 9);  // writable again after reset
    CHECK(mismatches(cache, 0, 0, again) == 0);
}

TEST_CASE("CrossAttentionCache: errors leave the slot unwritten", "[cross][errors]") {
    CrossAttentionCache<float> cache(CacheShape{2, 2, 4}, 1, 5);
    const std::vector<float> six(6 * 8, 1.0f), two(2 * 8, 1.0f), one(8, 1.0f);
    CHECK_THROWS_AS(cache.write(0, 0, six, six, 6), CapacityError);  // longer than max_source_len
    CHECK_FALSE(cache.is_written(0, 0));
    CHECK_THROWS_AS(cache.write(0, 0, two, one, 2), ShapeError);
    CHECK_FALSE(cache.is_written(0, 0));
    CHECK_THROWS_AS(cache.write(2, 0, one, one, 1), IndexError);
    CHECK_THROWS_AS(cache.write(0, 1, one, one, 1), IndexError);
    CHECK_THROWS_AS(cache.is_written(0, 1), IndexError);
    CHECK_THROWS_AS(cache.is_complete(1), IndexError);
    CHECK_THROWS_AS(cache.keys(0, 0, 2), IndexError);
    CHECK_THROWS_AS(CrossAttentionCache<float>(CacheShape{2, 2, 4}, 1, 0), ConfigError);
    CHECK_THROWS_AS(CrossAttentionCache<float>(CacheShape{2, 0, 4}, 1, 5), ConfigError);
    CHECK_NOTHROW(cache.write(0, 0, two, two, 2));  // the failures did not block a correct write
    CHECK(cache.seq_len(0, 0) == 2);
}

TEMPLATE_TEST_CASE("CrossAttentionCache: attention reads it with causal=false", "[cross]", float, fp16, bf16) {
    const std::size_t heads = 2, d = 8, n_src = 13, q_heads = 4, n_q = 3;
    CrossAttentionCache<TestType> cache(CacheShape{1, heads, d}, 1, 20);
    const auto k = testing::random_normal(n_src * heads * d, 1), v = testing::random_normal(n_src * heads * d, 2);
    cache.write(0, 0, k, v, n_src);
    const auto q = testing::random_normal(n_q * q_heads * d, 3);

    // hand-rolled softmax over every source position, from the values the cache stores
    const auto ks = cache_test::stored<TestType>(k), vs = cache_test::stored<TestType>(v);
    std::vector<float> expected(n_q * q_heads * d);
    for (std::size_t t = 0; t < n_q; ++t)
        for (std::size_t h = 0; h < q_heads; ++h) {
            const std::size_t kvh = h / (q_heads / heads);
            std::vector<double> w(n_src);
            double max_w = -1e300, total = 0;
            for (std::size_t p = 0; p < n_src; ++p) {
                double dot = 0;
                for (std::size_t i = 0; i < d; ++i) dot += double(q[(t * q_heads + h) * d + i]) * ks[(p * heads + kvh) * d + i];
                w[p] = dot / std::sqrt(double(d));
                max_w = std::max(max_w, w[p]);
            }
            for (auto& x : w) total += (x = std::exp(x - max_w));
            for (std::size_t i = 0; i < d; ++i) {
                double acc = 0;
                for (std::size_t p = 0; p < n_src; ++p) acc += w[p] / total * vs[(p * heads + kvh) * d + i];
                expected[(t * q_heads + h) * d + i] = static_cast<float>(acc);
            }
        }

    std::vector<float> fast(expected.size()), ref(expected.size());
    const AttentionOptions cross{.causal = false};
    attention(cache, 0, 0, q, n_q, q_heads, fast, cross);
    attention_reference(cache, 0, 0, q, n_q, q_heads, ref, cross);
    CHECK(testing::compare_tensors(ref, expected).relative_error() < 1e-6);
    CHECK(testing::compare_tensors(fast, expected).relative_error() < 1e-5);
    // causal reading would hide positions from early queries: the result must differ
    std::vector<float> causal(expected.size());
    attention(cache, 0, 0, q, n_q, q_heads, causal);
    CHECK(testing::compare_tensors(causal, expected).relative_error() > 1e-3);
}

TEMPLATE_TEST_CASE("EncoderDecoderCache: copy() is deep for both halves; bytes add up", "[cross]", float, fp16, bf16) {
    EncoderDecoderCache<TestType> cache{MultiLayerKVCache<TestType>(CacheShape{2, 2, 4}, 1, 4, Growth::Grow),
                                        CrossAttentionCache<TestType>(CacheShape{2, 2, 4}, 1, 6)};
    RowModel self0, cross0, cross1;
    cache_test::append_random(cache.self, self0, 0, 0, 3, 1);
    write_random(cache.cross, cross0, 0, 0, 6, 2);
    write_random(cache.cross, cross1, 1, 0, 5, 3);
    CHECK(cache.bytes_used() == cache.self.bytes_used() + cache.cross.bytes_used());
    CHECK(cache.bytes_used() == (3 + 6 + 5) * 2 * 8 * sizeof(TestType));
    CHECK(cache.bytes_allocated() == (2 * 4 + 2 * 6) * 2 * 8 * sizeof(TestType));

    auto copy = cache.copy();
    CHECK(copy.self.growth() == Growth::Grow);
    CHECK(cache_test::mismatches(copy.self, 0, 0, self0) == 0);
    CHECK(mismatches(copy.cross, 0, 0, cross0) == 0);
    CHECK(mismatches(copy.cross, 1, 0, cross1) == 0);
    CHECK(copy.cross.is_complete(0));
    CHECK(copy.cross.keys(0, 0, 0).data() != cache.cross.keys(0, 0, 0).data());

    RowModel self_copy = self0;
    cache_test::append_random(copy.self, self_copy, 0, 0, 2, 4);  // grows the copy only
    copy.cross.reset();
    CHECK(cache_test::mismatches(cache.self, 0, 0, self0) == 0);
    CHECK(cache.self.capacity() == 4);
    CHECK(cache.cross.is_complete(0));
    CHECK(mismatches(cache.cross, 1, 0, cross1) == 0);
    CHECK(cache_test::mismatches(copy.self, 0, 0, self_copy) == 0);
    CHECK_FALSE(copy.cross.is_written(1, 0));
}
