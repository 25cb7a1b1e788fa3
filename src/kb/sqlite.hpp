// A thin RAII layer over the SQLite C API for the knowledge base: a connection, prepared statements, and
// SQLite's result codes turned into kvcache errors (private to src/kb).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include <sqlite3.h>

namespace kvcache::sqlite {

/// Throws the kvcache error for a SQLite result code: FormatError for a file that is not a database or is
/// corrupt, IoError for what the operating system refused (cannot open, read-only, disk full, I/O),
/// ConfigError for a misuse (a bad query), Error otherwise. The message names `what` and SQLite's text.
[[noreturn]] void throw_error(int code, std::string_view what, std::string_view detail);

class Database {
public:
    /// Opens (create: or creates) the file. Throws IoError if it cannot be opened.
    Database(const std::filesystem::path& path, bool create);
    ~Database();
    Database(const Database&) = delete;
    Database& operator=(const Database&) = delete;
    Database(Database&& other) noexcept : db_(other.db_), path_(std::move(other.path_)) { other.db_ = nullptr; }

    /// Runs statements without results (schema, pragmas, BEGIN/COMMIT).
    void exec(const char* sql);
    sqlite3* handle() const { return db_; }
    const std::string& path() const { return path_; }
    [[noreturn]] void fail(int code, std::string_view what) const;

private:
    sqlite3* db_ = nullptr;
    std::string path_;
};

class Statement {
public:
    Statement(const Database& db, const char* sql);
    ~Statement();
    Statement(const Statement&) = delete;
    Statement& operator=(const Statement&) = delete;

    Statement& bind(int index, std::int64_t value);
    Statement& bind(int index, double value);
    Statement& bind(int index, std::string_view text);
    /// Advances to the next row; false when done. Throws on errors.
    bool step();
    /// Runs a statement that returns no rows, then resets it.
    void run();
    void reset();

    std::int64_t column_int(int index) const;
    double column_double(int index) const;
    std::string column_text(int index) const;

private:
    const Database* db_;
    sqlite3_stmt* stmt_ = nullptr;
};

/// BEGIN IMMEDIATE on construction; ROLLBACK in the destructor unless commit() ran — so an exception leaves
/// the database as it was.
class Transaction {
public:
    explicit Transaction(Database& db);
    ~Transaction();
    Transaction(const Transaction&) = delete;
    Transaction& operator=(const Transaction&) = delete;
    void commit();

private:
    Database* db_;
    bool done_ = false;
};

}  // namespace kvcache::sqlite
