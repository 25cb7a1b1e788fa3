// libFuzzer target for the safetensors reader and the encoder-decoder's JSON config: the first byte picks
// (0) a safetensors image, (1) a config JSON, (2) a config JSON and a safetensors image loaded as weights.
// A kvcache::Error is the expected answer to bad input; any other exception, a sanitizer report or a broken
// invariant (a tensor outside the image, bytes that disagree with the shape) aborts.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "kvcache/error.hpp"
#include "kvcache/model/encoder_decoder.hpp"
#include "kvcache/model/safetensors.hpp"

namespace {

namespace st = kvcache::safetensors;
constexpr const char* kTarget = "safetensors_fuzz";

void touch(const st::File& file, std::span<const std::byte> image) {
    for (const auto& [key, value] : file.metadata()) (void)(key.size() + value.size());
    for (const st::TensorView& t : file.tensors()) {
        if (file.find(t.name) != &t) kvcache::fuzz::broken(kTarget, "find disagrees with tensors()", t.name);
        if (t.bytes.data() < image.data() || t.bytes.data() + t.bytes.size() > image.data() + image.size())
            kvcache::fuzz::broken(kTarget, "tensor bytes outside the image", t.name);
        const std::size_t n = t.n_elements();
        if (n != 0 && t.bytes.size() / st::dtype_size(t.dtype) != n)
            kvcache::fuzz::broken(kTarget, "byte count disagrees with the shape", t.name + " " + t.shape_string());
        if (n > (1u << 20)) continue;
        try {
            const std::vector<float> values = file.to_float(t.name);
            if (values.size() != n) kvcache::fuzz::broken(kTarget, "to_float size", t.name);
        } catch (const kvcache::Error&) {
        }
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    kvcache::fuzz::Input in(data, size);
    const std::uint8_t mode = in.byte() % 3;
    try {
        if (mode == 0) {
            const std::string_view rest = in.rest();
            const auto image = std::as_bytes(std::span(rest.data(), rest.size()));
            touch(st::File::from_memory(image), image);
        } else if (mode == 1) {
            const auto config = kvcache::EncoderDecoderConfig::from_json(in.rest());
            config.validate();  // what from_json accepted must be valid
        } else {
            const std::size_t json_bytes = in.value<std::uint16_t>();
            const std::string json(in.bytes(json_bytes));
            const std::string_view rest = in.rest();
            const auto image = std::as_bytes(std::span(rest.data(), rest.size()));
            auto config = kvcache::EncoderDecoderConfig::from_json(json);
            const auto file = st::File::from_memory(image);
            touch(file, image);
            // Shapes the config asks for must match tensors inside the image, so allocation stays bounded by it.
            (void)kvcache::EncoderDecoderWeights::from_safetensors(std::move(config), file);
        }
    } catch (const kvcache::Error&) {
    }
    return 0;
}
