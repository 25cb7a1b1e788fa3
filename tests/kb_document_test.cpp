// Documents and chunking: text checks (binary, invalid UTF-8), HTML to text, entity decoding, and chunks that
// cover every byte within the token budget, cut at paragraph and sentence ends.
#include <catch2/catch.hpp>

#include <string>

#include "kb_test_support.hpp"
#include "kvcache/kb/chunker.hpp"
#include "kvcache/kb/document.hpp"

using namespace kvcache;

TEST_CASE("check_document_text accepts UTF-8 text and names the first bad byte", "[kb][document]") {
    CHECK_NOTHROW(check_document_text("plain ascii\twith tabs\r\nand lines\n", "a.txt"));
    CHECK_NOTHROW(check_document_text("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "b.txt"));
    CHECK_THROWS_AS(check_document_text(std::string("bin\0ary", 7), "c.bin"), FormatError);
    CHECK_THROWS_WITH(check_document_text(std::string("bin\0ary", 7), "c.bin"), Catch::Contains("byte 3"));
    CHECK_THROWS_AS(check_document_text("bad \xff byte", "d.txt"), FormatError);
    CHECK_THROWS_WITH(check_document_text("bad \xff byte", "d.txt"), Catch::Contains("d.txt") && Catch::Contains("byte 4"));
    CHECK_THROWS_AS(check_document_text("cut \xe2\x82", "e.txt"), FormatError);           // truncated character
    CHECK_THROWS_AS(check_document_text("over \xc0\xaf", "f.txt"), FormatError);          // overlong '/'
    CHECK_THROWS_AS(check_document_text("sur \xed\xa0\x80", "g.txt"), FormatError);       // surrogate
    CHECK_THROWS_AS(check_document_text("cont \xc3\x28", "h.txt"), FormatError);          // not a continuation
    CHECK_THROWS_AS(extract_document_text("x\x01y", DocumentFormat::Markdown, "i.md"), FormatError);
}

TEST_CASE("decode_html_entities decodes named and numeric references, keeps unknown ones", "[kb][document]") {
    CHECK(decode_html_entities("a &amp; b &lt;c&gt; &quot;d&quot; &#39;e&#x27;") == "a & b <c> \"d\" 'e'");
    CHECK(decode_html_entities("&eacute;t&eacute; &#233; &#x1F600;") == "\xc3\xa9t\xc3\xa9 \xc3\xa9 \xf0\x9f\x98\x80");
    CHECK(decode_html_entities("&bogus; &#xZZ; &#0; & alone &#55296;") == "&bogus; &#xZZ; &#0; & alone &#55296;");
}

TEST_CASE("html_to_text strips tags, scripts, styles and comments and keeps paragraphs", "[kb][document]") {
    const std::string html =
        "<!DOCTYPE html><html><head><title>Veloria</title><style>p { color: red; }</style>"
        "<script type=\"text/javascript\">var x = \"<p>not text</p>\"; if (a < b) {}</script></head>"
        "<body><h1>The city of Veloria</h1><!-- a comment --><p>Veloria was founded in <b>1742</b> by "
        "Ada&nbsp;Kell &amp; friends.</p><p data-x=\"a>b\">Its river is   the\n  Orun.<br>New line.</p>"
        "<SCRIPT>alert(1)</SCRIPT><p>1 &lt; 2 and 3 < 4</p></body></html>";
    const std::string text = html_to_text(html);
    CHECK(text == "Veloria\n\nThe city of Veloria\n\nVeloria was founded in 1742 by Ada\xc2\xa0Kell & friends.\n\n"
                  "Its river is the Orun.\nNew line.\n\n1 < 2 and 3 < 4\n");
    CHECK(text.find("not text") == std::string::npos);
    CHECK(text.find("alert") == std::string::npos);
    CHECK(text.find("color") == std::string::npos);
}

TEST_CASE("format_for_path and is_document_extension go by the extension", "[kb][document]") {
    CHECK(format_for_path("a/b.HTML") == DocumentFormat::Html);
    CHECK(format_for_path("a/b.md") == DocumentFormat::Markdown);
    CHECK(format_for_path("a/b.txt") == DocumentFormat::PlainText);
    CHECK(format_for_path("a/b") == DocumentFormat::PlainText);
    CHECK(is_document_extension("x.markdown"));
    CHECK_FALSE(is_document_extension("x.png"));
    CHECK(std::string(document_format_name(DocumentFormat::Html)) == "html");
    CHECK_THROWS_AS(read_file_bytes("/nonexistent/kvcache/file.txt"), IoError);
}

namespace {

std::string sample_text() {
    std::string text;
    for (int p = 0; p < 12; ++p) {
        text += "Paragraph " + std::to_string(p) + ". ";
        for (int s = 0; s < 5 + p % 4; ++s) {
            text += "The river number " + std::to_string(p * 10 + s) +
                    " flows past the old mill of Kestrel and reaches the sea near Veloria. ";
        }
        text += p % 3 == 2 ? "\n" : "\n\n";
    }
    text += "Unicode at the end: caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 and a last line without a newline";
    return text;
}

/// Every byte of the text is in some chunk, chunks start in order, neighbours touch or overlap, and each
/// chunk tokenised alone fits the budget.
void check_chunks(const std::string& text, const std::vector<TextChunk>& chunks, const ChunkingOptions& o) {
    REQUIRE_FALSE(chunks.empty());
    CHECK(chunks.front().byte_offset == 0);
    CHECK(chunks.back().byte_offset + chunks.back().byte_length == text.size());
    std::vector<bool> covered(text.size(), false);
    for (std::size_t i = 0; i < chunks.size(); ++i) {
        const TextChunk& c = chunks[i];
        REQUIRE(c.byte_length > 0);
        REQUIRE(c.byte_offset + c.byte_length <= text.size());
        for (std::size_t b = c.byte_offset; b < c.byte_offset + c.byte_length; ++b) covered[b] = true;
        const auto tokens = kb_test::tokenizer().encode(std::string_view(text).substr(c.byte_offset, c.byte_length), {.add_special = false});
        CHECK(tokens.size() == c.token_count);
        CHECK(tokens.size() <= o.max_tokens);
        if (i > 0) {
            CHECK(c.byte_offset > chunks[i - 1].byte_offset);
            CHECK(c.byte_offset <= chunks[i - 1].byte_offset + chunks[i - 1].byte_length);
        }
        // Never inside a UTF-8 character.
        CHECK((static_cast<unsigned char>(text[c.byte_offset]) & 0xC0) != 0x80);
    }
    CHECK(std::find(covered.begin(), covered.end(), false) == covered.end());
}

}  // namespace

TEST_CASE("split_into_chunks covers every byte within the token budget", "[kb][chunker]") {
    const std::string text = sample_text();
    for (const ChunkingOptions o : {ChunkingOptions{64, 0}, ChunkingOptions{64, 16}, ChunkingOptions{128, 32},
                                    ChunkingOptions{16, 8}}) {
        INFO("max " << o.max_tokens << " overlap " << o.overlap_tokens);
        const auto chunks = split_into_chunks(text, kb_test::tokenizer(), o);
        check_chunks(text, chunks, o);
        if (o.overlap_tokens == 0) {
            for (std::size_t i = 1; i < chunks.size(); ++i) {
                CHECK(chunks[i].byte_offset == chunks[i - 1].byte_offset + chunks[i - 1].byte_length);
            }
        } else {
            std::size_t overlapping = 0;
            for (std::size_t i = 1; i < chunks.size(); ++i) {
                overlapping += chunks[i].byte_offset < chunks[i - 1].byte_offset + chunks[i - 1].byte_length;
            }
            CHECK(overlapping == chunks.size() - 1);
        }
    }
}

TEST_CASE("split_into_chunks cuts at paragraph and sentence ends", "[kb][chunker]") {
    const std::string text = sample_text();
    const ChunkingOptions o{96, 0};
    const auto chunks = split_into_chunks(text, kb_test::tokenizer(), o);
    for (std::size_t i = 0; i + 1 < chunks.size(); ++i) {
        const std::size_t end = chunks[i].byte_offset + chunks[i].byte_length;
        const char before = text[end - 1];
        INFO("chunk " << i << " ends with '" << text.substr(end - 12, 12) << "'");
        // Every cut falls after a line break or after a sentence end and its space.
        CHECK((before == '\n' || (before == ' ' && text[end - 2] == '.')));
    }
    // A text without any space or line still splits, at character boundaries.
    std::string dense;
    for (int i = 0; i < 300; ++i) dense += "\xc3\xa9x" + std::to_string(i % 10);
    const ChunkingOptions d{32, 4};
    check_chunks(dense, split_into_chunks(dense, kb_test::tokenizer(), d), d);
}

TEST_CASE("split_into_chunks: empty text, one short chunk, bad options", "[kb][chunker]") {
    CHECK(split_into_chunks("", kb_test::tokenizer(), {}).empty());
    const auto one = split_into_chunks("A short document.", kb_test::tokenizer(), {});
    REQUIRE(one.size() == 1);
    CHECK(one[0].byte_length == 17);
    CHECK_THROWS_AS(split_into_chunks("x", kb_test::tokenizer(), ChunkingOptions{4, 0}), ConfigError);
    CHECK_THROWS_AS(split_into_chunks("x", kb_test::tokenizer(), ChunkingOptions{64, 40}), ConfigError);
}
