# Sourced by the compression study scripts. `timed NAME COMMAND...` runs COMMAND with its
# output, GNU time's wall time, CPU time and peak RSS, and the load before and after in
# $OUT/NAME.log, then prints the time line.
timed() {
  local name=$1 log="$OUT/$1.log"
  shift
  { echo "# $*"; uptime; } > "$log"
  /usr/bin/time -f "$name: %e s wall, %U s user, %S s sys, %M KB peak RSS" "$@" >> "$log" 2>&1
  uptime >> "$log"
  grep -E "$name: .* wall" "$log"
}
