// Cache files of caches whose keys and values have different element types (format version 2): a round trip
// through every cache type that takes mixed types is bit-exact, a file of one type is still version 1 byte for
// byte (the golden file written before version 2 existed loads and is rewritten identically), a file loads only
// into a cache with the same key and value types, and every byte of a version-2 file is still checked.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "kvcache/cache/kv_cache.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/persist/cache_file.hpp"
#include "kvcache/testing/random.hpp"

using namespace kvcache;
namespace fs = std::filesystem;

namespace {

template <class K, class V>
struct KV_ {
    using Key = K;
    using Value = V;
};

struct TempDir {
    fs::path path = fs::temp_directory_path() / ("kvcache_mixed_" + std::to_string(::getpid()));
    TempDir() { fs::create_directories(path); }
    ~TempDir() { fs::remove_all(path); }
    fs::path operator/(const std::string& name) const { return path / name; }
};

std::vector<unsigned char> read_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void write_bytes(const fs::path& p, const std::vector<unsigned char>& bytes) {
    fs::remove(p);
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

/// Random storage bits for (layer, row), any element type (NaN scales and payloads included): append_elements
/// stores them as they are, so a round trip must give every bit back.
template <class Cache>
void fill_random_bits(Cache& cache, std::size_t layer, std::size_t n, std::uint64_t seed) {
    using K = key_element_t<Cache>;
    using V = value_element_t<Cache>;
    const std::size_t heads = cache.num_kv_heads(layer), dim = cache.head_dim(layer);
    std::vector<K> k(n * heads * storage_units<K>(dim));
    std::vector<V> v(n * heads * storage_units<V>(dim));
    testing::Rng rng(seed);
    auto randomise = [&rng](void* p, std::size_t bytes) {
        auto* out = static_cast<unsigned char*>(p);
        for (std::size_t i = 0; i < bytes; ++i) out[i] = static_cast<unsigned char>(rng.next_u64());
    };
    randomise(k.data(), k.size() * sizeof(K));
    randomise(v.data(), v.size() * sizeof(V));
    cache.append_elements(layer, 0, k.data(), v.data(), n);
}

/// The stored bytes of row 0 of every layer, keys and values, read through chunks().
template <class Cache>
std::vector<unsigned char> stored_bytes(const Cache& cache) {
    using K = key_element_t<Cache>;
    using V = value_element_t<Cache>;
    std::vector<unsigned char> out;
    for (std::size_t l = 0; l < cache.num_layers(); ++l) {
        const std::size_t d = cache.head_dim(l);
        for (std::size_t h = 0; h < cache.num_kv_heads(l); ++h) {
            for (const auto& c : cache.chunks(l, 0, h)) {
                for (std::size_t p = 0; p < c.length; ++p) {
                    const auto* k = reinterpret_cast<const unsigned char*>(c.keys + p * c.key_row_stride(d));
                    const auto* v = reinterpret_cast<const unsigned char*>(c.values + p * c.value_row_stride(d));
                    out.insert(out.end(), k, k + storage_units<K>(d) * sizeof(K));
                    out.insert(out.end(), v, v + storage_units<V>(d) * sizeof(V));
                }
            }
        }
    }
    return out;
}

std::vector<std::int32_t> token_ids(std::size_t n) {
    std::vector<std::int32_t> t(n);
    for (std::size_t i = 0; i < n; ++i) t[i] = static_cast<std::int32_t>(1000 + 7 * i);
    return t;
}

std::uint32_t u32_at(const std::vector<unsigned char>& b, std::size_t at) {
    std::uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | b[at + static_cast<std::size_t>(i)];
    return v;
}
void set_u16(std::vector<unsigned char>& b, std::size_t at, std::uint32_t v) {
    b[at] = static_cast<unsigned char>(v & 0xff);
    b[at + 1] = static_cast<unsigned char>((v >> 8) & 0xff);
}
/// Recomputes the header checksum after an edit, so the check behind it is the one that fires.
void reseal(std::vector<unsigned char>& b) {
    const std::uint64_t sum = cache_file_checksum(std::as_bytes(std::span(b.data(), 56)));
    for (int i = 0; i < 8; ++i) b[56 + static_cast<std::size_t>(i)] = static_cast<unsigned char>((sum >> (8 * i)) & 0xff);
}

const std::string kModel = "mixed-test-model";

}  // namespace

TEMPLATE_TEST_CASE("cache file: keys and values of different element types round-trip bit for bit through every "
                   "cache type that takes them",
                   "[cache_file][mixed]", (KV_<q8_0, q4_0>), (KV_<fp16, q4_0h>), (KV_<q4_0, float>), (KV_<bf16, q8_0>)) {
    using K = typename TestType::Key;
    using V = typename TestType::Value;
    constexpr std::size_t L = 2, H = 3, D = 64, N = 37, block = 8;
    TempDir dir;
    MultiLayerKVCache<K, V> source(CacheShape{L, H, D}, 1, N);
    for (std::size_t l = 0; l < L; ++l) fill_random_bits(source, l, N, 90 + l);
    const auto fp = make_fingerprint(kModel, source);
    save_cache_file(dir / "m.kvc", source, 0, token_ids(N), fp, {.durable = false});

    const CacheFileInfo info = read_cache_file_info(dir / "m.kvc", VerifyPayload::yes);
    CHECK(info.version == 2);
    CHECK(info.key_element == element_name<K>());
    CHECK(info.value_element == element_name<V>());
    CHECK(info.element == fmt::format("k={} v={}", element_name<K>(), element_name<V>()));
    // the payload is exactly each half's own size: keys and values sections differ
    const std::size_t payload = N * H * (storage_units<K>(D) * sizeof(K) + storage_units<V>(D) * sizeof(V)) * L;
    CHECK(info.file_bytes >= payload);
    CHECK(info.file_bytes < payload + 1024);

    KVCache<L, H, D, K, V> fixed(1, N);
    CHECK(load_cache_file(dir / "m.kvc", fixed, 0, fp).tokens == token_ids(N));
    CHECK(stored_bytes(fixed) == stored_bytes(source));

    PagedKVPool<K, V> pool(CacheShape{L, H, D}, PagedKVPool<K, V>::blocks_for(N, block), block);
    auto seq = pool.sequence(pool.create_sequence());
    load_cache_file(dir / "m.kvc", seq, 0, fp);
    CHECK(seq.seq_len() == N);
    CHECK(stored_bytes(seq) == stored_bytes(source));

    // and back out of the paged sequence (one chunk per block): the same file, byte for byte
    save_cache_file(dir / "p.kvc", seq, 0, token_ids(N), fp, {.durable = false});
    CHECK(read_bytes(dir / "p.kvc") == read_bytes(dir / "m.kvc"));
}

TEST_CASE("cache file: a file of one element type is still version 1; the golden version-1 file loads and is "
          "rewritten identically",
          "[cache_file][mixed]") {
    // tests/fixtures/cache_file/q8_0_v1.kvc was written by the version-1-only writer (before issue 14's
    // mixed types) from this cache: q8_0, layers of 2x32 and 1x32, 3 tokens, fingerprint model
    // "golden-v1-model".
    MultiLayerKVCache<q8_0> cache(std::vector<LayerShape>{{2, 32}, {1, 32}}, 1, 3);
    for (std::size_t l = 0; l < 2; ++l) {
        const std::size_t w = cache.num_kv_heads(l) * 32 * 3;
        std::vector<float> k(w), v(w);
        for (std::size_t i = 0; i < w; ++i) {
            k[i] = static_cast<float>(static_cast<int>(i % 17) - 8) / 4.0f + static_cast<float>(l);
            v[i] = static_cast<float>(static_cast<int>(i % 13) - 6) / 2.0f - static_cast<float>(l);
        }
        cache.append(l, 0, k, v, 3);
    }
    const std::vector<std::int32_t> tokens{101, 202, 303};
    const auto fp = make_fingerprint("golden-v1-model", cache);
    const fs::path golden = fs::path(KVCACHE_FIXTURES_DIR) / "cache_file" / "q8_0_v1.kvc";

    const auto info = read_cache_file_info(golden, VerifyPayload::yes);
    CHECK(info.version == 1);
    CHECK(info.element == "q8_0");
    CHECK(info.key_element == "q8_0");
    CHECK(info.value_element == "q8_0");
    MultiLayerKVCache<q8_0> loaded(std::vector<LayerShape>{{2, 32}, {1, 32}}, 1, 3);
    CHECK(load_cache_file(golden, loaded, 0, fp).tokens == tokens);
    CHECK(stored_bytes(loaded) == stored_bytes(cache));

    TempDir dir;
    save_cache_file(dir / "again.kvc", cache, 0, tokens, fp, {.durable = false});
    CHECK(read_bytes(dir / "again.kvc") == read_bytes(golden));
    CHECK(u32_at(read_bytes(dir / "again.kvc"), 8) == 1);
}

TEST_CASE("cache file: a file loads only into a cache with its key and value types", "[cache_file][mixed]") {
    constexpr std::size_t H = 2, D = 32, N = 5;
    TempDir dir;
    MultiLayerKVCache<q8_0, q4_0> mixed(CacheShape{1, H, D}, 1, N);
    fill_random_bits(mixed, 0, N, 5);
    const auto fp = make_fingerprint(kModel, mixed);
    save_cache_file(dir / "mixed.kvc", mixed, 0, token_ids(N), fp, {.durable = false});
    MultiLayerKVCache<q8_0> uniform(CacheShape{1, H, D}, 1, N);
    fill_random_bits(uniform, 0, N, 6);
    save_cache_file(dir / "uniform.kvc", uniform, 0, token_ids(N), fp, {.durable = false});  // the caller's fingerprint

    auto refused = [&](const std::string& file, auto& target, const std::string& file_says, const std::string& cache_says) {
        try {
            load_cache_file(dir / file, target, 0, fp);  // the fingerprint matches: the element codes decide
            FAIL("loaded a file of other element types");
        } catch (const FingerprintMismatch& e) {
            CHECK_THAT(e.what(), Catch::Contains(file_says) && Catch::Contains(cache_says));
        }
        CHECK(target.seq_len(0, 0) == 0);
    };
    MultiLayerKVCache<q4_0, q8_0> swapped(CacheShape{1, H, D}, 1, N);
    refused("mixed.kvc", swapped, "stores keys as q8_0 and values as q4_0", "cache stores keys as q4_0 and values as q8_0");
    MultiLayerKVCache<q8_0> one_type(CacheShape{1, H, D}, 1, N);
    refused("mixed.kvc", one_type, "stores keys as q8_0 and values as q4_0", "cache stores keys as q8_0 and values as q8_0");
    MultiLayerKVCache<q8_0, q4_0> empty_mixed(CacheShape{1, H, D}, 1, N);
    refused("uniform.kvc", empty_mixed, "stores keys as q8_0 and values as q8_0", "cache stores keys as q8_0 and values as q4_0");
    // a mixed file by its fingerprint: the usual mismatch naming both configurations
    try {
        load_cache_file(dir / "mixed.kvc", swapped, 0, make_fingerprint(kModel, swapped));
        FAIL("loaded");
    } catch (const FingerprintMismatch& e) {
        CHECK_THAT(e.what(), Catch::Contains("k=q8_0 v=q4_0") && Catch::Contains("k=q4_0 v=q8_0"));
    }
}

TEST_CASE("cache file: every byte of a version-2 file is checked", "[cache_file][mixed]") {
    TempDir dir;
    MultiLayerKVCache<fp16, q4_0> cache(std::vector<LayerShape>{{1, 32}, {2, 32}}, 1, 3);
    fill_random_bits(cache, 0, 3, 11);
    fill_random_bits(cache, 1, 3, 12);
    const auto fp = make_fingerprint(kModel, cache);
    save_cache_file(dir / "good.kvc", cache, 0, token_ids(3), fp, {.durable = false});
    const auto bytes = read_bytes(dir / "good.kvc");
    auto rejected = [&](const std::vector<unsigned char>& b) -> std::string {
        write_bytes(dir / "bad.kvc", b);
        MultiLayerKVCache<fp16, q4_0> target(std::vector<LayerShape>{{1, 32}, {2, 32}}, 1, 3);
        try {
            load_cache_file(dir / "bad.kvc", target, 0, fp);
        } catch (const FormatError& e) {
            CHECK(target.seq_len(0, 0) + target.seq_len(1, 0) == 0);
            return e.what();
        }
        return "loaded";
    };
    CHECK(u32_at(bytes, 8) == 2);
    CHECK(rejected(bytes) == "loaded");
    for (std::size_t at = 0; at < bytes.size(); ++at) {
        auto b = bytes;
        b[at] ^= static_cast<unsigned char>(1u << (at % 8));
        const std::string what = rejected(b);
        if (at >= 12) CHECK_THAT(what, Catch::Contains("corrupted"));
        else CHECK(what != "loaded");
    }
    for (std::size_t n = 0; n < bytes.size(); n += 7) {
        CHECK_THAT(rejected(std::vector<unsigned char>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n))),
                   Catch::Contains("truncated"));
    }
    SECTION("element fields of version 2, checksums intact") {
        auto b = bytes;
        set_u16(b, 34, 9);  // value code
        reseal(b);
        CHECK_THAT(rejected(b), Catch::Contains("unknown element type 9 of 18 bytes for the values"));
        b = bytes;
        set_u16(b, 36, 4);  // key bytes: f16 is 2
        reseal(b);
        CHECK_THAT(rejected(b), Catch::Contains("unknown element type 2 of 4 bytes for the keys"));
        b = bytes;
        set_u16(b, 34, 2);  // values claim f16: 32 values of 2 bytes per row, not one 18-byte block
        set_u16(b, 38, 2);
        reseal(b);
        CHECK_THAT(rejected(b), Catch::Contains("values of layer 0 section has 54 bytes; 3 tokens of 1x32 f16 need 192"));
        b = bytes;
        set_u16(b, 32, 6);  // keys: the retired first q4_0h (32-value rotations) is refused by name
        reseal(b);
        CHECK_THAT(rejected(b), Catch::Contains("element type 6 for the keys is the first q4_0h"));
        b = bytes;
        b[8] = 3;  // a version this reader does not know
        reseal(b);
        CHECK_THAT(rejected(b), Catch::Contains("format version 3 is not one this reader knows (it reads version 1 to 2)"));
    }
}
