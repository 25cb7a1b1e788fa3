#include "request_parsing.hpp"

#include <cmath>
#include <limits>
#include <random>

#include <fmt/format.h>

#include "api_error.hpp"

namespace kvcache::server {
namespace {

using nlohmann::json;

const char* type_name(const json& v) {
    switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float:
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "a number";
    default: return "something else";
    }
}

ApiError wrong_type(const std::string& field, const char* wanted, const json& got) {
    return bad_request("invalid_type", fmt::format("'{}' must be {}, got {}", field, wanted, type_name(got)), field);
}

ApiError out_of_range(const std::string& field, const std::string& message) {
    return bad_request("invalid_value", fmt::format("'{}' {}", field, message), field);
}

/// A field that is absent or null counts as not given (OpenAI clients send null for unset options).
const json* field(const json& body, const char* name) {
    const auto it = body.find(name);
    if (it == body.end() || it->is_null()) return nullptr;
    return &*it;
}

std::optional<std::string> get_string(const json& body, const char* name) {
    const json* v = field(body, name);
    if (!v) return std::nullopt;
    if (!v->is_string()) throw wrong_type(name, "a string", *v);
    return v->get<std::string>();
}

std::string require_string(const json& body, const char* name) {
    auto s = get_string(body, name);
    if (!s) throw bad_request("missing_field", fmt::format("'{}' is required", name), name);
    return *s;
}

std::optional<bool> get_bool(const json& body, const char* name) {
    const json* v = field(body, name);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) throw wrong_type(name, "a boolean", *v);
    return v->get<bool>();
}

std::optional<double> get_number(const json& body, const char* name, double lo, double hi) {
    const json* v = field(body, name);
    if (!v) return std::nullopt;
    if (!v->is_number()) throw wrong_type(name, "a number", *v);
    const double x = v->get<double>();
    if (!std::isfinite(x) || x < lo || x > hi) throw out_of_range(name, fmt::format("must be in [{}, {}], got {}", lo, hi, x));
    return x;
}

std::optional<std::int64_t> get_integer(const json& body, const char* name, std::int64_t lo, std::int64_t hi) {
    const json* v = field(body, name);
    if (!v) return std::nullopt;
    if (v->is_number_float()) {
        const double x = v->get<double>();
        if (std::isfinite(x) && x == std::floor(x) && x >= double(lo) && x <= double(hi)) return std::int64_t(x);
        throw wrong_type(name, "an integer", *v);
    }
    if (!v->is_number_integer()) throw wrong_type(name, "an integer", *v);
    if (v->is_number_unsigned()) {
        const auto u = v->get<std::uint64_t>();
        if (u > std::uint64_t(hi) || (lo > 0 && u < std::uint64_t(lo))) throw out_of_range(name, fmt::format("must be in [{}, {}], got {}", lo, hi, u));
        return std::int64_t(u);
    }
    const auto x = v->get<std::int64_t>();
    if (x < lo || x > hi) throw out_of_range(name, fmt::format("must be in [{}, {}], got {}", lo, hi, x));
    return x;
}

constexpr std::int64_t kMaxSlotId = std::numeric_limits<std::int32_t>::max();

std::string require_prompt(const json& body, const char* name) {
    std::string prompt = require_string(body, name);
    if (prompt.empty()) throw bad_request("invalid_value", fmt::format("'{}' must not be empty", name), name);
    return prompt;
}

/// Options an OpenAI client may send that this server does not implement: refused rather than ignored, so
/// nobody gets an answer that silently lacks what they asked for.
void refuse_unsupported(const json& body) {
    if (auto n = get_integer(body, "n", 1, 1 << 20); n && *n != 1) {
        throw bad_request("unsupported_value", "'n' must be 1: one choice per request", "n");
    }
    for (const char* name : {"frequency_penalty", "presence_penalty"}) {
        if (auto v = get_number(body, name, -2, 2); v && *v != 0) {
            throw bad_request("unsupported_value", fmt::format("'{}' is not supported (use repeat_penalty)", name), name);
        }
    }
    if (auto v = get_bool(body, "logprobs"); v && *v) {
        throw bad_request("unsupported_value", "'logprobs' is not supported", "logprobs");
    }
    for (const char* name : {"tools", "functions", "tool_choice", "response_format", "logit_bias"}) {
        if (field(body, name)) throw bad_request("unsupported_value", fmt::format("'{}' is not supported", name), name);
    }
}

GenerationParams parse_params(const json& body, const RequestLimits& limits) {
    refuse_unsupported(body);
    GenerationParams p;
    const auto max_tokens = get_integer(body, "max_tokens", 1, std::int64_t(limits.max_tokens));
    const auto max_completion = get_integer(body, "max_completion_tokens", 1, std::int64_t(limits.max_tokens));
    if (max_completion) p.max_tokens = std::size_t(*max_completion);
    else if (max_tokens) p.max_tokens = std::size_t(*max_tokens);
    if (auto t = get_number(body, "temperature", 0, 5)) p.sampling.temperature = float(*t);
    if (auto v = get_number(body, "top_p", 0, 1)) {
        if (*v <= 0) throw out_of_range("top_p", "must be in (0, 1], got 0");
        p.sampling.top_p = float(*v);
    }
    if (auto v = get_integer(body, "top_k", 0, 1 << 20)) p.sampling.top_k = int(*v);
    if (auto v = get_number(body, "min_p", 0, 1)) p.sampling.min_p = float(*v);
    if (auto v = get_number(body, "repeat_penalty", 0, 10)) {
        if (*v <= 0) throw out_of_range("repeat_penalty", "must be in (0, 10], got 0");
        p.sampling.repetition_penalty = float(*v);
    }
    if (auto v = get_integer(body, "repeat_last_n", 0, 1 << 20)) p.sampling.repetition_window = std::size_t(*v);
    // -1 (as llama.cpp spells "random") draws a seed; anything else is used as given.
    if (auto v = get_integer(body, "seed", -1, std::numeric_limits<std::int64_t>::max())) {
        p.sampling.seed = *v == -1 ? std::random_device{}() : std::uint64_t(*v);
    }
    if (const json* stop = field(body, "stop")) {
        std::vector<std::string> list;
        if (stop->is_string()) {
            list.push_back(stop->get<std::string>());
        } else if (stop->is_array()) {
            for (const json& s : *stop) {
                if (!s.is_string()) throw wrong_type("stop", "a string or an array of strings", s);
                list.push_back(s.get<std::string>());
            }
        } else {
            throw wrong_type("stop", "a string or an array of strings", *stop);
        }
        if (list.size() > limits.max_stop) {
            throw out_of_range("stop", fmt::format("has {} strings, at most {} are allowed", list.size(), limits.max_stop));
        }
        for (const auto& s : list) {
            if (s.size() > limits.max_stop_bytes) {
                throw out_of_range("stop", fmt::format("holds a string of {} bytes, at most {}", s.size(), limits.max_stop_bytes));
            }
            if (!s.empty()) p.stop.push_back(s);
        }
    }
    if (auto v = get_bool(body, "stream")) p.stream = *v;
    if (auto v = get_bool(body, "return_tokens")) p.return_tokens = *v;
    return p;
}

std::optional<std::int64_t> optional_slot(const json& body, const char* name) {
    return get_integer(body, name, 0, kMaxSlotId);
}

std::int64_t require_slot(const json& body, const char* name) {
    auto v = optional_slot(body, name);
    if (!v) throw bad_request("missing_field", fmt::format("'{}' is required", name), name);
    return *v;
}

std::string message_content(const json& content, std::size_t index) {
    const std::string name = fmt::format("messages[{}].content", index);
    if (content.is_string()) return content.get<std::string>();
    // The array form of OpenAI's content: text parts are concatenated; other kinds are not supported.
    if (content.is_array()) {
        std::string text;
        for (const json& part : content) {
            if (!part.is_object()) throw wrong_type(name, "a string or an array of text parts", part);
            const auto type = get_string(part, "type");
            if (type != "text") throw bad_request("unsupported_value", fmt::format("'{}': only text parts are supported", name), name);
            text += require_string(part, "text");
        }
        return text;
    }
    throw wrong_type(name, "a string or an array of text parts", content);
}

std::size_t context_window(const json& body, const RequestLimits& limits) {
    return std::size_t(get_integer(body, "context_window", 0, std::int64_t(limits.max_context_window)).value_or(0));
}

}  // namespace

nlohmann::json parse_body(const std::string& body) {
    json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) throw bad_request("invalid_json", "the request body is not valid JSON");
    if (!j.is_object()) throw bad_request("invalid_body", fmt::format("the request body must be a JSON object, got {}", type_name(j)));
    return j;
}

ChatRequest parse_chat_request(const json& body, const RequestLimits& limits) {
    ChatRequest r;
    const json* messages = field(body, "messages");
    if (!messages) throw bad_request("missing_field", "'messages' is required", "messages");
    if (!messages->is_array()) throw wrong_type("messages", "an array", *messages);
    if (messages->empty()) throw bad_request("invalid_value", "'messages' must not be empty", "messages");
    if (messages->size() > limits.max_messages) {
        throw out_of_range("messages", fmt::format("has {} entries, at most {}", messages->size(), limits.max_messages));
    }
    for (std::size_t i = 0; i < messages->size(); ++i) {
        const json& m = (*messages)[i];
        const std::string name = fmt::format("messages[{}]", i);
        if (!m.is_object()) throw wrong_type(name, "an object", m);
        const json* role = field(m, "role");
        if (!role || !role->is_string()) throw bad_request("invalid_value", fmt::format("'{}.role' must be a string", name), name + ".role");
        const std::string r_name = role->get<std::string>();
        if (r_name != "system" && r_name != "user" && r_name != "assistant" && r_name != "developer") {
            throw bad_request("invalid_value",
                              fmt::format("'{}.role' must be system, user or assistant, got \"{}\"", name, r_name), name + ".role");
        }
        const json* content = field(m, "content");
        if (!content) throw bad_request("missing_field", fmt::format("'{}.content' is required", name), name + ".content");
        r.messages.push_back({r_name == "developer" ? "system" : r_name, message_content(*content, i)});
    }
    r.params = parse_params(body, limits);
    r.slot_id = optional_slot(body, "slot_id");
    return r;
}

CompletionRequest parse_completion_request(const json& body, const RequestLimits& limits) {
    CompletionRequest r;
    const json* prompt = field(body, "prompt");
    if (!prompt) throw bad_request("missing_field", "'prompt' is required", "prompt");
    if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) {
        r.prompt = (*prompt)[0].get<std::string>();
    } else if (prompt->is_string()) {
        r.prompt = prompt->get<std::string>();
    } else {
        throw wrong_type("prompt", "a string", *prompt);
    }
    if (r.prompt.empty()) throw bad_request("invalid_value", "'prompt' must not be empty", "prompt");
    if (auto echo = get_bool(body, "echo"); echo && *echo) throw bad_request("unsupported_value", "'echo' is not supported", "echo");
    r.params = parse_params(body, limits);
    r.slot_id = optional_slot(body, "slot_id");
    return r;
}

BranchRequest parse_branch_request(const json& body, const RequestLimits& limits) {
    BranchRequest r;
    r.parent_slot_id = require_slot(body, "parent_slot_id");
    const std::string mode = get_string(body, "branch_mode").value_or("reuse_kv");
    if (mode == "reuse_kv") r.mode = BranchMode::ReuseKv;
    else if (mode == "fresh") r.mode = BranchMode::Fresh;
    else throw bad_request("invalid_value", fmt::format("'branch_mode' must be \"reuse_kv\" or \"fresh\", got \"{}\"", mode), "branch_mode");
    r.text_excerpt = get_string(body, "text_excerpt").value_or("");
    r.context_window = context_window(body, limits);
    r.prompt = require_prompt(body, "prompt");
    if (auto index = get_integer(body, "message_index", 0, std::int64_t(limits.max_messages))) r.message_index = std::size_t(*index);
    r.params = parse_params(body, limits);
    return r;
}

GenerateRequest parse_generate_request(const json& body, const RequestLimits& limits) {
    GenerateRequest r;
    r.prompt = require_prompt(body, "prompt");
    r.slot_id = optional_slot(body, "slot_id");
    r.params = parse_params(body, limits);
    return r;
}

FocusRequest parse_focus_request(const json& body, const RequestLimits& limits) {
    FocusRequest r;
    r.slot_id = require_slot(body, "slot_id");
    r.text_excerpt = require_string(body, "text_excerpt");
    if (r.text_excerpt.empty()) throw bad_request("invalid_value", "'text_excerpt' must not be empty", "text_excerpt");
    r.context_window = context_window(body, limits);
    r.prompt = require_prompt(body, "prompt");
    r.params = parse_params(body, limits);
    return r;
}

ContinueRequest parse_continue_request(const json& body, const RequestLimits& limits) {
    ContinueRequest r;
    r.slot_id = require_slot(body, "slot_id");
    const auto index = get_integer(body, "message_index", 0, std::int64_t(limits.max_messages));
    if (!index) throw bad_request("missing_field", "'message_index' is required", "message_index");
    r.message_index = std::size_t(*index);
    r.prompt = require_prompt(body, "prompt");
    r.new_slot = get_bool(body, "new_slot").value_or(false);
    r.params = parse_params(body, limits);
    return r;
}

std::int64_t parse_slot_id(const std::string& text) {
    if (text.empty() || text.size() > 10 || text.find_first_not_of("0123456789") != std::string::npos) {
        throw bad_request("invalid_value", fmt::format("slot id must be a non-negative integer, got \"{}\"", text), "id");
    }
    const std::int64_t id = std::stoll(text);
    if (id > kMaxSlotId) throw bad_request("invalid_value", fmt::format("slot id {} is too large", id), "id");
    return id;
}

std::string sanitize_file_name(const std::string& name) {
    if (name.empty() || name.size() > 128 || name.front() == '.' ||
        name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != std::string::npos) {
        throw bad_request("invalid_filename",
                          "'filename' must be 1-128 letters, digits, '.', '-' or '_' and not start with '.'", "filename");
    }
    return name;
}

}  // namespace kvcache::server
