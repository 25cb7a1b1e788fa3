// load_model: a GGUF file opened once and turned into the decoder and the tokenizer a program needs; and the
// model file programs use when none is named.
#pragma once

#include <filesystem>
#include <string>

#include "kvcache/model/decoder.hpp"
#include "kvcache/model/tokenizer.hpp"

namespace kvcache {

struct LoadModelOptions {
    int threads = 0;                 ///< the decoder's default threads (DecoderOptions::threads)
    bool keep_quantized = true;      ///< see DecoderWeights::from_gguf
    /// Also compute model_fingerprint(file) for cache files. Off by default: it reads every weight once more.
    bool fingerprint = false;
};

/// A model ready to run: its decoder, its tokenizer and (when asked for) the fingerprint of its file.
struct LoadedModel {
    Decoder decoder;
    Tokenizer tokenizer;
    std::string fingerprint;  ///< model_fingerprint of the file, or empty unless LoadModelOptions::fingerprint
};

/// Opens the GGUF file at `path` once and loads the decoder and the tokenizer from it (nothing of the file is
/// kept open). Throws IoError for a file that cannot be opened and what Decoder/Tokenizer loading throws
/// (FormatError, ConfigError) for one they cannot use.
LoadedModel load_model(const std::filesystem::path& path, const LoadModelOptions& options = {});

/// The model file a program uses when none is named: $KVCACHE_MODEL if set, else
/// <root>/models/SmolLM2-135M-Instruct.Q4_1.gguf (what scripts/fetch-model.sh downloads into a checkout at root).
std::filesystem::path default_model_path(const std::filesystem::path& root = ".");

}  // namespace kvcache
