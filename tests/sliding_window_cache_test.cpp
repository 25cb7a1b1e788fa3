// SlidingWindowCache: attention with a window of W over the ring equals, bit for bit, the same attention over a
// full cache of the same positions (fast kernel and reference, across tile and segment boundaries, for float,
// 16-bit and quantised types, mixed keys and values); memory stays what was allocated over 4x the window; and
// every misuse is a typed error.
#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <vector>

#include "kvcache/attention/attention.hpp"
#include "kvcache/attention/reference.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/cache/sliding_window_cache.hpp"
#include "kvcache/persist/cache_file.hpp"
#include "kvcache/testing/random.hpp"

using namespace kvcache;
using kvcache::testing::random_normal;

namespace {

template <class K, class V>
struct KV_ {
    using Key = K;
    using Value = V;
};

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

static_assert(KVCacheLike<SlidingWindowCache<q8_0, q4_0>>);
static_assert(WindowedKVCache<SlidingWindowCache<float>>);
static_assert(!BoundedKVCache<SlidingWindowCache<float>>);  // seq_len grows without bound; memory does not
static_assert(!WindowedKVCache<MultiLayerKVCache<float>>);

TEMPLATE_TEST_CASE("sliding-window cache: windowed attention over the ring equals it over a full cache, bit for bit",
                   "[sliding_window]", (KV_<float, float>), (KV_<fp16, fp16>), (KV_<q8_0, q4_0>), (KV_<bf16, q8_0>)) {
    using K = typename TestType::Key;
    using V = typename TestType::Value;
    // W = 200 and 4W + 13 positions: tiles (64) and segments (512) straddle the ring's wrap point
    constexpr std::size_t L = 2, H = 2, D = 64, QH = 4, W = 200, step = 7, N = 4 * W + 13;
    SlidingWindowCache<K, V> ring(CacheShape{L, H, D}, 1, W, step);
    MultiLayerKVCache<K, V> full(CacheShape{L, H, D}, 1, N);
    const std::size_t allocated = ring.bytes_allocated();
    CHECK(allocated == L * H * (W + step - 1) * (storage_units<K>(D) * sizeof(K) + storage_units<V>(D) * sizeof(V)));
    const auto k = random_normal(N * H * D, 1), v = random_normal(N * H * D, 2), q = random_normal(N * QH * D, 3);
    std::size_t at = 0, checked = 0, mismatches = 0;
    for (std::size_t n = 1; at < N; n = n % step + 1) {  // steps of 1, 2, ..., 7, 1, 2, ...
        n = std::min(n, N - at);
        const std::span<const float> ks(k.data() + at * H * D, n * H * D), vs(v.data() + at * H * D, n * H * D);
        const std::span<const float> qs(q.data() + at * QH * D, n * QH * D);
        for (std::size_t l = 0; l < L; ++l) {
            ring.append(l, 0, ks, vs, n);
            full.append(l, 0, ks, vs, n);
            for (const std::size_t window : {W, W / 2 + 1, std::size_t{1}}) {
                const AttentionOptions opts{.window = window, .threads = 2};
                std::vector<float> a(n * QH * D), b(a.size()), c(a.size()), d(a.size());
                attention(ring, l, 0, qs, n, QH, a, opts);
                attention(full, l, 0, qs, n, QH, b, opts);
                attention_reference(ring, l, 0, qs, n, QH, c, opts);
                attention_reference(full, l, 0, qs, n, QH, d, opts);
                mismatches += !same_bits(a, b) + !same_bits(c, d);
                ++checked;
            }
        }
        at += n;
    }
    CHECK(checked > 3 * N / step);
    CHECK(mismatches == 0);
    // 4x the window went through: every position counted, only the ring held, not one byte more allocated
    CHECK(ring.seq_len(1, 0) == N);
    CHECK(ring.first_position(1, 0) == N - (W + step - 1));
    CHECK(ring.bytes_allocated() == allocated);
    std::size_t held = 0;
    for (const auto& chunk : ring.chunks(1, 0, 1)) held += chunk.length;
    CHECK(held == W + step - 1);
    // decode-only ring (max_step 1): W slots, the same attention
    SlidingWindowCache<K, V> tight(CacheShape{1, H, D}, 1, W);
    CHECK(tight.slots() == W);
    MultiLayerKVCache<K, V> tight_full(CacheShape{1, H, D}, 1, N);
    for (std::size_t p = 0; p < N; ++p) {
        const std::span<const float> ks(k.data() + p * H * D, H * D), vs(v.data() + p * H * D, H * D);
        tight.append(0, 0, ks, vs, 1);
        tight_full.append(0, 0, ks, vs, 1);
    }
    std::vector<float> a(QH * D), b(QH * D);
    const std::span<const float> last(q.data(), QH * D);
    attention(tight, 0, 0, last, 1, QH, a, {.window = W});
    attention(tight_full, 0, 0, last, 1, QH, b, {.window = W});
    CHECK(same_bits(a, b));
}

TEST_CASE("sliding-window cache: typed errors", "[sliding_window]") {
    constexpr std::size_t H = 1, D = 32, QH = 2;
    CHECK_THROWS_AS(SlidingWindowCache<float>(CacheShape{1, H, D}, 1, 0), ConfigError);     // W = 0
    CHECK_THROWS_AS(SlidingWindowCache<float>(CacheShape{1, H, D}, 1, 4, 0), ConfigError);  // max_step 0
    CHECK_THROWS_AS(SlidingWindowCache<float>(CacheShape{1, H, D}, 0, 4), ConfigError);     // batch 0
    CHECK_THROWS_AS(SlidingWindowCache<float>(std::vector<LayerShape>{}, 1, 4), ConfigError);
    // blocks run along the head dimension, not positions: any window works for q8_0, a head of 48 does not
    CHECK_NOTHROW(SlidingWindowCache<q8_0>(CacheShape{1, H, D}, 1, 1));
    using FloatKeysQ8Values = SlidingWindowCache<float, q8_0>;
    CHECK_THROWS_WITH(FloatKeysQ8Values(CacheShape{1, H, 48}, 1, 4),
                      Catch::Contains("48") && Catch::Contains("q8_0") && Catch::Contains("values"));

    SlidingWindowCache<float> ring(CacheShape{1, H, D}, 1, 4, 2);  // 5 slots
    const auto kv = random_normal(8 * H * D, 9), q = random_normal(2 * QH * D, 10);
    std::vector<float> out(QH * D), out2(2 * QH * D);
    // more tokens than max_step: refused before anything is written
    CHECK_THROWS_AS(ring.append(0, 0, std::span(kv).first(3 * D), std::span(kv).first(3 * D), 3), CapacityError);
    CHECK(ring.seq_len(0, 0) == 0);
    CHECK_THROWS_AS(ring.append(0, 0, std::span(kv).first(2 * D), std::span(kv).first(D), 2), ShapeError);
    CHECK_THROWS_AS(ring.append(1, 0, std::span(kv).first(D), std::span(kv).first(D), 1), IndexError);
    CHECK_THROWS_AS(ring.append(0, 1, std::span(kv).first(D), std::span(kv).first(D), 1), IndexError);
    for (std::size_t p = 0; p < 5; ++p) ring.append(0, 0, std::span(kv).subspan(p * D, D), std::span(kv).subspan(p * D, D), 1);
    // not wrapped yet (5 positions in 5 slots): full attention still sees everything
    CHECK_NOTHROW(attention(ring, 0, 0, std::span(q).first(QH * D), 1, QH, out));
    ring.append(0, 0, std::span(kv).subspan(5 * D, D), std::span(kv).subspan(5 * D, D), 1);
    CHECK(ring.first_position(0, 0) == 1);
    // wrapped: a query that would see position 0 again is refused, naming the window
    CHECK_THROWS_WITH(attention(ring, 0, 0, std::span(q).first(QH * D), 1, QH, out),
                      Catch::Contains("holds positions [1, 6) only (a window of 4)"));
    CHECK_THROWS_AS(attention_reference(ring, 0, 0, std::span(q).first(QH * D), 1, QH, out), ConfigError);
    CHECK_THROWS_AS(attention(ring, 0, 0, std::span(q).first(QH * D), 1, QH, out, {.window = 6}), ConfigError);
    CHECK_NOTHROW(attention(ring, 0, 0, std::span(q).first(QH * D), 1, QH, out, {.window = 5}));  // slots are 5
    CHECK_NOTHROW(attention(ring, 0, 0, std::span(q), 2, QH, out2, {.window = 4}));              // 2 = max_step
    CHECK_THROWS_AS(attention(ring, 0, 0, std::span(q), 2, QH, out2, {.window = 5}), ConfigError);
    CHECK_THROWS_AS(attention(ring, 0, 0, std::span(q).first(QH * D), 1, QH, out, {.causal = false}), ConfigError);
    CHECK_THROWS_AS(ring.chunks(0, 0, 1), IndexError);
    // a cache file holds positions from 0: a ring that has dropped some cannot be saved, and no file appears
    const auto path = std::filesystem::temp_directory_path() / "kvcache_sliding_window.kvc";
    const std::vector<std::int32_t> tokens(6, 1);
    CHECK_THROWS_AS(save_cache_file(path, ring, 0, tokens, make_fingerprint("m", ring), {.durable = false}), ShapeError);
    CHECK_FALSE(std::filesystem::exists(path));
    ring.clear();
    CHECK(ring.seq_len(0, 0) == 0);
    CHECK(ring.first_position(0, 0) == 0);
}
