// The process-wide SIGBUS guard behind detail::MappedFile: a page of a mapped file that was truncated under the
// mapping reads as zeros and marks its mapping as faulted, instead of killing the process.
//
// Why a signal handler: touching a page of a MAP_PRIVATE file mapping that now lies past the file's end raises
// SIGBUS, whose default action ends the process. The handler (installed once, on the first guarded mapping)
// looks the faulting address up in a lock-free registry of live guarded ranges; if it is in one, it maps an
// anonymous zero page over the faulting page (so the faulting load re-executes and reads zeros) and sets the
// range's flag, which MappedFile::check_unchanged() turns into a FormatError at defined points. Any other
// SIGBUS goes to the handler that was installed before ours (or the default action, which ends the process).
// Everything the handler touches is an atomic or a system call, so it is async-signal-safe.
#pragma once

#include <cstddef>

namespace kvcache::detail {

/// One registered range. Ranges are never freed: a released one is reused by the next registration, so the
/// registry holds as many as were ever alive at the same time.
struct GuardedRange;

/// Registers the mapping [begin, begin + length) (installing the handler on first use). Never returns null.
GuardedRange* guard_range(const void* begin, std::size_t length);

/// Whether a page of the range was past the end of its file when touched (it now reads as zeros).
bool range_faulted(const GuardedRange* range) noexcept;

/// Unregisters the range; call before unmapping it.
void release_range(GuardedRange* range) noexcept;

}  // namespace kvcache::detail
