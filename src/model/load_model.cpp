// load_model and default_model_path: the model-loading steps every program repeated, in one place.
#include "kvcache/model/load_model.hpp"

#include <cstdlib>

#include "kvcache/model/gguf.hpp"

namespace kvcache {

LoadedModel load_model(const std::filesystem::path& path, const LoadModelOptions& options) {
    const gguf::File file = gguf::File::open(path);
    Tokenizer tokenizer = Tokenizer::from_gguf(file);
    Decoder decoder(DecoderWeights::from_gguf(file, {.keep_quantized = options.keep_quantized}), options.threads);
    return LoadedModel{std::move(decoder), std::move(tokenizer),
                       options.fingerprint ? model_fingerprint(file) : std::string()};
}

std::filesystem::path default_model_path(const std::filesystem::path& root) {
    if (const char* env = std::getenv("KVCACHE_MODEL")) return env;
    return root / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

}  // namespace kvcache
