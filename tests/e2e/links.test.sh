#!/bin/bash
# Cellular-grade links, end to end through the link emulator
# (tests/sandbox/linkem) between the console and the relay: 300 ms round
# trips.  Predicted characters show before their echo could have come (the
# link is blackholed while they are typed) and stay right after it; nothing
# of a password typed at a silent prompt is ever drawn; a remote that drops
# a key is repaired; a stale link is shown in seconds, typing waits for it
# and goes when it answers, a dead one is named; and every stuck handshake
# (TCP that says nothing, TLS that says nothing, an upgrade never answered,
# a link that goes silent after it) ends in the normal retry.
source "$(dirname "$0")/../lib.sh"

sandbox_up fast:full slow:full || { fail "sandbox starts"; finish; }
start_linkem link --to "127.0.0.1:$PLATFORM_PORT" --delay 150 --jitter 20 --control "$WORK/link.ctl" \
	|| { fail "linkem starts"; finish; }
LINK_PORT=$LINKEM_PORT
link() { echo "$1" > "$WORK/link.ctl"; wait_for 5 has_line "$LINKEM_LOG" "$2"; }	# link LINE LOGREGEX
sed -i "s|$BASE/t-slow/|wss://localhost:$LINK_PORT/v5/iot/tunnels/t-slow/|" "$WORK/devices.conf"
conf_extra slow 'predict = auto'

# the hung handshakes: a silent TCP server, a silent TLS server, and an upgrade never answered
start_linkem mute --to "127.0.0.1:$PLATFORM_PORT" --blackhole on || fail "silent TCP server starts"
MUTE_PORT=$LINKEM_PORT
TLS_PORT=$(free_port)
mkfifo "$WORK/s_server.in"	# its input: held open by this shell, so it reads forever and says nothing
openssl s_server -quiet -accept "$TLS_PORT" -cert "$CERTS/server.pem" -key "$CERTS/server.key" \
	< "$WORK/s_server.in" > /dev/null 2> "$WORK/s_server.log" &
PIDS+=($!)
exec 7> "$WORK/s_server.in"
wait_for 10 bash -c "ss -Hltn 'sport = :$TLS_PORT' | grep -q ."
for d in tcpmute:$MUTE_PORT tlsmute:$TLS_PORT; do
	printf '[device %s]\nurl = wss://localhost:%s/v5/iot/tunnels/t-fast/source-connect\ntoken_file = %s\ncacert = %s\n\n' \
		"${d%%:*}" "${d#*:}" "$WORK/fast.app" "$CERTS/ca.pem" >> "$WORK/devices.conf"
done
printf '[console]\nheartbeat = 20\n' >> "$WORK/devices.conf"

tui_start 120x40 -c "$WORK/devices.conf" --log "$WORK/console.log"
device_row() { tui_screen | grep -A1 "^ $1 " | sed -n 2p; }
row_has() { device_row "$1" | grep -qE -- "$2"; }
wait_for 20 row_has slow '^  online' || fail "the slow device comes online through the link" "$(tui_screen)"
tui_keys C-g 2 C-g n
tui_login
tui_run 'echo slow-$((2*21))' 'slow-42' 10 || fail "a session over the slow link" "$(tui_screen)"
wait_for 30 bash -c "tmux -S '$TMUX_SOCK' capture-pane -p | tail -1 | grep -qE 'rtt (2[5-9][0-9]|[3-9][0-9]{2}) ms'" \
	&& ok "the round trip through the link is measured (300 ms, ± 2 × 20 ms of jitter)" || fail "rtt" "$(tui_screen | tail -1)"

# prediction: the epoch proves itself on its first echo, then keys show before theirs
tui_type 'echo '
tui_wait '[$#] echo$' 5 || fail "the first keys' echo" "$(tui_screen)"
link 'blackhole on' 'blackhole on'
tui_type 'ahead'
tui_wait '[$#] echo ahead$' 2 && ok "prediction: typed keys show while no echo can come (link blackholed)" \
	|| fail "predicted" "$(tui_screen)"
check "… underlined, as unconfirmed on a slow link" \
	bash -c "tmux -S '$TMUX_SOCK' capture-pane -p -e | grep -q $'\\e\\[4m[a-z]*h[a-z]*'"
link 'blackhole off' 'blackhole off'
tui_keys Enter
tui_wait '^ahead$|│ahead$' 10 && ok "… and the echo, when it comes, agrees: the command ran" || fail "confirmed" "$(tui_screen)"

# a password at a silent prompt: nothing of it is drawn, whatever the link
tui_run "read -rs -p 'secret: ' pw; echo; echo got-\${#pw}" 'secret:$' 10 || fail "silent prompt" "$(tui_screen)"
link 'blackhole on' 'blackhole on'
tui_type 'hunter2xyzzy'
sleep 1	# a window in which a wrongly shown prediction would be on screen (nothing to await)
check "a password typed at a silent prompt: no character of it is drawn" tui_lacks 'hunter|xyzzy|h.*u.*n.*t.*e.*r'
link 'blackhole off' 'blackhole off'
tui_keys Enter
tui_wait 'got-12' 10 && ok "… and it reached the remote whole" || fail "password arrived" "$(tui_screen)"
tui_lacks 'hunter2' && ok "… and still none of it shows" || fail "password shown" "$(tui_screen)"

# a remote that drops a key: the screen ends as the remote's, no predicted x left
tui_run "stty -echo -icanon; while c=\$(dd bs=1 count=1 2>/dev/null); [ \"\$c\" != q ]; do [ \"\$c\" = x ] || printf %s \"\$c\"; done; stty sane; echo; echo done-\$((7*7))" 'ready|done|\$ $' 2
tui_type 'a'
tui_wait '│a$|^a$' 10 || fail "the dropping reader echoes" "$(tui_screen)"
tui_type 'bxcd'
tui_wait 'abcd$' 10 && ok "a misprediction (the remote dropped x): repaired from the echo" || fail "repaired" "$(tui_screen)"
check "… no wrong character left on screen" bash -c "! tmux -S '$TMUX_SOCK' capture-pane -p | grep -q 'abx'"
tui_type 'q'
tui_wait 'done-49' 10 || fail "the reader ends" "$(tui_screen)"

# a stale link: said in seconds, typing waits, and goes when the link answers again
link 'blackhole on' 'blackhole on'
tui_type 'echo held-'
tui_wait 'NO ANSWER FOR [3-9] s' 10 && ok "stale link: the status bar counts the silence within seconds" \
	|| fail "stale notice" "$(tui_screen | tail -1)"
check "… the device row says so too" row_has slow 'no answer [0-9]+s'
check "… and no stale round trip is shown" tui_lacks 'rtt [0-9]+ ms'
tui_type 'ok'
link 'blackhole off' 'blackhole off'
tui_keys Enter
tui_wait '^held-ok$|│held-ok$' 15 && ok "stale link back: typing held meanwhile arrives, in order" || fail "held keys" "$(tui_screen)"
wait_for 10 has_line "$WORK/console.log" 'slow: answering again' && ok "… the list says it answers again" || fail "answering again"

# a dead link: typing unanswered for 10 s ends the session, naming what was not delivered
link 'blackhole on' 'blackhole on'
tui_type 'echo lost'
tui_wait 'no answer for 1[0-9] s' 20 && ok "a dead link is found within about 10 s of unanswered typing" \
	|| fail "dead link" "$(tui_screen)"
tui_wait 'typed bytes? (sent but never answered|not sent)' 5 && ok "… and the session's end says what typing was lost" \
	|| fail "lost typing named" "$(tui_screen)"
link 'blackhole off' 'blackhole off'
wait_for 40 row_has slow '^  online' && ok "link back: the tunnel reconnects" || fail "reconnect" "$(tui_screen)"

# the stuck handshakes each end with the phase named, then the normal retry
wait_for 30 has_line "$WORK/console.log" 'tcpmute: cannot connect to localhost:[0-9]+: no answer to the TLS handshake' \
	&& ok "a server that accepts TCP and says nothing: given up on, saying where" || fail "TCP silent" "$(grep tcpmute "$WORK/console.log")"
wait_for 30 has_line "$WORK/console.log" 'tlsmute: cannot connect to localhost:[0-9]+: no answer to the WebSocket upgrade' \
	&& ok "a server that finishes TLS and says nothing: given up on at the upgrade" || fail "TLS silent" "$(grep tlsmute "$WORK/console.log")"
wait_for 10 row_has tcpmute 'retry in' && ok "… each ends in the normal retry" || fail "retry after hang" "$(tui_screen)"
finish
