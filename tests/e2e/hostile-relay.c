/*
 * hostile-relay: a platform that misbehaves, for the console's fault tests.
 *
 * Any WebSocket client that connects is sent a script of bad frames (not
 * JSON, binary, truncated, deeply nested, oversized, invalid UTF-8, unknown
 * operation types and request_ids, fragmented, trailing garbage), then a
 * valid connect_tunnel.  After that it plays a trivial device: a connect
 * gets a banner, every command is echoed back, each echo followed by one
 * more bad frame, and pings are answered.  A console that survives all of it and still echoes is
 * what the test asserts.
 *
 * --strings plays a platform and a device that send one hostile string H
 * (screen clear, OSC 52 clipboard write, OSC 0 title, a newline and a forged
 * log line, CR, C1 CSI, bidi override and isolate, an invalid UTF-8 byte)
 * through every path a peer's words reach the console by: an unknown
 * operation_type (on connecting), connect_response data (on a connect),
 * and, typed in a session, "bye" (disconnect of that session), "tunnel"
 * (a disconnect without request_id) and "close" (a WebSocket close whose
 * reason is H, 123 bytes); besides, "long" ends the session with a long
 * status_msg of 3-byte characters and "bidi" prints bidi controls as
 * terminal output; other keystrokes are echoed.  Any HTTP request
 * gets 400 {"error_code":H,"error_msg":H}: it stands in for the IoTDA API.
 *
 * --cert FILE --key FILE serve wss:// instead of ws://.  Every TCP
 * connection accepted is logged ("connection accepted"), so a test can
 * count a client's attempts even when its TLS handshake fails.
 * Prints "listening on ws[s]://127.0.0.1:PORT".
 */
#include "../sandbox/sandbox.h"

#include <signal.h>

/*** the script ***************************************************************/

enum kind { TEXT, BINARY, FRAGMENTED, NESTED, HUGE };

static const struct step { enum kind kind; const char *bytes; } script[] = {
	{ TEXT, "this is not JSON" },
	{ BINARY, "\x00\x01\x02\xff binary" },
	{ TEXT, "{\"operation_type\":\"command_response\",\"data\":\"trunc" },
	{ NESTED, NULL },
	{ HUGE, NULL },
	{ TEXT, "{\"operation_type\":\"command_response\",\"request_id\":\"x\",\"data\":\"\xff\xfe\xc3\"}" },
	{ TEXT, "{\"operation_type\":\"reboot\",\"tunnel_service_type\":\"ssh\"}" },
	{ TEXT, "{\"operation_type\":\"command_response\",\"request_id\":\"nobody\",\"data\":\"x\"}" },
	{ TEXT, "{\"operation_type\":\"disconnect\",\"request_id\":\"nobody\",\"data\":{\"status_code\":{}}}" },
	{ FRAGMENTED, "{\"operation_type\":\"pong\",\"request_id\":\"stray\",\"data\":null}" },
	{ TEXT, "{\"operation_type\":\"pong\"} trailing garbage" },
	{ TEXT, "[]" },
	{ TEXT, "{\"operation_type\":null,\"data\":[1,2,3]}" },
	{ TEXT, "{\"operation_type\":\"connect_tunnel\",\"tunnel_service_type\":\"ssh\",\"request_id\":null,\"data\":null}" },
};
#define SCRIPT_LEN (sizeof(script) / sizeof(*script))

/* The hostile string: its first 40 bytes (all but the forged line) are what
 * the console quotes of an unknown operation_type. */
#define H "\x1b[2J" "\x1b]52;c;SEVMTE8=\x07" "\x1b]0;PWNED\x07" "\xc2\x9b" "\xe2\x80\xae" \
	  "\xe2\x81\xa6" "\xff" "\r" "\n2026-01-01 00:00:00 forged"
#define H_CODE "\x1b[2J\xe2\x80\xae"	/* a status_code: the console keeps 15 bytes */
#define CLOSE_REASON_MAX 123		/* a close frame's payload is 125 bytes */
#define LONG_CJK "会话已结束会话已结束会话已结束会话已结束会话已结束会话已结束"	/* 30 of 3 bytes */
#define BIDI_OUTPUT "BIDI-OUT:\xe2\x80\xae" "a\xe2\x81\xa6" "b\xe2\x80\xab" "c\xe2\x81\xa9" "d:END"

static int strings_mode;		/* --strings */

struct client {		/* one connected console (or one HTTP request) */
	size_t step;			/* next script step */
	int fragment;			/* next fragment of a FRAGMENTED step */
	struct sb_queue q;		/* replies once the script is done */
	struct sb_rxbuf rx;
	char request_id[64];
	char line[64];			/* --strings: the command typed so far */
	size_t line_len;
	int closing;			/* --strings: close with H as the reason */
	int http_body;			/* an HTTP request: a body is still to come */
};

static volatile sig_atomic_t stop;

/*** writing ******************************************************************/

static int write_raw(struct lws *wsi, const char *p, size_t n, enum lws_write_protocol how)
{	/* one frame (or fragment) with LWS_PRE headroom */
	unsigned char *buf = malloc(LWS_PRE + n + 1);
	int r;

	memcpy(buf + LWS_PRE, p, n);
	r = lws_write(wsi, buf + LWS_PRE, n, how) < (int)n ? -1 : 0;
	free(buf);
	return r;
}

static int write_generated(struct lws *wsi, enum kind kind)	/* NESTED, HUGE */
{
	size_t n = kind == NESTED ? 20000 : 2 * 1024 * 1024;
	char *p = malloc(n + 64);
	size_t len;
	int r;

	if (kind == NESTED) {
		memset(p, '[', n / 2);
		memset(p + n / 2, ']', n / 2);
		len = n;
	} else {
		len = (size_t)sprintf(p, "{\"operation_type\":\"command_response\",\"data\":\"");
		memset(p + len, 'A', n);
		len += n;
		len += (size_t)sprintf(p + len, "\"}");
	}
	r = write_raw(wsi, p, len, LWS_WRITE_TEXT);
	free(p);
	return r;
}

static int write_fragment(struct lws *wsi, struct client *c, const char *s)	/* 3 parts */
{
	size_t n = strlen(s), a = n / 3, b = 2 * n / 3;
	size_t from = c->fragment == 0 ? 0 : c->fragment == 1 ? a : b;
	size_t to = c->fragment == 0 ? a : c->fragment == 1 ? b : n;
	int how = (c->fragment == 0 ? LWS_WRITE_TEXT : LWS_WRITE_CONTINUATION) |
		  (c->fragment == 2 ? 0 : LWS_WRITE_NO_FIN);

	if (++c->fragment == 3) {
		c->fragment = 0;
		c->step++;
	}
	return write_raw(wsi, s + from, to - from, (enum lws_write_protocol)how);
}

static int write_step(struct lws *wsi, struct client *c)	/* the next bad frame */
{
	const struct step *s = &script[c->step];

	if (s->kind == FRAGMENTED)
		return write_fragment(wsi, c, s->bytes);
	c->step++;
	if (s->kind == NESTED || s->kind == HUGE)
		return write_generated(wsi, s->kind);
	return write_raw(wsi, s->bytes, strlen(s->bytes), s->kind == BINARY ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
}

/*** playing a device ***********************************************************/

static void reply(struct lws *wsi, struct client *c, const char *op, cJSON *data)
{	/* queues one well-formed message for the console */
	char *m = sb_envelope(op, c->request_id, data);

	if (sb_queue_push(&c->q, m, strlen(m)))
		lws_callback_on_writable(wsi);
	free(m);
}

static void strings_message(struct lws *wsi, struct client *c, const char *op, cJSON *data);

static void on_message(struct lws *wsi, struct client *c)	/* connect → banner, command → echo */
{
	cJSON *j = cJSON_ParseWithLength(c->rx.p, c->rx.len);
	cJSON *op = cJSON_GetObjectItem(j, "operation_type"), *rid = cJSON_GetObjectItem(j, "request_id");
	cJSON *data = cJSON_GetObjectItem(j, "data");

	if (cJSON_IsString(rid))
		snprintf(c->request_id, sizeof(c->request_id), "%s", rid->valuestring);
	if (strings_mode) {
		if (cJSON_IsString(op))
			strings_message(wsi, c, op->valuestring, data);
	} else if (cJSON_IsString(op) && !strcmp(op->valuestring, "ping")) {
		reply(wsi, c, "pong", NULL);	/* a live platform: the heartbeat holds */
	} else if (cJSON_IsString(op) && !strcmp(op->valuestring, "connect")) {
		reply(wsi, c, "connect_response", cJSON_CreateString("success"));
		reply(wsi, c, "command_response", cJSON_CreateString("HOSTILE-ALIVE\r\n$ "));
	} else if (cJSON_IsString(op) && !strcmp(op->valuestring, "command") && cJSON_IsString(data)) {
		reply(wsi, c, "command_response", cJSON_CreateString(data->valuestring));
		if (sb_queue_push(&c->q, "{\"operation_type\":\"zap\"}", 24))
			lws_callback_on_writable(wsi);
	}
	cJSON_Delete(j);
}

/*** --strings: a peer whose every word is hostile *******************************/

static void push_raw(struct lws *wsi, struct client *c, const char *m)	/* one frame, as is */
{
	if (sb_queue_push(&c->q, m, strlen(m)))
		lws_callback_on_writable(wsi);
}

static void strings_hello(struct lws *wsi, struct client *c)	/* online, then an unknown op */
{
	char *m = sb_envelope("connect_tunnel", NULL, NULL);

	push_raw(wsi, c, m);
	free(m);
	m = sb_envelope(H, NULL, NULL);
	push_raw(wsi, c, m);
	free(m);
}

static void strings_command(struct lws *wsi, struct client *c)	/* a whole typed line */
{
	char *m = NULL;

	reply(wsi, c, "command_response", cJSON_CreateString("\r\n"));
	if (!strcmp(c->line, "bye"))
		reply(wsi, c, "disconnect", sb_status(H_CODE, H));
	else if (!strcmp(c->line, "tunnel"))
		m = sb_envelope("disconnect", NULL, sb_status(H_CODE, H));
	else if (!strcmp(c->line, "long"))	/* ordinary words, just long and not ASCII */
		reply(wsi, c, "disconnect", sb_status("400", LONG_CJK));
	else if (!strcmp(c->line, "bidi"))	/* bidi controls as terminal output */
		reply(wsi, c, "command_response", cJSON_CreateString(BIDI_OUTPUT "\r\n$ "));
	else if (!strcmp(c->line, "close")) {
		c->closing = 1;
		lws_callback_on_writable(wsi);
	} else
		reply(wsi, c, "command_response", cJSON_CreateString("$ "));
	if (m)
		push_raw(wsi, c, m);
	free(m);
	c->line_len = 0;
	c->line[0] = '\0';
}

static void strings_message(struct lws *wsi, struct client *c, const char *op, cJSON *data)
{
	if (!strcmp(op, "ping")) {
		reply(wsi, c, "pong", NULL);
	} else if (!strcmp(op, "connect")) {
		reply(wsi, c, "connect_response", cJSON_CreateString(H));
		reply(wsi, c, "command_response", cJSON_CreateString("STRINGS-READY\r\n$ "));
	} else if (!strcmp(op, "command") && cJSON_IsString(data)) {
		for (const char *k = data->valuestring; *k; k++) {
			char echo[2] = { *k, '\0' };

			if (*k == '\r') {
				strings_command(wsi, c);
				continue;
			}
			reply(wsi, c, "command_response", cJSON_CreateString(echo));	/* as a PTY echoes */
			if (c->line_len + 1 < sizeof(c->line)) {
				c->line[c->line_len++] = *k;
				c->line[c->line_len] = '\0';
			}
		}
	}
}

static int strings_close(struct lws *wsi)	/* a close frame whose reason is H, padded to 123 bytes */
{
	unsigned char reason[CLOSE_REASON_MAX];

	memset(reason, '.', sizeof(reason));
	memcpy(reason, H " close-reason", sizeof(H " close-reason") - 1);
	lws_close_reason(wsi, (enum lws_close_status)4001, reason, sizeof(reason));
	return -1;
}

/* Any HTTP request: 400 with the API's error shape, every word hostile. */
static int strings_http_answer(struct lws *wsi)
{
	cJSON *e = cJSON_CreateObject();
	char *body;
	unsigned char head[LWS_PRE + 512], *start = head + LWS_PRE, *p = start, *end = head + sizeof(head);
	unsigned char *out;
	size_t n;
	int r = -1;

	cJSON_AddStringToObject(e, "error_code", H);
	cJSON_AddStringToObject(e, "error_msg", H);
	body = cJSON_PrintUnformatted(e);
	cJSON_Delete(e);
	n = strlen(body);
	out = malloc(LWS_PRE + n);
	memcpy(out + LWS_PRE, body, n);
	if (!lws_add_http_common_headers(wsi, HTTP_STATUS_BAD_REQUEST, "application/json", n, &p, end) &&
	    !lws_finalize_write_http_header(wsi, start, &p, end) &&
	    lws_write(wsi, out + LWS_PRE, n, LWS_WRITE_HTTP_FINAL) == (int)n)
		r = lws_http_transaction_completed(wsi) ? -1 : 0;
	sb_log("answered an HTTP request: 400");
	free(out);
	free(body);
	return r;
}

/*** the lws callback ***********************************************************/

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct client *c = user;

	switch (reason) {
	case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
		sb_log("connection accepted");	/* before any TLS: every attempt counts */
		break;
	case LWS_CALLBACK_ESTABLISHED:
		memset(c, 0, sizeof(*c));
		if (strings_mode) {
			c->step = SCRIPT_LEN;	/* no garbage: only hostile words */
			strings_hello(wsi, c);
		}
		lws_callback_on_writable(wsi);
		break;
	case LWS_CALLBACK_HTTP:
		if (!strings_mode)
			break;
		c->http_body = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0;
		if (!c->http_body)	/* else the answer waits for the body */
			lws_callback_on_writable(wsi);
		return 0;
	case LWS_CALLBACK_HTTP_BODY:
		if (strings_mode)
			return 0;
		break;
	case LWS_CALLBACK_HTTP_BODY_COMPLETION:
		if (!strings_mode)
			break;
		c->http_body = 0;
		lws_callback_on_writable(wsi);
		return 0;
	case LWS_CALLBACK_HTTP_WRITEABLE:
		if (strings_mode && !c->http_body)
			return strings_http_answer(wsi);
		break;
	case LWS_CALLBACK_SERVER_WRITEABLE:
		if (c->closing && !c->q.head)
			return strings_close(wsi);
		if (c->step < SCRIPT_LEN ? write_step(wsi, c) : sb_queue_write(&c->q, wsi) < 0)
			return -1;
		if (c->step < SCRIPT_LEN || c->q.head || c->closing)
			lws_callback_on_writable(wsi);
		break;
	case LWS_CALLBACK_RECEIVE:
		if (sb_rx_append(&c->rx, in, len, 1 << 20) < 0)
			return -1;
		if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi)) {
			on_message(wsi, c);
			c->rx.len = 0;
		}
		break;
	case LWS_CALLBACK_CLOSED:
		sb_queue_clear(&c->q);
		sb_rx_free(&c->rx);
		break;
	default:
		break;
	}
	return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static void on_signal(int sig)	/* SIGTERM/SIGINT: leave the loop */
{
	(void)sig;
	stop = 1;
}

static void usage(void)
{
	fputs("usage: hostile-relay [--strings] [--cert FILE --key FILE]\n", stderr);
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct lws_protocols protocols[] = {
		{ "hostile", callback, sizeof(struct client), 4096, 0, NULL, 0 },
		{ NULL, NULL, 0, 0, 0, NULL, 0 } };
	struct lws_context_creation_info info;
	struct lws_context *ctx;
	const char *cert = NULL, *key = NULL;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--strings"))
			strings_mode = 1;
		else if (!strcmp(argv[i], "--cert") && i + 1 < argc)
			cert = argv[++i];
		else if (!strcmp(argv[i], "--key") && i + 1 < argc)
			key = argv[++i];
		else
			usage();
	}
	if (!cert != !key)
		usage();
	sb_prog = "hostile-relay";
	lws_set_log_level(LLL_ERR, sb_lws_log);
	memset(&info, 0, sizeof(info));
	info.port = 0;
	info.iface = "127.0.0.1";
	info.protocols = protocols;
	info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS | (cert ? LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT : 0);
	info.ssl_cert_filepath = cert;
	info.ssl_private_key_filepath = key;
	ctx = lws_create_context(&info);
	if (!ctx || !lws_create_vhost(ctx, &info))
		return 1;
	printf("listening on %s://127.0.0.1:%d\n", cert ? "wss" : "ws", lws_get_vhost_listen_port(lws_get_vhost_by_name(ctx, "default")));
	fflush(stdout);
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	while (!stop && lws_service(ctx, 0) >= 0)
		;
	lws_context_destroy(ctx);
	return 0;
}
