# Install and export: find_package(taskq CONFIG) gives the target taskq::taskq.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(TASKQ_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/taskq)

install(TARGETS taskq EXPORT taskq-targets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/taskq DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT taskq-targets NAMESPACE taskq:: DESTINATION ${TASKQ_CMAKE_DIR})
export(EXPORT taskq-targets NAMESPACE taskq:: FILE ${PROJECT_BINARY_DIR}/taskq-targets.cmake)

configure_package_config_file(cmake/taskq-config.cmake.in
                              ${PROJECT_BINARY_DIR}/taskq-config.cmake
                              INSTALL_DESTINATION ${TASKQ_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/taskq-config-version.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/taskq-config.cmake ${PROJECT_BINARY_DIR}/taskq-config-version.cmake
        DESTINATION ${TASKQ_CMAKE_DIR})
