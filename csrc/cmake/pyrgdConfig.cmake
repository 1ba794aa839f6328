# pyrgdConfig.cmake -- CMake package config of pyrgd's C library (pyrgd/pyrgd.h, libpyrgd), installed with the
# Python package:
#   cmake -Dpyrgd_DIR="$(python -c 'import pyrgd.native as n; print(n.get_cmake_dir())')" ...
#   find_package(pyrgd CONFIG REQUIRED)
#   target_link_libraries(app PRIVATE pyrgd::pyrgd)
# Defines the imported target pyrgd::pyrgd (the shared library, its include folder) and pyrgd_INCLUDE_DIR,
# pyrgd_LIBRARY. Works from the installed package (pyrgd/_csrc/cmake, headers in pyrgd/_csrc/include, library in
# pyrgd/lib) and from a source checkout built in place (csrc/cmake, csrc/include, pyrgd/lib).
get_filename_component(_pyrgd_here "${CMAKE_CURRENT_LIST_DIR}" ABSOLUTE)
get_filename_component(pyrgd_INCLUDE_DIR "${_pyrgd_here}/../include" ABSOLUTE)
find_library(pyrgd_LIBRARY NAMES pyrgd
             PATHS "${_pyrgd_here}/../../lib" "${_pyrgd_here}/../../pyrgd/lib" NO_DEFAULT_PATH)
if(NOT EXISTS "${pyrgd_INCLUDE_DIR}/pyrgd/pyrgd.h" OR NOT pyrgd_LIBRARY)
  set(pyrgd_FOUND FALSE)
  set(pyrgd_NOT_FOUND_MESSAGE "pyrgd: no libpyrgd or pyrgd/pyrgd.h near ${_pyrgd_here}; reinstall pyrgd from source")
  return()
endif()
if(NOT TARGET pyrgd::pyrgd)
  add_library(pyrgd::pyrgd SHARED IMPORTED)
  set_target_properties(pyrgd::pyrgd PROPERTIES
    IMPORTED_LOCATION "${pyrgd_LIBRARY}"
    IMPORTED_NO_SONAME FALSE
    INTERFACE_INCLUDE_DIRECTORIES "${pyrgd_INCLUDE_DIR}")
endif()
set(pyrgd_FOUND TRUE)
unset(_pyrgd_here)
