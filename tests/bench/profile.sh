#!/bin/bash
# tests/bench/profile.sh [perf|callgrind]: where the console's time goes.
# One device, the console in the bench harness (120x40), then three loads in
# its session: the realistic output file (throughput), a bounded `yes` flood
# (what Ctrl-C has to wait for), and 200 echoed keystrokes (latency).
#   perf       perf record --call-graph dwarf (needs perf; cpu-clock is enough)
#   callgrind  valgrind --tool=callgrind: exact instruction counts, inclusive
# Reports: build/bench/profile-{perf,callgrind}.txt (top functions, self and
# inclusive); the raw data stays beside them.  `make all bench-harness certs` first.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -u
TOOL=${1:-perf}
TOP=$(cd "$(dirname "$0")/../.." && pwd)
cd "$TOP" || exit 1
export LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=xterm-256color
make -s bench-harness || exit 1
source "$TOP/tests/bench/fixture.sh"
OUT=$TOP/build/bench
mkdir -p "$OUT"
rm -f "$OUT"/profile*
BYTES=$((8 << 20)) YES_BYTES=$((4 << 20))
[ "$TOOL" = callgrind ] && BYTES=$((2 << 20)) YES_BYTES=$((256 << 10))

user_up && sandbox_up c1 || exit 1
devices_conf "$WORK/main.conf" c1
"$HARNESS" gen "$WORK/output.txt" "$BYTES" > /dev/null && chmod 644 "$WORK/output.txt"
case $TOOL in
perf)	WRAP=() ;;
callgrind)
	WRAP=(valgrind --tool=callgrind --callgrind-out-file="$OUT/profile.callgrind.%p"
	      --dump-instr=no --instr-atstart=no) ;;
*)	echo "usage: profile.sh [perf|callgrind]"; exit 2 ;;
esac
H_TIMEOUT=1800
h_start con --size 120x40 -- "${WRAP[@]}" "$CONSOLE" -c "$WORK/main.conf"
h con wait 60000 'online' && h con send '\x07n' && h con wait 20000 'password' &&
	h con send "$PASS\r" && h con waitcur 60000 "$PROMPT_RE" || exit 1
PID=$(h_pid con)
: > "$OUT/profile-$TOOL.txt"
begin() {	# begin PHASE: start counting
	if [ "$TOOL" = perf ]; then
		perf record -F 1999 --call-graph dwarf,16384 -p "$PID" -o "$OUT/profile-$1.perf.data" 2>/dev/null &
		PERF_PID=$!
		sleep 0.5
	else
		callgrind_control -i on "$PID" >/dev/null && callgrind_control -z "$PID" >/dev/null
	fi
}
end() {	# end PHASE: stop, report self and inclusive top functions
	{
		echo "######## $1: $2"
		if [ "$TOOL" = perf ]; then
			kill -INT "$PERF_PID"; wait "$PERF_PID"
			echo "# self"
			perf report -i "$OUT/profile-$1.perf.data" --stdio --no-children --sort dso,sym \
				--percent-limit 0.7 -g none 2>/dev/null | grep -E '^ +[0-9]'
			echo "# inclusive"
			perf report -i "$OUT/profile-$1.perf.data" --stdio --children --sort sym \
				--percent-limit 2 -g none 2>/dev/null | grep -E '^ +[0-9]' | grep -v ' 0x0000'
		else
			callgrind_control -i off "$PID" >/dev/null
			callgrind_control -d "$1" "$PID" >/dev/null
			sleep 1
			f=$(ls -t "$OUT"/profile.callgrind.$PID.* 2>/dev/null | head -1)
			echo "# self"
			callgrind_annotate "$f" 2>/dev/null | sed -n '/^Ir/,$p' 2>/dev/null | head -30
			echo "# inclusive"
			callgrind_annotate --inclusive=yes "$f" 2>/dev/null | sed -n '/^Ir/,$p' 2>/dev/null | head -40
		fi
	} >> "$OUT/profile-$TOOL.txt"
}
begin tput
h con tput 1800000 TTBEND7001 "cat $WORK/output.txt; echo TTBEND\$((7000+1))\r" && log "throughput: $REPLY"
end tput "$BYTES bytes of realistic output: $REPLY"
h con waitcur 600000 "$PROMPT_RE" || exit 1
begin yes
h con tput 1800000 TTBEND7002 "yes | head -c $YES_BYTES; echo TTBEND\$((7000+2))\r" && log "yes: $REPLY"
end yes "$YES_BYTES bytes of yes: $REPLY"
h con waitcur 600000 "$PROMPT_RE" || exit 1
h con send '\x07l'
h con drain 500 > /dev/null
begin keys
h con lat 200 30 70 "$WORK/lat.txt" "$PROMPT_RE" && log "latency: $REPLY"
end keys "200 keystrokes echoed: $REPLY"
h con send '\x07qy'
h con drain 3000 >/dev/null
h_stop con
log "report: $OUT/profile-$TOOL.txt"
