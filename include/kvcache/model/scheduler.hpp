// Scheduler: continuous batching of generation requests over one paged KV pool — one engine thread runs
// batched decoder steps while any thread submits, cancels and receives tokens.
//
// One step of the engine (Scheduler::step):
//   1. cancellations and queued requests are taken in: cancelled requests finish (their blocks go back to
//      the pool now); queued requests join the batch while fewer than max_batch run. A new request starts
//      from the longest prefix-cache match of its prompt (or continues a kept sequence);
//   2. the batch is planned: every decoding request feeds its last token, and prompts are fed in chunks
//      of at most prefill_chunk tokens per step in all (oldest request first) — prefill_tokens_per_decode per
//      decoding request while any decodes, so running streams keep their pace while a long prompt comes in;
//   3. if the pool lacks the blocks for that, unreferenced prefix-cache entries are evicted, then the
//      youngest requests are preempted: their tokens go into the prefix cache, their blocks back to the
//      pool, and they wait at the head of the queue to be recomputed later (bitwise the same, so their
//      output does not change). A request that does not fit even alone finishes with PoolExhaustedError;
//   4. one Decoder::forward over the whole batch (each weight read once per step);
//   5. each request whose prompt is in samples its next token with its own Sampler (own options, own
//      seed: the same tokens as alone), streams it (on_token), and finishes on EOS, a stop string,
//      max_new_tokens or a false from on_token. A finished request's sequence goes into the prefix cache
//      and its blocks back to the pool — or, with keep_sequence, stays as a kept sequence (a "slot").
//
// Determinism: a request's tokens depend only on its prompt, options and seed — not on what else runs,
// on the batch order, on preemption or on the thread count (the decoder's logits are batch-invariant).
//
// Threads: submit, cancel, stats, tokens and the kept-sequence operations may be called from any thread.
// on_token and on_done run on the engine thread (or the thread calling step()), with the engine lock held:
// they may call any member of the Scheduler, but should return quickly — the whole batch waits for them.
// The kept-sequence operations and exclusive() take the engine lock, so they run between steps.
//
// Memory: the K/V of every request lives in the pool; the scheduler keeps per request its tokens, a sampler
// and one row of logits. Nothing of the pool is touched outside the engine lock.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <vector>

#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/cache/prefix_cache.hpp"
#include "kvcache/error.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/sampling.hpp"

namespace kvcache {

class Tokenizer;

/// Names a submitted request; unique for the lifetime of a Scheduler (never reused), starting at 1.
using RequestId = std::uint64_t;

/// submit() refused a request because max_queued requests are already waiting.
class QueueFullError : public CapacityError {
public:
    using CapacityError::CapacityError;
};

/// The pool cannot hold a request's tokens even with every other request preempted and the prefix cache
/// emptied (blocks held by kept sequences stay theirs). Reported in RequestResult::exception.
class PoolExhaustedError : public CapacityError {
public:
    using CapacityError::CapacityError;
};

/// The most requests a scheduler runs at once: a step holds every running request's logits, and far fewer
/// sequences already make a CPU step compute-bound (docs/batching.md).
inline constexpr std::size_t kMaxBatchLimit = 4096;

struct SchedulerOptions {
    std::size_t max_batch = 16;       ///< requests running at once (decoding or prefilling); 1 to kMaxBatchLimit
    /// Prompt tokens fed per step, over all prefilling requests, while no request is decoding: nobody waits
    /// on the step, so big chunks (fewer weight passes: the shortest time to first token); >= 1.
    std::size_t prefill_chunk = 256;
    /// While requests decode (feed one token), prompts get this many tokens per step for each decoding request
    /// (at least 1 in all, at most prefill_chunk). A step costs about one pass over the weights plus each
    /// token's arithmetic and attention, and a prompt token costs about what a decoding stream does, so with d
    /// streams a step carrying 2d prompt tokens takes about (1 + 2d) / (1 + d) < 3 times their normal step
    /// (SmolLM2, 2 cores: 1.0x beside one stream, 2.1x beside four). The price is admission time: a 1024-token
    /// prompt beside one stream takes 512 steps. See docs/batching.md. >= 1.
    std::size_t prefill_tokens_per_decode = 2;
    std::size_t max_queued = 64;      ///< requests waiting to run; submit() beyond it throws QueueFullError
    int threads = 0;                  ///< threads of each forward pass; 0 → all the hardware offers
    /// The matmuls' arithmetic for every request (ForwardOptions::precision); int8 is faster and rounds
    /// the activations. One value for the whole batch, since requests share each step.
    MatmulPrecision precision = MatmulPrecision::f32;
};

enum class FinishReason {
    Length,     ///< max_new_tokens generated
    Stop,       ///< an end-of-generation token (with stop_at_eos) or a stop string
    Cancelled,  ///< cancel(), on_token returned false, or stop() with the request unfinished
    Error,      ///< see RequestResult::error and ::exception
};
/// "length", "stop", "cancelled", "error".
std::string_view finish_reason_name(FinishReason reason);

struct RequestOptions {
    std::size_t max_new_tokens = 64;
    SamplingOptions sampling;  ///< validated at submit (ConfigError); its seed seeds this request's sampler
    bool stop_at_eos = true;   ///< stop at the tokenizer's end-of-generation tokens (EOS, <|im_end|>, ...)
    /// Stop strings: generation stops when the text contains one; the text is cut before it. Text that might
    /// be the start of a stop string is held back from on_token until it is known not to be. Empty strings
    /// are ignored.
    std::vector<std::string> stop;
};

struct RequestResult;

struct Request {
    /// Tokens to feed. A new sequence (no continue_from) needs at least one; it starts from the longest
    /// prefix-cache match of prompt[0 .. size-1) and computes the rest.
    std::vector<std::int32_t> prompt;
    /// Feed the prompt after the tokens of this kept sequence (a slot): the request takes the sequence over
    /// (it is no longer a kept sequence while the request runs). With an empty prompt, nothing would give
    /// logits: a ConfigError at submit. If the sequence is not a kept one (released, running, never kept)
    /// the request finishes with Error (IndexError) when it would start.
    std::optional<SequenceId> continue_from;
    /// At the end keep the sequence (RequestResult::sequence) as a kept sequence instead of finishing it
    /// into the prefix cache. It holds every token fed: the prompt (after continue_from's tokens) and the
    /// generated tokens except the last (which was sampled, never fed). Kept on every finish reason.
    bool keep_sequence = false;
    RequestOptions options;
    /// Each generated token and the text it completes (whole UTF-8, may be empty while held back); return
    /// false to stop (FinishReason::Cancelled). Not called for an end-of-generation token. At the end, text
    /// still held back is passed once with token -1. Engine thread.
    std::function<bool(std::int32_t token, std::string_view piece)> on_token;
    /// Exactly once per accepted request, when it finishes for any reason. Engine thread (or the thread
    /// calling stop(), for requests stop() cancels).
    std::function<void(const RequestResult&)> on_done;
};

struct RequestResult {
    RequestId id = 0;
    std::vector<std::int32_t> tokens;  ///< generated ids, including an end-of-generation token that stopped it
    std::string text;                  ///< generated text, cut before a stop string
    FinishReason finish = FinishReason::Length;
    std::string error;                 ///< Error: the message
    std::exception_ptr exception;      ///< Error: the typed error (PoolExhaustedError, IndexError, ...)
    std::size_t prompt_tokens = 0;         ///< tokens of Request::prompt
    std::size_t reused_prompt_tokens = 0;  ///< of those, taken from the prefix cache (not computed)
    std::size_t preemptions = 0;           ///< times the request was preempted and later recomputed
    double queue_seconds = 0;      ///< submit → start (joined the batch)
    double prompt_seconds = 0;     ///< start → first generated token
    double decode_seconds = 0;     ///< first generated token → finish
    double tokens_per_second = 0;  ///< (generated tokens - 1) / decode_seconds; 0 for fewer than 2 tokens
    /// With keep_sequence: the kept sequence (for continue_from, fork, tokens, release). Empty otherwise or
    /// if the request never got a sequence.
    std::optional<SequenceId> sequence;
};

struct SchedulerStats {
    std::size_t running = 0;         ///< requests in the batch (decoding or prefilling)
    std::size_t queued = 0;          ///< requests waiting (submitted or preempted)
    std::size_t kept_sequences = 0;
    std::uint64_t steps = 0;         ///< forward passes run
    std::uint64_t submitted = 0, finished = 0, cancelled = 0, failed = 0, preempted = 0;
    std::uint64_t prompt_tokens_computed = 0;  ///< prompt tokens run through the model (recomputation included)
    std::uint64_t prompt_tokens_reused = 0;    ///< prompt tokens served by the prefix cache
    std::uint64_t generated_tokens = 0;
    std::size_t blocks_used = 0, blocks_free = 0;  ///< the pool's, after the last step
    std::size_t prefix_cached_blocks = 0;          ///< blocks the prefix cache holds, after the last step
};

/// The engine over a pool whose K/V are stored as T: float, fp16, bf16, q8_0, q4_0 or q4_0h (the types a cache can
/// be chosen with at run time, CacheElement; each is compiled once in the library). A request's tokens are
/// those generate_with_cache gives it alone over a cache of the same element type. `Scheduler` is the float one.
template <StorageElement T = float>
class BasicScheduler {
public:
    using Element = T;
    using Pool = PagedKVPool<T>;
    using Prefixes = PrefixCache<T>;

    /// The pool must fit the model (ShapeError) and the prefix cache (may be null: no reuse) must be over
    /// the pool (ConfigError); options are checked (ConfigError). All must outlive the Scheduler. While the
    /// Scheduler lives, touch the pool and prefix cache only through exclusive(). The decoder is used only
    /// by the engine (it keeps scratch buffers: do not run it elsewhere at the same time).
    BasicScheduler(Decoder& model, const Tokenizer& tokenizer, PagedKVPool<T>& pool,
                   PrefixCache<T>* prefix_cache = nullptr, SchedulerOptions options = {});
    /// stop(): unfinished requests are cancelled (on_done runs), kept sequences are freed.
    ~BasicScheduler();
    BasicScheduler(const BasicScheduler&) = delete;
    BasicScheduler& operator=(const BasicScheduler&) = delete;

    /// Queues a request and returns its id. Throws (and keeps nothing of the request) QueueFullError when
    /// max_queued requests wait, ConfigError for an empty prompt without continue_from or bad sampling
    /// options, IndexError for a prompt token outside the vocabulary. Thread-safe.
    RequestId submit(Request request);
    /// Cancels a queued or running request: it finishes with FinishReason::Cancelled and its blocks return
    /// to the pool at the start of the next step. Returns false (and does nothing) if the request is not
    /// waiting or running (finished, unknown). Thread-safe.
    bool cancel(RequestId id);

    /// Starts the engine thread: it runs step() while there is work and sleeps otherwise. ConfigError if it
    /// runs already.
    void start();
    /// Stops and joins the engine thread (if any), then cancels every queued and running request (on_done
    /// with Cancelled, on this thread). Kept sequences stay. Idempotent. ConfigError from a callback (the
    /// engine thread cannot wait for itself).
    void stop();
    /// One engine step on the caller's thread (for tests and callers without an engine thread; ConfigError
    /// while the engine thread runs). Returns whether work is left (requests queued or running).
    bool step();

    // ---- kept sequences (slots); each takes the engine lock, so it runs between steps ----
    /// A new kept sequence holding the first `position` tokens of kept sequence `from` (blocks shared,
    /// copy-on-write). IndexError if `from` is not kept or holds fewer tokens.
    SequenceId fork(SequenceId from, std::size_t position);
    /// Keeps the first n tokens of a kept sequence (no-op if it holds fewer). IndexError if not kept.
    void truncate(SequenceId id, std::size_t n);
    /// Ends a kept sequence: its tokens go into the prefix cache (if any and cache_prefix is CachePrefix::yes),
    /// its blocks back. IndexError if not kept.
    void release(SequenceId id, CachePrefix cache_prefix = CachePrefix::yes);
    /// The tokens a kept sequence holds (its K/V are in the pool). IndexError if not kept.
    std::vector<std::int32_t> tokens(SequenceId id) const;
    /// Makes a sequence of the pool (e.g. one loaded from a cache file inside exclusive()) a kept sequence
    /// whose K/V are those of `tokens`. IndexError if the pool has no such sequence or it is used already;
    /// ShapeError unless it holds exactly tokens.size() positions in every layer.
    void adopt(SequenceId id, std::vector<std::int32_t> tokens);
    /// Whether `id` is a kept sequence now.
    bool is_kept(SequenceId id) const;
    /// Runs f(pool, prefix_cache) under the engine lock (between steps) and returns what f returns: to save
    /// or load cache files, or read the pool. prefix_cache may be null. f must not free sequences the
    /// scheduler uses (running requests', kept ones — use release()).
    template <class F>
    decltype(auto) exclusive(F&& f) {
        const auto lock = lock_engine();
        return std::forward<F>(f)(*pool_, prefixes_);
    }

    SchedulerStats stats() const;
    const SchedulerOptions& options() const { return options_; }
    Decoder& model() const { return *model_; }
    const Tokenizer& tokenizer() const { return *tokenizer_; }

private:
    struct Active;  // a submitted request: queued, running or preempted
    struct KeptSequence;

    void engine_loop();
    bool step_locked();
    void take_cancellations_and_admit();
    void admit(std::unique_ptr<Active> a);
    void plan_and_fit();
    void run_batch();
    void after_forward(Active& a, std::span<const float> logits);
    /// Passes decoded text on (holding back what may start a stop string); true if a stop string ended it.
    bool emit_text(Active& a, std::int32_t token, const std::string& piece, bool& keep_going);
    void finish(std::unique_ptr<Active> a, FinishReason reason, std::exception_ptr error = nullptr);
    void preempt(std::unique_ptr<Active> a);
    void end_sequence(Active& a, CachePrefix cache_prefix);
    void publish_stats();
    std::unique_ptr<Active> take_running(const Active* a);
    void keep(SequenceId id, std::vector<std::int32_t> tokens);
    KeptSequence& kept(SequenceId id);
    const KeptSequence& kept(SequenceId id) const;

    Decoder* model_;
    const Tokenizer* tokenizer_;
    PagedKVPool<T>* pool_;
    PrefixCache<T>* prefixes_;
    SchedulerOptions options_;

    // The submit queue and pending cancellations: guarded by queue_mutex_ (held only briefly).
    mutable std::mutex queue_mutex_;
    std::condition_variable work_;
    std::deque<std::unique_ptr<Active>> queue_;
    std::unordered_set<RequestId> cancels_;     // ids cancel() accepted, handled at the next step
    std::unordered_set<RequestId> live_ids_;    // queued or running: what cancel() accepts
    RequestId next_id_ = 1;
    bool stopping_ = false;
    SchedulerStats stats_;                      // published at the end of each step (+ submitted, live)

    // The engine's state: guarded by engine_mutex_ (held for a whole step; recursive so that callbacks
    // running inside a step may call the kept-sequence operations).
    mutable std::recursive_mutex engine_mutex_;
    // Threads waiting for engine_mutex_ from outside a step. A mutex is not fair: an engine thread that
    // re-locked at once after each step would starve them for seconds on a quiet machine (a /health call
    // that waits for a whole generation). The engine lets every waiter in before its next step.
    mutable std::atomic<int> lock_waiters_{0};
    /// engine_mutex_, announced to the engine thread so that it steps aside (see lock_waiters_).
    std::unique_lock<std::recursive_mutex> lock_engine() const {
        ++lock_waiters_;
        std::unique_lock<std::recursive_mutex> lock(engine_mutex_);
        --lock_waiters_;
        return lock;
    }
    std::vector<std::unique_ptr<Active>> running_;    // in admission order (the youngest last)
    std::deque<std::unique_ptr<Active>> preempted_;   // wait ahead of the submit queue
    std::vector<std::unique_ptr<KeptSequence>> kept_; // by SequenceId::index (null: not kept)
    std::size_t kept_count_ = 0;
    SchedulerStats engine_stats_;                     // counters the engine updates
    std::vector<float> logits_;                       // (batch, vocab) rows of the requests that sample
    std::vector<PagedSequence<T>> handles_;       // (batch) the caches of one step's items
    std::vector<ForwardItem<PagedSequence<T>>> items_;  // (batch)
    std::vector<Active*> in_step_;                    // (batch) whose item each is
    std::atomic<std::size_t> engine_work_{0};         // running + preempted, for the engine's sleep check

    std::thread engine_;
    std::atomic<bool> engine_running_{false};
};

/// The scheduler over a float pool.
using Scheduler = BasicScheduler<float>;

// Compiled in the library (src/model/scheduler.cpp) for these element types only.
extern template class BasicScheduler<float>;
extern template class BasicScheduler<fp16>;
extern template class BasicScheduler<bf16>;
extern template class BasicScheduler<q8_0>;
extern template class BasicScheduler<q4_0>;
extern template class BasicScheduler<q4_0h>;

}  // namespace kvcache
