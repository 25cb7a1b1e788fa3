// The umbrella header: every public part of the core library (caches, attention, layouts, test kit
// helpers that need no Catch2). The optional views need xtensor / Eigen and are included here too.
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
#include "kvcache/cache/views_eigen.hpp"
#include "kvcache/cache/views_xtensor.hpp"
#include "kvcache/element_types.hpp"
#include "kvcache/error.hpp"
#include "kvcache/testing/cache_consistency.hpp"
#include "kvcache/testing/compare.hpp"
#include "kvcache/testing/random.hpp"
#include "kvcache/testing/reference_layer.hpp"
#include "kvcache/version.hpp"
