#!/bin/sh
# make demo: the console against a local sandbox, TLS verification on.
# Starts the platform relay with three devices (two full-profile, one that
# behaves like the official C SDK; all on the pty backend), runs tunnel_tui,
# and stops the sandbox when the console quits.  Demo login: demo / demo.
#
# The device shells never run as root.  Run as root (a fresh machine, CI),
# the demo makes a throwaway system account (demo-XXXXXX) with a home in a
# folder of its own under /tmp, has the agents run the shells as it
# (--run-as), and removes both when it ends.  Otherwise the shells run as the
# invoking user.
#
# DEMO_NO_CONSOLE=1: no console; with the sandbox up it prints
# "devices.conf PATH" and waits for SIGTERM, SIGINT or SIGHUP (for tests).
# DEMO_DIR: where its files go (default build/demo).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
dir=${DEMO_DIR:-$top/build/demo}
certs=$top/build/certs
mkdir -p "$dir"
umask 077
pids= runas= scratch=
home=$dir/home	# the demo shells' HOME: a clean one

stop() {	# the sandbox, then the throwaway account; once, whatever ends the demo
	trap '' INT TERM HUP
	trap - EXIT
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	for p in $pids; do wait "$p" 2>/dev/null || true; done	# the agents end their shells
	[ -z "$runas" ] || account_remove
	[ -z "$scratch" ] || rm -rf "$scratch"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Root only: the account the device shells run as, in no group but its own;
# its home in a folder others may pass through but not list.
account_add() {
	name=demo-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
	scratch=$(mktemp -d /tmp/tunnel-demo.XXXXXX)
	chmod 711 "$scratch"
	home=$scratch/home
	useradd --system --user-group --no-create-home --home-dir "$home" --shell /bin/bash "$name"
	runas=$name	# only once made: never remove an account this demo did not make
	mkdir -m 700 "$home"
	chown "$runas:" "$home"
}

account_remove() {	# what is left of its processes (a `nohup cmd &`), then the account
	for p in $(ps -o pid= -u "$runas" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
	userdel -f "$runas" 2>/dev/null || echo "demo: could not remove the account $runas" >&2
}

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
if [ "$(id -u)" -eq 0 ]; then
	account_add
else
	mkdir -p "$home"
fi

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
		--profile "$profile" --cacert "$certs/ca.pem" --home "$home" ${runas:+--run-as "$runas"} 2> "$dir/$dev.log" &
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
[ -z "$runas" ] || echo "tunnel_tui demo: the device shells run as $runas, a throwaway account removed when the demo ends"
if [ -n "${DEMO_NO_CONSOLE:-}" ]; then
	echo "devices.conf $dir/devices.conf"
	wait	# a signal's trap ends it; the EXIT trap cleans up
else
	"$top/tunnel_tui" -c "$dir/devices.conf" --log "$dir/console.log"
fi
