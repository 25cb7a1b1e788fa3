// Tests of the decoder's GGUF loading against hostile metadata values in an otherwise valid model (issue 9):
// every size range-checked and every float finite before anything is allocated, embedding vs vocabulary.
// Also: a model file that changes under its mapping (truncated while the weights are read, or after load).
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "gguf_writer.hpp"
#include "kvcache/error.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/gguf.hpp"

using kvcache::Decoder;
using kvcache::DecoderWeights;
using kvcache::FormatError;
using kvcache::gguf::ValueType;
using kvcache::test_gguf::Image;

namespace {

const std::filesystem::path kModel = std::filesystem::path(KVCACHE_FIXTURES_DIR) / "decoder" / "llama_quant.gguf";

Image base_image() {
    static const Image image = Image::of(kvcache::gguf::File::open(kModel));
    return image;
}

// Loads the weights of an edited image (the image bytes must outlive the File only during the load).
DecoderWeights load(const Image& image) {
    const auto bytes = image.bytes();
    const auto file = kvcache::gguf::File::from_memory(bytes);
    return DecoderWeights::from_gguf(file);
}

std::vector<float> last_logits(DecoderWeights weights) {
    Decoder d(std::move(weights), 1);
    auto cache = d.make_cache(8);
    const std::vector<std::int32_t> tokens = {1, 5, 7};
    std::vector<float> logits(d.config().vocab_size);
    d.forward(std::span<const std::int32_t>(tokens), cache, 0, std::span<float>(logits));
    return logits;
}

std::string load_error(const Image& image) {
    try {
        (void)load(image);
    } catch (const FormatError& e) {
        return e.what();
    }
    return "no FormatError";
}

}  // namespace

TEST_CASE("a re-serialised fixture loads and computes bit for bit what the original does", "[decoder][gguf]") {
    const auto original = last_logits(DecoderWeights::from_gguf(kvcache::gguf::File::open(kModel)));
    const auto rewritten = last_logits(load(base_image()));
    REQUIRE(original.size() == rewritten.size());
    CHECK(std::memcmp(original.data(), rewritten.data(), original.size() * sizeof(float)) == 0);
}

TEST_CASE("head_count x key_length that wraps around 2^64 is refused at load (was a heap overflow)", "[decoder][gguf][hostile]") {
    // The fixture has 2 heads, 1 kv head, key_length 32: 2 + 2^59 heads times 32 wraps to 64 == 2 * 32, so
    // before the fix every tensor shape check passed and decode wrote past q in apply_rope.
    Image image = base_image();
    const std::uint64_t heads = 2 + (std::uint64_t{1} << 59);
    REQUIRE(heads * 32 == 64);
    image.set("llama.attention.head_count", ValueType::UINT64, heads);
    CHECK_THAT(load_error(image), Catch::Contains("head_count") && Catch::Contains(std::to_string(heads)));
    image.set("llama.attention.head_count", ValueType::UINT32, std::uint32_t{2});
    image.set("llama.attention.key_length", ValueType::UINT64, std::uint64_t{1} << 60);
    image.set("llama.attention.value_length", ValueType::UINT64, std::uint64_t{1} << 60);
    CHECK_THAT(load_error(image), Catch::Contains("key_length"));
    image = base_image();
    image.set("llama.attention.head_count_kv", ValueType::UINT32, std::uint32_t{3});  // more kv heads than heads
    CHECK_THAT(load_error(image), Catch::Contains("head_count_kv"));
    image.set("llama.attention.head_count_kv", ValueType::UINT32, std::uint32_t{0});
    CHECK_THAT(load_error(image), Catch::Contains("head_count_kv"));
}

TEST_CASE("an absurd block_count is a FormatError before allocation, not std::bad_alloc", "[decoder][gguf][hostile]") {
    Image image = base_image();
    image.set("llama.block_count", ValueType::UINT64, std::uint64_t{1} << 40);
    CHECK_THAT(load_error(image), Catch::Contains("block_count") && Catch::Contains("1099511627776"));
    image.set("llama.block_count", ValueType::UINT32, std::uint32_t{2});  // more layers than the tensors hold
    CHECK_THAT(load_error(image), Catch::Contains("block_count"));
    image.set("llama.block_count", ValueType::UINT32, std::uint32_t{0});
    CHECK_THAT(load_error(image), Catch::Contains("block_count"));
    image.set("llama.embedding_length", ValueType::UINT64, std::uint64_t{1} << 62);
    image.set("llama.block_count", ValueType::UINT32, std::uint32_t{1});
    CHECK_THAT(load_error(image), Catch::Contains("embedding_length"));
}

TEST_CASE("non-finite or non-positive epsilon, RoPE base and scaling factor are refused at load", "[decoder][gguf][hostile]") {
    const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
    for (const char* key : {"llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base"}) {
        for (const double bad : {inf, -inf, nan, 0.0, -1.0, 1e-300, 1e300}) {
            Image image = base_image();
            image.set(key, ValueType::FLOAT64, bad);
            INFO(key << " = " << bad);
            CHECK_THAT(load_error(image), Catch::Contains(key));
        }
    }
    for (const double bad : {inf, nan, 0.0, -2.0, 1e-40, 1e39}) {
        Image image = base_image();
        image.set("llama.rope.scaling.type", ValueType::STRING, std::string("linear"));
        image.set("llama.rope.scaling.factor", ValueType::FLOAT32, static_cast<float>(bad));
        INFO("factor = " << bad);
        CHECK_THAT(load_error(image), Catch::Contains("rope.scaling.factor"));
    }
    Image image = base_image();
    image.set("llama.rope.scaling.type", ValueType::STRING, std::string("linear"));
    image.set("llama.rope.scaling.factor", ValueType::FLOAT32, 4.0f);
    CHECK(load(image).config.rope_position_scale == 0.25f);
}

TEST_CASE("a tokenizer vocabulary that disagrees with the embedding rows is refused at load", "[decoder][gguf][hostile]") {
    const auto tokens = [](std::size_t n) {
        auto array = std::make_shared<kvcache::gguf::Array>();
        array->element_type = ValueType::STRING;
        for (std::size_t i = 0; i < n; ++i) array->values.emplace_back(std::string(1, 't').append(std::to_string(i)));
        return kvcache::gguf::Value(array);
    };
    const std::size_t rows = load(base_image()).config.vocab_size;
    Image image = base_image();
    image.set("tokenizer.ggml.tokens", ValueType::ARRAY, tokens(rows));
    CHECK(load(image).config.vocab_size == rows);
    for (const std::size_t n : {rows - 1, rows + 1}) {
        image.set("tokenizer.ggml.tokens", ValueType::ARRAY, tokens(n));
        CHECK_THAT(load_error(image), Catch::Contains(std::to_string(n) + " tokens") && Catch::Contains(std::to_string(rows) + " rows"));
    }
    image = base_image();
    image.set("tokenizer.ggml.eos_token_id", ValueType::UINT64, std::uint64_t{1} << 40);
    CHECK_THAT(load_error(image), Catch::Contains("eos_token_id"));
    image.set("tokenizer.ggml.eos_token_id", ValueType::UINT32, static_cast<std::uint32_t>(rows));
    CHECK_THAT(load_error(image), Catch::Contains("eos_token_id"));
    image.set("tokenizer.ggml.eos_token_id", ValueType::UINT32, static_cast<std::uint32_t>(rows - 1));
    CHECK(load(image).config.eos_id == static_cast<std::int32_t>(rows - 1));
}

namespace {
// A private copy of the fixture that a test may truncate.
std::filesystem::path model_copy(const std::string& name) {
    const auto path = std::filesystem::temp_directory_path() /
                      ("kvcache_decoder_gguf_" + name + "_" + std::to_string(::getpid()) + ".gguf");
    std::filesystem::copy_file(kModel, path, std::filesystem::copy_options::overwrite_existing);
    return path;
}
}  // namespace

TEST_CASE("a model file truncated while its weights are read is a FormatError naming it, not SIGBUS",
          "[decoder][gguf][issue9]") {
    const auto path = model_copy("truncated");
    const auto size = std::filesystem::file_size(path);
    const auto file = kvcache::gguf::File::open(path);
    // Another process truncates the model after its header was parsed, before the weights are copied: the weights
    // past the new end were a SIGBUS that ended the process.
    std::filesystem::resize_file(path, size / 2);
    const std::string changed = "gguf: '" + path.string() + "' changed while mapped (now " +
                                std::to_string(size / 2) + " bytes, was " + std::to_string(size) + ")";
    CHECK_THROWS_AS(DecoderWeights::from_gguf(file), FormatError);
    CHECK_THROWS_WITH(DecoderWeights::from_gguf(file), Catch::Contains(changed));
    CHECK_THROWS_WITH(kvcache::model_fingerprint(file), Catch::Contains(changed));
    CHECK_THROWS_WITH(file.check_unchanged(), Catch::Contains(changed));
    // Opening it now reads the truncated file, whose tensors end past its end: an ordinary FormatError.
    CHECK_THROWS_WITH(kvcache::gguf::File::open(path), Catch::Contains("extends past the end of the file"));
    std::filesystem::remove(path);
}

TEST_CASE("a model file truncated after Decoder::load changes nothing: the decoder owns its weights",
          "[decoder][gguf][issue9]") {
    const auto path = model_copy("after_load");
    Decoder loaded = Decoder::load(path, {});
    std::filesystem::resize_file(path, 0);
    const auto forward = [](Decoder& d) {
        auto cache = d.make_cache(8);
        const std::vector<std::int32_t> tokens = {1, 5, 7};
        std::vector<float> logits(d.config().vocab_size);
        d.forward(std::span<const std::int32_t>(tokens), cache, 0, std::span<float>(logits));
        return logits;
    };
    Decoder reference = Decoder::load(kModel, {});
    const auto expected = forward(reference);
    const auto got = forward(loaded);
    REQUIRE(got.size() == expected.size());
    CHECK(std::memcmp(got.data(), expected.data(), got.size() * sizeof(float)) == 0);
    std::filesystem::remove(path);
}
