// Whether a parallel_for call is worth offering to the pool's helpers: measured, per calling thread, on the calls
// themselves.
//
// Why: a helper only helps when it gets a core. On a machine whose other cores are busy (another program, other
// tenants of a VM), a helper shares its core with that program, runs a fraction of the time, and every call pays
// for coordinating with it — two threads then decode slower than one (0.8-0.97x measured with a busy loop on the
// second of two cores). No fixed rule separates that from a quiet machine, where two threads are 1.5x faster; a
// measurement does. So the governor times both ways of running the same calls and keeps the faster. A call is
// charged its cycle — from its start to the next call's start — so that what the helpers cost the caller between
// calls (one polling on the caller's core) counts too:
//   - a period of kPeriod calls may open with two probes of kProbe calls each: one offered to the helpers, then
//     one run by the caller alone. The first kWarmup calls of each are not timed: helpers that slept are still
//     waking, or helpers that just worked still poll for the next job (on a busy machine the OS may have put
//     one on the caller's own core, where its polling slows the caller down);
//   - after the probes every call runs the way that cost less: the calls seen since the last decision, each
//     weighted by how often it came, priced at each way's running mean (the way that runs keeps being timed);
//   - a probe of the losing way costs (helpers on busy cores took 1.2-2.6x as long), so while the decision holds
//     the probes come every 1, 2, 4, ... kMaxProbeInterval periods; a changed decision probes every period again;
//   - when the work changes (a prompt's chunks end and one-token steps begin) — kProbe calls of kinds not yet
//     timed both ways, and at least half of the calls since the probe — a new period with probes starts at once
//     (at most once per quarter period), instead of running the new work on the old decision to the period's end;
//   - calls are told apart by their key (the body, the task count, the chunk and a class of the size of their
//     work), so each way is compared on the same work — matmuls of different shapes, or over a prompt and over
//     one token, never mix.
// Ties go to the helpers (the caller asked for them). Whichever way runs, the results are the same bits: tasks
// never depend on the thread that runs them.
//
// The governor is not thread-safe: each calling thread owns one (thread_pool.cpp keeps one thread_local).
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>

namespace kvcache::detail {

/// What identifies a call's work: calls with equal keys are timed together.
struct ParallelCallKey {
    const void* body = nullptr;  // the type-erased body (one per parallel_for call site and lambda)
    std::size_t tasks = 0;
    std::size_t chunk = 0;
    std::size_t size = 0;  // how much work the call does (0: not given); compared by class, see size_class()

    /// Sizes in steps of a quarter of a power of two: attention's growing context stays in one class for many
    /// steps, while matmuls of different shapes, or over a prompt's chunk and over one token, land in different
    /// classes.
    static std::uint32_t size_class(std::size_t size) {
        if (size == 0) return 0;
        const int top = std::bit_width(size) - 1;  // size in [2^top, 2^(top+1))
        const std::size_t quarter = top >= 2 ? (size >> (top - 2)) & 3u : 0;
        return static_cast<std::uint32_t>(top * 4 + static_cast<int>(quarter) + 1);
    }

    bool same_work(const ParallelCallKey& other) const {
        return body == other.body && tasks == other.tasks && chunk == other.chunk &&
               size_class(size) == size_class(other.size);
    }
};

class HelperGovernor {
public:
    enum class Way { helpers, alone };

    static constexpr std::uint32_t kPeriod = 1024;  // calls between the starts of two probes
    static constexpr std::uint32_t kProbe = 32;     // calls in each probe
    static constexpr std::uint32_t kWarmup = 4;     // first calls of each probe that are not timed
    static constexpr double kTieMargin = 0.02;      // alone must cost 2 % less to be chosen
    static constexpr std::size_t kSlots = 64;       // distinct call keys remembered
    static constexpr std::uint32_t kMaxProbeInterval = 16;  // most periods between probes (~16 000 calls)
    static constexpr double kMaxCycle = 50'000;  // us: a longer cycle is a pause between requests, not a cost

    /// The way a call runs, and whether its cycle is timed (kept in that way's statistics).
    struct Decision {
        Way way = Way::helpers;
        bool timed = false;
    };

    /// The way the call with this key that starts now (in microseconds, any fixed origin) runs.
    ///
    /// A call is charged its cycle: from its start to the next call's start, i.e. the call plus the caller's own
    /// work up to the next one. A helper that has just worked polls for the next job for a while; if the OS put
    /// it on the caller's core, that polling slows the caller's work between calls — a cost of the helpers that
    /// the call's own time would miss.
    Decision next(const ParallelCallKey& key, double now) {
        if (last_.timed && last_.slot != nullptr && now - last_.start <= kMaxCycle) {
            (last_.way == Way::helpers ? last_.slot->helpers : last_.slot->alone).add(now - last_.start);
        }
        const std::uint32_t phase = calls_ % kPeriod;
        ++calls_;
        if (phase == 0) begin_period();
        if (probing_ && phase == 2 * kProbe) decide();
        Slot* slot = find_or_claim(key);
        if (slot != nullptr) ++slot->seen;
        const bool in_probe = probing_ && phase < 2 * kProbe;
        // Only when most calls since the probe are new (one kind of call changing class now and then — attention
        // over a growing context — waits for the next period), and at most once per quarter period.
        if (!in_probe && slot != nullptr && (slot->helpers.samples == 0 || slot->alone.samples == 0) &&
            ++unpriced_ >= kProbe && 2 * unpriced_ >= phase && phase >= kPeriod / 4) {
            calls_ = 0;  // the next call opens a period, with probes
            periods_since_probe_ = probe_interval_;
            unpriced_ = 0;
        }
        Decision decision{steady_, true};
        if (probing_ && phase < kProbe) decision = {Way::helpers, phase >= kWarmup};
        else if (probing_ && phase < 2 * kProbe) decision = {Way::alone, phase >= kProbe + kWarmup};
        last_ = {slot, decision.way, decision.timed, now};
        return decision;
    }

    /// The way calls run between probes, as decided at the end of the last probe.
    Way steady_way() const { return steady_; }

    /// Periods from one probe to the next while the decision holds (1 after a change, at most kMaxProbeInterval).
    std::uint32_t probe_interval() const { return probe_interval_; }

private:
    /// A running mean that one outlier (the caller descheduled for a time slice) cannot run away with: a sample
    /// counts at most twice the current mean.
    struct Mean {
        double value = 0;
        std::uint32_t samples = 0;
        void add(double x) {
            if (samples == 0) {
                value = x;
            } else {
                if (x > 2 * value) x = 2 * value;
                value += (x - value) / 4;
            }
            ++samples;
        }
    };

    struct Slot {
        ParallelCallKey key;
        bool used = false;
        std::uint32_t seen = 0;  // calls since the last decision
        Mean helpers, alone;
    };

    /// The last call: its cycle ends when the next call starts.
    struct LastCall {
        Slot* slot = nullptr;
        Way way = Way::helpers;
        bool timed = false;
        double start = 0;
    };

    void begin_period() {
        probing_ = ++periods_since_probe_ >= probe_interval_;
        if (probing_) {
            periods_since_probe_ = 0;
            unpriced_ = 0;
        }
    }

    /// Prices the calls seen since the last decision both ways; the cheaper way runs until the next probe.
    void decide() {
        double with_helpers = 0, alone = 0;
        for (Slot& slot : slots_) {
            if (slot.used && slot.seen > 0 && slot.helpers.samples > 0 && slot.alone.samples > 0) {
                with_helpers += slot.seen * slot.helpers.value;
                alone += slot.seen * slot.alone.value;
            }
            slot.seen = 0;
        }
        if (with_helpers == 0) {  // no call seen both ways yet (e.g. a prompt's chunk, then one-token steps)
            probe_interval_ = 1;
            return;
        }
        const Way way = alone < with_helpers * (1 - kTieMargin) ? Way::alone : Way::helpers;
        probe_interval_ = way == steady_ ? std::min(2 * probe_interval_, kMaxProbeInterval) : 1;
        steady_ = way;
    }

    /// The key's slot, claiming a free one on first sight; nullptr when every nearby slot holds another key (that
    /// call's times are then not kept and it does not count in decide() — harmless).
    Slot* find_or_claim(const ParallelCallKey& key) {
        const std::size_t home = hash(key) % kSlots;
        for (std::size_t probe = 0; probe < 8; ++probe) {
            Slot& slot = slots_[(home + probe) % kSlots];
            if (!slot.used) {
                slot.used = true;
                slot.key = key;
                return &slot;
            }
            if (slot.key.same_work(key)) return &slot;
        }
        return nullptr;
    }

    static std::size_t hash(const ParallelCallKey& key) {
        std::size_t h = reinterpret_cast<std::uintptr_t>(key.body);
        for (std::size_t part : {key.tasks, key.chunk, std::size_t{ParallelCallKey::size_class(key.size)}}) {
            h ^= part + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
        }
        return h;
    }

    std::array<Slot, kSlots> slots_{};
    LastCall last_;
    std::uint32_t calls_ = 0;
    std::uint32_t probe_interval_ = 1;
    std::uint32_t periods_since_probe_ = 0;
    bool probing_ = false;  // this period opens with the two probes
    std::uint32_t unpriced_ = 0;  // calls since the last probe of kinds not yet timed both ways
    Way steady_ = Way::helpers;
};

}  // namespace kvcache::detail
