// The core's compiled parts (src/core/*.cpp), for programs that use kvcache with no compiled library.
//
// With CMake: link kvcache::header_only instead of kvcache::kvcache, and include this header in exactly one .cpp
// of the program; every other file includes the kvcache headers as usual. It then holds the thread pool, the
// memory-mapped file and the cache-file reader/writer (with xxHash, header-only: xxhash.h must be on the
// include path). Including it in two files of one program, or linking kvcache::kvcache as well, defines the
// same functions twice (a link error). Without CMake: -I<prefix>/include, -std=c++20, -pthread and {fmt}.
#pragma once

// The sources keep their file-local helpers in anonymous namespaces. Included from a header, GCC warns when a
// type with external linkage holds one (-Wsubobject-linkage), which matters for a header included by many
// files; this one is included by one file only, so the warning does not apply here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsubobject-linkage"
#endif

// Installed, the sources sit beside this header (kvcache/impl/); in the source tree, in src/core/.
#if __has_include("impl/thread_pool.cpp")
#include "impl/cache_file.cpp"
#include "impl/mapped_file.cpp"
#include "impl/thread_pool.cpp"
#else
#include "../../src/core/cache_file.cpp"
#include "../../src/core/mapped_file.cpp"
#include "../../src/core/thread_pool.cpp"
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
