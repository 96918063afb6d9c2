#!/bin/bash
# The console's AK/SK signatures (derived V11-HMAC-SHA256 and basic
# SDK-HMAC-SHA256) judged by Huawei's own signer: the npm package
# @huaweicloud/huaweicloud-sdk-core (its DerivedAKSKSigner and AKSKSigner),
# installed here, not committed.  Random requests of the shapes the IoTDA API
# takes go through both; every Authorization header must match.
source "$(dirname "$0")/../lib.sh"

SIGN=${TT_SIGN:-$TOP/build/sign}
NPM_DIR=$TOP/build/npm	# kept between runs: the sanitizer pass reuses it
[ -x "$SIGN" ] || { fail "built: $SIGN" "run: make build/sign"; finish; }
if [ ! -d "$NPM_DIR/node_modules/@huaweicloud/huaweicloud-sdk-core" ]; then
	mkdir -p "$NPM_DIR"
	npm install --prefix "$NPM_DIR" --no-audit --no-fund @huaweicloud/huaweicloud-sdk-core \
		> "$WORK/npm.log" 2>&1 || { fail "Huawei's signer installs from npm" "$(tail -5 "$WORK/npm.log")"; finish; }
fi

# requests N SEED: N random requests as JSON lines.  Path characters are
# those a client sends unescaped; bodies are what JSON.stringify writes.
requests() {
	awk -v n="$1" -v seed="$2" '
	function pick(s) { return substr(s, int(rand() * length(s)) + 1, 1) }
	function word(alpha, lo, hi,   k, w) { k = lo + int(rand() * (hi - lo + 1)); w = ""; while (k-- > 0) w = w pick(alpha); return w }
	function utf8() { return rand() < 0.5 ? "泵" : "é" }
	BEGIN {
		srand(seed)
		seg = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~+,;=@!*()"
		key = "abcdefghij_-.0123"	# names that are prefixes of others sort before them
		val = "abcdefghijklmnopqrstuvwxyzABC0123456789-_.~+/=:"
		split("GET POST PUT DELETE", methods, " ")
		split("cn-north-4 cn-east-3 ap-southeast-1 la-south-2", regions, " ")
		for (i = 0; i < n; i++) {
			m = methods[1 + int(rand() * 4)]
			path = "/v5/iot/" word(seg, 1, 32) "/tunnels"
			if (rand() < 0.5) path = path "/" word(seg, 1, 40)
			q = ""
			for (k = int(rand() * 4); k > 0; k--)
				q = q (q == "" ? "" : "&") word(key, 1, 8) "=" word(val, 0, 12) (rand() < 0.2 ? utf8() : "")
			if (rand() < 0.3)	# one name twice: values sort as given, before encoding
				q = q (q == "" ? "" : "&") "dup=" pick("=+/:4a") word(val, 0, 6) "&dup=" pick("=+/:4a") word(val, 0, 6)
			date = sprintf("20%02d%02d%02dT%02d%02d%02dZ", 20 + int(rand() * 10), 1 + int(rand() * 12),
				1 + int(rand() * 28), int(rand() * 24), int(rand() * 60), int(rand() * 60))
			host = rand() < 0.5 ? word("abcdef0123456789", 6, 12) ".st1.iotda-app.cn-north-4.myhuaweicloud.com" \
				: "127.0.0.1:" (1024 + int(rand() * 60000))
			h = "[\"content-type\",\"application/json\"],[\"host\",\"" host "\"]"
			if (rand() < 0.5) h = h ",[\"instance-id\",\"" word(val, 1, 36) "\"]"
			h = h ",[\"x-sdk-date\",\"" date "\"]"
			body = m == "POST" ? "{\\\"device_id\\\":\\\"" word(seg, 1, 40) "\\\"}" : m == "PUT" ? "{}" : ""
			printf "{\"method\":\"%s\",\"path\":\"%s\",\"query\":\"%s\",\"headers\":[%s],\"body\":\"%s\",", m, path, q, h, body
			printf "\"date\":\"%s\",\"ak\":\"%s\",\"sk\":\"%s\",\"region\":\"%s\",\"signing\":\"%s\"}\n", date,
				word("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 20, 20), word(val, 10, 40),
				regions[1 + int(rand() * 4)], rand() < 0.75 ? "derived" : "basic"
		}
	}'
}

requests 400 "$RANDOM" > "$WORK/requests"
node "$TOP/tests/unit/huawei-sign.js" "$NPM_DIR/node_modules" < "$WORK/requests" > "$WORK/huawei" 2> "$WORK/node.err"
"$SIGN" < "$WORK/requests" > "$WORK/ours" 2> "$WORK/sign.err"
total=$(wc -l < "$WORK/requests")
derived=$(grep -c '^V11-HMAC-SHA256 Credential=' "$WORK/huawei")
basic=$(grep -c '^SDK-HMAC-SHA256 Access=' "$WORK/huawei")
check "Huawei's signer signed every request ($total)" [ "$total" -eq 400 -a "$((derived + basic))" -eq 400 ]
check "both algorithms were exercised ($derived derived, $basic basic)" [ "$derived" -gt 200 -a "$basic" -gt 50 ]
if cmp -s "$WORK/huawei" "$WORK/ours"; then
	ok "the console's Authorization headers equal Huawei's for all $total requests"
else
	fail "the console's Authorization headers equal Huawei's" "$(diff "$WORK/huawei" "$WORK/ours" | head -6)" \
		"request: $(sed -n "$(diff "$WORK/huawei" "$WORK/ours" | grep -o '^[0-9]*' | head -1)p" "$WORK/requests")"
fi
# the comparison is not blind to what signs: the region is inside the key
grep -m1 '"signing":"derived"' "$WORK/requests" | sed 's/"region":"[^"]*"/"region":"xx-nowhere-0"/' > "$WORK/moved"
node "$TOP/tests/unit/huawei-sign.js" "$NPM_DIR/node_modules" < "$WORK/moved" > "$WORK/moved.huawei"
"$SIGN" < "$WORK/moved" > "$WORK/moved.ours"
check "another region: both signers agree on a different signature" \
	sh -c "cmp -s '$WORK/moved.huawei' '$WORK/moved.ours' && ! grep -qF \"\$(sed -n 's/.*Signature=//p' '$WORK/moved.ours')\" '$WORK/huawei'"
finish
