// Zero-copy views: xtensor_view (any element type) and eigen_view (float) alias the cache's memory,
// with the documented shapes and strides.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "cache_test_support.hpp"
#include "kvcache/cache/kv_cache.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/cache/views_eigen.hpp"
#include "kvcache/cache/views_xtensor.hpp"
#include "kvcache/testing/random.hpp"

#include <xtensor/xmath.hpp>
#include <xtensor/xtensor.hpp>

using namespace kvcache;
using cache_test::RowModel;

TEMPLATE_TEST_CASE("xtensor_view: {heads, seq, dim} over the cache's own memory", "[views]", float, fp16, bf16) {
    MultiLayerKVCache<TestType> cache(std::vector<LayerShape>{{2, 3}, {3, 5}}, 2, 9);
    RowModel m;
    cache_test::append_random(cache, m, 1, 1, 6, 1);
    RowModel other;
    cache_test::append_random(cache, other, 1, 0, 2, 2);  // a neighbouring row the view must not show

    for (KV kind : {KV::Keys, KV::Values}) {
        const auto view = xtensor_view(cache, 1, 1, kind);
        REQUIRE(view.dimension() == 3);
        CHECK(view.shape()[0] == 3);
        CHECK(view.shape()[1] == 6);
        CHECK(view.shape()[2] == 5);
        CHECK(view.strides()[0] == 9 * 5);  // a head is a whole capacity apart
        CHECK(view.strides()[1] == 5);
        CHECK(view.strides()[2] == 1);
        CHECK(view.data() == (kind == KV::Keys ? cache.key_data(1, 1) : cache.value_data(1, 1)));
        std::size_t bad = 0;
        for (std::size_t h = 0; h < 3; ++h) {
            const auto span = kind == KV::Keys ? cache.keys(1, 1, h) : cache.values(1, 1, h);
            for (std::size_t s = 0; s < 6; ++s)
                for (std::size_t d = 0; d < 5; ++d) {
                    const TestType& element = view(h, s, d);
                    bad += &element != &span[s * 5 + d];  // the very same element, not a copy
                    const auto& src = kind == KV::Keys ? m.keys : m.values;
                    bad += to_float(element) != src[(s * 3 + h) * 5 + d];
                }
        }
        CHECK(bad == 0);
    }
    const auto small = xtensor_view(cache, 0, 0, KV::Keys);  // an empty row: seq 0
    CHECK(small.shape()[0] == 2);
    CHECK(small.shape()[1] == 0);
    CHECK(small.shape()[2] == 3);
}

TEST_CASE("xtensor_view on a compile-time cache sees later writes to the same memory", "[views]") {
    KVCache<1, 2, 4, float> cache(1, 8);
    const std::vector<float> a(2 * 8, 1.0f), b(2 * 8, 2.0f);
    cache.append(0, 0, a, a, 2);
    const auto view = xtensor_view(cache, 0, 0, KV::Keys);
    CHECK(view(1, 1, 3) == 1.0f);
    cache.truncate(0);
    cache.append(0, 0, b, b, 2);  // same positions, new values: an alias shows them, a copy would not
    CHECK(view(1, 1, 3) == 2.0f);
    CHECK(view(0, 0, 0) == 2.0f);
}

TEMPLATE_TEST_CASE("eigen_view: one head as a row-major [seq x dim] map", "[views]", (KVCache<2, 3, 4, float>),
                   (MultiLayerKVCache<float>)) {
    auto make = [] {
        if constexpr (std::is_same_v<TestType, MultiLayerKVCache<float>>) return TestType(CacheShape{2, 3, 4}, 2, 7);
        else return TestType(2, 7);
    };
    TestType cache = make();
    RowModel m;
    cache_test::append_random(cache, m, 1, 1, 5, 3);
    for (KV kind : {KV::Keys, KV::Values}) {
        for (std::size_t h = 0; h < 3; ++h) {
            const HeadMap map = eigen_view(cache, 1, 1, h, kind);
            CHECK(map.rows() == 5);
            CHECK(map.cols() == 4);
            CHECK(map.outerStride() == 4);
            const auto span = kind == KV::Keys ? cache.keys(1, 1, h) : cache.values(1, 1, h);
            CHECK(map.data() == span.data());
            CHECK(map.data() == (kind == KV::Keys ? cache.key_data(1, 1) : cache.value_data(1, 1)) + h * 7 * 4);
            const auto& src = kind == KV::Keys ? m.keys : m.values;
            std::size_t bad = 0;
            for (Eigen::Index s = 0; s < 5; ++s)
                for (Eigen::Index d = 0; d < 4; ++d) bad += map(s, d) != src[(s * 3 + h) * 4 + d];
            CHECK(bad == 0);
        }
    }
    // a row of another layer is a different map
    CHECK(eigen_view(cache, 0, 1, 0, KV::Keys).rows() == 0);
    CHECK_THROWS_AS(eigen_view(cache, 1, 1, 3, KV::Keys), IndexError);
    CHECK_THROWS_AS(eigen_view(cache, 2, 0, 0, KV::Keys), IndexError);
    CHECK_THROWS_AS(eigen_view(cache, 0, 2, 0, KV::Keys), IndexError);
}

TEST_CASE("eigen_view supports Eigen arithmetic directly on cache memory", "[views]") {
    MultiLayerKVCache<float> cache(CacheShape{1, 1, 3}, 1, 4);
    const std::vector<float> k{1, 2, 3, 4, 5, 6}, v{1, 0, 0, 0, 1, 0};
    cache.append(0, 0, k, v, 2);
    const HeadMap keys = eigen_view(cache, 0, 0, 0, KV::Keys);
    Eigen::Vector3f q(1, 1, 1);
    const Eigen::Vector2f scores = keys * q;  // one q·k per position, as attention forms them
    CHECK(scores(0) == 6.0f);
    CHECK(scores(1) == 15.0f);
    CHECK(eigen_view(cache, 0, 0, 0, KV::Values).sum() == 2.0f);
}

TEST_CASE("xtensor_view works in xtensor expressions (evaluation and reduction follow the strides)", "[views]") {
    KVCache<1, 2, 3, float> cache(1, 10);  // 4 of 10 positions: the view is not contiguous
    const auto k = kvcache::testing::random_uniform(4 * 6, 8), v = kvcache::testing::random_uniform(4 * 6, 9);
    cache.append(0, 0, k, v, 4);
    const auto view = xtensor_view(cache, 0, 0, KV::Values);
    const xt::xtensor<float, 3> evaluated = view;
    const auto expected = export_bhsd(cache, 0, KV::Values);  // [1][2][4][3]
    REQUIRE(evaluated.size() == expected.size());
    CHECK(std::vector<float>(evaluated.begin(), evaluated.end()) == expected);
    double total = 0;
    for (float x : v) total += x;
    CHECK(xt::sum(view)() == Approx(total).epsilon(1e-5));
}
