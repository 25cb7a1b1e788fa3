// The thread pool behind detail::parallel_for and the thread-count policy (see detail/thread_pool.hpp).
#include "kvcache/detail/thread_pool.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace kvcache::detail {

namespace {

thread_local bool t_inside_parallel = false;

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

/// One parallel_for call: lives on the caller's stack until every helper that joined has left.
struct Job {
    std::size_t tasks = 0;
    std::size_t chunk = 1;
    ParallelBody body = nullptr;
    void* context = nullptr;
    std::atomic<std::size_t> next{0};  // first unclaimed task
    std::atomic<bool> failed{false};
    int open_seats = 0;                // helpers that may still join (pool mutex)
    int running = 0;                   // helpers inside work() (pool mutex)
    std::mutex error_mutex;
    std::exception_ptr error;          // the first exception a task threw (error_mutex)

    bool has_unclaimed() const { return next.load(std::memory_order_relaxed) < tasks; }

    /// Claims and runs chunks until none are left (or a task has failed).
    void work() {
        while (!failed.load(std::memory_order_relaxed)) {
            const std::size_t begin = next.fetch_add(chunk, std::memory_order_relaxed);
            if (begin >= tasks) return;
            try {
                body(context, begin, std::min(tasks, begin + chunk));
            } catch (...) {
                const std::lock_guard<std::mutex> lock(error_mutex);
                if (!error) error = std::current_exception();
                failed.store(true, std::memory_order_relaxed);
                return;
            }
        }
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
        const int seats = std::min(helpers_wanted, helpers());
        {
            const std::lock_guard<std::mutex> lock(mutex_);
            job.open_seats = seats;
            open_.push_back(&job);
        }
        for (int i = 0; i < seats; ++i) wake_.notify_one();
        {
            const InsideParallel inside;
            job.work();
        }
        std::unique_lock<std::mutex> lock(mutex_);
        // Closed: a helper that wakes from now on does not see this job.
        open_.erase(std::find(open_.begin(), open_.end(), &job));
        // Only helpers that joined are waited for; each has claimed its chunk or is about to find none left.
        done_.wait(lock, [&] { return job.running == 0; });
    }

private:
    Job* joinable_job() const {
        for (Job* job : open_) {
            if (job->open_seats > 0 && job->has_unclaimed()) return job;
        }
        return nullptr;
    }

    void serve() {
        t_inside_parallel = true;  // a parallel_for inside a task runs inline: no helper waits on another
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            Job* job = nullptr;
            wake_.wait(lock, [&] { return stopping_ || (job = joinable_job()) != nullptr; });
            if (stopping_) return;
            --job->open_seats;
            ++job->running;
            lock.unlock();
            job->work();
            lock.lock();
            // Under the mutex: the caller cannot see running == 0 and destroy the job before this returns.
            if (--job->running == 0) done_.notify_all();
        }
    }

    std::mutex mutex_;
    std::condition_variable wake_;  // a job opened, or the pool stops
    std::condition_variable done_;  // a job's last helper left
    std::vector<Job*> open_;        // jobs helpers may join
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

Pool& pool() {
    static Pool instance(hardware_threads() - 1);
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

void run_parallel(std::size_t tasks, std::size_t chunk, int threads, ParallelBody body, void* context) {
    if (chunk == 0) chunk = 1;
    if (t_inside_parallel || threads <= 1 || tasks <= chunk) {
        body(context, 0, tasks);
        return;
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
