// The non-template parts of the decoder: configuration from GGUF metadata, weight loading, random weights.
#include "kvcache/model/decoder.hpp"

#include "kvcache/detail/checked.hpp"

#include <cmath>

#include "kvcache/detail/portable_random.hpp"

namespace kvcache {

namespace {

WeightMatrix random_matrix(detail::PortableUniform& rng, std::size_t rows, std::size_t cols) {
    std::vector<float> w(rows * cols);
    const float scale = 1.0f / std::sqrt(static_cast<float>(cols));
    for (float& v : w) v = rng.symmetric(scale);
    return WeightMatrix::from_floats(rows, cols, w);
}

std::vector<float> random_vector(detail::PortableUniform& rng, std::size_t n, float centre, float spread) {
    std::vector<float> v(n);
    for (float& x : v) x = centre + rng.symmetric(spread);
    return v;
}

}  // namespace

DecoderConfig DecoderConfig::small_test_model() {
    DecoderConfig c;
    c.architecture = "llama";
    c.n_layers = 6;
    c.d_model = 512;
    c.d_ff = 1536;
    c.n_heads = 8;
    c.n_kv_heads = 8;
    c.head_dim = 64;
    c.rope_dim = 64;
    c.vocab_size = 1024;
    c.context_length = 4096;
    c.rope_base = 10000.0f;
    c.norm_eps = 1e-5f;
    c.bos_id = 1;
    c.eos_id = 2;
    return c;
}

void DecoderConfig::validate() const {
    if (n_layers == 0 || d_model == 0 || d_ff == 0 || n_heads == 0 || n_kv_heads == 0 || head_dim == 0 ||
        vocab_size == 0) {
        throw ConfigError(fmt::format("decoder: sizes must be positive (layers {}, d_model {}, d_ff {}, heads {}, "
                                      "kv heads {}, head_dim {}, vocab {})",
                                      n_layers, d_model, d_ff, n_heads, n_kv_heads, head_dim, vocab_size));
    }
    if (n_heads % n_kv_heads != 0) {
        throw ConfigError(fmt::format("decoder: {} heads is not a multiple of {} kv heads", n_heads, n_kv_heads));
    }
    if (rope_dim == 0 || rope_dim % 2 != 0 || rope_dim > head_dim) {
        throw ConfigError(fmt::format("decoder: rope dimension {} must be even and in (0, head_dim {}]", rope_dim,
                                      head_dim));
    }
    if (!(rope_base > 0) || !(norm_eps > 0) || !(rope_position_scale > 0)) {
        throw ConfigError(fmt::format("decoder: rope base {}, rope position scale {} and norm epsilon {} must be positive",
                                      rope_base, rope_position_scale, norm_eps));
    }
}

std::size_t DecoderWeights::bytes() const {
    std::size_t b = token_embedding.bytes() + output.bytes() + output_norm.size() * sizeof(float);
    for (const auto& l : layers) {
        b += l.wq.bytes() + l.wk.bytes() + l.wv.bytes() + l.wo.bytes() + l.w_gate.bytes() + l.w_up.bytes() +
             l.w_down.bytes();
        b += (l.attn_norm.size() + l.ffn_norm.size() + l.bq.size() + l.bk.size() + l.bv.size()) * sizeof(float);
    }
    return b;
}

DecoderWeights DecoderWeights::random(const DecoderConfig& config, std::uint64_t seed) {
    config.validate();
    DecoderWeights w;
    w.config = config;
    const DecoderConfig& c = w.config;
    detail::PortableUniform rng(seed);
    // Embeddings of unit-ish scale so the first norm sees a sensible input.
    w.token_embedding = random_matrix(rng, c.vocab_size, c.d_model);
    w.layers.resize(c.n_layers);
    for (auto& l : w.layers) {
        l.attn_norm = random_vector(rng, c.d_model, 1.0f, 0.1f);
        l.wq = random_matrix(rng, c.q_dim(), c.d_model);
        l.wk = random_matrix(rng, c.kv_dim(), c.d_model);
        l.wv = random_matrix(rng, c.kv_dim(), c.d_model);
        if (c.qkv_bias) {
            l.bq = random_vector(rng, c.q_dim(), 0.0f, 0.1f);
            l.bk = random_vector(rng, c.kv_dim(), 0.0f, 0.1f);
            l.bv = random_vector(rng, c.kv_dim(), 0.0f, 0.1f);
        }
        l.wo = random_matrix(rng, c.d_model, c.q_dim());
        l.ffn_norm = random_vector(rng, c.d_model, 1.0f, 0.1f);
        l.w_gate = random_matrix(rng, c.d_ff, c.d_model);
        l.w_up = random_matrix(rng, c.d_ff, c.d_model);
        l.w_down = random_matrix(rng, c.d_model, c.d_ff);
    }
    w.output_norm = random_vector(rng, c.d_model, 1.0f, 0.1f);
    w.output = random_matrix(rng, c.vocab_size, c.d_model);
    return w;
}

Decoder::Decoder(DecoderWeights weights, int threads) : weights_(std::move(weights)), threads_(threads) {
    const DecoderConfig& c = weights_.config;
    c.validate();
    if (weights_.layers.size() != c.n_layers) {
        throw ConfigError(fmt::format("decoder: {} layers of weights for a {}-layer config", weights_.layers.size(),
                                      c.n_layers));
    }
    if (!weights_.rope_freqs.empty() && weights_.rope_freqs.size() != c.rope_dim / 2) {
        throw ConfigError(fmt::format("decoder: {} RoPE frequency factors for a rotary dimension of {} (need {})",
                                      weights_.rope_freqs.size(), c.rope_dim, c.rope_dim / 2));
    }
    for (std::size_t i = 0; i < weights_.rope_freqs.size(); ++i) {
        if (!(weights_.rope_freqs[i] > 0) || !std::isfinite(weights_.rope_freqs[i])) {
            throw ConfigError(fmt::format("decoder: RoPE frequency factor {} is {}; factors must be positive and finite",
                                          i, weights_.rope_freqs[i]));
        }
    }
    // Angle of pair i at position p: p * position_scale * base^(-2i / rope_dim) / factor_i (llama.cpp's
    // freq_scale and freq_factors); folding the scale into the frequency keeps apply_rope one multiply.
    inv_freq_.resize(c.rope_dim / 2);
    for (std::size_t i = 0; i < inv_freq_.size(); ++i) {
        double f = std::pow(static_cast<double>(c.rope_base), -2.0 * double(i) / double(c.rope_dim));
        f *= static_cast<double>(c.rope_position_scale);
        if (!weights_.rope_freqs.empty()) f /= static_cast<double>(weights_.rope_freqs[i]);
        inv_freq_[i] = f;
    }
}

std::vector<LayerShape> Decoder::cache_layers() const {
    return std::vector<LayerShape>(config().n_layers, LayerShape{config().n_kv_heads, config().head_dim});
}

std::size_t Decoder::cache_bytes(std::size_t positions, std::size_t batch, std::size_t element_bytes) const {
    return detail::checked_product("decoder: KV cache bytes (layers x K,V x batch x positions x kv_dim x element)",
                                   config().n_layers, 2, batch, positions, config().kv_dim(), element_bytes);
}

MultiLayerKVCache<float> Decoder::make_cache(std::size_t capacity, std::size_t batch) const {
    return MultiLayerKVCache<float>(cache_layers(), batch, capacity, Growth::Fixed);
}

Decoder::LogitsWanted Decoder::check_inputs(std::span<const std::int32_t> tokens, std::size_t logits_size) const {
    const std::size_t vocab = config().vocab_size;
    for (std::size_t t = 0; t < tokens.size(); ++t) {
        if (tokens[t] < 0 || static_cast<std::size_t>(tokens[t]) >= vocab) {
            throw IndexError(fmt::format("decoder: token {} (at index {}) is outside the vocabulary of {}", tokens[t],
                                         t, vocab));
        }
    }
    if (logits_size == 0) return LogitsWanted::None;
    if (logits_size == vocab) return tokens.empty() ? LogitsWanted::None : LogitsWanted::Last;  // no token: untouched
    if (logits_size == tokens.size() * vocab) return LogitsWanted::All;
    throw ShapeError(fmt::format("decoder: logits buffer has {} floats; expected {} (last token), {} ({} tokens) or "
                                 "0 (none)",
                                 logits_size, vocab, tokens.size() * vocab, tokens.size()));
}

void Decoder::check_cache_shape(std::size_t layers, std::size_t layer, std::size_t kv_heads,
                                std::size_t head_dim) const {
    const DecoderConfig& c = config();
    if (layers != c.n_layers) {
        throw ShapeError(fmt::format("decoder: cache has {} layers, the model {}", layers, c.n_layers));
    }
    if (kv_heads != c.n_kv_heads || head_dim != c.head_dim) {
        throw ShapeError(fmt::format("decoder: cache layer {} holds {} kv heads of {}, the model needs {} of {}", layer,
                                     kv_heads, head_dim, c.n_kv_heads, c.head_dim));
    }
}

void Decoder::reserve_scratch(std::size_t n, std::size_t logit_rows) {
    const DecoderConfig& c = config();
    const auto rows = [n](std::size_t width) { return detail::checked_mul(n, width, "decoder: scratch of a forward pass"); };
    try {
        if (logit_rows > 1) {
            const std::size_t logits = detail::checked_mul(logit_rows, c.vocab_size, "decoder: logits of a forward pass");
            if (logits_.size() < logits) logits_.resize(logits);
        }
        if (x_.size() >= rows(c.d_model)) return;
        // x_ last: its size says the others are large enough, so an allocation that fails half way must not
        // leave x_ grown (the next call of this size would skip the rest and write past them).
        xb_.resize(rows(c.d_model));
        q_.resize(rows(c.q_dim()));
        k_.resize(rows(c.kv_dim()));
        v_.resize(rows(c.kv_dim()));
        att_.resize(rows(c.q_dim()));
        hb_.resize(rows(c.d_ff));
        hb2_.resize(rows(c.d_ff));
        rope_cos_.resize(rows(c.rope_dim / 2));
        rope_sin_.resize(rows(c.rope_dim / 2));
        x_.resize(rows(c.d_model));
    } catch (const std::bad_alloc&) {
        throw CapacityError(fmt::format("decoder: cannot allocate the scratch of a forward pass over {} tokens", n));
    } catch (const std::length_error&) {
        throw CapacityError(fmt::format("decoder: the scratch of a forward pass over {} tokens is too large", n));
    }
}

}  // namespace kvcache
