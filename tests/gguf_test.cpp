// Tests of the GGUF reader: golden files and dequantisations from gguf-py (scripts/make_gguf_fixtures.py), every
// getter, and hostile inputs built byte by byte here, each of which must be a FormatError and never a crash.
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

namespace {

// ---- fixtures -------------------------------------------------------------------------------------------------

fs::path fixture_dir() { return fs::path(KVCACHE_FIXTURES_DIR) / "gguf"; }

std::vector<std::byte> read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in.good());
    std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> out(chars.size());
    std::memcpy(out.data(), chars.data(), chars.size());
    return out;
}

json read_json(const fs::path& path) {
    std::ifstream in(path);
    INFO("fixture " << path.string() << " (regenerate with scripts/make_gguf_fixtures.py)");
    REQUIRE(in.good());
    return json::parse(in);
}

std::vector<std::byte> from_hex(const std::string& hex) {
    REQUIRE(hex.size() % 2 == 0);
    std::vector<std::byte> out(hex.size() / 2);
    for (std::size_t i = 0; i < out.size(); ++i)
        out[i] = static_cast<std::byte>(std::stoul(hex.substr(2 * i, 2), nullptr, 16));
    return out;
}

std::vector<std::uint32_t> expected_bits(const json& j) { return j.at("expected_f32_bits").get<std::vector<std::uint32_t>>(); }

// Compares dequantised floats with golden IEEE bit patterns: exact, except that any NaN matches any NaN (fp16 NaN
// payloads may be quieted by the F16C instruction and kept by numpy). Returns the number of mismatches and reports
// the first few with their distance in ulps.
std::size_t count_mismatches(const std::vector<std::uint32_t>& want, const float* got, std::size_t n,
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

ValueType value_type_named(const std::string& name) {
    static const char* names[] = {"UINT8", "INT8",   "UINT16", "INT16",  "UINT32", "INT32",  "FLOAT32",
                                  "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64",  "FLOAT64"};
    for (std::uint32_t i = 0; i < 13; ++i)
        if (name == names[i]) return static_cast<ValueType>(i);
    FAIL("unknown value type name in a manifest: " << name);
    return ValueType::UINT8;
}

// Checks a parsed value against its manifest form (integers/bools/strings as themselves, floats as IEEE bits,
// arrays as {"element_type", "values"}). The variant's alternatives are numbered like ValueType.
void check_value(const Value& v, ValueType type, const json& want, const std::string& where) {
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
void check_against_manifest(const File& f, const json& m, const std::byte* image_base) {
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
Bytes kv(std::string_view key, std::uint32_t type, const Bytes& value) {
    Bytes b;
    b.str(key).u32(type).append(value);
    return b;
}
Bytes kv_u32(std::string_view key, std::uint32_t v) { return kv(key, T_UINT32, Bytes().u32(v)); }
Bytes kv_string(std::string_view key, std::string_view v) { return kv(key, T_STRING, Bytes().str(v)); }

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
std::uint64_t test_bytes_of(std::uint32_t type, const std::vector<std::uint64_t>& dims) {
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

std::vector<std::byte> build(const ImageSpec& s) {
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
ImageSpec small_spec() {
    ImageSpec s;
    s.kvs.push_back(kv_string("general.architecture", "tiny"));
    s.kvs.push_back(kv_u32("general.alignment", 32));
    s.tensors.push_back({"a", {4, 2}, F32, std::nullopt, std::nullopt, std::nullopt});
    s.tensors.push_back({"b", {32}, Q8_0, std::nullopt, std::nullopt, std::nullopt});
    return s;
}

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

// Parses `image` from an exactly-sized heap copy (so that ASan sees any read past its end) and requires a
// FormatError whose message mentions at least one of `words` (case-insensitive). Returns the message.
std::string expect_format_error(const std::vector<std::byte>& image, const std::vector<std::string_view>& words) {
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

File parse_ok(const std::vector<std::byte>& image) {
    try {
        return File::from_memory(image);
    } catch (const std::exception& e) {
        FAIL("a valid image did not parse: " << e.what());
        throw;
    }
}

fs::path model_path() {
    if (const char* env = std::getenv("KVCACHE_MODEL")) return env;
    const char* src = std::getenv("KVCACHE_SOURCE_DIR");
    return fs::path(src ? src : KVCACHE_SOURCE_DIR) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

}  // namespace

// ---- type tables -----------------------------------------------------------------------------------------------

TEST_CASE("block sizes and names match ggml's table for every TensorType", "[gguf][types]") {
    const json info = read_json(fixture_dir() / "type_info.json");
    REQUIRE(info.at("types").size() == 15);
    for (const auto& t : info.at("types")) {
        const auto type = static_cast<TensorType>(t.at("id").get<std::uint32_t>());
        INFO(t.at("name").get<std::string>());
        CHECK(kvcache::gguf::tensor_type_name(type) == t.at("name").get<std::string>());
        CHECK(kvcache::gguf::block_elements(type) == t.at("block_elements").get<std::size_t>());
        CHECK(kvcache::gguf::block_bytes(type) == t.at("block_bytes").get<std::size_t>());
    }
}

TEST_CASE("unknown tensor type numbers are named 'type N' and have no block size", "[gguf][types][errors]") {
    for (std::uint32_t id : {4u, 5u, 16u, 24u, 29u, 31u, 1000u, 0xFFFFFFFFu}) {
        const auto type = static_cast<TensorType>(id);
        CHECK(kvcache::gguf::tensor_type_name(type) == "type " + std::to_string(id));
        CHECK_THROWS_AS(kvcache::gguf::block_bytes(type), FormatError);
        CHECK_THROWS_WITH(kvcache::gguf::block_bytes(type), Catch::Contains(std::to_string(id)));
    }
}

// ---- dequantisation against gguf-py ----------------------------------------------------------------------------

TEST_CASE("dequantize matches gguf-py bit for bit on every supported type", "[gguf][dequantize]") {
    // The formulas are exact in float: an fp16 scale (11-bit significand) times a small integer (at most 13 bits
    // even for Q6_K's d*scale*q) fits in 24 bits, so only the final add of Q4_1/Q5_1/K-quant minimums rounds, once,
    // whether or not the compiler fuses it into an FMA. So the comparison is exact (0 ulps), NaN matching NaN.
    for (const char* name : {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"}) {
        INFO("type " << name);
        const json j = read_json(fixture_dir() / (std::string("dequant_") + name + ".json"));
        const auto type = static_cast<TensorType>(j.at("type_id").get<std::uint32_t>());
        CHECK(kvcache::gguf::tensor_type_name(type) == name);
        const std::vector<std::byte> raw = from_hex(j.at("bytes_hex").get<std::string>());
        const auto n = j.at("n_elements").get<std::size_t>();
        REQUIRE(raw.size() == n / kvcache::gguf::block_elements(type) * kvcache::gguf::block_bytes(type));
        const auto golden = expected_bits(j);

        std::vector<float> out(n, -7.0f);
        kvcache::gguf::dequantize(type, raw.data(), out.data(), n);
        CHECK(count_mismatches(golden, out.data(), n, std::string(name) + " all blocks") == 0);

        // block by block, from a source at an odd address: no alignment assumptions on the blocks
        const std::size_t be = kvcache::gguf::block_elements(type), bb = kvcache::gguf::block_bytes(type);
        std::vector<std::byte> shifted(bb + 1);
        for (std::size_t blk = 0; blk < n / be; ++blk) {
            std::memcpy(shifted.data() + 1, raw.data() + blk * bb, bb);
            std::vector<float> one(be, -7.0f);
            kvcache::gguf::dequantize(type, shifted.data() + 1, one.data(), be);
            const std::vector<std::uint32_t> want(golden.begin() + static_cast<std::ptrdiff_t>(blk * be),
                                                  golden.begin() + static_cast<std::ptrdiff_t>((blk + 1) * be));
            CHECK(count_mismatches(want, one.data(), be, std::string(name) + " block " + std::to_string(blk)) == 0);
        }

        // n = 0 writes nothing
        std::vector<float> untouched(4, -7.0f);
        kvcache::gguf::dequantize(type, raw.data(), untouched.data(), 0);
        CHECK(untouched == std::vector<float>(4, -7.0f));
    }
}

TEST_CASE("dequantize rejects partial blocks and types it cannot dequantise", "[gguf][dequantize][errors]") {
    std::vector<std::byte> src(1024, std::byte{0});
    std::vector<float> dst(1024);
    // n not a multiple of the block size
    CHECK_THROWS_AS(kvcache::gguf::dequantize(TensorType::Q4_0, src.data(), dst.data(), 31), kvcache::Error);
    CHECK_THROWS_WITH(kvcache::gguf::dequantize(TensorType::Q4_0, src.data(), dst.data(), 31), Catch::Contains("31"));
    CHECK_THROWS_AS(kvcache::gguf::dequantize(TensorType::Q6_K, src.data(), dst.data(), 300), kvcache::Error);
    CHECK_THROWS_WITH(kvcache::gguf::dequantize(TensorType::Q6_K, src.data(), dst.data(), 300), Catch::Contains("300"));
    // known to ggml but not dequantised here, and unknown numbers
    for (auto type : {TensorType::Q2_K, TensorType::Q3_K, TensorType::Q8_K, static_cast<TensorType>(4),
                      static_cast<TensorType>(1000)}) {
        INFO(kvcache::gguf::tensor_type_name(type));
        CHECK_THROWS_AS(kvcache::gguf::dequantize(type, src.data(), dst.data(), 256), FormatError);
        CHECK_THROWS_WITH(kvcache::gguf::dequantize(type, src.data(), dst.data(), 256),
                          Catch::Contains(kvcache::gguf::tensor_type_name(type)));
    }
}

// ---- golden files ----------------------------------------------------------------------------------------------

TEST_CASE("golden files read through from_memory match gguf-py's manifest", "[gguf][golden]") {
    for (const char* name : kGoldenFiles) {
        INFO(name);
        const auto bytes = read_bytes(fixture_dir() / (std::string(name) + ".gguf"));
        const json m = read_json(fixture_dir() / (std::string(name) + ".json"));
        REQUIRE(bytes.size() == m.at("file_size").get<std::size_t>());
        const File f = File::from_memory(bytes);
        check_against_manifest(f, m, bytes.data());
    }
}

TEST_CASE("golden files read through open (memory-mapped) match gguf-py's manifest", "[gguf][golden][open]") {
    for (const char* name : kGoldenFiles) {
        INFO(name);
        const json m = read_json(fixture_dir() / (std::string(name) + ".json"));
        const File f = File::open(fixture_dir() / (std::string(name) + ".gguf"));
        check_against_manifest(f, m, nullptr);
    }
}

TEST_CASE("a golden file parses from a buffer at an odd address (no aligned loads assumed)", "[gguf][golden]") {
    for (const char* name : kGoldenFiles) {
        INFO(name);
        const auto bytes = read_bytes(fixture_dir() / (std::string(name) + ".gguf"));
        const json m = read_json(fixture_dir() / (std::string(name) + ".json"));
        std::vector<std::byte> shifted(bytes.size() + 1);
        std::memcpy(shifted.data() + 1, bytes.data(), bytes.size());
        const File f = File::from_memory(std::span<const std::byte>(shifted.data() + 1, bytes.size()));
        check_against_manifest(f, m, shifted.data() + 1);
    }
}

TEST_CASE("File moves keep tensors pointing into the same mapping", "[gguf][open]") {
    File a = File::open(fixture_dir() / "all_types_v3.gguf");
    const std::byte* data = a.tensor("q6_k_2d").data;
    const std::vector<float> before = kvcache::gguf::dequantize(a.tensor("q6_k_2d"));
    File b(std::move(a));
    CHECK(b.tensor("q6_k_2d").data == data);
    File c = File::open(fixture_dir() / "handmade_v2.gguf");
    c = std::move(b);
    CHECK(c.version() == 3);
    CHECK(c.tensor("q6_k_2d").data == data);
    CHECK(kvcache::gguf::dequantize(c.tensor("q6_k_2d")) == before);
}

// ---- typed getters ---------------------------------------------------------------------------------------------

TEST_CASE("typed getters return values of the right types and convert integers that fit", "[gguf][metadata]") {
    const File f = File::open(fixture_dir() / "all_types_v3.gguf");

    CHECK(f.get_string("general.architecture") == "kvtest");
    CHECK(f.get_string("test.string") == "hello, gguf");
    CHECK(f.get_string("test.string_utf8") == "h\xC3\xA9llo \xE4\xB8\x96\xE7\x95\x8C \xF0\x9F\x8E\x89 tab\tnl\n");
    CHECK(f.get_string("test.string_empty").empty());

    CHECK(f.get_uint("test.uint8") == 200);
    CHECK(f.get_uint("test.uint16") == 60000);
    CHECK(f.get_uint("test.uint32") == 4000000000u);
    CHECK(f.get_uint("test.uint64") == std::numeric_limits<std::uint64_t>::max());
    CHECK(f.get_uint("test.int8_pos") == 100);
    CHECK(f.get_uint("test.int32_pos") == 123456);
    CHECK(f.get_uint("test.int64_pos") == (std::uint64_t{1} << 40));
    CHECK(f.get_uint("general.alignment") == 64);

    CHECK(f.get_int("test.int8") == -100);
    CHECK(f.get_int("test.int16") == -30000);
    CHECK(f.get_int("test.int32") == -2000000000);
    CHECK(f.get_int("test.int64") == std::numeric_limits<std::int64_t>::min());
    CHECK(f.get_int("test.int16_neg1") == -1);
    CHECK(f.get_int("test.uint8") == 200);
    CHECK(f.get_int("test.uint32") == 4000000000);
    CHECK(f.get_int("test.uint64_small") == 42);

    CHECK(f.get_float("test.float32") == static_cast<double>(static_cast<float>(3.14159265358979323846)));
    CHECK(f.get_float("test.float32_neg") == -0.375);
    CHECK(f.get_float("test.float64") == 0.1);

    CHECK(f.get_bool("test.bool_true"));
    CHECK_FALSE(f.get_bool("test.bool_false"));

    CHECK(f.get_string_array("test.arr_string") == std::vector<std::string>{"a", "", "\xC3\xBCn\xC3\xAF", "with space"});
    CHECK(f.get_float_array("test.arr_float32") == std::vector<float>{0.5f, -1.25f, 1e-3f, 65504.0f});
    CHECK(f.get_int_array("test.arr_int32") == std::vector<std::int64_t>{-2147483648LL, 2147483647, 0, -7});
    CHECK(f.get_int_array("test.arr_int64") ==
          std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()});
    // any integer element type whose values fit int64
    CHECK(f.get_int_array("test.arr_uint8") == std::vector<std::int64_t>{0, 1, 255});
    CHECK(f.get_int_array("test.arr_int8") == std::vector<std::int64_t>{-128, 0, 127});
    CHECK(f.get_int_array("test.arr_uint16") == std::vector<std::int64_t>{0, 65535});
    CHECK(f.get_int_array("test.arr_int16") == std::vector<std::int64_t>{-32768, 32767, -1});
    CHECK(f.get_int_array("test.arr_uint32") == std::vector<std::int64_t>{0, 4294967295LL, 5});
    CHECK(f.get_int_array("test.arr_uint64_small") == std::vector<std::int64_t>{1, 2, 3});

    CHECK(f.get_string_or("test.string", "x") == "hello, gguf");
    CHECK(f.get_string_or("test.absent", "fallback") == "fallback");
    CHECK(f.get_uint_or("test.uint16", 5) == 60000);
    CHECK(f.get_uint_or("test.absent", 5) == 5);
    CHECK(f.get_float_or("test.float64", 2.0) == 0.1);
    CHECK(f.get_float_or("test.absent", 2.5) == 2.5);
    CHECK(f.get_bool_or("test.bool_false", true) == false);
    CHECK(f.get_bool_or("test.absent", true) == true);

    CHECK(f.find("test.absent") == nullptr);
    CHECK(f.find("") == nullptr);
    CHECK(f.find("test.uint") == nullptr);  // a prefix of real keys is not a key
    CHECK(f.find_tensor("absent") == nullptr);
    CHECK(f.find_tensor("blk.0") == nullptr);
}

TEST_CASE("nested arrays keep their structure", "[gguf][metadata]") {
    const File f = File::open(fixture_dir() / "all_types_v3.gguf");
    const KeyValue* kv = f.find("test.arr_nested3_string");
    REQUIRE(kv != nullptr);
    REQUIRE(kv->type == ValueType::ARRAY);
    const auto& outer = std::get<std::shared_ptr<Array>>(kv->value);
    REQUIRE(outer->element_type == ValueType::ARRAY);
    REQUIRE(outer->values.size() == 2);
    const auto& mid = std::get<std::shared_ptr<Array>>(outer->values[0]);
    REQUIRE(mid->values.size() == 2);
    const auto& inner = std::get<std::shared_ptr<Array>>(mid->values[1]);
    CHECK(inner->element_type == ValueType::STRING);
    CHECK(std::get<std::string>(inner->values.at(1)) == "z");
    // arrays of arrays are not flat arrays of anything
    CHECK_THROWS_AS(f.get_int_array("test.arr_nested_int32"), FormatError);
    CHECK_THROWS_AS(f.get_string_array("test.arr_nested3_string"), FormatError);

    const File v2 = File::open(fixture_dir() / "handmade_v2.gguf");
    CHECK(v2.version() == 2);
    CHECK(v2.alignment() == 32);
    CHECK(v2.get_int_array("test.v2.empty_array").empty());
    CHECK(v2.get_string_array("test.v2.empty_string_array").empty());
    const auto& nested = std::get<std::shared_ptr<Array>>(v2.find("test.v2.nested_uint64")->value);
    REQUIRE(nested->values.size() == 3);
    CHECK(std::get<std::shared_ptr<Array>>(nested->values[1])->values.empty());
    CHECK(std::get<std::uint64_t>(std::get<std::shared_ptr<Array>>(nested->values[0])->values[1]) ==
          std::numeric_limits<std::uint64_t>::max());
    // an empty array still has an element type, and the getters check it
    CHECK_THROWS_AS(v2.get_string_array("test.v2.empty_array"), FormatError);
    CHECK_THROWS_AS(v2.get_int_array("test.v2.empty_string_array"), FormatError);
    CHECK_THROWS_AS(v2.get_float_array("test.v2.empty_string_array"), FormatError);
    CHECK_THROWS_AS(v2.get_int_array("test.v2.nested_empty"), FormatError);
    const auto& empty_outer = std::get<std::shared_ptr<Array>>(v2.find("test.v2.nested_empty")->value);
    CHECK(empty_outer->element_type == ValueType::ARRAY);
    CHECK(empty_outer->values.empty());
}

TEST_CASE("typed getters throw FormatError naming the key on a wrong type, a missing key or a value that does not fit",
          "[gguf][metadata][errors]") {
    const File f = File::open(fixture_dir() / "all_types_v3.gguf");
    const auto throws_naming = [](auto&& call, const std::string& key) {
        INFO("key " << key);
        CHECK_THROWS_AS(call(), FormatError);
        CHECK_THROWS_WITH(call(), Catch::Contains(key));
    };
    // missing
    for (const std::string key : {"test.absent", ""}) {
        throws_naming([&] { return f.get_string(key); }, key);
        throws_naming([&] { return f.get_uint(key); }, key);
        throws_naming([&] { return f.get_int(key); }, key);
        throws_naming([&] { return f.get_float(key); }, key);
        throws_naming([&] { return f.get_bool(key); }, key);
        throws_naming([&] { return f.get_string_array(key); }, key);
        throws_naming([&] { return f.get_float_array(key); }, key);
        throws_naming([&] { return f.get_int_array(key); }, key);
    }
    throws_naming([&] { return f.tensor("no.such.tensor"); }, "no.such.tensor");

    // wrong types
    for (const std::string key : {"test.uint32", "test.bool_true", "test.arr_string", "test.float32"})
        throws_naming([&] { return f.get_string(key); }, key);
    for (const std::string key : {"test.float32", "test.float64", "test.bool_true", "test.string", "test.arr_uint8"}) {
        throws_naming([&] { return f.get_uint(key); }, key);
        throws_naming([&] { return f.get_int(key); }, key);
    }
    for (const std::string key : {"test.uint32", "test.int8", "test.string", "test.bool_false", "test.arr_float32"})
        throws_naming([&] { return f.get_float(key); }, key);
    for (const std::string key : {"test.uint8", "test.string", "test.arr_bool"})
        throws_naming([&] { return f.get_bool(key); }, key);
    for (const std::string key : {"test.string", "test.arr_int32", "test.arr_nested3_string"})
        throws_naming([&] { return f.get_string_array(key); }, key);
    for (const std::string key : {"test.float32", "test.arr_string", "test.arr_int32", "test.arr_nested_int32"})
        throws_naming([&] { return f.get_float_array(key); }, key);
    for (const std::string key : {"test.int32", "test.arr_string", "test.arr_float32", "test.arr_bool"})
        throws_naming([&] { return f.get_int_array(key); }, key);

    // values that do not fit
    throws_naming([&] { return f.get_uint("test.int8"); }, "test.int8");           // -100
    throws_naming([&] { return f.get_uint("test.int16_neg1"); }, "test.int16_neg1");
    throws_naming([&] { return f.get_uint("test.int64"); }, "test.int64");
    throws_naming([&] { return f.get_int("test.uint64"); }, "test.uint64");       // 2^64-1
    throws_naming([&] { return f.get_int("test.uint64_big_int"); }, "test.uint64_big_int");  // 2^63
    throws_naming([&] { return f.get_int_array("test.arr_uint64"); }, "test.arr_uint64");    // holds 2^64-1

    // the _or variants only fall back when the key is absent
    throws_naming([&] { return f.get_string_or("test.uint8", "x"); }, "test.uint8");
    throws_naming([&] { return f.get_uint_or("test.string", 1); }, "test.string");
    throws_naming([&] { return f.get_uint_or("test.int8", 1); }, "test.int8");
    throws_naming([&] { return f.get_float_or("test.string", 1.0); }, "test.string");
    throws_naming([&] { return f.get_bool_or("test.uint8", false); }, "test.uint8");
}

TEST_CASE("metadata-only and version-2 files expose what they hold", "[gguf][metadata]") {
    const File m = File::open(fixture_dir() / "metadata_only_v3.gguf");
    CHECK(m.tensors().empty());
    CHECK(m.alignment() == 32);  // no general.alignment key: the default
    const auto words = m.get_string_array("test.words");
    REQUIRE(words.size() == 300);
    CHECK(words[0] == "tok000");
    CHECK(words[299] == "tok299");
    const auto scores = m.get_float_array("test.scores");
    REQUIRE(scores.size() == 300);
    CHECK(scores[21] == 0.5f);
    CHECK(m.get_uint("test.count") == words.size());

    const File v2 = File::open(fixture_dir() / "handmade_v2.gguf");
    CHECK(v2.get_float("test.v2.float64") == -1.0e300);
    CHECK(v2.get_float_array("test.v2.float32_array") == std::vector<float>{1.0f, -0.0f, 3.5f});
    CHECK(std::signbit(v2.get_float_array("test.v2.float32_array")[1]));
    const TensorInfo& q = v2.tensor("v2.q4_1");
    CHECK(q.shape == std::vector<std::uint64_t>{32});
    CHECK(q.rows() == 1);
    CHECK(q.row_length() == 32);
}

TEST_CASE("dequantize_row rejects rows past the end", "[gguf][dequantize][errors]") {
    const File f = File::open(fixture_dir() / "all_types_v3.gguf");
    std::vector<float> row(512);
    for (const char* name : {"blk.0.q8_0", "q6_k_2d", "f32_4d", "q5_1_3d"}) {
        const TensorInfo& t = f.tensor(name);
        INFO(name << " rows " << t.rows());
        CHECK_NOTHROW(kvcache::gguf::dequantize_row(t, t.rows() - 1, row.data()));
        CHECK_THROWS_AS(kvcache::gguf::dequantize_row(t, t.rows(), row.data()), kvcache::IndexError);
        CHECK_THROWS_WITH(kvcache::gguf::dequantize_row(t, t.rows(), row.data()), Catch::Contains(std::to_string(t.rows())));
        CHECK_THROWS_AS(kvcache::gguf::dequantize_row(t, std::numeric_limits<std::size_t>::max(), row.data()),
                        kvcache::Error);
    }
}

// ---- opening files ---------------------------------------------------------------------------------------------

TEST_CASE("open reports missing files as IoError and malformed ones as FormatError", "[gguf][open][errors]") {
    const fs::path missing = fixture_dir() / "does-not-exist.gguf";
    CHECK_THROWS_AS(File::open(missing), kvcache::IoError);
    CHECK_THROWS_WITH(File::open(missing), Catch::Contains("does-not-exist.gguf"));
    CHECK_THROWS_AS(File::open(fixture_dir()), kvcache::Error);  // a directory

    const fs::path tmp = fs::temp_directory_path() / ("kvcache_gguf_test_" + std::to_string(::getpid()));
    fs::create_directories(tmp);
    {
        std::ofstream(tmp / "empty.gguf", std::ios::binary).flush();
        CHECK_THROWS_AS(File::open(tmp / "empty.gguf"), FormatError);
        std::ofstream(tmp / "text.gguf", std::ios::binary) << "this is not a gguf file at all, just text\n";
        CHECK_THROWS_AS(File::open(tmp / "text.gguf"), FormatError);
        CHECK_THROWS_WITH(File::open(tmp / "text.gguf"), Catch::Contains("text.gguf"));  // says which file
        // a golden file cut short on disk
        const auto bytes = read_bytes(fixture_dir() / "all_types_v3.gguf");
        std::ofstream cut(tmp / "cut.gguf", std::ios::binary);
        cut.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size() / 2));
        cut.close();
        CHECK_THROWS_AS(File::open(tmp / "cut.gguf"), FormatError);
    }
    fs::remove_all(tmp);
}

// ---- hostile inputs --------------------------------------------------------------------------------------------

TEST_CASE("the hand-built small image is valid (control for the hostile variants)", "[gguf][hostile]") {
    const auto image = build(small_spec());
    const File f = parse_ok(image);
    CHECK(f.version() == 3);
    REQUIRE(f.tensors().size() == 2);
    CHECK(f.tensor("a").offset == 0);
    CHECK(f.tensor("b").offset == 32);
    CHECK(f.tensor("b").data + f.tensor("b").n_bytes == image.data() + image.size());
    CHECK(kvcache::gguf::dequantize(f.tensor("b")).size() == 32);

    ImageSpec v2 = small_spec();
    v2.version = 2;
    CHECK(parse_ok(build(v2)).version() == 2);

    // alignment 1 packs tensors with no padding
    ImageSpec packed = small_spec();
    packed.kvs[1] = kv_u32("general.alignment", 1);
    packed.alignment = 1;
    const auto packed_image = build(packed);
    const File p = parse_ok(packed_image);
    CHECK(p.alignment() == 1);
    CHECK(p.tensor("b").offset == 32);

    // a Q2_K tensor (known to ggml, not dequantised here) opens; only dequantising it fails
    ImageSpec q2 = small_spec();
    q2.tensors.push_back({"q2", {256}, Q2_K, std::nullopt, std::nullopt, std::nullopt});
    const auto q2_image = build(q2);
    const File q = parse_ok(q2_image);
    CHECK(q.tensor("q2").n_bytes == 84);
    CHECK_THROWS_AS(kvcache::gguf::dequantize(q.tensor("q2")), FormatError);
}

TEST_CASE("every truncation of a valid file is a FormatError", "[gguf][hostile][truncation]") {
    // Each prefix is copied into its own exactly-sized allocation so that ASan sees any read past the end.
    const auto check_prefixes = [](const std::vector<std::byte>& image, std::size_t valid_from, const std::string& what) {
        std::vector<std::size_t> parsed, wrong_type;
        std::string first_wrong;
        for (std::size_t n = 0; n < valid_from; ++n) {
            const std::vector<std::byte> prefix(image.begin(), image.begin() + static_cast<std::ptrdiff_t>(n));
            try {
                const File f = File::from_memory(prefix);
                parsed.push_back(n);
            } catch (const FormatError& e) {
                if (std::string(e.what()).empty()) wrong_type.push_back(n);
            } catch (const std::exception& e) {
                if (wrong_type.empty()) first_wrong = std::string(typeid(e).name()) + ": " + e.what();
                wrong_type.push_back(n);
            }
        }
        INFO(what << ": " << valid_from << " prefixes; parsed: " << parsed.size()
                  << (parsed.empty() ? std::string() : " (first at " + std::to_string(parsed[0]) + ")")
                  << "; not a FormatError: " << wrong_type.size() << " " << first_wrong);
        CHECK(parsed.empty());
        CHECK(wrong_type.empty());
    };
    check_prefixes(build(small_spec()), build(small_spec()).size(), "small image");
    const auto v2 = read_bytes(fixture_dir() / "handmade_v2.gguf");
    check_prefixes(v2, v2.size(), "handmade_v2.gguf");  // its last tensor ends the file
    const json m = read_json(fixture_dir() / "all_types_v3.json");
    const auto& last = m.at("tensors").back();
    const auto all = read_bytes(fixture_dir() / "all_types_v3.gguf");
    check_prefixes(all, last.at("absolute_offset").get<std::size_t>() + last.at("n_bytes").get<std::size_t>(),
                   "all_types_v3.gguf up to the end of its last tensor");
    // metadata only: everything before the end of the header is truncated
    const json mm = read_json(fixture_dir() / "metadata_only_v3.json");
    const auto meta = read_bytes(fixture_dir() / "metadata_only_v3.gguf");
    check_prefixes(meta, mm.at("header_end").get<std::size_t>(), "metadata_only_v3.gguf before the end of its header");
}

TEST_CASE("bad magic and unsupported versions", "[gguf][hostile]") {
    auto image = build(small_spec());
    for (const char* magic : {"GGUG", "FUGG", "GGML", "\0\0\0\0", "gguf"}) {
        auto bad = image;
        std::memcpy(bad.data(), magic, 4);
        expect_format_error(bad, {"magic", "gguf"});
    }
    for (std::uint32_t version : {0u, 1u, 4u, 0x03000000u, 0xFFFFFFFFu}) {
        ImageSpec s = small_spec();
        s.version = version;
        const auto msg = expect_format_error(build(s), {"version"});
        if (version == 1 || version == 4) CHECK_THAT(msg, Catch::Contains(std::to_string(version)));
    }
    expect_format_error({}, {"truncated", "short", "small", "end", "magic", "size", "bytes"});
}

TEST_CASE("absurd counts and lengths are FormatErrors, not allocations", "[gguf][hostile]") {
    const std::uint64_t huge[] = {std::uint64_t{1} << 60, std::uint64_t{1} << 63, ~std::uint64_t{0}, 1u << 28};
    for (auto n : huge) {
        INFO("count " << n);
        ImageSpec t = small_spec();
        t.tensor_count = n;
        expect_format_error(build(t), {"tensor", "count", "truncated", "end", "length", "beyond"});
        ImageSpec k = small_spec();
        k.kv_count = n;
        expect_format_error(build(k), {"key", "metadata", "kv", "count", "truncated", "end", "length", "beyond"});
    }
    // string lengths: of a key, of a string value, of a tensor name
    for (std::uint64_t len : {std::uint64_t{1} << 63, ~std::uint64_t{0}, std::uint64_t{1} << 32, std::uint64_t{1000}}) {
        INFO("string length " << len);
        ImageSpec key = small_spec();
        key.kvs.insert(key.kvs.begin(), Bytes().u64(len).raw("abc").u32(T_UINT32).u32(1));
        expect_format_error(build(key), {"string", "length", "key", "truncated", "end"});
        ImageSpec val = small_spec();
        val.kvs.insert(val.kvs.begin(), kv("test.s", T_STRING, Bytes().u64(len).raw("abc")));
        expect_format_error(build(val), {"string", "length", "test.s", "truncated", "end"});
        ImageSpec name = small_spec();
        name.tensors[1].name_length = len;
        expect_format_error(build(name), {"string", "length", "name", "tensor", "truncated", "end"});
    }
    // arrays with far more elements than bytes left, of every element size
    for (std::uint32_t et : {T_UINT8, T_UINT32, T_UINT64, T_BOOL, T_STRING, T_ARRAY}) {
        for (std::uint64_t n : {std::uint64_t{1} << 62, std::uint64_t{1} << 40, std::uint64_t{1} << 31, std::uint64_t{100000}}) {
            INFO("array of type " << et << " count " << n);
            ImageSpec s = small_spec();
            s.kvs.insert(s.kvs.begin(), kv("test.arr", T_ARRAY, Bytes().u32(et).u64(n).u64(0)));
            expect_format_error(build(s), {"array", "test.arr", "truncated", "end", "count", "length"});
        }
    }
}

TEST_CASE("deeply nested arrays are refused, not recursed into until the stack runs out", "[gguf][hostile]") {
    for (std::size_t depth : {std::size_t{100000}, std::size_t{5000}}) {
        INFO("depth " << depth);
        Bytes value;
        for (std::size_t i = 0; i < depth; ++i) value.u32(T_ARRAY).u64(1);
        value.u32(T_UINT8).u64(1).u8(7);
        ImageSpec s = small_spec();
        s.kvs.insert(s.kvs.begin(), kv("test.bomb", T_ARRAY, value));
        expect_format_error(build(s), {"nest", "depth", "deep", "test.bomb"});
    }
}

TEST_CASE("unknown value types are FormatErrors", "[gguf][hostile]") {
    for (std::uint32_t type : {13u, 100u, 0xFFFFFFFFu}) {
        INFO("value type " << type);
        ImageSpec s = small_spec();
        s.kvs.insert(s.kvs.begin(), kv("test.odd", type, Bytes().u64(0)));
        expect_format_error(build(s), {"type", "test.odd"});
        ImageSpec a = small_spec();
        a.kvs.insert(a.kvs.begin(), kv("test.odd_array", T_ARRAY, Bytes().u32(type).u64(1).u64(0)));
        expect_format_error(build(a), {"type", "test.odd_array"});
    }
}

TEST_CASE("a bool byte other than 0 or 1 is refused or read as true, never undefined", "[gguf][hostile]") {
    ImageSpec s = small_spec();
    s.kvs.insert(s.kvs.begin(), kv("test.bool2", T_BOOL, Bytes().u8(2)));
    const auto image = build(s);
    try {
        const File f = File::from_memory(image);
        CHECK(f.get_bool("test.bool2") == true);
    } catch (const FormatError& e) {
        // where: the key or the byte offset of the value (24 + the key's 8 + 10 bytes + the type's 4)
        const std::string msg = e.what();
        INFO(msg);
        CHECK((msg.find("test.bool2") != std::string::npos || msg.find("46") != std::string::npos));
    }
}

TEST_CASE("duplicate keys and tensor names are FormatErrors naming them", "[gguf][hostile]") {
    ImageSpec k = small_spec();
    k.kvs.push_back(kv_string("general.architecture", "again"));
    expect_format_error(build(k), {"general.architecture"});
    ImageSpec t = small_spec();
    t.tensors[1].name = "a";
    t.tensors[1].type = F32;
    t.tensors[1].dims = {8};
    expect_format_error(build(t), {"\"a\"", "'a'", "a:", "duplicate"});
}

TEST_CASE("bad alignments are FormatErrors", "[gguf][hostile]") {
    for (std::uint32_t a : {0u, 3u, 48u, 33u, 0x80000001u}) {
        INFO("alignment " << a);
        ImageSpec s = small_spec();
        s.kvs[1] = kv_u32("general.alignment", a);
        expect_format_error(build(s), {"alignment"});
    }
    // a power of two so large that aligning the data section start overflows or passes the end of the file
    for (std::uint64_t a : {std::uint64_t{1} << 31, std::uint64_t{1} << 63}) {
        INFO("alignment " << a);
        ImageSpec s = small_spec();
        s.kvs[1] = kv("general.alignment", T_UINT64, Bytes().u64(a));
        expect_format_error(build(s), {"alignment", "offset", "truncated", "end", "beyond", "past", "type"});
    }
    ImageSpec str = small_spec();
    str.kvs[1] = kv_string("general.alignment", "32");
    expect_format_error(build(str), {"alignment"});
}

TEST_CASE("tensor offsets outside the data, misaligned or overlapping are FormatErrors", "[gguf][hostile]") {
    const auto with_offset_b = [](std::uint64_t offset) {
        ImageSpec s = small_spec();
        s.tensors[1].offset = offset;
        s.data_bytes = 32 + 34;
        return build(s);
    };
    for (std::uint64_t off : {std::uint64_t{64}, std::uint64_t{1} << 20, std::uint64_t{1} << 40,
                              ~std::uint64_t{0} - 31, ~std::uint64_t{0} - 63}) {
        INFO("offset " << off);
        expect_format_error(with_offset_b(off), {"\"b\"", "'b'", "b:", "tensor b", "offset", "beyond", "past", "end"});
    }
    // not a multiple of the alignment
    for (std::uint64_t off : {std::uint64_t{8}, std::uint64_t{33}, std::uint64_t{1}}) {
        INFO("offset " << off);
        expect_format_error(with_offset_b(off), {"align", "offset"});
    }
    // b on top of a
    expect_format_error(with_offset_b(0), {"overlap", "offset"});
    // a and b swapped in the info order but b still over a's bytes
    ImageSpec s = small_spec();
    s.tensors[0].offset = 32;
    s.tensors[1].offset = 32;
    s.data_bytes = 32 + 34;
    expect_format_error(build(s), {"overlap", "offset"});
}

TEST_CASE("bad tensor dimensions and types are FormatErrors naming the tensor", "[gguf][hostile]") {
    const auto bad_a = [](std::vector<std::uint64_t> dims, std::uint32_t type, std::optional<std::uint32_t> n_dims = {}) {
        ImageSpec s = small_spec();
        s.tensors[0].dims = std::move(dims);
        s.tensors[0].type = type;
        s.tensors[0].n_dims = n_dims;
        s.tensors[1].offset = 1u << 12;  // keep b's placement independent of a's (possibly absurd) size
        s.data_bytes = (1u << 12) + 34;
        return build(s);
    };
    const auto check_bad_n = [&](std::vector<std::uint64_t> dims, std::uint32_t type, std::optional<std::uint32_t> n_dims,
                                 const std::vector<std::string_view>& words) {
        std::string shown;
        for (auto d : dims) shown += std::to_string(d) + " ";
        INFO("dims " << shown << "type " << type);
        expect_format_error(bad_a(std::move(dims), type, n_dims), words);
    };
    const auto check_bad = [&](std::vector<std::uint64_t> dims, std::uint32_t type,
                               const std::vector<std::string_view>& words) {
        check_bad_n(std::move(dims), type, std::nullopt, words);
    };
    // n_dims 0, 5, huge (with no dims following, or with 5 dims)
    check_bad({}, F32, {"dim", "\"a\"", "'a'"});
    check_bad({1, 1, 1, 1, 32}, F32, {"dim", "\"a\"", "'a'"});
    check_bad_n({4, 2}, F32, 0xFFFFFFFFu, {"dim", "\"a\"", "'a'", "truncated"});
    // a zero dimension
    check_bad({0, 4}, F32, {"dim", "zero", "\"a\"", "'a'", "shape"});
    check_bad({32, 0}, Q4_0, {"dim", "zero", "\"a\"", "'a'", "shape"});
    // element products that overflow 64 bits, and byte sizes that do
    check_bad({std::uint64_t{1} << 32, std::uint64_t{1} << 32, 2}, F32,
              {"overflow", "large", "size", "\"a\"", "'a'"});
    check_bad({~std::uint64_t{0}, 3}, F32, {"overflow", "large", "size", "\"a\"", "'a'"});
    check_bad({std::uint64_t{1} << 62}, F32, {"overflow", "large", "size", "beyond", "\"a\"", "'a'"});
    // element counts that fit but whose byte counts wrap around 2^64 (to 0 for the first two)
    check_bad({std::uint64_t{1} << 63}, 1 /* F16 */, {"overflow", "large", "size", "beyond", "\"a\"", "'a'"});
    check_bad({std::uint64_t{1} << 62, 2}, 30 /* BF16 */, {"overflow", "large", "size", "beyond", "\"a\"", "'a'"});
    check_bad({~std::uint64_t{0} - 255}, 15 /* Q8_K: 292 bytes per 256 */,
              {"overflow", "large", "size", "beyond", "\"a\"", "'a'"});
    check_bad({std::uint64_t{1} << 36, std::uint64_t{1} << 20}, Q4_K,
              {"overflow", "large", "size", "beyond", "\"a\"", "'a'"});
    // unknown tensor types
    for (std::uint32_t type : {4u, 5u, 16u, 24u, 31u, 1000u, 0xFFFFFFFFu}) {
        INFO("type " << type);
        check_bad({32, 2}, type, {"type"});
    }
    // rows that are not whole blocks (ggml requires shape[0] to be a multiple of the block size)
    check_bad({33}, Q4_0, {"block", "multiple", "\"a\"", "'a'"});
    check_bad({16, 2}, Q4_0, {"block", "multiple", "\"a\"", "'a'"});
    check_bad({255, 1}, Q4_K, {"block", "multiple", "\"a\"", "'a'"});
    check_bad({128, 2}, Q4_K, {"block", "multiple", "\"a\"", "'a'"});
}

// ---- the real model --------------------------------------------------------------------------------------------

TEST_CASE("the default SmolLM2 model reads and dequantises", "[gguf][model]") {
    const fs::path path = model_path();
    if (!fs::exists(path)) {
        WARN("skipped: " << path.string() << " not found (run scripts/fetch-model.sh)");
        return;
    }
    const File f = File::open(path);
    CHECK(f.version() == 3);
    CHECK(f.alignment() == 32);
    CHECK(f.get_string("general.architecture") == "llama");
    CHECK(f.get_uint("llama.block_count") == 30);
    CHECK(f.get_uint("llama.embedding_length") == 576);
    CHECK(f.get_uint("llama.attention.head_count") == 9);
    CHECK(f.get_uint("llama.attention.head_count_kv") == 3);
    CHECK(f.get_float("llama.rope.freq_base") == 100000.0);
    CHECK(f.get_string("tokenizer.ggml.model") == "gpt2");
    CHECK(f.get_string_array("tokenizer.ggml.tokens").size() == 49152);
    CHECK(f.get_int_array("tokenizer.ggml.token_type").size() == 49152);
    CHECK(f.metadata().size() == 33);
    REQUIRE(f.tensors().size() == 272);

    const TensorInfo& embd = f.tensor("token_embd.weight");
    CHECK(embd.shape == std::vector<std::uint64_t>{576, 49152});
    CHECK(embd.type == TensorType::Q8_0);
    CHECK(embd.rows() == 49152);
    CHECK(embd.n_bytes == 49152u * 576 / 32 * 34);

    std::size_t q4_1 = 0, q8_0 = 0, f32 = 0;
    std::uint64_t end = 0;
    for (const auto& t : f.tensors()) {
        q4_1 += t.type == TensorType::Q4_1;
        q8_0 += t.type == TensorType::Q8_0;
        f32 += t.type == TensorType::F32;
        end = std::max(end, t.offset + t.n_bytes);
        CHECK(t.n_bytes == t.n_elements / kvcache::gguf::block_elements(t.type) * kvcache::gguf::block_bytes(t.type));
    }
    CHECK(q4_1 == 210);
    CHECK(q8_0 == 1);
    CHECK(f32 == 61);
    CHECK(end < fs::file_size(path));

    // one row of each type, finite
    for (const char* name : {"token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_norm.weight"}) {
        const TensorInfo& t = f.tensor(name);
        std::vector<float> row(t.row_length());
        kvcache::gguf::dequantize_row(t, t.rows() - 1, row.data());
        CHECK(std::all_of(row.begin(), row.end(), [](float v) { return std::isfinite(v); }));
        CHECK(std::any_of(row.begin(), row.end(), [](float v) { return v != 0.0f; }));
    }

    // golden rows from gguf-py (written by make_gguf_fixtures.py when the model was present)
    const fs::path rows_path = fixture_dir() / "smollm2_rows.json";
    REQUIRE(fs::exists(rows_path));
    const json golden = read_json(rows_path);
    for (const auto& r : golden.at("rows")) {
        const auto name = r.at("tensor").get<std::string>();
        const auto index = r.at("row").get<std::size_t>();
        INFO(name << " row " << index);
        const TensorInfo& t = f.tensor(name);
        CHECK(kvcache::gguf::tensor_type_name(t.type) == r.at("type").get<std::string>());
        std::vector<float> row(t.row_length());
        if (t.shape.size() >= 2) {
            kvcache::gguf::dequantize_row(t, index, row.data());
        } else {
            row = kvcache::gguf::dequantize(t);
        }
        CHECK(count_mismatches(expected_bits(r), row.data(), row.size(), name) == 0);
    }
}
