#!/bin/bash
# The outer terminal is sane after every way the console can end: quit,
# SIGTERM, SIGHUP, SIGINT, and crashes (SIGSEGV, SIGABRT: the same handler a
# real fault reaches).  After each, stty shows icanon and echo, the cursor
# is back and the exit status says what happened.
source "$(dirname "$0")/../lib.sh"

sandbox_up box:full || { fail "sandbox starts"; finish; }
for sig in TERM HUP INT SEGV ABRT; do
	tui_start 90x24 -c "$WORK/devices.conf"
	tui_wait 'online' 10 || fail "$sig: console up" "$(tui_screen)"
	tui_keys C-g n
	tui_login
	tui_run 'echo up-$((6*7))' 'up-42'
	pid=$(pgrep -P "$(tmux -S "$TMUX_SOCK" display -p '#{pane_pid}')" -x tunnel_tui)	# ours, not another test's
	kill -"$sig" "$pid"
	tui_wait 'EXIT=' 5 || fail "$sig: the console ends" "$(tui_screen)"
	code=$(tui_screen | sed -n 's/^EXIT=//p')
	num=$(kill -l "$sig")
	check "SIG$sig: exit status 128+$num" [ "$code" = $((128 + num)) ]
	check "SIG$sig: the terminal is back in canonical mode with echo" \
		bash -c "tmux -S '$TMUX_SOCK' capture-pane -p | grep -qE '(^| )icanon( |$)' && tmux -S '$TMUX_SOCK' capture-pane -p | grep -qE '(^| )echo( |$)'"
	check "SIG$sig: the alternate screen is left" bash -c "[ \"\$(tmux -S '$TMUX_SOCK' display -p '#{alternate_on}')\" = 0 ]"
	check "SIG$sig: the cursor is visible" bash -c "[ \"\$(tmux -S '$TMUX_SOCK' display -p '#{cursor_flag}')\" = 1 ]"
	tmux -S "$TMUX_SOCK" kill-server
done
finish
