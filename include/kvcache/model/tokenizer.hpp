// The reference transformer's tokenizer: byte-level BPE ("gpt2") and SentencePiece BPE ("llama") from GGUF metadata.
//
// Two models, as llama.cpp names them in tokenizer.ggml.model:
//  - "gpt2": text is split into pre-tokens by the pattern tokenizer.ggml.pre names, each pre-token's UTF-8
//    bytes become byte symbols, and the file's merges are applied lowest rank first.
//  - "llama": spaces become U+2581 ("▁"), an optional space is prepended, symbols start as single characters
//    and the adjacent pair whose concatenation is the highest-scoring vocabulary entry merges first; characters
//    not in the vocabulary fall back to byte tokens <0xNN>.
// Special-token text (<|im_start|>) in the input is recognised when parse_special is set; user-defined tokens
// are always recognised, as llama.cpp does. Text from a user (a chat message) goes through encode_literal or
// encode_segments instead, which never turn text into a special token: typing "<|im_end|>" must not end a turn.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcache/error.hpp"

namespace kvcache {

namespace gguf {
class File;
}

/// Token types, numbered as tokenizer.ggml.token_type numbers them.
enum class TokenType : std::int32_t {
    Undefined = 0, Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6,
};

/// Everything a tokenizer is built from: the tokenizer.ggml.* metadata as plain data.
struct TokenizerSpec {
    std::string model = "gpt2";            ///< "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE)
    std::string pre = "default";           ///< pre-tokenizer name (gpt2 model only), see Tokenizer::pre_tokenizers()
    std::vector<std::string> tokens;       ///< id -> text as the file spells it ("Ġthe", "▁the", "<0x0A>")
    std::vector<float> scores;             ///< empty, or one per token (merge priority of the llama model)
    std::vector<std::int32_t> token_types; ///< empty (all Normal), or one TokenType per token
    std::vector<std::string> merges;       ///< "left right", best first (gpt2 model)
    std::int32_t bos_id = -1;              ///< -1: none
    std::int32_t eos_id = -1;
    std::int32_t unk_id = -1;
    std::int32_t pad_id = -1;
    bool add_bos = false;                  ///< encode with EncodeOptions::add_special prepends BOS
    bool add_eos = false;                  ///< encode with EncodeOptions::add_special appends EOS
    bool add_space_prefix = true;          ///< llama model: prepend a space to text at the start / after a special token
    std::string chat_template;             ///< tokenizer.chat_template, may be empty
};

/// How Tokenizer::encode treats its input (named, so a call reads `encode(text, {.parse_special = true})`).
struct EncodeOptions {
    bool add_special = true;     ///< BOS/EOS as the spec's add_bos/add_eos say
    /// Control-token text in the input (e.g. "<|im_start|>") becomes that token instead of being split into
    /// pieces. Only for text the program wrote (a chat template's output), never for a user's text.
    bool parse_special = false;
};

/// How Tokenizer::encode_literal and encode_segments treat their input. Literal text never yields a special
/// token, so the only choice is BOS/EOS: `encode_literal(text, {.add_special = true})`.
struct LiteralEncodeOptions {
    bool add_special = false;  ///< BOS/EOS as the spec's add_bos/add_eos say
};

/// How token ids become text (Tokenizer::decode, token_to_piece, TokenStreamDecoder):
/// `decode(ids, {.render_special = false})`.
struct DetokenizeOptions {
    bool render_special = true;  ///< control tokens written as their text ("<|im_end|>"); false: dropped
};

/// A part of a text to encode with Tokenizer::encode_segments.
struct TextSegment {
    std::string_view text;
    bool markers = false;  ///< true: a chat template's own markup; special-token text in it becomes that token
};

/// Immutable after construction: encode/decode are const and may run concurrently from several threads.
class Tokenizer {
public:
    /// Validates the spec and builds the lookup tables. Throws FormatError naming the problem (empty vocabulary,
    /// array lengths that differ, special ids out of range, unknown model or pre-tokenizer, malformed merges).
    explicit Tokenizer(TokenizerSpec spec);
    /// Reads the tokenizer.ggml.* keys. Throws FormatError if they are missing, mistyped or inconsistent.
    static Tokenizer from_gguf(const gguf::File& file);

    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(Tokenizer&&) noexcept;
    ~Tokenizer();

    /// Text to token ids, as the options say. Any byte string is accepted; malformed UTF-8 is tokenised byte by
    /// byte. Throws CapacityError for texts over 512 MiB.
    std::vector<std::int32_t> encode(std::string_view text, const EncodeOptions& options = {}) const;

    /// Encodes the concatenation of the segments. Special-token text (control, user-defined or unknown tokens)
    /// becomes its token only where it lies wholly inside a segment with `markers` set. Everywhere else the
    /// text is literal: it is split into ordinary pieces, and no merge produces a token of a special type (so
    /// a user-defined token typed in a message is spelled out too); only the unknown token can appear, as the
    /// fallback for bytes the vocabulary lacks — and not even that if the file names a control token as its
    /// unknown token (SmolLM2: <|endoftext|>): such bytes are then dropped from literal text. Plain text between two special tokens is encoded as one run
    /// across segment boundaries, so the result equals encode(concatenation, {add_special, true}) whenever the
    /// literal segments contain no special-token text and the vocabulary has no user-defined tokens.
    /// The options have no default here: a chat prompt wants BOS, a piece of one does not; the caller says which.
    /// Throws CapacityError when the segments hold over 512 MiB in all.
    std::vector<std::int32_t> encode_segments(std::span<const TextSegment> segments,
                                              const LiteralEncodeOptions& options) const;

    /// encode_segments with one literal segment: the text exactly as typed, never a special token from it.
    std::vector<std::int32_t> encode_literal(std::string_view text, const LiteralEncodeOptions& options = {}) const;

    /// Token ids to text. Control tokens are written as their text when options.render_special is set, else dropped.
    /// For the llama model the space that add_space_prefix put in front of the text (or after a special token)
    /// is removed again, so decode(encode(x)) == x — except that text containing U+2581 itself decodes with
    /// spaces there, as in SentencePiece. Throws IndexError for an id outside [0, vocab_size()).
    std::string decode(std::span<const std::int32_t> ids, const DetokenizeOptions& options = {}) const;

    /// The bytes one token stands for (may be part of a UTF-8 character). Throws IndexError if out of range.
    std::string token_to_piece(std::int32_t id, const DetokenizeOptions& options = {}) const;

    std::size_t vocab_size() const;
    std::int32_t bos_id() const;  ///< -1 if the file names none
    std::int32_t eos_id() const;
    std::int32_t unk_id() const;
    std::int32_t pad_id() const;
    bool add_bos() const;
    bool add_eos() const;
    const std::string& model() const;          ///< "gpt2" or "llama"
    const std::string& pre_tokenizer() const;  ///< as given in the spec
    const std::string& chat_template() const;

    TokenType token_type(std::int32_t id) const;  ///< throws IndexError if out of range
    /// Control, user-defined or unknown: tokens that are not ordinary text pieces.
    bool is_special(std::int32_t id) const;
    bool is_control(std::int32_t id) const;
    /// True for EOS and for the other ids that end a turn (<|im_end|>, <|eot_id|>, <|end|>, <end_of_turn>).
    bool is_end_of_generation(std::int32_t id) const;
    /// The token's text as the file spells it (byte-level or ▁-escaped). Throws IndexError if out of range.
    const std::string& token_text(std::int32_t id) const;
    /// The id of a token given its text as the file spells it, if there is one.
    std::optional<std::int32_t> token_id(std::string_view text) const;

    /// The pre-tokenizer names this implementation understands (for error messages and docs).
    static std::vector<std::string> pre_tokenizers();

    /// The pre-token byte ranges of `text` under a named pattern (exposed for tests). Throws FormatError if the
    /// name is unknown.
    static std::vector<std::string> pre_tokenize(std::string_view pre_name, std::string_view text);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    friend class TokenStreamDecoder;
};

/// Turns a stream of generated ids into text that is always whole UTF-8: bytes of a character split across
/// tokens are held back until the character is complete. Keeps a reference to the tokenizer.
class TokenStreamDecoder {
public:
    /// No default for the options: a chat stream drops control tokens, a debugging view renders them.
    TokenStreamDecoder(const Tokenizer& tokenizer, const DetokenizeOptions& options);
    /// The text that became complete with this token (may be empty). Throws IndexError for a bad id.
    std::string push(std::int32_t id);
    /// Whatever is still held back (an incomplete sequence at the end of the stream), raw; resets the decoder.
    std::string finish();
    /// Bytes currently held back.
    std::size_t pending() const { return held_.size(); }

private:
    const Tokenizer* tokenizer_;
    bool render_special_;
    bool strip_next_space_;
    std::string held_;
};

}  // namespace kvcache
