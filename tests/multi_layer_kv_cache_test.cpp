// MultiLayerKVCache<T>: per-layer shapes, fixed and growing capacity, and every error, for float, fp16, bf16.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

#include "cache_test_support.hpp"
#include "kvcache/cache/concept.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"

using namespace kvcache;
using cache_test::RowModel;

static_assert(KVCacheLike<MultiLayerKVCache<float>>);
static_assert(KVCacheLike<MultiLayerKVCache<fp16>>);
static_assert(KVCacheLike<MultiLayerKVCache<bf16>>);
static_assert(ContiguousKVCache<MultiLayerKVCache<fp16>>);
static_assert(!std::is_copy_constructible_v<MultiLayerKVCache<float>>);
static_assert(std::is_nothrow_move_constructible_v<MultiLayerKVCache<float>>);

namespace {
// three layers that differ in kv-head count and head size
const std::vector<LayerShape> kShapes{{2, 4}, {1, 7}, {3, 2}};
}  // namespace

TEMPLATE_TEST_CASE("MultiLayerKVCache: construction and LayerShape validation", "[multi_layer]", float, fp16, bf16) {
    using Cache = MultiLayerKVCache<TestType>;
    CHECK_THROWS_AS(Cache(std::vector<LayerShape>{}, 1, 4), ConfigError);
    CHECK_THROWS_AS(Cache(kShapes, 0, 4), ConfigError);
    CHECK_THROWS_AS(Cache(kShapes, 1, 0), ConfigError);
    CHECK_THROWS_AS(Cache(std::vector<LayerShape>{{2, 4}, {0, 4}}, 1, 4), ConfigError);
    CHECK_THROWS_AS(Cache(std::vector<LayerShape>{{2, 4}, {2, 0}}, 1, 4), ConfigError);
    CHECK_THROWS_AS(Cache(CacheShape{0, 2, 4}, 1, 4), ConfigError);  // zero layers, uniform form
    CHECK_THROWS_AS(Cache(CacheShape{1, 2, 4}, 1, std::numeric_limits<std::size_t>::max() / 4), ConfigError);  // size wraps
    try {
        Cache(std::vector<LayerShape>{{2, 4}, {2, 4}, {5, 0}}, 1, 4);
        FAIL("no exception");
    } catch (const ConfigError& e) {
        CHECK_THAT(e.what(), Catch::Contains("layer 2"));
    }

    Cache cache(kShapes, 2, 5);
    CHECK(cache.num_layers() == 3);
    CHECK(cache.batch_size() == 2);
    CHECK(cache.capacity() == 5);
    CHECK(cache.growth() == Growth::Fixed);
    for (std::size_t l = 0; l < 3; ++l) {
        CHECK(cache.layer_shape(l) == kShapes[l]);
        CHECK(cache.num_kv_heads(l) == kShapes[l].kv_heads);
        CHECK(cache.head_dim(l) == kShapes[l].head_dim);
        // each layer is its own 64-byte aligned allocation
        CHECK(reinterpret_cast<std::uintptr_t>(cache.key_data(l, 0)) % 64 == 0);
    }
    CHECK_THROWS_AS(cache.layer_shape(3), IndexError);
    CHECK_THROWS_AS(cache.num_kv_heads(3), IndexError);
    CHECK_THROWS_AS(cache.head_dim(3), IndexError);
    const std::size_t widths = 8 + 7 + 6;
    CHECK(cache.bytes_allocated() == 2 * 2 * 5 * widths * sizeof(TestType));
    CHECK(Cache::bytes_for(kShapes, 2, 5) == cache.bytes_allocated());
    CHECK(Cache::bytes_for(kShapes, 3, 11) == 2 * 3 * 11 * widths * sizeof(TestType));
    CHECK(Cache::bytes_for({}, 3, 11) == 0);

    Cache uniform(CacheShape{4, 2, 8}, 1, 3, Growth::Grow);
    CHECK(uniform.num_layers() == 4);
    CHECK(uniform.layer_shape(3) == LayerShape{2, 8});
    CHECK(uniform.growth() == Growth::Grow);
    CHECK(LayerShape{3, 2}.token_width() == 6);
}

TEMPLATE_TEST_CASE("MultiLayerKVCache: per-layer shapes, append and read back", "[multi_layer]", float, fp16, bf16) {
    MultiLayerKVCache<TestType> cache(kShapes, 2, 8);
    RowModel m[3][2];
    const std::size_t n[3][2] = {{3, 0}, {5, 1}, {8, 2}};
    for (std::size_t l = 0; l < 3; ++l)
        for (std::size_t r = 0; r < 2; ++r) cache_test::append_random(cache, m[l][r], l, r, n[l][r], 7 * l + r);
    cache_test::append_random(cache, m[0][0], 0, 0, 2, 100);  // continue a row
    for (std::size_t l = 0; l < 3; ++l)
        for (std::size_t r = 0; r < 2; ++r) CHECK(cache_test::mismatches(cache, l, r, m[l][r]) == 0);
    CHECK(cache.seq_len(0, 0) == 5);
    CHECK(cache.seq_len(1) == 0);
    CHECK(cache.seq_len(2, 1) == 2);
    CHECK(cache.bytes_used() == ((5 + 0) * 8 + (5 + 1) * 7 + (8 + 2) * 6) * 2 * sizeof(TestType));
    // the layer blocks are [batch][head][capacity][dim] for K and again for V
    CHECK(cache.key_data(1, 1) == cache.key_data(1, 0) + 1 * 8 * 7);
    CHECK(cache.value_data(2, 0) == cache.key_data(2, 0) + 2 * 3 * 8 * 2);

    cache.truncate(4);
    for (auto& layer : m)
        for (auto& row : layer) row.truncate(4);
    cache.truncate_row(1, 1);
    for (auto& layer : m) layer[1].truncate(1);
    for (std::size_t l = 0; l < 3; ++l)
        for (std::size_t r = 0; r < 2; ++r) CHECK(cache_test::mismatches(cache, l, r, m[l][r]) == 0);
    CHECK(cache.seq_len(2, 0) == 4);
    CHECK(cache.seq_len(1, 1) == 1);
    cache.clear();
    CHECK(cache.bytes_used() == 0);
    CHECK(cache.seq_len(2, 0) == 0);
}

TEMPLATE_TEST_CASE("MultiLayerKVCache: Growth::Fixed refuses to overflow and writes nothing", "[multi_layer][errors]", float, fp16, bf16) {
    MultiLayerKVCache<TestType> cache(kShapes, 2, 4);
    RowModel m;
    cache_test::append_random(cache, m, 1, 0, 3, 1);
    const auto before = cache_test::block_bytes(cache, 1, 0);
    const std::vector<float> two(2 * 7, 1.0f), one(7, 1.0f);
    CHECK_THROWS_AS(cache.append(1, 0, two, two, 2), CapacityError);
    CHECK_THROWS_AS(cache.reserve(5), CapacityError);
    CHECK_NOTHROW(cache.reserve(4));  // within capacity: nothing to do
    CHECK_THROWS_AS(cache.append(1, 0, one, two, 1), ShapeError);
    CHECK_THROWS_AS(cache.append(1, 0, two, one, 1), ShapeError);
    CHECK_THROWS_AS(cache.append(0, 0, one, one, 1), ShapeError);  // layer 0 is 8 wide, not 7
    // n_tokens * width would wrap around to the spans' size: still a ShapeError, never a huge write
    const std::size_t wrapping = std::numeric_limits<std::size_t>::max() / 7 + 1;
    const std::size_t wrapped = wrapping * 7;  // unsigned wrap-around is defined
    const std::vector<float> small(wrapped, 1.0f);
    if (wrapped < 1024) CHECK_THROWS_AS(cache.append(1, 0, small, small, wrapping), ShapeError);
    CHECK_THROWS_AS(cache.append(3, 0, one, one, 1), IndexError);
    CHECK_THROWS_AS(cache.append(1, 2, one, one, 1), IndexError);
    CHECK(cache.capacity() == 4);
    CHECK(cache.seq_len(1, 0) == 3);
    CHECK(cache_test::block_bytes(cache, 1, 0) == before);
    CHECK(cache_test::mismatches(cache, 1, 0, m) == 0);
}

TEMPLATE_TEST_CASE("MultiLayerKVCache: Growth::Grow doubles capacity and keeps every row's contents", "[multi_layer]", float, fp16, bf16) {
    MultiLayerKVCache<TestType> cache(kShapes, 2, 3, Growth::Grow);
    RowModel m[3][2];
    for (std::size_t l = 0; l < 3; ++l)
        for (std::size_t r = 0; r < 2; ++r) cache_test::append_random(cache, m[l][r], l, r, 1 + (l + r) % 3, 10 * l + r);
    CHECK(cache.capacity() == 3);
    const std::size_t allocated = cache.bytes_allocated();

    cache_test::append_random(cache, m[1][1], 1, 1, 1, 50);  // 3 + 1 > 3: doubles to 6
    CHECK(cache.capacity() == 6);
    CHECK(cache.bytes_allocated() == 2 * allocated);
    for (std::size_t l = 0; l < 3; ++l)
        for (std::size_t r = 0; r < 2; ++r) CHECK(cache_test::mismatches(cache, l, r, m[l][r]) == 0);

    cache_test::append_random(cache, m[0][0], 0, 0, 20, 51);  // 1 + 20 > 2 * 6: grows to exactly what is needed
    CHECK(cache.capacity() == 21);
    for (std::size_t l = 0; l < 3; ++l)
        for (std::size_t r = 0; r < 2; ++r) CHECK(cache_test::mismatches(cache, l, r, m[l][r]) == 0);

    cache.reserve(100);
    CHECK(cache.capacity() == 100);
    CHECK(cache.seq_len(0, 0) == 21);
    const TestType* data = cache.key_data(0, 0);
    cache.reserve(50);  // smaller: no change, no reallocation
    CHECK(cache.capacity() == 100);
    CHECK(cache.key_data(0, 0) == data);
    for (int i = 0; i < 79; ++i) cache_test::append_random(cache, m[0][0], 0, 0, 1, 200 + i);
    CHECK(cache.key_data(0, 0) == data);  // reserved: 100 positions need no reallocation
    CHECK(cache.capacity() == 100);
    for (std::size_t l = 0; l < 3; ++l)
        for (std::size_t r = 0; r < 2; ++r) CHECK(cache_test::mismatches(cache, l, r, m[l][r]) == 0);
    CHECK(Growth::Grow != Growth::Fixed);
}

TEMPLATE_TEST_CASE("MultiLayerKVCache: a growth that cannot happen leaves the cache intact", "[multi_layer][errors]", float, fp16, bf16) {
    MultiLayerKVCache<TestType> cache(kShapes, 1, 2, Growth::Grow);
    RowModel m;
    cache_test::append_random(cache, m, 2, 0, 2, 5);
    // a size that overflows size_t: refused before any memory is touched
    CHECK_THROWS_AS(cache.reserve(std::numeric_limits<std::size_t>::max() / 2), ConfigError);
    CHECK(cache.capacity() == 2);
    CHECK(cache.bytes_allocated() == MultiLayerKVCache<TestType>::bytes_for(kShapes, 1, 2));
    CHECK(cache_test::mismatches(cache, 2, 0, m) == 0);
    cache_test::append_random(cache, m, 2, 0, 1, 6);  // and it still grows normally afterwards
    CHECK(cache.capacity() == 4);
    CHECK(cache_test::mismatches(cache, 2, 0, m) == 0);
}

TEMPLATE_TEST_CASE("MultiLayerKVCache: copy() is deep, keeps growth policy; moves keep the memory", "[multi_layer]", float, fp16, bf16) {
    MultiLayerKVCache<TestType> cache(kShapes, 2, 2, Growth::Grow);
    RowModel a, b;
    cache_test::append_random(cache, a, 1, 1, 2, 1);
    cache_test::append_random(cache, b, 2, 0, 1, 2);
    auto copy = cache.copy();
    CHECK(copy.growth() == Growth::Grow);
    CHECK(copy.capacity() == 2);
    CHECK(copy.key_data(1, 1) != cache.key_data(1, 1));
    CHECK(cache_test::mismatches(copy, 1, 1, a) == 0);
    CHECK(cache_test::mismatches(copy, 2, 0, b) == 0);
    RowModel a_copy = a;
    cache_test::append_random(copy, a_copy, 1, 1, 3, 3);  // the copy grows; the original does not
    CHECK(copy.capacity() == 5);
    CHECK(cache.capacity() == 2);
    CHECK(cache_test::mismatches(cache, 1, 1, a) == 0);
    CHECK(cache_test::mismatches(copy, 1, 1, a_copy) == 0);

    const TestType* data = cache.key_data(2, 0);
    MultiLayerKVCache<TestType> moved(std::move(cache));
    CHECK(moved.key_data(2, 0) == data);
    CHECK(cache_test::mismatches(moved, 2, 0, b) == 0);
    MultiLayerKVCache<TestType> assigned(CacheShape{1, 1, 1}, 1, 1);
    assigned = std::move(moved);
    CHECK(assigned.num_layers() == 3);
    CHECK(assigned.key_data(2, 0) == data);
}

TEST_CASE("MultiLayerKVCache: accessors reject out-of-range indices", "[multi_layer][errors]") {
    const MultiLayerKVCache<float> cache(kShapes, 2, 4);
    CHECK_THROWS_AS(cache.seq_len(3, 0), IndexError);
    CHECK_THROWS_AS(cache.seq_len(0, 2), IndexError);
    CHECK_THROWS_AS(cache.keys(1, 0, 1), IndexError);  // layer 1 has one kv head
    CHECK_NOTHROW(cache.keys(2, 0, 2));                 // layer 2 has three
    CHECK_THROWS_AS(cache.values(2, 0, 3), IndexError);
    CHECK_THROWS_AS(cache.chunks(0, 0, 2), IndexError);
    CHECK_THROWS_AS(cache.key_data(3, 0), IndexError);
    CHECK_THROWS_AS(cache.value_data(0, 2), IndexError);
}

TEST_CASE("MultiLayerKVCache: allocation failure is a CapacityError", "[multi_layer][errors]") {
#if defined(__SANITIZE_ADDRESS__)
    SUCCEED("skipped under AddressSanitizer, which aborts on impossible allocations");
#else
    CHECK_THROWS_AS(MultiLayerKVCache<float>(CacheShape{1, 4, 64}, 1, std::size_t{1} << 40), CapacityError);
    MultiLayerKVCache<float> grow(CacheShape{1, 4, 64}, 1, 2, Growth::Grow);
    RowModel m;
    cache_test::append_random(grow, m, 0, 0, 2, 1);
    CHECK_THROWS_AS(grow.reserve(std::size_t{1} << 40), CapacityError);
    CHECK(cache_test::mismatches(grow, 0, 0, m) == 0);
#endif
}
