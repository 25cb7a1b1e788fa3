// The chunker: a greedy walk over the text, each chunk as long as its token budget and a good cut allow.
#include "kvcache/kb/chunker.hpp"

#include <algorithm>
#include <cstdint>

#include <fmt/format.h>

#include "kvcache/error.hpp"
#include "kvcache/model/tokenizer.hpp"

namespace kvcache {

namespace {

bool is_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

/// How good a cut just before text[pos] is: 4 after a blank line, 3 after a line break, 2 after a
/// sentence end followed by a space, 1 after a space, 0 at any other character boundary, -1 inside a
/// UTF-8 character.
int cut_quality(std::string_view text, std::size_t pos) {
    if (pos >= text.size()) return 4;
    if (is_continuation(text[pos])) return -1;
    const char prev = text[pos - 1];
    if (prev == '\n') return pos >= 2 && text[pos - 2] == '\n' ? 4 : 3;
    if (prev == ' ' || prev == '\t') {
        if (pos >= 2 && (text[pos - 2] == '.' || text[pos - 2] == '!' || text[pos - 2] == '?' || text[pos - 2] == ':')) {
            return 2;
        }
        return 1;
    }
    return 0;
}

std::size_t count_tokens(const Tokenizer& tokenizer, std::string_view text) {
    return tokenizer.encode(text, {.add_special = false}).size();
}

/// Byte offsets (from the start of `window`) where each of its tokens ends, as far as the pieces say. The
/// pieces of a byte-level tokenizer add up to the text exactly; for others this is an estimate that the
/// caller checks by encoding.
std::vector<std::size_t> token_ends(const Tokenizer& tokenizer, std::string_view window) {
    const std::vector<std::int32_t> ids = tokenizer.encode(window, {.add_special = false});
    std::vector<std::size_t> ends;
    ends.reserve(ids.size());
    std::size_t at = 0;
    for (std::int32_t id : ids) {
        at += tokenizer.token_to_piece(id, {.render_special = false}).size();
        ends.push_back(std::min(at, window.size()));
    }
    return ends;
}

}  // namespace

void ChunkingOptions::validate() const {
    if (max_tokens < 8) {
        throw ConfigError(fmt::format("chunking: max_tokens is {}; it must be at least 8", max_tokens));
    }
    if (overlap_tokens > max_tokens / 2) {
        throw ConfigError(fmt::format("chunking: overlap_tokens {} is more than half of max_tokens {}", overlap_tokens,
                                      max_tokens));
    }
}

std::vector<TextChunk> split_into_chunks(std::string_view text, const Tokenizer& tokenizer,
                                         const ChunkingOptions& options) {
    options.validate();
    std::vector<TextChunk> chunks;
    // No token is longer than this many bytes in practice; the window only bounds the work per chunk.
    constexpr std::size_t kMaxBytesPerToken = 64;
    std::size_t start = 0;
    while (start < text.size()) {
        const std::string_view window = text.substr(start, options.max_tokens * kMaxBytesPerToken);
        const std::vector<std::size_t> ends = token_ends(tokenizer, window);
        // The furthest byte the budget could reach: the end of token max_tokens (or of the text).
        std::size_t limit = ends.size() <= options.max_tokens ? window.size() : ends[options.max_tokens - 1];
        if (ends.size() <= options.max_tokens && window.size() < text.size() - start) {
            limit = window.size();  // the window itself is the bound (very long tokens)
        }
        const std::size_t lowest = std::max<std::size_t>(1, limit / 2);
        // Candidate ends, best first: the best cut quality present in [lowest, limit], furthest first; then
        // every other boundary below it, in case tokenising the chunk on its own takes more tokens.
        std::size_t end = 0, tokens = 0;
        for (int quality = 4; quality >= 0 && end == 0; --quality) {
            for (std::size_t e = limit; e >= lowest; --e) {
                if (start + e < text.size() && cut_quality(text, start + e) < quality) continue;
                if (start + e >= text.size() && e != limit) continue;
                const std::size_t n = count_tokens(tokenizer, text.substr(start, e));
                if (n <= options.max_tokens) {
                    end = e;
                    tokens = n;
                    break;
                }
                if (e == 1) break;
            }
        }
        if (end == 0) {
            // Nothing at or above half the budget fits (a pathological text): take the longest fitting prefix.
            for (std::size_t e = lowest; e >= 1; --e) {
                if (start + e < text.size() && cut_quality(text, start + e) < 0) continue;
                const std::size_t n = count_tokens(tokenizer, text.substr(start, e));
                if (n <= options.max_tokens) {
                    end = e;
                    tokens = n;
                    break;
                }
            }
            if (end == 0) {
                throw FormatError(fmt::format("chunking: one character at byte {} takes more than {} tokens", start,
                                              options.max_tokens));
            }
        }
        chunks.push_back(TextChunk{start, end, tokens});
        if (start + end >= text.size()) break;
        // The next chunk starts overlap_tokens tokens before this one's end, at a space if one is near.
        std::size_t next = start + end;
        if (options.overlap_tokens > 0) {
            const std::vector<std::size_t> own = token_ends(tokenizer, text.substr(start, end));
            // A short chunk (the text's pieces were long) overlaps by at most half of its tokens.
            const std::size_t overlap = std::min(options.overlap_tokens, own.size() / 2);
            if (overlap > 0) {
                std::size_t at = start + own[own.size() - overlap - 1];
                while (at < start + end && cut_quality(text, at) < 1) ++at;
                if (at >= start + end) {  // no space in the overlap: any character boundary
                    at = start + own[own.size() - overlap - 1];
                    while (at < start + end && cut_quality(text, at) < 0) ++at;
                }
                if (at > start) next = at;
            }
        }
        start = next;
    }
    return chunks;
}

}  // namespace kvcache
