// The test kit checks attention layers: the library's own, and custom ones written here — one correct,
// one with the classic off-by-one in its cache use, which the kit must catch.
#include <catch2/catch.hpp>

#include <cmath>
#include <span>
#include <vector>

#include "kvcache/kvcache.hpp"
#include "kvcache/testing/catch_matchers.hpp"

using namespace kvcache;
using namespace kvcache::testing;

namespace {

/// A hand-written single-layer attention as a user might write it: own loops over cache.keys()/values().
/// With `off_by_one` it stops one position short (forgets the token it just appended).
class HandWrittenLayer {
public:
    HandWrittenLayer(std::size_t heads, std::size_t head_dim, bool off_by_one)
        : projections_(heads, heads, head_dim, 42), heads_(heads), head_dim_(head_dim), off_by_one_(off_by_one) {}

    std::size_t model_dim() const { return heads_ * head_dim_; }

    void forward(std::span<const float> x, std::size_t n, std::span<float> out) const {
        projections_.forward(x, n, out);  // the no-cache path is the library's, known to be right
    }

    template <class Cache>
    void forward_cached(std::span<const float> x, std::size_t n, Cache& cache, std::span<float> out) const {
        std::vector<float> q, k, v;
        projections_.project(x, n, q, k, v);
        cache.append(0, 0, k, v, n);
        const std::size_t total = cache.seq_len(0, 0);
        std::vector<float> attended(n * model_dim());
        for (std::size_t t = 0; t < n; ++t) {
            const std::size_t pos = total - n + t;
            const std::size_t visible = off_by_one_ ? pos : pos + 1;  // the bug: excludes the newest position
            for (std::size_t h = 0; h < heads_; ++h) {
                const auto keys = cache.keys(0, 0, h);
                const auto values = cache.values(0, 0, h);
                const float* qh = q.data() + (t * heads_ + h) * head_dim_;
                std::vector<double> w(std::max<std::size_t>(visible, 1), 0.0);
                double max_score = -1e300, total_w = 0.0;
                for (std::size_t j = 0; j < visible; ++j) {
                    double s = 0.0;
                    for (std::size_t d = 0; d < head_dim_; ++d) s += qh[d] * keys[j * head_dim_ + d];
                    w[j] = s / std::sqrt(double(head_dim_));
                    max_score = std::max(max_score, w[j]);
                }
                for (std::size_t j = 0; j < visible; ++j) total_w += (w[j] = std::exp(w[j] - max_score));
                float* o = attended.data() + (t * heads_ + h) * head_dim_;
                for (std::size_t d = 0; d < head_dim_; ++d) {
                    double acc = 0.0;
                    for (std::size_t j = 0; j < visible; ++j) acc += w[j] * values[j * head_dim_ + d];
                    o[d] = visible ? float(acc / total_w) : 0.0f;
                }
            }
        }
        projections_.output(attended, n, out);
    }

private:
    ReferenceAttentionLayer projections_;  // the weights and projections; the attention is our own
    std::size_t heads_, head_dim_;
    bool off_by_one_;
};

}  // namespace

TEST_CASE("the library's attention passes the cache-consistency check", "[testkit]") {
    const auto step = GENERATE(1u, 3u, 7u);
    SECTION("MHA, float, compile-time cache") {
        ReferenceAttentionLayer layer(4, 4, 16, 7);
        auto report = check_cache_consistency(layer, [] { return KVCache<1, 4, 16, float>(1, 64); },
                                              {.seq_len = 40, .step = step, .seed = 3});
        INFO(report.summary());
        CHECK(report.passed());
        CHECK(report.max_abs_error.size() == 40);
    }
    SECTION("GQA 9/3, fp16 storage, run-time cache, sliding window") {
        ReferenceAttentionLayer layer(9, 3, 64, 11, AttentionOptions{.window = 8});
        auto report = check_cache_consistency(layer, [] { return MultiLayerKVCache<fp16>(CacheShape{1, 3, 64}, 1, 8, Growth::Grow); },
                                              {.seq_len = 30, .step = step, .seed = 5, .tolerance = 1e-5});
        // fp16 storage rounds K/V in the cached path only, so compare with fp16-sized tolerance
        INFO(report.summary());
        CHECK(report.worst_error <= 2e-3 * report.reference_scale);
    }
}

TEST_CASE("a correct hand-written layer passes, an off-by-one layer is caught at position 0", "[testkit]") {
    auto make_cache = [] { return MultiLayerKVCache<float>(CacheShape{1, 2, 8}, 1, 64); };
    HandWrittenLayer good(2, 8, false);
    const auto ok = check_cache_consistency(good, make_cache, {.seq_len = 20});
    INFO(ok.summary());
    CHECK(ok.passed());

    HandWrittenLayer bad(2, 8, true);
    const auto caught = check_cache_consistency(bad, make_cache, {.seq_len = 20});
    INFO(caught.summary());
    CHECK_FALSE(caught.passed());
    CHECK(caught.first_failing_position() == 0);
    // every position is wrong, not just the first: the newest token is missing from each step
    for (double err : caught.max_abs_error) CHECK(err > 1e-3 * caught.reference_scale);
    CHECK(caught.summary().find("INCONSISTENT") != std::string::npos);
}

TEST_CASE("check_cache_consistency rejects empty runs", "[testkit][errors]") {
    ReferenceAttentionLayer layer(2, 2, 4, 1);
    auto make_cache = [] { return MultiLayerKVCache<float>(CacheShape{1, 2, 4}, 1, 8); };
    CHECK_THROWS_AS(check_cache_consistency(layer, make_cache, {.seq_len = 0}), ConfigError);
    CHECK_THROWS_AS(check_cache_consistency(layer, make_cache, {.seq_len = 4, .step = 0}), ConfigError);
}

TEST_CASE("random tensors are reproducible and shaped", "[testkit]") {
    CHECK(random_normal(16, 9) == random_normal(16, 9));
    CHECK(random_normal(16, 9) != random_normal(16, 10));
    const auto u = random_uniform(1000, 3, -2.0f, 5.0f);
    for (float x : u) {
        CHECK(x >= -2.0f);
        CHECK(x < 5.0f);
    }
    const auto n = random_normal(20000, 4, 2.0f);
    double mean = 0, var = 0;
    for (float x : n) mean += x;
    mean /= n.size();
    for (float x : n) var += (x - mean) * (x - mean);
    var /= n.size();
    CHECK(std::abs(mean) < 0.05);
    CHECK(std::abs(std::sqrt(var) - 2.0) < 0.05);
}

TEST_CASE("TensorNear matcher accepts within tolerance and rejects outside, shapes included", "[testkit]") {
    const std::vector<float> expected{1.0f, -2.0f, 4.0f};
    CHECK_THAT((std::vector<float>{1.0f, -2.0f, 4.00001f}), TensorNear(expected, 1e-5));
    CHECK_THAT((std::vector<float>{1.0f, -2.0f, 4.001f}), !TensorNear(expected, 1e-5));
    CHECK_THAT((std::vector<float>{1.0f, -2.0f}), !TensorNear(expected, 1.0));
    CHECK_THAT((std::vector<float>{1.0f, NAN, 4.0f}), !TensorNear(expected, 1.0));
    CHECK_THAT((std::vector<float>{1.5f, -2.0f, 4.0f}), TensorNear(expected, 0.0, 0.5));
    const auto d = compare_tensors(std::vector<float>{0.0f, 3.0f}, std::vector<float>{0.0f, 2.0f});
    CHECK(d.worst_index == 1);
    CHECK(d.max_abs_error == Approx(1.0));
    CHECK(d.relative_error() == Approx(0.5));
}
