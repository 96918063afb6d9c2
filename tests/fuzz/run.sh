#!/bin/sh
# tests/fuzz/run.sh SECONDS [NAME...]: builds every libFuzzer target
# (tests/fuzz/fuzz_*.c; or only fuzz_NAME.c for each NAME given) into
# build/fuzz/, fuzzes each for SECONDS on a copy of its seed corpus
# (build/fuzz/corpus-NAME, kept between runs so fuzzing resumes; the committed
# seeds stay small), then replays every saved crash input in
# tests/fuzz/regressions/NAME-*.bin.
# All targets fuzz at once, so the run takes SECONDS however many there are;
# with more targets than cores they share them (CI: three targets on 2 cores,
# so each gets about 20 s of CPU in its 30 s).
# Prints TAP-style lines; exits non-zero on a build failure, a crash, or a
# regression input that still fails.  `make fuzz` runs 600 s per target, CI
# (tests/e2e/fuzz.test.sh) 30 s.
set -u
secs=${1:-30}
[ $# -gt 0 ] && shift
only=$*		# target names; empty: all
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
out=build/fuzz
pkgs="libwebsockets libcjson ncursesw openssl zlib"
cflags="-std=gnu11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Werror
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
	$(pkg-config --cflags $pkgs)"
libs="$(pkg-config --libs $pkgs) -lm -lutil"
fails=0
targets=
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
export UBSAN_OPTIONS

case $secs in
''|*[!0-9]*|0) echo "usage: $0 SECONDS (a whole number, at least 1)" >&2; exit 2 ;;
esac
mkdir -p "$out"

not_ok() {	# not_ok TEXT LOG: a failure line and the log's most telling lines
	echo "not ok - $1"
	grep -E 'check failed|ERROR: |SUMMARY: |runtime error|error:' "$2" | head -n 8 | sed 's/^/# /'
	fails=$((fails + 1))
}

# Build: one binary per target.
for src in tests/fuzz/fuzz_*.c; do
	name=$(basename "$src" .c)
	name=${name#fuzz_}
	case " ${only:-$name} " in *" $name "*) ;; *) continue ;; esac
	# shellcheck disable=SC2086
	if clang $cflags -o "$out/fuzz_$name" "$src" $libs > "$out/$name.build.log" 2>&1; then
		targets="$targets $name"
	else
		not_ok "fuzz $name: build failed (see $out/$name.build.log)" "$out/$name.build.log"
	fi
done

# Fuzz: every target at once, each on its own copy of the seeds.
for name in $targets; do
	corpus=$out/corpus-$name
	mkdir -p "$corpus"
	cp tests/fuzz/corpus/"$name"/* "$corpus"/
	rm -f "$out/$name"-*	# crash inputs of an earlier run
	dict=
	[ -f "tests/fuzz/$name.dict" ] && dict=-dict=tests/fuzz/$name.dict
	(
		"$out/fuzz_$name" -max_total_time="$secs" -max_len=16384 -timeout=10 \
			-rss_limit_mb=2048 -print_final_stats=1 $dict \
			-artifact_prefix="$out/$name-" "$corpus" > "$out/$name.log" 2>&1
		echo $? > "$out/$name.rc"
	) &
done
wait

for name in $targets; do
	log=$out/$name.log
	runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
	cov=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -n 1 | sed 's/^#[0-9]*[[:space:]]*[A-Z]*[[:space:]]*//')
	if [ "$(cat "$out/$name.rc")" = 0 ] && [ -n "$runs" ]; then
		echo "ok - fuzz $name: $runs runs, no crash"
		echo "# $name: $cov"
	else
		not_ok "fuzz $name: crash (see $log)" "$log"
		ls "$out/$name"-* 2>/dev/null | sed 's/^/# input: /'
	fi
done

# Regressions: every saved crash input must now pass.
for f in tests/fuzz/regressions/*-*.bin; do
	[ -e "$f" ] || continue
	base=$(basename "$f" .bin)
	name=${base%%-*}
	case " ${only:-$name} " in *" $name "*) ;; *) continue ;; esac
	log=$out/regression-$base.log
	if [ -x "$out/fuzz_$name" ] && "$out/fuzz_$name" -timeout=10 -rss_limit_mb=2048 "$f" > "$log" 2>&1; then
		echo "ok - fuzz regression $base"
	else
		not_ok "fuzz regression $base (see $log)" "$log"
	fi
done
exit $((fails > 0))
