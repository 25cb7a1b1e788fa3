// libFuzzer target for the GGUF reader: parse any bytes with File::from_memory; if they parse, read every
// metadata value through every getter and dequantise every tensor (bounded), checking the reader's promises.
// A kvcache::Error is the expected answer to bad input; any other exception, a sanitizer report, or a broken
// invariant (a tensor pointing outside the input, sizes that do not add up) is a bug and aborts.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "kvcache/error.hpp"
#include "kvcache/model/gguf.hpp"

namespace {

namespace gguf = kvcache::gguf;

[[noreturn]] void broken(const char* what, const std::string& detail) {
    std::fprintf(stderr, "gguf_fuzz: broken invariant: %s (%s)\n", what, detail.c_str());
    std::abort();
}

// Walks a value (nested arrays included), so that every element is read at least once.
std::size_t walk(const gguf::Value& v, int depth) {
    if (depth > 1000) broken("array nesting deeper than the reader should allow", std::to_string(depth));
    if (const auto* arr = std::get_if<std::shared_ptr<gguf::Array>>(&v)) {
        if (!*arr) broken("null array", "");
        std::size_t n = 1;
        for (const auto& e : (*arr)->values) {
            if (e.index() != static_cast<std::size_t>((*arr)->element_type)) broken("array element of another type", "");
            n += walk(e, depth + 1);
        }
        return n;
    }
    if (const auto* s = std::get_if<std::string>(&v)) return s->size();
    return 1;
}

// Calls a getter; a kvcache::Error (wrong type, value that does not fit) is a fine answer.
template <typename F>
void try_get(F&& f) {
    try {
        (void)f();
    } catch (const kvcache::Error&) {
    }
}

void touch_metadata(const gguf::File& file) {
    (void)file.version();
    (void)file.alignment();
    for (const auto& kv : file.metadata()) {
        if (kv.value.index() != static_cast<std::size_t>(kv.type)) broken("value of another type than declared", kv.key);
        if (file.find(kv.key) == nullptr) broken("find misses a key that metadata() lists", kv.key);
        (void)walk(kv.value, 0);
        const std::string_view key = kv.key;
        try_get([&] { return file.get_string(key); });
        try_get([&] { return file.get_uint(key); });
        try_get([&] { return file.get_int(key); });
        try_get([&] { return file.get_float(key); });
        try_get([&] { return file.get_bool(key); });
        try_get([&] { return file.get_string_array(key); });
        try_get([&] { return file.get_float_array(key); });
        try_get([&] { return file.get_int_array(key); });
        try_get([&] { return file.get_string_or(key, "x"); });
        try_get([&] { return file.get_uint_or(key, 1); });
        try_get([&] { return file.get_float_or(key, 1.0); });
        try_get([&] { return file.get_bool_or(key, true); });
    }
}

void touch_tensors(const gguf::File& file, const std::byte* begin, const std::byte* end) {
    constexpr std::size_t kMaxElements = std::size_t{1} << 20;  // keeps each input fast
    std::vector<float> buffer;
    for (const auto& t : file.tensors()) {
        if (file.find_tensor(t.name) != &t || &file.tensor(t.name) != &t) broken("find_tensor/tensor disagree", t.name);
        if (t.shape.empty() || t.shape.size() > 4) broken("shape rank", t.name);
        if (t.data < begin || t.data > end || t.n_bytes > static_cast<std::size_t>(end - t.data))
            broken("tensor data outside the input", t.name);
        std::size_t n = 1;
        for (auto d : t.shape) n *= static_cast<std::size_t>(d);  // the reader promised no overflow
        if (n != t.n_elements || t.row_length() * t.rows() != n) broken("element count", t.name);
        const std::size_t be = gguf::block_elements(t.type), bb = gguf::block_bytes(t.type);
        // in division form, so that a byte count that wrapped around 2^64 is caught
        if (be == 0 || t.n_elements % be != 0 || t.n_bytes % bb != 0 || t.n_bytes / bb != t.n_elements / be)
            broken("byte size", t.name);
        if (t.row_bytes() * t.rows() != t.n_bytes) broken("row_bytes", t.name);
        if (t.row_length() % be != 0) broken("row not whole blocks", t.name);
        (void)gguf::tensor_type_name(t.type);
        if (t.n_elements > kMaxElements) continue;
        try {
            const std::vector<float> all = gguf::dequantize(t);
            if (all.size() != t.n_elements) broken("dequantize size", t.name);
            buffer.assign(t.row_length(), 0.0f);
            gguf::dequantize_row(t, 0, buffer.data());
            gguf::dequantize_row(t, t.rows() - 1, buffer.data());
            for (std::size_t i = 0; i < t.row_length(); ++i) {
                const float want = all[(t.rows() - 1) * t.row_length() + i];
                if (!(buffer[i] == want || (std::isnan(buffer[i]) && std::isnan(want))))
                    broken("dequantize_row disagrees with dequantize", t.name);
            }
        } catch (const kvcache::FormatError&) {
            // types the reader knows but does not dequantise
        }
    }
    try_get([&] { return file.tensor("\x01no such tensor"); });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto* begin = reinterpret_cast<const std::byte*>(data);
    try {
        const gguf::File file = gguf::File::from_memory(std::span<const std::byte>(begin, size));
        touch_metadata(file);
        touch_tensors(file, begin, begin + size);
    } catch (const kvcache::Error& e) {
        if (e.what()[0] == '\0') broken("an error without a message", "");
    }
    return 0;
}
