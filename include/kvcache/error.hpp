// kvcache::Error and its subclasses: every failure the library reports is one of these.
#pragma once

#include <stdexcept>
#include <string>

namespace kvcache {

/// Base of every exception kvcache throws. Messages name the sizes and values involved.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// An append or a reservation would exceed a fixed capacity.
class CapacityError : public Error {
public:
    using Error::Error;
};

/// Tensor shapes or sizes that do not fit together (wrong element count, head counts, dims).
class ShapeError : public Error {
public:
    using Error::Error;
};

/// A layer, batch row, head or position index outside its range.
class IndexError : public Error {
public:
    using Error::Error;
};

/// An invalid configuration: zero sizes, query heads not divisible by kv heads, unknown options.
class ConfigError : public Error {
public:
    using Error::Error;
};

/// A chat template whose family is not recognised (formatting would otherwise guess); see model/chat.hpp.
class ChatTemplateError : public ConfigError {
public:
    using ConfigError::ConfigError;
};

/// A file or buffer whose contents are malformed, truncated, corrupted or for something else.
class FormatError : public Error {
public:
    using Error::Error;
};

/// The operating system refused a file operation (open, map, write, rename).
class IoError : public Error {
public:
    using Error::Error;
};

}  // namespace kvcache
