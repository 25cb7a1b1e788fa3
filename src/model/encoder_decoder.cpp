// The encoder-decoder's non-template parts: config, weight loading, the layer stages, encode, generation.
#include "kvcache/model/encoder_decoder.hpp"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <new>
#include <string>
#include <unordered_map>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "kvcache/attention/dense.hpp"
#include "kvcache/detail/checked.hpp"
#include "kvcache/detail/portable_random.hpp"
#include "kvcache/model/matmul.hpp"
#include "kvcache/model/ops.hpp"
#include "kvcache/model/safetensors.hpp"
#include "text_file.hpp"

namespace kvcache {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

using json = nlohmann::json;
using Weights = EncoderDecoderWeights;

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

std::string shape_string(std::span<const std::size_t> shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

/// Calls visit(name, tensor, shape, optional) for every tensor the config describes, in the state_dict's
/// order, with the tensor's slot in `w`: the one list of names and shapes that loading and checking share.
template <class W, class Visit>
void for_each_tensor(W& w, const EncoderDecoderConfig& c, Visit&& visit) {
    const std::size_t d = c.d_model, ff = c.d_ff, P = c.max_positions;
    auto linear = [&](const std::string& name, auto& l, std::size_t out, std::size_t in, bool optional_bias = false) {
        visit(name + ".weight", l.weight, std::vector<std::size_t>{out, in}, false);
        visit(name + ".bias", l.bias, std::vector<std::size_t>{out}, optional_bias);
    };
    auto norm = [&](const std::string& name, auto& n) {
        visit(name + ".weight", n.weight, std::vector<std::size_t>{d}, false);
        visit(name + ".bias", n.bias, std::vector<std::size_t>{d}, false);
    };
    auto attention = [&](const std::string& name, auto& a) {
        visit(name + ".in_proj_weight", a.in_proj.weight, std::vector<std::size_t>{3 * d, d}, false);
        visit(name + ".in_proj_bias", a.in_proj.bias, std::vector<std::size_t>{3 * d}, false);
        linear(name + ".out_proj", a.out_proj, d, d);
    };
    visit("src_embed.weight", w.src_embed, std::vector<std::size_t>{c.src_vocab_size, d}, false);
    visit("tgt_embed.weight", w.tgt_embed, std::vector<std::size_t>{c.tgt_vocab_size, d}, false);
    if (c.positions == PositionKind::Learned) {
        visit("src_pos.weight", w.src_pos, std::vector<std::size_t>{P, d}, false);
        visit("tgt_pos.weight", w.tgt_pos, std::vector<std::size_t>{P, d}, false);
    }
    for (std::size_t l = 0; l < w.encoder.size(); ++l) {
        const std::string p = fmt::format("transformer.encoder.layers.{}", l);
        attention(p + ".self_attn", w.encoder[l].self_attn);
        linear(p + ".linear1", w.encoder[l].linear1, ff, d);
        linear(p + ".linear2", w.encoder[l].linear2, d, ff);
        norm(p + ".norm1", w.encoder[l].norm1);
        norm(p + ".norm2", w.encoder[l].norm2);
    }
    norm("transformer.encoder.norm", w.encoder_norm);
    for (std::size_t l = 0; l < w.decoder.size(); ++l) {
        const std::string p = fmt::format("transformer.decoder.layers.{}", l);
        attention(p + ".self_attn", w.decoder[l].self_attn);
        attention(p + ".multihead_attn", w.decoder[l].cross_attn);
        linear(p + ".linear1", w.decoder[l].linear1, ff, d);
        linear(p + ".linear2", w.decoder[l].linear2, d, ff);
        norm(p + ".norm1", w.decoder[l].norm1);
        norm(p + ".norm2", w.decoder[l].norm2);
        norm(p + ".norm3", w.decoder[l].norm3);
    }
    norm("transformer.decoder.norm", w.decoder_norm);
    linear("generator", w.generator, c.tgt_vocab_size, d, /*optional_bias=*/true);
}

}  // namespace

// ---------------------------------------------------------------- config

void EncoderDecoderConfig::validate() const {
    // Every size is bounded before anything is allocated from it, so no product below can wrap and no
    // hostile config (max_positions = 2^59, ...) can size a buffer: the limits are far above any model this
    // reference implementation is meant for, and far below what would overflow.
    auto in_range = [](std::size_t v, std::size_t limit, const char* name) {
        detail::check_range<ConfigError>(v, 1, limit, fmt::format("encoder-decoder config: {}", name));
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
    (void)detail::checked_product<ConfigError>("encoder-decoder config: in_proj_weight (3 * d_model x d_model)", 3,
                                                d_model, d_model);
    (void)detail::checked_mul<ConfigError>(d_ff, d_model, "encoder-decoder config: dim_feedforward x d_model");
    (void)detail::checked_mul<ConfigError>(std::max(src_vocab_size, tgt_vocab_size), d_model,
                                           "encoder-decoder config: vocabulary x d_model");
    (void)detail::checked_mul<ConfigError>(max_positions, d_model, "encoder-decoder config: max_positions x d_model");
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
        throw FormatError(fmt::format("encoder-decoder config: not valid JSON: {}", e.what()));
    }
    if (!j.is_object()) throw FormatError("encoder-decoder config: not a JSON object");
    if (j.contains("architecture") && get_key<std::string>(j, "architecture") != "nn.Transformer")
        throw ConfigError(fmt::format("encoder-decoder config: architecture {} is not \"nn.Transformer\"",
                                      j.at("architecture").dump()));
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
    else throw ConfigError(fmt::format("encoder-decoder config: activation \"{}\" is not \"relu\" or \"gelu\"", act));
    const std::string pos = get_key_or<std::string>(j, "positions", "sinusoidal");
    if (pos == "sinusoidal") c.positions = PositionKind::Sinusoidal;
    else if (pos == "learned") c.positions = PositionKind::Learned;
    else throw ConfigError(fmt::format("encoder-decoder config: positions \"{}\" is not \"sinusoidal\" or \"learned\"", pos));
    c.bos_token_id = get_key_or<std::int32_t>(j, "bos_token_id", 1);
    c.eos_token_id = get_key_or<std::int32_t>(j, "eos_token_id", 2);
    c.pad_token_id = get_key_or<std::int32_t>(j, "pad_token_id", 0);
    c.validate();
    return c;
}

EncoderDecoderConfig EncoderDecoderConfig::load(const std::filesystem::path& path) {
    return detail::parse_text_file(path, "encoder-decoder config", [](std::string_view text) { return from_json(text); });
}

// ---------------------------------------------------------------- weights

void EncoderDecoderWeights::validate() const {
    config.validate();
    if (encoder.size() != config.n_encoder_layers || decoder.size() != config.n_decoder_layers)
        throw ShapeError(fmt::format("encoder-decoder: weights for {} encoder and {} decoder layers, the config says {} "
                                     "and {}", encoder.size(), decoder.size(), config.n_encoder_layers,
                                     config.n_decoder_layers));
    for_each_tensor(*this, config, [](const std::string& name, const std::vector<float>& v,
                                      const std::vector<std::size_t>& shape, bool optional) {
        if (optional && v.empty()) return;
        const std::size_t expected = shape.size() == 1 ? shape[0] : detail::checked_mul(shape[0], shape[1], name);
        if (v.size() != expected)
            throw ShapeError(fmt::format("encoder-decoder: weight {} holds {} floats, expected {} = {}", name, v.size(),
                                         shape_string(shape), expected));
    });
}

EncoderDecoderWeights EncoderDecoderWeights::from_safetensors(EncoderDecoderConfig config,
                                                              const safetensors::File& file) {
    config.validate();
    Weights w;
    w.config = std::move(config);
    w.encoder.resize(w.config.n_encoder_layers);
    w.decoder.resize(w.config.n_decoder_layers);
    // The slots the config describes, then one walk over the file's table: each tensor goes to its slot, and a
    // tensor without one means the file and the config disagree (more layers, learned positions, another
    // architecture) — refused rather than silently ignored.
    struct Slot {
        std::string name;
        std::vector<float>* data;
        std::vector<std::size_t> shape;
        bool optional;
        bool found = false;
    };
    std::vector<Slot> slots;
    for_each_tensor(w, w.config, [&](const std::string& name, std::vector<float>& data,
                                     const std::vector<std::size_t>& shape, bool optional) {
        slots.push_back(Slot{name, &data, shape, optional});
    });
    std::unordered_map<std::string_view, Slot*> by_name;
    for (Slot& s : slots) by_name.emplace(s.name, &s);
    for (const safetensors::TensorView& t : file.tensors()) {
        const auto it = by_name.find(t.name);
        if (it == by_name.end())
            throw FormatError(fmt::format("encoder-decoder: tensor '{}' {} is not part of the model the config describes "
                                          "({} encoder, {} decoder layers, {} positions)", t.name, t.shape_string(),
                                          w.config.n_encoder_layers, w.config.n_decoder_layers,
                                          w.config.positions == PositionKind::Learned ? "learned" : "sinusoidal"));
        Slot& s = *it->second;
        if (t.shape != s.shape)
            throw ShapeError(fmt::format("encoder-decoder: tensor '{}' has shape {}, expected {}", t.name, t.shape_string(),
                                         shape_string(s.shape)));
        s.data->resize(t.n_elements());  // = the product of the config's sizes, bounded by validate()
        convert_to_float(t, s.data->data());
        s.found = true;
    }
    for (const Slot& s : slots)
        if (!s.found && !s.optional)
            throw FormatError(fmt::format("encoder-decoder: tensor '{}' {} is missing from the file", s.name,
                                          shape_string(s.shape)));
    file.check_unchanged();  // every tensor was copied: were they the file's bytes?
    return w;
}

EncoderDecoderWeights EncoderDecoderWeights::load(const std::filesystem::path& config_json,
                                                  const std::filesystem::path& weights) {
    auto config = EncoderDecoderConfig::load(config_json);
    const auto file = safetensors::File::open(weights);
    return from_safetensors(std::move(config), file);
}

EncoderDecoderWeights EncoderDecoderWeights::random(EncoderDecoderConfig config, std::uint64_t seed) {
    config.validate();
    detail::PortableUniform uniform(seed);
    Weights w;
    w.config = std::move(config);
    w.encoder.resize(w.config.n_encoder_layers);
    w.decoder.resize(w.config.n_decoder_layers);
    try {
        for_each_tensor(w, w.config, [&](const std::string& name, std::vector<float>& data,
                                         const std::vector<std::size_t>& shape, bool) {
            const bool is_norm = name.find(".norm") != std::string::npos;
            const bool is_embedding = shape.size() == 2 && (name.find("_embed.") != std::string::npos ||
                                                            name.find("_pos.") != std::string::npos);
            const std::size_t in = w.config.d_model;  // nn.Linear's bound 1/sqrt(fan_in) (fan_in d_model or d_ff)
            const std::size_t fan_in = name.find("linear2") != std::string::npos ? w.config.d_ff : in;
            const std::size_t size = shape.size() == 1 ? shape[0] : detail::checked_mul(shape[0], shape[1], name);
            if (is_norm) {
                data.assign(size, name.ends_with(".weight") ? 1.0f : 0.0f);
                return;
            }
            const float bound = is_embedding ? 1.0f : 1.0f / std::sqrt(static_cast<float>(fan_in));
            data.resize(size);
            for (float& x : data) x = uniform.symmetric(bound);
        });
    } catch (const std::bad_alloc&) {
        throw CapacityError(fmt::format("encoder-decoder: random weights for d_model {}, {} + {} layers, vocab {} / {} "
                                        "do not fit in memory", w.config.d_model, w.config.n_encoder_layers,
                                        w.config.n_decoder_layers, w.config.src_vocab_size, w.config.tgt_vocab_size));
    }
    return w;
}

// ---------------------------------------------------------------- the model

EncoderDecoder::EncoderDecoder(EncoderDecoderWeights weights) : weights_(std::move(weights)) {
    weights_.validate();
    // w_i of the sinusoidal positions, in float step by step as the PyTorch recipe does, so the positions
    // match it to the last bit or two. The positions themselves are computed when a token is embedded (d_model
    // sines per token, nothing next to the matrix products), so max_positions sizes no table.
    const std::size_t d = config().d_model;
    const float factor = static_cast<float>(-std::log(10000.0) / static_cast<double>(d));
    for (std::size_t i = 0; 2 * i < d; ++i) inv_frequencies_.push_back(std::exp(static_cast<float>(2 * i) * factor));
}

EncoderDecoder EncoderDecoder::load(const std::filesystem::path& config_json, const std::filesystem::path& weights) {
    return EncoderDecoder(EncoderDecoderWeights::load(config_json, weights));
}

EncoderDecoder::Buffers EncoderDecoder::buffers(std::size_t n) {
    const std::size_t nd = detail::checked_mul(n, config().d_model, "encoder-decoder activations");
    const std::size_t nff = detail::checked_mul(n, config().d_ff, "encoder-decoder activations");
    const std::size_t total = detail::checked_add(detail::checked_mul(7, nd, "encoder-decoder activations"), nff,
                                                  "encoder-decoder activations");
    if (scratch_.size() < total) scratch_.resize(total);
    float* p = scratch_.data();
    auto take = [&p](std::size_t count) {
        std::span<float> s(p, count);
        p += count;
        return s;
    };
    Buffers b;
    b.x = take(nd);
    b.normed = take(nd);
    b.q = take(nd);
    b.k = take(nd);
    b.v = take(nd);
    b.attn = take(nd);
    b.out = take(nd);
    b.hidden = take(nff);
    return b;
}

// ---------------------------------------------------------------- checks

void EncoderDecoder::check_tokens(std::span<const std::int32_t> tokens, std::size_t first_position, bool target) const {
    const char* side = target ? "target" : "source";
    const std::size_t vocab = target ? config().tgt_vocab_size : config().src_vocab_size;
    if (tokens.size() > config().max_positions || first_position > config().max_positions - tokens.size())
        throw CapacityError(fmt::format("encoder-decoder: {} positions up to {} + {} exceed max_positions {}", side,
                                        first_position, tokens.size(), config().max_positions));
    for (std::size_t i = 0; i < tokens.size(); ++i)
        if (tokens[i] < 0 || static_cast<std::size_t>(tokens[i]) >= vocab)
            throw IndexError(fmt::format("encoder-decoder: {} token {} at index {} is outside the vocabulary of {}", side,
                                         tokens[i], i, vocab));
}

void EncoderDecoder::check_logits(std::size_t n, std::size_t size) const {
    if (n == 0) throw ShapeError("encoder-decoder: decode of 0 tokens");
    if (n > config().max_positions || size != n * config().tgt_vocab_size)
        throw ShapeError(fmt::format("encoder-decoder: logits hold {} floats, need {} x {}", size, n,
                                     config().tgt_vocab_size));
}

std::size_t EncoderDecoder::check_sources(const std::vector<std::vector<std::int32_t>>& sources,
                                          const Seq2SeqGenerateOptions& o) const {
    if (sources.empty()) throw ShapeError("encoder-decoder: generate needs at least one source");
    for (std::size_t r = 0; r < sources.size(); ++r) {
        if (sources[r].empty()) throw ShapeError(fmt::format("encoder-decoder: source {} is empty", r));
        check_tokens(sources[r], 0, false);
    }
    if (o.max_new_tokens > config().max_positions)
        throw ConfigError(fmt::format("encoder-decoder: max_new_tokens {} needs more target positions than "
                                      "max_positions {}", o.max_new_tokens, config().max_positions));
    validate(o.sampling);
    return sources.size();
}

// ---------------------------------------------------------------- layer stages

void EncoderDecoder::embed(bool target, std::span<const std::int32_t> tokens, std::size_t first_position,
                           std::span<float> x) const {
    const EncoderDecoderConfig& c = config();
    const std::size_t d = c.d_model;
    const float scale = c.scale_embeddings ? static_cast<float>(std::sqrt(static_cast<double>(d))) : 1.0f;
    const std::vector<float>& table = target ? weights_.tgt_embed : weights_.src_embed;
    const std::vector<float>& learned = target ? weights_.tgt_pos : weights_.src_pos;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        const std::size_t p = first_position + i;
        const float* e = table.data() + static_cast<std::size_t>(tokens[i]) * d;
        float* xi = x.data() + i * d;
        if (c.positions == PositionKind::Learned) {
            for (std::size_t k = 0; k < d; ++k) xi[k] = e[k] * scale + learned[p * d + k];
        } else {
            for (std::size_t j = 0; 2 * j < d; ++j) {
                const float angle = static_cast<float>(p) * inv_frequencies_[j];
                xi[2 * j] = e[2 * j] * scale + std::sin(angle);
                if (2 * j + 1 < d) xi[2 * j + 1] = e[2 * j + 1] * scale + std::cos(angle);
            }
        }
    }
}

std::span<const float> EncoderDecoder::sublayer_input(const Weights::LayerNorm& norm, std::span<const float> x,
                                                      std::span<float> normed) const {
    if (!config().norm_first) return x;
    const std::size_t d = config().d_model;
    layer_norm(x.data(), norm.weight.data(), norm.bias.data(), x.size() / d, d, config().layer_norm_eps, normed.data());
    return normed.first(x.size());
}

void EncoderDecoder::project(const Weights::Linear& w, std::size_t first_row, std::size_t n_rows,
                             std::span<const float> x, std::size_t n, std::span<float> out, int threads) const {
    // The shared float matmul (one fixed order per output, whatever the batch or thread count), then the bias:
    // a token's activations do not depend on how many tokens run together, so cached == uncached bitwise.
    const std::size_t in = x.size() / n;
    matmul_f32(w.weight.data() + first_row * in, n_rows, in, x.data(), n, out.data(), threads);
    if (!w.bias.empty()) add_bias(out.data(), w.bias.data() + first_row, n, n_rows);
}

void EncoderDecoder::project_qkv(const Weights::Attention& w, std::span<const float> input, std::size_t n,
                                 std::span<float> q, std::span<float> k, std::span<float> v, int threads) const {
    const std::size_t d = config().d_model;
    project(w.in_proj, 0, d, input, n, q, threads);
    project(w.in_proj, d, d, input, n, k, threads);
    project(w.in_proj, 2 * d, d, input, n, v, threads);
}

void EncoderDecoder::attention_residual(const Weights::Attention& w, const Weights::LayerNorm& norm,
                                        std::span<const float> attn, std::span<float> out, std::span<float> x,
                                        std::size_t n, int threads) const {
    const std::size_t d = config().d_model;
    project(w.out_proj, 0, d, attn, n, out, threads);
    add_into(x.data(), out.data(), n * d);
    if (!config().norm_first)
        layer_norm(x.data(), norm.weight.data(), norm.bias.data(), n, d, config().layer_norm_eps, x.data());
}

void EncoderDecoder::feed_forward(const Weights::Linear& linear1, const Weights::Linear& linear2,
                                  const Weights::LayerNorm& norm, const Buffers& b, std::size_t n, int threads) const {
    const std::size_t d = config().d_model, ff = config().d_ff;
    project(linear1, 0, ff, sublayer_input(norm, b.x, b.normed), n, b.hidden, threads);
    activate(config().activation, b.hidden.data(), n * ff);
    project(linear2, 0, d, b.hidden, n, b.out, threads);
    add_into(b.x.data(), b.out.data(), n * d);
    if (!config().norm_first)
        layer_norm(b.x.data(), norm.weight.data(), norm.bias.data(), n, d, config().layer_norm_eps, b.x.data());
}

void EncoderDecoder::check_memory(std::span<const float> memory, std::size_t n_src) const {
    const std::size_t d = config().d_model;
    if (n_src == 0 || n_src > config().max_positions || memory.size() != n_src * d)
        throw ShapeError(fmt::format("encoder-decoder: memory holds {} floats, expected {} x {} (and 1 to {} positions)",
                                     memory.size(), n_src, d, config().max_positions));
}

void EncoderDecoder::project_cross_kv(std::size_t layer, std::span<const float> memory, std::size_t n_src,
                                      std::span<float> k, std::span<float> v, int threads) {
    const std::size_t d = config().d_model;
    const Weights::Linear& in_proj = weights_.decoder[layer].cross_attn.in_proj;
    project(in_proj, d, d, memory, n_src, k, threads);
    project(in_proj, 2 * d, d, memory, n_src, v, threads);
    ++stats_.cross_kv_projections;
}

void EncoderDecoder::output_logits(std::span<const float> x, std::size_t n, std::span<float> normed,
                                   std::span<float> logits, int threads) const {
    const std::size_t d = config().d_model;
    const Weights::LayerNorm& norm = weights_.decoder_norm;
    layer_norm(x.data(), norm.weight.data(), norm.bias.data(), n, d, config().layer_norm_eps, normed.data());
    project(weights_.generator, 0, config().tgt_vocab_size, normed.first(n * d), n, logits, threads);
}

// ---------------------------------------------------------------- encoder

std::vector<float> EncoderDecoder::encode(std::span<const std::int32_t> source, const Seq2SeqRunOptions& run) {
    const EncoderDecoderConfig& c = config();
    const std::size_t n = source.size(), d = c.d_model;
    if (n == 0) throw ShapeError("encoder-decoder: cannot encode an empty source");
    check_tokens(source, 0, false);
    ++stats_.sources_encoded;
    std::vector<float> memory(n * d);  // (n_src, d_model): the residual stream, returned as the memory
    Buffers b = buffers(n);
    b.x = memory;
    embed(false, source, 0, b.x);
    AttentionOptions full;
    full.causal = false;
    full.threads = run.threads;
    for (const Weights::EncoderLayer& w : weights_.encoder) {
        project_qkv(w.self_attn, sublayer_input(w.norm1, b.x, b.normed), n, b.q, b.k, b.v, run.threads);
        attention_dense(std::span<const float>(b.q), n, c.n_heads, std::span<const float>(b.k),
                        std::span<const float>(b.v), n, c.n_heads, c.head_dim(), b.attn, full);
        attention_residual(w.self_attn, w.norm1, b.attn, b.out, b.x, n, run.threads);
        feed_forward(w.linear1, w.linear2, w.norm2, b, n, run.threads);
    }
    const Weights::LayerNorm& norm = weights_.encoder_norm;
    layer_norm(memory.data(), norm.weight.data(), norm.bias.data(), n, d, c.layer_norm_eps, memory.data());
    return memory;
}

// ---------------------------------------------------------------- decoding without a cache

std::vector<float> EncoderDecoder::decode_uncached(std::span<const float> memory, std::size_t n_src,
                                                   std::span<const std::int32_t> target, const Seq2SeqRunOptions& run) {
    if (target.empty()) throw ShapeError("encoder-decoder: decode of 0 tokens");
    check_tokens(target, 0, true);
    check_memory(memory, n_src);
    // Caches that live for this one pass: nothing carries over to the next step, so every step pays for the
    // whole prefix and for the cross K/V projections again.
    const std::size_t L = config().n_decoder_layers, H = config().n_heads, hd = config().head_dim();
    MultiLayerKVCache<float> self(CacheShape{L, H, hd}, 1, target.size(), Growth::Fixed);
    CrossAttentionCache<float> cross(CacheShape{L, H, hd}, 1, n_src);
    write_cross(memory, n_src, cross, 0, run);
    std::vector<float> logits(target.size() * config().tgt_vocab_size);
    decode(target, 0, self, cross, logits, run);
    return logits;
}

// ---------------------------------------------------------------- generation

Seq2SeqResult EncoderDecoder::generation_loop(std::size_t batch, const Seq2SeqGenerateOptions& options,
                                              const Step& step) {
    Seq2SeqResult result;
    result.tokens.resize(batch);
    const auto start = Clock::now();
    std::vector<Sampler> samplers(batch, Sampler(options.sampling));
    std::vector<std::vector<std::int32_t>> target(batch, std::vector<std::int32_t>{config().bos_token_id});
    std::vector<bool> done(batch, false);
    std::vector<float> logits(config().tgt_vocab_size);
    for (std::size_t i = 0; i < options.max_new_tokens; ++i) {
        for (std::size_t r = 0; r < batch; ++r) {
            if (done[r]) continue;
            step(r, target[r], logits);
            const std::int32_t next = samplers[r].sample(logits, target[r]);
            target[r].push_back(next);
            result.tokens[r].push_back(next);
            ++result.generated_tokens;
            if (options.stop_at_eos && next == config().eos_token_id) done[r] = true;
        }
    }
    result.decode_seconds = seconds_since(start);
    return result;
}

Seq2SeqResult EncoderDecoder::generate(const std::vector<std::vector<std::int32_t>>& sources,
                                       const Seq2SeqGenerateOptions& options) {
    const std::size_t B = check_sources(sources, options);
    if (options.use_cache) {
        std::size_t longest = 0;
        for (const auto& s : sources) longest = std::max(longest, s.size());
        auto cache = make_cache<float>(B, std::max<std::size_t>(options.max_new_tokens, 1), longest);
        return generate_with(sources, options, cache.self, cache.cross);
    }
    const Seq2SeqRunOptions run{options.threads};
    const auto start = Clock::now();
    std::vector<std::vector<float>> memories;
    for (const auto& s : sources) memories.push_back(encode(s, run));
    const double encode_seconds = seconds_since(start);
    const std::size_t V = config().tgt_vocab_size;
    Seq2SeqResult result = generation_loop(
        B, options, [&](std::size_t row, std::span<const std::int32_t> target, std::span<float> logits) {
            // the whole target so far, from scratch; its last position's logits are the next token's
            const auto all = decode_uncached(memories[row], sources[row].size(), target, run);
            std::copy(all.end() - static_cast<std::ptrdiff_t>(V), all.end(), logits.begin());
        });
    result.encode_seconds = encode_seconds;
    return result;
}

std::vector<std::int32_t> EncoderDecoder::generate(std::span<const std::int32_t> source,
                                                   const Seq2SeqGenerateOptions& options) {
    return generate(std::vector<std::vector<std::int32_t>>{std::vector<std::int32_t>(source.begin(), source.end())},
                    options)
        .tokens[0];
}

}  // namespace kvcache
