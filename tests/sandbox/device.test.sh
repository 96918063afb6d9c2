#!/bin/bash
# tests/sandbox/device.test.sh: the sandbox device agent (tunnel-device) on its
# own terms: command line, connection lifecycle against the relay (connect,
# refusals, reconnect, normal close, SIGTERM), one pty session end to end, and
# the sshd fixture (tests/sandbox/sshd.sh).  The protocol in depth (sessions,
# profiles, the ssh backend) is sandbox.test.sh's.  Run: sh tests/run.sh device
#
# Every wait is on an event (a log line, an output line, a process exit).
source "$(dirname "$0")/../lib.sh"

DEVICE=${TUNNEL_DEVICE:-$DEVICE}	# e.g. a sanitizer build, without touching the shared one
CLIENT=$TOP/tests/sandbox/tunnel-client
SSHD_SH=$TOP/tests/sandbox/sshd.sh
T=10	# seconds an awaited event may take before the check fails

[ -x "$DEVICE" ] || { fail "built: $DEVICE" "run: make tests/sandbox/tunnel-device"; finish; }

# await NAME FILE REGEX: ok once FILE has a line matching REGEX
await() {
	if wait_for "$T" has_line "$2" "$3"; then ok "$1"; else fail "$1" "no /$3/ in $2:" "$(tail -5 "$2" 2>/dev/null)"; fi
}
exited() { ! kill -0 "$1" 2>/dev/null; }
# await_exit NAME PID STATUS: ok once PID has exited with STATUS
await_exit() {
	local st
	if ! wait_for "$T" exited "$2"; then fail "$1" "pid $2 still running"; return; fi
	wait "$2"
	st=$?
	if [ "$st" -eq "$3" ]; then ok "$1"; else fail "$1" "exit status $st, want $3"; fi
}

#### command line ##############################################################

out=$("$DEVICE" --help 2>&1)
check "--help exits 0" [ $? -eq 0 ]
check "--help documents the log lines" grep -q 'session REQID: login ok' <<< "$out"
check "--help says the pty backend refuses logins without --login-file" grep -q 'Without' <<< "$out"

echo 'not a notify' > "$WORK/bad.json"
printf '%0257d' 0 > "$WORK/long.token"
U=ws://127.0.0.1:1/v5/iot/tunnels/t/device-connect
# bad_option NAME STDERR-REGEX ARGS...: exit 2, a message and the usage on stderr
bad_option() {
	local name=$1 re=$2 st
	shift 2
	"$DEVICE" "$@" > "$WORK/opt.out" 2> "$WORK/opt.err"
	st=$?
	if [ $st -eq 2 ] && grep -qE -- "$re" "$WORK/opt.err" && grep -q '^usage:' "$WORK/opt.err"; then
		ok "bad option: $name"
	else
		fail "bad option: $name" "exit $st (want 2), stderr:" "$(head -3 "$WORK/opt.err")"
	fi
}
bad_option "unknown option" "unknown option '--bogus'" --bogus
bad_option "stray argument" "unexpected argument" foo
bad_option "missing value" "needs a value" --url
bad_option "flag with a value" "takes no value" --insecure=1 --url "$U" --token t
bad_option "no token" "exactly one of" --url "$U"
bad_option "two tokens" "exactly one of" --url "$U" --token t --token-file "$WORK/long.token"
bad_option "no URL" "--url is missing" --token t
bad_option "token with a space" "printable" --url "$U" --token "a b"
bad_option "token over 256" "printable" --url "$U" --token-file "$WORK/long.token"
bad_option "unreadable token file" "cannot read the token file" --url "$U" --token-file "$WORK/none"
bad_option "http URL" "bad URL" --url http://127.0.0.1/x --token t
bad_option "unknown backend" "unknown backend" --url "$U" --token t --backend telnet
bad_option "unknown profile" "unknown profile" --url "$U" --token t --profile go-sdk
bad_option "bad --ssh" "bad --ssh" --url "$U" --token t --ssh nohost
bad_option "bad --ssh port" "bad --ssh" --url "$U" --token t --ssh 127.0.0.1:99999
bad_option "notify file of another shape" "not a tunnel_notify" --notify "$WORK/bad.json"
bad_option "notify plus --url" "drop --url" --notify "$WORK/bad.json" --url "$U"
bad_option "unreadable login file" "cannot read the login file" --url "$U" --token t --login-file "$WORK/none"
bad_option "unreadable CA file" "cannot read the CA file" --url "$U" --token t --cacert "$WORK/none"

#### against the relay #########################################################

if [ ! -x "$PLATFORM" ]; then
	fail "built: $PLATFORM" "run: make tests/sandbox/tunnel-platform"
	finish
fi
umask 077
printf 'dev-token+/=\n' > "$WORK/dev.token"
echo "app-token" > "$WORK/app.token"
echo "admin-$RANDOM" > "$WORK/api.token"
echo "tester:pw-$RANDOM" > "$WORK/logins"
cat > "$WORK/tunnels.json" <<EOF
[{"tunnel_id":"t1","device_id":"d1","source_token":"app-token","device_token":"dev-token+/=","expires_in":3600},
 {"tunnel_id":"t2","device_id":"d2","source_token":"app2","device_token":"dev2","expires_in":3600},
 {"tunnel_id":"t3","device_id":"d3","source_token":"app3","device_token":"dev3","expires_in":3600}]
EOF
PLATFORM_PORT=$(free_port)
start_platform relay --tunnels "$WORK/tunnels.json" --api-token-file "$WORK/api.token" || finish
dev_url() { echo "ws://127.0.0.1:$PLATFORM_PORT/v5/iot/tunnels/$1/device-connect"; }

start_device d1 --url "$(dev_url t1)" --token-file "$WORK/dev.token" --login-file "$WORK/logins"
D1=$DEVICE_PID
await "agent connects and logs it" "$WORK/d1.log" ': connected$'
check "no keystroke, password or token in the log" bash -c "! grep -qE 'dev-token|pw-' '$WORK/d1.log'"

# One pty session through the relay, end to end (details: sandbox.test.sh).
if [ -x "$CLIENT" ]; then
	mkfifo "$WORK/app.in"
	exec {APP}<>"$WORK/app.in"
	"$CLIENT" --url "ws://127.0.0.1:$PLATFORM_PORT/v5/iot/tunnels/t1/source-connect" \
		--token-file "$WORK/app.token" < "$WORK/app.in" > "$WORK/app.out" 2> "$WORK/app.err" &
	PIDS+=($!)
	pw=$(cut -d: -f2 "$WORK/logins")
	printf '%s\n' "{\"operation_type\":\"connect\",\"tunnel_service_type\":\"ssh\",\"request_id\":\"r1\",\"data\":{\"username\":\"tester\",\"password\":\"$pw\",\"cols\":99,\"rows\":33}}" >&$APP
	await "pty session: connect_response success" "$WORK/app.out" '^recv connect_response r1 "success"'
	await "pty session: agent logs login ok" "$WORK/d1.log" ': session r1: login ok$'
	printf '%s\n' '{"operation_type":"command","tunnel_service_type":"ssh","request_id":"r1","data":"stty size\r"}' >&$APP
	await "pty session: the PTY has the requested size" "$WORK/app.out" '33 99'
	printf '%s\n' '{"operation_type":"command","tunnel_service_type":"ssh","request_id":"r1","data":"exit\r"}' >&$APP
	await "pty session: shell exit sends disconnect 408" "$WORK/app.out" '^recv disconnect r1 .*"408"'
	await "pty session: agent logs the end" "$WORK/d1.log" ': session r1: ended$'
	check "pty session: the tunnel stays up" kill -0 "$D1"
else
	fail "built: $CLIENT" "run: make tests/sandbox/tunnel-client"
fi

# Relay gone: the agent reconnects with backoff, and gets back on when it returns.
kill "$PLATFORM_PID"
wait "$PLATFORM_PID" 2>/dev/null
await "relay gone: agent logs the close" "$WORK/d1.log" ': disconnected \(close 1006\)$'
await "relay gone: agent schedules a reconnect" "$WORK/d1.log" ': reconnecting in [0-9]+ ms$'
start_platform relay2 --tunnels "$WORK/tunnels.json" --api-token-file "$WORK/api.token" || finish
wait_for "$T" bash -c "[ \$(grep -c ': connected$' '$WORK/d1.log') -ge 2 ]"
check "relay back: agent connects again" [ "$(grep -c ': connected$' "$WORK/d1.log")" -ge 2 ]

# Tunnel closed through the REST API: close 1000, the agent leaves with 0.
curl -s -o /dev/null -X PUT -H "X-Auth-Token: $(cat "$WORK/api.token")" \
	"http://127.0.0.1:$PLATFORM_PORT/v5/iot/proj/tunnels/t1"
await "tunnel closed: agent logs close 1000" "$WORK/d1.log" ': disconnected \(close 1000\)$'
await_exit "tunnel closed: agent exits 0" "$D1" 0

# Refusals are final: no reconnect loop, a clear line, status 1.
echo wrong > "$WORK/wrong.token"
start_device d2 --url "$(dev_url t2)" --token-file "$WORK/wrong.token"
await "bad token: the agent says HTTP 401" "$WORK/d2.log" 'refused the device \(HTTP 401\); exiting$'
await_exit "bad token: agent exits 1" "$DEVICE_PID" 1
start_device d3 --url "$(dev_url no-such-tunnel)" --token dev3
await "unknown tunnel: the agent says HTTP 404" "$WORK/d3.log" 'refused the device \(HTTP 404\); exiting$'
await_exit "unknown tunnel: agent exits 1" "$DEVICE_PID" 1
check "refusals are not retried" bash -c "! grep -q reconnecting '$WORK/d2.log' '$WORK/d3.log'"

# --notify: URL and token from a tunnel_notify event of the documented shape.
cat > "$WORK/notify.json" <<EOF
{"object_device_id":"d3","services":[{"service_id":"\$tunnel_manager","event_type":"tunnel_notify",
 "event_time":"20240101T000000Z","paras":{"tunnel_uri":"$(dev_url t3)","tunnel_access_token":"dev3","expires_in":3600}}]}
EOF
start_device d4 --notify "$WORK/notify.json"
D4=$DEVICE_PID
await "--notify: agent connects" "$WORK/d4.log" ': connected$'
kill -TERM "$D4"
await_exit "SIGTERM: agent exits 0" "$D4" 0
check "SIGTERM: agent closes with 1001" has_line "$WORK/d4.log" ': disconnected \(close 1001\)$'

# --auth-close relays refuse with close 1002 after the upgrade.
PLATFORM_PORT=$(free_port)
start_platform relay-ac --tunnels "$WORK/tunnels.json" --auth-close || finish
start_device d5 --url "$(dev_url t2)" --token-file "$WORK/wrong.token"
await "close 1002: agent logs it" "$WORK/d5.log" ': disconnected \(close 1002\)$'
await_exit "close 1002: agent exits 1" "$DEVICE_PID" 1

# TLS: the sandbox CA through --cacert; without it the certificate is refused.
if [ -r "$CERTS/ca.pem" ]; then
	PLATFORM_PORT=$(free_port)
	start_platform relay-tls --tunnels "$WORK/tunnels.json" --cert "$CERTS/server.pem" --key "$CERTS/server.key" || finish
	tls_url="wss://localhost:$PLATFORM_PORT/v5/iot/tunnels/t3/device-connect"
	start_device d6 --url "$tls_url" --token dev3 --cacert "$CERTS/ca.pem"
	await "wss with --cacert: agent connects" "$WORK/d6.log" ': connected$'
	kill "$DEVICE_PID"
	start_device d7 --url "$tls_url" --token dev3
	await "wss without the CA: refused and retried" "$WORK/d7.log" ': reconnecting in [0-9]+ ms$'
	check "wss without the CA: never connected" bash -c "! grep -q ': connected$' '$WORK/d7.log'"
else
	fail "TLS" "no $CERTS/ca.pem: run make certs"
fi

#### the sshd fixture ##########################################################

if [ "$(id -u)" -ne 0 ]; then
	ok "sshd fixture # SKIP not root"
	finish
fi
out=$(runuser -u nobody -- sh "$SSHD_SH" start "$WORK/nobody-sshd" 2>&1)
st=$?
check "sshd.sh as a plain user: exit 3, says skipped" [ $st -eq 3 -a "$out" = "skipped: sshd tests need root" ]

SSHD_DIR=$WORK/sshd
if sh "$SSHD_SH" start "$SSHD_DIR" > "$WORK/sshd.out" 2>&1; then
	ok "sshd.sh start"
	. "$SSHD_DIR/env"
	check "sshd.sh: env is mode 600" [ "$(stat -c %a "$SSHD_DIR/env")" = 600 ]
	check "sshd.sh: it listens on 127.0.0.1:\$SSHD_PORT" bash -c "ss -Hltn 'sport = :$SSHD_PORT' | grep -q 127.0.0.1"
	check "sshd.sh: the user exists" id "$SSH_USER"
	sh "$SSHD_SH" stop "$SSHD_DIR"
	check "sshd.sh stop: the user is gone" bash -c "! id '$SSH_USER' 2>/dev/null"
	check "sshd.sh stop: nothing listens" bash -c "! ss -Hltn 'sport = :$SSHD_PORT' | grep -q ."
else
	fail "sshd.sh start" "$(tail -5 "$WORK/sshd.out")"
fi

finish
