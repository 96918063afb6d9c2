#!/bin/bash
# Secret hygiene: after a scripted session with logging and recording on,
# the password and the tokens appear in no screen capture, no log, no
# recording and no sandbox log; the token is in neither the console's
# command line nor its environment as ps shows them.
source "$(dirname "$0")/../lib.sh"

sandbox_up vault:full || { fail "sandbox starts"; finish; }
TOKEN=$(cat "$WORK/vault.app")
DEVTOKEN=$(cat "$WORK/vault.dev")
REC=$WORK/rec
CAPS=$WORK/captures
mkdir -p "$CAPS"
capture() { tmux -S "$TMUX_SOCK" capture-pane -p -e -S -5000 > "$CAPS/$1.txt"; }	# with scrollback

# the console gets its token from the environment, as a URL argument's token;
# with the plain build, an allocator hook (build/freecheck.so) searches every
# block it frees or reallocates for the password and the token
printf '%s\n%s\n' "$PASS" "$TOKEN" > "$WORK/secrets"
HOOK=
[ -z "${ASAN:-}" ] && HOOK="LD_PRELOAD=$TOP/build/freecheck.so FREECHECK_SECRETS=$WORK/secrets FREECHECK_OUT=$WORK/freed.log"
TMUX_SOCK=$WORK/tmux.sock
tmux -S "$TMUX_SOCK" -f /dev/null new-session -d -x 100 -y 30 \
	"env $HOOK TUNNEL_TUI_TOKEN='$TOKEN' $CONSOLE --cacert $CERTS/ca.pem --log $WORK/console.log --record-dir $REC --user field $BASE/t-vault/source-connect; echo EXIT=\$?; sleep 600"
tui_wait 'online' 10 || fail "console online" "$(tui_screen)"
PID=$(pgrep -x tunnel_tui -P "$(tmux -S "$TMUX_SOCK" list-panes -F '#{pane_pid}')" | head -1)

check "ps: the token is not on the console's command line" bash -c "! ps -o args= -p $PID | grep -qF -- '$TOKEN'"
check "ps: the token is not in the console's environment" bash -c "! tr '\\0' '\\n' < /proc/$PID/environ | grep -qF -- '$TOKEN'"
check "ps e: nor anywhere ps shows" bash -c "! ps eww -p $PID | grep -qF -- '$TOKEN'"
capture start

tui_keys C-g n
tui_wait 'password' 5
tui_type "$PASS"
capture dialog
tui_keys Enter
tui_run 'echo logged-$((2*21))' 'logged-42'
tui_keys C-g R
tui_wait '● REC' 5
tui_run 'echo recorded-$((3*14)); sudo -k 2>/dev/null; printf "prompt: "; read -rs x; echo; echo got-${#x}' 'prompt:'
tui_type "$PASS"	# a password typed into the remote shell's silent read: not echoed, not recorded
tui_keys Enter
tui_wait 'got-' 5
capture session
tui_keys C-g R
tui_wait 'recording saved' 5
tui_run 'exit' 'session ended: the shell exited'
tui_keys C-g r
tui_wait 'password' 5
tui_type "$PASS"
tui_keys Enter
tui_run 'echo again-$((6*7))' 'again-42'
capture reopened
tui_keys C-g q
tui_wait 'Quit' 3 && tui_keys y
tui_wait 'EXIT=0' 5
capture end

if [ -z "${ASAN:-}" ]; then	# the hook does not mix with the sanitizer's allocator
	printf '%s\n' "$PASS" | env LD_PRELOAD="$TOP/build/freecheck.so" FREECHECK_SECRETS="$WORK/secrets" \
		FREECHECK_OUT="$WORK/control.log" sed s/x/y/ > /dev/null
	check "the allocator hook sees a secret in freed memory (sed's buffer, a control)" test -s "$WORK/control.log"
	check "the hook was loaded into the console (its log exists)" test -e "$WORK/freed.log"
	check "no block the console freed or reallocated held the password or the token" \
		bash -c "[ ! -s '$WORK/freed.log' ]"
	[ -s "$WORK/freed.log" ] && sort "$WORK/freed.log" | uniq -c | sed 's/^/# /'
fi
n=$(ls "$CAPS"/*.txt | wc -l)
check "screen captures were taken ($n)" [ "$n" -ge 5 ]
check "a recording was written" bash -c "ls '$REC'/*.cast >/dev/null 2>&1"
check "the console log was written" test -s "$WORK/console.log"
for secret in "$PASS" "$TOKEN" "$DEVTOKEN"; do
	what=password; [ "$secret" = "$TOKEN" ] && what="app token"; [ "$secret" = "$DEVTOKEN" ] && what="device token"
	check "no $what in any screen capture" bash -c "! grep -rqF -- '$secret' '$CAPS'"
	check "no $what in the console log" bash -c "! grep -qF -- '$secret' '$WORK/console.log'"
	check "no $what in the recording" bash -c "! grep -rqF -- '$secret' '$REC'"
	check "no $what in the relay's or the agent's log" bash -c "! grep -qF -- '$secret' '$WORK/relay.log' '$WORK'/vault-*.log"
done
finish
