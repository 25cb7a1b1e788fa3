// Test helper: re-serialises a parsed GGUF file as a version-3 image after editing its metadata, so tests and the
// semantic fuzz target can give a valid model hostile values (the reader proves structure; this tests meaning).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "kvcache/model/gguf.hpp"

namespace kvcache::test_gguf {

/// A GGUF file as plain data: metadata in order, tensors with their bytes (copied out of the source file).
struct Image {
    struct Tensor {
        std::string name;
        std::vector<std::uint64_t> shape;
        gguf::TensorType type;
        std::vector<std::byte> data;
    };
    std::vector<gguf::KeyValue> metadata;
    std::vector<Tensor> tensors;
    std::size_t alignment = 32;

    static Image of(const gguf::File& file) {
        Image image;
        image.metadata = file.metadata();
        image.alignment = file.alignment();
        for (const auto& t : file.tensors())
            image.tensors.push_back({t.name, t.shape, t.type, std::vector<std::byte>(t.data, t.data + t.n_bytes)});
        return image;
    }

    /// Sets (or adds) a key to a value of the given type.
    void set(std::string_view key, gguf::ValueType type, gguf::Value value) {
        for (auto& kv : metadata) {
            if (kv.key == key) {
                kv.type = type;
                kv.value = std::move(value);
                return;
            }
        }
        metadata.push_back({std::string(key), type, std::move(value)});
    }

    void erase(std::string_view key) {
        std::erase_if(metadata, [&](const gguf::KeyValue& kv) { return kv.key == key; });
    }

    std::vector<std::byte> bytes() const {
        std::vector<std::byte> out;
        const auto raw = [&](const void* p, std::size_t n) {
            const auto* b = static_cast<const std::byte*>(p);
            out.insert(out.end(), b, b + n);
        };
        const auto u32 = [&](std::uint32_t v) { raw(&v, 4); };
        const auto u64 = [&](std::uint64_t v) { raw(&v, 8); };
        const auto str = [&](std::string_view s) {
            u64(s.size());
            raw(s.data(), s.size());
        };
        const auto value = [&](const auto& self, const gguf::Value& v) -> void {
            std::visit(
                [&](const auto& x) {
                    using X = std::decay_t<decltype(x)>;
                    if constexpr (std::is_same_v<X, std::string>) {
                        str(x);
                    } else if constexpr (std::is_same_v<X, std::shared_ptr<gguf::Array>>) {
                        u32(static_cast<std::uint32_t>(x->element_type));
                        u64(x->values.size());
                        for (const auto& e : x->values) self(self, e);
                    } else if constexpr (std::is_same_v<X, bool>) {
                        const std::uint8_t b = x ? 1 : 0;
                        raw(&b, 1);
                    } else {
                        raw(&x, sizeof x);
                    }
                },
                v);
        };
        raw("GGUF", 4);
        u32(3);
        u64(tensors.size());
        u64(metadata.size());
        for (const auto& kv : metadata) {
            str(kv.key);
            u32(static_cast<std::uint32_t>(kv.type));
            value(value, kv.value);
        }
        const auto align = [&](std::size_t n) { return (n + alignment - 1) / alignment * alignment; };
        std::size_t offset = 0;
        for (const auto& t : tensors) {
            str(t.name);
            u32(static_cast<std::uint32_t>(t.shape.size()));
            for (const auto d : t.shape) u64(d);
            u32(static_cast<std::uint32_t>(t.type));
            u64(offset);
            offset = align(offset + t.data.size());
        }
        out.resize(align(out.size()));
        for (const auto& t : tensors) {
            raw(t.data.data(), t.data.size());
            out.resize(align(out.size()));
        }
        return out;
    }
};

}  // namespace kvcache::test_gguf
