// kvcache::header_only: a program with no compiled kvcache library (this executable links no libkvcache; the
// core's sources come from kvcache/implementation.hpp in implementation.cpp) gets the whole core — the pool,
// fast attention on two threads equal to the reference, and a cache file written and read back bit for bit.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <vector>

#include "kvcache/detail/thread_pool.hpp"
#include "kvcache/kvcache.hpp"

using namespace kvcache;

TEST_CASE("header-only: attention on two pool threads matches the reference", "[header_only]") {
    KVCache<1, 2, 32, float> cache(1, 512);
    const std::size_t n = 512;  // 256 KiB of K/V: above the size at which attention uses more than one thread
    const auto k = testing::random_normal(n * 2 * 32, 1);
    const auto v = testing::random_normal(n * 2 * 32, 2);
    cache.append(0, 0, k, v, n);
    const auto q = testing::random_normal(4 * 32, 3);  // 4 query heads over 2 kv heads
    std::vector<float> fast(q.size()), reference(q.size());
    attention(cache, 0, 0, q, 1, 4, fast, {.threads = 2});
    attention_reference(cache, 0, 0, q, 1, 4, reference);
    CHECK(testing::compare_tensors(fast, reference).within(1e-5));
    CHECK(std::string(version()) == KVCACHE_VERSION);
}

TEST_CASE("header-only: parallel_for runs every task once on the pool", "[header_only]") {
    std::vector<int> runs(1000, 0);
    detail::parallel_for(runs.size(), 10, 2, [&](std::size_t begin, std::size_t end) {
        for (std::size_t i = begin; i < end; ++i) ++runs[i];  // each task is claimed by one thread only
    });
    CHECK(std::count(runs.begin(), runs.end(), 1) == 1000);
}

TEST_CASE("header-only: a cache file round trip through the mapped-file reader", "[header_only]") {
    const auto path = std::filesystem::temp_directory_path() /
                      ("kvcache-header-only-" + std::to_string(::getpid()) + ".kvc");
    KVCache<2, 1, 16, fp16> source(1, 8), target(1, 8);
    const auto k = testing::random_normal(5 * 16, 4);
    const auto v = testing::random_normal(5 * 16, 5);
    for (std::size_t layer = 0; layer < 2; ++layer) source.append(layer, 0, k, v, 5);
    const std::vector<std::int32_t> ids = {1, 2, 3, 4, 5};
    const auto fingerprint = make_fingerprint("header-only test", source);
    save_cache_file(path, source, 0, ids, fingerprint);
    const CacheFileInfo info = load_cache_file(path, target, 0, fingerprint);
    std::filesystem::remove(path);
    CHECK(info.tokens == ids);
    for (std::size_t layer = 0; layer < 2; ++layer) {
        CHECK(std::memcmp(source.keys(layer, 0, 0).data(), target.keys(layer, 0, 0).data(), 5 * sizeof(fp16) * 16) == 0);
        CHECK(std::memcmp(source.values(layer, 0, 0).data(), target.values(layer, 0, 0).data(), 5 * sizeof(fp16) * 16) == 0);
    }
}
