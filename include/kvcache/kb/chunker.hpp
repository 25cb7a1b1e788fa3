// Splitting a document's text into chunks of at most N tokens of the model's tokenizer, cut at paragraph or
// sentence ends where possible, neighbours overlapping by a few tokens.
#pragma once

#include <cstddef>
#include <string_view>
#include <vector>

namespace kvcache {

class Tokenizer;

struct ChunkingOptions {
    std::size_t max_tokens = 256;     ///< a chunk, tokenised on its own (no BOS), has at most this many tokens
    std::size_t overlap_tokens = 32;  ///< about this many tokens of a chunk's end start the next one again
    /// Throws ConfigError unless max_tokens >= 8 and overlap_tokens <= max_tokens / 2.
    void validate() const;
};

/// A run of a text: [byte_offset, byte_offset + byte_length).
struct TextChunk {
    std::size_t byte_offset = 0;
    std::size_t byte_length = 0;
    std::size_t token_count = 0;  ///< tokens of this run encoded on its own
};

/// Cuts `text` into chunks that together cover every byte (neighbours may overlap; chunk i + 1 starts at or
/// before the end of chunk i and after its start), each within options.max_tokens. A cut prefers, in order,
/// the end of a paragraph (a blank line), of a line or a sentence, a space, and at worst any UTF-8 character
/// boundary; a chunk holds at least half of what would fit unless the text ends first. Cuts never split a
/// UTF-8 character. Empty text gives no chunks. Throws ConfigError for bad options.
std::vector<TextChunk> split_into_chunks(std::string_view text, const Tokenizer& tokenizer,
                                         const ChunkingOptions& options);

}  // namespace kvcache
