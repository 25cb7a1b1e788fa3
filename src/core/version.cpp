// The compiled part of the core library: its version string.
#include "kvcache/version.hpp"

namespace kvcache {
const char* version() noexcept { return "0.1.0"; }
}  // namespace kvcache
