// libFuzzer target for the meaning of GGUF metadata: a valid tiny model (tests/fixtures/decoder/llama_quant.gguf
// plus a small tokenizer) gets metadata values rewritten as the input says — any key the decoder or tokenizer
// reads, any value type, any value — and is then loaded (config, weights, tokenizer) and run for a few tokens
// with a cache. The structure stays valid, so this reaches what the GGUF structure fuzzer cannot: hostile
// values in a well-formed file (the head_count x key_length wrap, block_count 2^40, eps = inf of issue 9).
// A kvcache::Error is the expected answer; any other exception or a sanitizer report aborts. (Non-finite
// logits from extreme but valid values, e.g. a RoPE base of 1e38, are not treated as a bug here.)
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../gguf_writer.hpp"
#include "fuzz_support.hpp"
#include "kvcache/error.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/gguf.hpp"
#include "kvcache/model/tokenizer.hpp"

namespace {

namespace gguf = kvcache::gguf;
using gguf::ValueType;
using kvcache::Tokenizer;
using kvcache::test_gguf::Image;

std::shared_ptr<gguf::Array> array_of(ValueType type, std::vector<gguf::Value> values) {
    auto a = std::make_shared<gguf::Array>();
    a->element_type = type;
    a->values = std::move(values);
    return a;
}

Image base_image() {
    Image image = Image::of(gguf::File::open(std::string(KVCACHE_FIXTURES_DIR) + "/decoder/llama_quant.gguf"));
    // A tokenizer whose 32 tokens match the embedding's rows: single letters, two of them control tokens.
    std::vector<gguf::Value> tokens, types;
    for (int i = 0; i < 32; ++i) {
        tokens.emplace_back(i < 2 ? std::string(i == 0 ? "<s>" : "</s>") : std::string(1, static_cast<char>('a' + i - 2)));
        types.emplace_back(std::int32_t{i < 2 ? 3 : 1});
    }
    image.set("tokenizer.ggml.model", ValueType::STRING, std::string("gpt2"));
    image.set("tokenizer.ggml.pre", ValueType::STRING, std::string("default"));
    image.set("tokenizer.ggml.tokens", ValueType::ARRAY, array_of(ValueType::STRING, tokens));
    image.set("tokenizer.ggml.token_type", ValueType::ARRAY, array_of(ValueType::INT32, types));
    image.set("tokenizer.ggml.merges", ValueType::ARRAY, array_of(ValueType::STRING, {std::string("a b")}));
    image.set("tokenizer.ggml.bos_token_id", ValueType::UINT32, std::uint32_t{0});
    image.set("tokenizer.ggml.eos_token_id", ValueType::UINT32, std::uint32_t{1});
    return image;
}

// Keys worth rewriting: everything the decoder and tokenizer read, present in the base image or not.
const std::vector<std::string> kKeys = {
    "general.architecture", "llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
    "llama.attention.head_count", "llama.attention.head_count_kv", "llama.attention.key_length",
    "llama.attention.value_length", "llama.context_length", "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.freq_base", "llama.rope.dimension_count", "llama.rope.scaling.type", "llama.rope.scaling.factor",
    "llama.rope.scale_linear", "llama.attention.sliding_window", "tokenizer.ggml.model", "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.scores",
    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix",
    "tokenizer.chat_template", "general.alignment",
};

// Interesting numbers: edges of every width, wrap-around factors, non-finite floats.
const std::vector<std::uint64_t> kEdges = {0, 1, 2, 3, 31, 32, 33, 64, 255, 256, 65535, 65536, 0x7fffffff, 0x80000000,
                                           0xffffffff, 0x100000000, std::uint64_t{1} << 40, std::uint64_t{1} << 58,
                                           9 + 3 * (std::uint64_t{1} << 58), std::uint64_t{1} << 63, ~std::uint64_t{0}};
const std::vector<double> kFloatEdges = {0.0, -0.0, 1e-45, 1e-300, 1e300, -1.0, 1.0, 0.5, 1e-5, 1e38, 3.5e38,
                                         HUGE_VAL, -HUGE_VAL, NAN};

gguf::Value scalar(ValueType type, std::uint64_t bits, double real) {
    switch (type) {
        case ValueType::UINT8: return static_cast<std::uint8_t>(bits);
        case ValueType::INT8: return static_cast<std::int8_t>(bits);
        case ValueType::UINT16: return static_cast<std::uint16_t>(bits);
        case ValueType::INT16: return static_cast<std::int16_t>(bits);
        case ValueType::UINT32: return static_cast<std::uint32_t>(bits);
        case ValueType::INT32: return static_cast<std::int32_t>(bits);
        case ValueType::FLOAT32: return static_cast<float>(real);
        case ValueType::BOOL: return (bits & 1) != 0;
        case ValueType::UINT64: return bits;
        case ValueType::INT64: return static_cast<std::int64_t>(bits);
        case ValueType::FLOAT64: return real;
        default: return std::string(std::to_string(bits));
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const Image base = base_image();
    kvcache::fuzz::Input in(data, size);
    Image image = base;
    // Up to 4 edits: key, type, value (from the edge tables or raw), or removal.
    for (int edit = 0; edit < 4 && in.remaining() >= 3; ++edit) {
        const std::string& key = kKeys[in.byte() % kKeys.size()];
        const std::uint8_t how = in.byte();
        const auto type = static_cast<ValueType>(how % 13);
        const std::uint8_t pick = in.byte();
        std::uint64_t bits = pick < 128 ? kEdges[pick % kEdges.size()] : in.value<std::uint64_t>();
        double real = pick < 128 ? kFloatEdges[pick % kFloatEdges.size()] : in.value<double>();
        if (how >= 240) {
            image.erase(key);
        } else if (type == ValueType::STRING) {
            image.set(key, type, std::string(in.bytes(in.byte() % 40)));
        } else if (type == ValueType::ARRAY) {
            // Arrays of a few numbers or strings (lengths that disagree with the vocabulary, wrong types).
            const std::size_t n = in.byte() % 40;
            const auto element = static_cast<ValueType>(in.byte() % 13);
            std::vector<gguf::Value> values;
            for (std::size_t i = 0; i < n; ++i)
                values.push_back(element == ValueType::ARRAY ? gguf::Value(std::string("x")) : scalar(element, bits + i, real));
            image.set(key, type, array_of(element == ValueType::ARRAY ? ValueType::STRING : element, std::move(values)));
        } else {
            image.set(key, type, scalar(type, bits, real));
        }
    }
    const std::vector<std::byte> bytes = image.bytes();
    try {
        const auto file = gguf::File::from_memory(bytes);
        std::vector<std::int32_t> tokens = {0, 5, 9};
        try {
            const auto tokenizer = Tokenizer::from_gguf(file);
            tokens = tokenizer.encode("abc ab", {.add_special = true, .parse_special = true});
            (void)tokenizer.decode(tokens);
        } catch (const kvcache::Error&) {
        }
        kvcache::Decoder model(kvcache::DecoderWeights::from_gguf(file, {.keep_quantized = (size & 1) != 0}), 1);
        auto cache = model.make_cache(8);
        std::vector<float> logits(model.config().vocab_size);
        if (tokens.empty() || tokens.size() > 6) tokens = {0, 5, 9};
        model.forward(std::span<const std::int32_t>(tokens), cache, 0, std::span<float>(logits));
        const std::int32_t next = 3;
        model.forward(std::span<const std::int32_t>(&next, 1), cache, 0, std::span<float>(logits));
    } catch (const kvcache::Error&) {
    }
    return 0;
}
