#!/bin/sh
# Runs every test (unit binaries and *.test.sh scripts), each printing TAP-style
# "ok - NAME" / "not ok - NAME" lines, and ends with one "N passed, N failed".
# Usage: tests/run.sh [--asan | --asan-only] [FILTER]
#   --asan       then run it all again with the AddressSanitizer + UBSan
#                builds in build/asan/ (make asan)
#   FILTER       only tests whose path contains FILTER
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
passes=plain
case ${1:-} in
--asan) passes="plain asan"; shift ;;
--asan-only) passes=asan; shift ;;
esac
filter=${1:-}
passed=0 failed=0

run_one() {	# run_one TEST LOG: runs it, prints its lines, adds up the counts
	echo "== $1${ASAN:+ (asan)}"
	case $1 in
	*.sh) bash "$1" > "$2" 2>&1 ;;
	*) "./$1" > "$2" 2>&1 ;;
	esac
	rc=$?
	grep -E '^(not )?ok ' "$2" | sed 's/^/   /'
	p=$(grep -c '^ok ' "$2")
	f=$(grep -c '^not ok ' "$2")
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		echo "   not ok - $1 exited $rc (log: $2)"
		tail -n 20 "$2" | sed 's/^/   | /'
		f=1
	fi
	[ "$f" -gt 0 ] && grep -A50 '^not ok ' "$2" | grep '^#' | sed 's/^/   /' | head -100
	passed=$((passed + p))
	failed=$((failed + f))
}

for pass in $passes; do
	logs=build/test-logs/$pass
	mkdir -p "$logs"
	unit=build/unit_tests
	if [ "$pass" = asan ]; then
		# the sanitizer builds stand in for every program; reports fail the test
		export ASAN=1 TT_CONSOLE=$top/build/asan/tunnel_tui TT_PLATFORM=$top/build/asan/tunnel-platform \
			TT_DEVICE=$top/build/asan/tunnel-device TT_CLIENT=$top/build/asan/tunnel-client \
			TT_HOSTILE=$top/build/asan/hostile-relay TT_SIGN=$top/build/asan/sign \
			TT_VTDIFF=$top/build/asan/vtdiff TT_LINKEM=$top/build/asan/linkem \
			ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1
		unit=build/asan/unit_tests
	fi
	for t in $unit tests/unit/*.test.sh tests/sandbox/*.test.sh tests/e2e/*.test.sh; do
		[ -e "$t" ] || continue
		case $t in *"$filter"*) ;; *) continue ;; esac
		# the fuzzers are sanitized builds already; valgrind does not mix with ASan
		[ "$pass" = asan ] && case $t in *fuzz.test.sh|*valgrind.test.sh) continue ;; esac
		run_one "$t" "$logs/$(basename "$t").log"
	done
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
