# The version is written once, in project(VERSION): this generates include/kvcache/version.hpp from it into
# the build tree (installed beside the other headers); the package version file and the pkg-config files
# (cmake/KvcacheInstall.cmake) read the same PROJECT_VERSION.
set(KVCACHE_GENERATED_INCLUDE_DIR ${PROJECT_BINARY_DIR}/generated/include)
configure_file(${CMAKE_CURRENT_LIST_DIR}/version.hpp.in ${KVCACHE_GENERATED_INCLUDE_DIR}/kvcache/version.hpp @ONLY)
