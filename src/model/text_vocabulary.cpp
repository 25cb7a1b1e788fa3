// TextVocabulary: splitting text into words or characters, and vocab.json.
#include "kvcache/model/text_vocabulary.hpp"


#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kvcache/error.hpp"
#include "kvcache/model/unicode.hpp"
#include "text_file.hpp"

namespace kvcache {

namespace {

bool is_word_separator(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v' || c == '-' || c == ',';
}

char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

/// The pieces of `text` at this level: words (lowercased) or UTF-8 characters; FormatError for bad UTF-8.
std::vector<std::string> split(TextVocabulary::Level level, std::string_view text) {
    std::vector<std::string> pieces;
    if (level == TextVocabulary::Level::Word) {
        std::string word;
        for (char c : text) {
            if (is_word_separator(c)) {
                if (!word.empty()) pieces.push_back(std::move(word));
                word.clear();
            } else {
                word += ascii_lower(c);
            }
        }
        if (!word.empty()) pieces.push_back(std::move(word));
        return pieces;
    }
    for (std::size_t pos = 0; pos < text.size();) {
        const unicode::Decoded d = unicode::decode_utf8(text, pos);
        if (!d.valid) throw FormatError(fmt::format("text vocabulary: the text is not valid UTF-8 at byte {}", pos));
        pieces.emplace_back(text.substr(pos, d.length));
        pos += d.length;
    }
    return pieces;
}

}  // namespace

TextVocabulary::TextVocabulary(Level level, std::vector<std::string> tokens, std::vector<std::int32_t> special)
    : level_(level), tokens_(std::move(tokens)), special_(tokens_.size(), false) {
    if (tokens_.empty()) throw ConfigError("text vocabulary: no tokens");
    if (tokens_.size() > static_cast<std::size_t>(INT32_MAX))
        throw ConfigError(fmt::format("text vocabulary: {} tokens do not fit 32-bit ids", tokens_.size()));
    for (std::int32_t id : special) {
        if (id < 0 || static_cast<std::size_t>(id) >= tokens_.size())
            throw ConfigError(fmt::format("text vocabulary: special id {} is outside the {} tokens", id, tokens_.size()));
        special_[static_cast<std::size_t>(id)] = true;
    }
    for (std::size_t i = 0; i < tokens_.size(); ++i) {
        const std::string& t = tokens_[i];
        if (t.empty()) throw ConfigError(fmt::format("text vocabulary: token {} is empty", i));
        if (!special_[i]) {
            // A token that text can never split into could never be encoded: the vocabulary is wrong.
            const auto pieces = split(level_, t);
            if (pieces.size() != 1 || pieces[0] != t)
                throw ConfigError(fmt::format("text vocabulary: token {} \"{}\" is not one {} of the text", i, t,
                                              level_ == Level::Word ? "lowercase word" : "character"));
        }
        if (!ids_.emplace(t, static_cast<std::int32_t>(i)).second)
            throw ConfigError(fmt::format("text vocabulary: token \"{}\" appears twice (ids {} and {})", t, ids_.at(t), i));
    }
}

bool TextVocabulary::is_special(std::int32_t id) const {
    return id >= 0 && static_cast<std::size_t>(id) < special_.size() && special_[static_cast<std::size_t>(id)];
}

std::int32_t TextVocabulary::lookup(std::string_view piece) const {
    const auto it = ids_.find(std::string(piece));
    if (it == ids_.end() || is_special(it->second)) {
        std::string known;
        for (std::size_t i = 0; i < tokens_.size(); ++i) {
            if (special_[i]) continue;
            if (!known.empty()) known += ' ';
            known += tokens_[i];
        }
        throw FormatError(fmt::format("text vocabulary: {} \"{}\" is not in the vocabulary (it knows: {})",
                                      level_ == Level::Word ? "word" : "character", piece, known));
    }
    return it->second;
}

std::vector<std::int32_t> TextVocabulary::encode(std::string_view text) const {
    std::vector<std::int32_t> ids;
    for (const std::string& piece : split(level_, text)) ids.push_back(lookup(piece));
    return ids;
}

std::string TextVocabulary::decode(std::span<const std::int32_t> ids) const {
    std::string text;
    for (std::int32_t id : ids) {
        if (id < 0 || static_cast<std::size_t>(id) >= tokens_.size())
            throw IndexError(fmt::format("text vocabulary: id {} is outside the {} tokens", id, tokens_.size()));
        if (is_special(id)) continue;
        if (level_ == Level::Word && !text.empty()) text += ' ';
        text += tokens_[static_cast<std::size_t>(id)];
    }
    return text;
}

Seq2SeqVocabulary Seq2SeqVocabulary::from_json(std::string_view text) {
    using json = nlohmann::json;
    json j;
    try {
        j = json::parse(text.begin(), text.end());
    } catch (const json::exception& e) {
        throw FormatError(fmt::format("vocab.json: not valid JSON: {}", e.what()));
    }
    auto side = [&](const char* name) {
        if (!j.is_object() || !j.contains(name) || !j.at(name).is_object())
            throw FormatError(fmt::format("vocab.json: missing object \"{}\"", name));
        const json& s = j.at(name);
        auto field = [&](const char* key) -> const json& {
            if (!s.contains(key)) throw FormatError(fmt::format("vocab.json: \"{}\" has no \"{}\"", name, key));
            return s.at(key);
        };
        const json& level = field("level");
        TextVocabulary::Level l;
        if (level == "word") l = TextVocabulary::Level::Word;
        else if (level == "char") l = TextVocabulary::Level::Char;
        else throw FormatError(fmt::format("vocab.json: \"{}.level\" must be \"word\" or \"char\", is {}", name, level.dump()));
        const json& tokens = field("tokens");
        if (!tokens.is_array()) throw FormatError(fmt::format("vocab.json: \"{}.tokens\" must be an array", name));
        std::vector<std::string> t;
        for (const json& v : tokens) {
            if (!v.is_string()) throw FormatError(fmt::format("vocab.json: \"{}.tokens\" holds {}, not a string", name, v.dump()));
            t.push_back(v.get<std::string>());
        }
        std::vector<std::int32_t> special;
        if (s.contains("special")) {
            const json& sp = s.at("special");
            if (!sp.is_array()) throw FormatError(fmt::format("vocab.json: \"{}.special\" must be an array", name));
            for (const json& v : sp) {
                if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::int64_t>() > INT32_MAX)
                    throw FormatError(fmt::format("vocab.json: \"{}.special\" holds {}, not a token id", name, v.dump()));
                special.push_back(static_cast<std::int32_t>(v.get<std::int64_t>()));
            }
        }
        return TextVocabulary(l, std::move(t), std::move(special));
    };
    return Seq2SeqVocabulary{side("source"), side("target")};
}

Seq2SeqVocabulary Seq2SeqVocabulary::load(const std::filesystem::path& path) {
    return detail::parse_text_file(path, "vocabulary", [](std::string_view text) { return from_json(text); });
}

}  // namespace kvcache
