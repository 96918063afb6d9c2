#!/bin/bash
# The fault matrix, end to end: what the user sees when things go wrong, and
# that nothing typed or shown is lost.  (Shell exit, device killed and back,
# the relay restarting and the tunnel closed over REST are in console.test.sh.)
source "$(dirname "$0")/../lib.sh"

sandbox_up fine:full late:none badtok:full expiring:full:25 || { fail "sandbox starts"; finish; }
MAIN_PORT=$PLATFORM_PORT MAIN_PID=$PLATFORM_PID
echo "not-the-token" > "$WORK/badtok.app"

# a relay that refuses with close 1002, one that stalls, one that is hostile
cat > "$WORK/other.json" <<J
[{"tunnel_id":"t-other","device_id":"other","source_token":"right-token","device_token":"dev-token"}]
J
echo "wrong-token" > "$WORK/wrong.tok"
echo "right-token" > "$WORK/right.tok"
echo "dev-token" > "$WORK/dev.tok"
PLATFORM_PORT=0 start_platform closer --tunnels "$WORK/other.json" --auth-close
CLOSER_URL=$PLATFORM_URL
PLATFORM_PORT=0 start_platform staller --tunnels "$WORK/other.json" --stall-after 3
STALL_URL=$PLATFORM_URL
start_device stalldev --url "$STALL_URL/v5/iot/tunnels/t-other/device-connect" --token-file "$WORK/dev.tok" \
	--login-file "$WORK/logins"
"$HOSTILE" > "$WORK/hostile.out" 2> "$WORK/hostile.log" &
PIDS+=($!)
wait_for 5 has_line "$WORK/hostile.out" '^listening on ' || fail "hostile relay starts"
HOSTILE_URL=$(sed -n 's/^listening on //p' "$WORK/hostile.out")
cat >> "$WORK/devices.conf" <<C
[device closer]
url = $CLOSER_URL/v5/iot/tunnels/t-other/source-connect
token_file = $WORK/wrong.tok

[device stall]
url = $STALL_URL/v5/iot/tunnels/t-other/source-connect
token_file = $WORK/right.tok
username = field

[device hostile]
url = $HOSTILE_URL/v5/iot/tunnels/h/source-connect
token_file = $WORK/right.tok
username = field

[console]
heartbeat = 1
C
# the expiring tunnel comes as a create-tunnel response, so its expiry is known
sed -i '/^\[device expiring\]/,/^$/d' "$WORK/devices.conf"
printf '{"tunnel_id":"t-expiring","device_id":"expiring","tunnel_uri":"wss://localhost:%s/v5/iot/tunnels/t-expiring/source-connect","tunnel_access_token":"%s","expires_in":25}\n' \
	"$MAIN_PORT" "$(cat "$WORK/expiring.app")" > "$WORK/create.json"

tui_start 110x44 -c "$WORK/devices.conf" --tunnel-json "$WORK/create.json" --cacert "$CERTS/ca.pem" --user field \
	--log "$WORK/console.log"
device_row() {	# device_row NAME: the state line under the device in the list
	tui_screen | grep -A1 "^ $1 " | sed -n 2p
}
row_has() { device_row "$1" | grep -qE -- "$2"; }

# the device first, then the app; and the app first, then the device
wait_for 10 row_has fine '^  online' && ok "device before app: online" || fail "device before app" "$(tui_screen)"
wait_for 10 row_has late 'waiting for device' && ok "app before device: waiting for device" \
	|| fail "app before device: waiting" "$(tui_screen)"
PLATFORM_PORT=$MAIN_PORT device_up late full
wait_for 10 row_has late '^  online' && ok "app before device: online when the device arrives" \
	|| fail "app before device: online" "$(tui_screen)"

# a token that expires in 25 s: counted down, then the platform ends it
tui_keys C-g 7
tui_wait 'expiring │.*token [0-9]m[0-9]+s' 5 && ok "token expiry: a countdown in the status bar" || fail "expiry countdown" "$(tui_screen)"
check "token expiry: a warning under the device before it expires" row_has expiring 'expires [0-9]m[0-9]+s'
tui_keys C-g n
tui_login
tui_run 'echo exp-$((5*5))' 'exp-25' || fail "expiring session" "$(tui_screen)"

# bad tokens: HTTP 401 before the upgrade, and upgrade + close 1002; no retry loop
wait_for 10 row_has badtok 'auth failed' && ok "bad token (HTTP 401): auth failed" || fail "401 auth failed" "$(tui_screen)"
check "bad token (HTTP 401): the reason is shown" bash -c "tmux -S '$TMUX_SOCK' capture-pane -p | grep -A2 '^ badtok' | grep -q 'HTTP 401'"
wait_for 10 row_has closer 'auth failed' && ok "bad token (close 1002): auth failed" || fail "1002 auth failed" "$(tui_screen)"
check "bad token (close 1002): the reason is shown" bash -c "tmux -S '$TMUX_SOCK' capture-pane -p | grep -A2 '^ closer' | grep -q 'closed 1002'"
if wait_for 4 bash -c "[ \$(grep -c 'auth failed for tunnel t-badtok' '$WORK/relay.log') -ge 2 ]"; then
	fail "bad token: no retry in a loop" "$(grep t-badtok "$WORK/relay.log")"
else
	ok "bad token: no retry in a loop (one attempt in 4 s)"
fi

# SSH login failure: 400 inline, and the dialog asks again, as ssh does (3 tries)
tui_keys C-g 1 C-g n
tui_wait 'password' 5 && tui_type "not-$PASS" && tui_keys Enter
tui_wait 'disconnected 400' 10 && ok "bad password: 400 inline" || fail "400 inline" "$(tui_screen)"
tui_wait 'login refused: try again \(2 of 3\)' 5 && ok "bad password: the dialog asks again (2 of 3)" \
	|| fail "asks again" "$(tui_screen)"
tui_type "still-not-$PASS"
tui_keys Enter
tui_wait 'login refused: try again \(3 of 3\)' 10 && ok "… and a third time (3 of 3)" || fail "asks a third time" "$(tui_screen)"
tui_type "$PASS"
tui_keys Enter
tui_run 'echo in-$((6*7))' 'in-42' || fail "login after a bad password" "$(tui_screen)"

# 1 MB of mixed UTF-8, CJK and escapes: all of it arrives and stays searchable
awk 'BEGIN { for (i = 1; i <= 11000; i++)
	printf "L%06d \033[1;3%dm漢字かな\033[0m ⟨%s⟩ \033[38;5;%dm█▓▒░\033[0m %s\n", i, i % 8,
	"mixed UTF-8 — ß ø ñ", i % 256, "xxxxxxxxxxxxxxxxxxxxxxxxxxxx" }' > "$WORK/big.txt"
check "the 1 MB fixture is at least 1 MB" [ "$(stat -c %s "$WORK/big.txt")" -ge 1000000 ]
tui_run "cat $WORK/big.txt; echo END-\$((7*6))" 'END-42' 30 && ok "1 MB output: the end arrives" || fail "1 MB end" "$(tui_screen)"
check "1 MB output: the last line shows whole" tui_has 'L011000 漢字かな ⟨mixed UTF-8 — ß ø ñ⟩ █▓▒░ x+'
tui_keys C-g '['
tui_keys /
tui_type 'L008123 '
tui_keys Enter
wait_for 5 bash -c "tmux -S '$TMUX_SOCK' capture-pane -p | head -1 | grep -q '│L008123 漢字かな ⟨mixed UTF-8 — ß ø ñ⟩ █▓▒░'" && ok "1 MB output: a line 2900 lines up is in the scrollback, intact" \
	|| fail "1 MB scrollback search" "$(tui_screen)"
tui_keys q

# a 50 KB paste: chunked, intact, in order
awk 'BEGIN { for (i = 1; i <= 1100; i++) printf "p%04d 漢字 paste line, the quick brown fox %d\n", i, i * 7 }' > "$WORK/paste.in"
check "the paste fixture is 50 KB" [ "$(stat -c %s "$WORK/paste.in")" -ge 50000 ]
# raw mode on the device: a canonical tty crawls through a 50 KB line stream
SIZE=$(stat -c %s "$WORK/paste.in")
# paste only once the shell runs the command (READY is output, not the echo):
# until then bash is still in bracketed-paste mode and would frame the paste
tui_run "stty raw -echo; echo READY-\$((2*5)); head -c $((SIZE + 1)) > $WORK/paste.out; stty sane; echo got-\$((3*7))" 'READY-10' 30 \
	|| fail "50 KB paste: the reader starts" "$(tui_screen)"
tmux -S "$TMUX_SOCK" load-buffer "$WORK/paste.in"
tmux -S "$TMUX_SOCK" paste-buffer -p
tui_type 'Z'	# typed after the paste: must arrive after it
tui_wait 'got-21' 60 && ok "50 KB paste: the device read all of it" || fail "50 KB paste: all read" "$(tui_screen)"
check "50 KB paste: arrives intact and in order" bash -c "head -c $SIZE '$WORK/paste.out' | tr '\r' '\n' | cmp -s - '$WORK/paste.in'"
check "50 KB paste: a key typed after the paste arrives after it" bash -c "[ \"\$(tail -c 1 '$WORK/paste.out')\" = Z ]"
tui_run 'echo alive-$((9*9))' 'alive-81' && ok "the session works on after the paste" || fail "session alive after the paste" "$(tui_screen)"
# the relay logs every oversize message as "message over N bytes ... (413, ...)";
# match that phrase, not the bare number: the log's epoch timestamps hold "413" too
check "50 KB paste: sent in chunks under 10 KB (the relay refused none)" \
	bash -c "grep -q ': app connected$' '$WORK/relay.log' && ! grep -q 'message over .* (413, closing 1009)' '$WORK/relay.log'"

# a relay that stops answering: the heartbeat notices, the session says why
tui_keys C-g 5 C-g n
tui_login
tui_wait 'no traffic for 3 s|disconnected 1006' 20 && ok "relay stalls: heartbeat timeout ends the session inline" \
	|| fail "heartbeat timeout" "$(tui_screen)"
wait_for 10 row_has stall 'retry in|connecting|waiting' && ok "relay stalls: the tunnel reconnects with backoff" \
	|| fail "stall: reconnecting" "$(tui_screen)"

# a hostile relay: garbage of every kind, then a working device
wait_for 10 row_has hostile 'online · [0-9]+ bad' && ok "hostile relay: bad frames counted, the tunnel stays up" \
	|| fail "hostile: counted" "$(tui_screen)"
tui_keys C-g 6 C-g n
tui_login
tui_wait 'HOSTILE-ALIVE' 5 && tui_type 'still-here' && tui_wait 'still-here' 5 \
	&& ok "hostile relay: the console survives and still works" || fail "hostile: survives" "$(tui_screen)"

# the token expired meanwhile: the platform ended the tunnel, the status bar says so
tui_keys C-g 7
tui_wait 'disconnected 401' 20 && ok "token expiry: the session ended with 401 inline" || fail "expiry 401" "$(tui_screen)"
tui_wait 'TOKEN EXPIRED' 5 && ok "token expiry: the status bar says TOKEN EXPIRED" || fail "TOKEN EXPIRED" "$(tui_screen)"

# replacement: a second application takes the tunnel; no reconnect fight
tui_keys C-g 1
tui_wait 'alive-81' 5
mkfifo "$WORK/replacer.in"
"$CLIENT" --url "wss://localhost:$MAIN_PORT/v5/iot/tunnels/t-fine/source-connect" \
	--token-file "$WORK/fine.app" --cacert "$CERTS/ca.pem" < "$WORK/replacer.in" > "$WORK/replacer.out" 2>&1 &
PIDS+=($!)
exec 9> "$WORK/replacer.in"
tui_wait 'disconnected 409' 10 && ok "replaced by a newer connection: 409 inline" || fail "409 inline" "$(tui_screen)"
wait_for 10 row_has fine 'closed' && ok "replaced: the tunnel stays closed (close 4000, no retry)" || fail "4000 closed" "$(tui_screen)"
tui_keys C-g 1
tui_wait 'closed 4000: another' 5 && tui_has 'connection took this' \
	&& ok "replaced: the list says another connection took the tunnel" \
	|| fail "4000 in words" "$(tui_screen)"
exec 9>&-

check "the password never shows on screen" tui_lacks "$PASS"
tui_keys C-g q
tui_wait 'Quit' 3 && tui_keys y
tui_wait 'EXIT=0' 5 && ok "quits cleanly after all of it" || fail "quit" "$(tui_screen)"
finish
