// Documents for the knowledge base: reading a file's bytes as text (plain text, Markdown, HTML) and refusing
// what is not text.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

namespace kvcache {

/// How a document's bytes become the text that is chunked, searched and given to the model.
enum class DocumentFormat {
    PlainText,  ///< kept as it is
    Markdown,   ///< kept as it is (its markup reads well to a model and does not hurt keyword search)
    Html,       ///< tags, comments, <script> and <style> removed; block elements become line breaks;
                ///< character references decoded; runs of blank space collapsed
};

/// "text", "markdown" or "html".
const char* document_format_name(DocumentFormat format);

/// The format a file's extension says: .html/.htm/.xhtml → Html, .md/.markdown → Markdown, anything else
/// → PlainText.
DocumentFormat format_for_path(const std::filesystem::path& path);

/// Whether a directory walk picks this file up: .txt, .text, .md, .markdown, .html, .htm, .xhtml.
bool is_document_extension(const std::filesystem::path& path);

/// Throws FormatError naming `source` and the byte offset of the first problem unless `bytes` is valid
/// UTF-8 text: no NUL bytes or other C0 control characters besides tab, line feed, form feed and carriage
/// return (a binary file), no malformed, overlong or surrogate sequences.
void check_document_text(std::string_view bytes, std::string_view source);

/// Decodes character references (&amp; &lt; &#233; &#x1F600; and the common named ones) to UTF-8; an
/// unknown or malformed reference is kept as written.
std::string decode_html_entities(std::string_view html);

/// The readable text of an HTML document (see DocumentFormat::Html). The result is valid UTF-8 if the
/// input is.
std::string html_to_text(std::string_view html);

/// Checks the bytes (check_document_text) and converts them as `format` says.
std::string extract_document_text(std::string_view bytes, DocumentFormat format, std::string_view source);

/// Reads a whole file. Throws IoError naming it if it cannot be read.
std::string read_file_bytes(const std::filesystem::path& path);

}  // namespace kvcache
