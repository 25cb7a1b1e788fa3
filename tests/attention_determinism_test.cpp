// attention() gives the same bits for a query at position p whatever else changes around it:
//  (a) the number of threads,
//  (b) how many query tokens one call processes (prefill, chunked prefill, token by token),
//  (c) how the cache stores its positions (one contiguous block per head, compile-time dims, or odd-sized
//      chunks with padded rows — the shape of a paged cache, made more irregular on purpose).
// Every comparison is memcmp of the outputs: "close" is not enough for reproducible generation.
#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "kvcache/attention/attention.hpp"
#include "kvcache/cache/kv_cache.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/testing/random.hpp"

using namespace kvcache;
using kvcache::testing::random_normal;

namespace {

/// One layer, one row, whose positions live in chunks of sizes cycling through `sizes`: each chunk its own
/// allocation with rows `pad` elements wider than the head (so stride != head_dim). A test-only cache type:
/// it exists to show attention reads any KVCacheReadable the same way.
template <StorageElement T>
class OddChunkCache {
public:
    using element_type = T;

    OddChunkCache(std::size_t kv_heads, std::size_t head_dim, std::vector<std::size_t> sizes, std::size_t pad)
        : heads_(kv_heads), d_(head_dim), stride_(head_dim + pad), sizes_(std::move(sizes)) {}

    std::size_t num_layers() const { return 1; }
    std::size_t batch_size() const { return 1; }
    std::size_t num_kv_heads(std::size_t = 0) const { return heads_; }
    std::size_t head_dim(std::size_t = 0) const { return d_; }
    std::size_t seq_len(std::size_t = 0, std::size_t = 0) const { return length_; }
    std::size_t num_chunks() const { return chunks_.size(); }

    std::vector<KVChunk<T>> chunks(std::size_t, std::size_t, std::size_t head) const {
        std::vector<KVChunk<T>> out;
        for (const Chunk& c : chunks_) {
            const std::size_t offset = head * c.capacity * stride_;
            out.push_back({c.keys.data() + offset, c.values.data() + offset, c.start, c.used, stride_});
        }
        return out;
    }

    /// keys and values: [n_tokens][kv_heads * head_dim].
    void append(std::size_t, std::size_t, std::span<const float> keys, std::span<const float> values,
                std::size_t n_tokens) {
        REQUIRE(keys.size() == n_tokens * heads_ * d_);
        REQUIRE(values.size() == keys.size());
        for (std::size_t t = 0; t < n_tokens; ++t) {
            if (chunks_.empty() || chunks_.back().used == chunks_.back().capacity) {
                const std::size_t size = sizes_[chunks_.size() % sizes_.size()];
                Chunk c;
                c.start = length_;
                c.capacity = size;
                c.keys.assign(heads_ * size * stride_, from_float<T>(1e9f));  // padding that must never be read
                c.values.assign(heads_ * size * stride_, from_float<T>(1e9f));
                chunks_.push_back(std::move(c));
            }
            Chunk& c = chunks_.back();
            for (std::size_t h = 0; h < heads_; ++h)
                for (std::size_t i = 0; i < d_; ++i) {
                    const std::size_t at = (h * c.capacity + c.used) * stride_ + i;
                    c.keys[at] = from_float<T>(keys[(t * heads_ + h) * d_ + i]);
                    c.values[at] = from_float<T>(values[(t * heads_ + h) * d_ + i]);
                }
            ++c.used;
            ++length_;
        }
    }

private:
    struct Chunk {
        std::size_t start = 0, used = 0, capacity = 0;
        std::vector<T> keys, values;  // [head][capacity][stride]
    };
    std::size_t heads_, d_, stride_;
    std::vector<std::size_t> sizes_;
    std::vector<Chunk> chunks_;
    std::size_t length_ = 0;
};

static_assert(KVCacheLike<OddChunkCache<float>>);

bool same_bits(std::span<const float> a, std::span<const float> b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// n random positions appended to `cache` in pieces of growing size (as a chunked prefill would).
template <class Cache>
void fill(Cache& cache, std::size_t n, std::uint64_t seed) {
    const std::size_t width = cache.num_kv_heads(0) * cache.head_dim(0);
    const auto k = random_normal(n * width, seed), v = random_normal(n * width, seed + 1);
    for (std::size_t at = 0, piece = 1; at < n; at += piece, piece = piece * 3 + 1) {
        piece = std::min(piece, n - at);
        cache.append(0, 0, std::span<const float>(k).subspan(at * width, piece * width),
                     std::span<const float>(v).subspan(at * width, piece * width), piece);
    }
}

template <class Cache>
std::vector<float> run(const Cache& cache, std::span<const float> q, std::size_t n_tokens, std::size_t q_heads,
                       const AttentionOptions& opts) {
    std::vector<float> out(q.size());
    attention(cache, 0, 0, q, n_tokens, q_heads, out, opts);
    return out;
}

/// Shapes that take each vector path: 64 (16 or 8 lanes), 40 (8 lanes only), 6 (portable scalar).
struct Shape {
    std::size_t kv_heads, head_dim, q_heads;
};
constexpr Shape kShapes[] = {{3, 64, 9}, {2, 40, 8}, {1, 6, 3}};

}  // namespace

TEMPLATE_TEST_CASE("attention determinism: (a) the thread count does not change a bit", "[attention][determinism]",
                   float, fp16, bf16) {
    for (const Shape s : kShapes) {
        // 2600 positions: five 512-position segments (the parallel work units), the last one partial
        const std::size_t n = 2600;
        MultiLayerKVCache<TestType> cache(CacheShape{1, s.kv_heads, s.head_dim}, 1, n);
        fill(cache, n, 1);
        const std::size_t n_q = 5;  // a decode and a short causal prefill
        const auto q = random_normal(n_q * s.q_heads * s.head_dim, 2);
        const std::span<const float> one(q.data(), s.q_heads * s.head_dim);
        for (const bool causal : {true, false}) {
            AttentionOptions opts{.causal = causal, .threads = 1};
            const auto decode1 = run(cache, one, 1, s.q_heads, opts);
            const auto prefill1 = run(cache, q, n_q, s.q_heads, opts);
            for (const int threads : {2, 3, 4, 0}) {
                INFO("head_dim " << s.head_dim << " causal " << causal << " threads " << threads);
                opts.threads = threads;
                CHECK(same_bits(run(cache, one, 1, s.q_heads, opts), decode1));
                CHECK(same_bits(run(cache, q, n_q, s.q_heads, opts), prefill1));
            }
        }
    }
}

TEMPLATE_TEST_CASE("attention determinism: (b) prefill, chunked prefill and token by token agree bit for bit",
                   "[attention][determinism]", float, fp16, bf16) {
    for (const Shape s : kShapes) {
        const std::size_t n = 1100;  // 17 full 64-position tiles and a partial one; two 512-position segments
        const std::size_t width = s.kv_heads * s.head_dim, qw = s.q_heads * s.head_dim;
        const auto k = random_normal(n * width, 3), v = random_normal(n * width, 4);
        const auto q = random_normal(n * qw, 5);
        for (const std::size_t window : {std::size_t(0), std::size_t(100)}) {
            const AttentionOptions opts{.window = window, .threads = 2};
            MultiLayerKVCache<TestType> full(CacheShape{1, s.kv_heads, s.head_dim}, 1, n);
            full.append(0, 0, k, v, n);
            const auto all_at_once = run(full, q, n, s.q_heads, opts);

            // token by token: append one position, attend its one query
            MultiLayerKVCache<TestType> growing(CacheShape{1, s.kv_heads, s.head_dim}, 1, n);
            std::size_t mismatches = 0;
            for (std::size_t t = 0; t < n; ++t) {
                growing.append(0, 0, std::span<const float>(k).subspan(t * width, width),
                               std::span<const float>(v).subspan(t * width, width), 1);
                const auto out = run(growing, std::span<const float>(q).subspan(t * qw, qw), 1, s.q_heads, opts);
                if (!same_bits(out, std::span<const float>(all_at_once).subspan(t * qw, qw))) ++mismatches;
            }
            INFO("head_dim " << s.head_dim << " window " << window);
            CHECK(mismatches == 0);

            // chunked prefill in pieces of 37 (not a divisor of the tile), and a decode after a full cache
            MultiLayerKVCache<TestType> chunked(CacheShape{1, s.kv_heads, s.head_dim}, 1, n);
            std::vector<float> pieces;
            for (std::size_t at = 0; at < n; at += 37) {
                const std::size_t m = std::min<std::size_t>(37, n - at);
                chunked.append(0, 0, std::span<const float>(k).subspan(at * width, m * width),
                               std::span<const float>(v).subspan(at * width, m * width), m);
                const auto out = run(chunked, std::span<const float>(q).subspan(at * qw, m * qw), m, s.q_heads, opts);
                pieces.insert(pieces.end(), out.begin(), out.end());
            }
            CHECK(same_bits(pieces, all_at_once));
        }
    }
}

TEMPLATE_TEST_CASE("attention determinism: (c) contiguous, compile-time and odd-chunked caches agree bit for bit",
                   "[attention][determinism]", float, fp16, bf16) {
    const std::size_t n = 2600;
    const Shape s = kShapes[0];
    MultiLayerKVCache<TestType> contiguous(CacheShape{1, s.kv_heads, s.head_dim}, 1, n);
    KVCache<1, 3, 64, TestType> fixed(1, n);
    // chunks of 1, 7, 16 (a paged block), 3, 64 (a tile), 29, 2 and 100 positions, rows padded by 5 elements
    OddChunkCache<TestType> odd(s.kv_heads, s.head_dim, {1, 7, 16, 3, 64, 29, 2, 100}, 5);
    fill(contiguous, n, 6);
    fill(fixed, n, 6);
    fill(odd, n, 6);
    REQUIRE(odd.num_chunks() > 60);

    const std::size_t n_q = 4, qw = s.q_heads * s.head_dim;
    const auto q = random_normal(n_q * qw, 7);
    for (const int threads : {1, 2}) {
        for (const AttentionOptions base : {AttentionOptions{}, AttentionOptions{.window = 300},
                                            AttentionOptions{.causal = false}}) {
            AttentionOptions opts = base;
            opts.threads = threads;
            INFO("threads " << threads << " causal " << opts.causal << " window " << opts.window);
            const auto want = run(contiguous, q, n_q, s.q_heads, opts);
            CHECK(same_bits(run(fixed, q, n_q, s.q_heads, opts), want));
            CHECK(same_bits(run(odd, q, n_q, s.q_heads, opts), want));
            const std::span<const float> last(q.data() + (n_q - 1) * qw, qw);
            // the last query sees every position either way: a decode of it alone gives the same bits
            CHECK(same_bits(run(odd, last, 1, s.q_heads, opts), std::span<const float>(want).subspan((n_q - 1) * qw, qw)));
        }
    }

    // every head size path, short contexts that end inside a chunk and inside a tile
    for (const Shape t : kShapes) {
        for (const std::size_t m : {std::size_t(1), std::size_t(5), std::size_t(63), std::size_t(65), std::size_t(517)}) {
            MultiLayerKVCache<TestType> a(CacheShape{1, t.kv_heads, t.head_dim}, 1, m);
            OddChunkCache<TestType> b(t.kv_heads, t.head_dim, {3, 16, 1, 45}, 1);
            fill(a, m, 8);
            fill(b, m, 8);
            const auto qq = random_normal(t.q_heads * t.head_dim, 9);
            INFO("head_dim " << t.head_dim << " positions " << m);
            CHECK(same_bits(run(a, qq, 1, t.q_heads, {}), run(b, qq, 1, t.q_heads, {})));
        }
    }
}

TEST_CASE("attention determinism: the comparisons can fail (a different query changes the bits)",
          "[attention][determinism]") {
    const Shape s = kShapes[0];
    MultiLayerKVCache<float> cache(CacheShape{1, s.kv_heads, s.head_dim}, 1, 700);
    fill(cache, 700, 10);
    auto q = random_normal(s.q_heads * s.head_dim, 11);
    const auto a = run(cache, q, 1, s.q_heads, {});
    q[5] += 1e-3f;
    CHECK_FALSE(same_bits(run(cache, q, 1, s.q_heads, {}), a));
}

// ---- quantised caches (q8_0, q4_0) and caches whose keys and values have different types ----
namespace {

/// A key type and a value type, for the quantised determinism cases.
template <class K, class V>
struct KV_ {
    using Key = K;
    using Value = V;
};

/// Head sizes a 32-value block divides: 64 and 32 take the 16-lane path (8 without AVX-512), 96 the 8-lane one.
constexpr Shape kBlockShapes[] = {{3, 64, 9}, {2, 96, 8}, {1, 32, 3}};

}  // namespace

TEMPLATE_TEST_CASE("attention determinism over quantised caches: threads, batching, chunking and paging",
                   "[attention][determinism][quantised]", (KV_<q8_0, q8_0>), (KV_<q4_0, q4_0>), (KV_<q8_0, fp16>),
                   (KV_<q4_0, q8_0>), (KV_<q4_0h, q4_0h>), (KV_<q4_0h, q4_0>)) {
    using K = typename TestType::Key;
    using V = typename TestType::Value;
    // both ways of forming q·k (integer scores apply to q8_0 keys; the others take the float path either way)
    const ScorePrecision precision = GENERATE(ScorePrecision::f32, ScorePrecision::int8);
    INFO("scores " << (precision == ScorePrecision::int8 ? "int8" : "f32"));
    for (const Shape s : kBlockShapes) {
        if (s.head_dim % block_values_v<K> != 0 || s.head_dim % block_values_v<V> != 0) continue;  // q4_0h: 64
        const std::size_t n = 1100, width = s.kv_heads * s.head_dim, qw = s.q_heads * s.head_dim;
        const auto k = random_normal(n * width, 21), v = random_normal(n * width, 22);
        const auto q = random_normal(n * qw, 23);
        MultiLayerKVCache<K, V> full(CacheShape{1, s.kv_heads, s.head_dim}, 1, n);
        full.append(0, 0, k, v, n);
        for (const std::size_t window : {std::size_t(0), std::size_t(100)}) {
            INFO("head_dim " << s.head_dim << " window " << window);
            const AttentionOptions opts{.window = window, .threads = 1, .scores = precision};
            const auto all_at_once = run(full, q, n, s.q_heads, opts);
            // (a) threads
            for (const int threads : {2, 3, 0}) {
                AttentionOptions t = opts;
                t.threads = threads;
                CHECK(same_bits(run(full, q, n, s.q_heads, t), all_at_once));
            }
            // (b) token by token and chunked prefill
            MultiLayerKVCache<K, V> growing(CacheShape{1, s.kv_heads, s.head_dim}, 1, n);
            std::size_t mismatches = 0;
            std::vector<float> pieces;
            for (std::size_t at = 0; at < n; at += 37) {
                const std::size_t m = std::min<std::size_t>(37, n - at);
                growing.append(0, 0, std::span<const float>(k).subspan(at * width, m * width),
                               std::span<const float>(v).subspan(at * width, m * width), m);
                const auto out = run(growing, std::span<const float>(q).subspan(at * qw, m * qw), m, s.q_heads, opts);
                pieces.insert(pieces.end(), out.begin(), out.end());
                // the chunk's last token alone (a decode step)
                const auto last = run(growing, std::span<const float>(q).subspan((at + m - 1) * qw, qw), 1, s.q_heads, opts);
                if (!same_bits(last, std::span<const float>(all_at_once).subspan((at + m - 1) * qw, qw))) ++mismatches;
            }
            CHECK(same_bits(pieces, all_at_once));
            CHECK(mismatches == 0);
            // (c) a paged pool (blocks of 7 and 16 positions) when keys and values share a type
            if constexpr (std::is_same_v<K, V>) {
                for (const std::size_t block : {std::size_t(7), std::size_t(16)}) {
                    PagedKVPool<K> pool(CacheShape{1, s.kv_heads, s.head_dim}, PagedKVPool<K>::blocks_for(n, block), block);
                    auto seq = pool.sequence(pool.create_sequence());
                    fill(seq, n, 0);  // other contents first: then the same as `full`, chunked
                    pool.truncate(seq.id(), 0);
                    for (std::size_t at = 0; at < n; at += 300) {
                        const std::size_t m = std::min<std::size_t>(300, n - at);
                        seq.append(0, 0, std::span<const float>(k).subspan(at * width, m * width),
                                   std::span<const float>(v).subspan(at * width, m * width), m);
                    }
                    INFO("paged block " << block);
                    CHECK(same_bits(run(seq, q, n, s.q_heads, opts), all_at_once));
                }
            }
        }
    }
    // compile-time dims read the same bits as run-time dims
    KVCache<1, 3, 64, K, V> fixed(1, 700);
    MultiLayerKVCache<K, V> runtime(CacheShape{1, 3, 64}, 1, 700);
    fill(fixed, 700, 24);
    fill(runtime, 700, 24);
    const auto q1 = random_normal(9 * 64, 25);
    CHECK(same_bits(run(fixed, q1, 1, 9, {.scores = precision}), run(runtime, q1, 1, 9, {.scores = precision})));
}
