// q4_0h (q4_0 blocks of Walsh–Hadamard-rotated values): the transform is the Sylvester Hadamard matrix with the
// fixed signs, exactly; the stored blocks are GGUF q4_0 blocks of the rotation; decoding inverts it; a rotated
// query against the stored blocks gives the dot product with the decoded values; a block with an outlier channel
// loses far less than plain q4_0 (why the type exists); attention and cache files over it.
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "kvcache/attention/attention.hpp"
#include "kvcache/attention/reference.hpp"
#include "kvcache/cache/layout.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/persist/cache_file.hpp"
#include "kvcache/testing/random.hpp"

using namespace kvcache;
using kvcache::testing::random_normal;

namespace {

/// Entry (i, j) of the 32 x 32 Sylvester Hadamard matrix: (-1)^popcount(i & j).
int hadamard(std::size_t i, std::size_t j) { return std::popcount(static_cast<unsigned>(i & j)) % 2 ? -1 : 1; }

/// D·x with D's signs from the format's pattern, in double.
double signed_channel(const float* x, std::size_t j) {
    return ((detail::kRotationSigns >> j) & 1u) ? -double(x[j]) : double(x[j]);
}

double rms_error(const std::vector<float>& a, const std::vector<float>& b) {
    double s = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) s += (double(a[i]) - double(b[i])) * (double(a[i]) - double(b[i]));
    return std::sqrt(s / double(a.size()));
}

template <class T>
std::vector<float> through(const std::vector<float>& x) {
    std::vector<T> blocks(x.size() / block_values_v<T>);
    std::vector<float> out(x.size());
    convert_from_float(x.data(), blocks.data(), x.size());
    convert_to_float(blocks.data(), out.data(), x.size());
    return out;
}

}  // namespace

TEST_CASE("walsh_hadamard32 is the Sylvester Hadamard matrix, exactly, and H·H = 32·I", "[element_types][rotated]") {
    // small integers: every sum is exact in float, so the butterflies must equal the matrix product bit for bit
    std::vector<float> x(32);
    for (std::size_t j = 0; j < 32; ++j) x[j] = static_cast<float>(static_cast<int>((j * 37 + 11) % 19) - 9);
    std::vector<float> y = x;
    detail::walsh_hadamard32(y.data());
    for (std::size_t i = 0; i < 32; ++i) {
        double want = 0.0;
        for (std::size_t j = 0; j < 32; ++j) want += hadamard(i, j) * double(x[j]);
        CHECK(double(y[i]) == want);
    }
    detail::walsh_hadamard32(y.data());
    for (std::size_t j = 0; j < 32; ++j) CHECK(y[j] == 32.0f * x[j]);
}

TEST_CASE("q4_0h stores the GGUF q4_0 block of H·D·x / 8 and decodes it as D·H·y / 4", "[element_types][rotated]") {
    const auto x = random_normal(4 * 32, 41);
    std::vector<q4_0h> blocks(4);
    ElementTraits<q4_0h>::encode(x.data(), blocks.data(), x.size());
    std::vector<float> decoded(x.size());
    ElementTraits<q4_0h>::decode(blocks.data(), decoded.data(), x.size());
    for (std::size_t b = 0; b < 4; ++b) {
        const float* xb = x.data() + b * 32;
        // the rotation, in double, quantised as plain q4_0: the same bytes (the float butterflies round only in
        // the last bit, far from any of q4_0's rounding boundaries for these inputs)
        std::vector<float> y(32);
        for (std::size_t i = 0; i < 32; ++i) {
            double s = 0.0;
            for (std::size_t j = 0; j < 32; ++j) s += hadamard(i, j) * signed_channel(xb, j);
            y[i] = static_cast<float>(s / 8.0);
        }
        q4_0 plain;
        ElementTraits<q4_0>::encode(y.data(), &plain, 32);
        CHECK(std::memcmp(&plain, ElementTraits<q4_0h>::stored(&blocks[b]), sizeof(q4_0)) == 0);
        // decode: D·H·(dequantised y) / 4
        float yq[32];
        ElementTraits<q4_0>::decode(ElementTraits<q4_0h>::stored(&blocks[b]), yq, 32);
        for (std::size_t j = 0; j < 32; ++j) {
            double s = 0.0;
            for (std::size_t i = 0; i < 32; ++i) s += hadamard(j, i) * double(yq[i]);
            const double want = ((detail::kRotationSigns >> j) & 1u ? -s : s) / 4.0;
            CHECK(std::fabs(double(decoded[b * 32 + j]) - want) <= 1e-6 * (1.0 + std::fabs(want)));
        }
    }
}

TEST_CASE("a rotated query against the stored blocks is the dot product with the decoded values",
          "[element_types][rotated]") {
    const auto k = random_normal(64, 42), q = random_normal(64, 43);
    std::vector<q4_0h> blocks(2);
    ElementTraits<q4_0h>::encode(k.data(), blocks.data(), 64);
    std::vector<float> decoded(64), raw(64), rq = q;
    ElementTraits<q4_0h>::decode(blocks.data(), decoded.data(), 64);
    for (std::size_t b = 0; b < 2; ++b) ElementTraits<q4_0>::decode(ElementTraits<q4_0h>::stored(&blocks[b]), raw.data() + b * 32, 32);
    ElementTraits<q4_0h>::rotate_query(rq.data(), 64);
    double want = 0.0, got = 0.0, norm = 0.0;
    for (std::size_t i = 0; i < 64; ++i) {
        want += double(q[i]) * double(decoded[i]);
        got += double(rq[i]) * double(raw[i]);
        norm += std::fabs(double(q[i]) * double(decoded[i]));
    }
    CHECK(std::fabs(got - want) <= 1e-6 * norm);
    // unrotate undoes the query rotation's basis change for a sum of stored rows (the value path)
    std::vector<float> back = raw;
    ElementTraits<q4_0h>::unrotate(back.data(), 64);
    for (std::size_t i = 0; i < 64; ++i) CHECK(back[i] == decoded[i]);
}

TEST_CASE("q4_0h loses far less than q4_0 on rows with outlier channels", "[element_types][rotated]") {
    // rows like SmolLM2's keys: unit-scale channels and two channels per head 20x larger
    auto x = random_normal(64 * 64, 44);
    for (std::size_t r = 0; r < 64; ++r) {
        x[r * 64 + 5] = 20.0f + x[r * 64 + 5];
        x[r * 64 + 40] = -25.0f + x[r * 64 + 40];
    }
    const double plain = rms_error(through<q4_0>(x), x), rotated = rms_error(through<q4_0h>(x), x);
    INFO("rms error q4_0 " << plain << ", q4_0h " << rotated);
    CHECK(rotated < 0.5 * plain);
    // and on Gaussian rows (no outliers) it costs no more than a little
    const auto g = random_normal(64 * 64, 45);
    CHECK(rms_error(through<q4_0h>(g), g) < 1.1 * rms_error(through<q4_0>(g), g));
    CHECK(element_name<q4_0h>() == "q4_0h");
    CHECK(sizeof(q4_0h) == 18);
}

TEST_CASE("attention over q4_0h keys and values equals attention over their decoded values", "[attention][rotated]") {
    constexpr std::size_t H = 3, D = 64, QH = 9, N = 700;
    const auto k = random_normal(N * H * D, 46), v = random_normal(N * H * D, 47), q = random_normal(2 * QH * D, 48);
    MultiLayerKVCache<q4_0h> rotated(CacheShape{1, H, D}, 1, N);
    rotated.append(0, 0, k, v, N);
    MultiLayerKVCache<float> decoded(CacheShape{1, H, D}, 1, N);
    decoded.append(0, 0, through<q4_0h>(k), through<q4_0h>(v), N);
    std::vector<float> fast(q.size()), on_floats(q.size()), ref(q.size());
    attention(rotated, 0, 0, q, 2, QH, fast);
    attention(decoded, 0, 0, q, 2, QH, on_floats);
    attention_reference(rotated, 0, 0, q, 2, QH, ref);
    float worst = 0.0f, largest = 0.0f;
    for (std::size_t i = 0; i < q.size(); ++i) {
        worst = std::max({worst, std::fabs(fast[i] - on_floats[i]), std::fabs(fast[i] - ref[i])});
        largest = std::max(largest, std::fabs(ref[i]));
    }
    CHECK(worst <= 1e-5f * largest);
}

TEST_CASE("a q4_0h cache file records the rotation (code 6) and does not load as q4_0", "[persist][rotated]") {
    const auto path = std::filesystem::temp_directory_path() / "kvcache_q4_0h.kvc";
    MultiLayerKVCache<q4_0h> cache(CacheShape{1, 2, 64}, 1, 5);
    const auto kv = random_normal(5 * 2 * 64, 49);
    cache.append(0, 0, kv, kv, 5);
    const std::vector<std::int32_t> tokens{1, 2, 3, 4, 5};
    save_cache_file(path, cache, 0, tokens, make_fingerprint("m", cache), {.durable = false});
    CHECK(read_cache_file_info(path, VerifyPayload::yes).element == "q4_0h");
    MultiLayerKVCache<q4_0> plain(CacheShape{1, 2, 64}, 1, 5);
    // the fingerprint the file was saved with matches; the element code (6, not 5) is what refuses it
    CHECK_THROWS_AS(load_cache_file(path, plain, 0, make_fingerprint("m", cache)), FingerprintMismatch);
    std::filesystem::remove(path);
}
