// Shared helpers of the knowledge base tests: the SmolLM2 model and tokenizer, scratch directories.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include <unistd.h>

#include "kvcache/model/gguf.hpp"
#include "kvcache/model/tokenizer.hpp"

namespace kb_test {

inline std::filesystem::path model_path() {
    if (const char* env = std::getenv("KVCACHE_MODEL")) return env;
    return std::filesystem::path(KVCACHE_SOURCE_DIR) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

/// SmolLM2's tokenizer, loaded once per test program.
inline const kvcache::Tokenizer& tokenizer() {
    static const kvcache::Tokenizer t = kvcache::Tokenizer::from_gguf(kvcache::gguf::File::open(model_path()));
    return t;
}

/// An empty directory of this process, removed and recreated on each call with the same name.
inline std::filesystem::path scratch_dir(std::string_view name) {
    const auto dir = std::filesystem::temp_directory_path() /
                     ("kvcache_kb_test_" + std::to_string(::getpid()) + "_" + std::string(name));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    return dir;
}

inline void write_file(const std::filesystem::path& path, std::string_view bytes) {
    std::filesystem::create_directories(path.parent_path());
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace kb_test
