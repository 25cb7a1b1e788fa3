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
#include "tokenizer_specs.hpp"

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
    TokenizerSpec spec = kvcache::testing::sentencepiece_byte_spec();
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
    kvcache::TokenStreamDecoder stream(tok, {.render_special = true});
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
    CHECK(tok.encode("hello world", {.add_special = false}) == Ids{259, 264});
    CHECK(tok.encode("hellol", {.add_special = false}) == Ids{259, 'l'});
    // "he" ranks before "ll" but "ll" must still form inside "hell": h e l l -> he l l -> he ll -> hell
    CHECK(tok.encode("hell", {.add_special = false}) == Ids{258});
    // No merge crosses a pre-token boundary: "o w" stays apart even though "Ġw" exists.
    CHECK(tok.encode("o world", {.add_special = false}) == Ids{'o', 264});
    CHECK(tok.encode("x", {.add_special = false}) == Ids{'x'});
    CHECK(tok.encode(" ", {.add_special = false}) == Ids{' '});
    CHECK(tok.encode("", {.add_special = false}).empty());
    CHECK(tok.decode(Ids{259, 264}) == "hello world");
}

TEST_CASE("byte-level BPE encodes every byte, including malformed UTF-8", "[tokenizer]") {
    const Tokenizer tok(byte_level_spec());
    CHECK(tok.encode("\xC3\xA9", {.add_special = false}) == Ids{0xC3, 0xA9});  // é has no merge: two byte symbols
    const std::string bad = "a\xFF\xC3(\x80z";
    const Ids ids = tok.encode(bad, {.add_special = false});
    CHECK(ids.size() == bad.size());
    CHECK(tok.decode(ids) == bad);
}

TEST_CASE("add_special follows the add_bos / add_eos flags", "[tokenizer]") {
    auto spec = byte_level_spec();
    spec.add_bos = true;
    spec.add_eos = true;
    const Tokenizer tok(spec);
    CHECK(tok.encode("hello", {.add_special = true}) == Ids{265, 259, 266});
    CHECK(tok.encode("hello", {.add_special = false}) == Ids{259});
    CHECK(tok.encode("", {.add_special = true}) == Ids{265, 266});
    CHECK(tok.add_bos());
    CHECK(tok.add_eos());
    const Tokenizer plain(byte_level_spec());
    CHECK(plain.encode("hello", {.add_special = true}) == Ids{259});
}

TEST_CASE("special-token text is parsed only when asked; user-defined tokens always", "[tokenizer]") {
    const Tokenizer tok(byte_level_spec());
    CHECK(tok.encode("<|im_start|>hello<|im_end|>", {.add_special = false, .parse_special = true}) == Ids{265, 259, 266});
    const Ids plain = tok.encode("<|im_start|>hello", {.add_special = false});
    CHECK(plain.size() > 2);
    CHECK(std::find(plain.begin(), plain.end(), 265) == plain.end());
    CHECK(tok.decode(plain) == "<|im_start|>hello");
    CHECK(tok.encode("a<tool>b", {.add_special = false}) == Ids{'a', 267, 'b'});
    CHECK(tok.encode("<|im_start|><|im_start|>", {.add_special = false, .parse_special = true}) == Ids{265, 265});
    CHECK(tok.encode("<|im_start", {.add_special = false, .parse_special = true}) == tok.encode("<|im_start", {.add_special = false}));
    // Rendering of control tokens when decoding.
    CHECK(tok.decode(Ids{265, 259, 266}, {.render_special = true}) == "<|im_start|>hello<|im_end|>");
    CHECK(tok.decode(Ids{265, 259, 266}, {.render_special = false}) == "hello");
    CHECK(tok.decode(Ids{267}, {.render_special = false}) == "<tool>");
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
    CHECK(tok.token_to_piece(265, {.render_special = false}).empty());
    CHECK(tok.token_to_piece(265, {.render_special = true}) == "<|im_start|>");
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
    kvcache::TokenStreamDecoder stream(tok, {.render_special = false});
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
    CHECK(tok.encode("hello world", {.add_special = true}) == Ids{1, 271, 276});
    CHECK(tok.encode("hello world", {.add_special = false}) == Ids{271, 276});
    CHECK(tok.decode(Ids{1, 271, 276}, {.render_special = false}) == "hello world");
    CHECK(tok.decode(Ids{271, 276}) == "hello world");
    // é (C3 A9) is not a piece: byte fallback, ids 3 + byte.
    CHECK(tok.encode("é", {.add_special = false}) == Ids{259, 3 + 0xC3, 3 + 0xA9});
    CHECK(tok.decode(Ids{259, 3 + 0xC3, 3 + 0xA9}) == "é");
    // Two spaces: the first becomes ▁, the prefix another ▁.
    CHECK(tok.encode(" hello", {.add_special = false}) == Ids{259, 271});
    CHECK(tok.decode(tok.encode(" hello", {.add_special = false})) == " hello");
    CHECK(tok.encode("", {.add_special = false}).empty());
    CHECK(tok.encode("", {.add_special = true}) == Ids{1});
    // After a parsed special token the text gets its space prefix again; decode removes it again.
    CHECK(tok.encode("<s>hello", {.add_special = false, .parse_special = true}) == Ids{1, 271});
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
    CHECK(tok.encode("hello", {.add_special = true}) == Ids{270});
    CHECK(tok.decode(Ids{271}) == " hello");

    // Drop the byte tokens' Byte type: they no longer serve as fallback, so unknown characters become <unk>.
    auto no_bytes = sentencepiece_spec();
    for (int b = 0; b < 256; ++b) no_bytes.token_types[static_cast<std::size_t>(3 + b)] = 5;  // Unused
    const Tokenizer tok2(no_bytes);
    CHECK(tok2.encode("hé", {.add_special = false}) == Ids{259, 260, 0});
}

TEST_CASE("streaming decoder holds back incomplete UTF-8", "[tokenizer][stream]") {
    const Tokenizer tok(byte_level_spec());
    const std::string text = "é😀 hello";
    const Ids ids = tok.encode(text, {.add_special = false});
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

    kvcache::TokenStreamDecoder stream(tok, {.render_special = false});
    CHECK(stream.push(0xE2).empty());
    CHECK(stream.pending() == 1);
    CHECK(stream.push(0x82).empty());
    CHECK(stream.finish() == "\xE2\x82");  // an unfinished character is handed out raw at the end
    CHECK(stream.pending() == 0);
    CHECK(stream.push(0x80) == "\x80");    // a stray continuation byte cannot complete anything: not held
    CHECK(stream.push(265).empty());       // control token, rendering off by default

    const Tokenizer spm(sentencepiece_spec());
    std::vector<std::string> spm_chunks;
    CHECK(stream_all(spm, spm.encode("hello é", {.add_special = true}), &spm_chunks) == "<s>hello é");
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
        const Ids ids = tok.encode(text, {.add_special = false});
        CHECK(ids == c["ids"].get<Ids>());
        CHECK(tok.decode(ids) == c["decoded"].get<std::string>());
        Ids with_bos = ids;
        with_bos.insert(with_bos.begin(), spec.bos_id);
        CHECK(tok.encode(text, {.add_special = true}) == with_bos);
    }
}

// ---- from GGUF metadata ----

namespace {

// Writes a GGUF v3 image with metadata only (no tensors), for testing from_gguf on small and broken files.
class GgufImage {
public:
    void add_string(const std::string& key, const std::string& value) {
        header(key, 8);
        string(value);
        ++count_;
    }
    void add_u32(const std::string& key, std::uint32_t value) {
        header(key, 4);
        pod(value);
        ++count_;
    }
    void add_bool(const std::string& key, bool value) {
        header(key, 7);
        pod(static_cast<std::uint8_t>(value));
        ++count_;
    }
    void add_string_array(const std::string& key, const std::vector<std::string>& values) {
        header(key, 9);
        pod(std::uint32_t{8});
        pod(static_cast<std::uint64_t>(values.size()));
        for (const auto& v : values) string(v);
        ++count_;
    }
    void add_i32_array(const std::string& key, const std::vector<std::int32_t>& values) {
        header(key, 9);
        pod(std::uint32_t{5});
        pod(static_cast<std::uint64_t>(values.size()));
        for (const auto v : values) pod(v);
        ++count_;
    }
    void add_f32_array(const std::string& key, const std::vector<float>& values) {
        header(key, 9);
        pod(std::uint32_t{6});
        pod(static_cast<std::uint64_t>(values.size()));
        for (const auto v : values) pod(v);
        ++count_;
    }
    std::vector<std::byte> bytes() const {
        std::vector<std::byte> out;
        const auto put = [&](const void* p, std::size_t n) {
            const auto* b = static_cast<const std::byte*>(p);
            out.insert(out.end(), b, b + n);
        };
        put("GGUF", 4);
        const std::uint32_t version = 3;
        const std::uint64_t tensors = 0;
        put(&version, 4);
        put(&tensors, 8);
        put(&count_, 8);
        out.insert(out.end(), body_.begin(), body_.end());
        while (out.size() % 32 != 0) out.push_back(std::byte{0});
        return out;
    }

private:
    template <typename T>
    void pod(T v) {
        const auto* b = reinterpret_cast<const std::byte*>(&v);
        body_.insert(body_.end(), b, b + sizeof v);
    }
    void string(const std::string& s) {
        pod(static_cast<std::uint64_t>(s.size()));
        const auto* b = reinterpret_cast<const std::byte*>(s.data());
        body_.insert(body_.end(), b, b + s.size());
    }
    void header(const std::string& key, std::uint32_t type) {
        string(key);
        pod(type);
    }
    std::vector<std::byte> body_;
    std::uint64_t count_ = 0;
};

GgufImage image_of(const TokenizerSpec& spec) {
    GgufImage img;
    img.add_string("general.architecture", "llama");
    img.add_string("tokenizer.ggml.model", spec.model);
    if (spec.model == "gpt2") img.add_string("tokenizer.ggml.pre", spec.pre);
    img.add_string_array("tokenizer.ggml.tokens", spec.tokens);
    img.add_i32_array("tokenizer.ggml.token_type", spec.token_types);
    if (!spec.merges.empty()) img.add_string_array("tokenizer.ggml.merges", spec.merges);
    if (!spec.scores.empty()) img.add_f32_array("tokenizer.ggml.scores", spec.scores);
    if (spec.bos_id >= 0) img.add_u32("tokenizer.ggml.bos_token_id", static_cast<std::uint32_t>(spec.bos_id));
    if (spec.eos_id >= 0) img.add_u32("tokenizer.ggml.eos_token_id", static_cast<std::uint32_t>(spec.eos_id));
    if (spec.unk_id >= 0) img.add_u32("tokenizer.ggml.unknown_token_id", static_cast<std::uint32_t>(spec.unk_id));
    return img;
}

std::filesystem::path model_path() {
    if (const char* env = std::getenv("KVCACHE_MODEL")) return env;
    const char* src = std::getenv("KVCACHE_SOURCE_DIR");
    return std::filesystem::path(src ? src : KVCACHE_SOURCE_DIR) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

nlohmann::json load_fixture() {
    std::ifstream in(std::string(KVCACHE_FIXTURES_DIR) + "/tokenizer/smollm2.json");
    REQUIRE(in.good());
    return nlohmann::json::parse(in);
}

}  // namespace

TEST_CASE("from_gguf reads the tokenizer keys of a small file", "[tokenizer][gguf]") {
    const auto bytes = image_of(byte_level_spec()).bytes();
    const auto file = kvcache::gguf::File::from_memory(bytes);
    const Tokenizer tok = Tokenizer::from_gguf(file);
    CHECK(tok.vocab_size() == 268);
    CHECK(tok.encode("hello world", {.add_special = true}) == Ids{259, 264});  // gpt2 model: no BOS unless the file asks
    CHECK(tok.bos_id() == 265);
    CHECK(tok.eos_id() == 266);
    CHECK_FALSE(tok.add_bos());

    // A SentencePiece file without add_bos_token / add_space_prefix gets llama.cpp's defaults (both on).
    const auto sp_bytes = image_of(sentencepiece_spec()).bytes();
    const auto sp_file = kvcache::gguf::File::from_memory(sp_bytes);
    const Tokenizer sp = Tokenizer::from_gguf(sp_file);
    CHECK(sp.add_bos());
    CHECK(sp.encode("hello world", {.add_special = true}) == Ids{1, 271, 276});

    auto img = image_of(byte_level_spec());
    img.add_bool("tokenizer.ggml.add_bos_token", true);
    img.add_string("tokenizer.chat_template", "<|im_start|>");
    const auto flagged_bytes = img.bytes();
    const auto flagged_file = kvcache::gguf::File::from_memory(flagged_bytes);
    const Tokenizer flagged = Tokenizer::from_gguf(flagged_file);
    CHECK(flagged.encode("hello", {.add_special = true}) == Ids{265, 259});
    CHECK(flagged.chat_template() == "<|im_start|>");
}

TEST_CASE("from_gguf rejects files without or with inconsistent tokenizer keys", "[tokenizer][gguf][errors]") {
    using kvcache::FormatError;
    SECTION("no tokenizer at all") {
        GgufImage img;
        img.add_string("general.architecture", "llama");
        const auto bytes = img.bytes();
        const auto file = kvcache::gguf::File::from_memory(bytes);
        CHECK_THROWS_WITH(Tokenizer::from_gguf(file), Catch::Contains("tokenizer"));
        CHECK_THROWS_AS(Tokenizer::from_gguf(file), FormatError);
    }
    SECTION("token types of another length") {
        auto spec = byte_level_spec();
        spec.token_types.resize(100);
        const auto bytes = image_of(spec).bytes();
        const auto file = kvcache::gguf::File::from_memory(bytes);
        CHECK_THROWS_AS(Tokenizer::from_gguf(file), FormatError);
    }
    SECTION("scores of another length") {
        auto spec = sentencepiece_spec();
        spec.scores.resize(7);
        const auto bytes = image_of(spec).bytes();
        const auto file = kvcache::gguf::File::from_memory(bytes);
        CHECK_THROWS_AS(Tokenizer::from_gguf(file), FormatError);
    }
    SECTION("tokens of the wrong type") {
        GgufImage img;
        img.add_string("tokenizer.ggml.model", "gpt2");
        img.add_i32_array("tokenizer.ggml.tokens", {1, 2, 3});
        const auto bytes = img.bytes();
        const auto file = kvcache::gguf::File::from_memory(bytes);
        CHECK_THROWS_AS(Tokenizer::from_gguf(file), FormatError);
    }
    SECTION("special id beyond the vocabulary") {
        auto img = image_of(byte_level_spec());
        img.add_u32("tokenizer.ggml.padding_token_id", 5000);
        const auto bytes = img.bytes();
        const auto file = kvcache::gguf::File::from_memory(bytes);
        CHECK_THROWS_WITH(Tokenizer::from_gguf(file), Catch::Contains("5000"));
    }
}

TEST_CASE("SmolLM2: golden ids from Hugging Face tokenizers", "[tokenizer][model]") {
    const auto path = model_path();
    INFO("model: " << path);
    REQUIRE(std::filesystem::exists(path));
    const auto file = kvcache::gguf::File::open(path);
    const Tokenizer tok = Tokenizer::from_gguf(file);
    const auto fixture = load_fixture();
    CHECK(tok.model() == "gpt2");
    CHECK(tok.pre_tokenizer() == "smollm");
    CHECK(tok.vocab_size() == 49152);
    CHECK(tok.add_bos() == fixture["add_bos_token"].get<bool>());
    CHECK_FALSE(tok.add_eos());
    CHECK(tok.chat_template() == fixture["chat_template"].get<std::string>());
    CHECK(tok.token_id("<|im_start|>") == 1);
    CHECK(tok.is_end_of_generation(2));  // <|im_end|>
    CHECK(tok.is_end_of_generation(0));  // <|endoftext|>

    REQUIRE(fixture["cases"].size() >= 30);
    for (const auto& c : fixture["cases"]) {
        const std::string text = c["text"];
        const Ids expected = c["ids"].get<Ids>();
        INFO("text: " << text);
        const Ids ids = tok.encode(text, {.add_special = true, .parse_special = true});
        CHECK(ids == expected);
        CHECK(tok.decode(ids) == text);
        CHECK(stream_all(tok, ids) == text);
    }
    for (const auto& c : fixture["special_off"]) {
        const std::string text = c["text"];
        INFO("text: " << text);
        const Ids ids = tok.encode(text, {.add_special = true});
        CHECK(ids == c["ids"].get<Ids>());
        CHECK(tok.decode(ids) == text);
        for (const auto id : ids) CHECK_FALSE(tok.is_special(id));
    }
}

TEST_CASE("SmolLM2: streaming splits multi-byte characters across tokens", "[tokenizer][model][stream]") {
    const auto file = kvcache::gguf::File::open(model_path());
    const Tokenizer tok = Tokenizer::from_gguf(file);
    const std::string text = "Emoji: 😀🎉 and 日本語 ok";
    const Ids ids = tok.encode(text, {.add_special = false});
    // At least one token must end in the middle of a character for this test to mean anything.
    std::size_t partial = 0;
    for (const auto id : ids) {
        const std::string piece = tok.token_to_piece(id);
        const auto last = static_cast<unsigned char>(piece.back());
        partial += (last >= 0xC0) || (last >= 0x80 && piece.size() == 1);
    }
    CHECK(partial > 0);
    std::vector<std::string> chunks;
    CHECK(stream_all(tok, ids, &chunks) == text);
    for (const auto& chunk : chunks) {
        for (std::size_t pos = 0; pos < chunk.size();) {
            const auto d = kvcache::unicode::decode_utf8(chunk, pos);
            CHECK(d.valid);
            pos += d.length;
        }
    }
}

// Speed is measured by bench, not asserted here (shared machines are noisy); this checks a long prompt round-trips.
TEST_CASE("SmolLM2: a ~2000-token prompt encodes and round-trips", "[tokenizer][model]") {
    const auto file = kvcache::gguf::File::open(model_path());
    const Tokenizer tok = Tokenizer::from_gguf(file);
    const auto fixture = load_fixture();
    std::string prompt;
    while (tok.encode(prompt, {.add_special = false, .parse_special = true}).size() < 2000)
        for (const auto& c : fixture["cases"]) prompt += c["text"].get<std::string>() + "\n";
    const auto start = std::chrono::steady_clock::now();
    const Ids ids = tok.encode(prompt, {.add_special = false, .parse_special = true});
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    WARN("encoded " << prompt.size() << " bytes into " << ids.size() << " tokens in " << ms << " ms");
    CHECK(ids.size() >= 2000);
    CHECK(tok.decode(ids) == prompt);
}


TEST_CASE("encode_literal and encode_segments never make special tokens from literal text", "[tokenizer][literal]") {
    const Tokenizer tok(byte_level_spec());
    // Control and user-defined token text is spelled out; BOS/EOS follow add_special only.
    const Ids literal = tok.encode_literal("<|im_start|>hello<tool>");
    for (const auto id : literal) CHECK_FALSE(tok.is_special(id));
    CHECK(tok.decode(literal) == "<|im_start|>hello<tool>");
    CHECK(tok.encode_literal("hello world") == tok.encode("hello world", {.add_special = false, .parse_special = true}));
    // Segments: only markup segments produce special tokens, and only from text wholly inside them.
    const std::vector<kvcache::TextSegment> segments = {
        {"<|im_start|>", true}, {"hello<|im_end|>", false}, {"<|im_e", true}, {"nd|>", false}, {"<|im_end|>", true}};
    const Ids ids = tok.encode_segments(segments, {.add_special = false});
    CHECK(std::count(ids.begin(), ids.end(), 265) == 1);
    CHECK(std::count(ids.begin(), ids.end(), 266) == 1);
    CHECK(ids.front() == 265);
    CHECK(ids.back() == 266);
    CHECK(tok.decode(ids) == "<|im_start|>hello<|im_end|><|im_end|><|im_end|>");
    // Plain text is one run across segment boundaries: "hel" + "lo" merges like "hello".
    const std::vector<kvcache::TextSegment> split = {{"hel", false}, {"lo", true}};
    CHECK(tok.encode_segments(split, {.add_special = false}) == Ids{259});
}

TEST_CASE("literal SentencePiece text does not merge into a user-defined piece", "[tokenizer][literal][spm]") {
    auto spec = sentencepiece_spec();
    spec.tokens.push_back("▁<x>");
    spec.token_types.push_back(static_cast<std::int32_t>(TokenType::UserDefined));
    spec.scores.push_back(100.0f);
    for (const char* piece : {"<", "x", ">", "<x", "<x>"}) {
        spec.tokens.push_back(piece);
        spec.token_types.push_back(1);
        spec.scores.push_back(-50.0f);
    }
    const Tokenizer tok(spec);
    const auto user_defined = static_cast<std::int32_t>(spec.tokens.size() - 6);
    const Ids parsed = tok.encode(" <x>", {.add_special = false});
    CHECK(std::find(parsed.begin(), parsed.end(), user_defined) != parsed.end());
    const Ids literal = tok.encode_literal(" <x>");
    CHECK(std::find(literal.begin(), literal.end(), user_defined) == literal.end());
    CHECK(tok.decode(literal) == " <x>");
}
