// The reference decoder-only transformer (Llama family: llama, mistral, qwen2) running over any KV cache.
//
// Decoder::forward reads top to bottom in the order a token meets it (after llama2.c's run.c):
// embedding → per layer [RMSNorm → Q,K,V → RoPE → cache.append → attention → output projection → residual
// → RMSNorm → SwiGLU MLP → residual] → final RMSNorm → logits. It depends on the core only through its
// public headers: any type satisfying KVCacheLike works, and attention is kvcache::attention.
//
// Determinism: a token's logits are bitwise the same whether it is processed alone or in a batch of any
// size and at any thread count (matmul.hpp and ops.hpp keep one order per token; attention does too).
//
// Memory: the weights live in DecoderWeights (quantised blocks or floats, see WeightMatrix); the
// activations in scratch buffers owned by the Decoder, grown to the largest batch seen and then reused
// (no allocation on the decode path after warm-up). A Decoder is therefore not safe to share between
// threads that call forward at the same time; use one per thread (weights can be loaded once each).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "kvcache/attention/attention.hpp"
#include "kvcache/cache/concept.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/detail/format.hpp"
#include "kvcache/error.hpp"
#include "kvcache/model/matmul.hpp"
#include "kvcache/model/ops.hpp"

namespace kvcache {

namespace gguf {
class File;
}

/// The hyper-parameters of a decoder, as GGUF metadata states them.
struct DecoderConfig {
    std::string architecture = "llama";  ///< general.architecture: llama, mistral or qwen2
    std::size_t n_layers = 0;            ///< <arch>.block_count
    std::size_t d_model = 0;             ///< <arch>.embedding_length
    std::size_t d_ff = 0;                ///< <arch>.feed_forward_length
    std::size_t n_heads = 0;             ///< <arch>.attention.head_count
    std::size_t n_kv_heads = 0;          ///< <arch>.attention.head_count_kv (GQA when < n_heads)
    std::size_t head_dim = 0;            ///< <arch>.attention.key_length, else d_model / n_heads
    std::size_t rope_dim = 0;            ///< <arch>.rope.dimension_count, else head_dim
    std::size_t vocab_size = 0;          ///< rows of token_embd
    std::size_t context_length = 0;      ///< <arch>.context_length (training context; informational)
    float rope_base = 10000.0f;          ///< <arch>.rope.freq_base
    /// Multiplies positions before RoPE: 1 / <arch>.rope.scaling.factor for linear scaling (or
    /// 1 / <arch>.rope.scale_linear in older files), else 1. Other scaling types are refused (ConfigError).
    float rope_position_scale = 1.0f;
    /// <arch>.attention.sliding_window: 0 for none, else the query at position p sees keys in (p - window, p]
    /// — window keys including its own, as llama.cpp and Mistral's reference code count it. (Hugging Face
    /// transformers' eager Mistral lets it see window + 1; see scripts/make_arch_fixtures.py.)
    std::size_t sliding_window = 0;
    float norm_eps = 1e-5f;              ///< <arch>.attention.layer_norm_rms_epsilon
    RopeStyle rope_style = RopeStyle::Interleaved;  ///< Interleaved for llama/mistral, Neox for qwen2
    bool qkv_bias = false;               ///< Q, K and V projections have biases (always for qwen2; llama and
                                         ///< mistral when the file has blk.0.attn_q.bias)
    std::int32_t bos_id = -1;            ///< tokenizer.ggml.bos_token_id, -1 if absent
    std::int32_t eos_id = -1;            ///< tokenizer.ggml.eos_token_id, -1 if absent

    std::size_t q_dim() const { return n_heads * head_dim; }
    std::size_t kv_dim() const { return n_kv_heads * head_dim; }

    /// Reads the metadata. Throws ConfigError for an architecture other than llama/mistral/qwen2 or a RoPE
    /// scaling type other than none/linear, and FormatError for missing or inconsistent keys.
    static DecoderConfig from_gguf(const gguf::File& file);
    /// The small model of the unit tests and benchmarks: llama-style, 6 layers, d_model 512, 8 heads of
    /// 64 (8 kv heads, so it fits KVCache<6, 8, 64>), d_ff 1536 (3 × d_model, SwiGLU), vocab 1024.
    static DecoderConfig small_test_model();
    /// Throws ConfigError unless the sizes are positive and fit together (heads divide, rope_dim even, ...).
    void validate() const;
};

/// One transformer block's weights. Matrices are [out][in].
struct LayerWeights {
    std::vector<float> attn_norm;    // (d_model)
    WeightMatrix wq;                 // (q_dim, d_model)
    WeightMatrix wk;                 // (kv_dim, d_model)
    WeightMatrix wv;                 // (kv_dim, d_model)
    std::vector<float> bq, bk, bv;   // (q_dim), (kv_dim), (kv_dim) — empty unless config.qkv_bias
    WeightMatrix wo;                 // (d_model, q_dim)
    std::vector<float> ffn_norm;     // (d_model)
    WeightMatrix w_gate;             // (d_ff, d_model)
    WeightMatrix w_up;               // (d_ff, d_model)
    WeightMatrix w_down;             // (d_model, d_ff)
};

struct DecoderWeights {
    DecoderConfig config;
    WeightMatrix token_embedding;    // (vocab, d_model)
    std::vector<LayerWeights> layers;
    std::vector<float> output_norm;  // (d_model)
    WeightMatrix output;             // (vocab, d_model); empty (rows() == 0) when tied to token_embedding
    std::vector<float> rope_freqs;   // (rope_dim / 2) divisors of the RoPE frequencies (llama 3.x
                                     // rope_freqs.weight); empty for none

    bool tied_output() const { return output.rows() == 0; }
    const WeightMatrix& output_matrix() const { return tied_output() ? token_embedding : output; }
    /// Bytes of all weights as stored (what one decode step streams from memory, roughly).
    std::size_t bytes() const;

    /// Loads every tensor, checking its shape against the config (FormatError naming the tensor). A tensor
    /// the decoder would not use is a FormatError too (naming it), rather than a model silently run without it.
    /// keep_quantized: Q8_0/Q4_1 matrices stay quantised (fused dequant-dot kernels); otherwise all float.
    static DecoderWeights from_gguf(const gguf::File& file, bool keep_quantized = true);
    /// Random float weights for `config` (uniform, scaled by 1/sqrt(fan_in); norms 1), with a separate
    /// output matrix. The same seed gives the same weights on every platform.
    static DecoderWeights random(const DecoderConfig& config, std::uint64_t seed);
};

/// An identity of a model file for cache files (CacheFingerprint::model): the architecture and name, plus a
/// digest of every metadata entry, every tensor's name, type and shape, and every tensor's bytes. Two files
/// give the same string only if they hold the same model, so a cache saved for one is refused by another.
/// Hashing the weights costs one read of the file (a few ms for SmolLM2).
std::string model_fingerprint(const gguf::File& file);

struct DecoderOptions {
    int threads = 0;             ///< 0 → all the hardware offers
    bool keep_quantized = true;  ///< see DecoderWeights::from_gguf
};

class Decoder {
public:
    explicit Decoder(DecoderWeights weights, int threads = 0);
    /// Opens a GGUF file and loads it (nothing of the file is kept open).
    static Decoder load(const std::filesystem::path& path, const DecoderOptions& options = {});

    const DecoderConfig& config() const { return weights_.config; }
    const DecoderWeights& weights() const { return weights_; }
    int threads() const { return threads_; }
    void set_threads(int threads) { threads_ = threads; }

    /// The per-layer shapes a cache for this model needs.
    std::vector<LayerShape> cache_layers() const;
    /// Bytes of a float KV cache holding `positions` positions for `batch` rows — to report before allocating.
    std::size_t cache_bytes(std::size_t positions, std::size_t batch = 1, std::size_t element_bytes = sizeof(float)) const;
    /// A fixed-capacity float cache for this model.
    MultiLayerKVCache<float> make_cache(std::size_t capacity, std::size_t batch = 1) const;

    /// Runs `tokens` (the next tokens of batch row `row`, continuing what the cache holds) through the
    /// model, appending their K/V to every layer of the cache. logits_out is either vocab_size floats
    /// (the last token's logits) or tokens.size() * vocab_size (every token's, [n_tokens][vocab]).
    /// Throws IndexError for a token id outside the vocabulary or a bad row, ShapeError for a cache of
    /// another shape or a logits buffer of another size, CapacityError if a fixed cache cannot take the
    /// tokens — all before anything is appended.
    template <KVCacheLike Cache>
    void forward(std::span<const std::int32_t> tokens, Cache& cache, std::size_t row, std::span<float> logits_out);

    /// The brief's spelling: forward(tokens, n_tokens, cache, row, logits_out).
    template <KVCacheLike Cache>
    void forward(const std::int32_t* tokens, std::size_t n_tokens, Cache& cache, std::size_t row,
                 std::span<float> logits_out) {
        forward(std::span<const std::int32_t>(tokens, n_tokens), cache, row, logits_out);
    }

private:
    /// Token ids and logits size; returns whether every token's logits are wanted.
    bool check_inputs(std::span<const std::int32_t> tokens, std::size_t logits_size) const;
    void check_cache_shape(std::size_t layers, std::size_t layer, std::size_t kv_heads, std::size_t head_dim) const;
    void reserve_scratch(std::size_t n_tokens);

    DecoderWeights weights_;
    int threads_ = 0;
    std::vector<double> inv_freq_;   // (rope_dim / 2) RoPE frequencies: position_scale * base^(-2i / rope_dim) / rope_freqs[i]

    // Activations, [n_tokens][width]; grown to the largest batch and kept.
    std::vector<float> x_;    // (n, d_model) residual stream
    std::vector<float> xb_;   // (n, d_model) normed input of a sublayer / its output
    std::vector<float> q_;    // (n, q_dim)
    std::vector<float> k_;    // (n, kv_dim)
    std::vector<float> v_;    // (n, kv_dim)
    std::vector<float> att_;  // (n, q_dim) attention output, heads side by side
    std::vector<float> hb_;   // (n, d_ff) gate, then silu(gate) * up
    std::vector<float> hb2_;  // (n, d_ff) up
};

template <KVCacheLike Cache>
void Decoder::forward(std::span<const std::int32_t> tokens, Cache& cache, std::size_t row,
                      std::span<float> logits_out) {
    const DecoderConfig& c = weights_.config;
    const std::size_t n = tokens.size();
    const bool all_logits = check_inputs(tokens, logits_out.size());
    detail::check_index("batch row", row, cache.batch_size());
    for (std::size_t l = 0; l < c.n_layers; ++l) {
        check_cache_shape(cache.num_layers(), l, l < cache.num_layers() ? cache.num_kv_heads(l) : 0,
                          l < cache.num_layers() ? cache.head_dim(l) : 0);
    }
    const std::size_t pos = cache.seq_len(0, row);  // position of tokens[0]
    for (std::size_t l = 1; l < c.n_layers; ++l) {
        if (cache.seq_len(l, row) != pos) {
            throw ShapeError(fmt::format("decoder: cache row {} holds {} positions in layer 0 but {} in layer {}",
                                         row, pos, cache.seq_len(l, row), l));
        }
    }
    if constexpr (requires { cache.capacity(); }) {
        bool grows = false;
        if constexpr (requires { cache.growth(); }) grows = cache.growth() == Growth::Grow;
        if (!grows && pos + n > cache.capacity()) {
            throw CapacityError(fmt::format("decoder: cache row {} holds {} of {} positions; {} more do not fit",
                                            row, pos, cache.capacity(), n));
        }
    }
    if (n == 0) return;
    reserve_scratch(n);
    const AttentionOptions attn_opts{.window = c.sliding_window, .threads = threads_};

    // Embedding: x[t] = token_embd[tokens[t]]
    for (std::size_t t = 0; t < n; ++t) {
        weights_.token_embedding.dequantize_row(static_cast<std::size_t>(tokens[t]), x_.data() + t * c.d_model);
    }

    for (std::size_t l = 0; l < c.n_layers; ++l) {
        const LayerWeights& w = weights_.layers[l];

        // Attention block: x += wo · attention(rope(wq · norm(x)), cache ∪ rope(wk · norm(x)), wv · norm(x))
        rms_norm(x_.data(), w.attn_norm.data(), n, c.d_model, c.norm_eps, xb_.data());  // xb (n, d_model)
        matmul(w.wq, xb_.data(), n, q_.data(), threads_);                                 // q  (n, n_heads*head_dim)
        matmul(w.wk, xb_.data(), n, k_.data(), threads_);                                 // k  (n, n_kv_heads*head_dim)
        matmul(w.wv, xb_.data(), n, v_.data(), threads_);                                 // v  (n, n_kv_heads*head_dim)
        if (c.qkv_bias) {
            add_bias(q_.data(), w.bq.data(), n, c.q_dim());
            add_bias(k_.data(), w.bk.data(), n, c.kv_dim());
            add_bias(v_.data(), w.bv.data(), n, c.kv_dim());
        }
        apply_rope(q_.data(), n, c.n_heads, c.head_dim, c.rope_dim, pos, inv_freq_.data(), c.rope_style);
        apply_rope(k_.data(), n, c.n_kv_heads, c.head_dim, c.rope_dim, pos, inv_freq_.data(), c.rope_style);

        // The cache now holds positions [0, pos + n) of this layer; the queries are its last n.
        cache.append(l, row, std::span<const float>(k_.data(), n * c.kv_dim()),
                     std::span<const float>(v_.data(), n * c.kv_dim()), n);
        attention(cache, l, row, std::span<const float>(q_.data(), n * c.q_dim()), n, c.n_heads,
                  std::span<float>(att_.data(), n * c.q_dim()), attn_opts);               // att (n, n_heads*head_dim)
        matmul(w.wo, att_.data(), n, xb_.data(), threads_);                               // xb  (n, d_model)
        add_into(x_.data(), xb_.data(), n * c.d_model);

        // MLP block: x += w_down · (silu(w_gate · norm(x)) * (w_up · norm(x)))
        rms_norm(x_.data(), w.ffn_norm.data(), n, c.d_model, c.norm_eps, xb_.data());    // xb  (n, d_model)
        matmul(w.w_gate, xb_.data(), n, hb_.data(), threads_);                            // hb  (n, d_ff)
        matmul(w.w_up, xb_.data(), n, hb2_.data(), threads_);                             // hb2 (n, d_ff)
        swiglu(hb_.data(), hb2_.data(), n * c.d_ff);
        matmul(w.w_down, hb_.data(), n, xb_.data(), threads_);                            // xb  (n, d_model)
        add_into(x_.data(), xb_.data(), n * c.d_model);
    }

    // Final norm and logits, for every token or only the last.
    const std::size_t first = all_logits ? 0 : n - 1;
    const std::size_t n_out = n - first;
    const float* x_out = x_.data() + first * c.d_model;
    rms_norm(x_out, weights_.output_norm.data(), n_out, c.d_model, c.norm_eps, xb_.data());  // xb (n_out, d_model)
    matmul(weights_.output_matrix(), xb_.data(), n_out, logits_out.data(), threads_);          // logits (n_out, vocab)
}

}  // namespace kvcache
