// TextVocabulary and vocab.json: words and characters to ids and back, special tokens, every error path.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "kvcache/error.hpp"
#include "kvcache/model/text_vocabulary.hpp"

using namespace kvcache;
using Catch::Matchers::Contains;
using Ids = std::vector<std::int32_t>;

namespace {

TextVocabulary words() {
    return TextVocabulary(TextVocabulary::Level::Word, {"<pad>", "<bos>", "<eos>", "four", "hundred", "and", "twelve"},
                          {0, 1, 2});
}
TextVocabulary digits() {
    return TextVocabulary(TextVocabulary::Level::Char, {"<pad>", "<bos>", "<eos>", "0", "1", "2", "4", "é"}, {0, 1, 2});
}

}  // namespace

TEST_CASE("word level: lowercases, splits at spaces, hyphens and commas", "[vocabulary]") {
    const auto v = words();
    CHECK(v.size() == 7);
    CHECK(v.level() == TextVocabulary::Level::Word);
    CHECK(v.encode("four hundred and twelve") == Ids{3, 4, 5, 6});
    CHECK(v.encode("  Four-HUNDRED,\tand\ntwelve ") == Ids{3, 4, 5, 6});
    CHECK(v.encode("") == Ids{});
    CHECK(v.decode(Ids{1, 3, 4, 6, 2, 0}) == "four hundred twelve");
    CHECK(v.is_special(2));
    CHECK_FALSE(v.is_special(3));
    CHECK_FALSE(v.is_special(-1));
    CHECK_FALSE(v.is_special(99));
}

TEST_CASE("char level: one token per UTF-8 character", "[vocabulary]") {
    const auto v = digits();
    CHECK(v.encode("412") == Ids{6, 4, 5});
    CHECK(v.encode("0é") == Ids{3, 7});
    CHECK(v.decode(Ids{6, 4, 5, 2}) == "412");
    CHECK(v.decode(Ids{7, 3}) == "é0");
    CHECK_THROWS_WITH(v.encode("4\xff"), Contains("not valid UTF-8 at byte 1"));
}

TEST_CASE("unknown words and special tokens in text are FormatErrors naming them", "[vocabulary]") {
    const auto v = words();
    CHECK_THROWS_AS(v.encode("fourty"), FormatError);
    CHECK_THROWS_WITH(v.encode("four fourty"), Contains("word \"fourty\"") && Contains("four hundred and twelve"));
    // typing a control token is just an unknown word: text never becomes an end marker
    CHECK_THROWS_WITH(v.encode("four <eos>"), Contains("\"<eos>\""));
    CHECK_THROWS_WITH(digits().encode("3"), Contains("character \"3\""));
    CHECK_THROWS_AS(v.decode(Ids{7}), IndexError);
    CHECK_THROWS_AS(v.decode(Ids{-1}), IndexError);
}

TEST_CASE("a malformed vocabulary is a ConfigError naming the token", "[vocabulary]") {
    using L = TextVocabulary::Level;
    CHECK_THROWS_AS(TextVocabulary(L::Word, {}, {}), ConfigError);
    CHECK_THROWS_WITH(TextVocabulary(L::Word, {"a", "b", "a"}, {}), Contains("\"a\" appears twice"));
    CHECK_THROWS_AS(TextVocabulary(L::Word, {"a", ""}, {}), ConfigError);
    CHECK_THROWS_WITH(TextVocabulary(L::Word, {"a"}, {1}), Contains("special id 1"));
    CHECK_THROWS_AS(TextVocabulary(L::Word, {"a"}, {-1}), ConfigError);
    CHECK_THROWS_WITH(TextVocabulary(L::Word, {"two words"}, {}), Contains("\"two words\""));
    CHECK_THROWS_AS(TextVocabulary(L::Word, {"Four"}, {}), ConfigError);  // encode lowercases: never matched
    CHECK_THROWS_AS(TextVocabulary(L::Char, {"ab"}, {}), ConfigError);
    CHECK_NOTHROW(TextVocabulary(L::Char, {"<eos>", "a"}, {0}));  // special tokens may be any string
}

TEST_CASE("vocab.json: both sides, and errors naming the key", "[vocabulary]") {
    const std::string good = R"({"source": {"level": "word", "tokens": ["<pad>", "one", "two"], "special": [0]},
                                 "target": {"level": "char", "tokens": ["<eos>", "1", "2"], "special": [0]}})";
    const auto v = Seq2SeqVocabulary::from_json(good);
    CHECK(v.source.encode("two one") == Ids{2, 1});
    CHECK(v.target.decode(Ids{1, 2, 0}) == "12");
    CHECK_THROWS_AS(Seq2SeqVocabulary::from_json("{"), FormatError);
    CHECK_THROWS_WITH(Seq2SeqVocabulary::from_json(R"({"source": {}})"), Contains("\"level\""));
    CHECK_THROWS_WITH(Seq2SeqVocabulary::from_json(R"({"source": {"level": "word", "tokens": ["a"]}})"),
                      Contains("\"target\""));
    CHECK_THROWS_WITH(Seq2SeqVocabulary::from_json(R"({"source": {"level": "bpe", "tokens": []}})"), Contains("bpe"));
    CHECK_THROWS_AS(Seq2SeqVocabulary::from_json(R"({"source": {"level": "word", "tokens": [1]}})"), FormatError);
    CHECK_THROWS_AS(Seq2SeqVocabulary::from_json(R"({"source": {"level": "word", "tokens": "a"}})"), FormatError);
    CHECK_THROWS_AS(
        Seq2SeqVocabulary::from_json(R"({"source": {"level": "word", "tokens": ["a"], "special": [4294967296]}})"),
        FormatError);
    CHECK_THROWS_AS(Seq2SeqVocabulary::from_json(R"({"source": {"level": "word", "tokens": ["a"], "special": 0}})"),
                    FormatError);

    const auto path = std::filesystem::temp_directory_path() / "kvcache_text_vocabulary_test.json";
    std::ofstream(path) << good;
    CHECK(Seq2SeqVocabulary::load(path).source.size() == 3);
    std::ofstream(path) << "[]";
    CHECK_THROWS_WITH(Seq2SeqVocabulary::load(path), Contains(path.string()));
    std::filesystem::remove(path);
    CHECK_THROWS_AS(Seq2SeqVocabulary::load(path), IoError);
}
