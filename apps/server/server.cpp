#include "server.hpp"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <ctime>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "api_error.hpp"
#include "engine.hpp"
#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/cache/prefix_cache.hpp"
#include "kvcache/error.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/cache_options.hpp"
#include "kvcache/model/gguf.hpp"
#include "kvcache/model/load_model.hpp"
#include "kvcache/model/scheduler.hpp"
#include "kvcache/model/tokenizer.hpp"
#include "kvcache/persist/cache_file.hpp"
#include "prompt.hpp"
#include "request_parsing.hpp"
#include "slots.hpp"
#include "web_assets.hpp"

namespace kvcache::server {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string finish_reason_text(FinishReason r) {
    switch (r) {
    case FinishReason::Length: return "length";
    case FinishReason::Stop: return "stop";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Error: return "error";
    }
    return "error";
}

/// Where a generation's sequence comes from.
enum class Target {
    Auto,     ///< chat completions: the slot holding this conversation, else the best token match, else new
    InPlace,  ///< continue in slot `slot` (its cache is cut back to what the new prompt shares with it)
    Fork,     ///< a new slot forked (copy-on-write) from slot `slot` at the longest shared prefix
    New,      ///< a new slot; the scheduler reuses the longest prefix-cache match
};

/// What a generating endpoint asks for, after parsing.
struct Plan {
    Target target = Target::Auto;
    std::int64_t slot = -1;
    std::vector<std::int32_t> prompt;
    std::vector<ChatMessage> messages;  ///< the conversation the prompt encodes (empty: raw completion)
    GenerationParams params;
    bool chat = true;                   ///< chat.completion objects (else text_completion)
    bool report_parent = false;         ///< put parent_slot_id into the response (branch endpoints)
};

/// One generation in flight: the HTTP thread waits on it, the engine thread fills it.
struct Job {
    // Set before submit.
    std::string id;
    std::int64_t created = 0;
    bool chat = true;
    bool report_parent = false;
    bool return_tokens = false;
    std::int64_t slot_id = -1;
    std::optional<std::int64_t> parent;
    bool new_slot = false;
    std::optional<SequenceId> handed_over;   ///< in-place: the slot's sequence given to the request
    std::size_t kept_before = 0;             ///< tokens the slot held when the request started
    std::size_t slot_reused = 0;             ///< prompt tokens already in the slot / fork
    std::vector<std::int32_t> prompt;        ///< the whole prompt
    std::vector<ChatMessage> messages;
    RequestId request = 0;
    Clock::time_point submitted = Clock::now();
    // Engine → HTTP thread.
    std::mutex mutex;
    std::condition_variable changed;
    std::deque<std::string> pieces;
    bool done = false;
    RequestResult result;
    std::optional<double> first_token_seconds;
    // HTTP thread.
    bool finalized = false;
};
using JobPtr = std::shared_ptr<Job>;

std::string mime_type(std::string_view path) {
    if (path.ends_with(".html")) return "text/html; charset=utf-8";
    if (path.ends_with(".css")) return "text/css; charset=utf-8";
    if (path.ends_with(".js")) return "text/javascript; charset=utf-8";
    return "application/octet-stream";
}

bool constant_time_equal(const std::string& a, const std::string& b) {
    if (a.size() != b.size()) return false;
    unsigned char diff = 0;
    for (std::size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
    return diff == 0;
}

}  // namespace

struct Server::Impl {
    ServerOptions options;
    std::string model_name;
    std::string model_fingerprint;
    std::unique_ptr<Tokenizer> tokenizer;
    ChatTemplateInfo chat_template;
    std::unique_ptr<Decoder> model;
    std::unique_ptr<Engine> scheduler;  // the pool, prefix cache and scheduler of the --cache-type elements
    RequestLimits limits;
    httplib::Server http;
    std::int64_t started_at = std::time(nullptr);

    std::mutex slots_mutex;               // guards slots, active; taken before the engine lock, never inside it
    std::condition_variable slot_freed;
    SlotTable slots;
    std::set<JobPtr> active;
    std::atomic<bool> shutting_down{false};
    std::atomic<std::uint64_t> next_job{1};

    // Metrics (monotonic counters; gauges are read when /metrics is served).
    std::mutex metrics_mutex;
    std::map<std::string, std::uint64_t> requests_by_endpoint;
    std::map<int, std::uint64_t> errors_by_status;
    std::atomic<std::uint64_t> prompt_tokens_total{0}, cached_prompt_tokens_total{0}, generated_tokens_total{0};
    std::atomic<std::uint64_t> cancelled_total{0};
    double last_tokens_per_second = 0;

    explicit Impl(ServerOptions o) : options(std::move(o)), slots(options.slots) {
        if (options.slots == 0) throw ConfigError("--slots must be at least 1");
        const MatmulPrecision precision = parse_matmul_precision(options.precision);  // before the model loads
        if (options.ctx < 8) throw ConfigError(fmt::format("--ctx {} is too small (at least 8 positions)", options.ctx));
        LoadedModel loaded = load_model(options.model_path, {.threads = options.threads, .fingerprint = true});
        tokenizer = std::make_unique<Tokenizer>(std::move(loaded.tokenizer));
        chat_template = server_chat_template(*tokenizer, options.chat_template);
        model = std::make_unique<Decoder>(std::move(loaded.decoder));
        model_fingerprint = std::move(loaded.fingerprint);
        model_name = options.model_path.stem().string();
        const auto layers = model->cache_layers();
        const CacheElement element = parse_cache_element(options.cache_type);
        const std::size_t block_bytes = Engine::block_bytes_for(element, layers);
        // Every slot can fill its context (plus one block for a copy-on-write split); the prefix cache has
        // its budget on top.
        const std::size_t slot_blocks = PagedKVPool<float>::blocks_for(options.ctx) + 1;
        const std::size_t prefix_bytes = options.prefix_cache_mb << 20;
        const std::size_t blocks = options.slots * slot_blocks + prefix_bytes / block_bytes;
        SchedulerOptions so;
        so.max_batch = options.max_batch;
        so.max_queued = options.max_queued;
        so.prefill_chunk = options.prefill_chunk;
        so.prefill_tokens_per_decode = options.prefill_per_decode;
        so.threads = options.threads;
        so.precision = precision;
        scheduler = std::make_unique<Engine>(*model, *tokenizer, element, blocks, prefix_bytes, so);
        limits.max_tokens = options.ctx;
        limits.max_context_window = options.ctx;
        if (!options.slot_save_path.empty()) {
            std::error_code ec;  // an IoError naming the path, not std::filesystem_error escaping the contract
            std::filesystem::create_directories(options.slot_save_path, ec);
            if (ec) {
                throw IoError(fmt::format("--slot-save-path: cannot create directory '{}': {}",
                                          options.slot_save_path.string(), ec.message()));
            }
        }
        setup_routes();
    }

    ~Impl() {
        if (scheduler) scheduler->stop();
    }

    // ------------------------------------------------------------------ HTTP plumbing

    void count_request(const std::string& endpoint) {
        std::lock_guard lock(metrics_mutex);
        ++requests_by_endpoint[endpoint];
    }

    static void send_json(httplib::Response& res, const json& body, int status = 200) {
        res.status = status;
        res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
    }

    void send_error(httplib::Response& res, const ApiError& e) {
        {
            std::lock_guard lock(metrics_mutex);
            ++errors_by_status[e.status()];
        }
        send_json(res, e.to_json(), e.status());
    }

    /// Runs a handler, turning every exception into an OpenAI-style error response.
    template <class F>
    httplib::Server::Handler wrap(std::string endpoint, F f) {
        return [this, endpoint = std::move(endpoint), f = std::move(f)](const httplib::Request& req, httplib::Response& res) {
            count_request(endpoint);
            try {
                f(req, res);
            } catch (const ApiError& e) {
                send_error(res, e);
            } catch (const FingerprintMismatch& e) {
                send_error(res, bad_request("cache_file_mismatch", e.what()));
            } catch (const FormatError& e) {
                send_error(res, bad_request("invalid_cache_file", e.what()));
            } catch (const QueueFullError& e) {
                send_error(res, busy("queue_full", e.what()));
            } catch (const CapacityError& e) {
                send_error(res, busy("out_of_memory", e.what()));
            } catch (const std::exception& e) {
                send_error(res, ApiError(500, "server_error", "internal_error", e.what()));
            }
        };
    }

    bool is_public_path(const std::string& path) const {
        if (path == "/health" || path == "/") return true;
        for (const auto& a : web_assets()) {
            if (path == a.path) return true;
        }
        return false;
    }

    /// Every route the server answers, in groups: transport limits, the API key, httplib's own errors, the web
    /// UI, the read-only endpoints, the generating endpoints.
    void setup_routes() {
        configure_transport();
        require_api_key();
        report_transport_errors();
        serve_web_ui();
        route_status_endpoints();
        route_generating_endpoints();
    }

    void configure_transport() {
        http.new_task_queue = [n = options.http_threads] { return new httplib::ThreadPool(n); };
        http.set_payload_max_length(options.max_body_bytes);
        http.set_keep_alive_timeout(5);
        http.set_read_timeout(30);
        http.set_write_timeout(30);
    }

    /// With --api-key, every path but the public ones needs 'Authorization: Bearer <key>' (401 otherwise).
    void require_api_key() {
        http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
            if (options.api_key.empty() || req.method == "OPTIONS" || is_public_path(req.path)) {
                return httplib::Server::HandlerResponse::Unhandled;
            }
            const std::string header = req.get_header_value("Authorization");
            const std::string prefix = "Bearer ";
            if (header.rfind(prefix, 0) != 0 || !constant_time_equal(header.substr(prefix.size()), options.api_key)) {
                send_error(res, unauthorized(header.empty() ? "missing 'Authorization: Bearer <key>' header"
                                                            : "invalid API key"));
                return httplib::Server::HandlerResponse::Handled;
            }
            return httplib::Server::HandlerResponse::Unhandled;
        });
    }

    /// Errors httplib raises itself (no route, body too large, ...) get the same JSON shape.
    void report_transport_errors() {
        http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
            if (!res.body.empty()) return;
            std::string message = fmt::format("{} {}: HTTP {}", req.method, req.path, res.status);
            if (res.status == 404) message = fmt::format("no such endpoint: {} {}", req.method, req.path);
            if (res.status == 413) message = fmt::format("request body larger than {} bytes", options.max_body_bytes);
            {
                std::lock_guard lock(metrics_mutex);
                ++errors_by_status[res.status];
            }
            res.set_content(error_body(res.status, message).dump(), "application/json");
        });
    }

    void serve_web_ui() {
        for (const auto& a : web_assets()) {
            http.Get(std::string(a.path), [a](const httplib::Request&, httplib::Response& res) {
                res.set_content(std::string(a.content), mime_type(a.path));
            });
        }
        http.Get("/", [](const httplib::Request&, httplib::Response& res) {
            for (const auto& a : web_assets()) {
                if (a.path == "/index.html") res.set_content(std::string(a.content), mime_type(a.path));
            }
        });
    }

    /// Health, models, metrics and the slot endpoints.
    void route_status_endpoints() {
        http.Get("/health", wrap("health", [this](const httplib::Request&, httplib::Response& res) { health(res); }));
        http.Get("/v1/models", wrap("models", [this](const httplib::Request&, httplib::Response& res) { models(res); }));
        http.Get("/metrics", wrap("metrics", [this](const httplib::Request&, httplib::Response& res) { metrics(res); }));
        http.Get("/slots", wrap("slots", [this](const httplib::Request&, httplib::Response& res) { list_slots(res); }));
        http.Get(R"(/slots/([^/]+))", wrap("slots", [this](const httplib::Request& req, httplib::Response& res) {
            slot_detail(parse_slot_id(req.matches[1]), res);
        }));
        http.Post(R"(/slots/([^/]+))", wrap("slots", [this](const httplib::Request& req, httplib::Response& res) {
            slot_action(req, res);
        }));
    }

    /// Each generating endpoint turns its request into a Plan (the plan_* functions below); generate() runs it.
    void route_generating_endpoints() {
        using Planner = Plan (Impl::*)(const json&);
        const auto route = [this](const char* path, const char* endpoint, Planner planner) {
            http.Post(path, wrap(endpoint, [this, planner](const httplib::Request& req, httplib::Response& res) {
                generate((this->*planner)(parse_body(req.body)), res);
            }));
        };
        route("/v1/chat/completions", "chat_completions", &Impl::plan_chat_completion);
        route("/v1/completions", "completions", &Impl::plan_completion);
        route("/v1/chat/branch", "branch", &Impl::plan_branch);
        route("/generate", "generate", &Impl::plan_generate);
        route("/focus", "focus", &Impl::plan_focus);
        route("/continue", "continue", &Impl::plan_continue);
    }

    // ------------------------------------------------------------------ requests to plans

    /// The conversation (already in plan.messages) as the prompt, with the request's parameters.
    Plan& encode_conversation(Plan& plan, const GenerationParams& params) {
        plan.prompt = chat_prompt_tokens(*tokenizer, chat_template, plan.messages);
        plan.params = params;
        return plan;
    }

    /// `conversation` cut after message `index`; 400 if it has no such message.
    static void keep_through(std::vector<ChatMessage>& conversation, std::size_t index, std::int64_t slot_id) {
        if (index >= conversation.size()) {
            throw bad_request("invalid_value",
                              fmt::format("'message_index' {} is past the conversation of slot {} ({} messages)", index,
                                          slot_id, conversation.size()),
                              "message_index");
        }
        conversation.resize(index + 1);
    }

    Plan plan_chat_completion(const json& body) {
        const ChatRequest r = parse_chat_request(body, limits);
        Plan plan;
        plan.target = r.slot_id ? Target::InPlace : Target::Auto;
        plan.slot = r.slot_id.value_or(-1);
        plan.messages = r.messages;
        return encode_conversation(plan, r.params);
    }

    Plan plan_completion(const json& body) {
        const CompletionRequest r = parse_completion_request(body, limits);
        Plan plan;
        plan.target = r.slot_id ? Target::InPlace : Target::Auto;
        plan.slot = r.slot_id.value_or(-1);
        plan.prompt = completion_prompt_tokens(*tokenizer, r.prompt);
        plan.params = r.params;
        plan.chat = false;
        return plan;
    }

    Plan plan_branch(const json& body) {
        const BranchRequest r = parse_branch_request(body, limits);
        Plan plan;
        auto parent = conversation_of(r.parent_slot_id, "parent_slot_id");
        if (r.message_index) keep_through(parent, *r.message_index, r.parent_slot_id);
        const std::string message = follow_up_message(*tokenizer, parent, r.text_excerpt, r.context_window, r.prompt);
        if (r.mode == BranchMode::ReuseKv) {
            plan.target = Target::Fork;
            plan.messages = parent;
        } else {
            plan.target = Target::New;
            // A fresh conversation: the system prompt (if any) and the quoted follow-up, nothing else.
            if (!parent.empty() && parent.front().role == "system") plan.messages.push_back(parent.front());
        }
        plan.slot = r.parent_slot_id;
        plan.messages.push_back({"user", message});
        plan.report_parent = true;
        return encode_conversation(plan, r.params);
    }

    Plan plan_generate(const json& body) {
        const GenerateRequest r = parse_generate_request(body, limits);
        Plan plan;
        if (r.slot_id) {
            plan.target = Target::InPlace;
            plan.slot = *r.slot_id;
            plan.messages = conversation_of(*r.slot_id, "slot_id");
        } else {
            plan.target = Target::New;
        }
        plan.messages.push_back({"user", r.prompt});
        return encode_conversation(plan, r.params);
    }

    Plan plan_focus(const json& body) {
        const FocusRequest r = parse_focus_request(body, limits);
        Plan plan;
        plan.target = Target::InPlace;
        plan.slot = r.slot_id;
        plan.messages = conversation_of(r.slot_id, "slot_id");
        plan.messages.push_back(
            {"user", follow_up_message(*tokenizer, plan.messages, r.text_excerpt, r.context_window, r.prompt)});
        return encode_conversation(plan, r.params);
    }

    Plan plan_continue(const json& body) {
        const ContinueRequest r = parse_continue_request(body, limits);
        auto conversation = conversation_of(r.slot_id, "slot_id");
        keep_through(conversation, r.message_index, r.slot_id);
        Plan plan;
        plan.target = r.new_slot ? Target::Fork : Target::InPlace;
        plan.report_parent = r.new_slot;
        plan.slot = r.slot_id;
        plan.messages = std::move(conversation);
        plan.messages.push_back({"user", r.prompt});
        return encode_conversation(plan, r.params);
    }

    /// A slot's conversation (copied under the lock). 404 for an unknown slot, 400 for a raw-completion slot.
    std::vector<ChatMessage> conversation_of(std::int64_t id, const char* param) {
        std::lock_guard lock(slots_mutex);
        Slot* s = slots.find(id);
        if (!s) throw not_found("unknown_slot", fmt::format("slot {} does not exist", id), param);
        if (s->messages.empty()) {
            throw bad_request("not_a_conversation", fmt::format("slot {} holds no chat conversation", id), param);
        }
        return s->messages;
    }

    // ------------------------------------------------------------------ generation

    /// Makes room for one more slot: the least recently used idle slot (never `keep`) goes into the prefix
    /// cache. Waits while every slot is busy; 503 after options.slot_wait_seconds.
    void make_room(std::unique_lock<std::mutex>& lock, std::optional<std::int64_t> keep) {
        const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                 std::chrono::duration<double>(options.slot_wait_seconds));
        while (slots.size() >= slots.max_slots()) {
            if (Slot* victim = slots.least_recently_used_idle(keep)) {
                if (victim->sequence) scheduler->release(*victim->sequence, CachePrefix::yes);
                slots.erase(victim->id);
                continue;
            }
            if (shutting_down) throw busy("shutting_down", "the server is shutting down");
            if (slot_freed.wait_until(lock, deadline) == std::cv_status::timeout && slots.size() >= slots.max_slots() &&
                !slots.least_recently_used_idle(keep)) {
                throw busy("no_free_slot", fmt::format("all {} slots are busy", slots.max_slots()));
            }
        }
    }

    /// The tokens the request may generate: max_tokens, or what is left of a slot. 400 if the prompt is empty or
    /// leaves no room, or prompt + max_tokens exceed a slot (--ctx).
    std::size_t checked_max_tokens(const Plan& plan) const {
        const std::size_t ctx = options.ctx;
        if (plan.prompt.empty()) throw bad_request("invalid_value", "the prompt encodes to no tokens", "prompt");
        if (plan.prompt.size() >= ctx) {
            throw bad_request("context_length_exceeded",
                              fmt::format("the prompt has {} tokens; a slot holds {} (--ctx), leaving no room to generate",
                                          plan.prompt.size(), ctx),
                              "messages");
        }
        const std::size_t max_tokens = plan.params.max_tokens.value_or(ctx - plan.prompt.size());
        if (plan.prompt.size() + max_tokens > ctx) {
            throw bad_request("context_length_exceeded",
                              fmt::format("the prompt has {} tokens and max_tokens is {}: {} > {} positions of a slot (--ctx)",
                                          plan.prompt.size(), max_tokens, plan.prompt.size() + max_tokens, ctx),
                              "max_tokens");
        }
        return max_tokens;
    }

    JobPtr new_job(const Plan& plan) {
        auto job = std::make_shared<Job>();
        job->id = fmt::format("{}-{}", plan.chat ? "chatcmpl" : "cmpl", next_job++);
        job->created = std::time(nullptr);
        job->chat = plan.chat;
        job->report_parent = plan.report_parent;
        job->return_tokens = plan.params.return_tokens;
        job->prompt = plan.prompt;
        job->messages = plan.messages;
        return job;
    }

    /// The scheduler request for a job: its pieces and its end go into the job, for the waiting HTTP thread.
    static Request request_for(const JobPtr& job, const Plan& plan, std::size_t max_tokens) {
        Request request;
        request.keep_sequence = true;
        request.options.max_new_tokens = max_tokens;
        request.options.sampling = plan.params.sampling;
        request.options.stop = plan.params.stop;
        request.on_token = [job](std::int32_t, std::string_view piece) {
            std::lock_guard lock(job->mutex);
            if (!job->first_token_seconds) job->first_token_seconds = seconds_since(job->submitted);
            if (!piece.empty()) job->pieces.emplace_back(piece);
            job->changed.notify_all();
            return true;
        };
        request.on_done = [job](const RequestResult& result) {
            std::lock_guard lock(job->mutex);
            job->result = result;
            job->done = true;
            job->changed.notify_all();
        };
        return request;
    }

    /// Where the plan runs, Auto resolved: in place in a slot, forked from one, or new; and the slot it starts
    /// from (null for New). 404/409 for a named slot that does not exist or is busy. Under slots_mutex.
    std::pair<Target, Slot*> resolve_target(const Plan& plan) {
        const std::size_t last = plan.prompt.size() - 1;  // at least one prompt token is fed: its logits are wanted
        Target target = plan.target;
        Slot* base = nullptr;
        if (target == Target::Auto) {
            if (plan.chat && !plan.messages.empty()) base = slots.conversation_prefix(plan.messages);
            if (base) {
                target = Target::InPlace;
            } else {
                auto [s, n] = slots.longest_token_prefix(plan.prompt);
                // Forking shares whole blocks; less than one block is better served by the prefix cache.
                if (s && std::min(n, last) >= scheduler->block_size()) {
                    base = s;
                    target = Target::Fork;
                } else {
                    target = Target::New;
                }
            }
        } else if (target == Target::InPlace || target == Target::Fork) {
            base = slots.find(plan.slot);
            const char* param = plan.report_parent ? "parent_slot_id" : "slot_id";
            if (!base) throw not_found("unknown_slot", fmt::format("slot {} does not exist", plan.slot), param);
            if (base->busy) throw conflict("slot_busy", fmt::format("slot {} is busy with another request", plan.slot));
        }
        if (target == Target::Fork && !base->sequence) {  // nothing kept to share: start from the prefix cache
            base = nullptr;
            target = Target::New;
        }
        return {target, base};
    }

    /// In place: the slot's sequence, cut back to what the prompt shares with it, is handed to the request.
    void continue_in_slot(Slot& slot, Job& job, Request& request, const Plan& plan) {
        const std::size_t last = plan.prompt.size() - 1;
        if (slot.sequence) {
            const std::size_t keep = std::min(common_prefix(slot.tokens, plan.prompt), last);
            if (keep < slot.tokens.size()) scheduler->truncate(*slot.sequence, keep);
            slot.tokens.resize(keep);
            job.slot_reused = keep;
            job.handed_over = slot.sequence;
            request.continue_from = slot.sequence;
            slot.sequence.reset();
        }
        job.kept_before = job.slot_reused;
    }

    /// Fork or new: a new slot (room made for it), starting from a fork of `base` at the shared prefix if
    /// there is one. Returns the slot and the forked sequence (to release if the submit fails).
    std::pair<Slot*, std::optional<SequenceId>> open_new_slot(std::unique_lock<std::mutex>& lock, Target target,
                                                               Slot* base, Job& job, Request& request,
                                                               const Plan& plan) {
        const std::size_t last = plan.prompt.size() - 1;
        const std::int64_t base_id = base ? base->id : -1;
        make_room(lock, base ? std::optional(base_id) : std::nullopt);
        if (base) {
            base = slots.find(base_id);  // make_room may have waited; the base may be gone or busy now
            if (!base || base->busy || !base->sequence) {
                throw conflict("slot_busy", fmt::format("slot {} changed while this request waited", base_id));
            }
        }
        const std::size_t keep = target == Target::Fork ? std::min(common_prefix(base->tokens, plan.prompt), last) : 0;
        std::optional<SequenceId> forked;
        if (keep > 0) forked = scheduler->fork(*base->sequence, keep);
        Slot* slot = &slots.create();
        if (plan.report_parent) slot->parent = plan.slot;  // branches name their parent (a fresh one too)
        job.new_slot = true;
        job.slot_reused = keep;
        request.continue_from = forked;
        return {slot, forked};
    }

    /// Validates the plan, places it in a slot and submits it to the scheduler; the job is then active.
    JobPtr start_job(const Plan& plan) {
        if (shutting_down) throw busy("shutting_down", "the server is shutting down");
        const std::size_t max_tokens = checked_max_tokens(plan);
        JobPtr job = new_job(plan);
        Request request = request_for(job, plan, max_tokens);

        std::unique_lock lock(slots_mutex);
        const auto [target, base] = resolve_target(plan);
        Slot* slot = base;
        std::optional<SequenceId> forked;
        if (target == Target::InPlace) {
            continue_in_slot(*slot, *job, request, plan);
        } else {
            std::tie(slot, forked) = open_new_slot(lock, target, base, *job, request, plan);
        }
        job->slot_id = slot->id;
        job->parent = slot->parent;
        slot->busy = true;
        slots.touch(*slot);
        request.prompt.assign(plan.prompt.begin() + std::ptrdiff_t(job->slot_reused), plan.prompt.end());
        try {
            job->submitted = Clock::now();
            job->request = scheduler->submit(std::move(request));
        } catch (...) {
            // Nothing ran: give back what was prepared.
            if (job->new_slot) {
                if (forked) scheduler->release(*forked, CachePrefix::no);
                slots.erase(slot->id);
            } else {
                slot->sequence = job->handed_over;
                slot->busy = false;
            }
            slot_freed.notify_all();
            throw;
        }
        active.insert(job);
        prompt_tokens_total += plan.prompt.size();
        return job;
    }

    /// Waits for the job to end and updates its slot: the kept sequence returns to it, the answer joins its
    /// conversation; a cancelled or failed request leaves the slot as it was (a new slot is removed).
    void finish_job(const JobPtr& job) {
        {
            std::unique_lock lock(job->mutex);
            job->changed.wait(lock, [&] { return job->done; });
        }
        std::lock_guard lock(slots_mutex);
        if (job->finalized) return;
        job->finalized = true;
        active.erase(job);
        const RequestResult& r = job->result;
        const bool ok = r.finish == FinishReason::Length || r.finish == FinishReason::Stop;
        std::optional<SequenceId> sequence = r.sequence;
        if (!sequence && job->handed_over && scheduler->is_kept(*job->handed_over)) sequence = job->handed_over;
        Slot* slot = slots.find(job->slot_id);
        const std::size_t reused = job->slot_reused + r.reused_prompt_tokens;
        cached_prompt_tokens_total += reused;
        generated_tokens_total += r.tokens.size();
        if (!ok) ++cancelled_total;
        if (!slot) {  // cannot happen while busy; release rather than leak
            if (sequence) scheduler->release(*sequence, CachePrefix::no);
        } else if (ok && sequence) {
            slot->sequence = sequence;
            slot->tokens = scheduler->tokens(*sequence);
            if (job->chat) {
                slot->messages = job->messages;
                slot->messages.push_back({"assistant", r.text});
            } else {
                slot->messages.clear();
            }
            slot->last_prompt_tokens = job->prompt.size();
            slot->last_reused_tokens = reused;
            slot->last_tokens_per_second = r.tokens_per_second;
            slot->busy = false;
            slots.touch(*slot);
            std::lock_guard m(metrics_mutex);
            last_tokens_per_second = r.tokens_per_second;
        } else if (job->new_slot) {
            if (sequence) scheduler->release(*sequence, CachePrefix::no);
            slots.erase(slot->id);
        } else {
            // Back to what the slot held before the request (minus what the new prompt did not share).
            if (sequence) {
                scheduler->truncate(*sequence, job->kept_before);
                slot->tokens = scheduler->tokens(*sequence);
            } else {
                slot->tokens.clear();
            }
            slot->sequence = sequence;
            if (slot->tokens.size() != job->kept_before) slot->messages.clear();
            slot->busy = false;
        }
        slot_freed.notify_all();
    }

    json usage_json(const Job& job) const {
        const RequestResult& r = job.result;
        const std::size_t cached = job.slot_reused + r.reused_prompt_tokens;
        return {{"prompt_tokens", job.prompt.size()},
                {"completion_tokens", r.tokens.size()},
                {"total_tokens", job.prompt.size() + r.tokens.size()},
                {"prompt_tokens_details", {{"cached_tokens", cached}}}};
    }

    json timings_json(const Job& job) const {
        const RequestResult& r = job.result;
        const std::size_t cached = job.slot_reused + r.reused_prompt_tokens;
        const std::size_t computed = job.prompt.size() - cached;
        return {{"cached_n", cached},
                {"prompt_n", computed},
                {"prompt_ms", r.prompt_seconds * 1e3},
                {"queue_ms", r.queue_seconds * 1e3},
                {"time_to_first_token_ms", job.first_token_seconds.value_or(0) * 1e3},
                {"predicted_n", r.tokens.size()},
                {"predicted_ms", r.decode_seconds * 1e3},
                {"predicted_per_second", r.tokens_per_second}};
    }

    void add_slot_fields(json& j, const Job& job) const {
        j["slot_id"] = job.slot_id;
        if (job.report_parent) j["parent_slot_id"] = job.parent ? json(*job.parent) : json(nullptr);
    }

    json final_json(const Job& job) {
        const RequestResult& r = job.result;
        json choice{{"index", 0}, {"finish_reason", finish_reason_text(r.finish)}};
        if (job.chat) choice["message"] = {{"role", "assistant"}, {"content", r.text}};
        else choice["text"] = r.text, choice["logprobs"] = nullptr;
        json j{{"id", job.id},
               {"object", job.chat ? "chat.completion" : "text_completion"},
               {"created", job.created},
               {"model", model_name},
               {"choices", json::array({choice})},
               {"usage", usage_json(job)},
               {"timings", timings_json(job)}};
        add_slot_fields(j, job);
        if (job.return_tokens) j["tokens"] = r.tokens;
        return j;
    }

    json chunk_json(const Job& job, const std::string* piece, const std::optional<FinishReason>& finish, bool role) {
        json choice{{"index", 0}, {"finish_reason", finish ? json(finish_reason_text(*finish)) : json(nullptr)}};
        if (job.chat) {
            json delta = json::object();
            if (role) delta["role"] = "assistant";
            if (piece) delta["content"] = *piece;
            choice["delta"] = std::move(delta);
        } else {
            choice["text"] = piece ? *piece : std::string();
            choice["logprobs"] = nullptr;
        }
        json j{{"id", job.id},
               {"object", job.chat ? "chat.completion.chunk" : "text_completion"},
               {"created", job.created},
               {"model", model_name},
               {"choices", json::array({choice})}};
        add_slot_fields(j, job);
        if (finish) {
            j["usage"] = usage_json(job);
            j["timings"] = timings_json(job);
            if (job.return_tokens) j["tokens"] = job.result.tokens;
        }
        return j;
    }

    ApiError generation_error(const Job& job) const {
        const std::string message = job.result.error.empty() ? "generation failed" : job.result.error;
        try {
            if (job.result.exception) std::rethrow_exception(job.result.exception);
        } catch (const CapacityError&) {
            return busy("out_of_memory", message);
        } catch (...) {
        }
        return ApiError(500, "server_error", "generation_failed", message);
    }

    void generate(Plan plan, httplib::Response& res) {
        const bool stream = plan.params.stream;
        JobPtr job = start_job(plan);
        if (!stream) {
            finish_job(job);
            if (job->result.finish == FinishReason::Error) throw generation_error(*job);
            if (job->result.finish == FinishReason::Cancelled) throw busy("cancelled", "the request was cancelled (server shutting down)");
            send_json(res, final_json(*job));
            return;
        }
        res.set_header("Cache-Control", "no-cache");
        res.set_header("X-Accel-Buffering", "no");
        res.set_chunked_content_provider(
            "text/event-stream",
            [this, job](std::size_t, httplib::DataSink& sink) {
                try {
                    return stream_job(job, sink);
                } catch (const std::exception& e) {  // never let an exception out of httplib's worker thread
                    fmt::print(stderr, "kvcache-server: stream of {} failed: {}\n", job->id, e.what());
                    return false;
                }
            },
            [this, job](bool) {
                try {  // normally the stream finished the job already; then both calls do nothing
                    scheduler->cancel(job->request);
                    finish_job(job);
                } catch (const std::exception& e) {
                    fmt::print(stderr, "kvcache-server: cleanup of {} failed: {}\n", job->id, e.what());
                }
            });
    }

    /// Writes a job's events as they come; returns false (after cancelling the job) if the client went away.
    bool stream_job(const JobPtr& job, httplib::DataSink& sink) {
        auto event = [&](const json& j) {
            const std::string s = "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
            return sink.write(s.data(), s.size());
        };
        bool ok = event(chunk_json(*job, nullptr, std::nullopt, true));
        bool done = false;
        while (ok && !done) {
            std::deque<std::string> pieces;
            {
                std::unique_lock lock(job->mutex);
                job->changed.wait_for(lock, std::chrono::milliseconds(200),
                                      [&] { return job->done || !job->pieces.empty(); });
                pieces.swap(job->pieces);
                done = job->done;
            }
            for (const auto& p : pieces) {
                if (!(ok = event(chunk_json(*job, &p, std::nullopt, false)))) break;
            }
            // A comment line while nothing else is written: a dropped client is noticed by the
            // failed write even while the request waits in the queue or reads its prompt.
            if (ok && pieces.empty() && !done) ok = sink.write(": keep-alive\n\n", 14);
        }
        if (!ok) {  // the client went away: its request ends, its blocks return to the pool
            scheduler->cancel(job->request);
            finish_job(job);
            return false;
        }
        finish_job(job);
        if (job->result.finish == FinishReason::Error) {
            event(generation_error(*job).to_json());
        } else {
            event(chunk_json(*job, nullptr, job->result.finish, false));
        }
        const std::string end = "data: [DONE]\n\n";
        sink.write(end.data(), end.size());
        sink.done();
        return true;
    }

    // ------------------------------------------------------------------ informational endpoints

    json kv_json() {
        const SchedulerStats st = scheduler->stats();
        return scheduler->exclusive([&](auto& p, auto* c) {
            return json{{"cache_type", scheduler->element_name()},
                        {"blocks_total", p.num_blocks()},
                        {"blocks_used", p.used_blocks()},
                        {"block_bytes", p.block_bytes()},
                        {"block_size", p.block_size()},
                        {"sequences", p.num_sequences()},
                        {"prefix_cache_blocks", c ? c->cached_blocks() : 0},
                        {"running", st.running},
                        {"queued", st.queued}};
        });
    }

    void health(httplib::Response& res) {
        std::size_t n, b;
        double speed;
        {
            std::lock_guard lock(slots_mutex);
            n = slots.size();
            b = slots.busy();
        }
        {
            std::lock_guard lock(metrics_mutex);
            speed = last_tokens_per_second;
        }
        send_json(res, {{"status", shutting_down ? "shutting_down" : "ok"},
                        {"model", model_name},
                        {"slots", {{"used", n}, {"busy", b}, {"max", options.slots}, {"ctx", options.ctx}}},
                        {"kv", kv_json()},
                        {"last_tokens_per_second", speed}});
    }

    void models(httplib::Response& res) {
        send_json(res, {{"object", "list"},
                        {"data", json::array({{{"id", model_name},
                                               {"object", "model"},
                                               {"created", started_at},
                                               {"owned_by", "kvcache"},
                                               {"meta", {{"n_ctx_slot", options.ctx},
                                                         {"n_vocab", tokenizer->vocab_size()},
                                                         {"layers", model->config().n_layers},
                                                         {"chat_template", chat_template_family_name(chat_template.family)}}}}})}});
    }

    json slot_json(const Slot& s) const {
        const std::size_t blocks = PagedKVPool<float>::blocks_for(s.tokens.size(), scheduler->block_size());
        std::string title;
        for (const auto& m : s.messages) {
            if (m.role == "user") {
                title = m.content.substr(0, 80);
                break;
            }
        }
        return {{"id", s.id},
                {"state", s.busy ? "busy" : "idle"},
                {"tokens", s.tokens.size()},
                {"bytes", blocks * scheduler->block_bytes()},
                {"parent", s.parent ? json(*s.parent) : json(nullptr)},
                {"messages", s.messages.size()},
                {"title", title},
                {"last_prompt_tokens", s.last_prompt_tokens},
                {"last_reused_tokens", s.last_reused_tokens},
                {"last_tokens_per_second", s.last_tokens_per_second}};
    }

    void list_slots(httplib::Response& res) {
        json out = json::array();
        std::lock_guard lock(slots_mutex);
        for (const auto& [id, s] : slots.all()) out.push_back(slot_json(s));
        send_json(res, out);
    }

    void slot_detail(std::int64_t id, httplib::Response& res) {
        std::lock_guard lock(slots_mutex);
        Slot* s = slots.find(id);
        if (!s) throw not_found("unknown_slot", fmt::format("slot {} does not exist", id), "id");
        json j = slot_json(*s);
        j["conversation"] = messages_to_json(s->messages);
        send_json(res, j);
    }

    std::filesystem::path save_file(const httplib::Request& req, std::int64_t id) {
        if (options.slot_save_path.empty()) {
            throw bad_request("slot_save_disabled", "saving and restoring slots needs --slot-save-path");
        }
        std::string name = fmt::format("slot-{}.kvc", id);
        if (!req.body.empty()) {
            const json body = parse_body(req.body);
            if (const auto it = body.find("filename"); it != body.end() && !it->is_null()) {
                if (!it->is_string()) throw bad_request("invalid_type", "'filename' must be a string", "filename");
                name = it->get<std::string>();
            }
        }
        return options.slot_save_path / sanitize_file_name(name);
    }

    /// Saves an idle slot's sequence (and its conversation, next to it as <file>.json). Slots lock held.
    json save_slot(Slot& s, const std::filesystem::path& path) {
        if (s.busy) throw conflict("slot_busy", fmt::format("slot {} is busy", s.id));
        if (!s.sequence) throw bad_request("empty_slot", fmt::format("slot {} holds no tokens", s.id));
        const auto t0 = Clock::now();
        const auto tokens = scheduler->tokens(*s.sequence);
        scheduler->exclusive([&](auto& p, auto*) {
            auto cache = p.sequence(*s.sequence);
            save_cache_file(path, cache, 0, tokens, make_fingerprint(model_fingerprint, cache));
        });
        std::ofstream side(path.string() + ".json", std::ios::trunc);
        side << json{{"messages", messages_to_json(s.messages)}}.dump();
        return {{"id_slot", s.id},
                {"filename", path.filename().string()},
                {"n_saved", tokens.size()},
                {"n_written", std::filesystem::file_size(path)},
                {"timings", {{"save_ms", seconds_since(t0) * 1e3}}}};
    }

    void slot_action(const httplib::Request& req, httplib::Response& res) {
        const std::int64_t id = parse_slot_id(req.matches[1]);
        const std::string action = req.get_param_value("action");
        if (action == "erase") {
            std::lock_guard lock(slots_mutex);
            Slot* s = slots.find(id);
            if (!s) throw not_found("unknown_slot", fmt::format("slot {} does not exist", id), "id");
            if (s->busy) throw conflict("slot_busy", fmt::format("slot {} is busy", id));
            const std::size_t n = s->tokens.size();
            if (s->sequence) scheduler->release(*s->sequence, CachePrefix::no);
            slots.erase(id);
            slot_freed.notify_all();
            send_json(res, {{"id_slot", id}, {"n_erased", n}});
        } else if (action == "save") {
            const auto path = save_file(req, id);
            std::lock_guard lock(slots_mutex);
            Slot* s = slots.find(id);
            if (!s) throw not_found("unknown_slot", fmt::format("slot {} does not exist", id), "id");
            send_json(res, save_slot(*s, path));
        } else if (action == "restore") {
            const auto path = save_file(req, id);
            if (!std::filesystem::is_regular_file(path)) {
                throw not_found("file_not_found", fmt::format("no cache file '{}' in the slot save path", path.filename().string()),
                                "filename");
            }
            const auto t0 = Clock::now();
            const CacheFileInfo info = read_cache_file_info(path);
            if (info.tokens.empty() || info.tokens.size() >= options.ctx) {
                throw bad_request("context_length_exceeded",
                                  fmt::format("the file holds {} tokens; a slot holds fewer than {} (--ctx)", info.tokens.size(), options.ctx));
            }
            std::unique_lock lock(slots_mutex);
            Slot* s = slots.find(id);
            if (s && s->busy) throw conflict("slot_busy", fmt::format("slot {} is busy", id));
            if (!s) make_room(lock, std::nullopt);
            const SequenceId seq = scheduler->exclusive([&](auto& p, auto* c) {
                const std::size_t need = PagedKVPool<float>::blocks_for(info.tokens.size(), p.block_size());
                if (c && need > p.free_blocks()) c->evict_for(need - p.free_blocks());
                const SequenceId sid = p.create_sequence();
                try {
                    auto cache = p.sequence(sid);
                    load_cache_file(path, cache, 0, make_fingerprint(model_fingerprint, cache));
                } catch (...) {
                    p.free_sequence(sid);
                    throw;
                }
                return sid;
            });
            scheduler->adopt(seq, info.tokens);
            s = slots.find(id);
            if (s) {
                if (s->sequence) scheduler->release(*s->sequence, CachePrefix::no);
            } else {
                s = &slots.create(id);
            }
            s->sequence = seq;
            s->tokens = info.tokens;
            s->messages.clear();
            s->parent.reset();
            slots.touch(*s);
            // The conversation, if its side file is there and sound (else the slot serves token matches only).
            std::ifstream side(path.string() + ".json");
            if (side) {
                const json j = json::parse(side, nullptr, false);
                if (j.is_object() && j.contains("messages") && j["messages"].is_array()) {
                    for (const auto& m : j["messages"]) {
                        if (m.is_object() && m.value("role", json()).is_string() && m.value("content", json()).is_string()) {
                            s->messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
                        }
                    }
                }
            }
            send_json(res, {{"id_slot", s->id},
                            {"filename", path.filename().string()},
                            {"n_restored", info.tokens.size()},
                            {"n_read", info.file_bytes},
                            {"timings", {{"restore_ms", seconds_since(t0) * 1e3}}}});
        } else {
            throw bad_request("invalid_value", fmt::format("'action' must be save, restore or erase, got \"{}\"", action), "action");
        }
    }

    void metrics(httplib::Response& res) {
        const SchedulerStats st = scheduler->stats();
        const json kv = kv_json();
        std::size_t n, b;
        {
            std::lock_guard lock(slots_mutex);
            n = slots.size();
            b = slots.busy();
        }
        std::string out;
        auto metric = [&](const char* name, const char* type, const char* help) {
            out += fmt::format("# HELP kvcache_{} {}\n# TYPE kvcache_{} {}\n", name, help, name, type);
        };
        metric("requests_total", "counter", "HTTP requests by endpoint.");
        {
            std::lock_guard lock(metrics_mutex);
            for (const auto& [endpoint, count] : requests_by_endpoint) {
                out += fmt::format("kvcache_requests_total{{endpoint=\"{}\"}} {}\n", endpoint, count);
            }
            metric("request_errors_total", "counter", "Requests answered with an error, by HTTP status.");
            for (const auto& [status, count] : errors_by_status) {
                out += fmt::format("kvcache_request_errors_total{{status=\"{}\"}} {}\n", status, count);
            }
        }
        metric("prompt_tokens_total", "counter", "Prompt tokens of generation requests.");
        out += fmt::format("kvcache_prompt_tokens_total {}\n", prompt_tokens_total.load());
        metric("prompt_tokens_cached_total", "counter", "Prompt tokens served from a slot, a fork or the prefix cache.");
        out += fmt::format("kvcache_prompt_tokens_cached_total {}\n", cached_prompt_tokens_total.load());
        metric("prefix_cache_hit_tokens_total", "counter", "Prompt tokens the scheduler took from the prefix cache.");
        out += fmt::format("kvcache_prefix_cache_hit_tokens_total {}\n", st.prompt_tokens_reused);
        metric("generated_tokens_total", "counter", "Tokens generated.");
        out += fmt::format("kvcache_generated_tokens_total {}\n", generated_tokens_total.load());
        metric("requests_cancelled_total", "counter", "Generations that ended cancelled or failed.");
        out += fmt::format("kvcache_requests_cancelled_total {}\n", cancelled_total.load());
        metric("decode_steps_total", "counter", "Batched forward passes run.");
        out += fmt::format("kvcache_decode_steps_total {}\n", st.steps);
        metric("slots_in_use", "gauge", "Slots holding a conversation.");
        out += fmt::format("kvcache_slots_in_use {}\n", n);
        metric("slots_busy", "gauge", "Slots with a request running.");
        out += fmt::format("kvcache_slots_busy {}\n", b);
        metric("requests_running", "gauge", "Requests in the batch.");
        out += fmt::format("kvcache_requests_running {}\n", st.running);
        metric("queue_length", "gauge", "Requests waiting for the batch.");
        out += fmt::format("kvcache_queue_length {}\n", st.queued);
        metric("kv_blocks_in_use", "gauge", "KV pool blocks in use (slots, requests, prefix cache).");
        out += fmt::format("kvcache_kv_blocks_in_use {}\n", kv["blocks_used"].get<std::size_t>());
        metric("kv_blocks_total", "gauge", "KV pool blocks.");
        out += fmt::format("kvcache_kv_blocks_total {}\n", kv["blocks_total"].get<std::size_t>());
        metric("prefix_cache_blocks", "gauge", "KV blocks the prefix cache holds.");
        out += fmt::format("kvcache_prefix_cache_blocks {}\n", kv["prefix_cache_blocks"].get<std::size_t>());
        res.set_content(out, "text/plain; version=0.0.4");
    }

    // ------------------------------------------------------------------ shutdown

    void shutdown() {
        if (shutting_down.exchange(true)) return;
        std::vector<JobPtr> running;
        {
            std::lock_guard lock(slots_mutex);
            running.assign(active.begin(), active.end());
            slot_freed.notify_all();
        }
        for (const auto& job : running) scheduler->cancel(job->request);
        // Streams see their request end, send the last event and [DONE], and finish their job.
        {
            std::unique_lock lock(slots_mutex);
            slot_freed.wait_for(lock, std::chrono::seconds(10), [&] { return active.empty(); });
        }
        if (!options.slot_save_path.empty()) {
            std::lock_guard lock(slots_mutex);
            for (auto& [id, s] : slots.all()) {
                if (s.busy || !s.sequence) continue;
                try {
                    const auto path = options.slot_save_path / fmt::format("slot-{}.kvc", id);
                    save_slot(s, path);
                    fmt::print(stderr, "kvcache-server: saved slot {} ({} tokens) to {}\n", id, s.tokens.size(), path.string());
                } catch (const std::exception& e) {
                    fmt::print(stderr, "kvcache-server: could not save slot {}: {}\n", id, e.what());
                }
            }
        }
        http.stop();
    }
};

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Server::~Server() = default;

int Server::bind() {
    const auto& o = impl_->options;
    int port = o.port;
    if (port == 0) {
        port = impl_->http.bind_to_any_port(o.host);
        if (port < 0) throw IoError(fmt::format("cannot bind {} to any port", o.host));
    } else if (!impl_->http.bind_to_port(o.host, port)) {
        throw IoError(fmt::format("cannot bind {}:{} (in use, or not an address of this machine)", o.host, port));
    }
    return port;
}

void Server::serve() {
    impl_->scheduler->start();
    impl_->http.listen_after_bind();
    impl_->scheduler->stop();
}

void Server::shutdown() { impl_->shutdown(); }

const std::string& Server::model_name() const { return impl_->model_name; }

}  // namespace kvcache::server
