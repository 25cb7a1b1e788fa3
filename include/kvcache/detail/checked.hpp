// Overflow-checked std::size_t arithmetic for every size computed from untrusted input (files, configs, options).
//
// A product or sum that sizes a buffer or bounds a loop must never wrap around: a wrapped size passes the
// shape checks and then indexes past the buffer. Every such computation goes through these helpers, which
// throw (before anything is allocated) an error naming the operation and both operands. The error type is
// CapacityError by default; readers of files pass FormatError so a hostile header stays a FormatError:
//     const std::size_t bytes = detail::checked_mul<FormatError>(rows, row_bytes, "tensor 'x' bytes");
#pragma once

#include <fmt/format.h>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string_view>
#include <type_traits>
#include <utility>

#include "kvcache/error.hpp"

namespace kvcache::detail {

/// a * b, or throws Err naming `what`, a and b if the product does not fit in std::size_t.
template <std::derived_from<Error> Err = CapacityError>
[[nodiscard]] inline std::size_t checked_mul(std::size_t a, std::size_t b, std::string_view what) {
    std::size_t product = 0;
    if (__builtin_mul_overflow(a, b, &product))
        throw Err(fmt::format("{}: {} x {} does not fit in {} bits", what, a, b, std::numeric_limits<std::size_t>::digits));
    return product;
}

/// a * b, or nothing if the product does not fit in T: for a caller that reports the overflow in its own
/// words (a file reader that names the section whose size it was checking).
template <std::unsigned_integral T>
[[nodiscard]] constexpr std::optional<T> try_mul(T a, T b) {
    T product = 0;
    if (__builtin_mul_overflow(a, b, &product)) return std::nullopt;
    return product;
}

/// a + b, or throws Err naming `what`, a and b if the sum does not fit in std::size_t.
template <std::derived_from<Error> Err = CapacityError>
[[nodiscard]] inline std::size_t checked_add(std::size_t a, std::size_t b, std::string_view what) {
    std::size_t sum = 0;
    if (__builtin_add_overflow(a, b, &sum))
        throw Err(fmt::format("{}: {} + {} does not fit in {} bits", what, a, b, std::numeric_limits<std::size_t>::digits));
    return sum;
}

/// The product of all factors, checked at every step (a zero factor still checks the others' product).
template <std::derived_from<Error> Err = CapacityError, std::convertible_to<std::size_t>... Sizes>
[[nodiscard]] inline std::size_t checked_product(std::string_view what, std::size_t first, Sizes... rest) {
    std::size_t product = first;
    ((product = checked_mul<Err>(product, static_cast<std::size_t>(rest), what)), ...);
    return product;
}

/// An integer value converted to std::size_t, or Err naming `what` if it is negative or too large.
template <std::derived_from<Error> Err = CapacityError, std::integral T>
[[nodiscard]] inline std::size_t checked_size(T value, std::string_view what) {
    if (!std::in_range<std::size_t>(value)) throw Err(fmt::format("{}: {} is not a valid size", what, value));
    return static_cast<std::size_t>(value);
}

/// Throws Err unless lo <= value <= hi, naming `what` and the range.
template <std::derived_from<Error> Err = ConfigError, std::integral T, std::integral U, std::integral V>
inline void check_range(T value, U lo, V hi, std::string_view what) {
    if (std::cmp_less(value, lo) || std::cmp_greater(value, hi))
        throw Err(fmt::format("{} is {}, outside [{}, {}]", what, value, lo, hi));
}

}  // namespace kvcache::detail
