// The one file of the header-only test program that compiles the core's sources (kvcache/implementation.hpp).
#include "kvcache/implementation.hpp"
