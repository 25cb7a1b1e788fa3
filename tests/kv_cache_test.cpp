// KVCache<Layers, Heads, HeadDim, T>: every operation and every error, for float, fp16 and bf16 storage.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

#include "cache_test_support.hpp"
#include "kvcache/cache/concept.hpp"
#include "kvcache/cache/kv_cache.hpp"

using namespace kvcache;
using cache_test::RowModel;

namespace {
constexpr std::size_t L = 2, H = 3, D = 5, W = H * D;
}

static_assert(KVCacheLike<KVCache<L, H, D, float>>);
static_assert(KVCacheLike<KVCache<L, H, D, fp16>>);
static_assert(KVCacheLike<KVCache<L, H, D, bf16>>);
static_assert(ContiguousKVCache<KVCache<L, H, D, bf16>>);
static_assert(!std::is_copy_constructible_v<KVCache<L, H, D, float>>);  // deep copies go through copy()
static_assert(!std::is_copy_assignable_v<KVCache<L, H, D, float>>);
static_assert(std::is_nothrow_move_constructible_v<KVCache<L, H, D, float>>);
static_assert(KVCache<L, H, D>::kTokenWidth == W && KVCache<L, H, D>::kLayers == L && KVCache<L, H, D>::kHeads == H &&
              KVCache<L, H, D>::kHeadDim == D);

TEMPLATE_TEST_CASE("KVCache: construction, sizes and the one aligned allocation", "[kv_cache]", float, fp16, bf16) {
    using Cache = KVCache<L, H, D, TestType>;
    CHECK_THROWS_AS(Cache(0, 8), ConfigError);
    CHECK_THROWS_AS(Cache(2, 0), ConfigError);
    CHECK_THROWS_AS(Cache(0, 0), ConfigError);
    CHECK_THROWS_AS(Cache(std::numeric_limits<std::size_t>::max(), 8), ConfigError);      // layers * batch wraps
    CHECK_THROWS_AS(Cache(1, std::numeric_limits<std::size_t>::max() / 8), ConfigError);  // element count wraps

    Cache cache(3, 7);
    CHECK(cache.batch_size() == 3);
    CHECK(cache.capacity() == 7);
    CHECK(cache.num_layers() == L);
    CHECK(cache.num_kv_heads(1) == H);
    CHECK(cache.head_dim(1) == D);
    CHECK(cache.bytes_allocated() == L * 2 * 3 * H * 7 * D * sizeof(TestType));
    CHECK(cache.bytes_used() == 0);
    for (std::size_t l = 0; l < L; ++l)
        for (std::size_t r = 0; r < 3; ++r) CHECK(cache.seq_len(l, r) == 0);
    CHECK(reinterpret_cast<std::uintptr_t>(cache.key_data(0, 0)) % 64 == 0);
    // fresh memory is zeroed, not garbage
    const auto bytes = cache_test::block_bytes(cache, 1, 2);
    CHECK(std::count(bytes.begin(), bytes.end(), 0) == static_cast<std::ptrdiff_t>(bytes.size()));
}

TEMPLATE_TEST_CASE("KVCache: the documented layout ((((layer*2+kind)*batch+row)*H+head)*cap+pos)*D+d", "[kv_cache]", float, fp16, bf16) {
    const std::size_t batch = 3, cap = 6;
    KVCache<L, H, D, TestType> cache(batch, cap);
    // a distinct value per token so every element's place is known
    for (std::size_t l = 0; l < L; ++l) {
        for (std::size_t r = 0; r < batch; ++r) {
            std::vector<float> k(2 * W), v(2 * W);
            for (std::size_t t = 0; t < 2; ++t)
                for (std::size_t h = 0; h < H; ++h)
                    for (std::size_t d = 0; d < D; ++d) {
                        // small integers: exact in bf16 and fp16
                        k[(t * H + h) * D + d] = static_cast<float>(((l * 3 + r) * 2 + t) * 8 + h * 2 + (d % 2));
                        v[(t * H + h) * D + d] = -k[(t * H + h) * D + d];
                    }
            cache.append(l, r, k, v, 2);
        }
    }
    const TestType* base = cache.key_data(0, 0);
    std::size_t bad = 0;
    for (std::size_t l = 0; l < L; ++l)
        for (std::size_t kind = 0; kind < 2; ++kind)
            for (std::size_t r = 0; r < batch; ++r) {
                const TestType* block = kind == 0 ? cache.key_data(l, r) : cache.value_data(l, r);
                bad += block != base + (((l * 2 + kind) * batch + r) * H) * cap * D;
                for (std::size_t h = 0; h < H; ++h)
                    for (std::size_t p = 0; p < 2; ++p)
                        for (std::size_t d = 0; d < D; ++d) {
                            const float want = (kind ? -1.0f : 1.0f) *
                                               static_cast<float>(((l * 3 + r) * 2 + p) * 8 + h * 2 + (d % 2));
                            bad += to_float(base[((((l * 2 + kind) * batch + r) * H + h) * cap + p) * D + d]) != want;
                        }
            }
    CHECK(bad == 0);
}

TEMPLATE_TEST_CASE("KVCache: append and read back, per-row and per-layer lengths", "[kv_cache]", float, fp16, bf16) {
    KVCache<L, H, D, TestType> cache(2, 16);
    RowModel m00, m01, m10, m11;
    cache_test::append_random(cache, m00, 0, 0, 3, 1);
    cache_test::append_random(cache, m00, 0, 0, 2, 2);  // appends continue after the first batch
    cache_test::append_random(cache, m10, 1, 0, 1, 3);
    cache_test::append_random(cache, m01, 0, 1, 4, 4);
    cache_test::append_random(cache, m01, 0, 1, 0, 5);  // zero tokens: allowed, changes nothing
    CHECK(cache.seq_len(0, 0) == 5);
    CHECK(cache.seq_len(1, 0) == 1);
    CHECK(cache.seq_len(0, 1) == 4);
    CHECK(cache.seq_len(1, 1) == 0);
    CHECK(cache.seq_len(0) == 5);  // a row's length is layer 0's
    CHECK(cache.seq_len(1) == 4);
    CHECK(cache_test::mismatches(cache, 0, 0, m00) == 0);
    CHECK(cache_test::mismatches(cache, 1, 0, m10) == 0);
    CHECK(cache_test::mismatches(cache, 0, 1, m01) == 0);
    CHECK(cache_test::mismatches(cache, 1, 1, m11) == 0);
    CHECK(cache.keys(1, 1, 2).empty());
    CHECK(cache.bytes_used() == (5 + 1 + 4) * 2 * W * sizeof(TestType));
    CHECK(cache.bytes_allocated() == L * 2 * 2 * 16 * W * sizeof(TestType));

    // the model itself must be able to disagree: a different row's contents are not these
    CHECK(cache_test::mismatches(cache, 0, 1, m00) > 0);
}

TEMPLATE_TEST_CASE("KVCache: truncate, truncate_row and clear", "[kv_cache]", float, fp16, bf16) {
    KVCache<L, H, D, TestType> cache(2, 10);
    RowModel m[L][2];
    const std::size_t n[L][2] = {{6, 3}, {5, 8}};
    for (std::size_t l = 0; l < L; ++l)
        for (std::size_t r = 0; r < 2; ++r) cache_test::append_random(cache, m[l][r], l, r, n[l][r], 10 * l + r);
    const std::size_t allocated = cache.bytes_allocated();

    cache.truncate(4);  // clamps the longer ones, leaves row 1 of layer 0 (3) alone
    for (std::size_t l = 0; l < L; ++l)
        for (std::size_t r = 0; r < 2; ++r) m[l][r].truncate(4);
    CHECK(cache.seq_len(0, 0) == 4);
    CHECK(cache.seq_len(0, 1) == 3);
    CHECK(cache.seq_len(1, 0) == 4);
    CHECK(cache.seq_len(1, 1) == 4);
    for (std::size_t l = 0; l < L; ++l)
        for (std::size_t r = 0; r < 2; ++r) CHECK(cache_test::mismatches(cache, l, r, m[l][r]) == 0);
    CHECK(cache.bytes_used() == (4 + 3 + 4 + 4) * 2 * W * sizeof(TestType));

    // appending after a truncate overwrites from the new end
    cache_test::append_random(cache, m[0][0], 0, 0, 2, 77);
    CHECK(cache_test::mismatches(cache, 0, 0, m[0][0]) == 0);

    cache.truncate_row(1, 1);  // every layer of row 1, nothing of row 0
    m[0][1].truncate(1);
    m[1][1].truncate(1);
    CHECK(cache.seq_len(0, 1) == 1);
    CHECK(cache.seq_len(1, 1) == 1);
    CHECK(cache.seq_len(0, 0) == 6);
    CHECK(cache.seq_len(1, 0) == 4);
    for (std::size_t l = 0; l < L; ++l)
        for (std::size_t r = 0; r < 2; ++r) CHECK(cache_test::mismatches(cache, l, r, m[l][r]) == 0);
    cache.truncate_row(0, 100);  // longer than the row: unchanged
    CHECK(cache.seq_len(0, 0) == 6);
    CHECK_THROWS_AS(cache.truncate_row(2, 0), IndexError);

    cache.clear();
    for (std::size_t l = 0; l < L; ++l)
        for (std::size_t r = 0; r < 2; ++r) CHECK(cache.seq_len(l, r) == 0);
    CHECK(cache.bytes_used() == 0);
    CHECK(cache.bytes_allocated() == allocated);
    RowModel fresh;
    cache_test::append_random(cache, fresh, 1, 1, 10, 99);  // the full capacity is available again
    CHECK(cache_test::mismatches(cache, 1, 1, fresh) == 0);
}

TEMPLATE_TEST_CASE("KVCache: copy() is deep and independent; moves keep the allocation", "[kv_cache]", float, fp16, bf16) {
    KVCache<L, H, D, TestType> cache(2, 8);
    RowModel a, b;
    cache_test::append_random(cache, a, 0, 1, 3, 1);
    cache_test::append_random(cache, b, 1, 0, 2, 2);

    auto copy = cache.copy();
    CHECK(copy.key_data(0, 0) != cache.key_data(0, 0));
    CHECK(copy.capacity() == 8);
    CHECK(copy.batch_size() == 2);
    CHECK(cache_test::mismatches(copy, 0, 1, a) == 0);
    CHECK(cache_test::mismatches(copy, 1, 0, b) == 0);
    CHECK(copy.seq_len(0, 0) == 0);
    CHECK(copy.bytes_used() == cache.bytes_used());

    RowModel a_orig = a, a_copy = a;
    cache_test::append_random(cache, a_orig, 0, 1, 2, 3);
    cache_test::append_random(copy, a_copy, 0, 1, 1, 4);
    CHECK(cache_test::mismatches(cache, 0, 1, a_orig) == 0);
    CHECK(cache_test::mismatches(copy, 0, 1, a_copy) == 0);
    copy.truncate(0);
    CHECK(cache.seq_len(1, 0) == 2);

    const TestType* data = cache.key_data(0, 0);
    KVCache<L, H, D, TestType> moved(std::move(cache));
    CHECK(moved.key_data(0, 0) == data);
    CHECK(cache_test::mismatches(moved, 0, 1, a_orig) == 0);
    KVCache<L, H, D, TestType> assigned(1, 1);
    assigned = std::move(moved);
    CHECK(assigned.key_data(0, 0) == data);
    CHECK(assigned.batch_size() == 2);
    CHECK(assigned.capacity() == 8);
    CHECK(cache_test::mismatches(assigned, 1, 0, b) == 0);
}

TEMPLATE_TEST_CASE("KVCache: a failed append writes nothing", "[kv_cache][errors]", float, fp16, bf16) {
    KVCache<L, H, D, TestType> cache(2, 6);
    RowModel m;
    cache_test::append_random(cache, m, 1, 1, 5, 1);
    const auto before = cache_test::block_bytes(cache, 1, 1);
    const std::vector<float> two(2 * W, 1.5f), one(W, 2.5f);

    SECTION("capacity") {
        CHECK_THROWS_AS(cache.append(1, 1, two, two, 2), CapacityError);
        // far too many tokens, with spans sized to match (a wrapped size check must not let it through)
        CHECK_THROWS_AS(cache.append(1, 1, std::span<const float>(), std::span<const float>(),
                                     std::numeric_limits<std::size_t>::max() / W + 1),
                        Error);
    }
    SECTION("shapes") {
        CHECK_THROWS_AS(cache.append(1, 1, one, two, 1), ShapeError);          // keys too long
        CHECK_THROWS_AS(cache.append(1, 1, two, one, 1), ShapeError);          // values too long
        CHECK_THROWS_AS(cache.append(1, 1, one, one, 2), ShapeError);          // both too short
        CHECK_THROWS_AS(cache.append(1, 1, std::span<const float>(one).first(W - 1), one, 1), ShapeError);
    }
    SECTION("indices") {
        CHECK_THROWS_AS(cache.append(L, 0, one, one, 1), IndexError);
        CHECK_THROWS_AS(cache.append(0, 2, one, one, 1), IndexError);
    }
    CHECK(cache.seq_len(1, 1) == 5);
    CHECK(cache_test::block_bytes(cache, 1, 1) == before);
    CHECK(cache_test::mismatches(cache, 1, 1, m) == 0);
    // the last free position is still usable
    cache_test::append_random(cache, m, 1, 1, 1, 2);
    CHECK(cache_test::mismatches(cache, 1, 1, m) == 0);
    CHECK_THROWS_AS(cache.append(1, 1, one, one, 1), CapacityError);
}

TEMPLATE_TEST_CASE("KVCache: every accessor rejects out-of-range layer, row and head", "[kv_cache][errors]", float, fp16, bf16) {
    const KVCache<L, H, D, TestType> cache(2, 4);
    CHECK_THROWS_AS(cache.seq_len(L, 0), IndexError);
    CHECK_THROWS_AS(cache.seq_len(0, 2), IndexError);
    CHECK_THROWS_AS(cache.seq_len(2), IndexError);
    CHECK_THROWS_AS(cache.keys(L, 0, 0), IndexError);
    CHECK_THROWS_AS(cache.keys(0, 2, 0), IndexError);
    CHECK_THROWS_AS(cache.keys(0, 0, H), IndexError);
    CHECK_THROWS_AS(cache.values(L, 0, 0), IndexError);
    CHECK_THROWS_AS(cache.values(0, 2, 0), IndexError);
    CHECK_THROWS_AS(cache.values(0, 0, H), IndexError);
    CHECK_THROWS_AS(cache.key_data(L, 0), IndexError);
    CHECK_THROWS_AS(cache.key_data(0, 2), IndexError);
    CHECK_THROWS_AS(cache.value_data(L, 0), IndexError);
    CHECK_THROWS_AS(cache.value_data(0, 2), IndexError);
    CHECK_THROWS_AS(cache.chunks(L, 0, 0), IndexError);
    CHECK_THROWS_AS(cache.chunks(0, 2, 0), IndexError);
    CHECK_THROWS_AS(cache.chunks(0, 0, H), IndexError);
    // the last valid index of each is accepted
    CHECK_NOTHROW(cache.keys(L - 1, 1, H - 1));
    CHECK_NOTHROW(cache.chunks(L - 1, 1, H - 1));
    // messages name the offending index and the bound
    try {
        (void)cache.keys(0, 0, 7);
        FAIL("no exception");
    } catch (const IndexError& e) {
        CHECK_THAT(e.what(), Catch::Contains("7") && Catch::Contains("3"));
    }
}

TEST_CASE("KVCache: allocation failure is a CapacityError", "[kv_cache][errors]") {
#if defined(__SANITIZE_ADDRESS__)
    SUCCEED("skipped under AddressSanitizer, which aborts on impossible allocations");
#else
    // 2^44 positions x 30 floats x 4 bytes: far more than any address space, yet no size overflows
    CHECK_THROWS_AS((KVCache<1, 3, 5, float>(1, std::size_t{1} << 44)), CapacityError);
#endif
}
