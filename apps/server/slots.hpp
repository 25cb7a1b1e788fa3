// Slots: the conversations a server keeps, each a kept paged sequence of the scheduler plus what the server
// knows about it (messages, parent, reuse). Pure bookkeeping; the server pairs it with the scheduler.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/model/chat.hpp"

namespace kvcache::server {

struct Slot {
    std::int64_t id = 0;
    bool busy = false;                     ///< a request runs in it (its sequence belongs to that request)
    std::optional<SequenceId> sequence;    ///< the kept sequence while idle; none while busy or empty
    std::vector<std::int32_t> tokens;      ///< what the kept sequence holds (prompt + fed generated tokens)
    std::vector<ChatMessage> messages;     ///< the conversation so far, answers included (empty: raw completion)
    std::optional<std::int64_t> parent;    ///< the slot it was branched from
    std::size_t last_prompt_tokens = 0;    ///< prompt of its last request
    std::size_t last_reused_tokens = 0;    ///< of those, taken from a cache (slot, fork or prefix cache)
    double last_tokens_per_second = 0;
    std::uint64_t last_used = 0;           ///< LRU clock
};

/// The slots by id. Ids are never reused, so a stale id is an error rather than someone else's slot.
class SlotTable {
public:
    explicit SlotTable(std::size_t max_slots) : max_slots_(max_slots) {}

    std::size_t max_slots() const { return max_slots_; }
    std::size_t size() const { return slots_.size(); }
    std::size_t busy() const;
    Slot* find(std::int64_t id);
    /// A new empty slot (with `id` if given and unused, else the next id). The caller makes room first.
    Slot& create(std::optional<std::int64_t> id = std::nullopt);
    void erase(std::int64_t id) { slots_.erase(id); }
    void touch(Slot& s) { s.last_used = ++clock_; }
    /// The least recently used idle slot other than `keep`, if any.
    Slot* least_recently_used_idle(std::optional<std::int64_t> keep = std::nullopt);
    /// The idle slot whose conversation is the longest prefix of `messages` (same roles and contents).
    Slot* conversation_prefix(std::span<const ChatMessage> messages);
    /// The idle slot sharing the longest token prefix with `tokens`, and that length.
    std::pair<Slot*, std::size_t> longest_token_prefix(std::span<const std::int32_t> tokens);
    std::map<std::int64_t, Slot>& all() { return slots_; }

private:
    std::size_t max_slots_;
    std::map<std::int64_t, Slot> slots_;
    std::int64_t next_id_ = 0;
    std::uint64_t clock_ = 0;
};

nlohmann::json messages_to_json(std::span<const ChatMessage> messages);

}  // namespace kvcache::server
