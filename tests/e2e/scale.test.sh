#!/bin/bash
# Fifty devices, one engineer, and more: a list of 200 devices that scrolls
# with the selection and says what lies beyond its edges, compact mode, the
# filter; the device picker over the sandbox's ListDevices (paged, rate
# limited); and --exec --where over 300 devices with --parallel as the
# governor (never more tunnels in use at once than it allows).
source "$(dirname "$0")/../lib.sh"

# 200 devices, two of them with an agent: the list is what is tested
specs=(pump-001:full pump-002:c-sdk)
for i in $(seq -f %03g 3 200); do specs+=("pump-$i:none"); done
sandbox_up "${specs[@]}" || { fail "sandbox starts"; finish; }
tui_start 120x40 -c "$WORK/devices.conf" --log "$WORK/console.log"
tui_wait 'pump-001' 10 || fail "the console starts" "$(tui_screen)"
tui_wait '▼ [0-9]+ more devices' 10 && ok "200 devices: the list says how many more are below" \
	|| fail "more below" "$(tui_screen)"
for i in $(seq 1 20); do tui_keys C-g Tab; done
wait_for 5 tui_has '│  pump-021' || fail "Tab x20 selects pump-021" "$(tui_screen)"
check "the selected device is in view in the list" tui_has '^ pump-021 '
check "… with the devices above counted" tui_has '▲ [0-9]+ more devices'
tui_keys C-g v
wait_for 5 tui_has '^ pump-021 +waiting' && ok "compact: a row per device, state beside the name" \
	|| fail "compact row" "$(tui_screen)"
rows=$(tui_screen | grep -cE '^ pump-[0-9]{3} ')
check "compact: a screenful of devices ($rows rows for 40 lines)" [ "$rows" -ge 36 ]
tui_keys C-g /
tui_type 'pump-15'
tui_wait 'filter: pump-15 +10 devices' 5 && ok "the filter narrows the list as you type (10 of 200)" \
	|| fail "filter count" "$(tui_screen | tail -1)"
shown=$(tui_screen | grep -cE '^ pump-15[0-9] ')
check "… to the matching devices only ($shown shown, none else)" \
	[ "$shown" -eq 10 -a "$(tui_screen | grep -cE '^ pump-')" -eq 10 ]
tui_keys Down Down Enter
tui_wait '│  pump-152' 5 && ok "Enter jumps to the chosen match" || fail "filter jump" "$(tui_screen)"
tui_has '▲ [0-9]+ more devices' && ok "… and the whole list is back, scrolled to it" || fail "filter ends" "$(tui_screen)"
tui_keys C-g q
tui_wait 'EXIT=0' 5 || fail "quit" "$(tui_screen)"

# the picker: 120 devices over ListDevices pages of 50, a rate limit
echo "picker-$RANDOM" > "$WORK/api2.token"
awk 'BEGIN { printf "["; for (i = 1; i <= 120; i++) printf "%s{\"device_id\":\"site-%03d\",\"name\":\"%s %03d\",\"product_name\":\"%s\",\"status\":\"%s\"}",
	(i > 1 ? "," : ""), i, (i % 3 ? "pump" : "meter"), i, (i % 3 ? "Pump" : "Meter"), (i % 4 ? "ONLINE" : "OFFLINE"); print "]" }' > "$WORK/fleet.json"
PLATFORM_PORT=0 start_platform picker --cert "$CERTS/server.pem" --key "$CERTS/server.key" \
	--api-token-file "$WORK/api2.token" --devices "$WORK/fleet.json" --rate-limit 2 || fail "picker relay starts"
PICK_LOG=$PLATFORM_LOG
cat > "$WORK/picker.conf" <<C
[iotda]
endpoint = https://localhost:${PLATFORM_URL##*:}
project_id = p1
token_file = $WORK/api2.token
cacert = $CERTS/ca.pem
C
tui_start 120x40 -c "$WORK/picker.conf" --user field --log "$WORK/picker-console.log"
tui_wait 'No devices yet: .* o opens one' 10 && ok "no devices configured: the console starts, pointing at the picker" \
	|| fail "empty start" "$(tui_screen)"
tui_keys C-g o
tui_wait '120 of 120 devices' 20 && ok "the picker lists every device, page by page" || fail "picker loads" "$(tui_screen)"
check "… asking ListDevices for pages of 50 until the last" \
	bash -c "[ \$(grep -c 'GET /v5/iot/{project_id}/devices: 200' '$PICK_LOG') -eq 3 ]"
check "… slowed, not stopped, by the API's rate limit (429 IOTDA.021101, then again)" \
	grep -q 'API busy (429)' "$WORK/picker-console.log"
tui_type 'meter'
tui_wait '40 of 120 devices' 5 && ok "the picker filters by name as you type" || fail "picker filter" "$(tui_screen)"
tui_keys BSpace BSpace BSpace BSpace BSpace
tui_type 'OFFLINE'
tui_wait '30 of 120 devices' 5 && ok "… and by status" || fail "status filter" "$(tui_screen)"
tui_keys Enter
tui_wait 'is OFFLINE: a tunnel made now waits for it' 5 && ok "an offline device is flagged before any tunnel is made" \
	|| fail "offline flagged" "$(tui_screen)"
check "… and no tunnel was made" bash -c "! grep -q 'POST /v5/iot/{project_id}/tunnels' '$PICK_LOG'"
tui_keys n
tui_keys C-g o
tui_keys BSpace BSpace BSpace BSpace BSpace BSpace BSpace
tui_type 'pump 002'
tui_wait 'pump 002: no open tunnel' 10 && ok "the highlighted device's tunnels are asked (ListDeviceTunnels)" \
	|| fail "tunnels asked" "$(tui_screen)"
tui_keys Enter
wait_for 10 has_line "$PICK_LOG" 'POST /v5/iot/\{project_id\}/tunnels: 201' && ok "Enter opens it: the tunnel is created" \
	|| fail "picker opens" "$(tail -3 "$PICK_LOG")"
tui_wait '^ pump 002' 5 && ok "… and it joins the list" || fail "joins the list" "$(tui_screen)"
tui_keys C-g q
tui_wait 'EXIT=0' 5 || fail "quit picker console" "$(tui_screen)"

# --exec --where over 300 devices (60 under the sanitizers), --parallel 8
N=300; [ -n "${ASAN:-}" ] && N=60
echo "gov-$RANDOM" > "$WORK/api3.token"
awk -v n=$N 'BEGIN { printf "["; for (i = 1; i <= n; i++) printf "%s{\"device_id\":\"g%03d\",\"name\":\"%s-%03d\",\"status\":\"ONLINE\"}",
	(i > 1 ? "," : ""), i, (i % 10 ? "pump" : "tank"), i; print "]" }' > "$WORK/gov.json"
PLATFORM_PORT=0 start_platform gov --cert "$CERTS/server.pem" --key "$CERTS/server.key" \
	--api-token-file "$WORK/api3.token" --devices "$WORK/gov.json" || fail "governor relay starts"
GOV_LOG=$PLATFORM_LOG GOV_PORT=${PLATFORM_URL##*:}
for i in $(seq -f %03g 1 $N); do
	start_device "g$i" --device-id "g$i" --events "wss://localhost:$GOV_PORT/sandbox/devices/g$i/events" \
		--backend pty --login-file "$WORK/logins" --cacert "$CERTS/ca.pem"
done
wait_for 120 bash -c "[ \$(grep -c 'events channel open' '$GOV_LOG') -ge $N ]" || fail "$N agents hold their events channels"
cat > "$WORK/gov.conf" <<C
[iotda]
endpoint = https://localhost:$GOV_PORT
project_id = p1
token_file = $WORK/api3.token
cacert = $CERTS/ca.pem
C
echo "$PASS" > "$WORK/pw"
"$CONSOLE" --exec 'sleep 1; echo gov-$((6*7))' -c "$WORK/gov.conf" --where 'name~pump' --where status=ONLINE \
	--user field --parallel 8 --timeout 120 --password-file "$WORK/pw" > "$WORK/gov.out" 2> "$WORK/gov.err"
want=$((N - N / 10))
check "--where: every pump ran the command ($want of $N devices; tanks left out)" \
	bash -c "[ \$(grep -cE '^pump-[0-9]{3} +\\| gov-42$' '$WORK/gov.out') -eq $want ]"
check "… every one ok in the summary" bash -c "[ \$(grep -cE '^pump-[0-9]{3} +ok ' '$WORK/gov.out') -eq $want ]"
check "… and no tank" bash -c "! grep -q '^tank-' '$WORK/gov.out'"
max=$(awk '/: app connected/ { n++; if (n > m) m = n } /: app gone/ { n-- } END { print m + 0 }' "$GOV_LOG")
check "--parallel 8: at most 8 tunnels in use at once (most seen: $max)" [ "$max" -ge 1 -a "$max" -le 8 ]
check "progress on stderr: done, running, left" grep -qE "tunnel_tui: $want done, 0 running, 0 left" "$WORK/gov.err"
finish
