# lego_configure_target(TARGET): the flags every target of ours gets (warnings as errors, sanitizers,
# the shared libtorch precompiled header).

set(LEGO_WARNINGS -Wall -Wextra -Werror)

if(LEGO_USE_PCH)
  # One precompiled header for all targets: an object library owns it, the others reuse it.
  add_library(lego_pch OBJECT ${CMAKE_SOURCE_DIR}/cmake/pch.cpp)
  target_link_libraries(lego_pch PUBLIC lego::torch)
  target_compile_options(lego_pch PRIVATE ${LEGO_WARNINGS})
  target_precompile_headers(lego_pch PRIVATE <torch/torch.h>)
endif()

function(lego_configure_target target)
  target_compile_options(${target} PRIVATE ${LEGO_WARNINGS})
  set_target_properties(${target} PROPERTIES DEFINE_SYMBOL "")
  if(LEGO_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=${LEGO_SANITIZE} -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=${LEGO_SANITIZE})
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
