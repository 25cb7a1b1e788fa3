// The knowledge base: ingest (files, directories, text), BM25 search, re-ingest and removal, and the errors
// that must leave the database as it was (malformed documents, empty knowledge base, corrupt or truncated files).
#include <catch2/catch.hpp>
#include <sqlite3.h>

#include <filesystem>
#include <string>
#include <vector>

#include "kb_test_support.hpp"
#include "kvcache/kb/knowledge_base.hpp"

using namespace kvcache;
using kb_test::tokenizer;
using kb_test::write_file;

namespace {

/// Twelve documents about fictional places, each with its own facts; the river fact is in chunk 2 of 3 of
/// one document only.
void write_corpus(const std::filesystem::path& dir) {
    const char* towns[] = {"Amberfold", "Brisklow", "Corvane", "Dunmere", "Elsport", "Fennick",
                           "Galloway Rise", "Harrowdeep", "Istrel", "Jorvale", "Kestwick", "Lumen Bay"};
    for (int i = 0; i < 12; ++i) {
        std::string text = std::string("# ") + towns[i] + "\n\n";
        for (int p = 0; p < 3; ++p) {
            for (int s = 0; s < 6; ++s) {
                text += std::string(towns[i]) + " has a market that opens on day " + std::to_string(p * 6 + s) +
                        " of the season, and the traders there sell wool, salt and lamp oil. ";
            }
            if (i == 7 && p == 1) text += "The river that runs through Harrowdeep is called the Quillon. ";
            text += "\n\n";
        }
        write_file(dir / (std::string(i % 3 == 0 ? "notes/" : "") + "town" + std::to_string(i) +
                          (i % 2 ? ".md" : ".txt")),
                   text);
    }
    write_file(dir / "picture.png", std::string("\x89PNG\r\n\x1a\n\0\0", 10));  // skipped by the walk
}

}  // namespace

TEST_CASE("KnowledgeBase ingests a directory and ranks the chunk holding a fact first", "[kb][search]") {
    const auto dir = kb_test::scratch_dir("search");
    write_corpus(dir / "docs");
    auto kb = KnowledgeBase::open(dir / "kb.sqlite");
    const std::vector<std::filesystem::path> paths{dir / "docs"};
    const auto results = kb.ingest_paths(paths, tokenizer(), ChunkingOptions{96, 16});
    REQUIRE(results.size() == 12);
    for (const auto& r : results) CHECK(r.status == IngestStatus::Added);
    CHECK(kb.documents().size() == 12);
    CHECK(kb.chunk_count() > 24);

    const auto hits = kb.search("What is the name of the river of Harrowdeep?", 3);
    REQUIRE_FALSE(hits.empty());
    CHECK(hits[0].text.find("Quillon") != std::string::npos);
    CHECK(hits[0].source == (std::filesystem::absolute(dir / "docs" / "town7.md")).lexically_normal().string());
    CHECK(hits[0].score > 0);
    for (std::size_t i = 1; i < hits.size(); ++i) CHECK(hits[i - 1].score >= hits[i].score);
    // The offset points at the chunk's text in the document.
    const std::string doc = kb.document_text(hits[0].source);
    CHECK(doc.substr(hits[0].byte_offset, hits[0].text.size()) == hits[0].text);

    // Syntax of FTS5 in a query is just words; a query of function words only has no hits.
    CHECK_NOTHROW(kb.search("Quillon\" OR NEAR( -- AND *", 2));
    CHECK(kb.search("what is the", 2).empty());
    CHECK(fts5_query_for("The River, of Harrowdeep?") == "\"river\" OR \"harrowdeep\"");
    CHECK_THROWS_AS(kb.search("river", 0), ConfigError);

    // The knowledge text holds every document once, by file name.
    const std::string knowledge = kb.knowledge_text();
    CHECK(knowledge.find("Document: town7.md\n# Harrowdeep") != std::string::npos);
    CHECK(knowledge.find("Quillon") != std::string::npos);
}

TEST_CASE("Re-ingesting a changed file replaces its chunks; removing a document removes them", "[kb][ingest]") {
    const auto dir = kb_test::scratch_dir("reingest");
    auto kb = KnowledgeBase::open(dir / "kb.sqlite");
    write_file(dir / "a.txt", "Amberfold exports copper kettles. Its mayor is Orla Venn.\n");
    write_file(dir / "b.txt", "Brisklow is known for glass.\n");
    CHECK(kb.ingest_file(dir / "a.txt", tokenizer()).status == IngestStatus::Added);
    CHECK(kb.ingest_file(dir / "b.txt", tokenizer()).status == IngestStatus::Added);
    CHECK(kb.ingest_file(dir / "a.txt", tokenizer()).status == IngestStatus::Unchanged);
    CHECK(kb.search("kettles", 5).size() == 1);

    write_file(dir / "a.txt", "Amberfold exports tin whistles now. Its mayor is Pell Dray.\n");
    CHECK(kb.ingest_file(dir / "a.txt", tokenizer()).status == IngestStatus::Updated);
    CHECK(kb.search("kettles", 5).empty());
    CHECK(kb.search("whistles", 5).size() == 1);
    CHECK(kb.documents().size() == 2);
    // Other chunking options re-chunk an unchanged file.
    CHECK(kb.ingest_file(dir / "a.txt", tokenizer(), ChunkingOptions{64, 0}).status == IngestStatus::Updated);

    CHECK(kb.remove_document((dir / "a.txt").string()));
    CHECK_FALSE(kb.remove_document((dir / "a.txt").string()));
    CHECK(kb.search("whistles", 5).empty());
    CHECK(kb.documents().size() == 1);
    CHECK(kb.chunk_count() == 1);
    CHECK_FALSE(kb.find_document((dir / "a.txt").string()).has_value());
    CHECK_THROWS_AS(kb.document_text("nothing"), IndexError);
    CHECK_THROWS_AS(kb.document_chunks("nothing"), IndexError);

    // Documents from memory, and chunks in order.
    kb.ingest_text("memo", "<p>The Orun &amp; the Quillon meet at Istrel.</p>", DocumentFormat::Html, tokenizer());
    const auto chunks = kb.document_chunks("memo");
    REQUIRE(chunks.size() == 1);
    CHECK(chunks[0].text == "The Orun & the Quillon meet at Istrel.\n");
    CHECK_THROWS_AS(kb.ingest_text("", "x", DocumentFormat::PlainText, tokenizer()), ConfigError);

    // The changes are in the file: another connection sees them.
    auto again = KnowledgeBase::open(dir / "kb.sqlite", {.create = false});
    CHECK(again.documents().size() == 2);
}

TEST_CASE("A malformed document is refused and nothing is lost", "[kb][errors]") {
    const auto dir = kb_test::scratch_dir("malformed");
    auto kb = KnowledgeBase::open(dir / "kb.sqlite");
    write_file(dir / "good.txt", "Corvane makes the best cheese.\n");
    kb.ingest_file(dir / "good.txt", tokenizer());
    const std::size_t chunks = kb.chunk_count();

    // A changed file that is now binary: the old chunks stay.
    write_file(dir / "good.txt", std::string("Corvane\0\0\0", 10));
    CHECK_THROWS_AS(kb.ingest_file(dir / "good.txt", tokenizer()), FormatError);
    CHECK(kb.search("cheese", 3).size() == 1);

    // One invalid UTF-8 file among good ones: the whole call stores nothing.
    write_file(dir / "batch/one.txt", "Dunmere grows pears.\n");
    write_file(dir / "batch/two.txt", "Elsport \xff\xfe builds ships.\n");
    const std::vector<std::filesystem::path> paths{dir / "batch"};
    CHECK_THROWS_WITH(kb.ingest_paths(paths, tokenizer()), Catch::Contains("two.txt") && Catch::Contains("UTF-8"));
    CHECK(kb.search("pears", 3).empty());
    CHECK(kb.chunk_count() == chunks);
    const std::vector<std::filesystem::path> missing{dir / "nope"};
    CHECK_THROWS_AS(kb.ingest_paths(missing, tokenizer()), IoError);
    CHECK_THROWS_AS(kb.ingest_file(dir / "nope.txt", tokenizer()), IoError);
}

TEST_CASE("An empty knowledge base is a typed error for search and knowledge", "[kb][errors]") {
    const auto dir = kb_test::scratch_dir("empty");
    auto kb = KnowledgeBase::open(dir / "kb.sqlite");
    CHECK_THROWS_AS(kb.search("anything", 3), EmptyKnowledgeBase);
    CHECK_THROWS_AS(kb.knowledge_text(), EmptyKnowledgeBase);
    CHECK(kb.documents().empty());
    CHECK_THROWS_AS(KnowledgeBase::open(dir / "missing.sqlite", {.create = false}), IoError);
    CHECK_FALSE(std::filesystem::exists(dir / "missing.sqlite"));
}

TEST_CASE("Corrupt, truncated and foreign database files are FormatErrors and are left untouched", "[kb][errors]") {
    const auto dir = kb_test::scratch_dir("corrupt");
    {
        auto kb = KnowledgeBase::open(dir / "kb.sqlite");
        write_corpus(dir / "docs");
        const std::vector<std::filesystem::path> paths{dir / "docs"};
        kb.ingest_paths(paths, tokenizer(), ChunkingOptions{64, 8});
    }
    const std::string good = kvcache::read_file_bytes(dir / "kb.sqlite");
    REQUIRE(good.size() > 8192);

    auto expect_refused = [&](const std::string& name, const std::string& bytes) {
        INFO(name);
        write_file(dir / name, bytes);
        CHECK_THROWS_AS(KnowledgeBase::open(dir / name), FormatError);
        CHECK(kvcache::read_file_bytes(dir / name) == bytes);  // nothing written
    };
    expect_refused("truncated_half.sqlite", good.substr(0, good.size() / 2));
    expect_refused("truncated_odd.sqlite", good.substr(0, good.size() - 100));
    expect_refused("header_only.sqlite", good.substr(0, 50));
    expect_refused("empty.sqlite", "");
    expect_refused("text.sqlite", "this is not a database at all, just some text that is long enough to be read. " +
                                      std::string(200, 'x'));
    std::string flipped = good;
    // Page 2's b-tree header. (SQLite keeps no checksum of row contents: a flipped byte inside a stored text
    // is not detectable, only damage to the structure.)
    for (std::size_t i = 4096; i < 4096 + 64; ++i) flipped[i] = static_cast<char>(~flipped[i]);
    expect_refused("flipped.sqlite", flipped);

    // A valid SQLite file that is not a knowledge base.
    {
        sqlite3* raw = nullptr;
        REQUIRE(sqlite3_open((dir / "other.sqlite").string().c_str(), &raw) == SQLITE_OK);
        REQUIRE(sqlite3_exec(raw, "CREATE TABLE notes(x TEXT); INSERT INTO notes VALUES ('hello');", nullptr, nullptr,
                             nullptr) == SQLITE_OK);
        sqlite3_close(raw);
        const std::string before = kvcache::read_file_bytes(dir / "other.sqlite");
        CHECK_THROWS_WITH(KnowledgeBase::open(dir / "other.sqlite"), Catch::Contains("not a knowledge base"));
        CHECK(kvcache::read_file_bytes(dir / "other.sqlite") == before);
    }
    // The good one still opens and answers.
    auto kb = KnowledgeBase::open(dir / "kb.sqlite", {.create = false});
    CHECK_FALSE(kb.search("Quillon", 1).empty());
}

TEST_CASE("Walking a directory with a symlink loop skips the loop instead of throwing std::filesystem_error",
          "[kb][errors][issue9]") {
    const auto dir = kb_test::scratch_dir("symlink_loop");
    write_file(dir / "docs" / "one.txt", "Corvane sells cheese on Tuesdays.\n");
    std::filesystem::create_symlink("loop.txt", dir / "docs" / "loop.txt");  // ELOOP when its type is read
    std::filesystem::create_symlink("missing.md", dir / "docs" / "dangling.md");
    auto kb = KnowledgeBase::open(dir / "kb.sqlite");
    const std::vector<std::filesystem::path> paths{dir / "docs"};
    std::vector<IngestResult> results;
    REQUIRE_NOTHROW(results = kb.ingest_paths(paths, tokenizer()));  // threw std::filesystem_error
    REQUIRE(results.size() == 1);
    CHECK(kb.search("cheese", 3).size() == 1);
}
