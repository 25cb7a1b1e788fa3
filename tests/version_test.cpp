// The version written once: version() and the KVCACHE_VERSION macros, generated from CMake's project(VERSION),
// agree with each other and with the version CMake configured (passed in by tests/CMakeLists.txt).
#include <catch2/catch.hpp>

#include <string>

#include "kvcache/version.hpp"

TEST_CASE("version(): major.minor.patch from project(VERSION)", "[version]") {
    static_assert(kvcache::version()[0] != '\0', "usable at compile time");
    const std::string expected = std::to_string(KVCACHE_VERSION_MAJOR) + "." + std::to_string(KVCACHE_VERSION_MINOR) +
                                 "." + std::to_string(KVCACHE_VERSION_PATCH);
    CHECK(std::string(kvcache::version()) == expected);
    CHECK(std::string(KVCACHE_VERSION) == expected);
    CHECK(expected == KVCACHE_PROJECT_VERSION);
}
