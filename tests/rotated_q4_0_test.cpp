// q4_0h (two q4_0 blocks of a 64-value Walsh–Hadamard rotation): the transform is the Sylvester Hadamard matrix
// over 8, exactly, and its own inverse; the stored blocks are q4_0 blocks of the rotation, quantised with the
// scale of least squared error; decoding inverts it; a rotated query against the stored blocks gives the dot
// product with the decoded values; a block with an outlier channel loses far less than plain q4_0 (why the type
// exists); attention and cache files over it.
#include <catch2/catch.hpp>

#include <algorithm>
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
#include "kvcache/error.hpp"
#include "kvcache/persist/cache_file.hpp"
#include "kvcache/testing/random.hpp"

using namespace kvcache;
using kvcache::testing::random_normal;

namespace {

/// Entry (i, j) of the 64 x 64 Sylvester Hadamard matrix: (-1)^popcount(i & j).
int hadamard(std::size_t i, std::size_t j) { return std::popcount(static_cast<unsigned>(i & j)) % 2 ? -1 : 1; }

/// H·x / 8 for 64 values, in double.
std::vector<double> rotated_in_double(const float* x) {
    std::vector<double> y(64);
    for (std::size_t i = 0; i < 64; ++i) {
        double s = 0.0;
        for (std::size_t j = 0; j < 64; ++j) s += hadamard(i, j) * double(x[j]);
        y[i] = s / 8.0;
    }
    return y;
}

double rms_error(const std::vector<float>& a, const std::vector<float>& b) {
    double s = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) s += (double(a[i]) - double(b[i])) * (double(a[i]) - double(b[i]));
    return std::sqrt(s / double(a.size()));
}

/// Squared error of 32 values against their q4_0 block.
double block_error(const float* y, const q4_0& block) {
    float back[32];
    ElementTraits<q4_0>::decode(&block, back, 32);
    double e = 0.0;
    for (std::size_t j = 0; j < 32; ++j) e += (double(y[j]) - double(back[j])) * (double(y[j]) - double(back[j]));
    return e;
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

TEST_CASE("walsh_hadamard64 is the Sylvester Hadamard matrix over 8, exactly, and its own inverse",
          "[element_types][rotated]") {
    // small integers: every sum is exact in float and /8 is exact, so the butterflies must equal the matrix
    // product bit for bit
    std::vector<float> x(64);
    for (std::size_t j = 0; j < 64; ++j) x[j] = static_cast<float>(static_cast<int>((j * 37 + 11) % 19) - 9);
    std::vector<float> y = x;
    detail::walsh_hadamard64(y.data());
    const auto want = rotated_in_double(x.data());
    for (std::size_t i = 0; i < 64; ++i) CHECK(double(y[i]) == want[i]);
    detail::walsh_hadamard64(y.data());
    for (std::size_t j = 0; j < 64; ++j) CHECK(y[j] == x[j]);
}

TEST_CASE("q4_0h stores q4_0 blocks of H·x / 8 and decodes them as H·y / 8", "[element_types][rotated]") {
    const auto x = random_normal(4 * 64, 41);
    std::vector<q4_0h> blocks(4);
    ElementTraits<q4_0h>::encode(x.data(), blocks.data(), x.size());
    std::vector<float> decoded(x.size());
    ElementTraits<q4_0h>::decode(blocks.data(), decoded.data(), x.size());
    for (std::size_t b = 0; b < 4; ++b) {
        const auto y = rotated_in_double(x.data() + b * 64);
        std::vector<float> yf(y.begin(), y.end());
        const q4_0* stored = ElementTraits<q4_0h>::stored(&blocks[b]);
        CHECK(stored == &blocks[b].blocks[0]);
        for (std::size_t h = 0; h < 2; ++h) {
            // the levels are the nearest ones for the stored scale (y / d rounded half up, clamped to -8..7)
            const float d = fp16::to_float(stored[h].d.bits);
            REQUIRE(d != 0.0f);
            for (std::size_t j = 0; j < 32; ++j) {
                const int level = static_cast<int>((stored[h].qs[j % 16] >> (j < 16 ? 0 : 4)) & 0x0f) - 8;
                const double exact = double(yf[h * 32 + j]) / double(d);
                const int nearest = static_cast<int>(std::clamp(std::floor(exact + 0.5), -8.0, 7.0));
                // (values within a rounding error of a half-way point may go either way)
                if (std::fabs(exact - std::floor(exact) - 0.5) > 1e-4) CHECK(level == nearest);
            }
            // and the scale does at least as well as q4_0's largest-value rule on the same values
            q4_0 plain;
            ElementTraits<q4_0>::encode(yf.data() + h * 32, &plain, 32);
            CHECK(block_error(yf.data() + h * 32, stored[h]) <= block_error(yf.data() + h * 32, plain) * (1 + 1e-6));
        }
        // decode: H·(dequantised y) / 8
        float yq[64];
        ElementTraits<q4_0>::decode(stored, yq, 64);
        const auto want = rotated_in_double(yq);
        for (std::size_t j = 0; j < 64; ++j) {
            CHECK(std::fabs(double(decoded[b * 64 + j]) - want[j]) <= 1e-6 * (1.0 + std::fabs(want[j])));
        }
    }
}

TEST_CASE("q4_0h's least-squares scale: lower error than q4_0's rule over many blocks, zeros stay zeros",
          "[element_types][rotated]") {
    const auto y = random_normal(1000 * 32, 50);
    double least_squares = 0.0, largest_value_rule = 0.0;
    for (std::size_t b = 0; b < 1000; ++b) {
        q4_0 ls, plain;
        detail::encode_q4_0_least_squares(y.data() + b * 32, ls);
        ElementTraits<q4_0>::encode(y.data() + b * 32, &plain, 32);
        least_squares += block_error(y.data() + b * 32, ls);
        largest_value_rule += block_error(y.data() + b * 32, plain);
    }
    INFO("squared error: least squares " << least_squares << ", q4_0's rule " << largest_value_rule);
    CHECK(least_squares < 0.9 * largest_value_rule);
    // an all-zero block: scale 0, every level 0 (nibble 8), decodes to zeros
    const std::vector<float> zeros(64, 0.0f);
    q4_0h z;
    ElementTraits<q4_0h>::encode(zeros.data(), &z, 64);
    for (const q4_0& block : z.blocks) {
        CHECK(block.d.bits == 0);
        for (std::uint8_t byte : block.qs) CHECK(byte == 0x88);
    }
    float back[64];
    ElementTraits<q4_0h>::decode(&z, back, 64);
    for (float v : back) CHECK(v == 0.0f);
}

TEST_CASE("a rotated query against the stored blocks is the dot product with the decoded values",
          "[element_types][rotated]") {
    const auto k = random_normal(128, 42), q = random_normal(128, 43);
    std::vector<q4_0h> blocks(2);
    ElementTraits<q4_0h>::encode(k.data(), blocks.data(), 128);
    std::vector<float> decoded(128), raw(128), rq = q;
    ElementTraits<q4_0h>::decode(blocks.data(), decoded.data(), 128);
    for (std::size_t b = 0; b < 2; ++b) ElementTraits<q4_0>::decode(ElementTraits<q4_0h>::stored(&blocks[b]), raw.data() + b * 64, 64);
    ElementTraits<q4_0h>::rotate_query(rq.data(), 128);
    double want = 0.0, got = 0.0, norm = 0.0;
    for (std::size_t i = 0; i < 128; ++i) {
        want += double(q[i]) * double(decoded[i]);
        got += double(rq[i]) * double(raw[i]);
        norm += std::fabs(double(q[i]) * double(decoded[i]));
    }
    CHECK(std::fabs(got - want) <= 1e-6 * norm);
    // unrotate undoes the query rotation's basis change for a sum of stored rows (the value path)
    std::vector<float> back = raw;
    ElementTraits<q4_0h>::unrotate(back.data(), 128);
    for (std::size_t i = 0; i < 128; ++i) CHECK(back[i] == decoded[i]);
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
    CHECK(sizeof(q4_0h) == 36);
    CHECK(block_values_v<q4_0h> == 64);
    // a head of 32 values holds no whole rotation
    CHECK_THROWS_AS(MultiLayerKVCache<q4_0h>(CacheShape{1, 2, 32}, 1, 5), ConfigError);
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

TEST_CASE("a q4_0h cache file records the rotation (code 7) and does not load as q4_0", "[persist][rotated]") {
    const auto path = std::filesystem::temp_directory_path() / "kvcache_q4_0h.kvc";
    MultiLayerKVCache<q4_0h> cache(CacheShape{1, 2, 64}, 1, 5);
    const auto kv = random_normal(5 * 2 * 64, 49);
    cache.append(0, 0, kv, kv, 5);
    const std::vector<std::int32_t> tokens{1, 2, 3, 4, 5};
    save_cache_file(path, cache, 0, tokens, make_fingerprint("m", cache), {.durable = false});
    CHECK(read_cache_file_info(path, VerifyPayload::yes).element == "q4_0h");
    MultiLayerKVCache<q4_0> plain(CacheShape{1, 2, 64}, 1, 5);
    // the fingerprint the file was saved with matches; the element code (7, not 5) is what refuses it
    CHECK_THROWS_AS(load_cache_file(path, plain, 0, make_fingerprint("m", cache)), FingerprintMismatch);
    std::filesystem::remove(path);
}
