# lego_add_plugin(NAME SOURCES...): a modality plugin — a MODULE library named libNAME.so that links the
# SDK (Lego::sdk, Lego::sdk_io), builds as C++20 and exports only its descriptor. The one definition, used
# by the in-tree plugins and, installed beside LegoConfig.cmake, by plugins built out of tree.
function(lego_add_plugin name)
  add_library(${name} MODULE ${ARGN})
  target_link_libraries(${name} PRIVATE Lego::sdk Lego::sdk_io)
  set_target_properties(${name} PROPERTIES
    PREFIX "lib"
    CXX_STANDARD 20
    CXX_STANDARD_REQUIRED ON
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
endfunction()
