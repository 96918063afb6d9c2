/*
 * Unit tests of tunnel_tui's pure parts: message encode/decode with hostile
 * input, routing, chunking, configuration errors, key encoding.  The
 * console's own file is included, so these are the functions it runs.
 * Output: "ok - NAME" / "not ok - NAME" lines (tests/run.sh counts them).
 */
#ifndef TUNNEL_TUI_NO_MAIN
#define TUNNEL_TUI_NO_MAIN
#endif
#include "../../tunnel_tui.c"
#include <sys/wait.h>

/*** harness ****************************************************************/

static int failures;

static void expect(int cond, const char *name, const char *fmt, ...)	/* one check */
{
	va_list ap;

	printf("%sok - %s\n", cond ? "" : "not ", name);
	if (cond)
		return;
	failures++;
	printf("# ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

/* Parses an encoded message back and returns its data string (or NULL). */
static char *roundtrip_data(const struct buf *b, size_t *len)
{
	cJSON *j = cJSON_ParseWithLength(b->p, b->len);
	cJSON *d = cJSON_GetObjectItem(j, "data");
	char *out = NULL;

	if (cJSON_IsString(d)) {
		*len = strlen(d->valuestring);
		out = malloc(*len + 1);
		memcpy(out, d->valuestring, *len + 1);
	}
	cJSON_Delete(j);
	return out;
}

/*** encode *****************************************************************/

static void test_encode_command(void)
{
	const char input[] = "ls \"a\\b\"\r\x03\x1b[A\x01\x7f 漢字 \xff\xfe";
	struct buf b = { 0 };
	size_t n = 0;
	char *back;

	encode_command(&b, "rid-1", input, sizeof(input) - 1);
	back = roundtrip_data(&b, &n);
	expect(back && n == sizeof(input) - 1 && !memcmp(back, input, n),
	       "encode: command data survives escaping (quotes, controls, UTF-8)",
	       "got %zu bytes: %s", n, b.p);
	expect(strstr(b.p, "\"tunnel_service_type\":\"ssh\"") && strstr(b.p, "\"request_id\":\"rid-1\"") &&
	       strstr(b.p, "\"operation_type\":\"command\""),
	       "encode: envelope has all four members", "%s", b.p);
	expect(memchr(b.p, '\xff', b.len) != NULL, "encode: raw bytes >= 0x80 pass through unescaped", "%s", b.p);
	free(back);
	buf_free(&b);
}

static void test_encode_connect(void)
{
	struct buf b = { 0 };
	cJSON *j, *d;

	encode_connect(&b, "r2", "field", "p\"w\\d", 5, 100, 40);
	j = cJSON_Parse(b.p);
	d = cJSON_GetObjectItem(j, "data");
	expect(j && !strcmp(json_str(j, "operation_type"), "connect") &&
	       !strcmp(json_str(d, "username"), "field") && !strcmp(json_str(d, "password"), "p\"w\\d") &&
	       cJSON_GetObjectItem(d, "cols")->valueint == 100 &&
	       cJSON_GetObjectItem(d, "rows")->valueint == 40,
	       "encode: connect carries credentials, cols, rows", "%s", b.p);
	cJSON_Delete(j);
	buf_free(&b);
}

static void test_encode_ping(void)
{
	struct buf b = { 0 };

	encode_message(&b, OP_PING, "ping-1", "null");
	expect(!strcmp(b.p, "{\"operation_type\":\"ping\",\"tunnel_service_type\":\"ssh\","
		       "\"request_id\":\"ping-1\",\"data\":null}"), "encode: ping shape", "%s", b.p);
	buf_free(&b);
}

/*** decode *****************************************************************/

static int decodes(const char *json, struct inbound *m)	/* 0 ok, -1 rejected */
{
	char err[160];

	memset(m, 0, sizeof(*m));
	return decode_message(json, strlen(json), m, err, sizeof(err));
}

static void test_decode_shapes(void)
{
	struct inbound m = { 0 };

	int r = decodes("{\n  \"data\" : \"hi\\u00e9\\ud83d\\ude00\",\n  \"request_id\": \"a\",\n"
			"  \"tunnel_service_type\":\"ssh\", \"operation_type\" : \"command_response\"\n}", &m);

	expect(r == 0 &&
	       m.op == OP_COMMAND_RESPONSE && !strcmp(m.data, "hi\xc3\xa9\xf0\x9f\x98\x80") &&
	       !strcmp(m.request_id, "a"),
	       "decode: pretty JSON, any member order, \\u escapes incl. surrogate pairs", "data=%s", m.data);
	cJSON_Delete(m.root);
	expect(decodes("{\"operation_type\":\"connect_tunnel\"}", &m) == 0 && m.op == OP_CONNECT_TUNNEL &&
	       !m.data && !m.request_id, "decode: missing data and request_id", "");
	cJSON_Delete(m.root);
	expect(decodes("{\"operation_type\":\"command_response\",\"data\":42}", &m) == 0 && !m.data,
	       "decode: data of an unexpected type is ignored", "");
	cJSON_Delete(m.root);
	r = decodes("{\"operation_type\":\"command_response\",\"data\":\"a\\u0000b\\\\u0000c\"}", &m);
	expect(r == 0 && m.data_len == 10 && !memcmp(m.data, "a\0b\\u0000c", 10),
	       "decode: \\u0000 in data keeps the bytes after it (an escaped \\\\u0000 stays text)",
	       "len=%zu", m.data_len);
	cJSON_Delete(m.root);
	expect(decodes("{\"operation_type\":\"command_response\",\"data\":\"\xe6\xbc\"}", &m) == 0 &&
	       m.data_len == 2, "decode: raw bytes >= 0x80 (a split UTF-8 char) kept", "len=%zu", m.data_len);
	cJSON_Delete(m.root);
}

static void test_decode_disconnect(void)
{
	struct inbound m;

	expect(decodes("{\"operation_type\":\"disconnect\",\"request_id\":\"x\",\"data\":"
		       "{\"status_code\":408,\"status_msg\":\"SSH idles\"}}", &m) == 0 &&
	       !strcmp(m.status_code, "408") && !strcmp(m.status_msg, "SSH idles"),
	       "decode: disconnect with a numeric status_code", "code=%s", m.status_code);
	cJSON_Delete(m.root);
	expect(decodes("{\"operation_type\":\"disconnect\",\"data\":{\"status_code\":\"410\"}}", &m) == 0 &&
	       !strcmp(m.status_code, "410") && !m.status_msg[0],
	       "decode: disconnect with a string code and no message", "code=%s", m.status_code);
	cJSON_Delete(m.root);
}

static void test_decode_hostile(void)
{
	static const char *const bad[] = {
		"", "{", "{\"operation_type\":\"command_response\",\"data\":\"abc", "[1,2]", "null",
		"\"str\"", "{\"operation_type\":12}", "{\"operation_type\":\"reboot\"}",
		"\xff\xfe\x00", "{\"operation_type\":\"command\"}}}}",
	};
	struct inbound m;
	char *deep = malloc(200002);
	int rejected = 0;

	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		int r = decodes(bad[i], &m);

		rejected += r < 0;
		if (r == 0)
			cJSON_Delete(m.root);
	}
	expect(rejected == (int)(sizeof(bad) / sizeof(*bad)), "decode: truncated, non-object, unknown-type input rejected",
	       "%d of %zu rejected", rejected, sizeof(bad) / sizeof(*bad));
	memset(deep, '[', 100000);
	memset(deep + 100000, ']', 100000);
	deep[200000] = '\0';
	expect(decodes(deep, &m) < 0, "decode: 100000-deep nesting rejected without a crash", "");
	free(deep);
}

/*** routing ****************************************************************/

static void test_routing(void)
{
	struct tunnel t = { 0 };
	struct session a = { .state = S_LIVE, .tunnel = &t }, b = { .state = S_LIVE, .tunnel = &t };
	struct inbound m = { 0 };

	strcpy(a.request_id, "aaaa");
	strcpy(b.request_id, "bbbb");
	a.next = &b;
	t.sessions = &a;
	t.latest = &b;
	m.op = OP_COMMAND_RESPONSE;
	m.request_id = "aaaa";
	expect(route_message(&t, &m) == &a, "route: a known request_id goes to its session", "");
	m.request_id = "zzzz";
	expect(route_message(&t, &m) == &b, "route: an unknown request_id goes to the latest session", "");
	m.op = OP_DISCONNECT;
	m.request_id = "SSH_timeout_disconnect";
	expect(route_message(&t, &m) == &b, "route: SSH_timeout_disconnect goes to the latest session", "");
	m.request_id = NULL;
	expect(route_message(&t, &m) == NULL, "route: a disconnect without request_id is the tunnel's", "");
	m.op = OP_CONNECT_TUNNEL;
	m.request_id = "aaaa";
	expect(route_message(&t, &m) == NULL, "route: connect_tunnel belongs to the tunnel", "");
	m.op = OP_COMMAND_RESPONSE;
	m.request_id = "zzzz";
	b.state = S_ENDED;
	expect(route_message(&t, &m) == NULL, "route: nothing goes to an ended session", "");
	m.request_id = "bbbb";
	expect(route_message(&t, &m) == NULL, "route: an ended session's id is not open", "");
}

/*** chunking ***************************************************************/

/* Splits s into command messages as write_keys() does; checks each. */
static int chunks_ok(const char *s, size_t n, int *count)
{
	struct buf out = { 0 };
	size_t at = 0;

	*count = 0;
	while (at < n) {
		size_t k = chunk_len(s + at, n - at, INPUT_CHUNK, MAX_MESSAGE - 256);
		struct buf b = { 0 };
		size_t dl = 0;
		char *d;

		if (!k)
			return 0;
		encode_command(&b, "0123456789abcdef0123456789abcdef0123", s + at, k);
		d = roundtrip_data(&b, &dl);
		if (b.len > MAX_MESSAGE || k > INPUT_CHUNK || !d)
			return 0;
		buf_append(&out, d, dl);
		free(d);
		buf_free(&b);
		at += k;
		++*count;
	}
	n = out.len == n && !memcmp(out.p, s, n);
	buf_free(&out);
	return (int)n;
}

static void test_chunking(void)
{
	char *big = malloc(50000);
	int count = 0, ok;

	memset(big, 'a', 50000);
	ok = chunks_ok(big, 50000, &count);
	expect(ok && count == 13, "chunk: 50 KB of ASCII in 4096-byte chunks",
	       "%d chunks", count);
	for (int i = 0; i + 3 <= 50000; i += 3)
		memcpy(big + i, "漢", 3);
	expect(chunk_len(big, 49998, INPUT_CHUNK, 100000) == 4095, "chunk: never inside a UTF-8 sequence",
	       "%zu", chunk_len(big, 49998, INPUT_CHUNK, 100000));
	expect(chunks_ok(big, 49998, &count), "chunk: CJK paste reassembles exactly", "");
	for (int i = 0; i < 50000; i++)
		big[i] = (char)(1 + i % 31);	/* NUL aside: cJSON strings end there */
	ok = chunks_ok(big, 50000, &count);
	expect(ok && count > 13,
	       "chunk: control-heavy input stays under 10 KB once escaped", "%d chunks", count);
	expect(chunk_len("\xe6\xbc", 2, INPUT_CHUNK, 1000) == 2, "chunk: a cut-off sequence at the end is sent", "");
	free(big);
}

/*** AK/SK signing ***********************************************************/

static void test_signing_guide_example(void)	/* the public signing guide's worked example */
{
	static const char *const headers[][2] = {
		{ "content-type", "application/json" }, { "host", "service.region.example.com" },
		{ "x-sdk-date", "20191115T033655Z" } };
	struct sign_input in = {
		.method = "GET", .path = "/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs",
		.query = "marker=13551d6b-755d-4757-b956-536f674975c0&limit=2",
		.headers = headers, .nheaders = 3, .body = "", .body_len = 0,
		.date = "20191115T033655Z" };
	char hashed[65], auth[512];

	hashed_canonical_request(&in, hashed);
	expect(!strcmp(hashed, "b25362e603ee30f4f25e7858e8a7160fd36e803bb2dfe206278659d71a9bcd7a"),
	       "signing: the guide's canonical request hash (query sorted, URI ends in /)", "%s", hashed);
	sign_request(&in, &(struct signer){ SIGN_BASIC, "QTWAOYTTINDUT2QVKYUC",
		     "MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc", 40, "" }, auth, sizeof(auth));
	expect(!strcmp(auth, "SDK-HMAC-SHA256 Access=QTWAOYTTINDUT2QVKYUC, SignedHeaders=content-type;"
		       "host;x-sdk-date, Signature=7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe"),
	       "signing: the guide's Authorization header", "%s", auth);
}

static void test_signing_independent(void)	/* computed separately with openssl dgst */
{
	static const char *const headers[][2] = {
		{ "content-type", "application/json" }, { "host", "127.0.0.1:8443" },
		{ "instance-id", "inst-9" }, { "x-sdk-date", "20261126T101500Z" } };
	const char *body = "{\"device_id\":\"pump-north\"}";
	struct sign_input in = {
		.method = "POST", .path = "/v5/iot/proj+1/tunnels", .query = NULL,
		.headers = headers, .nheaders = 4, .body = body, .body_len = strlen(body),
		.date = "20261126T101500Z" };
	char hashed[65], auth[512], date[17];

	hashed_canonical_request(&in, hashed);
	expect(!strcmp(hashed, "5fc2a62ac808588e651270b81b6378a8ce7c5da1aab77f730e31064b57408083"),
	       "signing: a POST with a body, an encoded path segment, four headers", "%s", hashed);
	sign_request(&in, &(struct signer){ SIGN_BASIC, "AK", "sk/with+chars=", 14, "" }, auth, sizeof(auth));
	expect(strstr(auth, "Signature=22a5d6ef65df7b9e5fe439904fda2dc2f07762ea04baa2b3a49eae9ccf2137c0") != NULL,
	       "signing: HMAC with a key of + / = characters", "%s", auth);
	sdk_date(1574134615, date);
	expect(!strcmp(date, "20191119T033655Z"), "signing: X-Sdk-Date is UTC YYYYMMDDTHHMMSSZ", "%s", date);
}

/* Derived signing (V11-HMAC-SHA256), vectors from Huawei's own Node.js signer
 * (@huaweicloud/huaweicloud-sdk-core 3.1.211, DerivedAKSKSigner); the
 * HKDF step alone from RFC 5869's construction, computed with openssl kdf. */
static void test_signing_derived(void)
{
	static const char *const headers[][2] = {
		{ "content-type", "application/json" },
		{ "host", "a1b2c3.st1.iotda-app.cn-north-4.myhuaweicloud.com" },
		{ "x-sdk-date", "20261206T080000Z" } };
	const char *body = "{\"device_id\":\"pump-north\"}";
	struct sign_input in = {
		.method = "POST", .path = "/v5/iot/0123456789abcdef0123456789abcdef/tunnels",
		.headers = headers, .nheaders = 3, .body = body, .body_len = strlen(body),
		.date = "20261206T080000Z" };
	struct signer sg = { SIGN_DERIVED, "HPUAXXXXEXAMPLEAK1", "eXaMpLeSeCrEtKeY/with+chars=", 28,
			     "cn-north-4" };
	char auth[512], key[65], region[64] = "";

	sign_request(&in, &sg, auth, sizeof(auth));
	expect(!strcmp(auth, "V11-HMAC-SHA256 Credential=HPUAXXXXEXAMPLEAK1/20261206/cn-north-4/iotdm, "
		       "SignedHeaders=content-type;host;x-sdk-date, Signature="
		       "14aac50b43512b9cbe65cb16813295bda12ab58d706948354034358de862799c"),
	       "signing: derived, as Huawei's SDK signs a create-tunnel request", "%s", auth);
	derived_key(&(struct signer){ SIGN_DERIVED, "salt", "ikm", 3, "" }, "info", key);
	expect(!strcmp(key, "fe8f9615d2374c0d17f77d1aeaf408c2e75fe0466073d0def23c733e2f862dfd"),
	       "signing: the derived key is HKDF-SHA256(ikm SK, salt AK, info scope) in hex", "%s", key);
	expect(region_from_endpoint("https://a1b2.st1.iotda-app.cn-north-4.myhuaweicloud.com", region,
				    sizeof(region)) == 0 && !strcmp(region, "cn-north-4"),
	       "signing: the region comes from a standard instance's endpoint", "%s", region);
	expect(region_from_endpoint("https://iotda.ap-southeast-1.myhuaweicloud.com:443/", region,
				    sizeof(region)) == 0 && !strcmp(region, "ap-southeast-1"),
	       "signing: … and from a basic endpoint with a port", "%s", region);
	expect(region_from_endpoint("https://localhost:8443", region, sizeof(region)) < 0 &&
	       region_from_endpoint("https://x.myhuaweicloud.com.evil.example", region, sizeof(region)) < 0,
	       "signing: no region from other hosts", "");
}

/*** trust nothing from the wire ********************************************/

static void test_clean_text(void)	/* every class the cleaner escapes */
{
	static const struct { const char *in, *want; } cases[] = {
		{ "plain ü 漢", "plain ü 漢" },
		{ "\033[2Jwiped", "\\x1b[2Jwiped" },
		{ "a\nforged\r\tb\x7f", "a\\nforged\\r\\tb\\x7f" },
		{ "\xc2\x9b" "31m", "\\u009b31m" },		/* C1 CSI */
		{ "x\xe2\x80\xae" "evil\xe2\x81\xa6\xd8\x9c", "x\\u202e" "evil\\u2066\\u061c" },
		{ "\xe2\x80\x8e\xe2\x80\x8f", "\\u200e\\u200f" },
		{ "bad\xff\xfe\xc3", "bad\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" },
		{ "\xed\xa0\x80\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" },
	};
	char out[64], again[64];
	int bad = 0;

	for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
		clean_text(out, sizeof(out), cases[i].in, strlen(cases[i].in));
		clean_text(again, sizeof(again), out, strlen(out));
		if (strcmp(out, cases[i].want) || strcmp(again, out)) {
			bad++;
			printf("# %zu: \"%s\"\n", i, out);
		}
	}
	expect(!bad, "clean: controls, C1, bidi controls escaped, invalid UTF-8 replaced, idempotent", "");
	clean_text(out, 12, "漢字仮名交じり", 21);
	expect(!strcmp(out, "漢字…") && strlen(out) < 12, "clean: a cut falls on a character and says so", "%s", out);
	clean_text(out, 8, "\033\033\033", 3);
	expect(!strcmp(out, "\\x1b…"), "clean: … also inside escapes' room", "%s", out);
}

static void test_paths_and_urls(void)	/* names as files; plaintext; URLs */
{
	char name[64];
	struct url u;

	safe_component("../../tmp/x", name, sizeof(name));
	expect(!strcmp(name, "_._.._tmp_x"), "files: a device name becomes a safe path component", "%s", name);
	safe_component(".hidden name\033", name, sizeof(name));
	expect(!strcmp(name, "_hidden_name_"), "files: no leading dot, no blanks or controls", "%s", name);
	expect(url_parse("wss://[::1]:8443/x", &u) == 0 && !strcmp(u.host, "::1") && u.port == 8443 && u.tls &&
	       url_parse("http://h.example/p", &u) == 0 && u.port == 80 && !u.tls && !strcmp(u.host, "h.example"),
	       "urls: host, port and scheme, IPv6 too", "%s %d", u.host, u.port);
	expect(!plaintext_problem("ws://127.0.0.1:9/x", 0) && !plaintext_problem("http://localhost/x", 0) &&
	       !plaintext_problem("ws://[::1]/x", 0) && plaintext_problem("ws://10.0.0.1/x", 0) &&
	       plaintext_problem("http://iotda.example.com", 0) && !plaintext_problem("ws://10.0.0.1/x", 1) &&
	       !plaintext_problem("wss://10.0.0.1/x", 0) && plaintext_problem("ws://127.0.0.1.evil.example/x", 0) &&
	       !plaintext_problem("ws://127.9.8.7:1/x", 0) && plaintext_problem("ws://[::2]/x", 0),
	       "plaintext: only to loopback addresses (not names that look like them), unless allowed", "");
}

static void test_tunnel_reply(void)	/* a create-tunnel answer, as §1 shapes it */
{
	static const struct { const char *json; int ok; } cases[] = {
		{ "{\"tunnel_id\":\"t-1\",\"tunnel_access_token\":\"a+/=\",\"expires_in\":3600,"
		  "\"tunnel_uri\":\"wss://h/v5/iot/tunnels/t-1/source-connect\"}", 1 },
		{ "{\"tunnel_id\":\"t-1\",\"tunnel_access_token\":\"a\",\"expires_in\":1e300,"
		  "\"tunnel_uri\":\"wss://h/x\"}", 0 },
		{ "{\"tunnel_id\":\"../x\",\"tunnel_access_token\":\"a\",\"tunnel_uri\":\"wss://h/x\"}", 0 },
		{ "{\"tunnel_id\":\"t\",\"tunnel_access_token\":\"a\\r\\nX-Evil: 1\",\"tunnel_uri\":\"wss://h/x\"}", 0 },
		{ "{\"tunnel_id\":\"t\",\"tunnel_access_token\":\"a\",\"tunnel_uri\":\"ws://203.0.113.9/x\"}", 0 },
		{ "{\"tunnel_id\":\"t\",\"tunnel_access_token\":\"a\",\"tunnel_uri\":\"ws://127.0.0.1:9/x\"}", 1 },
		{ "{\"tunnel_id\":\"t\",\"tunnel_access_token\":\"a\",\"tunnel_uri\":\"https://h/x\"}", 0 },
		{ "{\"tunnel_id\":\"t\",\"tunnel_access_token\":\"a\",\"expires_in\":-5,\"tunnel_uri\":\"wss://h/x\"}", 0 },
	};
	int bad = 0;

	for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
		cJSON *j = cJSON_Parse(cases[i].json);
		struct tunnel_reply r;
		const char *why = tunnel_reply_check(j, 1, 0, &r);

		if ((why == NULL) != cases[i].ok) {
			bad++;
			printf("# %zu: %s\n", i, why ? why : "accepted");
		}
		cJSON_Delete(j);
	}
	expect(!bad, "API answers: huge expires_in, odd ids, CR/LF tokens, plaintext URIs refused", "");
}

/*** configuration **********************************************************/

static int parse(const char *text, char *err)	/* config_parse on a copy */
{
	struct config c = { .prefix_key = 7 };
	char *copy = strdup(text);
	int r;

	err[0] = '\0';
	free(token_sources);
	token_sources = NULL;
	r = config_parse(&c, copy, "devices.conf", err, 300);
	for (int i = 0; i < c.ndev; i++)
		secret_free(c.dev[i].token);
	free(c.dev);
	free(copy);
	return r;
}

static void test_config_good(void)
{
	struct config c = { .prefix_key = 7 };
	char err[300] = "", *text = strdup(
		"# devices\n[console]\nprefix = C-a\n\n[device pump-north]\n"
		"url = wss://h/v5/iot/tunnels/T1/source-connect   ; comment\n"
		"token_file = /tmp/tok\nusername = field\npty = 128x30\nsessions = single\n"
		"login_timeout = 7\ncacert = /tmp/ca.pem\n[device b]\nurl = ws://x/y\ntoken_env = TOK\n"
		"[console]\nlogin_timeout = 0\n[iotda]\nregion = cn-east-3\nsigning = basic\n");
	int r = config_parse(&c, text, "f", err, sizeof(err));

	expect(r == 0 && c.ndev == 2 && c.prefix_key == 1 && !strcmp(c.dev[0].name, "pump-north") &&
	       !strcmp(c.dev[0].url, "wss://h/v5/iot/tunnels/T1/source-connect") &&
	       c.dev[0].pty_cols == 128 && c.dev[0].pty_rows == 30 && c.dev[0].sessions == SESSIONS_SINGLE &&
	       c.dev[0].login_timeout_s == 7 && c.dev[1].login_timeout_s == -1 && c.login_timeout_s == 0 &&
	       !strcmp(c.dev[0].username, "field") && !strcmp(token_sources[0].file, "/tmp/tok") &&
	       !strcmp(token_sources[1].env, "TOK") && c.dev[1].sessions == SESSIONS_AUTO &&
	       !strcmp(c.iotda.region, "cn-east-3") && c.iotda.signing == SIGN_BASIC,
	       "config: every key of the documented format", "%s", err);
	free(c.dev);
	free(text);
}

static void test_config_errors(void)
{
	static const struct { const char *text, *want; } cases[] = {
		{ "[device a]\nurl = ws://x\ntoken = t\ncolour = red\n", "devices.conf:4: unknown key \"colour\"" },
		{ "[device a\033[2J]\n", "devices.conf:1: a device name must be plain text" },
		{ "[device a]\nurl = ws://x\ntoken = t\nlogin_timeout = 9999\n", "devices.conf:4: login_timeout must be" },
		{ "[iotda]\nsigning = v11\n", "devices.conf:2: signing must be derived or basic" },
		{ "url = ws://x\n", "devices.conf:1: \"url = ws://x\" is outside" },
		{ "[device a]\ntoken = t\n", "devices.conf:1: device \"a\" has no url" },
		{ "[device a]\nurl = http://x\n", "devices.conf:2: url must start with" },
		{ "[device a]\nurl = ws://x\ntoken = t\npty = huge\n", "devices.conf:4: pty must be" },
		{ "[device a]\nurl = ws://x\ntoken = t\nsessions = 3\n", "devices.conf:4: sessions must be" },
		{ "[device a]\nurl = ws://x\ntoken = t\ntoken_env = X\n", "needs exactly one of" },
		{ "[device a]\nurl = ws://x\ntoken = t\n[device a]\n", "devices.conf:4: device \"a\" is defined twice" },
		{ "[gadget a]\n", "devices.conf:1: unknown section [gadget a]" },
		{ "[device a\n", "devices.conf:1: a section header must end with ]" },
		{ "[device a]\nurl\n", "devices.conf:2: expected key = value" },
		{ "[console]\nprefix = x\n", "devices.conf:2: prefix must be a control key" },
	};
	char err[300];

	for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
		char name[120];
		int r = parse(cases[i].text, err);

		snprintf(name, sizeof(name), "config error: %s", cases[i].want);
		expect(r < 0 && strstr(err, cases[i].want), name, "got \"%s\"", err);
	}
}

static void test_config_tokens(void)
{
	char warn[160] = "", err[300] = "", *tok;
	char path[] = "/tmp/tt_unit_tokXXXXXX";
	int fd = mkstemp(path);

	(void)!write(fd, "  s3cr+t/=\n", 11);
	close(fd);
	chmod(path, 0644);
	tok = token_from_file(path, warn, sizeof(warn), err, sizeof(err));
	expect(tok && !strcmp(tok, "s3cr+t/=") && strstr(warn, "readable by others"),
	       "config: token file read, trimmed; world-readable warned", "tok=%s warn=%s", tok, warn);
	secret_free(tok);
	setenv("TT_UNIT_TOKEN", "envtok", 1);
	tok = token_from_env("TT_UNIT_TOKEN", err, sizeof(err));
	expect(tok && !strcmp(tok, "envtok") && !getenv("TT_UNIT_TOKEN"),
	       "config: token from the environment, then removed from it", "");
	secret_free(tok);
	unlink(path);
	expect(parse_prefix("C-a") == 1 && parse_prefix("^b") == 2 && parse_prefix("Ctrl-G") == 7 &&
	       parse_prefix("g") == -1, "config: prefix key spellings", "");
}

/*** keys *******************************************************************/

static struct session *term_open(int cols, int rows);
static void term_close(struct session *s);
static void feed(struct session *s, const char *text);

static const char *encode_key(const struct session *s, int ch, int fn)	/* as typed */
{
	static char out[32];
	int n = key_encode(s, ch, fn, out);

	out[n > 0 ? n : 0] = '\0';
	return out;
}

static void test_keys(void)
{
	struct session *s = term_open(80, 24);

	expect(!strcmp(encode_key(s, KEY_UP, 1), "\033[A"), "keys: Up in normal cursor mode", "%s", encode_key(s, KEY_UP, 1) + 1);
	feed(s, "\033[?1h");
	expect(!strcmp(encode_key(s, KEY_UP, 1), "\033OA") && !strcmp(encode_key(s, KEY_HOME, 1), "\033OH"),
	       "keys: Up and Home in application cursor mode", "%s", encode_key(s, KEY_UP, 1) + 1);
	expect(!strcmp(encode_key(s, KEY_SR, 1), "\033[1;2A") && !strcmp(encode_key(s, KEY_F(13), 1), "\033[1;2P") &&
	       !strcmp(encode_key(s, KEY_SDC, 1), "\033[3;2~") && !strcmp(encode_key(s, KEY_BTAB, 1), "\033[Z"),
	       "keys: Shift-Up, Shift-F1 (curses's F13), Shift-Delete, Shift-Tab", "");
	expect(!strcmp(encode_key(s, '\r', 0), "\r") && !strcmp(encode_key(s, KEY_ENTER, 1), "\r"), "keys: Enter is \\r", "");
	feed(s, "\033[20h");
	expect(!strcmp(encode_key(s, '\r', 0), "\r\n"), "keys: Enter is \\r\\n in newline mode (LNM)", "");
	expect(!strcmp(encode_key(s, 3, 0), "\003"), "keys: Ctrl-C is \\x03", "");
	expect(!strcmp(encode_key(s, 127, 0), "\177") && !strcmp(encode_key(s, KEY_BACKSPACE, 1), "\177"),
	       "keys: Backspace is DEL", "");
	expect(!strcmp(encode_key(s, KEY_F(1), 1), "\033OP") && !strcmp(encode_key(s, KEY_F(5), 1), "\033[15~") &&
	       !strcmp(encode_key(s, KEY_F(12), 1), "\033[24~"), "keys: F1, F5, F12", "%s", encode_key(s, KEY_F(5), 1) + 1);
	expect(!strcmp(encode_key(s, 0x6f22, 0), "漢"), "keys: a CJK character as UTF-8", "");
	expect(!strcmp(encode_key(s, KEY_DC, 1), "\033[3~"), "keys: Delete", "");
	expect(encode_key(s, KEY_RESIZE, 1)[0] == '\0', "keys: unknown function keys send nothing", "");
	term_close(s);
}

static void test_misc(void)
{
	char id[64], rid[40], rid2[40];

	tunnel_id_from_url("wss://h:443/v5/iot/tunnels/ab_C-1/source-connect", id, sizeof(id));
	expect(!strcmp(id, "ab_C-1"), "url: tunnel id from a tunnel_uri", "%s", id);
	new_request_id(rid);
	new_request_id(rid2);
	expect(strlen(rid) == 36 && rid[14] == '4' && strcmp(rid, rid2), "request ids are fresh UUIDv4s", "%s", rid);
	expect(!strcmp(status_meaning("410"), "device went away") && !*status_meaning("999"),
	       "status codes explained", "");
	expect(is_final_close(1000) && is_final_close(1002) && is_final_close(4000) && is_final_close(401) &&
	       !is_final_close(1006) && !is_final_close(1011), "reconnect: never after 1000, 1002, 4000, 401", "");
}

/* The whole program on a bad command line: exit 2, a message on stderr. */
static void test_cli_errors(void)
{
	static const struct { const char *args[6], *want; } cases[] = {
		{ { "-c", "/nonexistent/devices.conf", NULL }, "/nonexistent/devices.conf: No such file" },
		{ { "ws://h/v5/iot/tunnels/x/source-connect", NULL }, "need --token-file or TUNNEL_TUI_TOKEN" },
		{ { "--bogus", NULL }, "bad option" },
		{ { "--tunnel-json", "/dev/null", NULL }, "no tunnel_uri and tunnel_access_token" },
		{ { "--cacert", "/nonexistent/ca.pem", "--token-file", "/etc/hostname",
		    "wss://h/v5/iot/tunnels/x/source-connect", NULL }, "CA file /nonexistent/ca.pem: No such file" },
		{ { "--token-file", "/etc/hostname", "ws://h.example/v5/iot/tunnels/x/source-connect", NULL },
		  "device x: plaintext to another machine sends tokens and passwords in clear" },
		{ { "--put", "/etc/hostname", NULL }, "--put needs two arguments" },
		{ { "--put", "/nonexistent/f", "/tmp/", NULL }, "--put /nonexistent/f: No such file" },
		{ { "--get", "/var/log/", "/tmp", NULL }, "--get /var/log/: name the remote file, not a folder" },
		{ { "--get", "/etc/hostname", "/tmp", "--exec", "true", NULL }, "one of --exec, --put and --get at a time" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
		int pipefd[2], status = 0;
		char out[512] = "", name[160];
		char *argv[8] = { "tunnel_tui" };
		int argc = 1;
		pid_t pid;
		ssize_t n;

		for (int k = 0; cases[i].args[k]; k++)
			argv[argc++] = (char *)cases[i].args[k];
		(void)!pipe(pipefd);
		fflush(stdout);
		pid = fork();
		if (pid == 0) {
			dup2(pipefd[1], 2);
			unsetenv("TUNNEL_TUI_TOKEN");
			exit(run(argc, argv) + 100);
		}
		close(pipefd[1]);
		for (size_t got = 0; (n = read(pipefd[0], out + got, sizeof(out) - 1 - got)) > 0;)
			got += (size_t)n;
		close(pipefd[0]);
		waitpid(pid, &status, 0);
		snprintf(name, sizeof(name), "command line: %s", cases[i].want);
		expect(WIFEXITED(status) && WEXITSTATUS(status) == 2 && strstr(out, cases[i].want), name,
		       "status %d, stderr: %s", WEXITSTATUS(status), out);
	}
}

/*** terminal: the console's emulator ***************************************/

static struct session *term_open(int cols, int rows)	/* a bare session's terminal */
{
	static struct tunnel t = { .cfg.name = "unit" };
	struct session *s = xcalloc(sizeof(*s));

	s->tunnel = &t;
	s->rows = rows;
	s->cols = cols;
	vt_open(s);
	return s;
}

static void term_close(struct session *s)
{
	vt_close(s);
	buf_free(&s->keys);
	free(s);
}

static void feed(struct session *s, const char *text)
{
	term_feed(s, text, strlen(text));
}

static int row_is(const struct session *s, int vr, const char *want)	/* history row, blanks trimmed */
{
	char got[512];
	size_t n;

	row_text(s, vr, got, sizeof(got));
	n = strlen(got);
	while (n && got[n - 1] == ' ')
		got[--n] = '\0';
	return !strcmp(got, want);
}

/* Official devices cut their output anywhere: a character split at any
 * byte, even one byte a message, lands whole in its cell. */
static void test_split_utf8(void)
{
	static const struct { const char *text; uint32_t ch; } chars[] = {
		{ "\xc3\xa9", 0xe9 }, { "\xe6\xbc\xa2", 0x6f22 }, { "\xf0\x9f\x98\x80", 0x1f600 } };
	int bad = 0, cases = 0;

	for (size_t c = 0; c < sizeof(chars) / sizeof(*chars); c++) {
		char line[16];
		size_t n = (size_t)snprintf(line, sizeof(line), "ab%scd", chars[c].text);

		for (size_t cut = 1; cut < n; cut++, cases++) {
			struct session *s = term_open(20, 2);
			const struct cell *row = s->grid->row[0];
			int w;

			term_feed(s, line, cut);
			term_feed(s, line + cut, n - cut);
			w = row[2].width;
			bad += !(row[0].ch == 'a' && row[1].ch == 'b' && row[2].ch == chars[c].ch &&
				 row[2 + w].ch == 'c' && row[3 + w].ch == 'd' && s->grid->row[1][0].ch == 0);
			term_close(s);
		}
	}
	expect(!bad && cases == 5 + 6 + 7, "terminal: 2-, 3- and 4-byte characters split at every byte land whole",
	       "%d of %d cases wrong", bad, cases);
	{
		struct session *s = term_open(20, 2);

		feed(s, "x\xe6");
		feed(s, "\xbc");
		feed(s, "\xa2y\xe6");
		feed(s, "z");
		expect(s->grid->row[0][1].ch == 0x6f22 && s->grid->row[0][3].ch == 'y' &&
		       s->grid->row[0][4].ch == 0xfffd && s->grid->row[0][5].ch == 'z',
		       "terminal: a byte at a time too; a sequence never completed shows as U+FFFD, not swallowing what follows",
		       "%x %x %x", s->grid->row[0][1].ch, s->grid->row[0][4].ch, s->grid->row[0][5].ch);
		term_close(s);
	}
}

/* The login dialog's fields: typed, erased and typed again, over a
 * prefill that was longer once (the bytes past the end must not show). */
static void test_login_fields(void)
{
	struct tunnel t = { 0 };
	static const char *const keys[] = { "\b\b\b\b\b\b\b", "sdkt", "\t", "pw", "\b\b", "p\xc3\xa9" };

	app.dlg.password = secret_alloc(1024);
	copy_str(t.cfg.username, sizeof(t.cfg.username), "sdktdkt");
	open_login(&t, NULL);
	t.cfg.username[0] = '\0';
	open_login(&t, NULL);	/* an empty prefill over the longer one */
	for (size_t i = 0; i < sizeof(keys) / sizeof(*keys); i++)
		for (const char *k = keys[i]; *k; ) {
			wchar_t wc;
			int len = mbtowc(&wc, k, 4);

			key_login(*k == '\b' ? 127 : (int)wc, 0);
			k += len > 0 ? len : 1;
		}
	expect(!strcmp(app.dlg.user, "sdkt"), "login dialog: the user typed into an emptied field is exactly that",
	       "\"%s\"", app.dlg.user);
	expect(app.dlg.password_len == 3 && !memcmp(app.dlg.password, "p\xc3\xa9", 4),
	       "login dialog: the password, erased and retyped (a UTF-8 character too)", "%zu", app.dlg.password_len);
	app.mode = M_NORMAL;
	secret_free(app.dlg.password);
	app.dlg.password = NULL;
}

/* Local echo, mosh's way: shown once an epoch proved right, checked
 * against the echo, all dropped on the first wrong one. */
static int shown(const struct session *s, int col, uint32_t *ch)	/* the overlay at (0, col) */
{
	struct cell c = s->grid->row[0][col];

	predicted_cell(s, 0, col, &c);
	*ch = c.ch;
	return c.ch != s->grid->row[0][col].ch;
}

static void test_prediction(void)
{
	struct tunnel t = { .srtt_ms = 200 };
	struct session *s = term_open(40, 3);
	uint32_t ch;

	t.cfg.predict = PREDICT_AUTO;
	s->tunnel = &t;
	s->state = S_LIVE;
	feed(s, "$ ");
	predict_key(s, 'l', 0);
	predict_key(s, 's', 0);
	expect(s->pred.n == 2 && !shown(s, 2, &ch) && !shown(s, 3, &ch),
	       "predict: a new epoch shows nothing before its first echo", "n=%d", s->pred.n);
	feed(s, "l");
	predict_check(s);
	expect(s->pred.n == 1 && shown(s, 3, &ch) && ch == 's',
	       "predict: the first echo proves the epoch; the rest shows at once", "n=%d ch=%x", s->pred.n, ch);
	feed(s, "s");
	predict_check(s);
	expect(s->pred.n == 0 && s->pred.confirmed == 2, "predict: the echo confirms it", "%u", s->pred.confirmed);
	predict_key(s, 'x', 0);
	expect(shown(s, 4, &ch) && ch == 'x', "predict: within a proven epoch, a key shows before its echo", "");
	feed(s, "y");	/* the remote printed something else there */
	predict_check(s);
	expect(s->pred.n == 0 && s->pred.wrong == 1 && s->grid->row[0][4].ch == 'y',
	       "predict: a wrong one drops every prediction; the remote's screen stands", "wrong=%u", s->pred.wrong);
	predict_key(s, '\r', 0);	/* a new line: a new epoch, as at a password prompt */
	feed(s, "\r\nPassword: ");
	predict_key(s, 's', 0);
	predict_key(s, 'e', 0);
	predict_check(s);
	expect(!shown(s, 10, &ch) && !shown(s, 11, &ch) && s->pred.n == 2,
	       "predict: no echo, nothing shown (a password is never drawn)", "n=%d", s->pred.n);
	s->pred.p[0].sent_us = s->pred.p[1].sent_us = now_us() - 5000000;
	predict_check(s);
	expect(s->pred.n == 0, "predict: predictions no echo came for are given up", "n=%d", s->pred.n);
	t.srtt_ms = 5;
	predict_key(s, 'q', 0);
	expect(s->pred.n == 0, "predict: auto is off on a fast link", "n=%d", s->pred.n);
	term_close(s);
}

static void test_exit_typed(void)	/* the user's exit is no fault, however fast it was typed */
{
	struct tunnel t = { 0 };
	struct session *s = term_open(40, 3);
	const char *k;

	s->tunnel = &t;
	feed(s, "user@box:~$ ");
	for (k = "exit\r"; *k; k++)	/* Enter before any echo */
		follow_typing(s, *k, 0);
	expect(s->exit_typed_us > 0, "exit: typed faster than the echo still counts", "");
	s->exit_typed_us = 0;
	feed(s, "ex");	/* half of it echoed */
	for (k = "exit\r"; *k; k++)
		follow_typing(s, *k, 0);
	expect(s->exit_typed_us > 0, "exit: with half of its echo on screen", "");
	s->exit_typed_us = 0;
	feed(s, "\r\nuser@box:~$ ");
	for (k = "exitx\x7f\x7f\r"; *k; k++)	/* "exi" after two backspaces */
		follow_typing(s, *k, 0);
	expect(s->exit_typed_us == 0, "exit: \"exi\" is not exit", "");
	feed(s, "\r\nsome output ");
	for (k = "exit\r"; *k; k++)
		follow_typing(s, *k, 0);
	expect(s->exit_typed_us == 0, "exit: not after a prompt, not the user's exit", "");
	feed(s, "\r\nuser@box:~$ ");
	for (k = "qexit\r"; *k; k++)	/* q went to less, which has ended */
		follow_typing(s, *k, 0);
	expect(s->exit_typed_us > 0, "exit: after keys a full-screen program took", "");
	s->exit_typed_us = 0;
	feed(s, "\r\nuser@box:~$ ");
	for (k = "exitlonger\r"; *k; k++)
		follow_typing(s, *k, 0);
	expect(s->exit_typed_us == 0, "exit: a longer word is not exit", "");
	feed(s, "\r\n$ ");
	follow_typing(s, 4, 0);
	expect(s->exit_typed_us > 0, "exit: ^D on an empty prompt", "");
	term_close(s);
}

static void test_terminal(void)
{
	struct session *s = term_open(10, 3);
	const struct cell *c;

	setlocale(LC_CTYPE, "C.UTF-8");	/* search text is UTF-8, as in the console */
	feed(s, "one\r\ntwo\r\nthree\r\nfour\r\nfive");
	expect(s->sb_count == 2 && row_is(s, 0, "one") && row_is(s, 1, "two") &&
	       row_is(s, 2, "three") && row_is(s, 4, "five"),
	       "terminal: lines scrolled off the top go to the scrollback in order",
	       "sb_count %d", s->sb_count);
	feed(s, "\033[2;3r\033[3;1H\nsix\033[r");	/* a scroll region below the top */
	expect(s->sb_count == 2 && row_is(s, 2, "three") && row_is(s, 3, "five"),
	       "terminal: a scroll region that spares the top row keeps its lines out of the scrollback",
	       "sb_count %d", s->sb_count);
	feed(s, "\033[H\033[2J\033[1;31mR\033[0m漢x");
	c = s->grid->row[0];
	expect(c[0].ch == 'R' && c[0].fg == (COLOR_INDEXED | 1) && (c[0].attrs & ATTR_BOLD) &&
	       c[1].ch == 0x6f22 && c[1].width == 2 && c[3].ch == 'x' && c[3].fg == COLOR_DEFAULT,
	       "terminal: colours, bold and a wide character land in the right cells",
	       "%x %x %x", c[0].ch, c[1].ch, c[3].ch);
	expect(row_is(s, s->sb_count, "R漢x"), "terminal: search text skips a wide character's right half", "");
	feed(s, "\033[1;2H\033[2@");	/* insert two blanks: the rest moves right */
	expect(s->grid->row[0][1].ch == 0 && s->grid->row[0][3].ch == 0x6f22 && s->grid->row[0][5].ch == 'x',
	       "terminal: inserted characters move the rest of the row", "");
	feed(s, "\033[?1049h\033[Halt");
	expect(s->altscreen && row_is(s, s->sb_count, "alt"), "terminal: the alternate screen is made on demand", "");
	feed(s, "\r\n\r\n\r\n\r\n");
	expect(s->sb_count == 2, "terminal: the alternate screen scrolls nothing into the scrollback",
	       "sb_count %d", s->sb_count);
	feed(s, "\033[?1049l");
	expect(!s->altscreen && s->grid->row[0][0].ch == 'R', "terminal: leaving it shows the primary screen again", "");
	feed(s, "\033[44m\033[2K");
	expect(s->grid->row[0][0].ch == 0 && s->grid->row[0][9].bg == (COLOR_INDEXED | 4),
	       "terminal: erasing leaves the background colour (as xterm)", "");
	feed(s, "\033[?5h");
	expect(s->reverse_video, "terminal: reverse video (a visual bell) is kept for drawing", "");
	feed(s, "\033[?5l");
	expect(!s->reverse_video, "terminal: ... and ends", "");
	feed(s, "\033[0m\033[3;1H\033[5S");	/* scroll up more lines than the screen has */
	expect(s->sb_count == 5 && s->grid->row[2][0].ch == 0,
	       "terminal: a scroll past the screen's height blanks it, every line kept", "sb_count %d", s->sb_count);
	term_close(s);
}

/* Two terminals show the same: cells, cursor, scrollback text. */
static int same_terminal(const struct session *a, const struct session *b)
{
	char ta[512], tb[512];

	if (a->vt.row != b->vt.row || a->vt.col != b->vt.col || a->sb_count != b->sb_count ||
	    a->altscreen != b->altscreen)
		return 0;
	for (int r = 0; r < a->rows; r++)
		if (memcmp(a->grid->row[r], b->grid->row[r], (size_t)a->cols * sizeof(struct cell)))
			return 0;
	for (int r = 0; r < a->sb_count; r++) {
		row_text(a, r, ta, sizeof(ta));
		row_text(b, r, tb, sizeof(tb));
		if (strcmp(ta, tb))
			return 0;
	}
	return 1;
}

/* Devices cut their output anywhere: the parser keeps its state across
 * messages, so any split gives the screen the whole gives; what libvterm
 * 0.1.4 needed a filter for (a CSI with more than 16 parameters, C1
 * characters) does no harm. */
static void test_parser_splits(void)
{
	static const char *const pieces[] = {
		"plain ", "\033[1;31m", "\033[1;2;3;4;5;6;7;8;9;10;11;12;13;14;15;16;17;18;19;20m",
		"\xc2\x85", "\xc2\xa9", "\xc2", "\033]0;title\007", "\033", "[", "\030", "\032",
		"\033[?1049h", "\033[?1049l", "漢字", "\r\n", ";", ":", "9", "\033[38:2:1:2:3m", "\033[2;5r",
		"\033[1:2:3:4:5:6:7:8:9:10:11:12:13:14:15:16:17m", "\033[3L", "\033[2@", "\033[4h", "\033[4l",
		"\033(0lqk\033(B", "\033]52;c;aGk=\033\\", "\033[10;10H", "\033[K", "\033M", "\0337", "\0338",
	};
	char in[4096];
	size_t n, i, k;
	unsigned seed = 12345;
	struct session *a = term_open(30, 6), *b;

	app.remote_clipboard = CLIP_DENY;
	feed(a, "\033[1;2;3;4;5;6;7;8;9;10;11;12;13;14;15;16;17;18;19;20;31mok");
	expect(a->grid->row[0][0].ch == 'o' && a->grid->row[0][0].fg == COLOR_DEFAULT && !a->grid->row[0][0].attrs,
	       "parser: a CSI with more than 16 parameters is dropped whole, nothing else", "");
	feed(a, "x\xc2");
	feed(a, "\x9by\xc2\xa9");
	expect(a->grid->row[0][2].ch == 'x' && a->grid->row[0][3].ch == 'y' && a->grid->row[0][4].ch == 0xa9,
	       "parser: C1 characters are not printed, also split across messages; U+00A9 is", "");
	term_close(a);
	for (int round = 0; round < 200; round++) {
		a = term_open(30, 6);
		b = term_open(30, 6);
		for (n = 0; n < sizeof(in) - 64; n += strlen(pieces[k])) {
			k = (size_t)rand_r(&seed) % (sizeof(pieces) / sizeof(*pieces));
			memcpy(in + n, pieces[k], strlen(pieces[k]));
		}
		for (i = 0; i < n; i++)
			term_feed(a, in + i, 1);
		for (i = 0; i < n; i += k) {
			k = 1 + (size_t)rand_r(&seed) % 700;
			k = k < n - i ? k : n - i;
			term_feed(b, in + i, k);
		}
		k = same_terminal(a, b);
		term_close(a);
		term_close(b);
		if (!k) {
			expect(0, "parser: the same screen however the input is split", "round %d", round);
			return;
		}
	}
	expect(1, "parser: the same screen however the input is split", "");
}

/* A line scrolled into the scrollback comes back as it was: characters,
 * wide ones, colours, attributes, the wrapped mark; its blank end trimmed. */
static void test_scrollback_packing(void)
{
	static const char *const bits[] = { "ab", "漢字", "\033[1;31m", "\033[38;5;200m", "\033[48;2;1;2;3m",
					     "\033[7m", "\033[0m", " ", "é", "\033[4m", "x", "😀" };
	unsigned seed = 99;
	int bad = 0, lines = 0;

	setlocale(LC_CTYPE, "C.UTF-8");
	for (int round = 0; round < 300; round++) {
		struct session *s = term_open(60, 1);	/* one row, wide enough for 12 bits: no wrap */
		struct cell want[60];
		const struct cell *got;
		int n;

		for (int k = 0; k < 12; k++)
			feed(s, bits[rand_r(&seed) % (sizeof(bits) / sizeof(*bits))]);
		feed(s, "\033[0m");
		memcpy(want, s->grid->row[0], sizeof(want));
		feed(s, "\r\n");
		got = history_cells(s, s->sb_count - 1, &n);
		for (int c = 0; c < 60; c++) {
			struct cell w = want[c], g = c < n ? got[c] : blank_cell;

			if (c && want[c - 1].width == 2)
				continue;	/* a right half: drawn with its left */
			if (cell_blank(&w) && cell_blank(&g))
				continue;
			bad += (w.ch ? w.ch : ' ') != (g.ch ? g.ch : ' ') || w.fg != g.fg || w.bg != g.bg ||
			       w.attrs != g.attrs || w.width != g.width;
		}
		lines += s->sb_count == 1;
		term_close(s);
	}
	expect(!bad && lines == 300, "scrollback: 300 packed lines unpack to the cells they were", "%d cells differ", bad);
}

/* The text a selection copies, as tmux copies it. */
static int copied_is(const struct session *s, struct copy cp, const char *want, char *got, size_t cap)
{
	struct buf b = { 0 };
	int same;

	buf_append(&b, "", 0);
	selection_text(s, &cp, &b);
	snprintf(got, cap, "%s", b.p);
	same = !strcmp(b.p, want);
	buf_free(&b);
	return same;
}

static void test_copy(void)
{
	struct session *s = term_open(10, 4);
	char got[256];
	int r;

	setlocale(LC_CTYPE, "C.UTF-8");
	feed(s, "abcdefghijklmno\r\n漢字 x    \r\nRECT-aa11\r\nRECT-bb22");
	r = history_rows(s) - 5;	/* the wrapped line's first row */
	expect(row_continues(s, r + 1) && !row_continues(s, r + 2),
	       "copy: a row the terminal wrapped onto is marked, a new line is not", "");
	expect(copied_is(s, (struct copy){ s, r + 1, 0, SEL_LINE, r, 3, 0 }, "abcdefghijklmno", got, sizeof(got)),
	       "copy: a wrapped line copies as one line", "[%s]", got);
	expect(copied_is(s, (struct copy){ s, r + 2, 9, SEL_CHAR, r + 2, 0, 0 }, "漢字 x", got, sizeof(got)),
	       "copy: wide characters whole; the blanks after the text go", "[%s]", got);
	expect(copied_is(s, (struct copy){ s, r + 2, 3, SEL_CHAR, r + 2, 1, 0 }, "漢字", got, sizeof(got)),
	       "copy: a selection from a wide character's right half takes the character", "[%s]", got);
	expect(copied_is(s, (struct copy){ s, r + 4, 8, SEL_RECT, r + 3, 5, 0 }, "aa11\nbb22", got, sizeof(got)),
	       "copy: a rectangle, row by row", "[%s]", got);
	expect(copied_is(s, (struct copy){ s, r + 3, 1, SEL_CHAR, r + 2, 5, 0 }, "x\nRE", got, sizeof(got)),
	       "copy: characters across rows: from the first point to the last", "[%s]", got);
	term_close(s);
}

static void test_clipboard_and_mouse(void)
{
	struct session *s = term_open(20, 3);
	struct tunnel t = { 0 };
	struct buf b = { 0 };
	struct mouse m;
	char big[OSC_MAX + 64];

	copy_str(t.cfg.name, sizeof(t.cfg.name), "north");
	s->tunnel = &t;

	expect(base64_decode("aGVsbG8=", 8, &b) == 0 && b.len == 5 && !memcmp(b.p, "hello", 5) &&
	       base64_decode("aGk", 3, &b) == 0 && b.len == 7 && !memcmp(b.p + 5, "hi", 2),
	       "base64: padded and unpadded", "%zu", b.len);
	expect(base64_decode("aG$k", 4, &b) < 0 && base64_decode("aG=k", 4, &b) < 0 && b.len == 7,
	       "base64: a stray byte is an error and adds nothing", "%zu", b.len);
	buf_free(&b);
	app.remote_clipboard = CLIP_ASK;
	feed(s, "x\033]52;c;aGVs");
	feed(s, "bG8=\007y");
	expect(app.offer.waiting && app.offer.data.len == 5 && !memcmp(app.offer.data.p, "hello", 5) &&
	       s->grid->row[0][0].ch == 'x' && s->grid->row[0][1].ch == 'y',
	       "OSC 52: a clipboard write split across messages is held for the user, not shown", "");
	app.offer.waiting = 0;
	feed(s, "\033]52;c;?\033\\");
	expect(!app.offer.waiting && !s->clip_offer.len, "OSC 52: a clipboard read is not an offer", "");
	memset(big, 'A', sizeof(big));
	memcpy(big, "\033]52;c;", 7);
	strcpy(big + sizeof(big) - 2, "\a");
	feed(s, big);
	expect(!app.offer.waiting, "OSC 52: one longer than OSC_MAX is dropped", "");
	app.remote_clipboard = CLIP_DENY;
	feed(s, "\033]52;c;aGk=\a");
	expect(!app.offer.waiting && !app.clip.len, "OSC 52: remote_clipboard = deny refuses it", "");
	buf_free(&app.offer.data);
	expect(mouse_parse_sgr("0;5;7M", &m) && m.button == 0 && m.x == 4 && m.y == 6 && m.press && !m.mods,
	       "mouse: an SGR press, 0-based", "");
	expect(mouse_parse_sgr("0;5;7m", &m) && !m.press && mouse_parse_sgr("65;1;1M", &m) &&
	       m.button == (MB_WHEEL | 1) && mouse_parse_sgr("36;2;2M", &m) && m.button == MB_MOTION && m.mods == 4,
	       "mouse: SGR release, wheel, a drag with Shift", "");
	expect(!mouse_parse_sgr("0;5M", &m) && !mouse_parse_sgr("0;0;1M", &m) && !mouse_parse_sgr("0;5;7Mx", &m),
	       "mouse: broken SGR reports are refused", "");
	expect(mouse_parse_x10((const unsigned char *)" %'", &m) && m.button == 0 && m.x == 4 && m.y == 6 &&
	       mouse_parse_x10((const unsigned char *)"#%'", &m) && !m.press,
	       "mouse: X10 press and release", "");
	term_close(s);
}

/*** file transfer: typed text, plan, replies, progress *********************/

/* Runs a script in a shell and returns its stdout: a real shell is the
 * judge of the lines the console types. */
static size_t sh_output(const char *shell, const char *script, size_t slen, unsigned char *out, size_t cap)
{
	char path[] = "/tmp/tt_unit_XXXXXX", cmd[256];
	int fd = mkstemp(path);
	size_t n = 0;
	FILE *f;

	if (fd < 0 || write(fd, script, slen) != (ssize_t)slen)
		return 0;
	close(fd);
	snprintf(cmd, sizeof(cmd), "%s %s", shell, path);
	if ((f = popen(cmd, "r"))) {
		n = fread(out, 1, cap, f);
		pclose(f);
	}
	unlink(path);
	return n;
}

static int ascii_lines(const struct buf *b, size_t max_line)	/* printable ASCII, short lines */
{
	size_t line = 0;

	for (size_t i = 0; i < b->len; i++) {
		unsigned char c = (unsigned char)b->p[i];

		if (c == '\n')
			line = 0;
		else if (c < 0x20 || c > 0x7e || ++line > max_line)
			return 0;
	}
	return 1;
}

static const char *const posix_shells[] = { "dash", "bash", "busybox ash" };

/* Download text to bytes as the console takes it, in pieces of step
 * characters: 0, or -1 if it is bad or ends inside a group. */
static int decode_pieces(const char *s, size_t n, int hex, size_t step, struct buf *out)
{
	struct xdec st = { .hex = hex };

	for (size_t i = 0; i < n; i += step) {
		size_t k = n - i < step ? n - i : step;

		buf_reserve(out, k);
		out->len += xdec_feed(&st, s + i, k, (unsigned char *)out->p + out->len);
	}
	return st.bad || st.k ? -1 : 0;
}

static int decode_all(const char *s, size_t n, int hex, struct buf *out)	/* in one piece */
{
	return decode_pieces(s, n, hex, n ? n : 1, out);
}

static void test_xfer_base64(void)
{
	unsigned char bytes[768];
	struct buf t = { 0 }, d = { 0 };
	int ok = 1;

	for (int i = 0; i < 768; i++)	/* every value, then NUL, CR and LF runs */
		bytes[i] = i < 512 ? (unsigned char)i : i < 600 ? 0 : i % 2 ? '\r' : '\n';
	for (size_t n = 0; n <= sizeof(bytes) && ok; n += n < 10 ? 1 : 37) {
		t.len = d.len = 0;
		b64_lines(&t, bytes, n);
		ok = decode_all(t.p ? t.p : "", t.len, 0, &d) == 0 && d.len == n && !memcmp(d.p ? d.p : "", bytes, n) &&
		     ascii_lines(&t, XFER_LINE) && (!n || t.p[t.len - 1] == '\n');
	}
	expect(ok, "xfer: base64 lines decode back, any length, in short ASCII lines", "%.80s", t.p);
	t.len = 0;
	b64_lines(&t, bytes, sizeof(bytes));
	for (size_t step = 1; step < 9 && ok; step++) {
		d.len = 0;
		ok = decode_pieces(t.p, t.len, 0, step, &d) == 0 && d.len == sizeof(bytes) && !memcmp(d.p, bytes, d.len);
	}
	expect(ok, "xfer: … the same however the messages cut the text", "");
	d.len = 0;
	expect(decode_all("QUJD\r\nREVG\r\n", 12, 0, &d) == 0 && d.len == 6 && !memcmp(d.p, "ABCDEF", 6),
	       "xfer: base64 decoding skips line ends", "%zu", d.len);
	expect(decode_all("QU*D", 4, 0, &d) < 0 && decode_all("QQ==QUJD", 8, 0, &d) < 0 &&
	       decode_all("QUJ", 3, 0, &d) < 0,
	       "xfer: base64 decoding refuses other characters, padding inside, a cut group", "");
	d.len = 0;
	expect(decode_pieces(" 00 ff 0a\r\n", 11, 1, 1, &d) == 0 && d.len == 3 && !memcmp(d.p, "\0\xff\n", 3) &&
	       decode_all("0g", 2, 1, &d) < 0 && decode_all("abc", 3, 1, &d) < 0,
	       "xfer: hex decoding (od's, hexdump's) skips blanks, refuses others and half bytes", "");
	buf_free(&t);
	buf_free(&d);
}

static void test_xfer_printf(void)
{
	unsigned char bytes[768], back[4096];
	struct buf t = { 0 };
	int ok;

	for (int i = 0; i < 768; i++)
		bytes[i] = i < 512 ? (unsigned char)(i * 7) : i < 600 ? 0 : '-';
	printf_lines(&t, bytes, sizeof(bytes));
	ok = ascii_lines(&t, XFER_LINE + 2) && !strstr(t.p, "printf '-");
	for (const char *l = t.p; ok && *l; l += strcspn(l, "\n") + 1)
		ok = !strncmp(l, "printf '", 8) && l[strcspn(l, "\n") - 1] == '\'' &&
		     !memchr(l + 8, '\'', strcspn(l, "\n") - 9) && !memchr(l + 8, '%', strcspn(l, "\n") - 9);
	expect(ok, "xfer: printf lines: short ASCII, one quoted format each, no %, never starting with -",
	       "%.80s", t.p);
	for (size_t k = 0; k < sizeof(posix_shells) / sizeof(*posix_shells); k++) {
		size_t n = sh_output(posix_shells[k], t.p, t.len, back, sizeof(back));

		char name[80];

		snprintf(name, sizeof(name), "xfer: printf lines rebuild every byte value (%s)", posix_shells[k]);
		expect(n == sizeof(bytes) && !memcmp(back, bytes, n), name, "%zu bytes", n);
	}
	buf_free(&t);
}

static void gather(void *ctx, const unsigned char *p, size_t n)	/* bytes_fn: into a buf */
{
	buf_append(ctx, p, n);
}

/* gz_pack's stream through gz_stream in pieces of step bytes: 0 or -1. */
static int inflate_pieces(const struct buf *gz, size_t step, struct buf *out)
{
	z_stream z = { 0 };
	int r = inflateInit2(&z, 16 + MAX_WBITS) == Z_OK ? 0 : -1;

	for (size_t i = 0; i < gz->len && !r; i += step)
		r = gz_stream(&z, gz->p + i, gz->len - i < step ? gz->len - i : step, gather, out);
	inflateEnd(&z);
	return r;
}

static void test_xfer_gzip(void)
{
	unsigned char bytes[200000];
	struct buf gz = { 0 }, un = { 0 }, bad = { 0 };
	int ok = 1;

	for (size_t i = 0; i < sizeof(bytes); i++)
		bytes[i] = (unsigned char)(i % 13 * i);
	expect(gz_pack(bytes, sizeof(bytes), &gz) == 0 && gz.len < sizeof(bytes) / 2, "xfer: gzip packs", "%zu", gz.len);
	for (size_t step = 1; step < 100000 && ok; step = step * 7 + 1) {
		un.len = 0;
		ok = inflate_pieces(&gz, step, &un) == 0 && un.len == sizeof(bytes) && !memcmp(un.p, bytes, un.len);
	}
	expect(ok, "xfer: … and inflates back, however the stream is cut", "");
	buf_append(&gz, "x", 1);	/* bytes after the end */
	expect(inflate_pieces(&gz, gz.len, &bad) < 0, "xfer: bytes after a gzip stream's end are refused", "");
	gz.p[gz.len / 2] ^= 0x55;
	bad.len = 0;
	expect(inflate_pieces(&gz, 4096, &bad) < 0 || bad.len != sizeof(bytes) || memcmp(bad.p, bytes, bad.len),
	       "xfer: a damaged gzip stream does not inflate to the bytes", "");
	buf_free(&gz);
	buf_free(&un);
	buf_free(&bad);
}

/* Paths with every awkward byte survive sh_assign in each shell. */
static void test_xfer_paths(void)
{
	static const char *const paths[] = {
		"/tmp/with space/ünï 漢字.bin", "-dash", "it's \"quoted\" $HOME `x` \\ %s", "tail\n", "~/in home",
	};
	char expect_home[PATH_MAX];

	snprintf(expect_home, sizeof(expect_home), "%s/in home", getenv("HOME") ? getenv("HOME") : "");
	for (size_t k = 0; k < sizeof(posix_shells) / sizeof(*posix_shells); k++) {
		char name[80];
		int ok = 1;

		snprintf(name, sizeof(name), "xfer: remote paths with any bytes survive typing as ASCII (%s)", posix_shells[k]);
		for (size_t i = 0; i < sizeof(paths) / sizeof(*paths) && ok; i++) {
			struct buf b = { 0 };
			unsigned char out[512];
			const char *want = i == 4 ? expect_home : paths[i];
			size_t n;

			sh_assign(&b, "_f", paths[i]);
			buf_printf(&b, "printf '%%s' \"$_f\"\n");
			n = sh_output(posix_shells[k], b.p, b.len, out, sizeof(out));
			ok = ascii_lines(&b, 4000) && n == strlen(want) && !memcmp(out, want, n);
			if (!ok)
				expect(0, name, "%s -> %.*s", paths[i], (int)n, out);
			buf_free(&b);
		}
		if (ok)
			expect(1, name, "");
	}
}

static void test_xfer_lines(void)
{
	struct buf b = { 0 };
	struct xplan pl;

	xfer_boot_line(&b, "c0ffee12", 0);
	expect(b.len < 400 && !strstr(b.p, "=TTc0ffee12=") && !memcmp(b.p, "\005\025 sh -c '", 10) &&
	       b.p[b.len - 1] == '\r' && !memchr(b.p + 2, '\n', b.len - 2),
	       "xfer: the boot line: short (busybox edits 1024), clears the line, no whole marker", "%s", b.p + 2);
	b.len = 0;
	xfer_boot_line(&b, "c0ffee12", 1);
	expect(strstr(b.p, " exec sh -c '") != NULL, "xfer: its own session: the loop is the session", "%s", b.p);
	b.len = 0;
	xfer_hello_line(&b, 1);
	xfer_plan(parse_tools("base64 hexdump od md5sum sha256sum gzip head dd stty wc"), 1, &pl);
	xfer_setup_line(&b, &pl, 1);
	xfer_stat_up_line(&b, "/tmp/x y", "/tmp/.x y.1.ttpart", "/tmp");
	xfer_verify_line(&b, 1, 123);
	xfer_commit_line(&b, 0);
	xfer_exit_line(&b, 1);
	expect(ascii_lines(&b, 1000) && !strstr(b.p, "=TT"), "xfer: every step line is short plain ASCII", "%s", b.p);
	buf_free(&b);
}

static void test_xfer_plan(void)
{
	struct xplan pl;
	unsigned gnu = parse_tools("base64 hexdump od md5sum sha256sum gzip head dd stty wc");
	unsigned bb = parse_tools(" hexdump md5sum sha256sum gzip head dd wc");

	expect(!xfer_plan(gnu, 0, &pl) && pl.codec->shell == down_codecs[0].shell && !strcmp(pl.file->name, "sha256") &&
	       !strcmp(pl.chunk->name, "md5") && pl.gzip && pl.echo_off,
	       "xfer: a GNU device: base64, sha256 for the file, md5 for chunks, gzip, echo off", "");
	expect(!xfer_plan(bb, 0, &pl) && pl.codec->hex && !pl.echo_off && !xfer_plan(bb, 1, &pl) && pl.codec->script,
	       "xfer: busybox without base64 or stty: hexdump down, printf up, echo stays on", "");
	expect(!xfer_plan(parse_tools("od md5sum dd wc head"), 0, &pl) && pl.codec->hex && !strcmp(pl.file->name, "md5"),
	       "xfer: only od and md5sum: still a path, verified by md5", "");
	expect(xfer_plan(parse_tools("base64 dd wc head"), 0, &pl) && xfer_plan(parse_tools("md5sum dd wc head"), 0, &pl) &&
	       xfer_plan(parse_tools("base64 md5sum dd wc"), 1, &pl) && !xfer_plan(parse_tools("base64 md5sum dd wc"), 0, &pl),
	       "xfer: no hash, no encoder, no head for uploads: refused in words", "");
}

struct scan_log { char text[2048]; size_t len; int stop_at; int n; };

static int scan_record(void *ctx, const struct xreply *r)	/* appends "kind(args)[body]" */
{
	struct scan_log *l = ctx;

	l->len += (size_t)snprintf(l->text + l->len, sizeof(l->text) - l->len, "%c(%s)[%.*s]%s", r->kind, r->args,
				   (int)r->body_len, r->body, r->overflow ? "!" : "");
	return ++l->n == l->stop_at;
}

static void scan_sink(void *ctx, const char *p, size_t n)	/* streams "<bytes>" into the log */
{
	struct scan_log *l = ctx;

	if (l->len && l->text[l->len - 1] == '>')	/* one piece after another: join them */
		l->len--;
	else
		l->text[l->len++] = '<';
	l->len += (size_t)snprintf(l->text + l->len, sizeof(l->text) - l->len, "%.*s>", (int)n, p);
}

static void test_xfer_scan(void)
{
	static const char out[] = "m P$p\r\necho '=TTab' 'cd12='\r\n\r\n=TTabcd12= W\r\n/home/x\r\n\r\n=TTabcd12= P base64 md5sum\r\n"
				  "junk =TTabcd12= C 0\r\nQUJD\r\n=TTabcd12= H 0\r\n";
	struct xscan sc = { 0 };
	struct scan_log whole = { .stop_at = -1 }, bytewise = { .stop_at = -1 }, stop = { .stop_at = 2 };
	struct scan_log sunk = { .stop_at = -1 };

	xscan_init(&sc, "abcd12", 1 << 20);
	xscan_feed(&sc, out, sizeof(out) - 1, scan_record, &whole);
	expect(!strcmp(whole.text, "W()[m P$p\r\necho '=TTab' 'cd12='\r\n\r\n]P(base64 md5sum)[/home/x\r\n\r\n]"
		       "C(0)[junk ]H(0)[QUJD\r\n]"), "xfer: replies and their bodies, an echo of split markers is body",
	       "%s", whole.text);
	xscan_init(&sc, "abcd12", 1 << 20);
	for (size_t i = 0; i < sizeof(out) - 1; i++)
		xscan_feed(&sc, out + i, 1, scan_record, &bytewise);
	expect(!strcmp(whole.text, bytewise.text), "xfer: the same replies a byte at a time", "%s", bytewise.text);
	xscan_init(&sc, "abcd12", 1 << 20);
	expect(xscan_feed(&sc, out, sizeof(out) - 1, scan_record, &stop) == 1 && stop.n == 2 &&
	       !strncmp(sc.pend.p, "junk", 4), "xfer: a reply can stop the scan; what follows stays", "%s", sc.pend.p);
	xscan_init(&sc, "abcd12", 4);
	memset(&whole, 0, sizeof(whole));
	whole.stop_at = -1;
	xscan_feed(&sc, "0123456789=TTabcd12= E 1\n", 25, scan_record, &whole);
	expect(!strcmp(whole.text, "E(1)[0123]!"), "xfer: a body over its limit is cut and flagged", "%s", whole.text);
	xscan_init(&sc, "abcd12", 4);
	sc.sink = scan_sink;
	for (size_t i = 0; i < sizeof(out) - 1; i++)
		xscan_feed(&sc, out + i, 1, scan_record, &sunk);
	expect(!strcmp(sunk.text, "<m P$p\r\necho '=TTab' 'cd12='\r\n\r\n>W()[]</home/x\r\n\r\n>P(base64 md5sum)[]"
		       "<junk >C(0)[]<QUJD\r\n>H(0)[]"),
	       "xfer: with a sink, bodies stream to it whole, however cut, and none is kept", "%s", sunk.text);
	xscan_free(&sc);
}

static void test_xfer_misc(void)
{
	char out[256], h[65];
	uint8_t st[] = { XC_DONE, XC_WANTED, XC_WANTED, XC_ASKED, XC_WANTED };
	uint32_t a = 0, b = 0;
	struct xrate r = { 0 };

	expect(parse_hash("\r\nd41d8cd98f00b204e9800998ecf8427e  -\r\n", 38, 32, h) == 0 &&
	       !strcmp(h, "d41d8cd98f00b204e9800998ecf8427e") && parse_hash("abc  -", 6, 32, h) < 0,
	       "xfer: a hash line's hash", "%s", h);
	body_text("\r\n/home/x y\r\n\r\n", 15, out, sizeof(out));
	expect(!strcmp(out, "/home/x y"), "xfer: pwd's line, without its line ends", "%s", out);
	expect(cwd_from_text("root@OpenWrt:~# ", out, sizeof(out)) && !strcmp(out, "~") &&
	       cwd_from_text("field@dev:/var/log$ ", out, sizeof(out)) && !strcmp(out, "/var/log") &&
	       cwd_from_text("field@dev: ~/src", out, sizeof(out)) && !strcmp(out, "~/src") &&
	       !cwd_from_text("bash-5.2$ ", out, sizeof(out)) && !cwd_from_text("mail me@x: hi", out, sizeof(out)),
	       "xfer: the directory a prompt or title names (bash's, OpenWrt's), none in others", "%s", out);
	expect(next_wanted_run(st, 5, &a, &b) && a == 1 && b == 3 && !next_wanted_run(st, 1, &a, &b),
	       "xfer: the first run of chunks still to do", "%u %u", a, b);
	expect(xfer_chunk_size(0, 1 << 20) == 65536 && xfer_chunk_size(0, 100u << 20) == (1 << 20) &&
	       xfer_chunk_size(1, 5) == XFER_UP_CHUNK, "xfer: download chunks grow with the file, to 1 MiB", "");
	part_name("/a b/c.bin", "0123abcd", out, sizeof(out));
	expect(!strcmp(out, "/a b/.c.bin.0123abcd.ttpart"), "xfer: the temporary name is beside the file", "%s", out);
	parent_dir("x", out, sizeof(out));
	expect(!strcmp(out, "."), "xfer: a bare name's folder is .", "%s", out);
	parent_dir("/x", out, sizeof(out));
	expect(!strcmp(out, "/"), "xfer: /x's folder is /", "%s", out);
	xrate_note(&r, 1000000, 0);
	xrate_note(&r, 3000000, 4000000);
	progress_text(out, sizeof(out), 4500000, 10000000, r.bps);
	expect(r.bps == 2e6 && strstr(out, " 45%  4.5 MB of 10.0 MB  2.0 MB/s  ETA 3 s") && strstr(out, "█████▍"),
	       "xfer: progress: bar, percent, bytes, rate, ETA", "%s", out);
}

int main(void)
{
	cJSON_InitHooks(&(cJSON_Hooks){ malloc, wiping_free });
	test_encode_command();
	test_encode_connect();
	test_encode_ping();
	test_decode_shapes();
	test_decode_disconnect();
	test_decode_hostile();
	test_routing();
	test_chunking();
	test_signing_guide_example();
	test_signing_independent();
	test_signing_derived();
	test_clean_text();
	test_paths_and_urls();
	test_tunnel_reply();
	test_config_good();
	test_config_errors();
	test_config_tokens();
	test_keys();
	test_misc();
	test_cli_errors();
	test_terminal();
	test_split_utf8();
	test_prediction();
	test_exit_typed();
	test_login_fields();
	test_parser_splits();
	test_copy();
	test_scrollback_packing();
	test_clipboard_and_mouse();
	test_xfer_base64();
	test_xfer_printf();
	test_xfer_gzip();
	test_xfer_paths();
	test_xfer_lines();
	test_xfer_plan();
	test_xfer_scan();
	test_xfer_misc();
	free(token_sources);
	return failures != 0;
}
