// Tokenizer: byte-level BPE and SentencePiece BPE encoding, decoding, special tokens, streaming decode.
#include "kvcache/model/tokenizer.hpp"

#include <algorithm>
#include <array>
#include <cstdio>
#include <functional>
#include <queue>
#include <unordered_map>
#include <utility>

#include "kvcache/model/unicode.hpp"
#include "pretokenize.hpp"

namespace kvcache {

namespace {

// Hash that lets an unordered_map<std::string, ...> be searched with a string_view without a copy.
struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using TextToId = std::unordered_map<std::string, std::int32_t, StringHash, std::equal_to<>>;

constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

// GPT-2's reversible map from bytes to printable code points: printable Latin-1 bytes stand for themselves,
// the other 68 bytes (controls, space, soft hyphen, ...) are moved to U+0100.. in byte order, so every token
// of a byte-level vocabulary is a printable string.
std::array<char32_t, 256> make_byte_to_codepoint() {
    std::array<char32_t, 256> map{};
    char32_t next_free = 256;
    for (int b = 0; b < 256; ++b) {
        const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        map[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : next_free++;
    }
    return map;
}

const std::array<char32_t, 256>& byte_to_codepoint() {
    static const auto map = make_byte_to_codepoint();
    return map;
}

// Inverse of byte_to_codepoint; code points >= 324 or unmapped give -1.
int codepoint_to_byte(char32_t cp) {
    static const auto inverse = [] {
        std::array<int, 324> inv{};
        inv.fill(-1);
        const auto& fwd = byte_to_codepoint();
        for (int b = 0; b < 256; ++b) inv[fwd[static_cast<std::size_t>(b)]] = b;
        return inv;
    }();
    return cp < inverse.size() ? inverse[cp] : -1;
}

// "<0x41>" -> 0x41, else -1.
int parse_byte_token(std::string_view text) {
    if (text.size() != 6 || !text.starts_with("<0x") || text[5] != '>') return -1;
    int value = 0;
    for (std::size_t i = 3; i < 5; ++i) {
        const char c = text[i];
        int digit;
        if (c >= '0' && c <= '9') digit = c - '0';
        else if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
        else if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
        else return -1;
        value = value * 16 + digit;
    }
    return value;
}

std::string replace_all(std::string_view text, std::string_view from, std::string_view to) {
    std::string out;
    out.reserve(text.size());
    for (std::size_t pos = 0;;) {
        const std::size_t hit = text.find(from, pos);
        if (hit == std::string_view::npos) {
            out.append(text.substr(pos));
            return out;
        }
        out.append(text.substr(pos, hit - pos));
        out.append(to);
        pos = hit + from.size();
    }
}

std::uint64_t pair_key(std::int32_t left, std::int32_t right) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) | static_cast<std::uint32_t>(right);
}

struct MergeResult {
    std::int32_t rank;
    std::int32_t id;
};

bool is_special_type(TokenType t) {
    return t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown;
}

}  // namespace

struct Tokenizer::Impl {
    enum class Kind { ByteLevelBpe, SentencePieceBpe };

    TokenizerSpec spec;
    Kind kind = Kind::ByteLevelBpe;
    detail::PreTokenizer pre;
    bool ignore_merges = false;            // a pre-token that is itself a token skips merging (Llama-3 style)
    std::vector<TokenType> types;
    TextToId text_to_id;
    std::vector<std::string> pieces;       // decoded bytes of each token (specials: their text)
    std::array<std::int32_t, 256> byte_token{};  // byte-level symbol / <0xNN> fallback token of each byte, -1 if none
    std::unordered_map<std::uint64_t, MergeResult> merges;
    std::array<std::vector<std::int32_t>, 256> specials_by_first_byte;  // candidates, longest text first
    std::vector<std::int32_t> end_of_generation;

    void check_id(std::int32_t id) const {
        if (id < 0 || static_cast<std::size_t>(id) >= types.size())
            throw IndexError("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                             std::to_string(types.size()) + ")");
    }

    // Which special tokens a stretch of text may contain.
    enum class Specials { None, UserDefinedOnly, All };
    // A stretch [begin, end) of the text and what it may contain.
    struct Stretch {
        std::size_t begin, end;
        Specials specials;
    };

    void build();
    // The steps of build(), in order.
    void check_spec() const;
    void choose_model();
    void read_token_types();
    void index_pieces();
    void index_byte_tokens_and_merges();
    void index_special_tokens();
    // literal: the pieces of plain text never merge into a token of a special type (message content).
    void encode_text(std::string_view text, bool after_special, bool literal, std::vector<std::int32_t>& out) const;
    void bpe_word(std::string_view word, bool literal, std::vector<std::int32_t>& out) const;
    void spm_fragment(std::string_view text, bool literal, std::vector<std::int32_t>& out) const;
    // Length of the special token of an allowed kind starting at text[pos] and ending by `limit` (0 if none),
    // and its id.
    std::pair<std::size_t, std::int32_t> match_special(std::string_view text, std::size_t pos, std::size_t limit,
                                                       Specials allowed) const;
    // Splits the text around the special tokens its stretches allow and encodes the plain text between them.
    std::vector<std::int32_t> encode_stretches(std::string_view text, std::span<const Stretch> stretches,
                                               bool add_special, bool literal) const;
};

void Tokenizer::Impl::build() {
    check_spec();
    choose_model();
    read_token_types();
    index_pieces();
    index_byte_tokens_and_merges();
    index_special_tokens();
}

// Sizes agree and the special ids lie in the vocabulary.
void Tokenizer::Impl::check_spec() const {
    const std::size_t n = spec.tokens.size();
    if (n == 0) throw FormatError("tokenizer: the vocabulary is empty");
    if (n > static_cast<std::size_t>(INT32_MAX)) throw FormatError("tokenizer: vocabulary of " + std::to_string(n) + " tokens is too large");
    if (!spec.scores.empty() && spec.scores.size() != n)
        throw FormatError("tokenizer: " + std::to_string(spec.scores.size()) + " scores for " + std::to_string(n) + " tokens");
    if (!spec.token_types.empty() && spec.token_types.size() != n)
        throw FormatError("tokenizer: " + std::to_string(spec.token_types.size()) + " token types for " +
                          std::to_string(n) + " tokens");
    for (const auto& [name, id] : {std::pair{"bos", &spec.bos_id}, {"eos", &spec.eos_id}, {"unknown", &spec.unk_id},
                                   {"padding", &spec.pad_id}}) {
        if (*id < -1 || *id >= static_cast<std::int64_t>(n))
            throw FormatError(std::string("tokenizer: ") + name + " token id " + std::to_string(*id) +
                              " is outside the vocabulary of " + std::to_string(n));
    }
}

// gpt2 (byte-level BPE, with its pre-tokenizer) or llama (SentencePiece BPE).
void Tokenizer::Impl::choose_model() {
    if (spec.model == "gpt2") {
        kind = Kind::ByteLevelBpe;
        const auto found = detail::find_pre_tokenizer(spec.pre.empty() ? "default" : spec.pre);
        if (!found) {
            std::string names;
            for (auto name : detail::pre_tokenizer_names()) names += (names.empty() ? "" : ", ") + std::string(name);
            throw FormatError("tokenizer: unsupported pre-tokenizer '" + spec.pre + "' (supported: " + names + ")");
        }
        pre = *found;
        ignore_merges = pre.pattern == detail::SplitPattern::Llama3;
    } else if (spec.model == "llama") {
        kind = Kind::SentencePieceBpe;
        if (spec.scores.empty()) throw FormatError("tokenizer: the llama (SentencePiece) model needs tokenizer.ggml.scores");
    } else {
        throw FormatError("tokenizer: unsupported tokenizer model '" + spec.model + "' (supported: gpt2, llama)");
    }
}

void Tokenizer::Impl::read_token_types() {
    const std::size_t n = spec.tokens.size();
    types.resize(n, TokenType::Normal);
    for (std::size_t i = 0; i < spec.token_types.size(); ++i) {
        const std::int32_t t = spec.token_types[i];
        if (t < 0 || t > static_cast<std::int32_t>(TokenType::Byte))
            throw FormatError("tokenizer: token " + std::to_string(i) + " has unknown token type " + std::to_string(t));
        types[i] = static_cast<TokenType>(t);
    }
}

// Token text → id, and each token's bytes as it decodes (byte-level symbols mapped back, ▁ as a space).
void Tokenizer::Impl::index_pieces() {
    const std::size_t n = spec.tokens.size();
    // Later duplicates win, as in llama.cpp and the Hugging Face converter.
    text_to_id.reserve(n);
    for (std::size_t i = 0; i < n; ++i) text_to_id[spec.tokens[i]] = static_cast<std::int32_t>(i);

    byte_token.fill(-1);
    pieces.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
        const std::string& text = spec.tokens[i];
        const TokenType type = types[i];
        if (is_special_type(type) || type == TokenType::Unused) {
            pieces[i] = text;
        } else if (kind == Kind::ByteLevelBpe) {
            std::string bytes;
            for (std::size_t pos = 0; pos < text.size();) {
                const auto d = unicode::decode_utf8(text, pos);
                const int b = d.valid ? codepoint_to_byte(d.codepoint) : -1;
                if (b >= 0) bytes.push_back(static_cast<char>(b));
                else bytes.append(text, pos, d.length);  // outside the byte alphabet: keep as written
                pos += d.length;
            }
            pieces[i] = std::move(bytes);
        } else if (const int b = parse_byte_token(text); type == TokenType::Byte && b >= 0) {
            pieces[i] = std::string(1, static_cast<char>(b));
        } else {
            pieces[i] = replace_all(text, kSpmSpace, " ");
        }
    }
}

// The token of each byte (byte fallback), and the merge table of byte-level BPE.
void Tokenizer::Impl::index_byte_tokens_and_merges() {
    const std::size_t n = spec.tokens.size();
    if (kind == Kind::ByteLevelBpe) {
        const auto& b2c = byte_to_codepoint();
        for (int b = 0; b < 256; ++b) {
            std::string symbol;
            unicode::append_utf8(symbol, b2c[static_cast<std::size_t>(b)]);
            if (const auto it = text_to_id.find(symbol); it != text_to_id.end()) byte_token[static_cast<std::size_t>(b)] = it->second;
        }
        merges.reserve(spec.merges.size());
        for (std::size_t rank = 0; rank < spec.merges.size(); ++rank) {
            const std::string& merge = spec.merges[rank];
            const std::size_t space = merge.find(' ');
            if (space == std::string::npos || space == 0 || space + 1 == merge.size() ||
                merge.find(' ', space + 1) != std::string::npos)
                throw FormatError("tokenizer: merge #" + std::to_string(rank) + " '" + merge +
                                  "' is not two symbols separated by one space");
            const std::string_view left(merge.data(), space);
            const std::string_view right(merge.data() + space + 1, merge.size() - space - 1);
            std::string joined(left);
            joined += right;
            const auto l = text_to_id.find(left), r = text_to_id.find(right), j = text_to_id.find(joined);
            if (l == text_to_id.end() || r == text_to_id.end() || j == text_to_id.end())
                throw FormatError("tokenizer: merge #" + std::to_string(rank) + " '" + merge +
                                  "' names a symbol that is not in the vocabulary");
            // The first (best-ranked) occurrence of a pair wins.
            merges.try_emplace(pair_key(l->second, r->second), MergeResult{static_cast<std::int32_t>(rank), j->second});
        }
    } else {
        for (std::size_t i = 0; i < n; ++i) {
            const int b = parse_byte_token(spec.tokens[i]);
            if (b >= 0 && types[i] == TokenType::Byte) byte_token[static_cast<std::size_t>(b)] = static_cast<std::int32_t>(i);
        }
    }
}

// Special tokens longest first by their first byte (for matching in text), and the end-of-generation tokens.
void Tokenizer::Impl::index_special_tokens() {
    const std::size_t n = spec.tokens.size();
    std::vector<std::int32_t> specials;
    for (std::size_t i = 0; i < n; ++i)
        if (is_special_type(types[i]) && !spec.tokens[i].empty()) specials.push_back(static_cast<std::int32_t>(i));
    std::stable_sort(specials.begin(), specials.end(), [&](std::int32_t a, std::int32_t b) {
        return spec.tokens[static_cast<std::size_t>(a)].size() > spec.tokens[static_cast<std::size_t>(b)].size();
    });
    for (const std::int32_t id : specials)
        specials_by_first_byte[static_cast<unsigned char>(spec.tokens[static_cast<std::size_t>(id)][0])].push_back(id);

    if (spec.eos_id >= 0) end_of_generation.push_back(spec.eos_id);
    for (const char* text : {"<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>"}) {
        const auto it = text_to_id.find(std::string_view(text));
        if (it != text_to_id.end() && types[static_cast<std::size_t>(it->second)] == TokenType::Control &&
            std::find(end_of_generation.begin(), end_of_generation.end(), it->second) == end_of_generation.end())
            end_of_generation.push_back(it->second);
    }
}

std::pair<std::size_t, std::int32_t> Tokenizer::Impl::match_special(std::string_view text, std::size_t pos,
                                                                    std::size_t limit, Specials allowed) const {
    if (allowed == Specials::None) return {0, -1};
    for (const std::int32_t id : specials_by_first_byte[static_cast<unsigned char>(text[pos])]) {
        // User-defined tokens are always whole; control/unknown only when the caller asks for special parsing.
        if (allowed == Specials::UserDefinedOnly && types[static_cast<std::size_t>(id)] != TokenType::UserDefined) continue;
        const std::string& s = spec.tokens[static_cast<std::size_t>(id)];
        if (s.size() <= limit - pos && text.compare(pos, s.size(), s) == 0) return {s.size(), id};
    }
    return {0, -1};
}

void Tokenizer::Impl::bpe_word(std::string_view word, bool literal, std::vector<std::int32_t>& out) const {
    if (word.empty()) return;
    if (ignore_merges) {
        std::string spelled;
        for (const char c : word) unicode::append_utf8(spelled, byte_to_codepoint()[static_cast<unsigned char>(c)]);
        if (const auto it = text_to_id.find(spelled);
            it != text_to_id.end() && !(literal && is_special_type(types[static_cast<std::size_t>(it->second)]))) {
            out.push_back(it->second);
            return;
        }
    }
    // Symbols form a doubly linked list over the word's bytes; candidate merges wait in a heap ordered by
    // (rank, position) and are checked for staleness when popped, so each merge costs O(log n).
    struct Symbol {
        std::int32_t id;
        std::int32_t prev, next;
    };
    struct Candidate {
        std::int32_t rank, left, right, result;
        std::int32_t left_id, right_id;
        bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    // A byte without a token becomes the unknown token; in literal text only if that is not a control token
    // (SmolLM2 names <|endoftext|> as its unknown token: a 0xFF byte in a message must not end the text).
    const std::int32_t fallback = literal && spec.unk_id >= 0 && types[static_cast<std::size_t>(spec.unk_id)] == TokenType::Control
                                      ? -1
                                      : spec.unk_id;
    for (const char c : word) {
        const std::int32_t id = byte_token[static_cast<unsigned char>(c)];
        const auto index = static_cast<std::int32_t>(symbols.size());
        symbols.push_back({id >= 0 ? id : fallback, index - 1, index + 1});
    }
    symbols.back().next = -1;
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
    const auto consider = [&](std::int32_t left) {
        if (left < 0) return;
        const std::int32_t right = symbols[static_cast<std::size_t>(left)].next;
        if (right < 0) return;
        const std::int32_t lid = symbols[static_cast<std::size_t>(left)].id, rid = symbols[static_cast<std::size_t>(right)].id;
        if (lid < 0 || rid < 0) return;
        const auto it = merges.find(pair_key(lid, rid));
        if (it != merges.end() && literal && is_special_type(types[static_cast<std::size_t>(it->second.id)])) return;
        if (it != merges.end()) heap.push({it->second.rank, left, right, it->second.id, lid, rid});
    };
    for (std::int32_t i = 0; i + 1 < static_cast<std::int32_t>(symbols.size()); ++i) consider(i);
    while (!heap.empty()) {
        const Candidate c = heap.top();
        heap.pop();
        Symbol& l = symbols[static_cast<std::size_t>(c.left)];
        if (l.id != c.left_id || l.next != c.right || symbols[static_cast<std::size_t>(c.right)].id != c.right_id) continue;
        Symbol& r = symbols[static_cast<std::size_t>(c.right)];
        l.id = c.result;
        l.next = r.next;
        if (r.next >= 0) symbols[static_cast<std::size_t>(r.next)].prev = c.left;
        r.id = -2;  // dead
        consider(l.prev);
        consider(c.left);
    }
    for (std::int32_t i = 0; i >= 0; i = symbols[static_cast<std::size_t>(i)].next)
        if (symbols[static_cast<std::size_t>(i)].id >= 0) out.push_back(symbols[static_cast<std::size_t>(i)].id);
}

void Tokenizer::Impl::spm_fragment(std::string_view raw, bool literal, std::vector<std::int32_t>& out) const {
    const std::string text = replace_all(raw, " ", kSpmSpace);
    struct Symbol {
        std::int32_t begin, length;  // bytes of `text`; length 0 once merged into the left neighbour
        std::int32_t prev, next;
    };
    struct Bigram {
        float score;
        std::int32_t left, length;
        // Highest score first, then the leftmost pair.
        bool operator<(const Bigram& o) const { return score != o.score ? score < o.score : left > o.left; }
    };
    std::vector<Symbol> symbols;
    for (std::size_t pos = 0; pos < text.size();) {
        const auto len = unicode::decode_utf8(text, pos).length;
        const auto index = static_cast<std::int32_t>(symbols.size());
        symbols.push_back({static_cast<std::int32_t>(pos), len, index - 1, index + 1});
        pos += len;
    }
    if (symbols.empty()) return;
    symbols.back().next = -1;
    const auto lookup = [&](std::int32_t begin, std::int32_t length) -> std::int32_t {
        const auto it = text_to_id.find(std::string_view(text).substr(static_cast<std::size_t>(begin), static_cast<std::size_t>(length)));
        if (it == text_to_id.end()) return -1;
        const TokenType t = types[static_cast<std::size_t>(it->second)];
        // Control and byte tokens are never the result of merging text.
        return t == TokenType::Normal || t == TokenType::Undefined || (t == TokenType::UserDefined && !literal) ? it->second : -1;
    };
    std::priority_queue<Bigram> heap;
    const auto consider = [&](std::int32_t left) {
        if (left < 0) return;
        const Symbol& l = symbols[static_cast<std::size_t>(left)];
        if (l.next < 0) return;
        const std::int32_t length = l.length + symbols[static_cast<std::size_t>(l.next)].length;
        const std::int32_t id = lookup(l.begin, length);
        if (id >= 0) heap.push({spec.scores[static_cast<std::size_t>(id)], left, length});
    };
    for (std::int32_t i = 0; i + 1 < static_cast<std::int32_t>(symbols.size()); ++i) consider(i);
    while (!heap.empty()) {
        const Bigram b = heap.top();
        heap.pop();
        Symbol& l = symbols[static_cast<std::size_t>(b.left)];
        if (l.length == 0 || l.next < 0) continue;
        Symbol& r = symbols[static_cast<std::size_t>(l.next)];
        if (l.length + r.length != b.length) continue;  // stale: one side has merged since
        l.length += r.length;
        r.length = 0;
        l.next = r.next;
        if (r.next >= 0) symbols[static_cast<std::size_t>(r.next)].prev = b.left;
        consider(l.prev);
        consider(b.left);
    }
    for (std::int32_t i = 0; i >= 0; i = symbols[static_cast<std::size_t>(i)].next) {
        const Symbol& s = symbols[static_cast<std::size_t>(i)];
        if (const std::int32_t id = lookup(s.begin, s.length); id >= 0) {
            out.push_back(id);
            continue;
        }
        // Not in the vocabulary: one <0xNN> token per byte, else the unknown token, else nothing.
        for (std::int32_t k = 0; k < s.length; ++k) {
            const std::int32_t id = byte_token[static_cast<unsigned char>(text[static_cast<std::size_t>(s.begin + k)])];
            if (id >= 0) out.push_back(id);
            else if (spec.unk_id >= 0 && !(literal && types[static_cast<std::size_t>(spec.unk_id)] == TokenType::Control)) {
                out.push_back(spec.unk_id);
                break;  // one <unk> per character, as SentencePiece does without byte fallback
            }
        }
    }
}

void Tokenizer::Impl::encode_text(std::string_view text, bool after_special, bool literal,
                                  std::vector<std::int32_t>& out) const {
    if (kind == Kind::SentencePieceBpe) {
        if (spec.add_space_prefix && after_special) {
            std::string prefixed = " ";
            prefixed += text;
            spm_fragment(prefixed, literal, out);
        } else {
            spm_fragment(text, literal, out);
        }
        return;
    }
    if (text.empty()) return;
    std::vector<std::pair<std::size_t, std::size_t>> words;
    detail::pre_tokenize(pre, text, words);
    for (const auto& [begin, end] : words) bpe_word(text.substr(begin, end - begin), literal, out);
}

Tokenizer::Tokenizer(TokenizerSpec spec) : impl_(std::make_unique<Impl>()) {
    impl_->spec = std::move(spec);
    impl_->build();
}

Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

std::vector<std::int32_t> Tokenizer::Impl::encode_stretches(std::string_view text, std::span<const Stretch> stretches,
                                                           bool add_special, bool literal) const {
    // Symbol lists index with int32 (half the memory of size_t on the hot path); longer inputs are refused.
    if (text.size() > static_cast<std::size_t>(INT32_MAX) / 4)
        throw CapacityError("tokenizer: text of " + std::to_string(text.size()) + " bytes is longer than the " +
                            std::to_string(INT32_MAX / 4) + " bytes encode accepts");
    std::vector<std::int32_t> out;
    out.reserve(text.size() / 3 + 2);
    if (add_special && spec.add_bos && spec.bos_id >= 0) out.push_back(spec.bos_id);
    // Split around special-token text (leftmost, then longest) that lies wholly inside a stretch allowing it;
    // encode the plain text between as one run, across stretch boundaries.
    bool after_special = true;
    std::size_t plain_begin = 0;
    std::size_t stretch = 0;
    for (std::size_t pos = 0; pos < text.size();) {
        while (stretch < stretches.size() && stretches[stretch].end <= pos) ++stretch;
        const auto [length, id] = stretch < stretches.size()
                                      ? match_special(text, pos, stretches[stretch].end, stretches[stretch].specials)
                                      : std::pair<std::size_t, std::int32_t>{0, -1};
        if (length == 0) {
            ++pos;
            continue;
        }
        if (pos > plain_begin) encode_text(text.substr(plain_begin, pos - plain_begin), after_special, literal, out);
        out.push_back(id);
        after_special = true;
        pos += length;
        plain_begin = pos;
    }
    if (plain_begin < text.size()) encode_text(text.substr(plain_begin), after_special, literal, out);
    if (add_special && spec.add_eos && spec.eos_id >= 0) out.push_back(spec.eos_id);
    return out;
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& options) const {
    const Impl::Stretch whole{0, text.size(),
                              options.parse_special ? Impl::Specials::All : Impl::Specials::UserDefinedOnly};
    return impl_->encode_stretches(text, std::span(&whole, 1), options.add_special, false);
}

std::vector<std::int32_t> Tokenizer::encode_segments(std::span<const TextSegment> segments,
                                                     const LiteralEncodeOptions& options) const {
    std::string text;
    std::vector<Impl::Stretch> stretches;
    stretches.reserve(segments.size());
    for (const auto& segment : segments) {
        if (segment.text.size() > static_cast<std::size_t>(INT32_MAX) - text.size())
            throw CapacityError("tokenizer: segments of more than " + std::to_string(INT32_MAX) + " bytes in all");
        stretches.push_back({text.size(), text.size() + segment.text.size(),
                             segment.markers ? Impl::Specials::All : Impl::Specials::None});
        text += segment.text;
    }
    return impl_->encode_stretches(text, stretches, options.add_special, true);
}

std::vector<std::int32_t> Tokenizer::encode_literal(std::string_view text, const LiteralEncodeOptions& options) const {
    const TextSegment whole{text, false};
    return encode_segments(std::span(&whole, 1), options);
}

std::string Tokenizer::decode(std::span<const std::int32_t> ids, const DetokenizeOptions& options) const {
    TokenStreamDecoder stream(*this, options);
    std::string out;
    for (const std::int32_t id : ids) out += stream.push(id);
    out += stream.finish();
    return out;
}

std::string Tokenizer::token_to_piece(std::int32_t id, const DetokenizeOptions& options) const {
    impl_->check_id(id);
    const auto i = static_cast<std::size_t>(id);
    const TokenType t = impl_->types[i];
    if ((t == TokenType::Control || t == TokenType::Unknown) && !options.render_special) return {};
    if (t == TokenType::Unused) return {};
    return impl_->pieces[i];
}

std::size_t Tokenizer::vocab_size() const { return impl_->types.size(); }
std::int32_t Tokenizer::bos_id() const { return impl_->spec.bos_id; }
std::int32_t Tokenizer::eos_id() const { return impl_->spec.eos_id; }
std::int32_t Tokenizer::unk_id() const { return impl_->spec.unk_id; }
std::int32_t Tokenizer::pad_id() const { return impl_->spec.pad_id; }
bool Tokenizer::add_bos() const { return impl_->spec.add_bos; }
bool Tokenizer::add_eos() const { return impl_->spec.add_eos; }
const std::string& Tokenizer::model() const { return impl_->spec.model; }
const std::string& Tokenizer::pre_tokenizer() const { return impl_->spec.pre; }
const std::string& Tokenizer::chat_template() const { return impl_->spec.chat_template; }

TokenType Tokenizer::token_type(std::int32_t id) const {
    impl_->check_id(id);
    return impl_->types[static_cast<std::size_t>(id)];
}

bool Tokenizer::is_special(std::int32_t id) const { return is_special_type(token_type(id)); }
bool Tokenizer::is_control(std::int32_t id) const { return token_type(id) == TokenType::Control; }

bool Tokenizer::is_end_of_generation(std::int32_t id) const {
    impl_->check_id(id);
    const auto& ids = impl_->end_of_generation;
    return std::find(ids.begin(), ids.end(), id) != ids.end();
}

const std::string& Tokenizer::token_text(std::int32_t id) const {
    impl_->check_id(id);
    return impl_->spec.tokens[static_cast<std::size_t>(id)];
}

std::optional<std::int32_t> Tokenizer::token_id(std::string_view text) const {
    const auto it = impl_->text_to_id.find(text);
    if (it == impl_->text_to_id.end()) return std::nullopt;
    return it->second;
}

std::vector<std::string> Tokenizer::pre_tokenizers() {
    std::vector<std::string> names;
    for (const auto name : detail::pre_tokenizer_names()) names.emplace_back(name);
    return names;
}

std::vector<std::string> Tokenizer::pre_tokenize(std::string_view pre_name, std::string_view text) {
    const auto pre = detail::find_pre_tokenizer(pre_name);
    if (!pre) throw FormatError("tokenizer: unsupported pre-tokenizer '" + std::string(pre_name) + "'");
    std::vector<std::pair<std::size_t, std::size_t>> ranges;
    detail::pre_tokenize(*pre, text, ranges);
    std::vector<std::string> words;
    words.reserve(ranges.size());
    for (const auto& [begin, end] : ranges) words.emplace_back(text.substr(begin, end - begin));
    return words;
}

// ---- streaming ----

TokenStreamDecoder::TokenStreamDecoder(const Tokenizer& tokenizer, const DetokenizeOptions& options)
    : tokenizer_(&tokenizer),
      render_special_(options.render_special),
      strip_next_space_(tokenizer.impl_->kind == Tokenizer::Impl::Kind::SentencePieceBpe &&
                        tokenizer.impl_->spec.add_space_prefix) {}

std::string TokenStreamDecoder::push(std::int32_t id) {
    const Tokenizer::Impl& m = *tokenizer_->impl_;
    std::string piece = tokenizer_->token_to_piece(id, {.render_special = render_special_});
    const bool spm_prefix = m.kind == Tokenizer::Impl::Kind::SentencePieceBpe && m.spec.add_space_prefix;
    if (is_special_type(m.types[static_cast<std::size_t>(id)])) {
        // The encoder put a space in front of the text that follows a special token; take it out again.
        strip_next_space_ = spm_prefix;
    } else if (!piece.empty()) {
        if (strip_next_space_ && piece.front() == ' ') piece.erase(0, 1);
        strip_next_space_ = false;
    }
    held_ += piece;
    // Emit everything up to the last UTF-8 sequence if that sequence is still incomplete.
    std::size_t keep_from = held_.size();
    for (std::size_t back = 1; back <= 4 && back <= held_.size(); ++back) {
        const auto byte = static_cast<unsigned char>(held_[held_.size() - back]);
        if ((byte & 0xC0) == 0x80) continue;  // continuation: keep looking for the lead byte
        const std::size_t need = unicode::utf8_sequence_length(byte);
        if (need > back) keep_from = held_.size() - back;
        break;
    }
    std::string ready = held_.substr(0, keep_from);
    held_.erase(0, keep_from);
    return ready;
}

std::string TokenStreamDecoder::finish() {
    std::string rest = std::move(held_);
    held_.clear();
    strip_next_space_ = tokenizer_->impl_->kind == Tokenizer::Impl::Kind::SentencePieceBpe &&
                        tokenizer_->impl_->spec.add_space_prefix;
    return rest;
}

}  // namespace kvcache
