#!/bin/sh
# Runs every test (unit binaries and *.test.sh scripts), each printing TAP-style
# "ok - NAME" / "not ok - NAME" lines; ends with "N passed, N failed".
# Usage: tests/run.sh [FILTER]   (runs only tests whose path contains FILTER)
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
logs=build/test-logs
mkdir -p "$logs"
passed=0 failed=0
filter=${1:-}
for t in build/unit_tests tests/sandbox/*.test.sh tests/e2e/*.test.sh; do
	[ -e "$t" ] || continue
	case $t in *"$filter"*) ;; *) continue ;; esac
	log=$logs/$(basename "$t").log
	echo "== $t"
	case $t in
	*.sh) bash "$t" > "$log" 2>&1 ;;
	*) "./$t" > "$log" 2>&1 ;;
	esac
	rc=$?
	grep -E '^(not )?ok ' "$log" | sed 's/^/   /'
	p=$(grep -c '^ok ' "$log")
	f=$(grep -c '^not ok ' "$log")
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		echo "   not ok - $t exited $rc (log: $log)"
		tail -n 20 "$log" | sed 's/^/   | /'
		f=1
	fi
	[ "$f" -gt 0 ] && grep -B2 -A8 '^not ok ' "$log" | grep '^#' | sed 's/^/   /' | head -40
	passed=$((passed + p))
	failed=$((failed + f))
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
