# tests/lib.sh: sourced by every *.test.sh.  TAP-style results ("ok - NAME",
# "not ok - NAME" with "# why" lines), waiting on events instead of sleeping,
# the sandbox started on free ports, and cleanup of everything started.
set -u
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The programs under test; tests/run.sh points these at build/asan/ for the
# sanitizer pass.
PLATFORM=${TT_PLATFORM:-$TOP/tests/sandbox/tunnel-platform}
DEVICE=${TT_DEVICE:-$TOP/tests/sandbox/tunnel-device}
CLIENT=${TT_CLIENT:-$TOP/tests/sandbox/tunnel-client}
HOSTILE=${TT_HOSTILE:-$TOP/build/hostile-relay}
CONSOLE=${TT_CONSOLE:-$TOP/tunnel_tui}
CERTS=$TOP/build/certs
WORK=$(mktemp -d /tmp/tunnel_tui_test.XXXXXX)
PIDS=()
FAILS=0

cleanup() {	# kills what the test started, removes its scratch folder
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	for p in "$WORK"/tmux*.sock; do [ -S "$p" ] && tmux -S "$p" kill-server 2>/dev/null; done
	if [ "${FAILS:-0}" -gt 0 ]; then	# what a failure leaves, for a look: build/failed/TEST
		local keep=$TOP/build/failed/$(basename "$0" .test.sh)${ASAN:+-asan}
		rm -rf "$keep" && mkdir -p "$keep" && cp -r "$WORK"/. "$keep" 2>/dev/null
		echo "# its scratch folder: $keep"
	fi
	[ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

ok()   { echo "ok - $1"; }
fail() { echo "not ok - $1"; shift; [ $# -eq 0 ] || printf '%s\n' "$@" | sed 's/^/# /'; FAILS=$((FAILS + 1)); }
# check NAME CMD...: ok when CMD succeeds
check() { local n=$1; shift; if "$@"; then ok "$n"; else fail "$n" "failed: $*"; fi; }

# wait_for SECONDS CMD...: polls CMD (every 50 ms) until it succeeds; 1 on timeout.
# The deadline only bounds a hang; the event itself is what is awaited.
wait_for() {
	local deadline=$(( $(date +%s%N) / 1000000 + $1 * 1000 )); shift
	until "$@" 2>/dev/null; do
		[ $(( $(date +%s%N) / 1000000 )) -ge $deadline ] && return 1
		sleep 0.05
	done
}
has_line() { grep -qE -- "$2" "$1"; }	# has_line FILE REGEX

free_port() {	# a TCP port nothing listens on
	local p
	while :; do
		p=$(( 20000 + RANDOM % 30000 ))
		ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return; }
	done
}

# start_platform NAME ARGS...: starts the relay on PLATFORM_PORT or a free port (it prints
# "listening on URL"); sets PLATFORM_URL (ws[s]://127.0.0.1:PORT) and PLATFORM_LOG.
start_platform() {
	local name=$1; shift
	PLATFORM_LOG=$WORK/$name.log
	"$PLATFORM" --listen "127.0.0.1:${PLATFORM_PORT:-0}" "$@" > "$WORK/$name.out" 2> "$PLATFORM_LOG" &
	PIDS+=($!)
	PLATFORM_PID=$!
	wait_for 10 has_line "$WORK/$name.out" '^listening on ' || { echo "# platform did not start"; cat "$PLATFORM_LOG"; return 1; }
	PLATFORM_URL=$(sed -n 's/^listening on //p' "$WORK/$name.out" | head -1)
}

# start_device NAME ARGS...: starts a device agent, logs in $WORK/NAME.log; sets DEVICE_PID.
# Its shells get a HOME of their own: no personal dotfiles (they can stall).
start_device() {
	local name=$1; shift
	mkdir -p "$WORK/home"
	"$DEVICE" --home "$WORK/home" "$@" 2> "$WORK/$name.log" &
	PIDS+=($!)
	DEVICE_PID=$!
}

# Last line of every test script.  Any sanitizer report from the console,
# the relay or an agent (make test-asan) fails the script.
finish() {
	local f
	for f in "$WORK"/*.log "$WORK"/*.err; do
		[ -f "$f" ] && grep -q 'Sanitizer' "$f" && fail "no sanitizer report in $(basename "$f")" "$(grep -A20 -m1 Sanitizer "$f")"
	done
	exit $(( FAILS > 0 ))
}

# --- the console in tmux -------------------------------------------------
# tui_start COLSxROWS ARGS...: runs tunnel_tui in a private tmux server; the
# shell around it prints "EXIT=<status>" and the tty's modes when it ends.
# TUI_TMUX_CONF: a tmux config for the server (default none), read before
# the console runs (e.g. "set -g set-clipboard on" to catch OSC 52).
tui_start() {
	local size=$1; shift
	TUI_STARTS=$(( ${TUI_STARTS:-0} + 1 ))
	TMUX_SOCK=$WORK/tmux.$TUI_STARTS.sock	# a new server each time: no race with a dying one
	printf '%q ' "$CONSOLE" "$@" > "$WORK/tui.cmd"
	tmux -S "$TMUX_SOCK" -f "${TUI_TMUX_CONF:-/dev/null}" new-session -d -x "${size%x*}" -y "${size#*x}" \
		"sh -c '$(cat "$WORK/tui.cmd") 2>$WORK/tui.err; echo EXIT=\$?; stty -a; sleep 600'"
	tmux -S "$TMUX_SOCK" set-option -g status off >/dev/null
}
tui_keys()   { tmux -S "$TMUX_SOCK" send-keys "$@"; }	# tmux key names
tui_type()   { tmux -S "$TMUX_SOCK" send-keys -l "$1"; }	# literal text
tui_screen() { tmux -S "$TMUX_SOCK" capture-pane -p "$@"; }	# what the user sees
tui_has()    { tui_screen | grep -qE -- "$1"; }
tui_line_has() { tui_screen | sed -n "$1p" | grep -qE -- "$2"; }	# LINE REGEX
tui_lacks()  { ! tui_screen | grep -qE -- "$1"; }
# tui_wait REGEX [SECONDS]: until the screen shows REGEX (default 10 s)
tui_wait()   { wait_for "${2:-10}" tui_has "$1"; }
tui_resize() { tmux -S "$TMUX_SOCK" resize-window -x "$1" -y "$2"; }

# --- a whole sandbox ---------------------------------------------------------
# sandbox_up NAME:PROFILE[:EXPIRES]...: a TLS relay on PLATFORM_PORT (a free
# port) with one tunnel t-NAME per device (tokens expiring in EXPIRES s,
# default 3600), one agent each (pty backend, login field/$PASS; PROFILE
# "none" starts none), the REST API (token in $WORK/api.token), and
# $WORK/devices.conf for the console (sessions and pty left to auto: the
# console learns a c-sdk device's one session and 128x30 PTY from its
# connect_response); conf_extra NAME LINE adds a key.
PASS=${PASS:-pw-$RANDOM$RANDOM}
DEVICES=()
declare -A DEVICE_PIDS
conf_extra() { echo "$2" >> "$WORK/$1.extra"; }
sandbox_up() {
	local sep="" spec name expires
	umask 077
	echo "field:$PASS" > "$WORK/logins"
	echo "admin-$RANDOM$RANDOM" > "$WORK/api.token"
	printf '[' > "$WORK/tunnels.json"
	for spec in "$@"; do
		name=${spec%%:*}
		expires=${spec#*:*:}
		[ "$expires" = "$spec" ] && expires=3600
		DEVICES+=("$spec")
		head -c 18 /dev/urandom | base64 > "$WORK/$name.app"
		head -c 18 /dev/urandom | base64 > "$WORK/$name.dev"
		printf '%s{"tunnel_id":"t-%s","device_id":"%s","source_token":"%s","device_token":"%s","expires_in":%s}' \
			"$sep" "$name" "$name" "$(cat "$WORK/$name.app")" "$(cat "$WORK/$name.dev")" "$expires" >> "$WORK/tunnels.json"
		sep=,
	done
	echo ']' >> "$WORK/tunnels.json"
	PLATFORM_PORT=${PLATFORM_PORT:-$(free_port)}
	platform_up || return 1
	BASE=wss://localhost:$PLATFORM_PORT/v5/iot/tunnels
	for spec in "$@"; do
		expires=${spec#*:}	# now PROFILE[:EXPIRES]
		[ "${expires%%:*}" = none ] || device_up "${spec%%:*}" "${expires%%:*}"
	done
	write_devices_conf
}
platform_up() {	# (re)starts the relay of sandbox_up on the same port
	start_platform relay --cert "$CERTS/server.pem" --key "$CERTS/server.key" \
		--tunnels "$WORK/tunnels.json" --api-token-file "$WORK/api.token"
}
device_up() {	# device_up NAME PROFILE [ARGS...]: (re)starts the agent of t-NAME
	local n=$((${DEVICE_STARTS[$1]:-0} + 1))
	DEVICE_STARTS[$1]=$n
	start_device "$1-$n" --url "$BASE/t-$1/device-connect" --token-file "$WORK/$1.dev" \
		--backend pty --login-file "$WORK/logins" --profile "$2" --cacert "$CERTS/ca.pem" "${@:3}"
	DEVICE_PIDS[$1]=$DEVICE_PID
}
declare -A DEVICE_STARTS
write_devices_conf() {
	local spec name
	: > "$WORK/devices.conf"
	for spec in "${DEVICES[@]}"; do
		name=${spec%%:*}
		spec=${spec%:[0-9]*}
		{
			echo "[device $name]"
			echo "url = $BASE/t-$name/source-connect"
			echo "token_file = $WORK/$name.app"
			echo "username = field"
			echo "cacert = $CERTS/ca.pem"
			[ -f "$WORK/$name.extra" ] && cat "$WORK/$name.extra"
			echo
		} >> "$WORK/devices.conf"
	done
}
rest_close() {	# rest_close TUNNEL_ID: PUT closes it over the REST API
	curl -s -X PUT -H "X-Auth-Token: $(cat "$WORK/api.token")" -H 'Content-Type: application/json' \
		-d '{"status":"CLOSED"}' --cacert "$CERTS/ca.pem" \
		"https://localhost:$PLATFORM_PORT/v5/iot/p1/tunnels/$1"
}

# --- console helpers -------------------------------------------------------
tui_login() {	# the login dialog is open with the user prefilled: type $PASS
	tui_wait 'Enter log in' 5 || return 1
	tui_type "$PASS"
	tui_keys Enter
}
tui_run() {	# tui_run CMD MARK [SECONDS]: types CMD and Enter; waits for MARK on screen
	tui_type "$1"
	tui_keys Enter
	tui_wait "$2" "${3:-10}"
}

# --- the link emulator -------------------------------------------------------
# start_linkem NAME ARGS...: tests/sandbox/linkem (build/asan/linkem in the
# sanitizer pass, or $TT_LINKEM) on a free loopback port with ARGS (at least
# --to HOST:PORT); its log is $WORK/NAME.log.  Sets LINKEM_PORT, LINKEM_PID
# and LINKEM_LOG.
start_linkem() {
	local name=$1 bin=$TOP/tests/sandbox/linkem; shift
	[ -n "${ASAN:-}" ] && bin=$TOP/build/asan/linkem
	LINKEM_LOG=$WORK/$name.log
	"${TT_LINKEM:-$bin}" --listen 127.0.0.1:0 "$@" > "$WORK/$name.out" 2> "$LINKEM_LOG" &
	PIDS+=($!)
	LINKEM_PID=$!
	wait_for 10 has_line "$WORK/$name.out" '^listening on ' || { echo "# linkem did not start"; cat "$LINKEM_LOG"; return 1; }
	LINKEM_PORT=$(sed -n 's/^listening on .*://p' "$WORK/$name.out" | head -1)
}
