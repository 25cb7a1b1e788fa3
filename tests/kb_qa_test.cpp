// QA evaluation: SQuAD's answer normalisation, exact match and F1, and the SQuAD, HotpotQA and JSONL readers.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "kvcache/error.hpp"
#include "kvcache/kb/qa_dataset.hpp"
#include "kvcache/kb/qa_metrics.hpp"

using namespace kvcache;

namespace {
const std::string kFixtures = std::string(KVCACHE_FIXTURES_DIR) + "/kb/";
}

TEST_CASE("normalize_answer follows SQuAD: lower case, no punctuation, no articles, single spaces", "[kb][qa]") {
    CHECK(normalize_answer("The  Quick, Brown fox!") == "quick brown fox");
    CHECK(normalize_answer("An apple a day") == "apple day");
    CHECK(normalize_answer("  theatre\tthen\n") == "theatre then");  // only whole words are articles
    CHECK(normalize_answer("4,200") == "4200");
    CHECK(normalize_answer("\"Ada Kell.\"") == "ada kell");
    CHECK(normalize_answer("caf\xc3\xa9") == "caf\xc3\xa9");  // non-ASCII kept as it is
    CHECK(normalize_answer("") == "");
}

TEST_CASE("exact_match and f1_score take the best gold answer", "[kb][qa]") {
    const std::vector<std::string> gold{"Ada Kell", "the cartographer Ada Kell"};
    CHECK(exact_match("ada kell.", gold) == 1.0);
    CHECK(exact_match("Kell", gold) == 0.0);
    CHECK(f1_score("Ada Kell", gold) == 1.0);
    // "Kell" against "Ada Kell": precision 1, recall 1/2 -> 2/3.
    CHECK(f1_score("Kell", gold) == Approx(2.0 / 3.0));
    // "cartographer named Ada Kell" vs "cartographer Ada Kell": 3 common of 4 and 3 -> 2*(3/4)(1)/(7/4) = 6/7.
    CHECK(f1_score("cartographer named Ada Kell", gold) == Approx(6.0 / 7.0));
    CHECK(f1_score("nothing alike", gold) == 0.0);
    CHECK(f1_score("kell kell kell", std::vector<std::string>{"kell"}) == Approx(0.5));  // multiplicity
    // Unanswerable (no gold answers): only the empty prediction is right.
    CHECK(exact_match("", {}) == 1.0);
    CHECK(f1_score("", {}) == 1.0);
    CHECK(exact_match("1801", {}) == 0.0);
    CHECK(f1_score("1801", {}) == 0.0);
    CHECK(f1_score("the", std::vector<std::string>{"a"}) == 1.0);  // both normalise to nothing
    CHECK(answer_contains("The founder is Ada Kell.", gold) == 1.0);
    CHECK(answer_contains("Ada Kellington", gold) == 0.0);  // whole words only
    CHECK(answer_contains("Kell", gold) == 0.0);
    CHECK(answer_contains("", {}) == 1.0);
    CHECK(answer_contains("no", {}) == 0.0);
}

TEST_CASE("read_qa_dataset reads SQuAD v2.0 with unanswerable questions", "[kb][qa]") {
    const auto items = read_qa_dataset(kFixtures + "squad_tiny.json");
    REQUIRE(items.size() == 5);
    CHECK(items[0].id == "v1");
    CHECK(items[0].question == "Who founded Veloria?");
    CHECK(items[0].answers == std::vector<std::string>{"Ada Kell", "the cartographer Ada Kell"});  // de-duplicated
    CHECK(items[0].title == "Veloria");
    CHECK(items[0].context.rfind("Veloria is a fictional city", 0) == 0);
    CHECK(items[2].answers.empty());  // is_impossible
    CHECK(items[3].context.rfind("The Kell Institute", 0) == 0);
    CHECK(items[4].title == "Brisklow");
    CHECK(detect_qa_format(R"({"data": []})") == QAFormat::Squad);
}

TEST_CASE("read_qa_dataset reads HotpotQA JSON and JSONL", "[kb][qa]") {
    const auto hotpot = read_qa_dataset(kFixtures + "hotpot_tiny.json");
    REQUIRE(hotpot.size() == 2);
    CHECK(hotpot[0].id == "h1");
    CHECK(hotpot[0].answers == std::vector<std::string>{"Veloria"});
    CHECK(hotpot[0].type == "bridge");
    CHECK(hotpot[0].context == "Ada Kell: Ada Kell was a cartographer. She drew the Orun map.\nVeloria: Veloria was founded by Ada Kell.");
    CHECK(hotpot[1].context.empty());

    const auto jsonl = read_qa_dataset(kFixtures + "qa_tiny.jsonl");
    REQUIRE(jsonl.size() == 2);
    CHECK(jsonl[0].id == "j1");
    CHECK(jsonl[0].answers.size() == 2);
    CHECK(jsonl[0].type == "single");
    CHECK(jsonl[1].id == "1");  // numbered when the file gives no id
    CHECK(jsonl[1].answers == std::vector<std::string>{"blue glass"});
    CHECK(std::string(qa_format_name(detect_qa_format("{\"question\": \"q\", \"answer\": \"a\"}\n"))) == "jsonl");
}

TEST_CASE("Malformed QA files are FormatErrors naming the place", "[kb][qa][errors]") {
    CHECK_THROWS_WITH(parse_qa_dataset("{\"question\": \"q\", \"answer\": \"a\"}\n{not json}\n", "x.jsonl"),
                      Catch::Contains("line 2"));
    CHECK_THROWS_WITH(parse_qa_dataset("{\"question\": \"q\"}\n", "x.jsonl"), Catch::Contains("answer"));
    CHECK_THROWS_AS(parse_qa_dataset("{\"answers\": [\"a\"]}\n", "x.jsonl"), FormatError);
    CHECK_THROWS_AS(parse_qa_dataset("{\"question\": \"q\", \"answers\": [3]}\n", "x.jsonl"), FormatError);
    CHECK_THROWS_AS(parse_qa_dataset(R"({"data": [{"paragraphs": [{"qas": []}]}]})", "s.json"), FormatError);
    CHECK_THROWS_AS(parse_qa_dataset(R"({"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "q"}]}]}]})",
                                     "s.json"),
                    FormatError);
    CHECK_THROWS_AS(parse_qa_dataset(R"({"data": 5})", "s.json"), FormatError);
    CHECK_THROWS_AS(parse_qa_dataset(R"([{"question": "q"}])", "h.json"), FormatError);
    CHECK_THROWS_AS(parse_qa_dataset(R"([{"question": "q", "answer": "a", "context": [["t", "not a list"]]}])", "h.json"),
                    FormatError);
    CHECK_THROWS_AS(parse_qa_dataset("[{\"question\": ", "h.json"), FormatError);
    CHECK_THROWS_AS(parse_qa_dataset(std::string("{\"question\": \"q\0\"}", 17), "bin.jsonl"), FormatError);
    CHECK_THROWS_AS(read_qa_dataset(kFixtures + "does_not_exist.json"), IoError);
    CHECK(parse_qa_dataset("", "empty.jsonl").empty());
}
