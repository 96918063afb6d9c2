#!/bin/bash
# Behaves as people expect: the selection and status bar visible without
# colour (NO_COLOR, a monochrome TERM) while remote colours stay; no
# terminal or TERM=dumb gives a clear error; the password mask gives
# feedback without telling the length; help and dialogs fit the screen;
# scroll mode says where it is and shows every match; the remote PTY
# against the pane, and Ctrl-g r reopening at the pane's size; warnings
# at start; a closed device says how to connect again.
source "$(dirname "$0")/../lib.sh"

sandbox_up north:full || { fail "sandbox starts"; finish; }
TOK=$WORK/north.app
# console CMD...: the console in a fresh tmux server, with an environment of its own
console() {
	TUI_STARTS=$(( ${TUI_STARTS:-0} + 1 ))
	TMUX_SOCK=$WORK/tmux.$TUI_STARTS.sock
	tmux -S "$TMUX_SOCK" -f /dev/null new-session -d -x "${SIZE:-120}" -y "${ROWS:-40}" \
		"$*; echo EXIT=\$?; sleep 600"
	tmux -S "$TMUX_SOCK" set-option -g status off > /dev/null
}
ansi() { tmux -S "$TMUX_SOCK" capture-pane -p -e; }	# the screen with its attributes
sel_row() { ansi | grep -m1 -F "$1"; }	# the first line showing TEXT, escapes and all

# no colour: the selection and the status bar in reverse video; remote colours kept
console env NO_COLOR=1 "$CONSOLE" -c "$WORK/devices.conf"
tui_wait 'online' 10 || fail "NO_COLOR console online" "$(tui_screen)"
check "NO_COLOR: the selected device row is in reverse video" bash -c "sel_row() { tmux -S '$TMUX_SOCK' capture-pane -p -e | grep -m1 -F ' north'; }; sel_row | grep -q $'\\e\\\\[7m'"
check "NO_COLOR: the status bar is in reverse video" bash -c "tmux -S '$TMUX_SOCK' capture-pane -p -e | tail -1 | grep -q $'\\e\\\\[7m'"
tui_keys C-g n
tui_login
tui_run "printf '\\033[31mRED-TEXT\\033[0m %s\\n' done-\$((4*4))" 'done-16' || fail "NO_COLOR session" "$(tui_screen)"
check "NO_COLOR: the remote program's own red stays red" bash -c "tmux -S '$TMUX_SOCK' capture-pane -p -e | grep -q $'\\e\\\\[31mRED-TEXT'"
tmux -S "$TMUX_SOCK" kill-server
console env TERM=vt100 "$CONSOLE" -c "$WORK/devices.conf"
tui_wait 'online' 10 || fail "vt100 console online" "$(tui_screen)"
check "TERM=vt100: the selected device row still stands out (reverse video)" \
	bash -c "tmux -S '$TMUX_SOCK' capture-pane -p -e | grep -m1 -F ' north' | grep -q $'\\e\\\\[7m'"
tmux -S "$TMUX_SOCK" kill-server

# no terminal, or one that cannot move its cursor: a clear error, exit 2
"$CONSOLE" -c "$WORK/devices.conf" < /dev/null > "$WORK/notty.out" 2>&1
check "no terminal: exit 2" [ $? -eq 2 ]
check "… saying it needs a terminal" grep -q 'needs a terminal on stdin and stdout' "$WORK/notty.out"
script -qec "env TERM=dumb '$CONSOLE' -c '$WORK/devices.conf'" /dev/null > "$WORK/dumb.out" 2>&1
check "TERM=dumb: exit 2, saying why" grep -q 'TERM=dumb cannot show the console' "$WORK/dumb.out"

# start-up warnings show on screen; the password mask; help and dialogs sized to the screen
chmod 644 "$TOK"
SIZE=160 console "$CONSOLE" -c "$WORK/devices.conf" --log "$WORK/console.log"
tui_wait 'warning: north: .* is readable by others' 5 && ok "a configuration warning shows at start" \
	|| fail "start warning" "$(tui_screen)"
chmod 600 "$TOK"
tui_wait '  online' 10 || fail "console online" "$(tui_screen)"
tui_keys C-g n
tui_wait 'password' 5
masks=()
for k in a b c d e f g h i j k l; do
	tui_type "$k"
	wait_for 2 bash -c "tmux -S '$TMUX_SOCK' capture-pane -p | grep -q 'password •'"
	masks+=("$(tui_screen | grep -o 'password •*' | head -1 | tr -cd '•' | wc -m)")
done
lens=$(printf '%s\n' "${masks[@]}" | sort -u | tr '\n' ' ')
check "password: a mask after every key ($lens bullets seen)" [ ${#masks[@]} -eq 12 -a "${masks[11]}" -ge 3 ]
check "… never as long as what was typed (12)" bash -c "! printf '%s\n' ${masks[*]} | grep -qx 12"
check "… changing from key to key (feedback), not growing with them" [ "$(printf '%s\n' "${masks[@]}" | sort -u | wc -l)" -ge 2 ]
tui_keys Escape
tui_keys C-g '?'
longest='filter the list as you type; Enter jumps to the match'
tui_wait "$longest" 5 && ok "help at 160 columns: the longest line whole" || fail "help wide" "$(tui_screen)"
tui_keys Space
tmux -S "$TMUX_SOCK" resize-window -x 70 -y 20
wait_for 5 bash -c "[ \$(tmux -S '$TMUX_SOCK' capture-pane -p | wc -l) -eq 20 ]"
tui_keys C-g l C-g '?'
tui_wait 'any key closes' 5 && ok "help at 70x20: a box that fits, its end visible" || fail "help small" "$(tui_screen)"
check "… saying that more keys exist than fit" tui_has 'more than fits: enlarge the terminal'
tui_keys Space
tmux -S "$TMUX_SOCK" resize-window -x 160 -y 40
# tmux resizes the pty a little after the window: wait until the console drew at 160
wait_for 5 bash -c "tmux -S '$TMUX_SOCK' capture-pane -p | tail -1 | grep -qE '.{150}\\? help'"

# a session opened at one size, the pane then wider: said, and Ctrl-g r reopens at the new size
tui_keys C-g l C-g n
tui_login
tui_run 'stty size; echo sized-$((5*5))' 'sized-25' || fail "a session" "$(tui_screen)"
first=$(tui_screen | grep -oE '^[^│]*│[0-9]+ [0-9]+$' | head -1 | sed 's/.*│//')
tmux -S "$TMUX_SOCK" resize-window -x 140 -y 36
tui_wait 'PTY [0-9]+x[0-9]+ (in|clipped to) pane [0-9]+x35' 10 && ok "the status bar shows the PTY against the new pane" \
	|| fail "PTY vs pane" "$(tui_screen | tail -1)"
tui_keys C-g r
tui_wait "at the pane's size \\([0-9]+x35\\)" 5 && ok "Ctrl-g r offers to reopen at the pane's size" || fail "offer" "$(tui_screen)"
tui_keys y
tui_login
tui_run 'stty size; echo resized-$((6*6))' 'resized-36' || fail "reopened" "$(tui_screen)"
check "… and the new shell has the pane's size (was: $first)" tui_has '│35 [0-9]+$'

# copy mode: where it is, and every match marked
tui_run 'for i in $(seq 1 300); do echo "line $i needle-$((i % 7))"; done' 'line 300' || fail "output" "$(tui_screen)"
tui_keys C-g '['
tui_wait 'line [0-9]+ of [0-9]+' 5 && ok "copy mode: the cursor's place in the history" || fail "scroll position" "$(tui_screen | tail -1)"
check "copy mode: the keys it takes" tui_has 'q leaves'
tui_keys /
tui_type 'needle-3'
tui_keys Enter
tui_wait 'needle-3' 5
check "a search marks every match (reverse video on each needle-3)" \
	bash -c "[ \$(tmux -S '$TMUX_SOCK' capture-pane -p -e | grep -o $'\\e\\\\[[0-9;]*7[0-9;]*mneedle-3' | wc -l) -ge 3 ]"
tui_keys q

# a closed device says how to connect again, not how to log in
tui_keys C-g k C-g k C-g k
tui_keys C-g x
tui_wait 'Close the tunnel to north' 5 && tui_keys y
tui_wait 'c connects again' 5 && ok "a closed device: the pane says how to connect again" || fail "closed hint" "$(tui_screen)"
tui_lacks 'n \(or Enter\) to log in' && ok "… not how to log in" || fail "closed: no login hint" "$(tui_screen)"
finish
