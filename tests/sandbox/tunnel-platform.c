/* tunnel-platform.c: the sandbox secure-tunnel platform, a WebSocket relay.
 *
 * It stands in for Huawei IoTDA's tunnel service in tests and demos.  An
 * application (tunnel_tui) connects to /v5/iot/tunnels/{id}/source-connect and
 * a device agent to /v5/iot/tunnels/{id}/device-connect, each with its
 * tunnel_access_token header.  The relay passes their JSON messages across
 * byte for byte and speaks a few itself: connect_tunnel, pong, disconnect.
 * It also serves the IoTDA tunnel REST API and injects faults for tests.
 * The contract is PROTOCOL.md, sections 1-3 and 7.
 *
 * One thread, one lws event loop.  Every delay is an lws_sul timer; signals
 * arrive through a signalfd adopted into the loop.  No message content and no
 * token ever reaches the log.
 *
 * Contents, one banner each:
 *   tunables
 *   types           struct relay, struct tunnel, struct peer
 *   helpers         ids, tokens, times, files
 *   sending         per-connection queue, delay line, flow control
 *   peers           attach, replace, gone, close, drop
 *   tunnels         create, find, expire, close, free
 *   relaying        one whole inbound message, fault injection
 *   handshake       route and token check: 401/404, or close 1002
 *   REST            route table, handlers, replies
 *   the lws callback
 *   signals         SIGTERM/SIGINT quit, SIGUSR1 drops every device
 *   command line    option table, tunnels file
 *   main
 */
#include "sandbox.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

/*** tunables ***************************************************************/

#define DEFAULT_LISTEN		"127.0.0.1:8443"
#define DEFAULT_MAX_MESSAGE	10240		/* PROTOCOL.md §1: 10 KB a message */
#define DEFAULT_EXPIRES_IN	86400		/* seconds a tunnel's tokens live */
#define QUEUE_HIGH		(256 * 1024)	/* backlog that pauses the sources */
#define QUEUE_LOW		(QUEUE_HIGH / 2) /* backlog that resumes them */
#define TOKEN_MAX		256		/* PROTOCOL.md §1 */
#define ID_MAX			128		/* tunnel, project and device ids */
#define TOKEN_BYTES		24		/* random bytes: 32 base64 chars */
#define PATH_LEN		512		/* longest request path we route */
#define REST_BODY_MAX		(64 * 1024)	/* larger request bodies get 413 */
#define RX_CHUNK		16384		/* lws receive buffer per connection */
#define HEADER_MAX		4096		/* room for long tokens in headers */
#define MAX_MESSAGE_LIMIT	(16 * 1024 * 1024) /* --max-message at most */
#define DELAY_MAX_MS		600000		/* --delay-ms at most */
#define EXPIRES_MAX		(10L * 365 * 86400) /* expires_in at most */
#define FILE_MAX		(1 << 20)	/* tunnels and token files */

/*** types ******************************************************************/

enum role { ROLE_APP, ROLE_DEVICE, ROLES };
static const char *const role_name[ROLES] = { "app", "device" };

struct relay {			/* the whole program's state */
	struct lws_context *ctx;
	struct lws_vhost *vh;
	lws_dll2_owner_t tunnels;	/* struct tunnel, by creation */
	/* options */
	char host[64];			/* as given to --listen, for URLs */
	int port;			/* the real one once listening */
	const char *cert, *key, *tunnels_file;
	char *api_token;		/* NULL: the REST API is off */
	int auth_close;
	size_t max_message;
	int delay_ms;
	int cut_role;			/* -1: no --cut-after */
	unsigned long cut_after;
	long stall_after;		/* -1: no --stall-after */
	/* state */
	unsigned long relayed;		/* messages relayed, all tunnels */
	uint64_t serials;		/* last peer serial handed out */
	int stalled, quit, exiting;
};

struct delayed {		/* one message waiting in the delay line */
	struct delayed *next;
	lws_usec_t due;
	enum role to;
	uint64_t to_serial;		/* dropped unless that peer is still there */
	size_t len;
	char data[];
};

struct tunnel {			/* one tunnel: its tokens and its two connections */
	lws_dll2_t list;
	struct relay *r;
	char id[ID_MAX + 1], device_id[ID_MAX + 1];
	char *token[ROLES];		/* source (app) and device tokens */
	time_t created, closed_at, expires_at, state_time[ROLES];
	int closed, expired;
	struct peer *peer[ROLES];	/* the live connection of each role */
	unsigned long relayed_from[ROLES], dropped;
	int full[ROLES];		/* backlog toward the role over the mark */
	struct delayed *dq_head, *dq_tail;
	size_t delayed_bytes[ROLES];
	lws_sorted_usec_list_t delay_sul, expiry_sul;
};

struct rest_call {		/* one HTTP request/response on a connection */
	int method;			/* LWSHUMETH_*, -1 unknown */
	char path[PATH_LEN];
	struct sb_rxbuf body;
	int body_too_big;
	unsigned char *reply;		/* LWS_PRE headroom, then reply_len */
	size_t reply_len;
};

/* Whoever is at the other end of one connection: an app or a device once
 * upgraded to WebSocket, a REST caller before.  lws allocates it per wsi. */
struct peer {
	struct relay *r;
	struct lws *wsi;
	struct tunnel *t;		/* NULL once replaced, gone or refused */
	struct tunnel *pending;		/* chosen at the handshake */
	enum role role;
	uint64_t serial;
	int refused;			/* --auth-close: 401/404 owed as 1002 */
	int rx_off;			/* we told lws to stop reading it */
	int close_code;			/* close with this once the queue drains */
	const char *close_why;
	struct sb_queue q;
	struct sb_rxbuf rx;
	struct rest_call call;
};

struct rest_args {		/* what a REST handler gets and gives */
	struct relay *r;
	struct peer *p;
	char project[ID_MAX + 1], tunnel[ID_MAX + 1];	/* from the path; any project */
	cJSON *out;
};


/*** helpers ****************************************************************/

static int valid_id(const char *s, size_t len)	/* 1-128 of [A-Za-z0-9_-] */
{
	size_t i;

	if (len < 1 || len > ID_MAX)
		return 0;
	for (i = 0; i < len; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
			return 0;
	return 1;
}

static int valid_token(const char *s)	/* 1-256 visible ASCII characters */
{
	size_t i, len = strlen(s);

	if (len < 1 || len > TOKEN_MAX)
		return 0;
	for (i = 0; i < len; i++)
		if (s[i] < 0x21 || s[i] > 0x7e)
			return 0;
	return 1;
}

/* Compares digests, not the strings, so the time taken tells nothing about
 * where the first difference is, nor the length of the secret. */
static int token_equal(const char *a, const char *b)	/* constant-time equality */
{
	unsigned char da[SHA256_DIGEST_LENGTH], db[SHA256_DIGEST_LENGTH];

	SHA256((const unsigned char *)a, strlen(a), da);
	SHA256((const unsigned char *)b, strlen(b), db);
	return CRYPTO_memcmp(da, db, sizeof da) == 0;
}

static char *random_token(void)	/* malloc'd base64 of fresh random bytes */
{
	unsigned char raw[TOKEN_BYTES];
	char *s = malloc(4 * ((TOKEN_BYTES + 2) / 3) + 1);

	if (!s || RAND_bytes(raw, sizeof raw) != 1)
		abort();
	EVP_EncodeBlock((unsigned char *)s, raw, sizeof raw);
	OPENSSL_cleanse(raw, sizeof raw);
	return s;
}

static void uuid4(char out[37])	/* a random UUID, as IoTDA's tunnel ids */
{
	unsigned char b[16];

	if (RAND_bytes(b, sizeof b) != 1)
		abort();
	b[6] = (b[6] & 0x0f) | 0x40;
	b[8] = (b[8] & 0x3f) | 0x80;
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
		 "%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4], b[5],
		 b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static void iotda_time(time_t t, char out[17])	/* yyyyMMdd'T'HHmmss'Z', UTC */
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}

static void add_time(cJSON *o, const char *name, time_t t)	/* one IoTDA timestamp member */
{
	char s[17];

	iotda_time(t, s);
	cJSON_AddStringToObject(o, name, s);
}

static char *read_file(const char *path, size_t *len)	/* whole file, NUL-terminated */
{
	FILE *f = fopen(path, "rb");
	char *buf = malloc(FILE_MAX + 1);
	size_t n = 0;

	if (!buf)
		abort();
	if (f) {
		n = fread(buf, 1, FILE_MAX + 1, f);
		fclose(f);
	}
	if (!f || n > FILE_MAX) {
		sb_log("%s: %s", path, f ? "too big" : strerror(errno));
		free(buf);
		return NULL;
	}
	buf[n] = '\0';
	*len = n;
	return buf;
}

static void rest_call_free(struct rest_call *c)	/* forgets one request */
{
	sb_rx_free(&c->body);
	free(c->reply);
	memset(c, 0, sizeof(*c));
}

/* The range test comes before the cast: a double beyond long is undefined. */
static long json_seconds(const cJSON *v, long dflt)	/* whole seconds; dflt if absent, -1 if bad */
{
	if (!v)
		return dflt;
	if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble <= EXPIRES_MAX))
		return -1;
	return (long)v->valuedouble;
}

static int parse_long(const char *s, long lo, long hi, long *out)	/* strict decimal in [lo, hi] */
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}


/*** sending ****************************************************************/

static size_t backlog(const struct tunnel *t, enum role to)	/* bytes not yet written toward a role */
{
	return (t->peer[to] ? t->peer[to]->q.bytes : 0) + t->delayed_bytes[to];
}

static void peer_rx(struct peer *p, int on)	/* reads a connection or not (stall wins) */
{
	if (!p || p->r->exiting)
		return;
	on = on && !p->r->stalled;
	if (on == !p->rx_off)
		return;
	p->rx_off = !on;
	lws_rx_flow_control(p->wsi, on);
}

/* Whoever feeds a full backlog stops being read until it halves: the device
 * feeds the app, the app feeds the device and (with its pings) itself. */
static void tunnel_flow(struct tunnel *t)	/* applies flow control to both peers */
{
	int i;

	if (t->r->exiting)
		return;
	for (i = 0; i < ROLES; i++) {
		size_t b = backlog(t, i);

		if (!t->full[i] && b > QUEUE_HIGH)
			t->full[i] = 1;
		else if (t->full[i] && b < QUEUE_LOW)
			t->full[i] = 0;
	}
	peer_rx(t->peer[ROLE_APP], !t->full[ROLE_APP] && !t->full[ROLE_DEVICE]);
	peer_rx(t->peer[ROLE_DEVICE], !t->full[ROLE_APP]);
}

static void delay_clear(struct tunnel *t)	/* forgets every message in the delay line */
{
	while (t->dq_head) {
		struct delayed *d = t->dq_head;

		t->dq_head = d->next;
		free(d);
	}
	t->dq_tail = NULL;
	t->delayed_bytes[ROLE_APP] = t->delayed_bytes[ROLE_DEVICE] = 0;
	lws_sul_cancel(&t->delay_sul);
}

static void peer_send(struct peer *p, const char *m, size_t len)	/* queues one frame on this connection */
{
	if (sb_queue_push(&p->q, m, len))
		lws_callback_on_writable(p->wsi);
}

static void peer_say(struct peer *p, const char *op, const char *rid, cJSON *data)	/* a platform message, now */
{
	char *m = sb_envelope(op, rid, data);

	peer_send(p, m, strlen(m));
	free(m);
}

static void delay_fire(lws_sorted_usec_list_t *sul)	/* delay timer: delivers what is due */
{
	struct tunnel *t = lws_container_of(sul, struct tunnel, delay_sul);
	lws_usec_t now = lws_now_usecs();

	while (t->dq_head && t->dq_head->due <= now) {
		struct delayed *d = t->dq_head;
		struct peer *p = t->peer[d->to];

		t->dq_head = d->next;
		t->delayed_bytes[d->to] -= d->len;
		if (p && p->serial == d->to_serial)
			peer_send(p, d->data, d->len);
		free(d);
	}
	if (!t->dq_head)
		t->dq_tail = NULL;
	else
		lws_sul_schedule(t->r->ctx, 0, &t->delay_sul, delay_fire, t->dq_head->due - now);
	tunnel_flow(t);
}

/* One line for both directions keeps the order of everything sent, and a
 * constant delay keeps the line sorted by due time. */
static void delay_push(struct tunnel *t, struct peer *p, const char *m, size_t len)	/* holds a message back */
{
	struct delayed *d = malloc(sizeof(*d) + len);
	lws_usec_t us = (lws_usec_t)t->r->delay_ms * LWS_US_PER_MS;

	if (!d)
		abort();
	d->next = NULL;
	d->due = lws_now_usecs() + us;
	d->to = p->role;
	d->to_serial = p->serial;
	d->len = len;
	memcpy(d->data, m, len);
	t->delayed_bytes[p->role] += len;
	if (t->dq_tail)
		t->dq_tail->next = d;
	else {
		t->dq_head = d;
		lws_sul_schedule(t->r->ctx, 0, &t->delay_sul, delay_fire, us);
	}
	t->dq_tail = d;
}

static void tunnel_send(struct tunnel *t, enum role to, const char *m, size_t len)	/* to a role, via the delay line */
{
	struct peer *p = t->peer[to];

	if (!p)
		return;
	if (t->r->delay_ms)
		delay_push(t, p, m, len);
	else
		peer_send(p, m, len);
	tunnel_flow(t);
}

static void tunnel_say(struct tunnel *t, enum role to, const char *op, const char *rid,
		       cJSON *data)	/* a platform message to a role */
{
	char *m = sb_envelope(op, rid, data);

	tunnel_send(t, to, m, strlen(m));
	free(m);
}

/*** peers ******************************************************************/

static void tunnel_unlink(struct tunnel *t, struct peer *p)	/* the tunnel forgets this connection */
{
	t->peer[p->role] = NULL;
	p->t = NULL;
	t->state_time[p->role] = time(NULL);
	peer_rx(p, 1);	/* it still has its closing handshake to read */
	tunnel_flow(t);
}

/* Sends the rest of the queue, then closes with code (see peer_writable). */
static void peer_close(struct peer *p, int code, const char *why)	/* asks for a WebSocket close */
{
	if (p->close_code)
		return;
	p->close_code = code;
	p->close_why = why;
	lws_callback_on_writable(p->wsi);
}

static void peer_gone(struct peer *p)	/* an attached connection ended: the app hears of a device's */
{
	struct tunnel *t = p->t;

	sb_log("tunnel %s: %s gone", t->id, role_name[p->role]);
	tunnel_unlink(t, p);
	if (p->role == ROLE_DEVICE)
		tunnel_say(t, ROLE_APP, "disconnect", NULL,
			   sb_status("410", "the device's connection went away"));
}

static void peer_replaced(struct peer *old)	/* a newer connection of the same role took over */
{
	struct tunnel *t = old->t;

	sb_log("tunnel %s: replaced %s", t->id, role_name[old->role]);
	tunnel_unlink(t, old);
	if (old->role == ROLE_APP) {
		peer_say(old, "disconnect", NULL,
			 sb_status("409", "replaced by a newer connection"));
	} else {
		sb_queue_clear(&old->q);
		tunnel_say(t, ROLE_APP, "disconnect", NULL,
			   sb_status("410", "the device's connection was replaced by a newer one"));
	}
	peer_close(old, 4000, "replaced by a newer connection");
}

static void peer_attach(struct peer *p, struct tunnel *t)	/* makes p the tunnel's connection of its role */
{
	if (t->peer[p->role])
		peer_replaced(t->peer[p->role]);
	t->peer[p->role] = p;
	p->t = t;
	t->state_time[p->role] = time(NULL);
	sb_log("tunnel %s: %s connected", t->id, role_name[p->role]);
	if (t->peer[ROLE_APP] && t->peer[ROLE_DEVICE])
		tunnel_say(t, ROLE_APP, "connect_tunnel", NULL, NULL);
	tunnel_flow(t);
}

/* Shutting the socket first guarantees lws can send nothing more, not even
 * a close frame; linger 0 makes the final close() a reset. */
static void peer_drop(struct peer *p)	/* ends the TCP connection at once */
{
	int fd = lws_get_socket_fd(p->wsi);
	struct linger lg = { 1, 0 };

	if (p->t)
		peer_gone(p);
	sb_queue_clear(&p->q);
	if (fd >= 0) {
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
		shutdown(fd, SHUT_RDWR);
	}
	lws_set_timeout(p->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

static int peer_writable(struct peer *p)	/* writes one frame, or the pending close */
{
	int n = sb_queue_write(&p->q, p->wsi);

	if (n < 0)
		return -1;
	if (n > 0)
		lws_callback_on_writable(p->wsi);
	else if (p->close_code) {
		lws_close_reason(p->wsi, p->close_code, (unsigned char *)p->close_why,
				 strlen(p->close_why));
		return -1;
	}
	if (p->t)
		tunnel_flow(p->t);
	return 0;
}

static void peer_closed(struct peer *p)	/* lws is freeing the connection */
{
	if (p->t && p->r->exiting)
		tunnel_unlink(p->t, p);
	else if (p->t)
		peer_gone(p);
	sb_queue_clear(&p->q);
	sb_rx_free(&p->rx);
}

static void ws_established(struct peer *p)	/* the upgrade is done: join, or close 1002 */
{
	struct relay *r = p->r;

	if (p->refused) {
		peer_close(p, 1002, "authentication failed");
		return;
	}
	if (r->stalled) {	/* a dead relay answers nothing */
		sb_log("tunnel %s: %s connected to a stalled relay", p->pending->id,
		       role_name[p->role]);
		peer_rx(p, 0);
		return;
	}
	peer_attach(p, p->pending);
}

/*** tunnels ****************************************************************/

static struct tunnel *tunnel_find(struct relay *r, const char *id)	/* by tunnel_id, or NULL */
{
	lws_dll2_t *d;

	for (d = lws_dll2_get_head(&r->tunnels); d; d = d->next) {
		struct tunnel *t = lws_container_of(d, struct tunnel, list);

		if (!strcmp(t->id, id))
			return t;
	}
	return NULL;
}

static long tunnel_expires_in(const struct tunnel *t)	/* seconds the tokens have left */
{
	long left = (long)(t->expires_at - time(NULL));

	return t->expired || left < 0 ? 0 : left;
}

/* Both connections get a platform disconnect and a normal close; the tunnel
 * forgets them first, so neither counts as "device gone". */
static void tunnel_evict(struct tunnel *t, const char *code, const char *msg)	/* ends both connections */
{
	int i;

	for (i = 0; i < ROLES; i++) {
		struct peer *p = t->peer[i];

		if (!p)
			continue;
		tunnel_unlink(t, p);
		peer_say(p, "disconnect", NULL, sb_status(code, msg));
		peer_close(p, 1000, msg);
	}
	delay_clear(t);
}

static void tunnel_expire(lws_sorted_usec_list_t *sul)	/* expiry timer: tokens are dead */
{
	struct tunnel *t = lws_container_of(sul, struct tunnel, expiry_sul);

	t->expired = 1;
	sb_log("tunnel %s: token expired", t->id);
	tunnel_evict(t, "401", "the tunnel access token expired");
}

static void tunnel_arm(struct tunnel *t)	/* schedules the expiry, or expires now */
{
	long left = (long)(t->expires_at - time(NULL));

	if (left <= 0)
		t->expired = 1;
	else
		lws_sul_schedule(t->r->ctx, 0, &t->expiry_sul, tunnel_expire,
				 (lws_usec_t)left * LWS_US_PER_SEC);
}

/* Tokens NULL: fresh random ones.  device_token NULL: same as the source's. */
static struct tunnel *tunnel_new(struct relay *r, const char *id, const char *device_id,
				 const char *source_token, const char *device_token,
				 long expires_in)	/* a new open tunnel, listed */
{
	struct tunnel *t = calloc(1, sizeof(*t));

	if (!t)
		abort();
	t->r = r;
	snprintf(t->id, sizeof t->id, "%s", id);
	snprintf(t->device_id, sizeof t->device_id, "%s", device_id);
	t->token[ROLE_APP] = source_token ? strdup(source_token) : random_token();
	t->token[ROLE_DEVICE] = device_token ? strdup(device_token) :
		source_token ? strdup(source_token) : random_token();
	if (!t->token[ROLE_APP] || !t->token[ROLE_DEVICE])
		abort();
	t->created = t->state_time[ROLE_APP] = t->state_time[ROLE_DEVICE] = time(NULL);
	t->expires_at = t->created + expires_in;
	lws_dll2_add_tail(&t->list, &r->tunnels);
	return t;
}

static void tunnel_close(struct tunnel *t)	/* REST close: evicts, refuses later connects */
{
	if (t->closed)
		return;
	t->closed = 1;
	t->closed_at = time(NULL);
	lws_sul_cancel(&t->expiry_sul);
	sb_log("tunnel %s: closed", t->id);
	tunnel_evict(t, "404", "the tunnel was closed");
}

static void tunnel_free(struct tunnel *t)	/* unlists and frees a tunnel with no peers */
{
	int i;

	lws_dll2_remove(&t->list);
	lws_sul_cancel(&t->expiry_sul);
	delay_clear(t);
	for (i = 0; i < ROLES; i++) {
		OPENSSL_cleanse(t->token[i], strlen(t->token[i]));
		free(t->token[i]);
	}
	free(t);
}

/*** relaying ***************************************************************/

static void relay_stall(struct relay *r)	/* --stall-after: stops reading everything */
{
	lws_dll2_t *d;

	sb_log("stalled after %lu relayed messages: reading and answering nothing",
	       r->relayed);
	r->stalled = 1;
	for (d = lws_dll2_get_head(&r->tunnels); d; d = d->next)
		tunnel_flow(lws_container_of(d, struct tunnel, list));
}

static void relay_count(struct peer *from)	/* counts a relayed message; fires the fault options */
{
	struct relay *r = from->r;
	struct tunnel *t = from->t;
	unsigned long n = ++t->relayed_from[from->role];

	r->relayed++;
	if (r->cut_role == (int)from->role && n == r->cut_after) {
		sb_log("tunnel %s: cutting the %s connection after %lu messages", t->id,
		       role_name[from->role], n);
		peer_drop(from);
	}
	if (r->stall_after >= 0 && r->relayed == (unsigned long)r->stall_after)
		relay_stall(r);
}

static int answer_ping(struct peer *p, const char *msg, size_t len)	/* 1 if msg was an app's ping */
{
	cJSON *m = cJSON_ParseWithLength(msg, len);
	cJSON *op = cJSON_GetObjectItemCaseSensitive(m, "operation_type");
	cJSON *rid = cJSON_GetObjectItemCaseSensitive(m, "request_id");
	int ping = cJSON_IsString(op) && !strcmp(op->valuestring, "ping");

	if (ping)
		tunnel_say(p->t, ROLE_APP, "pong", cJSON_IsString(rid) ? rid->valuestring : NULL,
			   NULL);
	cJSON_Delete(m);
	return ping;
}

static void relay_message(struct peer *p, const char *msg, size_t len)	/* one whole inbound message */
{
	struct tunnel *t = p->t;
	enum role to = p->role == ROLE_APP ? ROLE_DEVICE : ROLE_APP;

	if (p->role == ROLE_APP && answer_ping(p, msg, len))
		return;
	if (!t->peer[to]) {
		t->dropped++;
		sb_log("tunnel %s: dropped a message from the %s: no %s connected (%lu dropped)",
		       t->id, role_name[p->role], role_name[to], t->dropped);
		return;
	}
	tunnel_send(t, to, msg, len);
	relay_count(p);
}

static void peer_oversize(struct peer *p)	/* a message over --max-message: 413, close 1009 */
{
	struct tunnel *t = p->t;
	size_t max = p->r->max_message;
	char why[96];

	sb_log("tunnel %s: message over %zu bytes from the %s (413, closing 1009)", t->id, max,
	       role_name[p->role]);
	snprintf(why, sizeof why, "a message over %zu bytes from the %s", max,
		 role_name[p->role]);
	p->rx.len = 0;
	if (p->role == ROLE_APP)
		peer_say(p, "disconnect", NULL, sb_status("413", why));
	else
		tunnel_say(t, ROLE_APP, "disconnect", NULL, sb_status("413", why));
	peer_gone(p);
	peer_close(p, 1009, "message too big");
}

/* Fragments and partial frames are gathered into p->rx first; the size cap
 * counts what lws says is still to come, so an oversized frame is refused at
 * its first chunk rather than buffered. */
static int peer_receive(struct peer *p, const void *in, size_t len)	/* one chunk of a message */
{
	size_t rest = lws_remaining_packet_payload(p->wsi);
	size_t max = p->r->max_message;

	if (!p->t || p->r->stalled)
		return 0;	/* replaced, refused, closing or dead: ignored */
	if (p->rx.len + len + rest > max || sb_rx_append(&p->rx, in, len, max) < 0) {
		peer_oversize(p);
		return 0;
	}
	if (rest || !lws_is_final_fragment(p->wsi))
		return 0;
	relay_message(p, p->rx.p, p->rx.len);
	p->rx.len = 0;
	return 0;
}

/*** handshake **************************************************************/

static const struct ws_route {	/* the two WebSocket routes */
	const char *prefix, *suffix;
	enum role role;
} ws_routes[] = {
	{ "/v5/iot/tunnels/", "/source-connect", ROLE_APP },
	{ "/v5/iot/tunnels/", "/device-connect", ROLE_DEVICE },
};

static int ws_route(const char *path, char id[ID_MAX + 1], enum role *role)	/* 0 if path is a route */
{
	size_t i, len = strlen(path);

	for (i = 0; i < LWS_ARRAY_SIZE(ws_routes); i++) {
		const struct ws_route *w = &ws_routes[i];
		size_t pl = strlen(w->prefix), sl = strlen(w->suffix);

		if (len <= pl + sl || strncmp(path, w->prefix, pl) ||
		    strcmp(path + len - sl, w->suffix) || !valid_id(path + pl, len - pl - sl))
			continue;
		memcpy(id, path + pl, len - pl - sl);
		id[len - pl - sl] = '\0';
		*role = w->role;
		return 0;
	}
	return -1;
}

static int token_matches(char got[TOKEN_MAX + 1], int n, const char *want)	/* checks, then wipes, a header value */
{
	int ok = n > 0 && n <= TOKEN_MAX && token_equal(got, want);

	OPENSSL_cleanse(got, TOKEN_MAX + 1);
	return ok;
}

static int ws_token_ok(struct lws *wsi, const char *want)	/* tunnel_access_token is want */
{
	char got[TOKEN_MAX + 1] = "";
	int n = lws_hdr_custom_length(wsi, "tunnel_access_token:", 20);

	if (n > 0 && n <= TOKEN_MAX)
		n = lws_hdr_custom_copy(wsi, got, sizeof got, "tunnel_access_token:", 20);
	return token_matches(got, n, want);
}

static int ws_check(struct peer *p, const char *path, char id[ID_MAX + 1],
		    const char **why)	/* 0, or 401/404 and why, for the log */
{
	struct tunnel *t;

	*why = "bad WebSocket path";
	if (ws_route(path, id, &p->role))
		return 404;
	t = tunnel_find(p->r, id);
	*why = !t ? "unknown tunnel" : "closed tunnel";
	if (!t || t->closed)
		return 404;
	*why = t->expired ? "expired token for tunnel" : "auth failed for tunnel";
	if (t->expired || !ws_token_ok(p->wsi, t->token[p->role]))
		return 401;
	p->pending = t;
	return 0;
}

/* lws 4.1 only drops the socket when this callback refuses, so the status
 * line, headers and body are written here by hand (DESIGN.md). */
static int ws_refuse_http(struct lws *wsi, int status)	/* answers 401/404, then -1 */
{
	unsigned char buf[LWS_PRE + 768], *start = buf + LWS_PRE, *q = start;
	unsigned char *end = buf + sizeof buf - 1;
	const char *body = status == 401 ?
		"{\"error_code\":\"IOTDA.000002\",\"error_msg\":\"the tunnel access token is invalid or expired\"}" :
		"{\"error_code\":\"IOTDA.014000\",\"error_msg\":\"the tunnel does not exist or is closed\"}";
	size_t blen = strlen(body);

	if (lws_add_http_common_headers(wsi, status, "application/json", blen, &q, end) ||
	    lws_finalize_http_header(wsi, &q, end) || (size_t)(end - q) < blen)
		return -1;
	memcpy(q, body, blen);
	q += blen;
	lws_write(wsi, start, lws_ptr_diff(q, start), LWS_WRITE_HTTP_HEADERS);
	return -1;
}

static int ws_filter(struct relay *r, struct peer *p, struct lws *wsi)	/* vets an upgrade request */
{
	char path[PATH_LEN], id[ID_MAX + 1] = "";
	const char *why;
	int status;

	rest_call_free(&p->call);	/* the connection may have served REST before */
	memset(p, 0, sizeof(*p));
	p->r = r;
	p->wsi = wsi;
	p->serial = ++r->serials;
	if (lws_hdr_copy(wsi, path, sizeof path, WSI_TOKEN_GET_URI) < 0)
		path[0] = '\0';
	status = ws_check(p, path, id, &why);
	if (!status)
		return 0;
	sb_log("%s%s%s (%d%s)", why, *id ? " " : "", id, status,
	       r->auth_close ? ", closing 1002" : "");
	if (!r->auth_close)
		return ws_refuse_http(wsi, status);
	p->refused = status;
	return 0;
}

/*** REST *******************************************************************/

static const char *const method_name[] = {
	"GET", "POST", "OPTIONS", "PUT", "PATCH", "DELETE", "CONNECT", "HEAD", ":path"
};

static int rest_error(struct rest_args *a, int status, const char *code, const char *msg)	/* IoTDA error body */
{
	a->out = cJSON_CreateObject();
	cJSON_AddStringToObject(a->out, "error_code", code);
	cJSON_AddStringToObject(a->out, "error_msg", msg);
	return status;
}

static int rest_no_tunnel(struct rest_args *a)	/* 404 for an unknown tunnel */
{
	return rest_error(a, 404, "IOTDA.014000", "The tunnel does not exist.");
}

/* The URL the caller reached us by, from its Host header when that looks
 * like a host[:port], else from --listen. */
static void base_url(struct rest_args *a, char *out, size_t size)	/* ws[s]://host:port */
{
	struct relay *r = a->r;
	const char *scheme = r->cert ? "wss" : "ws";
	char host[128];
	int n = lws_hdr_copy(a->p->wsi, host, sizeof host, WSI_TOKEN_HOST);

	if (n > 0 && strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
				  "0123456789.-:[]") == (size_t)n)
		snprintf(out, size, "%s://%s", scheme, host);
	else
		snprintf(out, size, "%s://%s:%d", scheme, r->host, r->port);
}

static void tunnel_url(struct rest_args *a, const struct tunnel *t, enum role role,
		       char *out, size_t size)	/* a tunnel's WebSocket URL for a role */
{
	char base[160];

	base_url(a, base, sizeof base);
	snprintf(out, size, "%s/v5/iot/tunnels/%s/%s", base, t->id,
		 role == ROLE_APP ? "source-connect" : "device-connect");
}

static cJSON *connect_state(const struct tunnel *t, enum role role)	/* an IoTDA ConnectState */
{
	cJSON *o = cJSON_CreateObject();

	add_time(o, "last_update_time", t->state_time[role]);
	cJSON_AddStringToObject(o, "status", t->peer[role] ? "CONNECTED" : "DISCONNECTED");
	return o;
}

static cJSON *tunnel_info(const struct tunnel *t)	/* an IoTDA TunnelInfo: no tokens */
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddStringToObject(o, "tunnel_id", t->id);
	cJSON_AddStringToObject(o, "device_id", t->device_id);
	add_time(o, "create_time", t->created);
	if (t->closed)
		add_time(o, "closed_time", t->closed_at);
	cJSON_AddStringToObject(o, "status", t->closed ? "CLOSED" : "OPEN");
	cJSON_AddItemToObject(o, "source_connect_state", connect_state(t, ROLE_APP));
	cJSON_AddItemToObject(o, "device_connect_state", connect_state(t, ROLE_DEVICE));
	return o;
}

/* Body {"device_id"}; also takes "expires_in" (seconds), a sandbox extension. */
static int rest_create(struct rest_args *a)	/* POST /v5/iot/{project_id}/tunnels */
{
	struct rest_call *c = &a->p->call;
	cJSON *body = c->body.len ? cJSON_ParseWithLength(c->body.p, c->body.len) : NULL;
	cJSON *dev = cJSON_GetObjectItemCaseSensitive(body, "device_id");
	long expires_in = json_seconds(cJSON_GetObjectItemCaseSensitive(body, "expires_in"),
				       DEFAULT_EXPIRES_IN);
	struct tunnel *t;
	char id[37], url[512];

	if (!cJSON_IsString(dev) || !valid_id(dev->valuestring, strlen(dev->valuestring)) ||
	    expires_in < 1) {
		cJSON_Delete(body);
		return rest_error(a, 400, "IOTDA.000006", "Invalid input data: device_id "
				  "(1-128 of A-Z a-z 0-9 _ -) is required.");
	}
	uuid4(id);
	t = tunnel_new(a->r, id, dev->valuestring, NULL, NULL, expires_in);
	cJSON_Delete(body);
	tunnel_arm(t);
	sb_log("tunnel %s: created for device %s", t->id, t->device_id);
	tunnel_url(a, t, ROLE_APP, url, sizeof url);
	a->out = cJSON_CreateObject();
	cJSON_AddStringToObject(a->out, "tunnel_id", t->id);
	cJSON_AddStringToObject(a->out, "tunnel_access_token", t->token[ROLE_APP]);
	cJSON_AddNumberToObject(a->out, "expires_in", (double)tunnel_expires_in(t));
	cJSON_AddStringToObject(a->out, "tunnel_uri", url);
	return 201;
}

static int rest_list(struct rest_args *a)	/* GET /v5/iot/{project_id}/tunnels[?device_id=] */
{
	char buf[ID_MAX + 16];
	const char *dev = lws_get_urlarg_by_name(a->p->wsi, "device_id=", buf, sizeof buf);
	cJSON *list = cJSON_CreateArray();
	lws_dll2_t *d;

	for (d = lws_dll2_get_head(&a->r->tunnels); d; d = d->next) {
		struct tunnel *t = lws_container_of(d, struct tunnel, list);

		if (!dev || !strcmp(dev, t->device_id))
			cJSON_AddItemToArray(list, tunnel_info(t));
	}
	a->out = cJSON_CreateObject();
	cJSON_AddItemToObject(a->out, "tunnels", list);
	return 200;
}

static int rest_show(struct rest_args *a)	/* GET /v5/iot/{project_id}/tunnels/{tunnel_id} */
{
	struct tunnel *t = tunnel_find(a->r, a->tunnel);

	if (!t)
		return rest_no_tunnel(a);
	a->out = tunnel_info(t);
	return 200;
}

static int rest_close(struct rest_args *a)	/* PUT /v5/iot/{project_id}/tunnels/{tunnel_id} */
{
	struct tunnel *t = tunnel_find(a->r, a->tunnel);

	if (!t)
		return rest_no_tunnel(a);
	tunnel_close(t);
	return 204;
}

static int rest_delete(struct rest_args *a)	/* DELETE …/tunnels/{tunnel_id}: closed ones only */
{
	struct tunnel *t = tunnel_find(a->r, a->tunnel);

	if (!t)
		return rest_no_tunnel(a);
	if (!t->closed)
		return rest_error(a, 400, "IOTDA.014001",
				  "The tunnel is open: close it (PUT) before deleting it.");
	sb_log("tunnel %s: deleted", t->id);
	tunnel_free(t);
	return 204;
}

/* What IoTDA would publish to the device over MQTT on
 * $oc/devices/{device_id}/sys/events/down when the tunnel is created. */
static int rest_notify(struct rest_args *a)	/* GET /sandbox/tunnels/{tunnel_id}/notify */
{
	struct tunnel *t = tunnel_find(a->r, a->tunnel);
	cJSON *svc, *paras, *list;
	char url[512];

	if (!t || t->closed)
		return rest_no_tunnel(a);
	tunnel_url(a, t, ROLE_DEVICE, url, sizeof url);
	paras = cJSON_CreateObject();
	cJSON_AddStringToObject(paras, "tunnel_uri", url);
	cJSON_AddStringToObject(paras, "tunnel_access_token", t->token[ROLE_DEVICE]);
	cJSON_AddNumberToObject(paras, "expires_in", (double)tunnel_expires_in(t));
	svc = cJSON_CreateObject();
	cJSON_AddStringToObject(svc, "service_id", "$tunnel_manager");
	cJSON_AddStringToObject(svc, "event_type", "tunnel_notify");
	add_time(svc, "event_time", time(NULL));
	cJSON_AddItemToObject(svc, "paras", paras);
	list = cJSON_CreateArray();
	cJSON_AddItemToArray(list, svc);
	a->out = cJSON_CreateObject();
	cJSON_AddStringToObject(a->out, "object_device_id", t->device_id);
	cJSON_AddItemToObject(a->out, "services", list);
	return 200;
}

static const struct rest_route {	/* the REST API: method, path pattern, handler */
	int method;
	const char *pattern;
	int (*handler)(struct rest_args *a);
} rest_routes[] = {
	{ LWSHUMETH_POST,   "/v5/iot/{project_id}/tunnels",             rest_create },
	{ LWSHUMETH_GET,    "/v5/iot/{project_id}/tunnels",             rest_list },
	{ LWSHUMETH_GET,    "/v5/iot/{project_id}/tunnels/{tunnel_id}", rest_show },
	{ LWSHUMETH_PUT,    "/v5/iot/{project_id}/tunnels/{tunnel_id}", rest_close },
	{ LWSHUMETH_DELETE, "/v5/iot/{project_id}/tunnels/{tunnel_id}", rest_delete },
	{ LWSHUMETH_GET,    "/sandbox/tunnels/{tunnel_id}/notify",      rest_notify },
};

static int route_capture(const char *pat, size_t pl, const char *seg, size_t sl,
			 struct rest_args *a)	/* a {placeholder} takes a valid id */
{
	char *dst = pl == 12 && !strncmp(pat, "{project_id}", pl) ? a->project : a->tunnel;

	if (!valid_id(seg, sl))
		return 0;
	memcpy(dst, seg, sl);
	dst[sl] = '\0';
	return 1;
}

static int route_match(const char *pat, const char *path, struct rest_args *a)	/* segment by segment */
{
	while (*pat == '/' && *path == '/') {
		size_t pl = strcspn(++pat, "/"), sl = strcspn(++path, "/");

		if (*pat == '{' ? !route_capture(pat, pl, path, sl, a) :
		    pl != sl || strncmp(pat, path, pl))
			return 0;
		pat += pl;
		path += sl;
	}
	return !*pat && !*path;
}

static int rest_token_ok(struct lws *wsi, const char *want)	/* X-Auth-Token is want */
{
	char got[TOKEN_MAX + 1] = "";

	return token_matches(got, lws_hdr_copy(wsi, got, sizeof got, WSI_TOKEN_X_AUTH_TOKEN),
			     want);
}

static int rest_route(struct rest_args *a, const struct rest_route **hit)	/* finds and runs a handler */
{
	const struct rest_call *c = &a->p->call;
	int path_known = 0;
	size_t i;

	for (i = 0; i < LWS_ARRAY_SIZE(rest_routes) && !*hit; i++)
		if (route_match(rest_routes[i].pattern, c->path, a)) {
			path_known = 1;
			if (rest_routes[i].method == c->method)
				*hit = &rest_routes[i];
		}
	if (!a->r->api_token)
		return rest_error(a, 404, "IOTDA.000404",
				  "The REST API is off: start the relay with --api-token.");
	if (!*hit)
		return path_known ? rest_error(a, 405, "IOTDA.000405", "Method not allowed.") :
				    rest_error(a, 404, "IOTDA.000404", "No such API.");
	if (!rest_token_ok(a->p->wsi, a->r->api_token))
		return rest_error(a, 401, "IOTDA.000002",
				  "Authentication failed: missing or wrong X-Auth-Token.");
	if (c->body_too_big)
		return rest_error(a, 413, "IOTDA.000413", "Request body too large.");
	return (*hit)->handler(a);
}

static int rest_reply(struct peer *p, int status, cJSON *out)	/* headers now, body when writable */
{
	unsigned char buf[LWS_PRE + 512], *start = buf + LWS_PRE, *q = start;
	struct rest_call *c = &p->call;
	char *s = out ? cJSON_PrintUnformatted(out) : NULL;

	cJSON_Delete(out);
	c->reply_len = s ? strlen(s) : 0;
	if (s) {
		c->reply = malloc(LWS_PRE + c->reply_len);
		if (!c->reply)
			abort();
		memcpy(c->reply + LWS_PRE, s, c->reply_len);
		free(s);
	}
	if (lws_add_http_common_headers(p->wsi, status, c->reply ? "application/json" : NULL,
					c->reply_len, &q, buf + sizeof buf - 1) ||
	    lws_finalize_write_http_header(p->wsi, start, &q, buf + sizeof buf - 1))
		return -1;
	if (!c->reply)
		return lws_http_transaction_completed(p->wsi) ? -1 : 0;
	lws_callback_on_writable(p->wsi);
	return 0;
}

static int rest_dispatch(struct peer *p)	/* the whole request is in: answer it */
{
	struct rest_args a = { .r = p->r, .p = p };
	const struct rest_route *hit = NULL;
	int status = rest_route(&a, &hit);
	int m = p->call.method;

	sb_log("rest: %s %s: %d", m >= 0 && m < (int)LWS_ARRAY_SIZE(method_name) ?
	       method_name[m] : "?", hit ? hit->pattern : "(no route)", status);
	sb_rx_free(&p->call.body);
	return rest_reply(p, status, a.out);
}

static int rest_begin(struct relay *r, struct peer *p, struct lws *wsi)	/* LWS_CALLBACK_HTTP */
{
	char *uri, cl[24];
	int ulen;

	rest_call_free(&p->call);
	p->r = r;
	p->wsi = wsi;
	p->call.method = lws_http_get_uri_and_method(wsi, &uri, &ulen);
	if (p->call.method >= 0 && ulen < PATH_LEN)
		lws_strnncpy(p->call.path, uri, ulen, sizeof p->call.path);
	if (lws_hdr_copy(wsi, cl, sizeof cl, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 && atol(cl) > 0)
		return 0;	/* HTTP_BODY_COMPLETION dispatches */
	return rest_dispatch(p);
}

static void rest_body(struct peer *p, const void *in, size_t len)	/* LWS_CALLBACK_HTTP_BODY */
{
	if (sb_rx_append(&p->call.body, in, len, REST_BODY_MAX) < 0)
		p->call.body_too_big = 1;
}

static int rest_write_body(struct peer *p)	/* LWS_CALLBACK_HTTP_WRITEABLE */
{
	struct rest_call *c = &p->call;

	if (!c->reply)
		return 0;
	if (lws_write(p->wsi, c->reply + LWS_PRE, c->reply_len, LWS_WRITE_HTTP_FINAL) <
	    (int)c->reply_len)
		return -1;
	free(c->reply);
	c->reply = NULL;
	return lws_http_transaction_completed(p->wsi) ? -1 : 0;
}

/*** the lws callback *******************************************************/

static void signals_read(struct relay *r, struct lws *wsi);

static int relay_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
			  void *in, size_t len)	/* every lws event */
{
	struct relay *r = lws_context_user(lws_get_context(wsi));
	struct peer *p = user;

	switch (reason) {
	case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
		return ws_filter(r, p, wsi);
	case LWS_CALLBACK_ESTABLISHED:
		ws_established(p);
		return 0;
	case LWS_CALLBACK_RECEIVE:
		return peer_receive(p, in, len);
	case LWS_CALLBACK_SERVER_WRITEABLE:
		return peer_writable(p);
	case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:	/* gone now, not at the TCP close */
		if (p->t)
			peer_gone(p);
		return 0;
	case LWS_CALLBACK_CLOSED:
		peer_closed(p);
		return 0;
	case LWS_CALLBACK_HTTP:
		return rest_begin(r, p, wsi);
	case LWS_CALLBACK_HTTP_BODY:
		rest_body(p, in, len);
		return 0;
	case LWS_CALLBACK_HTTP_BODY_COMPLETION:
		return rest_dispatch(p);
	case LWS_CALLBACK_HTTP_WRITEABLE:
		return rest_write_body(p);
	case LWS_CALLBACK_HTTP_DROP_PROTOCOL:	/* lws frees p after this */
	case LWS_CALLBACK_CLOSED_HTTP:
		if (p)
			rest_call_free(&p->call);
		return 0;
	case LWS_CALLBACK_RAW_RX_FILE:
		signals_read(r, wsi);
		return 0;
	default:
		return lws_callback_http_dummy(wsi, reason, user, in, len);
	}
}

static const struct lws_protocols protocols[] = {
	{ "tunnel", relay_callback, sizeof(struct peer), RX_CHUNK, 0, NULL, 0 },
	{ "signals", relay_callback, 0, 0, 0, NULL, 0 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 }
};

/*** signals ****************************************************************/

static void relay_drop_devices(struct relay *r)	/* SIGUSR1: every device connection cut */
{
	lws_dll2_t *d;
	int n = 0;

	for (d = lws_dll2_get_head(&r->tunnels); d; d = d->next) {
		struct tunnel *t = lws_container_of(d, struct tunnel, list);

		if (t->peer[ROLE_DEVICE]) {
			peer_drop(t->peer[ROLE_DEVICE]);
			n++;
		}
	}
	sb_log("SIGUSR1: dropped %d device connection%s", n, n == 1 ? "" : "s");
}

static void signals_read(struct relay *r, struct lws *wsi)	/* acts on each pending signal */
{
	struct signalfd_siginfo si;

	while (read(lws_get_socket_fd(wsi), &si, sizeof si) == (ssize_t)sizeof si) {
		if (si.ssi_signo == SIGUSR1) {
			relay_drop_devices(r);
			continue;
		}
		sb_log("exiting on %s", strsignal((int)si.ssi_signo));
		r->quit = 1;
	}
}

static void signals_block(sigset_t *set)	/* blocks the signals we read from a signalfd */
{
	sigemptyset(set);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGUSR1);
	sigprocmask(SIG_BLOCK, set, NULL);
}

/* Blocked signals queue on a signalfd the loop reads like any connection:
 * nothing runs in a handler, and no signal slips between checks. */
static int signals_open(struct relay *r)	/* SIGTERM, SIGINT, SIGUSR1 into the loop */
{
	lws_sock_file_fd_type fd;
	sigset_t set;

	signals_block(&set);
	fd.filefd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (fd.filefd < 0 || !lws_adopt_descriptor_vhost(r->vh, LWS_ADOPT_RAW_FILE_DESC, fd,
							 "signals", NULL)) {
		sb_log("signalfd: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/*** command line ***********************************************************/

static const char usage_text[] =
	"usage: tunnel-platform [options]\n"
	"The sandbox secure-tunnel platform: relays JSON between an app\n"
	"(source-connect) and a device (device-connect); serves the IoTDA tunnel API.\n"
	"  --listen ADDR:PORT     IP address (or localhost) and port to listen on\n"
	"                         (default " DEFAULT_LISTEN "; port 0: any free one)\n"
	"  --cert FILE --key FILE serve wss:// and https:// (default ws://)\n"
	"  --tunnels FILE         JSON array of {tunnel_id, device_id, source_token,\n"
	"                         device_token, expires_in}\n"
	"  --api-token TOKEN      enable the REST API, guarded by X-Auth-Token\n"
	"  --api-token-file FILE  the same, token read from FILE\n"
	"  --auth-close           refuse bad tokens with close 1002, not HTTP 401/404\n"
	"  --max-message BYTES    largest message relayed (default 10240)\n"
	"  --delay-ms N           delay every message sent by N ms\n"
	"  --cut-after ROLE:N     drop ROLE's (app|device) TCP connection after\n"
	"                         relaying N messages from it (once per tunnel)\n"
	"  --stall-after N        after N relayed messages, read nothing more\n"
	"  --help                 this text\n"
	"REST (with --api-token; header X-Auth-Token):\n"
	"  POST /v5/iot/{project_id}/tunnels {\"device_id\"}   create: 201\n"
	"  GET  /v5/iot/{project_id}/tunnels[?device_id=]     list\n"
	"  GET|PUT|DELETE /v5/iot/{project_id}/tunnels/{id}  show | close | delete\n"
	"  GET  /sandbox/tunnels/{id}/notify   the device's tunnel_notify event\n"
	"Signals: SIGUSR1 drops every device connection; SIGTERM/SIGINT exit.\n";

static int opt_listen(struct relay *r, const char *v)	/* --listen ADDR:PORT */
{
	const char *colon = strrchr(v, ':');
	size_t hl = colon ? (size_t)(colon - v) : 0;
	long port;

	if (!hl || hl >= sizeof r->host || parse_long(colon + 1, 0, 65535, &port))
		return -1;
	memcpy(r->host, v, hl);
	r->host[hl] = '\0';
	r->port = (int)port;
	return 0;
}

static int opt_cert(struct relay *r, const char *v) { r->cert = v; return 0; }	/* --cert FILE */
static int opt_key(struct relay *r, const char *v) { r->key = v; return 0; }	/* --key FILE */
static int opt_tunnels(struct relay *r, const char *v) { r->tunnels_file = v; return 0; }	/* --tunnels FILE */
static int opt_auth_close(struct relay *r, const char *v) { (void)v; r->auth_close = 1; return 0; }	/* --auth-close */

static int opt_api_token(struct relay *r, const char *v)	/* --api-token TOKEN */
{
	if (!valid_token(v))
		return -1;
	free(r->api_token);
	r->api_token = strdup(v);
	return r->api_token ? 0 : -1;
}

static int opt_api_token_file(struct relay *r, const char *v)	/* --api-token-file FILE */
{
	size_t len;
	char *s = read_file(v, &len);
	int rc;

	if (!s)
		return -1;
	while (len && (s[len - 1] == '\n' || s[len - 1] == '\r' || s[len - 1] == ' '))
		s[--len] = '\0';
	rc = opt_api_token(r, s);
	OPENSSL_cleanse(s, len);
	free(s);
	return rc;
}

static int opt_max_message(struct relay *r, const char *v)	/* --max-message BYTES */
{
	long n;

	if (parse_long(v, 1, MAX_MESSAGE_LIMIT, &n))
		return -1;
	r->max_message = (size_t)n;
	return 0;
}

static int opt_delay_ms(struct relay *r, const char *v)	/* --delay-ms N */
{
	long n;

	if (parse_long(v, 0, DELAY_MAX_MS, &n))
		return -1;
	r->delay_ms = (int)n;
	return 0;
}

static int opt_cut_after(struct relay *r, const char *v)	/* --cut-after ROLE:N */
{
	long n;
	int role;

	for (role = 0; role < ROLES; role++) {
		size_t rl = strlen(role_name[role]);

		if (!strncmp(v, role_name[role], rl) && v[rl] == ':' &&
		    !parse_long(v + rl + 1, 1, LONG_MAX, &n)) {
			r->cut_role = role;
			r->cut_after = (unsigned long)n;
			return 0;
		}
	}
	return -1;
}

static int opt_stall_after(struct relay *r, const char *v)	/* --stall-after N */
{
	return parse_long(v, 0, LONG_MAX, &r->stall_after);
}

static const struct option_def {	/* the command line, one row per option */
	const char *name;
	int (*set)(struct relay *r, const char *value);
	int takes_value;
} options[] = {
	{ "--listen",         opt_listen,         1 },
	{ "--cert",           opt_cert,           1 },
	{ "--key",            opt_key,            1 },
	{ "--tunnels",        opt_tunnels,        1 },
	{ "--api-token",      opt_api_token,      1 },
	{ "--api-token-file", opt_api_token_file, 1 },
	{ "--auth-close",     opt_auth_close,     0 },
	{ "--max-message",    opt_max_message,    1 },
	{ "--delay-ms",       opt_delay_ms,       1 },
	{ "--cut-after",      opt_cut_after,      1 },
	{ "--stall-after",    opt_stall_after,    1 },
};

__attribute__((noreturn, format(printf, 1, 2)))
static void usage_exit(const char *fmt, ...)	/* complains, prints usage, exits 2 */
{
	va_list ap;

	fprintf(stderr, "tunnel-platform: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n%s", usage_text);
	exit(2);
}

static int parse_option(struct relay *r, char **argv, int i)	/* one option; returns args used */
{
	const char *arg = argv[i], *eq = strchr(arg, '=');
	size_t nl = eq ? (size_t)(eq - arg) : strlen(arg);
	size_t k;

	for (k = 0; k < LWS_ARRAY_SIZE(options); k++) {
		const struct option_def *o = &options[k];
		const char *v = eq ? eq + 1 : argv[i + 1];

		if (strlen(o->name) != nl || strncmp(o->name, arg, nl))
			continue;
		if (o->takes_value && !v)
			usage_exit("%s needs a value", o->name);
		if (!o->takes_value && eq)
			usage_exit("%s takes no value", o->name);
		if (o->set(r, o->takes_value ? v : NULL))
			usage_exit("bad value for %s", o->name);
		return 1 + (o->takes_value && !eq);
	}
	usage_exit("unknown option '%s'", arg);
}

static void parse_args(struct relay *r, int argc, char **argv)	/* fills r, or exits */
{
	int i;

	for (i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--help")) {
			fputs(usage_text, stdout);
			exit(0);
		}
	for (i = 1; i < argc; )
		i += parse_option(r, argv, i);
	if (!r->cert != !r->key)
		usage_exit("--cert and --key go together");
}

static const char *json_str(const cJSON *o, const char *name)	/* a string member, or NULL */
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int load_tunnel(struct relay *r, const cJSON *o, int n)	/* one entry of --tunnels */
{
	const char *id = json_str(o, "tunnel_id"), *dev = json_str(o, "device_id");
	const char *src = json_str(o, "source_token"), *dtok = json_str(o, "device_token");
	long expires_in = json_seconds(cJSON_GetObjectItemCaseSensitive(o, "expires_in"),
				       DEFAULT_EXPIRES_IN);

	if (!id || !valid_id(id, strlen(id)) || !dev || !valid_id(dev, strlen(dev)) || !src ||
	    !valid_token(src) || (dtok && !valid_token(dtok)) || expires_in < 0) {
		sb_log("%s: entry %d: needs tunnel_id, device_id (1-128 of A-Z a-z 0-9 _ -), "
		       "source_token (1-256 visible chars), optional device_token, expires_in",
		       r->tunnels_file, n);
		return -1;
	}
	if (tunnel_find(r, id)) {
		sb_log("%s: entry %d: tunnel %s is listed twice", r->tunnels_file, n, id);
		return -1;
	}
	tunnel_arm(tunnel_new(r, id, dev, src, dtok, expires_in));
	return 0;
}

static int load_tunnels(struct relay *r)	/* --tunnels FILE: a JSON array */
{
	size_t len;
	char *text;
	cJSON *all, *o;
	int n = 0, rc = 0;

	if (!r->tunnels_file)
		return 0;
	text = read_file(r->tunnels_file, &len);
	all = text ? cJSON_ParseWithLength(text, len) : NULL;
	if (text && !cJSON_IsArray(all))
		sb_log("%s: not a JSON array", r->tunnels_file);
	if (!cJSON_IsArray(all))
		rc = -1;
	else
		cJSON_ArrayForEach(o, all)
			if (!rc && load_tunnel(r, o, ++n))
				rc = -1;
	if (text)
		OPENSSL_cleanse(text, len);
	free(text);
	cJSON_Delete(all);
	return rc;
}

/*** main *******************************************************************/

static int relay_start(struct relay *r)	/* the lws context: listener, TLS, signals */
{
	struct lws_context_creation_info info;
	char iface[64];
	size_t hl = strlen(r->host);

	memset(&info, 0, sizeof info);
	if (r->host[0] == '[' && r->host[hl - 1] == ']')
		lws_strnncpy(iface, r->host + 1, hl - 2, sizeof iface);
	else	/* lws takes an address or an interface name, not a host name */
		lws_strncpy(iface, strcmp(r->host, "localhost") ? r->host : "127.0.0.1",
			    sizeof iface);
	info.iface = strcmp(iface, "0.0.0.0") && strcmp(iface, "::") ? iface : NULL;
	info.port = r->port;
	info.protocols = protocols;
	info.user = r;
	info.max_http_header_data = HEADER_MAX;
	info.alpn = "http/1.1";	/* WebSocket over h2 is no part of the contract */
	if (!strchr(iface, ':'))
		info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
	if (r->cert) {
		info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
		info.ssl_cert_filepath = r->cert;
		info.ssl_private_key_filepath = r->key;
	}
	r->ctx = lws_create_context(&info);
	r->vh = r->ctx ? lws_get_vhost_by_name(r->ctx, "default") : NULL;
	if (!r->vh || lws_get_vhost_listen_port(r->vh) <= 0) {
		sb_log("cannot listen on %s:%d", r->host, r->port);
		return -1;
	}
	r->port = lws_get_vhost_listen_port(r->vh);
	return signals_open(r);
}

/* Timers go first: they live in lws's lists and must not outlive them.
 * The connections' CLOSED callbacks still see their tunnels, freed last. */
static void relay_stop(struct relay *r)	/* frees everything */
{
	lws_dll2_t *d, *next;

	r->exiting = 1;
	for (d = lws_dll2_get_head(&r->tunnels); d; d = d->next) {
		struct tunnel *t = lws_container_of(d, struct tunnel, list);

		lws_sul_cancel(&t->expiry_sul);
		delay_clear(t);
	}
	if (r->ctx)
		lws_context_destroy(r->ctx);
	for (d = lws_dll2_get_head(&r->tunnels); d; d = next) {
		next = d->next;
		tunnel_free(lws_container_of(d, struct tunnel, list));
	}
	if (r->api_token)
		OPENSSL_cleanse(r->api_token, strlen(r->api_token));
	free(r->api_token);
}

int main(int argc, char **argv)	/* parse, listen, serve until a signal */
{
	static struct relay relay;
	struct relay *r = &relay;

	sb_prog = "tunnel-platform";
	r->max_message = DEFAULT_MAX_MESSAGE;
	r->cut_role = -1;
	r->stall_after = -1;
	opt_listen(r, DEFAULT_LISTEN);
	parse_args(r, argc, argv);
	signal(SIGPIPE, SIG_IGN);
	lws_set_log_level(LLL_ERR, sb_lws_log);
	if (relay_start(r) || load_tunnels(r)) {
		relay_stop(r);
		return 1;
	}
	if (r->stall_after == 0) {
		sb_log("--stall-after 0: stalled from the start");
		r->stalled = 1;
	}
	sb_log("listening on %s://%s:%d with %u tunnel%s", r->cert ? "wss" : "ws", r->host,
	       r->port, r->tunnels.count, r->tunnels.count == 1 ? "" : "s");
	printf("listening on %s://%s:%d\n", r->cert ? "wss" : "ws", r->host, r->port);
	fflush(stdout);
	while (!r->quit && lws_service(r->ctx, 0) >= 0)
		;
	relay_stop(r);
	return 0;
}
