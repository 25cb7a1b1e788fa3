// Internal: splitting text into pre-tokens with the GPT-2 / Llama-3 / Qwen2 split patterns, without std::regex.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

namespace kvcache::detail {

enum class SplitPattern {
    Gpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    Llama3,  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
    Qwen2,   // as Llama3 with \p{N} (one digit per pre-token) instead of \p{N}{1,3}
};

struct PreTokenizer {
    SplitPattern pattern = SplitPattern::Gpt2;
    bool isolate_numbers = false;  // a first pass that makes every \p{N} character its own pre-token
};

/// The pre-tokenizer llama.cpp uses for a tokenizer.ggml.pre name, or nullopt if unknown.
std::optional<PreTokenizer> find_pre_tokenizer(std::string_view name);
/// Every name find_pre_tokenizer accepts.
std::vector<std::string_view> pre_tokenizer_names();

/// Appends the [begin, end) byte ranges of the pre-tokens of text to out; they tile the text exactly.
void pre_tokenize(const PreTokenizer& pre, std::string_view text, std::vector<std::pair<std::size_t, std::size_t>>& out);

}  // namespace kvcache::detail
