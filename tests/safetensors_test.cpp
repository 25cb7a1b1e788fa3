// Tests of the safetensors reader/writer: round trips, dtypes, and every malformed-file error path.
#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <unistd.h>
#include <string>
#include <vector>

#include "kvcache/element_types.hpp"
#include "kvcache/model/encoder_decoder.hpp"
#include "kvcache/model/safetensors.hpp"

namespace st = kvcache::safetensors;
using Catch::Matchers::Contains;

namespace {

// A file image from a literal header and `data_bytes` bytes of data (0, 1, 2, ...).
std::vector<std::byte> image(const std::string& header, std::size_t data_bytes, std::uint64_t header_len_override = ~0ull) {
    std::vector<std::byte> out(8 + header.size() + data_bytes);
    const std::uint64_t len = header_len_override == ~0ull ? header.size() : header_len_override;
    std::memcpy(out.data(), &len, 8);
    std::memcpy(out.data() + 8, header.data(), header.size());
    for (std::size_t i = 0; i < data_bytes; ++i) out[8 + header.size() + i] = static_cast<std::byte>(i);
    return out;
}

std::string error_of(const std::vector<std::byte>& bytes) {
    try {
        st::File::from_memory(bytes);
    } catch (const kvcache::FormatError& e) {
        return e.what();
    }
    return "(no error)";
}

std::filesystem::path temp_file(const std::string& name) {
    return std::filesystem::temp_directory_path() / ("kvcache_st_" + std::to_string(::getpid()) + "_" + name);
}

}  // namespace

TEST_CASE("serialize and read back F32, F16, BF16 tensors with metadata", "[safetensors]") {
    const std::vector<float> a = {1.0f, -2.5f, 3.25f, 0.0f, 1e-3f, 65504.0f};
    const std::vector<float> b = {0.5f, -0.125f, 3.0f, 7.0f};
    const std::vector<float> c = {1.0f, 2.0f, -1.5f};
    const std::vector<st::TensorToWrite> ts = {
        {"layer.a", {2, 3}, a, st::DType::F32},
        {"layer.b", {4}, b, st::DType::F16},
        {"c", {3, 1}, c, st::DType::BF16},
    };
    const auto bytes = st::serialize(ts, {{"format", "pt"}});
    const auto f = st::File::from_memory(bytes);
    REQUIRE(f.tensors().size() == 3);
    REQUIRE(f.metadata().at("format") == "pt");
    CHECK(f.tensor("layer.a").dtype == st::DType::F32);
    CHECK(f.tensor("layer.a").shape_string() == "[2, 3]");
    CHECK(f.to_float("layer.a") == a);
    CHECK(f.tensor("layer.b").dtype == st::DType::F16);
    CHECK(f.to_float("layer.b") == b);  // all exactly representable in fp16
    CHECK(f.tensor("c").dtype == st::DType::BF16);
    CHECK(f.load("c", {3, 1}) == c);
    CHECK(f.find("nope") == nullptr);
    // header is padded so the data starts 8-byte aligned
    std::uint64_t len = 0;
    std::memcpy(&len, bytes.data(), 8);
    CHECK(len % 8 == 0);
}

TEST_CASE("fp16 and bf16 values convert with their own rounding", "[safetensors]") {
    const std::vector<float> v = {0.1f, 1.0f / 3.0f};
    const std::vector<st::TensorToWrite> ts = {{"h", {2}, v, st::DType::F16}, {"b", {2}, v, st::DType::BF16}};
    const auto bytes = st::serialize(ts);  // from_memory does not copy: the buffer must outlive the File
    const auto f = st::File::from_memory(bytes);
    const auto h = f.to_float("h");
    const auto b = f.to_float("b");
    for (int i = 0; i < 2; ++i) {
        CHECK(h[i] == static_cast<float>(kvcache::fp16(v[i])));
        CHECK(b[i] == static_cast<float>(kvcache::bf16(v[i])));
        CHECK(h[i] != v[i]);
    }
}

TEST_CASE("a hand-written file with unaligned F32 data and an F64 tensor reads correctly", "[safetensors]") {
    // header of odd length: the data starts unaligned
    const std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F64","shape":[],"data_offsets":[8,16]}})";
    auto bytes = image(header, 16);
    const float xs[2] = {1.5f, -4.0f};
    const double y = 2.25;
    std::memcpy(bytes.data() + 8 + header.size(), xs, 8);
    std::memcpy(bytes.data() + 8 + header.size() + 8, &y, 8);
    const auto f = st::File::from_memory(bytes);
    CHECK(f.to_float("x") == std::vector<float>{1.5f, -4.0f});
    CHECK(f.to_float("y") == std::vector<float>{2.25f});
    CHECK(f.tensor("y").n_elements() == 1);
    CHECK(f.metadata().empty());
}

TEST_CASE("an empty header object is a valid file with no tensors", "[safetensors]") {
    const auto f = st::File::from_memory(image("{}", 0));
    CHECK(f.tensors().empty());
}

TEST_CASE("malformed files are FormatErrors that say what is wrong", "[safetensors]") {
    const std::string ok = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
    CHECK_THAT(error_of(std::vector<std::byte>(5)), Contains("too short"));
    CHECK_THAT(error_of(image(ok, 16, 1000)), Contains("header length 1000") && Contains("truncated"));
    CHECK_THAT(error_of(image(ok, 16, 200'000'000)), Contains("exceeds the limit"));
    CHECK_THAT(error_of(image("[1,2]", 0)), Contains("start with '{'"));
    CHECK_THAT(error_of(image("{\"w\": ", 0)), Contains("not valid JSON"));
    CHECK_THAT(error_of(image(ok, 12)), Contains("'w'") && Contains("run past") && Contains("12 bytes"));
    CHECK_THAT(error_of(image(ok, 20)), Contains("holds 20 bytes") && Contains("cover 16"));
    CHECK_THAT(error_of(image(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})", 16)),
               Contains("'w'") && Contains("[2, 3]") && Contains("needs 24 bytes") && Contains("hold 16"));
    CHECK_THAT(error_of(image(R"({"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", 8)),
               Contains("'w'") && Contains("unknown safetensors dtype 'Q4'"));
    CHECK_THAT(error_of(image(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8)), Contains("non-natural"));
    CHECK_THAT(error_of(image(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8)), Contains("end before"));
    CHECK_THAT(error_of(image(R"({"w":{"dtype":"F32","shape":[2]}})", 8)), Contains("data_offsets"));
    CHECK_THAT(error_of(image(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8)), Contains("dtype"));
    CHECK_THAT(error_of(image(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", 8)), Contains("shape"));
    CHECK_THAT(error_of(image(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", 8)),
               Contains("unexpected header field 'x'"));
    CHECK_THAT(error_of(image(R"({"w":3})", 0)), Contains("not a JSON object"));
    CHECK_THAT(error_of(image(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", 8)),
               Contains("does not fit in 64 bits"));
    CHECK_THAT(error_of(image(R"({"__metadata__":{"a":1}})", 0)), Contains("__metadata__"));
    CHECK_THAT(error_of(image(R"({"__metadata__":[1]})", 0)), Contains("__metadata__"));
    CHECK_THAT(error_of(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12)),
               Contains("overlaps"));
    CHECK_THAT(error_of(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 12)),
               Contains("belong to no tensor"));
    CHECK_THAT(error_of(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8)),
               Contains("'a' twice"));
    CHECK_THAT(error_of(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4.5]}})", 4)), Contains("natural"));
}

TEST_CASE("missing tensors, wrong shapes and non-float dtypes name the tensor and sizes", "[safetensors]") {
    const std::vector<float> a = {1, 2, 3, 4, 5, 6};
    const std::vector<st::TensorToWrite> ts = {{"enc.w", {2, 3}, a, st::DType::F32}};
    const auto bytes = st::serialize(ts);  // from_memory does not copy: the buffer must outlive the File
    const auto f = st::File::from_memory(bytes);
    CHECK_THROWS_WITH(f.tensor("dec.w"), Contains("'dec.w' is missing"));
    CHECK_THROWS_AS(f.to_float("dec.w"), kvcache::FormatError);
    CHECK_THROWS_AS(f.load("enc.w", {3, 2}), kvcache::ShapeError);
    CHECK_THROWS_WITH(f.load("enc.w", {3, 2}), Contains("'enc.w'") && Contains("[2, 3]") && Contains("expected [3, 2]"));
    CHECK_THROWS_AS(f.load("enc.w", {6}), kvcache::ShapeError);

    const std::string header = R"({"ids":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})";
    const auto int_image = image(header, 8);
    const auto g = st::File::from_memory(int_image);
    CHECK(g.tensor("ids").dtype == st::DType::I32);
    CHECK_THROWS_WITH(g.to_float("ids"), Contains("'ids'") && Contains("I32"));
}

TEST_CASE("serialize rejects inconsistent input", "[safetensors]") {
    const std::vector<float> a = {1, 2, 3};
    const std::vector<st::TensorToWrite> wrong_size = {{"a", {2, 2}, a, st::DType::F32}};
    CHECK_THROWS_AS(st::serialize(wrong_size), kvcache::ShapeError);
    const std::vector<st::TensorToWrite> dup = {{"a", {3}, a, st::DType::F32}, {"a", {3}, a, st::DType::F32}};
    CHECK_THROWS_AS(st::serialize(dup), kvcache::ConfigError);
    const std::vector<st::TensorToWrite> ints = {{"a", {3}, a, st::DType::I32}};
    CHECK_THROWS_AS(st::serialize(ints), kvcache::ConfigError);
}

TEST_CASE("dtype names and sizes", "[safetensors]") {
    CHECK(st::dtype_name(st::DType::BF16) == "BF16");
    CHECK(st::dtype_size(st::DType::F64) == 8);
    CHECK(st::dtype_size(st::DType::F16) == 2);
    CHECK(st::parse_dtype("U8") == st::DType::U8);
    CHECK_THROWS_AS(st::parse_dtype("f32"), kvcache::FormatError);
}

TEST_CASE("save and open a file; open reports I/O and format errors with the path", "[safetensors]") {
    const std::vector<float> a = {1, 2, 3, 4};
    const std::vector<st::TensorToWrite> ts = {{"t", {4}, a, st::DType::F32}};
    const auto path = temp_file("ok.safetensors");
    st::save(path, ts);
    {
        const auto f = st::File::open(path);
        CHECK(f.to_float("t") == a);
    }
    // truncate the file: the tensor's bytes now run past the end
    std::filesystem::resize_file(path, std::filesystem::file_size(path) - 4);
    CHECK_THROWS_WITH(st::File::open(path), Contains("'t'") && Contains(path.string()));
    std::filesystem::resize_file(path, 0);
    CHECK_THROWS_AS(st::File::open(path), kvcache::FormatError);
    std::filesystem::remove(path);
    CHECK_THROWS_AS(st::File::open(path), kvcache::IoError);
    CHECK_THROWS_AS(st::File::open(std::filesystem::temp_directory_path()), kvcache::IoError);
    CHECK_THROWS_AS(st::save(std::filesystem::path("/nonexistent-dir/x.safetensors"), ts), kvcache::IoError);
}

TEST_CASE("safetensors: a file truncated while its tensors are read is a FormatError, not SIGBUS", "[safetensors][issue9]") {
    const auto fixtures = std::filesystem::path(KVCACHE_FIXTURES_DIR) / "seq2seq";
    const auto path = std::filesystem::temp_directory_path() /
                      ("kvcache_safetensors_truncated_" + std::to_string(::getpid()) + ".safetensors");
    std::filesystem::copy_file(fixtures / "pre_norm_relu.safetensors", path,
                               std::filesystem::copy_options::overwrite_existing);
    const auto size = std::filesystem::file_size(path);
    const auto file = kvcache::safetensors::File::open(path);
    std::filesystem::resize_file(path, 0);
    const std::string changed = "changed while mapped (now 0 bytes, was " + std::to_string(size) + ")";
    const auto config = kvcache::EncoderDecoderConfig::load(fixtures / "pre_norm_relu.config.json");
    CHECK_THROWS_AS(kvcache::EncoderDecoderWeights::from_safetensors(config, file), kvcache::FormatError);
    CHECK_THROWS_WITH(kvcache::EncoderDecoderWeights::from_safetensors(config, file), Catch::Contains(changed));
    CHECK_THROWS_WITH(file.check_unchanged(), Catch::Contains(changed));
    std::filesystem::remove(path);
}
