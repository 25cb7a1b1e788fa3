// A user's own cache type, written against docs/cache-types.md and nothing else: it satisfies KVCacheLike
// and no optional capability, and still works with attention, the decoder and cache files — with results
// bitwise equal to the library's own caches. A bounded variant shows the capacity checks the library then makes.
#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "kvcache/attention/attention.hpp"
#include "kvcache/cache/concept.hpp"
#include "kvcache/cache/kv_chunk.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/error.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/persist/cache_file.hpp"
#include "kvcache/testing/random.hpp"
#include "decoder_test_support.hpp"

using namespace kvcache;

namespace {

/// One sequence (batch row 0), every layer's K and V kept per kv head as [position][head_dim] floats in a
/// std::vector that grows; attention reads it in chunks of 7 positions (as a block cache would hand them out).
class UserCache {
public:
    using element_type = float;
    static constexpr std::size_t kChunk = 7;

    UserCache(std::size_t layers, std::size_t kv_heads, std::size_t head_dim)
        : kv_heads_(kv_heads), head_dim_(head_dim), keys_(layers * kv_heads), values_(layers * kv_heads),
          lengths_(layers) {}

    std::size_t num_layers() const { return lengths_.size(); }
    std::size_t batch_size() const { return 1; }
    std::size_t num_kv_heads(std::size_t) const { return kv_heads_; }
    std::size_t head_dim(std::size_t) const { return head_dim_; }
    std::size_t seq_len(std::size_t layer, std::size_t row) const {
        check(layer, row);
        return lengths_[layer];
    }
    std::vector<KVChunk<float>> chunks(std::size_t layer, std::size_t row, std::size_t head) const {
        check(layer, row);
        const std::vector<float>& k = keys_[layer * kv_heads_ + head];
        const std::vector<float>& v = values_[layer * kv_heads_ + head];
        std::vector<KVChunk<float>> out;
        for (std::size_t start = 0; start < lengths_[layer]; start += kChunk) {
            const std::size_t length = std::min(kChunk, lengths_[layer] - start);
            out.push_back({k.data() + start * head_dim_, v.data() + start * head_dim_, start, length, 0});
        }
        return out;
    }
    /// keys, values: [n][kv_heads * head_dim], the projections' layout.
    void append(std::size_t layer, std::size_t row, std::span<const float> keys, std::span<const float> values,
                std::size_t n) {
        check(layer, row);
        if (keys.size() != n * kv_heads_ * head_dim_ || values.size() != keys.size()) {
            throw ShapeError("UserCache::append: wrong sizes");
        }
        for (std::size_t t = 0; t < n; ++t) {
            for (std::size_t h = 0; h < kv_heads_; ++h) {
                const std::size_t from = (t * kv_heads_ + h) * head_dim_;
                keys_[layer * kv_heads_ + h].insert(keys_[layer * kv_heads_ + h].end(), keys.begin() + from,
                                                    keys.begin() + from + head_dim_);
                values_[layer * kv_heads_ + h].insert(values_[layer * kv_heads_ + h].end(), values.begin() + from,
                                                      values.begin() + from + head_dim_);
            }
        }
        lengths_[layer] += n;
    }

private:
    void check(std::size_t layer, std::size_t row) const {
        if (layer >= lengths_.size() || row != 0) throw IndexError("UserCache: no such layer or row");
    }
    std::size_t kv_heads_, head_dim_;
    std::vector<std::vector<float>> keys_, values_;  // (layer, head): [position][head_dim]
    std::vector<std::size_t> lengths_;               // (layer)
};

/// The same cache with a fixed capacity(): a BoundedKVCache.
class BoundedUserCache : public UserCache {
public:
    BoundedUserCache(std::size_t layers, std::size_t kv_heads, std::size_t head_dim, std::size_t capacity)
        : UserCache(layers, kv_heads, head_dim), capacity_(capacity) {}
    std::size_t capacity() const { return capacity_; }
    void append(std::size_t layer, std::size_t row, std::span<const float> keys, std::span<const float> values,
                std::size_t n) {
        if (seq_len(layer, row) + n > capacity_) throw CapacityError("BoundedUserCache is full");
        UserCache::append(layer, row, keys, values, n);
    }

private:
    std::size_t capacity_;
};

// The contract: KVCacheLike and no optional capability; the bounded variant is a BoundedKVCache only.
static_assert(KVCacheReadable<UserCache> && KVCacheLike<UserCache>);
static_assert(!BoundedKVCache<UserCache> && !GrowableKVCache<UserCache> && !TruncatableKVCache<UserCache> &&
              !RowTruncatableKVCache<UserCache> && !ElementAppendableKVCache<UserCache> &&
              !PooledKVCache<UserCache> && !ContiguousKVCache<UserCache>);
static_assert(KVCacheLike<BoundedUserCache> && BoundedKVCache<BoundedUserCache> && !GrowableKVCache<BoundedUserCache>);
// The library's own caches, for contrast.
static_assert(GrowableKVCache<MultiLayerKVCache<float>> && RowTruncatableKVCache<MultiLayerKVCache<float>> &&
              ElementAppendableKVCache<MultiLayerKVCache<float>> && ContiguousKVCache<MultiLayerKVCache<float>>);

bool same_bits(std::span<const float> a, std::span<const float> b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

Decoder& tiny_decoder() {  // the random test model, two layers
    static Decoder d = test::small_random_decoder(2, 2024);
    return d;
}

std::vector<std::int32_t> tokens(std::size_t n) {
    std::vector<std::int32_t> t(n);
    for (std::size_t i = 0; i < n; ++i) t[i] = static_cast<std::int32_t>((i * 37 + 5) % 1024);
    return t;
}

UserCache user_cache_for(const Decoder& d) {
    return UserCache(d.config().n_layers, d.config().n_kv_heads, d.config().head_dim);
}

/// The last token's logits after feeding `toks` to `cache` in steps of `step` tokens.
template <class Cache>
std::vector<float> run(Decoder& d, Cache& cache, std::span<const std::int32_t> toks, std::size_t step) {
    std::vector<float> logits(d.config().vocab_size);
    for (std::size_t at = 0; at < toks.size(); at += step) {
        d.forward(toks.subspan(at, std::min(step, toks.size() - at)), cache, 0, logits);
    }
    return logits;
}

std::filesystem::path temp_file(const char* name) {
    return std::filesystem::temp_directory_path() / (std::string("kvcache_cache_types_test_") + name + ".kvc");
}

}  // namespace

TEST_CASE("user cache: can_append is always true without capacity(), else seq_len + n <= capacity",
          "[cache_types]") {
    UserCache open(1, 1, 4);
    CHECK(can_append(open, 0, 0, std::size_t(1) << 40));
    BoundedUserCache bounded(1, 1, 4, 3);
    const std::vector<float> kv(2 * 4, 1.0f);
    CHECK(can_append(bounded, 0, 0, 3));
    CHECK_FALSE(can_append(bounded, 0, 0, 4));
    bounded.append(0, 0, kv, kv, 2);
    CHECK(can_append(bounded, 0, 0, 1));
    CHECK_FALSE(can_append(bounded, 0, 0, 2));
    CHECK_FALSE(can_append(bounded, 0, 0, SIZE_MAX));  // no overflow of seq_len + n
    MultiLayerKVCache<float> growing(CacheShape{1, 1, 4}, 1, 2, Growth::Grow);
    CHECK(can_append(growing, 0, 0, 100));
    MultiLayerKVCache<float> fixed(CacheShape{1, 1, 4}, 1, 2);
    CHECK_FALSE(can_append(fixed, 0, 0, 3));
}

TEST_CASE("user cache: attention over it equals attention over MultiLayerKVCache, bitwise", "[cache_types]") {
    const std::size_t kv_heads = 2, q_heads = 4, d = 64, n = 30, queries = 5;
    UserCache mine(1, kv_heads, d);
    MultiLayerKVCache<float> theirs(CacheShape{1, kv_heads, d}, 1, n);
    const auto k = testing::random_uniform(n * kv_heads * d, 1, -1.0f, 1.0f);
    const auto v = testing::random_uniform(n * kv_heads * d, 2, -1.0f, 1.0f);
    mine.append(0, 0, k, v, n);
    theirs.append(0, 0, k, v, n);
    const auto q = testing::random_uniform(queries * q_heads * d, 3, -1.0f, 1.0f);
    std::vector<float> a(q.size()), b(q.size());
    for (int threads : {1, 2}) {
        attention(mine, 0, 0, q, queries, q_heads, a, {.threads = threads});
        attention(theirs, 0, 0, q, queries, q_heads, b, {.threads = threads});
        CHECK(same_bits(a, b));
    }
}

TEST_CASE("user cache: the decoder runs over it with logits bitwise equal to MultiLayerKVCache's", "[cache_types]") {
    Decoder& d = tiny_decoder();
    const auto toks = tokens(19);
    UserCache mine = user_cache_for(d);
    auto theirs = d.make_cache(toks.size());
    const auto mine_logits = run(d, mine, toks, 4);  // prefill in chunks, then one at a time
    CHECK(same_bits(mine_logits, run(d, theirs, toks, 4)));
    CHECK(mine.seq_len(1, 0) == toks.size());
}

TEST_CASE("user cache: the decoder checks a bounded user cache's capacity before appending", "[cache_types]") {
    Decoder& d = tiny_decoder();
    BoundedUserCache cache(d.config().n_layers, d.config().n_kv_heads, d.config().head_dim, 5);
    const auto toks = tokens(6);
    std::vector<float> logits(d.config().vocab_size);
    d.forward(std::span(toks).first(4), cache, 0, logits);
    CHECK_THROWS_AS(d.forward(std::span(toks).subspan(4, 2), cache, 0, logits), CapacityError);
    for (std::size_t l = 0; l < cache.num_layers(); ++l) CHECK(cache.seq_len(l, 0) == 4);  // nothing appended
}

TEST_CASE("user cache: cache files save from it and load into it, and the decoder continues bitwise",
          "[cache_types]") {
    Decoder& d = tiny_decoder();
    const auto toks = tokens(23);
    const std::size_t saved = 15;
    const auto path = temp_file("user");
    UserCache first = user_cache_for(d);
    run(d, first, std::span(toks).first(saved), 8);
    const CacheFingerprint fp = make_fingerprint("tiny random decoder 2024", first);
    CHECK(fp.cache == cache_fingerprint(d.make_cache(1)));  // the fingerprint sees shapes and elements only
    save_cache_file(path, first, 0, std::span(toks).first(saved), fp);

    // into another user cache (through append of floats) and into the library's cache (append_elements)
    UserCache loaded = user_cache_for(d);
    CHECK(load_cache_file(path, loaded, 0, fp).tokens == std::vector<std::int32_t>(toks.begin(), toks.begin() + saved));
    auto library = d.make_cache(toks.size());
    load_cache_file(path, library, 0, fp);

    UserCache cold = user_cache_for(d);
    const auto want = run(d, cold, toks, toks.size());
    CHECK(same_bits(run(d, loaded, std::span(toks).subspan(saved), 1), want));
    CHECK(same_bits(run(d, library, std::span(toks).subspan(saved), 1), want));

    // a bounded user cache too small for the file is refused before anything is appended
    BoundedUserCache small(d.config().n_layers, d.config().n_kv_heads, d.config().head_dim, saved - 1);
    CHECK_THROWS_AS(load_cache_file(path, small, 0, fp), CapacityError);
    CHECK(small.seq_len(0, 0) == 0);
    std::filesystem::remove(path);
}
