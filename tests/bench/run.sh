#!/bin/bash
# tests/bench/run.sh: `make bench` (issue 6).  Measures the console against
# its baselines side by side in one run, prints a table and, as the very last
# line, one JSON object with the headline figures.  Nothing here is a test
# assertion: a missed goal is reported, not failed.
#
#   BENCH_QUICK=1        a short run for development (smaller, fewer, shorter)
#   BENCH_ONLY="paths startup scale links xfer"   the phases to run (default:
#                        all five; paths = figures 1-3, startup = 6, scale = 4 and 5,
#                        links = 7-9 and 3b: cellular-grade links and a deep
#                        queue through linkem; deep = 3b alone; xfer = 11,
#                        files through the tunnel)
#   BENCH_SOAK=MINUTES   also the soak, figure 10 (BENCH_ONLY=soak: 30 minutes)
#   BENCH_SHORT_HOLE=MS, BENCH_LONG_HOLE=MS   figure 9's blackholes (6000, 15000)
#   BENCH_PERF=1         also perf-record the console during throughput and
#                        the Ctrl-C flood (reports in build/bench/)
#   KEEP_WORK=1          keep the scratch folder (logs, screens) for a look
#
# Results (table, JSON, latency samples) go to build/bench/.  How each figure
# is taken: README.md, "Performance".  tests/bench/profile.sh profiles.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -u
[ "$(id -u)" = 0 ] || { echo "make bench needs root: it adds a throwaway user and runs a private sshd" >&2; exit 1; }
TOP=$(cd "$(dirname "$0")/../.." && pwd)
cd "$TOP" || exit 1
export LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=xterm-256color
unset TMUX TUNNEL_TUI_TOKEN
make -s bench-harness || exit 1
source "$TOP/tests/bench/fixture.sh"
source "$TOP/tests/bench/links.sh"
OUT=$TOP/build/bench
mkdir -p "$OUT"
rm -f "$OUT"/latency-*.txt "$OUT"/table.txt "$OUT"/bench.json "$OUT"/perf-* "$OUT"/typing-*.txt "$OUT"/trace-*.txt "$OUT"/soak-*.txt

if [ "${BENCH_QUICK:-0}" != 0 ]; then
	QUICK=1 TPUT_BYTES=$((4 << 20)) TPUT_ROUNDS=1 LAT_KEYS=40 CTRLC_REPS=2
	NDEV=10 IDLE_S=10 STARTUP_REPS=3 XFER_BYTES=$((4 << 20)) XFER_ROUNDS=1
else
	QUICK=0 TPUT_BYTES=$((20 << 20)) TPUT_ROUNDS=3 LAT_KEYS=400 CTRLC_REPS=5
	NDEV=50 IDLE_S=60 STARTUP_REPS=5 XFER_BYTES=$((16 << 20)) XFER_ROUNDS=3
fi
LINK_BUFFER=65536	# linkem's queue each way (bytes): 0.5 s at 1 Mbit/s
SHORT_HOLE=${BENCH_SHORT_HOLE:-6000} LONG_HOLE=${BENCH_LONG_HOLE:-15000}	# figure 9's blackholes, ms
CTRLC_SLOW_REPS=3		# figure 8's rounds
[ "$QUICK" = 1 ] && HOLE_REPS=1 || HOLE_REPS=3	# figure 9's rounds (a short and a long blackhole each)
[ "$QUICK" = 1 ] && TYPE_LINES=4 || TYPE_LINES=12	# figure 7: command lines per device
ONLY=" ${BENCH_ONLY:-paths startup scale links xfer} "
# the soak (figure 10) only when asked for: BENCH_SOAK=MINUTES, or soak in BENCH_ONLY (30 minutes)
[[ ${BENCH_SOAK:-0} =~ ^[1-9][0-9]*$ ]] && SOAK_MIN=$BENCH_SOAK || SOAK_MIN=30
[ -n "${BENCH_SOAK:-}" ] && [ "${BENCH_SOAK}" != 0 ] && ONLY+="soak "
NSTREAM=20		# background sessions streaming during the loaded latency run
STREAM_MS=10		# each prints a ~110-byte coloured log line every 10 ms
GAP="30 70"		# think time between keystrokes, ms (uniform)
CON_SIZE=120x40		# the console's terminal; its pane (the remote pty) is 93x39
PANE_SIZE=93x39		# the baselines' terminal = that pane
declare -A R		# results; a missing one prints as "-" and null

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
pct() { sort -n | awk -v q="$1" '{ v[NR] = $1 } END { k = int(q * NR); if (k < q * NR) k++; if (k < 1) k = 1; if (NR) print v[k] }'; }	# nearest rank
calc() { awk "BEGIN { printf \"%.${2:-2}f\\n\", $1 }"; }
phase() { log "== $* ($(date +%T))"; }
r() { echo "${R[$1]:--}"; }	# a result or "-"
has() { local k; for k; do [ -n "${R[$k]:-}" ] || return 1; done; }

# --- the machine and the fixture ---------------------------------------------
MACHINE="$(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), \
$(awk '/MemTotal/ { printf "%.0f GB RAM", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
phase "machine: $MACHINE; load $LOAD0"
phase setup
user_up || exit 1
SCALE=()
for i in $(seq 1 "$NDEV"); do SCALE+=("$(printf 's%02d' "$i")"); done
BB=$WORK/bin/bb	# a busybox-only device's applets: no base64, od, xxd or stty
mkdir -p "$BB"
for a in sh ash sha256sum md5sum dd head gzip hexdump awk printf cat ls rm mv mkdir echo tr wc; do
	ln -s "$(command -v busybox)" "$BB/$a"
done
AGENT_ARGS[xb]="--shell $BB/sh --path $BB"
sandbox_up c1 m1 l1 l2 x1 xb "${SCALE[@]}" || exit 1
sshd_up || exit 1
devices_conf "$WORK/main.conf" c1
devices_conf "$WORK/xfer.conf" x1 xb
devices_conf "$WORK/one.conf" s01
devices_conf "$WORK/scale.conf" "${SCALE[@]}"
DATA=$WORK/output.txt
"$HARNESS" gen "$DATA" "$TPUT_BYTES" > /dev/null || exit 1
chmod 644 "$DATA"
RID=b3e1c0de-0000-4000-8000-00000000be01

fixture_quiet() {	# the relay and the agents have nothing left to do (before a phase)
	local t0=$(now_ms)
	quiet "$RELAY_PID" 30
	quiet "${AGENT_PID[c1]}" 30
	quiet "${AGENT_PID[m1]}" 30
	log "   (fixture quiet after $(( $(now_ms) - t0 )) ms; load $(cut -d' ' -f1 /proc/loadavg))"
}

perf_start() {	# perf_start NAME: samples the console until perf_stop
	[ "${BENCH_PERF:-0}" != 0 ] || return 0
	perf record -F 999 --call-graph dwarf,16384 -p "$CON_PID" -o "$OUT/perf-$1.data" 2> /dev/null &
	PERF_PID=$!
	sleep 0.5
}
perf_stop() {
	[ "${BENCH_PERF:-0}" != 0 ] || return 0
	kill -INT "$PERF_PID"; wait "$PERF_PID"
	perf report -i "$OUT/perf-$1.data" --stdio --children --sort sym --percent-limit 2 -g none \
		2> /dev/null | grep -E '^ +[0-9]' | grep -v ' 0x0000' > "$OUT/perf-$1.txt"
}

# --- figures 1-3: the console, the minimal client, tmux + ssh ---------------
paths_phase() {
	local p r ms c0 c1
	phase "console, minimal client, tmux + ssh: log in"
	h_start con --size $CON_SIZE -- "$CONSOLE" -c "$WORK/main.conf" --log "$WORK/log/console.log"
	h_start min --size $PANE_SIZE --client $RID "$WORK/min.fifo" field "$WORK/pass" -- \
		"$CLIENT" --url "$BASE/t-m1/source-connect" --token-file "$WORK/app/m1.app" \
		--cacert "$CERTS/ca.pem" --discard --save $RID "$WORK/min.fifo"
	tmux_server "$WORK/tmux.sock" "${PANE_SIZE%x*}" "${PANE_SIZE#*x}" "$SSH_CMD"
	h_start tmx --size $PANE_SIZE -- tmux -S "$WORK/tmux.sock" attach
	h con wait 15000 'online' && h con send '\x07n' && h con wait 5000 'password' &&
		h con send "$PASS\r" || return 1
	for p in con min tmx; do h $p waitcur 30000 "$PROMPT_RE" || return 1; done
	CON_PID=$(h_pid con)
	R[rss_con_login]=$(rss_kb "$CON_PID")
	declare -gA PIDS_OF=([con]=$CON_PID [min]=$(h_pid min)
		[tmx]="$(h_pid tmx) $(tmux -S "$WORK/tmux.sock" display -p '#{pid}')")

	# 1. throughput: cat a file of realistic output; the clock stops when the
	# marker echoed after it is on the screen (the console, tmux) or has
	# arrived (the minimal client).  The typed line never contains the marker.
	phase "1. throughput: $TPUT_BYTES bytes x $TPUT_ROUNDS rounds"
	for r in $(seq 1 "$TPUT_ROUNDS"); do
		for p in con min tmx; do
			[ "$p$r" = con1 ] && perf_start tput
			c0=$(cpu_ns ${PIDS_OF[$p]})
			h $p tput 600000 "TTBEND$((7000 + r))" "cat $DATA; echo TTBEND\$((7000+$r))\r" || return 1
			c1=$(cpu_ns ${PIDS_OF[$p]})
			ms=$(echo "${REPLY#ok }" | cut -d' ' -f1)
			echo "$ms" >> "$WORK/tput-$p.txt"
			calc "($c1 - $c0) / 1e6 / $ms * 100" 0 >> "$WORK/tputcpu-$p.txt"
			[ "$p$r" = con1 ] && perf_stop tput
			h $p waitcur 60000 "$PROMPT_RE" && h $p drain 300 >/dev/null || return 1
		done
	done
	R[rss_con_sb]=$(calc "($(rss_kb "$CON_PID") - ${R[rss_con_login]}) / 1024" 1)
	for p in con min tmx; do
		R[tput_ms_$p]=$(median < "$WORK/tput-$p.txt")
		R[tput_$p]=$(calc "$TPUT_BYTES / 1e6 / (${R[tput_ms_$p]} / 1000)")
		R[tputcpu_$p]=$(median < "$WORK/tputcpu-$p.txt")
		log "   $p: $(tr '\n' ' ' < "$WORK/tput-$p.txt")ms -> ${R[tput_$p]} MB/s;" \
			"CPU $(tr '\n' ' ' < "$WORK/tputcpu-$p.txt")% of a core"
	done

	# the terminal layer alone, no I/O: the console's own (libvterm's state
	# and the console's grid) vs libvterm's screen layer (input as a pty gives it)
	sed 's/$/\r/' "$DATA" > "$WORK/output.crlf"
	yes 2>/dev/null | head -c $((1 << 20)) | sed 's/$/\r/' > "$WORK/yes.crlf"
	read -r R[vt_console] R[vt_screen] R[vt_console_kb] R[vt_screen_kb] R[vt_parser] R[sb_colour_kb] < <("$VTBENCH" "$WORK/output.crlf" 93 39)
	read -r R[vt_console_yes] R[vt_screen_yes] _ _ R[vt_parser_yes] _ < <("$VTBENCH" "$WORK/yes.crlf" 93 39)
	log "   terminal layer alone: console $(r vt_console) MB/s, libvterm screen $(r vt_screen) MB/s;" \
		"yes: $(r vt_console_yes) / $(r vt_screen_yes) MB/s"

	# 2. keystroke to echo at a shell prompt, in rounds of 20 keys that take
	# turns, so that whatever else the machine does hits all three alike
	phase "2. latency: $LAT_KEYS keys each"
	local -A keycpu=([con]=0 [min]=0 [tmx]=0)
	for r in $(seq 1 $((LAT_KEYS / 20))); do
		for p in con min tmx; do
			c0=$(cpu_ns ${PIDS_OF[$p]})
			h $p lat 20 $GAP "$OUT/latency-$p.txt" "$PROMPT_RE" || return 1
			c1=$(cpu_ns ${PIDS_OF[$p]})
			keycpu[$p]=$(( ${keycpu[$p]} + c1 - c0 ))
		done
	done
	for p in con min tmx; do
		R[keycpu_$p]=$(calc "${keycpu[$p]} / 1e6 / $(wc -l < "$OUT/latency-$p.txt")" 3)
		R[p50_$p]=$(pct 0.5 < "$OUT/latency-$p.txt")
		R[p99_$p]=$(pct 0.99 < "$OUT/latency-$p.txt")
		log "   $p: p50 $(r p50_$p) p90 $(pct 0.9 < "$OUT/latency-$p.txt") p99 $(r p99_$p)" \
			"max $(pct 1 < "$OUT/latency-$p.txt") ms over $(wc -l < "$OUT/latency-$p.txt") keys"
	done

	# 3. Ctrl-C under a `yes` flood, until the prompt is back
	phase "3. Ctrl-C under flood: $CTRLC_REPS rounds"
	for r in $(seq 1 "$CTRLC_REPS"); do
		for p in con min tmx; do
			h $p send 'yes\r' && h $p drain 1500 >/dev/null || return 1
			[ $p = con ] && ss -Htn "( sport = :$PORT or dport = :$PORT )" |
				awk '{ s += $2 + $3 } END { print s }' >> "$WORK/inflight.txt"
			[ "$p$r" = con1 ] && perf_start flood
			h $p ctrlc 120000 "$PROMPT_RE" || return 1
			echo "${REPLY#ok }" >> "$WORK/ctrlc-$p.txt"
			[ "$p$r" = con1 ] && perf_stop flood
			h $p drain 500 >/dev/null
		done
	done
	for p in con min tmx; do
		R[ctrlc_$p]=$(median < "$WORK/ctrlc-$p.txt")
		R[ctrlc_max_$p]=$(sort -n "$WORK/ctrlc-$p.txt" | tail -1)
		log "   $p: $(tr '\n' ' ' < "$WORK/ctrlc-$p.txt")ms"
	done
	R[inflight_mb]=$(calc "$(median < "$WORK/inflight.txt") / 1e6" 1)
	log "   in flight between the shell and the console at Ctrl-C: $(r inflight_mb) MB" \
		"(socket queues at the relay's port; the agent's and relay's own queues add up to 0.5 MB)"
	for p in con min tmx; do h_stop $p; done
	tmux -S "$WORK/tmux.sock" kill-server 2>/dev/null
}

# --- figure 6: start-up to the first frame --------------------------------------
# The status bar's help hint is drawn in the first frame; tmux's first frame
# is its pane showing what the command printed first.
startup_phase() {
	local r c conf sock
	phase "6. start-up: $STARTUP_REPS runs each"
	fixture_quiet
	for r in $(seq 1 "$STARTUP_REPS"); do
		for conf in scale one; do
			h_start st --size $CON_SIZE -- "$CONSOLE" -c "$WORK/$conf.conf"
			h st wait 10000 '\? help$' && echo "${REPLY##* }" >> "$WORK/startup-$conf.txt"
			h st drain 200 >/dev/null
			h_stop st
		done
		sock=$WORK/tmux-st$r.sock
		TMUX_SOCKS+=("$sock")
		h_start st --size $CON_SIZE -- tmux -S "$sock" -f "$WORK/tmux.conf" new-session 'echo TTBREADY; exec cat'
		h st wait 10000 'TTBREADY' && echo "${REPLY##* }" >> "$WORK/startup-tmux.txt"
		h_stop st
		tmux -S "$sock" kill-server 2>/dev/null
	done
	for c in scale one tmux; do
		[ -s "$WORK/startup-$c.txt" ] || continue
		R[startup_$c]=$(median < "$WORK/startup-$c.txt")
		log "   $c: $(tr '\n' ' ' < "$WORK/startup-$c.txt")ms"
	done
}

# --- figures 4 and 5: one console with NDEV devices ---------------------------
# open_sessions N: N more sessions on every device, through the login dialog;
# the status bar names the selected device (and says whether it is online).
open_sessions() {
	local d k keys want=$2
	h sc send '\x071' || return 1
	for d in "${SCALE[@]}"; do
		h sc wait 30000 "^ $d │$want" || return 1
		keys=""
		for k in $(seq 1 "$1"); do keys+="\\x07n$PASS\\r"; done
		h sc send "$keys\\x07\\t" || return 1
		want=""
	done
}
sessions_ready() { [ "$(shells_of "${SCALE[@]}")" -ge "$1" ]; }

scale_phase() {
	local i d k w left c0 c1 x0 x1 tc0 tc1 tx0 tx1 t0 t1 NS=$((NDEV * 4))
	local IDLE_SOCK=$WORK/tmux-idle.sock TMUX_SERVER_PID TI_PID
	phase "4./5. scale: $NDEV devices"
	fixture_quiet
	h_start sc --size $CON_SIZE -- "$CONSOLE" -c "$WORK/scale.conf" --log "$WORK/log/scale.log"
	SC_PID=$(h_pid sc)
	h sc wait 30000 "${SCALE[0]} .*device online" || return 1
	wait_for 60 bash -c "[ \$(ss -Htn state established '( dport = :$PORT )' | wc -l) -ge $((NDEV + NDEV + 2)) ]"
	quiet "$SC_PID"
	R[rss0]=$(rss_kb "$SC_PID")
	open_sessions 2 '.*(device online|rtt)' || return 1
	wait_for 120 sessions_ready $((NDEV * 2)) || log "   only $(shells_of "${SCALE[@]}") shells"
	quiet "$SC_PID"

	# the idle baseline: a tmux server with as many windows of an idle shell
	tmux_server "$IDLE_SOCK" 120 40 'bash --noprofile --norc'
	for i in $(seq 2 $((NDEV * 2))); do tmux -S "$IDLE_SOCK" new-window -d 'bash --noprofile --norc'; done
	h_start ti --size $CON_SIZE -- tmux -S "$IDLE_SOCK" attach
	h ti drain 1000 >/dev/null
	TMUX_SERVER_PID=$(tmux -S "$IDLE_SOCK" display -p '#{pid}')
	TI_PID=$(h_pid ti)
	quiet "$TMUX_SERVER_PID" 10

	phase "4. idle: $NDEV tunnels, $((NDEV * 2)) sessions, ${IDLE_S} s"
	c0=$(cpu_ns "$SC_PID"); x0=$(ctx "$SC_PID")
	tc0=$(cpu_ns "$TMUX_SERVER_PID" "$TI_PID"); tx0=$(ctx "$TMUX_SERVER_PID" "$TI_PID")
	t0=$(now_ms)
	sleep "$IDLE_S"
	c1=$(cpu_ns "$SC_PID"); x1=$(ctx "$SC_PID")
	tc1=$(cpu_ns "$TMUX_SERVER_PID" "$TI_PID"); tx1=$(ctx "$TMUX_SERVER_PID" "$TI_PID")
	t1=$(now_ms)
	R[idle_cpu]=$(calc "($c1 - $c0) / 1e6 / ($t1 - $t0) * 100" 3)
	R[idle_wake]=$(calc "($x1 - $x0) / (($t1 - $t0) / 1000)" 1)
	R[idle_cpu_tmux]=$(calc "($tc1 - $tc0) / 1e6 / ($t1 - $t0) * 100" 3)
	R[idle_wake_tmux]=$(calc "($tx1 - $tx0) / (($t1 - $t0) / 1000)" 1)
	log "   console $(r idle_cpu) % $(r idle_wake)/s; tmux $(r idle_cpu_tmux) % $(r idle_wake_tmux)/s"
	R[tmux_rss100]=$(rss_kb "$TMUX_SERVER_PID")

	phase "5. scale: $NS sessions, 5000 lines of scrollback each"
	open_sessions 2 '' || return 1
	for i in $(seq $((NDEV * 2 + 1)) "$NS"); do tmux -S "$IDLE_SOCK" new-window -d 'bash --noprofile --norc'; done
	wait_for 120 sessions_ready "$NS" || log "   only $(shells_of "${SCALE[@]}") shells"
	quiet "$SC_PID"
	R[rssA]=$(rss_kb "$SC_PID")
	R[tmux_rssA]=$(rss_kb "$TMUX_SERVER_PID")
	# every session: seq 5000 (the list's rows: a device, then its four sessions)
	h sc send '\x071' || return 1
	for d in "${SCALE[@]}"; do
		h sc send 'seq 5000\r\x07jseq 5000\r\x07jseq 5000\r\x07jseq 5000\r\x07j\x07j' || return 1
	done
	for w in $(tmux -S "$IDLE_SOCK" list-windows -F '#{window_index}'); do
		tmux -S "$IDLE_SOCK" send-keys -t ":$w" 'seq 5000' Enter
	done
	h sc send '\x071' && h sc wait 120000 '│5000$' || return 1
	quiet "$SC_PID" 300
	quiet "$TMUX_SERVER_PID" 60
	R[rssB]=$(rss_kb "$SC_PID")
	R[tmux_rssB]=$(rss_kb "$TMUX_SERVER_PID")
	R[rss_mb]=$(calc "${R[rssB]} / 1024" 1)
	R[kb_sess]=$(calc "(${R[rssA]} - ${R[rss0]}) / $NS" 1)
	R[kb_sess_sb]=$(calc "(${R[rssB]} - ${R[rssA]}) / $NS" 1)
	R[kb_sess_raw]=$(calc "(${R[rssB]} - ${R[rss0]}) / $NS" 1)
	R[tmux_rss_mb]=$(calc "${R[tmux_rssB]} / 1024" 1)
	R[tmux_kb_win]=$(calc "(${R[tmux_rssA]} - ${R[tmux_rss100]}) / ($NS - $NDEV * 2)" 1)
	R[tmux_kb_win_sb]=$(calc "(${R[tmux_rssB]} - ${R[tmux_rssA]}) / $NS" 1)
	log "   console RSS $(r rss0) kB (0 sessions) $(r rssA) kB (open) $(r rssB) kB (filled);" \
		"tmux $(r tmux_rss100) / $(r tmux_rssA) / $(r tmux_rssB) kB"
	h_stop ti
	tmux -S "$IDLE_SOCK" kill-server 2>/dev/null

	# keystroke latency in a quiet session while NSTREAM others stream
	h sc send '\x072' || return 1
	left=$NSTREAM
	for d in "${SCALE[@]:1}"; do
		for k in 1 2 3 4; do
			[ $left -gt 0 ] || break 2
			h sc send "$WORK/bin/ptyharness stream $STREAM_MS\\r\\x07j" || return 1
			left=$((left - 1))
		done
		h sc send '\x07j' || return 1
	done
	h sc send '\x071' && h sc drain 2000 >/dev/null || return 1
	h sc send '\x07l' && h sc waitcur 10000 "$PROMPT_RE" || return 1
	phase "5. latency while $NSTREAM sessions stream"
	h sc lat "$LAT_KEYS" $GAP "$OUT/latency-loaded.txt" "$PROMPT_RE" || return 1
	R[p50_loaded]=$(pct 0.5 < "$OUT/latency-loaded.txt")
	R[p99_loaded]=$(pct 0.99 < "$OUT/latency-loaded.txt")
	log "   p50 $(r p50_loaded) p99 $(r p99_loaded) max $(pct 1 < "$OUT/latency-loaded.txt") ms"
	h_stop sc
}

# --- figure 11: files through the tunnel -------------------------------------------
# Goodput is MB of file data a second: --get and --put of XFER_BYTES random
# bytes on a GNU device (bash) and a busybox-only one, each less the time a
# login takes (--exec true, the same run).  Beside it, the raw output
# throughput of the same path: --exec cat of those bytes as base64 text, to
# --outdir (no screen), the login taken off alike.  Rounds take turns.
XD=$WORK/xfer
btime() {	# btime DEVICE ARGS...: the ms one batch run takes; it must succeed
	local t0 ms
	t0=$(now_ms)
	"$CONSOLE" -c "$WORK/xfer.conf" --password-file "$WORK/pass" --devices "$1" "${@:2}" \
		> "$XD/out.txt" 2> /dev/null || { log "   # $*: $(tail -2 "$XD/out.txt")"; return 1; }
	ms=$(( $(now_ms) - t0 ))
	echo "$ms"
}
xfer_round() {	# one of each on DEVICE; the times appended to $XD/KIND-DEVICE
	local d=$1
	btime "$d" --exec true >> "$XD/login-$d" &&
	btime "$d" --exec "cat $XD/data.b64" --outdir "$XD/raw-$d" >> "$XD/raw-$d.ms" &&
	rm -rf "$XD/got" && btime "$d" --get "$XD/data.bin" "$XD/got" >> "$XD/get-$d" &&
	cmp -s "$XD/data.bin" "$XD/got/$d/data.bin" &&
	rm -f "$XD/up-$d/data.bin" && btime "$d" --put "$XD/data.bin" "$XD/up-$d/" >> "$XD/put-$d" &&
	cmp -s "$XD/data.bin" "$XD/up-$d/data.bin"
}
xfer_phase() {
	local d r login b64
	phase "11. file transfer: $((XFER_BYTES >> 20)) MiB x $XFER_ROUNDS rounds, a GNU and a busybox device"
	mkdir -p "$XD/up-x1" "$XD/up-xb"
	chown "$BUSER:" "$XD/up-x1" "$XD/up-xb"
	head -c "$XFER_BYTES" /dev/urandom > "$XD/data.bin"
	base64 "$XD/data.bin" > "$XD/data.b64"
	chmod 755 "$XD"
	chmod 644 "$XD/data.bin" "$XD/data.b64"
	b64=$(stat -c %s "$XD/data.b64")
	fixture_quiet
	for r in $(seq 1 "$XFER_ROUNDS"); do
		for d in x1 xb; do xfer_round "$d" || return 1; done
	done
	for d in x1 xb; do
		login=$(median < "$XD/login-$d")
		R[raw_$d]=$(calc "$b64 / 1e6 / (($(median < "$XD/raw-$d.ms") - $login) / 1000)")
		R[down_$d]=$(calc "$XFER_BYTES / 1e6 / (($(median < "$XD/get-$d") - $login) / 1000)")
		R[up_$d]=$(calc "$XFER_BYTES / 1e6 / (($(median < "$XD/put-$d") - $login) / 1000)")
		log "   $d: login $login ms; raw output $(r raw_$d) MB/s; download $(r down_$d), upload $(r up_$d)" \
			"MB/s of file data (get $(tr '\n' ' ' < "$XD/get-$d")ms, put $(tr '\n' ' ' < "$XD/put-$d")ms)"
	done
}

[[ $ONLY == *" paths "* ]] && { paths_phase || log "   (figures 1-3 stopped early)"; }
[[ $ONLY == *" startup "* ]] && { startup_phase || log "   (figure 6 stopped early)"; }
[[ $ONLY == *" scale "* ]] && { scale_phase || log "   (figures 4-5 stopped early)"; }
[[ $ONLY == *" links "* ]] && { links_phase || log "   (figures 7-9 stopped early)"; }
[[ $ONLY == *" links "* || $ONLY == *" deep "* ]] && { deep_phase || log "   (figure 3b stopped early)"; }
[[ $ONLY == *" soak "* ]] && { soak_phase || log "   (figure 10 stopped early)"; }
[[ $ONLY == *" xfer "* ]] && { xfer_phase || log "   (figure 11 stopped early)"; }

# --- the table and the JSON ----------------------------------------------------------
ratio() {	# value / baseline; "-" when either is missing or the baseline is 0
	has "$1" "$2" && awk "BEGIN { exit !(${R[$2]} != 0) }" && calc "${R[$1]} / ${R[$2]}" 2 || echo -
}
met() { has "$1" && awk "BEGIN { print (($2) ? \"yes\" : \"NO\") }" || echo -; }
row() { printf '%-46s %10s %20s %7s %9s %4s\n' "$@"; }
has p99_con p99_min && R[overhead]=$(calc "${R[p99_con]} - ${R[p99_min]}" 3)
has p50_con p50_min && R[overhead50]=$(calc "${R[p50_con]} - ${R[p50_min]}" 3)
run_kind() {	# what this run measured: the table's first line names it
	local phases
	phases=$(echo $ONLY)
	[ "$QUICK" = 1 ] && echo 'QUICK run: small, not comparable' && return
	case $phases in
	"paths startup scale links xfer") echo 'full run' ;;
	"paths startup scale links xfer soak") echo 'full run and the soak' ;;
	*) echo "phases: $phases" ;;
	esac
}
{
	echo "tunnel_tui benchmarks ($(run_kind), $(date -u '+%Y-%m-%d %H:%M UTC'))"
	echo "machine: $MACHINE; load average at start $LOAD0"
	echo "console in a $CON_SIZE terminal (its pane, the remote pty: 93x39); baselines in 93x39; relay over TLS on loopback"
	echo
	row figure value baseline ratio goal met
	row "1. throughput, MB/s ($((TPUT_BYTES >> 20)) MiB)" "$(r tput_con)" "$(r tput_min) minimal" \
		"$(ratio tput_con tput_min)" "≥ 0.8x" "$(met tput_con "$(r tput_con) >= 0.8 * $(r tput_min)")"
	row "" "" "$(r tput_tmx) tmux+ssh" "$(ratio tput_con tput_tmx)" "≥ 1x" \
		"$(met tput_con "$(r tput_con) >= $(r tput_tmx)")"
	row "2. keystroke to echo p50, ms" "$(r p50_con)" "$(r p50_min) minimal" "$(ratio p50_con p50_min)" "" ""
	row "" "" "$(r p50_tmx) tmux+ssh" "$(ratio p50_con p50_tmx)" "" ""
	row "   p99, ms" "$(r p99_con)" "$(r p99_min) minimal" "$(ratio p99_con p99_min)" "" ""
	row "" "" "$(r p99_tmx) tmux+ssh" "$(ratio p99_con p99_tmx)" "" ""
	row "   console overhead p99 (console - minimal)" "$(r overhead)" "" "" "≤ 1 ms" "$(met overhead "$(r overhead) <= 1")"
	row "   console overhead p50" "$(r overhead50)" "" "" "" ""
	row "   CPU per echoed keystroke, ms" "$(r keycpu_con)" "$(r keycpu_tmx) tmux+ssh" "$(ratio keycpu_con keycpu_tmx)" \
		"≤ 1x" "$(met keycpu_con "$(r keycpu_con) <= $(r keycpu_tmx)")"
	row "3. Ctrl-C under flood to prompt, ms" "$(r ctrlc_con)" "$(r ctrlc_min) minimal" \
		"$(ratio ctrlc_con ctrlc_min)" "≤ 200 ms" "$(met ctrlc_con "$(r ctrlc_con) <= 200")"
	row "   (median of $CTRLC_REPS; worst $(r ctrlc_max_con))" "" "$(r ctrlc_tmx) tmux+ssh" \
		"$(ratio ctrlc_con ctrlc_tmx)" "" ""
	has ctrlc_deep && row "3b. Ctrl-C, $(r ctrlc_deep_mb_dp) MB queued, to prompt, ms" "$(r ctrlc_deep)" \
		"$(r ctrlc_deep_dm) minimal" "$(ratio ctrlc_deep ctrlc_deep_dm)" "≤ 200 ms" "$(met ctrlc_deep "$(r ctrlc_deep) <= 200")"
	has ctrlc_deep && row "   (median of $CTRLC_REPS; worst $(r ctrlc_deep_max_dp))" "" \
		"$(r ctrlc_deep_mb_dm) MB queued" "" "" ""
	row "4. idle CPU, % of a core" "$(r idle_cpu)" "$(r idle_cpu_tmux) tmux" \
		"$(ratio idle_cpu idle_cpu_tmux)" "≤ 0.2 %" "$(met idle_cpu "$(r idle_cpu) <= 0.2")"
	row "   idle wakeups/s" "$(r idle_wake)" "$(r idle_wake_tmux) tmux" "$(ratio idle_wake idle_wake_tmux)" "" ""
	row "5. RSS, MB ($((NDEV * 4)) sessions, 5000 lines each)" "$(r rss_mb)" "$(r tmux_rss_mb) tmux" \
		"$(ratio rss_mb tmux_rss_mb)" "" ""
	row "   KB per session beside scrollback" "$(r kb_sess)" "$(r tmux_kb_win) tmux" \
		"$(ratio kb_sess tmux_kb_win)" "≤ 256 KB" "$(met kb_sess "$(r kb_sess) <= 256")"
	row "   KB per session of scrollback (seq 5000)" "$(r kb_sess_sb)" "$(r tmux_kb_win_sb) tmux" \
		"$(ratio kb_sess_sb tmux_kb_win_sb)" "" ""
	row "   KB per session, all" "$(r kb_sess_raw)" "" "" "" ""
	has sb_colour_kb && row "   MB of scrollback, 5000 lines of this output" "$(calc "${R[sb_colour_kb]} / 1024" 2)" "" "" "≤ 1.5 MB" \
		"$(met sb_colour_kb "${R[sb_colour_kb]} <= 1536")"
	row "   p99 echo, $NSTREAM sessions streaming, ms" "$(r p99_loaded)" "$(r p99_con) unloaded" \
		"$(ratio p99_loaded p99_con)" "" ""
	row "6. start-up to first frame, $NDEV devices, ms" "$(r startup_scale)" "$(r startup_tmux) tmux" \
		"$(ratio startup_scale startup_tmux)" "≤ 50 ms" "$(met startup_scale "$(r startup_scale) <= 50")"
	row "   (1 device configured)" "$(r startup_one)" "" "" "" ""
	row "7. keys shown ≤ 20 ms, 300 ms RTT, %" "$(r predict_pct)" "$(r predict_off_pct) predict=never" "" "≥ 70 %" \
		"$(met predict_pct "$(r predict_pct) >= 70")"
	row "   wrong characters left on screen" "$(r predict_wrong)" "" "" "0" "$(met predict_wrong "$(r predict_wrong) == 0")"
	row "   median key to shown, ms" "$(r type_shown50_1)" "$(r type_shown50_2) predict=never" "" "" ""
	row "8. Ctrl-C to prompt, 1 Mbit/s, 100 ms RTT, ms" "$(r ctrlc_slow_lk)" "$(r ctrlc_slow_sh) ssh" \
		"$(ratio ctrlc_slow_lk ctrlc_slow_sh)" "≤ 2000 ms" "$(met ctrlc_slow_lk "$(r ctrlc_slow_lk) <= 2000")"
	row "   (median of $CTRLC_SLOW_REPS) KB through after Ctrl-C" "$(r ctrlc_slow_kb_lk)" "$(r ctrlc_slow_kb_sh) ssh" \
		"$(ratio ctrlc_slow_kb_lk ctrlc_slow_kb_sh)" "" ""
	row "9. blackhole to the stale notice, ms" "$(r stale_ms)" "" "" "≤ 5000 ms" "$(met stale_ms "$(r stale_ms) <= 5000")"
	row "   link heals to typing echoed, $((SHORT_HOLE / 1000)) s hole, ms" "$(r recover_ms)" "" "" "" ""
	row "   link heals to online, $((LONG_HOLE / 1000)) s hole (dead), ms" "$(r reconnect_ms)" "" "" "≤ 5000 ms" \
		"$(met reconnect_ms "$(r reconnect_ms) <= 5000")"
	row "   ... to the session's prompt (reopen = auto)" "$(r reopen_ms)" "" "" "" ""
	has soak_start && row "10. soak RSS, MB, start -> end ($(r soak_min) min)" "$(r soak_start) -> $(r soak_end)" "" "" "" ""
	has soak_start && row "   growth, first third / last third, MB" "$(r soak_first_third) / $(r soak_last_third)" "" "" \
		"level" "$(met soak_last_third "$(r soak_last_third) <= 1")"
	row "11. download, MB/s of file data (GNU)" "$(r down_x1)" "$(r raw_x1) raw output" \
		"$(ratio down_x1 raw_x1)" "≥ 0.5x" "$(met down_x1 "$(r down_x1) >= 0.5 * $(r raw_x1)")"
	row "   upload (GNU)" "$(r up_x1)" "" "" "≥ 1 MB/s" "$(met up_x1 "$(r up_x1) >= 1")"
	row "   download (busybox: hexdump)" "$(r down_xb)" "$(r raw_xb) raw output" "$(ratio down_xb raw_xb)" "" ""
	row "   upload (busybox: printf, echo on)" "$(r up_xb)" "" "" "≥ 1 MB/s" "$(met up_xb "$(r up_xb) >= 1")"
	echo
	echo "at Ctrl-C the socket queues between the shell and the console held $(r inflight_mb) MB (median); the console works it off before the prompt shows"
	echo "CPU per echoed keystroke (ms, Ctrl-U redraws included): console $(r keycpu_con), minimal client $(r keycpu_min), tmux server+client $(r keycpu_tmx)"
	echo "CPU while throughput runs (% of one core, median): console $(r tputcpu_con)," \
		"minimal client $(r tputcpu_min), tmux server+client $(r tputcpu_tmx)"
	echo "terminal layer alone (no I/O, 93x39): the console's $(r vt_console) MB/s on this output, $(r vt_console_yes) MB/s" \
		"on yes; libvterm's screen layer (the console's before) $(r vt_screen) / $(r vt_screen_yes) MB/s;" \
		"libvterm's parser and state alone (no cells kept) $(r vt_parser) / $(r vt_parser_yes) MB/s"
	echo "5000 lines of this output in a session's scrollback cost the console $(r rss_con_sb) MB (RSS growth over the throughput runs)"
	echo "one 93x39 terminal, both screens made: $(r vt_console_kb) KB in the console, $(r vt_screen_kb) KB with libvterm's screen layer; medians of" \
		"$TPUT_ROUNDS throughput and $STARTUP_REPS start-up runs; latency over $LAT_KEYS keys"
	has predict_pct && echo "links through tests/sandbox/linkem: 7 and 9 at 150 ms +- 10 ms each way, 8 at 50 ms each way and" \
		"125000 B/s, 10 at 50 ms each way with 2 % of segments lost; linkem queues at most $LINK_BUFFER bytes each way." \
		"7: $(r type_keys_1) keys typed with prediction (auto), $(r type_keys_2) without, as $TYPE_LINES command lines each;" \
		"median key to echo $(r type_echo50_1) / $(r type_echo50_2) ms; underlined (unconfirmed) characters left $(r type_ul_1)." \
		"9: $HOLE_REPS rounds; the stale notice at most $(r stale_max) ms after a blackhole began; the link declared dead" \
		"after $(r dead_ms) ms (median); online again at most $(r reconnect_max) ms after it healed;" \
		"keys typed into the short blackholes and never counted by the remote: $(r keys_lost)"
	has soak_start && echo "10: RSS each minute, MB: $(r soak_series)(CPU $(r soak_cpu) % of a core; links declared dead: $(r soak_dead))"
} | tee "$OUT/table.txt"
j() { echo "${R[$1]:-null}"; }
JSON=$(printf '{"throughput_mb_s":%s,"throughput_vs_minimal":%s,"throughput_vs_tmux_ssh":%s,"latency_p50_ms":%s,"latency_p99_ms":%s,"latency_overhead_p99_ms":%s,"ctrl_c_ms":%s,"idle_cpu_pct":%s,"idle_wakeups_s":%s,"rss_mb":%s,"kb_per_session":%s,"latency_p99_loaded_ms":%s,"startup_ms":%s,"predict_within_20ms_pct":%s,"predict_off_within_20ms_pct":%s,"predict_wrong_chars":%s,"ctrl_c_slow_link_ms":%s,"ctrl_c_slow_link_kb_after":%s,"ctrl_c_slow_link_ssh_ms":%s,"stale_notice_ms":%s,"recover_short_ms":%s,"reconnect_after_dead_ms":%s,"soak_rss_start_mb":%s,"soak_rss_end_mb":%s,"soak_rss_last_third_growth_mb":%s,"scrollback_mb_colour":%s,"cpu_per_key_ms":%s,"cpu_per_key_vs_tmux":%s,"ctrl_c_deep_ms":%s,"raw_output_mb_s":%s,"download_mb_s":%s,"download_vs_raw":%s,"upload_mb_s":%s,"raw_output_busybox_mb_s":%s,"download_busybox_mb_s":%s,"upload_busybox_mb_s":%s%s}' \
	"$(j tput_con)" "$(ratio tput_con tput_min | sed 's/^-$/null/')" "$(ratio tput_con tput_tmx | sed 's/^-$/null/')" \
	"$(j p50_con)" "$(j p99_con)" "$(j overhead)" "$(j ctrlc_con)" "$(j idle_cpu)" "$(j idle_wake)" \
	"$(j rss_mb)" "$(j kb_sess)" "$(j p99_loaded)" "$(j startup_scale)" \
	"$(j predict_pct)" "$(j predict_off_pct)" "$(j predict_wrong)" "$(j ctrlc_slow_lk)" "$(j ctrlc_slow_kb_lk)" "$(j ctrlc_slow_sh)" \
	"$(j stale_ms)" "$(j recover_ms)" "$(j reconnect_ms)" "$(j soak_start)" "$(j soak_end)" "$(j soak_last_third)" \
	"$(has sb_colour_kb && calc "${R[sb_colour_kb]} / 1024" 2 || echo null)" "$(j keycpu_con)" \
	"$(ratio keycpu_con keycpu_tmx | sed 's/^-$/null/')" "$(j ctrlc_deep)" \
	"$(j raw_x1)" "$(j down_x1)" "$(ratio down_x1 raw_x1 | sed 's/^-$/null/')" "$(j up_x1)" \
	"$(j raw_xb)" "$(j down_xb)" "$(j up_xb)" \
	"$([ $QUICK = 1 ] && echo ',"quick":true')")
echo "$JSON" > "$OUT/bench.json"
echo
echo "$JSON"
