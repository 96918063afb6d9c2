#!/bin/bash
# tests/sandbox/platform.test.sh: the relay's HTTP side, driven with curl: its
# command line, the refusals before the upgrade (HTTP 401/404: the app route)
# or after it (close 1002: the device route, and both with --auth-close), the
# IoTDA tunnel REST API, AK/SK request signing, basic and derived (requests
# signed here with openssl, and by Huawei's own Node.js SDK), the IoTDA
# errors the console shows,
# the devices' events channels (tunnel_notify), and what curl can see of a
# WebSocket peer (the 101, connect_tunnel, disconnect then a close frame).
# The relaying itself is sandbox.test.sh's.  Every wait is on an event; no
# secret may reach the log.  Run: sh tests/run.sh platform
#
# Sections: helpers; command line; refusals; REST; AK/SK signing; derived
# signing; Huawei's signer; events channels; known and online devices; the
# fleet API (ListDevices, ListDeviceTunnels, --rate-limit); --no-tunnel-edition; live peers; --auth-close and --device-auth; REST off;
# TLS; the log and the exit.
source "$(dirname "$0")/../lib.sh"
export LC_ALL=C	# curl's output files hold raw WebSocket frames

T=5	# seconds one awaited event may take before the check fails
[ -x "$PLATFORM" ] || { fail "built: $PLATFORM" "run: make tests/sandbox/tunnel-platform"; finish; }

#### helpers ###################################################################

API_TOKEN=api+Secret/42=
SRC_A=src+Tok/A= DEV_A=dev+Tok/A= SRC_L=src-live DEV_L=dev-live
UPGRADE=(--http1.1 -H 'Connection: Upgrade' -H 'Upgrade: websocket'
	-H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==')

# curl speaks no ws://, so every URL given to it goes as http://.
# ws_code URL [TOKEN]: the status of an upgrade the relay refuses (it answers
# and hangs up at once; a 101 would hold curl for 2 s and print 101).
ws_code() { curl -s -o /dev/null -w '%{http_code}' -m 2 "${UPGRADE[@]}" ${2:+-H "tunnel_access_token: $2"} "${1/#ws:/http:}"; }

# peer NAME URL TOKEN: a WebSocket peer made of curl; every byte the relay
# sends lands in $WORK/NAME.raw: raw frames after the 101 headers, which curl
# only writes once more data follows, so the relay's log tells of the upgrade.
declare -A PEER
peer() {
	curl -s -N -i -m 60 "${UPGRADE[@]}" -H "tunnel_access_token: $3" "${2/#ws:/http:}" >"$WORK/$1.raw" 2>/dev/null &
	PIDS+=($!)
	PEER[$1]=$!
}
# ws_closed FILE URL [TOKEN]: the whole exchange of an upgrade the relay takes
# and then closes (it hangs up after its close frame) into FILE.
ws_closed() { curl -s -i -m $T "${UPGRADE[@]}" ${3:+-H "tunnel_access_token: $3"} "${2/#ws:/http:}" >"$1"; }
await() { if wait_for $T has_line "$2" "$3"; then ok "$1"; else fail "$1" "no /$3/ in $(basename "$2")"; fi; }	# await NAME FILE REGEX
gone() { ! kill -0 "$1" 2>/dev/null; }	# gone PID: the process has exited
count() { grep -ao -- "$2" "$1" | wc -l; }	# count FILE STRING: occurrences, frames being one "line"
has_count() { [ "$(count "$1" "$2")" -ge "$3" ]; }	# has_count FILE STRING N: at least N
# has_close FILE HEXCODE: a close frame (opcode 0x88) with that code, e.g. "03 e8" (1000)
has_close() { od -An -tx1 -v "$1" | tr -d '\n' | grep -qE " 88 [0-9a-f]{2} $2"; }
refused_1002() { grep -q '^HTTP/1.1 101' "$1" && has_close "$1" "03 ea"; }	# refused_1002 FILE: a 101, then close 1002

# rest METHOD PATH [BODY] [TOKEN]: the body, then the HTTP status on its own line.
rest() {
	curl -s -X "$1" -H "X-Auth-Token: ${4-$API_TOKEN}" ${3:+--data "$3"} -w '\n%{http_code}\n' "$HTTP$2"
}
status() { tail -n 1 <<<"$1"; }	# status REST-OUTPUT
field() { grep -o "\"$1\":\"\\{0,1\\}[^\",}]*" <<<"$2" | head -1 | sed 's/^[^:]*:"\{0,1\}//'; }	# field NAME JSON: its first value

# AK/SK signing (SDK-HMAC-SHA256, Huawei Cloud's API Request Signing Guide), in bash:
#   CanonicalRequest = METHOD\nURI/\nQUERY\nname:value\n...\n\nh1;h2\nhex(sha256(body))
AK=SANDBOXAK$RANDOM SK=$(head -c 30 /dev/urandom | base64 | tr -d '/+=') INSTANCE=inst-$RANDOM
sha256hex() { openssl dgst -sha256 -r | cut -d' ' -f1; }	# hex(sha256(stdin))
# canon_hash METHOD PATH CANONICAL-QUERY BODY HEADER...: hex(sha256(CanonicalRequest));
# each HEADER "name:value", names lowercase and sorted.  (Our paths' segments
# need no encoding; the relay's --self-check covers that.)
canon_hash() {
	local method=$1 path=$2 query=$3 body=$4 h canon= names=; shift 4
	for h; do canon+=$h$'\n'; names+=${names:+;}${h%%:*}; done
	[ "${path: -1}" = / ] || path+=/
	printf '%s\n%s\n%s\n%s\n%s\n%s' "$method" "$path" "$query" "$canon" "$names" \
		"$(printf %s "$body" | sha256hex)" | sha256hex
}
hmac() { openssl dgst -sha256 -hmac "$1" -r | cut -d' ' -f1; }	# hmac KEY: hex(HMAC-SHA256(KEY, stdin))
signature() { printf 'SDK-HMAC-SHA256\n%s\n%s' "$1" "$2" | hmac "$3"; }	# signature DATE HASH SK
# The derived form (V11-HMAC-SHA256, README Protocol §9): scoped to a day, a
# region and the service, keyed with hex(HKDF-SHA256(ikm SK, salt AK, info scope)).
REGION=cn-north-4
derived_key() {	# derived_key SK AK SCOPE: the 64 hex characters
	openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt "key:$1" -kdfopt "salt:$2" -kdfopt "info:$3" HKDF |
		tr -d ':\n' | tr A-F a-f
}
v11_signature() { printf 'V11-HMAC-SHA256\n%s\n%s\n%s' "$1" "$2" "$3" | hmac "$4"; }	# v11_signature DATE SCOPE HASH KEY
# sign METHOD PATH CANONICAL-QUERY BODY DATE SK HEADER...: the Authorization value;
# SIGN_V11=1 signs the derived form, scoped to SIGN_SCOPE (default DATE's day/$REGION/iotdm)
sign() {
	local date=$5 sk=$6 names= h hash ak=${SIGN_AK-$AK} scope
	hash=$(canon_hash "$1" "$2" "$3" "$4" "${@:7}")
	for h in "${@:7}"; do names+=${names:+;}${h%%:*}; done
	if [ -z "${SIGN_V11:-}" ]; then
		printf 'SDK-HMAC-SHA256 Access=%s, SignedHeaders=%s, Signature=%s' "$ak" "$names" \
			"$(signature "$date" "$hash" "$sk")"
		return
	fi
	scope=${SIGN_SCOPE-${date:0:8}/$REGION/iotdm}
	printf 'V11-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s' "$ak" "$scope" "$names" \
		"$(v11_signature "$date" "$scope" "$hash" "$(derived_key "$sk" "$ak" "$scope")")"
}
# srest METHOD PATH [BODY] [QUERY [CANONICAL-QUERY]]: a REST call signed with AK/SK
# (Content-Type, Host, Instance-Id and X-Sdk-Date signed); prints like rest.
# SIGN_SK, SIGN_AK, SIGN_DATE ("" sends none), SIGN_V11 and SIGN_SCOPE (see
# sign) and SENT_BODY (what is sent instead of BODY) make bad ones; XTOKEN
# adds an X-Auth-Token header.
srest() {
	local method=$1 path=$2 body=${3-} query=${4-} date=${SIGN_DATE-$(date -u +%Y%m%dT%H%M%SZ)} auth
	local sent=${SENT_BODY-$body}
	auth=$(sign "$method" "$path" "${5-$query}" "$body" "$date" "${SIGN_SK-$SK}" \
		'content-type:application/json' "host:${HTTP#http://}" "instance-id:$INSTANCE" "x-sdk-date:$date")
	curl -s -X "$method" -H 'Content-Type: application/json' -H "Instance-Id: $INSTANCE" \
		${date:+-H "X-Sdk-Date: $date"} -H "Authorization: $auth" ${XTOKEN:+-H "X-Auth-Token: $XTOKEN"} \
		${sent:+--data "$sent"} -w '\n%{http_code}\n' "$HTTP$path${query:+?$query}"
}
# events NAME DEVICE_ID: a device's events channel made of curl, frames in $WORK/NAME.raw
events() {
	curl -s -N -i -m 60 "${UPGRADE[@]}" "$HTTP/sandbox/devices/$2/events" >"$WORK/$1.raw" 2>/dev/null &
	PIDS+=($!)
	PEER[$1]=$!
}

#### command line ##############################################################

"$PLATFORM" --help >"$WORK/help.out" 2>&1
check "--help: exit 0" [ $? = 0 ]
check "--help: the usage, on stdout" grep -q -- '--stall-after' "$WORK/help.out"
"$PLATFORM" --no-such-option >"$WORK/bad.out" 2>"$WORK/bad.err"
check "unknown option: exit 2" [ $? = 2 ]
check "unknown option: message and usage on stderr" grep -q 'usage:' "$WORK/bad.err"
check "unknown option: nothing on stdout" [ ! -s "$WORK/bad.out" ]
"$PLATFORM" --cut-after sideways:3 2>/dev/null
check "bad --cut-after value: exit 2" [ $? = 2 ]
"$PLATFORM" --cert "$CERTS/server.pem" 2>/dev/null
check "--cert without --key: exit 2" [ $? = 2 ]
printf '[{"tunnel_id":"bad id","device_id":"d","source_token":"x"}]' >"$WORK/bad.json"
"$PLATFORM" --listen 127.0.0.1:0 --tunnels "$WORK/bad.json" >"$WORK/badt.out" 2>&1
check "malformed --tunnels file: exit 1 before listening" [ $? = 1 -a -z "$(grep listening "$WORK/badt.out")" ]
printf '["dev-1","bad id"]' >"$WORK/baddev.json"
"$PLATFORM" --listen 127.0.0.1:0 --devices "$WORK/baddev.json" >"$WORK/badd.out" 2>&1
check "malformed --devices file: exit 1 before listening" [ $? = 1 -a -z "$(grep listening "$WORK/badd.out")" ]
bad_entries=
for entry in '{"device_id":"d","status":"ASLEEP"}' '{"name":"no id"}' '{"device_id":"d","name":""}' \
	'{"device_id":"d","product_id":7}' '{"device_id":"d","node_id":"a\u0001b"}'; do
	printf '[%s]' "$entry" >"$WORK/baddev.json"
	timeout 5 "$PLATFORM" --listen 127.0.0.1:0 --devices "$WORK/baddev.json" >/dev/null 2>&1
	[ $? = 1 ] || bad_entries+=" $entry"
done
check "--devices entries with a bad status, no device_id, an empty name, a number, a control character: exit 1" \
	[ -z "$bad_entries" ]
printf '%s\n' "$SK" >"$WORK/sk"
"$PLATFORM" --ak "$AK" 2>/dev/null
check "--ak without --sk-file: exit 2" [ $? = 2 ]
"$PLATFORM" --sk-file "$WORK/sk" 2>/dev/null
check "--sk-file without --ak: exit 2" [ $? = 2 ]
"$PLATFORM" --ak "$AK" --sk-file "$WORK/no-such-file" 2>/dev/null
check "--sk-file naming no file: exit 2" [ $? = 2 ]
bad_values=
for o in --region=cn_north --region= '--device-auth sideways' '--max-device-message 0' '--max-message 0' \
	'--rate-limit -1' '--rate-limit many'; do
	"$PLATFORM" $o 2>/dev/null
	[ $? = 2 ] || bad_values="$bad_values [$o]"
done
check "bad --region, --device-auth, --max-device-message, --max-message, --rate-limit values: exit 2" [ -z "$bad_values" ]
missing=
for o in --ak --sk-file --region --devices --require-online --no-tunnel-edition --self-check X-Sdk-Date Instance-Id \
	V11-HMAC-SHA256 IOTDA.000002 --device-auth --max-device-message --rate-limit /v5/iot/{project_id}/devices \
	product_name /sandbox/devices/ loopback; do
	grep -q -- "$o" "$WORK/help.out" || missing="$missing $o"
done
check "--help tells of the AK/SK, region, device, limit and events options" [ -z "$missing" ]

cat >"$WORK/tunnels.json" <<EOF
[{"tunnel_id":"t-a","device_id":"dev-a","source_token":"$SRC_A","device_token":"$DEV_A"},
 {"tunnel_id":"t-live","device_id":"dev-live","source_token":"$SRC_L","device_token":"$DEV_L"},
 {"tunnel_id":"t-same","device_id":"dev-same","source_token":"one-token"},
 {"tunnel_id":"t-exp","device_id":"dev-exp","source_token":"old","expires_in":0}]
EOF
printf '%s\n' "$API_TOKEN" >"$WORK/api.tok"
start_platform main --tunnels "$WORK/tunnels.json" --api-token-file "$WORK/api.tok" --ak "$AK" --sk-file "$WORK/sk" ||
	{ fail "relay starts"; finish; }
check "stdout: listening on ws://127.0.0.1:PORT" grep -qE '^listening on ws://127\.0\.0\.1:[1-9][0-9]*$' "$WORK/main.out"
MAIN_PID=$PLATFORM_PID MAIN_LOG=$PLATFORM_LOG
WS=$PLATFORM_URL HTTP=${PLATFORM_URL/ws:/http:}
SRC=/v5/iot/tunnels/t-a/source-connect DST=/v5/iot/tunnels/t-a/device-connect

#### refusals ##################################################################

check "bad token: HTTP 401" [ "$(ws_code "$WS$SRC" wrong)" = 401 ]
check "no token header: HTTP 401" [ "$(ws_code "$WS$SRC")" = 401 ]
# The device route: upgraded, then closed 1002 (official devices retry an HTTP 401).
ws_closed "$WORK/dr1.raw" "$WS$DST" "$SRC_A"
check "source token on the device route: 101, then close 1002" refused_1002 "$WORK/dr1.raw"
ws_closed "$WORK/dr2.raw" "$WS/v5/iot/tunnels/t-none/device-connect" x
check "unknown tunnel on the device route: 101, then close 1002" refused_1002 "$WORK/dr2.raw"
ws_closed "$WORK/dr3.raw" "$WS/v5/iot/tunnels/t-exp/device-connect" old
check "expired tunnel on the device route: 101, then close 1002" refused_1002 "$WORK/dr3.raw"
check "the device route's refusal is logged as a close" has_line "$MAIN_LOG" 'auth failed for tunnel t-a \(401, closing 1002\)'
check "expired tunnel: HTTP 401" [ "$(ws_code "$WS/v5/iot/tunnels/t-exp/source-connect" old)" = 401 ]
check "unknown tunnel: HTTP 404" [ "$(ws_code "$WS/v5/iot/tunnels/t-none/source-connect" x)" = 404 ]
check "bad path: HTTP 404" [ "$(ws_code "$WS/v5/iot/tunnels/t-a/elsewhere" "$SRC_A")" = 404 ]
check "bad tunnel id characters: HTTP 404" [ "$(ws_code "$WS/v5/iot/tunnels/t.a/source-connect" "$SRC_A")" = 404 ]
long=$(printf 'x%.0s' {1..300})
check "token over 256 characters: HTTP 401" [ "$(ws_code "$WS$SRC" "$long")" = 401 ]
curl -s "${UPGRADE[@]}" -H 'tunnel_access_token: wrong' "$HTTP$SRC" >"$WORK/refused.body"
check "a refusal carries an IoTDA-style JSON body" grep -q '"error_code":"IOTDA\.' "$WORK/refused.body"
check "refusals are logged by tunnel id" has_line "$MAIN_LOG" 'auth failed for tunnel t-a \(401\)$'
check "unknown tunnel is logged" has_line "$MAIN_LOG" 'unknown tunnel t-none \(404\)'

#### REST ######################################################################

API=/v5/iot/proj-1/tunnels
out=$(rest POST "$API" '{"device_id":"dev-r"}' '')
check "REST without X-Auth-Token: 401" [ "$(status "$out")" = 401 ]
out=$(rest POST "$API" '{"device_id":"dev-r"}' wrong-token)
check "REST with a wrong X-Auth-Token: 401 with an IoTDA error" \
	[ "$(status "$out")" = 401 -a "$(field error_code "$out")" = IOTDA.000002 ]

out=$(rest POST "$API" '{"device_id":"dev-r"}')
check "create: 201" [ "$(status "$out")" = 201 ]
ID=$(field tunnel_id "$out") TOKEN=$(field tunnel_access_token "$out") URI=$(field tunnel_uri "$out")
check "create: a UUID tunnel_id" grep -qE '^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$' <<<"$ID"
check "create: a token and expires_in 86400" [ -n "$TOKEN" -a "$(field expires_in "$out")" = 86400 ]
check "create: tunnel_uri is the source-connect URL as reached" [ "$URI" = "$WS/v5/iot/tunnels/$ID/source-connect" ]
out=$(rest POST "$API" '{"devices":"x"}')
check "create without device_id: 400" [ "$(status "$out")" = 400 -a "$(field error_code "$out")" = IOTDA.000006 ]
out=$(rest POST "$API" 'not json')
check "create with a body that is not JSON: 400" [ "$(status "$out")" = 400 ]
big=$(head -c 70000 /dev/zero | tr '\0' a)
check "create with a 70 KB body: 413" [ "$(status "$(rest POST "$API" "$big")")" = 413 ]

out=$(rest GET "$API/$ID")
check "show: 200 OPEN, both sides DISCONNECTED" [ "$(status "$out")" = 200 -a "$(field status "$out")" = OPEN \
	-a "$(grep -o DISCONNECTED <<<"$out" | wc -l)" = 2 ]
check "show: IoTDA times (yyyyMMddTHHmmssZ)" grep -qE '"create_time":"[0-9]{8}T[0-9]{6}Z"' <<<"$out"
check "show: no token in it" [ -z "$(grep -F "$TOKEN" <<<"$out")" ]
check "show an unknown tunnel: 404" [ "$(status "$(rest GET "$API/no-such")")" = 404 ]
out=$(rest GET "$API")
check "list: 200 with both kinds of tunnel" [ "$(status "$out")" = 200 -a -n "$(grep -F "\"$ID\"" <<<"$out")" \
	-a -n "$(grep -F '"t-a"' <<<"$out")" ]
out=$(rest GET "$API?device_id=dev-r")
check "list ?device_id= filters" [ -n "$(grep -F "\"$ID\"" <<<"$out")" -a -z "$(grep -F '"t-a"' <<<"$out")" ]

out=$(rest GET "/sandbox/tunnels/$ID/notify" '' '')
check "notify without X-Auth-Token: 401" [ "$(status "$out")" = 401 ]
out=$(rest GET "/sandbox/tunnels/$ID/notify")
DTOKEN=$(field tunnel_access_token "$out") DURI=$(field tunnel_uri "$out")
check "notify: a \$tunnel_manager tunnel_notify event" [ "$(status "$out")" = 200 \
	-a "$(field event_type "$out")" = tunnel_notify -a "$(field service_id "$out")" = '$tunnel_manager' ]
check "notify: object_device_id, expires_in" [ "$(field object_device_id "$out")" = dev-r \
	-a -n "$(field expires_in "$out")" ]
check "notify: the device-connect URL" [ "$DURI" = "$WS/v5/iot/tunnels/$ID/device-connect" ]
check "notify: a device token of its own" [ -n "$DTOKEN" -a "$DTOKEN" != "$TOKEN" ]
check "notify: the config file's device token" \
	[ "$(field tunnel_access_token "$(rest GET /sandbox/tunnels/t-a/notify)")" = "$DEV_A" ]

peer rsrc "$URI" "$TOKEN"
await "created tunnel: its token opens source-connect" "$MAIN_LOG" "tunnel $ID: app connected"
peer rdev "$DURI" "$DTOKEN"
await "created tunnel: the notify token opens device-connect" "$MAIN_LOG" "tunnel $ID: device connected"
await "created tunnel: the app gets connect_tunnel after the 101" "$WORK/rsrc.raw" '"operation_type":"connect_tunnel"'
check "created tunnel: ... after the 101" grep -q '^HTTP/1.1 101' "$WORK/rsrc.raw"
out=$(rest GET "$API/$ID")
check "show: both sides CONNECTED" [ "$(grep -o '"CONNECTED"' <<<"$out" | wc -l)" = 2 ]

out=$(rest DELETE "$API/$ID")
check "delete while open: 400, still there" [ "$(status "$out")" = 400 -a "$(status "$(rest GET "$API/$ID")")" = 200 ]
check "close (PUT): 204" [ "$(status "$(rest PUT "$API/$ID")")" = 204 ]
await "close: the app gets disconnect 404" "$WORK/rsrc.raw" '"status_code":"404"'
await "close: the device gets disconnect 404" "$WORK/rdev.raw" '"status_code":"404"'
wait_for $T gone "${PEER[rsrc]}"
check "close: the app's connection ends with close 1000" has_close "$WORK/rsrc.raw" "03 e8"
wait_for $T gone "${PEER[rdev]}"
check "close: the device's connection ends with close 1000" has_close "$WORK/rdev.raw" "03 e8"
out=$(rest GET "$API/$ID")
check "show after close: CLOSED with a closed_time" [ "$(field status "$out")" = CLOSED -a -n "$(field closed_time "$out")" ]
check "connect after close: HTTP 404" [ "$(ws_code "$URI" "$TOKEN")" = 404 ]
check "close again: still 204" [ "$(status "$(rest PUT "$API/$ID")")" = 204 ]
check "delete after close: 204" [ "$(status "$(rest DELETE "$API/$ID")")" = 204 ]
check "show after delete: 404" [ "$(status "$(rest GET "$API/$ID")")" = 404 ]
check "close an unknown tunnel: 404" [ "$(status "$(rest PUT "$API/$ID")")" = 404 ]
check "an unknown method on a known path: 405" [ "$(status "$(rest PATCH "$API/t-a")")" = 405 ]
check "an unknown path: 404" [ "$(status "$(rest GET /v5/iot/proj-1/elsewhere)")" = 404 ]
check "REST calls are logged with their status" has_line "$MAIN_LOG" 'rest: POST /v5/iot/\{project_id\}/tunnels: 201'

out=$(rest POST "$API" '{"device_id":"dev-short","expires_in":1}')
SID=$(field tunnel_id "$out")
peer short "$(field tunnel_uri "$out")" "$(field tunnel_access_token "$out")"
await "expires_in 1: the app opens" "$MAIN_LOG" "tunnel $SID: app connected"
await "token expiry: the app gets disconnect 401" "$WORK/short.raw" '"status_code":"401"'
wait_for $T gone "${PEER[short]}"
check "token expiry: close 1000" has_close "$WORK/short.raw" "03 e8"
check "token expiry is logged" has_line "$MAIN_LOG" "tunnel $SID: token expired"

#### AK/SK signing #############################################################

# The worked example of the API Request Signing Guide, through the bash signer.
EX_DATE=20191115T033655Z
hash=$(canon_hash GET /v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs 'limit=2&marker=13551d6b-755d-4757-b956-536f674975c0' '' \
	content-type:application/json host:service.region.example.com x-sdk-date:$EX_DATE)
check "signing guide example: hex(sha256(CanonicalRequest))" \
	[ "$hash" = b25362e603ee30f4f25e7858e8a7160fd36e803bb2dfe206278659d71a9bcd7a ]
check "signing guide example: the Signature" [ "$(signature $EX_DATE "$hash" MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc)" \
	= 7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe ]
# ... and through the relay's own verifier, which the live calls below use.
"$PLATFORM" --self-check >"$WORK/selfcheck.out" 2>&1
check "--self-check: exit 0" [ $? = 0 ]
check "--self-check: the example's hash and signature" [ -n "$(grep -F b25362e603ee30f4f25e7858e8a7160fd36e803bb2dfe206278659d71a9bcd7a \
	"$WORK/selfcheck.out")" -a -n "$(grep -F 7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe "$WORK/selfcheck.out")" ]
check "--self-check: no failed check" [ -z "$(grep '^not ok' "$WORK/selfcheck.out")" ]

out=$(srest POST "$API" '{"device_id":"dev-s"}')
check "signed create: 201" [ "$(status "$out")" = 201 ]
SID=$(field tunnel_id "$out") STOKEN=$(field tunnel_access_token "$out")
check "signed create is logged as AK/SK" has_line "$MAIN_LOG" 'rest: POST /v5/iot/\{project_id\}/tunnels: 201 \(AK/SK\)'
out=$(srest GET "$API/$SID")
check "signed show: 200 OPEN" [ "$(status "$out")" = 200 -a "$(field status "$out")" = OPEN ]
# Sent out of order, with '+' and %XX; signed as the SDKs canonicalise it.
out=$(srest GET "$API" '' 'marker=a%20b~c%2Fd&x=1+2&device_id=dev-s' 'device_id=dev-s&marker=a%20b~c%2Fd&x=1%202')
check "signed list with a query: sorted, decoded, re-encoded" [ "$(status "$out")" = 200 -a -n "$(grep -F "\"$SID\"" <<<"$out")" ]
out=$(XTOKEN=wrong-token srest GET "$API/$SID")
check "a wrong X-Auth-Token beside a good signature: 200" [ "$(status "$out")" = 200 ]
out=$(curl -s -H "X-Auth-Token: $API_TOKEN" -H "Instance-Id: $INSTANCE" -w '\n%{http_code}\n' "$HTTP$API/$SID")
check "X-Auth-Token with an unsigned Instance-Id: 200" [ "$(status "$out")" = 200 ]
check "signed close (PUT with a body): 204" [ "$(status "$(srest PUT "$API/$SID" '{"status":"CLOSED"}')")" = 204 ]
check "signed show after close: CLOSED" [ "$(field status "$(srest GET "$API/$SID")")" = CLOSED ]
check "signed delete: 204" [ "$(status "$(srest DELETE "$API/$SID")")" = 204 ]

VERIFY_FAIL='Authentication failed: verify aksk signature fail'
refused() {	# refused NAME OUT [MSG-REGEX]: a 401 IOTDA.000002 with that message
	if [ "$(status "$2")" = 401 ] && [ "$(field error_code "$2")" = IOTDA.000002 ] && grep -qE -- "${3:-$VERIFY_FAIL}" <<<"$2"
	then ok "$1"; else fail "$1" "got: $(tr '\n' ' ' <<<"$2")"; fi
}
refused "a wrong SK: 401 verify aksk signature fail" "$(SIGN_SK=$SK-not srest POST "$API" '{"device_id":"dev-s"}')"
refused "an unknown AK: the same 401" "$(SIGN_AK=OTHERAK srest POST "$API" '{"device_id":"dev-s"}')"
refused "a tampered body: 401" "$(SENT_BODY='{"device_id":"dev-t"}' srest POST "$API" '{"device_id":"dev-s"}')"
refused "a tampered query: 401" "$(srest GET "$API" '' 'device_id=dev-t' 'device_id=dev-s')"
refused "a stale X-Sdk-Date (20 minutes old): 401 saying so" \
	"$(SIGN_DATE=$(date -u -d '-20 min' +%Y%m%dT%H%M%SZ) srest GET "$API")" 'X-Sdk-Date .*15 minutes'
refused "an X-Sdk-Date 20 minutes ahead: 401" \
	"$(SIGN_DATE=$(date -u -d '+20 min' +%Y%m%dT%H%M%SZ) srest GET "$API")" 'X-Sdk-Date .*15 minutes'
refused "no X-Sdk-Date: 401 saying so" "$(SIGN_DATE= srest GET "$API")" 'X-Sdk-Date is missing'
refused "an X-Sdk-Date not YYYYMMDDTHHMMSSZ: 401" "$(SIGN_DATE=2019-11-15T03:36:55Z srest GET "$API")" 'YYYYMMDDTHHMMSSZ'
out=$(curl -s -H 'Authorization: SDK-HMAC-SHA256 Access=x' -H "X-Sdk-Date: $(date -u +%Y%m%dT%H%M%SZ)" \
	-w '\n%{http_code}\n' "$HTTP$API")
refused "a malformed Authorization: 401" "$out" 'Authorization header is neither SDK-HMAC-SHA256 .* nor V11-HMAC-SHA256'
check "no tunnel was made by a refused call" [ -z "$(grep -F dev-t <<<"$(rest GET "$API")")" ]
check "a refusal's reason is logged" has_line "$MAIN_LOG" 'rest: GET .*: 401 \(X-Sdk-Date more than 15 minutes off\)'
check "a bad signature is logged as such" has_line "$MAIN_LOG" 'rest: POST .*: 401 \(signature mismatch\)'

#### derived signing ###########################################################

# The example Huawei's Node.js SDK signed (the relay's --self-check has it
# too), through the bash signer: the same hash, key and signature.
DX_SCOPE=20261206/cn-north-4/iotdm
hash=$(canon_hash POST /v5/iot/0a1b2c3d4e5f/tunnels '' '{"device_id":"dev-1"}' \
	content-type:application/json host:iotda.example.com x-sdk-date:20261206T080000Z)
check "SDK example: hex(sha256(CanonicalRequest))" [ "$hash" = d1e0bbdd3571f03ea0143a4a541a4e3f451f3099d0080a8d921819dba4a7d26c ]
key=$(derived_key tN3vX8qLr2Wm5Yk0Jd7Fs9Bc4Hg6Ue1Zp3Oa8Ri5 HPUAEXAMPLEAK4IOTDA7 $DX_SCOPE)
check "SDK example: the HKDF key" [ "$key" = 7f3c5d83b799099ce04ba9b9c2a02d7f002ba0f0ced0345bdd0a52a04e181392 ]
check "SDK example: the Signature" [ "$(v11_signature 20261206T080000Z $DX_SCOPE "$hash" "$key")" \
	= 1d5cdfe572f9d73d597bce310de5e8f73ea25fce9a3820cc6847dddf1e22262a ]
check "--self-check: the derived example's key and signature" [ -n "$(grep -F \
	'ok - derived: HKDF key 7f3c5d83b799099ce04ba9b9c2a02d7f002ba0f0ced0345bdd0a52a04e181392' "$WORK/selfcheck.out")" \
	-a -n "$(grep -F 'ok - derived: Signature 1d5cdfe572f9d73d597bce310de5e8f73ea25fce9a3820cc6847dddf1e22262a' \
	"$WORK/selfcheck.out")" ]

out=$(SIGN_V11=1 srest POST "$API" '{"device_id":"dev-v"}')
check "derived-signed create: 201" [ "$(status "$out")" = 201 ]
VID=$(field tunnel_id "$out") VTOKEN=$(field tunnel_access_token "$out")
check "derived-signed create is logged as such" has_line "$MAIN_LOG" \
	'rest: POST /v5/iot/\{project_id\}/tunnels: 201 \(derived AK/SK\)'
out=$(SIGN_V11=1 srest GET "$API/$VID")
check "derived-signed show: 200 OPEN" [ "$(status "$out")" = 200 -a "$(field status "$out")" = OPEN ]
out=$(SIGN_V11=1 srest GET "$API" '' 'x=1+2&device_id=dev-v' 'device_id=dev-v&x=1%202')
check "derived-signed list with a query: 200, the tunnel in it" [ "$(status "$out")" = 200 -a -n "$(grep -F "\"$VID\"" <<<"$out")" ]
out=$(srest GET "$API/$VID")
check "basic signing still works beside it: 200" [ "$(status "$out")" = 200 ]
today=$(date -u +%Y%m%d) yesterday=$(date -u -d yesterday +%Y%m%d)
refused "derived, another region in the scope: 401 saying so" \
	"$(SIGN_V11=1 SIGN_SCOPE=$today/cn-east-3/iotdm srest POST "$API" '{"device_id":"dev-w"}')" 'another region'
refused "derived, another service in the scope: 401 saying so" \
	"$(SIGN_V11=1 SIGN_SCOPE=$today/$REGION/iam srest POST "$API" '{"device_id":"dev-w"}')" 'service is not iotdm'
refused "derived, a scope of another day than X-Sdk-Date: 401 saying so" \
	"$(SIGN_V11=1 SIGN_SCOPE=$yesterday/$REGION/iotdm srest POST "$API" '{"device_id":"dev-w"}')" "date is not X-Sdk-Date's"
refused "derived, a wrong SK: 401" "$(SIGN_V11=1 SIGN_SK=$SK-not srest POST "$API" '{"device_id":"dev-w"}')"
refused "derived, an unknown AK: 401" "$(SIGN_V11=1 SIGN_AK=OTHERAK srest POST "$API" '{"device_id":"dev-w"}')"
refused "derived, a stale X-Sdk-Date: 401" \
	"$(SIGN_V11=1 SIGN_DATE=$(date -u -d '-20 min' +%Y%m%dT%H%M%SZ) srest GET "$API")" 'X-Sdk-Date .*15 minutes'
refused "derived, a tampered body: 401" \
	"$(SIGN_V11=1 SENT_BODY='{"device_id":"dev-w"}' srest POST "$API" '{"device_id":"dev-v2"}')"
check "no tunnel was made by a refused derived call" [ -z "$(grep -F dev-w <<<"$(rest GET "$API")")" ]
missing=
for why in 'scope names another region' 'scope service is not iotdm' "scope date is not X-Sdk-Date's"; do
	has_line "$MAIN_LOG" "rest: POST .*: 401 \\($why\\)" || missing="$missing [$why]"
done
check "each scope refusal's reason is logged" [ -z "$missing" ]

start_platform akonly --ak "$AK" --sk-file "$WORK/sk" --region ap-southeast-1 || fail "relay with --ak only starts"
AKHTTP=${PLATFORM_URL/ws:/http:}
out=$(HTTP=$AKHTTP srest POST "$API" '{"device_id":"dev-s"}')
check "--ak alone turns the REST API on: signed create 201" [ "$(status "$out")" = 201 ]
out=$(HTTP=$AKHTTP REGION=ap-southeast-1 SIGN_V11=1 srest POST "$API" '{"device_id":"dev-s"}')
check "--region ap-southeast-1: a derived call scoped to it: 201" [ "$(status "$out")" = 201 ]
refused "--region ap-southeast-1: one scoped to $REGION: 401" \
	"$(HTTP=$AKHTTP SIGN_V11=1 srest POST "$API" '{"device_id":"dev-s"}')" 'another region'
out=$(curl -s -H "X-Auth-Token: $API_TOKEN" -w '\n%{http_code}\n' "$AKHTTP$API")
refused "--ak alone: an X-Auth-Token is no credential" "$out" 'no SDK-HMAC-SHA256 or V11-HMAC-SHA256 Authorization'
kill "$PLATFORM_PID"

#### Huawei's signer ###########################################################

# A create-tunnel request signed by Huawei's own Node.js SDK
# (DerivedAKSKSigner, as IoTDA's SDKs sign for standard and enterprise
# instances), sent with curl: accepted; signed with another SK: refused.
cat >"$WORK/hwsign.js" <<'JS'
// node hwsign.js URL AK SK-FILE REGION BODY: the headers Huawei's
// DerivedAKSKSigner puts on a POST of BODY to URL, one "Name: value" a line.
const core = '@huaweicloud/huaweicloud-sdk-core/auth/';
const { DerivedAKSKSigner } = require(core + 'DerivedAKSKSigner');
const { BasicCredentials } = require(core + 'BasicCredentials');
const [url, ak, skFile, region, body] = process.argv.slice(2);
const sk = require('fs').readFileSync(skFile, 'utf8').trim();
const cred = new BasicCredentials().withAk(ak).withSk(sk);
cred.processDerivedAuthParams('iotdm', region);
const headers = DerivedAKSKSigner.sign({ method: 'POST', endpoint: url, queryParams: {},
	headers: { 'content-type': 'application/json' }, data: JSON.parse(body) }, cred);
for (const [name, value] of Object.entries(headers)) console.log(`${name}: ${value}`);
JS
# hw_create SK-FILE: the create call as Huawei's signer signs it; prints like rest
hw_create() {
	local body='{"device_id":"dev-hw"}' hdrs=() h
	NODE_PATH=$WORK/hw/node_modules node "$WORK/hwsign.js" "$HTTP$API" "$AK" "$1" "$REGION" "$body" \
		>"$WORK/hw.headers" 2>"$WORK/hw.err" || return
	while IFS= read -r h; do hdrs+=(-H "$h"); done <"$WORK/hw.headers"
	curl -s -X POST "${hdrs[@]}" --data "$body" -w '\n%{http_code}\n' "$HTTP$API"
}
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
	fail "Huawei's Node.js signer" "no node or npm here: install nodejs and npm (make deps)"
elif ! npm install --prefix "$WORK/hw" --no-audit --no-fund @huaweicloud/huaweicloud-sdk-core >"$WORK/npm.out" 2>&1; then
	fail "Huawei's Node.js signer" "npm install @huaweicloud/huaweicloud-sdk-core failed:" "$(tail -5 "$WORK/npm.out")"
else
	out=$(hw_create "$WORK/sk")
	check "Huawei's signer: it signed V11-HMAC-SHA256" grep -q '^Authorization: V11-HMAC-SHA256 Credential=' "$WORK/hw.headers"
	HW_SIG=$(sed -n 's/^Authorization: .*Signature=//p' "$WORK/hw.headers")
	if [ "$(status "$out")" = 201 ] && [ -n "$(field tunnel_id "$out")" ]; then ok "Huawei's signer: its create is accepted (201)"
	else fail "Huawei's signer: its create is accepted (201)" "got: $(tr '\n' ' ' <<<"$out")" "$(cat "$WORK/hw.err")"; fi
	printf '%s\n' "$SK-not" >"$WORK/wrong.sk"
	refused "Huawei's signer, another SK: 401" "$(hw_create "$WORK/wrong.sk")"
fi

#### events channels ###########################################################

events ev1 dev-e
await "events channel: opens, and is logged" "$MAIN_LOG" 'device dev-e: events channel open$'
out=$(rest POST "$API" '{"device_id":"dev-e"}')
EID=$(field tunnel_id "$out")
await "create: the device's channel gets tunnel_notify" "$WORK/ev1.raw" '"event_type":"tunnel_notify"'
check "create: the notify is logged, by tunnel and device" has_line "$MAIN_LOG" "tunnel $EID: notify sent to device dev-e\$"
frame=$(grep -ao '{"object_device_id".*' "$WORK/ev1.raw" | head -1)
want=$(rest GET "/sandbox/tunnels/$EID/notify" | head -n -1)
check "notify: object_device_id, \$tunnel_manager" [ "$(field object_device_id "$frame")" = dev-e \
	-a "$(field service_id "$frame")" = '$tunnel_manager' -a -n "$(field event_time "$frame")" ]
check "notify: the same device token and URI as GET .../notify" [ -n "$(field tunnel_access_token "$frame")" \
	-a "$(field tunnel_access_token "$frame")" = "$(field tunnel_access_token "$want")" \
	-a "$(field tunnel_uri "$frame")" = "$WS/v5/iot/tunnels/$EID/device-connect" -a -n "$(field expires_in "$frame")" ]
ETOKEN=$(field tunnel_access_token "$frame")
peer edev "$WS/v5/iot/tunnels/$EID/device-connect" "$ETOKEN"
await "notify: its token opens device-connect" "$MAIN_LOG" "tunnel $EID: device connected"
kill "${PEER[edev]}"
await "(that device goes)" "$MAIN_LOG" "tunnel $EID: device gone"
rest POST "$API" '{"device_id":"dev-other"}' >/dev/null
check "another device's tunnel: no event on this channel" [ "$(count "$WORK/ev1.raw" tunnel_notify)" = 1 ]
events ev2 dev-e
await "a second channel for the device: the newer opens" "$MAIN_LOG" 'device dev-e: events channel replaced'
wait_for $T gone "${PEER[ev1]}"
check "... and the older is closed 4000" has_close "$WORK/ev1.raw" "0f a0"
out=$(rest POST "$API" '{"device_id":"dev-e"}')
await "the newer channel gets the next notify" "$WORK/ev2.raw" "$(field tunnel_id "$out")"
kill "${PEER[ev2]}"
await "the channel's end is logged" "$MAIN_LOG" 'device dev-e: events channel closed$'
check "events for a bad device id: HTTP 404" [ "$(ws_code "$WS/sandbox/devices/dev.e/events")" = 404 ]

#### known and online devices ##################################################

printf '["dev-on","dev-off"]\n' >"$WORK/devices.json"
start_platform online --devices "$WORK/devices.json" --require-online --api-token-file "$WORK/api.tok" ||
	fail "relay with --devices --require-online starts"
OHTTP=${PLATFORM_URL/ws:/http:} OLOG=$PLATFORM_LOG
out=$(HTTP=$OHTTP rest POST "$API" '{"device_id":"dev-x"}')
check "--devices: a device not listed: 404 IOTDA.014000" [ "$(status "$out")" = 404 -a "$(field error_code "$out")" = IOTDA.014000 ]
out=$(HTTP=$OHTTP rest POST "$API" '{"device_id":"dev-off"}')
check "--require-online: an offline device: 400 IOTDA.014016" [ "$(status "$out")" = 400 \
	-a "$(field error_code "$out")" = IOTDA.014016 -a -n "$(grep -F 'not online' <<<"$out")" ]
out=$(HTTP=$OHTTP rest POST "$API" '{"device":"dev-on"}')
check "a bad body still: 400 IOTDA.000006" [ "$(status "$out")" = 400 -a "$(field error_code "$out")" = IOTDA.000006 ]
check "--devices: events for a device not listed: HTTP 404" [ "$(HTTP=$OHTTP ws_code "${PLATFORM_URL}/sandbox/devices/dev-x/events")" = 404 ]
HTTP=$OHTTP events on1 dev-on
await "a listed device's channel opens" "$OLOG" 'device dev-on: events channel open$'
out=$(HTTP=$OHTTP rest POST "$API" '{"device_id":"dev-on"}')
check "--require-online: an online device: 201" [ "$(status "$out")" = 201 ]
await "... and it gets its notify" "$WORK/on1.raw" '"event_type":"tunnel_notify"'
kill "${PEER[on1]}"
await "its channel closes" "$OLOG" 'device dev-on: events channel closed$'
check "--require-online: offline again: 400" [ "$(status "$(HTTP=$OHTTP rest POST "$API" '{"device_id":"dev-on"}')")" = 400 ]

#### the fleet API: ListDevices, ListDeviceTunnels, --rate-limit ###############

# 320 generated devices d-000..d-319 with IoTDA's details (product p-N%4,
# every 40th from the 7th FROZEN), then two given by id alone.
{
	printf '['
	for ((i = 0; i < 320; i++)); do
		st=
		((i % 40 == 7)) && st=',"status":"FROZEN"'
		printf '{"device_id":"d-%03d","name":"Pump %d","node_id":"node-%d","product_id":"p-%d","product_name":"Pump model %d"%s},' \
			$i $i $i $((i % 4)) $((i % 4)) "$st"
		printf 'd-%03d\n' $i >>"$WORK/fleet.ids"
	done
	printf '"bare-1","bare-2"]\n'
} >"$WORK/fleet.json"
printf '%s\n' bare-1 bare-2 >>"$WORK/fleet.ids"
start_platform fleet --devices "$WORK/fleet.json" --api-token-file "$WORK/api.tok" || fail "a relay with 322 devices starts"
FHTTP=${PLATFORM_URL/ws:/http:} FLOG=$PLATFORM_LOG FLEET_PID=$PLATFORM_PID
ids() { grep -o '"device_id":"[^"]*"' <<<"$1" | cut -d'"' -f4; }	# ids JSON: its device_ids, in order
devices() { HTTP=$FHTTP rest GET "/v5/iot/proj-1/devices${1:+?$1}"; }	# devices [QUERY]: ListDevices

# Paging by marker: every device exactly once, the count on every page.
: >"$WORK/paged"
marker= pages=0 counts=
while [ $pages -lt 20 ]; do
	out=$(devices "limit=50${marker:+&marker=$marker}")
	pages=$((pages + 1))
	counts+=" $(status "$out"):$(field count "$out")"
	[ -n "$(ids "$out")" ] || break
	ids "$out" >>"$WORK/paged"
	marker=$(field marker "$out")
done
check "ListDevices: 322 devices in pages of 50, then an empty page (8 calls)" \
	[ $pages = 8 -a "$(wc -l <"$WORK/paged")" = 322 ]
check "ListDevices: each page 200 with page.count 322" [ -z "$(tr ' ' '\n' <<<"$counts" | grep -v '^$' | grep -v '^200:322$')" ]
check "ListDevices: paging by marker collects each device exactly once" \
	[ "$(sort "$WORK/paged")" = "$(sort "$WORK/fleet.ids")" -a -z "$(sort "$WORK/paged" | uniq -d)" ]
check "ListDevices: newest record first (the file's last entry)" \
	[ "$(head -n 3 "$WORK/paged" | tr '\n' ' ')" = "bare-2 bare-1 d-319 " ]
out=$(devices)
check "ListDevices: 10 by default, the page's marker its last" [ "$(ids "$out" | wc -l)" = 10 \
	-a "$(field marker "$out")" = "$(field marker "$(devices 'limit=10')")" -a -n "$(field marker "$out")" ]
check "ListDevices: limit=1 and limit=50" [ "$(ids "$(devices limit=1)" | wc -l)" = 1 \
	-a "$(ids "$(devices limit=50)" | wc -l)" = 50 ]
check "ListDevices: offset=5 skips five" [ "$(ids "$(devices 'limit=1&offset=5')")" = "$(sed -n 6p "$WORK/paged")" ]
bad=
for q in limit=0 limit=51 limit=-1 limit=ten limit= offset=501 offset=-1 marker=nope marker=zzzzzzzzzzzzzzzzzzzzzzzz \
	marker=100000000000000000000001; do
	out=$(devices "$q")
	[ "$(status "$out")" = 400 ] && [ "$(field error_code "$out")" = IOTDA.000006 ] || bad+=" [$q: $(tr '\n' ' ' <<<"$out")]"
done
check "ListDevices: limit, offset or marker out of range: 400 IOTDA.000006" [ -z "$bad" ]

out=$(devices 'product_id=p-1&limit=50')
check "ListDevices: product_id filters (80 of p-1, the page all p-1)" [ "$(field count "$out")" = 80 \
	-a "$(ids "$out" | wc -l)" = 50 -a "$(grep -o '"product_id":"[^"]*"' <<<"$out" | sort -u)" = '"product_id":"p-1"' ]
out=$(devices 'device_name=Pump+7')
check "ListDevices: device_name filters, a blank as +" [ "$(ids "$out")" = d-007 -a "$(field count "$out")" = 1 ]
check "ListDevices: node_id and product_id together" [ "$(ids "$(devices 'node_id=node-12&product_id=p-0')")" = d-012 ]
out=$(devices 'node_id=node-12&product_id=p-1')
check "ListDevices: filters no device passes: none, count 0, no marker" [ "$(status "$out")" = 200 \
	-a -z "$(ids "$out")" -a "$(field count "$out")" = 0 -a -z "$(grep -F marker <<<"$out")" ]
out=$(devices 'node_id=bare-1')
check "ListDevices: a device given by id alone: its id is its name and node_id" [ "$(ids "$out")" = bare-1 \
	-a "$(field device_name "$out")" = bare-1 -a "$(field status "$out")" = OFFLINE ]
out=$(devices 'device_name=Pump+12')
check "ListDevices: a device's details as the file gives them" [ "$(field node_id "$out")" = node-12 \
	-a "$(field product_id "$out")" = p-0 -a "$(field product_name "$out")" = 'Pump model 0' ]
check "ListDevices: the file's status (FROZEN)" [ "$(field status "$(devices 'device_name=Pump+47')")" = FROZEN ]
check "ListDevices: no status in the file: OFFLINE" [ "$(field status "$(devices 'device_name=Pump+3')")" = OFFLINE ]
HTTP=$FHTTP events fev d-003
await "d-003's events channel opens" "$FLOG" 'device d-003: events channel open$'
check "ListDevices: a device with its events channel open: ONLINE" [ "$(field status "$(devices 'device_name=Pump+3')")" = ONLINE ]
kill "${PEER[fev]}"
await "d-003's events channel closes" "$FLOG" 'device d-003: events channel closed$'
check "ListDevices: OFFLINE again once it closes" [ "$(field status "$(devices 'device_name=Pump+3')")" = OFFLINE ]
check "ListDevices is logged" has_line "$FLOG" 'rest: GET /v5/iot/\{project_id\}/devices: 200$'

# ListDeviceTunnels: IoTDA's TunnelInfo, member for member.
FTID=$(field tunnel_id "$(HTTP=$FHTTP rest POST /v5/iot/proj-1/tunnels '{"device_id":"d-003"}')")
TIME='"[0-9]{8}T[0-9]{6}Z"'
STATE="\\{\"last_update_time\":$TIME,\"status\":\"DISCONNECTED\"\\}"
out=$(HTTP=$FHTTP rest GET '/v5/iot/proj-1/tunnels?device_id=d-003')
check "ListDeviceTunnels: {tunnels: [TunnelInfo]}, exactly" grep -qxE "\\{\"tunnels\":\\[\\{\"tunnel_id\":\"$FTID\",\"device_id\":\"d-003\",\"create_time\":$TIME,\"status\":\"OPEN\",\"source_connect_state\":$STATE,\"device_connect_state\":$STATE\\}\\]\\}" \
	<<<"$(head -n 1 <<<"$out")"
HTTP=$FHTTP rest PUT "/v5/iot/proj-1/tunnels/$FTID" >/dev/null
out=$(HTTP=$FHTTP rest GET '/v5/iot/proj-1/tunnels?device_id=d-003')
check "ListDeviceTunnels: a closed one: CLOSED with its closed_time" grep -qE \
	"\"create_time\":$TIME,\"closed_time\":$TIME,\"status\":\"CLOSED\"" <<<"$out"
check "ListDeviceTunnels: another device's: none" \
	[ "$(head -n 1 <<<"$(HTTP=$FHTTP rest GET '/v5/iot/proj-1/tunnels?device_id=d-004')")" = '{"tunnels":[]}' ]
kill "$FLEET_PID"

# --rate-limit 3: a bucket of 3 calls, refilled at 3 a second.
start_platform rate --rate-limit 3 --api-token-file "$WORK/api.tok" || fail "relay with --rate-limit 3 starts"
RHTTP=${PLATFORM_URL/ws:/http:} RLOG=$PLATFORM_LOG RATE_PID=$PLATFORM_PID
urls=()
for i in {1..10}; do urls+=("$RHTTP$API"); done
curl -s -H "X-Auth-Token: $API_TOKEN" -w '\n%{http_code}\n' "${urls[@]}" >"$WORK/burst.out"
awk 'NR % 2 == 0' "$WORK/burst.out" >"$WORK/rate.codes"
refused=$(grep -c '^429$' "$WORK/rate.codes")
check "--rate-limit 3: a burst of 10 calls: the first 3 served" [ "$(head -n 3 "$WORK/rate.codes" | tr -d '\n')" = 200200200 ]
check "--rate-limit 3: ... then 429s" [ "$refused" -ge 1 -a "$(wc -l <"$WORK/rate.codes")" = 10 ]
check "--rate-limit 3: each 429 says IOTDA.021101" [ "$(grep -c '"error_code":"IOTDA.021101"' "$WORK/burst.out")" = "$refused" ]
rate_call() {	# one call; its status kept in rate.codes; true if served
	local c
	c=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Auth-Token: $API_TOKEN" "$RHTTP$API")
	echo "$c" >>"$WORK/rate.codes"
	[ "$c" = 200 ]
}
if wait_for $T rate_call; then ok "--rate-limit 3: served again once the bucket refills"
else fail "--rate-limit 3: served again once the bucket refills" "$(tail -n 3 "$WORK/rate.codes")"; fi
check "--rate-limit: a refusal's log line counts the calls so far" \
	has_line "$RLOG" 'rest: GET /v5/iot/\{project_id\}/tunnels: 429 \(over 3 calls a second: [0-9]+ served, 1 refused\)$'
kill "$RATE_PID"
wait "$RATE_PID"
served=$(grep -vc '^429$' "$WORK/rate.codes") refused=$(grep -c '^429$' "$WORK/rate.codes")
check "--rate-limit: the log counts the calls served and refused ($served, $refused)" \
	has_line "$RLOG" "rest: $served calls served, $refused refused over the rate limit of 3 a second\$"

#### --no-tunnel-edition #######################################################

start_platform noedition --no-tunnel-edition --api-token-file "$WORK/api.tok" || fail "--no-tunnel-edition relay starts"
NHTTP=${PLATFORM_URL/ws:/http:}
out=$(HTTP=$NHTTP rest POST "$API" '{"device_id":"dev-n"}')
check "--no-tunnel-edition: create: 403 saying the edition has no tunnels" [ "$(status "$out")" = 403 \
	-a -n "$(field error_code "$out" | grep '^IOTDA\.')" -a -n "$(grep -F 'edition' <<<"$out")" ]
check "--no-tunnel-edition: list, show, close, delete: 403" [ "$(status "$(HTTP=$NHTTP rest GET "$API")")" = 403 \
	-a "$(status "$(HTTP=$NHTTP rest GET "$API/t-a")")" = 403 -a "$(status "$(HTTP=$NHTTP rest PUT "$API/t-a")")" = 403 \
	-a "$(status "$(HTTP=$NHTTP rest DELETE "$API/t-a")")" = 403 ]
check "--no-tunnel-edition: auth still comes first (401)" [ "$(status "$(HTTP=$NHTTP rest GET "$API" '' wrong)")" = 401 ]
kill "$PLATFORM_PID"

#### live peers ################################################################

LSRC=$WS/v5/iot/tunnels/t-live/source-connect LDST=$WS/v5/iot/tunnels/t-live/device-connect
peer ldev "$LDST" "$DEV_L"
await "device first: it connects" "$MAIN_LOG" 'tunnel t-live: device connected'
peer lapp "$LSRC" "$SRC_L"
await "device first: the arriving app gets connect_tunnel" "$WORK/lapp.raw" '"operation_type":"connect_tunnel"'
check "connect_tunnel has request_id null, data null" grep -qaF \
	'{"operation_type":"connect_tunnel","tunnel_service_type":"ssh","request_id":null,"data":null}' "$WORK/lapp.raw"
kill -USR1 "$MAIN_PID"
await "SIGUSR1: the app gets disconnect 410" "$WORK/lapp.raw" '"status_code":"410"'
wait_for $T gone "${PEER[ldev]}"
check "SIGUSR1: the device's connection is cut, no close frame" [ -z "$(od -An -tx1 -v "$WORK/ldev.raw" | grep -E ' 88 ')" ]
check "SIGUSR1 is logged" has_line "$MAIN_LOG" 'SIGUSR1: dropped 1 device connection$'
peer ldev2 "$LDST" "$DEV_L"
if wait_for $T has_count "$WORK/lapp.raw" connect_tunnel 2; then ok "device back: connect_tunnel again"
else fail "device back: connect_tunnel again" "$(count "$WORK/lapp.raw" connect_tunnel) connect_tunnel in lapp.raw"; fi
peer lapp2 "$LSRC" "$SRC_L"
await "app replaced: the old app gets disconnect 409" "$WORK/lapp.raw" '"status_code":"409"'
wait_for $T gone "${PEER[lapp]}"
check "app replaced: then close 4000" has_close "$WORK/lapp.raw" "0f a0"
await "app replaced: the new app gets connect_tunnel" "$WORK/lapp2.raw" 'connect_tunnel'
peer same "$WS/v5/iot/tunnels/t-same/device-connect" one-token
await "device_token omitted: the source token opens device-connect" "$MAIN_LOG" 'tunnel t-same: device connected'
check "connections are logged" has_line "$MAIN_LOG" 'tunnel t-live: replaced app'
kill -USR2 "$MAIN_PID"
await "SIGUSR2: the relay reports its queues" "$MAIN_LOG" 'SIGUSR2: queues reported$'
check "SIGUSR2: a line for a tunnel with both peers: nothing queued, both read" has_line "$MAIN_LOG" \
	'tunnel t-live: queued to app 0 \(peak [0-9]+\), to device 0 \(peak [0-9]+\); app read, device read$'
check "SIGUSR2: ... and one for a tunnel with its device only" has_line "$MAIN_LOG" \
	'tunnel t-same: queued to app 0 \(peak 0\), to device 0 \(peak 0\); app absent, device read$'

#### --auth-close and --device-auth ############################################

start_platform authclose --tunnels "$WORK/tunnels.json" --auth-close || fail "--auth-close relay starts"
AC=$PLATFORM_URL
ws_closed "$WORK/ac1.raw" "$AC$SRC" wrong
check "--auth-close, bad token on the app route: 101, then close 1002" refused_1002 "$WORK/ac1.raw"
ws_closed "$WORK/ac2.raw" "$AC/v5/iot/tunnels/t-none/source-connect" x
check "--auth-close, unknown tunnel: close 1002" refused_1002 "$WORK/ac2.raw"
ws_closed "$WORK/ac3.raw" "$AC$DST" wrong
check "--auth-close, the device route too: close 1002" refused_1002 "$WORK/ac3.raw"
check "--auth-close is logged" has_line "$PLATFORM_LOG" 'auth failed for tunnel t-a \(401, closing 1002\)'

start_platform devhttp --tunnels "$WORK/tunnels.json" --device-auth http || fail "--device-auth http relay starts"
DH=$PLATFORM_URL
check "--device-auth http: a bad device token: HTTP 401" [ "$(ws_code "$DH$DST" wrong)" = 401 ]
check "--device-auth http: an unknown tunnel on the device route: HTTP 404" \
	[ "$(ws_code "$DH/v5/iot/tunnels/t-none/device-connect" x)" = 404 ]
check "--device-auth http: the app route still HTTP 401" [ "$(ws_code "$DH$SRC" wrong)" = 401 ]
check "--device-auth http is logged without a close" has_line "$PLATFORM_LOG" 'auth failed for tunnel t-a \(401\)$'

#### REST off ##################################################################

start_platform norest --tunnels "$WORK/tunnels.json" || fail "relay without --api-token starts"
out=$(curl -s -H "X-Auth-Token: $API_TOKEN" -w '\n%{http_code}\n' "${PLATFORM_URL/ws:/http:}$API")
check "no --api-token: the REST API answers 404" [ "$(status "$out")" = 404 ]

#### TLS #######################################################################

if [ -f "$CERTS/ca.pem" ]; then
	start_platform tls --tunnels "$WORK/tunnels.json" --api-token-file "$WORK/api.tok" \
		--cert "$CERTS/server.pem" --key "$CERTS/server.key" || fail "TLS relay starts"
	check "TLS: stdout: listening on wss://127.0.0.1:PORT" grep -qE '^listening on wss://127\.0\.0\.1:[0-9]+$' "$WORK/tls.out"
	HTTPS=https://localhost:${PLATFORM_URL##*:}
	out=$(curl -s --cacert "$CERTS/ca.pem" -H "X-Auth-Token: $API_TOKEN" -d '{"device_id":"dev-tls"}' \
		-w '\n%{http_code}\n' "$HTTPS$API")
	check "TLS: REST over https, checked against the sandbox CA: 201" [ "$(status "$out")" = 201 ]
	check "TLS: tunnel_uri is wss:// as reached" grep -q "^$HTTPS/v5/iot/tunnels/.*/source-connect\$" \
		<<<"$(field tunnel_uri "$out" | sed 's/^wss:/https:/')"
	check "TLS: a bad token: HTTP 401" [ "$(curl -s -o /dev/null -w '%{http_code}' --cacert "$CERTS/ca.pem" \
		"${UPGRADE[@]}" -H 'tunnel_access_token: wrong' "$HTTPS$SRC")" = 401 ]
else
	echo "# skipped TLS: no $CERTS/ca.pem (make certs)"
fi

#### the log and the exit ######################################################

leaks=
for s in "$API_TOKEN" "$SRC_A" "$DEV_A" "$SRC_L" "$DEV_L" "$TOKEN" "$DTOKEN" one-token "$SK" "$STOKEN" "$ETOKEN" "$VTOKEN" ${HW_SIG:+"$HW_SIG"}; do
	grep -qF -- "$s" "$WORK"/*.log && leaks="$leaks $s"
done
check "no token, no SK, no signature in any relay log" [ -z "$leaks" ]
kill "$MAIN_PID"
wait "$MAIN_PID"
check "SIGTERM: exit 0" [ $? = 0 ]
check "SIGTERM: logged" has_line "$MAIN_LOG" 'exiting on Terminated'
finish
