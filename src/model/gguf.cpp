// GGUF parser: a bounds-checked cursor over a memory-mapped (or caller-held) byte image.
//
// Layout (little-endian): "GGUF", u32 version, u64 tensor_count, u64 kv_count, kv_count key/value pairs,
// tensor_count tensor infos, padding to general.alignment (default 32), then the data section that tensor
// offsets are relative to. Every count and length is checked against the bytes that remain before anything
// is allocated, so a hostile header cannot make us allocate or read more than the file holds.
#include "kvcache/model/gguf.hpp"

#include "kvcache/detail/checked.hpp"
#include "kvcache/detail/mapped_file.hpp"


#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <unordered_map>

namespace kvcache::gguf {
namespace {

constexpr std::size_t kDefaultAlignment = 32;
constexpr std::size_t kMaxDims = 4;                // ggml's GGML_MAX_DIMS
constexpr std::size_t kMaxArrayDepth = 8;          // nested arrays deeper than this are rejected
constexpr std::size_t kMaxArrayElements = 1u << 24;  // all metadata arrays together (decoded values cost ~48 B)

std::string at_offset(std::size_t off) { return "byte offset " + std::to_string(off); }

/// Reads little-endian scalars and strings, throwing FormatError with the offset if the image ends.
class Cursor {
public:
    explicit Cursor(std::span<const std::byte> bytes) : bytes_(bytes) {}

    std::size_t offset() const { return pos_; }
    std::size_t remaining() const { return bytes_.size() - pos_; }

    void need(std::size_t n, const char* what) const {
        if (n > remaining()) {
            throw FormatError("gguf: truncated file: " + std::string(what) + " needs " + std::to_string(n) +
                              " bytes at " + at_offset(pos_) + " but only " + std::to_string(remaining()) +
                              " remain");
        }
    }

    template <class T>
    T read(const char* what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }

    std::string read_string(const char* what) {
        const std::size_t at = pos_;
        const auto len = read<std::uint64_t>(what);
        if (len > remaining()) {
            throw FormatError("gguf: " + std::string(what) + " at " + at_offset(at) + " claims " +
                              std::to_string(len) + " bytes but only " + std::to_string(remaining()) + " remain");
        }
        std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), static_cast<std::size_t>(len));
        pos_ += static_cast<std::size_t>(len);
        return s;
    }

private:
    std::span<const std::byte> bytes_;
    std::size_t pos_ = 0;
};

std::string value_type_name(ValueType t) {
    switch (t) {
        case ValueType::UINT8: return "UINT8";
        case ValueType::INT8: return "INT8";
        case ValueType::UINT16: return "UINT16";
        case ValueType::INT16: return "INT16";
        case ValueType::UINT32: return "UINT32";
        case ValueType::INT32: return "INT32";
        case ValueType::FLOAT32: return "FLOAT32";
        case ValueType::BOOL: return "BOOL";
        case ValueType::STRING: return "STRING";
        case ValueType::ARRAY: return "ARRAY";
        case ValueType::UINT64: return "UINT64";
        case ValueType::INT64: return "INT64";
        case ValueType::FLOAT64: return "FLOAT64";
    }
    return "type " + std::to_string(static_cast<std::uint32_t>(t));
}

/// Smallest number of bytes one value of this type occupies (used to bound array lengths).
std::size_t min_encoded_size(ValueType t) {
    switch (t) {
        case ValueType::UINT8: case ValueType::INT8: case ValueType::BOOL: return 1;
        case ValueType::UINT16: case ValueType::INT16: return 2;
        case ValueType::UINT32: case ValueType::INT32: case ValueType::FLOAT32: return 4;
        case ValueType::UINT64: case ValueType::INT64: case ValueType::FLOAT64: case ValueType::STRING: return 8;
        case ValueType::ARRAY: return 12;  // u32 element type + u64 count
    }
    return 1;
}

class MetadataParser {
public:
    explicit MetadataParser(Cursor& c) : c_(c) {}

    ValueType read_type(const char* what) {
        const std::size_t at = c_.offset();
        const auto raw = c_.read<std::uint32_t>(what);
        if (raw > static_cast<std::uint32_t>(ValueType::FLOAT64)) {
            throw FormatError("gguf: unknown metadata value type " + std::to_string(raw) + " at " + at_offset(at));
        }
        return static_cast<ValueType>(raw);
    }

    Value read_value(ValueType t, std::size_t depth) {
        switch (t) {
            case ValueType::UINT8: return c_.read<std::uint8_t>("UINT8 value");
            case ValueType::INT8: return c_.read<std::int8_t>("INT8 value");
            case ValueType::UINT16: return c_.read<std::uint16_t>("UINT16 value");
            case ValueType::INT16: return c_.read<std::int16_t>("INT16 value");
            case ValueType::UINT32: return c_.read<std::uint32_t>("UINT32 value");
            case ValueType::INT32: return c_.read<std::int32_t>("INT32 value");
            case ValueType::FLOAT32: return c_.read<float>("FLOAT32 value");
            case ValueType::UINT64: return c_.read<std::uint64_t>("UINT64 value");
            case ValueType::INT64: return c_.read<std::int64_t>("INT64 value");
            case ValueType::FLOAT64: return c_.read<double>("FLOAT64 value");
            case ValueType::BOOL: {
                const std::size_t at = c_.offset();
                const auto b = c_.read<std::uint8_t>("BOOL value");
                if (b > 1) throw FormatError("gguf: BOOL value " + std::to_string(b) + " at " + at_offset(at));
                return b == 1;
            }
            case ValueType::STRING: return c_.read_string("string");
            case ValueType::ARRAY: return read_array(depth + 1);
        }
        throw FormatError("gguf: unknown metadata value type");  // unreachable: read_type validated it
    }

private:
    std::shared_ptr<Array> read_array(std::size_t depth) {
        const std::size_t at = c_.offset();
        if (depth > kMaxArrayDepth) {
            throw FormatError("gguf: arrays nested deeper than " + std::to_string(kMaxArrayDepth) + " at " +
                              at_offset(at));
        }
        auto array = std::make_shared<Array>();
        array->element_type = read_type("array element type");
        const auto count = c_.read<std::uint64_t>("array length");
        const std::size_t min_size = min_encoded_size(array->element_type);
        if (count > c_.remaining() / min_size) {
            throw FormatError("gguf: array at " + at_offset(at) + " claims " + std::to_string(count) + " " +
                              value_type_name(array->element_type) + " elements but only " +
                              std::to_string(c_.remaining()) + " bytes remain");
        }
        total_elements_ += static_cast<std::size_t>(count);
        if (total_elements_ > kMaxArrayElements) {
            throw FormatError("gguf: metadata arrays hold more than " + std::to_string(kMaxArrayElements) +
                              " elements in all (array at " + at_offset(at) + ")");
        }
        array->values.reserve(static_cast<std::size_t>(count));
        for (std::uint64_t i = 0; i < count; ++i) array->values.push_back(read_value(array->element_type, depth));
        return array;
    }

    Cursor& c_;
    std::size_t total_elements_ = 0;
};

}  // namespace

struct File::Impl {
    detail::MappedFile mapping;  // empty for from_memory
    std::span<const std::byte> bytes;
    std::uint32_t version = 0;
    std::size_t alignment = kDefaultAlignment;
    std::vector<KeyValue> metadata;
    std::vector<TensorInfo> tensors;
    std::unordered_map<std::string, std::size_t> key_index;
    std::unordered_map<std::string, std::size_t> tensor_index;

    void parse();
    const KeyValue& require(std::string_view key) const;  ///< FormatError naming the key if absent
};

namespace {

std::size_t alignment_from(const KeyValue& kv) {
    std::uint64_t a = 0;
    if (const auto* u32 = std::get_if<std::uint32_t>(&kv.value)) a = *u32;
    else if (const auto* u64 = std::get_if<std::uint64_t>(&kv.value)) a = *u64;
    else if (const auto* i32 = std::get_if<std::int32_t>(&kv.value); i32 && *i32 > 0) a = static_cast<std::uint64_t>(*i32);
    else throw FormatError("gguf: general.alignment must be an unsigned integer, found " + value_type_name(kv.type));
    if (a == 0 || !std::has_single_bit(a) || a > (1u << 20)) {
        throw FormatError("gguf: general.alignment " + std::to_string(a) +
                          " is not a power of two between 1 and 1 MiB");
    }
    return static_cast<std::size_t>(a);
}

}  // namespace

void File::Impl::parse() {
    Cursor c(bytes);
    if (bytes.size() < 4 || std::memcmp(bytes.data(), "GGUF", 4) != 0) {
        throw FormatError("gguf: not a GGUF file (the first 4 bytes are not \"GGUF\")");
    }
    c.read<std::uint32_t>("magic");
    version = c.read<std::uint32_t>("version");
    if (version != 2 && version != 3) {
        const bool swapped = version == 0x02000000u || version == 0x03000000u;
        throw FormatError("gguf: unsupported version " + std::to_string(version) +
                          (swapped ? " (a big-endian file; only little-endian is read)" : " (versions 2 and 3 are read)"));
    }
    const auto n_tensors = c.read<std::uint64_t>("tensor count");
    const auto n_kv = c.read<std::uint64_t>("metadata count");
    // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info 8 + 4 + 8 + 4 + 8.
    if (n_kv > c.remaining() / 13) {
        throw FormatError("gguf: header claims " + std::to_string(n_kv) + " metadata entries but the file holds only " +
                          std::to_string(c.remaining()) + " more bytes");
    }
    if (n_tensors > c.remaining() / 32) {
        throw FormatError("gguf: header claims " + std::to_string(n_tensors) + " tensors but the file holds only " +
                          std::to_string(c.remaining()) + " more bytes");
    }

    MetadataParser meta(c);
    metadata.reserve(static_cast<std::size_t>(n_kv));
    for (std::uint64_t i = 0; i < n_kv; ++i) {
        const std::size_t at = c.offset();
        KeyValue kv;
        kv.key = c.read_string("metadata key");
        kv.type = meta.read_type("metadata value type");
        kv.value = meta.read_value(kv.type, 0);
        if (!key_index.emplace(kv.key, metadata.size()).second) {
            throw FormatError("gguf: duplicate metadata key '" + kv.key + "' at " + at_offset(at));
        }
        metadata.push_back(std::move(kv));
    }
    if (const auto it = key_index.find("general.alignment"); it != key_index.end()) {
        alignment = alignment_from(metadata[it->second]);
    }

    tensors.reserve(static_cast<std::size_t>(n_tensors));
    for (std::uint64_t i = 0; i < n_tensors; ++i) {
        const std::size_t at = c.offset();
        TensorInfo t;
        t.name = c.read_string("tensor name");
        const auto n_dims = c.read<std::uint32_t>("tensor dimension count");
        if (n_dims == 0 || n_dims > kMaxDims) {
            throw FormatError("gguf: tensor '" + t.name + "' at " + at_offset(at) + " has " + std::to_string(n_dims) +
                              " dimensions (1 to " + std::to_string(kMaxDims) + " allowed)");
        }
        std::size_t n_elements = 1;
        for (std::uint32_t d = 0; d < n_dims; ++d) {
            const auto dim = c.read<std::uint64_t>("tensor dimension");
            if (dim == 0) throw FormatError("gguf: tensor '" + t.name + "' has a dimension of size 0");
            n_elements = detail::checked_mul<FormatError>(
                n_elements, detail::checked_size<FormatError>(dim, "gguf: tensor dimension"),
                "gguf: tensor '" + t.name + "' element count");
            t.shape.push_back(dim);
        }
        const auto raw_type = c.read<std::uint32_t>("tensor type");
        t.type = static_cast<TensorType>(raw_type);
        std::size_t per_block = 0, block_size = 0;
        try {
            per_block = block_elements(t.type);
            block_size = block_bytes(t.type);
        } catch (const FormatError&) {
            throw FormatError("gguf: tensor '" + t.name + "' has unknown type " + std::to_string(raw_type));
        }
        if (t.shape[0] % per_block != 0) {
            throw FormatError("gguf: tensor '" + t.name + "' of type " + tensor_type_name(t.type) + " has rows of " +
                              std::to_string(t.shape[0]) + " elements, not a multiple of its block of " +
                              std::to_string(per_block));
        }
        t.n_elements = n_elements;
        // F32/F16/BF16 (and Q8_1/Q8_K) take more bytes than elements: 2^62 F32 elements would wrap to 0 bytes
        t.n_bytes = detail::checked_mul<FormatError>(n_elements / per_block, block_size,
                                                     "gguf: tensor '" + t.name + "' of type " +
                                                         tensor_type_name(t.type) + ": bytes (blocks x block bytes)");
        t.offset = c.read<std::uint64_t>("tensor offset");
        if (t.offset % alignment != 0) {
            throw FormatError("gguf: tensor '" + t.name + "' offset " + std::to_string(t.offset) +
                              " is not a multiple of the alignment " + std::to_string(alignment));
        }
        if (!tensor_index.emplace(t.name, tensors.size()).second) {
            throw FormatError("gguf: duplicate tensor name '" + t.name + "' at " + at_offset(at));
        }
        tensors.push_back(std::move(t));
    }

    // The data section starts at the next multiple of the alignment; a file without tensors may end before it.
    const std::size_t header_end = c.offset();
    const std::size_t data_start = (header_end + alignment - 1) / alignment * alignment;
    const std::size_t data_size = bytes.size() > data_start ? bytes.size() - data_start : 0;
    for (TensorInfo& t : tensors) {
        if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
            throw FormatError("gguf: tensor '" + t.name + "' (" + std::to_string(t.n_bytes) + " bytes at data offset " +
                              std::to_string(t.offset) + ") extends past the end of the file (data section holds " +
                              std::to_string(data_size) + " bytes)");
        }
        t.data = bytes.data() + data_start + t.offset;
    }
    std::vector<const TensorInfo*> by_offset;
    for (const TensorInfo& t : tensors) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
    for (std::size_t i = 1; i < by_offset.size(); ++i) {
        const TensorInfo& prev = *by_offset[i - 1];
        if (prev.offset + prev.n_bytes > by_offset[i]->offset) {
            throw FormatError("gguf: tensors '" + prev.name + "' and '" + by_offset[i]->name + "' overlap");
        }
    }
}

const KeyValue& File::Impl::require(std::string_view key) const {
    const auto it = key_index.find(std::string(key));
    if (it == key_index.end()) throw FormatError("gguf: metadata key '" + std::string(key) + "' is missing");
    return metadata[it->second];
}

// --- TensorInfo ---------------------------------------------------------------------------------------------

std::size_t TensorInfo::rows() const {
    std::size_t r = 1;
    for (std::size_t i = 1; i < shape.size(); ++i) r *= static_cast<std::size_t>(shape[i]);
    return r;
}
std::size_t TensorInfo::row_length() const { return shape.empty() ? 0 : static_cast<std::size_t>(shape[0]); }
std::size_t TensorInfo::row_bytes() const { return row_length() / block_elements(type) * block_bytes(type); }

// --- type tables --------------------------------------------------------------------------------------------

std::string tensor_type_name(TensorType t) {
    switch (t) {
        case TensorType::F32: return "F32";
        case TensorType::F16: return "F16";
        case TensorType::Q4_0: return "Q4_0";
        case TensorType::Q4_1: return "Q4_1";
        case TensorType::Q5_0: return "Q5_0";
        case TensorType::Q5_1: return "Q5_1";
        case TensorType::Q8_0: return "Q8_0";
        case TensorType::Q8_1: return "Q8_1";
        case TensorType::Q2_K: return "Q2_K";
        case TensorType::Q3_K: return "Q3_K";
        case TensorType::Q4_K: return "Q4_K";
        case TensorType::Q5_K: return "Q5_K";
        case TensorType::Q6_K: return "Q6_K";
        case TensorType::Q8_K: return "Q8_K";
        case TensorType::BF16: return "BF16";
    }
    return "type " + std::to_string(static_cast<std::uint32_t>(t));
}

std::size_t block_elements(TensorType t) {
    switch (t) {
        case TensorType::F32: case TensorType::F16: case TensorType::BF16: return 1;
        case TensorType::Q4_0: case TensorType::Q4_1: case TensorType::Q5_0: case TensorType::Q5_1:
        case TensorType::Q8_0: case TensorType::Q8_1: return 32;
        case TensorType::Q2_K: case TensorType::Q3_K: case TensorType::Q4_K: case TensorType::Q5_K:
        case TensorType::Q6_K: case TensorType::Q8_K: return 256;
    }
    throw FormatError("gguf: unknown tensor type " + std::to_string(static_cast<std::uint32_t>(t)));
}

std::size_t block_bytes(TensorType t) {
    switch (t) {
        case TensorType::F32: return 4;
        case TensorType::F16: case TensorType::BF16: return 2;
        case TensorType::Q4_0: return 18;
        case TensorType::Q4_1: return 20;
        case TensorType::Q5_0: return 22;
        case TensorType::Q5_1: return 24;
        case TensorType::Q8_0: return 34;
        case TensorType::Q8_1: return 40;
        case TensorType::Q2_K: return 84;
        case TensorType::Q3_K: return 110;
        case TensorType::Q4_K: return 144;
        case TensorType::Q5_K: return 176;
        case TensorType::Q6_K: return 210;
        case TensorType::Q8_K: return 292;
    }
    throw FormatError("gguf: unknown tensor type " + std::to_string(static_cast<std::uint32_t>(t)));
}

// --- File ---------------------------------------------------------------------------------------------------

File::File(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
File::File(File&&) noexcept = default;
File& File::operator=(File&&) noexcept = default;
File::~File() = default;

File File::open(const std::filesystem::path& path) {
    auto impl = std::make_unique<Impl>();
    impl->mapping = detail::MappedFile::open(path, "gguf");
    impl->bytes = impl->mapping.bytes();
    try {
        impl->parse();
    } catch (const FormatError& e) {
        impl->mapping.check_unchanged();  // a header truncated while it was parsed: say so, not what the zeros said
        throw FormatError(std::string(e.what()) + " (in '" + path.string() + "')");
    }
    impl->mapping.check_unchanged();
    return File(std::move(impl));
}

File File::from_memory(std::span<const std::byte> bytes) {
    auto impl = std::make_unique<Impl>();
    impl->bytes = bytes;
    impl->parse();
    return File(std::move(impl));
}

std::uint32_t File::version() const { return impl_->version; }
std::size_t File::alignment() const { return impl_->alignment; }
const std::vector<KeyValue>& File::metadata() const { return impl_->metadata; }
const std::vector<TensorInfo>& File::tensors() const { return impl_->tensors; }

const KeyValue* File::find(std::string_view key) const {
    const auto it = impl_->key_index.find(std::string(key));
    return it == impl_->key_index.end() ? nullptr : &impl_->metadata[it->second];
}

const TensorInfo* File::find_tensor(std::string_view name) const {
    const auto it = impl_->tensor_index.find(std::string(name));
    return it == impl_->tensor_index.end() ? nullptr : &impl_->tensors[it->second];
}

void File::check_unchanged() const { impl_->mapping.check_unchanged(); }

const TensorInfo& File::tensor(std::string_view name) const {
    if (const TensorInfo* t = find_tensor(name)) return *t;
    throw FormatError("gguf: tensor '" + std::string(name) + "' is missing");
}

namespace {

[[noreturn]] void wrong_type(const KeyValue& kv, const char* wanted) {
    std::string found = value_type_name(kv.type);
    if (kv.type == ValueType::ARRAY) {
        if (const auto* a = std::get_if<std::shared_ptr<Array>>(&kv.value)) {
            found += " of " + value_type_name((*a)->element_type);
        }
    }
    throw FormatError("gguf: metadata key '" + kv.key + "' is " + found + ", expected " + wanted);
}

/// Any integer alternative of a Value as sign and magnitude (nullopt if the value is not an integer).
struct Integer {
    bool negative = false;
    std::uint64_t magnitude = 0;
};

std::optional<Integer> integer_of(const Value& v) {
    return std::visit(
        [](const auto& x) -> std::optional<Integer> {
            using X = std::decay_t<decltype(x)>;
            if constexpr (std::is_integral_v<X> && !std::is_same_v<X, bool>) {
                if constexpr (std::is_signed_v<X>) {
                    if (x < 0) return Integer{true, static_cast<std::uint64_t>(-(static_cast<std::int64_t>(x) + 1)) + 1};
                }
                return Integer{false, static_cast<std::uint64_t>(x)};
            } else {
                return std::nullopt;
            }
        },
        v);
}

/// The integer as int64, or nullopt if it does not fit.
std::optional<std::int64_t> as_int64(const Integer& i) {
    constexpr auto max = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    if (!i.negative) return i.magnitude <= max ? std::optional(static_cast<std::int64_t>(i.magnitude)) : std::nullopt;
    if (i.magnitude == max + 1) return std::numeric_limits<std::int64_t>::min();
    return -static_cast<std::int64_t>(i.magnitude);
}

const Array& array_of(const KeyValue& kv, const char* wanted) {
    if (kv.type != ValueType::ARRAY) wrong_type(kv, wanted);
    return *std::get<std::shared_ptr<Array>>(kv.value);
}

}  // namespace

std::string File::get_string(std::string_view key) const {
    const KeyValue& kv = impl_->require(key);
    if (kv.type != ValueType::STRING) wrong_type(kv, "STRING");
    return std::get<std::string>(kv.value);
}

std::uint64_t File::get_uint(std::string_view key) const {
    const KeyValue& kv = impl_->require(key);
    const auto v = integer_of(kv.value);
    if (!v) wrong_type(kv, "an unsigned integer");
    if (v->negative && v->magnitude != 0) {
        throw FormatError("gguf: metadata key '" + kv.key + "' is negative, expected an unsigned integer");
    }
    return v->magnitude;
}

std::int64_t File::get_int(std::string_view key) const {
    const KeyValue& kv = impl_->require(key);
    const auto v = integer_of(kv.value);
    if (!v) wrong_type(kv, "an integer");
    const auto i = as_int64(*v);
    if (!i) throw FormatError("gguf: metadata key '" + kv.key + "' does not fit in a signed 64-bit integer");
    return *i;
}

double File::get_float(std::string_view key) const {
    const KeyValue& kv = impl_->require(key);
    if (kv.type == ValueType::FLOAT32) return std::get<float>(kv.value);
    if (kv.type == ValueType::FLOAT64) return std::get<double>(kv.value);
    wrong_type(kv, "FLOAT32 or FLOAT64");
}

bool File::get_bool(std::string_view key) const {
    const KeyValue& kv = impl_->require(key);
    if (kv.type != ValueType::BOOL) wrong_type(kv, "BOOL");
    return std::get<bool>(kv.value);
}

std::vector<std::string> File::get_string_array(std::string_view key) const {
    const KeyValue& kv = impl_->require(key);
    const Array& a = array_of(kv, "ARRAY of STRING");
    if (a.element_type != ValueType::STRING) wrong_type(kv, "ARRAY of STRING");
    std::vector<std::string> out;
    out.reserve(a.values.size());
    for (const Value& v : a.values) out.push_back(std::get<std::string>(v));
    return out;
}

std::vector<float> File::get_float_array(std::string_view key) const {
    const KeyValue& kv = impl_->require(key);
    const Array& a = array_of(kv, "ARRAY of FLOAT32 or FLOAT64");
    std::vector<float> out;
    out.reserve(a.values.size());
    if (a.element_type == ValueType::FLOAT32) {
        for (const Value& v : a.values) out.push_back(std::get<float>(v));
    } else if (a.element_type == ValueType::FLOAT64) {
        for (const Value& v : a.values) out.push_back(static_cast<float>(std::get<double>(v)));
    } else {
        wrong_type(kv, "ARRAY of FLOAT32 or FLOAT64");
    }
    return out;
}

std::vector<std::int64_t> File::get_int_array(std::string_view key) const {
    const KeyValue& kv = impl_->require(key);
    const Array& a = array_of(kv, "ARRAY of integers");
    // checked on the element type, not per element, so that an empty array of strings is refused too
    switch (a.element_type) {
        case ValueType::FLOAT32: case ValueType::FLOAT64: case ValueType::BOOL: case ValueType::STRING:
        case ValueType::ARRAY: wrong_type(kv, "ARRAY of integers");
        default: break;
    }
    std::vector<std::int64_t> out;
    out.reserve(a.values.size());
    for (const Value& v : a.values) {
        const auto i = integer_of(v);
        if (!i) wrong_type(kv, "ARRAY of integers");
        const auto i64 = as_int64(*i);
        if (!i64) throw FormatError("gguf: metadata key '" + kv.key + "' holds a value that does not fit in int64");
        out.push_back(*i64);
    }
    return out;
}

std::string File::get_string_or(std::string_view key, std::string fallback) const {
    return find(key) ? get_string(key) : std::move(fallback);
}
std::uint64_t File::get_uint_or(std::string_view key, std::uint64_t fallback) const {
    return find(key) ? get_uint(key) : fallback;
}
double File::get_float_or(std::string_view key, double fallback) const {
    return find(key) ? get_float(key) : fallback;
}
bool File::get_bool_or(std::string_view key, bool fallback) const { return find(key) ? get_bool(key) : fallback; }

}  // namespace kvcache::gguf
