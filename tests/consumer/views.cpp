// The opt-in views through their own targets (kvcache::eigen, kvcache::xtensor): both alias the cache's memory.
#include <kvcache/cache/kv_cache.hpp>
#include <kvcache/cache/views_eigen.hpp>
#include <kvcache/cache/views_xtensor.hpp>

#include <cstdio>
#include <vector>

int main() {
    kvcache::KVCache<1, 2, 4, float> cache(1, 8);
    std::vector<float> k(3 * 2 * 4), v(3 * 2 * 4);
    for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<float>(i), v[i] = -static_cast<float>(i);
    cache.append(0, 0, k, v, 3);
    const auto map = kvcache::eigen_view(cache, 0, 0, 1, kvcache::KV::Keys);       // head 1: [3 x 4]
    const auto view = kvcache::xtensor_view(cache, 0, 0, kvcache::KV::Values);     // {2, 3, 4}
    const bool ok = map.rows() == 3 && map(2, 3) == k[(2 * 2 + 1) * 4 + 3] && view(1, 2, 3) == v[(2 * 2 + 1) * 4 + 3];
    std::printf("views: eigen %ldx%ld, xtensor {%zu, %zu, %zu}: %s\n", static_cast<long>(map.rows()),
                static_cast<long>(map.cols()), view.shape()[0], view.shape()[1], view.shape()[2], ok ? "ok" : "WRONG");
    return ok ? 0 : 1;
}
