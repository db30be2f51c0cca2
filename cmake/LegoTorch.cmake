# Locates libtorch and exposes it as the target lego::torch.
#
# Torch is found through Torch_DIR or CMAKE_PREFIX_PATH (scripts/setup.sh points them at the venv). We link
# its libraries directly rather than through Torch's own CMake package, whose CUDA detection differs between
# releases:
# - a CPU build links only c10 and torch_cpu, so it needs no CUDA toolkit even when the libtorch came from a
#   CUDA pip wheel;
# - LEGO_WITH_CUDA=ON also links torch_cuda and c10_cuda (which register the CUDA backend when loaded) and the
#   toolkit's runtime headers, for CUDA graphs, streams and pinned memory. It needs a CUDA libtorch (the pip
#   wheel is one) and a CUDA toolkit whose major version matches it.

find_file(LEGO_TORCH_CONFIG TorchConfig.cmake
  HINTS ${Torch_DIR} ENV Torch_DIR
  PATH_SUFFIXES share/cmake/Torch lib/cmake/Torch
  NO_CMAKE_SYSTEM_PATH)
if(NOT LEGO_TORCH_CONFIG)
  find_file(LEGO_TORCH_CONFIG TorchConfig.cmake PATH_SUFFIXES share/cmake/Torch lib/cmake/Torch)
endif()
if(NOT LEGO_TORCH_CONFIG AND Python3_EXECUTABLE)
  # pip install . (and any build given only an interpreter): the torch that interpreter imports.
  execute_process(COMMAND ${Python3_EXECUTABLE} -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
                  OUTPUT_VARIABLE _torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(_torch_prefix)
    find_file(LEGO_TORCH_CONFIG TorchConfig.cmake HINTS "${_torch_prefix}" PATH_SUFFIXES Torch NO_DEFAULT_PATH)
  endif()
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

if(LEGO_WITH_CUDA)
  find_library(LEGO_TORCH_CUDA_LIB torch_cuda PATHS "${LEGO_TORCH_PREFIX}/lib" NO_DEFAULT_PATH)
  find_library(LEGO_C10_CUDA_LIB c10_cuda PATHS "${LEGO_TORCH_PREFIX}/lib" NO_DEFAULT_PATH)
  if(NOT LEGO_TORCH_CUDA_LIB OR NOT LEGO_C10_CUDA_LIB)
    message(FATAL_ERROR "LEGO_WITH_CUDA: ${LEGO_TORCH_PREFIX}/lib has no libtorch_cuda/libc10_cuda: "
                        "this libtorch is a CPU build")
  endif()
  find_package(CUDAToolkit REQUIRED)
  # --no-as-needed: nothing of ours may call into torch_cuda directly, yet it must load to register CUDA.
  target_link_libraries(lego_torch INTERFACE "-Wl,--no-as-needed" "${LEGO_TORCH_CUDA_LIB}" "-Wl,--as-needed"
                                             "${LEGO_C10_CUDA_LIB}" CUDA::cudart)
  target_compile_definitions(lego_torch INTERFACE LEGO_WITH_CUDA=1)
  message(STATUS "libtorch (CUDA, toolkit ${CUDAToolkit_VERSION}): ${LEGO_TORCH_PREFIX}")
else()
  message(STATUS "libtorch (CPU): ${LEGO_TORCH_PREFIX}")
endif()
add_library(lego::torch ALIAS lego_torch)
