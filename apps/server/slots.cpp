#include "slots.hpp"

#include <algorithm>

#include "prompt.hpp"

namespace kvcache::server {

std::size_t SlotTable::busy() const {
    return std::size_t(std::count_if(slots_.begin(), slots_.end(), [](const auto& kv) { return kv.second.busy; }));
}

Slot* SlotTable::find(std::int64_t id) {
    const auto it = slots_.find(id);
    return it == slots_.end() ? nullptr : &it->second;
}

Slot& SlotTable::create(std::optional<std::int64_t> id) {
    const std::int64_t chosen = id && !slots_.count(*id) ? *id : next_id_;
    next_id_ = std::max(next_id_, chosen + 1);
    Slot& s = slots_[chosen];
    s = Slot{};
    s.id = chosen;
    touch(s);
    return s;
}

Slot* SlotTable::least_recently_used_idle(std::optional<std::int64_t> keep) {
    Slot* best = nullptr;
    for (auto& [id, s] : slots_) {
        if (s.busy || (keep && id == *keep)) continue;
        if (!best || s.last_used < best->last_used) best = &s;
    }
    return best;
}

Slot* SlotTable::conversation_prefix(std::span<const ChatMessage> messages) {
    Slot* best = nullptr;
    for (auto& [id, s] : slots_) {
        if (s.busy || !s.sequence || s.messages.empty() || s.messages.size() > messages.size()) continue;
        const bool prefix = std::equal(s.messages.begin(), s.messages.end(), messages.begin(),
                                       [](const ChatMessage& a, const ChatMessage& b) {
                                           return a.role == b.role && a.content == b.content;
                                       });
        if (prefix && (!best || s.messages.size() > best->messages.size())) best = &s;
    }
    return best;
}

std::pair<Slot*, std::size_t> SlotTable::longest_token_prefix(std::span<const std::int32_t> tokens) {
    std::pair<Slot*, std::size_t> best{nullptr, 0};
    for (auto& [id, s] : slots_) {
        if (s.busy || !s.sequence) continue;
        const std::size_t n = common_prefix(s.tokens, tokens);
        if (n > best.second) best = {&s, n};
    }
    return best;
}

nlohmann::json messages_to_json(std::span<const ChatMessage> messages) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& m : messages) out.push_back({{"role", m.role}, {"content", m.content}});
    return out;
}

}  // namespace kvcache::server
