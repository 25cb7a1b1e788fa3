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

}  // namespace kvcache::detail
