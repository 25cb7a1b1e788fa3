# Install rules: headers, the two libraries and a relocatable CMake package (find_package(kvcache)).
include(CMakePackageConfigHelpers)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/kvcache DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS kvcache kvcache_model EXPORT kvcacheTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
set(KVCACHE_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/kvcache)
install(EXPORT kvcacheTargets NAMESPACE kvcache:: DESTINATION ${KVCACHE_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/kvcacheConfig.cmake.in
  ${PROJECT_BINARY_DIR}/kvcacheConfig.cmake INSTALL_DESTINATION ${KVCACHE_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/kvcacheConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/kvcacheConfig.cmake ${PROJECT_BINARY_DIR}/kvcacheConfigVersion.cmake
  DESTINATION ${KVCACHE_CMAKE_DIR})
