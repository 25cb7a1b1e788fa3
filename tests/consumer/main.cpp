// Uses the installed package: a compile-time cache, a run-time cache, attention and the version string, and
// says which kernels it was compiled with (scripts/check-package.sh checks that a consumer that passes no
// instruction-set flags of its own still gets the library's).
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
    const char* kernels = KVCACHE_HAVE_AVX512 ? "avx512" : KVCACHE_HAVE_AVX2 ? "avx2" : "scalar";
    std::printf("kvcache %s: %zu positions cached, fast vs reference relative error %.2e, kernels: %s\n",
                kvcache::version(), cache.seq_len(), diff.relative_error(), kernels);
    return diff.within(1e-5) ? 0 : 1;
}
