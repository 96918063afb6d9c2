#!/bin/bash
# A scripted session under valgrind memcheck: two sessions, output, a
# recording, a disconnect, reopen, quit.  Wanted: 0 bytes definitely lost and
# no invalid reads or writes.
source "$(dirname "$0")/../lib.sh"

if ! command -v valgrind >/dev/null; then echo "# skipped: no valgrind"; echo "ok - valgrind # SKIP"; finish; fi
if [ -n "${ASAN:-}" ]; then echo "# skipped under AddressSanitizer (they do not mix)"; finish; fi
sandbox_up vg:full vg2:c-sdk || { fail "sandbox starts"; finish; }
VG="valgrind --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite --log-file=$WORK/vg.log"
TMUX_SOCK=$WORK/tmux.sock
tmux -S "$TMUX_SOCK" -f /dev/null new-session -d -x 100 -y 30 \
	"$VG $CONSOLE -c $WORK/devices.conf --record-dir $WORK/rec --log $WORK/console.log; echo EXIT=\$?; sleep 600"
tui_wait '  online' 60 || fail "console up under valgrind" "$(tui_screen)"
tui_keys C-g 1 C-g n
tui_login
tui_run 'echo one-$((6*7)); printf "\342\225\220 漢字 \033[1;31mred\033[0m\n"' 'one-42' 30
tui_keys C-g R
tui_run 'seq 1 300' '^ *│?300 *$|│300' 30
tui_keys C-g R
tui_keys C-g 2 C-g n
tui_login
tui_run 'echo two-$((7*8))' 'two-56' 30
tui_run 'exit' 'session ended: the shell exited' 30
tui_keys C-g r
tui_login
tui_run 'echo three-$((8*8))' 'three-64' 30
tui_keys C-g '['
tui_keys PPage
tui_keys q
tui_keys C-g q
tui_wait 'Quit' 10 && tui_keys y
tui_wait 'EXIT=' 60 || fail "console quits under valgrind" "$(tui_screen)"
check "valgrind ran the console to the end" grep -q 'ERROR SUMMARY' "$WORK/vg.log"
check "valgrind: 0 bytes definitely lost" bash -c "grep -q 'definitely lost: 0 bytes' '$WORK/vg.log' || grep -q 'All heap blocks were freed' '$WORK/vg.log'"
check "valgrind: no invalid reads or writes" bash -c "! grep -qE 'Invalid (read|write)' '$WORK/vg.log'"
check "valgrind: 0 errors" grep -q 'ERROR SUMMARY: 0 errors' "$WORK/vg.log"
grep -A12 -E 'Invalid|definitely lost in' "$WORK/vg.log" | head -60 | sed 's/^/# /'
finish
