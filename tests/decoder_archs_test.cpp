// The decoder's architecture variants against an independent reference: tiny random-weight GGUF files for
// qwen2 (q/k/v biases, NEOX RoPE, GQA, tied output, F32/F16/BF16), llama (separate output, Q4_K/Q6_K/Q5_0/Q8_0,
// rope_freqs, head size != d_model / heads) and mistral (MQA, sliding window, partial and linearly scaled
// RoPE), with every position's logits from the numpy float64 forward pass of scripts/make_arch_fixtures.py.
// Plus the loader's error paths, made by patching those files' bytes.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kvcache/error.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/gguf.hpp"
#include "kvcache/model/sampling.hpp"

using namespace kvcache;
using json = nlohmann::json;

namespace {

std::filesystem::path fixture(const std::string& name) {
    return std::filesystem::path(KVCACHE_FIXTURES_DIR) / "decoder" / name;
}

const json& reference() {
    static const json j = [] {
        std::ifstream in(fixture("arch_logits.json"));
        REQUIRE(in.good());
        return json::parse(in);
    }();
    return j;
}

const json& model_entry(const std::string& name) {
    for (const auto& m : reference()["models"]) {
        if (m["name"] == name) return m;
    }
    FAIL("no model '" << name << "' in arch_logits.json");
    throw;  // unreachable
}

std::vector<std::byte> file_bytes(const std::string& name) {
    std::ifstream in(fixture(name), std::ios::binary);
    REQUIRE(in.good());
    std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> out(chars.size());
    std::memcpy(out.data(), chars.data(), chars.size());
    return out;
}

/// Offset of the only occurrence of `text` in the bytes (REQUIREs that there is exactly one).
std::size_t find_once(const std::vector<std::byte>& bytes, const std::string& text) {
    const auto* b = reinterpret_cast<const char*>(bytes.data());
    const std::string_view all(b, bytes.size());
    const std::size_t at = all.find(text);
    INFO("looking for '" << text << "'");
    REQUIRE(at != std::string_view::npos);
    REQUIRE(all.find(text, at + 1) == std::string_view::npos);
    return at;
}

/// Overwrites `from` with `to` (same length) where it occurs once.
void patch(std::vector<std::byte>& bytes, const std::string& from, const std::string& to) {
    REQUIRE(from.size() == to.size());
    std::memcpy(bytes.data() + find_once(bytes, from), to.data(), to.size());
}

/// Overwrites every occurrence of `from` with `to` (same length); returns how many there were.
std::size_t patch_all(std::vector<std::byte>& bytes, const std::string& from, const std::string& to) {
    REQUIRE(from.size() == to.size());
    std::size_t count = 0;
    auto* b = reinterpret_cast<char*>(bytes.data());
    for (std::size_t at = std::string_view(b, bytes.size()).find(from); at != std::string_view::npos;
         at = std::string_view(b, bytes.size()).find(from, at + 1)) {
        std::memcpy(b + at, to.data(), to.size());
        ++count;
    }
    return count;
}

std::string message_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "(no exception)";
}

/// Every position's logits for `tokens`, in one pass through a fresh cache.
std::vector<float> all_logits(Decoder& d, const std::vector<std::int32_t>& tokens) {
    auto cache = d.make_cache(tokens.size());
    std::vector<float> logits(tokens.size() * d.config().vocab_size);
    d.forward(tokens, cache, 0, logits);
    return logits;
}

/// Largest |ours - reference| over every logit of every case of a model.
double worst_logit_error(Decoder& d, const json& model) {
    const std::size_t vocab = d.config().vocab_size;
    double worst = 0;
    for (const auto& cs : model["cases"]) {
        const auto tokens = cs["tokens"].get<std::vector<std::int32_t>>();
        const auto logits = all_logits(d, tokens);
        const auto& ref = cs["logits"];
        REQUIRE(ref.size() == tokens.size());
        for (std::size_t p = 0; p < tokens.size(); ++p) {
            REQUIRE(ref[p].size() == vocab);
            for (std::size_t v = 0; v < vocab; ++v) {
                worst = std::max(worst, std::abs(double(logits[p * vocab + v]) - ref[p][v].get<double>()));
            }
        }
    }
    return worst;
}

// Tolerance on logits. The reference runs the same dequantised weights in float64; we run float32 with FMA
// and 8-lane partial sums, through 1-2 layers, on logits of magnitude <= 5; the fixture stores 7 significant
// digits (<= 5e-7 of rounding). Measured worst error on this machine: ~1e-6 (printed by the test). 1e-4 leaves
// ~100x room for another compiler or libm (exp, sin/cos) yet is far below what each feature moves the logits
// by — the generator prints it: the other RoPE pairing moves them by 0.19-2.0, and the mutation checks below
// (window off, rope_freqs off, biases off, scaling off) move them by > 1e-2 — so no such bug hides under it.
constexpr double kTolerance = 1e-4;

void check_model_against_reference(const std::string& name, const DecoderOptions& options) {
    const json& model = model_entry(name);
    Decoder d = Decoder::load(fixture(model["file"].get<std::string>()), options);
    const std::size_t vocab = d.config().vocab_size;
    const double worst = worst_logit_error(d, model);
    WARN(name << " (keep_quantized " << options.keep_quantized << "): worst |logit - reference| = " << worst);
    CHECK(worst < kTolerance);

    for (const auto& cs : model["cases"]) {
        const auto prompt = cs["tokens"].get<std::vector<std::int32_t>>();
        const auto expected = cs["greedy"].get<std::vector<std::int32_t>>();
        CAPTURE(prompt);
        // With the cache: the prompt once, then one token per step.
        auto cache = d.make_cache(prompt.size() + expected.size());
        std::vector<float> last(vocab);
        d.forward(prompt, cache, 0, last);
        std::vector<std::int32_t> cached;
        std::vector<std::vector<float>> cached_logits;
        for (std::size_t i = 0; i < expected.size(); ++i) {
            cached_logits.push_back(last);
            cached.push_back(argmax(last));
            if (i + 1 < expected.size()) d.forward(std::span(&cached.back(), 1), cache, 0, last);
        }
        CHECK(cached == expected);
        // Without it: the whole sequence from scratch at every step; the same logits to the bit.
        std::vector<std::int32_t> seq = prompt;
        for (std::size_t i = 0; i < expected.size(); ++i) {
            auto fresh = d.make_cache(seq.size());
            std::vector<float> l(vocab);
            d.forward(seq, fresh, 0, l);
            CHECK(std::memcmp(l.data(), cached_logits[i].data(), vocab * sizeof(float)) == 0);
            seq.push_back(argmax(l));
        }
        CHECK(std::vector<std::int32_t>(seq.begin() + static_cast<std::ptrdiff_t>(prompt.size()), seq.end()) ==
              expected);
    }
}

/// Weights of a fixture with one thing changed, to show that the fixture can tell.
template <class Change>
double logit_shift(const std::string& name, Change change) {
    const json& model = model_entry(name);
    const auto file = gguf::File::open(fixture(model["file"].get<std::string>()));
    Decoder original(DecoderWeights::from_gguf(file), 1);
    DecoderWeights w = DecoderWeights::from_gguf(file);
    change(w);
    Decoder changed(std::move(w), 1);
    const auto tokens = model["cases"].back()["tokens"].get<std::vector<std::int32_t>>();
    const auto a = all_logits(original, tokens), b = all_logits(changed, tokens);
    double shift = 0;
    for (std::size_t i = 0; i < a.size(); ++i) shift = std::max(shift, double(std::abs(a[i] - b[i])));
    return shift;
}

}  // namespace

TEST_CASE("arch fixtures: configs read from the GGUF metadata") {
    {
        const auto file = gguf::File::open(fixture("qwen2_tiny.gguf"));
        const auto w = DecoderWeights::from_gguf(file);
        const auto& c = w.config;
        CHECK(c.architecture == "qwen2");
        CHECK(c.n_layers == 2);
        CHECK(c.d_model == 32);
        CHECK(c.n_heads == 4);
        CHECK(c.n_kv_heads == 2);
        CHECK(c.head_dim == 8);
        CHECK(c.rope_dim == 8);
        CHECK(c.rope_base == 1e6f);
        CHECK(c.norm_eps == 1e-6f);
        CHECK(c.rope_style == RopeStyle::Neox);
        CHECK(c.qkv_bias);
        CHECK(c.sliding_window == 0);
        CHECK(c.bos_id == -1);  // tokenizer-free file
        CHECK(w.tied_output());
        CHECK(w.layers[1].bk.size() == 16);
        CHECK(w.rope_freqs.empty());
        // F16/BF16 are dequantised at load; F32 is copied.
        CHECK(w.layers[0].wv.format() == WeightFormat::F32);
    }
    {
        const auto file = gguf::File::open(fixture("llama_quant.gguf"));
        CHECK(file.tensor("blk.0.attn_q.weight").type == gguf::TensorType::Q4_K);
        CHECK(file.tensor("blk.0.attn_k.weight").type == gguf::TensorType::Q6_K);
        CHECK(file.tensor("blk.0.ffn_up.weight").type == gguf::TensorType::Q5_0);
        CHECK(file.tensor("blk.0.ffn_down.weight").type == gguf::TensorType::Q8_0);
        const auto kept = DecoderWeights::from_gguf(file, {.keep_quantized = true});
        const auto& c = kept.config;
        CHECK(c.architecture == "llama");
        CHECK(c.head_dim == 32);
        CHECK(c.q_dim() == 64);  // != d_model (256): key_length is honoured
        CHECK(c.d_model == 256);
        CHECK(c.rope_style == RopeStyle::Interleaved);
        CHECK(!c.qkv_bias);
        CHECK(!kept.tied_output());
        CHECK(kept.rope_freqs.size() == 16);
        CHECK(kept.layers[0].wv.format() == WeightFormat::Q8_0);      // kept as blocks
        CHECK(kept.layers[0].w_down.format() == WeightFormat::Q8_0);
        CHECK(kept.layers[0].wq.format() == WeightFormat::F32);       // Q4_K: dequantised at load
        CHECK(kept.token_embedding.format() == WeightFormat::F32);    // Q6_K
        const auto floats = DecoderWeights::from_gguf(file, {.keep_quantized = false});
        CHECK(floats.layers[0].wv.format() == WeightFormat::F32);
        CHECK(floats.bytes() > kept.bytes());
    }
    {
        const auto file = gguf::File::open(fixture("mistral_tiny.gguf"));
        const auto c = DecoderConfig::from_gguf(file);
        CHECK(c.architecture == "mistral");
        CHECK(c.n_kv_heads == 1);
        CHECK(c.rope_dim == 4);
        CHECK(c.head_dim == 8);
        CHECK(c.sliding_window == 4);
        CHECK(c.rope_position_scale == 0.5f);
        CHECK(c.rope_style == RopeStyle::Interleaved);
    }
}

TEST_CASE("qwen2 fixture: logits, greedy tokens and cached == uncached") {
    check_model_against_reference("qwen2_tiny", DecoderOptions{.threads = 2});
}

TEST_CASE("llama K-quant fixture: logits with blocks kept and with everything dequantised") {
    check_model_against_reference("llama_quant", DecoderOptions{.threads = 2, .keep_quantized = true});
    check_model_against_reference("llama_quant", DecoderOptions{.threads = 1, .keep_quantized = false});
}

TEST_CASE("mistral fixture: sliding window, partial and scaled RoPE") {
    check_model_against_reference("mistral_tiny", DecoderOptions{.threads = 2});
}

TEST_CASE("arch fixtures tell each feature apart (so the tolerance hides none of them)") {
    // Each change moves the logits of the longest case far past kTolerance.
    CHECK(logit_shift("qwen2_tiny", [](DecoderWeights& w) { w.config.rope_style = RopeStyle::Interleaved; }) > 1e-2);
    CHECK(logit_shift("qwen2_tiny", [](DecoderWeights& w) {
              for (auto& l : w.layers) std::fill(l.bk.begin(), l.bk.end(), 0.0f);
          }) > 1e-2);
    CHECK(logit_shift("llama_quant", [](DecoderWeights& w) { w.rope_freqs.clear(); }) > 1e-2);
    CHECK(logit_shift("llama_quant", [](DecoderWeights& w) { w.config.rope_style = RopeStyle::Neox; }) > 1e-2);
    CHECK(logit_shift("mistral_tiny", [](DecoderWeights& w) { w.config.sliding_window = 0; }) > 1e-2);
    CHECK(logit_shift("mistral_tiny", [](DecoderWeights& w) { w.config.sliding_window = 5; }) > 1e-2);
    CHECK(logit_shift("mistral_tiny", [](DecoderWeights& w) { w.config.rope_position_scale = 1.0f; }) > 1e-2);
    CHECK(logit_shift("mistral_tiny", [](DecoderWeights& w) { w.config.rope_dim = 8; }) > 1e-2);
}

TEST_CASE("arch fixtures: loader errors name what is wrong") {
    SECTION("a qwen2 file without one of its biases") {
        auto bytes = file_bytes("qwen2_tiny.gguf");
        patch(bytes, "blk.1.attn_k.bias", "blk.1.attn_k.biaz");
        const auto file = gguf::File::from_memory(bytes);
        CHECK_THROWS_AS(DecoderWeights::from_gguf(file), FormatError);
        CHECK_THAT(message_of([&] { DecoderWeights::from_gguf(file); }), Catch::Contains("blk.1.attn_k.bias"));
    }
    SECTION("a matrix of the wrong shape") {
        auto bytes = file_bytes("qwen2_tiny.gguf");
        // Tensor info: name, u32 n_dims, u64 dims[n_dims] (ggml order: in, out). attn_k is [32, 16]: make it
        // [16, 32] — the same bytes, so the file stays valid, but the shape no longer fits the config.
        const std::string name = "blk.0.attn_k.weight";
        const std::size_t dims = find_once(bytes, name) + name.size() + 4;
        std::uint64_t in = 0, out = 0;
        std::memcpy(&in, bytes.data() + dims, 8);
        std::memcpy(&out, bytes.data() + dims + 8, 8);
        REQUIRE(in == 32);
        REQUIRE(out == 16);
        std::memcpy(bytes.data() + dims, &out, 8);
        std::memcpy(bytes.data() + dims + 8, &in, 8);
        const auto file = gguf::File::from_memory(bytes);
        CHECK_THROWS_AS(DecoderWeights::from_gguf(file), FormatError);
        const auto msg = message_of([&] { DecoderWeights::from_gguf(file); });
        CHECK_THAT(msg, Catch::Contains("blk.0.attn_k.weight") && Catch::Contains("[16, 32]"));
    }
    SECTION("an unsupported architecture") {
        auto bytes = file_bytes("qwen2_tiny.gguf");
        patch(bytes, std::string("\x05\0\0\0\0\0\0\0qwen2", 13), std::string("\x05\0\0\0\0\0\0\0qwen3", 13));
        const auto file = gguf::File::from_memory(bytes);
        CHECK_THROWS_AS(DecoderConfig::from_gguf(file), ConfigError);
        CHECK_THROWS_AS(DecoderWeights::from_gguf(file), ConfigError);
        CHECK_THAT(message_of([&] { DecoderConfig::from_gguf(file); }), Catch::Contains("'qwen3'"));
    }
    SECTION("a tensor the decoder would ignore") {
        auto bytes = file_bytes("llama_quant.gguf");
        patch(bytes, "rope_freqs.weight", "rope_freqz.weight");
        const auto file = gguf::File::from_memory(bytes);
        CHECK_THROWS_AS(DecoderWeights::from_gguf(file), FormatError);
        CHECK_THAT(message_of([&] { DecoderWeights::from_gguf(file); }), Catch::Contains("rope_freqz.weight"));
    }
    SECTION("a llama file with q/k/v biases in its first layer only") {
        // qwen2's file relabelled llama: blk.0.attn_q.bias makes the loader expect q/k/v biases in every layer
        // (llama.cpp treats them as optional for llama), and a layer without one is named.
        auto bytes = file_bytes("qwen2_tiny.gguf");
        patch(bytes, std::string("\x05\0\0\0\0\0\0\0qwen2", 13), std::string("\x05\0\0\0\0\0\0\0llama", 13));
        CHECK(patch_all(bytes, "qwen2.", "llama.") == 8);  // every <arch>.* key
        {
            const auto file = gguf::File::from_memory(bytes);
            const auto w = DecoderWeights::from_gguf(file);  // llama with biases: loaded, used, interleaved RoPE
            CHECK(w.config.qkv_bias);
            CHECK(w.config.rope_style == RopeStyle::Interleaved);
            CHECK(w.layers[1].bv.size() == 16);
        }
        patch(bytes, "blk.1.attn_v.bias", "blk.1.attn_v.bia_");
        const auto file = gguf::File::from_memory(bytes);
        CHECK_THAT(message_of([&] { DecoderWeights::from_gguf(file); }), Catch::Contains("blk.1.attn_v.bias"));
    }
    SECTION("a RoPE scaling type other than none or linear") {
        auto bytes = file_bytes("mistral_tiny.gguf");
        patch(bytes, "linear", "llama3");
        const auto file = gguf::File::from_memory(bytes);
        CHECK_THROWS_AS(DecoderConfig::from_gguf(file), ConfigError);
        CHECK_THAT(message_of([&] { DecoderConfig::from_gguf(file); }), Catch::Contains("'llama3'"));
    }
    SECTION("no head size: d_model not a multiple of the heads and no key_length") {
        auto bytes = file_bytes("qwen2_tiny.gguf");
        const std::string key = "qwen2.attention.head_count";
        // head_count is followed by head_count_kv; take the one whose key ends right before the u32 type tag.
        const auto* b = reinterpret_cast<const char*>(bytes.data());
        std::size_t at = std::string_view(b, bytes.size()).find(key + std::string("\x04\0\0\0", 4));
        REQUIRE(at != std::string_view::npos);
        const std::size_t value = at + key.size() + 4;
        std::uint32_t heads = 0;
        std::memcpy(&heads, bytes.data() + value, 4);
        REQUIRE(heads == 4);
        heads = 3;  // 32 % 3 != 0
        std::memcpy(bytes.data() + value, &heads, 4);
        const auto file = gguf::File::from_memory(bytes);
        CHECK_THROWS_AS(DecoderConfig::from_gguf(file), FormatError);
        CHECK_THAT(message_of([&] { DecoderConfig::from_gguf(file); }), Catch::Contains("key_length"));
    }
    SECTION("a value head size other than the key head size") {
        auto bytes = file_bytes("llama_quant.gguf");
        const std::string key = "llama.attention.value_length";
        const std::size_t value = find_once(bytes, key) + key.size() + 4;  // after the u32 value type
        std::uint32_t v = 0;
        std::memcpy(&v, bytes.data() + value, 4);
        REQUIRE(v == 32);
        v = 16;
        std::memcpy(bytes.data() + value, &v, 4);
        const auto file = gguf::File::from_memory(bytes);
        CHECK_THROWS_AS(DecoderConfig::from_gguf(file), FormatError);
        CHECK_THAT(message_of([&] { DecoderConfig::from_gguf(file); }), Catch::Contains("value_length"));
    }
}

TEST_CASE("RoPE frequency factors and position scale are validated") {
    auto c = DecoderConfig::small_test_model();
    c.n_layers = 1;
    c.d_model = 64;
    c.d_ff = 64;
    c.n_heads = c.n_kv_heads = 2;
    c.head_dim = c.rope_dim = 32;
    c.vocab_size = 16;
    auto bad = c;
    bad.rope_position_scale = 0.0f;
    CHECK_THROWS_AS(bad.validate(), ConfigError);
    bad.rope_position_scale = 0.25f;
    CHECK_NOTHROW(bad.validate());
    auto w = DecoderWeights::random(c, 3);
    w.rope_freqs.assign(15, 1.0f);  // rope_dim 32 needs 16
    CHECK_THROWS_AS(Decoder(std::move(w)), ConfigError);
    auto w2 = DecoderWeights::random(c, 3);
    w2.rope_freqs.assign(16, 1.0f);
    w2.rope_freqs[7] = 0.0f;
    CHECK_THROWS_AS(Decoder(std::move(w2)), ConfigError);
    // Factors of 1 are the plain RoPE, to the bit; factors of 2 are the same as a position scale of 1/2.
    auto ones = DecoderWeights::random(c, 3);
    ones.rope_freqs.assign(16, 1.0f);
    auto twos = DecoderWeights::random(c, 3);
    twos.rope_freqs.assign(16, 2.0f);
    auto halved = c;
    halved.rope_position_scale = 0.5f;
    Decoder plain(DecoderWeights::random(c, 3), 1), a(std::move(ones), 1), b(std::move(twos), 1),
        scaled(DecoderWeights::random(halved, 3), 1);
    const std::vector<std::int32_t> tokens{5, 9, 2, 7, 11};
    const auto lp = all_logits(plain, tokens), la = all_logits(a, tokens);
    CHECK(std::memcmp(lp.data(), la.data(), lp.size() * sizeof(float)) == 0);
    const auto lb = all_logits(b, tokens), ls = all_logits(scaled, tokens);
    CHECK(std::memcmp(lb.data(), ls.data(), lb.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(lp.data(), lb.data(), lp.size() * sizeof(float)) != 0);
}
