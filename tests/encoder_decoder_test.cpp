// The encoder-decoder against PyTorch goldens (tests/fixtures/seq2seq, from scripts/make_seq2seq_fixtures.py),
// cached vs uncached generation, cross-cache reuse, padded batches, the compile-time cache, error paths.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvcache/cache/kv_cache.hpp"
#include "kvcache/model/encoder_decoder.hpp"
#include "kvcache/model/safetensors.hpp"
#include "kvcache/model/text_vocabulary.hpp"

using namespace kvcache;
using Catch::Matchers::Contains;

namespace {

const std::string kDir = std::string(KVCACHE_FIXTURES_DIR) + "/seq2seq/";
const char* kFixtures[] = {"post_norm_relu", "pre_norm_relu", "post_norm_gelu", "pre_norm_learned"};

nlohmann::json read_json(const std::string& path) {
    std::ifstream f(path);
    REQUIRE(f.good());
    return nlohmann::json::parse(f);
}

EncoderDecoder load_fixture(const std::string& name) {
    return EncoderDecoder::load(kDir + name + ".config.json", kDir + name + ".safetensors");
}

std::vector<std::vector<std::int32_t>> sources_of(const nlohmann::json& e) {
    return e["sources"].get<std::vector<std::vector<std::int32_t>>>();
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    float m = 0;
    for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
    return m;
}

// All tensors of a fixture as writable tensors (data kept alive in `store`).
std::vector<safetensors::TensorToWrite> tensors_of(const safetensors::File& f, std::vector<std::vector<float>>& store) {
    std::vector<safetensors::TensorToWrite> out;
    store.reserve(f.tensors().size());
    for (const auto& t : f.tensors()) {
        store.push_back(f.to_float(t.name));
        out.push_back({t.name, t.shape, store.back(), safetensors::DType::F32});
    }
    return out;
}

EncoderDecoder from_safetensors(const EncoderDecoderConfig& config, const safetensors::File& file) {
    return EncoderDecoder(EncoderDecoderWeights::from_safetensors(config, file));
}

}  // namespace

TEST_CASE("encoder output and decoder logits equal PyTorch's within 1e-4", "[encoder_decoder]") {
    for (const char* name : kFixtures) {
        INFO("fixture " << name);
        auto model = load_fixture(name);
        const auto e = read_json(kDir + name + ".expected.json");
        const auto sources = sources_of(e);
        const auto memory = model.encode(sources[0]);
        CHECK(max_abs_diff(memory, e["encoder_output"].get<std::vector<float>>()) < 1e-4f);
        double sum = 0;
        for (float v : memory) sum += v;
        CHECK(std::abs(sum - e["encoder_output_sum"].get<double>()) < 1e-3);

        const auto prefix = e["target_prefix"].get<std::vector<std::int32_t>>();
        const auto expected_logits = e["logits"].get<std::vector<float>>();
        const std::size_t V = model.config().tgt_vocab_size;

        // all positions at once, through the caches
        auto cache = model.make_cache(1, prefix.size(), sources[0].size());
        model.write_cross(memory, sources[0].size(), cache.cross, 0);
        std::vector<float> logits(prefix.size() * V);
        model.decode(prefix, 0, cache.self, cache.cross, logits);
        CHECK(max_abs_diff(logits, expected_logits) < 1e-4f);

        // one position at a time, as generation does: each step's logits equal that row of the whole pass
        auto cache2 = model.make_cache(1, prefix.size(), sources[0].size());
        model.write_cross(memory, sources[0].size(), cache2.cross, 0);
        std::vector<float> step(V);
        for (std::size_t i = 0; i < prefix.size(); ++i) {
            model.decode(std::span<const std::int32_t>(&prefix[i], 1), 0, cache2.self, cache2.cross, step);
            const std::vector<float> row(logits.begin() + i * V, logits.begin() + (i + 1) * V);
            CHECK(step == row);  // bit for bit: the kernels do not depend on how many tokens run together
        }
        CHECK(cache2.self.seq_len(0, 0) == prefix.size());

        // and without any cache
        CHECK(model.decode_uncached(memory, sources[0].size(), prefix) == logits);
    }
}

TEST_CASE("greedy tokens equal PyTorch's, with and without the cache", "[encoder_decoder]") {
    for (const char* name : kFixtures) {
        INFO("fixture " << name);
        auto model = load_fixture(name);
        const auto e = read_json(kDir + name + ".expected.json");
        const auto sources = sources_of(e);
        const auto expected = e["greedy"].get<std::vector<std::vector<std::int32_t>>>();
        Seq2SeqGenerateOptions opts;
        opts.max_new_tokens = e["max_new_tokens"].get<std::size_t>();
        for (std::size_t i = 0; i < sources.size(); ++i) {
            INFO("source " << i);
            opts.use_cache = true;
            CHECK(model.generate(sources[i], opts) == expected[i]);
            opts.use_cache = false;
            CHECK(model.generate(sources[i], opts) == expected[i]);
        }
    }
}

TEST_CASE("cached and uncached sampling give identical tokens", "[encoder_decoder]") {
    auto model = load_fixture("pre_norm_relu");
    const auto sources = sources_of(read_json(kDir + "pre_norm_relu.expected.json"));
    Seq2SeqGenerateOptions opts;
    opts.max_new_tokens = 16;
    opts.stop_at_eos = false;
    opts.sampling.temperature = 1.3f;
    opts.sampling.top_k = 10;
    opts.sampling.top_p = 0.9f;
    opts.sampling.seed = 42;
    const auto cached = model.generate(sources, opts);
    opts.use_cache = false;
    const auto uncached = model.generate(sources, opts);
    CHECK(cached.tokens == uncached.tokens);
    CHECK(cached.generated_tokens == sources.size() * 16);
    // sampling really samples: another seed gives another sequence somewhere
    opts.sampling.seed = 7;
    CHECK(model.generate(sources, opts).tokens != cached.tokens);
}

TEST_CASE("cross-attention K/V are projected exactly once per source and layer with the cache", "[encoder_decoder]") {
    auto model = load_fixture("post_norm_relu");
    const auto sources = sources_of(read_json(kDir + "post_norm_relu.expected.json"));
    const std::size_t L = model.config().n_decoder_layers;
    Seq2SeqGenerateOptions opts;
    opts.max_new_tokens = 10;
    opts.stop_at_eos = false;
    model.reset_stats();
    const auto cached = model.generate(sources, opts);
    CHECK(model.stats().sources_encoded == sources.size());
    CHECK(model.stats().cross_kv_projections == sources.size() * L);
    CHECK(model.stats().decoder_positions == sources.size() * 10);  // one position per generated token

    model.reset_stats();
    opts.use_cache = false;
    const auto uncached = model.generate(sources, opts);
    CHECK(uncached.tokens == cached.tokens);
    CHECK(model.stats().sources_encoded == sources.size());
    CHECK(model.stats().cross_kv_projections == sources.size() * L * 10);  // once per step
    CHECK(model.stats().decoder_positions == sources.size() * (1 + 10) * 10 / 2);  // the whole prefix every step
}

TEST_CASE("a batch of sources of different lengths equals each source alone", "[encoder_decoder]") {
    for (const char* name : {"post_norm_relu", "pre_norm_learned"}) {
        INFO("fixture " << name);
        auto model = load_fixture(name);
        const auto sources = sources_of(read_json(kDir + name + ".expected.json"));
        REQUIRE(sources[0].size() != sources[1].size());
        for (float temperature : {0.0f, 0.8f}) {
            Seq2SeqGenerateOptions opts;
            opts.max_new_tokens = 12;
            opts.sampling.temperature = temperature;
            opts.sampling.top_k = 8;
            opts.sampling.seed = 5;
            const auto batch = model.generate(sources, opts);
            REQUIRE(batch.tokens.size() == sources.size());
            for (std::size_t i = 0; i < sources.size(); ++i) CHECK(batch.tokens[i] == model.generate(sources[i], opts));
        }
    }
}

TEST_CASE("the compile-time KVCache gives the same tokens as MultiLayerKVCache", "[encoder_decoder]") {
    auto model = load_fixture("post_norm_relu");
    REQUIRE(model.config().n_decoder_layers == 2);
    REQUIRE(model.config().n_heads == 4);
    REQUIRE(model.config().head_dim() == 8);
    const auto e = read_json(kDir + "post_norm_relu.expected.json");
    const auto sources = sources_of(e);
    Seq2SeqGenerateOptions opts;
    opts.max_new_tokens = 12;
    KVCache<2, 4, 8, float> self(sources.size(), 12);
    CrossAttentionCache<float> cross(CacheShape{2, 4, 8}, sources.size(), 16);
    const auto fixed = model.generate_with(sources, opts, self, cross);
    CHECK(fixed.tokens == model.generate(sources, opts).tokens);
    CHECK(fixed.tokens == e["greedy"].get<std::vector<std::vector<std::int32_t>>>());

    // the rows must be empty, and the dims must match the model's
    CHECK_THROWS_AS(model.generate_with(sources, opts, self, cross), ConfigError);
    KVCache<2, 2, 16, float> wrong(sources.size(), 12);
    CHECK_THROWS_AS(model.generate_with(sources, opts, wrong, cross), ShapeError);
    KVCache<2, 4, 8, float> small(1, 12);
    CHECK_THROWS_AS(model.generate_with(sources, opts, small, cross), ShapeError);
}

TEST_CASE("an fp16 cache generates too and stays close to the float cache", "[encoder_decoder]") {
    auto model = load_fixture("post_norm_relu");
    const auto sources = sources_of(read_json(kDir + "post_norm_relu.expected.json"));
    auto c32 = model.make_cache<float>(1, 8, sources[2].size());
    auto c16 = model.make_cache<fp16>(1, 8, sources[2].size());
    const auto memory = model.encode(sources[2]);
    model.write_cross(memory, sources[2].size(), c32.cross, 0);
    model.write_cross(memory, sources[2].size(), c16.cross, 0);
    const std::vector<std::int32_t> prefix = {1, 5, 9, 3};
    std::vector<float> l32(4 * model.config().tgt_vocab_size), l16(l32.size());
    model.decode(prefix, 0, c32.self, c32.cross, l32);
    model.decode(prefix, 0, c16.self, c16.cross, l16);
    CHECK(max_abs_diff(l32, l16) < 2e-2f);
    CHECK(l32 != l16);
}

TEST_CASE("decode and encode reject bad input with the sizes in the message", "[encoder_decoder]") {
    auto model = load_fixture("post_norm_relu");
    const std::vector<std::int32_t> src = {3, 4, 5};
    CHECK_THROWS_AS(model.encode(std::vector<std::int32_t>{}), ShapeError);
    CHECK_THROWS_WITH(model.encode(std::vector<std::int32_t>{3, 32}), Contains("32") && Contains("vocabulary of 32"));
    CHECK_THROWS_AS(model.encode(std::vector<std::int32_t>{-1}), IndexError);
    CHECK_THROWS_AS(model.encode(std::vector<std::int32_t>(33, 3)), CapacityError);
    auto cache = model.make_cache(1, 4, 3);
    const std::vector<std::int32_t> bos = {1};
    std::vector<float> logits(model.config().tgt_vocab_size);
    CHECK_THROWS_WITH(model.decode(bos, 0, cache.self, cache.cross, logits), Contains("write_cross first"));
    const auto memory = model.encode(src);
    CHECK_THROWS_AS(model.write_cross(std::span<const float>(memory.data(), 10), 3, cache.cross, 0), ShapeError);
    model.write_cross(memory, 3, cache.cross, 0);
    CHECK_THROWS_AS(model.write_cross(memory, 3, cache.cross, 0), Error);  // written once per source
    std::vector<float> short_logits(5);
    CHECK_THROWS_AS(model.decode(bos, 0, cache.self, cache.cross, short_logits), ShapeError);
    CHECK_THROWS_AS(model.decode(bos, 1, cache.self, cache.cross, logits), IndexError);
    const std::vector<std::int32_t> bad = {28};
    CHECK_THROWS_AS(model.decode(bad, 0, cache.self, cache.cross, logits), IndexError);
    auto wrong = MultiLayerKVCache<float>(CacheShape{3, 4, 8}, 1, 4);
    CHECK_THROWS_AS(model.decode(bos, 0, wrong, cache.cross, logits), ShapeError);

    Seq2SeqGenerateOptions opts;
    CHECK_THROWS_AS(model.generate(std::vector<std::vector<std::int32_t>>{}, opts), ShapeError);
    CHECK_THROWS_AS(model.generate(std::vector<std::vector<std::int32_t>>{src, {}}, opts), ShapeError);
    opts.max_new_tokens = 33;
    CHECK_THROWS_AS(model.generate(src, opts), ConfigError);
    opts.max_new_tokens = 4;
    opts.sampling.top_p = 0;
    CHECK_THROWS_AS(model.generate(src, opts), ConfigError);
    opts.sampling.top_p = 1;
    opts.max_new_tokens = 0;
    CHECK(model.generate(src, opts).empty());
}

TEST_CASE("config JSON errors name the key or value", "[encoder_decoder]") {
    std::ifstream f(kDir + "post_norm_relu.config.json");
    std::stringstream s;
    s << f.rdbuf();
    const auto good = nlohmann::json::parse(s.str());
    const auto c = EncoderDecoderConfig::from_json(s.str());
    CHECK(c.d_model == 32);
    CHECK(c.n_heads == 4);
    CHECK(c.head_dim() == 8);
    CHECK(c.tgt_vocab_size == 28);
    CHECK_FALSE(c.norm_first);
    auto with = [&](const char* key, nlohmann::json value) {
        auto j = good;
        if (value.is_null()) j.erase(key);
        else j[key] = value;
        return j.dump();
    };
    CHECK_THROWS_AS(EncoderDecoderConfig::from_json("{\"d_model\": "), FormatError);
    CHECK_THROWS_AS(EncoderDecoderConfig::from_json("[1]"), FormatError);
    CHECK_THROWS_WITH(EncoderDecoderConfig::from_json(with("d_model", nullptr)), Contains("\"d_model\""));
    CHECK_THROWS_AS(EncoderDecoderConfig::from_json(with("nhead", "four")), FormatError);
    CHECK_THROWS_AS(EncoderDecoderConfig::from_json(with("nhead", -4)), FormatError);
    CHECK_THROWS_AS(EncoderDecoderConfig::from_json(with("norm_first", 1)), FormatError);
    CHECK_THROWS_WITH(EncoderDecoderConfig::from_json(with("nhead", 5)), Contains("multiple of nhead 5"));
    CHECK_THROWS_AS(EncoderDecoderConfig::from_json(with("d_model", 0)), ConfigError);
    CHECK_THROWS_WITH(EncoderDecoderConfig::from_json(with("activation", "swish")), Contains("swish"));
    CHECK_THROWS_WITH(EncoderDecoderConfig::from_json(with("positions", "rope")), Contains("rope"));
    CHECK_THROWS_AS(EncoderDecoderConfig::from_json(with("layer_norm_eps", 0.0)), ConfigError);
    CHECK_THROWS_AS(EncoderDecoderConfig::from_json(with("eos_token_id", 28)), ConfigError);
    CHECK_THROWS_AS(EncoderDecoderConfig::load(kDir + "missing.json"), IoError);
}

TEST_CASE("mismatched weight files name the tensor and sizes", "[encoder_decoder]") {
    const auto config = EncoderDecoderConfig::load(kDir + "post_norm_relu.config.json");
    const auto file = safetensors::File::open(kDir + "post_norm_relu.safetensors");
    std::vector<std::vector<float>> store;
    const auto all = tensors_of(file, store);

    SECTION("a re-serialised file loads to the same model") {
        const auto bytes = safetensors::serialize(all);
        auto a = from_safetensors(config, safetensors::File::from_memory(bytes));
        auto b = load_fixture("post_norm_relu");
        const std::vector<std::int32_t> src = {4, 5, 6};
        CHECK(a.encode(src) == b.encode(src));
    }
    SECTION("missing tensor") {
        auto some = all;
        std::erase_if(some, [](const auto& t) { return t.name == "transformer.decoder.layers.1.norm3.bias"; });
        const auto bytes = safetensors::serialize(some);
        CHECK_THROWS_WITH(from_safetensors(config, safetensors::File::from_memory(bytes)),
                          Contains("transformer.decoder.layers.1.norm3.bias") && Contains("missing"));
    }
    SECTION("wrong shape") {
        auto some = all;
        for (auto& t : some)
            if (t.name == "generator.weight") t.shape = {t.shape[1], t.shape[0]};
        const auto bytes = safetensors::serialize(some);
        CHECK_THROWS_AS(from_safetensors(config, safetensors::File::from_memory(bytes)), ShapeError);
        CHECK_THROWS_WITH(from_safetensors(config, safetensors::File::from_memory(bytes)),
                          Contains("'generator.weight' has shape [32, 28], expected [28, 32]"));
    }
    SECTION("a tensor the config does not describe") {
        auto more = all;
        const std::vector<float> extra(4, 0.0f);
        more.push_back({"transformer.decoder.layers.2.norm1.weight", {4}, extra, safetensors::DType::F32});
        const auto bytes = safetensors::serialize(more);
        CHECK_THROWS_WITH(from_safetensors(config, safetensors::File::from_memory(bytes)),
                          Contains("transformer.decoder.layers.2.norm1.weight") && Contains("not part of the model"));
    }
    SECTION("config and file disagree on the layer count") {
        auto c = config;
        c.n_decoder_layers = 3;
        CHECK_THROWS_WITH(from_safetensors(c, file), Contains("transformer.decoder.layers.2"));
    }
    SECTION("weights built by hand are checked too") {
        auto w = load_fixture("post_norm_relu").weights();
        w.generator.bias.resize(5);
        CHECK_THROWS_WITH(EncoderDecoder(w), Contains("generator.bias") && Contains("[28]"));
        w = load_fixture("post_norm_relu").weights();
        w.decoder.pop_back();
        CHECK_THROWS_AS(EncoderDecoder(w), ShapeError);
    }
    SECTION("a truncated file") {
        const auto bytes = safetensors::serialize(all);
        const std::span<const std::byte> cut(bytes.data(), bytes.size() - 100);
        CHECK_THROWS_AS(safetensors::File::from_memory(cut), FormatError);
    }
}

TEST_CASE("random weights build a working model of any size", "[encoder_decoder]") {
    EncoderDecoderConfig c;
    c.d_model = 24;
    c.n_heads = 3;
    c.d_ff = 40;
    c.n_encoder_layers = 1;
    c.n_decoder_layers = 3;
    c.src_vocab_size = 20;
    c.tgt_vocab_size = 30;
    c.max_positions = 40;
    c.positions = PositionKind::Learned;
    auto model = EncoderDecoder(EncoderDecoderWeights::random(c, 1));
    Seq2SeqGenerateOptions opts;
    opts.max_new_tokens = 20;
    opts.stop_at_eos = false;
    const std::vector<std::int32_t> src = {3, 4, 5, 6, 7};
    const auto a = model.generate(src, opts);
    CHECK(a.size() == 20);
    opts.use_cache = false;
    CHECK(model.generate(src, opts) == a);
    CHECK(EncoderDecoderWeights::random(c, 1).tgt_embed == model.weights().tgt_embed);
    CHECK(EncoderDecoderWeights::random(c, 2).tgt_embed != model.weights().tgt_embed);
}

TEST_CASE("hostile config values are refused at load, before anything is allocated (issue 9)", "[encoder_decoder]") {
    std::ifstream f(kDir + "post_norm_relu.config.json");
    std::stringstream s;
    s << f.rdbuf();
    const auto good = nlohmann::json::parse(s.str());
    auto with = [&](const char* key, nlohmann::json value) {
        auto j = good;
        j[key] = value;
        return j.dump();
    };
    // max_positions * d_model wrapped to 0 and the constructor wrote past the empty position table
    const std::uint64_t huge = std::uint64_t{1} << 59;
    CHECK_THROWS_WITH(EncoderDecoderConfig::from_json(with("max_positions", huge)),
                      Contains("max_positions") && Contains(std::to_string(huge)));
    {
        const auto path = std::filesystem::temp_directory_path() / "kvcache_seq2seq_hostile.config.json";
        std::ofstream(path) << with("max_positions", huge);
        CHECK_THROWS_AS(EncoderDecoder::load(path, kDir + "post_norm_relu.safetensors"), ConfigError);
        std::filesystem::remove(path);
    }
    auto c = EncoderDecoderConfig::from_json(s.str());
    c.max_positions = huge;  // a config built in code is validated by the model too
    CHECK_THROWS_AS(EncoderDecoderWeights::random(c, 1), ConfigError);
    auto w = load_fixture("post_norm_relu").weights();
    w.config = c;
    CHECK_THROWS_AS(EncoderDecoder(w), ConfigError);

    for (const char* key : {"d_model", "nhead", "dim_feedforward", "num_encoder_layers", "num_decoder_layers",
                            "src_vocab_size", "tgt_vocab_size", "max_positions"}) {
        INFO(key);
        CHECK_THROWS_AS(EncoderDecoderConfig::from_json(with(key, std::uint64_t{1} << 40)), ConfigError);
        CHECK_THROWS_AS(EncoderDecoderConfig::from_json(with(key, UINT64_MAX)), ConfigError);
        CHECK_THROWS_AS(EncoderDecoderConfig::from_json(with(key, 0)), ConfigError);
        CHECK_THROWS_AS(EncoderDecoderConfig::from_json(with(key, 1.5)), FormatError);
    }
    CHECK_THROWS_WITH(EncoderDecoderConfig::from_json(with("nhead", 64)), Contains("nhead is 64, outside [1, 32]"));
    // token ids beyond 32 bits were truncated into the vocabulary (2^32 + 2 became 2)
    CHECK_THROWS_AS(EncoderDecoderConfig::from_json(with("eos_token_id", (std::int64_t{1} << 32) + 2)), FormatError);
    CHECK_THROWS_AS(EncoderDecoderConfig::from_json(with("bos_token_id", -(std::int64_t{1} << 32) + 1)), FormatError);
    CHECK_THROWS_AS(EncoderDecoderConfig::from_json(with("pad_token_id", 32)), ConfigError);
    CHECK_THROWS_AS(EncoderDecoderConfig::from_json(with("pad_token_id", -2)), ConfigError);
    CHECK(EncoderDecoderConfig::from_json(with("pad_token_id", -1)).pad_token_id == -1);
    // floats: finite and in range before the conversion to float (1e300 as a float is undefined behaviour)
    CHECK_THROWS_AS(EncoderDecoderConfig::from_json(with("layer_norm_eps", 1e300)), ConfigError);
    CHECK_THROWS_AS(EncoderDecoderConfig::from_json(with("layer_norm_eps", -1e-5)), ConfigError);
    CHECK_THROWS_AS(EncoderDecoderConfig::from_json(with("layer_norm_eps", 1e-60)), ConfigError);  // 0 as a float
    std::string overflowing = with("layer_norm_eps", 0.5);
    overflowing.replace(overflowing.find("0.5"), 3, "1e400");
    CHECK_THROWS_AS(EncoderDecoderConfig::from_json(overflowing), Error);
}

TEST_CASE("the bundled numbers model turns words into digits as PyTorch does, with and without the caches",
          "[encoder_decoder]") {
    // examples/models/numbers, trained by scripts/train_seq2seq_numbers.py; samples.json holds PyTorch's greedy
    // output for the same (float16-rounded) weights: fixed numbers and numbers never trained on.
    const std::string dir = std::string(KVCACHE_SOURCE_DIR) + "/examples/models/numbers/";
    auto model = EncoderDecoder::load(dir + "config.json", dir + "model.safetensors");
    const auto vocab = Seq2SeqVocabulary::load(dir + "vocab.json");
    REQUIRE(vocab.source.size() == model.config().src_vocab_size);
    REQUIRE(vocab.target.size() == model.config().tgt_vocab_size);
    auto digits = [&](std::string_view words, bool use_cache) {
        Seq2SeqGenerateOptions opts;
        opts.max_new_tokens = 8;
        opts.use_cache = use_cache;
        return vocab.target.decode(model.generate(vocab.source.encode(words), opts));
    };
    // A handful anyone can check by eye (hyphens and capitals are split and lowercased by the vocabulary).
    CHECK(digits("four hundred and twelve", true) == "412");
    CHECK(digits("four hundred and twelve", false) == "412");
    CHECK(digits("Zero", true) == "0");
    CHECK(digits("thirteen", true) == "13");
    CHECK(digits("two thousand and five", true) == "2005");
    CHECK(digits("seventy-one thousand and six", true) == "71006");
    CHECK(digits("nine hundred and ninety nine thousand nine hundred and ninety nine", true) == "999999");

    const auto samples = read_json(dir + "samples.json");
    Seq2SeqGenerateOptions opts;
    opts.max_new_tokens = samples["max_new_tokens"].get<std::size_t>();
    std::vector<std::vector<std::int32_t>> sources, expected;
    std::size_t held_out = 0, held_out_right = 0;
    for (const auto& s : samples["samples"]) {
        INFO(s["text"].get<std::string>());
        sources.push_back(vocab.source.encode(s["text"].get<std::string>()));
        expected.push_back(s["greedy"].get<std::vector<std::int32_t>>());
        opts.use_cache = true;
        const auto cached = model.generate(sources.back(), opts);
        opts.use_cache = false;
        CHECK(model.generate(sources.back(), opts) == cached);  // bit for bit the same logits, so the same tokens
        CHECK(cached == expected.back());                       // and PyTorch's tokens
        if (s["held_out"].get<bool>()) {
            ++held_out;
            held_out_right += vocab.target.decode(cached) == std::to_string(s["number"].get<int>());
        }
    }
    CHECK(held_out >= 40);
    CHECK(held_out_right >= held_out * 9 / 10);  // numbers it never saw: the model generalises
    // all of them as one batch of different lengths: each row as alone
    opts.use_cache = true;
    CHECK(model.generate(sources, opts).tokens == expected);
}

TEST_CASE("the thread count travels with the call and does not change a bit", "[encoder_decoder]") {
    EncoderDecoderConfig c;
    c.d_model = 64;
    c.n_heads = 4;
    c.d_ff = 96;
    c.n_encoder_layers = 2;
    c.n_decoder_layers = 2;
    c.src_vocab_size = 50;
    c.tgt_vocab_size = 40;
    c.max_positions = 300;
    EncoderDecoder model(EncoderDecoderWeights::random(c, 3));
    std::vector<std::int32_t> source(200), target(120);
    for (std::size_t i = 0; i < source.size(); ++i) source[i] = static_cast<std::int32_t>(3 + i * 7 % 47);
    for (std::size_t i = 0; i < target.size(); ++i) target[i] = static_cast<std::int32_t>(1 + i * 5 % 39);
    // long enough that attention really splits its work (n_queries * n_keys * d_model >= 2^20)
    const auto memory1 = model.encode(source, {.threads = 1});
    const auto memory2 = model.encode(source, {.threads = 2});
    CHECK(memory1 == memory2);
    CHECK(model.decode_uncached(memory1, source.size(), target, {.threads = 1}) ==
          model.decode_uncached(memory1, source.size(), target, {.threads = 2}));
    Seq2SeqGenerateOptions opts;
    opts.max_new_tokens = 20;
    opts.stop_at_eos = false;
    opts.threads = 1;
    const auto one = model.generate(source, opts);
    opts.threads = 2;
    CHECK(model.generate(source, opts) == one);
}

TEST_CASE("a config for another architecture is refused", "[encoder_decoder]") {
    std::ifstream f(kDir + "post_norm_relu.config.json");
    std::stringstream s;
    s << f.rdbuf();
    auto j = nlohmann::json::parse(s.str());
    j["architecture"] = "bart";
    CHECK_THROWS_WITH(EncoderDecoderConfig::from_json(j.dump()), Contains("bart"));
    j["architecture"] = 3;
    CHECK_THROWS_AS(EncoderDecoderConfig::from_json(j.dump()), FormatError);
    j.erase("architecture");  // optional: configs written before the key existed
    CHECK(EncoderDecoderConfig::from_json(j.dump()).d_model == 32);
}
