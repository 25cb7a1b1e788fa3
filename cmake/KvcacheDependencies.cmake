# Finds kvcache's dependencies (all from Debian's packages) and stops early, naming the package, if one is missing.
include(GNUInstallDirs)

macro(kvcache_require _found _what _debian)
  if(NOT ${_found})
    message(FATAL_ERROR "kvcache needs ${_what}, which was not found. On Debian/Ubuntu: "
                        "`sudo apt-get install ${_debian}` (or run scripts/install-deps.sh).")
  endif()
endmacro()

find_package(Threads REQUIRED)
# Eigen and xtensor only for the opt-in views (kvcache::eigen, kvcache::xtensor): without them those targets
# are not defined, and nothing else changes. The tests use both views, so they need both.
find_package(Eigen3 3.4 QUIET NO_MODULE)
find_package(xtensor QUIET)
if(KVCACHE_BUILD_TESTS)
  kvcache_require(Eigen3_FOUND "Eigen 3.4" libeigen3-dev)
  kvcache_require(xtensor_FOUND "xtensor (with xtl and xsimd)" xtensor-dev)
endif()
find_package(fmt QUIET)
kvcache_require(fmt_FOUND "{fmt}" libfmt-dev)
find_package(nlohmann_json 3 QUIET)
kvcache_require(nlohmann_json_FOUND "nlohmann-json" nlohmann-json3-dev)
# xxHash: header-only inside src/core/cache_file.cpp (cache file checksums), so installed users need nothing.
find_path(KVCACHE_XXHASH_INCLUDE_DIR xxhash.h)
if(KVCACHE_XXHASH_INCLUDE_DIR)
  set(_kvcache_xxhash_found ON)
endif()
kvcache_require(_kvcache_xxhash_found "xxHash (xxhash.h)" libxxhash-dev)
if(KVCACHE_BUILD_TESTS)
  find_package(Catch2 2.13 QUIET)
  kvcache_require(Catch2_FOUND "Catch2 2.13" catch2)
endif()
if(KVCACHE_BUILD_BENCH)
  find_package(benchmark QUIET)
  kvcache_require(benchmark_FOUND "Google Benchmark" libbenchmark-dev)
endif()
