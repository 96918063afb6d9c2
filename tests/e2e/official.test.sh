#!/bin/bash
# Field fidelity: the console against devices that behave as the official
# Huawei C device SDK was measured to (the agent's c-sdk profile): the one
# session and the 128x30 PTY learned from connect_response, a second login
# that asks and never crosses keystrokes, CJK output cut anywhere by raw
# 2048-byte reads, the wedge after a shell exit (no 408, or a 408 and then
# silence; a stale 408 on the next connect), and a quit the platform sees
# as close 1000.
source "$(dirname "$0")/../lib.sh"

sandbox_up meter:c-sdk wno:none || { fail "sandbox starts"; finish; }
device_up wno c-sdk --wedge no-408
conf_extra wno 'login_timeout = 3'
write_devices_conf
# w408 is opened by its device ID: Ctrl-g c makes it a new tunnel, which the
# device follows (its events channel stands in for MQTT's tunnel_notify)
start_device w408 --device-id w408 --events "wss://localhost:$PLATFORM_PORT/sandbox/devices/w408/events" \
	--backend pty --login-file "$WORK/logins" --profile c-sdk --wedge 408 --cacert "$CERTS/ca.pem"
wait_for 10 has_line "$PLATFORM_LOG" 'device w408: events channel open' \
	|| fail "w408 holds its events channel" "$(cat "$WORK/w408.log")"
cat >> "$WORK/devices.conf" <<C
[device w408]
device_id = w408
username = field
login_timeout = 3

[iotda]
endpoint = https://localhost:$PLATFORM_PORT
project_id = p1
token_file = $WORK/api.token
cacert = $CERTS/ca.pem
C
# CJK after ASCII, 4 bytes a pair: 2048-byte reads cut every other character
# boundary inside a character, often right after its lead byte (where
# libvterm 0.1.4 would show two U+FFFD)
awk 'BEGIN { split("漢 字 仮 名", c, " "); for (i = 1; i <= 400; i++) { l = sprintf("%03d", i);
	for (j = 0; j < 30; j++) l = l "a" c[1 + j % 4]; print l } }' > "$WORK/cjk.txt"

tui_start 120x44 -c "$WORK/devices.conf" --log "$WORK/console.log"
device_row() { tui_screen | grep -A1 "^ $1 " | sed -n 2p; }
row_has() { device_row "$1" | grep -qE -- "$2"; }
wait_for 10 row_has meter '^  online' || fail "meter online" "$(tui_screen)"

# the first login teaches the console what the device is
tui_keys C-g 1 C-g n
tui_login
tui_run 'echo first-$((20+1))' 'first-21' || fail "first session runs" "$(tui_screen)"
wait_for 5 row_has meter 'online · single' && ok "connect_response without data: the list says single" \
	|| fail "single learned" "$(tui_screen)"
tui_type "clear; printf '\\033[999;1HLAST-ROW'"
tui_keys Enter
wait_for 5 tui_line_has 30 'LAST-ROW' && ok "the pane runs the device's 128x30 PTY (last row is row 30)" \
	|| fail "128x30 learned" "$(tui_screen | grep -n LAST-ROW)"
tui_keys C-l

# a second login asks, replaces the first, and nothing typed there is sent
tui_keys C-g n
tui_wait 'runs one SSH session: a new login replaces' 5 && ok "a second login asks first" || fail "asks" "$(tui_screen)"
tui_keys y
tui_login
tui_run 'echo second-$((30+2))' 'second-32' || fail "second session runs" "$(tui_screen)"
tui_keys C-g k
tui_wait '── replaced by a newer login: this device runs one session at a time ──' 5 \
	&& ok "the replaced session ends inline, saying why" || fail "replaced inline" "$(tui_screen)"
tui_type 'echo CROSSED-$((40+3))'	# no Enter: on an ended session, Enter offers to reopen it
tui_wait 'this session has ended' 5 && ok "keys typed into the replaced session are refused" || fail "refused" "$(tui_screen)"
tui_keys C-g j
tui_wait 'second-32' 5 && tui_lacks 'CROSSED' && ok "… and never reach the device's one shell" \
	|| fail "no crossed keys" "$(tui_screen)"

# CJK cut by raw reads: every character whole, on screen and in the scrollback
tui_run "cat $WORK/cjk.txt; echo CJK-\$((50+5))" 'CJK-55' 20 || fail "cjk output" "$(tui_screen)"
tui_has '│400(a漢a字a仮a名){7}' && tui_lacks '�' && ok "CJK split by 2048-byte reads: no replacement characters on screen" \
	|| fail "CJK on screen" "$(tui_screen | grep -n '�' | head -3)"
tui_keys C-g '[' /
tui_type '�'
tui_keys Enter
tui_wait 'not found above' 5 && ok "… nor anywhere in the scrollback" || fail "CJK scrollback" "$(tui_screen | tail -3)"
tui_keys q

# no 408 after exit: the next login gets connect_response, a stale 408, then silence
tui_keys C-g 2
wait_for 10 row_has wno '^  online' || fail "wno online" "$(tui_screen)"
tui_keys C-g n
tui_login
tui_run 'echo wno-$((60+6))' 'wno-66' || fail "wno session" "$(tui_screen)"
tui_type 'exit'
tui_keys Enter
wait_for 10 has_line "$WORK/wno-1.log" 'wedged: no 408' || fail "the agent wedged without a 408" "$(tail -3 "$WORK/wno-1.log")"
tui_keys C-g n
tui_wait 'runs one SSH session' 5 && tui_keys y
tui_login
wait_for 10 has_line "$WORK/wno-1.log" 'wedged: stale 408 sent' || fail "the stale 408 was sent" "$(tail -3 "$WORK/wno-1.log")"
wait_for 5 has_line "$WORK/console.log" 'wno: ignored a late 408' && ok "a stale 408 does not end the new session" \
	|| fail "stale 408 ignored" "$(tail -3 "$WORK/console.log")"
tui_wait '── no output 3 s after the device took the login: it looks wedged; \^G c reconnects the tunnel' 10 \
	&& ok "no output after connect_response: the session ends saying it looks wedged and what to do" \
	|| fail "login timeout inline" "$(tui_screen)"
tui_lacks 'disconnected 408' && ok "… not with the misleading 408" || fail "no 408 line" "$(tui_screen)"

# a 408 after exit, then a wedge: Ctrl-g c reconnects, and the device works again
tui_keys C-g 3
wait_for 10 row_has w408 '^  online' || fail "w408 online" "$(tui_screen)"
tui_keys C-g n
tui_login
tui_run 'echo w408-$((70+7))' 'w408-77' || fail "w408 session" "$(tui_screen)"
tui_type 'exit'
tui_keys Enter
tui_wait '── session ended: the shell exited \(official devices need a new tunnel' 10 \
	&& ok "the user's exit on an official device: neutral, with the remedy for its wedge" || fail "408 inline" "$(tui_screen)"
tui_keys Enter
tui_login
tui_wait 'no output 3 s after the device took the login: it looks wedged; \^G c makes a new tunnel' 10 \
	&& ok "the wedge after the 408: login timeout inline, a new tunnel offered" || fail "408 wedge" "$(tui_screen)"
tui_keys C-g 3 C-g c
wait_for 15 bash -c "[ \$(grep -c 'tunnel_notify for tunnel' '$WORK/w408.log') -ge 2 ]" \
	|| fail "the device hears of the new tunnel" "$(tail -3 "$WORK/w408.log")"
wait_for 15 row_has w408 '^  online' || fail "w408 back online" "$(tui_screen)"
tui_keys C-g n
tui_login
tui_run 'echo healed-$((80+8))' 'healed-88' && ok "Ctrl-g c makes a new tunnel and the device works again" \
	|| fail "healed" "$(tui_screen)"

# quitting says close 1000 to the platform on every open tunnel
tui_keys C-g q
tui_wait 'Quit\?' 5 && tui_keys y
tui_wait 'EXIT=0' 10 || fail "quit" "$(tui_screen)"
for d in meter wno; do
	check "quit: the platform saw close 1000 from the app on t-$d" \
		has_line "$PLATFORM_LOG" "tunnel t-$d: app gone \\(close 1000\\)"
done
check "quit: … and on the API-made tunnel" \
	bash -c "[ \$(grep -c 'app gone (close 1000)' '$PLATFORM_LOG') -ge 4 ]"
finish
