#!/bin/sh
# make demo: the console against a local sandbox, TLS verification on.
# Starts the platform relay with three devices (two full-profile, one that
# behaves like the official C SDK; all on the pty backend), runs tunnel_tui,
# and stops the sandbox when the console quits.  Demo login: demo / demo.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
dir=$top/build/demo
certs=$top/build/certs
mkdir -p "$dir"
umask 077
pids=
stop() { for p in $pids; do kill "$p" 2>/dev/null || true; done; }
trap stop EXIT INT TERM HUP

token() { head -c 24 /dev/urandom | base64; }
: > "$dir/tunnels.json"
printf '[' > "$dir/tunnels.json"
sep=
for dev in pump-north pump-south meter-7; do
	token > "$dir/$dev.app-token"
	token > "$dir/$dev.device-token"
	printf '%s{"tunnel_id":"%s","device_id":"%s","source_token":"%s","device_token":"%s","expires_in":28800}' \
		"$sep" "demo-$dev" "$dev" "$(cat "$dir/$dev.app-token")" "$(cat "$dir/$dev.device-token")" >> "$dir/tunnels.json"
	sep=,
done
printf ']\n' >> "$dir/tunnels.json"
echo 'demo:demo' > "$dir/logins"
mkdir -p "$dir/home"	# the demo shells' HOME: a clean one

"$top/tests/sandbox/tunnel-platform" --listen 127.0.0.1:0 --cert "$certs/server.pem" \
	--key "$certs/server.key" --tunnels "$dir/tunnels.json" > "$dir/platform.out" 2> "$dir/platform.log" &
pids="$pids $!"
i=0
until grep -q '^listening on ' "$dir/platform.out"; do
	i=$((i + 1))
	[ $i -lt 200 ] || { echo "demo: the platform did not start:"; cat "$dir/platform.log"; exit 1; }
	sleep 0.05
done
port=$(sed -n 's/^listening on wss:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$dir/platform.out")
base=wss://localhost:$port/v5/iot/tunnels

for dev in pump-north pump-south meter-7; do
	profile=full
	[ "$dev" = meter-7 ] && profile=c-sdk
	"$top/tests/sandbox/tunnel-device" --url "$base/demo-$dev/device-connect" \
		--token-file "$dir/$dev.device-token" --backend pty --login-file "$dir/logins" \
		--profile "$profile" --cacert "$certs/ca.pem" --home "$dir/home" 2> "$dir/$dev.log" &
	pids="$pids $!"
done

cat > "$dir/devices.conf" <<CONF
# Written by make demo: the sandbox's three devices.
[device pump-north]
url = $base/demo-pump-north/source-connect
token_file = $dir/pump-north.app-token
username = demo
cacert = $certs/ca.pem

[device pump-south]
url = $base/demo-pump-south/source-connect
token_file = $dir/pump-south.app-token
username = demo
cacert = $certs/ca.pem

[device meter-7]
; behaves like an official device: the console learns at the first login
; that it runs one session at a time on a fixed 128x30 PTY
url = $base/demo-meter-7/source-connect
token_file = $dir/meter-7.app-token
username = demo
cacert = $certs/ca.pem
CONF

echo "tunnel_tui demo: log in with user demo, password demo (Ctrl-g n; Ctrl-g ? for keys)"
"$top/tunnel_tui" -c "$dir/devices.conf" --log "$dir/console.log"
