// The continuous-batching engine: admission, chunked prefill, preemption, sampling and kept sequences.
#include "kvcache/model/scheduler.hpp"

#include <algorithm>
#include <chrono>
#include <new>

#include <fmt/format.h>

#include "kvcache/detail/checked.hpp"

#include "kvcache/model/tokenizer.hpp"

namespace kvcache {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

}  // namespace

std::string_view finish_reason_name(FinishReason reason) {
    switch (reason) {
        case FinishReason::Length: return "length";
        case FinishReason::Stop: return "stop";
        case FinishReason::Cancelled: return "cancelled";
        case FinishReason::Error: return "error";
    }
    return "?";
}

template <StorageElement T>
struct BasicScheduler<T>::Active {
    Active(RequestId request_id, Request r, const Tokenizer& tokenizer)
        : id(request_id),
          request(std::move(r)),
          sampler(request.options.sampling),
          stream(tokenizer, {.render_special = false}) {}

    RequestId id;
    Request request;
    Sampler sampler;
    TokenStreamDecoder stream;
    std::optional<SequenceId> sequence;  // its K/V in the pool, while running
    std::vector<std::int32_t> fed;       // tokens whose K/V the sequence holds
    std::vector<std::int32_t> to_feed;   // tokens to run next; after the last of them a token is sampled
    std::string held;                    // decoded text not yet passed on (may be the start of a stop string)
    RequestResult result;
    std::size_t chunk = 0;               // tokens of to_feed this step runs
    bool admitted_once = false;
    bool text_closed = false;            // a stop string ended the text: nothing after it is passed on
    Clock::time_point submitted, started, first_token;
};

template <StorageElement T>
struct BasicScheduler<T>::KeptSequence {
    SequenceId id;
    std::vector<std::int32_t> tokens;
};

template <StorageElement T>
BasicScheduler<T>::BasicScheduler(Decoder& model, const Tokenizer& tokenizer, PagedKVPool<T>& pool,
                                  PrefixCache<T>* prefix_cache, SchedulerOptions options)
    : model_(&model), tokenizer_(&tokenizer), pool_(&pool), prefixes_(prefix_cache), options_(options) {
    const auto layers = model.cache_layers();
    bool fits = layers.size() == pool.num_layers();
    for (std::size_t l = 0; fits && l < layers.size(); ++l) fits = layers[l] == pool.layer_shape(l);
    if (!fits) {
        throw ShapeError(fmt::format("Scheduler: the pool has {} layers of {}x{}, the model needs {} of {}x{}",
                                     pool.num_layers(), pool.num_kv_heads(0), pool.head_dim(0), layers.size(),
                                     layers[0].kv_heads, layers[0].head_dim));
    }
    if (prefix_cache && &prefix_cache->pool() != &pool) {
        throw ConfigError("Scheduler: the prefix cache belongs to another pool");
    }
    if (options.max_batch == 0 || options.prefill_chunk == 0 || options.prefill_tokens_per_decode == 0) {
        throw ConfigError(fmt::format(
            "Scheduler: max_batch ({}), prefill_chunk ({}) and prefill_tokens_per_decode ({}) must be >= 1",
            options.max_batch, options.prefill_chunk, options.prefill_tokens_per_decode));
    }
    if (options.threads < 0) throw ConfigError(fmt::format("Scheduler: threads is {}; must be >= 0", options.threads));
    if (options.max_batch > kMaxBatchLimit) {
        throw ConfigError(fmt::format("Scheduler: max_batch is {}; at most {} requests can run at once",
                                      options.max_batch, kMaxBatchLimit));
    }
    // The logits of a full batch are allocated now, once: an allocation that cannot succeed is a CapacityError
    // naming the size, not a std::bad_alloc.
    const std::size_t logits = detail::checked_product("Scheduler: logits of max_batch requests", options.max_batch,
                                                       model.config().vocab_size);
    try {
        logits_.resize(logits);
    } catch (const std::bad_alloc&) {
        throw CapacityError(fmt::format("Scheduler: cannot allocate the logits of {} requests ({} floats)",
                                        options.max_batch, logits));
    }
    handles_.reserve(options.max_batch);
    items_.reserve(options.max_batch);
    in_step_.reserve(options.max_batch);
    running_.reserve(options.max_batch);
    publish_stats();
}

template <StorageElement T>
BasicScheduler<T>::~BasicScheduler() {
    stop();
    std::lock_guard<std::recursive_mutex> lock(engine_mutex_);
    for (auto& k : kept_) {
        if (k && pool_->contains(k->id)) pool_->free_sequence(k->id);
    }
    kept_.clear();
}

// ---- submission ----

template <StorageElement T>
RequestId BasicScheduler<T>::submit(Request request) {
    const std::size_t vocab = model_->config().vocab_size;
    if (request.prompt.empty()) {
        throw ConfigError(request.continue_from
                              ? "Scheduler::submit: continuing a sequence needs at least one token to feed"
                              : "Scheduler::submit: the prompt has no tokens");
    }
    for (std::size_t t = 0; t < request.prompt.size(); ++t) {
        if (request.prompt[t] < 0 || static_cast<std::size_t>(request.prompt[t]) >= vocab) {
            throw IndexError(fmt::format("Scheduler::submit: token {} (at index {}) is outside the vocabulary of {}",
                                         request.prompt[t], t, vocab));
        }
    }
    validate(request.options.sampling);
    std::unique_lock<std::mutex> lock(queue_mutex_);
    if (queue_.size() >= options_.max_queued) {
        throw QueueFullError(fmt::format("Scheduler::submit: {} requests are waiting, the limit (max_queued) is {}",
                                         queue_.size(), options_.max_queued));
    }
    const RequestId id = next_id_;
    auto a = std::make_unique<Active>(id, std::move(request), *tokenizer_);
    a->submitted = Clock::now();
    a->result.id = id;
    a->result.prompt_tokens = a->request.prompt.size();
    a->to_feed = a->request.prompt;
    live_ids_.insert(id);
    queue_.push_back(std::move(a));
    ++next_id_;
    ++stats_.submitted;
    lock.unlock();
    work_.notify_all();
    return id;
}

template <StorageElement T>
bool BasicScheduler<T>::cancel(RequestId id) {
    {
        std::lock_guard<std::mutex> lock(queue_mutex_);
        if (!live_ids_.contains(id)) return false;
        cancels_.insert(id);
    }
    work_.notify_all();
    return true;
}

// ---- the engine ----

template <StorageElement T>
void BasicScheduler<T>::start() {
    std::lock_guard<std::recursive_mutex> lock(engine_mutex_);
    if (engine_running_) throw ConfigError("Scheduler::start: the engine thread runs already");
    {
        std::lock_guard<std::mutex> q(queue_mutex_);
        stopping_ = false;
    }
    engine_running_ = true;
    engine_ = std::thread([this] { engine_loop(); });
}

template <StorageElement T>
void BasicScheduler<T>::stop() {
    if (engine_running_ && std::this_thread::get_id() == engine_.get_id()) {
        throw ConfigError("Scheduler::stop: called from the engine thread (a callback); it would wait for itself");
    }
    {
        std::lock_guard<std::mutex> q(queue_mutex_);
        stopping_ = true;
    }
    work_.notify_all();
    if (engine_.joinable()) engine_.join();
    engine_running_ = false;
    std::lock_guard<std::recursive_mutex> lock(engine_mutex_);
    std::deque<std::unique_ptr<Active>> waiting;
    {
        std::lock_guard<std::mutex> q(queue_mutex_);
        waiting.swap(queue_);
        stopping_ = false;
    }
    for (auto& a : waiting) finish(std::move(a), FinishReason::Cancelled);
    while (!preempted_.empty()) {
        auto a = std::move(preempted_.front());
        preempted_.pop_front();
        finish(std::move(a), FinishReason::Cancelled);
    }
    while (!running_.empty()) finish(take_running(running_.back().get()), FinishReason::Cancelled);
    publish_stats();
}

template <StorageElement T>
void BasicScheduler<T>::engine_loop() {
    for (;;) {
        {
            std::unique_lock<std::mutex> q(queue_mutex_);
            work_.wait(q, [&] { return stopping_ || !queue_.empty() || !cancels_.empty() || engine_work_ > 0; });
            if (stopping_) return;
        }
        {
            std::lock_guard<std::recursive_mutex> lock(engine_mutex_);
            step_locked();
        }
        // Let callers between steps (stats, slots, cache files) in before the next step.
        while (lock_waiters_.load() > 0) std::this_thread::yield();
    }
}

template <StorageElement T>
bool BasicScheduler<T>::step() {
    if (engine_running_ && std::this_thread::get_id() != engine_.get_id()) {
        throw ConfigError("Scheduler::step: the engine thread runs; it steps by itself");
    }
    std::lock_guard<std::recursive_mutex> lock(engine_mutex_);
    return step_locked();
}

template <StorageElement T>
bool BasicScheduler<T>::step_locked() {
    take_cancellations_and_admit();
    plan_and_fit();
    run_batch();
    publish_stats();
    std::lock_guard<std::mutex> q(queue_mutex_);
    return !running_.empty() || !preempted_.empty() || !queue_.empty();
}

template <StorageElement T>
void BasicScheduler<T>::take_cancellations_and_admit() {
    std::unordered_set<RequestId> cancels;
    std::vector<std::unique_ptr<Active>> joining, cancelled;
    {
        std::lock_guard<std::mutex> q(queue_mutex_);
        cancels.swap(cancels_);
        for (auto it = queue_.begin(); it != queue_.end();) {
            if (cancels.contains((*it)->id)) {
                cancelled.push_back(std::move(*it));
                it = queue_.erase(it);
            } else {
                ++it;
            }
        }
        // Preempted requests go first; new ones fill what room is left.
        const std::size_t taken = running_.size() + preempted_.size();
        std::size_t room = options_.max_batch > taken ? options_.max_batch - taken : 0;
        while (room > 0 && !queue_.empty()) {
            joining.push_back(std::move(queue_.front()));
            queue_.pop_front();
            --room;
        }
    }
    for (auto& a : cancelled) finish(std::move(a), FinishReason::Cancelled);
    if (!cancels.empty()) {
        for (std::size_t i = running_.size(); i-- > 0;) {
            if (i < running_.size() && cancels.contains(running_[i]->id)) {
                finish(take_running(running_[i].get()), FinishReason::Cancelled);
            }
        }
        for (auto it = preempted_.begin(); it != preempted_.end();) {
            if (cancels.contains((*it)->id)) {
                auto a = std::move(*it);
                it = preempted_.erase(it);
                finish(std::move(a), FinishReason::Cancelled);
            } else {
                ++it;
            }
        }
    }
    while (!preempted_.empty() && running_.size() < options_.max_batch) {
        auto a = std::move(preempted_.front());
        preempted_.pop_front();
        admit(std::move(a));
    }
    for (auto& a : joining) admit(std::move(a));
}

template <StorageElement T>
void BasicScheduler<T>::admit(std::unique_ptr<Active> a) {
    const bool first_time = !a->admitted_once;
    if (first_time && a->request.continue_from) {
        // Take the kept sequence over: its tokens are in the pool already.
        const SequenceId from = *a->request.continue_from;
        const std::size_t index = from.index;
        if (index >= kept_.size() || !kept_[index] || kept_[index]->id != from) {
            finish(std::move(a), FinishReason::Error,
                   std::make_exception_ptr(IndexError(fmt::format(
                       "Scheduler: sequence {} (generation {}) is not a kept sequence (released, in use by another "
                       "request, or never kept)",
                       from.index, from.generation))));
            return;
        }
        a->fed = std::move(kept_[index]->tokens);
        kept_[index].reset();
        --kept_count_;
        a->sequence = from;
    } else {
        // A new sequence (or a preempted one's again): start from the longest cached prefix, never the last
        // token (its logits are wanted).
        const std::span<const std::int32_t> all(a->to_feed);
        std::size_t reused = 0;
        if (prefixes_) {
            const PrefixMatch m = prefixes_->match(all.first(all.size() - 1));
            a->sequence = pool_->create_sequence(m.blocks, m.tokens);
            reused = m.tokens;
        } else {
            a->sequence = pool_->create_sequence();
        }
        a->fed.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(reused));
        a->to_feed.erase(a->to_feed.begin(), a->to_feed.begin() + static_cast<std::ptrdiff_t>(reused));
        engine_stats_.prompt_tokens_reused += reused;
        if (first_time) a->result.reused_prompt_tokens = reused;
    }
    if (first_time) {
        a->started = Clock::now();
        a->result.queue_seconds = seconds_between(a->submitted, a->started);
        a->admitted_once = true;
    }
    running_.push_back(std::move(a));
}

template <StorageElement T>
void BasicScheduler<T>::plan_and_fit() {
    for (;;) {
        // While streams decode, their step latency bounds what prompts may add to the step: a prompt token
        // costs about what a decoding stream does, so the share grows with the number of streams.
        const auto decoding = static_cast<std::size_t>(
            std::count_if(running_.begin(), running_.end(), [](const auto& a) { return a->to_feed.size() == 1; }));
        std::size_t budget = decoding == 0 ? options_.prefill_chunk
                                           : std::clamp<std::size_t>(decoding * options_.prefill_tokens_per_decode, 1,
                                                                     options_.prefill_chunk);
        std::size_t needed = 0;
        for (auto& a : running_) {
            const std::size_t n = a->to_feed.size();
            a->chunk = n == 1 ? 1 : std::min(n, budget);  // a decode step (one token) is never held back
            if (n > 1) budget -= a->chunk;
            needed += pool_->blocks_needed(*a->sequence, a->chunk);
        }
        if (needed <= pool_->free_blocks()) return;
        if (prefixes_) {
            prefixes_->evict_for(needed - pool_->free_blocks());
            if (needed <= pool_->free_blocks()) return;
        }
        if (running_.size() == 1) {
            const Active& a = *running_.front();
            const std::string message = fmt::format(
                "Scheduler: request {} needs {} free blocks for its next {} tokens (it holds {} positions); the "
                "pool has {} of {} free with nothing else running",
                a.id, needed, a.chunk, a.fed.size(), pool_->free_blocks(), pool_->num_blocks());
            finish(take_running(&a), FinishReason::Error, std::make_exception_ptr(PoolExhaustedError(message)));
            return;
        }
        preempt(take_running(running_.back().get()));
    }
}

template <StorageElement T>
void BasicScheduler<T>::run_batch() {
    handles_.clear();
    items_.clear();
    in_step_.clear();
    handles_.reserve(running_.size());  // items_ point into handles_: it must not reallocate below
    const std::size_t vocab = model_->config().vocab_size;
    std::size_t sampling = 0;
    for (auto& a : running_) {
        if (a->chunk == 0) continue;
        handles_.push_back(pool_->sequence(*a->sequence));
        const bool samples = a->chunk == a->to_feed.size() && a->request.options.max_new_tokens > 0;
        const std::span<float> logits =
            samples ? std::span<float>(logits_.data() + (sampling++) * vocab, vocab) : std::span<float>();
        items_.push_back({std::span<const std::int32_t>(a->to_feed.data(), a->chunk), &handles_.back(), 0, logits});
        in_step_.push_back(a.get());
    }
    if (items_.empty()) return;
    try {
        model_->forward(std::span<const ForwardItem<PagedSequence<T>>>(items_),
                        ForwardOptions{.threads = options_.threads, .precision = options_.precision});
    } catch (...) {
        // The decoder checks everything before it appends, so the sequences are as they were; the requests
        // of this batch cannot go on.
        const std::exception_ptr error = std::current_exception();
        for (Active* a : in_step_) finish(take_running(a), FinishReason::Error, error);
        return;
    }
    ++engine_stats_.steps;
    for (std::size_t i = 0; i < in_step_.size(); ++i) {
        Active& a = *in_step_[i];
        const bool decode = !a.result.tokens.empty() && a.to_feed.size() == 1;
        if (!decode) engine_stats_.prompt_tokens_computed += a.chunk;
        a.fed.insert(a.fed.end(), a.to_feed.begin(), a.to_feed.begin() + static_cast<std::ptrdiff_t>(a.chunk));
        a.to_feed.erase(a.to_feed.begin(), a.to_feed.begin() + static_cast<std::ptrdiff_t>(a.chunk));
        if (!items_[i].logits.empty()) {
            after_forward(a, items_[i].logits);
        } else if (a.to_feed.empty()) {  // max_new_tokens == 0: the prompt is in, nothing to generate
            finish(take_running(&a), FinishReason::Length);
        }
    }
}

template <StorageElement T>
void BasicScheduler<T>::after_forward(Active& a, std::span<const float> logits) {
    const std::int32_t token = a.sampler.sample(logits, a.fed);  // history: prompt + generated so far
    if (a.result.tokens.empty()) a.first_token = Clock::now();
    a.result.tokens.push_back(token);
    ++engine_stats_.generated_tokens;
    const RequestOptions& o = a.request.options;
    if (o.stop_at_eos && (tokenizer_->is_end_of_generation(token) || token == model_->config().eos_id)) {
        finish(take_running(&a), FinishReason::Stop);
        return;
    }
    bool keep_going = true;
    if (emit_text(a, token, a.stream.push(token), keep_going)) {
        finish(take_running(&a), FinishReason::Stop);
        return;
    }
    if (!keep_going) {
        finish(take_running(&a), FinishReason::Cancelled);
        return;
    }
    if (a.result.tokens.size() >= o.max_new_tokens) {
        finish(take_running(&a), FinishReason::Length);
        return;
    }
    a.to_feed.assign(1, token);
}

template <StorageElement T>
bool BasicScheduler<T>::emit_text(Active& a, std::int32_t token, const std::string& piece, bool& keep_going) {
    a.held += piece;
    // The earliest stop string in what is held (text passed on never contains the start of one).
    std::size_t cut = std::string::npos;
    for (const std::string& s : a.request.options.stop) {
        if (!s.empty()) cut = std::min(cut, a.held.find(s));
    }
    std::string out;
    if (cut != std::string::npos) {
        out = a.held.substr(0, cut);
        a.held.clear();
        a.text_closed = true;
    } else {
        // Hold back the longest tail that is the beginning of some stop string.
        std::size_t keep = 0;
        for (const std::string& s : a.request.options.stop) {
            for (std::size_t k = std::min(s.size() - (s.empty() ? 0 : 1), a.held.size()); k > keep; --k) {
                if (a.held.compare(a.held.size() - k, k, s, 0, k) == 0) {
                    keep = k;
                    break;
                }
            }
        }
        out = a.held.substr(0, a.held.size() - keep);
        a.held.erase(0, a.held.size() - keep);
    }
    a.result.text += out;
    if (a.request.on_token) {
        try {
            keep_going = a.request.on_token(token, out);
        } catch (...) {
            keep_going = false;  // a throwing callback ends its request, never the engine
        }
    }
    return cut != std::string::npos;
}

template <StorageElement T>
void BasicScheduler<T>::finish(std::unique_ptr<Active> a, FinishReason reason, std::exception_ptr error) {
    const auto now = Clock::now();
    if ((reason == FinishReason::Length || reason == FinishReason::Stop) && !a->text_closed) {
        // What the stream and the stop-string check still hold goes out now (cut at a stop string in it).
        a->held += a->stream.finish();
        std::size_t cut = a->held.size();
        for (const std::string& s : a->request.options.stop) {
            if (!s.empty()) cut = std::min(cut, a->held.find(s));
        }
        a->held.resize(cut);
        a->result.text += a->held;
        if (a->request.on_token && !a->held.empty()) {
            try {
                a->request.on_token(-1, a->held);
            } catch (...) {
            }
        }
        a->held.clear();
    }
    RequestResult& r = a->result;
    r.finish = reason;
    if (error) {
        r.exception = error;
        try {
            std::rethrow_exception(error);
        } catch (const std::exception& e) {
            r.error = e.what();
        } catch (...) {
            r.error = "unknown error";
        }
    }
    if (a->admitted_once) {
        const bool generated = !r.tokens.empty();
        r.prompt_seconds = seconds_between(a->started, generated ? a->first_token : now);
        if (generated) r.decode_seconds = seconds_between(a->first_token, now);
        if (r.tokens.size() > 1 && r.decode_seconds > 0) {
            r.tokens_per_second = double(r.tokens.size() - 1) / r.decode_seconds;
        }
    } else {
        r.queue_seconds = seconds_between(a->submitted, now);
    }
    if (a->sequence) {
        if (a->request.keep_sequence) {
            r.sequence = *a->sequence;
            keep(*a->sequence, std::move(a->fed));
            a->sequence.reset();
        } else {
            end_sequence(*a, reason == FinishReason::Length || reason == FinishReason::Stop ? CachePrefix::yes
                                                                                          : CachePrefix::no);
        }
    }
    ++engine_stats_.finished;
    if (reason == FinishReason::Cancelled) ++engine_stats_.cancelled;
    if (reason == FinishReason::Error) ++engine_stats_.failed;
    {
        std::lock_guard<std::mutex> q(queue_mutex_);
        live_ids_.erase(a->id);
        cancels_.erase(a->id);
    }
    if (a->request.on_done) {
        try {
            a->request.on_done(r);
        } catch (...) {
            // Nowhere to report it: the request is over either way.
        }
    }
}

template <StorageElement T>
void BasicScheduler<T>::preempt(std::unique_ptr<Active> a) {
    // Its tokens go into the prefix cache, so if the blocks survive until it runs again nothing is recomputed.
    end_sequence(*a, CachePrefix::yes);
    a->fed.insert(a->fed.end(), a->to_feed.begin(), a->to_feed.end());
    a->to_feed = std::move(a->fed);
    a->fed.clear();
    a->chunk = 0;
    ++a->result.preemptions;
    ++engine_stats_.preempted;
    preempted_.push_front(std::move(a));
}

template <StorageElement T>
void BasicScheduler<T>::end_sequence(Active& a, CachePrefix cache_prefix) {
    if (!a.sequence) return;
    if (prefixes_ && cache_prefix == CachePrefix::yes && !a.fed.empty()) prefixes_->insert(a.fed, *a.sequence);
    pool_->free_sequence(*a.sequence);
    a.sequence.reset();
    if (prefixes_) prefixes_->trim();
}

template <StorageElement T>
std::unique_ptr<typename BasicScheduler<T>::Active> BasicScheduler<T>::take_running(const Active* a) {
    const auto it = std::find_if(running_.begin(), running_.end(), [&](const auto& p) { return p.get() == a; });
    std::unique_ptr<Active> out = std::move(*it);
    running_.erase(it);
    return out;
}

template <StorageElement T>
void BasicScheduler<T>::publish_stats() {
    engine_work_ = running_.size() + preempted_.size();
    std::lock_guard<std::mutex> q(queue_mutex_);
    const std::uint64_t submitted = stats_.submitted;
    stats_ = engine_stats_;
    stats_.submitted = submitted;
    stats_.running = running_.size();
    stats_.kept_sequences = kept_count_;
    stats_.blocks_used = pool_->used_blocks();
    stats_.blocks_free = pool_->free_blocks();
    stats_.prefix_cached_blocks = prefixes_ ? prefixes_->cached_blocks() : 0;
    stats_.queued = preempted_.size();  // plus the submit queue, counted when read
}

template <StorageElement T>
SchedulerStats BasicScheduler<T>::stats() const {
    std::lock_guard<std::mutex> q(queue_mutex_);
    SchedulerStats s = stats_;
    s.queued += queue_.size();
    return s;
}

// ---- kept sequences ----

template <StorageElement T>
void BasicScheduler<T>::keep(SequenceId id, std::vector<std::int32_t> tokens) {
    if (kept_.size() <= id.index) kept_.resize(id.index + 1);
    kept_[id.index] = std::make_unique<KeptSequence>(KeptSequence{id, std::move(tokens)});
    ++kept_count_;
}

template <StorageElement T>
typename BasicScheduler<T>::KeptSequence& BasicScheduler<T>::kept(SequenceId id) {
    return const_cast<KeptSequence&>(std::as_const(*this).kept(id));
}

template <StorageElement T>
const typename BasicScheduler<T>::KeptSequence& BasicScheduler<T>::kept(SequenceId id) const {
    if (id.index >= kept_.size() || !kept_[id.index] || kept_[id.index]->id != id) {
        throw IndexError(fmt::format("Scheduler: sequence {} (generation {}) is not a kept sequence", id.index,
                                     id.generation));
    }
    return *kept_[id.index];
}

template <StorageElement T>
bool BasicScheduler<T>::is_kept(SequenceId id) const {
    const auto lock = lock_engine();
    return id.index < kept_.size() && kept_[id.index] && kept_[id.index]->id == id;
}

template <StorageElement T>
SequenceId BasicScheduler<T>::fork(SequenceId from, std::size_t position) {
    const auto lock = lock_engine();
    const KeptSequence& k = kept(from);
    if (position > k.tokens.size()) {
        throw IndexError(fmt::format("Scheduler::fork: sequence {} holds {} tokens, cannot fork at {}", from.index,
                                     k.tokens.size(), position));
    }
    std::vector<std::int32_t> tokens(k.tokens.begin(), k.tokens.begin() + static_cast<std::ptrdiff_t>(position));
    const SequenceId id = pool_->fork(from, position);
    try {
        keep(id, std::move(tokens));
    } catch (...) {
        pool_->free_sequence(id);
        throw;
    }
    publish_stats();
    return id;
}

template <StorageElement T>
void BasicScheduler<T>::truncate(SequenceId id, std::size_t n) {
    const auto lock = lock_engine();
    KeptSequence& k = kept(id);
    if (n >= k.tokens.size()) return;
    pool_->truncate(id, n);
    k.tokens.resize(n);
    publish_stats();
}

template <StorageElement T>
void BasicScheduler<T>::release(SequenceId id, CachePrefix cache_prefix) {
    const auto lock = lock_engine();
    KeptSequence& k = kept(id);
    if (prefixes_ && cache_prefix == CachePrefix::yes && !k.tokens.empty()) prefixes_->insert(k.tokens, id);
    pool_->free_sequence(id);
    kept_[id.index].reset();
    --kept_count_;
    if (prefixes_) prefixes_->trim();
    publish_stats();
}

template <StorageElement T>
std::vector<std::int32_t> BasicScheduler<T>::tokens(SequenceId id) const {
    const auto lock = lock_engine();
    return kept(id).tokens;
}

template <StorageElement T>
void BasicScheduler<T>::adopt(SequenceId id, std::vector<std::int32_t> tokens) {
    const auto lock = lock_engine();
    if (!pool_->contains(id)) {
        throw IndexError(fmt::format("Scheduler::adopt: the pool has no sequence {} (generation {})", id.index,
                                     id.generation));
    }
    const bool kept_already = id.index < kept_.size() && kept_[id.index];
    const bool running = std::any_of(running_.begin(), running_.end(),
                                     [&](const auto& a) { return a->sequence && *a->sequence == id; });
    if (kept_already || running) {
        throw IndexError(fmt::format("Scheduler::adopt: sequence {} is in use already", id.index));
    }
    for (std::size_t l = 0; l < pool_->num_layers(); ++l) {
        if (pool_->seq_len(id, l) != tokens.size()) {
            throw ShapeError(fmt::format("Scheduler::adopt: sequence {} holds {} positions in layer {}, but {} tokens "
                                         "were given",
                                         id.index, pool_->seq_len(id, l), l, tokens.size()));
        }
    }
    keep(id, std::move(tokens));
    publish_stats();
}

// The element types a pool can be chosen with at run time (CacheElement); each is one instantiation of the
// engine (and of the decoder's batched forward over its sequences).
template class BasicScheduler<float>;
template class BasicScheduler<fp16>;
template class BasicScheduler<bf16>;
template class BasicScheduler<q8_0>;
template class BasicScheduler<q4_0>;
template class BasicScheduler<q4_0h>;

}  // namespace kvcache
