// A paged pool whose keys and values have different storage types: rows read back as each type's values,
// attention equals the contiguous mixed cache's bit for bit, copy-on-write and context shift work, regions of
// types with different alignment are placed correctly, and what cannot hold a mix (cache files) says so.
#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <vector>

#include "kvcache/attention/attention.hpp"
#include "kvcache/cache/context_shift.hpp"
#include "kvcache/cache/layout.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/cache/paged_kv_cache.hpp"
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

template <class T>
std::vector<float> through(const std::vector<float>& x) {
    std::vector<T> stored(storage_units<T>(x.size()));
    std::vector<float> out(x.size());
    convert_from_float(x.data(), stored.data(), x.size());
    convert_to_float(stored.data(), out.data(), x.size());
    return out;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

static_assert(std::is_same_v<key_element_t<PagedSequence<q8_0, q4_0>>, q8_0>);
static_assert(std::is_same_v<value_element_t<PagedSequence<q8_0, q4_0>>, q4_0>);
static_assert(std::is_same_v<value_element_t<PagedSequence<fp16>>, fp16>);

TEMPLATE_TEST_CASE("a paged pool with different key and value types reads, attends, forks and shifts like the "
                   "contiguous mixed cache",
                   "[paged][mixed]", (KV_<q8_0, q4_0>), (KV_<fp16, q4_0h>), (KV_<q4_0, float>)) {
    using K = typename TestType::Key;
    using V = typename TestType::Value;
    constexpr std::size_t L = 2, H = 3, D = 64, QH = 9, N = 150, block = 16;
    const auto k = random_normal(N * H * D, 71), v = random_normal(N * H * D, 72), q = random_normal(2 * QH * D, 73);
    PagedKVPool<K, V> pool(CacheShape{L, H, D}, 2 * PagedKVPool<K, V>::blocks_for(N, block), block);
    auto seq = pool.sequence(pool.create_sequence());
    MultiLayerKVCache<K, V> flat(CacheShape{L, H, D}, 1, N);
    for (std::size_t l = 0; l < L; ++l) {
        seq.append(l, 0, k, v, N);
        flat.append(l, 0, k, v, N);
    }
    CHECK(pool.block_bytes() == PagedKVPool<K, V>::block_bytes_for(std::vector<LayerShape>(L, {H, D}), block));
    CHECK(pool.block_bytes() == L * block * H * (storage_units<K>(D) * sizeof(K) + storage_units<V>(D) * sizeof(V)));
    for (std::size_t l = 0; l < L; ++l) {
        CHECK(export_shd(seq, l, 0, KV::Keys) == through<K>(k));
        CHECK(export_shd(seq, l, 0, KV::Values) == through<V>(v));
    }
    // attention over the paged rows: the contiguous cache's result, bit for bit
    std::vector<float> paged(q.size()), contiguous(q.size());
    attention(seq, 1, 0, q, 2, QH, paged);
    attention(flat, 1, 0, q, 2, QH, contiguous);
    CHECK(same_bits(paged, contiguous));
    // a fork appends into a shared block: copied, the parent keeps its rows
    auto child = pool.sequence(pool.fork(seq.id(), 100));
    const auto extra = random_normal(H * D, 74);
    for (std::size_t l = 0; l < L; ++l) child.append(l, 0, extra, extra, 1);
    CHECK(export_shd(seq, 0, 0, KV::Values) == through<V>(v));
    CHECK(child.seq_len() == 101);
    // a context shift: the contiguous one's result, bit for bit
    const auto add_one = [](std::size_t, std::span<float> keys, std::size_t, std::ptrdiff_t) {
        for (float& x : keys) x += 1.0f;
    };
    context_shift(seq, 0, 4, 37, add_one);
    context_shift(flat, 0, 4, 37, add_one);
    for (std::size_t l = 0; l < L; ++l) {
        CHECK(export_shd(seq, l, 0, KV::Keys) == export_shd(flat, l, 0, KV::Keys));
        CHECK(export_shd(seq, l, 0, KV::Values) == export_shd(flat, l, 0, KV::Values));
    }
}

TEST_CASE("regions of types with different alignment start where their type may start", "[paged][mixed]") {
    // one head of 32, blocks of 3: a layer's q4_0 keys take 3 * 18 = 54 bytes, so its float values start at 56
    PagedKVPool<q4_0, float> pool(CacheShape{2, 1, 32}, 4, 3);
    auto seq = pool.sequence(pool.create_sequence());
    const auto kv = random_normal(5 * 32, 75);
    seq.append(0, 0, kv, kv, 5);
    seq.append(1, 0, kv, kv, 5);
    for (std::size_t l = 0; l < 2; ++l) {
        for (const auto& chunk : seq.chunks(l, 0, 0)) {
            CHECK(reinterpret_cast<std::uintptr_t>(chunk.values) % alignof(float) == 0);
        }
        CHECK(export_shd(seq, l, 0, KV::Values) == kv);
    }
    CHECK(pool.block_bytes() == 2 * (56 + 3 * 32 * 4));
    CHECK(pool.block_bytes() == PagedKVPool<q4_0, float>::block_bytes_for(std::vector<LayerShape>(2, {1, 32}), 3));
}

TEST_CASE("mixed paged pools: typed errors", "[paged][mixed]") {
    // a head size the value type cannot block is refused, naming the values
    try {
        PagedKVPool<float, q8_0> pool(CacheShape{1, 1, 48}, 4, 4);
        FAIL("no error");
    } catch (const ConfigError& e) {
        CHECK_THAT(e.what(), Catch::Contains("48") && Catch::Contains("q8_0") && Catch::Contains("values"));
    }
    // a cache file records the key and value types: a mixed sequence loads only a file of the same two types
    const auto path = std::filesystem::temp_directory_path() / "kvcache_paged_mixed.kvc";
    PagedKVPool<q8_0, q4_0> pool(CacheShape{1, 1, 32}, 4, 4);
    auto seq = pool.sequence(pool.create_sequence());
    const auto kv = random_normal(2 * 32, 76);
    seq.append(0, 0, kv, kv, 2);
    const std::vector<std::int32_t> tokens{1, 2};
    MultiLayerKVCache<q8_0> uniform(CacheShape{1, 1, 32}, 1, 2);
    uniform.append(0, 0, kv, kv, 2);
    save_cache_file(path, uniform, 0, tokens, make_fingerprint("m", uniform), {.durable = false});
    auto empty = pool.sequence(pool.create_sequence());
    CHECK_THROWS_AS(load_cache_file(path, empty, 0, make_fingerprint("m", uniform)), FingerprintMismatch);
    CHECK(empty.seq_len() == 0);
    save_cache_file(path, seq, 0, tokens, make_fingerprint("m", seq), {.durable = false});
    load_cache_file(path, empty, 0, make_fingerprint("m", seq));
    CHECK(export_shd(empty, 0, 0, KV::Keys) == export_shd(seq, 0, 0, KV::Keys));
    CHECK(export_shd(empty, 0, 0, KV::Values) == export_shd(seq, 0, 0, KV::Values));
    std::filesystem::remove(path);
}
