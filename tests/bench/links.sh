# tests/bench/links.sh: sourced by tests/bench/run.sh.  Figures 7-10, the
# console over cellular-grade links: tests/sandbox/linkem between the
# console and the relay (each direction alike: --delay is one way).
#   links: 7. predictive echo at 300 ms, 8. Ctrl-C at 1 Mbit/s,
#          9. a blackholed link: the stale notice, recovery, reconnect
#   deep:  3b. Ctrl-C with at least 8 MB of output queued toward the console
#   soak (BENCH_SOAK=MINUTES): 10. RSS of 10 streaming sessions over a lossy link

LINKEM=$TOP/tests/sandbox/linkem

# linkem_up NAME ARGS...: a link emulator in front of the relay, its control
# FIFO $WORK/NAME.ctl, its log $WORK/log/NAME.log; sets LK_PORT.
linkem_up() {
	local name=$1; shift
	"$LINKEM" --listen 127.0.0.1:0 --to "127.0.0.1:$PORT" --control "$WORK/$name.ctl" "$@" \
		> "$WORK/$name.out" 2> "$WORK/log/$name.log" &
	PIDS+=($!)
	wait_for 10 grep -q '^listening on ' "$WORK/$name.out" || { log "linkem $name did not start"; return 1; }
	LK_PORT=$(sed -n 's/^listening on .*://p' "$WORK/$name.out" | head -1)
}
# lk NAME LINE: a control line, applied (linkem logs each change)
lk() {
	local n0; n0=$(wc -l < "$WORK/log/$1.log")
	echo "$2" > "$WORK/$1.ctl"
	wait_for 5 bash -c "tail -n +$((n0 + 1)) '$WORK/log/$1.log' | grep -q ."
}
# link_conf FILE PORT NAME[:"KEY=VALUE ..."]...: devices through the emulator at PORT
link_conf() {
	local f=$1 port=$2 d name kv; shift 2
	: > "$f"
	for d in "$@"; do
		name=${d%%:*}
		printf '[device %s]\nurl = wss://localhost:%s/v5/iot/tunnels/t-%s/source-connect\ntoken_file = %s\nusername = field\ncacert = %s\n' \
			"$name" "$port" "$name" "$WORK/app/$name.app" "$CERTS/ca.pem" >> "$f"
		if [ "$d" != "$name" ]; then
			for kv in ${d#*:}; do printf '%s = %s\n' "${kv%%=*}" "${kv#*=}" >> "$f"; done
		fi
		echo >> "$f"
	done
}

# login H N NAME: device N of console H (Ctrl-g N), online with a measured
# round trip (the status bar), then a session through the login dialog
login() {
	h "$1" send "\\x07$2" && h "$1" wait 30000 "^ $3 │ rtt [0-9]+ ms" && h "$1" send '\x07n' &&
		h "$1" wait 10000 'password' && h "$1" send "$PASS\\r" && h "$1" waitcur 30000 "$PROMPT_RE"
}

# The remote side of figure 9: a key counter (no echo; "got N" after each key)
COUNTER='clear; stty -echo -icanon; n=0; printf "got 0"; while IFS= read -rsn1 c; do n=$((n+1)); printf "\\rgot %d" $n; done\r'

links_phase() {
	local r x fifo=$WORK/lnk.ctl
	phase "7.-9. cellular-grade links: the console through linkem to the relay"
	fixture_quiet
	# 300 ms round trips, +-10 ms each way: 150 ms one way, as a 3G/LTE link
	# on a bad day; the same link, with a rate and a shorter delay, for 8
	linkem_up lnk --delay 150 --jitter 10 --buffer "$LINK_BUFFER" --seed 7 || return 1
	link_conf "$WORK/links.conf" "$LK_PORT" \
		"l1:predict=auto reopen=auto remember_password=session" "l2:predict=never"
	h_start lk --size $CON_SIZE -- "$CONSOLE" -c "$WORK/links.conf" --log "$WORK/log/links.log"
	login lk 2 l2 && login lk 1 l1 || return 1

	# 7. a person typing commands at a shell prompt; the two devices take
	# turns; the line as drawn is kept 300 ms (a round trip) after its last
	# echo; the prompt "TTB> " is 5 columns
	phase "7. predictive echo at 300 ms: $TYPE_LINES command lines with prediction on (l1) and off (l2)"
	for r in $(seq 1 $((TYPE_LINES / 2))); do
		for x in 1 2; do
			h lk send "\\x07$x" && h lk wait 5000 "^ l$x │" && h lk waitcur 5000 "$PROMPT_RE" &&
				h lk typist 2 300 5 "$OUT/typing-l$x.txt" "$PROMPT_RE" || return 1
			echo "${REPLY#ok }" >> "$WORK/typist-l$x.txt"
		done
	done
	for x in 1 2; do
		# KEYS WITHIN20 PCT SHOWN_P50 ECHO_P50 WRONG UNDERLINED MISSING REMOTE_DIFF, per turn
		read -r R[type_keys_$x] R[type_within_$x] R[type_wrong_$x] R[type_ul_$x] R[type_missing_$x] R[type_rdiff_$x] < <(
			awk '{ k += $1; w += $2; wr += $6; u += $7; m += $8; d += $9 } END { print k, w, wr, u, m, d }' "$WORK/typist-l$x.txt")
		R[type_pct_$x]=$(calc "100 * ${R[type_within_$x]} / ${R[type_keys_$x]}" 1)
		R[type_shown50_$x]=$(grep -v '^#' "$OUT/typing-l$x.txt" | awk '{ print $4 < 0 ? 1e9 : $4 }' | median)
		R[type_echo50_$x]=$(grep -v '^#' "$OUT/typing-l$x.txt" | awk '$3 != "_" { print $5 < 0 ? 1e9 : $5 }' | median)
		log "   l$x: ${R[type_pct_$x]} % of ${R[type_keys_$x]} keys shown within 20 ms; median shown $(r type_shown50_$x)," \
			"echo $(r type_echo50_$x) ms; wrong left $(r type_wrong_$x), underlined left $(r type_ul_$x)," \
			"never shown $(r type_missing_$x), lines the shell had otherwise $(r type_rdiff_$x)"
	done
	R[predict_pct]=${R[type_pct_1]}
	R[predict_off_pct]=${R[type_pct_2]}
	R[predict_wrong]=${R[type_wrong_1]}

	# 9. a link that goes silent while the user types a key every 300 ms,
	# into a key counter: 6 s (it heals), then 15 s (dead at 10 s, reconnect)
	phase "9. a blackholed link while typing: $HOLE_REPS rounds of a ${SHORT_HOLE} ms and a ${LONG_HOLE} ms blackhole"
	h lk trace "$OUT/trace-blackhole.txt" 27 || return 1
	for r in $(seq 1 "$HOLE_REPS"); do
		h lk send "\\x071" && h lk wait 5000 "^ l1 │" && h lk waitcur 15000 "$PROMPT_RE" && h lk send "$COUNTER" &&
			h lk wait 10000 'got 0$' || return 1
		h lk autotype 300 reset && h lk drain 2000 || return 1
		h lk ctl "$fifo" blackhole on && h lk waitm 10000 'NO ANSWER FOR' || return 1
		echo "${REPLY#ok }" >> "$WORK/stale.txt"
		h lk untilm "$SHORT_HOLE" && h lk ctl "$fifo" blackhole off && h lk count 20000 || return 1
		echo "${REPLY#ok }" >> "$WORK/recover.txt"	# MS_SINCE_HEAL MS_SINCE_THAT_KEY N TYPED
		h lk autotype 0 && h lk drain 1500 && h lk count 1 || return 1
		echo "${REPLY#ok }" | cut -d' ' -f3,4 >> "$WORK/keys-arrived.txt"
		log "   short: notice after $(tail -1 "$WORK/stale.txt") ms; typing echoed $(cut -d' ' -f1 <<< "$(tail -1 "$WORK/recover.txt")") ms" \
			"after the link heals (that key $(cut -d' ' -f2 <<< "$(tail -1 "$WORK/recover.txt")") ms after it was typed);" \
			"keys counted / typed: $(tail -1 "$WORK/keys-arrived.txt")"

		h lk autotype 300 && h lk drain 2000 || return 1
		h lk ctl "$fifo" blackhole on && h lk waitm 10000 'NO ANSWER FOR' || return 1
		echo "${REPLY#ok }" >> "$WORK/stale.txt"
		h lk waitrow 30000 1 '^  (retry|connecting|reconnecting)' || return 1
		echo "${REPLY#ok }" >> "$WORK/dead.txt"
		h lk autotype 0	# the session has ended: the user stops typing
		h lk untilm "$LONG_HOLE" && h lk ctl "$fifo" blackhole off || return 1
		h lk waitrow 60000 1 '^  online +│' || return 1
		echo "${REPLY#ok }" >> "$WORK/reconnect.txt"
		h lk waitmcur 30000 "$PROMPT_RE" && echo "${REPLY#ok }" >> "$WORK/reopen.txt" || return 1
		log "   long: notice after $(tail -1 "$WORK/stale.txt") ms, dead after $(tail -1 "$WORK/dead.txt") ms;" \
			"after the link heals: online in $(tail -1 "$WORK/reconnect.txt") ms, the session reopened" \
			"(its prompt) in $(tail -1 "$WORK/reopen.txt") ms"
	done
	h lk trace off
	R[stale_ms]=$(median < "$WORK/stale.txt")
	R[stale_max]=$(sort -n "$WORK/stale.txt" | tail -1)
	R[recover_ms]=$(cut -d' ' -f1 "$WORK/recover.txt" | median)
	R[dead_ms]=$(median < "$WORK/dead.txt")
	R[reconnect_ms]=$(median < "$WORK/reconnect.txt")
	R[reconnect_max]=$(sort -n "$WORK/reconnect.txt" | tail -1)
	R[reopen_ms]=$(median < "$WORK/reopen.txt")
	R[keys_lost]=$(awk '{ s += $2 - $1 } END { print s + 0 }' "$WORK/keys-arrived.txt")

	# 8. 1 Mbit/s, 100 ms round trips: Ctrl-C once seq 200000 has run for 2 s
	# the baseline: ssh to the private sshd through a link emulator of its own, alike
	phase "8. Ctrl-C at 1 Mbit/s, 100 ms RTT: $CTRLC_SLOW_REPS rounds, console and ssh taking turns"
	lk lnk 'jitter 0' && lk lnk 'delay 50' && lk lnk 'rate 125000' || return 1
	PORT=$SSHD_PORT linkem_up lsh --delay 50 --rate 125000 --buffer "$LINK_BUFFER" --seed 8 || return 1
	h_start sh --size $PANE_SIZE -- ${SSH_CMD/-p $SSHD_PORT/-p $LK_PORT}
	h sh waitcur 30000 "$PROMPT_RE" && h lk drain 1000 && h lk waitcur 5000 "$PROMPT_RE" || return 1
	declare -gA LKFIFO=([lk]=$fifo [sh]=$WORK/lsh.ctl) LKLOG=([lk]=lnk [sh]=lsh) LKTO=([lk]=$PORT [sh]=$SSHD_PORT)
	for r in $(seq 1 "$CTRLC_SLOW_REPS"); do
		for x in lk sh; do
			ctrlc_slow "$x" "$r" || return 1
		done
	done
	for x in lk sh; do
		R[ctrlc_slow_$x]=$(cut -d' ' -f1 "$WORK/ctrlc-slow-$x.txt" | median)
		R[ctrlc_slow_kb_$x]=$(cut -d' ' -f2 "$WORK/ctrlc-slow-$x.txt" | median | awk '{ printf "%.0f", $1 / 1000 }')
		log "   $x: $(cut -d' ' -f1 "$WORK/ctrlc-slow-$x.txt" | tr '\n' ' ')ms; bytes through the link after Ctrl-C:" \
			"$(cut -d' ' -f2 "$WORK/ctrlc-slow-$x.txt" | tr '\n' ' ')"
		log "      at Ctrl-C, held: linkem $(cut -d' ' -f3 "$WORK/ctrlc-slow-$x.txt" | tr '\n' ' ')," \
			"the sender's socket $(cut -d' ' -f4 "$WORK/ctrlc-slow-$x.txt" | tr '\n' ' ')," \
			"linkem's socket $(cut -d' ' -f5 "$WORK/ctrlc-slow-$x.txt" | tr '\n' ' ');" \
			"the row above the prompt: $(cut -d' ' -f6- "$WORK/ctrlc-slow-$x.txt" | sed 's/  */ /g' | tr '\n' '|')"
	done
	h_stop sh
	h_stop lk
}

# ctrlc_slow H ROUND: seq 200000, 2 s, Ctrl-C; appends to ctrlc-slow-H.txt
# "MS BYTES_AFTER LINKEM_HELD SENDER_SOCKET_QUEUE LINKEM_SOCKET_QUEUE ROW_ABOVE_PROMPT"
# (bytes: what the emulator forwarded toward the console or ssh after Ctrl-C,
# and where the rest was at the moment: its queue, and the kernel's queues on
# its link from the relay or sshd)
ctrlc_slow() {
	local x=$1 r=$2 ms ln lpid sndq rcvq
	ln=${LKLOG[$x]}
	lpid=$(grep -o 'pid=[0-9]*' <(ss -Htlnp "sport = :$(sed -n 's/^listening on .*://p' "$WORK/$ln.out")") | head -1)
	h $x send 'seq 200000\r' && h $x drain 2000 || return 1
	[ $x = lk ] && kill -USR2 "$RELAY_PID"
	ss -Htnp > "$WORK/ss-ctrlc-$x$r.txt"
	h $x ctl "${LKFIFO[$x]}" stats && h $x ctrlc 120000 "$PROMPT_RE" || return 1
	ms=${REPLY#ok }
	h $x ctl "${LKFIFO[$x]}" stats && h $x rowtext -1 || return 1
	# the queues on the emulator's links from the sender (the relay or sshd):
	# the sender's Send-Q, linkem's Recv-Q
	read -r sndq rcvq < <(awk -v p="$lpid" -v to=":${LKTO[$x]}" '
		{ split($4, l, ":"); split($5, q, ":") }
		$0 ~ p"," && ":"q[2] == to { mine[l[2]] = 1; rcvq += $2 }
		":"l[2] == to { snd[q[2]] += $3 }
		END { for (k in mine) sndq += snd[k]; print sndq + 0, rcvq + 0 }' "$WORK/ss-ctrlc-$x$r.txt")
	echo "$ms $(grep 'stats:' "$WORK/log/$ln.log" | tail -2 | sed -E 's/.*down forwarded ([0-9]+) buffered ([0-9]+).*/\1 \2/' |
		tr '\n' ' ' | awk '{ print $3 - $1, $2 }') $sndq $rcvq ${REPLY#ok }" >> "$WORK/ctrlc-slow-$x.txt"
	h $x drain 1000 >/dev/null
}


# --- figure 3b: Ctrl-C behind a deep queue ----------------------------------------
# `yes` runs while linkem holds the console's link shut (a blackhole) and
# its queue toward the console fills to DEEP_BYTES; then the link opens and
# Ctrl-C goes at once: the console must work through it all (and whatever
# the relay and the agent held) before the prompt shows.
DEEP_BYTES=$((8 << 20))
# deep_round H LINK: one round on harness H behind linkem LINK; appends
# "MS HELD_BYTES" to ctrlc-deep-H.txt
deep_round() {
	local x=$1 ln=$2 held=0
	h "$x" send 'yes\r' && h "$x" drain 300 >/dev/null || return 1	# typed before: no key waits in the hole
	h "$x" ctl "$WORK/$ln.ctl" blackhole on || return 1
	while [ "$held" -lt "$DEEP_BYTES" ]; do	# setup: until the queue is deep enough
		h "$x" drain 200 >/dev/null && lk "$ln" stats || return 1
		held=$(grep 'stats:' "$WORK/log/$ln.log" | tail -1 | sed -E 's/.*down forwarded [0-9]+ buffered ([0-9]+).*/\1/')
	done
	h "$x" ctl "$WORK/$ln.ctl" blackhole off && h "$x" ctrlc 120000 "$PROMPT_RE" || return 1
	echo "${REPLY#ok } $held" >> "$WORK/ctrlc-deep-$x.txt"
	log "   $x: ${REPLY#ok } ms, $(calc "$held / 1e6" 1) MB held in the link at Ctrl-C"
	h "$x" drain 1000 >/dev/null
}

# the console and, as its baseline, the minimal client, each behind a link
# emulator of its own that holds up to twice DEEP_BYTES
deep_phase() {
	local r x
	phase "3b. Ctrl-C with $((DEEP_BYTES >> 20)) MB or more queued toward the app: $CTRLC_REPS rounds each"
	fixture_quiet
	linkem_up ldp --buffer $((DEEP_BYTES * 2)) || return 1
	link_conf "$WORK/deep.conf" "$LK_PORT" l1
	h_start dp --size $CON_SIZE -- "$CONSOLE" -c "$WORK/deep.conf" --log "$WORK/log/deep.log"
	linkem_up ldm --buffer $((DEEP_BYTES * 2)) || return 1
	h_start dm --size $PANE_SIZE --client $RID "$WORK/dm.fifo" field "$WORK/pass" -- \
		"$CLIENT" --url "wss://localhost:$LK_PORT/v5/iot/tunnels/t-m1/source-connect" \
		--token-file "$WORK/app/m1.app" --cacert "$CERTS/ca.pem" --discard --save $RID "$WORK/dm.fifo"
	login dp 1 l1 && h dm waitcur 30000 "$PROMPT_RE" || return 1
	for r in $(seq 1 "$CTRLC_REPS"); do
		for x in dp:ldp dm:ldm; do
			deep_round "${x%%:*}" "${x#*:}" || return 1
		done
	done
	for x in dp dm; do
		R[ctrlc_deep_$x]=$(cut -d' ' -f1 "$WORK/ctrlc-deep-$x.txt" | median)
		R[ctrlc_deep_max_$x]=$(cut -d' ' -f1 "$WORK/ctrlc-deep-$x.txt" | sort -n | tail -1)
		R[ctrlc_deep_mb_$x]=$(calc "$(cut -d' ' -f2 "$WORK/ctrlc-deep-$x.txt" | median) / 1e6" 1)
	done
	R[ctrlc_deep]=${R[ctrlc_deep_dp]}
	h_stop dp
	h_stop dm
}

# --- figure 10: a soak ---------------------------------------------------------
# 10 devices, a session each, every one printing a ~110-byte coloured log line
# every 100 ms, through one emulated link per tunnel (2 % of segments lost,
# 100 ms round trips); the console's RSS every minute.  5000 lines of
# scrollback fill in 500 s: after that, memory should stay level.
soak_phase() {
	local m i t0 rss n=10 mins=$SOAK_MIN
	phase "10. soak: $n sessions streaming over 2 % loss, 100 ms RTT, $mins min"
	fixture_quiet
	linkem_up lso --delay 50 --loss 2 --buffer "$LINK_BUFFER" --seed 10 || return 1
	link_conf "$WORK/soak.conf" "$LK_PORT" "${SCALE[@]:0:$n}"
	h_start so --size $CON_SIZE -- "$CONSOLE" -c "$WORK/soak.conf" --log "$WORK/log/soak.log"
	SO_PID=$(h_pid so)
	h so send '\x071' || return 1
	for i in $(seq 0 $((n - 1))); do
		[ "$i" = 0 ] || h so send '\x07\t' || return 1
		h so wait 30000 "^ ${SCALE[$i]} │ rtt [0-9]+ ms" && h so send '\x07n' && h so wait 10000 'password' &&
			h so send "$PASS\\r" && h so waitcur 30000 "$PROMPT_RE" &&
			h so send "$WORK/bin/ptyharness stream 100\\r" || return 1
	done
	h so drain 5000 >/dev/null || return 1
	t0=$(now_ms)
	: > "$OUT/soak-rss.txt"
	for m in $(seq 0 "$mins"); do
		[ "$m" = 0 ] || h so drain $(( t0 + m * 60000 - $(now_ms) )) >/dev/null || return 1
		rss=$(rss_kb "$SO_PID") || return 1
		echo "$m $(calc "$rss / 1024" 1) $(calc "$(cpu_ns "$SO_PID") / 1e9" 1)" >> "$OUT/soak-rss.txt"
		log "   minute $m: RSS $(calc "$rss / 1024" 1) MB"
	done
	R[soak_min]=$mins
	R[soak_start]=$(awk 'NR == 1 { print $2 }' "$OUT/soak-rss.txt")
	R[soak_end]=$(tail -1 "$OUT/soak-rss.txt" | cut -d' ' -f2)
	# the thirds: from the sample at 0 to the one at mins/3; from 2*mins/3 to the end
	R[soak_first_third]=$(awk -v a=0 -v b=$((mins / 3)) '$1 == a { x = $2 } $1 == b { y = $2 } END { printf "%.1f\n", y - x }' "$OUT/soak-rss.txt")
	R[soak_last_third]=$(awk -v a=$((mins - mins / 3)) -v b="$mins" '$1 == a { x = $2 } $1 == b { y = $2 } END { printf "%.1f\n", y - x }' "$OUT/soak-rss.txt")
	R[soak_cpu]=$(awk 'NR == 1 { c = $3 } END { printf "%.1f\n", ($3 - c) / ($1 * 60) * 100 }' "$OUT/soak-rss.txt")
	R[soak_dead]=$(grep -c 'the link is dead' "$WORK/log/soak.log")
	R[soak_series]=$(cut -d' ' -f2 "$OUT/soak-rss.txt" | tr '\n' ' ')
	log "   RSS $(r soak_start) -> $(r soak_end) MB; first third +$(r soak_first_third), last third +$(r soak_last_third) MB;" \
		"CPU $(r soak_cpu) % of a core; links declared dead: $(r soak_dead)"
	h_stop so
}
