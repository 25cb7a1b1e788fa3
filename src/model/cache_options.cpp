// Parsing and checking CacheOptions.
#include "kvcache/model/cache_options.hpp"

namespace kvcache {

CacheElement parse_cache_element(std::string_view name) {
    if (name == "f32" || name == "fp32") return CacheElement::F32;
    if (name == "f16" || name == "fp16") return CacheElement::F16;
    if (name == "bf16") return CacheElement::BF16;
    if (name == "q8_0") return CacheElement::Q8_0;
    if (name == "q4_0") return CacheElement::Q4_0;
    if (name == "q4_0h") return CacheElement::Q4_0H;
    throw ConfigError(fmt::format("unknown cache type '{}' (use f32, f16, bf16, q8_0, q4_0 or q4_0h)", name));
}

std::string_view cache_element_name(CacheElement element) {
    switch (element) {
        case CacheElement::F32: return element_name<float>();
        case CacheElement::F16: return element_name<fp16>();
        case CacheElement::BF16: return element_name<bf16>();
        case CacheElement::Q8_0: return element_name<q8_0>();
        case CacheElement::Q4_0: return element_name<q4_0>();
        case CacheElement::Q4_0H: return element_name<q4_0h>();
    }
    return "?";
}

double cache_element_bytes_per_value(CacheElement element) {
    switch (element) {
        case CacheElement::F32: return 4.0;
        case CacheElement::F16:
        case CacheElement::BF16: return 2.0;
        case CacheElement::Q8_0: return double(sizeof(q8_0)) / double(q8_0::kValues);
        case CacheElement::Q4_0: return double(sizeof(q4_0)) / double(q4_0::kValues);
        case CacheElement::Q4_0H: return double(sizeof(q4_0h)) / double(q4_0h::kValues);
    }
    return 0.0;
}

void validate(const CacheOptions& o, std::size_t capacity) {
    if (o.context_shift && o.window > 0) {
        throw ConfigError("cache: choose a context shift or sinks + window, not both");
    }
    if (o.sinks > 0 && o.window == 0) {
        throw ConfigError(fmt::format("cache: {} sinks need a window (--window W)", o.sinks));
    }
    if (o.window > 0 && (o.evict_block == 0 || o.window < o.evict_block)) {
        throw ConfigError(fmt::format("cache: the window ({}) must hold at least one evict block ({} positions, >= 1)",
                                      o.window, o.evict_block));
    }
    if (o.context_shift) {
        if (o.n_keep >= capacity) {
            throw ConfigError(fmt::format("context shift: n_keep {} must be below the cache capacity {}", o.n_keep,
                                          capacity));
        }
        if (o.n_discard > capacity - o.n_keep) {
            throw ConfigError(fmt::format("context shift: n_discard {} exceeds the {} positions after n_keep {}",
                                          o.n_discard, capacity - o.n_keep, o.n_keep));
        }
    }
}

}  // namespace kvcache
