#!/bin/bash
# Trust, end to end: each device's CA is trusted for that device only, and
# a refused certificate says why and is not retried in a loop; --insecure
# really skips verification (unknown CA, wrong name) and says so on screen
# and on stderr; plaintext only to this machine unless --allow-plaintext;
# the files the console writes are 0600 in 0700 folders, never through a
# planted symbolic link, and under safe names whatever the device is
# called; the reconnect countdown never passes its 30 s cap.
source "$(dirname "$0")/../lib.sh"

device_row() { tui_screen | grep -A2 "^ $1 " | sed -n "${2:-2}p"; }	# device_row NAME [LINE]
row_has() { device_row "$1" "${3:-2}" | grep -qE -- "$2"; }	# row_has NAME REGEX [LINE]
status_bar() { tui_screen | tail -1; }
status_has() { status_bar | grep -qF -- "$1"; }
screen_count() { tui_screen | grep -cE -- "$1"; }	# lines of the screen matching REGEX
screen_matches() { tui_screen | grep -qE -- "$1"; }
quit_tui() {	# quits the console in tmux; ok when it exits 0
	tui_keys C-g q
	tui_wait 'Quit' 3 && tui_keys y
	tui_wait 'EXIT=0' 10
}
count() { grep -cE -- "$2" "$1" 2>/dev/null; }	# count FILE REGEX: matching lines
# conf_device NAME URL TOKEN_FILE [CACERT]: one [device] section
conf_device() {
	printf '[device %s]\nurl = %s\ntoken_file = %s\nusername = field\n%s\n' "$1" "$2" "$3" "${4:+cacert = $4
}"
}

umask 077
echo "any-token" > "$WORK/any.token"

# --- the backoff cap, in the background ------------------------------------
# Eight devices on a port where nothing listens: each backs off 1, 2, 4, 8,
# 16 s, then 30 s (jittered by ±20 %, the cap applied after the jitter), so
# ~37 s at most until every one of them shows its 6th countdown.  Eight at
# once: without the cap, each has a fair chance of showing more than 30 s.
DEAD=$(free_port)
for i in 1 2 3 4 5 6 7 8; do
	conf_device "d$i" "ws://127.0.0.1:$DEAD/v5/iot/tunnels/t$i/source-connect" "$WORK/any.token"
done > "$WORK/backoff.conf"
tui_start 100x40 -c "$WORK/backoff.conf"	# 8 devices of 4 rows: all in view
BACKOFF_SOCK=$TMUX_SOCK
# every 0.2 s, each device's countdown as the list shows it: "d3 25"
(
	while [ ! -e "$WORK/backoff.stop" ]; do
		tmux -S "$BACKOFF_SOCK" capture-pane -p 2>/dev/null |
			awk '/^ d[0-9] / { d = $1 } /^  retry in [0-9]+s/ { sub(/s.*/, "", $3); print d, $3 }'
		sleep 0.2
	done > "$WORK/backoff.seen"
) &
PIDS+=($!)

# --- TLS: each device's CA for that device only ---------------------------
sandbox_up trusted:full stranger:none files:full || { fail "sandbox starts"; finish; }
RELAY_PORT=$PLATFORM_PORT
# a second TLS relay with the sandbox's certificate that logs every TCP
# connection: how many times a refused device tried is counted there
"$HOSTILE" --cert "$CERTS/server.pem" --key "$CERTS/server.key" > "$WORK/counter.out" 2> "$WORK/counter.log" &
PIDS+=($!)
wait_for 5 has_line "$WORK/counter.out" '^listening on ' || fail "counting relay starts"
COUNTER_PORT=$(sed -n 's/^listening on wss:\/\/127.0.0.1://p' "$WORK/counter.out")
TRUSTED=$(conf_device trusted "$BASE/t-trusted/source-connect" "$WORK/trusted.app" "$CERTS/ca.pem")
STRANGER=$(conf_device stranger "$BASE/t-stranger/source-connect" "$WORK/stranger.app")
COUNTED=$(conf_device counted "wss://localhost:$COUNTER_PORT/v5/iot/tunnels/c/source-connect" "$WORK/any.token")
printf '%s\n\n' "$TRUSTED" "$STRANGER" "$COUNTED" > "$WORK/tls1.conf"
REFUSED="certificate of localhost:$RELAY_PORT refused: signed by an unknown certificate authority"

tui_start 160x30 -c "$WORK/tls1.conf" --log "$WORK/tls1.log"
wait_for 10 row_has trusted '^  online' && ok "CA first: the device with cacert is online" || fail "trusted online" "$(tui_screen)"
wait_for 10 row_has stranger '^  certificate refused' && ok "CA first: the device without cacert is refused" \
	|| fail "stranger refused" "$(tui_screen)"
tui_keys C-g 2
wait_for 5 status_has "stranger │ $REFUSED" && ok "CA first: the refusal says why, with host and port" \
	|| fail "refusal in words" "$(status_bar)"
check "the device's list row says why too" row_has stranger '^  certificate of' 3
# not retried in a loop: one TCP connection to the counting relay, and
# still one a few seconds later
wait_for 10 row_has counted '^  certificate refused' && ok "a refused device on the counting relay" || fail "counted refused" "$(tui_screen)"
check "the counting relay saw the refused device connect once" [ "$(count "$WORK/counter.log" 'connection accepted')" -eq 1 ]
if wait_for 4 bash -c "[ \$(grep -c 'connection accepted' '$WORK/counter.log') -ge 2 ]"; then
	fail "a refused certificate: no retry in a loop" "$(cat "$WORK/counter.log")"
else
	ok "a refused certificate: no retry in a loop (one connection in 4 s)"
fi
check "a refused certificate: the list still says refused, no countdown" row_has counted '^  certificate refused'
check "a refused certificate: the other refused device tried once too (one event in the log)" \
	[ "$(count "$WORK/tls1.log" "stranger: $REFUSED")" -eq 1 ]
tui_keys C-g 3 C-g c
wait_for 10 bash -c "[ \$(grep -c 'connection accepted' '$WORK/counter.log') -eq 2 ]" \
	&& ok "^G c tries again on demand (a second connection)" || fail "^G c retries" "$(cat "$WORK/counter.log")"
wait_for 10 row_has counted '^  certificate refused' && ok "^G c: refused again, said again" || fail "refused after ^G c" "$(tui_screen)"
quit_tui && ok "quits" || fail "quit" "$(tui_screen)"

# the other order: the device without a CA first
printf '%s\n\n' "$STRANGER" "$TRUSTED" > "$WORK/tls2.conf"
tui_start 160x30 -c "$WORK/tls2.conf"
wait_for 10 row_has trusted '^  online' && ok "CA second: the device with cacert is online" || fail "trusted online (2)" "$(tui_screen)"
wait_for 10 row_has stranger '^  certificate refused' && ok "CA second: the device without cacert is refused" \
	|| fail "stranger refused (2)" "$(tui_screen)"
tui_keys C-g 1
wait_for 5 status_has "stranger │ $REFUSED" && ok "CA second: the refusal says why" || fail "refusal in words (2)" "$(status_bar)"
quit_tui || fail "quit (2)" "$(tui_screen)"

# --- --insecure: an unknown CA, a name that does not match -------------------
# a CA nobody trusts, a certificate from it for this machine, and one for
# another name only
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=unknown test CA" \
	-keyout "$WORK/ca2.key" -out "$WORK/ca2.pem" 2>/dev/null
mkcert() {	# mkcert NAME SAN: NAME.pem and NAME.key, signed by ca2
	openssl req -newkey rsa:2048 -nodes -subj "/CN=${2#*:}" -keyout "$WORK/$1.key" -out "$WORK/$1.csr" 2>/dev/null
	printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$2" > "$WORK/$1.ext"
	openssl x509 -req -in "$WORK/$1.csr" -CA "$WORK/ca2.pem" -CAkey "$WORK/ca2.key" -CAcreateserial -days 2 \
		-extfile "$WORK/$1.ext" -out "$WORK/$1.pem" 2>/dev/null
}
mkcert unknown 'DNS:localhost,IP:127.0.0.1'
mkcert wrongname 'DNS:wrong.example'
check "test certificates made (unknown CA, wrong name)" \
	bash -c "openssl verify -CAfile '$WORK/ca2.pem' '$WORK/unknown.pem' '$WORK/wrongname.pem' >/dev/null"
relay_with() {	# relay_with NAME: a relay serving NAME.pem, its tunnel t-NAME, an agent
	echo "[{\"tunnel_id\":\"t-$1\",\"device_id\":\"$1\",\"source_token\":\"$1-app\",\"device_token\":\"$1-dev\"}]" > "$WORK/$1.json"
	echo "$1-app" > "$WORK/$1.app"
	echo "$1-dev" > "$WORK/$1.dev"
	PLATFORM_PORT=0 start_platform "$1-relay" --cert "$WORK/$1.pem" --key "$WORK/$1.key" --tunnels "$WORK/$1.json" || return 1
	start_device "$1-agent" --url "wss://localhost:${PLATFORM_URL##*:}/v5/iot/tunnels/t-$1/device-connect" \
		--token-file "$WORK/$1.dev" --backend pty --login-file "$WORK/logins" "${@:2}"
	eval "${1^^}_PORT=\${PLATFORM_URL##*:}"
}
relay_with unknown --cacert "$WORK/ca2.pem" || fail "relay with an unknown CA starts"
relay_with wrongname --insecure || fail "relay with the wrong name starts"
PLAIN_PORT=$(free_port)
{
	conf_device unknown "wss://localhost:$UNKNOWN_PORT/v5/iot/tunnels/t-unknown/source-connect" "$WORK/unknown.app" "$CERTS/ca.pem"
	conf_device wrongname "wss://localhost:$WRONGNAME_PORT/v5/iot/tunnels/t-wrongname/source-connect" "$WORK/wrongname.app" "$WORK/ca2.pem"
	echo "$TRUSTED"
	echo
	conf_device plain "ws://127.0.0.1:$PLAIN_PORT/v5/iot/tunnels/t-plain/source-connect" "$WORK/any.token"
} > "$WORK/insecure.conf"

# verified: both refused, each saying why; no INSECURE anywhere
tui_start 160x30 -c "$WORK/insecure.conf"
wait_for 10 row_has unknown '^  certificate refused' && ok "unknown CA: refused" || fail "unknown CA refused" "$(tui_screen)"
wait_for 10 row_has wrongname '^  certificate refused' && ok "wrong name: refused" || fail "wrong name refused" "$(tui_screen)"
wait_for 10 row_has trusted '^  online' || fail "trusted online (3)" "$(tui_screen)"
tui_keys C-g 1
wait_for 5 status_has "certificate of localhost:$UNKNOWN_PORT refused: signed by an unknown certificate authority" \
	&& ok "unknown CA: the refusal says why" || fail "unknown CA in words" "$(status_bar)"
tui_keys C-g 2
wait_for 5 status_has "certificate of localhost:$WRONGNAME_PORT refused: issued for another host name" \
	&& ok "wrong name: the refusal says why" || fail "wrong name in words" "$(status_bar)"
# (the screen read is the one showing the device: a blank one would pass)
shows_without() { local s; s=$(tui_screen); tail -1 <<< "$s" | grep -qF -- "$1" && ! grep -q -- "$2" <<< "$s"; }
check "verified: no INSECURE on the screen" shows_without ' wrongname │' INSECURE
# plaintext to this machine: accepted, marked
wait_for 5 screen_matches '^ plain +PLAINTEXT +│' \
	&& ok "ws:// to 127.0.0.1: accepted, PLAINTEXT beside its name" || fail "PLAINTEXT badge" "$(tui_screen)"
# (name rows: padded to the border; the status bar has " wrongname │")
check "the TLS devices have no badge" [ "$(screen_count '^ (unknown|wrongname|trusted) {3,}│')" -eq 3 ]
bar_without() { local b; b=$(status_bar); grep -qF -- "$1" <<< "$b" && ! grep -q -- "$2" <<< "$b"; }
check "a TLS device selected: no PLAINTEXT in the status bar" bar_without ' wrongname │' PLAINTEXT
tui_keys C-g 4
wait_for 5 status_has ' PLAINTEXT   plain │' && ok "the plaintext device selected: PLAINTEXT in the status bar" \
	|| fail "PLAINTEXT in the status bar" "$(status_bar)"
quit_tui || fail "quit (3)" "$(tui_screen)"

# --insecure: both connect; loud in the status bar and on each TLS device
tui_start 160x30 -c "$WORK/insecure.conf" --insecure
wait_for 10 row_has unknown '^  online' && ok "--insecure: a certificate from an unknown CA is accepted (online)" \
	|| fail "--insecure unknown CA" "$(tui_screen)"
wait_for 10 row_has wrongname '^  online' && ok "--insecure: a certificate for another name is accepted (online)" \
	|| fail "--insecure wrong name" "$(tui_screen)"
check "--insecure: INSECURE TLS in the status bar" status_has ' INSECURE TLS '
check "--insecure: an INSECURE badge on each TLS device" [ "$(screen_count '^ (unknown|wrongname|trusted) +INSECURE +│')" -eq 3 ]
check "--insecure: the plaintext device says PLAINTEXT, not INSECURE" screen_matches '^ plain +PLAINTEXT +│'
quit_tui || fail "quit (4)" "$(tui_screen)"
echo "$PASS" > "$WORK/pw"
"$CONSOLE" --exec 'echo via-$((6*7))' -c "$WORK/insecure.conf" --devices unknown --insecure --password-file "$WORK/pw" \
	> "$WORK/insecure.out" 2> "$WORK/insecure.err"
rc=$?
check "--exec --insecure: runs on the unknown-CA device (exit 0)" \
	bash -c "[ $rc -eq 0 ] && grep -q '^unknown *| via-42$' '$WORK/insecure.out'"
check "--exec --insecure: warns on stderr" grep -q 'warning: --insecure' "$WORK/insecure.err"

# --- no plaintext by accident ------------------------------------------------
# refused at start, before any network (192.0.2.1 is TEST-NET: nobody)
refused() {	# refused NAME REGEX ARGS...: the console exits 2 at once saying REGEX
	local name=$1 regex=$2 rc; shift 2
	timeout 10 "$CONSOLE" "$@" < /dev/null > "$WORK/refused.out" 2> "$WORK/refused.err"
	rc=$?
	if [ "$rc" -eq 2 ] && grep -qE -- "$regex" "$WORK/refused.err"; then
		ok "$name"
	else
		fail "$name" "exit $rc (124: it ran)" "$(cat "$WORK/refused.err")"
	fi
}
conf_device far "ws://192.0.2.1/v5/iot/tunnels/t-far/source-connect" "$WORK/any.token" > "$WORK/far.conf"
refused "ws:// to another machine: refused at start, naming the device" \
	'device far: plaintext to another machine .*--allow-plaintext' -c "$WORK/far.conf"
tui_start 100x20 -c "$WORK/far.conf" --allow-plaintext
wait_for 5 screen_matches '^ far +PLAINTEXT +│' \
	&& ok "--allow-plaintext: accepted, PLAINTEXT beside it" || fail "--allow-plaintext" "$(tui_screen)"
quit_tui || fail "quit (5)" "$(tui_screen)"
printf '[iotda]\nendpoint = http://192.0.2.1\nproject_id = p1\nregion = cn-north-4\n\n[device api]\ndevice_id = dev-1\n' > "$WORK/endpoint.conf"
HUAWEICLOUD_SDK_AK=AK HUAWEICLOUD_SDK_SK=SK refused "http:// API endpoint on another machine: refused at start" \
	'\[iotda\] endpoint http://192.0.2.1: plaintext' -c "$WORK/endpoint.conf"
printf '{"device_id":"far","tunnel_uri":"ws://192.0.2.1/v5/iot/tunnels/t-far/source-connect","tunnel_access_token":"tok"}\n' \
	> "$WORK/far.json"
refused "a ws:// tunnel_uri to another machine in --tunnel-json: refused" \
	'far.json: plaintext to another machine' --tunnel-json "$WORK/far.json"
# Finding: "loopback" is decided by the text "127." at the start of the host
# name, so a DNS name such as 127.0.0.1.evil.example passes as this machine.
conf_device near "ws://127.0.0.1.evil.example/v5/iot/tunnels/t/source-connect" "$WORK/any.token" > "$WORK/near.conf"
refused "ws:// to a host NAME that starts with 127.: refused (not loopback)" \
	'device near: plaintext to another machine' -c "$WORK/near.conf"

# --- files: 0600 in 0700 folders, no links followed, safe names --------------
umask 022	# what a user may well have: the console must not rely on 077
touch "$WORK/control"
check "control: with this umask a file is created 0644" [ "$(stat -c %a "$WORK/control")" = 644 ]
# a device whose name (device_id) is a path: its recording and its --outdir
# file go under a safe name inside their folders; deep/tmp is where
# "../../tmp/x" would land from either folder
mkdir -p "$WORK/deep/tmp"
printf '{"tunnel_id":"t-files","device_id":"../../tmp/x","tunnel_uri":"%s/t-files/source-connect","tunnel_access_token":"%s","expires_in":3600}\n' \
	"$BASE" "$(cat "$WORK/files.app")" > "$WORK/files.json"
"$CONSOLE" --exec 'echo files-$((6*7))' --tunnel-json "$WORK/files.json" --cacert "$CERTS/ca.pem" --user field --all \
	--password-file "$WORK/pw" --outdir "$WORK/deep/o/out" --log "$WORK/new.log" > "$WORK/files.out" 2> "$WORK/files.err"
rc=$?
check "--exec on the device named ../../tmp/x ran (exit 0)" [ "$rc" -eq 0 ]
SAFE=_._.._tmp_x
check "--outdir: its file is $SAFE.out inside the folder" bash -c "[ \"\$(cat '$WORK/deep/o/out/$SAFE.out')\" = files-42 ]"
check "--outdir: the file is 0600" [ "$(stat -c %a "$WORK/deep/o/out/$SAFE.out")" = 600 ]
check "--outdir: the folders it made are 0700" [ "$(stat -c %a "$WORK/deep/o" "$WORK/deep/o/out" | sort -u)" = 700 ]
check "--log: created 0600" bash -c "[ -s '$WORK/new.log' ] && [ \$(stat -c %a '$WORK/new.log') = 600 ]"
tui_start 120x30 --tunnel-json "$WORK/files.json" --cacert "$CERTS/ca.pem" --user field --record-dir "$WORK/deep/r/rec"
tui_wait 'online' 10 || fail "the device named ../../tmp/x is online" "$(tui_screen)"
PANE=$(tmux -S "$TMUX_SOCK" display -p '#{pane_pid}')
check "the console runs with umask 0022 (the modes below are its own doing)" \
	bash -c "grep -q '^Umask:[[:space:]]*0022' /proc/\$(pgrep -P $PANE | head -1)/status"
tui_keys C-g n
tui_login
tui_run 'echo rec-$((6*7))' 'rec-42' || fail "a session on ../../tmp/x" "$(tui_screen)"
tui_keys C-g R
tui_wait '● REC' 5 || fail "recording starts" "$(tui_screen)"
tui_run 'echo in-the-recording' 'in-the-recording'
tui_keys C-g R
tui_wait 'recording saved' 5 && ok "recording saved" || fail "recording saved" "$(tui_screen)"
CAST=$(ls "$WORK/deep/r/rec/$SAFE"-*.cast 2>/dev/null | head -1)
check "recording: named ${SAFE}-….cast inside --record-dir" bash -c "[ -n '$CAST' ] && grep -q in-the-recording '$CAST'"
check "recording: the file is 0600" [ "$(stat -c %a "$CAST")" = 600 ]
check "recording: the folders it made are 0700" [ "$(stat -c %a "$WORK/deep/r" "$WORK/deep/r/rec" | sort -u)" = 700 ]
quit_tui || fail "quit (6)" "$(tui_screen)"
check "nothing written outside the two folders (../../tmp/x went nowhere)" \
	bash -c "[ \"\$(cd '$WORK/deep' && find . -type f | sort | tr '\n' ' ')\" = \"./o/out/$SAFE.out ./r/rec/\$(basename '$CAST') \" ]"

# planted symbolic links: refused, their targets untouched
echo precious > "$WORK/precious"
cp "$WORK/precious" "$WORK/precious.copy"
ln -s "$WORK/precious" "$WORK/link.log"
refused "--log through a symbolic link: refused" '--log .*link.log: a symbolic link: refused' \
	-c "$WORK/tls1.conf" --log "$WORK/link.log"
check "--log through a symbolic link: its target untouched" cmp -s "$WORK/precious" "$WORK/precious.copy"
mkdir -p "$WORK/out2"
ln -s "$WORK/precious" "$WORK/out2/trusted.out"
refused "--outdir with a symbolic link at DEVICE.out: refused" 'trusted.out: a symbolic link: refused' \
	--exec 'echo hi' -c "$WORK/tls1.conf" --devices trusted --password-file "$WORK/pw" --outdir "$WORK/out2"
check "--outdir with a symbolic link: its target not truncated" cmp -s "$WORK/precious" "$WORK/precious.copy"

# --- the backoff cap: the countdowns the list showed ---------------------------
# a device's 6th countdown starts at 24 s or more (30 s less 20 %), the
# 5th at 20 s at most (16 s and 20 %): a value over 20 means it got there
max_seen() { awk -v d="${1:-}" '$1 == d || d == "" { if ($2 > m) m = $2 } END { print m + 0 }' "$WORK/backoff.seen"; }
all_capped() { for i in 1 2 3 4 5 6 7 8; do [ "$(max_seen "d$i")" -gt 20 ] || return 1; done; }
wait_for 60 all_capped && ok "backoff: all 8 devices reached their 6th retry" \
	|| fail "backoff: 6th retry reached" "$(for i in 1 2 3 4 5 6 7 8; do echo "d$i: $(max_seen "d$i")"; done)"
touch "$WORK/backoff.stop"
check "backoff: the countdown never showed more than 30 s (at most $(max_seen))" [ "$(max_seen)" -le 30 ]
finish
