// Tests of the weight matrices and matmul kernels: against the scalar reference, and batch/thread invariance.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kvcache/detail/thread_pool.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/error.hpp"
#include "kvcache/model/matmul.hpp"
#include "matmul_test_support.hpp"

using namespace kvcache;
using kvcache::test::random_floats;

namespace {

/// Random blocks of a quantised format with sane fp16 scales.
std::vector<std::byte> random_blocks(WeightFormat f, std::size_t rows, std::size_t cols, std::uint64_t seed) {
    std::mt19937_64 g(seed);
    const std::size_t nb = rows * cols / 32;
    const std::size_t bb = f == WeightFormat::Q8_0 ? 34 : 20;
    std::vector<std::byte> out(nb * bb);
    for (std::size_t b = 0; b < nb; ++b) {
        std::byte* blk = out.data() + b * bb;
        const std::uint16_t d = fp16::from_float(0.01f + float(g() % 100) * 1e-4f);
        const std::uint16_t m = fp16::from_float(-0.05f + float(g() % 100) * 1e-3f);
        std::memcpy(blk, &d, 2);
        std::size_t payload = 2;
        if (f == WeightFormat::Q4_1) {
            std::memcpy(blk + 2, &m, 2);
            payload = 4;
        }
        for (std::size_t j = payload; j < bb; ++j) blk[j] = static_cast<std::byte>(g() & 0xFF);
    }
    return out;
}

}  // namespace

TEST_CASE("quantised rows decode as ggml defines them") {
    // Q4_1 block: d = 0.5, m = -1, byte j = (hi << 4) | lo with lo = j % 16, hi = 15 - j % 16.
    std::vector<std::byte> q4(20);
    const std::uint16_t d = fp16::from_float(0.5f), m = fp16::from_float(-1.0f);
    std::memcpy(q4.data(), &d, 2);
    std::memcpy(q4.data() + 2, &m, 2);
    for (int j = 0; j < 16; ++j) q4[4 + j] = static_cast<std::byte>(((15 - j) << 4) | j);
    auto w = WeightMatrix::from_blocks(WeightFormat::Q4_1, 1, 32, q4);
    std::vector<float> row(32);
    w.dequantize_row(0, row.data());
    for (int j = 0; j < 16; ++j) {
        CHECK(row[j] == 0.5f * j - 1.0f);
        CHECK(row[j + 16] == 0.5f * (15 - j) - 1.0f);
    }
    // Q8_0 block: d = 0.25, q_j = j - 16.
    std::vector<std::byte> q8(34);
    const std::uint16_t d8 = fp16::from_float(0.25f);
    std::memcpy(q8.data(), &d8, 2);
    for (int j = 0; j < 32; ++j) q8[2 + j] = static_cast<std::byte>(static_cast<std::int8_t>(j - 16));
    auto w8 = WeightMatrix::from_blocks(WeightFormat::Q8_0, 1, 32, q8);
    w8.dequantize_row(0, row.data());
    for (int j = 0; j < 32; ++j) CHECK(row[j] == 0.25f * (j - 16));
    CHECK_THROWS_AS(w8.dequantize_row(1, row.data()), IndexError);
}

TEST_CASE("matmul agrees with the scalar reference for every format") {
    const std::size_t rows = 37, cols = 96, n = 7;  // rows not a multiple of the 16-row task, n not of 4
    auto x = random_floats(n * cols, 5);
    for (WeightFormat f : {WeightFormat::F32, WeightFormat::Q8_0, WeightFormat::Q4_1}) {
        CAPTURE(weight_format_name(f));
        WeightMatrix w = f == WeightFormat::F32
                             ? WeightMatrix::from_floats(rows, cols, random_floats(rows * cols, 3))
                             : WeightMatrix::from_blocks(f, rows, cols, random_blocks(f, rows, cols, 3));
        std::vector<float> y(n * rows), ref(n * rows);
        matmul(w, x.data(), n, y.data(), 2);
        matmul_reference(w, x.data(), n, ref.data());
        for (std::size_t i = 0; i < y.size(); ++i) {
            // float accumulation over 96 terms of |w x| <= ~1: error well under 1e-4 absolute
            CHECK(y[i] == Approx(ref[i]).margin(1e-4));
        }
    }
    SECTION("F32 rows whose length is not a multiple of 16 use the scalar tail") {
        auto w = WeightMatrix::from_floats(5, 21, random_floats(5 * 21, 8));
        auto x2 = random_floats(3 * 21, 9);
        std::vector<float> y(15), ref(15);
        matmul(w, x2.data(), 3, y.data(), 1);
        matmul_reference(w, x2.data(), 3, ref.data());
        for (std::size_t i = 0; i < y.size(); ++i) CHECK(y[i] == Approx(ref[i]).margin(1e-5));
    }
}

TEST_CASE("matmul gives bitwise the same rows for any batch size and thread count") {
    const std::size_t rows = 70, cols = 128, n = 11;
    auto x = random_floats(n * cols, 11);
    for (WeightFormat f : {WeightFormat::F32, WeightFormat::Q8_0, WeightFormat::Q4_1}) {
        CAPTURE(weight_format_name(f));
        WeightMatrix w = f == WeightFormat::F32
                             ? WeightMatrix::from_floats(rows, cols, random_floats(rows * cols, 4))
                             : WeightMatrix::from_blocks(f, rows, cols, random_blocks(f, rows, cols, 4));
        std::vector<float> batched(n * rows);
        matmul(w, x.data(), n, batched.data(), 2);
        for (int threads : {1, 2, 3}) {
            for (std::size_t t = 0; t < n; ++t) {
                std::vector<float> single(rows);
                matmul(w, x.data() + t * cols, 1, single.data(), threads);
                CHECK(std::memcmp(single.data(), batched.data() + t * rows, rows * sizeof(float)) == 0);
            }
        }
        // and a different split of the batch (3 + 8)
        std::vector<float> split(n * rows);
        matmul(w, x.data(), 3, split.data(), 1);
        matmul(w, x.data() + 3 * cols, 8, split.data() + 3 * rows, 2);
        CHECK(std::memcmp(split.data(), batched.data(), split.size() * sizeof(float)) == 0);
    }
}

TEST_CASE("matmul on matrices big enough for the thread pool: same bits for any thread count and batch") {
    // Above detail::kMinParallelBytes, so threads > 1 really splits the rows between the caller and a helper.
    const std::size_t rows = 1000, cols = 512, n = 6;
    auto x = random_floats(n * cols, 21);
    for (WeightFormat f : {WeightFormat::F32, WeightFormat::Q8_0, WeightFormat::Q4_1}) {
        CAPTURE(weight_format_name(f));
        WeightMatrix w = f == WeightFormat::F32
                             ? WeightMatrix::from_floats(rows, cols, random_floats(rows * cols, 5))
                             : WeightMatrix::from_blocks(f, rows, cols, random_blocks(f, rows, cols, 5));
        REQUIRE(w.bytes() >= detail::kMinParallelBytes);
        std::vector<float> one_thread(n * rows), ref(n * rows);
        matmul(w, x.data(), n, one_thread.data(), 1);
        matmul_reference(w, x.data(), n, ref.data());
        for (std::size_t i = 0; i < ref.size(); ++i) REQUIRE(one_thread[i] == Approx(ref[i]).margin(1e-4));
        for (int threads : {0, 2, 3}) {
            for (int repeat = 0; repeat < 5; ++repeat) {  // different timings, different splits of the rows
                std::vector<float> got(n * rows);
                matmul(w, x.data(), n, got.data(), threads);
                CHECK(std::memcmp(got.data(), one_thread.data(), got.size() * sizeof(float)) == 0);
                std::vector<float> single(rows);
                matmul(w, x.data() + 5 * cols, 1, single.data(), threads);
                CHECK(std::memcmp(single.data(), one_thread.data() + 5 * rows, rows * sizeof(float)) == 0);
            }
        }
    }
}

TEST_CASE("weight matrices reject bad shapes") {
    CHECK_THROWS_AS(WeightMatrix::from_floats(2, 3, std::vector<float>(5)), ShapeError);
    CHECK_THROWS_AS(WeightMatrix::from_blocks(WeightFormat::Q4_1, 1, 33, std::vector<std::byte>(20)), ShapeError);
    CHECK_THROWS_AS(WeightMatrix::from_blocks(WeightFormat::Q8_0, 2, 32, std::vector<std::byte>(34)), ShapeError);
    auto w = WeightMatrix::from_blocks(WeightFormat::Q8_0, 2, 64, std::vector<std::byte>(2 * 2 * 34));
    CHECK(w.rows() == 2);
    CHECK(w.cols() == 64);
    CHECK(w.bytes() == 136);
    CHECK(w.row_bytes() == 68);
    CHECK(weight_format_name(WeightFormat::Q4_1) == "Q4_1");
}

TEST_CASE("matmul_f32 over a bare array is matmul on the same floats, to the bit") {
    // Odd widths exercise the 16-lane body, the scalar tail and rows shorter than one vector.
    for (std::size_t cols : {1u, 8u, 16u, 37u, 100u}) {
        const std::size_t rows = 23, n = 9;
        CAPTURE(cols);
        const auto wf = random_floats(rows * cols, cols);
        const auto x = random_floats(n * cols, cols + 1);
        const WeightMatrix w = WeightMatrix::from_floats(rows, cols, wf);
        std::vector<float> expected(n * rows), got(n * rows), ref(n * rows);
        matmul(w, x.data(), n, expected.data(), 2);
        for (int threads : {1, 2}) {
            matmul_f32(wf.data(), rows, cols, x.data(), n, got.data(), threads);
            CHECK(std::memcmp(got.data(), expected.data(), got.size() * sizeof(float)) == 0);
        }
        matmul_reference(w, x.data(), n, ref.data());
        for (std::size_t i = 0; i < ref.size(); ++i) CHECK(got[i] == Approx(ref[i]).margin(1e-5));
        // A stretch of rows (how the encoder-decoder splits a fused q/k/v projection) is those rows' results.
        std::vector<float> part(n * 5);
        matmul_f32(wf.data() + 7 * cols, 5, cols, x.data(), n, part.data(), 2);
        for (std::size_t t = 0; t < n; ++t) {
            CHECK(std::memcmp(part.data() + t * 5, expected.data() + t * rows + 7, 5 * sizeof(float)) == 0);
        }
    }
    std::vector<float> untouched(4, 1.5f);
    matmul_f32(nullptr, 0, 8, nullptr, 0, untouched.data());  // nothing to do, nothing written
    CHECK(untouched[0] == 1.5f);
}

TEST_CASE("matmul_shared_input gives each product matmul's bits, in either precision, at any thread count") {
    // Mixed formats and row counts (not multiples of a task, one below a kernel group, one empty), a shared input
    // big enough that threads > 1 splits the tasks between the caller and a helper, and batches of 1 to 11 tokens.
    const std::size_t cols = 256;
    std::vector<WeightMatrix> ws;
    ws.push_back(WeightMatrix::from_blocks(WeightFormat::Q4_1, 1000, cols, random_blocks(WeightFormat::Q4_1, 1000, cols, 3)));
    ws.push_back(WeightMatrix::from_blocks(WeightFormat::Q8_0, 37, cols, random_blocks(WeightFormat::Q8_0, 37, cols, 4)));
    ws.push_back(WeightMatrix::from_floats(5, cols, random_floats(5 * cols, 6)));
    ws.push_back(WeightMatrix::from_blocks(WeightFormat::Q4_1, 0, cols, {}));
    ws.push_back(WeightMatrix::from_blocks(WeightFormat::Q4_1, 333, cols, random_blocks(WeightFormat::Q4_1, 333, cols, 7)));
    for (MatmulPrecision precision : {MatmulPrecision::f32, MatmulPrecision::int8}) {
        for (std::size_t n : {1u, 8u, 11u}) {
            CAPTURE(matmul_precision_name(precision), n);
            const auto x = random_floats(n * cols, 40 + n);
            std::vector<std::vector<float>> alone(ws.size());
            for (std::size_t i = 0; i < ws.size(); ++i) {
                alone[i].assign(n * ws[i].rows(), 0.0f);
                matmul(ws[i], x.data(), n, alone[i].data(), 1, precision);
            }
            for (int threads : {1, 2, 3}) {
                for (int repeat = 0; repeat < 3; ++repeat) {  // different timings, different splits of the tasks
                    std::vector<std::vector<float>> got(ws.size());
                    std::vector<MatmulOutput> outputs;
                    for (std::size_t i = 0; i < ws.size(); ++i) {
                        got[i].assign(n * ws[i].rows() + 1, -7.0f);  // one guard value past the end
                        outputs.push_back({&ws[i], got[i].data()});
                    }
                    matmul_shared_input(outputs, x.data(), n, threads, precision);
                    for (std::size_t i = 0; i < ws.size(); ++i) {
                        CAPTURE(i, threads);
                        // (the empty matrix's result is empty: memcmp may not be handed its null data())
                        if (!alone[i].empty()) {
                            CHECK(std::memcmp(got[i].data(), alone[i].data(), alone[i].size() * sizeof(float)) == 0);
                        }
                        CHECK(got[i].back() == -7.0f);
                    }
                }
            }
        }
    }
}

TEST_CASE("matmul_shared_input refuses a missing matrix or buffer and mismatched columns, writing nothing") {
    const auto a = WeightMatrix::from_floats(4, 32, random_floats(4 * 32, 1));
    const auto b = WeightMatrix::from_floats(4, 64, random_floats(4 * 64, 2));
    const auto x = random_floats(64, 3);
    std::vector<float> ya(4, 9.0f), yb(4, 9.0f);
    const MatmulOutput mismatched[] = {{&a, ya.data()}, {&b, yb.data()}};
    CHECK_THROWS_AS(matmul_shared_input(mismatched, x.data(), 1), ShapeError);
    const MatmulOutput no_matrix[] = {{&a, ya.data()}, {nullptr, yb.data()}};
    CHECK_THROWS_AS(matmul_shared_input(no_matrix, x.data(), 1), ShapeError);
    const MatmulOutput no_buffer[] = {{&a, ya.data()}, {&a, nullptr}};
    CHECK_THROWS_AS(matmul_shared_input(no_buffer, x.data(), 1), ShapeError);
    CHECK(ya == std::vector<float>(4, 9.0f));
    CHECK(yb == std::vector<float>(4, 9.0f));
    matmul_shared_input({}, x.data(), 1);  // nothing to do
    // Nine products: more than fit without an allocation.
    std::vector<std::vector<float>> ys(9, std::vector<float>(4));
    std::vector<MatmulOutput> many;
    for (auto& y : ys) many.push_back({&a, y.data()});
    matmul_shared_input(many, x.data(), 1, 2);
    std::vector<float> expected(4);
    matmul(a, x.data(), 1, expected.data());
    for (const auto& y : ys) CHECK(std::memcmp(y.data(), expected.data(), 4 * sizeof(float)) == 0);
}
