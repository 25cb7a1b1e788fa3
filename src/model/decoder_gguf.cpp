// The decoder's GGUF side: configuration from metadata and weights from tensors. Kept apart so that code
// using only random weights does not link the GGUF reader.
#include "kvcache/model/decoder.hpp"

#include <fmt/ranges.h>

#include "kvcache/persist/cache_file.hpp"
#include "kvcache/model/gguf.hpp"

namespace kvcache {

namespace {

std::vector<float> load_vector(const gguf::File& file, const std::string& name, std::size_t expected) {
    const gguf::TensorInfo& t = file.tensor(name);
    if (t.n_elements != expected) {
        throw FormatError(fmt::format("tensor '{}' has {} elements, expected {}", name, t.n_elements, expected));
    }
    return gguf::dequantize(t);
}

WeightMatrix load_matrix(const gguf::File& file, const std::string& name, std::size_t rows, std::size_t cols,
                         bool keep_quantized) {
    const gguf::TensorInfo& t = file.tensor(name);
    if (t.shape.size() != 2 || t.shape[0] != cols || t.shape[1] != rows) {
        std::string shape;
        for (auto s : t.shape) shape += (shape.empty() ? "" : ", ") + std::to_string(s);
        throw FormatError(fmt::format("tensor '{}' has shape [{}], expected [{}, {}] (ggml order: in, out)", name,
                                      shape, cols, rows));
    }
    return WeightMatrix::from_gguf(t, keep_quantized);
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

WeightMatrix WeightMatrix::from_gguf(const gguf::TensorInfo& t, bool keep_quantized) {
    if (t.shape.size() != 2) {
        throw ShapeError(fmt::format("tensor '{}' has {} dimensions; a weight matrix needs 2", t.name, t.shape.size()));
    }
    const std::size_t cols = t.shape[0], rows = t.shape[1];
    if (keep_quantized && t.type == gguf::TensorType::Q8_0) {
        return from_blocks(WeightFormat::Q8_0, rows, cols, std::span(t.data, t.n_bytes));
    }
    if (keep_quantized && t.type == gguf::TensorType::Q4_1) {
        return from_blocks(WeightFormat::Q4_1, rows, cols, std::span(t.data, t.n_bytes));
    }
    if (t.type == gguf::TensorType::F32) {
        return from_blocks(WeightFormat::F32, rows, cols, std::span(t.data, t.n_bytes));
    }
    WeightMatrix w;
    w.format_ = WeightFormat::F32;
    w.rows_ = rows;
    w.cols_ = cols;
    w.data_ = detail::AlignedBuffer<std::byte>(rows * cols * sizeof(float));
    gguf::dequantize(t.type, t.data, reinterpret_cast<float*>(w.data_.data()), rows * cols);
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
    c.n_layers = f.get_uint(a + ".block_count");
    c.d_model = f.get_uint(a + ".embedding_length");
    c.d_ff = f.get_uint(a + ".feed_forward_length");
    c.n_heads = f.get_uint(a + ".attention.head_count");
    c.n_kv_heads = f.get_uint_or(a + ".attention.head_count_kv", c.n_heads);
    if (c.n_heads == 0) throw FormatError(fmt::format("{}.attention.head_count is 0", a));
    if (!f.find(a + ".attention.key_length") && c.d_model % c.n_heads != 0) {
        throw FormatError(fmt::format("{0}.embedding_length ({1}) is not a multiple of {0}.attention.head_count ({2}) "
                                      "and {0}.attention.key_length is absent: no head size",
                                      a, c.d_model, c.n_heads));
    }
    c.head_dim = f.get_uint_or(a + ".attention.key_length", c.d_model / c.n_heads);
    c.rope_dim = f.get_uint_or(a + ".rope.dimension_count", c.head_dim);
    c.context_length = f.get_uint_or(a + ".context_length", 0);
    if (f.find(a + ".attention.value_length") &&
        f.get_uint(a + ".attention.value_length") != f.get_uint_or(a + ".attention.key_length", c.head_dim)) {
        throw FormatError(fmt::format("{0}.attention.value_length ({1}) differs from the key length ({2}); the "
                                      "decoder needs one head size",
                                      a, f.get_uint(a + ".attention.value_length"), c.head_dim));
    }
    c.rope_base = static_cast<float>(f.get_float_or(a + ".rope.freq_base", 10000.0));
    // RoPE scaling: linear (positions divided by the factor) is a multiply; YaRN and the others change the
    // attention itself, so a file that asks for them is refused rather than run wrongly.
    const std::string scaling = f.get_string_or(a + ".rope.scaling.type", "none");
    if (scaling == "linear") {
        c.rope_position_scale = static_cast<float>(1.0 / f.get_float(a + ".rope.scaling.factor"));
    } else if (scaling != "none") {
        throw ConfigError(fmt::format("decoder: RoPE scaling '{}' ({}.rope.scaling.type) is not supported (none, "
                                      "linear are)",
                                      scaling, a));
    } else if (f.find(a + ".rope.scale_linear")) {
        c.rope_position_scale = static_cast<float>(1.0 / f.get_float(a + ".rope.scale_linear"));
    }
    c.sliding_window = f.get_uint_or(a + ".attention.sliding_window", 0);
    if (a != "qwen2") c.qkv_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
    c.norm_eps = static_cast<float>(f.get_float(a + ".attention.layer_norm_rms_epsilon"));
    c.vocab_size = f.tensor("token_embd.weight").shape.size() == 2 ? f.tensor("token_embd.weight").shape[1] : 0;
    if (f.find("tokenizer.ggml.bos_token_id")) c.bos_id = static_cast<std::int32_t>(f.get_int("tokenizer.ggml.bos_token_id"));
    if (f.find("tokenizer.ggml.eos_token_id")) c.eos_id = static_cast<std::int32_t>(f.get_int("tokenizer.ggml.eos_token_id"));
    try {
        c.validate();
    } catch (const ConfigError& e) {
        throw FormatError(fmt::format("GGUF metadata: {}", e.what()));
    }
    return c;
}

DecoderWeights DecoderWeights::from_gguf(const gguf::File& file, bool keep_quantized) {
    DecoderWeights w;
    w.config = DecoderConfig::from_gguf(file);
    const DecoderConfig& c = w.config;
    w.token_embedding = load_matrix(file, "token_embd.weight", c.vocab_size, c.d_model, keep_quantized);
    w.output_norm = load_vector(file, "output_norm.weight", c.d_model);
    std::size_t used = 2;  // tensors consumed, to find any the decoder would silently ignore
    if (file.find_tensor("output.weight")) {
        w.output = load_matrix(file, "output.weight", c.vocab_size, c.d_model, keep_quantized);
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
        l.wq = load_matrix(file, p + "attn_q.weight", c.q_dim(), c.d_model, keep_quantized);
        l.wk = load_matrix(file, p + "attn_k.weight", c.kv_dim(), c.d_model, keep_quantized);
        l.wv = load_matrix(file, p + "attn_v.weight", c.kv_dim(), c.d_model, keep_quantized);
        if (c.qkv_bias) {
            l.bq = load_vector(file, p + "attn_q.bias", c.q_dim());
            l.bk = load_vector(file, p + "attn_k.bias", c.kv_dim());
            l.bv = load_vector(file, p + "attn_v.bias", c.kv_dim());
        }
        l.wo = load_matrix(file, p + "attn_output.weight", c.d_model, c.q_dim(), keep_quantized);
        l.ffn_norm = load_vector(file, p + "ffn_norm.weight", c.d_model);
        l.w_gate = load_matrix(file, p + "ffn_gate.weight", c.d_ff, c.d_model, keep_quantized);
        l.w_up = load_matrix(file, p + "ffn_up.weight", c.d_ff, c.d_model, keep_quantized);
        l.w_down = load_matrix(file, p + "ffn_down.weight", c.d_model, c.d_ff, keep_quantized);
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
    return fmt::format("{} '{}' meta:{} weights:{}", file.get_string_or("general.architecture", "?"),
                       file.get_string_or("general.name", ""), fingerprint_digest(std::string_view(described)),
                       fingerprint_digest(std::string_view(weights)));
}

Decoder Decoder::load(const std::filesystem::path& path, const DecoderOptions& options) {
    const gguf::File file = gguf::File::open(path);
    return Decoder(DecoderWeights::from_gguf(file, options.keep_quantized), options.threads);
}

}  // namespace kvcache
