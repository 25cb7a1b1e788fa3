// The thread pool behind detail::parallel_for and the thread-count policy (see detail/thread_pool.hpp).
#include "kvcache/detail/thread_pool.hpp"

#include "kvcache/detail/aligned_buffer.hpp"  // kAlignment: a cache line
#include "kvcache/detail/helper_governor.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include <sched.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace kvcache::detail {

namespace {

thread_local bool t_inside_parallel = false;

/// One step of a busy wait: tells the core (and a hyperthread sibling) that this thread is only polling.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
}

/// How long an idle helper keeps polling for the next job before it sleeps on the condition variable. A decoder
/// step opens a job every 10-100 us (one per matmul); waking a sleeping thread costs about as much on a VM
/// (futex + IPI), so a helper that sleeps between jobs arrives late to every one. While polling, the helper
/// yields the core at every step (sched_yield), so on a core shared with another runnable thread (the caller,
/// or another program) polling takes only what that thread leaves idle.
constexpr auto kHelperPoll = std::chrono::microseconds(300);

/// Marks the current thread as running tasks for the scope, restoring the previous mark (nested inline calls).
class InsideParallel {
public:
    InsideParallel() : previous_(t_inside_parallel) { t_inside_parallel = true; }
    ~InsideParallel() { t_inside_parallel = previous_; }
    InsideParallel(const InsideParallel&) = delete;
    InsideParallel& operator=(const InsideParallel&) = delete;

private:
    bool previous_;
};

/// A participant's share of a job's chunks, [front, back), packed in one word so that the owner (taking from the
/// front) and a thief (taking from the back) claim with one compare-and-swap each. Each range has a cache line of
/// its own: packed side by side, every claim of one thread took the line from the other's core (a matmul's chunk
/// is ~0.5 us of work, a line moving between cores ~0.1-0.2 us).
class alignas(kAlignment) ChunkRange {
public:
    void assign(std::uint32_t front, std::uint32_t back) { word_.store(pack(front, back), std::memory_order_relaxed); }

    /// The next chunk from the front (the owner's end), if any is left.
    bool take_front(std::uint32_t& chunk) { return take(chunk, true); }
    /// The last chunk (the thieves' end), if any is left.
    bool take_back(std::uint32_t& chunk) { return take(chunk, false); }

    bool empty() const {
        const std::uint64_t w = word_.load(std::memory_order_relaxed);
        return front_of(w) >= back_of(w);
    }

private:
    static std::uint64_t pack(std::uint32_t front, std::uint32_t back) { return (std::uint64_t{back} << 32) | front; }
    static std::uint32_t front_of(std::uint64_t w) { return static_cast<std::uint32_t>(w); }
    static std::uint32_t back_of(std::uint64_t w) { return static_cast<std::uint32_t>(w >> 32); }

    bool take(std::uint32_t& chunk, bool from_front) {
        std::uint64_t w = word_.load(std::memory_order_relaxed);
        for (;;) {
            const std::uint32_t front = front_of(w);
            const std::uint32_t back = back_of(w);
            if (front >= back) return false;
            chunk = from_front ? front : back - 1;
            const std::uint64_t next = from_front ? pack(front + 1, back) : pack(front, back - 1);
            if (word_.compare_exchange_weak(w, next, std::memory_order_relaxed)) return true;
        }
    }

    std::atomic<std::uint64_t> word_{0};
};

/// Most participants (caller + helpers) one job splits its chunks between; more threads than this share them.
constexpr int kMaxParticipants = 64;

/// One parallel_for call: lives on the caller's stack until every helper that joined has left.
///
/// The chunks are split up front into one contiguous range per participant (the caller's first), so each thread
/// streams through one stretch of memory the hardware prefetcher can follow. A participant runs its own range
/// front to back, then steals chunks from the back of the others' ranges: a helper that starts late, or never,
/// only has its range finished by the others. Which thread runs a chunk never changes what the chunk computes.
struct Job {
    std::size_t tasks = 0;
    std::size_t chunk = 1;
    ParallelBody body = nullptr;
    void* context = nullptr;
    int participants = 1;              // ranges in use: the caller's and one per seat
    ChunkRange ranges[kMaxParticipants];
    std::atomic<bool> failed{false};
    int open_seats = 0;                // helpers that may still join (pool mutex)
    int joined = 0;                    // helpers that joined so far: the next one owns range joined + 1 (pool mutex)
    std::atomic<int> running{0};       // helpers inside work(): incremented under the pool mutex; a helper's
                                       // decrement is its last access to the job
    std::mutex error_mutex;
    std::exception_ptr error;          // the first exception a task threw (error_mutex)

    /// Splits chunks [0, chunks) into `n` contiguous ranges of (nearly) equal length.
    void split(std::uint32_t chunks, int n) {
        participants = n;
        for (int i = 0; i < n; ++i) {
            const auto lo = static_cast<std::uint32_t>(std::uint64_t{chunks} * static_cast<std::uint64_t>(i) /
                                                       static_cast<std::uint64_t>(n));
            const auto hi = static_cast<std::uint32_t>(std::uint64_t{chunks} * static_cast<std::uint64_t>(i + 1) /
                                                       static_cast<std::uint64_t>(n));
            ranges[i].assign(lo, hi);
        }
    }

    bool has_unclaimed() const {
        for (int i = 0; i < participants; ++i) {
            if (!ranges[i].empty()) return true;
        }
        return false;
    }

    /// Runs range `own` from the front, then steals from the back of the others' until none is left (or a task
    /// has failed).
    void work(int own) {
        std::uint32_t c = 0;
        while (ranges[own].take_front(c)) {
            if (!run_chunk(c)) return;
        }
        for (int step = 1; step < participants; ++step) {
            ChunkRange& victim = ranges[(own + step) % participants];
            while (victim.take_back(c)) {
                if (!run_chunk(c)) return;
            }
        }
    }

private:
    /// Runs one chunk; false once any task has failed (the first exception is kept).
    bool run_chunk(std::uint32_t c) {
        if (failed.load(std::memory_order_relaxed)) return false;
        const std::size_t begin = std::size_t{c} * chunk;
        try {
            body(context, begin, std::min(tasks, begin + chunk));
        } catch (...) {
            const std::lock_guard<std::mutex> lock(error_mutex);
            if (!error) error = std::current_exception();
            failed.store(true, std::memory_order_relaxed);
            return false;
        }
        return true;
    }
};

class Pool {
public:
    explicit Pool(int helpers) {
        threads_.reserve(static_cast<std::size_t>(std::max(helpers, 0)));
        for (int i = 0; i < helpers; ++i) threads_.emplace_back([this] { serve(); });
    }
    ~Pool() {
        {
            const std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        for (auto& t : threads_) t.join();
    }
    Pool(const Pool&) = delete;
    Pool& operator=(const Pool&) = delete;

    int helpers() const { return static_cast<int>(threads_.size()); }

    /// Runs `job` on the caller and on up to `helpers_wanted` helpers; returns when every task has run.
    void run(Job& job, int helpers_wanted) {
        const int seats = std::min({helpers_wanted, helpers(), kMaxParticipants - 1});
        job.split(static_cast<std::uint32_t>((job.tasks + job.chunk - 1) / job.chunk), seats + 1);
        int sleeping = 0;
        {
            const std::lock_guard<std::mutex> lock(mutex_);
            job.open_seats = seats;
            open_.push_back(&job);
            generation_.fetch_add(1, std::memory_order_release);  // polling helpers see the new job
            sleeping = sleeping_;
        }
        for (int i = 0; i < std::min(seats, sleeping); ++i) wake_.notify_one();
        {
            const InsideParallel inside;
            job.work(0);
        }
        {
            const std::lock_guard<std::mutex> lock(mutex_);
            // Closed: a helper that looks from now on does not see this job.
            open_.erase(std::find(open_.begin(), open_.end(), &job));
        }
        // Only helpers that joined are waited for; each is finishing a chunk it claimed (every chunk is short),
        // so poll rather than sleep — yielding, in case that helper waits for this core.
        for (unsigned spins = 0; job.running.load(std::memory_order_acquire) != 0; ++spins) {
            if (spins < 64) {
                cpu_relax();
            } else {
                sched_yield();
            }
        }
    }

private:
    Job* joinable_job() const {
        for (Job* job : open_) {
            if (job->open_seats > 0 && job->has_unclaimed()) return job;
        }
        return nullptr;
    }

    /// Polls for a new job for up to kHelperPoll after `seen`, yielding the core between looks. True if one came.
    bool poll_for_job(std::uint64_t seen) const {
        const auto deadline = std::chrono::steady_clock::now() + kHelperPoll;
        for (;;) {
            // Looks between the pauses, so a job that opens is seen within one pause rather than after a whole
            // round (a decoder step opens one every 10-100 us; each costs its wait in every helper).
            for (int i = 0; i < 16; ++i) {
                if (generation_.load(std::memory_order_acquire) != seen) return true;
                cpu_relax();
            }
            sched_yield();
            if (std::chrono::steady_clock::now() >= deadline) return false;
        }
    }

    void serve() {
        t_inside_parallel = true;  // a parallel_for inside a task runs inline: no helper waits on another
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            Job* job = joinable_job();
            if (job == nullptr && !stopping_) {
                const std::uint64_t seen = generation_.load(std::memory_order_relaxed);
                lock.unlock();
                const bool arrived = poll_for_job(seen);
                lock.lock();
                job = joinable_job();
                if (job == nullptr && !arrived) {
                    ++sleeping_;
                    wake_.wait(lock, [&] { return stopping_ || (job = joinable_job()) != nullptr; });
                    --sleeping_;
                }
            }
            if (stopping_) return;
            if (job == nullptr) continue;  // the job that arrived was already taken or done
            --job->open_seats;
            const int own = ++job->joined;
            job->running.fetch_add(1, std::memory_order_relaxed);
            lock.unlock();
            job->work(own);
            // The last access to the job: once running is 0 the caller may return and destroy it.
            job->running.fetch_sub(1, std::memory_order_release);
            lock.lock();
        }
    }

    std::mutex mutex_;
    std::condition_variable wake_;  // a job opened, or the pool stops
    std::vector<Job*> open_;        // jobs helpers may join
    std::atomic<std::uint64_t> generation_{0};  // jobs opened so far: what polling helpers watch
    int sleeping_ = 0;              // helpers waiting on wake_ (pool mutex): the caller signals only these
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

Pool& pool() {
    static Pool instance(hardware_threads() - 1);
    return instance;
}

/// The calling thread's governor: each thread that calls parallel_for measures its own calls.
HelperGovernor& governor() {
    thread_local HelperGovernor instance;
    return instance;
}

int threads_from_environment() {
    const char* text = std::getenv("KVCACHE_THREADS");
    if (text == nullptr || *text == '\0') return 0;
    char* end = nullptr;
    const long value = std::strtol(text, &end, 10);
    if (*end != '\0' || value <= 0) return 0;
    return static_cast<int>(std::min<long>(value, 1 << 16));
}

}  // namespace

int hardware_threads() {
    static const int n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    return n;
}

int default_threads() {
    static const int n = [] {
        const int from_environment = threads_from_environment();
        return from_environment > 0 ? std::min(from_environment, hardware_threads()) : hardware_threads();
    }();
    return n;
}

int thread_count(int requested, std::size_t tasks, std::size_t bytes) {
    if (tasks <= 1 || bytes < kMinParallelBytes) return 1;
    const int wanted = requested > 0 ? std::min(requested, hardware_threads()) : default_threads();
    return static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(wanted), tasks));
}

bool inside_parallel_for() noexcept { return t_inside_parallel; }

void run_parallel(std::size_t tasks, std::size_t chunk, int threads, const ParallelOptions& options,
                  ParallelBody body, void* context) {
    if (chunk == 0) chunk = 1;
    if (t_inside_parallel || threads <= 1 || tasks <= chunk) {
        body(context, 0, tasks);
        return;
    }
    // Chunk indices are 32-bit (ChunkRange); a larger job takes larger chunks.
    constexpr std::size_t kMaxChunks = std::size_t{1} << 31;
    if ((tasks + chunk - 1) / chunk > kMaxChunks) chunk = (tasks + kMaxChunks - 1) / kMaxChunks;

    if (options.helpers == HelperUse::measured) {
        const std::chrono::duration<double, std::micro> now = std::chrono::steady_clock::now().time_since_epoch();
        const ParallelCallKey key{reinterpret_cast<const void*>(body), tasks, chunk, options.size};
        if (governor().next(key, now.count()).way == HelperGovernor::Way::alone) {
            // As the caller runs its share of a pooled call: a nested parallel_for inside runs inline.
            const InsideParallel inside;
            body(context, 0, tasks);
            return;
        }
    }
    Job job;
    job.tasks = tasks;
    job.chunk = chunk;
    job.body = body;
    job.context = context;
    const std::size_t chunks = (tasks + chunk - 1) / chunk;
    pool().run(job, static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(threads - 1), chunks - 1)));
    if (job.error) std::rethrow_exception(job.error);
}

}  // namespace kvcache::detail
