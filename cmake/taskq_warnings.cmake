# Warning and sanitizer flags for taskq's own targets (never forced on consumers).
function(taskq_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # GCC 12 reports a false mismatched-new-delete inside Asio's co_spawn (its recycling
    # allocator pairs aligned_new with free by design).
    target_compile_options(${target} PRIVATE -Wno-mismatched-new-delete)
    # GCC 12 reports false -Wrestrict inside std::string concatenation at -O3 (GCC bug 105329,
    # fixed in 13); with -Werror it would break a plain Release build.
    if(CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
      target_compile_options(${target} PRIVATE -Wno-restrict)
    endif()
  endif()
  if(TASKQ_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(TASKQ_SANITIZE AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # Under the sanitizers' instrumentation GCC 12 reports false -Wmaybe-uninitialized (inside
    # Boost.Beast's boost::optional); the plain build keeps the warning.
    target_compile_options(${target} PRIVATE -Wno-maybe-uninitialized)
  endif()
  if(TASKQ_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=${TASKQ_SANITIZE} -fno-omit-frame-pointer
                                             -fno-sanitize-recover=all)
    target_link_options(${target} PRIVATE -fsanitize=${TASKQ_SANITIZE})
  endif()
endfunction()
