// The reference encoder-decoder transformer: PyTorch's nn.Transformer plus embeddings, positions and an
// output projection — its config and weights (loaded from a config JSON and a safetensors file) and the model
// that runs them over a decoder self-attention cache and a cross-attention cache.
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
// bos_token_id, eos_token_id, pad_token_id. Every value is checked for type, range and finiteness when the
// config is read, before anything is sized from it.
//
// The seam is the decoder's: EncoderDecoderWeights is what the files hold (config + tensors, checked against
// each other), EncoderDecoder runs it. One pass reads top to bottom in the order a token meets it:
//   encode:  embed + position → per layer [self-attention → residual (+norm) → feed-forward → residual]
//            → encoder.norm = the memory (n_src, d_model)
//   decode:  embed + position → per layer [masked self-attention over the self cache → cross-attention over
//            the cross cache → feed-forward, each with its residual and norm] → decoder.norm → generator
//
// Caches: decoder self-attention appends each new position's K/V to any KVCacheLike cache (MultiLayerKVCache,
// or KVCache<Layers, Heads, HeadDim, T> when the dims are known at compile time) and attends over it; the
// cross-attention K/V are projected from the encoder output once per source into a CrossAttentionCache and
// read at every step (stats().cross_kv_projections counts the projections). Without the cache, every step
// re-runs the decoder over the whole target prefix and re-projects the cross K/V. Both ways generate through
// the same loop and give the same tokens, bit for bit.
//
// Padding: every source of a batch is encoded on its own (no pad tokens ever enter the encoder), and each
// decoder row attends over exactly its own source length (the cross cache's seq_len(layer, row)) — the
// same function PyTorch computes with key padding masks.
//
// Threading: the thread count travels with each call (Seq2SeqRunOptions, Seq2SeqGenerateOptions); results do
// not depend on it. A model holds scratch buffers (no allocation per token after warm-up) and statistics, so
// one model runs one call at a time; use one model per thread (the weights can be copied or loaded again).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "kvcache/attention/attention.hpp"
#include "kvcache/cache/concept.hpp"
#include "kvcache/cache/cross_attention_cache.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/error.hpp"
#include "kvcache/model/ops.hpp"
#include "kvcache/model/sampling.hpp"

namespace kvcache {

namespace safetensors {
class File;
}

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
    std::int32_t pad_token_id = 0;     ///< -1 for none; never fed to the model (sources are not padded)

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
    /// Parses the config JSON: FormatError for bad JSON, a missing key or a wrong type (naming the key; a
    /// token id beyond 32 bits and a non-finite number are wrong types), ConfigError for bad values (unknown
    /// activation or positions, validate()).
    static EncoderDecoderConfig from_json(std::string_view text);
    static EncoderDecoderConfig load(const std::filesystem::path& path);  ///< IoError if unreadable
};

/// The tensors of an nn.Transformer encoder-decoder with its embeddings and generator, as floats, and the
/// config they belong to. Matrices are [out][in], as PyTorch stores them.
struct EncoderDecoderWeights {
    /// A PyTorch nn.Linear: y = x · weightᵀ + bias.
    struct Linear {
        std::vector<float> weight;  // (out, in)
        std::vector<float> bias;    // (out) — empty for no bias
    };
    struct LayerNorm {
        std::vector<float> weight;  // (d_model)
        std::vector<float> bias;    // (d_model)
    };
    /// nn.MultiheadAttention: in_proj packs q, k, v.
    struct Attention {
        Linear in_proj;   // (3*d_model, d_model)
        Linear out_proj;  // (d_model, d_model)
    };
    struct EncoderLayer {
        Attention self_attn;
        Linear linear1;  // (d_ff, d_model)
        Linear linear2;  // (d_model, d_ff)
        LayerNorm norm1, norm2;
    };
    struct DecoderLayer {
        Attention self_attn;
        Attention cross_attn;  // "multihead_attn" in PyTorch
        Linear linear1, linear2;
        LayerNorm norm1, norm2, norm3;
    };

    EncoderDecoderConfig config;
    std::vector<float> src_embed;  // (src_vocab, d_model)
    std::vector<float> tgt_embed;  // (tgt_vocab, d_model)
    std::vector<float> src_pos;    // (max_positions, d_model) — learned positions only
    std::vector<float> tgt_pos;    // (max_positions, d_model) — learned positions only
    std::vector<EncoderLayer> encoder;
    LayerNorm encoder_norm;
    std::vector<DecoderLayer> decoder;
    LayerNorm decoder_norm;
    Linear generator;              // (tgt_vocab, d_model)

    /// ConfigError for a bad config (EncoderDecoderConfig::validate), ShapeError naming the tensor and both
    /// sizes for a weight whose size disagrees with the config.
    void validate() const;

    /// Reads every tensor of the file in one walk over its table (tensor names as in the header comment).
    /// FormatError for a missing tensor or one the config does not describe (naming it), ShapeError for a
    /// wrong shape (naming the tensor and both shapes), FormatError for a non-float dtype.
    static EncoderDecoderWeights from_safetensors(EncoderDecoderConfig config, const safetensors::File& file);
    /// A config JSON and a safetensors file; IoError if either cannot be read.
    static EncoderDecoderWeights load(const std::filesystem::path& config_json, const std::filesystem::path& weights);
    /// Random weights (nn.Linear-style uniform(±1/sqrt(in)), embeddings uniform(±1), norms 1 and 0), the
    /// same for a seed on every platform: for benchmarks and tests. CapacityError if they do not fit in memory.
    static EncoderDecoderWeights random(EncoderDecoderConfig config, std::uint64_t seed);
};

/// Work counters. Kept per model (not global) so tests can check what ran.
struct EncoderDecoderStats {
    std::size_t sources_encoded = 0;
    std::size_t cross_kv_projections = 0;  ///< (source, decoder layer) K/V projections of an encoder output
    std::size_t decoder_positions = 0;     ///< target positions run through the decoder
    std::size_t decoder_calls = 0;
};

/// How one call runs. Results do not depend on it.
struct Seq2SeqRunOptions {
    int threads = 0;  ///< matmul and attention threads; 0 → all the hardware offers
};

struct Seq2SeqGenerateOptions {
    std::size_t max_new_tokens = 32;
    SamplingOptions sampling;  ///< temperature 0 → greedy. Every row gets a sampler seeded with sampling.seed,
                               ///< so a row of a batch generates what its source generates alone.
    bool use_cache = true;     ///< false: re-run the decoder over the whole prefix at every step
    bool stop_at_eos = true;
    int threads = 0;           ///< as Seq2SeqRunOptions::threads
};

struct Seq2SeqResult {
    std::vector<std::vector<std::int32_t>> tokens;  ///< per source: generated ids, without BOS, with EOS if made
    double encode_seconds = 0;  ///< encoding the sources (and, with the cache, projecting their cross K/V)
    double decode_seconds = 0;  ///< the generation steps
    std::size_t generated_tokens = 0;
};

class EncoderDecoder {
public:
    /// Validates the weights against their config (EncoderDecoderWeights::validate).
    explicit EncoderDecoder(EncoderDecoderWeights weights);
    /// EncoderDecoderWeights::load, then the model.
    static EncoderDecoder load(const std::filesystem::path& config_json, const std::filesystem::path& weights);

    const EncoderDecoderConfig& config() const { return weights_.config; }
    const EncoderDecoderWeights& weights() const { return weights_; }
    const EncoderDecoderStats& stats() const { return stats_; }
    void reset_stats() { stats_ = {}; }

    /// The encoder output ("memory") of one source: (n_src, d_model). IndexError for an id outside the
    /// source vocabulary, CapacityError for a source longer than max_positions, ShapeError if empty.
    std::vector<float> encode(std::span<const std::int32_t> source, const Seq2SeqRunOptions& run = {});

    /// Projects `memory` (n_src, d_model) to every decoder layer's cross K/V and writes them to row `row`.
    template <StorageElement T>
    void write_cross(std::span<const float> memory, std::size_t n_src, CrossAttentionCache<T>& cross, std::size_t row,
                     const Seq2SeqRunOptions& run = {});

    /// Runs `tokens` — the next positions of row `row`'s target — through the decoder: appends their self K/V
    /// to `self`, attends over `self` and `cross`, and writes logits (tokens.size(), tgt_vocab) to `logits`.
    template <KVCacheLike Self, KVCacheReadable Cross>
    void decode(std::span<const std::int32_t> tokens, std::size_t row, Self& self, const Cross& cross,
                std::span<float> logits, const Seq2SeqRunOptions& run = {});

    /// Without any cache: the decoder over the whole `target` against `memory`, re-projecting the cross K/V.
    /// Returns logits (target.size(), tgt_vocab).
    std::vector<float> decode_uncached(std::span<const float> memory, std::size_t n_src,
                                       std::span<const std::int32_t> target, const Seq2SeqRunOptions& run = {});

    /// A self + cross cache sized for this model.
    template <StorageElement T = float>
    EncoderDecoderCache<T> make_cache(std::size_t batch, std::size_t max_target_len, std::size_t max_source_len) const;

    /// Generates for every source (batched in lockstep; sources may differ in length), with the caches or
    /// without (options.use_cache). ShapeError for no source or an empty one, ConfigError for max_new_tokens
    /// beyond max_positions or bad sampling options, IndexError for a token outside the source vocabulary.
    Seq2SeqResult generate(const std::vector<std::vector<std::int32_t>>& sources, const Seq2SeqGenerateOptions& options);
    std::vector<std::int32_t> generate(std::span<const std::int32_t> source, const Seq2SeqGenerateOptions& options);

    /// generate with caller-provided caches (e.g. a compile-time KVCache for the self cache). The rows used
    /// must be empty; `cross` is reset(). Ignores options.use_cache (this is the cached path).
    template <KVCacheLike Self, StorageElement T>
    Seq2SeqResult generate_with(const std::vector<std::vector<std::int32_t>>& sources,
                                const Seq2SeqGenerateOptions& options, Self& self, CrossAttentionCache<T>& cross);

private:
    /// One pass's activations over n tokens, carved from scratch_: each is [n][width], named for its role.
    struct Buffers {
        std::span<float> x;       // (n, d_model) residual stream
        std::span<float> normed;  // (n, d_model) layer norm of x: a pre-norm sublayer's input, the final norm
        std::span<float> q;       // (n, d_model)
        std::span<float> k;       // (n, d_model)
        std::span<float> v;       // (n, d_model)
        std::span<float> attn;    // (n, d_model) attention output, heads side by side
        std::span<float> out;     // (n, d_model) a sublayer's output before it joins the residual stream
        std::span<float> hidden;  // (n, d_ff) the feed-forward hidden layer
    };
    /// Buffers for n tokens (grown, never shrunk: no allocation per token after warm-up).
    Buffers buffers(std::size_t n);

    /// Computes the next-token logits of row `row` whose target so far is `target` (BOS + generated).
    using Step = std::function<void(std::size_t row, std::span<const std::int32_t> target, std::span<float> logits)>;
    /// The generation loop of both paths: sampling, stopping and timing around `step`.
    Seq2SeqResult generation_loop(std::size_t batch, const Seq2SeqGenerateOptions& options, const Step& step);

    /// Threads for one attention call: 1 when the work is too small to pay for waking a second thread.
    void check_tokens(std::span<const std::int32_t> tokens, std::size_t first_position, bool target) const;
    void check_logits(std::size_t n, std::size_t size) const;
    template <KVCacheReadable C>
    void check_cache(const C& cache, std::size_t row, const char* which) const;
    std::size_t check_sources(const std::vector<std::vector<std::int32_t>>& sources, const Seq2SeqGenerateOptions& o) const;

    // The stages of a layer (non-template, in src/model/encoder_decoder.cpp); every buffer is an argument.
    /// x = embedding(tokens) * scale + position(first_position + i), for the source or the target side.
    void embed(bool target, std::span<const std::int32_t> tokens, std::size_t first_position, std::span<float> x) const;
    /// The input of a sublayer: norm(x) written to `normed` for pre-norm, x itself for post-norm.
    std::span<const float> sublayer_input(const EncoderDecoderWeights::LayerNorm& norm, std::span<const float> x,
                                          std::span<float> normed) const;
    /// out (n, n_rows) = x (n, in) · W[first_row, first_row + n_rows)ᵀ + bias.
    void project(const EncoderDecoderWeights::Linear& w, std::size_t first_row, std::size_t n_rows,
                 std::span<const float> x, std::size_t n, std::span<float> out, int threads) const;
    /// q, k, v = the three parts of in_proj applied to `input`.
    void project_qkv(const EncoderDecoderWeights::Attention& w, std::span<const float> input, std::size_t n,
                     std::span<float> q, std::span<float> k, std::span<float> v, int threads) const;
    /// x += out_proj(attn) through `out`, then norm(x) for post-norm.
    void attention_residual(const EncoderDecoderWeights::Attention& w, const EncoderDecoderWeights::LayerNorm& norm,
                            std::span<const float> attn, std::span<float> out, std::span<float> x, std::size_t n,
                            int threads) const;
    /// x += linear2(activation(linear1(sublayer_input(x)))), then norm(x) for post-norm.
    void feed_forward(const EncoderDecoderWeights::Linear& linear1, const EncoderDecoderWeights::Linear& linear2,
                      const EncoderDecoderWeights::LayerNorm& norm, const Buffers& b, std::size_t n, int threads) const;
    /// ShapeError unless memory holds n_src rows of d_model, 1 <= n_src <= max_positions.
    void check_memory(std::span<const float> memory, std::size_t n_src) const;
    /// k, v (n_src, d_model) = the cross-attention K/V of decoder layer `layer` for `memory`.
    void project_cross_kv(std::size_t layer, std::span<const float> memory, std::size_t n_src, std::span<float> k,
                          std::span<float> v, int threads);
    /// logits (n, tgt_vocab) = generator(decoder.norm(x)), through `normed`.
    void output_logits(std::span<const float> x, std::size_t n, std::span<float> normed, std::span<float> logits,
                       int threads) const;

    EncoderDecoderWeights weights_;
    std::vector<float> inv_frequencies_;  // (d_model / 2) w_i of the sinusoidal positions
    EncoderDecoderStats stats_;
    std::vector<float> scratch_;          // the storage of Buffers
};

// ---- templates ----

template <KVCacheReadable C>
void EncoderDecoder::check_cache(const C& cache, std::size_t row, const char* which) const {
    const EncoderDecoderConfig& c = config();
    if (cache.num_layers() != c.n_decoder_layers)
        throw ShapeError(fmt::format("encoder-decoder: the {} cache has {} layers, the model {} decoder layers", which,
                                     cache.num_layers(), c.n_decoder_layers));
    for (std::size_t l = 0; l < cache.num_layers(); ++l) {
        if (cache.num_kv_heads(l) != c.n_heads || cache.head_dim(l) != c.head_dim())
            throw ShapeError(fmt::format("encoder-decoder: the {} cache's layer {} has {} heads of {}, the model {} of {}",
                                         which, l, cache.num_kv_heads(l), cache.head_dim(l), c.n_heads, c.head_dim()));
    }
    if (row >= cache.batch_size())
        throw IndexError(fmt::format("encoder-decoder: row {} of a {} cache with {} rows", row, which, cache.batch_size()));
}

template <StorageElement T>
void EncoderDecoder::write_cross(std::span<const float> memory, std::size_t n_src, CrossAttentionCache<T>& cross,
                                 std::size_t row, const Seq2SeqRunOptions& run) {
    check_cache(cross, row, "cross");
    check_memory(memory, n_src);
    const std::size_t width = n_src * config().d_model;
    const Buffers b = buffers(n_src);
    for (std::size_t l = 0; l < config().n_decoder_layers; ++l) {
        project_cross_kv(l, memory, n_src, b.k, b.v, run.threads);
        cross.write(l, row, b.k.first(width), b.v.first(width), n_src);
    }
}

template <KVCacheLike Self, KVCacheReadable Cross>
void EncoderDecoder::decode(std::span<const std::int32_t> tokens, std::size_t row, Self& self, const Cross& cross,
                            std::span<float> logits, const Seq2SeqRunOptions& run) {
    const EncoderDecoderConfig& c = config();
    check_cache(self, row, "self");
    check_cache(cross, row, "cross");
    const std::size_t n = tokens.size(), H = c.n_heads;
    check_logits(n, logits.size());
    for (std::size_t l = 0; l < c.n_decoder_layers; ++l) {
        if (cross.seq_len(l, row) == 0)
            throw ShapeError(fmt::format("encoder-decoder: cross cache layer {} row {} holds no source; write_cross first",
                                         l, row));
    }
    const std::size_t p0 = self.seq_len(0, row);  // position of tokens[0]
    check_tokens(tokens, p0, true);
    ++stats_.decoder_calls;
    stats_.decoder_positions += n;
    const Buffers b = buffers(n);
    embed(true, tokens, p0, b.x);
    // How many threads each attention gets is decided inside it (detail::thread_count), from its work and bytes.
    const AttentionOptions causal{.threads = run.threads};
    const AttentionOptions full{.causal = false, .threads = run.threads};
    for (std::size_t l = 0; l < c.n_decoder_layers; ++l) {
        const EncoderDecoderWeights::DecoderLayer& w = weights_.decoder[l];
        // masked self-attention: the new positions' K/V go into the cache first, then attend over all of it
        project_qkv(w.self_attn, sublayer_input(w.norm1, b.x, b.normed), n, b.q, b.k, b.v, run.threads);
        self.append(l, row, std::span<const float>(b.k), std::span<const float>(b.v), n);
        attention(self, l, row, std::span<const float>(b.q), n, H, b.attn, causal);
        attention_residual(w.self_attn, w.norm1, b.attn, b.out, b.x, n, run.threads);
        // cross-attention: only q is computed here; K/V of the source are in the cross cache
        project(w.cross_attn.in_proj, 0, c.d_model, sublayer_input(w.norm2, b.x, b.normed), n, b.q, run.threads);
        attention(cross, l, row, std::span<const float>(b.q), n, H, b.attn, full);
        attention_residual(w.cross_attn, w.norm2, b.attn, b.out, b.x, n, run.threads);
        feed_forward(w.linear1, w.linear2, w.norm3, b, n, run.threads);
    }
    output_logits(b.x, n, b.normed, logits, run.threads);
}

template <StorageElement T>
EncoderDecoderCache<T> EncoderDecoder::make_cache(std::size_t batch, std::size_t max_target_len,
                                                  std::size_t max_source_len) const {
    const std::size_t L = config().n_decoder_layers, H = config().n_heads, hd = config().head_dim();
    return EncoderDecoderCache<T>{MultiLayerKVCache<T>(CacheShape{L, H, hd}, batch, max_target_len, Growth::Fixed),
                                  CrossAttentionCache<T>(CacheShape{L, H, hd}, batch, max_source_len)};
}

template <KVCacheLike Self, StorageElement T>
Seq2SeqResult EncoderDecoder::generate_with(const std::vector<std::vector<std::int32_t>>& sources,
                                            const Seq2SeqGenerateOptions& options, Self& self,
                                            CrossAttentionCache<T>& cross) {
    const std::size_t B = check_sources(sources, options);
    if (self.batch_size() < B || cross.batch_size() < B)
        throw ShapeError(fmt::format("encoder-decoder: {} sources but the caches hold {} and {} rows", B,
                                     self.batch_size(), cross.batch_size()));
    for (std::size_t r = 0; r < B; ++r) {
        check_cache(self, r, "self");
        for (std::size_t l = 0; l < config().n_decoder_layers; ++l)
            if (self.seq_len(l, r) != 0)
                throw ConfigError(fmt::format("encoder-decoder: self cache row {} layer {} already holds {} positions; "
                                              "clear it first", r, l, self.seq_len(l, r)));
    }
    cross.reset();
    const Seq2SeqRunOptions run{options.threads};
    const auto start = std::chrono::steady_clock::now();
    for (std::size_t r = 0; r < B; ++r) write_cross(encode(sources[r], run), sources[r].size(), cross, r, run);
    const std::chrono::duration<double> encode_time = std::chrono::steady_clock::now() - start;
    Seq2SeqResult result = generation_loop(
        B, options, [&](std::size_t row, std::span<const std::int32_t> target, std::span<float> logits) {
            // only the positions the cache does not hold yet: the last token
            decode(target.subspan(self.seq_len(0, row)), row, self, cross, logits, run);
        });
    result.encode_seconds = encode_time.count();
    return result;
}

}  // namespace kvcache
