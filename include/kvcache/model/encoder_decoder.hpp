// The reference encoder-decoder transformer: PyTorch's nn.Transformer plus embeddings, positions and an
// output projection, with a decoder self-attention cache and a cross-attention cache.
//
// Weights are the state_dict of this PyTorch module (scripts/make_seq2seq_fixtures.py holds the exact class),
// saved with `safetensors.torch.save_file(model.state_dict(), "model.safetensors")`:
//
//     class Seq2SeqTransformer(nn.Module):
//         src_embed = nn.Embedding(src_vocab, d_model)          # src_embed.weight [src_vocab, d]
//         tgt_embed = nn.Embedding(tgt_vocab, d_model)          # tgt_embed.weight [tgt_vocab, d]
//         src_pos, tgt_pos = nn.Embedding(max_positions, d)     # only with "positions": "learned"
//         transformer = nn.Transformer(d_model, nhead, n_enc, n_dec, dim_feedforward, dropout=0,
//                                      activation, layer_norm_eps, batch_first=True, norm_first)
//         generator = nn.Linear(d_model, tgt_vocab)             # generator.weight, generator.bias
//         embed(tokens) = table(tokens) * sqrt(d_model) + position   (the sqrt only if scale_embeddings)
//         encode(src) = transformer.encoder(embed(src))
//         decode(tgt, memory) = generator(transformer.decoder(embed(tgt), memory,
//                                         tgt_mask=nn.Transformer.generate_square_subsequent_mask(n)))
//
// nn.MultiheadAttention packs q, k, v into in_proj_weight [3*d_model, d_model] (rows [0,d) are q, [d,2d) k,
// [2d,3d) v) and in_proj_bias [3*d_model]; nn.Transformer always has the final encoder.norm and decoder.norm
// (for post-norm too). Sinusoidal positions are PE[p,2i] = sin(p·w_i), PE[p,2i+1] = cos(p·w_i),
// w_i = exp(-2i·ln(10000)/d_model), computed in float as the script does.
//
// The config JSON (written by the script's config_of) names: d_model, nhead, num_encoder_layers,
// num_decoder_layers, dim_feedforward, activation ("relu"|"gelu"), norm_first, layer_norm_eps,
// src_vocab_size, tgt_vocab_size, positions ("sinusoidal"|"learned"), max_positions, scale_embeddings,
// bos_token_id, eos_token_id, pad_token_id.
//
// Caches: decoder self-attention appends each new position's K/V to any KVCacheLike cache (MultiLayerKVCache,
// or KVCache<Layers, Heads, HeadDim, T> when the dims are known at compile time) and attends over it; the
// cross-attention K/V are projected from the encoder output once per source into a CrossAttentionCache and
// read at every step (stats().cross_kv_projections counts the projections). Without the cache, every step
// re-runs the decoder over the whole target prefix and re-projects the cross K/V.
//
// Padding: every source of a batch is encoded on its own (no pad tokens ever enter the encoder), and each
// decoder row attends over exactly its own source length (the cross cache's seq_len(layer, row)) — the
// same function PyTorch computes with key padding masks.
//
// Threading: a model holds scratch buffers (no allocation per token after warm-up) and statistics, so one
// model runs one call at a time; use one model per thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string_view>
#include <vector>

#include "kvcache/attention/attention.hpp"
#include "kvcache/cache/concept.hpp"
#include "kvcache/cache/cross_attention_cache.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/error.hpp"
#include "kvcache/model/sampling.hpp"

namespace kvcache::safetensors {
class File;
}

namespace kvcache::model {

enum class Activation { ReLU, GELU };
enum class PositionKind { Sinusoidal, Learned };

struct EncoderDecoderConfig {
    std::size_t d_model = 0;
    std::size_t n_heads = 0;
    std::size_t d_ff = 0;
    std::size_t n_encoder_layers = 0;
    std::size_t n_decoder_layers = 0;
    std::size_t src_vocab_size = 0;
    std::size_t tgt_vocab_size = 0;
    std::size_t max_positions = 0;     ///< longest source and longest target (BOS + generated)
    bool norm_first = false;           ///< pre-norm (true) or post-norm (false), as nn.Transformer's norm_first
    Activation activation = Activation::ReLU;
    PositionKind positions = PositionKind::Sinusoidal;
    float layer_norm_eps = 1e-5f;
    bool scale_embeddings = true;      ///< multiply token embeddings by sqrt(d_model)
    std::int32_t bos_token_id = 1;
    std::int32_t eos_token_id = 2;
    std::int32_t pad_token_id = 0;

    /// Upper limits of the sizes (far above any model this reference implementation is for; they keep every
    /// product of sizes far from overflowing and a hostile config from sizing a buffer).
    static constexpr std::size_t kMaxDModel = std::size_t{1} << 16;
    static constexpr std::size_t kMaxFeedForward = std::size_t{1} << 20;
    static constexpr std::size_t kMaxLayers = 1024;
    static constexpr std::size_t kMaxVocab = std::size_t{1} << 24;
    static constexpr std::size_t kMaxPositions = std::size_t{1} << 20;

    std::size_t head_dim() const { return n_heads ? d_model / n_heads : 0; }
    /// ConfigError naming the value: a size of 0 or above its limit (kMax*), d_model not a multiple of nhead,
    /// eps outside (0, 1] or not finite, bos/eos outside the target vocabulary, pad neither -1 nor a source id.
    void validate() const;
    /// Parses the config JSON: FormatError for bad JSON, a missing key or a wrong type (naming the key),
    /// ConfigError for bad values (unknown activation or positions, validate()).
    static EncoderDecoderConfig from_json(std::string_view text);
    static EncoderDecoderConfig load(const std::filesystem::path& path);  ///< IoError if unreadable
};

/// A PyTorch nn.Linear: y = x · weightᵀ + bias.
struct LinearWeights {
    std::vector<float> weight;  // (out, in)
    std::vector<float> bias;    // (out) — empty for no bias
};
struct LayerNormWeights {
    std::vector<float> weight;  // (d_model)
    std::vector<float> bias;    // (d_model)
};
/// nn.MultiheadAttention: in_proj packs q, k, v.
struct AttentionWeights {
    LinearWeights in_proj;   // (3*d_model, d_model)
    LinearWeights out_proj;  // (d_model, d_model)
};
struct EncoderLayerWeights {
    AttentionWeights self_attn;
    LinearWeights linear1;  // (d_ff, d_model)
    LinearWeights linear2;  // (d_model, d_ff)
    LayerNormWeights norm1, norm2;
};
struct DecoderLayerWeights {
    AttentionWeights self_attn;
    AttentionWeights cross_attn;  // "multihead_attn" in PyTorch
    LinearWeights linear1, linear2;
    LayerNormWeights norm1, norm2, norm3;
};
struct EncoderDecoderWeights {
    std::vector<float> src_embed;  // (src_vocab, d_model)
    std::vector<float> tgt_embed;  // (tgt_vocab, d_model)
    std::vector<float> src_pos;    // (max_positions, d_model) — learned positions only
    std::vector<float> tgt_pos;    // (max_positions, d_model) — learned positions only
    std::vector<EncoderLayerWeights> encoder;
    LayerNormWeights encoder_norm;
    std::vector<DecoderLayerWeights> decoder;
    LayerNormWeights decoder_norm;
    LinearWeights generator;       // (tgt_vocab, d_model)
};

/// Work counters. Kept per model (not global) so tests can check what ran.
struct EncoderDecoderStats {
    std::size_t sources_encoded = 0;
    std::size_t cross_kv_projections = 0;  ///< (source, decoder layer) K/V projections of an encoder output
    std::size_t decoder_positions = 0;     ///< target positions run through the decoder
    std::size_t decoder_calls = 0;
};

struct Seq2SeqGenerateOptions {
    std::size_t max_new_tokens = 32;
    SamplingOptions sampling;  ///< temperature 0 → greedy. Every row gets a sampler seeded with sampling.seed,
                               ///< so a row of a batch generates what its source generates alone.
    bool use_cache = true;     ///< false: re-run the decoder over the whole prefix at every step
    bool stop_at_eos = true;
};

struct Seq2SeqResult {
    std::vector<std::vector<std::int32_t>> tokens;  ///< per source: generated ids, without BOS, with EOS if made
    double encode_seconds = 0;
    double decode_seconds = 0;
    std::size_t generated_tokens = 0;
};

class EncoderDecoder {
public:
    /// Checks every weight's size against the config: ShapeError naming the tensor and both sizes.
    EncoderDecoder(EncoderDecoderConfig config, EncoderDecoderWeights weights);

    /// Loads a config JSON and a safetensors file (tensor names as in the header comment). FormatError for a
    /// missing or unexpected tensor, ShapeError for a wrong shape (naming tensor and shapes).
    static EncoderDecoder load(const std::filesystem::path& config_json, const std::filesystem::path& weights);
    static EncoderDecoder from_safetensors(EncoderDecoderConfig config, const safetensors::File& file);
    /// Random weights (nn.Linear-style uniform(±1/sqrt(in)), embeddings N(0,1)-ish): for benchmarks.
    static EncoderDecoder random(EncoderDecoderConfig config, std::uint64_t seed);

    const EncoderDecoderConfig& config() const { return config_; }
    const EncoderDecoderWeights& weights() const { return weights_; }
    const EncoderDecoderStats& stats() const { return stats_; }
    void reset_stats() { stats_ = {}; }
    /// Threads for attention (0: hardware). Results do not depend on it.
    void set_threads(int threads) { threads_ = threads; }

    /// The encoder output ("memory") of one source: (n_src, d_model). IndexError for an id outside the
    /// source vocabulary, CapacityError for a source longer than max_positions, ShapeError if empty.
    std::vector<float> encode(std::span<const std::int32_t> source);

    /// Projects `memory` (n_src, d_model) to every decoder layer's cross K/V and writes them to row `row`.
    template <StorageElement T>
    void write_cross(std::span<const float> memory, std::size_t n_src, CrossAttentionCache<T>& cross, std::size_t row);

    /// Runs `tokens` — the next positions of row `row`'s target — through the decoder: appends their self K/V
    /// to `self`, attends over `self` and `cross`, and writes logits (tokens.size(), tgt_vocab) to `logits`.
    template <KVCacheLike Self, KVCacheReadable Cross>
    void decode(std::span<const std::int32_t> tokens, std::size_t row, Self& self, const Cross& cross,
                std::span<float> logits);

    /// Without any cache: the decoder over the whole `target` against `memory`, re-projecting the cross K/V.
    /// Returns logits (target.size(), tgt_vocab).
    std::vector<float> decode_uncached(std::span<const float> memory, std::size_t n_src,
                                       std::span<const std::int32_t> target);

    /// A self + cross cache sized for this model.
    template <StorageElement T = float>
    EncoderDecoderCache<T> make_cache(std::size_t batch, std::size_t max_target_len, std::size_t max_source_len) const;

    /// Generates for every source (batched in lockstep; sources may differ in length).
    Seq2SeqResult generate(const std::vector<std::vector<std::int32_t>>& sources, const Seq2SeqGenerateOptions& options);
    std::vector<std::int32_t> generate(std::span<const std::int32_t> source, const Seq2SeqGenerateOptions& options);

    /// generate with caller-provided caches (e.g. a compile-time KVCache for the self cache). The rows used
    /// must be empty; `cross` is reset(). Ignores options.use_cache (this is the cached path).
    template <KVCacheLike Self, StorageElement T>
    Seq2SeqResult generate_with(const std::vector<std::vector<std::int32_t>>& sources,
                                const Seq2SeqGenerateOptions& options, Self& self, CrossAttentionCache<T>& cross);

private:
    // Non-template stages of one layer, in src/model/encoder_decoder.cpp. Buffers live in ws_.
    struct Workspace {
        std::vector<float> x, h, q, k, v, attn, tmp, ff;
    };
    /// Threads for one attention call: 1 when the work is too small to pay for waking a second thread.
    int attention_threads(std::size_t n_queries, std::size_t n_keys) const;
    void check_tokens(std::span<const std::int32_t> tokens, std::size_t first_position, bool target) const;
    template <KVCacheReadable C>
    void check_cache(const C& cache, std::size_t row, const char* which) const;
    void embed_target(std::span<const std::int32_t> tokens, std::size_t first_position, float* x);
    /// The input of a sub-layer: norm_k(x) for pre-norm, x itself for post-norm.
    const float* sublayer_input(const LayerNormWeights& norm, const float* x, std::size_t n);
    /// x += out_proj(attn) (then norm for post-norm).
    void finish_attention(const AttentionWeights& w, const LayerNormWeights& norm, float* x, std::size_t n);
    void feed_forward_block(const LinearWeights& l1, const LinearWeights& l2, const LayerNormWeights& norm, float* x,
                            std::size_t n);
    /// out (n_tokens, n_rows) = x (n_tokens, in) · W[first_row, first_row + n_rows)ᵀ + bias
    void project(const LinearWeights& w, std::size_t first_row, std::size_t n_rows, std::size_t in, const float* x,
                 std::size_t n_tokens, float* out) const;
    void project_cross_kv(std::size_t layer, std::span<const float> memory, std::size_t n_src);
    void output_logits(const float* x, std::size_t n, std::span<float> logits);
    std::size_t check_sources(const std::vector<std::vector<std::int32_t>>& sources, const Seq2SeqGenerateOptions& o) const;

    EncoderDecoderConfig config_;
    EncoderDecoderWeights weights_;
    std::vector<float> sinusoid_;  // (max_positions, d_model) when positions are sinusoidal
    EncoderDecoderStats stats_;
    Workspace ws_;
    int threads_ = 0;
};

// ---- templates ----

template <KVCacheReadable C>
void EncoderDecoder::check_cache(const C& cache, std::size_t row, const char* which) const {
    const std::size_t hd = config_.head_dim();
    if (cache.num_layers() != config_.n_decoder_layers)
        throw ShapeError(std::string("encoder-decoder: the ") + which + " cache has " + std::to_string(cache.num_layers()) +
                         " layers, the model " + std::to_string(config_.n_decoder_layers) + " decoder layers");
    for (std::size_t l = 0; l < cache.num_layers(); ++l) {
        if (cache.num_kv_heads(l) != config_.n_heads || cache.head_dim(l) != hd)
            throw ShapeError(std::string("encoder-decoder: the ") + which + " cache's layer " + std::to_string(l) + " has " +
                             std::to_string(cache.num_kv_heads(l)) + " heads of " + std::to_string(cache.head_dim(l)) +
                             ", the model " + std::to_string(config_.n_heads) + " of " + std::to_string(hd));
    }
    if (row >= cache.batch_size())
        throw IndexError(std::string("encoder-decoder: row ") + std::to_string(row) + " of a " + which + " cache with " +
                         std::to_string(cache.batch_size()) + " rows");
}

template <StorageElement T>
void EncoderDecoder::write_cross(std::span<const float> memory, std::size_t n_src, CrossAttentionCache<T>& cross,
                                 std::size_t row) {
    check_cache(cross, row, "cross");
    for (std::size_t l = 0; l < config_.n_decoder_layers; ++l) {
        project_cross_kv(l, memory, n_src);  // → ws_.k, ws_.v (n_src, d_model)
        cross.write(l, row, std::span<const float>(ws_.k.data(), n_src * config_.d_model),
                    std::span<const float>(ws_.v.data(), n_src * config_.d_model), n_src);
    }
}

template <KVCacheLike Self, KVCacheReadable Cross>
void EncoderDecoder::decode(std::span<const std::int32_t> tokens, std::size_t row, Self& self, const Cross& cross,
                            std::span<float> logits) {
    check_cache(self, row, "self");
    check_cache(cross, row, "cross");
    const std::size_t n = tokens.size(), d = config_.d_model, H = config_.n_heads;
    if (n == 0) throw ShapeError("encoder-decoder: decode of 0 tokens");
    if (logits.size() != n * config_.tgt_vocab_size)
        throw ShapeError("encoder-decoder: logits hold " + std::to_string(logits.size()) + " floats, need " +
                         std::to_string(n) + " x " + std::to_string(config_.tgt_vocab_size));
    for (std::size_t l = 0; l < config_.n_decoder_layers; ++l) {
        if (cross.seq_len(l, row) == 0)
            throw ShapeError("encoder-decoder: cross cache layer " + std::to_string(l) + " row " + std::to_string(row) +
                             " holds no source; write_cross first");
    }
    const std::size_t p0 = self.seq_len(0, row);
    check_tokens(tokens, p0, true);
    ++stats_.decoder_calls;
    stats_.decoder_positions += n;
    ws_.x.resize(n * d);
    ws_.q.resize(n * d);
    ws_.k.resize(n * d);
    ws_.v.resize(n * d);
    ws_.attn.resize(n * d);
    float* x = ws_.x.data();  // (n, d_model): the residual stream
    embed_target(tokens, p0, x);
    AttentionOptions causal;
    AttentionOptions full;
    full.causal = false;
    for (std::size_t l = 0; l < config_.n_decoder_layers; ++l) {
        causal.threads = attention_threads(n, self.seq_len(l, row) + n);
        full.threads = attention_threads(n, cross.seq_len(l, row));
        const DecoderLayerWeights& w = weights_.decoder[l];
        // masked self-attention: the new positions' K/V go into the cache first, then attend over all of it
        const float* h = sublayer_input(w.norm1, x, n);
        project(w.self_attn.in_proj, 0, d, d, h, n, ws_.q.data());
        project(w.self_attn.in_proj, d, d, d, h, n, ws_.k.data());
        project(w.self_attn.in_proj, 2 * d, d, d, h, n, ws_.v.data());
        self.append(l, row, std::span<const float>(ws_.k.data(), n * d), std::span<const float>(ws_.v.data(), n * d), n);
        attention(self, l, row, std::span<const float>(ws_.q.data(), n * d), n, H, std::span<float>(ws_.attn.data(), n * d),
                  causal);
        finish_attention(w.self_attn, w.norm1, x, n);
        // cross-attention: only q is computed here; K/V of the source are in the cross cache
        h = sublayer_input(w.norm2, x, n);
        project(w.cross_attn.in_proj, 0, d, d, h, n, ws_.q.data());
        attention(cross, l, row, std::span<const float>(ws_.q.data(), n * d), n, H, std::span<float>(ws_.attn.data(), n * d),
                  full);
        finish_attention(w.cross_attn, w.norm2, x, n);
        feed_forward_block(w.linear1, w.linear2, w.norm3, x, n);
    }
    output_logits(x, n, logits);
}

template <StorageElement T>
EncoderDecoderCache<T> EncoderDecoder::make_cache(std::size_t batch, std::size_t max_target_len,
                                                  std::size_t max_source_len) const {
    const std::size_t L = config_.n_decoder_layers, H = config_.n_heads, hd = config_.head_dim();
    return EncoderDecoderCache<T>{MultiLayerKVCache<T>(L, H, hd, batch, max_target_len, Growth::Fixed),
                                  CrossAttentionCache<T>(L, H, hd, batch, max_source_len)};
}

namespace detail {
double seconds_since(std::int64_t start_ns);
std::int64_t now_ns();
}  // namespace detail

template <KVCacheLike Self, StorageElement T>
Seq2SeqResult EncoderDecoder::generate_with(const std::vector<std::vector<std::int32_t>>& sources,
                                            const Seq2SeqGenerateOptions& options, Self& self,
                                            CrossAttentionCache<T>& cross) {
    const std::size_t B = check_sources(sources, options);
    if (self.batch_size() < B || cross.batch_size() < B)
        throw ShapeError("encoder-decoder: " + std::to_string(B) + " sources but the caches hold " +
                         std::to_string(self.batch_size()) + " and " + std::to_string(cross.batch_size()) + " rows");
    for (std::size_t r = 0; r < B; ++r) {
        check_cache(self, r, "self");
        for (std::size_t l = 0; l < config_.n_decoder_layers; ++l)
            if (self.seq_len(l, r) != 0)
                throw ConfigError("encoder-decoder: self cache row " + std::to_string(r) + " layer " + std::to_string(l) +
                                  " already holds " + std::to_string(self.seq_len(l, r)) + " positions; clear it first");
    }
    cross.reset();
    Seq2SeqResult result;
    result.tokens.resize(B);
    auto start = detail::now_ns();
    for (std::size_t r = 0; r < B; ++r) {
        const std::vector<float> memory = encode(sources[r]);
        write_cross(memory, sources[r].size(), cross, r);
    }
    result.encode_seconds = detail::seconds_since(start);
    start = detail::now_ns();
    std::vector<Sampler> samplers(B, Sampler(options.sampling));
    std::vector<std::vector<std::int32_t>> history(B, std::vector<std::int32_t>{config_.bos_token_id});
    std::vector<bool> done(B, options.max_new_tokens == 0);
    std::vector<float> logits(config_.tgt_vocab_size);
    for (std::size_t step = 0; step < options.max_new_tokens; ++step) {
        for (std::size_t r = 0; r < B; ++r) {
            if (done[r]) continue;
            const std::int32_t last = history[r].back();
            decode(std::span<const std::int32_t>(&last, 1), r, self, cross, logits);
            const std::int32_t next = samplers[r].sample(logits, history[r]);
            history[r].push_back(next);
            result.tokens[r].push_back(next);
            ++result.generated_tokens;
            if (options.stop_at_eos && next == config_.eos_token_id) done[r] = true;
        }
    }
    result.decode_seconds = detail::seconds_since(start);
    return result;
}

}  // namespace kvcache::model
