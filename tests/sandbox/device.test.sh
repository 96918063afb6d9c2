#!/bin/bash
# tests/sandbox/device.test.sh: the sandbox device agent (tunnel-device) on its
# own terms: command line, connection lifecycle against the relay (connect,
# refusals, reconnect, normal close, SIGTERM), one pty session end to end,
# --events (tunnels announced by tunnel_notify events on the MQTT stand-in),
# the c-sdk profile's fidelity to the official SDK (request_ids, message
# sizes, ignored messages, --wedge), bounded backlogs (Ctrl-C under a flood),
# --shell and --path (a busybox-only device), --run-as (a root agent's shells
# as a throwaway user; root only), and the sshd fixture (tests/sandbox/sshd.sh).  The protocol in depth (sessions, profiles, the
# ssh backend) is sandbox.test.sh's.
# Run: sh tests/run.sh device
#
# Every wait is on an event (a log line, an output line, a process exit).
source "$(dirname "$0")/../lib.sh"

DEVICE=${TUNNEL_DEVICE:-$DEVICE}	# e.g. a sanitizer build, without touching the shared one
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
check "--help documents --events" grep -q -- '--events URL' <<< "$out"
check "--help documents the events log lines" grep -q 'tunnel_notify for tunnel T' <<< "$out"
check "--help documents --wedge and its log lines" grep -q 'wedged: stale 408 sent' <<< "$out"
check "--help documents --run-as" grep -q -- '--run-as USER' <<< "$out"

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
bad_option "unknown --wedge" "unknown --wedge 'sometimes'" --url "$U" --token t --profile c-sdk --wedge sometimes
bad_option "--wedge with the full profile" "--wedge needs --profile c-sdk" --url "$U" --token t --wedge 408
bad_option "--shell not absolute" "--shell sh is not an absolute path" --url "$U" --token t --shell sh
bad_option "--shell no program" "is not an absolute path to a program" --url "$U" --token t --shell "$WORK/none"
bad_option "--shell with the ssh backend" "--shell and --path go with --backend pty" --url "$U" --token t --backend ssh --shell /bin/sh
bad_option "--path empty" "--path is empty" --url "$U" --token t --path ''
bad_option "bad --ssh" "bad --ssh" --url "$U" --token t --ssh nohost
bad_option "bad --ssh port" "bad --ssh" --url "$U" --token t --ssh 127.0.0.1:99999
bad_option "notify file of another shape" "not a tunnel_notify" --notify "$WORK/bad.json"
bad_option "notify plus --url" "drop --url" --notify "$WORK/bad.json" --url "$U"
bad_option "unreadable login file" "cannot read the login file" --url "$U" --token t --login-file "$WORK/none"
bad_option "unreadable CA file" "cannot read the CA file" --url "$U" --token t --cacert "$WORK/none"
E=ws://127.0.0.1:1/sandbox/devices/d1/events
bad_option "--events without --device-id" "--events needs --device-id" --events "$E"
bad_option "--events with --url" "--events excludes --url" --events "$E" --device-id d1 --url "$U"
bad_option "--events with --token" "--events excludes --token$" --events "$E" --device-id d1 --token t
bad_option "--events with --token-file" "--events excludes --token-file" --events "$E" --device-id d1 --token-file "$WORK/long.token"
bad_option "--events with --notify" "--events excludes --notify" --events "$E" --device-id d1 --notify "$WORK/bad.json"
bad_option "--device-id without --events" "--device-id goes with --events" --url "$U" --token t --device-id d1
bad_option "bad --device-id" "bad --device-id" --events "$E" --device-id "d 1"
bad_option "--device-id over 128" "bad --device-id" --events "$E" --device-id "$(printf '%0129d' 0)"
bad_option "http --events URL" "bad URL" --events http://127.0.0.1/sandbox/devices/d1/events --device-id d1

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
# (--device-auth http: the refusals below are HTTP 401/404, not the default close 1002)
start_platform relay2 --tunnels "$WORK/tunnels.json" --api-token-file "$WORK/api.token" --device-auth http || finish
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

#### --events: tunnels announced on the events channel ########################

# The MQTT stand-in.  The relay serves it at /sandbox/devices/ID/events once it
# has the route (its --help names it): then POST /v5/iot/{project}/tunnels
# announces the tunnel there itself, and the lifecycle below runs end to end.
# Without it, and for what a relay never sends (malformed events, stale
# tunnels, a tunnel that never answers), a stand-in events server plays that
# part: it sends the relay's own tunnel_notify (GET /sandbox/tunnels/ID/notify).
# EVENTS_STANDIN=1 runs the lifecycle on the stand-in even if the relay has it.
cat > "$WORK/standin.py" <<'PYEOF'
# The events stand-in: serves ws[s]://127.0.0.1:PORT/sandbox/devices/ID/events,
# one connection per device id (a newer one replaces the older: close 4000),
# and sends what stdin says.  It also serves /v5/iot/tunnels/ID/device-connect
# as a scripted platform: what a relay never sends a device (a ping) goes there;
# or a slow one, to measure the device's own backlog.
# Usage: python3 standin.py PORT [CERT KEY]
# stdin:  send ID TEXT | close ID CODE | drop ID (TCP cut, no close frame)
#         slow ID BPS NEEDLE (read ID's text frames at BPS bytes a second,
#         count them instead of printing) | mark ID LABEL
# stdout: silent on PORT (a socket that listens and never answers)
#         listening on ws[s]://127.0.0.1:PORT
#         connected ID [token header] | replaced ID | closed ID CODE | gone ID
#         sent ID | no ID | text ID FRAME (received; CR, LF shown as spaces)
#         slow: counted ID MIB (each MiB) | found ID N (a frame with NEEDLE,
#         N bytes counted with it) | mark ID LABEL N (N counted so far)
import base64, hashlib, socket, ssl, struct, sys, threading, time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
lock = threading.Lock()
chans = {}        # device id -> its current socket
closing = set()   # sockets we sent a close frame on
slow = {}         # id -> (bytes a second, needle) of a slow reader
counted = {}      # id -> text frame bytes a slow reader took in


def log(*words):
    print(*words, flush=True)


def frame(op, payload):  # one unmasked frame, FIN set
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | op, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | op, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | op, 127, n)
    return head + payload


def send_close(s, code):
    with lock:
        closing.add(s)
    try:
        s.sendall(frame(8, struct.pack("!H", code)))
    except OSError:
        pass


def read_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return b


def read_frame(s):  # (opcode, unmasked payload)
    h = read_exact(s, 2)
    n = h[1] & 127
    if n == 126:
        n = struct.unpack("!H", read_exact(s, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(s, 8))[0]
    mask = read_exact(s, 4) if h[1] & 128 else b"\0\0\0\0"
    return h[0] & 15, bytes(b ^ mask[i % 4] for i, b in enumerate(read_exact(s, n)))


def handshake(s):  # (device id, token header sent?); (None, _) after a 404
    req = b""
    while b"\r\n\r\n" not in req:
        c = s.recv(4096)
        if not c:
            return None, False
        req += c
    lines = req.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")[1].split("/")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
    events = len(parts) == 5 and parts[1:3] == ["sandbox", "devices"] and parts[4] == "events"
    tunnel = len(parts) == 6 and parts[1:4] == ["v5", "iot", "tunnels"] and parts[5] == "device-connect"
    if not events and not tunnel:
        s.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        return None, False
    acc = base64.b64encode(hashlib.sha1(hdrs["sec-websocket-key"].encode() + GUID).digest())
    s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
    return parts[3 if events else 4], "tunnel_access_token" in hdrs


def text(dev, data):  # a text frame: printed, or counted by a slow reader
    with lock:
        mode, had = slow.get(dev), counted.get(dev, 0)
        counted[dev] = had + len(data)
    if not mode:
        log("text", dev, data.decode("utf-8", "replace").replace("\r", " ").replace("\n", " "))
        return
    if (had + len(data)) >> 20 > had >> 20:
        log("counted", dev, (had + len(data)) >> 20)
    if mode[1] in data:
        log("found", dev, had + len(data))
    time.sleep(len(data) / mode[0])


def pump(s, dev):  # reads until the close: answers PINGs and the close
    while True:
        op, data = read_frame(s)
        if op == 9:
            s.sendall(frame(10, data))
        elif op == 1:
            text(dev, data)
        elif op == 8:
            log("closed", dev, struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005)
            if s not in closing:
                s.sendall(frame(8, data[:2]))
            return


def serve(s, tls):
    try:
        s = tls.wrap_socket(s, server_side=True) if tls else s
        dev, auth = handshake(s)
    except Exception:  # TLS refused, HTTP garbage: drop it
        dev = None
    if dev is None:
        s.close()
        return
    with lock:
        old, chans[dev] = chans.get(dev), s
    if old:
        log("replaced", dev)
        send_close(old, 4000)
    log("connected", dev, "token header" if auth else "")
    try:
        pump(s, dev)
    except (EOFError, OSError):
        log("gone", dev)
    with lock:
        if chans.get(dev) is s:
            del chans[dev]
        closing.discard(s)
    s.close()


def accept_loop(srv, tls):
    while True:
        s, _ = srv.accept()
        threading.Thread(target=serve, args=(s, tls), daemon=True).start()


def command(line):  # one stdin line
    verb, dev, rest = (line.rstrip("\n").split(" ", 2) + ["", ""])[:3]
    with lock:
        s = chans.get(dev)
    if not s:
        log("no", dev)
    elif verb == "send":
        s.sendall(frame(1, rest.encode()))
        log("sent", dev)
    elif verb == "close":
        send_close(s, int(rest))
    elif verb == "drop":
        s.shutdown(socket.SHUT_RDWR)
    elif verb == "slow":
        bps, needle = rest.split(" ", 1)
        with lock:
            slow[dev], counted[dev] = (int(bps), needle.encode()), 0
    elif verb == "mark":
        with lock:
            log("mark", dev, rest, counted.get(dev, 0))


def main():
    srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)  # a slow reader holds little
    silent = socket.create_server(("127.0.0.1", 0))
    tls = None
    if len(sys.argv) > 3:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(sys.argv[2], sys.argv[3])
    log("silent on", silent.getsockname()[1])
    log("listening on %s://127.0.0.1:%d" % ("wss" if tls else "ws", srv.getsockname()[1]))
    threading.Thread(target=accept_loop, args=(srv, tls), daemon=True).start()
    for line in sys.stdin:
        command(line)


main()
PYEOF

# start_standin NAME [CERT KEY]: sets SI_FD (write commands there), SI_OUT, SI_PORT, SI_SILENT
start_standin() {
	local name=$1; shift
	SI_OUT=$WORK/$name.out
	mkfifo "$WORK/$name.in"
	exec {SI_FD}<>"$WORK/$name.in"
	python3 "$WORK/standin.py" 0 "$@" < "$WORK/$name.in" > "$SI_OUT" 2> "$WORK/$name.err" &
	PIDS+=($!)
	wait_for 10 has_line "$SI_OUT" '^listening on ' || { fail "stand-in $name starts" "$(cat "$WORK/$name.err")"; return 1; }
	SI_PORT=$(sed -n 's/^listening on wss*:\/\/127.0.0.1://p' "$SI_OUT")
	SI_SILENT=$(sed -n 's/^silent on //p' "$SI_OUT")
}
si() { echo "$*" >&"$SI_FD"; }	# si send|close|drop DEVICE [ARG]: a stand-in command
si_url() { echo "ws://127.0.0.1:$SI_PORT/sandbox/devices/$1/events"; }
field() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p"; }	# field NAME < flat JSON
line_of() { grep -nE -- "$2" "$1" | tail -1 | cut -d: -f1; }	# line_of FILE REGEX: the last match's number
# await_count NAME FILE REGEX N: ok once FILE has N lines matching REGEX
await_count() {
	if wait_for "$T" bash -c "[ \$(grep -cE -- '$3' '$2') -ge $4 ]"; then ok "$1"
	else fail "$1" "want $4 /$3/ in $2:" "$(tail -5 "$2")"; fi
}
api() { curl -s -H "X-Auth-Token: $(cat "$WORK/api.token")" "$@"; }
# new_tunnel DEVICE: creates one over REST (the app's side in $WORK/tunnel.json) and has
# it announced on DEVICE's channel (by the relay itself, else the stand-in); sets TID
new_tunnel() {
	api -X POST -H 'Content-Type: application/json' -d "{\"device_id\":\"$1\"}" \
		"$REST/v5/iot/p1/tunnels" > "$WORK/tunnel.json"
	TID=$(field tunnel_id < "$WORK/tunnel.json")
	api "$REST/sandbox/tunnels/$TID/notify" > "$WORK/$TID.event"
	field tunnel_access_token < "$WORK/$TID.event" >> "$WORK/device.tokens"
	[ -n "$RELAY_EVENTS" ] || si send "$1" "$(cat "$WORK/$TID.event")"
}
# announce DEVICE EVENT-FILE: the stand-in sends that event, re-addressed to DEVICE
announce() { si send "$1" "$(sed "s/\"object_device_id\":\"[^\"]*\"/\"object_device_id\":\"$1\"/" "$2")"; }

PLATFORM_PORT=$(free_port)
start_platform relay-ev --api-token-file "$WORK/api.token" || finish
REST=http://127.0.0.1:$PLATFORM_PORT
: > "$WORK/device.tokens"
RELAY_EVENTS=
[ -n "${EVENTS_STANDIN:-}" ] || ! "$PLATFORM" --help 2>&1 | grep -q '/sandbox/devices' || RELAY_EVENTS=1
HAVE_SI=
command -v python3 > /dev/null && start_standin si && HAVE_SI=1
if [ -n "$RELAY_EVENTS" ]; then
	ev_url() { echo "ws://127.0.0.1:$PLATFORM_PORT/sandbox/devices/$1/events"; }
	echo "# --events lifecycle: end to end, the relay announces tunnels"
else
	ev_url() { si_url "$1"; }
	echo "# --events lifecycle: a stand-in announces (the relay has no /sandbox/devices route, or EVENTS_STANDIN)"
fi

if [ -z "$RELAY_EVENTS$HAVE_SI" ]; then
	ok "--events lifecycle # SKIP no relay events route and no python3 for a stand-in"
else
	start_device e1 --device-id dev1 --events "$(ev_url dev1)" --login-file "$WORK/logins"
	E1=$DEVICE_PID
	await "--events: the channel comes up" "$WORK/e1.log" ': events channel connected$'
	check "--events: no tunnel before an event" bash -c "! grep -q ': connected$' '$WORK/e1.log'"

	new_tunnel dev1; T1=$TID
	await "event 1: agent logs tunnel_notify with the tunnel id" "$WORK/e1.log" ": tunnel_notify for tunnel $T1\$"
	await "event 1: agent connects" "$WORK/e1.log" ': connected$'
	await "event 1: the relay has the device on that tunnel" "$PLATFORM_LOG" "tunnel $T1: device connected"

	api -o /dev/null -X PUT "$REST/v5/iot/p1/tunnels/$T1"
	await "tunnel closed: agent logs close 1000" "$WORK/e1.log" ': disconnected \(close 1000\)$'
	await "tunnel closed: agent waits for the next event" "$WORK/e1.log" \
		': the platform closed the tunnel \(close 1000\); waiting for the next tunnel_notify$'
	check "tunnel closed: agent stays up" kill -0 "$E1"

	new_tunnel dev1; T2=$TID
	await "event 2: agent logs it" "$WORK/e1.log" ": tunnel_notify for tunnel $T2\$"
	await_count "event 2: agent connects again" "$WORK/e1.log" ': connected$' 2
	await "event 2: the relay has the device on the new tunnel" "$PLATFORM_LOG" "tunnel $T2: device connected"

	# A session on T2, then event 3 while it runs: session ended, T2 closed, T3 opened.
	field tunnel_access_token < "$WORK/tunnel.json" > "$WORK/src2.token"
	mkfifo "$WORK/app2.in"
	exec {APP2}<>"$WORK/app2.in"
	"$CLIENT" --url "$(field tunnel_uri < "$WORK/tunnel.json")" --token-file "$WORK/src2.token" \
		< "$WORK/app2.in" > "$WORK/app2.out" 2> "$WORK/app2.err" &
	PIDS+=($!)
	pw=$(cut -d: -f2 "$WORK/logins")
	printf '%s\n' "{\"operation_type\":\"connect\",\"tunnel_service_type\":\"ssh\",\"request_id\":\"e1\",\"data\":{\"username\":\"tester\",\"password\":\"$pw\"}}" >&$APP2
	await "event 2: a session runs on the tunnel" "$WORK/e1.log" ': session e1: login ok$'
	new_tunnel dev1; T3=$TID
	await "event 3: agent closes the current tunnel for it" "$WORK/e1.log" ": closing tunnel $T2 for the new one\$"
	await "event 3: the session on the old tunnel ends" "$WORK/e1.log" ': session e1: ended$'
	await_count "event 3: the old tunnel closes with 1000" "$WORK/e1.log" ': disconnected \(close 1000\)$' 2
	await "event 3: the relay sees the device leave the old tunnel" "$PLATFORM_LOG" "tunnel $T2: device gone"
	await "event 3: the app of the old tunnel is told (410)" "$WORK/app2.out" '^recv disconnect .*410'
	closing=$(line_of "$WORK/e1.log" "closing tunnel $T2")
	ended=$(line_of "$WORK/e1.log" 'session e1: ended')
	closed=$(line_of "$WORK/e1.log" 'disconnected \(close 1000\)')
	check "event 3: the session ends first, then the old tunnel closes" \
		[ "${closing:-0}" -lt "${ended:-0}" -a "${ended:-0}" -lt "${closed:-0}" ]
	await "event 3: the relay has the device on the new tunnel" "$PLATFORM_LOG" "tunnel $T3: device connected"
	await_count "event 3: agent connected 3 times" "$WORK/e1.log" ': connected$' 3
	check "events: the tunnel never retried on its own" bash -c "! grep -q ': reconnecting in' '$WORK/e1.log'"

	# A second agent for dev1 replaces this one: close 4000 on the channel, exit 1.
	start_device e1b --device-id dev1 --events "$(ev_url dev1)" --login-file "$WORK/logins"
	E1B=$DEVICE_PID
	await "replaced: the old agent logs close 4000" "$WORK/e1.log" ': events channel closed \(close 4000\)$'
	await "replaced: ... and says why it exits" "$WORK/e1.log" \
		': events channel: replaced by a newer agent of this device \(close 4000\); exiting$'
	await "replaced: its tunnel closes with 1001" "$WORK/e1.log" ': disconnected \(close 1001\)$'
	await_exit "replaced: the old agent exits 1" "$E1" 1
	await "replaced: the new agent is on the channel" "$WORK/e1b.log" ': events channel connected$'
	kill -TERM "$E1B"
	await_exit "--events SIGTERM: agent exits 0" "$E1B" 0
	check "--events SIGTERM: the channel closes with 1001" has_line "$WORK/e1b.log" ': events channel closed \(close 1001\)$'
fi

if [ -z "$HAVE_SI" ]; then
	ok "--events against the stand-in # SKIP no python3"
else
	start_device e2 --device-id dev2 --events "$(si_url dev2)" --login-file "$WORK/logins"
	E2=$DEVICE_PID
	await "stand-in: agent on the channel" "$WORK/e2.log" ': events channel connected$'
	await "stand-in: no token header on the events channel" "$SI_OUT" '^connected dev2 $'

	# Malformed events are dropped, one line each; another device's is ignored.
	si send dev2 'not JSON at all'
	await_count "malformed: not JSON" "$WORK/e2.log" ': dropped a malformed event$' 1
	si send dev2 '{"object_device_id":"dev2","services":[{"event_type":"tunnel_notify","paras":{"tunnel_uri":"ws://127.0.0.1:1/v5/iot/tunnels/x/device-connect"}}]}'
	await_count "malformed: no token" "$WORK/e2.log" ': dropped a malformed event$' 2
	si send dev2 '{"object_device_id":"dev2","services":[{"event_type":"tunnel_notify","paras":{"tunnel_uri":"http://127.0.0.1:1/x","tunnel_access_token":"t"}}]}'
	await_count "malformed: not a ws:// URI" "$WORK/e2.log" ': dropped a malformed event$' 3
	si send dev2 '{"services":[{"event_type":"tunnel_notify","paras":{"tunnel_uri":"ws://127.0.0.1:1/v5/iot/tunnels/x/device-connect","tunnel_access_token":"t"}}]}'
	await_count "malformed: no object_device_id" "$WORK/e2.log" ': dropped a malformed event$' 4
	si send dev2 '{"object_device_id":"dev2","services":[{"event_type":"tunnel_notify","paras":{"tunnel_uri":"ws://127.0.0.1:1/v5/iot/tunnels/x/device-connect","tunnel_access_token":"a b"}}]}'
	await_count "malformed: a token with a space" "$WORK/e2.log" ': dropped a malformed event$' 5
	si send dev2 '{"object_device_id":"someone-else","services":[{"event_type":"tunnel_notify","paras":{"tunnel_uri":"ws://127.0.0.1:1/v5/iot/tunnels/x/device-connect","tunnel_access_token":"t"}}]}'
	await "another device's event: ignored" "$WORK/e2.log" ': tunnel_notify for device someone-else; ignored$'
	check "none of them opened a tunnel" bash -c "! grep -qE 'tunnel_notify for tunnel|connection failed' '$WORK/e2.log'"
	check "the agent is still up" kill -0 "$E2"

	# A closed tunnel's event: refused (close 1002, the relay's default for devices), and the agent waits on.
	[ -n "${T1:-}" ] || { new_tunnel dev2; T1=$TID; api -o /dev/null -X PUT "$REST/v5/iot/p1/tunnels/$T1"; }
	announce dev2 "$WORK/$T1.event"
	await "stale event: refused, waiting" "$WORK/e2.log" \
		': the platform refused the device token \(close 1002\); waiting for the next tunnel_notify$'
	check "stale event: agent stays up" kill -0 "$E2"

	# A tunnel that never answers the upgrade, then a good event: the attempt is dropped for it.
	si send dev2 "{\"object_device_id\":\"dev2\",\"services\":[{\"event_type\":\"tunnel_notify\",\"paras\":{\"tunnel_uri\":\"ws://127.0.0.1:$SI_SILENT/v5/iot/tunnels/silent/device-connect\",\"tunnel_access_token\":\"t\"}}]}"
	await "silent tunnel: agent tries it" "$WORK/e2.log" ': tunnel_notify for tunnel silent$'
	new_tunnel dev2; T4=$TID
	[ -z "$RELAY_EVENTS" ] || announce dev2 "$WORK/$T4.event"
	await "a newer event drops the pending attempt" "$WORK/e2.log" ': connection failed: abandoned before the upgrade$'
	await "... and connects to the new tunnel at once" "$PLATFORM_LOG" "tunnel $T4: device connected"

	# The channel goes down (TCP cut, close 1000): reconnects with backoff; the tunnel stays.
	si drop dev2
	await "channel cut: agent logs close 1006" "$WORK/e2.log" ': events channel closed \(close 1006\)$'
	await "channel cut: agent schedules a reconnect" "$WORK/e2.log" ': events channel reconnecting in [0-9]+ ms$'
	await_count "channel cut: agent is back on the channel" "$WORK/e2.log" ': events channel connected$' 2
	si close dev2 1000
	await "channel closed 1000: agent logs it" "$WORK/e2.log" ': events channel closed \(close 1000\)$'
	await_count "channel closed 1000: agent reconnects all the same" "$WORK/e2.log" ': events channel connected$' 3
	# (since T4's event: the stale event's refusal, a close 1002, came before it)
	check "the tunnel stayed up meanwhile" bash -c "grep -q 'tunnel_notify for tunnel $T4\$' '$WORK/e2.log' && ! sed -n '/tunnel_notify for tunnel $T4\$/,\$p' '$WORK/e2.log' | grep -q ': disconnected' && ! grep -q 'tunnel $T4: device gone' '$PLATFORM_LOG'"

	kill -TERM "$E2"
	await_exit "SIGTERM: the agent exits 0" "$E2" 0
	check "SIGTERM: the tunnel closes with 1001" has_line "$WORK/e2.log" ': disconnected \(close 1001\)$'
	await "SIGTERM: the stand-in gets close 1001" "$SI_OUT" '^closed dev2 1001$'

	# Fixed mode too: a tunnel URL that never answers the upgrade is given up
	# (lws frees it without a connection error) and retried, not waited on forever.
	start_device f1 --url "ws://127.0.0.1:$SI_SILENT/v5/iot/tunnels/silent/device-connect" --token t
	T=20 await "a silent platform: the attempt is given up" "$WORK/f1.log" \
		': connection failed: abandoned before the upgrade$'	# lws: after 5 s
	await "a silent platform: and retried" "$WORK/f1.log" ': reconnecting in [0-9]+ ms$'
	kill "$DEVICE_PID"

	# A wrong events path: refused (HTTP 404), retried all the same.
	start_device e3 --device-id dev3 --events "ws://127.0.0.1:$SI_PORT/no/such/path"
	E3=$DEVICE_PID
	await "events channel refused: retried" "$WORK/e3.log" ': events channel reconnecting in [0-9]+ ms$'
	check "events channel refused: agent stays up" kill -0 "$E3"
	kill "$E3"

	# wss://: --cacert applies to the events channel.
	if [ -r "$CERTS/ca.pem" ]; then
		start_standin si-tls "$CERTS/server.pem" "$CERTS/server.key"
		start_device e4 --device-id dev4 --events "wss://localhost:$SI_PORT/sandbox/devices/dev4/events" --cacert "$CERTS/ca.pem"
		await "wss events channel with --cacert: connected" "$WORK/e4.log" ': events channel connected$'
		kill "$DEVICE_PID"
		start_device e5 --device-id dev5 --events "wss://localhost:$SI_PORT/sandbox/devices/dev5/events"
		await "wss events channel without the CA: refused and retried" "$WORK/e5.log" ': events channel reconnecting in [0-9]+ ms$'
		check "wss events channel without the CA: never connected" bash -c "! grep -q 'events channel connected' '$WORK/e5.log'"
		kill "$DEVICE_PID"
	fi
fi
check "--events: no device token, password or keystroke in the logs" \
	bash -c "! grep -qFf '$WORK/device.tokens' '$WORK'/e*.log && ! grep -q 'pw-' '$WORK'/e*.log"

#### the c-sdk profile: what the official C device does ######################

# README Protocol §4 (routing) and §8.  A relay of its own: a c-sdk message can
# be 12428 bytes, over the relay's default limit.  One tunnel per scenario.
for t in c1 w1 w2 w3 f1 f2 b1 b2 r1 r2; do
	printf '{"tunnel_id":"%s","device_id":"%s","source_token":"src-%s","device_token":"dev-%s","expires_in":3600}\n' "$t" "$t" "$t" "$t"
done | paste -sd, | sed 's/.*/[&]/' > "$WORK/csdk-tunnels.json"
PLATFORM_PORT=$(free_port)
start_platform relay-csdk --tunnels "$WORK/csdk-tunnels.json" --max-message 16384 || finish
CS_RELAY=$PLATFORM_PID
pw=$(cut -d: -f2 "$WORK/logins")
declare -A AFD	# app name -> the fd its stdin is written through
# app NAME TUNNEL [ARGS...]: tunnel-client as TUNNEL's app; events in $WORK/NAME.out
app() {
	local name=$1 t=$2 fd
	shift 2
	mkfifo "$WORK/$name.in"
	exec {fd}<>"$WORK/$name.in"
	echo "src-$t" > "$WORK/$name.tok"
	"$CLIENT" --url "ws://127.0.0.1:$PLATFORM_PORT/v5/iot/tunnels/$t/source-connect" --token-file "$WORK/$name.tok" \
		"$@" < "$WORK/$name.in" > "$WORK/$name.out" 2> "$WORK/$name.err" &
	PIDS+=($!)
	AFD[$name]=$fd
}
to() { local n=$1; shift; printf '%s\n' "$@" >&"${AFD[$n]}"; }	# to APP LINE...: its stdin
csdk() {	# csdk NAME TUNNEL [ARGS...]: a c-sdk agent on TUNNEL
	local n=$1 t=$2
	shift 2
	echo "dev-$t" > "$WORK/$n.tok"
	start_device "$n" --url "$(dev_url "$t")" --token-file "$WORK/$n.tok" --login-file "$WORK/logins" --profile c-sdk "$@"
}
msg() { printf '{"operation_type":"%s","tunnel_service_type":"ssh","request_id":"%s","data":%s}' "$1" "$2" "$3"; }
login() { msg connect "$1" "{\"username\":\"tester\",\"password\":\"${2:-$pw}\"}"; }	# login REQID [PASSWORD]
typed() { local t=${2//\\/\\\\}; msg command "$1" "\"${t//\"/\\\"}\\r\""; }	# typed REQID TEXT: TEXT, Enter
# quiet NAME FILE MARK REGEX before|after: FILE has a MARK line, and no line
# before (after) the first one matches REGEX
quiet() {
	local at
	at=$(grep -nE -- "$3" "$2" | head -1 | cut -d: -f1)
	if [ -z "$at" ]; then fail "$1" "no /$3/ in $2"; return; fi
	if [ "$5" = before ]; then head -n $((at - 1)) "$2"; else tail -n +$((at + 1)) "$2"; fi > "$WORK/quiet"
	if grep -qE -- "$4" "$WORK/quiet"; then
		fail "$1" "$5 /$3/:" "$(grep -E -- "$4" "$WORK/quiet" | head -3 | cut -c1-200)"
	else ok "$1"; fi
}
SDK408='\{"status_code":"408","status_msg":"SSH idles for too long, the session will be closed"\}$'

# request_ids: the connect's answers carry its own, output the latest cut to 36.
R1=connect-id-longer-than-36-characters-refused
R2=connect-id-longer-than-36-characters-accepted
R2C=${R2:0:36}
csdk dc1 c1
app ca1 c1 --raw --save "$R2C" "$WORK/c1.bin"
await "c-sdk: the app gets connect_tunnel" "$WORK/ca1.out" '^recv connect_tunnel '
to ca1 "$(login "$R1" wrong-password)"
await "c-sdk: connect_response at once, without data, under the connect's whole id" "$WORK/ca1.out" "^recv connect_response $R1 -\$"
await "c-sdk: a failed login's 400 under the connect's whole id, the SDK's text" "$WORK/ca1.out" \
	"^recv disconnect $R1 "'\{"status_code":"400","status_msg":"WssClientListenerOnMsg: Create SSH channel failed"\}$'
to ca1 "$(login "$R2")"
await "c-sdk: login" "$WORK/dc1.log" ": session $R2: login ok\$"
to ca1 "$(typed "$R2" 'echo "cut-""ok"')"
await "c-sdk: output under the latest request_id cut to 36 characters" "$WORK/c1.bin" 'cut-ok'
check "c-sdk: no output under the uncut request_id" bash -c "! grep -q '^recv command_response $R2 ' '$WORK/ca1.out'"
check "c-sdk: cJSON_Print layout, the SDK's member order" grep -qP \
	"^raw \\{ \\t\"operation_type\":\\t\"command_response\", \\t\"tunnel_service_type\":\\t\"ssh\", \\t\"request_id\":\\t\"$R2C\", \\t\"data\":\\t\"" "$WORK/ca1.out"

# Raw 2048-byte reads: a read of control bytes (\u00XX each) makes a
# message of 12428 bytes with a 36-character request_id, over 10 KB.
to ca1 "$(typed "$R2" "head -c 8192 /dev/zero | tr '\\0' '\\1'; echo \"@@CT\"\"END@@\"")"
await "c-sdk: control bytes arrive" "$WORK/c1.bin" '@@CTEND@@'
longest=$(grep -a '^raw .*"command_response"' "$WORK/ca1.out" | LC_ALL=C awk '{ n = length($0) - 4; if (n > m) m = n } END { print m + 0 }')
check "c-sdk: a read of 2048 control bytes is one message over 10240 bytes, at most 12428 (longest: $longest)" \
	[ "$longest" -gt 10240 -a "$longest" -le 12428 ]
# A NUL ends a read's data (cJSON_CreateString): the rest of that read is lost.
to ca1 "$(typed "$R2" "printf 'nul-''a\\000nul-''b\\n'")"
await "c-sdk: output before a NUL arrives" "$WORK/c1.bin" 'nul-a'
to ca1 "$(typed "$R2" 'echo "after-""nul"')"
await "c-sdk: output goes on after it" "$WORK/c1.bin" 'after-nul'
check "c-sdk: the rest of the read after the NUL is lost" bash -c "! grep -q 'nul-b' '$WORK/c1.bin'"

# The SDK handles connect and command only: a disconnect, connect_tunnel or
# ping changes nothing, not even the request_id output carries.  A relay
# never sends a device a ping, so a scripted platform (the stand-in) does.
if [ -z "$HAVE_SI" ]; then
	ok "c-sdk ignores disconnect, connect_tunnel, ping # SKIP no python3"
else
	start_standin si-csdk
	start_device dc2 --url "ws://127.0.0.1:$SI_PORT/v5/iot/tunnels/cs2/device-connect" --token t \
		--login-file "$WORK/logins" --profile c-sdk
	await "scripted platform: the c-sdk agent connects" "$SI_OUT" '^connected cs2 token header$'
	si send cs2 "$(login ig1)"
	await "scripted platform: login" "$WORK/dc2.log" ': session ig1: login ok$'
	si send cs2 "$(typed ig1 "while [ ! -e $WORK/go ]; do sleep 0.05; done; echo \"late-\"\"1\"")"
	si send cs2 "$(msg ping zz-ping null)"
	si send cs2 "$(msg connect_tunnel zz-tunnel null)"
	si send cs2 "$(msg disconnect ig1 '{"status_code":"400","status_msg":"from the app"}')"
	for op in ping connect_tunnel disconnect; do
		await "c-sdk: $op is ignored (logged)" "$WORK/dc2.log" ": ignored operation_type $op\$"
	done
	touch "$WORK/go"
	await "c-sdk: the session lives on, output under the command's request_id" "$SI_OUT" \
		'^text cs2 .*"request_id":[[:space:]]*"ig1",.*late-1'
	check "c-sdk: no message under an ignored message's request_id" bash -c "! grep -q 'zz-' '$SI_OUT'"
	check "c-sdk: the session did not end" bash -c "! grep -q 'session ig1: ended' '$WORK/dc2.log'"
	kill "$DEVICE_PID"
fi

# --wedge no-408: the exit sends nothing; the next connect is answered, the
# owed 408 follows it (stale), then silence.
csdk dw1 w1 --wedge no-408
app wa1 w1 --save wa "$WORK/wa.bin" --save wf "$WORK/wf.bin"
await "wedge no-408: connect_tunnel" "$WORK/wa1.out" '^recv connect_tunnel '
to wa1 "$(login wa)" "$(typed wa 'echo "up-""wa"')"
await "wedge no-408: a shell runs" "$WORK/wa.bin" 'up-wa'
to wa1 "$(typed wa exit)"
await "wedge no-408: the exit logs it" "$WORK/dw1.log" ': wedged: no 408$'
to wa1 "$(typed wa 'echo "dropped-""wa"')"
await "wedge no-408: a command after the exit is dropped" "$WORK/dw1.log" ': wedged: command ignored$'
to wa1 "$(login wb)"
await "wedge no-408: the next connect is answered" "$WORK/wa1.out" '^recv connect_response wb -$'
await "wedge no-408: then the stale 408" "$WORK/wa1.out" "^recv disconnect SSH_timeout_disconnect $SDK408"
quiet "wedge no-408: no 408 before that answer" "$WORK/wa1.out" '^recv connect_response wb ' '^recv disconnect ' before
await "wedge no-408: the agent logs the connect" "$WORK/dw1.log" ': wedged: connect wb answered, then silence$'
await "wedge no-408: ... and the stale 408" "$WORK/dw1.log" ': wedged: stale 408 sent$'
to wa1 "$(typed wb 'echo "silent-""wb"')" "$(login wc)"
await_count "wedge no-408: then a command is ignored" "$WORK/dw1.log" ': wedged: command ignored$' 2
await "wedge no-408: ... and so is another connect" "$WORK/dw1.log" ': wedged: connect ignored$'
to wa1 "$(msg ping p-w1 null)" '!ping ws-w1'
await "wedge no-408: the tunnel stays healthy (pong)" "$WORK/wa1.out" '^recv pong p-w1 '
await "wedge no-408: ... (WebSocket pong)" "$WORK/wa1.out" '^pong-ws ws-w1$'
quiet "wedge no-408: silence after the stale 408" "$WORK/wa1.out" '^recv disconnect SSH_timeout' \
	'^recv (command_response|connect_response|disconnect) ' after
check "wedge no-408: no shell started" bash -c "! grep -qE 'session w[bc]: login' '$WORK/dw1.log'"

# --wedge 408: the exit's 408 goes out; the next connect is answered, then silence.
csdk dw2 w2 --wedge 408
app wa2 w2 --save wg "$WORK/wg.bin"
await "wedge 408: connect_tunnel" "$WORK/wa2.out" '^recv connect_tunnel '
to wa2 "$(login wd)"
await "wedge 408: login" "$WORK/dw2.log" ': session wd: login ok$'
to wa2 "$(typed wd exit)"
await "wedge 408: the exit sends the 408" "$WORK/wa2.out" "^recv disconnect SSH_timeout_disconnect $SDK408"
await "wedge 408: and logs it" "$WORK/dw2.log" ': wedged: 408 sent$'
to wa2 "$(login we)"
await "wedge 408: the next connect is answered" "$WORK/wa2.out" '^recv connect_response we -$'
await "wedge 408: the agent logs it" "$WORK/dw2.log" ': wedged: connect we answered, then silence$'
to wa2 "$(typed we 'echo "silent-""we"')"
await "wedge 408: then a command is ignored" "$WORK/dw2.log" ': wedged: command ignored$'
to wa2 "$(msg ping p-w2 null)"
await "wedge 408: the tunnel stays healthy (pong)" "$WORK/wa2.out" '^recv pong p-w2 '
quiet "wedge 408: silence after the connect_response" "$WORK/wa2.out" '^recv connect_response we ' \
	'^recv (command_response|connect_response|disconnect) ' after
check "wedge 408: no stale 408" bash -c "! grep -q 'stale 408' '$WORK/dw2.log'"

# A new tunnel connection clears the wedge (as restarting the SDK's tunnel).
kill -USR1 "$CS_RELAY"
for n in 1 2; do
	await "wedge: the relay drops agent $n, the wedge is cleared" "$WORK/dw$n.log" ': wedge cleared: the tunnel connection ended$'
	await_count "wedge: agent $n is back" "$WORK/wa$n.out" '^recv connect_tunnel ' 2
done
to wa1 "$(login wf)" "$(typed wf 'echo "fresh-""wf"')"
to wa2 "$(login wg)" "$(typed wg 'echo "fresh-""wg"')"
await "wedge cleared (no-408): a connect logs in again and the shell answers" "$WORK/wf.bin" 'fresh-wf'
await "wedge cleared (408): a connect logs in again and the shell answers" "$WORK/wg.bin" 'fresh-wg'

# --wedge random: each exit either sends its 408 or not; both show up soon.
csdk dw3 w3 --wedge random
app wa3 w3
exits=0
while [ $exits -lt 12 ] && ! { grep -q 'wedged: no 408' "$WORK/dw3.log" && grep -q 'wedged: 408 sent' "$WORK/dw3.log"; }; do
	exits=$((exits + 1))
	wait_for "$T" bash -c "[ \$(grep -c '^recv connect_tunnel ' '$WORK/wa3.out') -ge $exits ]" || break
	to wa3 "$(login "x$exits")"
	wait_for "$T" has_line "$WORK/dw3.log" ": session x$exits: login ok\$" || break
	to wa3 "$(typed "x$exits" exit)"
	wait_for "$T" bash -c "[ \$(grep -cE ': wedged: (no 408|408 sent)$' '$WORK/dw3.log') -ge $exits ]" || break
	kill -USR1 "$CS_RELAY"
	wait_for "$T" bash -c "[ \$(grep -c ': wedge cleared' '$WORK/dw3.log') -ge $exits ]" || break
done
n408=$(grep -c ': wedged: 408 sent$' "$WORK/dw3.log") n0=$(grep -c ': wedged: no 408$' "$WORK/dw3.log")
check "wedge random: both outcomes within 12 exits (408 sent $n408 times, none $n0 times)" [ "$n408" -gt 0 -a "$n0" -gt 0 ]
check "c-sdk: no password in the agents' logs" bash -c "! grep -q '$pw' '$WORK'/d[cw]*.log"

#### --shell and --path: a busybox-only device ###############################

# Applets for the shell and file transfer by checksum, none for base64,
# uudecode, od, xxd or stty: what a busybox-only device may offer.
BB=$WORK/busybox
if ! command -v busybox > /dev/null; then
	ok "a busybox-only device # SKIP no busybox (apt-get install busybox)"
else
	mkdir "$BB"
	for a in sh ash sha256sum md5sum dd head gzip hexdump awk printf cat ls rm mv mkdir echo tr wc; do
		ln -s "$(command -v busybox)" "$BB/$a"
	done
	start_device db1 --url "$(dev_url b1)" --token-file <(echo dev-b1) --login-file "$WORK/logins" \
		--shell "$BB/sh" --path "$BB"
	app ab1 b1 --save bb1 "$WORK/bb1.bin"
	await "busybox: connect_tunnel" "$WORK/ab1.out" '^recv connect_tunnel '
	to ab1 "$(login bb1)" "$(typed bb1 ash)" "$(typed bb1 'echo "zero=$0 path=$PATH"')"
	await "busybox: the session runs ash with only --path on PATH" "$WORK/bb1.bin" "zero=ash path=$BB"$'\r'
	to ab1 "$(typed bb1 'for c in base64 uudecode od xxd stty; do command -v $c > /dev/null && echo "fou""nd-$c"; done; echo "looked-""for"')"
	await "busybox: the checks ran" "$WORK/bb1.bin" 'looked-for'
	check "busybox: command -v fails for base64, uudecode, od, xxd, stty" bash -c "! grep -q 'found-' '$WORK/bb1.bin'"
	to ab1 "$(typed bb1 'command -v sha256sum && printf x | sha256sum')"
	await "busybox: command -v sha256sum finds it" "$WORK/bb1.bin" "^$BB/sha256sum"$'\r'
	await "busybox: ... and it works" "$WORK/bb1.bin" \
		'^2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881  -'
	kill "$DEVICE_PID"
fi
# (dash is Debian's /bin/sh: always there)
start_device db2 --url "$(dev_url b2)" --token-file <(echo dev-b2) --login-file "$WORK/logins" --shell /bin/dash
app ab2 b2 --save bb2 "$WORK/bb2.bin"
await "--shell /bin/dash: connect_tunnel" "$WORK/ab2.out" '^recv connect_tunnel '
to ab2 "$(login bb2)" "$(typed bb2 'echo "zero=$0 shell=$SHELL path=$PATH"')"
await "--shell /bin/dash: the session runs dash, default PATH" "$WORK/bb2.bin" \
	'zero=dash shell=/bin/dash path=/usr/local/bin:/usr/bin:/bin'$'\r'
kill "$DEVICE_PID"

#### bounded backlogs: Ctrl-C under a flood ##################################

# A real device reads 2048 bytes and sends them before it reads again; the
# agent too keeps little unsent output (and a small socket send buffer), so
# after a Ctrl-C under a flood the prompt follows soon.  The app is slower
# than the device (1 MB/s, as a console drawing it), so every queue on the
# way fills.  yes floods a session until 1 MiB has arrived; the app sends
# Ctrl-C and counts the output bytes that arrive until the prompt (!mark: the
# count when the Ctrl-C has gone out, and at the end).  Through the relay the
# count includes the relay's own buffers, so it is only printed; the agent's
# part is bounded below, on a platform that reads slowly itself.
flood() {	# flood TUNNEL PROFILE
	local t=$1 before after
	echo "dev-$t" > "$WORK/d$t.tok"
	start_device "d$t" --url "$(dev_url "$t")" --token-file "$WORK/d$t.tok" --login-file "$WORK/logins" --profile "$2"
	app "a$t" "$t" --save "$t" "$WORK/$t.bin" --rate 1000000
	await "flood ($2): connect_tunnel" "$WORK/a$t.out" '^recv connect_tunnel '
	to "a$t" "$(login "$t")" "$(typed "$t" yes)"
	await "flood ($2): yes floods the session" "$WORK/$t.bin" '^y'
	wait_for 30 bash -c "[ \$(stat -c %s '$WORK/$t.bin') -ge $((1 << 20)) ]"
	to "a$t" "$(msg command "$t" '"\u0003"')" '!mark ctrl-c' "$(typed "$t" 'echo "@@DO""NE@@"')"
	T=60 await "flood ($2): after Ctrl-C the shell answers" "$WORK/$t.bin" '@@DONE@@'
	to "a$t" '!mark done'
	await "flood ($2): the client counts" "$WORK/a$t.out" '^mark done [0-9]+$'
	before=$(sed -n 's/^mark ctrl-c //p' "$WORK/a$t.out") after=$(sed -n 's/^mark done //p' "$WORK/a$t.out")
	echo "# flood ($2) through the relay: $((after - before)) bytes after the Ctrl-C, ${before:-?} before it"
	kill "$DEVICE_PID"
}
flood f1 full
flood f2 c-sdk

# The agent's own part: the platform itself reads slowly (the stand-in,
# at 1 MB/s), so only the agent's queue and its socket hold the backlog.
flood_alone() {	# flood_alone PROFILE
	local id=fl-$1 before after
	start_device "$id" --url "ws://127.0.0.1:$SI_PORT/v5/iot/tunnels/$id/device-connect" --token t \
		--login-file "$WORK/logins" --profile "$1"
	await "slow platform ($1): the agent connects" "$SI_OUT" "^connected $id "
	si send "$id" "$(login "$id")"
	await "slow platform ($1): login" "$WORK/$id.log" ": session $id: login ok\$"
	si slow "$id" 1000000 @@DONE@@
	si send "$id" "$(typed "$id" yes)"
	T=30 await "slow platform ($1): yes floods it (1 MiB taken in)" "$SI_OUT" "^counted $id 1\$"
	si send "$id" "$(msg command "$id" '"\u0003"')"
	si mark "$id" ctrl-c
	si send "$id" "$(typed "$id" 'echo "@@DO""NE@@"')"
	T=60 await "slow platform ($1): after Ctrl-C the shell answers" "$SI_OUT" "^found $id "
	before=$(sed -n "s/^mark $id ctrl-c //p" "$SI_OUT") after=$(sed -n "s/^found $id //p" "$SI_OUT" | head -1)
	check "slow platform ($1): under $((FLOOD_ALONE >> 10)) KiB of messages after the Ctrl-C ($((after - before)) bytes)" \
		[ -n "$before" -a "$((after - before))" -lt "$FLOOD_ALONE" ]
	kill "$DEVICE_PID"
}
FLOOD_ALONE=$((256 << 10))
if [ -z "$HAVE_SI" ]; then
	ok "flood on a slow platform # SKIP no python3"
else
	flood_alone full
	flood_alone c-sdk
fi

#### --run-as: a root agent's shells as an unprivileged user ##############

# ra_session NAME TUNNEL: logs in on TUNNEL; the shell prints who it is, one
# line in $WORK/NAME.bin: "@@RA uid=… user=… groups=… zero=$0 shell=…
# home=… pwd=… logname=… user_env=$USER tty=OWNER".
ra_session() {
	app "$1" "$2" --save "$1" "$WORK/$1.bin"
	await "$1: connect_tunnel" "$WORK/$1.out" '^recv connect_tunnel '
	to "$1" "$(login "$1")" "$(typed "$1" 'echo "@@R""A uid=$(id -u) user=$(id -un) groups=$(id -G | tr " " ,) zero=$0 shell=$SHELL home=$HOME pwd=$(pwd) logname=$LOGNAME user_env=$USER tty=$(stat -c %U "$(tty)")"')"
	await "$1: the shell says who it is" "$WORK/$1.bin" '@@RA uid=[0-9]'
}
# ra_field NAME KEY: KEY's value in NAME's @@RA line (after the prompt's escapes)
ra_field() { grep -ao '@@RA uid=[0-9].*' "$WORK/$1.bin" | tr -d '\r' | tr ' ' '\n' | sed -n "s/^$2=//p"; }
# ra_has NAME KEY VALUE: ok when KEY is VALUE (the line exists: ra_session awaited it)
ra_has() {
	local v
	v=$(ra_field "$1" "$2")
	if [ "$v" = "$3" ]; then ok "$1: $2 is $3"; else fail "$1: $2 is $3" "it is '$v'"; fi
}
ra_cleanup() {	# the throwaway user: its processes, the account, its folder
	local p
	for p in $(ps -o pid= -u "$RA_USER" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
	userdel -f "$RA_USER" 2>/dev/null
	rm -rf "$RA"
}

if [ "$(id -u)" -ne 0 ]; then
	bad_option "--run-as without root" "--run-as nobody needs root" --url "$U" --token t --run-as nobody
else
	# A throwaway user with a real login shell, in the "users" group too (its
	# supplementary groups must be its own, not root's), its homes in a folder
	# it can pass through but not list.
	RA_USER=tt_$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
	RA=$(mktemp -d /tmp/tunnel_tui_runas.XXXXXX)
	chmod 711 "$RA"
	useradd --system --user-group --no-create-home --home-dir "$RA/home" --shell /bin/bash -G users "$RA_USER"
	trap 'cleanup; ra_cleanup' EXIT	# the agents first: they end the user's shells
	mkdir -m 700 "$RA/home" "$RA/alt-home"
	chown "$RA_USER:" "$RA/home" "$RA/alt-home"
	# the agent as nobody, from where nobody can reach it (the clone may sit
	# under a 0700 folder)
	cp "$DEVICE" "$RA/tunnel-device"
	chmod 755 "$RA/tunnel-device"
	printf '#!/bin/sh\nexec setpriv --reuid=nobody --regid=nogroup --clear-groups %q "$@"\n' \
		"$RA/tunnel-device" > "$RA/as-nobody"
	chmod 755 "$RA/as-nobody"
	DEVICE=$RA/as-nobody bad_option "--run-as without root" "--run-as $RA_USER needs root" \
		--url "$U" --token t --run-as "$RA_USER"
	bad_option "--run-as an unknown user" "--run-as: no user 'tt-no-such-user'" --url "$U" --token t --run-as tt-no-such-user
	bad_option "--run-as root" "--run-as root is root: name an unprivileged user" --url "$U" --token t --run-as root
	bad_option "--run-as with the ssh backend" "--run-as goes with --backend pty" \
		--url "$U" --token t --backend ssh --run-as "$RA_USER"

	# --run-as and --home: the user's uid, groups and login shell, --home's HOME.
	start_device ra1 --url "$(dev_url r1)" --token-file <(echo dev-r1) --login-file "$WORK/logins" \
		--run-as "$RA_USER" --home "$RA/alt-home"
	RA1=$DEVICE_PID
	ra_session ra1 r1
	uid=$(ra_field ra1 uid)
	check "ra1: the shell's id -u is not 0 ($uid)" [ -n "$uid" -a "$uid" != 0 ]
	ra_has ra1 uid "$(id -u "$RA_USER")"
	ra_has ra1 user "$RA_USER"
	groups=$(ra_field ra1 groups | tr , '\n' | sort -n | paste -sd,)
	check "ra1: the shell's groups are the user's own and users, not root's ($groups)" \
		[ "$groups" = "$(printf '%s\n' "$(id -g "$RA_USER")" 100 | sort -n | paste -sd,)" ]
	ra_has ra1 zero -bash
	ra_has ra1 shell /bin/bash
	ra_has ra1 home "$RA/alt-home"
	ra_has ra1 pwd "$RA/alt-home"
	ra_has ra1 logname "$RA_USER"
	ra_has ra1 user_env "$RA_USER"
	ra_has ra1 tty "$RA_USER"
	check "ra1: the agent itself still runs as root" [ "$(ps -o user= -p "$RA1")" = root ]
	kill "$RA1"

	# --run-as and --shell, no --home: the user's home from the password database.
	"$DEVICE" --url "$(dev_url r2)" --token-file <(echo dev-r2) --login-file "$WORK/logins" \
		--run-as "$RA_USER" --shell /bin/dash 2> "$WORK/ra2.log" &
	PIDS+=($!)
	ra_session ra2 r2
	ra_has ra2 user "$RA_USER"
	ra_has ra2 zero dash
	ra_has ra2 shell /bin/dash
	ra_has ra2 home "$RA/home"
	ra_has ra2 pwd "$RA/home"
fi

#### the sshd fixture ##########################################################

if [ "$(id -u)" -ne 0 ]; then
	ok "sshd fixture # SKIP not root"
	finish
fi
# the script on stdin: a plain user may not reach a clone under a 0700 folder
out=$(runuser -u nobody -- sh -s start "$WORK/nobody-sshd" < "$SSHD_SH" 2>&1)
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
