// Tests of the int8 product (MatmulPrecision::int8): the vector kernel gives the scalar kernel's bits, the
// result does not depend on the batch or the thread count, and it stays close to the exact product.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "kvcache/detail/thread_pool.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/error.hpp"
#include "kvcache/model/matmul.hpp"
#include "matmul_test_support.hpp"

using namespace kvcache;
using kvcache::test::random_floats;

namespace {

/// Random blocks with sane fp16 scales; every code value occurs.
std::vector<std::byte> random_blocks(WeightFormat f, std::size_t rows, std::size_t cols, std::uint64_t seed) {
    std::mt19937_64 g(seed);
    const std::size_t bb = f == WeightFormat::Q8_0 ? 34 : 20;
    std::vector<std::byte> out(rows * cols / 32 * bb);
    for (std::size_t b = 0; b < rows * cols / 32; ++b) {
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

WeightMatrix random_matrix(WeightFormat f, std::size_t rows, std::size_t cols, std::uint64_t seed) {
    return WeightMatrix::from_blocks(f, rows, cols, random_blocks(f, rows, cols, seed));
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("int8 matmul: the vector kernel gives the scalar kernel's bits") {
    // rows not a multiple of the 8-row group or the 16-row task; n spans a full 8-token pass and a partial one
    const std::size_t rows = 37, cols = 160, n = 11;
    auto x = random_floats(n * cols, 5, 3.0f);
    x[7] = 0.0f;
    for (std::size_t j = 32; j < 64; ++j) x[j] = 0.0f;  // an all-zero block: scale 0
    for (WeightFormat f : {WeightFormat::Q4_1, WeightFormat::Q8_0}) {
        CAPTURE(weight_format_name(f));
        const WeightMatrix w = random_matrix(f, rows, cols, 3);
        std::vector<float> vec(n * rows), scalar(n * rows);
        matmul(w, x.data(), n, vec.data(), 2, MatmulPrecision::int8);
        matmul_int8_scalar(w, x.data(), n, scalar.data());
        CHECK(same_bits(vec, scalar));
    }
}

/// The int8 product as its definition reads (matmul.hpp, matmul_int8.cpp), written out here on its own: the
/// library's vector rounding of the activations must give these bits, as the portable build's loop does.
std::vector<float> int8_by_definition(const WeightMatrix& w, const std::vector<float>& x, std::size_t n) {
    const bool q4_1 = w.format() == WeightFormat::Q4_1;
    const std::size_t bb = q4_1 ? 20 : 34, cols = w.cols();
    const auto half = [](const std::byte* p) {
        std::uint16_t h;
        std::memcpy(&h, p, 2);
        return fp16::to_float(h);
    };
    std::vector<float> y(n * w.rows());
    for (std::size_t t = 0; t < n; ++t) {
        for (std::size_t r = 0; r < w.rows(); ++r) {
            float acc = 0.0f;
            for (std::size_t b = 0; b < cols / 32; ++b) {
                const float* xb = x.data() + t * cols + b * 32;
                float amax = 0.0f;
                for (std::size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
                // the block's sum in its fixed tree order: lanes i and i + 8, 16, 24, then halving
                float lanes[8];
                for (std::size_t i = 0; i < 8; ++i) lanes[i] = (xb[i] + xb[8 + i]) + (xb[16 + i] + xb[24 + i]);
                for (std::size_t i = 0; i < 4; ++i) lanes[i] += lanes[4 + i];
                for (std::size_t i = 0; i < 2; ++i) lanes[i] += lanes[2 + i];
                const float sum = lanes[0] + lanes[1];
                const float scale = amax / 127.0f;
                const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
                const std::byte* blk = w.row_data(r) + b * bb;
                std::int32_t isum = 0;
                for (std::size_t j = 0; j < 32; ++j) {
                    const int q = static_cast<int>(std::clamp(std::nearbyint(xb[j] * inv), -127.0f, 127.0f));
                    const auto byte = static_cast<unsigned>(blk[4 + (j & 15)]);
                    const int code = q4_1 ? int(j < 16 ? (byte & 0x0Fu) : (byte >> 4))
                                          : int(static_cast<std::int8_t>(blk[2 + j]));
                    isum += code * q;
                }
                acc = std::fma(half(blk) * scale, static_cast<float>(isum), acc);
                if (q4_1) acc = std::fma(half(blk + 2), sum, acc);
            }
            y[t * w.rows() + r] = acc;
        }
    }
    return y;
}

TEST_CASE("int8 matmul: the library's rounding and steps give the definition's bits") {
    const std::size_t rows = 19, cols = 96, n = 5;
    auto x = random_floats(n * cols, 31, 2.0f);
    // a block whose scale is exactly 1, so its halves are ties (to even: 2.5 -> 2, -3.5 -> -4, 0.5 -> 0)
    x[32] = 127.0f;
    x[33] = 2.5f;
    x[34] = -3.5f;
    x[35] = 0.5f;
    for (std::size_t j = 64; j < 96; ++j) x[j] = 0.0f;  // an all-zero block
    for (WeightFormat f : {WeightFormat::Q4_1, WeightFormat::Q8_0}) {
        CAPTURE(weight_format_name(f));
        const WeightMatrix w = random_matrix(f, rows, cols, 23);
        std::vector<float> got(n * rows);
        matmul(w, x.data(), n, got.data(), 1, MatmulPrecision::int8);
        CHECK(same_bits(got, int8_by_definition(w, x, n)));
    }
}

TEST_CASE("int8 matmul: bitwise the same rows for any batch size and thread count") {
    const std::size_t rows = 1000, cols = 512, n = 11;  // big enough for the pool to split the rows
    auto x = random_floats(n * cols, 21);
    for (WeightFormat f : {WeightFormat::Q4_1, WeightFormat::Q8_0}) {
        CAPTURE(weight_format_name(f));
        const WeightMatrix w = random_matrix(f, rows, cols, 5);
        REQUIRE(w.bytes() >= detail::kMinParallelBytes);
        std::vector<float> batched(n * rows);
        matmul(w, x.data(), n, batched.data(), 1, MatmulPrecision::int8);
        for (int threads : {0, 2, 3}) {
            for (std::size_t t = 0; t < n; t += 3) {
                std::vector<float> single(rows);
                matmul(w, x.data() + t * cols, 1, single.data(), threads, MatmulPrecision::int8);
                CHECK(std::memcmp(single.data(), batched.data() + t * rows, rows * sizeof(float)) == 0);
            }
            std::vector<float> split(n * rows);
            matmul(w, x.data(), 3, split.data(), threads, MatmulPrecision::int8);
            matmul(w, x.data() + 3 * cols, 8, split.data() + 3 * rows, threads, MatmulPrecision::int8);
            CHECK(same_bits(split, batched));
        }
    }
}

TEST_CASE("int8 matmul: close to the exact product; F32 weights take the f32 path") {
    const std::size_t rows = 64, cols = 512, n = 3;
    auto x = random_floats(n * cols, 9);
    for (WeightFormat f : {WeightFormat::Q4_1, WeightFormat::Q8_0}) {
        CAPTURE(weight_format_name(f));
        const WeightMatrix w = random_matrix(f, rows, cols, 7);
        std::vector<float> got(n * rows), ref(n * rows), f32(n * rows);
        matmul(w, x.data(), n, got.data(), 1, MatmulPrecision::int8);
        matmul(w, x.data(), n, f32.data(), 1);
        matmul_reference(w, x.data(), n, ref.data());
        // Rounding moves each activation by at most half a step, max|x_block| / 254, so the error of output
        // r is at most sum_b max|x_b| / 254 * sum_{j in b} |w_rj| (plus float rounding), and far below that
        // on average, since the errors have random signs.
        std::vector<float> wrow(cols);
        double mean_ratio = 0;
        for (std::size_t r = 0; r < rows; ++r) {
            w.dequantize_row(r, wrow.data());
            for (std::size_t t = 0; t < n; ++t) {
                double bound = 1e-4;
                for (std::size_t b = 0; b < cols / 32; ++b) {
                    double amax = 0, wsum = 0;
                    for (std::size_t j = b * 32; j < b * 32 + 32; ++j) {
                        amax = std::max(amax, double(std::fabs(x[t * cols + j])));
                        wsum += std::fabs(double(wrow[j]));
                    }
                    bound += amax / 254 * wsum;
                }
                const double err = std::fabs(double(got[t * rows + r]) - double(ref[t * rows + r]));
                CHECK(err <= bound);
                mean_ratio += err / bound / double(rows * n);
            }
        }
        CHECK(mean_ratio < 0.1);
        CHECK_FALSE(same_bits(got, f32));  // it really is another path
    }
    const auto wf = WeightMatrix::from_floats(rows, cols, random_floats(rows * cols, 4));
    std::vector<float> a(n * rows), b(n * rows);
    matmul(wf, x.data(), n, a.data(), 1, MatmulPrecision::int8);
    matmul(wf, x.data(), n, b.data(), 1, MatmulPrecision::f32);
    CHECK(same_bits(a, b));
    CHECK_THROWS_AS(matmul_int8_scalar(wf, x.data(), n, a.data()), ShapeError);
}

TEST_CASE("int8 matmul: Q8_0 codes of -128 and 127 meet activations of both signs exactly") {
    // The vector kernel multiplies |w| by x carrying w's sign; -128 is the one code whose magnitude needs 8 bits.
    const std::size_t rows = 9, cols = 64, n = 2;
    std::vector<std::byte> blocks(rows * cols / 32 * 34);
    for (std::size_t b = 0; b < rows * cols / 32; ++b) {
        const std::uint16_t d = fp16::from_float(0.5f);
        std::memcpy(blocks.data() + b * 34, &d, 2);
        for (std::size_t j = 0; j < 32; ++j) {
            const int code = (j + b) % 3 == 0 ? -128 : (j % 2 ? 127 : -1);
            blocks[b * 34 + 2 + j] = static_cast<std::byte>(static_cast<std::uint8_t>(code));
        }
    }
    const auto w = WeightMatrix::from_blocks(WeightFormat::Q8_0, rows, cols, blocks);
    std::vector<float> x(n * cols);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = (i % 5 == 0 ? -1.0f : 1.0f) * float(i % 7 + 1);
    std::vector<float> vec(n * rows), scalar(n * rows), ref(n * rows);
    matmul(w, x.data(), n, vec.data(), 1, MatmulPrecision::int8);
    matmul_int8_scalar(w, x.data(), n, scalar.data());
    matmul_reference(w, x.data(), n, ref.data());
    CHECK(same_bits(vec, scalar));
    for (std::size_t i = 0; i < ref.size(); ++i) CHECK(vec[i] == Approx(ref[i]).epsilon(0.02).margin(1.0));
}

TEST_CASE("int8 matmul: threads asking for a matrix's interleaved copy at once build it once, correctly") {
    const std::size_t rows = 200, cols = 256, n = 3;
    auto x = random_floats(n * cols, 13);
    for (WeightFormat f : {WeightFormat::Q4_1, WeightFormat::Q8_0}) {
        CAPTURE(weight_format_name(f));
        const WeightMatrix w = random_matrix(f, rows, cols, 17);
        std::vector<float> expected(n * rows);
        matmul_int8_scalar(w, x.data(), n, expected.data());
        std::vector<std::vector<float>> got(4, std::vector<float>(n * rows));
        std::vector<std::thread> threads;
        for (auto& out : got) {
            threads.emplace_back([&] { matmul(w, x.data(), n, out.data(), 1, MatmulPrecision::int8); });
        }
        for (auto& t : threads) t.join();
        for (const auto& out : got) CHECK(same_bits(out, expected));
    }
}

TEST_CASE("matmul precision names round-trip; an unknown name is a ConfigError") {
    CHECK(parse_matmul_precision(matmul_precision_name(MatmulPrecision::f32)) == MatmulPrecision::f32);
    CHECK(parse_matmul_precision(matmul_precision_name(MatmulPrecision::int8)) == MatmulPrecision::int8);
    CHECK_THROWS_AS(parse_matmul_precision("int4"), ConfigError);
}
