#!/bin/bash
# make install honours PREFIX and DESTDIR; the man page covers what it must.
source "$(dirname "$0")/../lib.sh"

make -s -C "$TOP" install DESTDIR="$WORK/root" PREFIX=/opt/tt > "$WORK/install.out" 2>&1
check "make install puts the binary under DESTDIR/PREFIX" test -x "$WORK/root/opt/tt/bin/tunnel_tui"
check "... and the man page" test -f "$WORK/root/opt/tt/share/man/man1/tunnel_tui.1"
check "the installed binary runs (--version)" bash -c "'$WORK/root/opt/tt/bin/tunnel_tui' --version | grep -q '^tunnel_tui [0-9]'"
man -l "$WORK/root/opt/tt/share/man/man1/tunnel_tui.1" > "$WORK/man.txt" 2>/dev/null || \
	sed -e 's/^\.SH //' -e 's/"//g' "$WORK/root/opt/tt/share/man/man1/tunnel_tui.1" > "$WORK/man.txt"
for section in OPTIONS CONFIGURATION KEYS FILES ENVIRONMENT "EXIT STATUS" "IOTDA API" "FILE TRANSFER"; do
	check "man page: $section" grep -q "^$section" "$WORK/man.txt"
done
check "man page: NO_COLOR is documented" grep -q NO_COLOR "$WORK/man.txt"
finish
