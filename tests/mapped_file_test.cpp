// detail::MappedFile: the read-only mapping the GGUF, safetensors and cache-file readers share.
#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

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
