// The encoder-decoder's non-template parts: config, weight loading, the layer stages, encode, generate.
#include "kvcache/model/encoder_decoder.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kvcache/attention/dense.hpp"
#include "kvcache/model/matmul.hpp"
#include "kvcache/model/ops.hpp"
#include "kvcache/model/safetensors.hpp"

namespace kvcache::model {

namespace detail {
std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}
double seconds_since(std::int64_t start_ns) { return static_cast<double>(now_ns() - start_ns) * 1e-9; }
}  // namespace detail

namespace {

using json = nlohmann::json;

void layer_norm(const float* x, std::size_t n, std::size_t d, const LayerNormWeights& w, float eps, float* y) {
    for (std::size_t i = 0; i < n; ++i) {
        const float* xi = x + i * d;
        double mean = 0;
        for (std::size_t k = 0; k < d; ++k) mean += xi[k];
        mean /= static_cast<double>(d);
        double var = 0;
        for (std::size_t k = 0; k < d; ++k) var += (xi[k] - mean) * (xi[k] - mean);
        var /= static_cast<double>(d);  // biased, as nn.LayerNorm
        const float rstd = static_cast<float>(1.0 / std::sqrt(var + eps));
        const float m = static_cast<float>(mean);
        float* yi = y + i * d;
        for (std::size_t k = 0; k < d; ++k) yi[k] = (xi[k] - m) * rstd * w.weight[k] + w.bias[k];
    }
}

void activate(Activation a, float* x, std::size_t n) {
    if (a == Activation::ReLU) {
        for (std::size_t i = 0; i < n; ++i) x[i] = std::max(x[i], 0.0f);
    } else {  // PyTorch's default "gelu": the exact erf form
        for (std::size_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678118654752f));
    }
}

/// Reads `key` of the config object as T: FormatError naming the key for a missing key or a value of another
/// JSON type (a negative or fractional size, a string for a number, ...). Integers are range-checked into T
/// here, before any narrowing conversion; floats must be finite doubles (1e400 parses to infinity).
template <class T>
T get_key(const json& j, const char* key) {
    if (!j.contains(key)) throw FormatError(fmt::format("encoder-decoder config: missing key \"{}\"", key));
    const json& v = j.at(key);
    auto wrong = [&](const char* expected) {
        return FormatError(fmt::format("encoder-decoder config: \"{}\" must be {}, is {}", key, expected, v.dump()));
    };
    if constexpr (std::is_same_v<T, bool>) {
        if (!v.is_boolean()) throw wrong("true or false");
        return v.get<bool>();
    } else if constexpr (std::is_same_v<T, std::string>) {
        if (!v.is_string()) throw wrong("a string");
        return v.get<std::string>();
    } else if constexpr (std::is_floating_point_v<T>) {
        if (!v.is_number()) throw wrong("a number");
        const double d = v.get<double>();
        if (!std::isfinite(d)) throw wrong("a finite number");
        return static_cast<T>(d);
    } else if constexpr (std::is_unsigned_v<T>) {
        if (!v.is_number_unsigned()) throw wrong("a natural number");
        return static_cast<T>(v.get<std::uint64_t>());
    } else {
        static_assert(std::is_same_v<T, std::int32_t>);
        if (!v.is_number_integer()) throw wrong("an integer");
        if (v.is_number_unsigned() && v.get<std::uint64_t>() > std::uint64_t{INT32_MAX}) throw wrong("a 32-bit integer");
        const std::int64_t i = v.get<std::int64_t>();
        if (i < INT32_MIN || i > INT32_MAX) throw wrong("a 32-bit integer");
        return static_cast<std::int32_t>(i);
    }
}

template <class T>
T get_key_or(const json& j, const char* key, T fallback) {
    return j.contains(key) ? get_key<T>(j, key) : fallback;
}

/// a * b, or ConfigError naming both when the product does not fit a size_t.
std::size_t checked_mul(std::size_t a, std::size_t b, std::string_view what) {
    if (a != 0 && b > SIZE_MAX / a)
        throw ConfigError(fmt::format("encoder-decoder config: {} = {} x {} overflows", what, a, b));
    return a * b;
}

void check_size(const std::vector<float>& v, std::size_t expected, const std::string& name, const std::string& shape) {
    if (v.size() != expected)
        throw ShapeError("encoder-decoder: weight " + name + " holds " + std::to_string(v.size()) + " floats, expected " +
                         shape + " = " + std::to_string(expected));
}

std::string dims(std::size_t a, std::size_t b = 0) {
    return b ? fmt::format("[{}, {}]", a, b) : fmt::format("[{}]", a);
}

}  // namespace

// ---------------------------------------------------------------- config

void EncoderDecoderConfig::validate() const {
    // Every size is bounded before anything is allocated from it, so no product below can wrap and no
    // hostile config (max_positions = 2^59, ...) can size a buffer: the limits are far above any model this
    // reference implementation is meant for, and far below what would overflow.
    auto in_range = [](std::size_t v, std::size_t limit, const char* name) {
        if (v == 0 || v > limit)
            throw ConfigError(fmt::format("encoder-decoder config: {} is {}, must be in [1, {}]", name, v, limit));
    };
    in_range(d_model, kMaxDModel, "d_model");
    in_range(n_heads, d_model, "nhead");
    in_range(d_ff, kMaxFeedForward, "dim_feedforward");
    in_range(n_encoder_layers, kMaxLayers, "num_encoder_layers");
    in_range(n_decoder_layers, kMaxLayers, "num_decoder_layers");
    in_range(src_vocab_size, kMaxVocab, "src_vocab_size");
    in_range(tgt_vocab_size, kMaxVocab, "tgt_vocab_size");
    in_range(max_positions, kMaxPositions, "max_positions");
    if (d_model % n_heads != 0)
        throw ConfigError(fmt::format("encoder-decoder config: d_model {} is not a multiple of nhead {}", d_model, n_heads));
    // The largest tables, with checked products all the same (the limits above keep them far from wrapping).
    checked_mul(3 * d_model, d_model, "3 * d_model * d_model (in_proj_weight)");
    checked_mul(d_ff, d_model, "dim_feedforward * d_model");
    checked_mul(std::max(src_vocab_size, tgt_vocab_size), d_model, "vocab * d_model");
    checked_mul(max_positions, d_model, "max_positions * d_model");
    if (!std::isfinite(layer_norm_eps) || !(layer_norm_eps > 0.0f) || layer_norm_eps > 1.0f)
        throw ConfigError(fmt::format("encoder-decoder config: layer_norm_eps must be in (0, 1], is {}", layer_norm_eps));
    auto token = [&](std::int32_t id, const char* name) {
        if (id < 0 || static_cast<std::size_t>(id) >= tgt_vocab_size)
            throw ConfigError(fmt::format("encoder-decoder config: {} {} is outside the target vocabulary of {}", name,
                                          id, tgt_vocab_size));
    };
    token(bos_token_id, "bos_token_id");
    token(eos_token_id, "eos_token_id");
    if (pad_token_id < -1 || (pad_token_id >= 0 && static_cast<std::size_t>(pad_token_id) >= src_vocab_size))
        throw ConfigError(fmt::format("encoder-decoder config: pad_token_id {} is neither -1 nor in the source "
                                      "vocabulary of {}", pad_token_id, src_vocab_size));
}

EncoderDecoderConfig EncoderDecoderConfig::from_json(std::string_view text) {
    json j;
    try {
        j = json::parse(text.begin(), text.end());
    } catch (const json::exception& e) {
        throw FormatError(std::string("encoder-decoder config: not valid JSON: ") + e.what());
    }
    if (!j.is_object()) throw FormatError("encoder-decoder config: not a JSON object");
    EncoderDecoderConfig c;
    c.d_model = get_key<std::size_t>(j, "d_model");
    c.n_heads = get_key<std::size_t>(j, "nhead");
    c.d_ff = get_key<std::size_t>(j, "dim_feedforward");
    c.n_encoder_layers = get_key<std::size_t>(j, "num_encoder_layers");
    c.n_decoder_layers = get_key<std::size_t>(j, "num_decoder_layers");
    c.src_vocab_size = get_key<std::size_t>(j, "src_vocab_size");
    c.tgt_vocab_size = get_key<std::size_t>(j, "tgt_vocab_size");
    c.max_positions = get_key<std::size_t>(j, "max_positions");
    c.norm_first = get_key_or<bool>(j, "norm_first", false);
    // Range-checked in double first: a double beyond float's range would make the conversion undefined.
    const double eps = get_key_or<double>(j, "layer_norm_eps", 1e-5);
    if (!(eps > 0.0) || eps > 1.0)
        throw ConfigError(fmt::format("encoder-decoder config: layer_norm_eps must be in (0, 1], is {}", eps));
    c.layer_norm_eps = static_cast<float>(eps);
    c.scale_embeddings = get_key_or<bool>(j, "scale_embeddings", true);
    const std::string act = get_key_or<std::string>(j, "activation", "relu");
    if (act == "relu") c.activation = Activation::ReLU;
    else if (act == "gelu") c.activation = Activation::GELU;
    else throw ConfigError("encoder-decoder config: activation \"" + act + "\" is not \"relu\" or \"gelu\"");
    const std::string pos = get_key_or<std::string>(j, "positions", "sinusoidal");
    if (pos == "sinusoidal") c.positions = PositionKind::Sinusoidal;
    else if (pos == "learned") c.positions = PositionKind::Learned;
    else throw ConfigError("encoder-decoder config: positions \"" + pos + "\" is not \"sinusoidal\" or \"learned\"");
    c.bos_token_id = get_key_or<std::int32_t>(j, "bos_token_id", 1);
    c.eos_token_id = get_key_or<std::int32_t>(j, "eos_token_id", 2);
    c.pad_token_id = get_key_or<std::int32_t>(j, "pad_token_id", 0);
    c.validate();
    return c;
}

EncoderDecoderConfig EncoderDecoderConfig::load(const std::filesystem::path& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw IoError("encoder-decoder: cannot open config '" + path.string() + "'");
    std::stringstream s;
    s << f.rdbuf();
    try {
        return from_json(s.str());
    } catch (const FormatError& e) {
        throw FormatError(std::string(e.what()) + " [in " + path.string() + "]");
    }
}

// ---------------------------------------------------------------- construction

EncoderDecoder::EncoderDecoder(EncoderDecoderConfig config, EncoderDecoderWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
    config_.validate();
    const std::size_t d = config_.d_model, ff = config_.d_ff, P = config_.max_positions;
    auto& w = weights_;
    check_size(w.src_embed, config_.src_vocab_size * d, "src_embed.weight", dims(config_.src_vocab_size, d));
    check_size(w.tgt_embed, config_.tgt_vocab_size * d, "tgt_embed.weight", dims(config_.tgt_vocab_size, d));
    if (config_.positions == PositionKind::Learned) {
        check_size(w.src_pos, P * d, "src_pos.weight", dims(P, d));
        check_size(w.tgt_pos, P * d, "tgt_pos.weight", dims(P, d));
    }
    auto check_linear = [&](const LinearWeights& l, std::size_t out, std::size_t in, const std::string& name) {
        check_size(l.weight, out * in, name + ".weight", dims(out, in));
        if (!l.bias.empty()) check_size(l.bias, out, name + ".bias", dims(out));
    };
    auto check_norm = [&](const LayerNormWeights& n, const std::string& name) {
        check_size(n.weight, d, name + ".weight", dims(d));
        check_size(n.bias, d, name + ".bias", dims(d));
    };
    auto check_attn = [&](const AttentionWeights& a, const std::string& name) {
        check_linear(a.in_proj, 3 * d, d, name + ".in_proj");
        check_linear(a.out_proj, d, d, name + ".out_proj");
    };
    if (w.encoder.size() != config_.n_encoder_layers || w.decoder.size() != config_.n_decoder_layers)
        throw ShapeError("encoder-decoder: weights for " + std::to_string(w.encoder.size()) + " encoder and " +
                         std::to_string(w.decoder.size()) + " decoder layers, the config says " +
                         std::to_string(config_.n_encoder_layers) + " and " + std::to_string(config_.n_decoder_layers));
    for (std::size_t l = 0; l < w.encoder.size(); ++l) {
        const std::string p = "transformer.encoder.layers." + std::to_string(l);
        check_attn(w.encoder[l].self_attn, p + ".self_attn");
        check_linear(w.encoder[l].linear1, ff, d, p + ".linear1");
        check_linear(w.encoder[l].linear2, d, ff, p + ".linear2");
        check_norm(w.encoder[l].norm1, p + ".norm1");
        check_norm(w.encoder[l].norm2, p + ".norm2");
    }
    for (std::size_t l = 0; l < w.decoder.size(); ++l) {
        const std::string p = "transformer.decoder.layers." + std::to_string(l);
        check_attn(w.decoder[l].self_attn, p + ".self_attn");
        check_attn(w.decoder[l].cross_attn, p + ".multihead_attn");
        check_linear(w.decoder[l].linear1, ff, d, p + ".linear1");
        check_linear(w.decoder[l].linear2, d, ff, p + ".linear2");
        check_norm(w.decoder[l].norm1, p + ".norm1");
        check_norm(w.decoder[l].norm2, p + ".norm2");
        check_norm(w.decoder[l].norm3, p + ".norm3");
    }
    check_norm(w.encoder_norm, "transformer.encoder.norm");
    check_norm(w.decoder_norm, "transformer.decoder.norm");
    check_linear(w.generator, config_.tgt_vocab_size, d, "generator");

    if (config_.positions == PositionKind::Sinusoidal) {
        // in float, step by step as the PyTorch recipe does, so the table matches it to the last bit or two
        sinusoid_.assign(P * d, 0.0f);
        const float factor = static_cast<float>(-std::log(10000.0) / static_cast<double>(d));
        for (std::size_t i = 0; 2 * i < d; ++i) {
            const float div = std::exp(static_cast<float>(2 * i) * factor);
            for (std::size_t p = 0; p < P; ++p) {
                const float angle = static_cast<float>(p) * div;
                sinusoid_[p * d + 2 * i] = std::sin(angle);
                if (2 * i + 1 < d) sinusoid_[p * d + 2 * i + 1] = std::cos(angle);
            }
        }
    }
}

EncoderDecoder EncoderDecoder::from_safetensors(EncoderDecoderConfig config, const safetensors::File& file) {
    config.validate();
    const std::size_t d = config.d_model, ff = config.d_ff, P = config.max_positions;
    std::set<std::string> used;
    auto load = [&](const std::string& name, std::initializer_list<std::size_t> shape) {
        used.insert(name);
        return file.load(name, shape);
    };
    auto linear_w = [&](const std::string& name, std::size_t out, std::size_t in, bool bias_optional = false) {
        LinearWeights l;
        l.weight = load(name + ".weight", {out, in});
        if (!bias_optional || file.find(name + ".bias")) l.bias = load(name + ".bias", {out});
        return l;
    };
    auto norm_w = [&](const std::string& name) {
        return LayerNormWeights{load(name + ".weight", {d}), load(name + ".bias", {d})};
    };
    auto attn_w = [&](const std::string& name) {
        AttentionWeights a;
        a.in_proj.weight = load(name + ".in_proj_weight", {3 * d, d});
        a.in_proj.bias = load(name + ".in_proj_bias", {3 * d});
        a.out_proj = linear_w(name + ".out_proj", d, d);
        return a;
    };
    EncoderDecoderWeights w;
    w.src_embed = load("src_embed.weight", {config.src_vocab_size, d});
    w.tgt_embed = load("tgt_embed.weight", {config.tgt_vocab_size, d});
    if (config.positions == PositionKind::Learned) {
        w.src_pos = load("src_pos.weight", {P, d});
        w.tgt_pos = load("tgt_pos.weight", {P, d});
    }
    for (std::size_t l = 0; l < config.n_encoder_layers; ++l) {
        const std::string p = "transformer.encoder.layers." + std::to_string(l);
        EncoderLayerWeights e;
        e.self_attn = attn_w(p + ".self_attn");
        e.linear1 = linear_w(p + ".linear1", ff, d);
        e.linear2 = linear_w(p + ".linear2", d, ff);
        e.norm1 = norm_w(p + ".norm1");
        e.norm2 = norm_w(p + ".norm2");
        w.encoder.push_back(std::move(e));
    }
    for (std::size_t l = 0; l < config.n_decoder_layers; ++l) {
        const std::string p = "transformer.decoder.layers." + std::to_string(l);
        DecoderLayerWeights e;
        e.self_attn = attn_w(p + ".self_attn");
        e.cross_attn = attn_w(p + ".multihead_attn");
        e.linear1 = linear_w(p + ".linear1", ff, d);
        e.linear2 = linear_w(p + ".linear2", d, ff);
        e.norm1 = norm_w(p + ".norm1");
        e.norm2 = norm_w(p + ".norm2");
        e.norm3 = norm_w(p + ".norm3");
        w.decoder.push_back(std::move(e));
    }
    w.encoder_norm = norm_w("transformer.encoder.norm");
    w.decoder_norm = norm_w("transformer.decoder.norm");
    w.generator = linear_w("generator", config.tgt_vocab_size, d, /*bias_optional=*/true);
    // A tensor the config does not account for means the file and the config disagree (more layers, learned
    // positions, another architecture): refuse rather than silently ignore weights.
    for (const auto& t : file.tensors())
        if (!used.count(t.name))
            throw FormatError("encoder-decoder: tensor '" + t.name + "' " + t.shape_string() +
                              " is not part of the model the config describes (" + std::to_string(config.n_encoder_layers) +
                              " encoder, " + std::to_string(config.n_decoder_layers) + " decoder layers, " +
                              (config.positions == PositionKind::Learned ? "learned" : "sinusoidal") + " positions)");
    return EncoderDecoder(std::move(config), std::move(w));
}

EncoderDecoder EncoderDecoder::load(const std::filesystem::path& config_json, const std::filesystem::path& weights) {
    auto config = EncoderDecoderConfig::load(config_json);
    const auto file = safetensors::File::open(weights);
    return from_safetensors(std::move(config), file);
}

EncoderDecoder EncoderDecoder::random(EncoderDecoderConfig config, std::uint64_t seed) {
    config.validate();
    std::mt19937_64 gen(seed);
    const std::size_t d = config.d_model, ff = config.d_ff, P = config.max_positions;
    auto uniform = [&](std::size_t n, float bound) {
        std::uniform_real_distribution<float> u(-bound, bound);
        std::vector<float> v(n);
        for (auto& x : v) x = u(gen);
        return v;
    };
    auto linear_w = [&](std::size_t out, std::size_t in) {
        const float b = 1.0f / std::sqrt(static_cast<float>(in));
        return LinearWeights{uniform(out * in, b), uniform(out, b)};
    };
    auto norm_w = [&] { return LayerNormWeights{std::vector<float>(d, 1.0f), std::vector<float>(d, 0.0f)}; };
    auto attn_w = [&] { return AttentionWeights{linear_w(3 * d, d), linear_w(d, d)}; };
    EncoderDecoderWeights w;
    w.src_embed = uniform(config.src_vocab_size * d, 1.0f);
    w.tgt_embed = uniform(config.tgt_vocab_size * d, 1.0f);
    if (config.positions == PositionKind::Learned) {
        w.src_pos = uniform(P * d, 1.0f);
        w.tgt_pos = uniform(P * d, 1.0f);
    }
    for (std::size_t l = 0; l < config.n_encoder_layers; ++l)
        w.encoder.push_back({attn_w(), linear_w(ff, d), linear_w(d, ff), norm_w(), norm_w()});
    for (std::size_t l = 0; l < config.n_decoder_layers; ++l)
        w.decoder.push_back({attn_w(), attn_w(), linear_w(ff, d), linear_w(d, ff), norm_w(), norm_w(), norm_w()});
    w.encoder_norm = norm_w();
    w.decoder_norm = norm_w();
    w.generator = linear_w(config.tgt_vocab_size, d);
    return EncoderDecoder(std::move(config), std::move(w));
}

// ---------------------------------------------------------------- layer stages

int EncoderDecoder::attention_threads(std::size_t n_queries, std::size_t n_keys) const {
    return n_queries * n_keys * config_.d_model >= (std::size_t{1} << 20) ? threads_ : 1;
}

void EncoderDecoder::check_tokens(std::span<const std::int32_t> tokens, std::size_t first_position, bool target) const {
    const std::size_t vocab = target ? config_.tgt_vocab_size : config_.src_vocab_size;
    if (first_position + tokens.size() > config_.max_positions)
        throw CapacityError(std::string("encoder-decoder: ") + (target ? "target" : "source") + " positions up to " +
                            std::to_string(first_position + tokens.size()) + " exceed max_positions " +
                            std::to_string(config_.max_positions));
    for (std::size_t i = 0; i < tokens.size(); ++i)
        if (tokens[i] < 0 || static_cast<std::size_t>(tokens[i]) >= vocab)
            throw IndexError(std::string("encoder-decoder: ") + (target ? "target" : "source") + " token " +
                             std::to_string(tokens[i]) + " at index " + std::to_string(i) + " is outside the vocabulary of " +
                             std::to_string(vocab));
}

void EncoderDecoder::embed_target(std::span<const std::int32_t> tokens, std::size_t p0, float* x) {
    const std::size_t d = config_.d_model;
    const float scale = config_.scale_embeddings ? static_cast<float>(std::sqrt(static_cast<double>(d))) : 1.0f;
    const float* pos = config_.positions == PositionKind::Learned ? weights_.tgt_pos.data() : sinusoid_.data();
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        const float* e = weights_.tgt_embed.data() + static_cast<std::size_t>(tokens[i]) * d;
        const float* p = pos + (p0 + i) * d;
        for (std::size_t k = 0; k < d; ++k) x[i * d + k] = e[k] * scale + p[k];
    }
}

const float* EncoderDecoder::sublayer_input(const LayerNormWeights& norm, const float* x, std::size_t n) {
    if (!config_.norm_first) return x;
    ws_.h.resize(n * config_.d_model);
    layer_norm(x, n, config_.d_model, norm, config_.layer_norm_eps, ws_.h.data());
    return ws_.h.data();
}

void EncoderDecoder::project(const LinearWeights& w, std::size_t first_row, std::size_t n_rows, std::size_t in,
                             const float* x, std::size_t n_tokens, float* out) const {
    // The shared float matmul (one fixed order per output, whatever the batch or thread count), then the bias:
    // a token's activations do not depend on how many tokens run together, so cached == uncached bitwise.
    matmul_f32(w.weight.data() + first_row * in, n_rows, in, x, n_tokens, out, threads_);
    if (!w.bias.empty()) add_bias(out, w.bias.data() + first_row, n_tokens, n_rows);
}

void EncoderDecoder::finish_attention(const AttentionWeights& w, const LayerNormWeights& norm, float* x, std::size_t n) {
    const std::size_t d = config_.d_model;
    ws_.tmp.resize(n * d);
    project(w.out_proj, 0, d, d, ws_.attn.data(), n, ws_.tmp.data());
    add_into(x, ws_.tmp.data(), n * d);
    if (!config_.norm_first) layer_norm(x, n, d, norm, config_.layer_norm_eps, x);
}

void EncoderDecoder::feed_forward_block(const LinearWeights& l1, const LinearWeights& l2, const LayerNormWeights& norm,
                                        float* x, std::size_t n) {
    const std::size_t d = config_.d_model, ff = config_.d_ff;
    const float* h = sublayer_input(norm, x, n);
    ws_.ff.resize(n * ff);
    ws_.tmp.resize(n * d);
    project(l1, 0, ff, d, h, n, ws_.ff.data());
    activate(config_.activation, ws_.ff.data(), n * ff);
    project(l2, 0, d, ff, ws_.ff.data(), n, ws_.tmp.data());
    add_into(x, ws_.tmp.data(), n * d);
    if (!config_.norm_first) layer_norm(x, n, d, norm, config_.layer_norm_eps, x);
}

void EncoderDecoder::project_cross_kv(std::size_t layer, std::span<const float> memory, std::size_t n_src) {
    const std::size_t d = config_.d_model;
    if (n_src == 0 || memory.size() != n_src * d)
        throw ShapeError("encoder-decoder: memory holds " + std::to_string(memory.size()) + " floats, expected " +
                         std::to_string(n_src) + " x " + std::to_string(d) + " (and at least one position)");
    ws_.k.resize(n_src * d);
    ws_.v.resize(n_src * d);
    const auto& in_proj = weights_.decoder[layer].cross_attn.in_proj;
    project(in_proj, d, d, d, memory.data(), n_src, ws_.k.data());
    project(in_proj, 2 * d, d, d, memory.data(), n_src, ws_.v.data());
    ++stats_.cross_kv_projections;
}

void EncoderDecoder::output_logits(const float* x, std::size_t n, std::span<float> logits) {
    const std::size_t d = config_.d_model;
    ws_.h.resize(n * d);
    layer_norm(x, n, d, weights_.decoder_norm, config_.layer_norm_eps, ws_.h.data());
    project(weights_.generator, 0, config_.tgt_vocab_size, d, ws_.h.data(), n, logits.data());
}

// ---------------------------------------------------------------- encoder

std::vector<float> EncoderDecoder::encode(std::span<const std::int32_t> source) {
    const std::size_t n = source.size(), d = config_.d_model, H = config_.n_heads, hd = config_.head_dim();
    if (n == 0) throw ShapeError("encoder-decoder: cannot encode an empty source");
    check_tokens(source, 0, false);
    ++stats_.sources_encoded;
    std::vector<float> x(n * d);  // (n_src, d_model): the residual stream, returned as the memory
    const float scale = config_.scale_embeddings ? static_cast<float>(std::sqrt(static_cast<double>(d))) : 1.0f;
    const float* pos = config_.positions == PositionKind::Learned ? weights_.src_pos.data() : sinusoid_.data();
    for (std::size_t i = 0; i < n; ++i) {
        const float* e = weights_.src_embed.data() + static_cast<std::size_t>(source[i]) * d;
        for (std::size_t k = 0; k < d; ++k) x[i * d + k] = e[k] * scale + pos[i * d + k];
    }
    ws_.q.resize(n * d);
    ws_.k.resize(n * d);
    ws_.v.resize(n * d);
    ws_.attn.resize(n * d);
    AttentionOptions full;
    full.causal = false;
    full.threads = attention_threads(n, n);
    for (const EncoderLayerWeights& w : weights_.encoder) {
        const float* h = sublayer_input(w.norm1, x.data(), n);
        project(w.self_attn.in_proj, 0, d, d, h, n, ws_.q.data());
        project(w.self_attn.in_proj, d, d, d, h, n, ws_.k.data());
        project(w.self_attn.in_proj, 2 * d, d, d, h, n, ws_.v.data());
        attention_dense(std::span<const float>(ws_.q.data(), n * d), n, H, std::span<const float>(ws_.k.data(), n * d),
                        std::span<const float>(ws_.v.data(), n * d), n, H, hd, std::span<float>(ws_.attn.data(), n * d),
                        full);
        finish_attention(w.self_attn, w.norm1, x.data(), n);
        feed_forward_block(w.linear1, w.linear2, w.norm2, x.data(), n);
    }
    layer_norm(x.data(), n, d, weights_.encoder_norm, config_.layer_norm_eps, x.data());
    return x;
}

// ---------------------------------------------------------------- decoding without a cache

std::vector<float> EncoderDecoder::decode_uncached(std::span<const float> memory, std::size_t n_src,
                                                   std::span<const std::int32_t> target) {
    if (target.empty()) throw ShapeError("encoder-decoder: decode of 0 tokens");
    // Plain arrays for this one pass, dropped afterwards: nothing carries over to the next step, so every
    // step pays for the whole prefix and for the cross K/V projections again.
    const std::size_t L = config_.n_decoder_layers, H = config_.n_heads, hd = config_.head_dim();
    MultiLayerKVCache<float> self(L, H, hd, 1, target.size(), Growth::Fixed);
    CrossAttentionCache<float> cross(L, H, hd, 1, n_src);
    write_cross(memory, n_src, cross, 0);
    std::vector<float> logits(target.size() * config_.tgt_vocab_size);
    decode(target, 0, self, cross, logits);
    return logits;
}

// ---------------------------------------------------------------- generation

std::size_t EncoderDecoder::check_sources(const std::vector<std::vector<std::int32_t>>& sources,
                                          const Seq2SeqGenerateOptions& o) const {
    if (sources.empty()) throw ShapeError("encoder-decoder: generate needs at least one source");
    for (std::size_t r = 0; r < sources.size(); ++r) {
        if (sources[r].empty()) throw ShapeError("encoder-decoder: source " + std::to_string(r) + " is empty");
        check_tokens(sources[r], 0, false);
    }
    if (o.max_new_tokens > config_.max_positions)
        throw ConfigError("encoder-decoder: max_new_tokens " + std::to_string(o.max_new_tokens) +
                          " needs more target positions than max_positions " + std::to_string(config_.max_positions));
    validate(o.sampling);
    return sources.size();
}

Seq2SeqResult EncoderDecoder::generate(const std::vector<std::vector<std::int32_t>>& sources,
                                       const Seq2SeqGenerateOptions& options) {
    const std::size_t B = check_sources(sources, options);
    std::size_t longest = 0;
    for (const auto& s : sources) longest = std::max(longest, s.size());
    if (options.use_cache) {
        auto cache = make_cache<float>(B, std::max<std::size_t>(options.max_new_tokens, 1), longest);
        return generate_with(sources, options, cache.self, cache.cross);
    }
    Seq2SeqResult result;
    result.tokens.resize(B);
    auto start = detail::now_ns();
    std::vector<std::vector<float>> memories;
    for (const auto& s : sources) memories.push_back(encode(s));
    result.encode_seconds = detail::seconds_since(start);
    start = detail::now_ns();
    std::vector<Sampler> samplers(B, Sampler(options.sampling));
    std::vector<std::vector<std::int32_t>> history(B, std::vector<std::int32_t>{config_.bos_token_id});
    std::vector<bool> done(B, false);
    const std::size_t V = config_.tgt_vocab_size;
    for (std::size_t step = 0; step < options.max_new_tokens; ++step) {
        for (std::size_t r = 0; r < B; ++r) {
            if (done[r]) continue;
            const auto logits = decode_uncached(memories[r], sources[r].size(), history[r]);
            const std::span<const float> last(logits.data() + (history[r].size() - 1) * V, V);
            const std::int32_t next = samplers[r].sample(last, history[r]);
            history[r].push_back(next);
            result.tokens[r].push_back(next);
            ++result.generated_tokens;
            if (options.stop_at_eos && next == config_.eos_token_id) done[r] = true;
        }
    }
    result.decode_seconds = detail::seconds_since(start);
    return result;
}

std::vector<std::int32_t> EncoderDecoder::generate(std::span<const std::int32_t> source,
                                                   const Seq2SeqGenerateOptions& options) {
    return generate(std::vector<std::vector<std::int32_t>>{std::vector<std::int32_t>(source.begin(), source.end())},
                    options)
        .tokens[0];
}

}  // namespace kvcache::model
