// Pre-tokenisation: the split patterns of GPT-2 style tokenizers, as hand-written matchers over code points.
//
// Each matcher returns the length of the match the regex (with its leftmost-alternative-first semantics) would
// find at position i; calling it repeatedly tiles the text. Hand-written because std::regex has no Unicode
// classes and is slow; the patterns are short enough that each alternative reads as a few lines.
#include "pretokenize.hpp"

#include <algorithm>
#include <array>
#include <cstdint>

#include "kvcache/model/unicode.hpp"

namespace kvcache::detail {

namespace {

enum CharClass : std::uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 4 };

struct Char {
    char32_t cp;
    std::uint8_t cls;
};

class Matcher {
public:
    Matcher(const Char* chars, std::size_t end) : c_(chars), end_(end) {}

    std::size_t gpt2(std::size_t i) const {
        if (const std::size_t n = contraction(i, false)) return n;
        // ' ?' is optional: it only belongs to the match when a letter/number/other run follows it.
        const std::size_t j = c_[i].cp == U' ' && i + 1 < end_ ? i + 1 : i;
        if (c_[j].cls == kLetter) return run(j, kLetter) - i;
        if (c_[j].cls == kNumber) return run(j, kNumber) - i;
        if (c_[j].cls == kOther) return run(j, kOther) - i;
        return whitespace_tail(i, run(i, kSpace));
    }

    std::size_t llama3(std::size_t i, std::size_t max_digits) const {
        if (const std::size_t n = contraction(i, true)) return n;
        if (c_[i].cls == kLetter) return run(i, kLetter) - i;
        // [^\r\n\p{L}\p{N}]?\p{L}+ : one leading space/punctuation character is glued to a word.
        if (c_[i].cls != kNumber && !newline(i) && i + 1 < end_ && c_[i + 1].cls == kLetter)
            return run(i + 1, kLetter) - i;
        if (c_[i].cls == kNumber) return std::min(run(i, kNumber) - i, max_digits);
        const std::size_t j = c_[i].cp == U' ' && i + 1 < end_ ? i + 1 : i;
        if (c_[j].cls == kOther) {  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
            std::size_t k = run(j, kOther);
            while (k < end_ && newline(k)) ++k;
            return k - i;
        }
        const std::size_t k = run(i, kSpace);
        // \s*[\r\n]+ : greedy \s* backs off to the last line break of the run.
        for (std::size_t p = k; p > i; --p)
            if (newline(p - 1)) return p - i;
        return whitespace_tail(i, k);
    }

private:
    bool newline(std::size_t i) const { return c_[i].cp == U'\r' || c_[i].cp == U'\n'; }

    std::size_t run(std::size_t i, std::uint8_t cls) const {
        while (i < end_ && c_[i].cls == cls) ++i;
        return i;
    }

    // 's|'t|'re|'ve|'m|'ll|'d (ASCII case-insensitive if asked)
    std::size_t contraction(std::size_t i, bool ignore_case) const {
        if (c_[i].cp != U'\'' || i + 1 >= end_) return 0;
        const auto fold = [&](std::size_t k) {
            const char32_t cp = c_[k].cp;
            return ignore_case && cp >= U'A' && cp <= U'Z' ? cp + 32 : cp;
        };
        const char32_t a = fold(i + 1);
        if (a == U's' || a == U't' || a == U'm' || a == U'd') return 2;
        if (i + 2 < end_) {
            const char32_t b = fold(i + 2);
            if ((a == U'r' && b == U'e') || (a == U'v' && b == U'e') || (a == U'l' && b == U'l')) return 3;
        }
        return 0;
    }

    // \s+(?!\S)|\s+ for the white-space run [i, k): leave the last space to prefix the next word.
    std::size_t whitespace_tail(std::size_t i, std::size_t k) const {
        if (k == end_ || k - i == 1) return k - i;
        return k - i - 1;
    }

    const Char* c_;
    std::size_t end_;
};

struct NamedPreTokenizer {
    std::string_view name;
    PreTokenizer pre;
};

// The names llama.cpp's converter writes into tokenizer.ggml.pre, grouped by the split llama.cpp applies.
constexpr std::array kPreTokenizers = {
    NamedPreTokenizer{"default", {SplitPattern::Gpt2, false}},
    NamedPreTokenizer{"gpt2", {SplitPattern::Gpt2, false}},
    NamedPreTokenizer{"gpt-2", {SplitPattern::Gpt2, false}},
    NamedPreTokenizer{"mpt", {SplitPattern::Gpt2, false}},
    NamedPreTokenizer{"olmo", {SplitPattern::Gpt2, false}},
    NamedPreTokenizer{"jais", {SplitPattern::Gpt2, false}},
    NamedPreTokenizer{"smollm", {SplitPattern::Gpt2, true}},
    NamedPreTokenizer{"starcoder", {SplitPattern::Gpt2, true}},
    NamedPreTokenizer{"refact", {SplitPattern::Gpt2, true}},
    NamedPreTokenizer{"command-r", {SplitPattern::Gpt2, true}},
    NamedPreTokenizer{"codeshell", {SplitPattern::Gpt2, true}},
    NamedPreTokenizer{"exaone", {SplitPattern::Gpt2, true}},
    NamedPreTokenizer{"minerva-7b", {SplitPattern::Gpt2, true}},
    NamedPreTokenizer{"llama3", {SplitPattern::Llama3, false}},
    NamedPreTokenizer{"llama-v3", {SplitPattern::Llama3, false}},
    NamedPreTokenizer{"llama-bpe", {SplitPattern::Llama3, false}},
    NamedPreTokenizer{"falcon3", {SplitPattern::Llama3, false}},
    NamedPreTokenizer{"pixtral", {SplitPattern::Llama3, false}},
    NamedPreTokenizer{"dbrx", {SplitPattern::Llama3, false}},
    NamedPreTokenizer{"smaug-bpe", {SplitPattern::Llama3, false}},
    NamedPreTokenizer{"qwen2", {SplitPattern::Qwen2, false}},
    NamedPreTokenizer{"deepseek-r1-qwen", {SplitPattern::Qwen2, false}},
    NamedPreTokenizer{"megrez", {SplitPattern::Qwen2, false}},
};

void split_chunk(const PreTokenizer& pre, const Char* chars, const std::vector<std::size_t>& offsets,
                 std::size_t begin, std::size_t end, std::vector<std::pair<std::size_t, std::size_t>>& out) {
    const Matcher m(chars, end);
    for (std::size_t i = begin; i < end;) {
        std::size_t n = 0;
        switch (pre.pattern) {
            case SplitPattern::Gpt2: n = m.gpt2(i); break;
            case SplitPattern::Llama3: n = m.llama3(i, 3); break;
            case SplitPattern::Qwen2: n = m.llama3(i, 1); break;
        }
        n = std::max<std::size_t>(n, 1);  // every alternative consumes; guard the loop regardless
        out.emplace_back(offsets[i], offsets[i + n]);
        i += n;
    }
}

}  // namespace

std::optional<PreTokenizer> find_pre_tokenizer(std::string_view name) {
    for (const auto& p : kPreTokenizers)
        if (p.name == name) return p.pre;
    return std::nullopt;
}

std::vector<std::string_view> pre_tokenizer_names() {
    std::vector<std::string_view> names;
    for (const auto& p : kPreTokenizers) names.push_back(p.name);
    return names;
}

void pre_tokenize(const PreTokenizer& pre, std::string_view text,
                  std::vector<std::pair<std::size_t, std::size_t>>& out) {
    std::vector<Char> chars;
    std::vector<std::size_t> offsets;  // byte offset of each char, plus text.size() at the end
    chars.reserve(text.size());
    offsets.reserve(text.size() + 1);
    for (std::size_t pos = 0; pos < text.size();) {
        const unicode::Decoded d = unicode::decode_utf8(text, pos);
        std::uint8_t cls = kOther;  // malformed bytes count as "other" characters
        if (d.valid) {
            if (unicode::is_letter(d.codepoint)) cls = kLetter;
            else if (unicode::is_number(d.codepoint)) cls = kNumber;
            else if (unicode::is_whitespace(d.codepoint)) cls = kSpace;
        }
        chars.push_back({d.valid ? d.codepoint : char32_t{0xFFFD}, cls});
        offsets.push_back(pos);
        pos += d.length;
    }
    offsets.push_back(text.size());

    if (!pre.isolate_numbers) {
        split_chunk(pre, chars.data(), offsets, 0, chars.size(), out);
        return;
    }
    std::size_t chunk = 0;
    for (std::size_t i = 0; i < chars.size(); ++i) {
        if (chars[i].cls != kNumber) continue;
        split_chunk(pre, chars.data(), offsets, chunk, i, out);
        out.emplace_back(offsets[i], offsets[i + 1]);
        chunk = i + 1;
    }
    split_chunk(pre, chars.data(), offsets, chunk, chars.size(), out);
}

}  // namespace kvcache::detail
