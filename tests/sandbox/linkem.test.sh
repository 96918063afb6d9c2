#!/bin/bash
# tests/sandbox/linkem.test.sh: the link emulator (tests/sandbox/linkem), a
# TCP proxy that makes the loopback look like a slow, lossy, flaky link.
# Raw TCP goes through it from bash's /dev/tcp to an echo server (busybox nc,
# a listed dependency: bash cannot listen), so what goes up comes back down:
# intact and in order through delay, jitter and loss; delay, loss and rate
# applied (times only as lower bounds); the blackhole holds data with no FIN
# or reset and delivers it after; backpressure bounds linkem's memory;
# run-time control by FIFO and signals.  Then the real sandbox through it: a
# tunnel-client on the relay over wss gets connect_tunnel, pong and a shell.
#
# Every wait is on an event (a log line, an echo, a file's size); the only
# fixed waits are the 1 s windows in which nothing may arrive, each after the
# same read has been seen to work.  Run: sh tests/run.sh linkem
#
# Sections: helpers; the command line; integrity; delay, loss and rate;
# control errors; the blackhole; signals; endpoints closing; backpressure;
# the sandbox through linkem; the exit.
source "$(dirname "$0")/../lib.sh"
export LC_ALL=C

T=10	# seconds one awaited event may take before the check fails
LINKEM_BIN=$TOP/tests/sandbox/linkem
[ -n "${ASAN:-}" ] && LINKEM_BIN=$TOP/build/asan/linkem
LINKEM_BIN=${TT_LINKEM:-$LINKEM_BIN}
for b in "$LINKEM_BIN" "$PLATFORM" "$DEVICE" "$CLIENT"; do
	[ -x "$b" ] || { fail "built: $b" "run: make all (and make asan)"; finish; }
done

#### helpers ###################################################################

listening() { ss -Hltn "sport = :$1" | grep -q .; }	# listening PORT
established() { ss -Htn state established "( dport = :$1 )" | grep -q .; }	# a connection to PORT is up
lines() { wc -l <"$1"; }	# lines FILE
new_line() { tail -n +"$(($2 + 1))" "$1" | grep -qE -- "$3"; }	# new_line FILE MARK REGEX: past line MARK

# echo_server: a TCP echo server (busybox nc, a cat a connection) on ECHO_PORT.
echo_server() {
	ECHO_PORT=$(free_port)
	busybox nc -ll -p "$ECHO_PORT" -e cat 2>>"$WORK/echo.err" &
	PIDS+=($!)
	wait_for 5 listening "$ECHO_PORT"
}

# linkem NAME ARGS...: linkem to the echo server, its control FIFO $WORK/NAME.ctl;
# LK[NAME] is its port, LKPID[NAME] its pid.
declare -A LK LKPID
linkem() {
	local n=$1
	shift
	start_linkem "$n" --to "127.0.0.1:$ECHO_PORT" --control "$WORK/$n.ctl" "$@" || return 1
	LK[$n]=$LINKEM_PORT LKPID[$n]=$LINKEM_PID
}
to_ctl() { echo "$2" >"$WORK/$1.ctl"; }	# to_ctl NAME LINE: one control line

# logs TEST NAME REGEX CMD...: runs CMD; ok when linkem NAME's log then gets
# a line matching REGEX.
logs() {
	local t=$1 n=$2 re=$3 m
	shift 3
	m=$(lines "$WORK/$n.log")
	"$@"
	if wait_for $T new_line "$WORK/$n.log" "$m" "$re"; then
		ok "$t"
	else
		fail "$t" "no new line /$re/ in $n.log; last lines:" "$(tail -n 4 "$WORK/$n.log")"
	fi
}
ctl() { logs "$1: control \"$2\" is logged" "$1" "$3" to_ctl "$1" "$2"; }	# ctl NAME LINE REGEX
sig() { logs "$1: SIG$2 is logged" "$1" "$3" kill -"$2" "${LKPID[$1]}"; }	# sig NAME SIGNAL REGEX

# stats NAME: asks for a stats line (SIGHUP) and prints it once logged.
stats() {
	local m
	m=$(lines "$WORK/$1.log")
	kill -HUP "${LKPID[$1]}"
	wait_for $T new_line "$WORK/$1.log" "$m" ' stats: ' || return 1
	tail -n +"$((m + 1))" "$WORK/$1.log" | grep ' stats: ' | tail -1
}
# stat_of LINE DIR WHAT: a number from a stats line (DIR up|down, WHAT forwarded|buffered)
stat_of() {
	grep -oE "$2 forwarded [0-9]+ buffered [0-9]+" <<<"$1" | awk -v w="$3" '{ print w == "forwarded" ? $3 : $5 }'
}

# dial NAME PORT: a connection to 127.0.0.1:PORT on fd ${FD[NAME]}.
declare -A FD
dial() { local fd; exec {fd}<>"/dev/tcp/127.0.0.1/$2" && FD[$1]=$fd; }
hangup() { local fd=${FD[$1]}; exec {fd}>&-; }	# hangup NAME: closes it
send() { printf '%s\n' "$2" >&"${FD[$1]}"; }	# send NAME LINE
# gets NAME LINE: the next line read on NAME (within $T s) is LINE
gets() { local l; read -r -t $T -u "${FD[$1]}" l && [ "$l" = "$2" ]; }

# rtt NAME WORD: sends WORD, reads its echo; prints the milliseconds it took.
rtt() {
	local t0=$(date +%s%N)
	send "$1" "$2"
	gets "$1" "$2" || return 1
	echo $((($(date +%s%N) - t0) / 1000000))
}
echoes() { rtt "$@" >/dev/null; }	# echoes NAME WORD: WORD comes back
# at_least NAME MS CMD...: ok when CMD prints a number of at least MS.
at_least() {
	local got
	got=$("${@:3}")
	if [ -n "$got" ] && [ "$got" -ge "$2" ]; then
		ok "$1 (took $got ms)"
	else
		fail "$1" "took ${got:-no answer in $T s} ms, wanted at least $2"
	fi
}
# silent NAME CONN: ok when nothing at all (no byte, no FIN, no reset)
# arrives on CONN for 1 s.  (Call only where reading CONN is proven to work.)
silent() {
	local l rc
	read -r -t 1 -u "${FD[$2]}" l
	rc=$?
	if [ $rc -gt 128 ] && [ -z "$l" ]; then ok "$1"; else fail "$1" "read status $rc, got '$l'"; fi
}
size_is() { [ "$(stat -c %s "$1" 2>/dev/null)" = "$2" ]; }	# size_is FILE BYTES
same_bytes() {	# same_bytes NAME EXPECTED GOT: byte-identical
	if cmp -s "$2" "$3"; then ok "$1"; else fail "$1" "$(cmp "$2" "$3" 2>&1 | head -1)"; fi
}
# echo_through NAME CONN FILE: sends FILE up CONN and reads its echo into
# FILE.got (both at once, as the link is full duplex); 1 unless all came back.
echo_through() {
	local fd=${FD[$2]} n
	n=$(stat -c %s "$3")
	cat "$3" >&"$fd" &
	PIDS+=($!)
	timeout $((T * 3)) head -c "$n" <&"$fd" >"$3.got"
	size_is "$3.got" "$n"
}

echo_server || { fail "echo server (busybox nc) listens"; finish; }

#### the command line ##########################################################

"$LINKEM_BIN" --help >"$WORK/help.out" 2>&1
check "--help: exit 0 and the usage" [ $? = 0 -a -n "$(grep -- '--control PATH' "$WORK/help.out")" ]
"$LINKEM_BIN" --listen 127.0.0.1:0 >/dev/null 2>"$WORK/noto.err"
check "no --to: exit 2 with a reason" [ $? = 2 -a -n "$(grep -- '--to' "$WORK/noto.err")" ]
"$LINKEM_BIN" --listen 127.0.0.1:0 --to "127.0.0.1:$ECHO_PORT" --loss 101 >/dev/null 2>"$WORK/badloss.err"
check "--loss 101: refused (exit 2)" [ $? = 2 ]

#### integrity: bytes intact and in order through delay, jitter and loss ########

# A jitter larger than the delay would reorder segments if anything let it;
# 3% of 1460-byte segments "lost" block what follows them.
linkem integ --delay 10 --jitter 30 --loss 3 --seed 7 || { fail "linkem starts"; finish; }
ok "linkem starts and prints its port"
head -c $((1 << 20)) /dev/urandom >"$WORK/rand.bin"
dial i "${LK[integ]}"
if echo_through integ i "$WORK/rand.bin"; then ok "1 MiB up and back: all bytes arrive"; else fail "1 MiB up and back: all bytes arrive" "got $(stat -c %s "$WORK/rand.bin.got") bytes"; fi
same_bytes "1 MiB up and back through delay, jitter and loss: intact, in order" "$WORK/rand.bin" "$WORK/rand.bin.got"
s=$(stats integ)
check "stats: 1 MiB forwarded each way, nothing held" \
	[ "$(stat_of "$s" up forwarded)" = $((1 << 20)) -a "$(stat_of "$s" down forwarded)" = $((1 << 20)) \
	-a "$(stat_of "$s" up buffered)" = 0 -a "$(stat_of "$s" down buffered)" = 0 ]

#### delay, loss and rate, set at run time ######################################

linkem lk || fail "linkem (no shaping) starts"
dial c1 "${LK[lk]}"
check "an echo comes back through linkem" echoes c1 hello
ctl lk 'delay 150' 'linkem: delay 150 ms$'
at_least "delay 150: a ping-pong takes at least 2 x 150 ms" 300 rtt c1 slow
ctl lk 'jitter 40' 'linkem: jitter 40 ms$'
at_least "delay 150 +- 40: a ping-pong takes at least 2 x 110 ms" 220 rtt c1 jittery
ctl lk 'delay 0' 'linkem: delay 0 ms$'
ctl lk 'jitter 0' 'linkem: jitter 0 ms$'
# every segment lost once: 200 ms (the retransmission timeout's floor) each way
ctl lk 'loss 100' 'linkem: loss 100%$'
at_least "loss 100%: a ping-pong waits out a retransmission each way" 400 rtt c1 lossy
ctl lk 'loss 0' 'linkem: loss 0%$'
ctl lk 'rate 50000' 'linkem: rate 50000 B/s$'
head -c 100000 /dev/urandom >"$WORK/rate.bin"
t0=$(date +%s%N)
echo_through lk c1 "$WORK/rate.bin"
ms=$((($(date +%s%N) - t0) / 1000000))
check "rate 50000: 100000 bytes take at least 2 s (took $ms ms)" [ "$ms" -ge 2000 ]
same_bytes "rate 50000: the bytes arrive intact" "$WORK/rate.bin" "$WORK/rate.bin.got"
ctl lk 'rate 0' 'linkem: rate unlimited$'

#### control errors ############################################################

ctl lk 'bogus 12' 'control: unknown command "bogus"'
ctl lk 'delay soon' 'control: bad line for delay'
ctl lk 'blackhole maybe' 'control: bad line for blackhole'
check "a bad line changes nothing: still no blackhole" echoes c1 after-bad-lines

#### the blackhole: nothing passes, nothing is refused or reset ################

ctl lk 'blackhole on' 'linkem: blackhole on$'
send c1 held-1
silent "blackhole: no echo, no FIN, no reset for 1 s" c1
check "blackhole: the client's connection is still ESTABLISHED" established "${LK[lk]}"
check "blackhole: the onward connection is still ESTABLISHED" established "$ECHO_PORT"
s=$(stats lk)
check "blackhole: the 7 bytes sent are held up (${s#* linkem: })" [ "$(stat_of "$s" up buffered)" = 7 ]
m=$(lines "$WORK/lk.log")
dial c2 "${LK[lk]}"
check "blackhole: a new connection is accepted and connected onward" \
	wait_for $T new_line "$WORK/lk.log" "$m" 'conn 2: connected to '
send c2 held-2
ctl lk 'blackhole off' 'linkem: blackhole off$'
check "after the blackhole: the held data arrives" gets c1 held-1
check "after the blackhole: the new connection's too" gets c2 held-2
check "after the blackhole: the link works again" echoes c1 healed

# A segment already on its way when the link dies waits too: read and sent
# (stats shows it held), then the blackhole; past its arrival time, and
# after linkem has woken up (a stats request: the next one tells what that
# wake-up did), it is still held, not passed on to the echo server.
ctl lk 'delay 300' 'linkem: delay 300 ms$'
send c1 in-flight
up_held() { [ "$(stat_of "$(stats lk)" up buffered)" = "$1" ]; }	# up_held BYTES
check "in flight: linkem has read the 10 bytes" wait_for $T up_held 10
ctl lk 'blackhole on' 'linkem: blackhole on$'
silent "blackhole: data in flight does not arrive (1 s, its delay 300 ms)" c1
check "blackhole: linkem woken after its arrival time still holds it" up_held 10
check "blackhole: ... and after that wake-up too" up_held 10
ctl lk 'blackhole off' 'linkem: blackhole off$'
check "after the blackhole: the data that was in flight arrives" gets c1 in-flight
ctl lk 'delay 0' 'linkem: delay 0 ms$'

# An outage is no credit: what was held crosses at the link's rate after it
# (up: the 20000 bytes need at least 1 s at 20000 B/s once the link is back).
ctl lk 'rate 20000' 'linkem: rate 20000 B/s$'
ctl lk 'blackhole on' 'linkem: blackhole on$'
head -c 20000 /dev/urandom >"$WORK/held.bin"
up_before=$(stat_of "$(stats lk)" up forwarded)
cat "$WORK/held.bin" >&"${FD[c1]}"
check "blackhole: linkem holds the 20000 bytes sent" wait_for $T up_held 20000
silent "blackhole: none of them comes back (1 s)" c1
up_sent() { [ "$(stat_of "$(stats lk)" up forwarded)" -ge $((up_before + 20000)) ]; }
t0=$(date +%s%N)
to_ctl lk 'blackhole off'
wait_for $T up_sent
ms=$((($(date +%s%N) - t0) / 1000000))
check "after the blackhole: the held bytes go at the link's rate (at least 1 s: took $ms ms)" [ "$ms" -ge 1000 ]
timeout $T head -c 20000 <&"${FD[c1]}" >"$WORK/held.got"
same_bytes "after the blackhole: the held bytes come back intact" "$WORK/held.bin" "$WORK/held.got"
ctl lk 'rate 0' 'linkem: rate unlimited$'

#### signals ###################################################################

sig lk USR1 'linkem: blackhole on$'
send c2 sig-held
silent "SIGUSR1: blackhole (nothing arrives for 1 s)" c2
sig lk USR2 'linkem: blackhole off$'
check "SIGUSR2: the held line arrives" gets c2 sig-held
sig lk HUP 'linkem: stats: connections 2, up forwarded'

#### endpoints closing #########################################################

# A client's close travels up; the echo server closes back; linkem lets go.
# (A /dev/tcp fd is inherited by whatever starts while it is open, so this
# connection is opened and closed with nothing started in between.)
dial c3 "${LK[lk]}"
check "a third connection works" echoes c3 third
hangup c3
check "a client's close travels: the connection ends" wait_for $T has_line "$WORK/lk.log" 'conn 3: closed \(up 6 bytes, down 6 bytes\)'
# A target that refuses: the client is reset, not left hanging.
start_linkem nowhere --to "127.0.0.1:$(free_port)" || fail "linkem to a closed port starts"
LKPID[nowhere]=$LINKEM_PID
dial n "$LINKEM_PORT"
read -r -t $T -u "${FD[n]}" l 2>/dev/null
rc=$?
check "a refused onward connect resets the client (the read ends: status $rc)" [ $rc -le 128 ]
check "... and is logged" has_line "$WORK/nowhere.log" 'conn 1: connecting onward: Connection refused'
check "... the client's connection closed by a reset" wait_for $T has_line "$WORK/nowhere.log" 'conn 1: closed by a reset'

#### backpressure: memory stays bounded ########################################

# 50 MiB offered at once to a 100 kB/s link: linkem holds 1 MiB (its
# --buffer) and stops reading; the rest waits in the writer's socket.
linkem bp --rate 100000 || fail "linkem --rate 100000 starts"
dial b "${LK[bp]}"
head -c $((50 << 20)) /dev/zero >&"${FD[b]}" &
WRITER=$!
PIDS+=($WRITER)
SLACK=65536	# what the link may have drained since linkem's last read
up_full() { [ "$(stat_of "$(stats bp)" up buffered)" -ge $(((1 << 20) - SLACK)) ] 2>/dev/null; }
check "backpressure: linkem fills its 1 MiB buffer" wait_for 20 up_full
s=$(stats bp)
taken=$(($(stat_of "$s" up forwarded) + $(stat_of "$s" up buffered)))
check "backpressure: linkem took only what it holds plus what it sent ($taken bytes of 50 MiB)" \
	[ "$taken" -lt $((4 << 20)) ]
check "backpressure: the writer is held back, still writing" kill -0 "$WRITER"
sendq=$(ss -Htn state established "( dport = :${LK[bp]} )" | awk '{ print $2; exit }')
check "backpressure: the writer's socket fills (Send-Q $sendq bytes)" [ "${sendq:-0}" -gt 0 ]
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }	# cpu PID: clock ticks used so far
c0=$(cpu "${LKPID[bp]}")
sleep 1	# a window to measure, not a wait for an event
used=$(($(cpu "${LKPID[bp]}") - c0))
check "backpressure: linkem does not spin while it waits ($used ticks of $(getconf CLK_TCK) in 1 s)" \
	[ "$used" -lt $(($(getconf CLK_TCK) / 2)) ]
rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/${LKPID[bp]}/status")
check "linkem's VmRSS is readable ($rss kB)" [ "${rss:-0}" -gt 0 ]
rss_max=$((16 << 10))	# (the sanitizer build's is about 8 MiB)
check "backpressure: linkem's VmRSS stays far below 50 MiB ($rss kB, at most $rss_max)" [ "${rss:-0}" -le $rss_max ]
kill "$WRITER" 2>/dev/null

#### the sandbox through linkem: WebSocket + TLS over a bad link ################

[ -f "$CERTS/ca.pem" ] || { CERTS=$WORK/certs; sh "$TOP/tests/sandbox/mkcerts.sh" "$CERTS" >/dev/null 2>&1; }
sandbox_up wan:full || fail "sandbox starts"
start_linkem wanlk --to "127.0.0.1:$PLATFORM_PORT" --delay 40 --jitter 10 --loss 2 --rate 200000 \
	--control "$WORK/wanlk.ctl" || fail "linkem in front of the relay starts"
LKPID[wanlk]=$LINKEM_PID
msg() { printf '{"operation_type":"%s","tunnel_service_type":"ssh","request_id":"%s","data":%s}\n' "$@"; }
mkfifo "$WORK/app.in"
exec {APP}<>"$WORK/app.in"
"$CLIENT" --url "wss://localhost:$LINKEM_PORT/v5/iot/tunnels/t-wan/source-connect" --token-file "$WORK/wan.app" \
	--cacert "$CERTS/ca.pem" --save s1 "$WORK/s1.bin" <"$WORK/app.in" >"$WORK/app.out" 2>"$WORK/app.err" &
PIDS+=($!)
app_has() { wait_for $T has_line "$WORK/app.out" "$1"; }
check "through linkem: wss opens (TLS verified)" app_has '^open$'
check "through linkem: connect_tunnel" app_has '^recv connect_tunnel '
msg ping p1 null >&$APP
check "through linkem: pong" app_has '^recv pong p1 '
msg connect s1 "{\"username\":\"field\",\"password\":\"$PASS\"}" >&$APP
check "through linkem: a shell session logs in" app_has '^recv connect_response s1 "success"'
msg command s1 '"echo lin\"\"kem-$((6*7))\r"' >&$APP
check "through linkem: the shell answers" wait_for $T has_line "$WORK/s1.bin" 'linkem-42'
ctl wanlk 'blackhole on' 'linkem: blackhole on$'
msg ping p2 null >&$APP
if wait_for 1 has_line "$WORK/app.out" '^recv pong p2 '; then
	fail "through linkem, blackhole: no pong for 1 s"
else
	ok "through linkem, blackhole: no pong for 1 s"
fi
ctl wanlk 'blackhole off' 'linkem: blackhole off$'
check "through linkem, after the blackhole: the pong arrives" app_has '^recv pong p2 '
check "through linkem: the WebSocket never closed" [ -z "$(grep -E '^(closed|error)' "$WORK/app.out")" ]
check "through linkem: the relay saw one app connection" [ "$(grep -c 'tunnel t-wan: app connected' "$PLATFORM_LOG")" = 1 ]

#### the exit ##################################################################

# SIGTERM: a clean exit (status 0, the FIFO removed); ASan reports leaks
# into the logs finish reads.
check "a control FIFO exists while linkem runs" [ -p "$WORK/lk.ctl" ]
for n in integ lk bp nowhere wanlk; do
	kill -TERM "${LKPID[$n]}"
	wait "${LKPID[$n]}"
	rc=$?
	check "$n: SIGTERM ends it with status 0 (got $rc)" [ $rc = 0 ]
	check "$n: logs why it exits" has_line "$WORK/$n.log" 'exiting on Terminated'
done
check "the control FIFOs are removed at exit" [ ! -e "$WORK/lk.ctl" -a ! -e "$WORK/wanlk.ctl" ]

finish
