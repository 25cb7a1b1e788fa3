// Dequantisation of GGUF tensor blocks to float. Block layouts follow ggml's definitions; each function
// turns one block into block_elements(type) floats with ggml's arithmetic order, so results match the
// reference dequantisers exactly or within one rounding of a fused multiply-add.
#include <cstring>
#include <string>

#include "kvcache/element_types.hpp"
#include "kvcache/model/gguf.hpp"

namespace kvcache::gguf {
namespace {

constexpr std::size_t kQK = 32;    // elements per block of the simple quants
constexpr std::size_t kQKK = 256;  // elements per super-block of the K-quants

float half(const std::uint8_t* p) {
    std::uint16_t bits;
    std::memcpy(&bits, p, 2);
    return fp16::to_float(bits);
}

// Q4_0: fp16 d, 16 bytes of nibbles; element j = (nibble - 8) * d, low nibbles first half, high second.
void block_q4_0(const std::uint8_t* b, float* y) {
    const float d = half(b);
    const std::uint8_t* qs = b + 2;
    for (std::size_t j = 0; j < kQK / 2; ++j) {
        y[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
        y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
    }
}

// Q4_1: fp16 d, fp16 m, 16 bytes of nibbles; element = nibble * d + m.
void block_q4_1(const std::uint8_t* b, float* y) {
    const float d = half(b);
    const float m = half(b + 2);
    const std::uint8_t* qs = b + 4;
    for (std::size_t j = 0; j < kQK / 2; ++j) {
        y[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
        y[j + kQK / 2] = static_cast<float>(qs[j] >> 4) * d + m;
    }
}

// Q5_0: fp16 d, 32 high bits, 16 bytes of nibbles; element = (5-bit value - 16) * d.
void block_q5_0(const std::uint8_t* b, float* y) {
    const float d = half(b);
    std::uint32_t qh;
    std::memcpy(&qh, b + 2, 4);
    const std::uint8_t* qs = b + 6;
    for (std::size_t j = 0; j < kQK / 2; ++j) {
        const std::uint32_t h0 = ((qh >> j) << 4) & 0x10u;
        const std::uint32_t h1 = (qh >> (j + 12)) & 0x10u;
        y[j] = static_cast<float>(static_cast<int>((qs[j] & 0x0Fu) | h0) - 16) * d;
        y[j + kQK / 2] = static_cast<float>(static_cast<int>((qs[j] >> 4) | h1) - 16) * d;
    }
}

// Q5_1: fp16 d, fp16 m, 32 high bits, 16 bytes of nibbles; element = 5-bit value * d + m.
void block_q5_1(const std::uint8_t* b, float* y) {
    const float d = half(b);
    const float m = half(b + 2);
    std::uint32_t qh;
    std::memcpy(&qh, b + 4, 4);
    const std::uint8_t* qs = b + 8;
    for (std::size_t j = 0; j < kQK / 2; ++j) {
        const std::uint32_t h0 = ((qh >> j) << 4) & 0x10u;
        const std::uint32_t h1 = (qh >> (j + 12)) & 0x10u;
        y[j] = static_cast<float>((qs[j] & 0x0Fu) | h0) * d + m;
        y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) | h1) * d + m;
    }
}

// Q8_0: fp16 d, 32 int8; element = q * d.
void block_q8_0(const std::uint8_t* b, float* y) {
    const float d = half(b);
    const auto* qs = reinterpret_cast<const std::int8_t*>(b + 2);
    for (std::size_t j = 0; j < kQK; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

// The 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block, packed into 12 bytes.
void scale_min_k4(std::size_t j, const std::uint8_t* q, std::uint8_t& sc, std::uint8_t& m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = static_cast<std::uint8_t>((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
        m = static_cast<std::uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

// Q4_K: fp16 d, fp16 dmin, 12 bytes of scales/mins, 128 bytes of nibbles; 8 sub-blocks of 32.
void block_q4_k(const std::uint8_t* b, float* y) {
    const float d = half(b);
    const float dmin = half(b + 2);
    const std::uint8_t* scales = b + 4;
    const std::uint8_t* q = b + 16;
    std::size_t is = 0;
    for (std::size_t j = 0; j < kQKK; j += 64) {
        std::uint8_t sc, m;
        scale_min_k4(is + 0, scales, sc, m);
        const float d1 = d * sc, m1 = dmin * m;
        scale_min_k4(is + 1, scales, sc, m);
        const float d2 = d * sc, m2 = dmin * m;
        for (std::size_t l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0x0F) - m1;
        for (std::size_t l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
        q += 32;
        is += 2;
    }
}

// Q5_K: fp16 d, fp16 dmin, 12 bytes of scales/mins, 32 bytes of high bits, 128 bytes of nibbles.
void block_q5_k(const std::uint8_t* b, float* y) {
    const float d = half(b);
    const float dmin = half(b + 2);
    const std::uint8_t* scales = b + 4;
    const std::uint8_t* qh = b + 16;
    const std::uint8_t* ql = b + 48;
    std::size_t is = 0;
    unsigned u1 = 1, u2 = 2;
    for (std::size_t j = 0; j < kQKK; j += 64) {
        std::uint8_t sc, m;
        scale_min_k4(is + 0, scales, sc, m);
        const float d1 = d * sc, m1 = dmin * m;
        scale_min_k4(is + 1, scales, sc, m);
        const float d2 = d * sc, m2 = dmin * m;
        for (std::size_t l = 0; l < 32; ++l)
            *y++ = d1 * static_cast<float>((ql[l] & 0x0F) + ((qh[l] & u1) ? 16 : 0)) - m1;
        for (std::size_t l = 0; l < 32; ++l)
            *y++ = d2 * static_cast<float>((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
        ql += 32;
        is += 2;
        u1 <<= 2;
        u2 <<= 2;
    }
}

// Q6_K: 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 int8 scales, fp16 d.
void block_q6_k(const std::uint8_t* b, float* y) {
    const std::uint8_t* ql = b;
    const std::uint8_t* qh = b + 128;
    const auto* sc = reinterpret_cast<const std::int8_t*>(b + 192);
    const float d = half(b + 208);
    for (std::size_t n = 0; n < kQKK; n += 128) {
        for (std::size_t l = 0; l < 32; ++l) {
            const std::size_t is = l / 16;
            const int q1 = static_cast<int>((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = static_cast<int>((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = static_cast<int>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = static_cast<int>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l + 0] = d * static_cast<float>(sc[is + 0]) * static_cast<float>(q1);
            y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
            y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
            y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

using BlockFn = void (*)(const std::uint8_t*, float*);

BlockFn block_function(TensorType type) {
    switch (type) {
        case TensorType::Q4_0: return block_q4_0;
        case TensorType::Q4_1: return block_q4_1;
        case TensorType::Q5_0: return block_q5_0;
        case TensorType::Q5_1: return block_q5_1;
        case TensorType::Q8_0: return block_q8_0;
        case TensorType::Q4_K: return block_q4_k;
        case TensorType::Q5_K: return block_q5_k;
        case TensorType::Q6_K: return block_q6_k;
        default: return nullptr;  // Q8_1 (an intermediate format, never in model files), Q2_K, Q3_K, Q8_K
    }
}

}  // namespace

void dequantize(TensorType type, const void* src, float* dst, std::size_t n) {
    const std::size_t per_block = block_elements(type);  // throws for unknown types
    if (n % per_block != 0) {
        throw ShapeError("gguf: cannot dequantize " + std::to_string(n) + " elements of " + tensor_type_name(type) +
                         ": not a multiple of its block of " + std::to_string(per_block));
    }
    if (n == 0) return;
    const auto* bytes = static_cast<const std::uint8_t*>(src);
    switch (type) {
        case TensorType::F32: std::memcpy(dst, src, n * sizeof(float)); return;
        case TensorType::F16:
            for (std::size_t i = 0; i < n; ++i) dst[i] = half(bytes + 2 * i);
            return;
        case TensorType::BF16:
            for (std::size_t i = 0; i < n; ++i) {
                std::uint16_t bits;
                std::memcpy(&bits, bytes + 2 * i, 2);
                dst[i] = bf16::to_float(bits);
            }
            return;
        default: break;
    }
    const BlockFn fn = block_function(type);
    if (!fn) throw FormatError("gguf: dequantisation of " + tensor_type_name(type) + " is not supported");
    const std::size_t stride = block_bytes(type);
    for (std::size_t b = 0; b < n / per_block; ++b) fn(bytes + b * stride, dst + b * per_block);
}

std::vector<float> dequantize(const TensorInfo& tensor) {
    std::vector<float> out(tensor.n_elements);
    dequantize(tensor.type, tensor.data, out.data(), tensor.n_elements);
    return out;
}

void dequantize_row(const TensorInfo& tensor, std::size_t row, float* dst) {
    if (row >= tensor.rows()) {
        throw IndexError("gguf: row " + std::to_string(row) + " of tensor '" + tensor.name + "' out of range (" +
                         std::to_string(tensor.rows()) + " rows)");
    }
    dequantize(tensor.type, tensor.data + row * tensor.row_bytes(), dst, tensor.row_length());
}

}  // namespace kvcache::gguf
