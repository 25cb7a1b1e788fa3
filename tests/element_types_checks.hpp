// fp16/bf16 conversion checks against references written from the IEEE 754 definitions; shared by
// element_types_test (the build's own path, F16C where the CPU has it) and element_types_portable_test.
// The including file defines namespace `et` as the namespace that holds fp16, bf16 and the converters.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace ieee_reference {

/// The value of a binary16 bit pattern, from the definition: (-1)^s * 2^(e-15) * 1.m for normal numbers,
/// (-1)^s * 2^-14 * 0.m for subnormals (e == 0), inf / NaN for e == 31.
inline double half_value(std::uint16_t h) {
    const int sign = (h >> 15) & 1;
    const int e = (h >> 10) & 0x1f;
    const int m = h & 0x3ff;
    double v;
    if (e == 31) {
        v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
    } else if (e == 0) {
        v = std::ldexp(static_cast<double>(m) / 1024.0, -14);
    } else {
        v = std::ldexp(1.0 + static_cast<double>(m) / 1024.0, e - 15);
    }
    return sign ? -v : v;
}

/// The value of a bfloat16 bit pattern: the float whose top 16 bits these are.
inline double bf16_value(std::uint16_t b) {
    return static_cast<double>(std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16));
}

/// Rounds |x| (finite, >= 0) to the nearest of the ascending magnitudes value(lo_bits..hi_bits), ties to
/// the even bit pattern; `beyond` is the magnitude just past hi_bits (the overflow neighbour, inf's slot).
template <class Value>
inline std::uint16_t nearest_magnitude(double x, std::uint16_t max_finite_bits, double beyond, Value value) {
    // binary search for the largest pattern whose value is <= x
    std::uint32_t lo = 0, hi = max_finite_bits;
    if (x >= value(static_cast<std::uint16_t>(hi))) {
        lo = hi;
    } else {
        while (hi - lo > 1) {
            const std::uint32_t mid = (lo + hi) / 2;
            if (value(static_cast<std::uint16_t>(mid)) <= x) lo = mid;
            else hi = mid;
        }
    }
    const double below = value(static_cast<std::uint16_t>(lo));
    const double above = lo == max_finite_bits ? beyond : value(static_cast<std::uint16_t>(lo + 1));
    if (x == below) return static_cast<std::uint16_t>(lo);
    const double d_below = x - below, d_above = above - x;
    if (d_below < d_above) return static_cast<std::uint16_t>(lo);
    if (d_above < d_below) return static_cast<std::uint16_t>(lo + 1);
    return static_cast<std::uint16_t>((lo & 1u) ? lo + 1 : lo);  // tie: the even pattern
}

/// float -> binary16 with round-to-nearest-even; overflow (|x| >= 65504 + half an ulp) gives inf.
inline std::uint16_t half_from_float(float f) {
    const std::uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    if (std::isnan(f)) return static_cast<std::uint16_t>(sign | 0x7e00);
    if (std::isinf(f)) return static_cast<std::uint16_t>(sign | 0x7c00);
    // 65536 = 2^16 is where the next binade would start: inf stands in that slot (pattern 0x7c00, even)
    return static_cast<std::uint16_t>(sign | nearest_magnitude(std::fabs(static_cast<double>(f)), 0x7bff, 65536.0,
                                                               half_value));
}

/// float -> bfloat16 with round-to-nearest-even; overflow past max + half an ulp gives inf.
inline std::uint16_t bf16_from_float(float f) {
    const std::uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    if (std::isnan(f)) return static_cast<std::uint16_t>(sign | 0x7fc0);
    if (std::isinf(f)) return static_cast<std::uint16_t>(sign | 0x7f80);
    return static_cast<std::uint16_t>(sign | nearest_magnitude(std::fabs(static_cast<double>(f)), 0x7f7f,
                                                               std::ldexp(1.0, 128), bf16_value));
}

inline bool half_is_nan(std::uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }
inline bool bf16_is_nan(std::uint16_t b) { return (b & 0x7f80) == 0x7f80 && (b & 0x7f); }

/// Floats that probe every rounding decision of a 16-bit format: each representable value, the exact
/// midpoint between neighbours (a tie) and the floats just either side of it, for both signs.
template <class Value>
std::vector<float> rounding_probes(std::uint16_t max_finite_bits, Value value) {
    std::vector<float> probes;
    for (std::uint32_t b = 0; b <= max_finite_bits; ++b) {
        const double a = value(static_cast<std::uint16_t>(b));
        const double next = b == max_finite_bits ? 2.0 * a - value(static_cast<std::uint16_t>(b - 1)) : value(static_cast<std::uint16_t>(b + 1));
        const float mid = static_cast<float>((a + next) / 2);  // exact: one more bit than the format has
        for (float f : {static_cast<float>(a), mid, std::nextafter(mid, 0.0f), std::nextafter(mid, INFINITY)}) {
            probes.push_back(f);
            probes.push_back(-f);
        }
    }
    return probes;
}

}  // namespace ieee_reference

TEST_CASE("reference self-check: the IEEE references agree with known values", "[element_types]") {
    // The references themselves must be right, or agreeing with them means nothing.
    using namespace ieee_reference;
    CHECK(half_value(0x3c00) == 1.0);
    CHECK(half_value(0x7bff) == 65504.0);
    CHECK(half_value(0x0001) == std::ldexp(1.0, -24));
    CHECK(half_value(0x0400) == std::ldexp(1.0, -14));
    CHECK(half_value(0xc000) == -2.0);
    CHECK(half_from_float(1.0f) == 0x3c00);
    CHECK(half_from_float(65519.0f) == 0x7bff);
    CHECK(half_from_float(65520.0f) == 0x7c00);
    CHECK(half_from_float(1.0f + 1.0f / 2048.0f) == 0x3c00);                  // tie to even (down)
    CHECK(half_from_float(1.0f + 3.0f / 2048.0f) == 0x3c02);                  // tie to even (up)
    CHECK(half_from_float(std::ldexp(1.0f, -25)) == 0x0000);                  // tie between 0 and 2^-24
    CHECK(half_from_float(std::ldexp(1.5f, -25)) == 0x0001);
    CHECK(bf16_value(0x3f80) == 1.0);
    CHECK(bf16_from_float(std::bit_cast<float>(0x3f808000u)) == 0x3f80);      // tie to even (down)
    CHECK(bf16_from_float(std::bit_cast<float>(0x3f818000u)) == 0x3f82);      // tie to even (up)
    CHECK(bf16_from_float(std::numeric_limits<float>::max()) == 0x7f80);
}

TEST_CASE("fp16: every bit pattern converts to the exact float the IEEE definition gives", "[element_types]") {
    std::size_t mismatches = 0;
    for (std::uint32_t b = 0; b < 65536; ++b) {
        const auto h = static_cast<std::uint16_t>(b);
        const float f = et::fp16::to_float(h);
        const double expected = ieee_reference::half_value(h);
        const bool ok = std::isnan(expected) ? std::isnan(f) && std::signbit(f) == bool(h & 0x8000)
                                             : static_cast<double>(f) == expected && std::signbit(f) == bool(h & 0x8000);
        if (!ok && mismatches++ < 5) FAIL_CHECK("fp16 bits 0x" << std::hex << b << " -> " << f << ", expected " << expected);
    }
    CHECK(mismatches == 0);
}

TEST_CASE("fp16: half -> float -> half is exact for all 65536 patterns; NaN stays NaN with its sign", "[element_types]") {
    std::size_t mismatches = 0, nans = 0;
    for (std::uint32_t b = 0; b < 65536; ++b) {
        const auto h = static_cast<std::uint16_t>(b);
        const std::uint16_t back = et::fp16::from_float(et::fp16::to_float(h));
        bool ok;
        if (ieee_reference::half_is_nan(h)) {
            ++nans;
            ok = ieee_reference::half_is_nan(back) && (back & 0x8000) == (h & 0x8000);
        } else {
            ok = back == h;
        }
        if (!ok && mismatches++ < 5) FAIL_CHECK("fp16 round trip 0x" << std::hex << b << " -> 0x" << back);
    }
    CHECK(mismatches == 0);
    CHECK(nans == 2 * 1023);
}

TEST_CASE("fp16: float -> half rounds to nearest even at every tie, like the IEEE reference", "[element_types]") {
    const auto probes = ieee_reference::rounding_probes(0x7bff, ieee_reference::half_value);
    std::size_t mismatches = 0;
    for (float f : probes) {
        const std::uint16_t got = et::fp16::from_float(f);
        const std::uint16_t want = ieee_reference::half_from_float(f);
        if (got != want && mismatches++ < 5) {
            FAIL_CHECK("fp16 from " << f << " (float bits 0x" << std::hex << std::bit_cast<std::uint32_t>(f) << ") gave 0x"
                                    << got << ", expected 0x" << want);
        }
    }
    CHECK(mismatches == 0);
    CHECK(probes.size() > 200000);
}

TEST_CASE("fp16: random floats over the whole range match the IEEE reference", "[element_types]") {
    std::uint64_t state = 12345;  // SplitMix64, fixed seed
    auto next = [&state] {
        std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return static_cast<std::uint32_t>((z ^ (z >> 31)) >> 32);
    };
    std::size_t mismatches = 0;
    for (int i = 0; i < 300000; ++i) {
        // half the draws anywhere, half concentrated in the exponents fp16 can represent (2^-26 .. 2^17)
        std::uint32_t bits = next();
        if (i & 1) bits = (bits & 0x807fffffu) | ((101u + (bits >> 23) % 43u) << 23);
        const float f = std::bit_cast<float>(bits);
        if (std::isnan(f)) continue;
        const std::uint16_t got = et::fp16::from_float(f), want = ieee_reference::half_from_float(f);
        if (got != want && mismatches++ < 5) FAIL_CHECK("fp16 from bits 0x" << std::hex << bits << ": 0x" << got << " vs 0x" << want);
    }
    CHECK(mismatches == 0);
}

TEST_CASE("fp16: special values — overflow, subnormals, signed zero, inf, NaN", "[element_types]") {
    using et::fp16;
    CHECK(fp16::from_float(65504.0f) == 0x7bff);           // largest finite
    CHECK(fp16::from_float(65519.996f) == 0x7bff);         // just under the overflow tie
    CHECK(fp16::from_float(65520.0f) == 0x7c00);           // the tie overflows (even pattern is inf)
    CHECK(fp16::from_float(1e6f) == 0x7c00);
    CHECK(fp16::from_float(-1e30f) == 0xfc00);
    CHECK(fp16::from_float(std::numeric_limits<float>::max()) == 0x7c00);
    CHECK(fp16::from_float(INFINITY) == 0x7c00);
    CHECK(fp16::from_float(-INFINITY) == 0xfc00);
    CHECK(fp16::from_float(0.0f) == 0x0000);
    CHECK(fp16::from_float(-0.0f) == 0x8000);
    CHECK(std::signbit(fp16::to_float(0x8000)));
    CHECK(fp16::to_float(0x8000) == 0.0f);
    CHECK(fp16::from_float(std::ldexp(1.0f, -24)) == 0x0001);  // smallest subnormal
    CHECK(fp16::to_float(0x0001) == std::ldexp(1.0f, -24));
    CHECK(fp16::from_float(std::ldexp(1.0f, -14)) == 0x0400);  // smallest normal
    CHECK(fp16::from_float(std::ldexp(1023.0f, -24)) == 0x03ff);  // largest subnormal
    CHECK(fp16::from_float(std::ldexp(1023.5f, -24)) == 0x0400);  // tie rounds up into the normals (even)
    CHECK(fp16::from_float(-std::ldexp(1.0f, -26)) == 0x8000);  // underflow keeps the sign
    CHECK(fp16::from_float(std::numeric_limits<float>::denorm_min()) == 0x0000);
    CHECK(fp16::from_float(-std::numeric_limits<float>::denorm_min()) == 0x8000);
    const std::uint16_t nan = fp16::from_float(std::numeric_limits<float>::quiet_NaN());
    CHECK(ieee_reference::half_is_nan(nan));
    CHECK(ieee_reference::half_is_nan(fp16::from_float(std::bit_cast<float>(0x7f800001u))));  // signalling NaN
    CHECK(ieee_reference::half_is_nan(fp16::from_float(std::bit_cast<float>(0xffc00000u))));
    CHECK((fp16::from_float(std::bit_cast<float>(0xffc00000u)) & 0x8000) == 0x8000);
    CHECK(std::isnan(fp16::to_float(0x7e00)));
    CHECK(std::isinf(fp16::to_float(0x7c00)));
    // the wrappers agree with the static functions
    CHECK(static_cast<float>(fp16(1.5f)) == 1.5f);
    CHECK(fp16(0.1f).bits == 0x2e66);
    CHECK(fp16::from_bits(0x3555).bits == 0x3555);
    CHECK(et::to_float(fp16::from_bits(0xc500)) == -5.0f);
    CHECK(et::from_float<fp16>(-5.0f).bits == 0xc500);
}

TEST_CASE("bf16: every pattern converts to the float with those top bits, and round trips", "[element_types]") {
    std::size_t mismatches = 0;
    for (std::uint32_t b = 0; b < 65536; ++b) {
        const auto h = static_cast<std::uint16_t>(b);
        const float f = et::bf16::to_float(h);
        const std::uint16_t back = et::bf16::from_float(f);
        bool ok = std::bit_cast<std::uint32_t>(f) == (b << 16);
        if (ieee_reference::bf16_is_nan(h)) ok = ok && ieee_reference::bf16_is_nan(back) && (back & 0x8000) == (h & 0x8000);
        else ok = ok && back == h;
        if (!ok && mismatches++ < 5) FAIL_CHECK("bf16 0x" << std::hex << b << " -> " << f << " -> 0x" << back);
    }
    CHECK(mismatches == 0);
}

TEST_CASE("bf16: float -> bf16 rounds to nearest even, like the IEEE reference", "[element_types]") {
    // every bf16 value with several low-half patterns: exact (0), just above, just under and at the tie (0x8000)
    std::size_t mismatches = 0, checked = 0;
    for (std::uint32_t hi = 0; hi < 65536; ++hi) {
        for (std::uint32_t low : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu, 0x1234u, 0xc3a5u}) {
            const float f = std::bit_cast<float>((hi << 16) | low);
            if (std::isnan(f)) {
                if (!ieee_reference::bf16_is_nan(et::bf16::from_float(f)) && mismatches++ < 5) FAIL_CHECK("bf16 lost NaN 0x" << std::hex << hi);
                continue;
            }
            ++checked;
            const std::uint16_t got = et::bf16::from_float(f), want = ieee_reference::bf16_from_float(f);
            if (got != want && mismatches++ < 5) {
                FAIL_CHECK("bf16 from bits 0x" << std::hex << ((hi << 16) | low) << ": 0x" << got << " vs 0x" << want);
            }
        }
    }
    CHECK(mismatches == 0);
    CHECK(checked > 500000);
    using et::bf16;
    CHECK(bf16::from_float(-0.0f) == 0x8000);
    CHECK(bf16::from_float(std::numeric_limits<float>::max()) == 0x7f80);   // rounds to inf
    CHECK(bf16::from_float(-std::numeric_limits<float>::max()) == 0xff80);
    CHECK(bf16::from_float(std::numeric_limits<float>::denorm_min()) == 0x0000);
    CHECK(bf16::from_float(std::bit_cast<float>(0x00008000u)) == 0x0000);  // subnormal tie to even
    CHECK(bf16::from_float(std::bit_cast<float>(0x00018000u)) == 0x0002);
    CHECK(static_cast<float>(bf16(3.0f)) == 3.0f);
    CHECK(et::from_float<bf16>(1.0f).bits == 0x3f80);
    CHECK(et::to_float(bf16::from_bits(0xc040)) == -3.0f);
}
