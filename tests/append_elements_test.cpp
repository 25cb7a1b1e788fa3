// append_elements on the contiguous caches: rows already in the storage type, copied bit for bit; the same
// result, capacity rules and errors as append.
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <vector>

#include "cache_test_support.hpp"
#include "kvcache/cache/kv_cache.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"

using namespace kvcache;

namespace {

template <class T>
std::vector<T> to_storage(const std::vector<float>& x) {
    std::vector<T> out(x.size());
    convert_from_float(x.data(), out.data(), x.size());
    return out;
}

/// Appends the same random tokens to `a` with append (floats) and to `b` with append_elements (T), and
/// returns whether both caches then hold the same bytes in every block.
template <class Cache>
void append_both(Cache& a, Cache& b, std::size_t layer, std::size_t row, std::size_t n, std::uint64_t seed) {
    using T = typename Cache::element_type;
    const std::size_t width = a.num_kv_heads(layer) * a.head_dim(layer);
    const auto k = testing::random_uniform(n * width, seed, -2.0f, 2.0f);
    const auto v = testing::random_uniform(n * width, seed + 1, -2.0f, 2.0f);
    a.append(layer, row, k, v, n);
    const auto ks = to_storage<T>(k), vs = to_storage<T>(v);
    b.append_elements(layer, row, ks.data(), vs.data(), n);
}

template <class Cache>
bool same_blocks(const Cache& a, const Cache& b) {
    for (std::size_t l = 0; l < a.num_layers(); ++l) {
        for (std::size_t r = 0; r < a.batch_size(); ++r) {
            if (a.seq_len(l, r) != b.seq_len(l, r)) return false;
            if (cache_test::block_bytes(a, l, r) != cache_test::block_bytes(b, l, r)) return false;
        }
    }
    return true;
}

}  // namespace

TEMPLATE_TEST_CASE("append_elements equals append of the same values, KVCache", "[append_elements]", float, fp16, bf16) {
    using Cache = KVCache<2, 3, 5, TestType>;
    Cache a(2, 9), b(2, 9);
    append_both(a, b, 0, 1, 4, 1);
    append_both(a, b, 1, 1, 4, 2);
    append_both(a, b, 0, 1, 5, 3);  // after existing positions, up to capacity
    append_both(a, b, 1, 0, 1, 4);
    CHECK(b.seq_len(0, 1) == 9);
    CHECK(same_blocks(a, b));

    // full: CapacityError, nothing written
    const auto before = cache_test::block_bytes(b, 0, 1);
    std::vector<TestType> one(15);
    CHECK_THROWS_WITH(b.append_elements(0, 1, one.data(), one.data(), 1),
                      "KVCache layer 0 row 1: appending 1 tokens to 9 exceeds capacity 9");
    CHECK(cache_test::block_bytes(b, 0, 1) == before);
    CHECK(b.seq_len(0, 1) == 9);
}

TEMPLATE_TEST_CASE("append_elements equals append, MultiLayerKVCache fixed and growing", "[append_elements]", float,
                   fp16, bf16) {
    const std::vector<LayerShape> shapes{{2, 4}, {1, 16}, {4, 2}};
    SECTION("fixed") {
        MultiLayerKVCache<TestType> a(shapes, 2, 6), b(shapes, 2, 6);
        for (std::size_t l = 0; l < shapes.size(); ++l) append_both(a, b, l, l % 2, 3 + l, 10 + l);
        CHECK(same_blocks(a, b));
        std::vector<TestType> rows(7 * 2 * 4);
        CHECK_THROWS_AS(b.append_elements(0, 0, rows.data(), rows.data(), 4), CapacityError);  // 3 + 4 > 6
        CHECK(same_blocks(a, b));
    }
    SECTION("growing: append_elements grows like append") {
        MultiLayerKVCache<TestType> a(shapes, 2, 2, Growth::Grow), b(shapes, 2, 2, Growth::Grow);
        append_both(a, b, 0, 1, 2, 20);
        append_both(a, b, 0, 1, 3, 21);  // grows to max(5, 4)
        append_both(a, b, 2, 0, 1, 22);
        CHECK(b.capacity() == a.capacity());
        CHECK(b.capacity() >= 5);
        CHECK(same_blocks(a, b));
    }
}

TEST_CASE("append_elements keeps every bit, NaN payloads included", "[append_elements]") {
    KVCache<1, 1, 4, fp16> cache(1, 2);
    const std::vector<fp16> k{fp16::from_bits(0x7c01), fp16::from_bits(0xfe00), fp16::from_bits(0x8000),
                              fp16::from_bits(0x0001)};
    const std::vector<fp16> v{fp16::from_bits(0x7bff), fp16::from_bits(0x7c00), fp16::from_bits(0x03ff),
                              fp16::from_bits(0xffff)};
    cache.append_elements(0, 0, k.data(), v.data(), 1);
    for (std::size_t i = 0; i < 4; ++i) {
        CHECK(cache.keys(0, 0, 0)[i].bits == k[i].bits);
        CHECK(cache.values(0, 0, 0)[i].bits == v[i].bits);
    }
}

TEST_CASE("append_elements errors write nothing", "[append_elements]") {
    KVCache<2, 1, 4> cache(2, 4);
    MultiLayerKVCache<float> multi(CacheShape{2, 1, 4}, 2, 4, Growth::Grow);
    std::vector<float> rows(8, 1.0f);
    CHECK_THROWS_AS(cache.append_elements(2, 0, rows.data(), rows.data(), 1), IndexError);
    CHECK_THROWS_AS(cache.append_elements(0, 2, rows.data(), rows.data(), 1), IndexError);
    CHECK_THROWS_AS(cache.append_elements(0, 0, nullptr, rows.data(), 1), ShapeError);
    CHECK_THROWS_AS(multi.append_elements(0, 0, rows.data(), nullptr, 1), ShapeError);
    // a count no 32-bit length can hold is refused before any memory is touched (even by a growing cache)
    const std::size_t huge = std::size_t{std::numeric_limits<std::uint32_t>::max()} + 1;
    CHECK_THROWS_AS(cache.append_elements(0, 0, rows.data(), rows.data(), huge), CapacityError);
    CHECK_THROWS_AS(multi.append_elements(0, 0, rows.data(), rows.data(), huge), CapacityError);
    // zero tokens: nothing happens, null pointers allowed
    cache.append_elements(0, 0, nullptr, nullptr, 0);
    CHECK(cache.seq_len(0, 0) == 0);
    CHECK(multi.capacity() == 4);
    CHECK(cache.bytes_used() == 0);
}
