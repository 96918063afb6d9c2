#!/bin/bash
# Files through the tunnel, end to end: --get and --put on a GNU device
# (bash), a busybox-only device (ash; no base64, od, xxd or stty: hexdump
# down, printf up, the tty's echo on), a dash device and the c-sdk profile
# (one session, raw 2048-byte reads); every byte value, NUL runs, an empty
# file, names with spaces, quotes and UTF-8; files there replaced only when
# asked; Ctrl-g u and Ctrl-g d in the console, on a device of many sessions
# (a session of its own) and one of one (at the user's prompt, typing
# refused while it runs); cancelled half-way on both sides; a tunnel killed
# mid-transfer, then the transfer goes on; a corrupted chunk found and sent
# again; nothing of the data in the pane, the scrollback, a recording or
# the log.
source "$(dirname "$0")/../lib.sh"

BB=$WORK/busybox	# the applets of a busybox-only device, as device.test.sh makes them
mkdir -p "$BB"
for a in sh ash sha256sum md5sum dd head gzip hexdump awk printf cat ls rm mv mkdir echo tr wc; do
	ln -s "$(command -v busybox)" "$BB/$a"
done
sandbox_up gnu:full bb:none cs:c-sdk dsh:none || { fail "sandbox starts"; finish; }
device_up bb full --shell "$BB/sh" --path "$BB"
device_up dsh full --shell /bin/dash
echo "$PASS" > "$WORK/pw"
check "the busybox device's PATH has none of base64, od, xxd, stty, but sha256sum" \
	bash -c "PATH='$BB'; ! command -v base64 && ! command -v od && ! command -v xxd && ! command -v stty && command -v sha256sum >/dev/null"

# the files: 1 MiB of random bytes; every byte value with NUL runs and line
# ends between; an empty one; awkward names
SRC=$WORK/src
mkdir -p "$SRC"
head -c 1048576 /dev/urandom > "$SRC/rnd.bin"
{ for i in $(seq 0 255); do printf "\\$(printf %03o "$i")"; done
  head -c 5000 /dev/zero; printf '\r\n\n\r'; head -c 3000 /dev/zero
  for i in $(seq 255 -1 0); do printf "\\$(printf %03o "$i")"; done; } > "$SRC/bytes.bin"
: > "$SRC/empty.bin"
cp "$SRC/bytes.bin" "$SRC/with space ünï 漢字.bin"
cp "$SRC/bytes.bin" "$SRC/it's \"q\" \$x.bin"
sum() { sha256sum < "$1" | cut -d' ' -f1; }
tt() { "$CONSOLE" -c "$WORK/devices.conf" --password-file "$WORK/pw" --log "$WORK/batch.log" "$@"; }

# --- batch: --get and --put ----------------------------------------------
tt --get "$SRC/rnd.bin" "$WORK/got" --all --parallel 4 > "$WORK/get.out" 2> "$WORK/get.err"
rc=$?
check "--get from four devices at once: exit 0" [ "$rc" = 0 ]
for d in gnu bb cs dsh; do
	check "--get: $d's copy is the file (LOCALDIR/DEVICE/NAME)" cmp -s "$SRC/rnd.bin" "$WORK/got/$d/rnd.bin"
	check "--get: the summary says $d ok with the bytes and the sha256" \
		grep -qE "^$d +ok +1048576 +[0-9.]+s +sha256:$(sum "$SRC/rnd.bin")\$" "$WORK/get.out"
done
check "--get: no temporary file is left" bash -c "! ls -a '$WORK'/got/* | grep -q ttpart"
for d in gnu bb cs dsh; do
	mkdir -p "$WORK/up-$d"
	tt --put "$SRC/rnd.bin" "$WORK/up-$d/" --devices "$d" > "$WORK/put-$d.out" 2>&1
	check "--put 1 MiB to $d: verified, exit 0" bash -c "[ $? = 0 ] && cmp -s '$SRC/rnd.bin' '$WORK/up-$d/rnd.bin'"
done
check "--put: the summary has the bytes and the sha256" \
	grep -qE "^bb +ok +1048576 +[0-9.]+s +sha256:$(sum "$SRC/rnd.bin")\$" "$WORK/put-bb.out"

# every byte value and the awkward names, up and back down, in each shell
for d in gnu bb cs dsh; do
	mkdir -p "$WORK/odd-$d"
	for f in bytes.bin empty.bin "with space ünï 漢字.bin" "it's \"q\" \$x.bin"; do
		tt --put "$SRC/$f" "$WORK/odd-$d/" --devices "$d" > "$WORK/odd.out" 2>&1 || break
		tt --get "$WORK/odd-$d/$f" "$WORK/back-$d" --devices "$d" > "$WORK/odd.out" 2>&1 || break
		cmp -s "$SRC/$f" "$WORK/odd-$d/$f" && cmp -s "$SRC/$f" "$WORK/back-$d/$d/$f" || break
	done
	check "$d: every byte value, NUL runs, an empty file, names with spaces, quotes and UTF-8, up and down" \
		cmp -s "$SRC/$f" "$WORK/back-$d/$d/$f"
done

# files there are not replaced unless asked
echo keep > "$WORK/up-gnu/keep.bin"
tt --put "$SRC/bytes.bin" "$WORK/up-gnu/keep.bin" --devices gnu > "$WORK/exists.out" 2>&1
rc=$?
check "--put over a remote file: 'exists', exit 1, the file untouched" \
	bash -c "[ $rc = 1 ] && grep -qE '^gnu +exists' '$WORK/exists.out' && [ \"\$(cat '$WORK/up-gnu/keep.bin')\" = keep ]"
tt --put "$SRC/bytes.bin" "$WORK/up-gnu/keep.bin" --devices gnu --overwrite > "$WORK/exists.out" 2>&1
check "--put --overwrite replaces it" cmp -s "$SRC/bytes.bin" "$WORK/up-gnu/keep.bin"
tt --get "$SRC/rnd.bin" "$WORK/got" --devices bb > "$WORK/exists.out" 2>&1
check "--get over a local file: 'exists', exit 1" bash -c "[ $? = 1 ] && grep -qE '^bb +exists' '$WORK/exists.out'"
tt --get "$WORK/nothere.bin" "$WORK/none" --devices cs > "$WORK/missing.out" 2>&1
check "--get of a missing file: failed, in words, exit 1" \
	bash -c "[ $? = 1 ] && grep -qE '^cs +failed .*does not exist on the device' '$WORK/missing.out'"
check "--get: a failure leaves no file behind" bash -c "! ls -A '$WORK/none/cs' | grep -q ."
check "batch: no password in the output or the log" bash -c "! grep -q '$PASS' '$WORK'/*.out '$WORK/batch.log'"

# --- the console: Ctrl-g u and Ctrl-g d ---------------------------------------
# gnu and cs through the link emulator: its rate is set when a transfer
# must take long enough to be seen, stopped or cut
start_linkem link --to "127.0.0.1:$PLATFORM_PORT" --control "$WORK/link.ctl" || { fail "linkem starts"; finish; }
link() { echo "$1" > "$WORK/link.ctl"; wait_for 5 has_line "$LINKEM_LOG" "$2"; }	# link LINE LOGREGEX
sed -E "s#$BASE/t-(gnu|cs)/#wss://localhost:$LINKEM_PORT/v5/iot/tunnels/t-\1/#" "$WORK/devices.conf" > "$WORK/tui.conf"
REC=$WORK/rec
mkdir -p "$REC" "$WORK/here" "$WORK/there"
cd "$WORK/here" && tui_start 150x44 -c "$WORK/tui.conf" --log "$WORK/console.log" --record-dir "$REC"
wait_for 10 bash -c "[ \$(tmux -S '$TMUX_SOCK' capture-pane -p | grep -c '^  online') = 4 ]" || fail "four devices online" "$(tui_screen)"
status_has() { tui_screen | tail -1 | grep -qE -- "$1"; }
# xfer KEY FIELD1 FIELD2 [PASSWORD]: the dialog, its fields cleared and typed, Enter
xfer() {
	tui_keys C-g "$1"
	tui_wait "(upload to|download from) " 5 || return 1
	tui_keys C-u; tui_type "$2"; tui_keys Down C-u; tui_type "$3"
	[ -z "${4:-}" ] || { tui_keys Down; tui_type "$4"; }
	tui_keys Enter
}

# gnu runs many sessions: the transfer logs in a session of its own
tui_keys C-g 1 C-g n; tui_login
tui_run "cd $WORK/there" 'there[#$] ?$' || fail "gnu session" "$(tui_screen)"
tui_keys C-g u
tui_wait 'upload to gnu' 5 && tui_has "remote +$WORK/there/" && ok "Ctrl-g u: the dialog, the remote folder taken from the prompt" \
	|| fail "upload dialog" "$(tui_screen)"
tui_keys C-u; tui_type "$SRC/rn"; tui_keys Tab
tui_wait "local +$SRC/rnd.bin" 3 && ok "Tab completes the local path" || fail "Tab completion" "$(tui_screen)"
tui_keys Down Down; tui_type "$PASS"; tui_keys Enter
tui_wait "── uploaded $SRC/rnd.bin to $WORK/there/rnd.bin: 1048576 bytes, sha256 " 20 \
	&& has_line "$WORK/console.log" "gnu: uploaded $SRC/rnd.bin to $WORK/there/rnd.bin: 1048576 bytes, sha256 $(sum "$SRC/rnd.bin")\$" \
	&& ok "upload: the pane says what, where, the size and the sha256 (the log too)" || fail "upload notice" "$(tui_screen)"
check "upload: the file is there, verified" cmp -s "$SRC/rnd.bin" "$WORK/there/rnd.bin"
wait_for 10 bash -c "[ \$(tmux -S '$TMUX_SOCK' capture-pane -p | grep -cE '^ +[0-9a-f]{4} field ') = 1 ]" \
	&& ok "its own session leaves the list when it is done" || fail "own session reaped" "$(tui_screen)"
tui_run 'echo still-$((6*7))' 'still-42' && ok "the user's shell was not disturbed" || fail "shell after upload" "$(tui_screen)"
xfer d "$WORK/there/rnd.bin" "$WORK/here/" "$PASS"
tui_wait "── downloaded $WORK/there/rnd.bin to $WORK/here/rnd.bin: 1048576 bytes, sha256" 20 \
	&& cmp -s "$SRC/rnd.bin" "$WORK/here/rnd.bin" && ok "Ctrl-g d: the file comes back, verified" || fail "download" "$(tui_screen)"
xfer d "$WORK/there/rnd.bin" "$WORK/here/" "$PASS"
tui_wait "rnd.bin exists here. Replace it\\?" 5 && ok "a local file is replaced only when the user says so" \
	|| fail "replace asked" "$(tui_screen)"
tui_keys n

# cs runs one session: the transfer runs at its prompt, typing refused meanwhile
tui_keys C-g 3 C-g n; tui_login
tui_run "cd $WORK/there" 'there[#$] ?$' || fail "cs session" "$(tui_screen)"
wait_for 5 bash -c "tmux -S '$TMUX_SOCK' capture-pane -p | grep -q 'online · single'" || fail "cs learned single" "$(tui_screen)"
tui_run 'seq 1 5 | less' '\(END\)' || fail "less on cs" "$(tui_screen)"
tui_keys C-g u
tui_wait 'cs runs one session and a full-screen program is in it' 5 \
	&& ok "a one-session device: no transfer over a full-screen program, and why" || fail "refused over less" "$(tui_screen | tail -1)"
check "… no dialog opened" tui_lacks 'upload to cs'
tui_keys q
tui_run 'echo left-$((4+4))' 'left-8' || fail "less left" "$(tui_screen)"
tui_keys C-g R
tui_wait '● REC' 5 || fail "recording starts" "$(tui_screen)"
tui_run 'echo before-$((2+3))' 'before-5'
link "rate 300000" 'rate'
xfer d "$WORK/there/rnd.bin" "$WORK/here/cs.bin"
wait_for 15 status_has '⇣ rnd.bin .* [1-9][0-9]?% ' && ok "the status bar shows the download's progress" \
	|| fail "progress shown" "$(tui_screen | tail -1)"
tui_type 'x'
tui_wait 'a download runs in this session: it takes no typing' 3 && ok "a key typed meanwhile is refused, visibly" \
	|| fail "typing refused" "$(tui_screen | tail -1)"
tui_wait "── downloaded $WORK/there/rnd.bin to $WORK/here/cs.bin: 1048576 bytes, sha256" 30 \
	&& cmp -s "$SRC/rnd.bin" "$WORK/here/cs.bin" && ok "a one-session device: downloaded at the user's prompt, verified" \
	|| fail "cs download" "$(tui_screen)"
link "rate 0" 'rate'
tui_run 'echo after-$((3+4))' 'after-7' && ok "… and the prompt is back" || fail "cs shell after" "$(tui_screen)"
tui_lacks 'xecho after' && ok "… the refused key never reached the shell" || fail "refused key" "$(tui_screen)"

# nothing of the transfer in the pane's scrollback, the recording or the log
FRAG=$(base64 -w0 "$SRC/rnd.bin" | cut -c 5001-5040)	# what the data looked like on the wire
tui_keys C-g R
tui_wait 'recording saved' 5 || fail "recording saved" "$(tui_screen | tail -1)"
CAST=$(ls "$REC"/cs-*.cast | head -1)
check "the recording holds the session and the transfer's line" \
	bash -c "grep -q 'before-5' '$CAST' && grep -q 'downloaded $WORK/there/rnd.bin' '$CAST'"
check "… but nothing the transfer typed or read: no loop, no marker, no data" \
	bash -c "! grep -qE 'read -r l|=TT|$FRAG' '$CAST'"
scroll_search() {	# scroll_search TEXT: 0 if the scrollback has it
	tui_keys C-g '['; tui_keys /; tui_type "$1"; tui_keys Enter
	! tui_wait 'not found above' 2
	local r=$?
	tui_keys q
	return $r
}
tui_run 'seq 40; echo pushed' '^pushed'	# what was on the screen goes to the scrollback
scroll_search 'before-5' && ok "the scrollback holds what the session showed" || fail "scrollback search" "$(tui_screen | tail -2)"
! scroll_search "$FRAG" && ! scroll_search 'read -r l' && ok "… but nothing of the transfer" \
	|| fail "transfer in scrollback" "$(tui_screen | tail -2)"
check "the log names the transfers but holds none of their data" \
	bash -c "grep -q 'cs: downloaded' '$WORK/console.log' && ! grep -qE '=TT|$FRAG|read -r l' '$WORK/console.log'"

# cancelled half-way: no file under its name on either side, no part file left
link "rate 150000" 'rate 150000'
xfer d "$WORK/there/rnd.bin" "$WORK/here/cancel.bin"
wait_for 20 status_has '⇣ rnd.bin .* [1-9][0-9]?% ' || fail "download under way" "$(tui_screen | tail -1)"
tui_keys Escape
tui_wait "── download of $WORK/there/rnd.bin stopped: cancelled" 30 && ok "Esc stops a download; the pane says so" \
	|| fail "download cancelled" "$(tui_screen)"
check "… no local file under its name, no part file" bash -c "[ ! -e '$WORK/here/cancel.bin' ] && ! ls -a '$WORK/here' | grep -q ttpart"
tui_run 'echo alive-$((4+4))' 'alive-8' && ok "… and the shell is back at its prompt" || fail "shell after cancel" "$(tui_screen)"
xfer u "$SRC/rnd.bin" "$WORK/there/cancelled.bin"
wait_for 20 status_has '⇡ rnd.bin .* [1-9][0-9]?% ' || fail "upload under way" "$(tui_screen | tail -1)"
tui_keys Escape
tui_wait "── upload of $SRC/rnd.bin stopped: cancelled" 10 && ok "Esc stops an upload" || fail "upload cancelled" "$(tui_screen)"
check "… nothing under its name on the device, and its part file removed" \
	bash -c "[ ! -e '$WORK/there/cancelled.bin' ] && ! ls -a '$WORK/there' | grep -q ttpart"
tui_keys C-g 1
xfer u "$SRC/rnd.bin" "$WORK/there/cancelled.bin" "$PASS"
wait_for 20 status_has '⇡ rnd.bin .* [1-9][0-9]?% ' || fail "upload under way (gnu)" "$(tui_screen | tail -1)"
tui_keys C-g u
tui_wait 'Stop the upload of rnd.bin\?' 5 && tui_keys y
tui_wait "── upload of $SRC/rnd.bin stopped: cancelled" 10 && ok "in its own session, Ctrl-g u stops it" \
	|| fail "own upload cancelled" "$(tui_screen)"
check "… nothing under its name, no part file" \
	bash -c "[ ! -e '$WORK/there/cancelled.bin' ] && ! ls -a '$WORK/there' | grep -q ttpart"

# the tunnel killed mid-transfer: the transfer goes on from what was verified
link_cut() {	# the link dies, its connections reset, and is back at once on its port
	kill -9 "$LINKEM_PID"; wait "$LINKEM_PID" 2>/dev/null
	"${TT_LINKEM:-$LINKEM_BIN}" --listen "127.0.0.1:$LINKEM_PORT" --to "127.0.0.1:$PLATFORM_PORT" \
		--control "$WORK/link.ctl" >> "$WORK/link.out" 2>> "$LINKEM_LOG" &
	LINKEM_PID=$!
	PIDS+=($!)
}
LINKEM_BIN=$TOP/tests/sandbox/linkem
[ -n "${ASAN:-}" ] && LINKEM_BIN=$TOP/build/asan/linkem
paused_mid() {	# paused_mid DEVICE VERB: the log says it paused with some but not all bytes verified
	local n
	n=$(sed -n "s/^.* $1: the $2 paused at byte \([0-9]*\): the session was lost\$/\1/p" "$WORK/console.log" | tail -1)
	[ -n "$n" ] && [ "$n" -gt 0 ] && [ "$n" -lt 1048576 ]
}
xfer d "$WORK/there/rnd.bin" "$WORK/here/resumed.bin" "$PASS"
wait_for 20 status_has '⇣ rnd.bin .* [2-9][0-9]% ' || fail "download a fifth done" "$(tui_screen | tail -1)"
link_cut
wait_for 10 paused_mid gnu download && ok "a lost tunnel pauses the download, what was verified kept" \
	|| fail "paused" "$(tail -5 "$WORK/console.log")"
wait_for 30 has_line "$WORK/console.log" 'gnu: the download goes on from byte [1-9][0-9]*' \
	&& ok "… the tunnel back, it goes on from there by itself (its own session logs in again)" \
	|| fail "resumed" "$(tail -5 "$WORK/console.log")"
tui_wait "── downloaded $WORK/there/rnd.bin to $WORK/here/resumed.bin" 30 && cmp -s "$SRC/rnd.bin" "$WORK/here/resumed.bin" \
	&& ok "… and the whole file is verified" || fail "resumed file" "$(tui_screen)"
cs_online() { tmux -S "$TMUX_SOCK" capture-pane -p | grep -A1 '^ cs ' | grep -q '^  online'; }
cs_live() { tmux -S "$TMUX_SOCK" capture-pane -p | grep -A6 '^ cs ' | grep -qE '^ +[0-9a-f]{4} field +live'; }
wait_for 20 cs_online || fail "cs back after the cut" "$(tui_screen)"
tui_keys C-g 3 C-g r	# cs lost its session with the tunnel
tui_login
wait_for 20 cs_live || fail "cs session again" "$(tui_screen)"
tui_run "cd $WORK/there && echo in-\$((6*7))" 'in-42' || fail "cs session again: its shell" "$(tui_screen)"
link "rate 150000" 'rate 150000'
xfer u "$SRC/rnd.bin" "$WORK/there/resumed.bin"
wait_for 20 status_has '⇡ rnd.bin .* [2-9][0-9]% ' || fail "upload a fifth done" "$(tui_screen | tail -1)"
link_cut
wait_for 10 paused_mid cs upload && ok "a one-session device: the upload pauses" || fail "cs paused" "$(tail -5 "$WORK/console.log")"
tui_wait 'r reopens its session and it goes on' 10 || fail "paused shown" "$(tui_screen | tail -1)"
wait_for 20 cs_online || fail "cs back" "$(tui_screen)"
tui_keys C-g r
tui_login
tui_wait "── uploaded $SRC/rnd.bin to $WORK/there/resumed.bin" 30 && cmp -s "$SRC/rnd.bin" "$WORK/there/resumed.bin" \
	&& ok "… the session reopened, it goes on at the new prompt and the file is verified" || fail "cs resumed" "$(tui_screen)"
check "… from where it was, not from the start" has_line "$WORK/console.log" 'cs: the upload goes on from byte [1-9]'
tui_keys C-g q
tui_wait 'Quit\?' 5 && tui_keys y
tui_wait 'EXIT=0' 10 || fail "quit" "$(tui_screen)"

# --- --get over a link cut mid-transfer: it reconnects and goes on ------------
link_down_over() {	# link_down_over BYTES: the link has carried more than BYTES to the console
	local n
	echo stats > "$WORK/link.ctl"
	n=$(grep -o 'down forwarded [0-9]*' "$LINKEM_LOG" | tail -1 | grep -o '[0-9]*$')
	[ "${n:-0}" -gt "$1" ]
}
link "rate 150000" 'rate 150000'
tt -c "$WORK/tui.conf" --get "$SRC/rnd.bin" "$WORK/bresume" --devices gnu > "$WORK/bresume.out" 2>&1 &
BPID=$!
wait_for 20 link_down_over 500000 || fail "--get under way" "$(tail -3 "$LINKEM_LOG")"
link_cut
wait "$BPID"
rc=$?
check "--get: a link cut mid-transfer is reconnected and the file verified, exit 0" \
	bash -c "[ $rc = 0 ] && cmp -s '$SRC/rnd.bin' '$WORK/bresume/gnu/rnd.bin'"
check "… it went on from what was verified" bash -c "grep -q 'gnu: the download paused at byte [1-9]' '$WORK/batch.log' &&
	grep -q 'gnu: the download goes on from byte [1-9]' '$WORK/batch.log'"

# --- a corrupted chunk, each way, each text: found by its hash, sent again -----
relay_with() {	# relay_with ROLE N: the relay again, on its port, corrupting ROLE's Nth message
	kill "$PLATFORM_PID"; wait "$PLATFORM_PID" 2>/dev/null
	start_platform "relay-$1" --cert "$CERTS/server.pem" --key "$CERTS/server.key" \
		--tunnels "$WORK/tunnels.json" --api-token-file "$WORK/api.token" --corrupt "$1:$2"
	wait_for 30 bash -c "[ \$(grep -c ': device connected' '$PLATFORM_LOG') -ge 4 ]" \
		|| fail "the relay again (--corrupt $1:$2): all four devices back" "$(tail -5 "$PLATFORM_LOG")"
}
# corrupted ROLE VERB HOW COPY DEVICE ARGS...: a run of tt ARGS on DEVICE under the relay's
# --corrupt for ROLE; the relay changed a character, the console found the chunk bad and had it again
corrupted() {
	local role=$1 verb=$2 how=$3 copy=$4 d=$5
	shift 5
	tt "$@" --devices "$d" > "$WORK/corrupt.out" 2>&1
	has_line "$PLATFORM_LOG" "tunnel t-$d: message [0-9]+ from the $role corrupted" \
		&& ok "$d: a chunk of the $verb corrupted on the way (the relay says so) …" \
		|| fail "$d: a chunk of the $verb corrupted on the way" "$(cat "$WORK/corrupt.out")" \
			"$(grep "t-$d" "$PLATFORM_LOG" | tail -4)"
	check "… found by its check and asked for again; the file is right" \
		bash -c "grep -qE '$d: $verb chunk [0-9]+ $how' '$WORK/batch.log' && cmp -s '$SRC/rnd.bin' '$copy'"
}
relay_with device 60
for d in gnu bb; do
	corrupted device download "(failed its check|never came whole); asked again" "$WORK/corrupt/$d/rnd.bin" "$d" \
		--get "$SRC/rnd.bin" "$WORK/corrupt"
done
relay_with app 40
for d in gnu bb; do
	mkdir -p "$WORK/corrupt-$d"
	corrupted app upload "arrived damaged; asked again" "$WORK/corrupt-$d/rnd.bin" "$d" \
		--put "$SRC/rnd.bin" "$WORK/corrupt-$d/"
done

finish
