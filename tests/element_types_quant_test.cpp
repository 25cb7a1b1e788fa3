// Quantised storage types (q8_0, q4_0) and the open element trait: bit-exact quantisation against gguf-py's
// reference on golden blocks, every cache type over quantised keys/values, attention over them against the
// reference and against float attention on the same dequantised values, cache files, a user's own type, and
// the typed errors (head sizes that are not whole blocks, files that cannot hold a type).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "kvcache/attention/attention.hpp"
#include "kvcache/attention/reference.hpp"
#include "kvcache/cache/kv_cache.hpp"
#include "kvcache/cache/layout.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/persist/cache_file.hpp"
#include "kvcache/testing/random.hpp"

// ---- a user's own storage type, added through the trait: 16 values as a float scale and 16 int16 ----
namespace user {
struct i16_block {
    float scale;
    std::int16_t q[16];
};
}  // namespace user

template <>
struct kvcache::ElementTraits<user::i16_block> {
    static constexpr std::string_view name = "i16x16";
    static constexpr std::size_t block_values = 16;
    static constexpr std::uint32_t file_code = 0;  // not savable to cache files
    static void encode(const float* src, user::i16_block* dst, std::size_t n) {
        for (std::size_t b = 0; b < n / 16; ++b, src += 16) {
            float amax = 0.0f;
            for (std::size_t j = 0; j < 16; ++j) amax = std::max(amax, std::fabs(src[j]));
            dst[b].scale = amax / 32767.0f;
            const float inv = amax > 0.0f ? 32767.0f / amax : 0.0f;
            for (std::size_t j = 0; j < 16; ++j) dst[b].q[j] = static_cast<std::int16_t>(std::lround(src[j] * inv));
        }
    }
    static void decode(const user::i16_block* src, float* dst, std::size_t n) {
        for (std::size_t b = 0; b < n / 16; ++b, dst += 16) {
            for (std::size_t j = 0; j < 16; ++j) dst[j] = static_cast<float>(src[b].q[j]) * src[b].scale;
        }
    }
};

using namespace kvcache;
using kvcache::testing::random_normal;

namespace {

static_assert(StorageElement<user::i16_block>);
static_assert(!StorageElement<int>, "a type without ElementTraits is not a storage element");
static_assert(storage_units<q8_0>(64) == 2 && storage_units<fp16>(64) == 64);

struct Golden {
    std::size_t n = 0;
    std::vector<float> inputs, q8_values, q4_values;
    std::vector<q8_0> q8;
    std::vector<q4_0> q4;
};

Golden load_golden() {
    const std::string path = std::string(KVCACHE_FIXTURES_DIR) + "/quant/golden_blocks.bin";
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in);
    char magic[4];
    std::uint32_t version = 0, n = 0;
    in.read(magic, 4);
    in.read(reinterpret_cast<char*>(&version), 4);
    in.read(reinterpret_cast<char*>(&n), 4);
    REQUIRE(std::string(magic, 4) == "KVQG");
    REQUIRE(version == 1);
    Golden g;
    g.n = n;
    g.inputs.resize(n * 32);
    g.q8.resize(n);
    g.q4.resize(n);
    g.q8_values.resize(n * 32);
    g.q4_values.resize(n * 32);
    in.read(reinterpret_cast<char*>(g.inputs.data()), static_cast<std::streamsize>(n * 32 * 4));
    in.read(reinterpret_cast<char*>(g.q8.data()), static_cast<std::streamsize>(n * 34));
    in.read(reinterpret_cast<char*>(g.q4.data()), static_cast<std::streamsize>(n * 18));
    in.read(reinterpret_cast<char*>(g.q8_values.data()), static_cast<std::streamsize>(n * 32 * 4));
    in.read(reinterpret_cast<char*>(g.q4_values.data()), static_cast<std::streamsize>(n * 32 * 4));
    REQUIRE(in);
    REQUIRE(n >= 50);
    return g;
}

template <class T>
std::size_t differing_blocks(const std::vector<T>& a, const std::vector<T>& b) {
    std::size_t bad = 0;
    for (std::size_t i = 0; i < a.size(); ++i) bad += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
    return bad;
}

std::size_t differing_floats(const std::vector<float>& a, const std::vector<float>& b) {
    std::size_t bad = 0;
    for (std::size_t i = 0; i < a.size(); ++i) bad += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return bad;
}

/// Largest |a - b| over max |b|.
float relative_error(std::span<const float> a, std::span<const float> b) {
    float err = 0.0f, scale = 0.0f;
    for (std::size_t i = 0; i < a.size(); ++i) {
        err = std::max(err, std::fabs(a[i] - b[i]));
        scale = std::max(scale, std::fabs(b[i]));
    }
    return err / std::max(scale, 1e-30f);
}

/// values quantised as T and decoded back: what a T cache holds for them.
template <class T>
std::vector<float> through(std::span<const float> values) {
    std::vector<T> blocks(storage_units<T>(values.size()));
    std::vector<float> out(values.size());
    convert_from_float(values.data(), blocks.data(), values.size());
    convert_to_float(blocks.data(), out.data(), values.size());
    return out;
}

}  // namespace

TEST_CASE("q8_0 and q4_0 quantise and dequantise bit for bit like gguf-py on golden blocks", "[element_types][quantised]") {
    const Golden g = load_golden();
    std::vector<q8_0> q8(g.n);
    std::vector<q4_0> q4(g.n);
    convert_from_float(g.inputs.data(), q8.data(), g.n * 32);
    convert_from_float(g.inputs.data(), q4.data(), g.n * 32);
    CHECK(differing_blocks(q8, g.q8) == 0);
    CHECK(differing_blocks(q4, g.q4) == 0);

    std::vector<float> v8(g.n * 32), v4(g.n * 32);
    convert_to_float(g.q8.data(), v8.data(), g.n * 32);
    convert_to_float(g.q4.data(), v4.data(), g.n * 32);
    CHECK(differing_floats(v8, g.q8_values) == 0);
    CHECK(differing_floats(v4, g.q4_values) == 0);

    // the comparison can fail: one input nudged changes a block
    std::vector<float> nudged = g.inputs;
    nudged[5] += 0.25f * std::fabs(nudged[5]) + 1e-3f;
    convert_from_float(nudged.data(), q8.data(), g.n * 32);
    CHECK(differing_blocks(q8, g.q8) >= 1);
}

TEST_CASE("quantised values: every vector load path decodes like the element type", "[element_types][quantised]") {
    const auto x = random_normal(8 * 32, 3, 2.0f);
    std::vector<q8_0> q8(8);
    std::vector<q4_0> q4(8);
    convert_from_float(x.data(), q8.data(), x.size());
    convert_from_float(x.data(), q4.data(), x.size());
    std::vector<float> d8(x.size()), d4(x.size());
    convert_to_float(q8.data(), d8.data(), x.size());
    convert_to_float(q4.data(), d4.data(), x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
        REQUIRE(detail::row_value(q8.data(), i) == d8[i]);
        REQUIRE(detail::row_value(q4.data(), i) == d4[i]);
    }
#if KVCACHE_HAVE_AVX2
    for (std::size_t i = 0; i < x.size(); i += 8) {
        float a[8], b[8];
        _mm256_storeu_ps(a, detail::Simd<8>::load(q8.data(), i));
        _mm256_storeu_ps(b, detail::Simd<8>::load(q4.data(), i));
        for (std::size_t j = 0; j < 8; ++j) {
            REQUIRE(a[j] == d8[i + j]);
            REQUIRE(b[j] == d4[i + j]);
        }
    }
#endif
#if KVCACHE_HAVE_AVX512
    for (std::size_t i = 0; i < x.size(); i += 16) {
        float a[16], b[16];
        _mm512_storeu_ps(a, detail::Simd<16>::load(q8.data(), i));
        _mm512_storeu_ps(b, detail::Simd<16>::load(q4.data(), i));
        for (std::size_t j = 0; j < 16; ++j) {
            REQUIRE(a[j] == d8[i + j]);
            REQUIRE(b[j] == d4[i + j]);
        }
    }
#endif
    // quantisation error bounds: half a step of the block's scale, plus the scale's own fp16 rounding (2^-11
    // relative, times at most 127 steps); q4_0 clips the step at the far end from the maximum to a whole one
    for (std::size_t b = 0; b < 8; ++b) {
        float amax = 0.0f;
        for (std::size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
        for (std::size_t j = 0; j < 32; ++j) {
            CHECK(std::fabs(d8[b * 32 + j] - x[b * 32 + j]) <= amax / 127.0f * 0.57f + 1e-6f);
            CHECK(std::fabs(d4[b * 32 + j] - x[b * 32 + j]) <= amax / 8.0f * 1.02f + 1e-6f);
        }
    }
}

TEST_CASE("element names and sizes of the quantised types", "[element_types][quantised]") {
    CHECK(element_name<q8_0>() == "q8_0");
    CHECK(element_name<q4_0>() == "q4_0");
    CHECK(block_values_v<q8_0> == 32);
    CHECK(block_values_v<float> == 1);
    MultiLayerKVCache<q8_0> c8(CacheShape{2, 3, 64}, 1, 10);
    MultiLayerKVCache<q4_0> c4(CacheShape{2, 3, 64}, 1, 10);
    MultiLayerKVCache<float> c32(CacheShape{2, 3, 64}, 1, 10);
    const auto kv = random_normal(10 * 3 * 64, 1);
    for (std::size_t l = 0; l < 2; ++l) {
        c8.append(l, 0, kv, kv, 10);
        c4.append(l, 0, kv, kv, 10);
        c32.append(l, 0, kv, kv, 10);
    }
    // bytes per cached position: 2 (K, V) * layers * heads * (64 / 32 blocks * block bytes)
    CHECK(c8.bytes_used() == 10 * 2 * 2 * 3 * 2 * 34);
    CHECK(c4.bytes_used() == 10 * 2 * 2 * 3 * 2 * 18);
    CHECK(c32.bytes_used() == 10 * 2 * 2 * 3 * 64 * 4);
    CHECK(c8.bytes_allocated() == c8.bytes_used());
}

TEMPLATE_TEST_CASE("every cache type stores quantised keys and values and reads back the dequantised values",
                   "[cache][quantised]", q8_0, q4_0, q4_0h) {
    using T = TestType;
    constexpr std::size_t H = 2, D = 64, N = 21;
    const auto k = random_normal(N * H * D, 4), v = random_normal(N * H * D, 5);
    const auto want_k = through<T>(k), want_v = through<T>(v);

    KVCache<2, H, D, T> fixed(1, 32);
    MultiLayerKVCache<T> multi(CacheShape{2, H, D}, 1, 8, Growth::Grow);  // grows (reallocates) twice
    PagedKVPool<T> pool(CacheShape{2, H, D}, 8, 4);
    auto seq = pool.sequence(pool.create_sequence());
    for (std::size_t l = 0; l < 2; ++l) {
        fixed.append(l, 0, k, v, N);
        multi.append(l, 0, std::span<const float>(k).first(5 * H * D), std::span<const float>(v).first(5 * H * D), 5);
        multi.append(l, 0, std::span<const float>(k).subspan(5 * H * D), std::span<const float>(v).subspan(5 * H * D),
                     N - 5);
        seq.append(l, 0, k, v, N);
    }
    for (std::size_t l = 0; l < 2; ++l) {
        CHECK(export_shd(fixed, l, 0, KV::Keys) == want_k);
        CHECK(export_shd(fixed, l, 0, KV::Values) == want_v);
        CHECK(export_shd(multi, l, 0, KV::Keys) == want_k);
        CHECK(export_shd(multi, l, 0, KV::Values) == want_v);
        CHECK(export_shd(seq, l, 0, KV::Keys) == want_k);
        CHECK(export_shd(seq, l, 0, KV::Values) == want_v);
    }
    // a fork shares blocks, and copy-on-write keeps the parent's quantised rows
    const SequenceId child = pool.fork(seq.id(), 10);
    auto child_seq = pool.sequence(child);
    const auto extra = random_normal(H * D, 6);
    for (std::size_t l = 0; l < 2; ++l) child_seq.append(l, 0, extra, extra, 1);
    CHECK(export_shd(seq, 0, 0, KV::Keys) == want_k);
    CHECK(export_shd(child_seq, 1, 0, KV::Keys)[10 * H * D] == through<T>(extra)[0]);
}

TEMPLATE_TEST_CASE("attention over quantised caches: against the reference and against float attention on the "
                   "same dequantised values",
                   "[attention][quantised]", q8_0, q4_0, q4_0h) {
    using T = TestType;
    constexpr std::size_t H = 3, D = 64, QH = 9;
    for (const std::size_t n : {std::size_t(1), std::size_t(70), std::size_t(1300)}) {
        const auto k = random_normal(n * H * D, 7), v = random_normal(n * H * D, 8);
        MultiLayerKVCache<T> quant(CacheShape{1, H, D}, 1, n);
        quant.append(0, 0, k, v, n);
        MultiLayerKVCache<float> dequant(CacheShape{1, H, D}, 1, n);  // the same values, stored as float
        dequant.append(0, 0, through<T>(k), through<T>(v), n);
        const std::size_t n_q = std::min<std::size_t>(n, 3);
        const auto q = random_normal(n_q * QH * D, 9);
        for (const AttentionOptions opts : {AttentionOptions{}, AttentionOptions{.causal = false},
                                            AttentionOptions{.window = 50}}) {
            std::vector<float> fast(q.size()), ref(q.size()), on_floats(q.size());
            attention(quant, 0, 0, q, n_q, QH, fast, opts);
            attention_reference(quant, 0, 0, q, n_q, QH, ref, opts);
            attention(dequant, 0, 0, q, n_q, QH, on_floats, opts);
            INFO("positions " << n << " causal " << opts.causal << " window " << opts.window);
            // stated tolerance: 1e-5 relative (float summation order) — the same as the float kernel's
            CHECK(relative_error(fast, ref) < 1e-5f);
            CHECK(relative_error(fast, on_floats) < 1e-5f);
        }
    }
}

TEST_CASE("keys and values of different types: caches, attention and the reference agree", "[attention][quantised]") {
    constexpr std::size_t H = 2, D = 64, QH = 4, N = 300;
    const auto k = random_normal(N * H * D, 10), v = random_normal(N * H * D, 11);
    MultiLayerKVCache<q8_0, fp16> mixed(CacheShape{1, H, D}, 1, N);
    KVCache<1, H, D, q4_0, float> mixed_fixed(1, N);
    mixed.append(0, 0, k, v, N);
    mixed_fixed.append(0, 0, k, v, N);
    static_assert(std::is_same_v<key_element_t<decltype(mixed)>, q8_0>);
    static_assert(std::is_same_v<value_element_t<decltype(mixed)>, fp16>);
    CHECK(export_shd(mixed, 0, 0, KV::Keys) == through<q8_0>(k));
    CHECK(export_shd(mixed, 0, 0, KV::Values) == through<fp16>(v));
    CHECK(export_shd(mixed_fixed, 0, 0, KV::Keys) == through<q4_0>(k));
    CHECK(export_shd(mixed_fixed, 0, 0, KV::Values) == v);
    CHECK(mixed.bytes_used() == N * H * (2 * 34 + 64 * 2));
    const auto q = random_normal(QH * D, 12);
    std::vector<float> fast(q.size()), ref(q.size());
    attention(mixed, 0, 0, q, 1, QH, fast);
    attention_reference(mixed, 0, 0, q, 1, QH, ref);
    CHECK(relative_error(fast, ref) < 1e-5f);
    attention(mixed_fixed, 0, 0, q, 1, QH, fast);
    attention_reference(mixed_fixed, 0, 0, q, 1, QH, ref);
    CHECK(relative_error(fast, ref) < 1e-5f);
}

TEST_CASE("head sizes that are not whole blocks are a ConfigError", "[cache][quantised]") {
    CHECK_THROWS_AS(MultiLayerKVCache<q8_0>(CacheShape{1, 2, 48}, 1, 8), ConfigError);
    CHECK_THROWS_AS(MultiLayerKVCache<q4_0>(CacheShape{1, 2, 16}, 1, 8), ConfigError);
    CHECK_THROWS_AS((MultiLayerKVCache<float, q4_0>(CacheShape{1, 2, 40}, 1, 8)), ConfigError);
    CHECK_THROWS_AS(PagedKVPool<q8_0>(CacheShape{1, 2, 40}, 4, 4), ConfigError);
    CHECK_THROWS_AS(MultiLayerKVCache<user::i16_block>(CacheShape{1, 1, 24}, 1, 8), ConfigError);
    try {
        MultiLayerKVCache<q8_0>(std::vector<LayerShape>{{2, 64}, {2, 48}}, 1, 8);
        FAIL("no error");
    } catch (const ConfigError& e) {
        CHECK_THAT(e.what(), Catch::Contains("layer 1") && Catch::Contains("48") && Catch::Contains("q8_0"));
    }
    CHECK_NOTHROW(MultiLayerKVCache<q8_0>(CacheShape{1, 2, 96}, 1, 8));
}

TEMPLATE_TEST_CASE("quantised caches save to cache files and load back bit for bit", "[persist][quantised]", q8_0, q4_0,
                   q4_0h) {
    using T = TestType;
    constexpr std::size_t H = 2, D = 64, N = 37;
    const auto dir = std::filesystem::temp_directory_path() / "kvcache_quant_files";
    std::filesystem::create_directories(dir);
    const auto path = dir / (std::string(element_name<T>()) + ".kvc");
    MultiLayerKVCache<T> cache(CacheShape{3, H, D}, 1, N);
    for (std::size_t l = 0; l < 3; ++l) {
        cache.append(l, 0, random_normal(N * H * D, 20 + l), random_normal(N * H * D, 30 + l), N);
    }
    std::vector<std::int32_t> tokens(N);
    for (std::size_t i = 0; i < N; ++i) tokens[i] = static_cast<std::int32_t>(i);
    const CacheFingerprint fp = make_fingerprint("test-model", cache);
    CHECK_THAT(fp.cache, Catch::Contains(std::string(element_name<T>())));
    save_cache_file(path, cache, 0, tokens, fp, {.durable = false});
    const CacheFileInfo info = read_cache_file_info(path, VerifyPayload::yes);
    CHECK(info.element == element_name<T>());

    MultiLayerKVCache<T> loaded(CacheShape{3, H, D}, 1, N);
    load_cache_file(path, loaded, 0, fp);
    PagedKVPool<T> pool(CacheShape{3, H, D}, 10, 4);
    auto seq = pool.sequence(pool.create_sequence());
    load_cache_file(path, seq, 0, make_fingerprint("test-model", seq));
    for (std::size_t l = 0; l < 3; ++l) {
        for (std::size_t h = 0; h < H; ++h) {
            const auto a = cache.keys(l, 0, h), b = loaded.keys(l, 0, h);
            REQUIRE(a.size() == b.size());
            CHECK(std::memcmp(a.data(), b.data(), a.size_bytes()) == 0);
            const auto av = cache.values(l, 0, h), bv = loaded.values(l, 0, h);
            CHECK(std::memcmp(av.data(), bv.data(), av.size_bytes()) == 0);
        }
        CHECK(export_shd(seq, l, 0, KV::Keys) == export_shd(cache, l, 0, KV::Keys));
        CHECK(export_shd(seq, l, 0, KV::Values) == export_shd(cache, l, 0, KV::Values));
    }
    // a file of one type does not load into a cache of another
    MultiLayerKVCache<float> other(CacheShape{3, H, D}, 1, N);
    CHECK_THROWS_AS(load_cache_file(path, other, 0, fp), FingerprintMismatch);
    std::filesystem::remove_all(dir);
}

TEST_CASE("cache files refuse types without a file code, for keys or values alone", "[persist][quantised]") {
    // keys and values of different types with codes save and load (tests/cache_file_mixed_test.cpp)
    const auto path = std::filesystem::temp_directory_path() / "kvcache_quant_refused.kvc";
    MultiLayerKVCache<fp16, user::i16_block> user_values(CacheShape{1, 1, 32}, 1, 4);
    MultiLayerKVCache<user::i16_block> user_cache(CacheShape{1, 1, 32}, 1, 4);
    const auto kv = random_normal(32, 1);
    user_values.append(0, 0, kv, kv, 1);
    user_cache.append(0, 0, kv, kv, 1);
    const std::vector<std::int32_t> tokens{7};
    CHECK_THROWS_WITH(save_cache_file(path, user_values, 0, tokens, make_fingerprint("m", user_values)),
                      Catch::Contains("of the values has no cache-file code"));
    CHECK_THROWS_AS(save_cache_file(path, user_cache, 0, tokens, make_fingerprint("m", user_cache)), ConfigError);
    CHECK_FALSE(std::filesystem::exists(path));
    CHECK_THROWS_AS(load_cache_file(path, user_values, 0, make_fingerprint("m", user_values)), ConfigError);
    MultiLayerKVCache<q8_0, fp16> mixed(CacheShape{1, 1, 32}, 1, 4);
    CHECK_THAT(make_fingerprint("m", mixed).cache, Catch::Contains("k=q8_0 v=f16"));
}

TEST_CASE("a user's storage type plugs into caches and attention through ElementTraits", "[element_types][quantised]") {
    using U = user::i16_block;
    constexpr std::size_t H = 2, D = 32, QH = 4, N = 150;
    const auto k = random_normal(N * H * D, 13), v = random_normal(N * H * D, 14);
    MultiLayerKVCache<U> cache(CacheShape{1, H, D}, 1, N);
    cache.append(0, 0, k, v, N);
    MultiLayerKVCache<U, fp16> mixed(CacheShape{1, H, D}, 1, N);
    mixed.append(0, 0, k, v, N);
    PagedKVPool<U> pool(CacheShape{1, H, D}, 20, 8);
    auto seq = pool.sequence(pool.create_sequence());
    seq.append(0, 0, k, v, N);
    const auto kk = through<U>(k);
    CHECK(export_shd(cache, 0, 0, KV::Keys) == kk);
    CHECK(relative_error(kk, k) < 1e-4f);  // 16-bit steps: close to the input
    const auto q = random_normal(2 * QH * D, 15);
    std::vector<float> fast(q.size()), ref(q.size()), paged(q.size());
    attention(cache, 0, 0, q, 2, QH, fast);
    attention_reference(cache, 0, 0, q, 2, QH, ref);
    attention(seq, 0, 0, q, 2, QH, paged);
    CHECK(relative_error(fast, ref) < 1e-5f);
    CHECK(std::memcmp(fast.data(), paged.data(), fast.size() * sizeof(float)) == 0);
    attention(mixed, 0, 0, q, 2, QH, fast);
    attention_reference(mixed, 0, 0, q, 2, QH, ref);
    CHECK(relative_error(fast, ref) < 1e-5f);
}

TEST_CASE("q8_0 quantisation follows its definition on ties, signed zeros, NaN, infinities and tiny values",
          "[element_types][quantised]") {
    // The definition written out (gguf-py's Q8_0.quantize_blocks with np_roundf): d = max|x| / 127 (NaN ignored by
    // the max), q = round-half-away(x * (1 / d)), and 0 where that is not a number. The library's vector path
    // must give these bits.
    const auto define = [](const float* x, q8_0& out) {
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) {
            if (std::fabs(x[j]) > amax) amax = std::fabs(x[j]);
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        out.d = fp16(d);
        for (int j = 0; j < 32; ++j) {
            volatile float n = x[j] * id;  // rounded on its own, as numpy does
            const float a = std::fabs(n), whole = std::floor(a);
            const float b = whole + std::floor(2.0f * (a - whole));
            const float q = n < 0.0f ? -b : b;
            out.qs[j] = std::isfinite(q) && std::fabs(q) <= 127.0f ? static_cast<std::int8_t>(q) : std::int8_t{0};
        }
    };
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    std::vector<std::vector<float>> blocks;
    // amax 127: the scale is 1, so x * id is x and the ties are exact
    std::vector<float> ties = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, -126.5f, 0.49999997f,
                               -0.49999997f, 0.0f, -0.0f, 1e-30f, -1e-30f, 3.5f, -3.5f, 64.5f, -64.5f, 100.49f};
    ties.resize(32, -7.5f);
    blocks.push_back(ties);
    std::vector<float> with_nan = ties;
    with_nan[3] = nan;
    with_nan[20] = -nan;
    blocks.push_back(with_nan);
    std::vector<float> with_inf(32, 1.0f);
    with_inf[7] = -inf;
    with_inf[9] = 2.5f;
    blocks.push_back(with_inf);
    blocks.push_back(std::vector<float>(32, 0.0f));
    blocks.push_back(std::vector<float>(32, nan));
    std::vector<float> tiny(32);
    for (int j = 0; j < 32; ++j) tiny[j] = static_cast<float>(j - 16) * 1e-40f;  // subnormal inputs
    blocks.push_back(tiny);
    const auto noise = random_normal(16 * 32, 11, 3.0f);
    for (std::size_t b = 0; b < 16; ++b) blocks.emplace_back(noise.begin() + b * 32, noise.begin() + (b + 1) * 32);
    std::vector<float> all;
    for (const auto& b : blocks) all.insert(all.end(), b.begin(), b.end());
    std::vector<q8_0> got(blocks.size()), expected(blocks.size());
    convert_from_float(all.data(), got.data(), all.size());
    for (std::size_t b = 0; b < blocks.size(); ++b) {
        define(blocks[b].data(), expected[b]);
        CAPTURE(b);
        CHECK(std::memcmp(&got[b], &expected[b], sizeof(q8_0)) == 0);
    }
    CHECK(got[0].qs[1] == 1);   // 0.5 rounds away from zero
    CHECK(got[0].qs[3] == 3);   // 2.5 too (not to even)
    CHECK(got[0].qs[6] == -3);
    CHECK(got[0].qs[9] == 0);   // just below a half
    CHECK(got[1].qs[3] == 0);   // NaN
    CHECK(got[2].qs[7] == 0);   // the infinity's own code; the others are 0 as well (their scale is inf)
}
