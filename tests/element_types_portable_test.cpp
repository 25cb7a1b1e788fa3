// The portable (no F16C) fp16 conversions, which a -march=native build never compiles: this file turns the
// instruction-set macros off before including the header and checks the result against the IEEE references.
// The header is included under another namespace name, so its inline functions cannot collide (ODR) with
// the F16C versions other objects in this executable may hold.
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string_view>
#include <type_traits>
#include <vector>

#undef __F16C__
#undef __AVX__
#undef __AVX2__
#undef __AVX512F__
#define kvcache kvcache_portable
#include "kvcache/element_types.hpp"
#undef kvcache

#if defined(__F16C__)
#error "the portable path must be compiled here"
#endif

namespace et = kvcache_portable;
#include "element_types_checks.hpp"

TEST_CASE("portable: bulk converters equal the scalar ones", "[element_types]") {
    const std::vector<float> src{0.0f, -0.0f, 1.0f, 65520.0f, -1e-8f, 3.14159f, INFINITY, 1e-5f, 2.5e-3f, -7.0f, 0.333f};
    std::vector<et::fp16> h(src.size());
    et::convert_from_float(src.data(), h.data(), src.size());
    std::vector<float> back(src.size());
    et::convert_to_float(h.data(), back.data(), h.size());
    for (std::size_t i = 0; i < src.size(); ++i) {
        CHECK(h[i].bits == ieee_reference::half_from_float(src[i]));
        CHECK(static_cast<double>(back[i]) == ieee_reference::half_value(h[i].bits));
    }
}
