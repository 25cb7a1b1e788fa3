// bench_prefix: what prefix reuse and paged sharing buy on the real model.
//
//   bench_prefix [--model PATH] [--prompt N] [--cached M] [--runs R] [--threads T] [--branches B] [--branch-tokens K]
//
// 1. Time to first token for an N-token prompt (default 1024): cold (nothing cached; the whole prompt is
//    one forward pass into a fresh paged sequence) against warm (the prefix cache holds its first M tokens,
//    default 1008, from an earlier request; only the last N - M run). Each is the minimum of R runs
//    (default 5) and includes matching, block bookkeeping, the forward pass and the argmax. The last-token
//    logits of both are compared bit for bit.
// 2. Memory for B branches (default 8) of one N-token conversation, each then extended by K tokens (default
//    32): pool bytes in use against B separate MultiLayerKVCache copies of N + K positions.
// Prints one JSON object. Default model: $KVCACHE_MODEL or models/SmolLM2-135M-Instruct.Q4_1.gguf.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/cache/prefix_cache.hpp"
#include "kvcache/model/decoder.hpp"
#include "kvcache/model/paged_session.hpp"
#include "kvcache/model/sampling.hpp"

#ifndef KVCACHE_SOURCE_DIR
#define KVCACHE_SOURCE_DIR "."
#endif

using namespace kvcache;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::vector<std::int32_t> some_tokens(std::size_t n, std::uint64_t seed, std::size_t vocab) {
    std::mt19937_64 g(seed);
    std::vector<std::int32_t> t(n);
    for (auto& x : t) x = static_cast<std::int32_t>(g() % vocab);
    return t;
}

std::size_t arg(int argc, char** argv, const char* name, std::size_t fallback) {
    for (int i = 1; i + 1 < argc; ++i) {
        if (std::strcmp(argv[i], name) == 0) return static_cast<std::size_t>(std::stoull(argv[i + 1]));
    }
    return fallback;
}

}  // namespace

int main(int argc, char** argv) try {
    std::filesystem::path path = std::getenv("KVCACHE_MODEL")
                                     ? std::filesystem::path(std::getenv("KVCACHE_MODEL"))
                                     : std::filesystem::path(KVCACHE_SOURCE_DIR) / "models" /
                                           "SmolLM2-135M-Instruct.Q4_1.gguf";
    for (int i = 1; i + 1 < argc; ++i) {
        if (std::strcmp(argv[i], "--model") == 0) path = argv[i + 1];
    }
    const std::size_t n_prompt = arg(argc, argv, "--prompt", 1024);
    const std::size_t n_cached = arg(argc, argv, "--cached", 1008);
    const std::size_t runs = std::max<std::size_t>(1, arg(argc, argv, "--runs", 5));
    const int threads = static_cast<int>(arg(argc, argv, "--threads", 0));
    const std::size_t n_branches = arg(argc, argv, "--branches", 8);
    const std::size_t branch_tokens = arg(argc, argv, "--branch-tokens", 32);
    if (n_cached >= n_prompt) {
        std::fprintf(stderr, "--cached (%zu) must be below --prompt (%zu)\n", n_cached, n_prompt);
        return 2;
    }
    if (!std::filesystem::exists(path)) {
        std::fprintf(stderr, "model file %s not found (run scripts/fetch-model.sh)\n", path.string().c_str());
        return 1;
    }
    Decoder model = Decoder::load(path, DecoderOptions{.threads = threads});
    const std::size_t vocab = model.config().vocab_size;
    const auto prompt = some_tokens(n_prompt, 1, vocab);
    std::vector<float> logits(vocab);

    // ---- 1. time to first token ----
    const std::size_t block = PagedKVPool<float>::kDefaultBlockSize;
    PagedKVPool<float> pool(model.cache_layers(), 3 * PagedKVPool<float>::blocks_for(n_prompt + 64, block));
    PrefixCache<float> prefixes(pool, pool.bytes_allocated());

    std::vector<float> cold_logits;
    double cold = 1e300;
    std::int32_t cold_token = -1;
    {
        PagedSession<float> session(model, pool);  // no prefix cache: every run computes everything
        for (std::size_t r = 0; r < runs; ++r) {
            const auto t0 = Clock::now();
            const PagedPrefill p = session.start(prompt, logits);
            cold_token = argmax(logits);
            cold = std::min(cold, seconds_since(t0));
            session.finish(p.sequence);
        }
        cold_logits = logits;
    }

    // The earlier request: the first n_cached tokens, then a different ending; cached when it finishes.
    PagedSession<float> session(model, pool, &prefixes);
    {
        std::vector<std::int32_t> earlier(prompt.begin(), prompt.begin() + static_cast<std::ptrdiff_t>(n_cached));
        const auto tail = some_tokens(n_prompt - n_cached, 2, vocab);
        earlier.insert(earlier.end(), tail.begin(), tail.end());
        session.finish(session.start(earlier, logits).sequence);
    }
    double warm = 1e300;
    std::size_t reused = 0;
    std::int32_t warm_token = -1;
    for (std::size_t r = 0; r < runs; ++r) {
        const auto t0 = Clock::now();
        const PagedPrefill p = session.start(prompt, logits);
        warm_token = argmax(logits);
        warm = std::min(warm, seconds_since(t0));
        reused = p.reused_tokens;
        session.finish(p.sequence, CachePrefix::no);  // keep the cache as it was for the next run
    }
    const bool bitwise = std::memcmp(logits.data(), cold_logits.data(), logits.size() * sizeof(float)) == 0;

    // ---- 2. memory of branches ----
    prefixes.clear();
    const PagedPrefill root = session.start(prompt, logits);
    std::vector<SequenceId> branches;
    for (std::size_t b = 0; b < n_branches; ++b) {
        branches.push_back(session.branch(root.sequence));
        session.extend(branches.back(), some_tokens(branch_tokens, 100 + b, vocab), logits);
    }
    session.finish(root.sequence, CachePrefix::no);  // the branches keep the prefix alive
    const std::size_t pool_bytes = pool.bytes_in_use();
    const std::size_t copy_bytes =
        n_branches * MultiLayerKVCache<float>::bytes_for(model.cache_layers(), 1, n_prompt + branch_tokens);
    const std::size_t prefix_bytes = PagedKVPool<float>::blocks_for(n_prompt, block) * pool.block_bytes();
    for (SequenceId b : branches) session.finish(b, CachePrefix::no);

    fmt::print(
        "{{\n"
        "  \"model\": \"{}\", \"threads\": {}, \"runs\": {}, \"block_size\": {},\n"
        "  \"ttft\": {{\"prompt_tokens\": {}, \"cached_tokens\": {}, \"reused_tokens\": {},\n"
        "           \"cold_seconds\": {:.6f}, \"warm_seconds\": {:.6f}, \"warm_over_cold\": {:.4f},\n"
        "           \"same_first_token\": {}, \"bitwise_equal_logits\": {}}},\n"
        "  \"branches\": {{\"count\": {}, \"prefix_tokens\": {}, \"tokens_per_branch\": {},\n"
        "               \"pool_bytes_in_use\": {}, \"full_copies_bytes\": {}, \"pool_over_copies\": {:.4f},\n"
        "               \"shared_prefix_bytes\": {}, \"pool_block_bytes\": {}}}\n"
        "}}\n",
        path.filename().string(), threads, runs, block, n_prompt, n_cached, reused, cold, warm, warm / cold,
        cold_token == warm_token, bitwise, n_branches, n_prompt, branch_tokens, pool_bytes, copy_bytes,
        static_cast<double>(pool_bytes) / static_cast<double>(copy_bytes), prefix_bytes, pool.block_bytes());
    return bitwise ? 0 : 3;
} catch (const std::exception& e) {
    std::fprintf(stderr, "bench_prefix: %s\n", e.what());
    return 1;
}
