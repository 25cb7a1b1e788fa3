// attention() (fast) against attention_reference() over every cache type, element type and head layout,
// hand-computed cases for the reference itself, and every error either function reports.
// (Bitwise determinism across batching, threads and chunking lives in attention_determinism_test.)
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kvcache/attention/attention.hpp"
#include "kvcache/attention/dense.hpp"
#include "kvcache/attention/reference.hpp"
#include "kvcache/cache/kv_cache.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/testing/catch_matchers.hpp"
#include "kvcache/testing/compare.hpp"
#include "kvcache/testing/random.hpp"

using namespace kvcache;
using kvcache::testing::compare_tensors;
using kvcache::testing::random_normal;
using kvcache::testing::TensorNear;

namespace {

constexpr double kTolerance = 1e-5;  // max |fast - reference| / max |reference|

/// Fills (layer, row) with n random positions, appended in uneven pieces as a model would.
template <class Cache>
void fill(Cache& cache, std::size_t layer, std::size_t row, std::size_t n, std::uint64_t seed) {
    const std::size_t width = cache.num_kv_heads(layer) * cache.head_dim(layer);
    const auto k = random_normal(n * width, seed), v = random_normal(n * width, seed + 1);
    for (std::size_t at = 0, piece = 1; at < n; at += piece, piece = piece * 2 + 1) {
        piece = std::min(piece, n - at);
        cache.append(layer, row, std::span<const float>(k).subspan(at * width, piece * width),
                     std::span<const float>(v).subspan(at * width, piece * width), piece);
    }
}

/// Relative error of attention against attention_reference for n_tokens queries of q_heads heads.
template <class Cache>
double fast_vs_reference(const Cache& cache, std::size_t layer, std::size_t row, std::size_t n_tokens,
                         std::size_t q_heads, const AttentionOptions& opts, std::uint64_t seed = 7) {
    const auto q = random_normal(n_tokens * q_heads * cache.head_dim(layer), seed);
    std::vector<float> fast(q.size(), NAN), ref(q.size(), NAN);
    attention(cache, layer, row, q, n_tokens, q_heads, fast, opts);
    attention_reference(cache, layer, row, q, n_tokens, q_heads, ref, opts);
    const auto diff = compare_tensors(fast, ref);
    if (diff.non_finite || diff.shape_mismatch) return std::numeric_limits<double>::infinity();
    return diff.relative_error();
}

}  // namespace

TEST_CASE("attention_reference: hand-computed softmax weights", "[attention]") {
    // two positions, one head of size 4 (default scale 1/2): q·k0 * 1/2 = ln 3, q·k1 = 0, so the weights are
    // 3/4 and 1/4 and the output is 3/4 v0 + 1/4 v1 = (2, 3, 4, 5)
    MultiLayerKVCache<float> cache(CacheShape{1, 1, 4}, 1, 4);
    const std::vector<float> k{1, 0, 0, 0, /**/ 0, 1, 0, 0};
    const std::vector<float> v{1, 2, 3, 4, /**/ 5, 6, 7, 8};
    cache.append(0, 0, k, v, 2);
    const float ln3 = std::log(3.0f);
    const std::vector<float> q{2 * ln3, 0, 0, 0};
    std::vector<float> ref(4), fast(4);

    attention_reference(cache, 0, 0, q, 1, 1, ref);
    attention(cache, 0, 0, q, 1, 1, fast);
    CHECK_THAT(ref, TensorNear(std::vector<float>{2, 3, 4, 5}, 1e-6));
    CHECK_THAT(fast, TensorNear(std::vector<float>{2, 3, 4, 5}, 1e-6));

    // an explicit scale replaces 1/sqrt(d): scale 1 doubles the score to ln 9 -> weights 9/10, 1/10
    attention_reference(cache, 0, 0, q, 1, 1, ref, {.scale = 1.0f});
    attention(cache, 0, 0, q, 1, 1, fast, {.scale = 1.0f});
    CHECK_THAT(ref, TensorNear(std::vector<float>{1.4f, 2.4f, 3.4f, 4.4f}, 1e-6));
    CHECK_THAT(fast, TensorNear(std::vector<float>{1.4f, 2.4f, 3.4f, 4.4f}, 1e-6));

    // causal prefill of both positions: query 0 sees only position 0, so its output is v0 exactly
    const std::vector<float> q2{2 * ln3, 0, 0, 0, /**/ 2 * ln3, 0, 0, 0};
    std::vector<float> ref2(8), fast2(8);
    attention_reference(cache, 0, 0, q2, 2, 1, ref2);
    attention(cache, 0, 0, q2, 2, 1, fast2);
    const std::vector<float> want2{1, 2, 3, 4, 2, 3, 4, 5};
    CHECK_THAT(ref2, TensorNear(want2, 1e-6));
    CHECK_THAT(fast2, TensorNear(want2, 1e-6));

    // window 1: each query sees only its own position
    attention_reference(cache, 0, 0, q2, 2, 1, ref2, {.window = 1});
    attention(cache, 0, 0, q2, 2, 1, fast2, {.window = 1});
    CHECK_THAT(ref2, TensorNear(std::vector<float>(v.begin(), v.end()), 1e-6));
    CHECK_THAT(fast2, TensorNear(std::vector<float>(v.begin(), v.end()), 1e-6));

    // cross (non-causal): both queries see both positions
    attention_reference(cache, 0, 0, q2, 2, 1, ref2, {.causal = false});
    attention(cache, 0, 0, q2, 2, 1, fast2, {.causal = false});
    CHECK_THAT(ref2, TensorNear(std::vector<float>{2, 3, 4, 5, 2, 3, 4, 5}, 1e-6));
    CHECK_THAT(fast2, TensorNear(std::vector<float>{2, 3, 4, 5, 2, 3, 4, 5}, 1e-6));
}

TEST_CASE("attention: GQA query head h reads kv head h / group", "[attention]") {
    // kv head j holds the constant value j+1 everywhere: query head h must output (h / group) + 1
    const std::size_t q_heads = 6, kv_heads = 3, d = 8, n = 5;
    MultiLayerKVCache<float> cache(CacheShape{1, kv_heads, d}, 1, n);
    std::vector<float> k = random_normal(n * kv_heads * d, 3), v(n * kv_heads * d);
    for (std::size_t p = 0; p < n; ++p)
        for (std::size_t j = 0; j < kv_heads; ++j)
            for (std::size_t i = 0; i < d; ++i) v[(p * kv_heads + j) * d + i] = static_cast<float>(j + 1);
    cache.append(0, 0, k, v, n);
    const auto q = random_normal(q_heads * d, 4);
    std::vector<float> ref(q.size()), fast(q.size()), want(q.size());
    for (std::size_t h = 0; h < q_heads; ++h)
        for (std::size_t i = 0; i < d; ++i) want[h * d + i] = static_cast<float>(h / 2 + 1);
    attention_reference(cache, 0, 0, q, 1, q_heads, ref);
    attention(cache, 0, 0, q, 1, q_heads, fast);
    CHECK_THAT(ref, TensorNear(want, 1e-6));
    CHECK_THAT(fast, TensorNear(want, 1e-6));
}

TEST_CASE("attention: fast equals reference for MHA, GQA, MQA, decode, prefill and window (fp32)", "[attention]") {
    SECTION("MHA 4/4, d 32") {
        MultiLayerKVCache<float> cache(CacheShape{1, 4, 32}, 1, 128);
        fill(cache, 0, 0, 50, 1);
        CHECK(fast_vs_reference(cache, 0, 0, 1, 4, {}) < kTolerance);   // decode
        CHECK(fast_vs_reference(cache, 0, 0, 7, 4, {}) < kTolerance);   // prefill of the last 7
        CHECK(fast_vs_reference(cache, 0, 0, 50, 4, {}) < kTolerance);  // the whole prompt at once
    }
    SECTION("GQA 9/3, d 64") {
        MultiLayerKVCache<float> cache(CacheShape{1, 3, 64}, 1, 256);
        fill(cache, 0, 0, 150, 2);
        CHECK(fast_vs_reference(cache, 0, 0, 1, 9, {}) < kTolerance);
        CHECK(fast_vs_reference(cache, 0, 0, 6, 9, {}) < kTolerance);
    }
    SECTION("MQA 8/1, d 64") {
        KVCache<1, 1, 64, float> cache(1, 300);
        fill(cache, 0, 0, 300, 3);
        CHECK(fast_vs_reference(cache, 0, 0, 1, 8, {}) < kTolerance);
        CHECK(fast_vs_reference(cache, 0, 0, 4, 8, {}) < kTolerance);
    }
    SECTION("sliding window") {
        MultiLayerKVCache<float> cache(CacheShape{1, 2, 16}, 1, 200);
        fill(cache, 0, 0, 200, 4);
        for (std::size_t window : {1u, 16u, 63u, 64u, 65u, 150u, 200u, 500u}) {
            INFO("window " << window);
            CHECK(fast_vs_reference(cache, 0, 0, 1, 4, {.window = window}) < kTolerance);
            CHECK(fast_vs_reference(cache, 0, 0, 20, 4, {.window = window}) < kTolerance);
        }
    }
    SECTION("cross-attention (causal=false), more queries than keys") {
        MultiLayerKVCache<float> cache(CacheShape{1, 2, 16}, 1, 40);
        fill(cache, 0, 0, 9, 5);
        CHECK(fast_vs_reference(cache, 0, 0, 12, 4, {.causal = false}) < kTolerance);
        CHECK(fast_vs_reference(cache, 0, 0, 1, 2, {.causal = false}) < kTolerance);
    }
    SECTION("explicit scale and single thread") {
        MultiLayerKVCache<float> cache(CacheShape{1, 2, 16}, 1, 100);
        fill(cache, 0, 0, 100, 6);
        CHECK(fast_vs_reference(cache, 0, 0, 3, 4, {.scale = 0.7f, .threads = 1}) < kTolerance);
        CHECK(fast_vs_reference(cache, 0, 0, 3, 4, {.scale = 0.0f, .threads = 2}) < kTolerance);
    }
}

TEST_CASE("attention: contexts across the 64-position tile and 1024-position segment boundaries", "[attention]") {
    const std::size_t len = GENERATE(1u, 2u, 63u, 64u, 65u, 127u, 128u, 1023u, 1024u, 1025u, 2049u, 3000u);
    KVCache<1, 2, 64, float> cache(1, 3000);
    fill(cache, 0, 0, len, len);
    INFO("context " << len);
    CHECK(fast_vs_reference(cache, 0, 0, 1, 4, {}) < kTolerance);
    CHECK(fast_vs_reference(cache, 0, 0, std::min<std::size_t>(len, 3), 4, {}) < kTolerance);
    CHECK(fast_vs_reference(cache, 0, 0, 1, 4, {.causal = false}) < kTolerance);
    if (len > 64) CHECK(fast_vs_reference(cache, 0, 0, 2, 4, {.window = 1000}) < kTolerance);
}

TEST_CASE("attention: odd head sizes", "[attention]") {
    const std::size_t d = GENERATE(1u, 7u, 9u, 40u, 65u, 128u);
    MultiLayerKVCache<float> cache(CacheShape{1, 2, d}, 1, 140);
    fill(cache, 0, 0, 140, d);
    INFO("head_dim " << d);
    CHECK(fast_vs_reference(cache, 0, 0, 1, 6, {}) < kTolerance);
    CHECK(fast_vs_reference(cache, 0, 0, 5, 2, {}) < kTolerance);
}

TEMPLATE_TEST_CASE("attention: fp16 and bf16 storage, both cache types, any layer and row", "[attention]", float, fp16, bf16) {
    // the reference reads the same stored values, so the tolerance stays the fp32 one
    SECTION("KVCache, layer 1 row 1 of 2x2") {
        KVCache<2, 2, 40, TestType> cache(2, 1100);
        fill(cache, 0, 0, 30, 1);
        fill(cache, 1, 0, 1100, 2);
        fill(cache, 0, 1, 5, 3);
        fill(cache, 1, 1, 1030, 4);
        CHECK(fast_vs_reference(cache, 1, 1, 1, 4, {}) < kTolerance);
        CHECK(fast_vs_reference(cache, 1, 1, 3, 2, {.window = 100}) < kTolerance);
        CHECK(fast_vs_reference(cache, 1, 0, 2, 6, {}) < kTolerance);
        CHECK(fast_vs_reference(cache, 0, 1, 5, 2, {}) < kTolerance);
    }
    SECTION("MultiLayerKVCache, per-layer shapes") {
        MultiLayerKVCache<TestType> cache(std::vector<LayerShape>{{1, 65}, {3, 24}}, 2, 70);
        fill(cache, 0, 1, 70, 5);
        fill(cache, 1, 0, 66, 6);
        CHECK(fast_vs_reference(cache, 0, 1, 1, 5, {}) < kTolerance);
        CHECK(fast_vs_reference(cache, 0, 1, 4, 1, {.causal = false}) < kTolerance);
        CHECK(fast_vs_reference(cache, 1, 0, 2, 9, {}) < kTolerance);
    }
}

TEST_CASE("attention: causal prefill gives each query what a decode at its position gives", "[attention]") {
    // independent of the reference: the causal mask as truncation. Prefilling n tokens must equal, for
    // token t, decoding one token over a cache cut to its position.
    const std::size_t heads = 2, d = 16, n = 70, q_heads = 4;
    MultiLayerKVCache<float> cache(CacheShape{1, heads, d}, 1, n);
    fill(cache, 0, 0, n, 11);
    const auto q = random_normal(n * q_heads * d, 12);
    std::vector<float> prefill(q.size());
    attention(cache, 0, 0, q, n, q_heads, prefill);
    std::size_t checked = 0;
    for (std::size_t t : {0u, 1u, 2u, 31u, 63u, 64u, 65u, 69u}) {
        auto cut = cache.copy();
        cut.truncate(t + 1);
        std::vector<float> one(q_heads * d);
        attention_reference(cut, 0, 0, std::span<const float>(q).subspan(t * q_heads * d, q_heads * d), 1, q_heads, one);
        const auto diff = compare_tensors(std::span<const float>(prefill).subspan(t * q_heads * d, q_heads * d), one);
        INFO("token " << t);
        CHECK(diff.relative_error() < kTolerance);
        ++checked;
    }
    CHECK(checked == 8);

    // and a window is the same as a cache holding only the window's positions
    const std::size_t window = 10;
    std::vector<float> windowed(q_heads * d);
    attention(cache, 0, 0, std::span<const float>(q).subspan(0, q_heads * d), 1, q_heads, windowed, {.window = window});
    MultiLayerKVCache<float> tail(CacheShape{1, heads, d}, 1, window);
    const std::size_t width = heads * d;
    std::vector<float> k(window * width), v(window * width);
    for (std::size_t p = 0; p < window; ++p)
        for (std::size_t j = 0; j < heads; ++j)
            for (std::size_t i = 0; i < d; ++i) {
                k[(p * heads + j) * d + i] = cache.keys(0, 0, j)[(n - window + p) * d + i];
                v[(p * heads + j) * d + i] = cache.values(0, 0, j)[(n - window + p) * d + i];
            }
    tail.append(0, 0, k, v, window);
    std::vector<float> from_tail(q_heads * d);
    attention_reference(tail, 0, 0, std::span<const float>(q).subspan(0, q_heads * d), 1, q_heads, from_tail);
    CHECK(compare_tensors(windowed, from_tail).relative_error() < kTolerance);
    std::vector<float> unwindowed(q_heads * d);
    attention(cache, 0, 0, std::span<const float>(q).subspan(0, q_heads * d), 1, q_heads, unwindowed);
    CHECK(compare_tensors(unwindowed, from_tail).relative_error() > 1e-3);  // the window did something
}

TEST_CASE("attention_dense and DenseKVView", "[attention]") {
    const std::size_t n = 130, kv_heads = 2, d = 24, q_heads = 6, n_q = 4;
    const auto k = random_normal(n * kv_heads * d, 21), v = random_normal(n * kv_heads * d, 22);
    const auto q = random_normal(n_q * q_heads * d, 23);
    const DenseKVView view(k, v, n, kv_heads, d);
    static_assert(KVCacheReadable<DenseKVView>);
    CHECK(view.num_layers() == 1);
    CHECK(view.batch_size() == 1);
    CHECK(view.num_kv_heads() == kv_heads);
    CHECK(view.head_dim() == d);
    CHECK(view.seq_len() == n);
    const auto chunk = view.chunks(0, 0, 1)[0];
    CHECK(chunk.keys == k.data() + d);  // zero-copy: head 1 of position 0, strided by a whole token
    CHECK(chunk.values == v.data() + d);
    CHECK(chunk.row_stride(d) == kv_heads * d);
    CHECK(chunk.length == n);

    // the same K/V in a real cache, read by the reference, is what the dense path must give
    MultiLayerKVCache<float> cache(CacheShape{1, kv_heads, d}, 1, n);
    cache.append(0, 0, k, v, n);
    for (const AttentionOptions& opts : {AttentionOptions{}, AttentionOptions{.window = 50}, AttentionOptions{.causal = false}}) {
        std::vector<float> dense(q.size()), ref_view(q.size()), ref_cache(q.size());
        attention_dense(q, n_q, q_heads, k, v, n, kv_heads, d, dense, opts);
        attention_reference(view, 0, 0, q, n_q, q_heads, ref_view, opts);
        attention_reference(cache, 0, 0, q, n_q, q_heads, ref_cache, opts);
        CHECK(compare_tensors(ref_view, ref_cache).max_abs_error == 0.0);
        CHECK(compare_tensors(dense, ref_cache).relative_error() < kTolerance);
    }

    CHECK_THROWS_AS(DenseKVView(k, v, n, 0, d), ConfigError);
    CHECK_THROWS_AS(DenseKVView(k, v, n, kv_heads, 0), ConfigError);
    CHECK_THROWS_AS(DenseKVView(k, v, n + 1, kv_heads, d), ShapeError);
    CHECK_THROWS_AS(DenseKVView(std::span<const float>(k).first(10), v, n, kv_heads, d), ShapeError);
    CHECK_THROWS_AS(view.chunks(0, 0, kv_heads), IndexError);
    std::vector<float> out(q.size());
    CHECK_THROWS_AS(attention_dense(q, n_q, 5, k, v, n, kv_heads, d, out), ConfigError);
}

TEST_CASE("attention: zero queries is a no-op", "[attention]") {
    MultiLayerKVCache<float> cache(CacheShape{1, 2, 8}, 1, 4);
    std::vector<float> none;
    CHECK_NOTHROW(attention(cache, 0, 0, none, 0, 2, none));  // even on an empty cache
    CHECK_NOTHROW(attention_reference(cache, 0, 0, none, 0, 2, none));
}

TEMPLATE_TEST_CASE("attention errors (fast and reference alike)", "[attention][errors]", float, fp16) {
    MultiLayerKVCache<TestType> cache(std::vector<LayerShape>{{3, 8}, {3, 8}}, 2, 16);
    fill(cache, 0, 0, 4, 1);
    const std::size_t d = 8;
    std::vector<float> q1(9 * d), out1(9 * d);  // one token, 9 query heads

    auto both = [&](auto&& check) {
        check([&](auto&&... args) { attention(cache, args...); });
        check([&](auto&&... args) { attention_reference(cache, args...); });
    };
    both([&](auto run) {
        CHECK_NOTHROW(run(0, 0, std::span<const float>(q1), 1, 9, std::span<float>(out1), AttentionOptions{}));
        // query heads not a positive multiple of kv heads
        std::vector<float> q4(4 * d), out4(4 * d), q0, out0;
        CHECK_THROWS_AS(run(0, 0, std::span<const float>(q4), 1, 4, std::span<float>(out4), AttentionOptions{}), ConfigError);
        CHECK_THROWS_AS(run(0, 0, std::span<const float>(q0), 1, 0, std::span<float>(out0), AttentionOptions{}), ConfigError);
        // wrong q / out sizes
        CHECK_THROWS_AS(run(0, 0, std::span<const float>(q1).first(9 * d - 1), 1, 9, std::span<float>(out1), AttentionOptions{}), ShapeError);
        CHECK_THROWS_AS(run(0, 0, std::span<const float>(q1), 1, 9, std::span<float>(out1).first(8), AttentionOptions{}), ShapeError);
        CHECK_THROWS_AS(run(0, 0, std::span<const float>(q1), 2, 9, std::span<float>(out1), AttentionOptions{}), ShapeError);
        // more causal queries than cached positions (but fine without causality)
        std::vector<float> q5(5 * 3 * d), out5(5 * 3 * d);
        CHECK_THROWS_AS(run(0, 0, std::span<const float>(q5), 5, 3, std::span<float>(out5), AttentionOptions{}), ShapeError);
        CHECK_NOTHROW(run(0, 0, std::span<const float>(q5), 5, 3, std::span<float>(out5), AttentionOptions{.causal = false}));
        // empty (layer, row): causal or not
        CHECK_THROWS_AS(run(1, 0, std::span<const float>(q1), 1, 9, std::span<float>(out1), AttentionOptions{}), ShapeError);
        CHECK_THROWS_AS(run(0, 1, std::span<const float>(q1), 1, 9, std::span<float>(out1), AttentionOptions{.causal = false}), ShapeError);
        // window needs causal
        CHECK_THROWS_AS(run(0, 0, std::span<const float>(q1), 1, 9, std::span<float>(out1), AttentionOptions{.causal = false, .window = 2}), ConfigError);
        // scale must be finite and >= 0
        for (float bad : {-1.0f, -0.0001f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
            INFO("scale " << bad);
            CHECK_THROWS_AS(run(0, 0, std::span<const float>(q1), 1, 9, std::span<float>(out1), AttentionOptions{.scale = bad}), ConfigError);
        }
        // layer / row out of range
        CHECK_THROWS_AS(run(2, 0, std::span<const float>(q1), 1, 9, std::span<float>(out1), AttentionOptions{}), IndexError);
        CHECK_THROWS_AS(run(0, 2, std::span<const float>(q1), 1, 9, std::span<float>(out1), AttentionOptions{}), IndexError);
    });
}
