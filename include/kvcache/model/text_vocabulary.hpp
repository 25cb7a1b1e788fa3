// TextVocabulary: the word- or character-level vocabulary of a small seq2seq model (vocab.json beside its weights).
//
// Small models trained from scratch (scripts/train_seq2seq_numbers.py) need no subword tokenizer: a source of
// English words splits at spaces, a target of digits at characters. vocab.json holds both sides:
//
//     {"source": {"level": "word", "tokens": ["<pad>", "<bos>", "<eos>", "zero", ...], "special": [0, 1, 2]},
//      "target": {"level": "char", "tokens": ["<pad>", "<bos>", "<eos>", "0", ...],    "special": [0, 1, 2]}}
//
// A token's id is its index. Special tokens are control tokens: text never encodes to them (typing "<eos>"
// is an unknown word, not an end marker) and decode never prints them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kvcache {

class TextVocabulary {
public:
    enum class Level {
        Word,  ///< ASCII-lowercased words, split at whitespace, '-' and ','; decode joins them with spaces
        Char,  ///< one token per UTF-8 character; decode concatenates
    };

    /// ConfigError for no tokens, an empty or duplicate token, a special id outside the tokens, a Char token
    /// longer than one character or a Word token containing a separator.
    TextVocabulary(Level level, std::vector<std::string> tokens, std::vector<std::int32_t> special);

    /// The token ids of `text`. FormatError naming the word or character that is not in the vocabulary
    /// (or names a special token), or for text that is not valid UTF-8 at character level.
    std::vector<std::int32_t> encode(std::string_view text) const;
    /// The text of `ids`, skipping special tokens. IndexError for an id outside the vocabulary.
    std::string decode(std::span<const std::int32_t> ids) const;

    Level level() const { return level_; }
    std::size_t size() const { return tokens_.size(); }
    const std::vector<std::string>& tokens() const { return tokens_; }
    bool is_special(std::int32_t id) const;

private:
    std::int32_t lookup(std::string_view piece) const;  // FormatError if absent or special

    Level level_;
    std::vector<std::string> tokens_;
    std::vector<bool> special_;  // (size())
    std::unordered_map<std::string, std::int32_t> ids_;
};

/// The two sides of vocab.json.
struct Seq2SeqVocabulary {
    TextVocabulary source;
    TextVocabulary target;

    /// FormatError (naming the key) for bad JSON or a missing or mistyped key; ConfigError as TextVocabulary's
    /// constructor.
    static Seq2SeqVocabulary from_json(std::string_view text);
    static Seq2SeqVocabulary load(const std::filesystem::path& path);  ///< IoError if unreadable
};

}  // namespace kvcache
