// The cache directory: the quota holds with least recently used files deleted first, keys are checked,
// a file larger than the quota is refused, and prompt lookups find the longest shared prefix.
#include <catch2/catch.hpp>

#include <filesystem>
#include <numeric>
#include <vector>

#include "kb_test_support.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/kb/cache_directory.hpp"

using namespace kvcache;

namespace {

/// A two-layer float cache holding `n` positions of made-up K/V.
MultiLayerKVCache<float> filled_cache(std::size_t n, float seed) {
    MultiLayerKVCache<float> cache(CacheShape{2, 2, 8}, /*batch=*/1, /*capacity=*/std::max<std::size_t>(n, 1));
    std::vector<float> k(n * 16), v(n * 16);
    std::iota(k.begin(), k.end(), seed);
    std::iota(v.begin(), v.end(), -seed);
    for (std::size_t l = 0; l < 2; ++l) cache.append(l, 0, k, v, n);
    return cache;
}

std::vector<std::int32_t> tokens(std::size_t n, std::int32_t first) {
    std::vector<std::int32_t> t(n);
    std::iota(t.begin(), t.end(), first);
    return t;
}

}  // namespace

TEST_CASE("CacheDirectory keeps within its quota, deleting least recently used files first", "[kb][cache_dir]") {
    const auto dir = kb_test::scratch_dir("quota");
    const auto cache = filled_cache(64, 1.0f);
    const CacheFingerprint fp = make_fingerprint("model-a", cache);
    // Measure one file, then allow three.
    std::uint64_t one = 0;
    {
        const CacheDirectory probe(dir / "probe", 1ull << 30);
        one = std::filesystem::file_size(probe.save("x", cache, 0, tokens(64, 0), fp));
    }
    const CacheDirectory d(dir / "caches", 3 * one + one / 2);
    const auto a = d.save("a", cache, 0, tokens(64, 0), fp);
    const auto b = d.save("b", cache, 0, tokens(64, 100), fp);
    const auto c = d.save("c", cache, 0, tokens(64, 200), fp);
    CHECK(d.files() == std::vector<std::filesystem::path>{a, b, c});
    d.touch(a);  // a is now the most recently used
    CHECK(d.files() == std::vector<std::filesystem::path>{b, c, a});
    const auto e = d.save("e", cache, 0, tokens(64, 300), fp);
    CHECK_FALSE(std::filesystem::exists(b));  // least recently used: gone
    CHECK(std::filesystem::exists(a));
    CHECK(std::filesystem::exists(c));
    CHECK(std::filesystem::exists(e));
    CHECK(d.bytes_used() <= d.quota_bytes());
    for (int i = 0; i < 5; ++i) {
        std::string key = "f";
        key += std::to_string(i);  // (not "f" + to_string: GCC 12's -Wrestrict false positive)
        d.save(key, cache, 0, tokens(64, 400 + 100 * i), fp);
        CHECK(d.bytes_used() <= d.quota_bytes());
        CHECK(d.files().size() == 3);
    }
    CHECK(std::filesystem::exists(d.path_for("f4")));

    // A file larger than the whole quota is not kept, and nothing else is deleted for it.
    const CacheDirectory tiny(dir / "tiny", one / 2);
    CHECK_THROWS_AS(tiny.save("big", cache, 0, tokens(64, 0), fp), CapacityError);
    CHECK(tiny.files().empty());

    // Other files in the directory are neither counted nor deleted.
    kb_test::write_file(dir / "caches" / "notes.txt", std::string(4 * one, 'x'));
    d.save("g", cache, 0, tokens(64, 1000), fp);
    CHECK(std::filesystem::exists(dir / "caches" / "notes.txt"));
}

TEST_CASE("CacheDirectory keys and quota are checked", "[kb][cache_dir]") {
    const auto dir = kb_test::scratch_dir("keys");
    CHECK_THROWS_AS(CacheDirectory(dir, 0), ConfigError);
    const CacheDirectory d(dir, 1 << 20);
    CHECK(d.path_for("knowledge-0123abcd") == dir / "knowledge-0123abcd.kvc");
    CHECK_THROWS_AS(d.path_for("../escape"), ConfigError);
    CHECK_THROWS_AS(d.path_for(""), ConfigError);
    CHECK_THROWS_AS(d.path_for(".."), ConfigError);
    CHECK_THROWS_AS(d.path_for(std::string(201, 'a')), ConfigError);
    kb_test::write_file(dir / "file", "x");
    CHECK_THROWS_AS(CacheDirectory(dir / "file", 100), IoError);
    const auto cache = filled_cache(4, 0.0f);
    const CacheFingerprint fp = make_fingerprint("m", cache);
    const auto t = tokens(4, 7);
    CHECK(cache_key("k", t, fp) == cache_key("k", t, fp));
    CHECK(cache_key("k", t, fp) != cache_key("k", tokens(4, 8), fp));
    CHECK(cache_key("k", t, fp) != cache_key("k", t, make_fingerprint("other", cache)));
}

TEST_CASE("CacheDirectory::longest_prefix finds the file sharing most leading tokens", "[kb][cache_dir]") {
    const auto dir = kb_test::scratch_dir("prefix");
    const CacheDirectory d(dir, 1ull << 30);
    const auto fp = make_fingerprint("model-a", filled_cache(1, 0.0f));
    std::vector<std::int32_t> prompt = tokens(40, 0);
    std::vector<std::int32_t> ten = tokens(10, 0), thirty = tokens(30, 0);
    std::vector<std::int32_t> forked = tokens(25, 0);
    forked.push_back(999);  // shares 25, then goes elsewhere
    d.save("ten", filled_cache(10, 1.0f), 0, ten, fp);
    d.save("forked", filled_cache(26, 2.0f), 0, forked, fp);
    CHECK(d.longest_prefix(prompt, fp)->common_tokens == 25);
    d.save("thirty", filled_cache(30, 3.0f), 0, thirty, fp);
    const auto best = d.longest_prefix(prompt, fp);
    REQUIRE(best.has_value());
    CHECK(best->path == d.path_for("thirty"));
    CHECK(best->common_tokens == 30);
    // Another model's files never match; neither does a damaged file or a prompt sharing nothing.
    CHECK_FALSE(d.longest_prefix(prompt, make_fingerprint("model-b", filled_cache(1, 0.0f))).has_value());
    CHECK_FALSE(d.longest_prefix(tokens(5, 500), fp).has_value());
    kb_test::write_file(dir / "junk.kvc", "not a cache file");
    CHECK(d.longest_prefix(prompt, fp)->common_tokens == 30);
}
