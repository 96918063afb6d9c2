#!/bin/bash
# The real console in tmux against the real sandbox relay and agents (TLS,
# verification on): login, two sessions on one tunnel, a full-screen program,
# resize, every disconnect inline, reconnect after the relay restarts, the
# password never on screen, the terminal restored on exit.
source "$(dirname "$0")/../lib.sh"

sandbox_up north:full meter:c-sdk || { fail "sandbox starts"; finish; }

tui_start 100x30 -c "$WORK/devices.conf" --log "$WORK/console.log"

check "both devices come online" tui_wait 'north.*\n?' 5
wait_for 10 bash -c "[ \$(tmux -S '$TMUX_SOCK' capture-pane -p | grep -c '^  online') = 2 ]" \
	&& ok "list shows both devices online" || fail "list shows both devices online" "$(tui_screen)"

tui_keys C-g n
tui_wait 'user +field' 5 && tui_type "x" && tui_keys BSpace
if tui_has "$PASS" || ! tui_has 'password'; then fail "login dialog masks the password"; fi
tui_login
if tui_run 'echo first-$((6*7))' 'first-42'; then ok "login and a command's output"; else fail "login and a command's output" "$(tui_screen)"; fi
check "the password never shows on screen" tui_lacks "$PASS"

tui_keys C-g n
tui_login
tui_run 'echo second-$((7*8))' 'second-56' && ok "a second session on the same tunnel" || fail "a second session on the same tunnel" "$(tui_screen)"
check "the second session does not show the first's output" tui_lacks 'first-42'
tui_keys C-g k
wait_for 5 tui_has 'first-42' && check "switching back shows the first session's own screen" tui_lacks 'second-56' \
	|| fail "switching back shows the first session's own screen" "$(tui_screen)"
check "the list shows two live sessions" bash -c "[ \$(tmux -S '$TMUX_SOCK' capture-pane -p | grep -c ' field .*live') -ge 2 ]"

tui_run 'seq 1 200 | less' '│1 *$' && tui_has '│2 *$' && ok "a full-screen program (less) draws" \
	|| fail "a full-screen program (less) draws" "$(tui_screen)"
tui_type q
wait_for 5 tui_lacks '│1 *$' && check "leaving it restores the shell screen" tui_has 'first-42' \
	|| fail "leaving it restores the shell screen" "$(tui_screen)"

tui_resize 120 40
wait_for 5 tui_line_has 40 help \
	&& ok "resize: the status bar follows to the new last line" || fail "resize: the status bar follows" "$(tui_screen)"
tui_resize 100 30
# tmux tells the pty (SIGWINCH) a few hundred ms after it resizes: until the
# console has drawn at the new size, keys would race that
wait_for 5 tui_line_has 30 help \
	|| fail "resize back: the status bar on the last line" "$(tui_screen)"

# the help's key names pad by columns: "1 … 9" holds a 3-byte character
tui_keys C-g '?'
tui_wait 'any key closes' 5 || fail "help shows" "$(tui_screen)"
desc_col() {	# desc_col TEXT: the column TEXT starts in (characters: one column each here)
	local LC_ALL=C.UTF-8 l
	l=$(tui_screen | grep -m1 -F -- "$1") || { echo "missing: $1"; return; }
	l=${l%%"$1"*}
	echo "${#l}"
}
a=$(desc_col 'device 1 … 9, its first session') b=$(desc_col 'next device or session')
check "help: every description starts in the same column ($a, $b)" [ "$a" -gt 0 -a "$a" = "$b" ]
check "help: the mouse line whole, where the terminal is wide enough" tui_has 'the wheel scrolls back, a drag copies\)'
tui_keys Space	# any key closes the help, and goes no further
wait_for 5 tui_lacks 'any key closes' || fail "help closes" "$(tui_screen)"

tui_run 'exit' '── session ended: the shell exited ──' && ok "the user's exit: a neutral end line inline" \
	|| fail "exit inline" "$(tui_screen)"
tui_lacks 'disconnected 408' && ok "… not shown as a fault" || fail "exit not a fault" "$(tui_screen)"
tui_wait ' field +ended' 5 && ok "the ended session is marked in the list" || fail "the ended session is marked in the list" "$(tui_screen)"

tui_keys C-g j
tui_wait 'second-56' 5
kill -9 "${DEVICE_PIDS[north]}"
tui_wait 'disconnected 410' 10 && ok "device killed: 410 inline" || fail "device killed: 410 inline" "$(tui_screen)"
device_up north full
tui_wait '  online' 10 && ok "device back: online again" || fail "device back: online again" "$(tui_screen)"

tui_wait 'back: 1 lost session' 5 && ok "device back: the console offers to reopen the lost session" \
	|| fail "device back: offers to reopen" "$(tui_screen)"
tui_keys C-g r
tui_login
tui_run 'echo reopened-$((8*9))' 'reopened-72' && ok "reopen a lost session" || fail "reopen a lost session" "$(tui_screen)"
check "its old screen stays above" tui_has 'second-56'
tui_keys C-g k
tui_wait 'first-42' 5
tui_keys C-g r
tui_login
tui_run 'echo manual-$((3*11))' 'manual-33' && ok "reopen an exited session by key" || fail "reopen an exited session by key" "$(tui_screen)"

# a shell that dies without the user ending it: a fault, shown as one
tui_keys C-g n
tui_login
tui_run 'echo doomed-$((2*50))' 'doomed-100' || fail "a third session" "$(tui_screen)"
tui_run 'kill -KILL $$' '── disconnected 408' && ok "a shell killed, not exited: 408 inline as a fault" \
	|| fail "killed shell: 408" "$(tui_screen)"
tui_keys C-g k
tui_wait 'reopened-72' 5 || fail "back to a live session" "$(tui_screen)"

kill "$PLATFORM_PID"
wait "$PLATFORM_PID" 2>/dev/null
tui_wait 'disconnected 10[0-9][0-9]' 10 && ok "relay gone: sessions end inline" || fail "relay gone: sessions end inline" "$(tui_screen)"
tui_wait 'retry in' 5 && ok "relay gone: the device shows its retry countdown" || fail "relay gone: retry countdown" "$(tui_screen)"
platform_up
tui_wait '  online' 40 && ok "relay back: the tunnel reconnects" || fail "relay back: the tunnel reconnects" "$(tui_screen)"

tui_wait 'back: 2 lost sessions' 5 || fail "relay back: offers to reopen 2 sessions" "$(tui_screen)"
tui_keys C-g r
tui_login
tui_run 'echo again-$((9*9))' 'again-81' && ok "a session after the relay restarted" || fail "a session after the relay restarted" "$(tui_screen)"
rest_close t-north > "$WORK/put.out" 2>&1
tui_wait 'disconnected 404' 10 && ok "tunnel closed over REST: 404 inline" || fail "tunnel closed over REST: 404 inline" "$(tui_screen)" "$(cat "$WORK/put.out")"

check "the password never shows on screen (end)" tui_lacks "$PASS"
check "the password is not in the log" bash -c "! grep -q '$PASS' '$WORK/console.log'"
tui_keys C-g q
tui_wait '(live|Quit)' 3 && tui_keys y
tui_wait 'EXIT=0' 5 && ok "quit exits 0" || fail "quit exits 0" "$(tui_screen)"
check "the terminal is restored (icanon, echo)" bash -c "tmux -S '$TMUX_SOCK' capture-pane -p | grep -qE '(^| )icanon' && tmux -S '$TMUX_SOCK' capture-pane -p | grep -qE '(^| )echo '"
finish
