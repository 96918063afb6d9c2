#!/bin/bash
# tests/sandbox/sandbox.test.sh: drives the sandbox relay (tunnel-platform) and
# the sandbox device agent (tunnel-device) through the behaviour the README's Protocol section
# §7-8 asks of them, with tunnel-client as the application and, where the test
# must see exactly what the relay forwards, as a scripted device too.
#
# Every wait is on an event (a client's output line, a log line, a file's
# content) through wait_for; nothing sleeps to synchronise.  One relay serves
# most checks (one tunnel per scenario); separate relays run --auth-close mode,
# TLS and fault injection.  Run: sh tests/run.sh sandbox
#
# Sections: helpers; relays and tunnels; arrival order; bad tokens; relay
# mechanics (scripted device); oversize; flow control (a slow app, through
# linkem); full-profile sessions; multi-byte
# output; device loss and replacement; REST lifecycle; c-sdk profile; TLS;
# fault injection; ssh backend.
source "$(dirname "$0")/../lib.sh"
export LC_ALL=C	# byte-wise grep and string handling: output holds raw UTF-8

SSHD_SH=$TOP/tests/sandbox/sshd.sh
T=5	# seconds one awaited event may take before the check fails
USER_OK=tester PASS_OK=s3cret-pass
# Shell output: bash's bracketed-paste escapes may precede a line, and the
# echoed command never holds the output text (the commands quote it apart).
SIZE_RE='(^|[^0-9;])'

for b in "$PLATFORM" "$DEVICE" "$CLIENT"; do
	[ -x "$b" ] || { fail "built: $b" "run: make tests/sandbox/$(basename "$b")"; finish; }
done

#### helpers ###################################################################

declare -A CFD	# client name -> the fd this script writes its stdin through
declare -A CPID	# client name -> pid
declare -A DPID	# agent name -> pid

# client NAME URL [ARGS...]: starts tunnel-client NAME; its stdin is the fifo
# $WORK/NAME.in (held open here, so it never sees EOF), its events go to
# $WORK/NAME.out, one per line.
client() {
	local name=$1 url=$2 fd
	shift 2
	mkfifo "$WORK/$name.in"
	exec {fd}<>"$WORK/$name.in"
	"$CLIENT" --url "$url" "$@" <"$WORK/$name.in" >"$WORK/$name.out" 2>"$WORK/$name.err" &
	PIDS+=($!)
	CPID[$name]=$!
	CFD[$name]=$fd
}
say() { local n=$1; shift; printf '%s\n' "$@" >&"${CFD[$n]}"; }	# say NAME LINE...

# The wire messages (README Protocol §2-3), one line each.
msg() { printf '{"operation_type":"%s","tunnel_service_type":"ssh","request_id":"%s","data":%s}' "$1" "$2" "$3"; }
login() { msg connect "$1" "{\"username\":\"$2\",\"password\":\"$3\"${4:+,$4}}"; }	# REQID USER PASS [EXTRA-MEMBERS]
typed() {	# typed REQID TEXT: the command message for TEXT then Enter
	local s=${2//\\/\\\\}
	s=${s//\"/\\\"}
	msg command "$1" "\"$s\\r\""
}

all_set() { local v; for v; do [ -n "$v" ] || return 1; done; }	# all_set VALUE...: none empty
has_fixed() { grep -qF -- "$2" "$1"; }	# has_fixed FILE STRING
count() { grep -cE -- "$2" "$1" 2>/dev/null; }	# count FILE REGEX: matching lines
has_count() { [ "$(count "$1" "$2")" -ge "$3" ]; }	# has_count FILE REGEX N: at least N
line_of() { grep -nE -- "$2" "$1" | head -1 | cut -d: -f1; }	# first matching line number

# await NAME FILE REGEX [N]: ok when FILE gets (N, default 1) lines matching REGEX.
await() {
	local name=$1 f=$2 re=$3 n=${4:-1}
	if wait_for $T has_count "$f" "$re" "$n"; then
		ok "$name"
	else
		fail "$name" "expected $n line(s) matching /$re/ in $(basename "$f"); last lines:" \
			"$(tail -n 6 "$f" 2>/dev/null | cut -c1-300)"
	fi
}
# absent NAME FILE REGEX: ok when no line of FILE matches (check after the
# events that would have produced it have been awaited).
absent() {
	if grep -qE -- "$3" "$2" 2>/dev/null; then
		fail "$1" "unexpected line matching /$3/:" "$(grep -E -- "$3" "$2" | head -3 | cut -c1-300)"
	else
		ok "$1"
	fi
}
# in_order NAME FILE REGEX1 REGEX2: both present, the first one earlier.
in_order() {
	local a b
	a=$(line_of "$2" "$3") b=$(line_of "$2" "$4")
	if [ -n "$a" ] && [ -n "$b" ] && [ "$a" -lt "$b" ]; then
		ok "$1"
	else
		fail "$1" "wanted /$3/ (line ${a:-none}) before /$4/ (line ${b:-none})" "$(tail -n 6 "$2")"
	fi
}
# await_fixed NAME FILE STRING: ok when a line of FILE is exactly STRING.
await_fixed() {
	if wait_for $T grep -qxF -- "$3" "$2"; then
		ok "$1"
	else
		fail "$1" "no line equal to: $3" "$(tail -n 4 "$2" | cut -c1-300)"
	fi
}
hexof() { printf '%s' "$1" | od -An -tx1 | tr -d ' \n'; }	# hexof STRING: its bytes in hex

# exited NAME PID: ok when PID exits within $T seconds.
gone() { ! kill -0 "$1" 2>/dev/null; }
exited() { if wait_for $T gone "$2"; then ok "$1"; else fail "$1" "pid $2 still running"; fi; }

# between FILE START END: the bytes of FILE after the first START and its
# CR LF, up to the last END.
between() {
	local f=$1 a b
	a=$(grep -boa -- "$2" "$f" | head -1 | cut -d: -f1)
	b=$(grep -boa -- "$3" "$f" | tail -1 | cut -d: -f1)
	[ -n "$a" ] && [ -n "$b" ] || return 1
	a=$((a + ${#2} + 2))
	tail -c +$((a + 1)) "$f" | head -c $((b - a))
}
# same_bytes NAME EXPECTED-FILE GOT-FILE: ok when byte-identical.
same_bytes() {
	if cmp -s "$2" "$3"; then
		ok "$1"
	else
		fail "$1" "$(cmp "$2" "$3" 2>&1 | head -1)" \
			"sizes: expected $(wc -c <"$2"), got $(wc -c <"$3")"
	fi
}

# Relay URLs.  R is the current relay's base URL.
src() { echo "$R/v5/iot/tunnels/$1/source-connect"; }
dst() { echo "$R/v5/iot/tunnels/$1/device-connect"; }

tokfile() { printf '%s\n' "$2" >"$WORK/$1.tok"; echo "$WORK/$1.tok"; }	# tokfile NAME TOKEN: a token file

# device NAME TUNNEL [ARGS...]: the agent (pty backend) on TUNNEL's device route.
device() {
	local name=$1 t=$2
	shift 2
	start_device "$name" --url "$(dst "$t")" --token-file "$(tokfile "$t-dev" "dev-$t")" \
		--backend pty --login-file "$WORK/logins" "$@"
	DPID[$name]=$DEVICE_PID
}
dlog() { echo "$WORK/$1.log"; }	# dlog NAME: an agent's log file

# About 40 KB of CJK, kana, hangul, emoji and accents: several output messages,
# so characters straddle message boundaries; the bytes must come out intact.
for ((i = 0; i < 600; i++)); do
	printf '%03d 汉字かなカナ한글 😀🚀🎉 ñé €‰ Ω≈ç √∫ —「」\n' "$i"
done >"$WORK/mb.txt"
sed 's/$/\r/' "$WORK/mb.txt" >"$WORK/mb.want"	# the PTY turns LF into CR LF
mb_cmd="printf '%s\\n' @@MB''BEGIN@@; cat $WORK/mb.txt; printf '%s\\n' @@MB''END@@"

# multibyte NAME REQID SAVE-FILE APP: prints mb.txt in session REQID, checks bytes.
multibyte() {
	say "$4" "$(typed "$2" "$mb_cmd")"
	if ! wait_for 10 has_fixed "$3" '@@MBEND@@'; then
		fail "$1" "no end marker in $(basename "$3")"
		return
	fi
	between "$3" '@@MBBEGIN@@' '@@MBEND@@' >"$3.got"
	same_bytes "$1" "$WORK/mb.want" "$3.got"
}

#### relays and tunnels ########################################################

# Tunnel NAME[:EXPIRES_IN]: source token src-NAME, device token dev-NAME.
tunnels_json() {
	local t sep=
	printf '['
	for t in "$@"; do
		printf '%s{"tunnel_id":"%s","device_id":"d-%s","source_token":"src-%s","device_token":"dev-%s","expires_in":%s}' \
			"$sep" "${t%%:*}" "${t%%:*}" "${t%%:*}" "${t%%:*}" "$([[ $t == *:* ]] && echo "${t#*:}" || echo 3600)"
		sep=,
	done
	printf ']\n'
}
tunnels_json order devfirst relay big flow sess csdk ssh tls auth cut stall expired:0 >"$WORK/tunnels.json"
printf '%s:%s\n' "$USER_OK" "$PASS_OK" >"$WORK/logins"
printf 'api-secret\n' >"$WORK/api.tok"

start_platform main --tunnels "$WORK/tunnels.json" --api-token-file "$WORK/api.tok" || { fail "main relay starts"; finish; }
R=$PLATFORM_URL MAIN_URL=$PLATFORM_URL MAIN_PID=$PLATFORM_PID MAIN_LOG=$PLATFORM_LOG
ok "main relay starts"

#### arrival order #############################################################

# App first: connect_tunnel only once the device arrives.  (The pong shows
# the relay has dealt with the app; a connect_tunnel would have come first.)
client ord "$(src order)" --token-file "$(tokfile ord src-order)"
await "app first: WebSocket opens" "$WORK/ord.out" '^open$'
say ord "$(msg ping p-alone null)"
await "app first: pong while alone" "$WORK/ord.out" '^recv pong p-alone '
absent "app first: no connect_tunnel before the device" "$WORK/ord.out" '^recv connect_tunnel '
device dev-order order
await "app first: device agent connects" "$(dlog dev-order)" ': connected$'
await "app first: connect_tunnel when the device arrives" "$WORK/ord.out" '^recv connect_tunnel '

# Device first: connect_tunnel on the app's arrival.
device dev-first devfirst
await "device first: agent connects" "$(dlog dev-first)" ': connected$'
client first "$(src devfirst)" --token-file "$(tokfile first src-devfirst)"
await "device first: connect_tunnel on the app's arrival" "$WORK/first.out" '^recv connect_tunnel '

#### bad tokens (by default the app route refuses before the upgrade, the ####
#### device route closes 1002 after it) ##########################################

client bad1 "$(src order)" --token-file "$(tokfile bad1 wrong-token)"
await "bad source token: HTTP 401" "$WORK/bad1.out" '^http 401$'
client bad2 "$(src no-such-tunnel)" --token-file "$(tokfile bad2 src-order)"
await "unknown tunnel: HTTP 404" "$WORK/bad2.out" '^http 404$'
client bad3 "$(src order)"
await "no token header: HTTP 401" "$WORK/bad3.out" '^http 401$'
client bad4 "$(dst order)" --token-file "$(tokfile bad4 src-order)"
await "source token on the device route: upgraded" "$WORK/bad4.out" '^open$'
await "source token on the device route: then closed 1002" "$WORK/bad4.out" '^closed 1002'
client bad5 "$(src expired)" --token-file "$(tokfile bad5 src-expired)"
await "expired token: HTTP 401" "$WORK/bad5.out" '^http 401$'
start_device dev-bad --url "$(dst order)" --token-file "$(tokfile dev-bad wrong-token)" --backend pty --login-file "$WORK/logins"
await "bad device token: the agent is refused (close 1002)" "$WORK/dev-bad.log" 'refused the device token \(close 1002\); exiting$'
exited "bad device token: the agent gives up, no retry loop" "$DEVICE_PID"
absent "bad device token: never retried" "$WORK/dev-bad.log" 'reconnecting'
exited "refused client exits" "${CPID[bad1]}"
wait "${CPID[bad1]}"
check "refused client exit status 1" [ $? = 1 ]
absent "refused clients never see open" "$WORK/bad1.out" '^open$'

#### relay mechanics, with a scripted device ###################################

client rapp "$(src relay)" --token-file "$(tokfile rapp src-relay)" --save r1 "$WORK/relay-r1.bin"
client rdev "$(dst relay)" --token-file "$(tokfile rdev dev-relay)" --raw
await "scripted device: opens" "$WORK/rdev.out" '^open$'
await "scripted device: app gets connect_tunnel" "$WORK/rapp.out" '^recv connect_tunnel '

# app -> device byte for byte: odd spacing, member order, invalid UTF-8.
odd='{ "data" : "\u00e9 x", "request_id":"odd1",   "tunnel_service_type":"ssh","operation_type":"command"}'
say rapp "$odd"
await_fixed "app->device relayed byte for byte" "$WORK/rdev.out" "raw $odd"
bad=$(printf '{"operation_type":"command","request_id":"bad-utf8","data":"\xff\xfe\xc3"}')
say rapp "!raw $(hexof "$bad")"
await_fixed "app->device: invalid UTF-8 relayed, not rejected" "$WORK/rdev.out" "raw $bad"

# device -> app: one character split across two messages arrives whole.
say rdev "$(printf '{"operation_type":"command_response","request_id":"r1","data":"\xe4\xb8"}')"
say rdev "$(printf '{"operation_type":"command_response","request_id":"r1","data":"\xad"}')"
say rdev "$(msg command_response r1 '"-end"')"
wait_for $T has_fixed "$WORK/relay-r1.bin" "-end"
printf '\xe4\xb8\xad-end' >"$WORK/relay-r1.want"
same_bytes "device->app: split UTF-8 relayed in order, bytes intact" "$WORK/relay-r1.want" "$WORK/relay-r1.bin"

# JSON ping: answered by the relay with the same request_id, never forwarded.
say rapp "$(msg ping p-42 null)" "$(msg command after-ping '"x"')"
await "ping -> pong with the same request_id" "$WORK/rapp.out" '^recv pong p-42 '
await "scripted device gets the next message" "$WORK/rdev.out" '^recv command after-ping '
absent "ping not forwarded to the device" "$WORK/rdev.out" '^recv ping '
say rapp '!ping app-ping-1'
await "WebSocket PING answered (app side)" "$WORK/rapp.out" '^pong-ws app-ping-1$'
say rdev '!ping dev-ping-1'
await "WebSocket PING answered (device side)" "$WORK/rdev.out" '^pong-ws dev-ping-1$'

# A device's disconnect reaches the app unchanged.
say rdev '!disconnect r1 400 Create SSH channel failed'
await "device disconnect relayed to the app" "$WORK/rapp.out" \
	'^recv disconnect r1 \{"status_code":"400","status_msg":"Create SSH channel failed"\}$'

# A second device replaces the first: close 4000 for the old one, no 409 message
# (that is for apps), and connect_tunnel again for the app.
client rdev2 "$(dst relay)" --token-file "$(tokfile rdev2 dev-relay)" --raw
await "device replaced: old device closed 4000" "$WORK/rdev.out" '^closed 4000'
absent "device replaced: no 409 message to a device" "$WORK/rdev.out" '"409"'
await "device replaced: app gets connect_tunnel again" "$WORK/rapp.out" '^recv connect_tunnel ' 2

# The device leaves normally: the app still hears 410 and stays.
say rdev2 '!close 1000'
# (the replacement already gave one 410: this is the second)
await "device left: app gets disconnect 410" "$WORK/rapp.out" '^recv disconnect [^ ]+ \{"status_code":"410"' 2
say rapp "$(msg ping p-43 null)"
await "device left: app stays connected (pong)" "$WORK/rapp.out" '^recv pong p-43 '

#### oversize ##################################################################

# oversize NAME APP-MAX DEVICE-MAX [DEVICE-SIZE...]: on tunnel "big" of relay
# R, each side's largest message (and the device's of each DEVICE-SIZE) is
# relayed, one byte more is refused: disconnect 413 to the app's side, close
# 1009 to the sender; the app stays after a device's.
oversize() {
	local n=$1 amax=$2 dmax=$3 size
	client "${n}app" "$(src big)" --token-file "$(tokfile "${n}app" src-big)"
	client "${n}dev" "$(dst big)" --token-file "$(tokfile "${n}dev" dev-big)"
	await "$n: app gets connect_tunnel" "$WORK/${n}app.out" '^recv connect_tunnel '
	say "${n}app" "!big $amax $n-app-max"
	await "$n: an app's $amax-byte message relayed" "$WORK/${n}dev.out" "^recv command $n-app-max "
	for size in "$dmax" "${@:4}"; do
		say "${n}dev" "!big $size $n-dev-$size"
		await "$n: a device's $size-byte message relayed" "$WORK/${n}app.out" "^recv command $n-dev-$size "
	done
	say "${n}app" "!big $((amax + 1)) $n-app-over"
	await "$n: an app's $((amax + 1)) bytes: disconnect 413" "$WORK/${n}app.out" '^recv disconnect [^ ]+ \{"status_code":"413"'
	await "$n: ... and close 1009" "$WORK/${n}app.out" '^closed 1009'
	in_order "$n: 413 before the close" "$WORK/${n}app.out" '"413"' '^closed 1009'
	absent "$n: the app's oversize message not relayed" "$WORK/${n}dev.out" "$n-app-over"
	client "${n}app2" "$(src big)" --token-file "$(tokfile "${n}app2" src-big)"
	await "$n: a new app gets connect_tunnel" "$WORK/${n}app2.out" '^recv connect_tunnel '
	say "${n}dev" "!big $((dmax + 1)) $n-dev-over"
	await "$n: a device's $((dmax + 1)) bytes: the app gets disconnect 413" "$WORK/${n}app2.out" \
		'^recv disconnect [^ ]+ \{"status_code":"413"'
	await "$n: ... the device is closed 1009" "$WORK/${n}dev.out" '^closed 1009'
	await "$n: ... the app hears the device is gone (410)" "$WORK/${n}app2.out" '^recv disconnect [^ ]+ \{"status_code":"410"'
	say "${n}app2" "$(msg ping "p-$n" null)"
	await "$n: ... and stays connected" "$WORK/${n}app2.out" "^recv pong p-$n "
	absent "$n: the device's oversize message not relayed" "$WORK/${n}app2.out" "$n-dev-over"
}
# The defaults: 10240 for the app (README Protocol §1), 16384 for the device,
# whose official SDK sends up to 12428 bytes.
oversize big 10240 16384 12428
# Each role's limit set on its own.
start_platform limits --tunnels "$WORK/tunnels.json" --max-message 2000 --max-device-message 3000 ||
	fail "relay with --max-message 2000 --max-device-message 3000 starts"
R=$PLATFORM_URL
oversize limits 2000 3000
kill "$PLATFORM_PID"
R=$MAIN_URL

#### flow control: a slow app bounds the relay's backlog #######################

# The app sits behind linkem, whose link dies (blackhole): what a scripted
# device sends then fills the sockets toward the app, and the relay must
# stop reading the device with at most its high mark (32 KiB) and one
# message (16 KiB) held toward the app, not let it grow; once the link is
# back, every message arrives, in order.  SIGUSR2 reports the queues.  Nor
# may the relay's socket toward the app hold megabytes (a send buffer left
# to autotuning on loopback would).
FLOW_N=600 FLOW_SIZE=10000	# 6 MB: more than every socket buffer on the way (4 MB at most)
start_linkem flowlk --to "127.0.0.1:${MAIN_URL##*:}" --buffer 16384 --control "$WORK/flowlk.ctl" ||
	fail "linkem in front of the main relay starts"
client flapp "ws://127.0.0.1:$LINKEM_PORT/v5/iot/tunnels/flow/source-connect" --token-file "$(tokfile flapp src-flow)"
client fldev "$(dst flow)" --token-file "$(tokfile fldev dev-flow)"
await "flow: the app behind linkem gets connect_tunnel" "$WORK/flapp.out" '^recv connect_tunnel '
echo 'blackhole on' >"$WORK/flowlk.ctl"
await "flow: the link toward the app dies (linkem's blackhole)" "$WORK/flowlk.log" 'linkem: blackhole on$'
for ((i = 1; i <= FLOW_N; i++)); do say fldev "!big $FLOW_SIZE fl-$i"; done
reported_since() { tail -n +"$(($1 + 1))" "$MAIN_LOG" | grep -q 'SIGUSR2: queues reported'; }	# reported_since LINE
# queues_of TUNNEL: asks the relay (SIGUSR2) and prints the tunnel's report line
queues_of() {
	local m
	m=$(wc -l <"$MAIN_LOG")
	kill -USR2 "$MAIN_PID"
	wait_for $T reported_since "$m" || return 1
	tail -n +"$((m + 1))" "$MAIN_LOG" | grep "tunnel $1: queued" | tail -1
}
device_paused() { queues_of flow | grep -q 'device paused$'; }
await_cmd() { if wait_for $T "${@:2}"; then ok "$1"; else fail "$1" "$(queues_of flow)"; fi; }	# await_cmd NAME CMD...
await_cmd "flow: the relay stops reading the device" device_paused
q=$(queues_of flow)
held=$(sed -n 's/.*queued to app \([0-9]*\) (peak \([0-9]*\)).*/\1 \2/p' <<<"$q")
check "flow: the relay holds a backlog toward the app (${held% *} bytes)" [ "${held% *}" -gt 0 ]
check "flow: at most 48 KiB of it, ever (now ${held% *}, peak ${held#* })" [ "${held#* }" -le $((48 << 10)) ]
# the relay's sockets: toward linkem (the stalled app) and from the device
sendq=$(ss -Htn state established "( sport = :${MAIN_URL##*:} )" | awk '$2 > m { m = $2 } END { print m + 0 }')
check "flow: the relay's socket toward the app is full ($sendq bytes unsent)" [ "$sendq" -gt 0 ]
check "flow: ... but holds at most 256 KiB" [ "$sendq" -le $((256 << 10)) ]
echo 'blackhole off' >"$WORK/flowlk.ctl"
await "flow: the link is back" "$WORK/flowlk.log" 'linkem: blackhole off$'
await "flow: every message reaches the app" "$WORK/flapp.out" '^recv command fl-' "$FLOW_N"
check "flow: ... in order" [ "$(grep -o '^recv command fl-[0-9]*' "$WORK/flapp.out" | cut -d- -f2 | tr '\n' ' ')" = \
	"$(seq -s ' ' 1 "$FLOW_N") " ]
check "flow: ... and whole" [ "$(awk -v n=$((FLOW_SIZE - 100)) '/^recv command fl-/ && length($4) > n' "$WORK/flapp.out" | wc -l)" = "$FLOW_N" ]
kill "$LINKEM_PID"

#### full-profile sessions (pty backend) #######################################

N1=$RANDOM$RANDOM N2=$RANDOM$RANDOM
client sapp "$(src sess)" --token-file "$(tokfile sapp src-sess)" --raw \
	--save s1 "$WORK/s1.bin" --save s2 "$WORK/s2.bin" --save s3 "$WORK/s3.bin"
device dev-sess sess
await "sessions: connect_tunnel" "$WORK/sapp.out" '^recv connect_tunnel '
say sapp "$(login s1 "$USER_OK" "$PASS_OK" '"cols":100,"rows":40,"term":"xterm-256color"')"
say sapp "$(login s2 "$USER_OK" "$PASS_OK")"
await "full profile: connect_response \"success\" (s1)" "$WORK/sapp.out" '^recv connect_response s1 "success"$'
await "full profile: connect_response \"success\" (s2)" "$WORK/sapp.out" '^recv connect_response s2 "success"$'
await "agent logs the login" "$(dlog dev-sess)" ': session s1: login ok$'
# The quotes keep the typed (echoed) command from matching the output.
say sapp "$(typed s1 'stty size; echo "one-""'$N1'"; echo "term=""$TERM"')"
say sapp "$(typed s2 'stty size; echo "two-""'$N2'"')"
await "session s1 prints its output" "$WORK/s1.bin" "one-$N1"
await "session s2 prints its output" "$WORK/s2.bin" "two-$N2"
absent "s1's output only under s1" "$WORK/s2.bin" "one-$N1"
absent "s2's output only under s2" "$WORK/s1.bin" "two-$N2"
await "full profile: PTY sized from cols/rows (stty size: 40 100)" "$WORK/s1.bin" "${SIZE_RE}40 100"
await "full profile: TERM from the connect message" "$WORK/s1.bin" 'term=xterm-256color'
await "full profile: default PTY 128x30 (stty size: 30 128)" "$WORK/s2.bin" "${SIZE_RE}30 128"

# A wrong password: disconnect 400 for that session only.
say sapp "$(login s3 "$USER_OK" wrong-password)"
await "bad password: disconnect 400" "$WORK/sapp.out" '^recv disconnect s3 \{"status_code":"400"'
await "bad password: agent logs login failed" "$(dlog dev-sess)" ': session s3: login failed$'
absent "bad password: no \"success\"" "$WORK/sapp.out" '^recv connect_response s3 "success"'

# Shell exit: output flushed, then disconnect 408 with the session's request_id;
# the WebSocket and the other session live on.
# 40 KB right before the exit: all of it must precede the 408 (the client saves
# a message before it prints its line).
say sapp "$(typed s1 "cat $WORK/mb.txt; echo \"bye-\"\"$N1\"; exit")"
await "shell exit: disconnect 408 with the request_id" "$WORK/sapp.out" '^recv disconnect s1 \{"status_code":"408"'
check "shell exit: all output arrived before the 408" has_line "$WORK/s1.bin" "bye-$N1"
await "shell exit: agent logs the end" "$(dlog dev-sess)" ': session s1: ended$'
say sapp "$(typed s2 'echo "still-""'$N2'"')"
await "shell exit: the other session still works" "$WORK/s2.bin" "still-$N2"
absent "shell exit: WebSocket stays open" "$WORK/sapp.out" '^closed '

#### multi-byte output across chunk boundaries ##################################

multibyte "full profile: multi-byte output byte-identical" s2 "$WORK/s2.bin" sapp

# Control bytes take 6 bytes each in JSON (\u0001): 4 KB reads must still go
# out in messages of at most 8 KB serialized, and arrive intact.
head -c 20000 /dev/zero | tr '\0' '\1' >"$WORK/ctl.txt"
say sapp "$(typed s2 "printf '%s\\n' @@CT''BEGIN@@; cat $WORK/ctl.txt; printf '%s\\n' @@CT''END@@")"
if wait_for 10 has_fixed "$WORK/s2.bin" '@@CTEND@@'; then
	between "$WORK/s2.bin" '@@CTBEGIN@@' '@@CTEND@@' >"$WORK/ctl.got"
	same_bytes "full profile: control bytes intact" "$WORK/ctl.txt" "$WORK/ctl.got"
else
	fail "full profile: control bytes intact" "no end marker in s2.bin"
fi
longest=$(grep -a '^raw .*"command_response"' "$WORK/sapp.out" | awk '{ n = length($0) - 4; if (n > m) m = n } END { print m + 0 }')
check "full profile: output messages at most 8192 bytes (longest: $longest)" [ "$longest" -le 8192 -a "$longest" -gt 6000 ]

#### device loss and app replacement (tunnel "order") #########################

disown "${DPID[dev-order]}"	# (no "Killed" notice in the log)
kill -KILL "${DPID[dev-order]}"
await "device killed: app gets disconnect 410" "$WORK/ord.out" '^recv disconnect [^ ]+ \{"status_code":"410"'
say ord "$(msg ping p-ord null)"
await "device killed: app stays connected" "$WORK/ord.out" '^recv pong p-ord '
device dev-order2 order
await "device back: connect_tunnel again" "$WORK/ord.out" '^recv connect_tunnel ' 2

client ord2 "$(src order)" --token-file "$(tokfile ord2 src-order)"
await "app replaced: old app gets disconnect 409" "$WORK/ord.out" '^recv disconnect [^ ]+ \{"status_code":"409"'
await "app replaced: old app closed 4000" "$WORK/ord.out" '^closed 4000'
in_order "app replaced: 409 before the close" "$WORK/ord.out" '"409"' '^closed 4000'
await "app replaced: new app gets connect_tunnel" "$WORK/ord2.out" '^recv connect_tunnel '
exited "app replaced: old client exits" "${CPID[ord]}"

# The relay drops every device (SIGUSR1): the app hears 410, the agent
# reconnects by itself, the app gets connect_tunnel again.
kill -USR1 "$MAIN_PID"
await "relay drops devices: app gets disconnect 410" "$WORK/ord2.out" '^recv disconnect [^ ]+ \{"status_code":"410"'
await "relay drops devices: agent schedules a reconnect" "$(dlog dev-order2)" ': reconnecting in [0-9]+ ms$'
await "relay drops devices: connect_tunnel after the agent is back" "$WORK/ord2.out" '^recv connect_tunnel ' 2

#### REST lifecycle ############################################################

API=${MAIN_URL/ws:/http:}/v5/iot/sandbox-project/tunnels
# rest METHOD URL [BODY]: prints the body, then the status on the last line.
rest() {
	curl -s -X "$1" -H 'X-Auth-Token: api-secret' -H 'Content-Type: application/json' \
		${3:+--data "$3"} -w '\n%{http_code}\n' "$2"
}
json_field() { sed -n "s/.*\"$1\"[ ]*:[ ]*\"\\{0,1\\}\\([^\",}]*\\).*/\\1/p" | head -1; }	# json_field NAME < JSON

code=$(curl -s -o /dev/null -w '%{http_code}' -X POST --data '{"device_id":"dev-rest"}' "$API")
check "REST without X-Auth-Token: 401" [ "$code" = 401 ]
created=$(rest POST "$API" '{"device_id":"dev-rest"}')
check "REST create: 201" [ "$(tail -n 1 <<<"$created")" = 201 ]
RT_ID=$(json_field tunnel_id <<<"$created")
RT_TOKEN=$(json_field tunnel_access_token <<<"$created")
RT_URI=$(json_field tunnel_uri <<<"$created")
check "REST create: tunnel_id, tunnel_access_token, expires_in, tunnel_uri" \
	all_set "$RT_ID" "$RT_TOKEN" "$RT_URI" "$(json_field expires_in <<<"$created")"
got=$(rest GET "$API/$RT_ID")
check "REST get: 200 naming the tunnel" all_set "$(tail -n 1 <<<"$got" | grep -x 200)" "$(grep -F "\"$RT_ID\"" <<<"$got")"

rest GET "${MAIN_URL/ws:/http:}/sandbox/tunnels/$RT_ID/notify" | sed '$d' >"$WORK/notify.json"
check "REST: the device's tunnel_notify names the tunnel" has_fixed "$WORK/notify.json" "$RT_ID"
start_device dev-rest --notify "$WORK/notify.json" --backend pty --login-file "$WORK/logins"
DPID[dev-rest]=$DEVICE_PID
await "REST: the agent connects with the notify JSON" "$(dlog dev-rest)" ': connected$'
check "REST: tunnel_uri is the tunnel's source-connect URL" \
	[ "$RT_URI" = "$MAIN_URL/v5/iot/tunnels/$RT_ID/source-connect" ]
client rest "$RT_URI" --token-file "$(tokfile rest "$RT_TOKEN")" --save k1 "$WORK/k1.bin"
await "REST: app on tunnel_uri gets connect_tunnel" "$WORK/rest.out" '^recv connect_tunnel '
say rest "$(login k1 "$USER_OK" "$PASS_OK")" "$(typed k1 'echo "rest-""ok"')"
await "REST: a session works" "$WORK/k1.bin" 'rest-ok'
code=$(rest DELETE "$API/$RT_ID" | tail -n 1)
check "REST delete while open: refused (4xx)" [ "${code:0:1}" = 4 ]
code=$(rest PUT "$API/$RT_ID" '{}' | tail -n 1)
check "REST close (PUT): 2xx" [ "${code:0:1}" = 2 ]
await "REST close: app gets disconnect 404" "$WORK/rest.out" '^recv disconnect [^ ]+ \{"status_code":"404"'
await "REST close: app closed 1000" "$WORK/rest.out" '^closed 1000'
await "REST close: agent closed 1000" "$(dlog dev-rest)" ': disconnected \(close 1000\)$'
exited "REST close: client exits 0" "${CPID[rest]}"
wait "${CPID[rest]}"
check "REST close: client exit status 0" [ $? = 0 ]
code=$(rest DELETE "$API/$RT_ID" | tail -n 1)
check "REST delete after close: 204" [ "$code" = 204 ]
code=$(rest GET "$API/$RT_ID" | tail -n 1)
check "REST get after delete: 404" [ "$code" = 404 ]
exited "REST close: the agent exits after close 1000" "${DPID[dev-rest]}"
absent "REST close: agent does not reconnect after 1000" "$(dlog dev-rest)" ': reconnecting in'

# A tunnel whose token expires while in use: disconnect 401, close 1000.
created=$(rest POST "$API" '{"device_id":"dev-short","expires_in":1}')
client short "$(json_field tunnel_uri <<<"$created")" --token-file "$(tokfile short "$(json_field tunnel_access_token <<<"$created")")"
await "short-lived tunnel: app opens" "$WORK/short.out" '^open$'
await "token expiry: app gets disconnect 401" "$WORK/short.out" '^recv disconnect [^ ]+ \{"status_code":"401"'
await "token expiry: app closed 1000" "$WORK/short.out" '^closed 1000'

#### c-sdk profile ##############################################################

client capp "$(src csdk)" --token-file "$(tokfile capp src-csdk)" --raw \
	--save k2 "$WORK/k2.bin" --save c3 "$WORK/c3.bin" --save SSH_timeout_disconnect "$WORK/c3x.bin"
device dev-csdk csdk --profile c-sdk
await "c-sdk: connect_tunnel" "$WORK/capp.out" '^recv connect_tunnel '
say capp "$(login c1 "$USER_OK" "$PASS_OK" '"cols":100,"rows":40')"
await "c-sdk: connect_response without data" "$WORK/capp.out" '^recv connect_response c1 (-|null)$'
# Output carries the latest request_id received (here k2's), and the PTY is
# 128x30 whatever the connect asked for.
say capp "$(typed k2 'stty size; echo "pid=""$$"')"
await "c-sdk: output under the latest request_id" "$WORK/k2.bin" 'pid=[0-9]+'
await "c-sdk: fixed 128x30 (stty size: 30 128)" "$WORK/k2.bin" "${SIZE_RE}30 128"
multibyte "c-sdk: multi-byte output byte-identical across 2048-byte reads" k2 "$WORK/k2.bin" capp
# ... and those reads really did cut characters: some message's data ends
# inside a UTF-8 sequence (the frames are cJSON_Print'ed: `"data":<TAB>"..."`).
check "c-sdk: raw reads split UTF-8 sequences across messages" grep -qaP \
	'^raw .*"command_response".*([\xc2-\xdf]|[\xe0-\xef][\x80-\xbf]?|[\xf0-\xf4][\x80-\xbf]{0,2})"\s*\}$' "$WORK/capp.out"
say capp '{"operation_type":"command","request_id":"k2","data":"x"}'
await "c-sdk: a message without tunnel_service_type is dropped, not fatal" "$(dlog dev-csdk)" \
	': message without tunnel_service_type \(official devices crash on this\)$'
# A new connect silently replaces the session: the old shell is gone.
P1=$(grep -ao 'pid=[0-9][0-9]*' "$WORK/k2.bin" | head -1 | cut -d= -f2)
say capp "$(login c3 "$USER_OK" "$PASS_OK")"
await "c-sdk: the new connect is answered" "$WORK/capp.out" '^recv connect_response c3 (-|null)$'
# (the old shell may take a moment to die after its PTY closes: poll for it)
say capp "$(typed c3 'for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 '"$P1"' 2>/dev/null || break; sleep 0.2; done; kill -0 '"$P1"' 2>/dev/null || echo "old-""gone"')"
await "c-sdk: a new connect replaces the old session" "$WORK/c3.bin" 'old-gone'
absent "c-sdk: no disconnect for the replaced session" "$WORK/capp.out" '^recv disconnect c1 '
say capp "$(typed c3 'exit')"
await "c-sdk: exit gives 408 under SSH_timeout_disconnect" "$WORK/capp.out" \
	'^recv disconnect SSH_timeout_disconnect \{"status_code":"408"'

#### --auth-close mode ##########################################################

start_platform authclose --tunnels "$WORK/tunnels.json" --auth-close || fail "auth-close relay starts"
R=$PLATFORM_URL
client ac1 "$(src auth)" --token-file "$(tokfile ac1 wrong-token)"
await "--auth-close, bad token: upgrade first" "$WORK/ac1.out" '^open$'
await "--auth-close, bad token: then close 1002" "$WORK/ac1.out" '^closed 1002'
client ac2 "$(src no-such-tunnel)" --token-file "$(tokfile ac2 src-auth)"
await "--auth-close, unknown tunnel: close 1002" "$WORK/ac2.out" '^closed 1002'
client ac3 "$(src auth)" --token-file "$(tokfile ac3 src-auth)"
await "--auth-close, good token: stays open" "$WORK/ac3.out" '^open$'
start_device dev-ac --url "$(dst auth)" --token-file "$(tokfile dev-ac wrong-token)" --backend pty --login-file "$WORK/logins"
await "--auth-close: agent with a bad token sees close 1002" "$WORK/dev-ac.log" ': disconnected \(close 1002\)$'
exited "--auth-close: the agent gives up after 1002" "$DEVICE_PID"
absent "--auth-close: client with a good token not closed" "$WORK/ac3.out" '^closed'

#### TLS ########################################################################

if [ ! -f "$CERTS/ca.pem" ]; then CERTS=$WORK/certs; sh "$TOP/tests/sandbox/mkcerts.sh" "$CERTS"; fi
sh "$TOP/tests/sandbox/mkcerts.sh" "$WORK/otherca"
start_platform tls --tunnels "$WORK/tunnels.json" --cert "$CERTS/server.pem" --key "$CERTS/server.key" \
	|| fail "TLS relay starts"
R=$PLATFORM_URL TLS_PID=$PLATFORM_PID
check "TLS relay serves wss://" grep -q '^wss://' <<<"$R"
device dev-tls tls --cacert "$CERTS/ca.pem"
await "TLS: agent connects over wss with --cacert" "$(dlog dev-tls)" ': connected$'
client tls1 "$(src tls)" --token-file "$(tokfile tls1 src-tls)" --cacert "$CERTS/ca.pem"
await "TLS: client with --cacert verifies and opens" "$WORK/tls1.out" '^open$'
await "TLS: connect_tunnel over wss" "$WORK/tls1.out" '^recv connect_tunnel '
client tls2 "$(src tls)" --token-file "$(tokfile tls2 src-tls)" --cacert "$WORK/otherca/ca.pem"
await "TLS: wrong CA: handshake fails" "$WORK/tls2.out" '^error '
exited "TLS: wrong CA: client exits" "${CPID[tls2]}"
absent "TLS: wrong CA: never opens" "$WORK/tls2.out" '^open$'
client tls3 "$(src tls)" --token-file "$(tokfile tls3 src-tls)"
await "TLS: no CA given: the system store rejects the sandbox CA" "$WORK/tls3.out" '^error '

#### fault injection ###########################################################

# --delay-ms: everything the relay sends is held back; --cut-after app:N: the
# app's TCP connection is dropped after N of its messages were relayed.
start_platform faults --tunnels "$WORK/tunnels.json" --delay-ms 300 --cut-after app:2 \
	|| fail "fault relay starts"
R=$PLATFORM_URL
client fdev "$(dst cut)" --token-file "$(tokfile fdev dev-cut)"
client fapp "$(src cut)" --token-file "$(tokfile fapp src-cut)"
await "--delay-ms: connect_tunnel still arrives" "$WORK/fapp.out" '^recv connect_tunnel '
t0=$(date +%s%N)
say fapp "$(msg ping p-slow null)"
wait_for $T has_line "$WORK/fapp.out" '^recv pong p-slow '
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
check "--delay-ms 300: pong takes at least 300 ms (took $ms)" [ "$ms" -ge 300 ]
say fapp "$(msg command cut-1 '"a"')" "$(msg command cut-2 '"b"')" "$(msg command cut-3 '"c"')"
await "--cut-after app:2: both messages relayed first" "$WORK/fdev.out" '^recv command cut-2 '
await "--cut-after app:2: then the app's connection drops (1006)" "$WORK/fapp.out" '^closed 1006'
absent "--cut-after app:2: the third message is not relayed" "$WORK/fdev.out" 'cut-3'

# --stall-after N: after N relayed messages the relay reads nothing more.
start_platform stall --tunnels "$WORK/tunnels.json" --stall-after 1 || fail "stalling relay starts"
R=$PLATFORM_URL
client sdev "$(dst stall)" --token-file "$(tokfile sdev dev-stall)"
client sapp2 "$(src stall)" --token-file "$(tokfile sapp2 src-stall)"
await "--stall-after: connect_tunnel" "$WORK/sapp2.out" '^recv connect_tunnel '
say sapp2 "$(msg command st-1 '"a"')"
await "--stall-after 1: the first message is relayed" "$WORK/sdev.out" '^recv command st-1 '
say sapp2 "$(msg ping p-stall null)" '!ping'
if wait_for 1 has_line "$WORK/sapp2.out" '^(recv pong|pong-ws)'; then
	fail "--stall-after 1: then nothing is answered" "$(tail -n 3 "$WORK/sapp2.out")"
else
	ok "--stall-after 1: then nothing is answered (1 s)"
fi

#### ssh backend (a real sshd; needs root) ######################################

R=$MAIN_URL
trap 'sh "$SSHD_SH" stop "$WORK/sshd" >/dev/null 2>&1; cleanup' EXIT
sh "$SSHD_SH" start "$WORK/sshd" >"$WORK/sshd.out" 2>&1
rc=$?
if [ "$rc" = 3 ]; then
	echo "# skipped: ssh backend needs root ($(head -1 "$WORK/sshd.out"))"
elif [ "$rc" != 0 ]; then
	fail "sshd fixture starts" "$(cat "$WORK/sshd.out")"
else
	. "$WORK/sshd/env"
	start_device dev-ssh --url "$(dst ssh)" --token-file "$(tokfile ssh-dev dev-ssh)" \
		--backend ssh --ssh "127.0.0.1:$SSHD_PORT"
	client shapp "$(src ssh)" --token-file "$(tokfile shapp src-ssh)" --save h1 "$WORK/h1.bin"
	await "ssh: connect_tunnel" "$WORK/shapp.out" '^recv connect_tunnel '
	say shapp "$(login h1 "$SSH_USER" "$SSH_PASS")"
	await "ssh: login ok" "$WORK/dev-ssh.log" ': session h1: login ok$'
	await "ssh: connect_response \"success\"" "$WORK/shapp.out" '^recv connect_response h1 "success"$'
	say shapp "$(typed h1 'echo "ssh-""works"; stty size')"
	await "ssh: output" "$WORK/h1.bin" 'ssh-works'
	await "ssh: default PTY 128x30" "$WORK/h1.bin" "${SIZE_RE}30 128"
	say shapp "$(login h2 "$SSH_USER" not-the-password)"
	await "ssh: bad password gives disconnect 400" "$WORK/shapp.out" '^recv disconnect h2 \{"status_code":"400"'
	say shapp "$(typed h1 'exit')"
	await "ssh: exit gives disconnect 408" "$WORK/shapp.out" '^recv disconnect h1 \{"status_code":"408"'
fi

#### secrets stay out of the logs ##############################################

# ($WORK/*.log: every relay's and agent's stderr)
leaks=$(grep -laF -e "$PASS_OK" -e wrong-password -e api-secret -e src-order -e dev-order \
	-e src-sess -e "${RT_TOKEN:-no-token}" -e 'stty size' "$WORK"/*.log)
check "no token, password or keystroke in any relay or agent log" [ -z "$leaks" ]
[ -z "$leaks" ] || echo "# found in: $leaks"

finish
