# Locates libtorch and exposes it as the target lego::torch.
#
# A CPU build links only c10 and torch_cpu, found next to TorchConfig.cmake, so it needs no CUDA toolkit
# even when the libtorch came from a CUDA pip wheel. LEGO_WITH_CUDA uses Torch's own CMake package.
# Torch is found through Torch_DIR or CMAKE_PREFIX_PATH (scripts/setup.sh points them at the venv).

if(LEGO_WITH_CUDA)
  find_package(Torch REQUIRED)
  add_library(lego_torch INTERFACE)
  target_link_libraries(lego_torch INTERFACE ${TORCH_LIBRARIES})
  target_compile_definitions(lego_torch INTERFACE LEGO_WITH_CUDA=1)
else()
  find_file(LEGO_TORCH_CONFIG TorchConfig.cmake
    HINTS ${Torch_DIR} ENV Torch_DIR
    PATH_SUFFIXES share/cmake/Torch lib/cmake/Torch
    NO_CMAKE_SYSTEM_PATH)
  if(NOT LEGO_TORCH_CONFIG)
    find_file(LEGO_TORCH_CONFIG TorchConfig.cmake PATH_SUFFIXES share/cmake/Torch lib/cmake/Torch)
  endif()
  if(NOT LEGO_TORCH_CONFIG)
    message(FATAL_ERROR "libtorch not found: set Torch_DIR or CMAKE_PREFIX_PATH (scripts/setup.sh does)")
  endif()
  get_filename_component(_torch_cmake_dir "${LEGO_TORCH_CONFIG}" DIRECTORY)
  get_filename_component(LEGO_TORCH_PREFIX "${_torch_cmake_dir}/../../.." ABSOLUTE)
  find_library(LEGO_TORCH_CPU_LIB torch_cpu PATHS "${LEGO_TORCH_PREFIX}/lib" NO_DEFAULT_PATH REQUIRED)
  find_library(LEGO_C10_LIB c10 PATHS "${LEGO_TORCH_PREFIX}/lib" NO_DEFAULT_PATH REQUIRED)
  add_library(lego_torch INTERFACE)
  target_include_directories(lego_torch SYSTEM INTERFACE
    "${LEGO_TORCH_PREFIX}/include" "${LEGO_TORCH_PREFIX}/include/torch/csrc/api/include")
  target_link_libraries(lego_torch INTERFACE "${LEGO_TORCH_CPU_LIB}" "${LEGO_C10_LIB}")
  # The libraries' own RPATH finds their CUDA runtime deps; the linker must be told where too.
  target_link_options(lego_torch INTERFACE "-Wl,-rpath,${LEGO_TORCH_PREFIX}/lib"
    "-Wl,-rpath-link,${LEGO_TORCH_PREFIX}/lib")
  file(GLOB _nv_libdirs LIST_DIRECTORIES true "${LEGO_TORCH_PREFIX}/../nvidia/*/lib")
  foreach(_d IN LISTS _nv_libdirs)
    target_link_options(lego_torch INTERFACE "-Wl,-rpath-link,${_d}")
  endforeach()
  message(STATUS "libtorch (CPU): ${LEGO_TORCH_PREFIX}")
endif()
add_library(lego::torch ALIAS lego_torch)
