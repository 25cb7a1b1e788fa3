// The knowledge base over SQLite + FTS5.
#include "kvcache/kb/knowledge_base.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <fstream>
#include <set>

#include <fmt/format.h>

#include "kvcache/model/tokenizer.hpp"
#include "kvcache/persist/cache_file.hpp"
#include "sqlite.hpp"

namespace kvcache {

namespace {

constexpr const char* kSchemaVersion = "1";

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS kb_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents(
  id INTEGER PRIMARY KEY,
  source TEXT UNIQUE NOT NULL,
  content_hash TEXT NOT NULL,
  chunking TEXT NOT NULL,
  format TEXT NOT NULL,
  text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks(
  id INTEGER PRIMARY KEY,
  document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
  ordinal INTEGER NOT NULL,
  byte_offset INTEGER NOT NULL,
  byte_length INTEGER NOT NULL,
  token_count INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(document_id, ordinal);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(text, tokenize='porter unicode61');
)sql";

std::uint32_t read_be32(const unsigned char* p) {
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

/// Checks what SQLite itself tolerates: a file that is not SQLite at all, or shorter than its header says
/// (a truncated copy, whose missing pages SQLite would read as zeros).
void check_database_file(const std::filesystem::path& path) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    if (ec) throw IoError(fmt::format("{}: cannot read its size: {}", path.string(), ec.message()));
    std::array<unsigned char, 100> header{};
    std::ifstream in(path, std::ios::binary);
    if (!in) throw IoError(fmt::format("{}: cannot open for reading", path.string()));
    in.read(reinterpret_cast<char*>(header.data()), header.size());
    if (size < header.size() || std::string_view(reinterpret_cast<const char*>(header.data()), 16) !=
                                    std::string_view("SQLite format 3\0", 16)) {
        throw FormatError(fmt::format("{}: not a knowledge base: {} bytes without an SQLite header", path.string(),
                                      size));
    }
    const std::uint32_t raw_page = (std::uint32_t{header[16]} << 8) | header[17];
    const std::uint64_t page_size = raw_page == 1 ? 65536 : raw_page;
    const std::uint64_t pages = read_be32(&header[28]);
    const bool header_size_valid = pages > 0 && read_be32(&header[24]) == read_be32(&header[92]);
    if (page_size < 512 || (page_size & (page_size - 1)) != 0) {
        throw FormatError(fmt::format("{}: corrupt SQLite header: page size {}", path.string(), page_size));
    }
    if (size % page_size != 0 || (header_size_valid && size < pages * page_size)) {
        throw FormatError(fmt::format("{}: truncated knowledge base: the header says {} pages of {} bytes ({} bytes), "
                                      "the file has {} bytes",
                                      path.string(), pages, page_size, pages * page_size, size));
    }
}

std::string source_key(const std::filesystem::path& file) {
    return std::filesystem::absolute(file).lexically_normal().string();
}

std::string chunking_key(const ChunkingOptions& options) {
    return fmt::format("{}/{}", options.max_tokens, options.overlap_tokens);
}

DocumentFormat format_from_name(const std::string& name) {
    if (name == "html") return DocumentFormat::Html;
    if (name == "markdown") return DocumentFormat::Markdown;
    return DocumentFormat::PlainText;
}

bool is_function_word(std::string_view w) {
    static const std::set<std::string_view> kWords{
        "a", "an", "the", "of", "in", "on", "at", "to", "for", "from", "by", "with", "and", "or", "is", "are",
        "was", "were", "be", "been", "being", "what", "which", "who", "whom", "whose", "where", "when", "how",
        "why", "does", "do", "did", "that", "this", "these", "those", "it", "its", "as", "into", "than", "there",
        "their", "has", "have", "had", "can", "could", "would", "should", "will", "about", "if", "not", "no"};
    return kWords.contains(w);
}

}  // namespace

const char* ingest_status_name(IngestStatus status) {
    switch (status) {
        case IngestStatus::Added: return "added";
        case IngestStatus::Updated: return "updated";
        case IngestStatus::Unchanged: return "unchanged";
    }
    return "added";
}

std::string fts5_query_for(std::string_view query) {
    std::vector<std::string> words;
    std::string word;
    auto flush = [&] {
        if (!word.empty() && !is_function_word(word) &&
            std::find(words.begin(), words.end(), word) == words.end()) {
            words.push_back(word);
        }
        word.clear();
    };
    for (char c : query) {
        const auto u = static_cast<unsigned char>(c);
        if (std::isalnum(u) || u >= 0x80) {
            word += static_cast<char>(std::tolower(u));
        } else {
            flush();
        }
    }
    flush();
    std::string out;
    for (const std::string& w : words) out += fmt::format("{}\"{}\"", out.empty() ? "" : " OR ", w);
    return out;
}

struct KnowledgeBase::Impl {
    std::filesystem::path path;
    sqlite::Database db;

    Impl(std::filesystem::path p, bool create) : path(std::move(p)), db(path, create) {}

    std::optional<DocumentInfo> find(std::string_view source) const {
        sqlite::Statement q(db,
                            "SELECT d.id, d.source, d.content_hash, d.format, length(CAST(d.text AS BLOB)), "
                            "count(c.id), coalesce(sum(c.token_count), 0) FROM documents d LEFT JOIN chunks c ON "
                            "c.document_id = d.id WHERE d.source = ?1 GROUP BY d.id");
        q.bind(1, source);
        if (!q.step()) return std::nullopt;
        return row_to_info(q);
    }

    static DocumentInfo row_to_info(const sqlite::Statement& q) {
        DocumentInfo info;
        info.id = q.column_int(0);
        info.source = q.column_text(1);
        info.content_hash = q.column_text(2);
        info.format = format_from_name(q.column_text(3));
        info.text_bytes = static_cast<std::size_t>(q.column_int(4));
        info.chunks = static_cast<std::size_t>(q.column_int(5));
        info.tokens = static_cast<std::size_t>(q.column_int(6));
        return info;
    }

    /// A stored source for a name as given: the name itself, or the absolute path it resolves to.
    std::optional<DocumentInfo> resolve(std::string_view source) const {
        if (auto d = find(source)) return d;
        return find(source_key(std::filesystem::path(source)));
    }

    void delete_chunks(std::int64_t document_id) {
        sqlite::Statement fts(db, "DELETE FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE document_id = ?1)");
        fts.bind(1, document_id).run();
        sqlite::Statement chunks(db, "DELETE FROM chunks WHERE document_id = ?1");
        chunks.bind(1, document_id).run();
    }

    /// Stores one document inside the caller's transaction.
    IngestResult store(const std::string& source, std::string_view bytes, DocumentFormat format,
                       const Tokenizer& tokenizer, const ChunkingOptions& options) {
        options.validate();
        IngestResult result;
        result.source = source;
        const std::string hash = fingerprint_digest(bytes);
        const std::string chunking = chunking_key(options);
        const std::optional<DocumentInfo> existing = find(source);
        {
            // Unchanged: same bytes, chunked the same way.
            if (existing) {
                sqlite::Statement q(db, "SELECT chunking FROM documents WHERE id = ?1");
                q.bind(1, existing->id);
                if (existing->content_hash == hash && q.step() && q.column_text(0) == chunking) {
                    result.status = IngestStatus::Unchanged;
                    result.chunks = existing->chunks;
                    result.text_bytes = existing->text_bytes;
                    return result;
                }
            }
        }
        const std::string text = extract_document_text(bytes, format, source);
        const std::vector<TextChunk> chunks = split_into_chunks(text, tokenizer, options);
        std::int64_t id = 0;
        if (existing) {
            id = existing->id;
            delete_chunks(id);
            sqlite::Statement u(db, "UPDATE documents SET content_hash = ?2, chunking = ?3, format = ?4, text = ?5 "
                                    "WHERE id = ?1");
            u.bind(1, id).bind(2, hash).bind(3, chunking).bind(4, document_format_name(format)).bind(5, text).run();
            result.status = IngestStatus::Updated;
        } else {
            sqlite::Statement ins(db, "INSERT INTO documents(source, content_hash, chunking, format, text) "
                                      "VALUES (?1, ?2, ?3, ?4, ?5)");
            ins.bind(1, source).bind(2, hash).bind(3, chunking).bind(4, document_format_name(format)).bind(5, text).run();
            id = static_cast<std::int64_t>(sqlite3_last_insert_rowid(db.handle()));
            result.status = IngestStatus::Added;
        }
        sqlite::Statement chunk_row(db, "INSERT INTO chunks(document_id, ordinal, byte_offset, byte_length, token_count) "
                                        "VALUES (?1, ?2, ?3, ?4, ?5)");
        sqlite::Statement fts_row(db, "INSERT INTO chunks_fts(rowid, text) VALUES (?1, ?2)");
        for (std::size_t i = 0; i < chunks.size(); ++i) {
            const TextChunk& c = chunks[i];
            chunk_row.bind(1, id)
                .bind(2, static_cast<std::int64_t>(i))
                .bind(3, static_cast<std::int64_t>(c.byte_offset))
                .bind(4, static_cast<std::int64_t>(c.byte_length))
                .bind(5, static_cast<std::int64_t>(c.token_count))
                .run();
            fts_row.bind(1, static_cast<std::int64_t>(sqlite3_last_insert_rowid(db.handle())))
                .bind(2, std::string_view(text).substr(c.byte_offset, c.byte_length))
                .run();
        }
        result.chunks = chunks.size();
        result.text_bytes = text.size();
        return result;
    }

    IngestResult store_file(const std::filesystem::path& file, const Tokenizer& tokenizer,
                            const ChunkingOptions& options) {
        const std::string bytes = read_file_bytes(file);
        return store(source_key(file), bytes, format_for_path(file), tokenizer, options);
    }

    std::size_t document_count() const {
        sqlite::Statement q(db, "SELECT count(*) FROM documents");
        q.step();
        return static_cast<std::size_t>(q.column_int(0));
    }

    void require_documents(std::string_view what) const {
        if (document_count() == 0) {
            throw EmptyKnowledgeBase(fmt::format("{}: {}: the knowledge base has no documents; ingest some first",
                                                 path.string(), what));
        }
    }
};

KnowledgeBase::KnowledgeBase(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KnowledgeBase::KnowledgeBase(KnowledgeBase&&) noexcept = default;
KnowledgeBase& KnowledgeBase::operator=(KnowledgeBase&&) noexcept = default;
KnowledgeBase::~KnowledgeBase() = default;

KnowledgeBase KnowledgeBase::open(const std::filesystem::path& path, const KnowledgeBaseOpenOptions& options) {
    const bool create = options.create;
    std::error_code ec;
    const bool exists = std::filesystem::exists(path, ec);
    if (!exists && !create) {
        throw IoError(fmt::format("{}: no such knowledge base", path.string()));
    }
    if (exists) check_database_file(path);
    auto impl = std::make_unique<Impl>(path, create);
    if (exists) {
        sqlite::Statement check(impl->db, "PRAGMA quick_check");
        std::string problems;
        while (check.step()) {
            const std::string line = check.column_text(0);
            if (line != "ok") problems += (problems.empty() ? "" : "; ") + line;
        }
        if (!problems.empty()) {
            throw FormatError(fmt::format("{}: corrupt knowledge base: {}", path.string(), problems.substr(0, 400)));
        }
        sqlite::Statement tables(impl->db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'kb_meta'");
        tables.step();
        if (tables.column_int(0) == 0) {
            throw FormatError(fmt::format("{}: an SQLite database but not a knowledge base (no kb_meta table)",
                                          path.string()));
        }
        sqlite::Statement version(impl->db, "SELECT value FROM kb_meta WHERE key = 'schema_version'");
        const std::string found = version.step() ? version.column_text(0) : "none";
        if (found != kSchemaVersion) {
            throw FormatError(fmt::format("{}: knowledge base schema version {}, this build reads version {}",
                                          path.string(), found, kSchemaVersion));
        }
    } else {
        sqlite::Transaction tx(impl->db);
        impl->db.exec(kSchema);
        sqlite::Statement meta(impl->db, "INSERT INTO kb_meta(key, value) VALUES ('schema_version', ?1)");
        meta.bind(1, std::string_view(kSchemaVersion)).run();
        tx.commit();
    }
    impl->db.exec("PRAGMA foreign_keys = ON");
    return KnowledgeBase(std::move(impl));
}

const std::filesystem::path& KnowledgeBase::path() const { return impl_->path; }

IngestResult KnowledgeBase::ingest_file(const std::filesystem::path& file, const Tokenizer& tokenizer,
                                        const ChunkingOptions& options) {
    sqlite::Transaction tx(impl_->db);
    IngestResult r = impl_->store_file(file, tokenizer, options);
    tx.commit();
    return r;
}

std::vector<IngestResult> KnowledgeBase::ingest_paths(std::span<const std::filesystem::path> paths,
                                                      const Tokenizer& tokenizer, const ChunkingOptions& options) {
    std::vector<std::filesystem::path> files;
    for (const auto& p : paths) {
        std::error_code ec;
        if (std::filesystem::is_directory(p, ec)) {
            // With error codes throughout: a symlink loop or an unreadable entry inside the tree threw
            // std::filesystem_error (not a kvcache::Error) out of the walk. Entries whose type cannot be read
            // are skipped (they are not documents); a directory that cannot be walked is an IoError.
            std::vector<std::filesystem::path> found;
            std::error_code walk;
            std::filesystem::recursive_directory_iterator it(
                p, std::filesystem::directory_options::skip_permission_denied, walk);
            for (; !walk && it != std::filesystem::recursive_directory_iterator(); it.increment(walk)) {
                std::error_code type;
                if (it->is_regular_file(type) && is_document_extension(it->path())) found.push_back(it->path());
            }
            if (walk) throw IoError(fmt::format("{}: cannot list the directory: {}", p.string(), walk.message()));
            std::sort(found.begin(), found.end());
            files.insert(files.end(), found.begin(), found.end());
        } else if (std::filesystem::exists(p, ec)) {
            files.push_back(p);
        } else {
            throw IoError(fmt::format("{}: no such file or directory", p.string()));
        }
    }
    sqlite::Transaction tx(impl_->db);
    std::vector<IngestResult> results;
    results.reserve(files.size());
    for (const auto& f : files) results.push_back(impl_->store_file(f, tokenizer, options));
    tx.commit();
    return results;
}

IngestResult KnowledgeBase::ingest_text(std::string_view source, std::string_view bytes, DocumentFormat format,
                                        const Tokenizer& tokenizer, const ChunkingOptions& options) {
    if (source.empty()) throw ConfigError("ingest_text: the document needs a name");
    sqlite::Transaction tx(impl_->db);
    IngestResult r = impl_->store(std::string(source), bytes, format, tokenizer, options);
    tx.commit();
    return r;
}

bool KnowledgeBase::remove_document(std::string_view source) {
    sqlite::Transaction tx(impl_->db);
    const std::optional<DocumentInfo> doc = impl_->resolve(source);
    if (!doc) return false;
    impl_->delete_chunks(doc->id);
    sqlite::Statement del(impl_->db, "DELETE FROM documents WHERE id = ?1");
    del.bind(1, doc->id).run();
    tx.commit();
    return true;
}

std::vector<DocumentInfo> KnowledgeBase::documents() const {
    sqlite::Statement q(impl_->db,
                        "SELECT d.id, d.source, d.content_hash, d.format, length(CAST(d.text AS BLOB)), count(c.id), "
                        "coalesce(sum(c.token_count), 0) FROM documents d LEFT JOIN chunks c ON c.document_id = d.id "
                        "GROUP BY d.id ORDER BY d.source");
    std::vector<DocumentInfo> out;
    while (q.step()) out.push_back(Impl::row_to_info(q));
    return out;
}

std::optional<DocumentInfo> KnowledgeBase::find_document(std::string_view source) const {
    return impl_->resolve(source);
}

std::size_t KnowledgeBase::chunk_count() const {
    sqlite::Statement q(impl_->db, "SELECT count(*) FROM chunks");
    q.step();
    return static_cast<std::size_t>(q.column_int(0));
}

std::string KnowledgeBase::document_text(std::string_view source) const {
    const std::optional<DocumentInfo> doc = impl_->resolve(source);
    if (!doc) throw IndexError(fmt::format("{}: no document '{}'", impl_->path.string(), source));
    sqlite::Statement q(impl_->db, "SELECT text FROM documents WHERE id = ?1");
    q.bind(1, doc->id);
    q.step();
    return q.column_text(0);
}

std::vector<SearchHit> KnowledgeBase::document_chunks(std::string_view source) const {
    const std::optional<DocumentInfo> doc = impl_->resolve(source);
    if (!doc) throw IndexError(fmt::format("{}: no document '{}'", impl_->path.string(), source));
    sqlite::Statement q(impl_->db, "SELECT c.id, f.text, c.byte_offset, c.ordinal FROM chunks c JOIN chunks_fts f ON "
                                   "f.rowid = c.id WHERE c.document_id = ?1 ORDER BY c.ordinal");
    q.bind(1, doc->id);
    std::vector<SearchHit> out;
    while (q.step()) {
        out.push_back(SearchHit{q.column_int(0), q.column_text(1), 0.0, doc->source,
                                static_cast<std::size_t>(q.column_int(2)), static_cast<std::size_t>(q.column_int(3))});
    }
    return out;
}

std::vector<SearchHit> KnowledgeBase::search(std::string_view query, std::size_t k) const {
    if (k == 0) throw ConfigError("search: k is 0; ask for at least one hit");
    impl_->require_documents("search");
    const std::string expression = fts5_query_for(query);
    if (expression.empty()) return {};
    sqlite::Statement q(impl_->db,
                        "SELECT c.id, chunks_fts.text, bm25(chunks_fts), d.source, c.byte_offset, c.ordinal "
                        "FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid JOIN documents d ON d.id = "
                        "c.document_id WHERE chunks_fts MATCH ?1 ORDER BY bm25(chunks_fts), c.id LIMIT ?2");
    q.bind(1, expression).bind(2, static_cast<std::int64_t>(std::min<std::size_t>(k, 1u << 30)));
    std::vector<SearchHit> out;
    while (q.step()) {
        out.push_back(SearchHit{q.column_int(0), q.column_text(1), -q.column_double(2), q.column_text(3),
                                static_cast<std::size_t>(q.column_int(4)), static_cast<std::size_t>(q.column_int(5))});
    }
    return out;
}

std::string KnowledgeBase::knowledge_text() const {
    impl_->require_documents("knowledge");
    sqlite::Statement q(impl_->db, "SELECT source, text FROM documents ORDER BY source");
    std::string out;
    while (q.step()) {
        const std::string source = q.column_text(0);
        std::string text = q.column_text(1);
        while (!text.empty() && (text.back() == '\n' || text.back() == ' ' || text.back() == '\r')) text.pop_back();
        out += fmt::format("Document: {}\n{}\n\n", std::filesystem::path(source).filename().string(), text);
    }
    return out;
}

}  // namespace kvcache
