# kvcache::header_only: the core with no compiled library. Its sources (KVCACHE_CORE_SOURCES, src/core/*.cpp)
# are compiled into the user's program by the one file that includes <kvcache/implementation.hpp>. That header
# is generated from the list of sources, twice: for this build tree (the sources where they are) and for the
# install (the sources installed beside it, in include/kvcache/impl/), so a new source file is never left out.
add_library(kvcache_header_only INTERFACE)
add_library(kvcache::header_only ALIAS kvcache_header_only)
kvcache_core_interface(kvcache_header_only INTERFACE fmt::fmt-header-only)
target_include_directories(kvcache_header_only INTERFACE $<BUILD_INTERFACE:${KVCACHE_XXHASH_INCLUDE_DIR}>)
set_target_properties(kvcache_header_only PROPERTIES EXPORT_NAME header_only)

function(_kvcache_write_implementation_header output prefix)
  set(KVCACHE_IMPLEMENTATION_INCLUDES "")
  foreach(_source ${KVCACHE_CORE_SOURCES})
    get_filename_component(_name ${_source} NAME)
    string(APPEND KVCACHE_IMPLEMENTATION_INCLUDES "#include \"${prefix}${_name}\"\n")
  endforeach()
  configure_file(${PROJECT_SOURCE_DIR}/cmake/implementation.hpp.in ${output} @ONLY)
endfunction()
_kvcache_write_implementation_header(${KVCACHE_GENERATED_INCLUDE_DIR}/kvcache/implementation.hpp
                                     ${PROJECT_SOURCE_DIR}/src/core/)
_kvcache_write_implementation_header(${PROJECT_BINARY_DIR}/install-include/kvcache/implementation.hpp impl/)
