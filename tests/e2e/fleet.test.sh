#!/bin/bash
# Working on many devices at once, end to end: broadcast, recording
# (asciicast, checked with asciinema), surviving drops (attach, reopen =
# auto), and batch exec (--exec) over full and c-sdk devices.
source "$(dirname "$0")/../lib.sh"

TMUX_L=tte2e$$
conf_extra alpha "attach = tmux -L $TMUX_L new -A -s field"
conf_extra alpha "reopen = auto"
conf_extra alpha "remember_password = session"
sandbox_up alpha:full beta:full gamma:c-sdk || { fail "sandbox starts"; finish; }
trap 'tmux -L $TMUX_L kill-server 2>/dev/null; cleanup' EXIT
REC=$WORK/rec
mkdir -p "$REC"

# --- batch exec first: no screen ------------------------------------------
echo "$PASS" > "$WORK/pw"
"$CONSOLE" --exec 'echo out-$((6*7)); printf "two\nlines\n"' -c "$WORK/devices.conf" --all \
	--password-file "$WORK/pw" > "$WORK/exec.out" 2> "$WORK/exec.err"
rc=$?
check "exec: exit 0 when every device ran the command with status 0" [ "$rc" = 0 ]
for d in alpha beta gamma; do
	check "exec: $d's lines come prefixed by its name" grep -qE "^$d +\| out-42$" "$WORK/exec.out"
done
# devices interleave; each device's own lines keep their order
check "exec: multi-line output kept in order" bash -c "grep '^alpha ' '$WORK/exec.out' | grep -A1 '| two\$' | grep -q '| lines\$'"
check "exec: the marker is stripped" bash -c "! grep -q '__TT_' '$WORK/exec.out'"
check "exec: the summary table lists each device ok with exit 0" \
	bash -c "[ \$(grep -cE '^(alpha|beta|gamma) +ok +0 ' '$WORK/exec.out') = 3 ]"
"$CONSOLE" --exec 'test $(hostname) = nothere' -c "$WORK/devices.conf" --devices beta,gamma \
	--password-file "$WORK/pw" > "$WORK/exec2.out" 2>&1
rc=$?
check "exec: a failing command makes the exit status 1" [ "$rc" = 1 ]
check "exec: ... and the summary shows its exit code" grep -qE '^gamma +failed +1 ' "$WORK/exec2.out"
echo wrong > "$WORK/badpw"
TUNNEL_TUI_PASSWORD=nope "$CONSOLE" --exec true -c "$WORK/devices.conf" --devices alpha \
	--password-file "$WORK/badpw" > "$WORK/exec3.out" 2>&1
check "exec: a bad password is 'login failed'" grep -qE '^alpha +login failed' "$WORK/exec3.out"
TUNNEL_TUI_PASSWORD=$PASS "$CONSOLE" --exec 'seq 3' -c "$WORK/devices.conf" --devices gamma \
	--outdir "$WORK/outdir" > "$WORK/exec4.out" 2>&1
check "exec: --outdir writes one file per device; password from the environment" \
	bash -c "printf '1\n2\n3\n' | cmp -s - '$WORK/outdir/gamma.out'"
"$CONSOLE" --exec 'sleep 30' -c "$WORK/devices.conf" --devices beta --timeout 1 \
	--password-file "$WORK/pw" > "$WORK/exec5.out" 2>&1
check "exec: --timeout ends a hung device as 'timeout'" grep -qE '^beta +timeout' "$WORK/exec5.out"
check "exec: the password is never printed" bash -c "! grep -q '$PASS' '$WORK'/exec*.out"

# --- the console: three sessions ---------------------------------------------
tui_start 110x32 -c "$WORK/devices.conf" --log "$WORK/console.log" --record-dir "$REC"
wait_for 10 bash -c "[ \$(tmux -S '$TMUX_SOCK' capture-pane -p | grep -c '^  online') = 3 ]" \
	|| fail "three devices online" "$(tui_screen)"
tui_keys C-g 1 C-g n; tui_login
tui_wait '\[field\]' 10 && ok "attach: alpha's login lands in tmux" || fail "attach runs tmux" "$(tui_screen)"
tui_run 'echo A-$((1+1))' 'A-2' || fail "alpha session" "$(tui_screen)"
tui_keys C-g 2 C-g n; tui_login
tui_run 'echo B-$((1+2))' 'B-3' || fail "beta session" "$(tui_screen)"

# broadcast: mark beta's session and alpha's; type once
tui_keys C-g m C-g 1 C-g m C-g b
tui_wait 'BROADCAST → 2' 5 && ok "broadcast: the status bar says BROADCAST → 2" || fail "broadcast status" "$(tui_screen)"
check "broadcast: marked sessions are marked in the list" bash -c "[ \$(tmux -S '$TMUX_SOCK' capture-pane -p | grep -c '◆') = 2 ]"
check "broadcast: the pane border shows it" tui_has '^ alpha +#'
tui_run 'echo bc-$((5*5))' 'bc-25' && ok "broadcast: typed once, shown here" || fail "broadcast here" "$(tui_screen)"
tui_keys C-g 2
tui_wait 'B-3' 5 && tui_wait 'bc-25' 5 && ok "broadcast: ... and in the other marked session" \
	|| fail "broadcast: the other session got it" "$(tui_screen)"
tui_keys C-g s
tui_wait 'BROADCAST \(solo\)' 5 || fail "solo shows" "$(tui_screen)"
tui_run 'echo solo-$((3*3))' 'solo-9' && ok "solo: types into the focused session" || fail "solo" "$(tui_screen)"
tui_keys C-g 1
tui_wait 'A-2' 5 && check "solo: the other marked session did not get it" tui_lacks 'solo-9' \
	|| fail "solo: other session" "$(tui_screen)"
tui_keys C-g s
tui_wait 'BROADCAST → 2' 5
tmux -S "$TMUX_SOCK" set-buffer "$(printf 'echo p1-$((2*2))\necho p2-$((2*3))')"
tmux -S "$TMUX_SOCK" paste-buffer -p
tui_wait 'Paste 2 lines into 2 sessions\?' 5 && ok "broadcast: a multi-line paste asks first" || fail "paste asks" "$(tui_screen)"
tui_keys y
tui_keys Enter	# bash holds a bracketed paste until Enter, as in any terminal
tui_wait 'p2-6' 5 && ok "broadcast: the confirmed paste runs" || fail "paste runs" "$(tui_screen)"
tui_keys C-g 2
tui_wait 'B-3' 5 && tui_wait 'p2-6' 5 && ok "broadcast: ... in both sessions" || fail "paste in both" "$(tui_screen)"
tui_keys C-g 3 C-g n
tui_login
tui_wait 'gamma │ .... field live' 10 || fail "gamma session" "$(tui_screen)"
tui_run 'echo G-$((2+5))' 'G-7'
check "broadcast: the focused but unmarked session gets nothing" tui_lacks 'G-7'
tui_keys C-g 1
tui_wait 'A-2' 5
check "broadcast: the login password went to no marked session" tui_lacks "$PASS"
tui_keys C-g 2
tui_wait 'B-3' 5
check "broadcast: ... nor the other" tui_lacks "$PASS"
tui_keys C-g b
wait_for 5 tui_lacks 'BROADCAST' && ok "broadcast: off again" || fail "broadcast off" "$(tui_screen)"

# recording: beta's session
tui_keys C-g R
tui_wait '● REC' 5 && ok "recording: the status bar shows REC" || fail "REC shown" "$(tui_screen)"
tui_run 'stty size' '^ *. *[0-9]+ [0-9]+ *$'
SIZE=$(tui_screen | grep -oE '[0-9]+ [0-9]+ *$' | head -1)
tui_run 'echo rec-$((4*4)); printf "\342\225\220 \346\274\242\345\255\227 \033[1;31mred\033[0m\n"' 'rec-16'
tui_keys C-g M
tui_run 'echo after-marker' 'after-marker$'
tui_keys C-g R
tui_wait 'recording saved' 5 || fail "recording saved" "$(tui_screen)"
CAST=$(ls "$REC"/beta-*.cast 2>/dev/null | head -1)
check "recording: one asciicast file for the session" test -s "$CAST"
check "recording: header is asciicast v2 with the PTY's size" \
	bash -c "head -1 '$CAST' | grep -q '\"version\": 2' && head -1 '$CAST' | grep -q '\"width\": ${SIZE#* }, \"height\": ${SIZE% *}'"
check "recording: output events and a marker event" bash -c "grep -q ', \"o\", ' '$CAST' && grep -q ', \"m\", \"chapter 1\"' '$CAST'"
script -qec "asciinema cat '$CAST'" /dev/null > "$WORK/cast.txt" 2>&1	# it wants a tty
check "recording: asciinema cat reproduces the output" bash -c "grep -q 'rec-16' '$WORK/cast.txt' && grep -q '漢字' '$WORK/cast.txt'"
check "recording: no password in it" bash -c "! grep -q '$PASS' '$CAST'"

# surviving drops: alpha attaches to tmux and reopens by itself
tui_keys C-g 1
tui_wait 'A-2' 5
tui_run 'X=survive-$((2*3)); echo set-$X' 'set-survive-6' || fail "set a variable in tmux" "$(tui_screen)"
kill -USR1 "$PLATFORM_PID"
tui_wait 'disconnected 410' 10 && ok "drop: the device's connection is cut, 410 inline" || fail "drop 410" "$(tui_screen)"
# the new login's notice is soon covered by tmux: the log says it happened
wait_for 20 bash -c "[ \$(grep -c '^.* alpha session .*: connect sent' '$WORK/console.log') -ge 2 ]" \
	&& ok "drop: reopen = auto logs in again by itself" || fail "auto reopen" "$(tui_screen)" "$(cat "$WORK/console.log")"
wait_for 10 bash -c "tmux -S '$TMUX_SOCK' capture-pane -p | grep -q '\[field\]' && ! tmux -S '$TMUX_SOCK' capture-pane -p | grep -q 'new session'"	# tmux took the screen over
tui_run 'echo got-$X' 'got-survive-6' && ok "drop: attach lands in the same remote tmux session" \
	|| fail "attach: same remote work" "$(tui_screen)"
wait_for 10 bash -c "[ \$(tmux -S '$TMUX_SOCK' capture-pane -p | grep -c '^  back: 1 lost session') = 2 ]" \
	&& ok "drop: beta and gamma (reopen = ask) say so in the list, without a dialog" \
	|| fail "drop: ask devices say so" "$(tui_screen)"
check "the password is not in the log" bash -c "! grep -q '$PASS' '$WORK/console.log'"
tui_keys C-g q
tui_wait 'Quit' 3 && tui_keys y
tui_wait 'EXIT=0' 5 || fail "quit" "$(tui_screen)"

# a full disk while recording: the session carries on, the file still plays
if [ "$(id -u)" = 0 ] && mkdir -p "$WORK/tiny" && mount -t tmpfs -o size=8k tmpfs "$WORK/tiny" 2>/dev/null; then
	trap 'umount "$WORK/tiny" 2>/dev/null; tmux -L $TMUX_L kill-server 2>/dev/null; cleanup' EXIT
	tmux -S "$TMUX_SOCK" kill-server
	tui_start 110x32 -c "$WORK/devices.conf" --record-dir "$WORK/tiny"
	wait_for 10 tui_has '^  online'
	tui_keys C-g 3 C-g n; tui_login
	tui_run 'echo full-$((9*7))' 'full-63'
	tui_keys C-g R
	tui_wait '● REC' 5
	tui_run 'head -c 30000 /dev/zero | tr "\0" x; echo; echo still-$((8*8))' 'still-64'
	tui_wait 'REC FAILED' 5 && ok "recording: a full disk shows REC FAILED" || fail "disk full shown" "$(tui_screen)"
	tui_run 'echo alive-$((5*9))' 'alive-45' && ok "recording: the session carries on after the write error" \
		|| fail "session carries on" "$(tui_screen)"
	cp "$WORK"/tiny/*.cast "$WORK/tiny.cast"
	script -qec "asciinema cat $WORK/tiny.cast" /dev/null > "$WORK/tiny.txt" 2>&1
	check "recording: what was written still plays, ending on a whole event" \
		bash -c "grep -q 'xxxxxxxxxxxxxxxx' '$WORK/tiny.txt' && tail -c 3 '$WORK/tiny.cast' | grep -q '\"]'"
else
	echo "# skipped: the full-disk recording check needs root (a tiny tmpfs)"
fi
finish
