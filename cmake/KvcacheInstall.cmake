# Install rules: headers, the libraries, a relocatable CMake package (find_package(kvcache)) and pkg-config
# files (kvcache, kvcache-model, kvcache-kb), all with the version from project(VERSION). All in the install
# component Development (`cmake --install build --component Development`: the library parts only, without the
# programs in apps/).
include(CMakePackageConfigHelpers)
set(KVCACHE_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/kvcache)

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/kvcache DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT Development)
install(FILES ${KVCACHE_GENERATED_INCLUDE_DIR}/kvcache/version.hpp
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kvcache COMPONENT Development)
# For kvcache::header_only: <kvcache/implementation.hpp> compiles the core's sources (and their private headers)
# from include/kvcache/impl/.
file(GLOB _kvcache_core_private_headers ${PROJECT_SOURCE_DIR}/src/core/*.hpp)
install(FILES ${KVCACHE_CORE_SOURCES} ${_kvcache_core_private_headers}
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kvcache/impl COMPONENT Development)
install(FILES ${PROJECT_BINARY_DIR}/install-include/kvcache/implementation.hpp
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kvcache COMPONENT Development)

# Always there: the core, the core without a compiled library, the reference transformer.
install(TARGETS kvcache kvcache_header_only kvcache_model EXPORT kvcacheTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Development
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Development
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT Development)  # include dirs: kvcache_core_interface
install(EXPORT kvcacheTargets NAMESPACE kvcache:: DESTINATION ${KVCACHE_CMAKE_DIR} COMPONENT Development)

# Optional parts, one export file each, so the package config loads a part only when its dependency is found:
# kvcache::eigen (Eigen), kvcache::xtensor (xtensor), kvcache::kb (SQLite).
foreach(_part eigen xtensor kb)
  if(TARGET kvcache_${_part})
    install(TARGETS kvcache_${_part} EXPORT kvcache-${_part}-targets
      ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Development
      LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Development
      RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT Development)
    install(EXPORT kvcache-${_part}-targets NAMESPACE kvcache:: DESTINATION ${KVCACHE_CMAKE_DIR}
      COMPONENT Development)
  endif()
endforeach()

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/kvcacheConfig.cmake.in
  ${PROJECT_BINARY_DIR}/kvcacheConfig.cmake INSTALL_DESTINATION ${KVCACHE_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/kvcacheConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/kvcacheConfig.cmake ${PROJECT_BINARY_DIR}/kvcacheConfigVersion.cmake
  DESTINATION ${KVCACHE_CMAKE_DIR} COMPONENT Development)

# ---- pkg-config: relocatable (paths relative to the .pc file) when the install dirs are relative ----
set(KVCACHE_PKGCONFIG_DIR ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(KVCACHE_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
  file(RELATIVE_PATH _up "/prefix/${KVCACHE_PKGCONFIG_DIR}" "/prefix")  # e.g. ../.. for lib/pkgconfig
  string(REGEX REPLACE "/$" "" _up "${_up}")
  set(KVCACHE_PC_PREFIX "\${pcfiledir}/${_up}")
endif()
foreach(_dir INCLUDEDIR LIBDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${_dir}}")
    set(KVCACHE_PC_${_dir} "${CMAKE_INSTALL_${_dir}}")
  else()
    set(KVCACHE_PC_${_dir} "\${prefix}/${CMAKE_INSTALL_${_dir}}")
  endif()
endforeach()
# The same instruction-set flags the CMake targets carry (cmake/KvcacheIsa.cmake).
string(JOIN " " KVCACHE_PC_ISA_FLAGS ${KVCACHE_ISA_INSTALL_FLAGS})
set(_pc_files kvcache kvcache-model)
if(TARGET kvcache_kb)
  list(APPEND _pc_files kvcache-kb)
endif()
foreach(_pc ${_pc_files})
  configure_file(${PROJECT_SOURCE_DIR}/cmake/${_pc}.pc.in ${PROJECT_BINARY_DIR}/pkgconfig/${_pc}.pc @ONLY)
  install(FILES ${PROJECT_BINARY_DIR}/pkgconfig/${_pc}.pc DESTINATION ${KVCACHE_PKGCONFIG_DIR} COMPONENT Development)
endforeach()
