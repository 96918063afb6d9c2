/*
 * hostile-relay: a platform that misbehaves, for the console's fault tests.
 *
 * Any WebSocket client that connects is sent a script of bad frames (not
 * JSON, binary, truncated, deeply nested, oversized, invalid UTF-8, unknown
 * operation types and request_ids, fragmented, trailing garbage), then a
 * valid connect_tunnel.  After that it plays a trivial device: a connect
 * gets a banner, every command is echoed back, each echo followed by one
 * more bad frame, and pings are answered.  A console that survives all of it and still echoes is
 * what the test asserts.  Prints "listening on ws://127.0.0.1:PORT".
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

struct client {		/* one connected console */
	size_t step;			/* next script step */
	int fragment;			/* next fragment of a FRAGMENTED step */
	struct sb_queue q;		/* replies once the script is done */
	struct sb_rxbuf rx;
	char request_id[64];
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

static void on_message(struct lws *wsi, struct client *c)	/* connect → banner, command → echo */
{
	cJSON *j = cJSON_ParseWithLength(c->rx.p, c->rx.len);
	cJSON *op = cJSON_GetObjectItem(j, "operation_type"), *rid = cJSON_GetObjectItem(j, "request_id");
	cJSON *data = cJSON_GetObjectItem(j, "data");

	if (cJSON_IsString(rid))
		snprintf(c->request_id, sizeof(c->request_id), "%s", rid->valuestring);
	if (cJSON_IsString(op) && !strcmp(op->valuestring, "ping")) {
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

/*** the lws callback ***********************************************************/

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct client *c = user;

	switch (reason) {
	case LWS_CALLBACK_ESTABLISHED:
		memset(c, 0, sizeof(*c));
		lws_callback_on_writable(wsi);
		break;
	case LWS_CALLBACK_SERVER_WRITEABLE:
		if (c->step < SCRIPT_LEN ? write_step(wsi, c) : sb_queue_write(&c->q, wsi) < 0)
			return -1;
		if (c->step < SCRIPT_LEN || c->q.head)
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

int main(void)
{
	static const struct lws_protocols protocols[] = {
		{ "hostile", callback, sizeof(struct client), 4096, 0, NULL, 0 },
		{ NULL, NULL, 0, 0, 0, NULL, 0 } };
	struct lws_context_creation_info info;
	struct lws_context *ctx;

	sb_prog = "hostile-relay";
	lws_set_log_level(LLL_ERR, sb_lws_log);
	memset(&info, 0, sizeof(info));
	info.port = 0;
	info.iface = "127.0.0.1";
	info.protocols = protocols;
	info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
	ctx = lws_create_context(&info);
	if (!ctx || !lws_create_vhost(ctx, &info))
		return 1;
	printf("listening on ws://127.0.0.1:%d\n", lws_get_vhost_listen_port(lws_get_vhost_by_name(ctx, "default")));
	fflush(stdout);
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	while (!stop && lws_service(ctx, 0) >= 0)
		;
	lws_context_destroy(ctx);
	return 0;
}
