// UTF-8 decoding and Unicode class lookups over the generated range tables (unicode_tables.cpp).
#include "kvcache/model/unicode.hpp"

#include <algorithm>

namespace kvcache::unicode {

namespace {

bool in_ranges(const detail::CodepointRange* ranges, std::size_t count, char32_t cp) {
    // First range whose last >= cp; the tables are sorted and disjoint.
    const auto* end = ranges + count;
    const auto* it = std::lower_bound(ranges, end, cp,
                                      [](const detail::CodepointRange& r, char32_t c) { return r.last < c; });
    return it != end && it->first <= cp;
}

}  // namespace

std::size_t utf8_sequence_length(unsigned char lead) {
    if (lead < 0x80) return 1;
    if (lead < 0xC2) return 0;  // continuation byte or overlong 2-byte lead
    if (lead < 0xE0) return 2;
    if (lead < 0xF0) return 3;
    if (lead < 0xF5) return 4;
    return 0;
}

Decoded decode_utf8(std::string_view text, std::size_t pos) {
    const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
    const unsigned char lead = byte(pos);
    const std::size_t len = utf8_sequence_length(lead);
    const Decoded invalid{lead, 1, false};
    if (len == 1) return {lead, 1, true};
    if (len == 0 || pos + len > text.size()) return invalid;
    char32_t cp = lead & (0x7F >> len);
    for (std::size_t i = 1; i < len; ++i) {
        const unsigned char c = byte(pos + i);
        if ((c & 0xC0) != 0x80) return invalid;
        cp = (cp << 6) | (c & 0x3F);
    }
    const bool overlong = (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
    const bool surrogate = cp >= 0xD800 && cp <= 0xDFFF;
    if (overlong || surrogate || cp > 0x10FFFF) return invalid;
    return {cp, static_cast<std::uint8_t>(len), true};
}

void append_utf8(std::string& out, char32_t cp) {
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

bool is_letter(char32_t cp) {
    if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return in_ranges(detail::kLetterRanges, detail::kLetterRangeCount, cp);
}

bool is_number(char32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    return in_ranges(detail::kNumberRanges, detail::kNumberRangeCount, cp);
}

bool is_whitespace(char32_t cp) {
    if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
    return in_ranges(detail::kWhiteSpaceRanges, detail::kWhiteSpaceRangeCount, cp);
}

}  // namespace kvcache::unicode
