// The decoder's GGUF side: configuration from metadata and weights from tensors. Kept apart so that code
// using only random weights does not link the GGUF reader.
#include "kvcache/model/decoder.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include "kvcache/detail/checked.hpp"
#include "kvcache/persist/cache_file.hpp"
#include "kvcache/model/gguf.hpp"

namespace kvcache {

namespace {

// Bounds far above any real model (the largest have ~128 heads of 256 and d_model ~16k) that keep every product
// of sizes the decoder forms well inside 64 bits and every head loop inside an int. A file outside them is
// refused at load, before anything is allocated.
constexpr std::uint64_t kMaxHeads = 1u << 16;
constexpr std::uint64_t kMaxHeadDim = 1u << 16;
constexpr std::uint64_t kMaxWidth = 1u << 24;  // d_model, d_ff
// Tensors every layer needs (attention norm, q, k, v, output, ffn norm, gate, up, down).
constexpr std::size_t kTensorsPerLayer = 9;

/// An unsigned metadata value that must lie in [lo, hi]; FormatError naming the key otherwise.
std::size_t read_size(const gguf::File& f, const std::string& key, std::uint64_t lo, std::uint64_t hi,
                      std::optional<std::uint64_t> fallback = std::nullopt) {
    const std::uint64_t v = fallback ? f.get_uint_or(key, *fallback) : f.get_uint(key);
    if (v < lo || v > hi) throw FormatError(fmt::format("GGUF metadata: {} is {}, outside [{}, {}]", key, v, lo, hi));
    return static_cast<std::size_t>(v);
}

/// A float metadata value that must be finite and > 0, also once narrowed to float (1e-300 would become 0).
float read_positive(const gguf::File& f, const std::string& key, std::optional<double> fallback = std::nullopt) {
    const double v = fallback ? f.get_float_or(key, *fallback) : f.get_float(key);
    const auto narrowed = static_cast<float>(v);
    if (!std::isfinite(v) || !(v > 0) || !std::isfinite(narrowed) || !(narrowed > 0))
        throw FormatError(fmt::format("GGUF metadata: {} is {}; it must be finite and > 0 (as a float)", key, v));
    return narrowed;
}

/// 1 / a positive scaling factor, refused if the reciprocal is not a finite positive float either.
float reciprocal_of_factor(const gguf::File& f, const std::string& key) {
    const float factor = read_positive(f, key);
    const float scale = 1.0f / factor;
    if (!std::isfinite(scale) || !(scale > 0))
        throw FormatError(fmt::format("GGUF metadata: {} is {}; its reciprocal is not a usable float", key, factor));
    return scale;
}

/// A token id from the metadata: -1 (none) or inside the vocabulary.
std::int32_t read_token_id(const gguf::File& f, const std::string& key, std::size_t vocab_size) {
    const std::int64_t id = f.get_int(key);
    if (id < 0 || static_cast<std::uint64_t>(id) >= vocab_size)
        throw FormatError(fmt::format("GGUF metadata: {} is {}, outside the vocabulary of {} tokens", key, id, vocab_size));
    return static_cast<std::int32_t>(id);
}

std::vector<float> load_vector(const gguf::File& file, const std::string& name, std::size_t expected) {
    const gguf::TensorInfo& t = file.tensor(name);
    if (t.n_elements != expected) {
        throw FormatError(fmt::format("tensor '{}' has {} elements, expected {}", name, t.n_elements, expected));
    }
    return gguf::dequantize(t);
}

WeightMatrix load_matrix(const gguf::File& file, const std::string& name, std::size_t rows, std::size_t cols,
                         WeightStorage storage) {
    const gguf::TensorInfo& t = file.tensor(name);
    if (t.shape.size() != 2 || t.shape[0] != cols || t.shape[1] != rows) {
        std::string shape;
        for (auto s : t.shape) shape += (shape.empty() ? "" : ", ") + std::to_string(s);
        throw FormatError(fmt::format("tensor '{}' has shape [{}], expected [{}, {}] (ggml order: in, out)", name,
                                      shape, cols, rows));
    }
    return WeightMatrix::from_gguf(t, storage);
}

/// Whether `name` is one of the tensors DecoderWeights::from_gguf loads for config c.
bool is_decoder_tensor(const std::string& name, const DecoderConfig& c) {
    if (name == "token_embd.weight" || name == "output_norm.weight" || name == "output.weight" ||
        name == "rope_freqs.weight") {
        return true;
    }
    static const char* const kLayerTensors[] = {"attn_norm.weight", "attn_q.weight",   "attn_k.weight",
                                                "attn_v.weight",    "attn_output.weight", "ffn_norm.weight",
                                                "ffn_gate.weight",  "ffn_up.weight",   "ffn_down.weight"};
    static const char* const kBiases[] = {"attn_q.bias", "attn_k.bias", "attn_v.bias"};
    for (std::size_t i = 0; i < c.n_layers; ++i) {
        const std::string p = fmt::format("blk.{}.", i);
        if (name.rfind(p, 0) != 0) continue;
        const std::string rest = name.substr(p.size());
        for (const char* t : kLayerTensors) {
            if (rest == t) return true;
        }
        if (c.qkv_bias) {
            for (const char* t : kBiases) {
                if (rest == t) return true;
            }
        }
    }
    return false;
}

}  // namespace

WeightMatrix WeightMatrix::from_gguf(const gguf::TensorInfo& t, WeightStorage storage) {
    if (t.shape.size() != 2) {
        throw ShapeError(fmt::format("tensor '{}' has {} dimensions; a weight matrix needs 2", t.name, t.shape.size()));
    }
    const std::size_t cols = t.shape[0], rows = t.shape[1];
    const bool as_stored = storage == WeightStorage::as_stored;
    if (as_stored && t.type == gguf::TensorType::Q8_0) {
        return from_blocks(WeightFormat::Q8_0, rows, cols, std::span(t.data, t.n_bytes));
    }
    if (as_stored && t.type == gguf::TensorType::Q4_1) {
        return from_blocks(WeightFormat::Q4_1, rows, cols, std::span(t.data, t.n_bytes));
    }
    if (t.type == gguf::TensorType::F32) {
        return from_blocks(WeightFormat::F32, rows, cols, std::span(t.data, t.n_bytes));
    }
    WeightMatrix w;
    w.format_ = WeightFormat::F32;
    w.rows_ = rows;
    w.cols_ = cols;
    const std::size_t elements = detail::checked_mul<FormatError>(rows, cols, fmt::format("tensor '{}' elements", t.name));
    w.data_ = detail::AlignedBuffer<std::byte>(
        detail::checked_mul<FormatError>(elements, sizeof(float), fmt::format("tensor '{}' as float bytes", t.name)));
    gguf::dequantize(t.type, t.data, reinterpret_cast<float*>(w.data_.data()), elements);
    return w;
}

DecoderConfig DecoderConfig::from_gguf(const gguf::File& f) {
    DecoderConfig c;
    c.architecture = f.get_string("general.architecture");
    const std::string& a = c.architecture;
    if (a == "llama" || a == "mistral") {
        c.rope_style = RopeStyle::Interleaved;
        c.qkv_bias = false;
    } else if (a == "qwen2") {
        c.rope_style = RopeStyle::Neox;
        c.qkv_bias = true;
    } else {
        throw ConfigError(fmt::format("decoder: architecture '{}' is not supported (llama, mistral, qwen2 are)", a));
    }
    // Every size is range-checked here, before anything is sized by it: a hostile value (block_count 2^40,
    // head_count 9 + 3 * 2^58 so that head_count * key_length wraps to a plausible width) is a FormatError.
    const std::size_t layer_limit = std::min<std::size_t>(f.tensors().size() / kTensorsPerLayer, kMaxHeads);
    if (const std::uint64_t layers = f.get_uint(a + ".block_count"); layers > layer_limit)
        throw FormatError(fmt::format("GGUF metadata: {}.block_count is {}, but the file's {} tensors hold at most {} "
                                      "layers of {} tensors",
                                      a, layers, f.tensors().size(), layer_limit, kTensorsPerLayer));
    c.n_layers = read_size(f, a + ".block_count", 1, layer_limit);
    c.d_model = read_size(f, a + ".embedding_length", 1, kMaxWidth);
    c.d_ff = read_size(f, a + ".feed_forward_length", 1, kMaxWidth);
    c.n_heads = read_size(f, a + ".attention.head_count", 1, kMaxHeads);
    c.n_kv_heads = read_size(f, a + ".attention.head_count_kv", 1, c.n_heads, c.n_heads);
    if (!f.find(a + ".attention.key_length") && c.d_model % c.n_heads != 0) {
        throw FormatError(fmt::format("{0}.embedding_length ({1}) is not a multiple of {0}.attention.head_count ({2}) "
                                      "and {0}.attention.key_length is absent: no head size",
                                      a, c.d_model, c.n_heads));
    }
    c.head_dim = read_size(f, a + ".attention.key_length", 1, kMaxHeadDim, c.d_model / c.n_heads);
    // Within the bounds above these cannot wrap; checked all the same, so a future bound change cannot
    // reintroduce the wrap that let a shape check pass.
    (void)detail::checked_mul<FormatError>(c.n_heads, c.head_dim, "GGUF metadata: head_count x key_length");
    (void)detail::checked_mul<FormatError>(c.n_kv_heads, c.head_dim, "GGUF metadata: head_count_kv x key_length");
    c.rope_dim = read_size(f, a + ".rope.dimension_count", 1, c.head_dim, c.head_dim);
    c.context_length = f.get_uint_or(a + ".context_length", 0);
    if (f.find(a + ".attention.value_length") &&
        f.get_uint(a + ".attention.value_length") != f.get_uint_or(a + ".attention.key_length", c.head_dim)) {
        throw FormatError(fmt::format("{0}.attention.value_length ({1}) differs from the key length ({2}); the "
                                      "decoder needs one head size",
                                      a, f.get_uint(a + ".attention.value_length"), c.head_dim));
    }
    c.rope_base = read_positive(f, a + ".rope.freq_base", 10000.0);
    // RoPE scaling: linear (positions divided by the factor) is a multiply; YaRN and the others change the
    // attention itself, so a file that asks for them is refused rather than run wrongly.
    const std::string scaling = f.get_string_or(a + ".rope.scaling.type", "none");
    if (scaling == "linear") {
        c.rope_position_scale = reciprocal_of_factor(f, a + ".rope.scaling.factor");
    } else if (scaling != "none") {
        throw ConfigError(fmt::format("decoder: RoPE scaling '{}' ({}.rope.scaling.type) is not supported (none, "
                                      "linear are)",
                                      scaling, a));
    } else if (f.find(a + ".rope.scale_linear")) {
        c.rope_position_scale = reciprocal_of_factor(f, a + ".rope.scale_linear");
    }
    c.sliding_window = f.get_uint_or(a + ".attention.sliding_window", 0);
    if (a != "qwen2") c.qkv_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
    c.norm_eps = read_positive(f, a + ".attention.layer_norm_rms_epsilon");
    c.vocab_size = f.tensor("token_embd.weight").shape.size() == 2 ? f.tensor("token_embd.weight").shape[1] : 0;
    // The tokenizer's ids index the embedding and the sampler's ids index the tokenizer: the two must agree
    // here, not at the first token outside one of them.
    if (const gguf::KeyValue* tokens = f.find("tokenizer.ggml.tokens")) {
        const auto* array = std::get_if<std::shared_ptr<gguf::Array>>(&tokens->value);
        if (array == nullptr || *array == nullptr)
            throw FormatError("GGUF metadata: tokenizer.ggml.tokens is not an array");
        if ((*array)->values.size() != c.vocab_size)
            throw FormatError(fmt::format("GGUF: the tokenizer has {} tokens but token_embd.weight has {} rows",
                                          (*array)->values.size(), c.vocab_size));
    }
    if (f.find("tokenizer.ggml.bos_token_id")) c.bos_id = read_token_id(f, "tokenizer.ggml.bos_token_id", c.vocab_size);
    if (f.find("tokenizer.ggml.eos_token_id")) c.eos_id = read_token_id(f, "tokenizer.ggml.eos_token_id", c.vocab_size);
    try {
        c.validate();
    } catch (const ConfigError& e) {
        throw FormatError(fmt::format("GGUF metadata: {}", e.what()));
    }
    return c;
}

DecoderWeights DecoderWeights::from_gguf(const gguf::File& file, const WeightLoadOptions& options) {
    const WeightStorage storage = options.keep_quantized ? WeightStorage::as_stored : WeightStorage::f32;
    DecoderWeights w;
    w.config = DecoderConfig::from_gguf(file);
    const DecoderConfig& c = w.config;
    w.token_embedding = load_matrix(file, "token_embd.weight", c.vocab_size, c.d_model, storage);
    w.output_norm = load_vector(file, "output_norm.weight", c.d_model);
    std::size_t used = 2;  // tensors consumed, to find any the decoder would silently ignore
    if (file.find_tensor("output.weight")) {
        w.output = load_matrix(file, "output.weight", c.vocab_size, c.d_model, storage);
        ++used;
    }
    if (file.find_tensor("rope_freqs.weight")) {
        w.rope_freqs = load_vector(file, "rope_freqs.weight", c.rope_dim / 2);
        ++used;
    }
    w.layers.resize(c.n_layers);
    for (std::size_t i = 0; i < c.n_layers; ++i) {
        const std::string p = fmt::format("blk.{}.", i);
        LayerWeights& l = w.layers[i];
        l.attn_norm = load_vector(file, p + "attn_norm.weight", c.d_model);
        l.wq = load_matrix(file, p + "attn_q.weight", c.q_dim(), c.d_model, storage);
        l.wk = load_matrix(file, p + "attn_k.weight", c.kv_dim(), c.d_model, storage);
        l.wv = load_matrix(file, p + "attn_v.weight", c.kv_dim(), c.d_model, storage);
        if (c.qkv_bias) {
            l.bq = load_vector(file, p + "attn_q.bias", c.q_dim());
            l.bk = load_vector(file, p + "attn_k.bias", c.kv_dim());
            l.bv = load_vector(file, p + "attn_v.bias", c.kv_dim());
        }
        l.wo = load_matrix(file, p + "attn_output.weight", c.d_model, c.q_dim(), storage);
        l.ffn_norm = load_vector(file, p + "ffn_norm.weight", c.d_model);
        l.w_gate = load_matrix(file, p + "ffn_gate.weight", c.d_ff, c.d_model, storage);
        l.w_up = load_matrix(file, p + "ffn_up.weight", c.d_ff, c.d_model, storage);
        l.w_down = load_matrix(file, p + "ffn_down.weight", c.d_model, c.d_ff, storage);
        used += c.qkv_bias ? 12 : 9;
    }
    if (used != file.tensors().size()) {
        // Names are unique in a GGUF (the reader rejects duplicates), so a count mismatch means an extra tensor.
        for (const gguf::TensorInfo& t : file.tensors()) {
            if (!is_decoder_tensor(t.name, c)) {
                throw FormatError(fmt::format("tensor '{}' is not used by the {} decoder (an unsupported variant?); "
                                              "refusing to run the model without it",
                                              t.name, c.architecture));
            }
        }
    }
    file.check_unchanged();  // every weight was copied: were they the file's bytes?
    return w;
}

std::string model_fingerprint(const gguf::File& file) {
    // Metadata and tensor infos as text (values through their variant index and bytes), then the tensor bytes.
    std::string described;
    const auto describe = [&described](const auto& self, const gguf::Value& v) -> void {
        described += std::to_string(v.index()) + ':';
        std::visit(
            [&](const auto& x) {
                using X = std::decay_t<decltype(x)>;
                if constexpr (std::is_same_v<X, std::string>) {
                    described += std::to_string(x.size()) + ':' + x;
                } else if constexpr (std::is_same_v<X, std::shared_ptr<gguf::Array>>) {
                    described += '[' + std::to_string(x->values.size()) + ':';
                    for (const gguf::Value& e : x->values) self(self, e);
                    described += ']';
                } else {
                    described.append(reinterpret_cast<const char*>(&x), sizeof(x));
                }
            },
            v);
        described += ';';
    };
    for (const gguf::KeyValue& kv : file.metadata()) {
        described += kv.key + '=';
        describe(describe, kv.value);
    }
    std::string weights;
    for (const gguf::TensorInfo& t : file.tensors()) {
        described += fmt::format("{}:{}:{};", t.name, gguf::tensor_type_name(t.type), fmt::join(t.shape, "x"));
        weights += fingerprint_digest(std::span(t.data, t.n_bytes));
    }
    file.check_unchanged();
    return fmt::format("{} '{}' meta:{} weights:{}", file.get_string_or("general.architecture", "?"),
                       file.get_string_or("general.name", ""), fingerprint_digest(std::string_view(described)),
                       fingerprint_digest(std::string_view(weights)));
}

Decoder Decoder::load(const std::filesystem::path& path, const DecoderOptions& options) {
    const gguf::File file = gguf::File::open(path);
    return Decoder(DecoderWeights::from_gguf(file, {.keep_quantized = options.keep_quantized}), options.threads);
}

}  // namespace kvcache
