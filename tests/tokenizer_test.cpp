// Tests of the tokenizer: hand-made byte-level and SentencePiece vocabularies with ids worked out by hand,
// pre-tokenizer splits, streaming decode, error paths, and golden ids from the real SmolLM2 file.
#include <catch2/catch.hpp>

#include <array>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <sys/mman.h>

#include "kvcache/model/gguf.hpp"
#include "kvcache/model/tokenizer.hpp"
#include "kvcache/model/unicode.hpp"

using kvcache::Tokenizer;
using kvcache::TokenizerSpec;
using kvcache::TokenType;
using Ids = std::vector<std::int32_t>;

namespace {

// The GPT-2 byte alphabet spelled out independently of the library: printable Latin-1 stands for itself,
// the remaining bytes map to U+0100 onwards in byte order.
std::string byte_symbol(int b) {
    static const std::array<char32_t, 256> map = [] {
        std::array<char32_t, 256> m{};
        char32_t next = 256;
        for (int i = 0; i < 256; ++i) {
            const bool printable = (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE);
            m[static_cast<std::size_t>(i)] = printable ? static_cast<char32_t>(i) : next++;
        }
        return m;
    }();
    std::string s;
    kvcache::unicode::append_utf8(s, map[static_cast<std::size_t>(b)]);
    return s;
}

// Ids 0..255 are the byte symbols (id == byte value), then merged tokens and specials.
TokenizerSpec byte_level_spec(const std::string& pre = "gpt2") {
    TokenizerSpec spec;
    spec.model = "gpt2";
    spec.pre = pre;
    for (int b = 0; b < 256; ++b) spec.tokens.push_back(byte_symbol(b));
    const std::vector<std::string> merged = {"he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "ld", "Ġworld"};
    spec.tokens.insert(spec.tokens.end(), merged.begin(), merged.end());  // 256..264
    spec.merges = {"h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"};
    spec.tokens.push_back("<|im_start|>");  // 265
    spec.tokens.push_back("<|im_end|>");    // 266
    spec.tokens.push_back("<tool>");        // 267
    spec.token_types.assign(spec.tokens.size(), static_cast<std::int32_t>(TokenType::Normal));
    spec.token_types[265] = spec.token_types[266] = static_cast<std::int32_t>(TokenType::Control);
    spec.token_types[267] = static_cast<std::int32_t>(TokenType::UserDefined);
    spec.bos_id = 265;
    spec.eos_id = 266;
    return spec;
}

// SentencePiece-style vocabulary: <unk>, <s>, </s>, 256 byte tokens (ids 3..258), then scored pieces.
TokenizerSpec sentencepiece_spec() {
    TokenizerSpec spec;
    spec.model = "llama";
    spec.tokens = {"<unk>", "<s>", "</s>"};
    spec.token_types = {2, 3, 3};
    spec.scores = {0, 0, 0};
    for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        spec.tokens.push_back(name);
        spec.token_types.push_back(6);
        spec.scores.push_back(0);
    }
    const std::vector<std::pair<std::string, float>> pieces = {
        {"▁", -100}, {"h", -100}, {"e", -100}, {"l", -100}, {"o", -100}, {"w", -100}, {"r", -100}, {"d", -100},  // 259..266
        {"ll", -1}, {"he", -2}, {"hell", -3}, {"hello", -4}, {"▁hello", -5},                                       // 267..271
        {"▁w", -6}, {"or", -7}, {"▁wor", -8}, {"ld", -9}, {"▁world", -10},                                         // 272..276
    };
    for (const auto& [text, score] : pieces) {
        spec.tokens.push_back(text);
        spec.token_types.push_back(1);
        spec.scores.push_back(score);
    }
    spec.unk_id = 0;
    spec.bos_id = 1;
    spec.eos_id = 2;
    spec.add_bos = true;
    spec.add_space_prefix = true;
    return spec;
}

std::string stream_all(const Tokenizer& tok, const Ids& ids, std::vector<std::string>* chunks = nullptr) {
    kvcache::TokenStreamDecoder stream(tok, true);
    std::string out;
    for (const auto id : ids) {
        const std::string chunk = stream.push(id);
        if (chunks) chunks->push_back(chunk);
        out += chunk;
    }
    return out + stream.finish();
}

}  // namespace

TEST_CASE("byte-level BPE applies merges lowest rank first", "[tokenizer]") {
    const Tokenizer tok(byte_level_spec());
    CHECK(tok.vocab_size() == 268);
    CHECK(tok.model() == "gpt2");
    CHECK(tok.encode("hello world", false) == Ids{259, 264});
    CHECK(tok.encode("hellol", false) == Ids{259, 'l'});
    // "he" ranks before "ll" but "ll" must still form inside "hell": h e l l -> he l l -> he ll -> hell
    CHECK(tok.encode("hell", false) == Ids{258});
    // No merge crosses a pre-token boundary: "o w" stays apart even though "Ġw" exists.
    CHECK(tok.encode("o world", false) == Ids{'o', 264});
    CHECK(tok.encode("x", false) == Ids{'x'});
    CHECK(tok.encode(" ", false) == Ids{' '});
    CHECK(tok.encode("", false).empty());
    CHECK(tok.decode(Ids{259, 264}) == "hello world");
}

TEST_CASE("byte-level BPE encodes every byte, including malformed UTF-8", "[tokenizer]") {
    const Tokenizer tok(byte_level_spec());
    CHECK(tok.encode("\xC3\xA9", false) == Ids{0xC3, 0xA9});  // é has no merge: two byte symbols
    const std::string bad = "a\xFF\xC3(\x80z";
    const Ids ids = tok.encode(bad, false);
    CHECK(ids.size() == bad.size());
    CHECK(tok.decode(ids) == bad);
}

TEST_CASE("add_special follows the add_bos / add_eos flags", "[tokenizer]") {
    auto spec = byte_level_spec();
    spec.add_bos = true;
    spec.add_eos = true;
    const Tokenizer tok(spec);
    CHECK(tok.encode("hello", true) == Ids{265, 259, 266});
    CHECK(tok.encode("hello", false) == Ids{259});
    CHECK(tok.encode("", true) == Ids{265, 266});
    CHECK(tok.add_bos());
    CHECK(tok.add_eos());
    const Tokenizer plain(byte_level_spec());
    CHECK(plain.encode("hello", true) == Ids{259});
}

TEST_CASE("special-token text is parsed only when asked; user-defined tokens always", "[tokenizer]") {
    const Tokenizer tok(byte_level_spec());
    CHECK(tok.encode("<|im_start|>hello<|im_end|>", false, true) == Ids{265, 259, 266});
    const Ids plain = tok.encode("<|im_start|>hello", false, false);
    CHECK(plain.size() > 2);
    CHECK(std::find(plain.begin(), plain.end(), 265) == plain.end());
    CHECK(tok.decode(plain) == "<|im_start|>hello");
    CHECK(tok.encode("a<tool>b", false, false) == Ids{'a', 267, 'b'});
    CHECK(tok.encode("<|im_start|><|im_start|>", false, true) == Ids{265, 265});
    CHECK(tok.encode("<|im_start", false, true) == tok.encode("<|im_start", false, false));
    // Rendering of control tokens when decoding.
    CHECK(tok.decode(Ids{265, 259, 266}, true) == "<|im_start|>hello<|im_end|>");
    CHECK(tok.decode(Ids{265, 259, 266}, false) == "hello");
    CHECK(tok.decode(Ids{267}, false) == "<tool>");
}

TEST_CASE("token metadata queries", "[tokenizer]") {
    const Tokenizer tok(byte_level_spec());
    CHECK(tok.bos_id() == 265);
    CHECK(tok.eos_id() == 266);
    CHECK(tok.unk_id() == -1);
    CHECK(tok.pad_id() == -1);
    CHECK(tok.is_control(265));
    CHECK(tok.is_special(265));
    CHECK_FALSE(tok.is_control(267));
    CHECK(tok.is_special(267));
    CHECK_FALSE(tok.is_special(259));
    CHECK(tok.token_type(267) == TokenType::UserDefined);
    CHECK(tok.is_end_of_generation(266));
    CHECK_FALSE(tok.is_end_of_generation(259));
    CHECK(tok.token_id("Ġworld") == 264);
    CHECK_FALSE(tok.token_id("nope").has_value());
    CHECK(tok.token_text(264) == "Ġworld");
    CHECK(tok.token_to_piece(264) == " world");
    CHECK(tok.token_to_piece(265, false).empty());
    CHECK(tok.token_to_piece(265, true) == "<|im_start|>");
    CHECK(tok.pre_tokenizer() == "gpt2");
    CHECK(tok.chat_template().empty());
}

TEST_CASE("decode and piece lookups reject ids outside the vocabulary", "[tokenizer][errors]") {
    const Tokenizer tok(byte_level_spec());
    CHECK_THROWS_AS(tok.decode(Ids{1, 268}), kvcache::IndexError);
    CHECK_THROWS_AS(tok.decode(Ids{-1}), kvcache::IndexError);
    CHECK_THROWS_AS(tok.token_to_piece(100000), kvcache::IndexError);
    CHECK_THROWS_AS(tok.token_text(-5), kvcache::IndexError);
    CHECK_THROWS_AS(tok.is_special(268), kvcache::IndexError);
    CHECK_THROWS_AS(tok.is_end_of_generation(268), kvcache::IndexError);
    kvcache::TokenStreamDecoder stream(tok);
    CHECK_THROWS_AS(stream.push(268), kvcache::IndexError);
    CHECK_THROWS_WITH(tok.decode(Ids{268}), Catch::Contains("268"));
}

TEST_CASE("encode refuses texts over 512 MiB", "[tokenizer][errors]") {
    const Tokenizer tok(byte_level_spec());
    // A valid but untouched mapping: the check must fire before a single byte is read.
    const std::size_t size = (std::size_t{1} << 29) + 1;
    void* p = mmap(nullptr, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    REQUIRE(p != MAP_FAILED);
    CHECK_THROWS_AS(tok.encode(std::string_view(static_cast<const char*>(p), size)), kvcache::CapacityError);
    munmap(p, size);
}

TEST_CASE("malformed tokenizer specs are FormatErrors", "[tokenizer][errors]") {
    using kvcache::FormatError;
    auto spec = byte_level_spec();
    SECTION("empty vocabulary") {
        spec.tokens.clear();
        spec.token_types.clear();
        spec.merges.clear();
        CHECK_THROWS_AS(Tokenizer(spec), FormatError);
    }
    SECTION("token types of another length") {
        spec.token_types.pop_back();
        CHECK_THROWS_WITH(Tokenizer(spec), Catch::Contains("267") && Catch::Contains("268"));
    }
    SECTION("scores of another length") {
        spec.scores = {1.0f, 2.0f};
        CHECK_THROWS_AS(Tokenizer(spec), FormatError);
    }
    SECTION("unknown token type") {
        spec.token_types[5] = 9;
        CHECK_THROWS_AS(Tokenizer(spec), FormatError);
    }
    SECTION("special id outside the vocabulary") {
        spec.eos_id = 268;
        CHECK_THROWS_AS(Tokenizer(spec), FormatError);
    }
    SECTION("unknown model") {
        spec.model = "wordpiece";
        CHECK_THROWS_WITH(Tokenizer(spec), Catch::Contains("wordpiece"));
    }
    SECTION("unknown pre-tokenizer") {
        spec.pre = "martian";
        CHECK_THROWS_WITH(Tokenizer(spec), Catch::Contains("martian"));
    }
    SECTION("merge without a separator") {
        spec.merges.push_back("hello");
        CHECK_THROWS_AS(Tokenizer(spec), FormatError);
    }
    SECTION("merge naming unknown symbols") {
        spec.merges.push_back("q z");
        CHECK_THROWS_AS(Tokenizer(spec), FormatError);
    }
    SECTION("SentencePiece vocabulary without scores") {
        auto sp = sentencepiece_spec();
        sp.scores.clear();
        CHECK_THROWS_AS(Tokenizer(sp), FormatError);
    }
}

TEST_CASE("pre-tokenizer splits", "[tokenizer][pretokenize]") {
    using V = std::vector<std::string>;
    CHECK(Tokenizer::pre_tokenize("gpt2", "Hello  world") == V{"Hello", " ", " world"});
    CHECK(Tokenizer::pre_tokenize("gpt2", "it's THEY'RE") == V{"it", "'s", " THEY", "'", "RE"});
    CHECK(Tokenizer::pre_tokenize("gpt2", "a\n\nb") == V{"a", "\n", "\n", "b"});
    CHECK(Tokenizer::pre_tokenize("gpt2", "end   ") == V{"end", "   "});
    CHECK(Tokenizer::pre_tokenize("gpt2", "x 2024!?") == V{"x", " 2024", "!?"});
    CHECK(Tokenizer::pre_tokenize("gpt2", "Привет мир") == V{"Привет", " мир"});
    CHECK(Tokenizer::pre_tokenize("gpt2", "e\u0301") == V{"e", "\u0301"});  // combining mark is not \p{L}
    CHECK(Tokenizer::pre_tokenize("gpt2", "日本語 ٣٤") == V{"日本語", " ٣٤"});
    CHECK(Tokenizer::pre_tokenize("smollm", "x 2024!?") == V{"x", " ", "2", "0", "2", "4", "!?"});
    CHECK(Tokenizer::pre_tokenize("smollm", "a1b") == V{"a", "1", "b"});
    CHECK(Tokenizer::pre_tokenize("llama3", "Hello\n\nworld") == V{"Hello", "\n\n", "world"});
    CHECK(Tokenizer::pre_tokenize("llama3", "  x(hello") == V{" ", " x", "(hello"});
    CHECK(Tokenizer::pre_tokenize("llama3", "x = 12345;") == V{"x", " =", " ", "123", "45", ";"});
    CHECK(Tokenizer::pre_tokenize("llama3", "IT'S") == V{"IT", "'S"});
    CHECK(Tokenizer::pre_tokenize("llama3", "a \n b") == V{"a", " \n", " b"});
    CHECK(Tokenizer::pre_tokenize("qwen2", "x 123") == V{"x", " ", "1", "2", "3"});
    CHECK(Tokenizer::pre_tokenize("gpt2", "").empty());
    CHECK_THROWS_AS(Tokenizer::pre_tokenize("nope", "x"), kvcache::FormatError);
    const auto names = Tokenizer::pre_tokenizers();
    CHECK(std::find(names.begin(), names.end(), "smollm") != names.end());
}

TEST_CASE("Unicode classes and UTF-8 decoding", "[tokenizer][unicode]") {
    using namespace kvcache::unicode;
    CHECK(is_letter(U'a'));
    CHECK(is_letter(U'Ж'));
    CHECK(is_letter(U'語'));
    CHECK_FALSE(is_letter(U'1'));
    CHECK_FALSE(is_letter(U'\u0301'));
    CHECK(is_number(U'٣'));
    CHECK(is_number(U'½'));
    CHECK(is_number(U'Ⅻ'));
    CHECK_FALSE(is_number(U'x'));
    CHECK(is_whitespace(U'\u3000'));
    CHECK(is_whitespace(U'\u00A0'));
    CHECK_FALSE(is_whitespace(U'\u200B'));
    CHECK_FALSE(is_whitespace(U'\x1C'));
    CHECK(decode_utf8("\xF0\x9F\x98\x80", 0).codepoint == U'\U0001F600');
    CHECK(decode_utf8("\xF0\x9F\x98\x80", 0).length == 4);
    CHECK_FALSE(decode_utf8("\xC0\x80", 0).valid);        // overlong
    CHECK_FALSE(decode_utf8("\xED\xA0\x80", 0).valid);    // surrogate
    CHECK_FALSE(decode_utf8("\xE2\x82", 0).valid);        // truncated
    CHECK(decode_utf8("\xE2\x82", 0).length == 1);
    CHECK(utf8_sequence_length(0x80) == 0);
    std::string s;
    append_utf8(s, U'€');
    CHECK(s == "\xE2\x82\xAC");
}

TEST_CASE("SentencePiece BPE: score order, space prefix, byte fallback", "[tokenizer][spm]") {
    const Tokenizer tok(sentencepiece_spec());
    // "▁hello▁world": ll(-1) he(-2) hell(-3) hello(-4) ▁hello(-5) ▁w(-6) or(-7) ▁wor(-8) ld(-9) ▁world(-10)
    CHECK(tok.encode("hello world", true) == Ids{1, 271, 276});
    CHECK(tok.encode("hello world", false) == Ids{271, 276});
    CHECK(tok.decode(Ids{1, 271, 276}, false) == "hello world");
    CHECK(tok.decode(Ids{271, 276}) == "hello world");
    // é (C3 A9) is not a piece: byte fallback, ids 3 + byte.
    CHECK(tok.encode("é", false) == Ids{259, 3 + 0xC3, 3 + 0xA9});
    CHECK(tok.decode(Ids{259, 3 + 0xC3, 3 + 0xA9}) == "é");
    // Two spaces: the first becomes ▁, the prefix another ▁.
    CHECK(tok.encode(" hello", false) == Ids{259, 271});
    CHECK(tok.decode(tok.encode(" hello", false)) == " hello");
    CHECK(tok.encode("", false).empty());
    CHECK(tok.encode("", true) == Ids{1});
    // After a parsed special token the text gets its space prefix again; decode removes it again.
    CHECK(tok.encode("<s>hello", false, true) == Ids{1, 271});
    CHECK(tok.decode(Ids{1, 271}) == "<s>hello");
    CHECK(tok.token_to_piece(271) == " hello");
    CHECK(tok.token_to_piece(3 + 'A') == "A");
    CHECK(tok.token_type(5) == TokenType::Byte);
}

TEST_CASE("SentencePiece BPE without space prefix and with <unk> for missing bytes", "[tokenizer][spm]") {
    auto spec = sentencepiece_spec();
    spec.add_space_prefix = false;
    spec.add_bos = false;
    const Tokenizer tok(spec);
    CHECK(tok.encode("hello", true) == Ids{270});
    CHECK(tok.decode(Ids{271}) == " hello");

    // Drop the byte tokens' Byte type: they no longer serve as fallback, so unknown characters become <unk>.
    auto no_bytes = sentencepiece_spec();
    for (int b = 0; b < 256; ++b) no_bytes.token_types[static_cast<std::size_t>(3 + b)] = 5;  // Unused
    const Tokenizer tok2(no_bytes);
    CHECK(tok2.encode("hé", false) == Ids{259, 260, 0});
}

TEST_CASE("streaming decoder holds back incomplete UTF-8", "[tokenizer][stream]") {
    const Tokenizer tok(byte_level_spec());
    const std::string text = "é😀 hello";
    const Ids ids = tok.encode(text, false);
    std::vector<std::string> chunks;
    CHECK(stream_all(tok, ids, &chunks) == text);
    // é = C3 A9 arrives as two tokens: nothing after the first, the whole character after the second.
    REQUIRE(chunks.size() >= 6);
    CHECK(chunks[0].empty());
    CHECK(chunks[1] == "é");
    CHECK(chunks[2].empty());
    CHECK(chunks[3].empty());
    CHECK(chunks[4].empty());
    CHECK(chunks[5] == "😀");
    for (const auto& c : chunks) CHECK(kvcache::unicode::decode_utf8(c + " ", 0).valid);

    kvcache::TokenStreamDecoder stream(tok);
    CHECK(stream.push(0xE2).empty());
    CHECK(stream.pending() == 1);
    CHECK(stream.push(0x82).empty());
    CHECK(stream.finish() == "\xE2\x82");  // an unfinished character is handed out raw at the end
    CHECK(stream.pending() == 0);
    CHECK(stream.push(0x80) == "\x80");    // a stray continuation byte cannot complete anything: not held
    CHECK(stream.push(265).empty());       // control token, rendering off by default

    const Tokenizer spm(sentencepiece_spec());
    std::vector<std::string> spm_chunks;
    CHECK(stream_all(spm, spm.encode("hello é", true), &spm_chunks) == "<s>hello é");
}

TEST_CASE("SentencePiece BPE matches sentencepiece on a trained 400-piece model", "[tokenizer][spm]") {
    std::ifstream in(std::string(KVCACHE_FIXTURES_DIR) + "/tokenizer/spm_bpe_small.json");
    REQUIRE(in.good());
    const auto fixture = nlohmann::json::parse(in);
    TokenizerSpec spec;
    spec.model = "llama";
    spec.tokens = fixture["tokens"].get<std::vector<std::string>>();
    spec.scores = fixture["scores"].get<std::vector<float>>();
    spec.token_types = fixture["token_types"].get<std::vector<std::int32_t>>();
    spec.unk_id = fixture["unk_id"];
    spec.bos_id = fixture["bos_id"];
    spec.eos_id = fixture["eos_id"];
    spec.add_bos = true;
    const Tokenizer tok(spec);
    REQUIRE(fixture["cases"].size() >= 50);
    for (const auto& c : fixture["cases"]) {
        const std::string text = c["text"];
        INFO("text: " << text);
        const Ids ids = tok.encode(text, false);
        CHECK(ids == c["ids"].get<Ids>());
        CHECK(tok.decode(ids) == c["decoded"].get<std::string>());
        Ids with_bos = ids;
        with_bos.insert(with_bos.begin(), spec.bos_id);
        CHECK(tok.encode(text, true) == with_bos);
    }
}
