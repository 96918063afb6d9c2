#!/bin/bash
# Copy, paste and the mouse, as a tmux user expects them: copy mode copies
# exactly the selected text (a CJK line, a line the terminal wrapped, a
# rectangle) to the console's paste buffer and, by OSC 52, to the outer
# terminal's clipboard (this tmux's paste buffer); Ctrl-g ] pastes it;
# a device's OSC 52 waits for the user's yes and a clipboard read is never
# answered; a click selects a device, the wheel scrolls back, a drag and a
# double click copy; a remote program that asked for the mouse gets its
# reports; a remote title names the session, Ctrl-g , renames it and the
# name survives a reopen; mouse = off leaves the mouse to the terminal.
source "$(dirname "$0")/../lib.sh"

sandbox_up north:full south:full || { fail "sandbox starts"; finish; }
printf '[console]\nlist_width = 40\n\n' | cat - "$WORK/devices.conf" > "$WORK/copy.conf"
# tmux takes an OSC 52 from its pane as a paste buffer only with this on
printf 'set -g set-clipboard on\n' > "$WORK/tmux.conf"
export TUI_TMUX_CONF=$WORK/tmux.conf
clip() { tmux -S "$TMUX_SOCK" show-buffer 2>/dev/null; }	# the newest paste buffer
clip_is() { [ "$(clip)" = "$1" ]; }
status_bar() { tui_screen | tail -1; }
# click X Y [BUTTON]: press and release at 1-based screen cell X,Y (SGR 1006)
click() { tui_type $'\e[<'"${3:-0};$1;$2M"; tui_type $'\e[<'"${3:-0};$1;$2m"; }
rule_col() { tui_screen | head -1 | sed 's/│.*//' | LC_ALL=C.UTF-8 wc -m; }	# the list's rule, 1-based

tui_start 120x40 -c "$WORK/copy.conf"
tui_wait 'online' 10 || fail "console online" "$(tui_screen)"
wait_for 5 bash -c "[ \"\$(tmux -S '$TMUX_SOCK' display -p '#{mouse_any_flag}')\" = 1 ]" \
	&& ok "the console asks the terminal for the mouse" || fail "mouse mode on"
tui_keys C-g n
tui_login
tui_run 'echo ready-$((3*3))' 'ready-9' || fail "session live" "$(tui_screen)"
# a plain line, a CJK line with trailing blanks, a line longer than the pane
tui_type 'echo "MARK-$((1+1)) alpha beta   "; echo "CJK-$((2+2)): 漢字テスト end"; '
tui_type 'printf "WRAP-%s-END\n" "$(seq -s . 1 50)"; echo done-$((5*5))'
tui_keys Enter
tui_wait 'done-25' || fail "output" "$(tui_screen)"
WRAP="WRAP-$(seq -s . 1 50)-END"
check "the long line wraps on screen (${#WRAP} characters)" bash -c "tmux -S '$TMUX_SOCK' capture-pane -p | grep -q 'WRAP-1.2.3' && ! tmux -S '$TMUX_SOCK' capture-pane -p | grep -qF '$WRAP'"

# copy mode: search, select a line, copy
tui_keys C-g '['
tui_wait 'line [0-9]+ of [0-9]+' 5 && ok "copy mode shows where its cursor is" || fail "copy mode status" "$(status_bar)"
check "copy mode names its keys" bash -c "tmux -S '$TMUX_SOCK' capture-pane -p | tail -1 | grep -q 'Space/v select'"
tui_keys / ; tui_type 'MARK-2'; tui_keys Enter
tui_keys V
tui_wait 'selecting lines' 5 || fail "line selection" "$(status_bar)"
tui_keys y
wait_for 5 clip_is 'MARK-2 alpha beta' && ok "V y: the line, trailing blanks dropped, to the clipboard by OSC 52" \
	|| fail "line copy" "clipboard: [$(clip)]"
tui_wait 'copied 17 bytes' 5 && ok "the status bar says what was copied" || fail "copied message" "$(status_bar)"
check "y leaves copy mode" bash -c "! tmux -S '$TMUX_SOCK' capture-pane -p | tail -1 | grep -q 'Space/v select'"

# characters: from a search match to the end of its text, wide characters whole
tui_keys C-g '['
tui_keys / ; tui_type 'CJK-4'; tui_keys Enter
tui_keys v '$' y
wait_for 5 clip_is 'CJK-4: 漢字テスト end' && ok "v \$ y: a CJK line copied whole, blanks after it dropped" \
	|| fail "CJK copy" "clipboard: [$(clip)]"

# a wrapped line is one line: two screen rows, no newline between
tui_keys C-g '['
tui_keys / ; tui_type 'WRAP-1.2'; tui_keys Enter
tui_keys V j y
wait_for 5 clip_is "$WRAP" && ok "a line the terminal wrapped copies as one line" \
	|| fail "wrapped copy" "clipboard: [$(clip)]" "want: [$WRAP]"

# a rectangle: the same columns of two lines
tui_run 'printf "RECT-%s\n" aa11 bb22; echo rect-$((6*6))' 'rect-36' || fail "rect output" "$(tui_screen)"
tui_keys C-g '['
tui_keys / ; tui_type 'RECT-aa'; tui_keys Enter
tui_keys l l l l l C-v l l l j y
wait_for 5 clip_is $'aa11\nbb22' && ok "Ctrl-v: a rectangle, its rows joined by newlines" \
	|| fail "rectangle copy" "clipboard: [$(clip)]"

# Ctrl-g ] pastes what was copied into the session
tui_keys C-g '['
tui_keys / ; tui_type 'ready-9'; tui_keys Enter
tui_keys v e y
wait_for 5 clip_is 'ready-9' || fail "word copy" "clipboard: [$(clip)]"
tui_type 'echo pasted:'
tui_keys C-g ']'
tui_keys Enter
tui_wait '│pasted:ready-9' 5 && ok "Ctrl-g ] pastes the copy into the session" || fail "paste" "$(tui_screen)"

# a device's OSC 52: held until the user says yes
tui_type "printf '\\033]52;c;%s\\a' \$(printf from-device-%s 42 | base64)"
tui_keys Enter
tui_wait 'wants to set your clipboard to 14 bytes' 5 && ok "a device's clipboard write asks first" \
	|| fail "remote clipboard question" "$(tui_screen)"
check "… and is held until allowed (the clipboard still has the last copy)" clip_is 'ready-9'
tui_keys y	# at once: typed for the shell, not an answer
check "a key typed the moment the question appears does not answer it" tui_has 'wants to set your clipboard'
for i in 1 2 3 4 5 6 7 8 9 10; do
	tui_has 'wants to set your clipboard' || break
	wait_for 1 bash -c "! tmux -S '$TMUX_SOCK' capture-pane -p | grep -q 'wants to set your clipboard'" || tui_keys y
done
wait_for 5 clip_is 'from-device-42' && ok "y: the device's text reaches the clipboard" || fail "remote clipboard allowed" "[$(clip)]"
# a clipboard read is never answered: the shell would read the reply
tui_run "printf '\\033]52;c;?\\a'; read -rs -t 2 r; echo \"reply:[\$r]\"" '│reply:\[' || fail "query" "$(tui_screen)"
check "a device's clipboard read gets no answer" tui_has '│reply:\[\]$'

# titles: a remote program's title names the session; Ctrl-g , renames it for good
tui_run "printf '\\033]2;%s\\a' build-box-\$((7*7)); echo titled" '│titled' || fail "title output" "$(tui_screen)"
wait_for 5 tui_has 'live build-box-49' && ok "a remote title names the session in the list" || fail "title" "$(tui_screen)"
tui_keys C-g ,
tui_wait 'name: build-box-49' 5 || fail "rename prompt" "$(status_bar)"
for _ in $(seq 12); do tui_keys BSpace; done
tui_type 'my-router'
tui_keys Enter
tui_wait 'live my-router' 5 && ok "Ctrl-g , names the session" || fail "rename" "$(tui_screen)"
tui_run 'exit' 'ended' || fail "exit" "$(tui_screen)"
tui_keys C-g r
tui_login
tui_run 'echo back-$((8*8))' 'back-64' || fail "reopened" "$(tui_screen)"
check "the name survives a reopen" tui_has 'live my-router'

# the mouse: a click on a device selects it
wait_for 10 bash -c "tmux -S '$TMUX_SOCK' capture-pane -p | tail -1 | grep -q '^ *north'" \
	&& ok "the status bar names north before the click" || fail "north selected" "$(status_bar)"
y=$(tui_screen | grep -n '^ south' | head -1 | cut -d: -f1)
click 3 "$y"
wait_for 5 bash -c "tmux -S '$TMUX_SOCK' capture-pane -p | tail -1 | grep -q '^ *south'" \
	&& ok "a click on a device in the list selects it" || fail "click selects" "row $y" "$(tui_screen)"
y=$(tui_screen | grep -n 'live my-router' | head -1 | cut -d: -f1)
click 3 "$y"
wait_for 5 bash -c "tmux -S '$TMUX_SOCK' capture-pane -p | tail -1 | grep -q 'my-router'" \
	&& ok "a click on a session selects it" || fail "click session" "$(tui_screen)"

# the wheel scrolls back into copy mode; down to the end leaves it
tui_run 'seq -f "hist-%g" 1 200; echo end-$((9*9))' 'end-81' || fail "history" "$(tui_screen)"
x=$(( $(rule_col) + 20 ))
for _ in 1 2 3 4 5 6 7 8 9 10; do tui_type $'\e[<64;'"$x;10M"; done
tui_wait 'line [0-9]+ of [0-9]+' 5 && ok "the wheel over the pane scrolls back (copy mode)" || fail "wheel" "$(status_bar)"
check "… showing earlier output" tui_has '^.*│hist-1[0-9][0-9] *$'
check "… and the latest output is out of view" tui_lacks 'end-81'
for _ in $(seq 12); do tui_type $'\e[<65;'"$x;10M"; done
wait_for 5 tui_has 'end-81' && ok "the wheel down to the end leaves copy mode" || fail "wheel down" "$(tui_screen)"
check "… the status bar is the session's again" bash -c "! tmux -S '$TMUX_SOCK' capture-pane -p | tail -1 | grep -q 'line [0-9]* of'"

# a drag selects and copies on release; a double click copies a word
tui_run 'echo "DRAG-$((4*5)) one two three"' '│DRAG-20' || fail "drag output" "$(tui_screen)"
y=$(tui_screen | grep -n '│DRAG-20' | tail -1 | cut -d: -f1)
x=$(( $(rule_col) + 1 ))
tui_type $'\e[<0;'"$x;${y}M"; tui_type $'\e[<32;'"$((x + 5));${y}M"; tui_type $'\e[<32;'"$((x + 10));${y}M"
tui_type $'\e[<0;'"$((x + 10));${y}m"
wait_for 5 clip_is 'DRAG-20 one' && ok "a drag selects and its release copies" || fail "drag copy" "[$(clip)]"
click $((x + 13)) "$y"; click $((x + 13)) "$y"
wait_for 5 clip_is 'two' && ok "a double click copies a word" || fail "double click" "[$(clip)]"
check "a plain click leaves no copy mode behind" bash -c "! tmux -S '$TMUX_SOCK' capture-pane -p | tail -1 | grep -q 'line [0-9]* of'"

# a remote program that asked for mouse reports gets them, encoded as it asked
tui_type "printf '\\033[?1000h\\033[?1006h'; IFS= read -rs -d M r; printf '\\033[?1006l\\033[?1000l'; echo \"got:\${r#?}M\""
tui_keys Enter
wait_for 5 bash -c "[ \"\$(tmux -S '$TMUX_SOCK' capture-pane -p | grep -c 'got:')\" = 1 ]"	# the command line only
click $((x + 9)) 7
tui_wait '│got:\[<0;10;7M' 5 && ok "a click reaches a remote program in SGR mode: column 10, row 7" \
	|| fail "remote mouse report" "$(tui_screen | grep got)"
tmux -S "$TMUX_SOCK" kill-server

# mouse = off: the mouse stays the terminal's
printf '[console]\nmouse = off\n\n' | cat - "$WORK/devices.conf" > "$WORK/nomouse.conf"
tui_start 120x40 -c "$WORK/nomouse.conf"
tui_wait 'online' 10 || fail "console online (mouse off)" "$(tui_screen)"
check "mouse = off: the console leaves the mouse to the terminal" \
	bash -c "[ \"\$(tmux -S '$TMUX_SOCK' display -p '#{mouse_any_flag}')\" = 0 ]"
tui_keys C-g q
tui_wait 'EXIT=0' 5 || fail "quit" "$(tui_screen)"

finish
