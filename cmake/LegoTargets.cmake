# lego_configure_target(TARGET): the flags every target of ours gets (warnings as errors, sanitizers,
# the shared libtorch precompiled header).

set(LEGO_WARNINGS -Wall -Wextra)
# Warnings stop our own builds; a foreign compiler's new warnings need not stop scripts/gpu-check.sh.
option(LEGO_WERROR "Treat warnings as errors" ON)
if(LEGO_WERROR)
  list(APPEND LEGO_WARNINGS -Werror)
endif()

# LEGO_SANITIZE=address,undefined: instrument our code (libtorch, FFmpeg and OpenCV stay uninstrumented).
# Undefined behaviour aborts at the first report so ctest sees it as a failure.
set(LEGO_SANITIZE_FLAGS "")
if(LEGO_SANITIZE)
  set(LEGO_SANITIZE_FLAGS -fsanitize=${LEGO_SANITIZE} -fno-omit-frame-pointer)
  if(LEGO_SANITIZE MATCHES "undefined")
    list(APPEND LEGO_SANITIZE_FLAGS -fno-sanitize-recover=undefined)
  endif()
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # GCC's own advice: sanitizers make -Wmaybe-uninitialized report false positives (GCC 12 does so in
    # libstdc++'s <regex> under -O1 -fsanitize=address,undefined), and -Werror would stop the build.
    list(APPEND LEGO_SANITIZE_FLAGS -Wno-maybe-uninitialized)
  endif()
endif()
# LEGO_FUZZ: libFuzzer's coverage instrumentation in every library of ours; the fuzz targets link the
# fuzzer's main (tests/fuzz).
if(LEGO_FUZZ)
  list(APPEND LEGO_SANITIZE_FLAGS -fsanitize=fuzzer-no-link)
endif()

if(LEGO_USE_PCH)
  # One precompiled header for all targets: an object library owns it, the others reuse it.
  add_library(lego_pch OBJECT ${CMAKE_SOURCE_DIR}/cmake/pch.cpp)
  target_link_libraries(lego_pch PUBLIC lego::torch)
  # The PCH is only reused by targets compiled with the same flags, sanitizers included.
  target_compile_options(lego_pch PRIVATE ${LEGO_WARNINGS} ${LEGO_SANITIZE_FLAGS})
  target_precompile_headers(lego_pch PRIVATE <torch/torch.h>)
endif()

function(lego_configure_target target)
  target_compile_options(${target} PRIVATE ${LEGO_WARNINGS})
  set_target_properties(${target} PROPERTIES DEFINE_SYMBOL "")
  if(LEGO_SANITIZE)
    target_compile_options(${target} PRIVATE ${LEGO_SANITIZE_FLAGS})
    target_link_options(${target} PRIVATE -fsanitize=${LEGO_SANITIZE})
  endif()
  if(LEGO_FUZZ)
    target_link_options(${target} PRIVATE -fsanitize=fuzzer-no-link)
  endif()
  if(LEGO_USE_PCH)
    get_target_property(_type ${target} TYPE)
    if(_type STREQUAL "EXECUTABLE")
      # The shared PCH is built -fPIC; an executable's -fPIE would make GCC refuse it.
      target_compile_options(${target} PRIVATE -fPIC)
    endif()
    target_precompile_headers(${target} REUSE_FROM lego_pch)
  endif()
endfunction()
