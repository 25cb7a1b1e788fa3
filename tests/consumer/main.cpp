// Uses the installed package: a compile-time cache, a run-time cache, attention and the version string.
#include <kvcache/kvcache.hpp>

#include <cstdio>
#include <vector>

int main() {
    kvcache::KVCache<2, 3, 64, kvcache::fp16> cache(1, 16);
    const auto k = kvcache::testing::random_normal(4 * 3 * 64, 1);
    const auto v = kvcache::testing::random_normal(4 * 3 * 64, 2);
    for (std::size_t layer = 0; layer < 2; ++layer) cache.append(layer, 0, k, v, 4);
    const auto q = kvcache::testing::random_normal(9 * 64, 3);
    std::vector<float> fast(q.size()), reference(q.size());
    kvcache::attention(cache, 1, 0, q, 1, 9, fast);
    kvcache::attention_reference(cache, 1, 0, q, 1, 9, reference);
    const auto diff = kvcache::testing::compare_tensors(fast, reference);
    std::printf("kvcache %s: %zu positions cached, fast vs reference relative error %.2e\n", kvcache::version(),
                cache.seq_len(), diff.relative_error());
    return diff.within(1e-5) ? 0 : 1;
}
