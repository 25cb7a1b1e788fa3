// Reading GGUF model files (versions 2 and 3): metadata, tensor infos and dequantisation to float.
//
// The file is memory-mapped; tensors point into the mapping, so a gguf::File must outlive every
// TensorInfo::data pointer taken from it. A file truncated or resized by another process while it is mapped
// does not end the process with SIGBUS: the pages past its new end read as zeros and check_unchanged() throws
// a FormatError (see detail/mapped_file.hpp). Every malformed, truncated or hostile input is reported as a
// kvcache::FormatError naming what is wrong and where (byte offset); nothing reads outside the mapping.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "kvcache/error.hpp"

namespace kvcache::gguf {

/// Metadata value types, numbered as in the GGUF specification.
enum class ValueType : std::uint32_t {
    UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
    STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

/// Tensor element types, numbered as ggml numbers them (only the ones listed are dequantised).
enum class TensorType : std::uint32_t {
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, BF16 = 30,
};

/// Name of a tensor type as ggml spells it ("Q4_1"), or "type N" for unknown numbers.
std::string tensor_type_name(TensorType t);
/// Elements per quantisation block (1 for F32/F16/BF16, 32 for Q4_0..Q8_0, 256 for K-quants).
std::size_t block_elements(TensorType t);
/// Bytes per block. Throws FormatError for types this library does not know.
std::size_t block_bytes(TensorType t);

/// An array value: element type plus the decoded elements (strings and numbers; nested arrays allowed).
struct Array;
using Value = std::variant<std::uint8_t, std::int8_t, std::uint16_t, std::int16_t, std::uint32_t, std::int32_t,
                           float, bool, std::string, std::shared_ptr<Array>, std::uint64_t, std::int64_t, double>;
struct Array {
    ValueType element_type = ValueType::UINT8;
    std::vector<Value> values;
};

struct KeyValue {
    std::string key;
    ValueType type;
    Value value;
};

/// One tensor of the file. shape is in ggml order: shape[0] is the fastest-varying (row length).
struct TensorInfo {
    std::string name;
    std::vector<std::uint64_t> shape;
    TensorType type = TensorType::F32;
    std::uint64_t offset = 0;          ///< from the start of the data section
    const std::byte* data = nullptr;   ///< into the mapping; valid while the File lives
    std::size_t n_elements = 0;
    std::size_t n_bytes = 0;

    std::size_t rows() const;          ///< product of shape[1..]
    std::size_t row_length() const;    ///< shape[0]
    std::size_t row_bytes() const;     ///< bytes of one row: shape[0] / block_elements * block_bytes
};

/// An open, memory-mapped GGUF file.
class File {
public:
    /// Opens and validates the file. Throws IoError (cannot open/map) or FormatError (malformed).
    static File open(const std::filesystem::path& path);
    /// Parses a GGUF image held in memory (not copied; must outlive the File). For tests and fuzzing.
    static File from_memory(std::span<const std::byte> bytes);

    File(File&&) noexcept;
    File& operator=(File&&) noexcept;
    ~File();

    std::uint32_t version() const;
    std::size_t alignment() const;
    const std::vector<KeyValue>& metadata() const;
    const std::vector<TensorInfo>& tensors() const;

    const KeyValue* find(std::string_view key) const;          ///< nullptr if absent
    const TensorInfo* find_tensor(std::string_view name) const; ///< nullptr if absent
    const TensorInfo& tensor(std::string_view name) const;      ///< throws FormatError naming it if absent

    /// Throws FormatError if the file changed (was truncated or grown) while mapped: tensor
    /// data read after such a change may be zeros or other bytes. Call it after reading tensor data; the
    /// library's loaders do (DecoderWeights::from_gguf, model_fingerprint). No-op for from_memory.
    void check_unchanged() const;

    // Typed metadata access: throw FormatError naming the key if it is absent or of another type.
    // Integer getters accept any integer type whose value fits.
    std::string get_string(std::string_view key) const;
    std::uint64_t get_uint(std::string_view key) const;
    std::int64_t get_int(std::string_view key) const;
    double get_float(std::string_view key) const;  ///< FLOAT32 or FLOAT64
    bool get_bool(std::string_view key) const;
    std::vector<std::string> get_string_array(std::string_view key) const;
    std::vector<float> get_float_array(std::string_view key) const;
    std::vector<std::int64_t> get_int_array(std::string_view key) const;

    // The same with a default when the key is absent (still throw on a wrong type).
    std::string get_string_or(std::string_view key, std::string fallback) const;
    std::uint64_t get_uint_or(std::string_view key, std::uint64_t fallback) const;
    double get_float_or(std::string_view key, double fallback) const;
    bool get_bool_or(std::string_view key, bool fallback) const;

private:
    struct Impl;
    explicit File(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

/// Dequantises n elements of type `type` from src into dst (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
/// Q4_K, Q5_K, Q6_K). n must be a multiple of block_elements(type) (else ShapeError);
/// src must hold n / block_elements * block_bytes bytes. Throws FormatError for unsupported types.
void dequantize(TensorType type, const void* src, float* dst, std::size_t n);

/// Dequantises a whole tensor to float (row-major in ggml order: shape[0] fastest).
std::vector<float> dequantize(const TensorInfo& tensor);

/// Dequantises one row (shape[0] elements) of a tensor. Throws IndexError if row >= tensor.rows().
void dequantize_row(const TensorInfo& tensor, std::size_t row, float* dst);

}  // namespace kvcache::gguf
