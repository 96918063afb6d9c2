#!/bin/sh
# tests/sandbox/sshd.sh: a throwaway sshd for the device agent's ssh backend.
#
#   sshd.sh start DIR   host keys and a config in DIR, a throwaway user (tt_XXXXXX)
#                       with a random password, sshd on 127.0.0.1 and a free port;
#                       writes DIR/env (mode 600): SSHD_PORT=, SSH_USER=, SSH_PASS=
#   sshd.sh stop DIR    stops that sshd and its sessions, removes the user
#
# Needs root (it adds a user).  Not root: prints "skipped: sshd tests need root"
# and exits 3, which tests report as a skip.  Nothing from /etc/ssh is used.
set -eu

die() { echo "sshd.sh: $*" >&2; exit 1; }

free_port() {	# a TCP port nothing listens on (as tests/lib.sh does)
	while :; do
		p=$(( 20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 30000 ))
		ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return; }
	done
}

listening() { ss -Hltn "sport = :$1" | grep -q .; }

write_config() {	# DIR PORT USER
	cat > "$1/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $2
HostKey $1/ssh_host_ed25519_key
PidFile $1/sshd.pid
AllowUsers $3
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication no
PermitRootLogin no
# PAM's session modules (pam_loginuid) fail in containers; shadow passwords
# work without it, so password logins behave the same everywhere.
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
EOF
}

start() {	# DIR
	command -v /usr/sbin/sshd >/dev/null 2>&1 || apt-get install -y openssh-server >/dev/null
	mkdir -p "$1"
	dir=$(cd "$1" && pwd)
	[ -e "$dir/env" ] && die "$dir/env exists: stop the previous sshd first"
	user=tt_$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
	pass=$(head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 20)
	port=$(free_port)
	ssh-keygen -q -t ed25519 -N '' -C tunnel-sandbox -f "$dir/ssh_host_ed25519_key"
	write_config "$dir" "$port" "$user"
	useradd -m -s /bin/bash "$user"
	echo "$user:$pass" | chpasswd
	mkdir -p /run/sshd	# sshd's privilege-separation directory
	chmod 755 /run/sshd
	( umask 077; printf 'SSHD_PORT=%s\nSSH_USER=%s\nSSH_PASS=%s\n' "$port" "$user" "$pass" > "$dir/env" )
	/usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log" || die "sshd did not start (see $dir/sshd.log)"
	i=0
	until listening "$port"; do
		i=$((i + 1))
		[ $i -lt 100 ] || die "sshd is not listening on $port (see $dir/sshd.log)"
		sleep 0.1
	done
}

stop() {	# DIR
	dir=$1
	[ -r "$dir/env" ] || die "no $dir/env: nothing to stop"
	user=$(sed -n 's/^SSH_USER=//p' "$dir/env")
	[ -r "$dir/sshd.pid" ] && kill "$(cat "$dir/sshd.pid")" 2>/dev/null || true
	# the user's shells keep their per-connection sshd alive: end them by pid
	for pid in $(ps -o pid= -u "$user" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
	userdel -r -f "$user" 2>/dev/null || true
	rm -f "$dir/env" "$dir/sshd.pid"
}

[ $# -eq 2 ] || { echo "usage: sshd.sh start|stop DIR" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "skipped: sshd tests need root"; exit 3; }
case $1 in
start) start "$2" ;;
stop) stop "$2" ;;
*) echo "usage: sshd.sh start|stop DIR" >&2; exit 2 ;;
esac
