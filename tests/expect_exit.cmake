# Runs a command and passes only when it exits with the expected code AND its output (stdout and
# stderr together) matches a regular expression. ctest alone cannot check both:
# PASS_REGULAR_EXPRESSION ignores the exit code (a crash after the message passes), WILL_FAIL
# accepts any failure (a crash passes).
#   cmake -DEXPECT_EXIT=<code> -DEXPECT_OUTPUT=<regex> -P expect_exit.cmake -- <command> [args...]
# The regex is CMake's (the syntax of PASS_REGULAR_EXPRESSION). Registered by
# shardlm_add_command_test / shardlm_add_mpi_test (tests/CMakeLists.txt).
if(NOT DEFINED EXPECT_EXIT OR NOT DEFINED EXPECT_OUTPUT)
  message(FATAL_ERROR "expect_exit.cmake: set -DEXPECT_EXIT=<code> and -DEXPECT_OUTPUT=<regex>")
endif()
set(command "")
set(after_separator FALSE)
math(EXPR last "${CMAKE_ARGC} - 1")
foreach(i RANGE ${last})
  if(after_separator)
    string(REPLACE ";" "\\;" arg "${CMAKE_ARGV${i}}")  # a ';' inside an argument stays in it
    list(APPEND command "${arg}")
  elseif(CMAKE_ARGV${i} STREQUAL "--")
    set(after_separator TRUE)
  endif()
endforeach()
if(NOT command)
  message(FATAL_ERROR "expect_exit.cmake: no command after '--'")
endif()
execute_process(COMMAND ${command} RESULT_VARIABLE code OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("---- stdout\n${out}---- stderr\n${err}----")
if(NOT "${code}" STREQUAL "${EXPECT_EXIT}")
  message(FATAL_ERROR "exit: '${code}', expected ${EXPECT_EXIT}")
endif()
if(NOT "${out}${err}" MATCHES "${EXPECT_OUTPUT}")
  message(FATAL_ERROR "exit ${code} as expected, but the output does not match '${EXPECT_OUTPUT}'")
endif()
message("exit ${code} and output matching '${EXPECT_OUTPUT}', as expected")
