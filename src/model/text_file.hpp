// Internal: a small text file (a JSON config or vocabulary) read whole and parsed, its path named in every error.
#pragma once

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "kvcache/error.hpp"

namespace kvcache::detail {

/// parse(text of the file at `path`). IoError "<what>: cannot open '<path>'" if it cannot be read; a FormatError
/// from parse is rethrown with " [in <path>]" appended, so the message says which file is malformed.
template <class Parse>
auto parse_text_file(const std::filesystem::path& path, std::string_view what, Parse&& parse) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw IoError(fmt::format("{}: cannot open '{}'", what, path.string()));
    std::stringstream s;
    s << f.rdbuf();
    try {
        return parse(s.str());
    } catch (const FormatError& e) {
        throw FormatError(fmt::format("{} [in {}]", e.what(), path.string()));
    }
}

}  // namespace kvcache::detail
