// Context shift and the sink + window cache: the cache operations (drop, move, re-encode keys), the decoder's
// RoPE re-rotation, a shifted cache against a cold run over the shifted tokens, generation past capacity with
// constant memory, and every misuse as a typed error.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "kvcache/cache/context_shift.hpp"
#include "kvcache/cache/kv_cache.hpp"
#include "kvcache/cache/layout.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/model/cache_options.hpp"
#include "kvcache/model/context_shift.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/ops.hpp"
#include "kvcache/testing/random.hpp"

using namespace kvcache;
using kvcache::testing::random_normal;

namespace {

/// A rotation that adds delta to every key value: easy to check, and distinguishable from no call.
struct AddDelta {
    std::vector<std::size_t>* layers_seen;
    void operator()(std::size_t layer, std::span<float> keys, std::size_t, std::ptrdiff_t delta) const {
        layers_seen->push_back(layer);
        for (float& k : keys) k += static_cast<float>(delta);
    }
};

float max_abs_diff(std::span<const float> a, std::span<const float> b) {
    float m = 0.0f;
    for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
    return m;
}

float max_abs(std::span<const float> a) {
    float m = 0.0f;
    for (float x : a) m = std::max(m, std::fabs(x));
    return m;
}

/// A random llama-style model of `layers` layers. With one layer, a token's K/V depend only on the token and its
/// position, so a shifted cache can equal a cold run exactly (up to float rounding); with more, the kept tokens'
/// deeper K/V were computed while the dropped tokens were still there (as in llama.cpp): only layer 0 can match.
Decoder& test_model(RopeStyle style = RopeStyle::Interleaved, std::size_t layers = 1) {
    auto make = [](RopeStyle s, std::size_t n_layers) {
        DecoderConfig c = DecoderConfig::small_test_model();
        c.n_layers = n_layers;
        c.rope_style = s;
        return Decoder(DecoderWeights::random(c, 77), 1);
    };
    static Decoder interleaved = make(RopeStyle::Interleaved, 1);
    static Decoder neox = make(RopeStyle::Neox, 1);
    static Decoder deep = make(RopeStyle::Interleaved, 3);
    if (layers > 1) return deep;
    return style == RopeStyle::Interleaved ? interleaved : neox;
}

std::vector<std::int32_t> tokens_for(const Decoder& model, std::size_t n, std::uint32_t seed) {
    std::vector<std::int32_t> t(n);
    std::uint32_t x = seed;
    for (auto& id : t) {
        x = x * 1664525u + 1013904223u;
        id = static_cast<std::int32_t>((x >> 8) % model.config().vocab_size);
    }
    return t;
}

}  // namespace

TEST_CASE("context_shift drops positions, moves the rest down and re-encodes the moved keys", "[context_shift]") {
    constexpr std::size_t H = 2, D = 32, N = 20;
    const auto k = random_normal(N * H * D, 1), v = random_normal(N * H * D, 2);
    MultiLayerKVCache<float> cache(CacheShape{3, H, D}, 1, 24);
    for (std::size_t l = 0; l < 3; ++l) cache.append(l, 0, k, v, N);
    std::vector<std::size_t> seen;
    context_shift(cache, 0, 4, 6, AddDelta{&seen});
    CHECK(seen == std::vector<std::size_t>{0, 1, 2});
    for (std::size_t l = 0; l < 3; ++l) {
        REQUIRE(cache.seq_len(l, 0) == N - 6);
        const auto keys = export_shd(cache, l, 0, KV::Keys), values = export_shd(cache, l, 0, KV::Values);
        for (std::size_t p = 0; p < N - 6; ++p) {
            const std::size_t from = p < 4 ? p : p + 6;
            for (std::size_t i = 0; i < H * D; ++i) {
                REQUIRE(values[p * H * D + i] == v[from * H * D + i]);
                REQUIRE(keys[p * H * D + i] == (p < 4 ? k[from * H * D + i] : k[from * H * D + i] - 6.0f));
            }
        }
    }
}

TEST_CASE("context_shift on quantised and compile-time caches keeps the untouched rows bit for bit", "[context_shift]") {
    constexpr std::size_t H = 2, D = 64, N = 40;
    const auto k = random_normal(N * H * D, 3), v = random_normal(N * H * D, 4);
    MultiLayerKVCache<q8_0, q4_0> cache(CacheShape{1, H, D}, 1, N);
    KVCache<1, H, D, fp16> fixed(1, N);
    cache.append(0, 0, k, v, N);
    fixed.append(0, 0, k, v, N);
    const auto before_v = export_shd(cache, 0, 0, KV::Values);
    const auto before_k = export_shd(cache, 0, 0, KV::Keys);
    std::vector<std::size_t> seen;
    const auto identity = [&](std::size_t layer, std::span<float>, std::size_t, std::ptrdiff_t) { seen.push_back(layer); };
    context_shift(cache, 0, 8, 16, identity);
    context_shift(fixed, 0, 8, 16, identity);
    CHECK(seen.size() == 2);
    const auto after_v = export_shd(cache, 0, 0, KV::Values);
    const auto after_k = export_shd(cache, 0, 0, KV::Keys);
    REQUIRE(after_v.size() == (N - 16) * H * D);
    for (std::size_t p = 0; p < N - 16; ++p) {
        const std::size_t from = p < 8 ? p : p + 16;
        CHECK(std::memcmp(&after_v[p * H * D], &before_v[from * H * D], H * D * sizeof(float)) == 0);
        // q8_0 keys decoded and re-encoded unchanged: a dequantised block quantises back to itself
        CHECK(std::memcmp(&after_k[p * H * D], &before_k[from * H * D], H * D * sizeof(float)) == 0);
    }
    CHECK(fixed.seq_len(0, 0) == N - 16);
}

TEST_CASE("context shift misuse is a typed error and changes nothing", "[context_shift]") {
    MultiLayerKVCache<float> cache(CacheShape{2, 1, 32}, 1, 16);
    const auto kv = random_normal(10 * 32, 5);
    cache.append(0, 0, kv, kv, 10);
    cache.append(1, 0, kv, kv, 10);
    std::vector<std::size_t> seen;
    CHECK_THROWS_AS(context_shift(cache, 0, 16, 1, AddDelta{&seen}), ConfigError);  // n_keep >= capacity
    CHECK_THROWS_AS(context_shift(cache, 0, 20, 1, AddDelta{&seen}), ConfigError);
    CHECK_THROWS_AS(context_shift(cache, 0, 2, 0, AddDelta{&seen}), ConfigError);   // nothing to drop
    CHECK_THROWS_AS(context_shift(cache, 0, 4, 7, AddDelta{&seen}), ConfigError);   // past the row's length
    CHECK_THROWS_AS(context_shift(cache, 1, 0, 1, AddDelta{&seen}), IndexError);    // no such row
    CHECK(seen.empty());
    CHECK(cache.seq_len(0, 0) == 10);
    CHECK(export_shd(cache, 1, 0, KV::Keys) == kv);
    // a row whose layers differ in length (a step half done) is refused before any layer moves
    cache.append(0, 0, std::span<const float>(kv).first(32), std::span<const float>(kv).first(32), 1);
    CHECK_THROWS_AS(context_shift(cache, 0, 2, 9, AddDelta{&seen}), ConfigError);
    CHECK(cache.seq_len(0, 0) == 11);
    CHECK(cache.seq_len(1, 0) == 10);
    CHECK_THROWS_AS(cache.transform_keys(0, 3, 11, [](std::size_t, std::span<float>, std::size_t) {}), IndexError);
}

TEST_CASE("rope_shift_keys equals RoPE at the new position", "[context_shift]") {
    for (const RopeStyle style : {RopeStyle::Interleaved, RopeStyle::Neox}) {
        const Decoder& model = test_model(style);
        const DecoderConfig& c = model.config();
        const std::size_t n = 5, width = c.kv_dim();
        auto raw = random_normal(n * width, 6);
        std::vector<double> inv_freq(c.rope_dim / 2);
        for (std::size_t i = 0; i < inv_freq.size(); ++i) {
            inv_freq[i] = std::pow(double(c.rope_base), -2.0 * double(i) / double(c.rope_dim)) * c.rope_position_scale;
        }
        auto at_100 = raw, at_37 = raw;
        apply_rope(at_100.data(), n, c.n_kv_heads, c.head_dim, c.rope_dim, 100, inv_freq.data(), style);
        apply_rope(at_37.data(), n, c.n_kv_heads, c.head_dim, c.rope_dim, 37, inv_freq.data(), style);
        rope_shift_keys(model, at_100, n, -63);
        INFO("style " << static_cast<int>(style));
        CHECK(max_abs_diff(at_100, at_37) < 1e-5f * max_abs(at_37));
        CHECK(max_abs_diff(at_100, raw) > 1e-2f);  // it did rotate
        std::vector<float> wrong(3);
        CHECK_THROWS_AS(rope_shift_keys(model, wrong, 1, 1), ShapeError);
    }
}

TEST_CASE("a shifted cache continues like a cold run over the shifted tokens", "[context_shift][model]") {
    for (const RopeStyle style : {RopeStyle::Interleaved, RopeStyle::Neox}) {
        Decoder& model = test_model(style);
        const std::size_t vocab = model.config().vocab_size, capacity = 48, n_keep = 4, n_discard = 20;
        const auto tokens = tokens_for(model, capacity + 1, 11);
        auto cache = model.make_cache(capacity);
        std::vector<float> logits(vocab), cold_logits(vocab);
        model.forward(std::span(tokens).first(capacity), cache, 0, logits);
        CHECK_THROWS_AS(model.forward(std::span(tokens).subspan(capacity, 1), cache, 0, logits), CapacityError);
        shift_context(model, cache, 0, n_keep, n_discard);
        REQUIRE(cache.seq_len() == capacity - n_discard);
        model.forward(std::span(tokens).subspan(capacity, 1), cache, 0, logits);

        std::vector<std::int32_t> shifted(tokens.begin(), tokens.begin() + n_keep);
        shifted.insert(shifted.end(), tokens.begin() + n_keep + n_discard, tokens.end());
        auto cold = model.make_cache(shifted.size());
        model.forward(shifted, cold, 0, cold_logits);
        INFO("style " << static_cast<int>(style));
        // float rounding of one extra rotation per key: logits agree to ~1e-5 of their range
        CHECK(max_abs_diff(logits, cold_logits) < 1e-4f * max_abs(cold_logits) + 1e-5f);
        // and the comparison can fail: without the re-rotation the keys are at the wrong positions
        auto unrotated = model.make_cache(capacity);
        model.forward(std::span(tokens).first(capacity), unrotated, 0, logits);
        context_shift(unrotated, 0, n_keep, n_discard, [](std::size_t, std::span<float>, std::size_t, std::ptrdiff_t) {});
        model.forward(std::span(tokens).subspan(capacity, 1), unrotated, 0, logits);
        CHECK(max_abs_diff(logits, cold_logits) > 1e-3f * max_abs(cold_logits));
    }
}

TEST_CASE("in a deeper model a shift gives layer 0 the cold run's keys and values", "[context_shift][model]") {
    Decoder& model = test_model(RopeStyle::Interleaved, 3);
    const std::size_t vocab = model.config().vocab_size, capacity = 40, n_keep = 3, n_discard = 11;
    const auto tokens = tokens_for(model, capacity, 14);
    auto cache = model.make_cache(capacity);
    std::vector<float> logits(vocab);
    model.forward(tokens, cache, 0, logits);
    shift_context(model, cache, 0, n_keep, n_discard);
    std::vector<std::int32_t> shifted(tokens.begin(), tokens.begin() + n_keep);
    shifted.insert(shifted.end(), tokens.begin() + n_keep + n_discard, tokens.end());
    auto cold = model.make_cache(shifted.size());
    model.forward(shifted, cold, 0, logits);
    const auto k = export_shd(cache, 0, 0, KV::Keys), cold_k = export_shd(cold, 0, 0, KV::Keys);
    CHECK(max_abs_diff(k, cold_k) < 1e-5f * max_abs(cold_k));
    CHECK(export_shd(cache, 0, 0, KV::Values) == export_shd(cold, 0, 0, KV::Values));
    // deeper layers saw the dropped tokens when they were computed: they differ from the cold run's
    CHECK(max_abs_diff(export_shd(cache, 2, 0, KV::Values), export_shd(cold, 2, 0, KV::Values)) > 1e-4f);
}

TEST_CASE("generation goes on past capacity with context shifts, in constant memory", "[context_shift][model]") {
    Decoder& model = test_model();
    const std::size_t vocab = model.config().vocab_size, capacity = 32;
    const auto tokens = tokens_for(model, 4 * capacity, 12);
    MultiLayerKVCache<q8_0> cache(model.cache_layers(), 1, capacity);
    const std::size_t bytes = cache.bytes_allocated();
    std::vector<float> logits(vocab);
    std::size_t shifts = 0;
    for (std::size_t t = 0; t < tokens.size(); ++t) {
        if (cache.seq_len() == capacity) {
            shift_context(model, cache, 0, 2, 15);
            ++shifts;
        }
        model.forward(std::span(tokens).subspan(t, 1), cache, 0, logits);
        REQUIRE(std::all_of(logits.begin(), logits.end(), [](float x) { return std::isfinite(x); }));
    }
    CHECK(shifts == 7);  // full at 32 tokens, then each shift makes room for 15: 96 more tokens take 7
    CHECK(cache.bytes_allocated() == bytes);
}

TEST_CASE("a sink + window cache generates 4x its capacity in constant memory, keeping its sinks", "[sinks][model]") {
    Decoder& model = test_model();
    const std::size_t vocab = model.config().vocab_size;
    const SinkWindowOptions opts{.sinks = 4, .window = 28, .evict_block = 8};
    SinkWindowCache<float> cache(model.cache_layers(), 1, opts);
    REQUIRE(cache.capacity() == 32);
    const std::size_t bytes = cache.bytes_allocated();
    const auto tokens = tokens_for(model, 4 * cache.capacity(), 13);
    std::vector<float> logits(vocab);
    std::vector<std::int32_t> held;  // the tokens whose K/V the cache holds, in order
    MultiLayerKVCache<float>& base = cache;
    std::vector<float> sinks_before;
    std::size_t dropped = 0;
    for (std::size_t t = 0; t < tokens.size(); ++t) {
        const std::size_t n = cache.make_room(0, 1, RopeShift{&model});
        if (n) {
            held.erase(held.begin() + 4, held.begin() + 4 + static_cast<std::ptrdiff_t>(n));
            dropped += n;
        }
        model.forward(std::span(tokens).subspan(t, 1), base, 0, logits);
        held.push_back(tokens[t]);
        if (t == 3) sinks_before = export_shd(cache, 0, 0, KV::Keys);
        REQUIRE(cache.seq_len() <= 32);
        REQUIRE(cache.seq_len() == held.size());
    }
    CHECK(dropped == 96);  // 128 tokens through 32 positions: 96 dropped, 8 at a time
    CHECK(cache.bytes_allocated() == bytes);
    const auto keys_now = export_shd(cache, 0, 0, KV::Keys);
    CHECK(std::memcmp(keys_now.data(), sinks_before.data(), sinks_before.size() * sizeof(float)) == 0);  // sinks kept
    // the cache equals a cold run over the tokens it holds
    auto cold = model.make_cache(held.size());
    std::vector<float> cold_logits(vocab);
    model.forward(held, cold, 0, cold_logits);
    CHECK(max_abs_diff(logits, cold_logits) < 1e-4f * max_abs(cold_logits) + 1e-5f);
}

TEST_CASE("sink + window misuse is a typed error", "[sinks]") {
    const std::vector<LayerShape> layers{{2, 32}};
    CHECK_THROWS_AS(SinkWindowCache<float>(layers, 1, {.sinks = 4, .window = 16, .evict_block = 32}), ConfigError);
    CHECK_THROWS_AS(SinkWindowCache<float>(layers, 1, {.sinks = 4, .window = 16, .evict_block = 0}), ConfigError);
    SinkWindowCache<q8_0> cache(layers, 1, {.sinks = 2, .window = 16, .evict_block = 4});
    auto none = [](std::size_t, std::span<float>, std::size_t, std::ptrdiff_t) {};
    CHECK_THROWS_AS(cache.make_room(0, 17, none), CapacityError);
    CHECK_THROWS_AS(SinkWindowCache<q8_0>(std::vector<LayerShape>{{2, 48}}, 1, {}), ConfigError);  // not whole blocks
    CacheOptions o;
    o.sinks = 4;
    CHECK_THROWS_AS(validate(o, 64), ConfigError);  // sinks without a window
    o.window = 16;
    o.evict_block = 32;
    CHECK_THROWS_AS(validate(o, 64), ConfigError);  // window smaller than one block
    o.evict_block = 8;
    CHECK_NOTHROW(validate(o, 64));
    o.context_shift = true;
    CHECK_THROWS_AS(validate(o, 64), ConfigError);  // both
    CacheOptions shift;
    shift.context_shift = true;
    shift.n_keep = 64;
    CHECK_THROWS_AS(validate(shift, 64), ConfigError);
    shift.n_keep = 4;
    shift.n_discard = 61;
    CHECK_THROWS_AS(validate(shift, 64), ConfigError);
    CHECK(parse_cache_element("q8_0") == CacheElement::Q8_0);
    CHECK(cache_element_name(parse_cache_element("fp16")) == "f16");
    CHECK_THROWS_AS(parse_cache_element("q5_1"), ConfigError);
    CHECK_THROWS_AS(with_cache_elements(CacheElement::Q4_0, CacheElement::F32,
                                        [](auto, auto) { return 0; }),
                    ConfigError);
    CHECK(with_cache_elements(CacheElement::Q8_0, CacheElement::Q4_0, []<class K, class V>(std::type_identity<K>, std::type_identity<V>) {
              return std::is_same_v<K, q8_0> && std::is_same_v<V, q4_0>;
          }));
    CHECK(parse_cache_element("q4_0h") == CacheElement::Q4_0H);
    CHECK(cache_element_name(CacheElement::Q4_0H) == "q4_0h");
    CHECK(cache_element_bytes_per_value(CacheElement::Q4_0H) == 18.0 / 32.0);
    CHECK(with_cache_elements(CacheElement::Q4_0H, CacheElement::Q4_0, []<class K, class V>(std::type_identity<K>, std::type_identity<V>) {
              return std::is_same_v<K, q4_0h> && std::is_same_v<V, q4_0>;
          }));
    CHECK_THROWS_AS(with_cache_elements(CacheElement::Q4_0, CacheElement::Q4_0H, [](auto, auto) { return 0; }),
                    ConfigError);
}
