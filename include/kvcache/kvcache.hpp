// The umbrella header: every public part of the core library (caches, attention, layouts, test kit
// helpers that need no Catch2). Not the opt-in views: include kvcache/cache/views_eigen.hpp or
// views_xtensor.hpp and link kvcache::eigen or kvcache::xtensor for those.
#pragma once

#include "kvcache/attention/attention.hpp"
#include "kvcache/attention/attention_options.hpp"
#include "kvcache/attention/dense.hpp"
#include "kvcache/attention/reference.hpp"
#include "kvcache/cache/concept.hpp"
#include "kvcache/cache/cross_attention_cache.hpp"
#include "kvcache/cache/kv_cache.hpp"
#include "kvcache/cache/kv_chunk.hpp"
#include "kvcache/cache/layer_shape.hpp"
#include "kvcache/cache/layout.hpp"
#include "kvcache/cache/multi_layer_kv_cache.hpp"
#include "kvcache/cache/paged_kv_cache.hpp"
#include "kvcache/cache/prefix_cache.hpp"
#include "kvcache/cache/sliding_window_cache.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/error.hpp"
#include "kvcache/persist/cache_file.hpp"
#include "kvcache/store/cache_store.hpp"
#include "kvcache/testing/cache_consistency.hpp"
#include "kvcache/testing/compare.hpp"
#include "kvcache/testing/random.hpp"
#include "kvcache/testing/reference_layer.hpp"
#include "kvcache/version.hpp"
