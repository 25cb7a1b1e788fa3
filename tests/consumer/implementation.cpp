// For consumer_header_only: the one file that compiles the core's sources (kvcache::header_only).
#include <kvcache/implementation.hpp>
