# Finds dslens's dependencies and gathers them into one INTERFACE target, dslens_deps.
# Two sources: the system (Debian packages, installed by scripts/setup.sh), or the folder
# DSLENS_BUNDLE_DIR made by scripts/bundle_deps.sh (headers of cxxopts, spdlog, fmt, nlohmann_json,
# the GoogleTest sources, and CFITSIO's header and shared libraries) for machines without apt.
# LibTorch always comes from find_package(Torch): Debian's 1.13 (CPU) or a CUDA 2.x given through
# CMAKE_PREFIX_PATH.

find_package(Torch REQUIRED)
find_package(Threads REQUIRED)
# LibTorch's headers need C++20 from 2.12 on (ATen's #error); 1.13 to 2.11 build as C++17.
if(DEFINED Torch_VERSION AND Torch_VERSION VERSION_GREATER_EQUAL 2.12)
  set(CMAKE_CXX_STANDARD 20)
endif()
message(STATUS "dslens: LibTorch ${Torch_VERSION}, C++${CMAKE_CXX_STANDARD}")

add_library(dslens_deps INTERFACE)
target_link_libraries(dslens_deps INTERFACE ${TORCH_LIBRARIES} Threads::Threads)
# TORCH_CXX_FLAGS carries the C++ ABI flag LibTorch was built with.
separate_arguments(_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
target_compile_options(dslens_deps INTERFACE ${_torch_flags})

set(DSLENS_USE_BUNDLE OFF)
if(EXISTS "${DSLENS_BUNDLE_DIR}/include/cxxopts.hpp")
  set(DSLENS_USE_BUNDLE ON)
endif()

if(DSLENS_USE_BUNDLE)
  message(STATUS "dslens: using bundled dependencies from ${DSLENS_BUNDLE_DIR}")
  target_include_directories(dslens_deps SYSTEM INTERFACE "${DSLENS_BUNDLE_DIR}/include")
  # spdlog and fmt header-only, so no compiled library of either is needed.
  target_compile_definitions(dslens_deps INTERFACE SPDLOG_HEADER_ONLY SPDLOG_FMT_EXTERNAL
                                                   FMT_HEADER_ONLY)
  find_library(CFITSIO_LIBRARY NAMES cfitsio PATHS "${DSLENS_BUNDLE_DIR}/lib" NO_DEFAULT_PATH)
  if(NOT CFITSIO_LIBRARY)
    message(FATAL_ERROR "bundle at ${DSLENS_BUNDLE_DIR} has no lib/libcfitsio; rerun scripts/bundle_deps.sh")
  endif()
  target_link_libraries(dslens_deps INTERFACE "${CFITSIO_LIBRARY}")
  set(CMAKE_BUILD_RPATH "${DSLENS_BUNDLE_DIR}/lib")
  # PNG files are encoded by core/src/png.cpp on top of zlib, so libpng is not needed.


  find_library(ZLIB_BUNDLED NAMES z PATHS "${DSLENS_BUNDLE_DIR}/lib" NO_DEFAULT_PATH)
  if(ZLIB_BUNDLED)
    target_link_libraries(dslens_deps INTERFACE "${ZLIB_BUNDLED}")
  else()
    find_package(ZLIB REQUIRED)
    target_link_libraries(dslens_deps INTERFACE ZLIB::ZLIB)
  endif()
  if(DSLENS_BUILD_TESTS)
    set(INSTALL_GTEST OFF CACHE BOOL "" FORCE)
    add_subdirectory("${DSLENS_BUNDLE_DIR}/googletest" "${CMAKE_BINARY_DIR}/googletest" EXCLUDE_FROM_ALL)
    if(NOT TARGET GTest::gtest_main)  # GoogleTest >= 1.11 defines the alias itself
      add_library(GTest::gtest_main ALIAS gtest_main)
    endif()
  endif()
else()
  find_package(cxxopts REQUIRED)
  find_package(fmt REQUIRED)
  find_package(spdlog REQUIRED)
  find_package(nlohmann_json REQUIRED)
  find_package(ZLIB REQUIRED)
  find_package(PkgConfig REQUIRED)
  pkg_check_modules(CFITSIO REQUIRED IMPORTED_TARGET cfitsio)
  target_link_libraries(dslens_deps INTERFACE cxxopts::cxxopts spdlog::spdlog fmt::fmt
                                              nlohmann_json::nlohmann_json PkgConfig::CFITSIO ZLIB::ZLIB)
  if(DSLENS_BUILD_TESTS)
    find_package(GTest REQUIRED)
  endif()
endif()
