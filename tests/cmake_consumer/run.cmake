# Builds the consumer project twice: against an installed taskq (find_package), linked and run,
# and through add_subdirectory, configured and compiled. Invoked by CTest with
# -DTASKQ_SOURCE_DIR, -DWORK_DIR and, to install the build tree CTest runs in rather than build
# one, -DTASKQ_BUILD_DIR.
cmake_minimum_required(VERSION 3.20)
file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)

function(step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

# 1. Install taskq into a private prefix: the build tree CTest runs in, when given (it is built
#    already), else a library-only build of its own.
if(TASKQ_BUILD_DIR)
  step(${CMAKE_COMMAND} --install ${TASKQ_BUILD_DIR} --prefix ${prefix})
else()
  step(${CMAKE_COMMAND} -S ${TASKQ_SOURCE_DIR} -B ${WORK_DIR}/taskq-build -G Ninja
       -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=${prefix} -DTASKQ_BUILD_TESTS=OFF
       -DTASKQ_BUILD_EXAMPLES=OFF -DTASKQ_BUILD_BENCHMARKS=OFF -DTASKQ_BUILD_TOOL=OFF)
  step(${CMAKE_COMMAND} --build ${WORK_DIR}/taskq-build --parallel 2)
  step(${CMAKE_COMMAND} --install ${WORK_DIR}/taskq-build)
endif()

# 2. find_package consumer.
step(${CMAKE_COMMAND} -S ${CMAKE_CURRENT_LIST_DIR}/project -B ${WORK_DIR}/consumer-installed -G Ninja
     -DCMAKE_PREFIX_PATH=${prefix})
step(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-installed)
step(${WORK_DIR}/consumer-installed/consumer)
if(NOT last_output MATCHES "succeeded \"pong\"")
  message(FATAL_ERROR "installed consumer printed: ${last_output}")
endif()

# 3. add_subdirectory consumer: taskq configures as a subproject, its generated source builds and
#    the consumer compiles against taskq::taskq's usage requirements. It is not linked: that
#    would compile the whole library a second time (four of CI's minutes on 2 cores), and the
#    library's sources and link are the ones the installed package above links and runs.
step(${CMAKE_COMMAND} -S ${CMAKE_CURRENT_LIST_DIR}/project -B ${WORK_DIR}/consumer-subdir -G Ninja
     -DTASKQ_CONSUMER_MODE=subdirectory -DTASKQ_SOURCE_DIR=${TASKQ_SOURCE_DIR})
step(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-subdir --parallel 2
     --target CMakeFiles/consumer.dir/main.cpp.o taskq/src/dashboard_files.cpp)
message(STATUS "consumer builds and runs against the installed package; compiles via add_subdirectory")
