# The instruction sets kvcache's kernels are compiled for, as compile options for every user of the core.
#
# The kernels are templates in the headers (attention, detail/simd.hpp), so they are compiled with the flags of
# whoever includes them: a user compiling without -mavx2 would silently get the scalar path. So the core's
# targets carry the flags:
#   - inside this build and for add_subdirectory users: -march=native (when KVCACHE_NATIVE is ON);
#   - for users of the installed package (CMake and pkg-config): the features -march=native enabled here that
#     kvcache's headers test, as -m flags (KVCACHE_ISA_INSTALL_FLAGS). -march=native itself is not exported:
#     the consumer's build machine may be another CPU, while the installed library already needs this one.
# With KVCACHE_NATIVE OFF nothing is added, and detail/simd.hpp says so at compile time on x86-64.
set(KVCACHE_ISA_FLAGS "")
set(KVCACHE_ISA_INSTALL_FLAGS "")

function(_kvcache_detect_native_features out)
  include(CheckCXXSourceCompiles)
  set(CMAKE_REQUIRED_FLAGS -march=native)
  set(CMAKE_REQUIRED_QUIET ON)
  set(_flags "")
  foreach(_feature avx avx2 fma f16c avx512f avx512bw avx512dq avx512vl avx512vnni)
    string(TOUPPER ${_feature} _macro)
    check_cxx_source_compiles("#ifndef __${_macro}__\n#error not enabled\n#endif\nint main() { return 0; }"
                              KVCACHE_NATIVE_HAS_${_macro})
    if(KVCACHE_NATIVE_HAS_${_macro})
      list(APPEND _flags -m${_feature})
    endif()
  endforeach()
  set(${out} ${_flags} PARENT_SCOPE)
endfunction()

if(KVCACHE_NATIVE)
  _kvcache_detect_native_features(KVCACHE_ISA_INSTALL_FLAGS)
  list(APPEND KVCACHE_ISA_FLAGS $<BUILD_INTERFACE:-march=native>)
  foreach(_flag ${KVCACHE_ISA_INSTALL_FLAGS})
    list(APPEND KVCACHE_ISA_FLAGS $<INSTALL_INTERFACE:${_flag}>)
  endforeach()
  message(STATUS "kvcache: kernels for -march=native; installed users get: ${KVCACHE_ISA_INSTALL_FLAGS}")
endif()
