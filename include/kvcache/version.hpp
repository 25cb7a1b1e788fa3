// The library's version.
#pragma once

namespace kvcache {
/// "major.minor.patch" of the kvcache build in use.
const char* version() noexcept;
}  // namespace kvcache
