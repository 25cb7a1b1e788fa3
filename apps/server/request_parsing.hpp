// Request bodies of every endpoint, read from JSON and checked field by field: a wrong type, a value out of
// range or a missing field is an ApiError (400) naming the field, raised before anything is changed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvcache/model/chat.hpp"
#include "kvcache/model/sampling.hpp"

namespace kvcache::server {

/// Limits of the server that parsing enforces.
struct RequestLimits {
    std::size_t max_tokens = 4096;   ///< largest max_tokens accepted (the slot context)
    std::size_t max_messages = 1024;
    std::size_t max_stop = 8;        ///< stop strings per request
    std::size_t max_stop_bytes = 256;
    std::size_t max_context_window = 4096;
};

/// Sampling and stopping, common to every generating endpoint.
struct GenerationParams {
    std::optional<std::size_t> max_tokens;  ///< absent: whatever the slot context leaves
    SamplingOptions sampling;               ///< temperature default 0 (greedy), as documented
    std::vector<std::string> stop;
    bool stream = false;
    bool return_tokens = false;             ///< put the generated token ids into the response (an extension)
};

struct ChatRequest {
    std::vector<ChatMessage> messages;
    GenerationParams params;
    std::optional<std::int64_t> slot_id;    ///< continue in this slot (an extension; OpenAI clients omit it)
};

struct CompletionRequest {
    std::string prompt;
    GenerationParams params;
    std::optional<std::int64_t> slot_id;
};

enum class BranchMode { ReuseKv, Fresh };

struct BranchRequest {
    std::int64_t parent_slot_id = -1;
    BranchMode mode = BranchMode::ReuseKv;
    std::string text_excerpt;         ///< may be empty: a plain follow-up in a new branch
    std::size_t context_window = 0;   ///< tokens quoted on each side of the excerpt
    std::string prompt;
    std::optional<std::size_t> message_index;  ///< branch from messages [0, message_index] (default: all)
    GenerationParams params;
};

struct GenerateRequest {              ///< POST /generate
    std::string prompt;
    std::optional<std::int64_t> slot_id;
    GenerationParams params;
};

struct FocusRequest {                 ///< POST /focus
    std::int64_t slot_id = -1;
    std::string text_excerpt;
    std::size_t context_window = 0;
    std::string prompt;
    GenerationParams params;
};

struct ContinueRequest {              ///< POST /continue
    std::int64_t slot_id = -1;
    std::size_t message_index = 0;    ///< keep messages [0, message_index] of the slot's conversation
    std::string prompt;               ///< the new user message after them
    bool new_slot = false;            ///< fork instead of truncating the slot in place
    GenerationParams params;
};

/// The body as a JSON object (ApiError 400 "invalid_json" / "invalid_body" otherwise).
nlohmann::json parse_body(const std::string& body);

ChatRequest parse_chat_request(const nlohmann::json& body, const RequestLimits& limits);
CompletionRequest parse_completion_request(const nlohmann::json& body, const RequestLimits& limits);
BranchRequest parse_branch_request(const nlohmann::json& body, const RequestLimits& limits);
GenerateRequest parse_generate_request(const nlohmann::json& body, const RequestLimits& limits);
FocusRequest parse_focus_request(const nlohmann::json& body, const RequestLimits& limits);
ContinueRequest parse_continue_request(const nlohmann::json& body, const RequestLimits& limits);

/// A slot id from a URL path segment ("12"): ApiError 400 unless it is a non-negative decimal integer.
std::int64_t parse_slot_id(const std::string& text);

/// A cache file name for --slot-save-path: letters, digits, '.', '-', '_' only, not starting with '.',
/// at most 128 bytes (ApiError 400 otherwise) — so a request can never name a file outside the directory.
std::string sanitize_file_name(const std::string& name);

}  // namespace kvcache::server
