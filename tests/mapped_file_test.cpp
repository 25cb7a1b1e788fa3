// detail::MappedFile: the read-only mapping the GGUF, safetensors and cache-file readers share.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "kvcache/detail/mapped_file.hpp"
#include "kvcache/error.hpp"

using kvcache::detail::MappedFile;

namespace {
std::filesystem::path write_temp(const std::string& name, const std::string& content) {
    const auto path = std::filesystem::temp_directory_path() / ("kvcache_mapped_file_" + name);
    std::ofstream(path, std::ios::binary) << content;
    return path;
}
}  // namespace

TEST_CASE("MappedFile maps a whole file read-only, moves, and unmaps") {
    const auto path = write_temp("hello", "hello, mapping");
    MappedFile f = MappedFile::open(path, "test");
    REQUIRE(f.size() == 14);
    CHECK(std::string(reinterpret_cast<const char*>(f.bytes().data()), f.size()) == "hello, mapping");
    MappedFile g = std::move(f);
    CHECK(f.size() == 0);  // NOLINT(bugprone-use-after-move): a moved-from mapping is empty
    CHECK(f.bytes().empty());
    CHECK(g.size() == 14);
    MappedFile populated = MappedFile::open(path, "test", /*populate=*/true);
    g = std::move(populated);  // the old mapping is released, the new one taken over
    CHECK(g.bytes()[0] == std::byte{'h'});
    std::filesystem::remove(path);
}

TEST_CASE("MappedFile: an empty file maps to an empty span") {
    const auto path = write_temp("empty", "");
    const MappedFile f = MappedFile::open(path, "test");
    CHECK(f.size() == 0);
    CHECK(f.bytes().empty());
    std::filesystem::remove(path);
}

TEST_CASE("MappedFile: a missing file or a directory is an IoError naming the caller and the path") {
    const auto missing = std::filesystem::temp_directory_path() / "kvcache_mapped_file_does_not_exist";
    CHECK_THROWS_AS(MappedFile::open(missing, "reader"), kvcache::IoError);
    CHECK_THROWS_WITH(MappedFile::open(missing, "reader"),
                      Catch::Contains("reader: cannot open") && Catch::Contains(missing.string()));
    CHECK_THROWS_WITH(MappedFile::open(std::filesystem::temp_directory_path(), "reader"),
                      Catch::Contains("is not a regular file"));
}

namespace {
std::size_t page_size() { return static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)); }

// Counts the mapping's bytes equal to `value` (reads every byte, as a parser or a weight copy would).
std::size_t count_bytes(std::span<const std::byte> bytes, std::byte value, std::size_t from = 0,
                        std::size_t to = std::size_t(-1)) {
    std::size_t n = 0;
    for (std::size_t i = from; i < std::min(to, bytes.size()); ++i) n += bytes[i] == value ? 1 : 0;
    return n;
}
}  // namespace

TEST_CASE("MappedFile: a file truncated under its mapping reads as zeros and is a FormatError, not SIGBUS",
          "[mapped_file][issue9]") {
    const std::size_t page = page_size();
    const auto path = write_temp("truncated", std::string(4 * page, 'x'));
    const MappedFile f = MappedFile::open(path, "reader");
    CHECK_NOTHROW(f.check_unchanged());
    std::filesystem::resize_file(path, page + 10);  // another process truncating the file in place
    // Pages 2 and 3 now lie past the end: touching them raised SIGBUS, which ended the process.
    CHECK(count_bytes(f.bytes(), std::byte{'x'}) == page + 10);
    CHECK(count_bytes(f.bytes(), std::byte{0}) == 3 * page - 10);
    CHECK_THROWS_AS(f.check_unchanged(), kvcache::FormatError);
    CHECK_THROWS_WITH(f.check_unchanged(),
                      Catch::Contains("reader: '" + path.string() + "' changed while mapped (now " +
                                      std::to_string(page + 10) + " bytes, was " + std::to_string(4 * page) + ")") &&
                          Catch::Contains("zeros"));
    std::filesystem::remove(path);
}

TEST_CASE("MappedFile: faults in several mappings and threads at once are each caught", "[mapped_file][issue9]") {
    const std::size_t page = page_size();
    constexpr int kFiles = 4;
    std::vector<std::filesystem::path> paths;
    std::vector<MappedFile> files;
    for (int i = 0; i < kFiles; ++i) {
        paths.push_back(write_temp("threads" + std::to_string(i), std::string(64 * page, 'y')));
        files.push_back(MappedFile::open(paths.back(), "reader"));
    }
    const MappedFile untouched = MappedFile::open(write_temp("untouched", std::string(8 * page, 'z')), "reader");
    for (const auto& p : paths) std::filesystem::resize_file(p, 0);
    std::vector<std::size_t> zeros(2 * kFiles);
    {
        std::vector<std::jthread> readers;
        for (int t = 0; t < 2 * kFiles; ++t) {  // two threads per file, each over every page
            readers.emplace_back([&, t] { zeros[t] = count_bytes(files[t / 2].bytes(), std::byte{0}); });
        }
    }
    for (std::size_t z : zeros) CHECK(z == 64 * page);
    for (const auto& f : files) CHECK_THROWS_WITH(f.check_unchanged(), Catch::Contains("now 0 bytes"));
    CHECK(count_bytes(untouched.bytes(), std::byte{'z'}) == 8 * page);
    CHECK_NOTHROW(untouched.check_unchanged());
    for (const auto& p : paths) std::filesystem::remove(p);
}

TEST_CASE("MappedFile: a file grown is a FormatError; one touched or replaced by rename is not",
          "[mapped_file][issue9]") {
    const std::string before(3000, 'a');
    SECTION("grown") {
        const auto path = write_temp("grown", before);
        const MappedFile f = MappedFile::open(path, "reader");
        std::ofstream(path, std::ios::binary | std::ios::app) << "more";
        CHECK_THROWS_WITH(f.check_unchanged(), Catch::Contains("changed while mapped (now 3004 bytes, was 3000)"));
        std::filesystem::remove(path);
    }
    SECTION("touched (a new modification time, as CacheDirectory::touch marks a file used): not a change") {
        const auto path = write_temp("touched", before);
        const MappedFile f = MappedFile::open(path, "reader");
        std::filesystem::last_write_time(path, std::filesystem::last_write_time(path) + std::chrono::hours(1));
        CHECK_NOTHROW(f.check_unchanged());
        std::filesystem::remove(path);
    }
    SECTION("replaced by rename (how save_cache_file writes): the mapping keeps the old file") {
        const auto path = write_temp("renamed", before);
        const MappedFile f = MappedFile::open(path, "reader");
        const auto replacement = write_temp("renamed.tmp", "new");
        std::filesystem::rename(replacement, path);
        CHECK(count_bytes(f.bytes(), std::byte{'a'}) == 3000);
        CHECK_NOTHROW(f.check_unchanged());
        std::filesystem::remove(path);
    }
    SECTION("moved from, or empty: nothing to check") {
        const auto path = write_temp("moved", before);
        MappedFile f = MappedFile::open(path, "reader");
        MappedFile g = std::move(f);
        std::filesystem::resize_file(path, 10);
        CHECK_NOTHROW(f.check_unchanged());  // NOLINT(bugprone-use-after-move)
        CHECK_THROWS_AS(g.check_unchanged(), kvcache::FormatError);
        std::filesystem::remove(path);
    }
}
