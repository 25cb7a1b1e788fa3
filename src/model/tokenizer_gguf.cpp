// Tokenizer::from_gguf: reading the tokenizer.ggml.* metadata keys into a TokenizerSpec.
// Kept apart from tokenizer.cpp so that users of the tokenizer core do not link the GGUF reader.
#include "kvcache/model/gguf.hpp"
#include "kvcache/model/tokenizer.hpp"

namespace kvcache {

namespace {

std::int32_t read_token_id(const gguf::File& file, std::string_view key) {
    if (!file.find(key)) return -1;
    const std::int64_t id = file.get_int(key);
    if (id < -1 || id > INT32_MAX)
        throw FormatError("tokenizer: " + std::string(key) + " = " + std::to_string(id) + " is not a token id");
    return static_cast<std::int32_t>(id);
}

}  // namespace

Tokenizer Tokenizer::from_gguf(const gguf::File& file) {
    if (!file.find("tokenizer.ggml.model") || !file.find("tokenizer.ggml.tokens"))
        throw FormatError("GGUF file has no tokenizer: tokenizer.ggml.model or tokenizer.ggml.tokens is missing");
    TokenizerSpec spec;
    spec.model = file.get_string("tokenizer.ggml.model");
    spec.pre = file.get_string_or("tokenizer.ggml.pre", "default");
    spec.tokens = file.get_string_array("tokenizer.ggml.tokens");
    if (file.find("tokenizer.ggml.scores")) spec.scores = file.get_float_array("tokenizer.ggml.scores");
    if (file.find("tokenizer.ggml.token_type")) {
        const auto types = file.get_int_array("tokenizer.ggml.token_type");
        spec.token_types.reserve(types.size());
        for (std::size_t i = 0; i < types.size(); ++i) {
            if (types[i] < INT32_MIN || types[i] > INT32_MAX)
                throw FormatError("tokenizer: token type " + std::to_string(types[i]) + " of token " + std::to_string(i));
            spec.token_types.push_back(static_cast<std::int32_t>(types[i]));
        }
    }
    if (file.find("tokenizer.ggml.merges")) spec.merges = file.get_string_array("tokenizer.ggml.merges");
    spec.bos_id = read_token_id(file, "tokenizer.ggml.bos_token_id");
    spec.eos_id = read_token_id(file, "tokenizer.ggml.eos_token_id");
    spec.unk_id = read_token_id(file, "tokenizer.ggml.unknown_token_id");
    spec.pad_id = read_token_id(file, "tokenizer.ggml.padding_token_id");
    // SentencePiece vocabularies add BOS and a space prefix unless the file says otherwise (llama.cpp's defaults).
    const bool sentencepiece = spec.model == "llama";
    spec.add_bos = file.get_bool_or("tokenizer.ggml.add_bos_token", sentencepiece);
    spec.add_eos = file.get_bool_or("tokenizer.ggml.add_eos_token", false);
    spec.add_space_prefix = file.get_bool_or("tokenizer.ggml.add_space_prefix", sentencepiece);
    spec.chat_template = file.get_string_or("tokenizer.chat_template", "");
    return Tokenizer(std::move(spec));
}

}  // namespace kvcache
