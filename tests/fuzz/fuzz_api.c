/*
 * fuzz_api: libFuzzer target for what the IoTDA API (or a --tunnel-json
 * file) sends back, and for the cleaner every peer string passes through.
 * The API is reached over the network, so its answers are peer input.
 *
 * tunnel_reply_check() gets the input as a create-tunnel answer in each of
 * its modes; what it accepts must follow the §1 shapes (a ws[s]:// URI that
 * the plaintext rule allows, a header-safe token of 1-256 characters, a
 * tunnel_id of 1-128 [A-Za-z0-9_-], expires_in within ten years).  The
 * error and state texts built from it (api_error_text, api_state_text) and
 * clean_text on the raw input must come out clean: valid UTF-8 with no
 * controls, no bidi controls, within their size, and clean_text idempotent.
 */
#define TUNNEL_TUI_NO_MAIN
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"	/* main's helpers */
#include "../../tunnel_tui.c"
#pragma GCC diagnostic pop

static void fail(int line, const char *what)	/* libFuzzer reports the input */
{
	fprintf(stderr, "fuzz_api.c:%d: check failed: %s\n", line, what);
	abort();
}
#define CHECK(cond) do { if (!(cond)) fail(__LINE__, #cond); } while (0)

/* Nothing in s can steer a terminal or a log reader. */
static void check_clean(const char *s, size_t cap)
{
	size_t n = strlen(s);
	uint32_t cp;

	CHECK(n < cap);
	for (size_t i = 0, k; i < n; i += k) {
		k = (size_t)utf8_decode((const unsigned char *)s + i, n - i, &cp);
		CHECK(k > 0);
		CHECK(cp >= 0x20 && cp != 0x7f && !is_steering(cp));
	}
}

static void check_reply(cJSON *j, int need_id, int plaintext_ok)	/* accepted: §1 shapes */
{
	struct tunnel_reply r;
	struct url u;

	if (tunnel_reply_check(j, need_id, plaintext_ok, &r))
		return;
	CHECK(url_parse(r.uri, &u) == 0 && (!strncmp(r.uri, "wss://", 6) || !strncmp(r.uri, "ws://", 5)));
	CHECK(u.tls || plaintext_ok || host_is_loopback(u.host));
	CHECK(strlen(r.uri) < 1024 && !strpbrk(r.uri, " \r\n\t"));
	CHECK(valid_token(r.token));
	CHECK(!need_id || valid_id(r.tunnel_id, 128));
	CHECK(r.expires_in >= 0 && r.expires_in <= (long)EXPIRES_MAX_S);
}

static void check_texts(const char *data, size_t size)	/* built texts are clean */
{
	static const int statuses[] = { 0, 400, 401, 429, 500 };
	char out[160], again[160];

	for (size_t i = 0; i < sizeof(statuses) / sizeof(*statuses); i++) {
		api_error_text(statuses[i], data, size, out, sizeof(out));
		check_clean(out, sizeof(out));
	}
	api_state_text(data, size, out, sizeof(out));
	check_clean(out, sizeof(out));
	clean_text(out, sizeof(out), data, size);
	check_clean(out, sizeof(out));
	if (!strstr(out, "…")) {	/* not cut: a second pass changes nothing */
		clean_text(again, sizeof(again), out, strlen(out));
		CHECK(!strcmp(again, out));
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	cJSON *j = cJSON_ParseWithLength((const char *)data, size);

	for (int mode = 0; mode < 4; mode++)
		check_reply(j, mode & 1, mode >> 1);
	cJSON_Delete(j);
	check_texts((const char *)data, size);
	return 0;
}
