// GGUF tensor types: block sizes and names against ggml's table, and dequantisation bit for bit against gguf-py,
// including the rows and types it must refuse.
#include "gguf_test_support.hpp"

#include "kvcache/model/matmul.hpp"

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

// ---- a GGUF tensor as a weight matrix --------------------------------------------------------------------------

TEST_CASE("WeightMatrix::from_gguf keeps Q8_0/Q4_1 as stored or dequantises, as asked", "[gguf][dequantize]") {
    for (const char* name : {"Q8_0", "Q4_1", "Q4_0", "F16"}) {
        INFO("type " << name);
        const json j = read_json(fixture_dir() / (std::string("dequant_") + name + ".json"));
        const std::vector<std::byte> raw = from_hex(j.at("bytes_hex").get<std::string>());
        const auto n = j.at("n_elements").get<std::size_t>();
        kvcache::gguf::TensorInfo t;
        t.name = name;
        t.type = static_cast<TensorType>(j.at("type_id").get<std::uint32_t>());
        t.shape = {64, n / 64};  // ggml order: {cols, rows}
        t.data = raw.data();
        t.n_elements = n;
        t.n_bytes = raw.size();
        const auto golden = expected_bits(j);

        const bool kernel_format = t.type == TensorType::Q8_0 || t.type == TensorType::Q4_1;
        const auto stored = kvcache::WeightMatrix::from_gguf(t, kvcache::WeightStorage::as_stored);
        const auto floats = kvcache::WeightMatrix::from_gguf(t, kvcache::WeightStorage::f32);
        CHECK(floats.format() == kvcache::WeightFormat::F32);
        CHECK((stored.format() == kvcache::WeightFormat::F32) == !kernel_format);
        CHECK(stored.bytes() == (kernel_format ? raw.size() : n * sizeof(float)));
        for (const auto* w : {&stored, &floats}) {
            REQUIRE(w->rows() == n / 64);
            REQUIRE(w->cols() == 64);
            std::vector<float> values(n);
            for (std::size_t r = 0; r < w->rows(); ++r) w->dequantize_row(r, values.data() + r * 64);
            CHECK(count_mismatches(golden, values.data(), n, std::string(name) + " rows") == 0);
        }
    }
}

TEST_CASE("WeightMatrix::from_gguf refuses a tensor that is not 2-D", "[gguf][dequantize][errors]") {
    std::vector<float> data(64, 1.0f);
    kvcache::gguf::TensorInfo t;
    t.name = "bias";
    t.type = TensorType::F32;
    t.shape = {64};
    t.data = reinterpret_cast<const std::byte*>(data.data());
    t.n_elements = 64;
    t.n_bytes = 64 * sizeof(float);
    CHECK_THROWS_AS(kvcache::WeightMatrix::from_gguf(t, kvcache::WeightStorage::f32), kvcache::ShapeError);
    CHECK_THROWS_WITH(kvcache::WeightMatrix::from_gguf(t, kvcache::WeightStorage::as_stored), Catch::Contains("bias"));
}
