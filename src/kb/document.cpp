// Text extraction for the knowledge base: UTF-8 validation, HTML to text, entity decoding.
#include "kvcache/kb/document.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <fstream>
#include <utility>

#include <fmt/format.h>

#include "kvcache/error.hpp"

namespace kvcache {

namespace {

std::string lower_ascii(std::string_view s) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

bool starts_with_ci(std::string_view s, std::size_t at, std::string_view prefix) {
    if (s.size() - at < prefix.size()) return false;
    for (std::size_t i = 0; i < prefix.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(s[at + i])) != prefix[i]) return false;
    }
    return true;
}

void append_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

// The named references that occur in ordinary prose; anything rarer stays as written.
constexpr std::array<std::pair<std::string_view, std::uint32_t>, 24> kNamedEntities{{
    {"amp", '&'}, {"lt", '<'}, {"gt", '>'}, {"quot", '"'}, {"apos", '\''}, {"nbsp", 0xA0},
    {"ndash", 0x2013}, {"mdash", 0x2014}, {"hellip", 0x2026}, {"lsquo", 0x2018}, {"rsquo", 0x2019},
    {"ldquo", 0x201C}, {"rdquo", 0x201D}, {"copy", 0xA9}, {"reg", 0xAE}, {"trade", 0x2122},
    {"deg", 0xB0}, {"eacute", 0xE9}, {"egrave", 0xE8}, {"uuml", 0xFC}, {"ouml", 0xF6},
    {"auml", 0xE4}, {"szlig", 0xDF}, {"times", 0xD7},
}};

// Elements whose start or end breaks a line of text.
bool is_block_element(std::string_view name) {
    static constexpr std::array<std::string_view, 30> kBlocks{
        "p", "div", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "li", "ul", "ol", "tr", "table",
        "section", "article", "header", "footer", "nav", "main", "aside", "blockquote", "pre", "dt", "dd",
        "dl", "figure", "figcaption", "title"};
    return std::find(kBlocks.begin(), kBlocks.end(), name) != kBlocks.end();
}

/// Collapses runs of spaces/tabs to one space, trims spaces around line breaks, and keeps at most one
/// blank line between paragraphs.
std::string tidy_whitespace(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    std::size_t newlines = 0;
    bool pending_space = false;
    for (char c : text) {
        if (c == '\n') {
            pending_space = false;
            ++newlines;
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\r' || c == '\f') {
            pending_space = true;
            continue;
        }
        if (newlines > 0) {
            if (!out.empty()) out.append(std::min<std::size_t>(newlines, 2), '\n');
            newlines = 0;
        } else if (pending_space && !out.empty()) {
            out += ' ';
        }
        pending_space = false;
        out += c;
    }
    if (!out.empty()) out += '\n';
    return out;
}

}  // namespace

const char* document_format_name(DocumentFormat format) {
    switch (format) {
        case DocumentFormat::PlainText: return "text";
        case DocumentFormat::Markdown: return "markdown";
        case DocumentFormat::Html: return "html";
    }
    return "text";
}

DocumentFormat format_for_path(const std::filesystem::path& path) {
    const std::string ext = lower_ascii(path.extension().string());
    if (ext == ".html" || ext == ".htm" || ext == ".xhtml") return DocumentFormat::Html;
    if (ext == ".md" || ext == ".markdown") return DocumentFormat::Markdown;
    return DocumentFormat::PlainText;
}

bool is_document_extension(const std::filesystem::path& path) {
    const std::string ext = lower_ascii(path.extension().string());
    return ext == ".txt" || ext == ".text" || ext == ".md" || ext == ".markdown" || ext == ".html" ||
           ext == ".htm" || ext == ".xhtml";
}

void check_document_text(std::string_view bytes, std::string_view source) {
    std::size_t i = 0;
    while (i < bytes.size()) {
        const auto c = static_cast<unsigned char>(bytes[i]);
        if (c < 0x80) {
            if (c < 0x20 && c != '\t' && c != '\n' && c != '\f' && c != '\r') {
                throw FormatError(fmt::format("{}: byte {} is the control character 0x{:02x}: a binary file, not text",
                                              source, i, c));
            }
            ++i;
            continue;
        }
        std::size_t len = 0;
        std::uint32_t cp = 0;
        if ((c & 0xE0) == 0xC0) {
            len = 2;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4;
            cp = c & 0x07;
        } else {
            throw FormatError(fmt::format("{}: invalid UTF-8 at byte {} (0x{:02x} cannot start a character)", source,
                                          i, c));
        }
        if (bytes.size() - i < len) {
            throw FormatError(fmt::format("{}: invalid UTF-8 at byte {}: a {}-byte character cut off by the end "
                                          "of the file ({} bytes)",
                                          source, i, len, bytes.size()));
        }
        for (std::size_t k = 1; k < len; ++k) {
            const auto cc = static_cast<unsigned char>(bytes[i + k]);
            if ((cc & 0xC0) != 0x80) {
                throw FormatError(fmt::format("{}: invalid UTF-8 at byte {}: 0x{:02x} is not a continuation byte",
                                              source, i + k, cc));
            }
            cp = (cp << 6) | (cc & 0x3F);
        }
        static constexpr std::uint32_t kMinimum[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < kMinimum[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            throw FormatError(fmt::format("{}: invalid UTF-8 at byte {}: U+{:04X} in {} bytes is overlong, a "
                                          "surrogate or beyond U+10FFFF",
                                          source, i, cp, len));
        }
        i += len;
    }
}

std::string decode_html_entities(std::string_view html) {
    std::string out;
    out.reserve(html.size());
    std::size_t i = 0;
    while (i < html.size()) {
        if (html[i] != '&') {
            out += html[i++];
            continue;
        }
        const std::size_t semi = html.find(';', i + 1);
        if (semi == std::string_view::npos || semi - i > 12) {
            out += html[i++];
            continue;
        }
        const std::string_view name = html.substr(i + 1, semi - i - 1);
        std::uint32_t cp = 0;
        bool ok = false;
        if (name.size() >= 2 && name[0] == '#') {
            const bool hex = name[1] == 'x' || name[1] == 'X';
            const std::string_view digits = name.substr(hex ? 2 : 1);
            ok = !digits.empty();
            for (char d : digits) {
                const int v = std::isdigit(static_cast<unsigned char>(d))                 ? d - '0'
                              : hex && std::isxdigit(static_cast<unsigned char>(d)) ? std::tolower(d) - 'a' + 10
                                                                                         : -1;
                if (v < 0 || cp > 0x10FFFF) {
                    ok = false;
                    break;
                }
                cp = cp * (hex ? 16 : 10) + static_cast<std::uint32_t>(v);
            }
            // NUL, surrogates and values past Unicode are not characters: keep the reference as written.
            ok = ok && cp != 0 && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
        } else {
            for (const auto& [entity, value] : kNamedEntities) {
                if (entity == name) {
                    cp = value;
                    ok = true;
                    break;
                }
            }
        }
        if (!ok) {
            out += html[i++];
            continue;
        }
        append_utf8(out, cp);
        i = semi + 1;
    }
    return out;
}

std::string html_to_text(std::string_view html) {
    std::string text;  // tags removed, references still encoded
    text.reserve(html.size());
    std::size_t i = 0;
    int in_pre = 0;  // inside <pre>, line breaks of the source are kept; elsewhere they are spaces
    while (i < html.size()) {
        if (html[i] != '<') {
            const char c = html[i++];
            text += in_pre > 0 || (c != '\n' && c != '\r' && c != '\t' && c != '\f') ? c : ' ';
            continue;
        }
        if (html.compare(i, 4, "<!--") == 0) {  // comment
            const std::size_t end = html.find("-->", i + 4);
            i = end == std::string_view::npos ? html.size() : end + 3;
            continue;
        }
        // A '<' not followed by a tag name, '/' or '!' is text ("a < b").
        const std::size_t after = i + 1;
        if (after >= html.size() ||
            !(std::isalpha(static_cast<unsigned char>(html[after])) || html[after] == '/' || html[after] == '!' ||
              html[after] == '?')) {
            text += html[i++];
            continue;
        }
        // Find the end of the tag, skipping '>' inside quoted attribute values.
        std::size_t j = after;
        char quote = 0;
        while (j < html.size() && (quote || html[j] != '>')) {
            if (quote) {
                if (html[j] == quote) quote = 0;
            } else if (html[j] == '"' || html[j] == '\'') {
                quote = html[j];
            }
            ++j;
        }
        const bool closing = html[after] == '/';
        std::size_t n0 = closing ? after + 1 : after, n1 = n0;
        while (n1 < j && (std::isalnum(static_cast<unsigned char>(html[n1])))) ++n1;
        const std::string name = lower_ascii(html.substr(n0, n1 - n0));
        i = j < html.size() ? j + 1 : html.size();
        if (!closing && (name == "script" || name == "style")) {
            // Everything up to the matching end tag is code, not text.
            std::size_t k = i;
            const std::string end_tag = "</" + name;
            while (k < html.size() && !starts_with_ci(html, k, end_tag)) ++k;
            const std::size_t close = html.find('>', k);
            i = close == std::string_view::npos ? html.size() : close + 1;
            continue;
        }
        if (name == "pre") in_pre = std::max(0, in_pre + (closing ? -1 : 1));
        if (is_block_element(name)) text += name == "br" ? "\n" : "\n\n";  // inline tags join their neighbours
    }
    return tidy_whitespace(decode_html_entities(text));
}

std::string extract_document_text(std::string_view bytes, DocumentFormat format, std::string_view source) {
    check_document_text(bytes, source);
    if (format == DocumentFormat::Html) return html_to_text(bytes);
    return std::string(bytes);
}

std::string read_file_bytes(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw IoError(fmt::format("{}: cannot open for reading", path.string()));
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) throw IoError(fmt::format("{}: read failed", path.string()));
    return bytes;
}

}  // namespace kvcache
