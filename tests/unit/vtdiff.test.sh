#!/bin/bash
# The console's terminal emulator held to libvterm's screen, cell by cell
# (build/vtdiff): random streams from a grammar of what programs send, and
# what real full-screen programs draw (vim scrolling and splitting, less,
# top, tmux with colours), captured through script(1) at a fixed size.
source "$(dirname "$0")/../lib.sh"
VTDIFF=${TT_VTDIFF:-$TOP/build/vtdiff}

for seed in 1 2 3 4 5; do
	"$VTDIFF" random "$seed" 400
done

# capture NAME COLS ROWS COMMAND: what COMMAND writes to an xterm of that size
capture() {
	local name=$1 cols=$2 rows=$3; shift 3
	script -qfec "stty cols $cols rows $rows; TERM=xterm-256color $*" /dev/null < /dev/null > "$WORK/$name.out" 2>&1
}
{	# vim takes at most 10 -c: the session as a script
	echo 'syntax on'
	echo 'set hlsearch number cursorline list'
	echo "edit $TOP/tunnel_tui.c"
	for _ in $(seq 12); do echo 'normal 37j'; echo 'redraw'; done
	printf '%s\n' '/static' 'normal n' redraw split 'normal 50%' redraw "vsplit $TOP/README.md" redraw
	for _ in $(seq 6); do echo 'normal 9k'; echo 'redraw'; done
	printf '%s\n' help redraw 'qa!'
} > "$WORK/vim.cmds"
capture vim 80 24 "vim -u NONE -i NONE -N -n -S $WORK/vim.cmds"
capture less 80 24 "less -R -E +G $TOP/README.md"
capture top 100 30 "top -d 0.1 -n 4"
capture tmux 80 24 "tmux -f /dev/null -L vtdiff$$ new-session 'ls --color=always -la /usr/bin | head -80; \
	printf \"\\033[1;31mred \\033[38;5;208m256 \\033[38;2;1;2;3mtrue\\033[0m 漢字\\n\"; \
	vim -u NONE -N -c \"normal 5oline\" -c redraw -c \"q!\"'"
for run in vim:80:24 less:80:24 top:100:30 tmux:80:24; do
	IFS=: read -r name cols rows <<< "$run"
	"$VTDIFF" file "$WORK/$name.out" "$cols" "$rows"
done
finish
