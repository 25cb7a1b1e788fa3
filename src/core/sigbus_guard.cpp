#include "sigbus_guard.hpp"

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <mutex>

namespace kvcache::detail {

// A seqlock per range: `sequence` is odd while the range is published. begin/end are written only while it is
// even (between release_range and the next guard_range), so a handler that reads the same odd sequence before
// and after reading them has read one registration's bounds, never a mix of two.
struct GuardedRange {
    std::atomic<bool> owned{false};
    std::atomic<std::uint64_t> sequence{0};
    std::atomic<std::uintptr_t> begin{0};
    std::atomic<std::uintptr_t> end{0};
    std::atomic<bool> faulted{false};
    GuardedRange* next = nullptr;  // set before the range is pushed, never changed after
};

static_assert(std::atomic<std::uintptr_t>::is_always_lock_free && std::atomic<std::uint64_t>::is_always_lock_free &&
                  std::atomic<bool>::is_always_lock_free && std::atomic<GuardedRange*>::is_always_lock_free,
              "the SIGBUS handler may use only lock-free atomics");

namespace {

std::atomic<GuardedRange*> g_ranges{nullptr};
struct sigaction g_previous {};  // written before our handler is installed, read only by it
std::uintptr_t g_page_size = 4096;

// mmap by system call: sanitizer runtimes intercept mmap, and their interceptors are not meant for handlers.
void* map_zero_page(void* page) {
#ifdef SYS_mmap
    const long result = ::syscall(SYS_mmap, page, g_page_size, PROT_READ, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0L);
    return result == -1 ? MAP_FAILED : reinterpret_cast<void*>(result);
#else
    return ::mmap(page, g_page_size, PROT_READ, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
#endif
}

/// The range holding `address`, or null.
GuardedRange* find_range(std::uintptr_t address) {
    for (GuardedRange* r = g_ranges.load(std::memory_order_acquire); r != nullptr; r = r->next) {
        // Sequentially consistent loads and stores throughout (no fences: ThreadSanitizer does not model
        // atomic_thread_fence, and this path is far from hot): the bounds are read between two reads of the
        // sequence, and a publish writes the bounds only after the release that made the sequence even.
        const std::uint64_t before = r->sequence.load();
        if ((before & 1) == 0) continue;
        const std::uintptr_t begin = r->begin.load();
        const std::uintptr_t end = r->end.load();
        if (r->sequence.load() != before) continue;
        if (address >= begin && address < end) return r;
    }
    return nullptr;
}

/// Hands a SIGBUS that is not ours to whoever handled it before us.
void chain(int signal, siginfo_t* info, void* context) {
    if ((g_previous.sa_flags & SA_SIGINFO) != 0 && g_previous.sa_sigaction != nullptr) {
        g_previous.sa_sigaction(signal, info, context);
        return;
    }
    const bool sent = info->si_code <= 0;  // kill/raise/sigqueue, not a fault
    if (g_previous.sa_handler == SIG_IGN && sent) return;
    if (g_previous.sa_handler == SIG_DFL || g_previous.sa_handler == SIG_IGN) {
        // The default action: a fault re-executes the faulting instruction on return and ends the process with
        // SIGBUS as if we were never here; a sent signal is raised again (it stays blocked until we return).
        struct sigaction default_action {};
        default_action.sa_handler = SIG_DFL;
        sigemptyset(&default_action.sa_mask);
        ::sigaction(signal, &default_action, nullptr);
        if (sent) ::raise(signal);
        return;
    }
    g_previous.sa_handler(signal);
}

void on_sigbus(int signal, siginfo_t* info, void* context) {
    const int saved_errno = errno;
    const auto address = reinterpret_cast<std::uintptr_t>(info->si_addr);
    if (info->si_code > 0) {
        if (GuardedRange* range = find_range(address)) {
            void* page = reinterpret_cast<void*>(address & ~(g_page_size - 1));
            if (map_zero_page(page) != MAP_FAILED) {
                range->faulted.store(true, std::memory_order_release);
                errno = saved_errno;
                return;
            }
        }
    }
    errno = saved_errno;
    chain(signal, info, context);
}

void install_handler() {
    g_page_size = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    ::sigaction(SIGBUS, nullptr, &g_previous);
    struct sigaction ours {};
    ours.sa_sigaction = on_sigbus;
    ours.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&ours.sa_mask);
    ::sigaction(SIGBUS, &ours, nullptr);
}

}  // namespace

GuardedRange* guard_range(const void* begin, std::size_t length) {
    static std::once_flag installed;
    std::call_once(installed, install_handler);
    const auto first = reinterpret_cast<std::uintptr_t>(begin);
    const std::uintptr_t last = first + (length + g_page_size - 1) / g_page_size * g_page_size;
    const auto publish = [&](GuardedRange* r) {
        r->begin.store(first);
        r->end.store(last);
        r->faulted.store(false);
        r->sequence.fetch_add(1);  // odd: published
        return r;
    };
    for (GuardedRange* r = g_ranges.load(std::memory_order_acquire); r != nullptr; r = r->next) {
        bool expected = false;
        if (r->owned.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) return publish(r);
    }
    auto* r = new GuardedRange;  // kept for the life of the process (see GuardedRange)
    r->owned.store(true, std::memory_order_relaxed);
    publish(r);
    r->next = g_ranges.load(std::memory_order_relaxed);
    while (!g_ranges.compare_exchange_weak(r->next, r, std::memory_order_release, std::memory_order_relaxed)) {
    }
    return r;
}

bool range_faulted(const GuardedRange* range) noexcept { return range->faulted.load(std::memory_order_acquire); }

void release_range(GuardedRange* range) noexcept {
    range->sequence.fetch_add(1);  // even: the handler no longer matches it
    range->owned.store(false, std::memory_order_release);
}

}  // namespace kvcache::detail
