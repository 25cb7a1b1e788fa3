// The vector primitives of detail/simd.hpp that promise the same bits by two routes: exp1 against exp8 and
// exp16, Simd<16>::load_block against two Simd<16>::load calls.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kvcache/detail/simd.hpp"

using namespace kvcache;

TEST_CASE("exp1, the one-lane exp, gives exp8's and exp16's bits for every input, edges included", "[ops]") {
    std::vector<float> x;
    for (int i = -2000; i <= 2000; ++i) x.push_back(static_cast<float>(i) * 0.0467f);  // -93.4 .. 93.4
    for (const float edge : {-87.3365447504019f, -87.33654f, -87.3366f, 88.3762626647949f, 88.37f, 88.38f, 0.0f, -0.0f,
                             1e-30f, -1e-30f, std::numeric_limits<float>::denorm_min(),
                             std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                             std::numeric_limits<float>::quiet_NaN()}) {
        x.push_back(edge);
    }
    while (x.size() % 16 != 0) x.push_back(1.0f);
    for (std::size_t i = 0; i < x.size(); ++i) {
        const float e = detail::exp1(x[i]);
        if (std::isfinite(x[i]) && x[i] > -87.0f && x[i] < 88.0f) {
            REQUIRE(e == Approx(std::exp(double(x[i]))).epsilon(4e-7));  // exp8's accuracy, stated in simd.hpp
        }
        if (x[i] < -87.3365447504019f) REQUIRE(e == 0.0f);
    }
#if KVCACHE_HAVE_AVX2
    for (std::size_t i = 0; i < x.size(); i += 8) {
        alignas(32) float lanes[8];
        _mm256_store_ps(lanes, detail::exp8(_mm256_loadu_ps(x.data() + i)));
        for (std::size_t k = 0; k < 8; ++k) {
            const float one = detail::exp1(x[i + k]);
            INFO("x = " << x[i + k]);
            REQUIRE(std::memcmp(&lanes[k], &one, sizeof one) == 0);
        }
    }
#endif
#if KVCACHE_HAVE_AVX512
    for (std::size_t i = 0; i < x.size(); i += 16) {
        alignas(64) float lanes[16];
        _mm512_store_ps(lanes, detail::exp16(_mm512_loadu_ps(x.data() + i)));
        for (std::size_t k = 0; k < 16; ++k) {
            const float one = detail::exp1(x[i + k]);
            INFO("x = " << x[i + k]);
            REQUIRE(std::memcmp(&lanes[k], &one, sizeof one) == 0);
        }
    }
#endif
}

#if KVCACHE_HAVE_AVX512
namespace {

template <class T>
void check_load_block(const std::vector<T>& row) {
    using S = detail::Simd<16>;
    for (std::size_t i = 0; i < row.size() * T::kValues; i += 32) {
        S::V lo, hi;
        S::load_block<T>(row.data(), i, lo, hi);
        const S::V want_lo = S::load<T>(row.data(), i), want_hi = S::load<T>(row.data(), i + 16);
        REQUIRE(std::memcmp(&lo, &want_lo, sizeof lo) == 0);
        REQUIRE(std::memcmp(&hi, &want_hi, sizeof hi) == 0);
        alignas(64) float got[16];
        S::store(got, hi);
        CHECK(got[15] == static_cast<float>(row[i / 32].d) * [&] {
            if constexpr (std::is_same_v<T, q8_0>) return float(row[i / 32].qs[31]);
            else return float(int(row[i / 32].qs[15] >> 4) - 8);
        }());
    }
}

}  // namespace

TEST_CASE("Simd<16>::load_block gives the bits of two loads, q8_0 and q4_0", "[simd]") {
    std::vector<q8_0> q8(3);
    std::vector<q4_0> q4(3);
    for (std::size_t b = 0; b < 3; ++b) {
        q8[b].d = fp16(0.37f * float(b + 1));
        q4[b].d = fp16(-1.5f / float(b + 1));
        for (std::size_t j = 0; j < 32; ++j) q8[b].qs[j] = static_cast<std::int8_t>(int(j * 37 + b * 11) % 256 - 128);
        for (std::size_t j = 0; j < 16; ++j) q4[b].qs[j] = static_cast<std::uint8_t>((j * 29 + b * 7) % 256);
    }
    q8[1].qs[0] = -128;
    q8[1].qs[31] = 127;
    check_load_block(q8);
    check_load_block(q4);
}
#endif
