// Helpers shared by the GGUF reader tests (gguf_*_test.cpp): golden fixtures from gguf-py
// (scripts/make_gguf_fixtures.py) and their checks, and GGUF images built byte by byte for the hostile inputs.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include <unistd.h>

#include "kvcache/error.hpp"
#include "kvcache/model/gguf.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;
using kvcache::FormatError;
using kvcache::gguf::Array;
using kvcache::gguf::File;
using kvcache::gguf::KeyValue;
using kvcache::gguf::TensorInfo;
using kvcache::gguf::TensorType;
using kvcache::gguf::Value;
using kvcache::gguf::ValueType;

namespace gguf_test {

// ---- fixtures -------------------------------------------------------------------------------------------------

inline fs::path fixture_dir() { return fs::path(KVCACHE_FIXTURES_DIR) / "gguf"; }

inline std::vector<std::byte> read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in.good());
    std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> out(chars.size());
    std::memcpy(out.data(), chars.data(), chars.size());
    return out;
}

inline json read_json(const fs::path& path) {
    std::ifstream in(path);
    INFO("fixture " << path.string() << " (regenerate with scripts/make_gguf_fixtures.py)");
    REQUIRE(in.good());
    return json::parse(in);
}

inline std::vector<std::byte> from_hex(const std::string& hex) {
    REQUIRE(hex.size() % 2 == 0);
    std::vector<std::byte> out(hex.size() / 2);
    for (std::size_t i = 0; i < out.size(); ++i)
        out[i] = static_cast<std::byte>(std::stoul(hex.substr(2 * i, 2), nullptr, 16));
    return out;
}

inline std::vector<std::uint32_t> expected_bits(const json& j) { return j.at("expected_f32_bits").get<std::vector<std::uint32_t>>(); }

// Compares dequantised floats with golden IEEE bit patterns: exact, except that any NaN matches any NaN (fp16 NaN
// payloads may be quieted by the F16C instruction and kept by numpy). Returns the number of mismatches and reports
// the first few with their distance in ulps.
inline std::size_t count_mismatches(const std::vector<std::uint32_t>& want, const float* got, std::size_t n,
                                    const std::string& what) {
    REQUIRE(want.size() == n);
    std::size_t bad = 0;
    std::int64_t worst_ulps = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const auto w = std::bit_cast<float>(want[i]);
        const auto g_bits = std::bit_cast<std::uint32_t>(got[i]);
        if (std::isnan(w) ? std::isnan(got[i]) : g_bits == want[i]) continue;
        const auto ulps = std::llabs(static_cast<std::int64_t>(g_bits) - static_cast<std::int64_t>(want[i]));
        worst_ulps = std::max(worst_ulps, static_cast<std::int64_t>(ulps));
        if (bad < 5) UNSCOPED_INFO(what << "[" << i << "]: got " << got[i] << " (0x" << std::hex << g_bits
                                        << "), want " << w << " (0x" << want[i] << std::dec << "), " << ulps << " ulps");
        ++bad;
    }
    if (bad) UNSCOPED_INFO(what << ": " << bad << " of " << n << " differ, worst " << worst_ulps << " ulps");
    return bad;
}

inline ValueType value_type_named(const std::string& name) {
    static const char* names[] = {"UINT8", "INT8",   "UINT16", "INT16",  "UINT32", "INT32",  "FLOAT32",
                                  "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64",  "FLOAT64"};
    for (std::uint32_t i = 0; i < 13; ++i)
        if (name == names[i]) return static_cast<ValueType>(i);
    FAIL("unknown value type name in a manifest: " << name);
    return ValueType::UINT8;
}

// Checks a parsed value against its manifest form (integers/bools/strings as themselves, floats as IEEE bits,
// arrays as {"element_type", "values"}). The variant's alternatives are numbered like ValueType.
inline void check_value(const Value& v, ValueType type, const json& want, const std::string& where) {
    INFO(where);
    REQUIRE(v.index() == static_cast<std::size_t>(type));
    switch (type) {
        case ValueType::UINT8: CHECK(std::get<std::uint8_t>(v) == want.get<std::uint64_t>()); break;
        case ValueType::INT8: CHECK(std::get<std::int8_t>(v) == want.get<std::int64_t>()); break;
        case ValueType::UINT16: CHECK(std::get<std::uint16_t>(v) == want.get<std::uint64_t>()); break;
        case ValueType::INT16: CHECK(std::get<std::int16_t>(v) == want.get<std::int64_t>()); break;
        case ValueType::UINT32: CHECK(std::get<std::uint32_t>(v) == want.get<std::uint64_t>()); break;
        case ValueType::INT32: CHECK(std::get<std::int32_t>(v) == want.get<std::int64_t>()); break;
        case ValueType::UINT64: CHECK(std::get<std::uint64_t>(v) == want.get<std::uint64_t>()); break;
        case ValueType::INT64: CHECK(std::get<std::int64_t>(v) == want.get<std::int64_t>()); break;
        case ValueType::FLOAT32:
            CHECK(std::bit_cast<std::uint32_t>(std::get<float>(v)) == want.get<std::uint32_t>());
            break;
        case ValueType::FLOAT64:
            CHECK(std::bit_cast<std::uint64_t>(std::get<double>(v)) == want.get<std::uint64_t>());
            break;
        case ValueType::BOOL: CHECK(std::get<bool>(v) == want.get<bool>()); break;
        case ValueType::STRING: CHECK(std::get<std::string>(v) == want.get<std::string>()); break;
        case ValueType::ARRAY: {
            const auto& arr = std::get<std::shared_ptr<Array>>(v);
            REQUIRE(arr != nullptr);
            const ValueType et = value_type_named(want.at("element_type").get<std::string>());
            CHECK(arr->element_type == et);
            const auto& values = want.at("values");
            REQUIRE(arr->values.size() == values.size());
            for (std::size_t i = 0; i < values.size(); ++i)
                check_value(arr->values[i], et, values[i], where + "[" + std::to_string(i) + "]");
            break;
        }
    }
}

// Everything a manifest says about a file: version, alignment, metadata in order, tensors and their golden floats.
inline void check_against_manifest(const File& f, const json& m, const std::byte* image_base) {
    CHECK(f.version() == m.at("version").get<std::uint32_t>());
    CHECK(f.alignment() == m.at("alignment").get<std::size_t>());

    const auto& meta = m.at("metadata");
    REQUIRE(f.metadata().size() == meta.size());
    for (std::size_t i = 0; i < meta.size(); ++i) {
        const KeyValue& kv = f.metadata()[i];
        const auto key = meta[i].at("key").get<std::string>();
        CHECK(kv.key == key);
        const ValueType type = value_type_named(meta[i].at("type").get<std::string>());
        CHECK(kv.type == type);
        check_value(kv.value, type, meta[i].at("value"), key);
        CHECK(f.find(key) == &kv);
    }

    const auto& tensors = m.at("tensors");
    REQUIRE(f.tensors().size() == tensors.size());
    for (std::size_t i = 0; i < tensors.size(); ++i) {
        const TensorInfo& t = f.tensors()[i];
        const auto& want = tensors[i];
        const auto name = want.at("name").get<std::string>();
        INFO("tensor " << name);
        CHECK(t.name == name);
        CHECK(f.find_tensor(name) == &t);
        CHECK(&f.tensor(name) == &t);
        CHECK(static_cast<std::uint32_t>(t.type) == want.at("type_id").get<std::uint32_t>());
        CHECK(kvcache::gguf::tensor_type_name(t.type) == want.at("type").get<std::string>());
        const auto shape = want.at("shape").get<std::vector<std::uint64_t>>();
        CHECK(t.shape == shape);
        CHECK(t.offset == want.at("offset").get<std::uint64_t>());
        CHECK(t.offset % f.alignment() == 0);
        CHECK(t.n_elements == want.at("n_elements").get<std::size_t>());
        CHECK(t.n_bytes == want.at("n_bytes").get<std::size_t>());
        CHECK(t.row_length() == shape[0]);
        std::size_t rows = 1;
        for (std::size_t d = 1; d < shape.size(); ++d) rows *= shape[d];
        CHECK(t.rows() == rows);
        CHECK(t.row_bytes() * t.rows() == t.n_bytes);
        CHECK(t.row_bytes() == shape[0] / kvcache::gguf::block_elements(t.type) * kvcache::gguf::block_bytes(t.type));
        REQUIRE(t.data != nullptr);
        if (image_base != nullptr) {
            CHECK(t.data - image_base == want.at("absolute_offset").get<std::ptrdiff_t>());
        } else {
            // mapped from disk: the mapping is page-aligned, so the file's alignment carries over to the pointer
            CHECK(reinterpret_cast<std::uintptr_t>(t.data) % f.alignment() == 0);
        }

        const auto golden = expected_bits(want);
        const std::vector<float> all = kvcache::gguf::dequantize(t);
        CHECK(count_mismatches(golden, all.data(), all.size(), name + " dequantize(tensor)") == 0);

        std::vector<float> direct(t.n_elements, -7.0f);
        kvcache::gguf::dequantize(t.type, t.data, direct.data(), t.n_elements);
        CHECK(count_mismatches(golden, direct.data(), direct.size(), name + " dequantize(type, ...)") == 0);

        if (shape.size() >= 2) {
            std::vector<float> row(t.row_length());
            for (std::size_t r = 0; r < t.rows(); ++r) {
                std::fill(row.begin(), row.end(), -7.0f);
                kvcache::gguf::dequantize_row(t, r, row.data());
                const std::vector<std::uint32_t> want_row(golden.begin() + static_cast<std::ptrdiff_t>(r * row.size()),
                                                          golden.begin() + static_cast<std::ptrdiff_t>((r + 1) * row.size()));
                CHECK(count_mismatches(want_row, row.data(), row.size(),
                                       name + " row " + std::to_string(r)) == 0);
            }
        }
    }
}

const char* const kGoldenFiles[] = {"all_types_v3", "handmade_v2", "metadata_only_v3"};

// ---- building GGUF images byte by byte (little-endian) --------------------------------------------------------

class Bytes {
public:
    Bytes& u8(std::uint8_t v) { return le(v, 1); }
    Bytes& u16(std::uint16_t v) { return le(v, 2); }
    Bytes& u32(std::uint32_t v) { return le(v, 4); }
    Bytes& u64(std::uint64_t v) { return le(v, 8); }
    Bytes& i64(std::int64_t v) { return le(static_cast<std::uint64_t>(v), 8); }
    Bytes& f32(float v) { return u32(std::bit_cast<std::uint32_t>(v)); }
    Bytes& f64(double v) { return u64(std::bit_cast<std::uint64_t>(v)); }
    Bytes& raw(std::string_view s) {
        for (char c : s) data.push_back(static_cast<std::byte>(c));
        return *this;
    }
    Bytes& str(std::string_view s) { return u64(s.size()).raw(s); }
    Bytes& append(const Bytes& other) {
        data.insert(data.end(), other.data.begin(), other.data.end());
        return *this;
    }
    Bytes& zeros(std::size_t n) {
        data.resize(data.size() + n, std::byte{0});
        return *this;
    }
    std::size_t size() const { return data.size(); }
    std::vector<std::byte> data;

private:
    Bytes& le(std::uint64_t v, int n) {
        for (int i = 0; i < n; ++i) data.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xFF));
        return *this;
    }
};

constexpr std::uint32_t T_ARRAY = 9, T_STRING = 8, T_UINT32 = 4, T_UINT64 = 10, T_UINT8 = 0, T_BOOL = 7;
constexpr std::uint32_t F32 = 0, Q8_0 = 8, Q4_0 = 2, Q4_K = 12, Q2_K = 10;

// One metadata entry: key, type, then the value bytes.
inline Bytes kv(std::string_view key, std::uint32_t type, const Bytes& value) {
    Bytes b;
    b.str(key).u32(type).append(value);
    return b;
}
inline Bytes kv_u32(std::string_view key, std::uint32_t v) { return kv(key, T_UINT32, Bytes().u32(v)); }
inline Bytes kv_string(std::string_view key, std::string_view v) { return kv(key, T_STRING, Bytes().str(v)); }

struct TensorSpec {
    std::string name;
    std::vector<std::uint64_t> dims;
    std::uint32_t type = F32;
    std::optional<std::uint64_t> offset;   // default: after the previous tensor, aligned
    std::optional<std::uint32_t> n_dims;   // default: dims.size()
    std::optional<std::uint64_t> name_length;  // default: name.size() (a lie here makes a hostile name)
};

struct ImageSpec {
    std::uint32_t version = 3;
    std::optional<std::uint64_t> tensor_count;  // default: tensors.size()
    std::optional<std::uint64_t> kv_count;      // default: kvs.size()
    std::vector<Bytes> kvs;
    std::vector<TensorSpec> tensors;
    std::uint64_t alignment = 32;               // for laying out the data (general.alignment is a kv of its own)
    std::optional<std::uint64_t> data_bytes;    // default: to the end of the last tensor
};

// Bytes of n elements of a type this test knows (0 for anything else or on overflow).
inline std::uint64_t test_bytes_of(std::uint32_t type, const std::vector<std::uint64_t>& dims) {
    std::uint64_t block_elems = 0, block_bytes = 0;
    switch (type) {
        case 0: block_elems = 1; block_bytes = 4; break;
        case 1: case 30: block_elems = 1; block_bytes = 2; break;
        case 2: block_elems = 32; block_bytes = 18; break;
        case 8: block_elems = 32; block_bytes = 34; break;
        case 10: block_elems = 256; block_bytes = 84; break;
        case 12: block_elems = 256; block_bytes = 144; break;
        default: return 0;
    }
    std::uint64_t n = 1;
    for (auto d : dims) {
        if (d != 0 && n > std::numeric_limits<std::uint64_t>::max() / d) return 0;
        n *= d;
    }
    if (n % block_elems != 0) return 0;
    return n / block_elems * block_bytes;
}

inline std::vector<std::byte> build(const ImageSpec& s) {
    Bytes b;
    b.raw("GGUF").u32(s.version).u64(s.tensor_count.value_or(s.tensors.size())).u64(s.kv_count.value_or(s.kvs.size()));
    for (const auto& k : s.kvs) b.append(k);
    std::uint64_t running = 0, data_end = 0;
    for (const auto& t : s.tensors) {
        const std::uint64_t offset = t.offset.value_or((running + s.alignment - 1) / s.alignment * s.alignment);
        const std::uint64_t n = test_bytes_of(t.type, t.dims);
        b.u64(t.name_length.value_or(t.name.size())).raw(t.name);
        b.u32(t.n_dims.value_or(static_cast<std::uint32_t>(t.dims.size())));
        for (auto d : t.dims) b.u64(d);
        b.u32(t.type).u64(offset);
        running = offset + n;
        if (offset + n > data_end && offset < (1u << 20)) data_end = offset + n;
    }
    while (b.size() % s.alignment != 0) b.u8(0);
    const std::uint64_t data = s.data_bytes.value_or(data_end);
    for (std::uint64_t i = 0; i < data; ++i) b.u8(static_cast<std::uint8_t>((i * 37 + 11) & 0x3F));  // small, finite fp16
    return b.data;
}

// A small valid file: two keys (one of them the alignment), an F32 [4,2] and a Q8_0 [32] tensor, the last tensor
// ending the file. Hostile variants below change one thing in it.
inline ImageSpec small_spec() {
    ImageSpec s;
    s.kvs.push_back(kv_string("general.architecture", "tiny"));
    s.kvs.push_back(kv_u32("general.alignment", 32));
    s.tensors.push_back({"a", {4, 2}, F32, std::nullopt, std::nullopt, std::nullopt});
    s.tensors.push_back({"b", {32}, Q8_0, std::nullopt, std::nullopt, std::nullopt});
    return s;
}

inline std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

// Parses `image` from an exactly-sized heap copy (so that ASan sees any read past its end) and requires a
// FormatError whose message mentions at least one of `words` (case-insensitive). Returns the message.
inline std::string expect_format_error(const std::vector<std::byte>& image, const std::vector<std::string_view>& words) {
    const std::vector<std::byte> copy(image);
    try {
        const File f = File::from_memory(copy);
        FAIL_CHECK("parsed without error: " << f.tensors().size() << " tensors, " << f.metadata().size() << " keys");
    } catch (const FormatError& e) {
        const std::string msg = e.what();
        INFO("message: " << msg);
        bool named = words.size() == 0;
        for (auto w : words) named = named || lower(msg).find(lower(std::string(w))) != std::string::npos;
        CHECK(named);
        return msg;
    } catch (const std::exception& e) {
        FAIL_CHECK("threw " << typeid(e).name() << " instead of kvcache::FormatError: " << e.what());
    }
    return {};
}

inline File parse_ok(const std::vector<std::byte>& image) {
    try {
        return File::from_memory(image);
    } catch (const std::exception& e) {
        FAIL("a valid image did not parse: " << e.what());
        throw;
    }
}

inline fs::path model_path() {
    if (const char* env = std::getenv("KVCACHE_MODEL")) return env;
    const char* src = std::getenv("KVCACHE_SOURCE_DIR");
    return fs::path(src ? src : KVCACHE_SOURCE_DIR) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

}  // namespace gguf_test

using namespace gguf_test;
