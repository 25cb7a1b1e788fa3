// Reading (and writing) safetensors files: the weight format of `safetensors.torch.save_file`.
//
// Layout (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N, N bytes of
// JSON  {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {..}},
// then the data buffer; offsets are relative to the buffer's start. Every tensor's byte range must match its
// dtype and shape, ranges must not overlap and must cover the buffer without holes (as the reference reader
// demands). Anything else is a kvcache::FormatError naming the tensor, the sizes and the offsets involved.
//
// File::open memory-maps the file; TensorView::bytes point into the mapping, so a File must outlive them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvcache/error.hpp"

namespace kvcache::safetensors {

/// Element types of the format. Only F32, F16, BF16 (and F64) convert to float; the others can be listed.
enum class DType { BOOL, U8, I8, U16, I16, F16, BF16, U32, I32, F32, U64, I64, F64 };

/// "F32", "BF16", ... as the header spells it.
std::string_view dtype_name(DType t);
/// Bytes per element.
std::size_t dtype_size(DType t);
/// Parses a header dtype string; throws FormatError for unknown ones.
DType parse_dtype(std::string_view name);

/// One tensor: its header entry plus its bytes (little-endian, row-major, last dimension fastest).
struct TensorView {
    std::string name;
    DType dtype = DType::F32;
    std::vector<std::size_t> shape;     ///< PyTorch order: shape[0] is the slowest-varying
    std::span<const std::byte> bytes;   ///< into the File's storage

    std::size_t n_elements() const;     ///< product of shape (1 for a scalar)
    std::string shape_string() const;   ///< "[3, 4]"
};

/// An open safetensors file (or in-memory image).
class File {
public:
    /// Maps and validates the file. Throws IoError (cannot open/map) or FormatError (malformed).
    static File open(const std::filesystem::path& path);
    /// Validates an image held in memory. The bytes are not copied and must outlive the File.
    static File from_memory(std::span<const std::byte> bytes);

    File(File&&) noexcept;
    File& operator=(File&&) noexcept;
    ~File();

    /// The "__metadata__" string map (empty when absent).
    const std::map<std::string, std::string>& metadata() const;
    /// Tensors in the order of their data offsets.
    const std::vector<TensorView>& tensors() const;

    const TensorView* find(std::string_view name) const;  ///< nullptr if absent
    const TensorView& tensor(std::string_view name) const; ///< FormatError naming it if absent

    /// Throws FormatError if the file changed while mapped (see gguf::File::check_unchanged); call it after
    /// reading tensor data. No-op for from_memory.
    void check_unchanged() const;

    /// The tensor converted to float (F32, F16, BF16, F64). FormatError for a missing tensor or another dtype.
    std::vector<float> to_float(std::string_view name) const;
    /// As to_float, and checks the shape first: ShapeError naming the tensor, its shape and the expected one.
    std::vector<float> load(std::string_view name, std::span<const std::size_t> expected_shape) const;
    std::vector<float> load(std::string_view name, std::initializer_list<std::size_t> expected_shape) const;

private:
    struct Impl;
    explicit File(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

/// Converts a tensor's bytes to float. FormatError if its dtype is not a floating type.
void convert_to_float(const TensorView& tensor, float* dst);

/// A tensor to write: float data stored as `dtype` (F32, F16 or BF16).
struct TensorToWrite {
    std::string name;
    std::vector<std::size_t> shape;
    std::span<const float> data;
    DType dtype = DType::F32;
};

/// Serialises tensors (in the given order) and metadata into a safetensors image.
/// ShapeError if a tensor's data size does not match its shape; ConfigError for duplicate names or a
/// non-float dtype.
std::vector<std::byte> serialize(std::span<const TensorToWrite> tensors,
                                 const std::map<std::string, std::string>& metadata = {});
/// serialize() to a file; IoError if it cannot be written.
void save(const std::filesystem::path& path, std::span<const TensorToWrite> tensors,
          const std::map<std::string, std::string>& metadata = {});

}  // namespace kvcache::safetensors
