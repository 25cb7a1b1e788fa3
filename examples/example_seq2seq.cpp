// example_seq2seq: runs a PyTorch-trained encoder-decoder (config JSON + safetensors) on source token ids,
// with and without the KV caches, and prints the generated ids and the time each way took.
//
//   example_seq2seq tests/fixtures/seq2seq/post_norm_relu.config.json
//                   tests/fixtures/seq2seq/post_norm_relu.safetensors 5 9 12 7 --max-new 12
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "kvcache/model/encoder_decoder.hpp"

namespace {

void usage() {
    std::fprintf(stderr,
                 "usage: example_seq2seq CONFIG.json MODEL.safetensors ID [ID...] [--max-new N] [--temperature T]\n"
                 "                       [--top-k K] [--top-p P] [--seed S]\n"
                 "  The model is a Seq2SeqTransformer state_dict saved with safetensors.torch.save_file\n"
                 "  (see scripts/make_seq2seq_fixtures.py). ID are source token ids.\n");
}

void print_run(const char* label, const kvcache::model::Seq2SeqResult& r) {
    std::printf("%-14s", label);
    for (auto id : r.tokens[0]) std::printf(" %d", id);
    const double per_token = r.generated_tokens ? r.decode_seconds / static_cast<double>(r.generated_tokens) : 0.0;
    std::printf("\n%-14s encode %.3f ms, decode %.3f ms (%.3f ms/token, %zu tokens)\n", "", r.encode_seconds * 1e3,
                r.decode_seconds * 1e3, per_token * 1e3, r.generated_tokens);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 4) {
        usage();
        return 2;
    }
    try {
        kvcache::model::Seq2SeqGenerateOptions opts;
        opts.max_new_tokens = 16;
        std::vector<std::int32_t> source;
        for (int i = 3; i < argc; ++i) {
            const std::string a = argv[i];
            auto value = [&]() -> std::string {
                if (i + 1 >= argc) throw kvcache::ConfigError(a + " needs a value");
                return argv[++i];
            };
            if (a == "--max-new") opts.max_new_tokens = std::stoul(value());
            else if (a == "--temperature") opts.sampling.temperature = std::stof(value());
            else if (a == "--top-k") opts.sampling.top_k = std::stoi(value());
            else if (a == "--top-p") opts.sampling.top_p = std::stof(value());
            else if (a == "--seed") opts.sampling.seed = std::stoull(value());
            else source.push_back(static_cast<std::int32_t>(std::stol(a)));
        }
        if (source.empty()) {
            usage();
            return 2;
        }
        auto model = kvcache::model::EncoderDecoder::load(argv[1], argv[2]);
        const auto& c = model.config();
        std::printf("model: d_model %zu, %zu heads, d_ff %zu, %zu encoder + %zu decoder layers, %s, %s, %s positions\n",
                    c.d_model, c.n_heads, c.d_ff, c.n_encoder_layers, c.n_decoder_layers,
                    c.norm_first ? "pre-norm" : "post-norm", c.activation == kvcache::model::Activation::GELU ? "gelu" : "relu",
                    c.positions == kvcache::model::PositionKind::Learned ? "learned" : "sinusoidal");
        std::printf("source:      ");
        for (auto id : source) std::printf(" %d", id);
        std::printf("\n");

        const std::vector<std::vector<std::int32_t>> batch = {source};
        opts.use_cache = true;
        model.reset_stats();
        const auto cached = model.generate(batch, opts);
        const auto cached_stats = model.stats();
        print_run("with cache:", cached);
        opts.use_cache = false;
        model.reset_stats();
        const auto uncached = model.generate(batch, opts);
        print_run("without cache:", uncached);
        std::printf("cross K/V projections: %zu with the cache, %zu without; decoder positions: %zu vs %zu\n",
                    cached_stats.cross_kv_projections, model.stats().cross_kv_projections,
                    cached_stats.decoder_positions, model.stats().decoder_positions);
        if (cached.tokens != uncached.tokens) {
            std::fprintf(stderr, "error: cached and uncached generation differ\n");
            return 1;
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
