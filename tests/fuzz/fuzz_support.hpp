// Shared bits of the libFuzzer targets: a byte reader over the input and the "bug, abort" report.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

namespace kvcache::fuzz {

[[noreturn]] inline void broken(const char* target, const char* what, const std::string& detail) {
    std::fprintf(stderr, "%s: broken invariant: %s (%s)\n", target, what, detail.c_str());
    std::abort();
}

/// Consumes the fuzzer's input front to back; reads past the end give zeros / empty.
class Input {
public:
    Input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
    bool empty() const { return pos_ >= size_; }
    std::size_t remaining() const { return size_ - pos_; }
    std::uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
    template <typename T>
    T value() {
        T v{};
        const std::size_t n = std::min(sizeof(T), remaining());
        std::memcpy(&v, data_ + pos_, n);
        pos_ += n;
        return v;
    }
    std::string_view bytes(std::size_t n) {
        n = std::min(n, remaining());
        const std::string_view out(reinterpret_cast<const char*>(data_ + pos_), n);
        pos_ += n;
        return out;
    }
    std::string_view rest() { return bytes(remaining()); }

private:
    const std::uint8_t* data_;
    std::size_t size_;
    std::size_t pos_ = 0;
};

}  // namespace kvcache::fuzz
