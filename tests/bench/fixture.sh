# tests/bench/fixture.sh: sourced by tests/bench/run.sh.  Everything the
# benchmarks stand on, started on free ports and stopped again on exit:
#   - a throwaway user whose login shell (bash, prompt "TTB> ", no rc noise)
#     is what every path runs: the agents' pty shells and the ssh logins;
#   - the sandbox relay (TLS) with one tunnel per device, one agent each
#     (full profile, pty backend), running as that user;
#   - a private sshd on loopback (key auth for that user) for tmux + ssh;
#   - the harness processes (build/ptyharness drive), each spoken to through
#     a pair of FIFOs: h NAME COMMAND... sends one command, REPLY holds the answer.
# Only processes started here are stopped, by their pid.

PLATFORM=$TOP/tests/sandbox/tunnel-platform
DEVICE=$TOP/tests/sandbox/tunnel-device
CLIENT=$TOP/tests/sandbox/tunnel-client
CONSOLE=$TOP/tunnel_tui
CERTS=$TOP/build/certs
HARNESS=$TOP/build/ptyharness
VTBENCH=$TOP/build/vtbench
WORK=$(mktemp -d /tmp/tunnel_tui_bench.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/log" "$WORK/app" "$WORK/bin"
PIDS=()
TMUX_SOCKS=()
BUSER=""
PASS=pw$RANDOM$RANDOM$RANDOM
PROMPT_RE='TTB>$'
declare -A HIN HOUT HPID

cleanup() {
	local p s
	for s in "${!HPID[@]}"; do h_stop "$s"; done
	for s in "${TMUX_SOCKS[@]}"; do tmux -S "$s" kill-server 2>/dev/null; done
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	if [ -n "$BUSER" ]; then
		for p in $(ps -u "$BUSER" -o pid= 2>/dev/null); do kill "$p" 2>/dev/null; done	# its shells
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			userdel "$BUSER" 2>/dev/null && break
			sleep 0.3	# its last shells are still going away
		done
	fi
	[ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap '' PIPE	# a harness that died must not take the cleanup with it

log() { printf '%s\n' "$*" >&2; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# wait_for SECONDS CMD...: until CMD succeeds (setup only, never inside a measurement)
wait_for() {
	local deadline=$(( $(now_ms) + $1 * 1000 )); shift
	until "$@" 2>/dev/null; do
		[ "$(now_ms)" -ge $deadline ] && return 1
		sleep 0.1
	done
}

# --- the user ---------------------------------------------------------------
user_up() {
	local try
	BUSER=ttb$$
	for try in 1 2 3 4 5 6 7 8 9 10; do	# /etc/passwd may be locked by someone else
		useradd -M -d "$WORK/home" -s /bin/bash -p '*' "$BUSER" 2>/dev/null && break
		sleep 0.3
	done
	id "$BUSER" >/dev/null 2>&1 || { log "cannot create user $BUSER"; BUSER=""; return 1; }
	mkdir -p "$WORK/home"
	cat > "$WORK/home/.bash_profile" <<-'EOF'
		PS1='TTB> '
		unset PROMPT_COMMAND
		HISTFILE=
		export LANG=C.UTF-8
	EOF
	chown -R "$BUSER:" "$WORK/home"
	# what the user runs or reads, out of a clone it may not reach (a 0700 home)
	cp "$HARNESS" "$DEVICE" "$CERTS/ca.pem" "$WORK/bin/"
	chmod 755 "$WORK/bin" "$WORK/bin/ptyharness" "$WORK/bin/tunnel-device"
	chmod 644 "$WORK/bin/ca.pem"
}
# AS_USER: a command prefix (not a function: `&` would fork a subshell and $!
# would not be the program's pid); setpriv execs it.
as_user_prefix() { AS_USER=(setpriv --reuid="$BUSER" --regid="$BUSER" --init-groups --); }

# --- relay and agents ---------------------------------------------------------
# sandbox_up NAME...: the relay with tunnel t-NAME per device, and its agents
# (AGENT_ARGS[NAME]: more options for that one's agent, e.g. --shell).
declare -A AGENT_ARGS
sandbox_up() {
	local sep="" name
	mkdir -p "$WORK/dev"
	echo "field:$PASS" > "$WORK/dev/logins"
	printf '%s\n' "$PASS" > "$WORK/pass"
	chmod 600 "$WORK/pass"
	printf '[' > "$WORK/tunnels.json"
	for name in "$@"; do
		head -c 18 /dev/urandom | base64 > "$WORK/app/$name.app"
		head -c 18 /dev/urandom | base64 > "$WORK/dev/$name.dev"
		printf '%s{"tunnel_id":"t-%s","device_id":"%s","source_token":"%s","device_token":"%s","expires_in":86400}' \
			"$sep" "$name" "$name" "$(cat "$WORK/app/$name.app")" "$(cat "$WORK/dev/$name.dev")" >> "$WORK/tunnels.json"
		sep=,
	done
	echo ']' >> "$WORK/tunnels.json"
	chmod 700 "$WORK/app"
	chmod 600 "$WORK/app"/*
	chown -R "$BUSER:" "$WORK/dev"
	chmod 700 "$WORK/dev"
	chmod 600 "$WORK/dev"/*
	"$PLATFORM" --listen 127.0.0.1:0 --cert "$CERTS/server.pem" --key "$CERTS/server.key" \
		--tunnels "$WORK/tunnels.json" > "$WORK/log/relay.out" 2> "$WORK/log/relay.log" &
	PIDS+=($!)
	RELAY_PID=$!
	wait_for 10 grep -q '^listening on ' "$WORK/log/relay.out" || { log "relay did not start"; return 1; }
	PORT=$(sed -n 's/^listening on wss:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$WORK/log/relay.out")
	BASE=wss://localhost:$PORT/v5/iot/tunnels
	declare -gA AGENT_PID
	as_user_prefix
	for name in "$@"; do
		"${AS_USER[@]}" "$WORK/bin/tunnel-device" --url "$BASE/t-$name/device-connect" --token-file "$WORK/dev/$name.dev" \
			--backend pty --login-file "$WORK/dev/logins" --profile full \
			--cacert "$WORK/bin/ca.pem" ${AGENT_ARGS[$name]:-} 2> "$WORK/log/agent-$name.log" &
		PIDS+=($!)
		AGENT_PID[$name]=$!
	done
	wait_for 30 agents_connected "$#" || { log "agents did not connect"; return 1; }
}
agents_connected() { [ "$(grep -c ': device connected' "$WORK/log/relay.log")" -ge "$1" ]; }

# devices_conf FILE NAME...: the console's devices file for these devices
devices_conf() {
	local f=$1 name; shift
	: > "$f"
	for name in "$@"; do
		printf '[device %s]\nurl = %s\ntoken_file = %s\nusername = field\ncacert = %s\n\n' \
			"$name" "$BASE/t-$name/source-connect" "$WORK/app/$name.app" "$CERTS/ca.pem" >> "$f"
	done
}

# shells_of NAME...: how many shells the agents of these devices run
shells_of() {
	local name pids=""
	for name in "$@"; do pids+="${AGENT_PID[$name]} "; done
	ps -e -o ppid= | awk -v p="$pids" 'BEGIN { n = split(p, a, " "); for (i = 1; i <= n; i++) w[a[i]] = 1 }
		($1 in w) { c++ } END { print c + 0 }'
}

# --- sshd for the tmux + ssh baseline ------------------------------------------
sshd_up() {
	local d=$WORK/ssh p
	mkdir -p "$d" /run/sshd
	ssh-keygen -q -t ed25519 -N '' -f "$d/host_key" -C bench-host
	ssh-keygen -q -t ed25519 -N '' -f "$d/id" -C bench-client
	cp "$d/id.pub" "$d/authorized_keys"
	chmod 644 "$d/authorized_keys"
	for _ in 1 2 3 4 5 6 7 8 9 10; do
		p=$(( 20000 + RANDOM % 30000 ))
		ss -Hltn "sport = :$p" | grep -q . || break
	done
	cat > "$d/sshd_config" <<-EOF
		Port $p
		ListenAddress 127.0.0.1
		HostKey $d/host_key
		PidFile $d/sshd.pid
		AuthorizedKeysFile $d/authorized_keys
		StrictModes no
		PubkeyAuthentication yes
		PasswordAuthentication no
		KbdInteractiveAuthentication no
		UsePAM no
		AllowUsers $BUSER
		PrintMotd no
		PrintLastLog no
		AcceptEnv LANG
		MaxStartups 100
	EOF
	/usr/sbin/sshd -D -f "$d/sshd_config" -E "$WORK/log/sshd.log" &
	PIDS+=($!)
	SSHD_PORT=$p
	SSH_CMD="ssh -tt -i $d/id -p $p -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o SendEnv=LANG $BUSER@127.0.0.1"
	wait_for 10 bash -c "ss -Hltn 'sport = :$p' | grep -q ." || { log "sshd did not start"; return 1; }
}

# tmux_server SOCK COLS ROWS CMD: a private tmux server, status line off,
# 5000 lines of history like the console's scrollback.
printf 'set -g status off\nset -g history-limit 5000\nset -sg escape-time 10\n' > "$WORK/tmux.conf"
tmux_server() {
	local sock=$1
	TMUX_SOCKS+=("$sock")
	tmux -S "$sock" -f "$WORK/tmux.conf" new-session -d -x "$2" -y "$3" "$4"
}

# --- harnesses ------------------------------------------------------------
# h_start NAME DRIVE-ARGS...: runs build/ptyharness drive DRIVE-ARGS...
h_start() {
	local name=$1 fd; shift
	rm -f "$WORK/h-$name.in" "$WORK/h-$name.out"
	mkfifo "$WORK/h-$name.in" "$WORK/h-$name.out"
	"$HARNESS" drive "$@" < "$WORK/h-$name.in" > "$WORK/h-$name.out" 2> "$WORK/log/h-$name.log" &
	HPID[$name]=$!
	exec {fd}>"$WORK/h-$name.in"
	HIN[$name]=$fd
	exec {fd}<"$WORK/h-$name.out"
	HOUT[$name]=$fd
}
# h NAME COMMAND...: one command; REPLY is the answer; fails unless it is ok.
h() {
	local name=$1; shift
	REPLY=""
	printf '%s\n' "$*" >&"${HIN[$name]}"
	IFS= read -r -t "${H_TIMEOUT:-600}" REPLY <&"${HOUT[$name]}" || REPLY="no answer"
	printf '%s: %s -> %s\n' "$name" "$*" "$REPLY" >> "$WORK/log/commands.log"
	[[ $REPLY == ok* ]] || { log "# $name: $* -> $REPLY (see $WORK/log/h-$name.log)"; return 1; }
}
# the child's pid (the console, tmux client or protocol client)
h_pid() { h "$1" pid && echo "${REPLY#ok }"; }
h_stop() {
	local name=$1
	[ -n "${HPID[$name]:-}" ] || return 0
	printf 'quit\n' >&"${HIN[$name]}" 2>/dev/null
	IFS= read -r -t 10 _ <&"${HOUT[$name]}" || kill "${HPID[$name]}" 2>/dev/null	# busy: it stops its child
	local fi=${HIN[$name]} fo=${HOUT[$name]}
	exec {fi}>&- {fo}<&-
	wait "${HPID[$name]}" 2>/dev/null
	unset "HPID[$name]"
}

# --- process accounting ---------------------------------------------------------
# cpu_ns PID...: CPU time (all threads) in ns; ctx PID...: context switches
cpu_ns() { local p; for p in "$@"; do cat /proc/"$p"/task/*/schedstat; done 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
ctx() { local p; for p in "$@"; do cat /proc/"$p"/task/*/status; done 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }'; }
rss_kb() { awk '/^VmRSS/ { print $2 }' /proc/"$1"/status; }
# quiet PID: until the process used no CPU for a whole second (setup only)
quiet() {
	local a b n=0 deadline=$(( $(now_ms) + ${2:-120} * 1000 ))
	a=$(cpu_ns "$1")
	while [ $n -lt 10 ] && [ "$(now_ms)" -lt $deadline ]; do
		sleep 0.1
		b=$(cpu_ns "$1")
		if [ $(( b - a )) -lt 2000000 ]; then n=$((n + 1)); else n=0; fi
		a=$b
	done
}
