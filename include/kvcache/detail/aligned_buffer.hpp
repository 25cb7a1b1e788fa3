// AlignedBuffer: one zero-initialised, cache-line aligned allocation of trivially copyable elements.
#pragma once

#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#include <fmt/format.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "kvcache/detail/checked.hpp"
#include "kvcache/error.hpp"

namespace kvcache::detail {

/// 64-byte alignment: a cache line, and enough for any AVX-512 load.
inline constexpr std::size_t kAlignment = 64;
/// Buffers of at least this size (a transparent huge page on x86-64 and most arm64 Linux) are aligned to it and
/// asked to be backed by huge pages: a step reads a model's weights and a pool's blocks spread over tens of MB,
/// and with 4 KiB pages every few KB of that read is another TLB miss and page walk.
inline constexpr std::size_t kHugePage = std::size_t{2} << 20;

/// The alignment of a buffer of `bytes` bytes.
inline constexpr std::size_t alignment_for(std::size_t bytes) { return bytes >= kHugePage ? kHugePage : kAlignment; }

template <class T>
class AlignedBuffer {
    static_assert(std::is_trivially_copyable_v<T>);

public:
    AlignedBuffer() = default;
    explicit AlignedBuffer(std::size_t count) : size_(count) {
        if (count == 0) return;
        const std::size_t bytes = checked_mul<ConfigError>(count, sizeof(T), "AlignedBuffer");
        void* p = nullptr;
        const std::size_t alignment = alignment_for(bytes);
        try {
            p = ::operator new(bytes, std::align_val_t{alignment});
        } catch (const std::bad_alloc&) {
            throw CapacityError(fmt::format("cannot allocate {} bytes ({:.2f} GiB) for a cache", bytes,
                                            static_cast<double>(bytes) / (1 << 30)));
        }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
        // Before the first touch (the memset), so the pages are faulted in huge. Only a hint: where transparent
        // huge pages are off it fails and nothing changes.
        if (alignment == kHugePage) (void)::madvise(p, bytes / kHugePage * kHugePage, MADV_HUGEPAGE);
#endif
        std::memset(p, 0, bytes);
        data_ = std::unique_ptr<T, Free>(static_cast<T*>(p), Free{alignment});
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
        std::size_t alignment = kAlignment;  // what the buffer was allocated with
        void operator()(T* p) const { ::operator delete(static_cast<void*>(p), std::align_val_t{alignment}); }
    };
    std::unique_ptr<T, Free> data_;
    std::size_t size_ = 0;
};

/// A std::vector allocator giving cache-line aligned storage: scratch that threads write side by side (a matmul's
/// tasks write their rows of every token's output in 64-byte pieces) then has each piece on one line rather than
/// split across two, one of them shared with the neighbouring task.
template <class T>
struct CacheLineAllocator {
    using value_type = T;
    CacheLineAllocator() = default;
    template <class U>
    CacheLineAllocator(const CacheLineAllocator<U>&) noexcept {}
    T* allocate(std::size_t n) {
        // (std::vector keeps n at most max_size(), so n * sizeof(T) does not overflow)
        return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{kAlignment}));
    }
    void deallocate(T* p, std::size_t) noexcept { ::operator delete(static_cast<void*>(p), std::align_val_t{kAlignment}); }
    template <class U>
    bool operator==(const CacheLineAllocator<U>&) const noexcept {
        return true;
    }
};

/// A std::vector whose data() is cache-line aligned.
template <class T>
using CacheLineVector = std::vector<T, CacheLineAllocator<T>>;

}  // namespace kvcache::detail
