// Small helpers that build the messages of kvcache's exceptions.
#pragma once

#include <fmt/format.h>

#include <cstddef>
#include <string_view>

#include "kvcache/error.hpp"

namespace kvcache::detail {

/// Throws IndexError unless index < bound, naming what was indexed.
inline void check_index(std::string_view what, std::size_t index, std::size_t bound) {
    if (index >= bound) {
        throw IndexError(fmt::format("{} index {} out of range (there are {})", what, index, bound));
    }
}

/// Throws ShapeError unless a span holds exactly the expected number of elements.
inline void check_size(std::string_view what, std::size_t actual, std::size_t expected) {
    if (actual != expected) {
        throw ShapeError(fmt::format("{} has {} elements, expected {}", what, actual, expected));
    }
}

/// check_size for n_tokens rows of `width` elements, without letting n_tokens * width wrap around.
inline void check_rows(std::string_view what, std::size_t actual, std::size_t n_tokens, std::size_t width) {
    if (width != 0 && n_tokens > actual / width) {
        throw ShapeError(fmt::format("{} has {} elements, expected {} tokens x {}", what, actual, n_tokens, width));
    }
    check_size(what, actual, n_tokens * width);
}

}  // namespace kvcache::detail
