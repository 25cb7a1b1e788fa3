// KnowledgeBase: documents split into token-sized chunks, kept in one SQLite file with an FTS5 index, and
// searched by keywords with BM25 ranking.
//
// One file is one knowledge base. Documents are keyed by their path; each remembers a digest of its bytes,
// so ingesting an unchanged file does nothing and a changed one has its chunks replaced. Every change runs in
// one transaction: a failure (a malformed document, a full disk) leaves the database as it was.
//
// Thread safety: none; one KnowledgeBase per thread (several may open the same file; SQLite serialises writers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcache/error.hpp"
#include "kvcache/kb/chunker.hpp"
#include "kvcache/kb/document.hpp"

namespace kvcache {

class Tokenizer;

/// A question asked of a knowledge base that has no documents.
class EmptyKnowledgeBase : public ConfigError {
public:
    using ConfigError::ConfigError;
};

struct DocumentInfo {
    std::int64_t id = 0;
    std::string source;        ///< the path it was ingested from (absolute), or the name given to ingest_text
    std::string content_hash;  ///< digest of the document's bytes as read
    DocumentFormat format = DocumentFormat::PlainText;
    std::size_t text_bytes = 0;   ///< of the extracted text
    std::size_t chunks = 0;
    std::size_t tokens = 0;       ///< sum of its chunks' token counts (overlaps counted twice)
};

enum class IngestStatus { Added, Updated, Unchanged };

struct IngestResult {
    std::string source;
    IngestStatus status = IngestStatus::Added;
    std::size_t chunks = 0;
    std::size_t text_bytes = 0;
};

/// "added", "updated" or "unchanged".
const char* ingest_status_name(IngestStatus status);

struct SearchHit {
    std::int64_t chunk_id = 0;
    std::string text;
    double score = 0;            ///< BM25, higher is better (SQLite's bm25() negated)
    std::string source;          ///< the document's source
    std::size_t byte_offset = 0; ///< of the chunk in the document's extracted text
    std::size_t chunk_index = 0; ///< of the chunk within its document
};

/// How KnowledgeBase::open treats a missing file: `KnowledgeBase::open(path, {.create = false})`.
struct KnowledgeBaseOpenOptions {
    bool create = true;  ///< create an empty knowledge base if the file does not exist; false: IoError
};

class KnowledgeBase {
public:
    /// Opens a knowledge base file, creating an empty one if it does not exist and options.create is set. The file
    /// is checked (PRAGMA quick_check and our schema): a file that is not a knowledge base, or is corrupt or
    /// truncated, is a FormatError and is never modified; a missing file without `create` is an IoError.
    static KnowledgeBase open(const std::filesystem::path& path, const KnowledgeBaseOpenOptions& options = {});

    KnowledgeBase(KnowledgeBase&&) noexcept;
    KnowledgeBase& operator=(KnowledgeBase&&) noexcept;
    ~KnowledgeBase();

    const std::filesystem::path& path() const;

    /// Reads, checks and chunks one file (format from its extension) and stores it under its absolute path.
    /// FormatError (binary or invalid UTF-8, naming the file and offset) or IoError leave the database as it was.
    IngestResult ingest_file(const std::filesystem::path& file, const Tokenizer& tokenizer,
                             const ChunkingOptions& options = {});
    /// Files given, and the document files (is_document_extension) under directories given, recursively, in
    /// path order. All or nothing: one bad file and nothing of this call is stored.
    std::vector<IngestResult> ingest_paths(std::span<const std::filesystem::path> paths, const Tokenizer& tokenizer,
                                           const ChunkingOptions& options = {});
    /// The same for bytes held in memory, stored under `source`.
    IngestResult ingest_text(std::string_view source, std::string_view bytes, DocumentFormat format,
                             const Tokenizer& tokenizer, const ChunkingOptions& options = {});

    /// Removes a document (by source as stored, or a path that resolves to it) and its chunks. False if
    /// there is none.
    bool remove_document(std::string_view source);

    std::vector<DocumentInfo> documents() const;
    std::optional<DocumentInfo> find_document(std::string_view source) const;
    std::size_t chunk_count() const;
    /// A document's extracted text. IndexError if there is no such document.
    std::string document_text(std::string_view source) const;
    /// Chunks of a document in order (text, offsets; score 0).
    std::vector<SearchHit> document_chunks(std::string_view source) const;

    /// The top `k` chunks for the query's words by BM25, best first. Words are matched as words (any
    /// punctuation or FTS5 syntax in the query is ignored), common English function words are dropped, and a
    /// chunk needs only one of the words. Throws EmptyKnowledgeBase if there are no documents, ConfigError for
    /// k == 0; a query with no usable word gives no hits.
    std::vector<SearchHit> search(std::string_view query, std::size_t k = 5) const;

    /// All documents' texts in source order, each introduced by a "Document: <name>" line: the knowledge a
    /// cache-augmented answer reads. EmptyKnowledgeBase if there are none.
    std::string knowledge_text() const;

private:
    struct Impl;
    explicit KnowledgeBase(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

/// The words of a query as a safe FTS5 expression ("a" OR "b" ...), function words dropped; empty if none.
std::string fts5_query_for(std::string_view query);

}  // namespace kvcache
