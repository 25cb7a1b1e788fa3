// Cache files: save -> load is bit-exact for every cache type and element type, and every malformed,
// truncated, corrupted or foreign file is rejected with the cache unchanged and no temporary file left.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <future>
#include <type_traits>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "kvcache/cache/kv_cache.hpp"
#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/persist/cache_file.hpp"
#include "kvcache/testing/random.hpp"

using namespace kvcache;
namespace fs = std::filesystem;

namespace {

/// A fresh directory under the system temp dir, removed with everything in it at the end of the test.
struct TempDir {
    fs::path path;
    TempDir() {
        static std::atomic<int> counter{0};
        path = fs::temp_directory_path() /
               ("kvcache_cache_file_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    fs::path operator/(const std::string& name) const { return path / name; }
    std::vector<std::string> entries() const {
        std::vector<std::string> out;
        for (const auto& e : fs::directory_iterator(path)) out.push_back(e.path().filename().string());
        std::sort(out.begin(), out.end());
        return out;
    }
};

std::vector<unsigned char> read_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void write_bytes(const fs::path& p, const std::vector<unsigned char>& bytes) {
    // A new file each time: ext4 flushes a file truncated and rewritten in place on close (auto_da_alloc),
    // which made the thousands of variants below take seconds.
    fs::remove(p);
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

/// Fills positions [at, at + n) of (layer, row) with random bit patterns of the element type (NaNs,
/// infinities, subnormals included) through append_elements: a round trip must keep every bit.
template <class Cache>
void fill_random_bits(Cache& cache, std::size_t layer, std::size_t row, std::size_t n, std::uint64_t seed) {
    using T = typename Cache::element_type;
    const std::size_t count = n * cache.num_kv_heads(layer) * cache.head_dim(layer);
    std::vector<T> k(count), v(count);
    testing::Rng rng(seed);
    auto random_element = [&rng] {
        const std::uint64_t bits = rng.next_u64();
        if constexpr (std::is_same_v<T, float>) {
            return std::bit_cast<float>(static_cast<std::uint32_t>(bits));
        } else {
            return T::from_bits(static_cast<std::uint16_t>(bits));
        }
    };
    for (std::size_t i = 0; i < count; ++i) {
        k[i] = random_element();
        v[i] = random_element();
    }
    cache.append_elements(layer, row, k.data(), v.data(), n);
}

template <class Cache>
void fill_row(Cache& cache, std::size_t row, std::size_t n, std::uint64_t seed) {
    for (std::size_t l = 0; l < cache.num_layers(); ++l) fill_random_bits(cache, l, row, n, seed + 17 * l);
}

/// The bytes of (layer, row)'s cached positions, read through chunks(): what a round trip must preserve.
template <class Cache>
std::vector<unsigned char> row_bytes(const Cache& cache, std::size_t layer, std::size_t row) {
    using T = typename Cache::element_type;
    std::vector<unsigned char> out;
    const std::size_t d = cache.head_dim(layer);
    for (std::size_t h = 0; h < cache.num_kv_heads(layer); ++h) {
        for (const auto& c : cache.chunks(layer, row, h)) {
            for (std::size_t p = 0; p < c.length; ++p) {
                const auto* k = reinterpret_cast<const unsigned char*>(c.keys + p * c.row_stride(d));
                const auto* v = reinterpret_cast<const unsigned char*>(c.values + p * c.row_stride(d));
                out.insert(out.end(), k, k + d * sizeof(T));
                out.insert(out.end(), v, v + d * sizeof(T));
            }
        }
    }
    return out;
}

/// Everything observable about a contiguous cache: lengths, capacity and every byte of its storage.
template <class Cache>
std::vector<unsigned char> snapshot(const Cache& cache) {
    using T = typename Cache::element_type;
    std::vector<unsigned char> out;
    auto put = [&](std::size_t x) {
        const auto* p = reinterpret_cast<const unsigned char*>(&x);
        out.insert(out.end(), p, p + sizeof x);
    };
    put(cache.capacity());
    for (std::size_t l = 0; l < cache.num_layers(); ++l) {
        for (std::size_t r = 0; r < cache.batch_size(); ++r) {
            put(cache.seq_len(l, r));
            const std::size_t bytes = cache.num_kv_heads(l) * cache.capacity() * cache.head_dim(l) * sizeof(T);
            const auto* k = reinterpret_cast<const unsigned char*>(cache.key_data(l, r));
            const auto* v = reinterpret_cast<const unsigned char*>(cache.value_data(l, r));
            out.insert(out.end(), k, k + bytes);
            out.insert(out.end(), v, v + bytes);
        }
    }
    return out;
}

std::vector<std::int32_t> token_ids(std::size_t n, std::int32_t first = 1) {
    std::vector<std::int32_t> ids(n);
    for (std::size_t i = 0; i < n; ++i) ids[i] = first + static_cast<std::int32_t>(i * 7919 % 49152) - 3;
    return ids;
}

// ---- the documented layout, read independently of the library (docs/cache-file-format.md) ----
std::uint32_t u32_at(const std::vector<unsigned char>& b, std::size_t at) {
    return static_cast<std::uint32_t>(b[at]) | static_cast<std::uint32_t>(b[at + 1]) << 8 |
           static_cast<std::uint32_t>(b[at + 2]) << 16 | static_cast<std::uint32_t>(b[at + 3]) << 24;
}
std::uint64_t u64_at(const std::vector<unsigned char>& b, std::size_t at) {
    return static_cast<std::uint64_t>(u32_at(b, at)) | static_cast<std::uint64_t>(u32_at(b, at + 4)) << 32;
}
void set_u32(std::vector<unsigned char>& b, std::size_t at, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) b[at + static_cast<std::size_t>(i)] = static_cast<unsigned char>(v >> (8 * i));
}
void set_u64(std::vector<unsigned char>& b, std::size_t at, std::uint64_t v) {
    for (int i = 0; i < 8; ++i) b[at + static_cast<std::size_t>(i)] = static_cast<unsigned char>(v >> (8 * i));
}
std::uint64_t checksum_of(const std::vector<unsigned char>& b, std::size_t at, std::size_t n) {
    return cache_file_checksum(std::as_bytes(std::span(b.data() + at, n)));
}
struct Entry {
    std::uint32_t kind, layer;
    std::uint64_t offset, bytes, checksum;
};
std::vector<Entry> sections_of(const std::vector<unsigned char>& b) {
    std::vector<Entry> out(u32_at(b, 44));
    for (std::size_t i = 0; i < out.size(); ++i) {
        const std::size_t at = 64 + 32 * i;
        out[i] = {u32_at(b, at), u32_at(b, at + 4), u64_at(b, at + 8), u64_at(b, at + 16), u64_at(b, at + 24)};
    }
    return out;
}
/// Recomputes the table and header checksums after a deliberate edit, so only the edit itself is wrong.
void reseal(std::vector<unsigned char>& b) {
    const std::size_t n = u32_at(b, 44);
    set_u64(b, 48, checksum_of(b, 64, 32 * n));
    set_u64(b, 56, checksum_of(b, 0, 56));
}

constexpr std::size_t L = 3, H = 2, D = 8;
const std::string kModel = "test-model xxh3-64:0123456789abcdef";

}  // namespace

TEMPLATE_TEST_CASE("cache file: KVCache save -> load is bit-exact, every row, with its tokens", "[cache_file]", float,
                   fp16, bf16) {
    TempDir dir;
    using Cache = KVCache<L, H, D, TestType>;
    Cache source(3, 40);
    const std::size_t lengths[3] = {5, 33, 1};
    for (std::size_t r = 0; r < 3; ++r) fill_row(source, r, lengths[r], 100 + r);
    const auto fp = make_fingerprint(kModel, source);

    for (std::size_t r = 0; r < 3; ++r) {
        const auto path = dir / ("row" + std::to_string(r) + ".kvc");
        const auto ids = token_ids(lengths[r], static_cast<std::int32_t>(r));
        save_cache_file(path, source, r, ids, fp);
        CHECK(dir.entries().size() == r + 1);  // the file, and no temporary beside it

        Cache target(2, 40);
        fill_row(target, 0, 3, 999);  // other rows keep their contents
        const auto other_before = row_bytes(target, 1, 0);
        const CacheFileInfo info = load_cache_file(path, target, 1, fp);
        CHECK(info.tokens == ids);
        CHECK(info.fingerprint == fp);
        CHECK(info.element == element_name<TestType>());
        CHECK(info.version == 1);
        CHECK(info.layers == std::vector<LayerShape>(L, LayerShape{H, D}));
        CHECK(info.file_bytes == fs::file_size(path));
        for (std::size_t l = 0; l < L; ++l) {
            CHECK(target.seq_len(l, 1) == lengths[r]);
            CHECK(row_bytes(target, l, 1) == row_bytes(source, l, r));
            CHECK(target.seq_len(l, 0) == 3);
        }
        CHECK(row_bytes(target, 1, 0) == other_before);
    }
}

TEMPLATE_TEST_CASE("cache file: MultiLayerKVCache with per-layer GQA shapes, fixed and growing", "[cache_file]", float,
                   fp16, bf16) {
    TempDir dir;
    const std::vector<LayerShape> shapes{{2, 8}, {4, 16}, {1, 4}, {3, 64}};
    MultiLayerKVCache<TestType> source(shapes, 2, 64);
    fill_row(source, 0, 50, 7);
    fill_row(source, 1, 64, 8);
    const auto fp = make_fingerprint(kModel, source);
    CHECK(fp.cache == std::string(element_name<TestType>()) + " layers=4 kv_heads x head_dim=2x8,4x16,1x4,3x64");
    const auto path = dir / "c.kvc";
    const auto ids = token_ids(64);
    save_cache_file(path, source, 1, ids, fp);

    SECTION("into a fixed cache with room") {
        MultiLayerKVCache<TestType> target(shapes, 1, 64);
        CHECK(load_cache_file(path, target, 0, fp).tokens == ids);
        for (std::size_t l = 0; l < shapes.size(); ++l) CHECK(row_bytes(target, l, 0) == row_bytes(source, l, 1));
    }
    SECTION("into a growing cache, which reserves once") {
        MultiLayerKVCache<TestType> target(shapes, 3, 4, Growth::Grow);
        load_cache_file(path, target, 2, fp);
        CHECK(target.capacity() >= 64);
        for (std::size_t l = 0; l < shapes.size(); ++l) {
            CHECK(row_bytes(target, l, 2) == row_bytes(source, l, 1));
            CHECK(target.seq_len(l, 0) == 0);
        }
        // and appending continues after the loaded positions
        fill_random_bits(target, 0, 2, 1, 5);
        CHECK(target.seq_len(0, 2) == 65);
    }
    SECTION("a fixed cache too small: CapacityError, cache unchanged") {
        MultiLayerKVCache<TestType> target(shapes, 1, 63);
        const auto before = snapshot(target);
        CHECK_THROWS_AS(load_cache_file(path, target, 0, fp), CapacityError);
        CHECK(snapshot(target) == before);
    }
}

TEST_CASE("cache file: a file moves between cache types of the same configuration", "[cache_file]") {
    TempDir dir;
    KVCache<L, H, D, fp16> fixed(1, 16);
    fill_row(fixed, 0, 9, 3);
    const auto path = dir / "x.kvc";
    save_cache_file(path, fixed, 0, token_ids(9), make_fingerprint(kModel, fixed));
    MultiLayerKVCache<fp16> multi(CacheShape{L, H, D}, 1, 9);
    CHECK(cache_fingerprint(multi) == cache_fingerprint(fixed));
    load_cache_file(path, multi, 0, make_fingerprint(kModel, multi));
    for (std::size_t l = 0; l < L; ++l) CHECK(row_bytes(multi, l, 0) == row_bytes(fixed, l, 0));
}

TEST_CASE("cache file: an empty sequence saves and loads", "[cache_file]") {
    TempDir dir;
    KVCache<L, H, D> cache(1, 4);
    const auto fp = make_fingerprint(kModel, cache);
    save_cache_file(dir / "e.kvc", cache, 0, {}, fp);
    KVCache<L, H, D> target(1, 4);
    CHECK(load_cache_file(dir / "e.kvc", target, 0, fp).tokens.empty());
    CHECK(target.seq_len(0) == 0);
}

namespace {
/// A cache with only the concept's API (no append_elements, no capacity): load converts through floats.
/// Optionally fails in append at one layer, and can truncate rows, to test the rollback.
template <class T>
struct PlainCache {
    using element_type = T;
    MultiLayerKVCache<T> inner;
    std::size_t fail_at_layer = SIZE_MAX;
    std::size_t num_layers() const { return inner.num_layers(); }
    std::size_t batch_size() const { return inner.batch_size(); }
    std::size_t num_kv_heads(std::size_t l) const { return inner.num_kv_heads(l); }
    std::size_t head_dim(std::size_t l) const { return inner.head_dim(l); }
    std::size_t seq_len(std::size_t l, std::size_t r) const { return inner.seq_len(l, r); }
    auto chunks(std::size_t l, std::size_t r, std::size_t h) const { return inner.chunks(l, r, h); }
    void append(std::size_t l, std::size_t r, std::span<const float> k, std::span<const float> v, std::size_t n) {
        if (l == fail_at_layer) throw CapacityError("out of blocks");
        inner.append(l, r, k, v, n);
    }
    void truncate_row(std::size_t r, std::size_t n) { inner.truncate_row(r, n); }
};

/// A readable view of row 0 of a cache that hands out each head as chunks of 3 positions, in reverse order,
/// from copies whose rows are 2 * head_dim apart (stride != head_dim): like a paged cache would.
template <class T>
struct ChunkedView {
    using element_type = T;
    const MultiLayerKVCache<T>* inner;
    std::size_t lie_about_layer = SIZE_MAX;  // that layer's chunks miss the last position
    std::vector<std::vector<T>> strided;     // (layer, head, K|V): [position][2 * head_dim]

    explicit ChunkedView(const MultiLayerKVCache<T>* cache, std::size_t lie = SIZE_MAX) : inner(cache), lie_about_layer(lie) {
        for (std::size_t l = 0; l < num_layers(); ++l) {
            const std::size_t d = head_dim(l), n = seq_len(l, 0);
            for (std::size_t h = 0; h < num_kv_heads(l); ++h) {
                for (const auto src : {inner->keys(l, 0, h), inner->values(l, 0, h)}) {
                    std::vector<T> rows(2 * d * n);
                    for (std::size_t p = 0; p < n; ++p) std::copy_n(src.data() + p * d, d, rows.data() + 2 * d * p);
                    strided.push_back(std::move(rows));
                }
            }
        }
    }
    std::size_t num_layers() const { return inner->num_layers(); }
    std::size_t batch_size() const { return 1; }
    std::size_t num_kv_heads(std::size_t l) const { return inner->num_kv_heads(l); }
    std::size_t head_dim(std::size_t l) const { return inner->head_dim(l); }
    std::size_t seq_len(std::size_t l, std::size_t r) const { return inner->seq_len(l, r); }
    std::vector<KVChunk<T>> chunks(std::size_t l, std::size_t r, std::size_t h) const {
        std::size_t index = 0;
        for (std::size_t i = 0; i < l; ++i) index += 2 * num_kv_heads(i);
        index += 2 * h;
        const std::size_t n = seq_len(l, r) - (l == lie_about_layer ? 1 : 0), d = head_dim(l);
        std::vector<KVChunk<T>> out;
        for (std::size_t start = 0; start < n; start += 3) {
            const std::size_t len = std::min<std::size_t>(3, n - start);
            out.insert(out.begin(), KVChunk<T>{strided[index].data() + start * 2 * d,
                                               strided[index + 1].data() + start * 2 * d, start, len, 2 * d});
        }
        return out;
    }
};
}  // namespace

static_assert(KVCacheLike<PlainCache<float>> && !ElementAppendableKVCache<PlainCache<float>>);
static_assert(KVCacheReadable<ChunkedView<float>>);
static_assert(ElementAppendableKVCache<KVCache<1, 1, 1, bf16>> && ElementAppendableKVCache<MultiLayerKVCache<fp16>>);

TEMPLATE_TEST_CASE("cache file: generic caches (chunked reads, append through floats, rollback)", "[cache_file]",
                   float, fp16, bf16) {
    TempDir dir;
    const std::vector<LayerShape> shapes{{2, 4}, {1, 8}, {2, 4}};
    MultiLayerKVCache<TestType> source(shapes, 1, 20);
    // finite values only: the float path quiets NaN payloads, which append_elements keeps
    for (std::size_t l = 0; l < shapes.size(); ++l) {
        const auto k = testing::random_uniform(11 * shapes[l].token_width(), 40 + l, -3.0f, 3.0f);
        const auto v = testing::random_uniform(11 * shapes[l].token_width(), 80 + l, -3.0f, 3.0f);
        source.append(l, 0, k, v, 11);
    }
    const ChunkedView<TestType> view(&source);
    const auto fp = make_fingerprint(kModel, view);
    save_cache_file(dir / "g.kvc", view, 0, token_ids(11), fp);

    PlainCache<TestType> plain{MultiLayerKVCache<TestType>(shapes, 1, 20)};
    load_cache_file(dir / "g.kvc", plain, 0, fp);
    for (std::size_t l = 0; l < shapes.size(); ++l) CHECK(row_bytes(plain.inner, l, 0) == row_bytes(source, l, 0));

    // a generic cache whose append fails part-way is rolled back through truncate_row
    PlainCache<TestType> failing{MultiLayerKVCache<TestType>(shapes, 1, 20), 2};
    CHECK_THROWS_WITH(load_cache_file(dir / "g.kvc", failing, 0, fp), "out of blocks");
    for (std::size_t l = 0; l < shapes.size(); ++l) CHECK(failing.inner.seq_len(l, 0) == 0);

    // chunks that miss a position are an error, not a file with a hole
    const ChunkedView<TestType> liar(&source, 1);
    CHECK_THROWS_AS(save_cache_file(dir / "h.kvc", liar, 0, token_ids(11), fp), ShapeError);
    CHECK_FALSE(fs::exists(dir / "h.kvc"));
}

namespace {
/// A one-row cache that can only truncate as a whole (like PagedSequence) and fails in append at one layer.
struct OneRowCache {
    using element_type = float;
    MultiLayerKVCache<float> inner{CacheShape{3, 1, 4}, 1, 8};
    std::size_t fail_at_layer = 2;
    std::size_t num_layers() const { return inner.num_layers(); }
    std::size_t batch_size() const { return 1; }
    std::size_t num_kv_heads(std::size_t l) const { return inner.num_kv_heads(l); }
    std::size_t head_dim(std::size_t l) const { return inner.head_dim(l); }
    std::size_t seq_len(std::size_t l, std::size_t r) const { return inner.seq_len(l, r); }
    auto chunks(std::size_t l, std::size_t r, std::size_t h) const { return inner.chunks(l, r, h); }
    void append(std::size_t l, std::size_t r, std::span<const float> k, std::span<const float> v, std::size_t n) {
        if (l == fail_at_layer) throw CapacityError("out of blocks");
        inner.append(l, r, k, v, n);
    }
    void truncate(std::size_t n) { inner.truncate(n); }
};
}  // namespace

TEST_CASE("cache file: paged sequences save and load (chunk per block, append_elements, pool limits)",
          "[cache_file]") {
    TempDir dir;
    const std::vector<LayerShape> shapes{{3, 8}, {3, 8}, {1, 16}};
    PagedKVPool<fp16> pool(shapes, 16, 4);  // 16 blocks of 4 positions
    const SequenceId id = pool.create_sequence();
    PagedSequence<fp16> seq = pool.sequence(id);
    for (std::size_t l = 0; l < shapes.size(); ++l) fill_random_bits(seq, l, 0, 13, 60 + l);  // 4 blocks
    const auto fp = make_fingerprint(kModel, seq);
    save_cache_file(dir / "p.kvc", seq, 0, token_ids(13), fp);

    // into another pool: bit-exact
    PagedKVPool<fp16> other(shapes, 8, 4);
    PagedSequence<fp16> loaded = other.sequence(other.create_sequence());
    CHECK(load_cache_file(dir / "p.kvc", loaded, 0, fp).tokens == token_ids(13));
    for (std::size_t l = 0; l < shapes.size(); ++l) CHECK(row_bytes(loaded, l, 0) == row_bytes(seq, l, 0));

    // into a contiguous cache of the same configuration, and back
    MultiLayerKVCache<fp16> flat(shapes, 1, 13);
    load_cache_file(dir / "p.kvc", flat, 0, make_fingerprint(kModel, flat));
    for (std::size_t l = 0; l < shapes.size(); ++l) CHECK(row_bytes(flat, l, 0) == row_bytes(seq, l, 0));

    // a pool without enough free blocks: CapacityError before anything is written
    PagedKVPool<fp16> small(shapes, 3, 4);
    PagedSequence<fp16> none = small.sequence(small.create_sequence());
    CHECK_THROWS_AS(load_cache_file(dir / "p.kvc", none, 0, fp), CapacityError);
    CHECK(none.seq_len() == 0);
    CHECK(small.free_blocks() == 3);

    // a one-row cache that can only truncate whole is rolled back with truncate(0)
    KVCache<3, 1, 4> src(1, 8);
    fill_row(src, 0, 5, 1);
    save_cache_file(dir / "o.kvc", src, 0, token_ids(5), make_fingerprint(kModel, src));
    OneRowCache failing;
    CHECK_THROWS_WITH(load_cache_file(dir / "o.kvc", failing, 0, make_fingerprint(kModel, failing)), "out of blocks");
    for (std::size_t l = 0; l < 3; ++l) CHECK(failing.inner.seq_len(l, 0) == 0);
}

TEST_CASE("cache file: saving checks its arguments and writes nothing on error", "[cache_file]") {
    TempDir dir;
    KVCache<L, H, D> cache(2, 16);
    fill_row(cache, 0, 6, 1);
    const auto fp = make_fingerprint(kModel, cache);
    const auto path = dir / "s.kvc";
    CHECK_THROWS_AS(save_cache_file(path, cache, 0, token_ids(5), fp), ShapeError);  // token count != positions
    CHECK_THROWS_AS(save_cache_file(path, cache, 0, token_ids(7), fp), ShapeError);
    CHECK_THROWS_AS(save_cache_file(path, cache, 2, token_ids(6), fp), IndexError);
    fill_random_bits(cache, 0, 1, 4, 2);  // row 1: layer 0 has 4 positions, the others 0 (a step half done)
    CHECK_THROWS_WITH(save_cache_file(path, cache, 1, token_ids(4), fp), Catch::Contains("layer 1 row 1 holds 0"));
    CHECK_THROWS_AS(save_cache_file(dir / "no" / "such" / "dir.kvc", cache, 0, token_ids(6), fp), IoError);
    CHECK(dir.entries().empty());
}

TEST_CASE("cache file: writing is atomic — the old file stays until the new one is complete", "[cache_file]") {
    TempDir dir;
    const std::vector<LayerShape> shapes{{1, 4}, {1, 4}, {1, 4}};
    MultiLayerKVCache<float> cache(shapes, 1, 8);
    fill_row(cache, 0, 8, 1);
    const auto fp = make_fingerprint(kModel, cache);
    const auto path = dir / "a.kvc";
    save_cache_file(path, cache, 0, token_ids(8), fp);
    const auto old_bytes = read_bytes(path);

    // a save that fails while gathering layer 2 leaves the old file and no temporary
    const ChunkedView<float> liar(&cache, 2);
    CHECK_THROWS_AS(save_cache_file(path, liar, 0, token_ids(8), fp), ShapeError);
    CHECK(read_bytes(path) == old_bytes);
    CHECK(dir.entries() == std::vector<std::string>{"a.kvc"});

    // a successful save replaces it, non-durable too
    cache.truncate(5);
    save_cache_file(path, cache, 0, token_ids(5, 40), fp, SaveOptions{.durable = false});
    CHECK(read_cache_file_info(path).tokens == token_ids(5, 40));
    CHECK(dir.entries() == std::vector<std::string>{"a.kvc"});
    CHECK((fs::status(path).permissions() & fs::perms::others_read) == fs::perms::none);  // holds a conversation
}

TEST_CASE("cache file: the layout is the documented one", "[cache_file]") {
    TempDir dir;
    MultiLayerKVCache<fp16> cache(std::vector<LayerShape>{{2, 4}, {1, 8}}, 1, 8);
    fill_row(cache, 0, 3, 9);
    const CacheFingerprint fp{"m", cache_fingerprint(cache)};
    save_cache_file(dir / "d.kvc", cache, 0, std::vector<std::int32_t>{7, -1, 65536}, fp);
    const auto b = read_bytes(dir / "d.kvc");
    CHECK(std::string(b.begin(), b.begin() + 8) == "KVCACHE\x1a");
    CHECK(u32_at(b, 8) == 1);    // version
    CHECK(u32_at(b, 12) == 64);  // header bytes
    CHECK(u64_at(b, 16) == b.size());
    CHECK(u64_at(b, 24) == 3);  // tokens
    CHECK(u32_at(b, 32) == 2);  // f16
    CHECK(u32_at(b, 36) == 2);
    CHECK(u32_at(b, 40) == 2);  // layers
    REQUIRE(u32_at(b, 44) == 8);
    CHECK(u64_at(b, 56) == checksum_of(b, 0, 56));
    CHECK(u64_at(b, 48) == checksum_of(b, 64, 8 * 32));
    const auto s = sections_of(b);
    const std::uint32_t kinds[] = {1, 2, 3, 4, 5, 6, 5, 6};
    const std::uint64_t sizes[] = {1, fp.cache.size(), 16, 12, 3 * 8 * 2, 3 * 8 * 2, 3 * 8 * 2, 3 * 8 * 2};
    std::uint64_t end = 64 + 8 * 32;
    for (std::size_t i = 0; i < s.size(); ++i) {
        CHECK(s[i].kind == kinds[i]);
        CHECK(s[i].layer == (i < 4 ? 0 : (i - 4) / 2));
        CHECK(s[i].offset % 64 == 0);
        CHECK(s[i].offset == (end + 63) / 64 * 64);
        CHECK(s[i].bytes == sizes[i]);
        CHECK(s[i].checksum == checksum_of(b, s[i].offset, s[i].bytes));
        for (std::uint64_t p = end; p < s[i].offset; ++p) CHECK(b[p] == 0);
        end = s[i].offset + s[i].bytes;
    }
    CHECK(end == b.size());
    CHECK(b[s[0].offset] == 'm');
    CHECK(u32_at(b, s[2].offset) == 2);
    CHECK(u32_at(b, s[2].offset + 12) == 8);
    CHECK(u32_at(b, s[3].offset + 4) == 0xffffffffu);  // -1 as little-endian two's complement
    CHECK(u32_at(b, s[3].offset + 8) == 65536);
    // payload: keys of layer 1 as [token][kv_head][dim] in the cache's element bits
    const auto k1 = cache.keys(1, 0, 0);
    CHECK(std::memcmp(b.data() + s[6].offset, k1.data(), 3 * 8 * 2) == 0);
    // layer 0 has 2 heads: token 1's head 1 follows token 1's head 0
    CHECK(std::memcmp(b.data() + s[4].offset + (1 * 2 + 1) * 4 * 2, cache.keys(0, 0, 1).data() + 4, 4 * 2) == 0);
}

TEST_CASE("cache file: every malformed file is rejected and the cache is unchanged", "[cache_file]") {
    TempDir dir;
    using Cache = KVCache<L, H, D, bf16>;
    Cache source(1, 12);
    fill_row(source, 0, 12, 5);
    const auto fp = make_fingerprint(kModel, source);
    const auto good = dir / "good.kvc";
    save_cache_file(good, source, 0, token_ids(12), fp);
    const auto bytes = read_bytes(good);
    const auto bad = dir / "bad.kvc";

    Cache target(2, 12);
    fill_row(target, 1, 4, 77);  // the other row holds something that must stay
    const auto before = snapshot(target);
    auto rejected = [&](const std::vector<unsigned char>& contents) {
        write_bytes(bad, contents);
        try {
            load_cache_file(bad, target, 0, fp);
        } catch (const FormatError& e) {
            CHECK(snapshot(target) == before);
            return std::string(e.what());
        }
        FAIL("a malformed file loaded");
        return std::string();
    };

    SECTION("missing file: IoError") {
        CHECK_THROWS_AS(load_cache_file(dir / "missing.kvc", target, 0, fp), IoError);
        CHECK_THROWS_AS(read_cache_file_info(dir / "missing.kvc"), IoError);
    }
    SECTION("empty and foreign files") {
        CHECK_THAT(rejected({}), Catch::Contains("truncated: 0 bytes"));
        CHECK_THAT(rejected({'G', 'G', 'U', 'F', 3, 0, 0, 0}), Catch::Contains("not a kvcache cache file"));
    }
    SECTION("wrong magic") {
        auto b = bytes;
        b[7] = 0;
        CHECK_THAT(rejected(b), Catch::Contains("not a kvcache cache file: starts with bytes 4b56434143484500"));
    }
    SECTION("a future version (and version 0)") {
        auto b = bytes;
        set_u32(b, 8, 3);
        CHECK_THAT(rejected(b), Catch::Contains("format version 3 is not one this reader knows"));
        set_u32(b, 8, 0);
        CHECK_THAT(rejected(b), Catch::Contains("format version 0"));
    }
    SECTION("another model's file: FingerprintMismatch naming both") {
        const auto other = dir / "other.kvc";
        save_cache_file(other, source, 0, token_ids(12), CacheFingerprint{"other-model", fp.cache});
        try {
            load_cache_file(other, target, 0, fp);
            FAIL("loaded another model's file");
        } catch (const FingerprintMismatch& e) {
            CHECK_THAT(e.what(), Catch::Contains("file is for another model: file has \"other-model\", expected \"" +
                                                 kModel + "\""));
        }
        CHECK(snapshot(target) == before);
    }
    SECTION("another cache configuration: by the fingerprint, and by the target's shape") {
        const auto other = dir / "other.kvc";
        save_cache_file(other, source, 0, token_ids(12), CacheFingerprint{kModel, "f32 something else"});
        CHECK_THROWS_WITH(load_cache_file(other, target, 0, fp), Catch::Contains("file is for another cache configuration"));
        CHECK(snapshot(target) == before);
        // the caller's fingerprint matches the file, but the target cache is not what the file holds
        KVCache<L, H, D, fp16> half(1, 12);
        CHECK_THROWS_AS(load_cache_file(good, half, 0, fp), FingerprintMismatch);
        KVCache<L, H + 1, D, bf16> wider(1, 12);
        CHECK_THROWS_AS(load_cache_file(good, wider, 0, fp), FingerprintMismatch);
        KVCache<L + 1, H, D, bf16> deeper(1, 12);
        CHECK_THROWS_AS(load_cache_file(good, deeper, 0, fp), FingerprintMismatch);
        CHECK(half.seq_len(0) + wider.seq_len(0) + deeper.seq_len(0) == 0);
    }
    SECTION("truncated at every offset") {
        for (std::size_t n = 0; n < bytes.size(); ++n) {
            const std::string what = rejected(std::vector<unsigned char>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n)));
            CHECK_THAT(what, Catch::Contains("truncated"));
        }
    }
    SECTION("bytes appended") {
        auto b = bytes;
        b.push_back(0);
        CHECK_THAT(rejected(b), Catch::Contains("1 unexpected bytes after the end"));
    }
    SECTION("a flipped bit anywhere: header, table, each section, padding") {
        // every byte of the file is covered by a checksum or the zero-padding rule
        for (std::size_t at = 0; at < bytes.size(); ++at) {
            auto b = bytes;
            b[at] ^= static_cast<unsigned char>(1u << (at % 8));
            const std::string what = rejected(b);
            if (at >= 12) CHECK_THAT(what, Catch::Contains("corrupted"));
        }
        // the message names the section
        const auto s = sections_of(bytes);
        auto b = bytes;
        b[s[7].offset + 5] ^= 0x40;  // values of layer 1
        CHECK_THAT(rejected(b), Catch::Contains("checksum of the values of layer 1 section"));
        b = bytes;
        b[s[1].offset - 1] ^= 0x01;  // padding before the cache fingerprint
        CHECK_THAT(rejected(b), Catch::Contains("non-zero padding byte"));
        b = bytes;
        b[70] ^= 0x01;
        CHECK_THAT(rejected(b), Catch::Contains("section table checksum"));
        b = bytes;
        b[20] ^= 0x01;
        CHECK_THAT(rejected(b), Catch::Contains("header checksum"));
    }
    SECTION("a token count that disagrees with the payload, checksums intact") {
        auto b = bytes;
        set_u64(b, 24, 11);
        reseal(b);
        CHECK_THAT(rejected(b), Catch::Contains("tokens section has 48 bytes for 11 tokens"));
        // a forged tokens section and count, consistent with each other but not with the payload
        b = bytes;
        const auto s = sections_of(b);
        set_u64(b, 24, 13);
        set_u64(b, 64 + 32 * 3 + 16, 52);
        set_u64(b, 64 + 32 * 3 + 24, checksum_of(b, s[3].offset, 52));
        reseal(b);
        CHECK_THAT(rejected(b), Catch::Contains("13 tokens of 2x8 bf16 need"));
    }
    SECTION("sections out of order, misplaced or of the wrong size") {
        auto b = bytes;
        set_u32(b, 64 + 32 * 4, 6);  // first payload section claims to be values
        reseal(b);
        CHECK_THAT(rejected(b), Catch::Contains("expected the keys of layer 0 section"));
        b = bytes;
        set_u64(b, 64 + 32 * 5 + 8, u64_at(b, 64 + 32 * 5 + 8) + 64);  // values of layer 0 moved
        reseal(b);
        CHECK_THAT(rejected(b), Catch::Contains("out of place"));
        b = bytes;
        set_u32(b, 44, 4);  // too few sections for 3 layers
        reseal(b);
        CHECK_THAT(rejected(b), Catch::Contains("needs at least 10"));
        b = bytes;
        set_u32(b, 32, 9);  // element type
        reseal(b);
        CHECK_THAT(rejected(b), Catch::Contains("unknown element type 9"));
        b = bytes;
        set_u32(b, 12, 72);
        reseal(b);
        CHECK_THAT(rejected(b), Catch::Contains("header size 72"));
        b = bytes;
        set_u32(b, 40, 0);
        reseal(b);
        CHECK_THAT(rejected(b), Catch::Contains("0 layers"));
        b = bytes;  // a layer shape that does not match the payload size (with a valid shapes checksum)
        const auto s = sections_of(b);
        set_u32(b, s[2].offset, 3);
        set_u64(b, 64 + 32 * 2 + 24, checksum_of(b, s[2].offset, s[2].bytes));
        reseal(b);
        CHECK_THAT(rejected(b), Catch::Contains("keys of layer 0 section has 384 bytes; 12 tokens of 3x8 bf16 need 576"));
        set_u32(b, s[2].offset, 0);
        set_u64(b, 64 + 32 * 2 + 24, checksum_of(b, s[2].offset, s[2].bytes));
        reseal(b);
        CHECK_THAT(rejected(b), Catch::Contains("layer 0 has 0 kv heads"));
    }
    SECTION("a row that is not empty, a row out of range: cache unchanged") {
        CHECK_THROWS_AS(load_cache_file(good, target, 1, fp), ConfigError);
        CHECK_THROWS_AS(load_cache_file(good, target, 2, fp), IndexError);
        CHECK(snapshot(target) == before);
    }
    SECTION("a cache too small: CapacityError, cache unchanged") {
        Cache small(1, 11);
        const auto small_before = snapshot(small);
        CHECK_THROWS_WITH(load_cache_file(good, small, 0, fp), Catch::Contains("12 cached positions do not fit a cache of capacity 11"));
        CHECK(snapshot(small) == small_before);
    }
    // and the good file still loads after all that
    CHECK(load_cache_file(good, target, 0, fp).tokens == token_ids(12));
    CHECK(row_bytes(target, 2, 0) == row_bytes(source, 2, 0));
}

TEST_CASE("cache file: extension sections after the known ones are checked and skipped", "[cache_file]") {
    TempDir dir;
    KVCache<1, 1, 4> cache(1, 4);
    fill_row(cache, 0, 2, 3);
    const auto fp = make_fingerprint(kModel, cache);
    save_cache_file(dir / "x.kvc", cache, 0, token_ids(2), fp);
    auto b = read_bytes(dir / "x.kvc");
    // Rebuild with one more table entry: every section moves by 32 bytes of table, rounded to 64.
    const auto old = sections_of(b);
    const std::size_t n = old.size() + 1;
    std::vector<unsigned char> out(64 + 32 * n, 0);
    std::copy(b.begin(), b.begin() + 64, out.begin());
    const std::string extra = "a future optional section";
    std::vector<Entry> entries;
    for (std::size_t i = 0; i < n; ++i) {
        const bool ext = i == old.size();
        const std::uint64_t size = ext ? extra.size() : old[i].bytes;
        while (out.size() % 64) out.push_back(0);
        const std::uint64_t at = out.size();
        if (ext) {
            out.insert(out.end(), extra.begin(), extra.end());
        } else {
            out.insert(out.end(), b.begin() + static_cast<std::ptrdiff_t>(old[i].offset),
                       b.begin() + static_cast<std::ptrdiff_t>(old[i].offset + size));
        }
        entries.push_back({ext ? 1000u : old[i].kind, 0, at, size, checksum_of(out, at, size)});
    }
    for (std::size_t i = 0; i < n; ++i) {
        const std::size_t at = 64 + 32 * i;
        set_u32(out, at, entries[i].kind);
        set_u32(out, at + 4, entries[i].layer);
        set_u64(out, at + 8, entries[i].offset);
        set_u64(out, at + 16, entries[i].bytes);
        set_u64(out, at + 24, entries[i].checksum);
    }
    set_u64(out, 16, out.size());
    set_u32(out, 44, static_cast<std::uint32_t>(n));
    reseal(out);
    write_bytes(dir / "ext.kvc", out);
    KVCache<1, 1, 4> target(1, 4);
    CHECK(load_cache_file(dir / "ext.kvc", target, 0, fp).tokens == token_ids(2));
    CHECK(row_bytes(target, 0, 0) == row_bytes(cache, 0, 0));

    // a corrupted extension section fails the payload check (but not the metadata-only read)
    auto corrupt = out;
    corrupt[entries.back().offset] ^= 1;
    write_bytes(dir / "bad.kvc", corrupt);
    KVCache<1, 1, 4> other(1, 4);
    CHECK_THROWS_WITH(load_cache_file(dir / "bad.kvc", other, 0, fp), Catch::Contains("extension section"));
    CHECK(other.seq_len(0) == 0);
    CHECK(read_cache_file_info(dir / "bad.kvc").tokens == token_ids(2));
    CHECK_THROWS_AS(read_cache_file_info(dir / "bad.kvc", VerifyPayload::yes), FormatError);

    // a known kind again is not an extension
    auto twice = out;
    set_u32(twice, 64 + 32 * (n - 1), 4);
    reseal(twice);
    write_bytes(dir / "twice.kvc", twice);
    CHECK_THROWS_WITH(read_cache_file_info(dir / "twice.kvc"), Catch::Contains("repeats the tokens section"));
}

TEST_CASE("cache file: read_cache_file_info, fingerprints and the checksum", "[cache_file]") {
    TempDir dir;
    MultiLayerKVCache<bf16> cache(CacheShape{30, 3, 64}, 1, 4);
    CHECK(cache_fingerprint(cache) == "bf16 layers=30 kv_heads x head_dim=3x64");
    fill_row(cache, 0, 4, 1);
    const auto fp = make_fingerprint(fingerprint_digest(std::string_view("model metadata")), cache);
    save_cache_file(dir / "i.kvc", cache, 0, token_ids(4), fp);
    const CacheFileInfo info = read_cache_file_info(dir / "i.kvc", VerifyPayload::yes);
    CHECK(info.tokens == token_ids(4));
    CHECK(info.fingerprint == fp);
    CHECK(info.layers.size() == 30);
    CHECK(info.element == "bf16");
    CHECK(cache.seq_len(0) == 4);

    // XXH3-64, seed 0: the values `xxhsum -H3` prints
    CHECK(cache_file_checksum({}) == 0x2d06800538d394c2ull);
    CHECK(cache_file_checksum(std::as_bytes(std::span(std::string_view("kvcache")))) == 0xb1c9ac0296b3c980ull);
    CHECK(fingerprint_digest(std::string_view("kvcache")) == "xxh3-64:b1c9ac0296b3c980");
    CHECK(fingerprint_digest(std::string_view("kvcache")) != fingerprint_digest(std::string_view("kvcachf")));
    const std::string s = "kvcache";
    CHECK(fingerprint_digest(std::as_bytes(std::span(s))) == "xxh3-64:b1c9ac0296b3c980");
}

namespace {

std::size_t open_descriptors() {
    return static_cast<std::size_t>(std::distance(fs::directory_iterator("/proc/self/fd"), fs::directory_iterator()));
}

mode_t mode_of(const fs::path& p) {
    struct stat st {};
    REQUIRE(::lstat(p.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

// Sets the umask for a scope (and restores it).
struct ScopedUmask {
    mode_t old;
    explicit ScopedUmask(mode_t m) : old(::umask(m)) {}
    ~ScopedUmask() { ::umask(old); }
};

}  // namespace

TEST_CASE("cache file: a save whose first write fails releases its descriptor and temp file", "[cache_file][issue9]") {
    TempDir dir;
    KVCache<L, H, D> cache(1, 16);
    fill_row(cache, 0, 6, 1);
    const auto fp = make_fingerprint(kModel, cache);
    // A file size limit of 16 bytes makes the constructor's first write fail (EFBIG; SIGXFSZ ignored).
    struct rlimit old_limit {};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
    const auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
    const std::size_t before = open_descriptors();
    struct rlimit small = old_limit;
    small.rlim_cur = 16;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
    int failures = 0;
    for (int i = 0; i < 20; ++i) {
        try {
            save_cache_file(dir / "full.kvc", cache, 0, token_ids(6), fp);
        } catch (const IoError&) {
            ++failures;
        }
    }
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &old_limit) == 0);
    ::signal(SIGXFSZ, old_handler);
    CHECK(failures == 20);
    CHECK(open_descriptors() == before);  // was +20: one leaked descriptor per failed save
    CHECK(dir.entries().empty());         // was 20 temp files
}

TEST_CASE("cache file: saving keeps an existing file's permissions; new files get new_file_mode less the umask",
          "[cache_file][issue9]") {
    TempDir dir;
    KVCache<L, H, D> cache(1, 16);
    fill_row(cache, 0, 4, 1);
    const auto fp = make_fingerprint(kModel, cache);
    const auto path = dir / "p.kvc";
    {
        const ScopedUmask mask(022);
        save_cache_file(path, cache, 0, token_ids(4), fp);
        CHECK(mode_of(path) == 0600);  // private by default
        REQUIRE(::chmod(path.c_str(), 0640) == 0);
        save_cache_file(path, cache, 0, token_ids(4), fp);
        CHECK(mode_of(path) == 0640);  // was reset to 0600 by every save
        REQUIRE(::chmod(path.c_str(), 0444) == 0);  // read-only: still replaced (the directory allows it)
        save_cache_file(path, cache, 0, token_ids(4), fp);
        CHECK(mode_of(path) == 0444);
        save_cache_file(dir / "shared.kvc", cache, 0, token_ids(4), fp, SaveOptions{.new_file_mode = 0666});
        CHECK(mode_of(dir / "shared.kvc") == 0644);
    }
    {
        const ScopedUmask mask(077);
        save_cache_file(dir / "masked.kvc", cache, 0, token_ids(4), fp, SaveOptions{.new_file_mode = 0666});
        CHECK(mode_of(dir / "masked.kvc") == 0600);
    }
}

TEST_CASE("cache file: a symlink or a non-regular file at the path is refused, without blocking", "[cache_file][issue9]") {
    TempDir dir;
    KVCache<L, H, D> cache(1, 16);
    fill_row(cache, 0, 4, 1);
    const auto fp = make_fingerprint(kModel, cache);
    const auto real = dir / "real.kvc";
    save_cache_file(real, cache, 0, token_ids(4), fp);
    const auto bytes = read_bytes(real);
    fs::create_symlink(real, dir / "link.kvc");
    CHECK_THROWS_WITH(save_cache_file(dir / "link.kvc", cache, 0, token_ids(4), fp), Catch::Contains("symbolic link"));
    CHECK(fs::is_symlink(dir / "link.kvc"));  // was silently replaced by a regular file
    CHECK(read_bytes(real) == bytes);
    fs::create_symlink(dir / "missing.kvc", dir / "dangling.kvc");
    CHECK_THROWS_AS(save_cache_file(dir / "dangling.kvc", cache, 0, token_ids(4), fp), IoError);
    CHECK_FALSE(fs::exists(dir / "missing.kvc"));

    fs::create_directory(dir / "adir.kvc");
    CHECK_THROWS_WITH(save_cache_file(dir / "adir.kvc", cache, 0, token_ids(4), fp), Catch::Contains("not a regular file"));
    REQUIRE(::mkfifo((dir / "fifo.kvc").c_str(), 0600) == 0);
    // Saving to and loading from a FIFO must fail at once, not wait for the other end (run with a deadline).
    auto attempt = std::async(std::launch::async, [&] {
        int refused = 0;
        try {
            save_cache_file(dir / "fifo.kvc", cache, 0, token_ids(4), fp);
        } catch (const IoError&) {
            ++refused;
        }
        try {
            (void)read_cache_file_info(dir / "fifo.kvc");
        } catch (const IoError&) {
            ++refused;
        }
        return refused;
    });
    if (attempt.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
        // Unblock the reader stuck in open() so the test can end, then fail.
        const int fd = ::open((dir / "fifo.kvc").c_str(), O_WRONLY | O_NONBLOCK);
        if (fd >= 0) ::close(fd);
        FAIL("opening a FIFO blocked");
    }
    CHECK(attempt.get() == 2);
    CHECK_THROWS_AS(read_cache_file_info("/dev/zero"), IoError);
    CHECK_THROWS_AS(read_cache_file_info(dir.path), IoError);
    std::vector<std::string> expected{"adir.kvc", "dangling.kvc", "fifo.kvc", "link.kvc", "real.kvc"};
    CHECK(dir.entries() == expected);  // no temp file left by any refusal
}

TEST_CASE("cache file: temp files orphaned by a killed save are removed by the next save, live ones kept",
          "[cache_file][issue9]") {
    TempDir dir;
    KVCache<L, H, D> cache(1, 16);
    fill_row(cache, 0, 4, 1);
    const auto fp = make_fingerprint(kModel, cache);
    // A process id that is certainly gone: a child that has exited and been reaped.
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) ::_exit(0);
    REQUIRE(::waitpid(child, nullptr, 0) == child);
    const auto touch = [&](const std::string& name) { std::ofstream(dir / name) << "partial"; };
    const std::string dead = "c.kvc.tmp." + std::to_string(child) + ".00000000deadbeef";
    const std::string live = "c.kvc.tmp." + std::to_string(::getppid()) + ".0000000000000001";
    const std::string other = "other.kvc.tmp." + std::to_string(child) + ".0000000000000002";
    touch(dead);
    touch(live);
    touch(other);
    touch("c.kvc.tmp.Ab12Cd");  // the earlier mkstemp naming: removed once an hour old
    touch("c.kvc.tmp.Xy34Zw");
    const auto old = fs::file_time_type::clock::now() - std::chrono::hours(2);
    fs::last_write_time(dir / "c.kvc.tmp.Ab12Cd", old);
    save_cache_file(dir / "c.kvc", cache, 0, token_ids(4), fp);
    std::vector<std::string> expected{"c.kvc", live, "c.kvc.tmp.Xy34Zw", other};
    std::sort(expected.begin(), expected.end());
    CHECK(dir.entries() == expected);
}

TEST_CASE("cache file: a file truncated while it is read is a FormatError saying so, not SIGBUS", "[cache_file][issue9]") {
    TempDir dir;
    MultiLayerKVCache<float> cache(CacheShape{4, 2, 64}, 1, 512);
    fill_row(cache, 0, 512, 1);
    const auto fp = make_fingerprint(fingerprint_digest(std::string_view("model")), cache);
    save_cache_file(dir / "t.kvc", cache, 0, token_ids(512), fp);
    const auto size = fs::file_size(dir / "t.kvc");
    const detail::CacheFileReader reader(dir / "t.kvc");  // header and metadata read and checked
    fs::resize_file(dir / "t.kvc", size / 3);
    // The payload past the new end was a SIGBUS; now it reads as zeros, and the checksum failure that follows
    // is reported as what it is.
    CHECK_THROWS_AS(reader.verify_payload(), FormatError);
    CHECK_THROWS_WITH(reader.verify_payload(),
                      Catch::Contains("changed while mapped (now " + std::to_string(size / 3) + " bytes, was " +
                                      std::to_string(size) + ")"));
    CHECK_THROWS_WITH(reader.check_unchanged(), Catch::Contains("changed while mapped"));
    // Opened now, the file is merely truncated.
    CHECK_THROWS_WITH(detail::CacheFileReader(dir / "t.kvc"), Catch::Contains("truncated"));
}
