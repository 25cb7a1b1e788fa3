// fp16/bf16 storage types as this build compiles them (F16C instructions where the CPU has them), and the
// vectorised bulk converters against the scalar ones.
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kvcache/element_types.hpp"
#include "kvcache/testing/random.hpp"

namespace et = kvcache;
#include "element_types_checks.hpp"

using kvcache::bf16;
using kvcache::fp16;

namespace {

/// Inputs that exercise every branch of a conversion: ordinary values, ties, overflow, subnormals, zeros,
/// infinities and NaN, mixed with random values, so a vector lane and the scalar tail each see all kinds.
std::vector<float> mixed_inputs(std::size_t n, std::uint64_t seed) {
    const float specials[] = {0.0f, -0.0f, 1.0f, -65504.0f, 65520.0f, 1e9f, -INFINITY, INFINITY,
                              std::numeric_limits<float>::quiet_NaN(), std::ldexp(1.0f, -24), std::ldexp(1.0f, -25),
                              std::ldexp(3.0f, -26), 1.0f + 1.0f / 2048.0f, std::bit_cast<float>(0x3f808000u),
                              std::numeric_limits<float>::denorm_min(), -std::ldexp(1023.5f, -24)};
    auto out = kvcache::testing::random_normal(n, seed, 100.0f);
    for (std::size_t i = 0; i < n; i += 3) out[i] = specials[(i / 3 + seed) % std::size(specials)];
    return out;
}

template <class T>
bool same_bits(T a, T b) {
    if constexpr (std::is_same_v<T, float>) return std::bit_cast<std::uint32_t>(a) == std::bit_cast<std::uint32_t>(b);
    else return a.bits == b.bits;
}

}  // namespace

TEMPLATE_TEST_CASE("convert_from_float equals element-wise from_float for lengths 0..40", "[element_types]", float, fp16, bf16) {
    for (std::size_t n = 0; n <= 40; ++n) {
        const auto src = mixed_inputs(n, n + 1);
        // a guard element after the end must stay untouched
        std::vector<TestType> bulk(n + 1, TestType{}), scalar(n + 1, TestType{});
        bulk[n] = kvcache::from_float<TestType>(7.0f);
        kvcache::convert_from_float(src.data(), bulk.data(), n);
        for (std::size_t i = 0; i < n; ++i) scalar[i] = kvcache::from_float<TestType>(src[i]);
        std::size_t diffs = 0;
        for (std::size_t i = 0; i < n; ++i) diffs += !same_bits(bulk[i], scalar[i]);
        INFO("length " << n);
        CHECK(diffs == 0);
        CHECK(kvcache::to_float(bulk[n]) == 7.0f);
    }
}

TEMPLATE_TEST_CASE("convert_to_float equals element-wise to_float for lengths 0..40", "[element_types]", float, fp16, bf16) {
    kvcache::testing::Rng rng(99);
    for (std::size_t n = 0; n <= 40; ++n) {
        std::vector<TestType> src(n);
        for (auto& x : src) {
            if constexpr (std::is_same_v<TestType, float>) x = rng.normal();
            else x = TestType::from_bits(static_cast<std::uint16_t>(rng.next_u64()));  // any pattern, NaN included
        }
        std::vector<float> bulk(n + 1, -3.0f);
        kvcache::convert_to_float(src.data(), bulk.data(), n);
        std::size_t diffs = 0;
        for (std::size_t i = 0; i < n; ++i) {
            diffs += std::bit_cast<std::uint32_t>(bulk[i]) != std::bit_cast<std::uint32_t>(kvcache::to_float(src[i])) &&
                     !(std::isnan(bulk[i]) && std::isnan(kvcache::to_float(src[i])));
        }
        INFO("length " << n);
        CHECK(diffs == 0);
        CHECK(bulk[n] == -3.0f);
    }
}

TEST_CASE("bulk fp16 conversion matches the IEEE reference on every pattern", "[element_types]") {
    // the vector path on all 65536 patterns at once, checked against the definition rather than the scalar code
    std::vector<fp16> all(65536);
    for (std::uint32_t b = 0; b < 65536; ++b) all[b] = fp16::from_bits(static_cast<std::uint16_t>(b));
    std::vector<float> floats(all.size());
    kvcache::convert_to_float(all.data(), floats.data(), all.size());
    std::vector<fp16> back(all.size());
    kvcache::convert_from_float(floats.data(), back.data(), floats.size());
    std::size_t bad = 0;
    for (std::uint32_t b = 0; b < 65536; ++b) {
        const double want = ieee_reference::half_value(static_cast<std::uint16_t>(b));
        if (std::isnan(want)) bad += !std::isnan(floats[b]) || !ieee_reference::half_is_nan(back[b].bits);
        else bad += static_cast<double>(floats[b]) != want || back[b].bits != b;
    }
    CHECK(bad == 0);

    const auto probes = ieee_reference::rounding_probes(0x7bff, ieee_reference::half_value);
    std::vector<fp16> rounded(probes.size());
    kvcache::convert_from_float(probes.data(), rounded.data(), probes.size());
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < probes.size(); ++i) wrong += rounded[i].bits != ieee_reference::half_from_float(probes[i]);
    CHECK(wrong == 0);
}

TEST_CASE("element_name names each storage type", "[element_types]") {
    CHECK(kvcache::element_name<float>() == "f32");
    CHECK(kvcache::element_name<fp16>() == "f16");
    CHECK(kvcache::element_name<bf16>() == "bf16");
    STATIC_REQUIRE(kvcache::StorageElement<float>);
    STATIC_REQUIRE(kvcache::StorageElement<fp16>);
    STATIC_REQUIRE(kvcache::StorageElement<bf16>);
    STATIC_REQUIRE_FALSE(kvcache::StorageElement<double>);
    STATIC_REQUIRE_FALSE(kvcache::StorageElement<std::uint16_t>);
}
