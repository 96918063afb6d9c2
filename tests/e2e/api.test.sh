#!/bin/bash
# Open a device by its ID, end to end: the console signs IoTDA API calls with
# AK/SK, creates the tunnel, the device agent hears of it on its events
# channel (the sandbox's MQTT stand-in) and connects, a session runs, and the
# console closes the tunnel when the user closes the device and on quit.
# API errors show in the list with the service's code and message.
source "$(dirname "$0")/../lib.sh"

umask 077
echo "sk/$RANDOM+$RANDOM=" > "$WORK/sk"
echo 'field:'"$PASS" > "$WORK/logins"
echo '["pump-42","quiet-7"]' > "$WORK/devices.json"
start_platform relay --ak AK-TEST --sk-file "$WORK/sk" --devices "$WORK/devices.json" --require-online \
	|| { fail "relay starts"; finish; }
EVENTS=${PLATFORM_URL}/sandbox/devices
start_device agent --device-id pump-42 --events "$EVENTS/pump-42/events" --login-file "$WORK/logins"
wait_for 10 has_line "$PLATFORM_LOG" 'device pump-42: events channel open' || fail "the agent holds its events channel" "$(cat "$WORK/agent.log")"
cat > "$WORK/api.conf" <<C
[iotda]
endpoint = http://${PLATFORM_URL#ws://}
region = cn-north-4              ; the relay's (derived signing: loopback names none)
project_id = proj-1
instance_id = inst-9

[device pump]
device_id = pump-42
username = field

[device quiet]
device_id = quiet-7
username = field

[device ghost]
device_id = no-such-device
C
SK=$(cat "$WORK/sk")
TMUX_SOCK=$WORK/tmux.sock
tmux -S "$TMUX_SOCK" -f /dev/null new-session -d -x 110 -y 30 \
	"env HUAWEICLOUD_SDK_AK=AK-TEST HUAWEICLOUD_SDK_SK='$SK' $CONSOLE -c $WORK/api.conf --log $WORK/console.log 2>$WORK/tui.err; echo EXIT=\$?; sleep 600"
device_row() { tui_screen | grep -A2 "^ $1 " | sed -n "${2:-2}p"; }
row_has() { device_row "$1" "${3:-2}" | grep -qE -- "$2"; }

check "signed create: the relay verified the derived AK/SK signature" \
	wait_for 10 has_line "$PLATFORM_LOG" 'POST /v5/iot/\{project_id\}/tunnels: 201 \(derived AK/SK\)'
wait_for 10 has_line "$WORK/agent.log" 'tunnel_notify for tunnel' && ok "the device was told over its events channel" \
	|| fail "tunnel_notify reached the agent" "$(cat "$WORK/agent.log")"
wait_for 10 row_has pump '^  online' && ok "console and device both connected: online" || fail "pump online" "$(tui_screen)"
tui_keys C-g 1
tui_wait 'API: tunnel OPEN, device CONNECTED' 40 && ok "the tunnel's state from the API shows" || fail "API state shown" "$(tui_screen)"
tui_keys C-g n
tui_login
tui_run 'echo api-$((6*7))' 'api-42' && ok "a session runs over the API-made tunnel" || fail "session over API tunnel" "$(tui_screen)"

wait_for 5 row_has quiet 'API error' && ok "offline device: API error in the list" || fail "offline device" "$(tui_screen)"
tui_keys C-g 2
tui_wait 'API 400 IOTDA.014016' 5 && ok "offline device: the service's code and message" || fail "400 shown" "$(tui_screen)"
wait_for 5 row_has ghost 'API error' && ok "unknown device: API error in the list" || fail "unknown device" "$(tui_screen)"
tui_keys C-g 3
tui_wait 'API 404 IOTDA.014000' 5 && ok "unknown device: 404 and its code in the status bar" || fail "404 shown" "$(tui_screen)"

# the user closes the device: the WebSocket and the IoTDA tunnel both close
tui_keys C-g 1 C-g k
tui_keys C-g x
tui_wait 'Close the tunnel to pump' 5 && tui_keys y
wait_for 10 has_line "$PLATFORM_LOG" 'PUT /v5/iot/\{project_id\}/tunnels/\{tunnel_id\}: 204 \(derived AK/SK\)' \
	&& ok "closing the device closes the tunnel over the API (signed PUT)" || fail "PUT on close" "$(tail -5 "$PLATFORM_LOG")"
wait_for 5 row_has pump 'closed' && ok "the device shows closed" || fail "pump closed" "$(tui_screen)"
tui_keys C-g 1
tui_wait '── .*closed here' 5 && ok "the session ended inline" || fail "session ended inline" "$(tui_screen)"

# c: a new tunnel on demand; the device follows it
tui_keys C-g c
wait_for 10 bash -c "[ \$(grep -c 'POST /v5/iot/{project_id}/tunnels: 201' '$PLATFORM_LOG') -ge 2 ]" \
	&& ok "c creates a new tunnel" || fail "recreate" "$(tail -5 "$PLATFORM_LOG")"
wait_for 15 row_has pump '^  online' && ok "the device follows to the new tunnel: online" || fail "online again" "$(tui_screen)"

# quit: the tunnels the console made are closed
tui_keys C-g q
tui_wait 'Quit|EXIT=' 5 && tui_keys y
tui_wait 'EXIT=0' 10 && ok "quit" || fail "quit" "$(tui_screen)"
check "quit closed the open tunnel over the API" \
	bash -c "[ \$(grep -c 'PUT /v5/iot/{project_id}/tunnels/{tunnel_id}: 204' '$PLATFORM_LOG') -ge 2 ]"
check "the SK is not in the console's log" bash -c "! grep -qF -- '$SK' '$WORK/console.log'"
check "the SK is not in the relay's log" bash -c "! grep -qF -- '$SK' '$PLATFORM_LOG'"

# a wrong SK: 401 IOTDA.000002 from the relay, shown
tmux -S "$TMUX_SOCK" kill-server
TMUX_SOCK=$WORK/tmux2.sock	# a new server: no race with the dying one
tmux -S "$TMUX_SOCK" -f /dev/null new-session -d -x 110 -y 30 \
	"env HUAWEICLOUD_SDK_AK=AK-TEST HUAWEICLOUD_SDK_SK=wrong $CONSOLE -c $WORK/api.conf 2>$WORK/tui2.err; echo EXIT=\$?; sleep 600"
wait_for 10 row_has pump 'API error' && ok "wrong SK: API error" || fail "wrong SK" "$(tui_screen)"
tui_keys C-g 1
tui_wait 'API 401 IOTDA.000002' 5 && ok "wrong SK: 401 IOTDA.000002 shown" || fail "401 shown" "$(tui_screen)"

# one owner per device on this machine: the console above still holds pump
echo "$PASS" > "$WORK/pw"
CPID=
for p in $(pgrep -f "$CONSOLE -c $WORK/api.conf"); do	# the console, not the shell around it
	[ "$(cat /proc/$p/comm 2>/dev/null)" = tunnel_tui ] && CPID=$p
done
check "the console still runs (it holds its devices)" test -n "$CPID"
HUAWEICLOUD_SDK_AK=AK-TEST HUAWEICLOUD_SDK_SK=$SK "$CONSOLE" --exec 'echo held-$((3*3))' -c "$WORK/api.conf" \
	--devices pump --password-file "$WORK/pw" > "$WORK/held.out" 2>&1
check "--exec on a device a console holds: refused, naming the console" \
	grep -qE "^pump +locked +- .*held by tunnel_tui pid $CPID \(console\): --force" "$WORK/held.out"
check "… and nothing ran there" bash -c "! grep -q 'held-9' '$WORK/held.out'"
HUAWEICLOUD_SDK_AK=AK-TEST HUAWEICLOUD_SDK_SK=$SK "$CONSOLE" --exec 'echo forced-$((3*3))' -c "$WORK/api.conf" \
	--devices pump --force --password-file "$WORK/pw" > "$WORK/forced.out" 2>&1
check "--force runs it anyway" grep -qE '^pump +\| forced-9$' "$WORK/forced.out"
tmux -S "$TMUX_SOCK" kill-server
wait_for 10 bash -c "! kill -0 $CPID" || fail "the console ends with its tmux"

# batch exec by device id
HUAWEICLOUD_SDK_AK=AK-TEST HUAWEICLOUD_SDK_SK=$SK "$CONSOLE" --exec 'echo by-id-$((3*3))' -c "$WORK/api.conf" \
	--devices pump --password-file "$WORK/pw" > "$WORK/exec.out" 2>&1
check "--exec by device id: the command ran" grep -qE '^pump +\| by-id-9$' "$WORK/exec.out"
check "--exec by device id: the tunnel is closed afterwards" \
	bash -c "[ \$(grep -c 'PUT /v5/iot/{project_id}/tunnels/{tunnel_id}: 204' '$PLATFORM_LOG') -ge 4 ]"

# --exec over all three: the offline and the unknown device end at once,
# saying why, and the reachable one still runs
HUAWEICLOUD_SDK_AK=AK-TEST HUAWEICLOUD_SDK_SK=$SK "$CONSOLE" --exec 'echo all-$((4*4))' -c "$WORK/api.conf" \
	--all --user field --timeout 120 --password-file "$WORK/pw" > "$WORK/all.out" 2>&1
check "--exec --all: the reachable device ran the command" grep -qE '^pump +\| all-16$' "$WORK/all.out"
check "--exec --all: the offline device ends as offline, with the service's words" \
	grep -qE '^quiet +offline +- .*API 400 IOTDA.014016' "$WORK/all.out"
check "--exec --all: the unknown device ends as api error, with the service's words" \
	grep -qE '^ghost +api error +- .*API 404 IOTDA.014000' "$WORK/all.out"
check "--exec --all: neither waited for --timeout" bash -c "! grep -q timeout '$WORK/all.out'"
HUAWEICLOUD_SDK_AK=AK-TEST HUAWEICLOUD_SDK_SK=wrong "$CONSOLE" --exec 'true' -c "$WORK/api.conf" \
	--devices pump --timeout 120 --password-file "$WORK/pw" > "$WORK/badsk.out" 2>&1
check "--exec with a wrong SK: api error 401 IOTDA.000002 at once" \
	grep -qE '^pump +api error +- .*API 401 IOTDA.000002' "$WORK/badsk.out"
finish
