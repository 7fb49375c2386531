# The command-line tests' counting, sourced by tests/cli/*.sh: `check DESCRIPTION COMMAND...` runs the command and
# counts a pass or prints the failure; `checks_done` prints the counts and is true only when nothing failed.
passes=0
failures=0
check() {
  local what=$1
  shift
  if "$@"; then passes=$((passes + 1)); else echo "FAIL: $what"; failures=$((failures + 1)); fi
}
checks_done() {
  echo "${1:+$1: }$passes passed, $failures failed"
  [ $failures -eq 0 ]
}
