#!/bin/bash
# tests/e2e/demo.test.sh: make demo never gives a root shell.  The demo's
# sandbox (tests/sandbox/demo.sh with DEMO_NO_CONSOLE=1, no console) is
# driven through tunnel-client: run as root, its agents run the shells as a
# throwaway account (--run-as) that is gone, with its home and processes,
# once SIGTERM ends the demo; run as anyone else, as that user.
source "$(dirname "$0")/../lib.sh"
T=15	# seconds an awaited event may take before the check fails
known() { getent "$1" "$2" > /dev/null; }	# known passwd|group NAME

DEMO_DIR=$WORK/demo DEMO_NO_CONSOLE=1 sh "$TOP/tests/sandbox/demo.sh" > "$WORK/demo.out" 2> "$WORK/demo.err" &
DEMO=$!
PIDS+=($DEMO)
if ! wait_for $T has_line "$WORK/demo.out" '^devices.conf '; then
	fail "the demo sets up and names its devices.conf" "$(tail -5 "$WORK/demo.err")"
	finish
fi
ok "the demo sets up and names its devices.conf"
check "the welcome line tells the login" has_line "$WORK/demo.out" 'log in with user demo, password demo'

# The agents, as the demo started them (once exec'd: their own command lines).
agents() {
	ps -o pid=,args= --ppid "$DEMO" | grep ' [^ ]*/tunnel-device ' > "$WORK/agents"
	[ "$(wc -l < "$WORK/agents")" -eq 3 ]
}
check "the demo runs three agents" wait_for $T agents
if [ "$(id -u)" -eq 0 ]; then
	runas=$(sed -n 's/.*the device shells run as \([^ ,]*\),.*/\1/p' "$WORK/demo.out")
	check "as root: the demo names the throwaway account ($runas)" [ -n "$runas" ]
	check "as root: the account exists" known passwd "$runas"
	check "as root: ... with a group of its own" known group "$runas"
	check "as root: every agent runs the shells as it (--run-as $runas)" \
		[ "$(grep -c -- " --run-as $runas\( \|$\)" "$WORK/agents")" -eq 3 ]
	want=$runas
else
	check "not root: no agent has --run-as" bash -c "! grep -q -- ' --run-as ' '$WORK/agents'"
	want=$(id -un)
fi

# A session on pump-north, as the console would open it.
conf=$(sed -n 's/^devices.conf //p' "$WORK/demo.out")
url=$(sed -n '/^\[device pump-north\]/,/^$/s/^url = //p' "$conf")
token=$(sed -n '/^\[device pump-north\]/,/^$/s/^token_file = //p' "$conf")
mkfifo "$WORK/app.in"
exec {APP}<>"$WORK/app.in"
"$CLIENT" --url "$url" --token-file "$token" --cacert "$CERTS/ca.pem" --save d1 "$WORK/d1.bin" \
	< "$WORK/app.in" > "$WORK/app.out" 2> "$WORK/app.err" &
PIDS+=($!)
wait_for $T has_line "$WORK/app.out" '^recv connect_tunnel '
printf '%s\n' '{"operation_type":"connect","tunnel_service_type":"ssh","request_id":"d1","data":{"username":"demo","password":"demo"}}' \
	'{"operation_type":"command","tunnel_service_type":"ssh","request_id":"d1","data":"echo \"@@I\"\"D uid=$(id -u) user=$(id -un) home=$HOME\"\r"}' >&$APP
if wait_for $T has_line "$WORK/d1.bin" '@@ID uid=[0-9]'; then ok "a demo session says who its shell is"
else fail "a demo session says who its shell is" "$(tail -3 "$WORK/app.out")"; fi
id_line=$(grep -ao '@@ID uid=[0-9].*' "$WORK/d1.bin" | tr -d '\r')
uid=$(sed -n 's/.* uid=\([0-9]*\) .*/\1/p' <<< "$id_line")
user=$(sed -n 's/.* user=\([^ ]*\) .*/\1/p' <<< "$id_line")
home=$(sed -n 's/.* home=\(.*\)/\1/p' <<< "$id_line")
check "the session's id -u is not 0 ($uid)" [ -n "$uid" -a "$uid" != 0 ]
check "the session's id -un is $want ($user)" [ "$user" = "$want" ]
if [ "$(id -u)" -eq 0 ]; then
	check "as root: the shell's HOME ($home) is the account's own folder" [ "$(stat -c %U "$home")" = "$runas" ]
	check "as root: the shell is one of the account's processes" bash -c "ps -o pid= -u '$uid' > /dev/null"
fi

# SIGTERM ends the demo: the sandbox goes, and (as root) the account with it.
kill -TERM "$DEMO"
if wait_for $T bash -c "! kill -0 $DEMO"; then
	wait "$DEMO"
	st=$?
	check "SIGTERM ends the demo (status 143: $st)" [ "$st" -eq 143 ]
else
	fail "SIGTERM ends the demo" "pid $DEMO still running"
fi
check "SIGTERM: no agent left" bash -c "! ps -o pid= -p '$(awk '{ print $1 }' "$WORK/agents" | paste -sd,)' > /dev/null"
if [ "$(id -u)" -eq 0 ]; then
	check "as root: the account is gone" bash -c "! getent passwd '$runas'"
	check "as root: ... and its group" bash -c "! getent group '$runas'"
	check "as root: ... and its home" [ ! -e "$home" ]
	check "as root: ... and every process of its uid" bash -c "! ps -o pid= -u '$uid' > /dev/null"
fi
finish
