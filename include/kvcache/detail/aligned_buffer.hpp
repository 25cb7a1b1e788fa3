// AlignedBuffer: one zero-initialised, cache-line aligned allocation of trivially copyable elements.
#pragma once

#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>

#include <fmt/format.h>

#include "kvcache/detail/checked.hpp"
#include "kvcache/error.hpp"

namespace kvcache::detail {

/// 64-byte alignment: a cache line, and enough for any AVX-512 load.
inline constexpr std::size_t kAlignment = 64;

template <class T>
class AlignedBuffer {
    static_assert(std::is_trivially_copyable_v<T>);

public:
    AlignedBuffer() = default;
    explicit AlignedBuffer(std::size_t count) : size_(count) {
        if (count == 0) return;
        const std::size_t bytes = checked_mul<ConfigError>(count, sizeof(T), "AlignedBuffer");
        void* p = nullptr;
        try {
            p = ::operator new(bytes, std::align_val_t{kAlignment});
        } catch (const std::bad_alloc&) {
            throw CapacityError(fmt::format("cannot allocate {} bytes ({:.2f} GiB) for a cache", bytes,
                                            static_cast<double>(bytes) / (1 << 30)));
        }
        std::memset(p, 0, bytes);
        data_.reset(static_cast<T*>(p));
    }
    AlignedBuffer(AlignedBuffer&&) noexcept = default;
    AlignedBuffer& operator=(AlignedBuffer&&) noexcept = default;

    /// Deep copy, explicit so its cost is visible at the call site.
    AlignedBuffer copy() const {
        AlignedBuffer out(size_);
        if (size_) std::memcpy(out.data(), data(), size_ * sizeof(T));
        return out;
    }

    T* data() { return data_.get(); }
    const T* data() const { return data_.get(); }
    std::size_t size() const { return size_; }
    std::size_t bytes() const { return size_ * sizeof(T); }

private:
    struct Free {
        void operator()(T* p) const { ::operator delete(static_cast<void*>(p), std::align_val_t{kAlignment}); }
    };
    std::unique_ptr<T, Free> data_;
    std::size_t size_ = 0;
};

}  // namespace kvcache::detail
