// The safetensors reader and writer: header validation, float conversion, serialisation.
#include "kvcache/model/safetensors.hpp"

#include "kvcache/detail/checked.hpp"
#include "kvcache/detail/mapped_file.hpp"


#include <algorithm>
#include <bit>
#include <cstring>
#include <fstream>
#include <set>
#include <nlohmann/json.hpp>

#include "kvcache/element_types.hpp"

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian; big-endian hosts are not supported");

namespace kvcache::safetensors {
namespace {

using json = nlohmann::json;

// The reference reader refuses headers above 100 MB; so do we, before allocating anything for them.
constexpr std::uint64_t max_header_bytes = 100'000'000;

struct DTypeInfo {
    DType type;
    std::string_view name;
    std::size_t size;
};
constexpr DTypeInfo dtype_table[] = {
    {DType::BOOL, "BOOL", 1}, {DType::U8, "U8", 1},     {DType::I8, "I8", 1},     {DType::U16, "U16", 2},
    {DType::I16, "I16", 2},   {DType::F16, "F16", 2},   {DType::BF16, "BF16", 2}, {DType::U32, "U32", 4},
    {DType::I32, "I32", 4},   {DType::F32, "F32", 4},   {DType::U64, "U64", 8},   {DType::I64, "I64", 8},
    {DType::F64, "F64", 8},
};

const DTypeInfo& info(DType t) {
    for (const auto& d : dtype_table)
        if (d.type == t) return d;
    throw ConfigError("safetensors: unknown dtype enumerator " + std::to_string(static_cast<int>(t)));
}

std::string shape_to_string(std::span<const std::size_t> shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(shape[i]);
    }
    return s + "]";
}

// Reads one header entry; `what` prefixes messages so they name the tensor.
TensorView parse_entry(const std::string& name, const json& entry, std::span<const std::byte> buffer,
                       std::uint64_t& begin_out) {
    const std::string what = "safetensors: tensor '" + name + "'";
    if (!entry.is_object()) throw FormatError(what + ": header entry is not a JSON object");
    for (const auto& [key, _] : entry.items())
        if (key != "dtype" && key != "shape" && key != "data_offsets")
            throw FormatError(what + ": unexpected header field '" + key + "'");
    if (!entry.contains("dtype") || !entry["dtype"].is_string())
        throw FormatError(what + ": missing or non-string \"dtype\"");
    if (!entry.contains("shape") || !entry["shape"].is_array())
        throw FormatError(what + ": missing or non-array \"shape\"");
    if (!entry.contains("data_offsets") || !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2)
        throw FormatError(what + ": \"data_offsets\" must be an array [begin, end]");

    TensorView t;
    t.name = name;
    try {
        t.dtype = parse_dtype(entry["dtype"].get<std::string>());
    } catch (const FormatError& e) {
        throw FormatError(what + ": " + e.what());
    }
    std::size_t n = 1;
    for (const auto& d : entry["shape"]) {
        if (!d.is_number_unsigned()) throw FormatError(what + ": shape " + entry["shape"].dump() + " holds a non-natural number");
        const auto dim = detail::checked_size<FormatError>(d.get<std::uint64_t>(), what + ": dimension");
        n = detail::checked_mul<FormatError>(n, dim, what + ": element count of shape " + entry["shape"].dump());
        t.shape.push_back(dim);
    }
    const auto& offs = entry["data_offsets"];
    if (!offs[0].is_number_unsigned() || !offs[1].is_number_unsigned())
        throw FormatError(what + ": data_offsets " + offs.dump() + " are not natural numbers");
    const auto begin = offs[0].get<std::uint64_t>();
    const auto end = offs[1].get<std::uint64_t>();
    if (begin > end) throw FormatError(what + ": data_offsets " + offs.dump() + " end before they begin");
    if (end > buffer.size())
        throw FormatError(what + ": data_offsets " + offs.dump() + " run past the data buffer of " +
                          std::to_string(buffer.size()) + " bytes (file truncated?)");
    const std::size_t expected_bytes =
        detail::checked_mul<FormatError>(n, info(t.dtype).size, what + ": bytes of shape " + t.shape_string());
    if (end - begin != expected_bytes)
        throw FormatError(what + ": " + std::string(dtype_name(t.dtype)) + " " + t.shape_string() + " needs " +
                          std::to_string(expected_bytes) + " bytes but data_offsets " + offs.dump() + " hold " +
                          std::to_string(end - begin));
    t.bytes = buffer.subspan(static_cast<std::size_t>(begin), static_cast<std::size_t>(end - begin));
    begin_out = begin;
    return t;
}

}  // namespace

std::string_view dtype_name(DType t) { return info(t).name; }
std::size_t dtype_size(DType t) { return info(t).size; }

DType parse_dtype(std::string_view name) {
    for (const auto& d : dtype_table)
        if (d.name == name) return d.type;
    throw FormatError("unknown safetensors dtype '" + std::string(name) + "'");
}

std::size_t TensorView::n_elements() const {
    std::size_t n = 1;
    for (auto d : shape) n *= d;  // cannot overflow: checked when the header was parsed
    return n;
}

std::string TensorView::shape_string() const { return shape_to_string(shape); }

struct File::Impl {
    detail::MappedFile mapping;  // empty for from_memory
    std::map<std::string, std::string> metadata;
    std::vector<TensorView> tensors;

    void parse(std::span<const std::byte> bytes) {
        if (bytes.size() < 8)
            throw FormatError("safetensors: " + std::to_string(bytes.size()) +
                              " bytes is too short for the 8-byte header length");
        std::uint64_t header_len = 0;
        std::memcpy(&header_len, bytes.data(), 8);
        if (header_len > max_header_bytes)
            throw FormatError("safetensors: header length " + std::to_string(header_len) + " exceeds the limit of " +
                              std::to_string(max_header_bytes) + " bytes");
        if (header_len > bytes.size() - 8)
            throw FormatError("safetensors: header length " + std::to_string(header_len) + " runs past the end of the " +
                              std::to_string(bytes.size()) + "-byte file (truncated?)");
        if (header_len < 2) throw FormatError("safetensors: header length " + std::to_string(header_len) + " is too short for a JSON object");
        const char* text = reinterpret_cast<const char*>(bytes.data() + 8);
        if (text[0] != '{') throw FormatError("safetensors: header does not start with '{'");
        const std::span<const std::byte> buffer = bytes.subspan(8 + static_cast<std::size_t>(header_len));

        // nlohmann keeps the last of duplicate keys silently; a duplicated tensor name is a malformed file.
        std::set<std::string> top_keys;
        std::string duplicate;
        const json::parser_callback_t track_duplicates = [&](int depth, json::parse_event_t event, json& parsed) {
            if (event == json::parse_event_t::key && depth == 1 && !top_keys.insert(parsed.get<std::string>()).second)
                duplicate = parsed.get<std::string>();
            return true;
        };
        json header;
        try {
            header = json::parse(text, text + header_len, track_duplicates);
        } catch (const json::exception& e) {
            throw FormatError(std::string("safetensors: header is not valid JSON: ") + e.what());
        }
        if (!duplicate.empty()) throw FormatError("safetensors: header names '" + duplicate + "' twice");
        if (!header.is_object()) throw FormatError("safetensors: header is not a JSON object");

        std::vector<std::pair<std::uint64_t, TensorView>> found;
        for (const auto& [name, entry] : header.items()) {
            if (name == "__metadata__") {
                if (!entry.is_object()) throw FormatError("safetensors: __metadata__ is not a JSON object");
                for (const auto& [k, v] : entry.items()) {
                    if (!v.is_string()) throw FormatError("safetensors: __metadata__ value for '" + k + "' is not a string");
                    metadata.emplace(k, v.get<std::string>());
                }
                continue;
            }
            std::uint64_t begin = 0;
            TensorView t = parse_entry(name, entry, buffer, begin);
            found.emplace_back(begin, std::move(t));
        }
        std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
            return a.first != b.first ? a.first < b.first : a.second.bytes.size() < b.second.bytes.size();
        });
        std::uint64_t covered = 0;
        const std::string* previous = nullptr;
        for (auto& [begin, t] : found) {
            if (begin < covered)
                throw FormatError("safetensors: tensor '" + t.name + "' (bytes " + std::to_string(begin) + ".." +
                                  std::to_string(begin + t.bytes.size()) + ") overlaps tensor '" + *previous +
                                  "' (ending at " + std::to_string(covered) + ")");
            if (begin > covered)
                throw FormatError("safetensors: data bytes " + std::to_string(covered) + ".." + std::to_string(begin) +
                                  " before tensor '" + t.name + "' belong to no tensor");
            covered = begin + t.bytes.size();
            previous = &t.name;
        }
        if (covered != buffer.size())
            throw FormatError("safetensors: the data buffer holds " + std::to_string(buffer.size()) +
                              " bytes but the tensors cover " + std::to_string(covered));
        tensors.reserve(found.size());
        for (auto& f : found) tensors.push_back(std::move(f.second));
    }
};

File::File(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
File::File(File&&) noexcept = default;
File& File::operator=(File&&) noexcept = default;
File::~File() = default;

File File::open(const std::filesystem::path& path) {
    auto impl = std::make_unique<Impl>();
    impl->mapping = detail::MappedFile::open(path, "safetensors");
    const std::span<const std::byte> bytes = impl->mapping.bytes();
    try {
        impl->parse(bytes);
    } catch (const FormatError& e) {
        impl->mapping.check_unchanged();  // a header truncated while it was parsed: say so
        throw FormatError(std::string(e.what()) + " [in " + path.string() + "]");
    }
    impl->mapping.check_unchanged();
    return File(std::move(impl));
}

File File::from_memory(std::span<const std::byte> bytes) {
    auto impl = std::make_unique<Impl>();
    impl->parse(bytes);
    return File(std::move(impl));
}

const std::map<std::string, std::string>& File::metadata() const { return impl_->metadata; }
const std::vector<TensorView>& File::tensors() const { return impl_->tensors; }

const TensorView* File::find(std::string_view name) const {
    for (const auto& t : impl_->tensors)
        if (t.name == name) return &t;
    return nullptr;
}

void File::check_unchanged() const { impl_->mapping.check_unchanged(); }

const TensorView& File::tensor(std::string_view name) const {
    if (const auto* t = find(name)) return *t;
    throw FormatError("safetensors: tensor '" + std::string(name) + "' is missing (the file holds " +
                      std::to_string(impl_->tensors.size()) + " tensors)");
}

void convert_to_float(const TensorView& t, float* dst) {
    const std::size_t n = t.n_elements();
    const std::byte* src = t.bytes.data();
    switch (t.dtype) {
        case DType::F32:
            if (n) std::memcpy(dst, src, n * 4);
            return;
        case DType::F64:
            for (std::size_t i = 0; i < n; ++i) {
                double d;
                std::memcpy(&d, src + 8 * i, 8);
                dst[i] = static_cast<float>(d);
            }
            return;
        case DType::F16:
        case DType::BF16:
            for (std::size_t i = 0; i < n; ++i) {
                std::uint16_t h;
                std::memcpy(&h, src + 2 * i, 2);  // the data need not be 2-byte aligned
                dst[i] = t.dtype == DType::F16 ? fp16::to_float(h) : bf16::to_float(h);
            }
            return;
        default:
            throw FormatError("safetensors: tensor '" + t.name + "' has dtype " + std::string(dtype_name(t.dtype)) +
                              ", which does not convert to float (F32, F16, BF16, F64 do)");
    }
}

std::vector<float> File::to_float(std::string_view name) const {
    const TensorView& t = tensor(name);
    std::vector<float> out(t.n_elements());
    convert_to_float(t, out.data());
    return out;
}

std::vector<float> File::load(std::string_view name, std::span<const std::size_t> expected_shape) const {
    const TensorView& t = tensor(name);
    if (!std::equal(t.shape.begin(), t.shape.end(), expected_shape.begin(), expected_shape.end()))
        throw ShapeError("safetensors: tensor '" + t.name + "' has shape " + t.shape_string() + ", expected " +
                         shape_to_string(expected_shape));
    return to_float(name);
}

std::vector<float> File::load(std::string_view name, std::initializer_list<std::size_t> expected_shape) const {
    return load(name, std::span<const std::size_t>(expected_shape.begin(), expected_shape.size()));
}

std::vector<std::byte> serialize(std::span<const TensorToWrite> tensors, const std::map<std::string, std::string>& metadata) {
    json header = json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::size_t offset = 0;
    std::set<std::string> names;
    for (const auto& t : tensors) {
        if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
            throw ConfigError("safetensors: cannot write tensor '" + t.name + "' as " + std::string(dtype_name(t.dtype)) +
                              " (F32, F16, BF16 only)");
        if (t.name == "__metadata__" || !names.insert(t.name).second)
            throw ConfigError("safetensors: tensor name '" + t.name + "' is duplicated or reserved");
        std::size_t n = 1;
        for (auto d : t.shape) n *= d;
        if (n != t.data.size())
            throw ShapeError("safetensors: tensor '" + t.name + "' has shape " + shape_to_string(t.shape) + " (" +
                             std::to_string(n) + " elements) but " + std::to_string(t.data.size()) + " values");
        const std::size_t bytes = n * dtype_size(t.dtype);
        header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
        offset += bytes;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // keep the data 8-byte aligned, as the reference writer does
    std::vector<std::byte> out(8 + text.size() + offset);
    const std::uint64_t len = text.size();
    std::memcpy(out.data(), &len, 8);
    std::memcpy(out.data() + 8, text.data(), text.size());
    std::byte* dst = out.data() + 8 + text.size();
    for (const auto& t : tensors) {
        for (float v : t.data) {
            if (t.dtype == DType::F32) {
                std::memcpy(dst, &v, 4);
                dst += 4;
            } else {
                const std::uint16_t h = t.dtype == DType::F16 ? fp16::from_float(v) : bf16::from_float(v);
                std::memcpy(dst, &h, 2);
                dst += 2;
            }
        }
    }
    return out;
}

void save(const std::filesystem::path& path, std::span<const TensorToWrite> tensors,
          const std::map<std::string, std::string>& metadata) {
    const auto bytes = serialize(tensors, metadata);
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    if (!f) throw IoError("safetensors: cannot create '" + path.string() + "'");
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!f.flush()) throw IoError("safetensors: cannot write '" + path.string() + "'");
}

}  // namespace kvcache::safetensors
