/* tunnel-platform.c: the sandbox secure-tunnel platform, a WebSocket relay.
 *
 * It stands in for Huawei IoTDA's tunnel service in tests and demos.  An
 * application (tunnel_tui) connects to /v5/iot/tunnels/{id}/source-connect and
 * a device agent to /v5/iot/tunnels/{id}/device-connect, each with its
 * tunnel_access_token header.  The relay passes their JSON messages across
 * byte for byte and speaks a few itself: connect_tunnel, pong, disconnect.
 * It also serves the IoTDA tunnel REST API (guarded by X-Auth-Token or by
 * Huawei Cloud's AK/SK request signing, basic or derived), stands in for
 * each device's MQTT connection with an events WebSocket that carries
 * tunnel_notify, and injects faults for tests.  The contract is the README's Protocol section, §1-3 and §7.
 *
 * One thread, one lws event loop.  Every delay is an lws_sul timer; signals
 * arrive through a signalfd adopted into the loop.  No message content and no
 * token ever reaches the log.
 *
 * Contents, one banner each:
 *   tunables
 *   types           struct relay, struct tunnel, struct device, struct peer
 *   helpers         ids, tokens, times, files
 *   sending         per-connection queue, delay line, flow control
 *   peers           attach, replace, gone, close, drop
 *   tunnels         create, find, expire, close, free
 *   devices         known devices, events channels (the MQTT stand-in)
 *   relaying        one whole inbound message, fault injection
 *   handshake       route table and checks: 401/403/404, or close 1002
 *   AK/SK signing   SDK-HMAC-SHA256 and the derived V11-HMAC-SHA256:
 *                   canonical request, HKDF key, verification
 *   REST            route table, auth, handlers, replies
 *   the lws callback
 *   signals         SIGTERM/SIGINT quit, SIGUSR1 drops every device,
 *                   SIGUSR2 logs every live tunnel's queues
 *   command line    option table, tunnels and devices files
 *   self-check      the signing guide's worked example, and a derived
 *                   signature made by Huawei's own SDK
 *   main
 */
#include "sandbox.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <signal.h>
#include <inttypes.h>
#include <stdint.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

/*** tunables ***************************************************************/

#define DEFAULT_LISTEN		"127.0.0.1:8443"
#define DEFAULT_MAX_MESSAGE	10240		/* README Protocol §1: an app's 10 KB a message */
#define DEFAULT_MAX_DEVICE_MESSAGE 16384	/* official devices send up to 12428 */
#define DEFAULT_REGION		"cn-north-4"	/* a derived signature's scope */
#define REGION_MAX		63		/* --region at most */
#define DEFAULT_EXPIRES_IN	86400		/* seconds a tunnel's tokens live */
/* Backlog toward a peer that pauses reading whoever feeds it, and resumes
 * it.  Small, as a real platform's: what a device's shell has written then
 * waits in socket buffers (where TCP paces the device) rather than here,
 * so a Ctrl-C's effect reaches the console after little stale output.  The
 * high mark is two of the largest device messages (16 KB); the low one
 * leaves a message's worth queued, so the connection never idles while
 * the source is read again. */
#define QUEUE_HIGH		(32 * 1024)
#define QUEUE_LOW		(16 * 1024)
#define SOCK_SNDBUF		(32 * 1024)	/* a WebSocket's kernel send buffer (Linux doubles it) */
#define SOCK_RCVBUF		(64 * 1024)	/* … and receive buffer */
#define TOKEN_MAX		256		/* README Protocol §1 */
#define ID_MAX			128		/* tunnel, project and device ids */
#define TOKEN_BYTES		24		/* random bytes: 32 base64 chars */
#define PATH_LEN		512		/* longest request path we route */
#define REST_BODY_MAX		(64 * 1024)	/* larger request bodies get 413 */
#define REFUSED_READ_MAX	(1u << 20)	/* an oversize message is read to its end up to this */
#define RX_CHUNK		16384		/* lws receive buffer per connection */
#define HEADER_MAX		4096		/* room for long tokens in headers */
#define MAX_MESSAGE_LIMIT	(16 * 1024 * 1024) /* --max-message at most */
#define DELAY_MAX_MS		600000		/* --delay-ms at most */
#define CORRUPT_MIN		256		/* --corrupt: data this long or longer (bulk) */
#define EXPIRES_MAX		(10L * 365 * 86400) /* expires_in at most */
#define FILE_MAX		(1 << 20)	/* tunnels, devices and secret files */
#define SIG_SKEW		(15 * 60)	/* X-Sdk-Date may be this far off, seconds */
#define SIG_ARGS_MAX		32		/* query parameters a signature may cover */
#define SIG_NAMES_MAX		16		/* headers a signature may cover */
#define SIG_NAME_MAX		63		/* longest signed header name */
#define CANON_MAX		(32 * 1024)	/* longest canonical request */
#define AK_MAX			128		/* --ak at most */
#define HEX256			(2 * SHA256_DIGEST_LENGTH + 1)	/* a SHA-256 in hex, NUL */
#define TEXT_MAX		256		/* a device's name, node_id, product_id, product_name */
#define PAGE_DEFAULT		10		/* ListDevices' limit, by default ... */
#define PAGE_MAX		50		/* ... and at most */
#define OFFSET_MAX		500		/* ListDevices' offset at most */
#define MARKER_LEN		24		/* a record id in hex, as IoTDA's markers */
#define RATE_MAX		100000		/* --rate-limit at most */

/*** types ******************************************************************/

enum role { ROLE_APP, ROLE_DEVICE, ROLES };
static const char *const role_name[ROLES] = { "app", "device" };

struct relay {			/* the whole program's state */
	struct lws_context *ctx;
	struct lws_vhost *vh;
	lws_dll2_owner_t tunnels;	/* struct tunnel, by creation */
	lws_dll2_owner_t devices;	/* struct device: listed, or online */
	/* options */
	char host[64];			/* as given to --listen, for URLs */
	int port;			/* the real one once listening */
	const char *cert, *key, *tunnels_file;
	char *api_token;		/* NULL: no X-Auth-Token */
	char *ak, *sk;			/* NULL: no AK/SK signing (the SK is a secret) */
	const char *devices_file;	/* NULL: any device id is known */
	int require_online;		/* POST needs the device's events channel */
	int no_tunnel_edition;		/* the tunnel API answers 403 */
	const char *region;		/* a derived signature's scope names it */
	int self_check;
	int auth_close;			/* both routes refuse with 1002 */
	int device_auth_http;		/* the device route refuses with HTTP 401/404 */
	size_t max_message[ROLES];	/* largest message from each role */
	long rate_limit;		/* REST calls a second; 0: no limit */
	int delay_ms;
	int cut_role;			/* -1: no --cut-after */
	unsigned long cut_after;
	long stall_after;		/* -1: no --stall-after */
	int corrupt_role;
	unsigned long corrupt_nth;	/* 0: no --corrupt (N is at least 1) */
	/* state */
	unsigned long relayed;		/* messages relayed, all tunnels */
	uint64_t serials;		/* last peer serial handed out */
	uint64_t records;		/* last device record id handed out */
	uint64_t bucket;		/* --rate-limit's tokens, in millionths */
	lws_usec_t bucket_at;		/* when the bucket was last filled */
	unsigned long served, throttled;	/* REST calls answered, refused 429 */
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
	int corrupted;			/* --corrupt has done its one change here */
	size_t peak[ROLES];		/* largest backlog toward each role so far */
	struct delayed *dq_head, *dq_tail;
	size_t delayed_bytes[ROLES];
	lws_sorted_usec_list_t delay_sul, expiry_sul;
};

enum device_text { DEV_NAME, DEV_NODE, DEV_PRODUCT, DEV_PRODUCT_NAME, DEV_TEXTS };

/* A device is known when --devices lists it (or always, without --devices)
 * and online while an agent holds its events channel.  Its record id is
 * IoTDA's: a newer device has a larger one, and lists first. */
struct device {			/* a listed device, or one with an events channel */
	lws_dll2_t list;		/* by record id, oldest first */
	char id[ID_MAX + 1];
	uint64_t record;		/* its record id: ListDevices' marker */
	char *text[DEV_TEXTS];		/* --devices details; NULL: none */
	const char *status;		/* --devices status; NULL: OFFLINE */
	int listed;			/* named by --devices: outlives its channel */
	struct peer *events;		/* its events channel; NULL: offline */
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
 * upgraded to WebSocket (on a tunnel, or a device's events channel), a REST
 * caller before.  lws allocates it per wsi.  tests/fuzz/fuzz_relay.c makes
 * peers with no wsi: they queue, count and change state, and every lws call
 * on the connection is skipped (peer_rx, peer_send, peer_close, peer_drop). */
struct peer {
	struct relay *r;
	struct lws *wsi;		/* NULL: fuzz_relay.c's, no connection */
	struct tunnel *t;		/* NULL once replaced, gone or refused */
	struct tunnel *pending;		/* chosen at the handshake */
	struct device *dev;		/* an open events channel's device */
	int events;			/* upgraded on the events route ... */
	char device_id[ID_MAX + 1];	/* ... for this device */
	enum role role;
	uint64_t serial;
	int refused;			/* a 401/403/404 owed as a close 1002 */
	int rx_off;			/* we told lws to stop reading it */
	int close_code;			/* close with this once the queue drains */
	int peer_close;			/* the close code it sent us; 0: none yet */
	int refusing;			/* reading an oversize message to its end */
	const char *close_why;
	struct sb_queue q;
	struct sb_rxbuf rx;
	struct rest_call call;
};

/* The REST code reads headers and query parameters only through this: lws
 * (lws_header, lws_arg) for a real request, fuzz_relay.c's own for its. */
struct rest_in {		/* a request's headers and query parameters */
	int (*header)(void *ctx, const char *name, char *out, size_t size);	/* by lowercase name; <0 absent */
	int (*arg)(void *ctx, int i, char *out, size_t size);	/* the i-th, URL-decoded; <0 past the last */
	void *ctx;
};

struct rest_args {		/* what a REST handler gets and gives */
	struct relay *r;
	struct peer *p;
	const struct rest_in *in;	/* the request's headers and query */
	char project[ID_MAX + 1], tunnel[ID_MAX + 1];	/* from the path; any project */
	const char *note;		/* for the log line: how it was authenticated, or not */
	char note_buf[96];		/* a note made for this call */
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

/* Trailing newlines and spaces go: files made with echo end in one. */
static char *read_secret(const char *path)	/* a file's one line, malloc'd; NULL if unreadable */
{
	size_t len;
	char *s = read_file(path, &len), *dup;

	if (!s)
		return NULL;
	while (len && (s[len - 1] == '\n' || s[len - 1] == '\r' || s[len - 1] == ' '))
		s[--len] = '\0';
	dup = strdup(s);
	OPENSSL_cleanse(s, len);
	free(s);
	if (!dup)
		abort();
	return dup;
}

static void secret_free(char *s)	/* wipes, then frees, a string */
{
	if (s)
		OPENSSL_cleanse(s, strlen(s));
	free(s);
}

static void hex_encode(const unsigned char *in, size_t n, char *out)	/* lowercase hex, NUL-terminated */
{
	size_t i;

	for (i = 0; i < n; i++)
		snprintf(out + 2 * i, 3, "%02x", in[i]);
}

static void sha256_hex(const void *p, size_t n, char out[HEX256])	/* hex(sha256(p)) */
{
	unsigned char d[SHA256_DIGEST_LENGTH];

	SHA256(p, n, d);
	hex_encode(d, sizeof d, out);
}

static char *trim(char *s)	/* without leading and trailing blanks */
{
	size_t n;

	s += strspn(s, " \t");
	n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		s[--n] = '\0';
	return s;
}

static int is_loopback(const char *addr)	/* 127.0.0.0/8, ::1 or ::ffff:127.x.y.z */
{
	return !strncmp(addr, "127.", 4) || !strcmp(addr, "::1") ||
	       !strncmp(addr, "::ffff:127.", 11);
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
	if (p->wsi)
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

		if (b > t->peak[i])
			t->peak[i] = b;
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
	if (sb_queue_push(&p->q, m, len) && p->wsi)
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

static void events_attach(struct peer *p);
static void events_gone(struct peer *p);

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
	if (p->wsi)
		lws_callback_on_writable(p->wsi);
}

static void peer_gone(struct peer *p)	/* an attached connection ended: the app hears of a device's */
{
	struct tunnel *t = p->t;

	if (p->peer_close)	/* tests tell a user's quit (1000) from a lost link */
		sb_log("tunnel %s: %s gone (close %d)", t->id, role_name[p->role], p->peer_close);
	else
		sb_log("tunnel %s: %s gone (no close frame)", t->id, role_name[p->role]);
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
	struct linger lg = { 1, 0 };
	int fd;

	if (p->t)
		peer_gone(p);
	sb_queue_clear(&p->q);
	if (!p->wsi)
		return;
	fd = lws_get_socket_fd(p->wsi);
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

static void peer_leaving(struct peer *p)	/* the peer sent a close: gone now, not at the TCP close */
{
	if (p->t)
		peer_gone(p);
	else if (p->dev)
		events_gone(p);
}

static void peer_closed(struct peer *p)	/* lws is freeing the connection */
{
	if (p->t && p->r->exiting)
		tunnel_unlink(p->t, p);
	else
		peer_leaving(p);
	sb_queue_clear(&p->q);
	sb_rx_free(&p->rx);
}

/* Left to autotuning, socket buffers on loopback grow to megabytes (the
 * path looks infinitely fast) and hold a flood's output ahead of a
 * Ctrl-C's effect: the send buffer toward a slow console, and the receive
 * buffer from a device while the relay has stopped reading it (a megabyte
 * was measured there).  A real platform's are sized by its paths, far
 * smaller.  The receive buffer stays above the loopback MSS (64 KB), below
 * which TCP stalls.  Fixed buffers cap a connection at about their size
 * per round trip, plenty for a sandbox. */
static void peer_buffers(struct peer *p)	/* caps the kernel's buffers of a connection */
{
	int snd = SOCK_SNDBUF, rcv = SOCK_RCVBUF, fd = p->wsi ? lws_get_socket_fd(p->wsi) : -1;

	if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &snd, sizeof snd))
		sb_log("SO_SNDBUF: %s", strerror(errno));
	if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv))
		sb_log("SO_RCVBUF: %s", strerror(errno));
}

static void ws_established(struct peer *p)	/* the upgrade is done: join, or close 1002 */
{
	peer_buffers(p);
	if (p->refused) {
		peer_close(p, 1002, "authentication failed");
		return;
	}
	if (p->r->stalled) {	/* a dead relay answers nothing */
		if (p->events)
			sb_log("device %s: events channel opened on a stalled relay", p->device_id);
		else
			sb_log("tunnel %s: %s connected to a stalled relay", p->pending->id,
			       role_name[p->role]);
		peer_rx(p, 0);
		return;
	}
	if (p->events)
		events_attach(p);
	else
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

/*** devices ****************************************************************/

/* The events channel, /sandbox/devices/{device_id}/events, stands in for
 * the device's own MQTT connection to IoTDA: the relay sends on it what IoTDA
 * would publish on $oc/devices/{device_id}/sys/events/down.  It has no auth,
 * so it is served to loopback peers only (see ws_check_events). */

static struct device *device_find(struct relay *r, const char *id)	/* by device_id, or NULL */
{
	lws_dll2_t *d;

	for (d = lws_dll2_get_head(&r->devices); d; d = d->next) {
		struct device *dev = lws_container_of(d, struct device, list);

		if (!strcmp(dev->id, id))
			return dev;
	}
	return NULL;
}

static struct device *device_add(struct relay *r, const char *id)	/* a new entry, the newest record */
{
	struct device *d = calloc(1, sizeof(*d));

	if (!d)
		abort();
	snprintf(d->id, sizeof d->id, "%s", id);
	d->record = ++r->records;
	lws_dll2_add_tail(&d->list, &r->devices);
	return d;
}

static void device_free(struct device *d)	/* unlists and frees an entry */
{
	size_t i;

	lws_dll2_remove(&d->list);
	for (i = 0; i < LWS_ARRAY_SIZE(d->text); i++)
		free(d->text[i]);
	free(d);
}

/* The details --devices may give, as IoTDA's QueryDeviceSimplify names
 * them; a name or node_id not given is the device id. */
static const struct device_field {	/* one detail: in the file, in ListDevices */
	const char *member;		/* in a --devices entry */
	const char *json;		/* in ListDevices' answer, and its filter parameter */
	int id_default;			/* absent: the device id */
	int filter;			/* ListDevices filters on it */
} device_fields[] = {
	[DEV_NAME]         = { "name",         "device_name",  1, 1 },
	[DEV_NODE]         = { "node_id",      "node_id",      1, 1 },
	[DEV_PRODUCT]      = { "product_id",   "product_id",   0, 1 },
	[DEV_PRODUCT_NAME] = { "product_name", "product_name", 0, 0 },
};

static const char *const device_statuses[] = {	/* IoTDA's */
	"ONLINE", "OFFLINE", "ABNORMAL", "INACTIVE", "FROZEN"
};

static const char *device_text(const struct device *d, enum device_text f)	/* a detail, or NULL */
{
	return d->text[f] ? d->text[f] : device_fields[f].id_default ? d->id : NULL;
}

static const char *device_status(const struct device *d)	/* ONLINE with its events channel open */
{
	return d->events ? "ONLINE" : d->status ? d->status : "OFFLINE";
}

static void events_unlink(struct peer *p)	/* the device forgets its channel; unlisted ones go */
{
	struct device *d = p->dev;

	d->events = NULL;
	p->dev = NULL;
	if (!d->listed)
		device_free(d);
}

static void events_gone(struct peer *p)	/* an open events channel ended */
{
	sb_log("device %s: events channel closed", p->dev->id);
	events_unlink(p);
}

static void events_attach(struct peer *p)	/* p becomes its device's events channel */
{
	struct device *d = device_find(p->r, p->device_id);

	if (!d)
		d = device_add(p->r, p->device_id);
	if (d->events) {
		sb_log("device %s: events channel replaced by a newer one", d->id);
		peer_close(d->events, 4000, "replaced by a newer connection");
		d->events->dev = NULL;
	}
	d->events = p;
	p->dev = d;
	sb_log("device %s: events channel open", d->id);
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

static size_t json_string_end(const char *s, size_t n, size_t i)	/* i past '"': at the closing '"', or n */
{
	for (; i < n && s[i] != '"'; i++)
		i += s[i] == '\\';
	return i < n ? i : n;
}

static int plain_at(const char *s, size_t from, size_t i)	/* s[i] is alphanumeric and no escape's */
{
	for (size_t k = i > from + 5 ? i - 5 : from; k < i; k++)
		if (s[k] == '\\')
			return 0;
	return isalnum((unsigned char)s[i]);
}

/* --corrupt: one alphanumeric character in the middle of the data string
 * becomes the next of its kind (z → a, 9 → 0).  The JSON stays valid and
 * as long: only a check of the contents finds it.  Only data of at least
 * CORRUPT_MIN characters counts, so that what is damaged is bulk (a chunk
 * of a file), not an echo or a prompt whose timing decides its number.
 * -1 if there is none. */
static long corrupt_data(char *m, size_t n)
{
	char *key = memmem(m, n, "\"data\"", 6);
	size_t i = key ? (size_t)(key - m) + 6 : n, end;

	while (i < n && (isspace((unsigned char)m[i]) || m[i] == ':'))
		i++;
	if (i >= n || m[i] != '"')
		return -1;
	end = json_string_end(m, n, ++i);
	if (end - i < CORRUPT_MIN)
		return -1;
	for (size_t k = i + (end - i) / 2; k < end; k++)
		if (plain_at(m, i, k)) {
			char c = m[k];

			m[k] = c == 'z' ? 'a' : c == 'Z' ? 'A' : c == '9' ? '0' : (char)(c + 1);
			return (long)k;
		}
	return -1;
}

/* The message relayed as it came, or (--corrupt ROLE:N: the Nth message from
 * ROLE in this tunnel, or the first after it with bulk data) with one
 * character changed, once per tunnel. */
static void relay_send(struct peer *p, enum role to, const char *msg, size_t len)
{
	struct relay *r = p->r;
	struct tunnel *t = p->t;
	char *copy;

	if (!r->corrupt_nth || r->corrupt_role != (int)p->role || t->corrupted ||
	    t->relayed_from[p->role] + 1 < r->corrupt_nth) {
		tunnel_send(t, to, msg, len);
		return;
	}
	copy = malloc(len);
	if (!copy)
		abort();
	memcpy(copy, msg, len);
	if (corrupt_data(copy, len) >= 0) {
		t->corrupted = 1;
		sb_log("tunnel %s: message %lu from the %s corrupted: one character changed", t->id,
		       t->relayed_from[p->role] + 1, role_name[p->role]);
	}
	tunnel_send(t, to, copy, len);
	free(copy);
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
	relay_send(p, to, msg, len);
	relay_count(p);
}

static void peer_oversize(struct peer *p)	/* a message over its role's limit: 413, close 1009 */
{
	struct tunnel *t = p->t;
	size_t max = p->r->max_message[p->role];
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
	p->refusing = 1;	/* closed 1009 once read to its end: peer_chunk */
}

/* Fragments and partial frames are gathered into p->rx first; the size cap
 * counts rest, what lws says is still to come of this frame, so an oversized
 * frame is refused at its first chunk rather than buffered.  It is read to
 * its end before the close: closing with it unread makes the kernel reset
 * the connection, and the sender may lose the close frame (1006, not 1009).
 * final: the frame is the message's last.  (Apart from lws, so
 * fuzz_relay.c can call it.) */
static void peer_chunk(struct peer *p, const void *in, size_t len, size_t rest,
		       int final)	/* one chunk of a message */
{
	size_t max = p->r->max_message[p->role];

	if (!p->refusing) {
		if (!p->t || p->r->stalled)
			return;	/* replaced, refused, closing or dead: ignored */
		if (p->rx.len + len + rest <= max && sb_rx_append(&p->rx, in, len, max) == 0) {
			if (!rest && final) {
				relay_message(p, p->rx.p, p->rx.len);
				p->rx.len = 0;
			}
			return;
		}
		peer_oversize(p);
	}
	if ((!rest && final) || rest > REFUSED_READ_MAX)
		peer_close(p, 1009, "message too big");
}

static int peer_receive(struct peer *p, const void *in, size_t len)	/* LWS_CALLBACK_RECEIVE */
{
	peer_chunk(p, in, len, lws_remaining_packet_payload(p->wsi),
		   lws_is_final_fragment(p->wsi));
	return 0;
}

/*** handshake **************************************************************/

/* IOTDA.000nnn codes named after their HTTP status are the sandbox's own. */
static const struct refusal {	/* an upgrade refused: status and IoTDA-style body */
	int status;
	const char *code, *msg;
} refuse_token = { 401, "IOTDA.000002", "the tunnel access token is invalid or expired" },
  refuse_tunnel = { 404, "IOTDA.014000", "the tunnel does not exist or is closed" },
  refuse_path = { 404, "IOTDA.000404", "no such WebSocket route" },
  refuse_device = { 404, "IOTDA.014000", "the device does not exist" },
  refuse_remote = { 403, "IOTDA.000403", "the events channel is served to loopback peers only" };

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

static const struct refusal *ws_check_tunnel(struct peer *p, const char *id,
					     const char **why)	/* a tunnel's token check */
{
	struct tunnel *t = tunnel_find(p->r, id);

	*why = !t ? "unknown tunnel" : "closed tunnel";
	if (!t || t->closed)
		return &refuse_tunnel;
	*why = t->expired ? "expired token for tunnel" : "auth failed for tunnel";
	if (t->expired || !ws_token_ok(p->wsi, t->token[p->role]))
		return &refuse_token;
	p->pending = t;
	return NULL;
}

/* No token: the channel hands out device tokens, so only this machine may
 * open it, and with --devices only for a listed device. */
static const struct refusal *ws_check_events(struct peer *p, const char *id,
					     const char **why)	/* a device's events channel */
{
	char addr[64];

	*why = "events channel from a remote peer for device";
	if (!lws_get_peer_simple(p->wsi, addr, sizeof addr) || !is_loopback(addr))
		return &refuse_remote;
	*why = "events channel for unknown device";
	if (p->r->devices_file && !device_find(p->r, id))
		return &refuse_device;
	p->events = 1;
	snprintf(p->device_id, sizeof p->device_id, "%s", id);
	return NULL;
}

/* The device route refuses a bad token with close 1002 by default: official
 * devices stop at a 1002, but retry an HTTP 401 about 20 times a minute. */
static const struct ws_route {	/* the WebSocket routes: /prefix{id}suffix */
	const char *prefix, *suffix;
	enum role role;
	const struct refusal *(*check)(struct peer *p, const char *id, const char **why);
	int close_1002;			/* refusals close 1002 unless --device-auth http */
} ws_routes[] = {
	{ "/v5/iot/tunnels/",  "/source-connect", ROLE_APP,    ws_check_tunnel, 0 },
	{ "/v5/iot/tunnels/",  "/device-connect", ROLE_DEVICE, ws_check_tunnel, 1 },
	{ "/sandbox/devices/", "/events",         ROLE_DEVICE, ws_check_events, 0 },
};

static const struct ws_route *ws_route(const char *path, char id[ID_MAX + 1])	/* the route path takes, or NULL */
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
		return w;
	}
	return NULL;
}

static const struct refusal *ws_check(struct peer *p, const struct ws_route *w,
				      const char *id, const char **why)	/* NULL, or why not, for the log */
{
	*why = "bad WebSocket path";
	if (!w)
		return &refuse_path;
	p->role = w->role;
	return w->check(p, id, why);
}

static int refuse_by_close(const struct relay *r, const struct ws_route *w)	/* 1002 after the upgrade, not HTTP */
{
	return r->auth_close || (w && w->close_1002 && !r->device_auth_http);
}

/* lws 4.1 only drops the socket when this callback refuses, so the status
 * line, headers and body are written here by hand. */
static int ws_refuse_http(struct lws *wsi, const struct refusal *no)	/* answers 4xx, then -1 */
{
	unsigned char buf[LWS_PRE + 768], *start = buf + LWS_PRE, *q = start;
	unsigned char *end = buf + sizeof buf - 1;
	char body[256];
	int blen = snprintf(body, sizeof body, "{\"error_code\":\"%s\",\"error_msg\":\"%s\"}",
			    no->code, no->msg);

	if (lws_add_http_common_headers(wsi, no->status, "application/json", (lws_filepos_t)blen,
					&q, end) ||
	    lws_finalize_http_header(wsi, &q, end) || end - q < blen)
		return -1;
	memcpy(q, body, (size_t)blen);
	q += blen;
	lws_write(wsi, start, lws_ptr_diff(q, start), LWS_WRITE_HTTP_HEADERS);
	return -1;
}

static int ws_filter(struct relay *r, struct peer *p, struct lws *wsi)	/* vets an upgrade request */
{
	char path[PATH_LEN], id[ID_MAX + 1] = "";
	const struct ws_route *w;
	const struct refusal *no;
	const char *why;
	int by_close;

	rest_call_free(&p->call);	/* the connection may have served REST before */
	memset(p, 0, sizeof(*p));
	p->r = r;
	p->wsi = wsi;
	p->serial = ++r->serials;
	if (lws_hdr_copy(wsi, path, sizeof path, WSI_TOKEN_GET_URI) < 0)
		path[0] = '\0';
	w = ws_route(path, id);
	no = ws_check(p, w, id, &why);
	if (!no)
		return 0;
	by_close = refuse_by_close(r, w);
	sb_log("%s%s%s (%d%s)", why, *id ? " " : "", id, no->status,
	       by_close ? ", closing 1002" : "");
	if (!by_close)
		return ws_refuse_http(wsi, no);
	p->refused = no->status;
	return 0;
}

/*** AK/SK signing **********************************************************/

/* Huawei Cloud's request signing, checked the way its API gateway checks it
 * (the public API Request Signing Guide; README Protocol §9), in both forms:
 *   CanonicalRequest = METHOD \n CanonicalURI \n CanonicalQueryString \n
 *                      CanonicalHeaders \n SignedHeaders \n hex(sha256(body))
 * SDK-HMAC-SHA256, the basic form:
 *   StringToSign = "SDK-HMAC-SHA256" \n X-Sdk-Date \n hex(sha256(CanonicalRequest))
 *   Signature    = hex(HMAC-SHA256(SK, StringToSign))
 * V11-HMAC-SHA256, the derived form IoTDA's standard and enterprise
 * instances ask for, scoped to a day, a region and the service:
 *   Scope        = YYYYMMDD/region/iotdm  (YYYYMMDD: X-Sdk-Date's)
 *   Key          = hex(HKDF-SHA256(ikm SK, salt AK, info Scope, 32 bytes))
 *   StringToSign = "V11-HMAC-SHA256" \n X-Sdk-Date \n Scope \n hex(sha256(CanonicalRequest))
 *   Signature    = hex(HMAC-SHA256(Key, StringToSign))
 * CanonicalHeaders is "name:value\n" per signed header, so an empty line
 * follows it.  These functions see a struct sig_req, whatever it came from:
 * lws (REST calls) or a table (--self-check).  Nothing here logs. */

#define SIG_BASIC	"SDK-HMAC-SHA256"
#define SIG_DERIVED	"V11-HMAC-SHA256"
#define SIG_SERVICE	"iotdm"		/* IoTDA's service name in a derived scope */
#define AUTH_CODE	"IOTDA.000002"	/* every authentication failure */
#define AUTH_FAILED	"Authentication failed: "
#define SCOPE_MAX	(8 + 1 + REGION_MAX + 1 + 32)	/* YYYYMMDD/region/service */
#define STS_MAX		(sizeof SIG_DERIVED + 64 + SCOPE_MAX + HEX256)	/* a StringToSign */

struct sig_req {		/* what a signature covers, however the request arrived */
	const char *method, *path;	/* the path URL-decoded, without the query */
	const char *args[SIG_ARGS_MAX];	/* URL-decoded "name=value" query parameters */
	int nargs;
	int (*header)(void *ctx, const char *name, char *out, size_t size);	/* by lowercase name; <0 absent */
	void *ctx;
	const char *body;
	size_t body_len;
};

struct sig_keys {		/* what a signature is checked against */
	const char *ak, *sk;		/* the SK is a secret */
	const char *region;		/* a derived scope's */
};

enum scheme { SCHEME_BASIC, SCHEME_DERIVED, SCHEMES };

static const struct sig_scheme {	/* an Authorization scheme */
	const char *name;
	const char *note;		/* how a call it lets in is logged */
} sig_schemes[SCHEMES] = {
	[SCHEME_BASIC]   = { SIG_BASIC,   "AK/SK" },
	[SCHEME_DERIVED] = { SIG_DERIVED, "derived AK/SK" },
};

struct sig_auth {		/* the Authorization header, taken apart */
	enum scheme scheme;
	char access[AK_MAX + 1], scope[SCOPE_MAX + 1];	/* a derived one's split from credential */
	char credential[AK_MAX + 1 + SCOPE_MAX + 1], names[HEADER_MAX], signature[HEX256];
};

enum sig_result { SIG_OK, SIG_MALFORMED, SIG_NO_DATE, SIG_SKEWED, SIG_DATE_UNSIGNED,
		  SIG_HOST_UNSIGNED, SIG_SCOPE_DATE, SIG_SCOPE_REGION, SIG_SCOPE_SERVICE,
		  SIG_UNREADABLE, SIG_BAD_AK, SIG_MISMATCH, SIG_RESULTS };

/* What the caller is told (a bad signature and an unknown AK read the
 * same) and what the log says. */
static const struct sig_error {
	const char *msg, *why;
} sig_errors[SIG_RESULTS] = {
	[SIG_MALFORMED]     = { AUTH_FAILED "the Authorization header is neither " SIG_BASIC
				" Access=AK, SignedHeaders=h1;h2, Signature=HEX nor " SIG_DERIVED
				" Credential=AK/YYYYMMDD/REGION/" SIG_SERVICE ", SignedHeaders=h1;h2, "
				"Signature=HEX", "malformed Authorization" },
	[SIG_NO_DATE]       = { AUTH_FAILED "X-Sdk-Date is missing or not YYYYMMDDTHHMMSSZ",
				"no valid X-Sdk-Date" },
	[SIG_SKEWED]        = { AUTH_FAILED "X-Sdk-Date is more than 15 minutes away from the "
				"server's time", "X-Sdk-Date more than 15 minutes off" },
	[SIG_DATE_UNSIGNED] = { AUTH_FAILED "x-sdk-date must be one of the SignedHeaders",
				"x-sdk-date not signed" },
	[SIG_HOST_UNSIGNED] = { AUTH_FAILED "host must be one of the SignedHeaders",
				"host not signed" },
	[SIG_SCOPE_DATE]    = { AUTH_FAILED "the credential scope's date is not X-Sdk-Date's",
				"scope date is not X-Sdk-Date's" },
	[SIG_SCOPE_REGION]  = { AUTH_FAILED "the credential scope names another region",
				"scope names another region" },
	[SIG_SCOPE_SERVICE] = { AUTH_FAILED "the credential scope's service is not " SIG_SERVICE,
				"scope service is not " SIG_SERVICE },
	[SIG_UNREADABLE]    = { AUTH_FAILED "verify aksk signature fail",
				"a signed header is missing, or the request is too big to sign" },
	[SIG_BAD_AK]        = { AUTH_FAILED "verify aksk signature fail", "unknown AK" },
	[SIG_MISMATCH]      = { AUTH_FAILED "verify aksk signature fail", "signature mismatch" },
};

static int put(struct sb_rxbuf *b, const char *s)	/* appends a string; -1 past CANON_MAX */
{
	return sb_rx_append(b, s, strlen(s), CANON_MAX);
}

static int uri_put(struct sb_rxbuf *b, const char *s, size_t len)	/* RFC 3986: unreserved bytes kept, others %XX */
{
	size_t i;
	int rc = 0;

	for (i = 0; i < len && !rc; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[4];

		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '_' || c == '.' || c == '~') {
			rc = sb_rx_append(b, s + i, 1, CANON_MAX);
			continue;
		}
		snprintf(esc, sizeof esc, "%%%02X", c);
		rc = sb_rx_append(b, esc, 3, CANON_MAX);
	}
	return rc;
}

static int canon_uri(struct sb_rxbuf *b, const char *path)	/* each segment encoded; ends in "/" */
{
	int rc = 0;

	while (*path && !rc) {
		size_t n = strcspn(path, "/");

		rc = uri_put(b, path, n);
		path += n;
		if (*path == '/' && !rc) {
			rc = put(b, "/");
			path++;
		}
	}
	if (!rc && (!b->len || b->p[b->len - 1] != '/'))
		rc = put(b, "/");	/* the URI follows a "\n": never empty */
	return rc;
}

static const char *arg_value(const char *arg)	/* what follows the first '=', or "" */
{
	const char *eq = strchr(arg, '=');

	return eq ? eq + 1 : "";
}

static int arg_cmp(const void *a, const void *b)	/* qsort: by name, then by value, bytewise */
{
	const char *x = *(const char *const *)a, *y = *(const char *const *)b;
	size_t xn = strcspn(x, "="), yn = strcspn(y, "=");
	int c = memcmp(x, y, xn < yn ? xn : yn);

	if (c || xn != yn)
		return c ? c : xn < yn ? -1 : 1;
	return strcmp(arg_value(x), arg_value(y));
}

static int canon_query(struct sb_rxbuf *b, struct sig_req *q)	/* sorted name=value, encoded, joined by & */
{
	int i, rc = 0;

	qsort(q->args, (size_t)q->nargs, sizeof *q->args, arg_cmp);
	for (i = 0; i < q->nargs && !rc; i++) {
		const char *a = q->args[i], *v = arg_value(a);

		rc = (i && put(b, "&")) || uri_put(b, a, strcspn(a, "=")) || put(b, "=") ||
		     uri_put(b, v, strlen(v));
	}
	return rc ? -1 : 0;
}

static int canon_headers(struct sb_rxbuf *b, const struct sig_req *q, const char *names)	/* name:trimmed-value\n each */
{
	char name[SIG_NAME_MAX + 1], value[HEADER_MAX + 1];

	while (*names) {
		size_t n = strcspn(names, ";");

		memcpy(name, names, n);	/* names_valid() bounds n */
		name[n] = '\0';
		if (q->header(q->ctx, name, value, sizeof value) < 0 ||
		    put(b, name) || put(b, ":") || put(b, trim(value)) || put(b, "\n"))
			return -1;
		names += n + (names[n] == ';');
	}
	return 0;
}

static int canonical_hash(struct sig_req *q, const char *names, char out[HEX256])	/* hex(sha256(CanonicalRequest)) */
{
	struct sb_rxbuf b = { 0 };
	char body[HEX256];
	int rc;

	sha256_hex(q->body ? q->body : "", q->body_len, body);
	rc = put(&b, q->method) || put(&b, "\n") || canon_uri(&b, q->path) || put(&b, "\n") ||
	     canon_query(&b, q) || put(&b, "\n") || canon_headers(&b, q, names) ||
	     put(&b, "\n") || put(&b, names) || put(&b, "\n") || put(&b, body);
	if (!rc)
		sha256_hex(b.p, b.len, out);
	if (b.p)
		OPENSSL_cleanse(b.p, b.cap);	/* signed headers may hold secrets */
	sb_rx_free(&b);
	return rc ? -1 : 0;
}

static void hmac_hex(const void *key, size_t klen, const char *msg, char out[HEX256])	/* hex(HMAC-SHA256(key, msg)) */
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	if (!HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg, strlen(msg), mac, &n) ||
	    n != SHA256_DIGEST_LENGTH)
		abort();
	hex_encode(mac, n, out);
	OPENSSL_cleanse(mac, sizeof mac);
}

/* RFC 5869 with one block of output, which 32 bytes are: the extract step
 * PRK = HMAC(salt AK, SK), the expand step HMAC(PRK, Scope || 0x01). */
static void derived_key(const char *ak, const char *sk, const char *scope,
			char out[HEX256])	/* hex(HKDF-SHA256(SK, AK, scope, 32)) */
{
	unsigned char prk[EVP_MAX_MD_SIZE], okm[EVP_MAX_MD_SIZE], info[SCOPE_MAX + 1];
	unsigned int n = 0, m = 0;
	size_t il = strlen(scope);

	if (il > SCOPE_MAX)
		abort();
	memcpy(info, scope, il);
	info[il] = 0x01;
	if (!HMAC(EVP_sha256(), ak, (int)strlen(ak), (const unsigned char *)sk, strlen(sk), prk,
		  &n) || !HMAC(EVP_sha256(), prk, (int)n, info, il + 1, okm, &m) ||
	    m != SHA256_DIGEST_LENGTH)
		abort();
	hex_encode(okm, m, out);
	OPENSSL_cleanse(prk, sizeof prk);
	OPENSSL_cleanse(okm, sizeof okm);
}

/* scope NULL: SDK-HMAC-SHA256, keyed with the SK; else V11-HMAC-SHA256,
 * keyed with the key derived for that scope. */
static void sig_sign(const char *ak, const char *sk, const char *scope, const char *date,
		     const char *hash, char out[HEX256])	/* hex(HMAC-SHA256(key, StringToSign)) */
{
	char sts[STS_MAX], key[HEX256];

	if (!scope) {
		snprintf(sts, sizeof sts, SIG_BASIC "\n%s\n%s", date, hash);
		hmac_hex(sk, strlen(sk), sts, out);
		return;
	}
	snprintf(sts, sizeof sts, SIG_DERIVED "\n%s\n%s\n%s", date, scope, hash);
	derived_key(ak, sk, scope, key);
	hmac_hex(key, strlen(key), sts, out);
	OPENSSL_cleanse(key, sizeof key);
}

static const struct auth_member {	/* the members of an Authorization */
	const char *name;
	int scheme;			/* the one scheme that has it; SCHEMES: both */
	size_t off, size;
} auth_members[] = {
	{ "Access=",        SCHEME_BASIC,   offsetof(struct sig_auth, access),
	  sizeof ((struct sig_auth *)0)->access },
	{ "Credential=",    SCHEME_DERIVED, offsetof(struct sig_auth, credential),
	  sizeof ((struct sig_auth *)0)->credential },
	{ "SignedHeaders=", SCHEMES,        offsetof(struct sig_auth, names),      HEADER_MAX },
	{ "Signature=",     SCHEMES,        offsetof(struct sig_auth, signature),  HEX256 },
};

static int auth_member(struct sig_auth *au, const char *s, size_t n)	/* one Name=value: 0 if the scheme's, new and fits */
{
	size_t i;

	for (i = 0; i < LWS_ARRAY_SIZE(auth_members); i++) {
		const struct auth_member *m = &auth_members[i];
		size_t nl = strlen(m->name);
		char *dst = (char *)au + m->off;

		if (n < nl || strncmp(s, m->name, nl) ||
		    (m->scheme != SCHEMES && m->scheme != (int)au->scheme))
			continue;
		if (n - nl >= m->size || dst[0])
			return -1;
		memcpy(dst, s + nl, n - nl);
		dst[n - nl] = '\0';
		return 0;
	}
	return -1;
}

/* The scope is the Credential's last three '/'-separated parts: the AK
 * before them may hold a '/' (--ak allows one). */
static int credential_split(struct sig_auth *au)	/* Credential=AK/scope: 0 if both fit */
{
	const char *c = au->credential;
	size_t n = strlen(c);
	int slashes = 0;

	while (n && (slashes += c[n - 1] == '/') < 3)
		n--;
	if (slashes < 3 || n - 1 > AK_MAX || strlen(c + n) > SCOPE_MAX)
		return -1;
	memcpy(au->access, c, n - 1);
	au->access[n - 1] = '\0';
	strcpy(au->scope, c + n);
	return 0;
}

static int scheme_of(const char *h)	/* the scheme h starts with (then a blank), or -1 */
{
	int i;

	for (i = 0; i < SCHEMES; i++) {
		size_t n = strlen(sig_schemes[i].name);

		if (!strncmp(h, sig_schemes[i].name, n) && h[n] == ' ')
			return i;
	}
	return -1;
}

static int auth_parse(const char *h, struct sig_auth *au)	/* 0 if a known scheme with all its members */
{
	int scheme = scheme_of(h);

	memset(au, 0, sizeof(*au));
	if (scheme < 0)
		return -1;
	au->scheme = (enum scheme)scheme;
	for (h += strlen(sig_schemes[scheme].name); *h; ) {
		size_t n;

		h += strspn(h, " ,");
		n = strcspn(h, " ,");
		if (n && auth_member(au, h, n))
			return -1;
		h += n;
	}
	if (au->scheme == SCHEME_DERIVED && credential_split(au))
		return -1;
	return au->access[0] && au->names[0] && au->signature[0] ? 0 : -1;
}

static int names_valid(const char *names)	/* h1;h2;...: lowercase header names, at most SIG_NAMES_MAX */
{
	int count = 0;

	while (*names) {
		size_t n = strspn(names, "abcdefghijklmnopqrstuvwxyz0123456789-_");

		if (!n || n > SIG_NAME_MAX || (names[n] && names[n] != ';') ||
		    ++count > SIG_NAMES_MAX)
			return 0;
		names += n + (names[n] == ';');
	}
	return count > 0;
}

static int names_have(const char *names, const char *name)	/* name is one of h1;h2;... */
{
	size_t len = strlen(name);

	while (*names) {
		size_t n = strcspn(names, ";");

		if (n == len && !strncmp(names, name, len))
			return 1;
		names += n + (names[n] == ';');
	}
	return 0;
}

/* The round trip through strftime turns away what strptime lets by:
 * blanks, short fields, February 30th. */
static int sdk_date(const char *s, time_t *t)	/* YYYYMMDDTHHMMSSZ, UTC */
{
	struct tm tm;
	char back[17];
	const char *end;

	memset(&tm, 0, sizeof tm);
	end = strptime(s, "%Y%m%dT%H%M%SZ", &tm);
	if (!end || *end)
		return -1;
	*t = timegm(&tm);
	iotda_time(*t, back);
	return strcmp(back, s) ? -1 : 0;
}

/* credential_split() leaves exactly two '/' in a scope. */
static enum sig_result scope_check(const char *scope, const char *date,
				   const char *region)	/* YYYYMMDD/region/iotdm, the date X-Sdk-Date's */
{
	static const enum sig_result wrong[] = { SIG_SCOPE_DATE, SIG_SCOPE_REGION,
						 SIG_SCOPE_SERVICE };
	const char *want[] = { date, region, SIG_SERVICE };
	const size_t want_len[] = { 8, strlen(region), strlen(SIG_SERVICE) };
	size_t i;

	for (i = 0; i < LWS_ARRAY_SIZE(wrong); i++) {
		size_t n = strcspn(scope, "/");

		if (n != want_len[i] || strncmp(scope, want[i], n))
			return wrong[i];
		scope += n + (scope[n] == '/');
	}
	return SIG_OK;
}

static enum sig_result sig_precheck(const struct sig_keys *k, const struct sig_req *q,
				    const struct sig_auth *au, time_t now,
				    char date[17])	/* what needs no hashing: the date, the names, the scope */
{
	char raw[64], *d;
	time_t t;

	if (q->header(q->ctx, "x-sdk-date", raw, sizeof raw) < 0 || sdk_date(d = trim(raw), &t))
		return SIG_NO_DATE;
	memcpy(date, d, 17);	/* sdk_date(): 16 characters */
	if (t > now + SIG_SKEW || t < now - SIG_SKEW)
		return SIG_SKEWED;
	if (!names_have(au->names, "x-sdk-date"))
		return SIG_DATE_UNSIGNED;
	if (!names_have(au->names, "host"))
		return SIG_HOST_UNSIGNED;
	return au->scheme == SCHEME_DERIVED ? scope_check(au->scope, date, k->region) : SIG_OK;
}

static enum sig_result sig_verify(const struct sig_keys *k, struct sig_req *q,
				  const char *authz, time_t now)	/* checks one signed request */
{
	struct sig_auth au;
	char date[17], hash[HEX256], want[HEX256];
	enum sig_result e;
	int match;

	if (auth_parse(authz, &au) || !names_valid(au.names))
		return SIG_MALFORMED;
	if ((e = sig_precheck(k, q, &au, now, date)) != SIG_OK)
		return e;
	if (canonical_hash(q, au.names, hash))
		return SIG_UNREADABLE;
	sig_sign(k->ak, k->sk, au.scheme == SCHEME_DERIVED ? au.scope : NULL, date, hash, want);
	match = CRYPTO_memcmp(want, au.signature, sizeof want) == 0;
	OPENSSL_cleanse(want, sizeof want);
	if (!token_equal(au.access, k->ak))
		return SIG_BAD_AK;
	return match ? SIG_OK : SIG_MISMATCH;
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
	int n = a->in->header(a->in->ctx, "host", host, sizeof host);

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

/* What IoTDA would publish to the device over MQTT on
 * $oc/devices/{device_id}/sys/events/down when the tunnel is created. */
static cJSON *notify_event(struct rest_args *a, const struct tunnel *t)	/* t's tunnel_notify event */
{
	cJSON *o = cJSON_CreateObject(), *svc = cJSON_CreateObject();
	cJSON *paras = cJSON_CreateObject(), *list = cJSON_CreateArray();
	char url[512];

	tunnel_url(a, t, ROLE_DEVICE, url, sizeof url);
	cJSON_AddStringToObject(paras, "tunnel_uri", url);
	cJSON_AddStringToObject(paras, "tunnel_access_token", t->token[ROLE_DEVICE]);
	cJSON_AddNumberToObject(paras, "expires_in", (double)tunnel_expires_in(t));
	cJSON_AddStringToObject(svc, "service_id", "$tunnel_manager");
	cJSON_AddStringToObject(svc, "event_type", "tunnel_notify");
	add_time(svc, "event_time", time(NULL));
	cJSON_AddItemToObject(svc, "paras", paras);
	cJSON_AddItemToArray(list, svc);
	cJSON_AddStringToObject(o, "object_device_id", t->device_id);
	cJSON_AddItemToObject(o, "services", list);
	return o;
}

static void notify_device(struct rest_args *a, const struct tunnel *t)	/* the event down the device's events channel */
{
	struct device *d = device_find(a->r, t->device_id);
	cJSON *ev;
	char *s;

	if (!d || !d->events)
		return;
	ev = notify_event(a, t);
	s = cJSON_PrintUnformatted(ev);
	cJSON_Delete(ev);
	if (!s)
		abort();
	peer_send(d->events, s, strlen(s));
	secret_free(s);
	sb_log("tunnel %s: notify sent to device %s", t->id, d->id);
}

/* IOTDA.014000 is IoTDA's code for a device that does not exist, and
 * IOTDA.014016 the one it gives a command for an offline device; HTTP 400
 * for a tunnel to an offline device is the sandbox's choice. */
static int device_check(struct rest_args *a, const char *id)	/* 0, or 404 unknown, 400 offline */
{
	struct device *d = device_find(a->r, id);

	if (a->r->devices_file && !(d && d->listed)) {
		a->note = "unknown device";
		return rest_error(a, 404, "IOTDA.014000", "The device does not exist.");
	}
	if (a->r->require_online && !(d && d->events)) {
		a->note = "device offline";
		return rest_error(a, 400, "IOTDA.014016",
				  "Operation not allowed. The device is not online.");
	}
	return 0;
}

static int created(struct rest_args *a, struct tunnel *t)	/* the 201 body, then the device's notify */
{
	char url[512];

	tunnel_arm(t);
	sb_log("tunnel %s: created for device %s", t->id, t->device_id);
	tunnel_url(a, t, ROLE_APP, url, sizeof url);
	a->out = cJSON_CreateObject();
	cJSON_AddStringToObject(a->out, "tunnel_id", t->id);
	cJSON_AddStringToObject(a->out, "tunnel_access_token", t->token[ROLE_APP]);
	cJSON_AddNumberToObject(a->out, "expires_in", (double)tunnel_expires_in(t));
	cJSON_AddStringToObject(a->out, "tunnel_uri", url);
	notify_device(a, t);
	return 201;
}

/* Body {"device_id"}; also takes "expires_in" (seconds), a sandbox extension. */
static int rest_create(struct rest_args *a)	/* POST /v5/iot/{project_id}/tunnels */
{
	struct rest_call *c = &a->p->call;
	cJSON *body = c->body.len ? cJSON_ParseWithLength(c->body.p, c->body.len) : NULL;
	cJSON *dev = cJSON_GetObjectItemCaseSensitive(body, "device_id");
	long expires_in = json_seconds(cJSON_GetObjectItemCaseSensitive(body, "expires_in"),
				       DEFAULT_EXPIRES_IN);
	char id[37];
	int status;

	if (!cJSON_IsString(dev) || !valid_id(dev->valuestring, strlen(dev->valuestring)) ||
	    expires_in < 1)
		status = rest_error(a, 400, "IOTDA.000006", "Invalid input data: device_id "
				    "(1-128 of A-Z a-z 0-9 _ -) is required.");
	else
		status = device_check(a, dev->valuestring);
	if (!status) {
		uuid4(id);
		status = created(a, tunnel_new(a->r, id, dev->valuestring, NULL, NULL, expires_in));
	}
	cJSON_Delete(body);
	return status;
}

static const char *rest_arg(const struct rest_in *in, const char *prefix, char *buf,
			    size_t size)	/* what follows prefix in the first parameter with it, or NULL */
{
	size_t pl = strlen(prefix);
	int i;

	for (i = 0; in->arg(in->ctx, i, buf, size) >= 0; i++)	/* as lws_get_urlarg_by_name */
		if (!strncmp(buf, prefix, pl))
			return buf + pl;
	return NULL;
}

static int rest_list(struct rest_args *a)	/* GET /v5/iot/{project_id}/tunnels[?device_id=] */
{
	char buf[ID_MAX + 16];
	const char *dev = rest_arg(a->in, "device_id=", buf, sizeof buf);
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

static void record_marker(uint64_t record, char out[MARKER_LEN + 1])	/* a record id as a marker */
{
	snprintf(out, MARKER_LEN + 1, "%0*" PRIx64, MARKER_LEN, record);
}

static int marker_record(const char *s, uint64_t *record)	/* a marker we handed out: 0, and its record */
{
	char back[MARKER_LEN + 1];

	if (strlen(s) != MARKER_LEN || strspn(s, "0123456789abcdef") != MARKER_LEN)
		return -1;
	*record = strtoull(s + MARKER_LEN - 16, NULL, 16);
	record_marker(*record, back);
	return strcmp(back, s) ? -1 : 0;
}

static cJSON *device_info(const struct device *d)	/* an IoTDA QueryDeviceSimplify */
{
	cJSON *o = cJSON_CreateObject();
	size_t i;

	cJSON_AddStringToObject(o, "device_id", d->id);
	for (i = 0; i < LWS_ARRAY_SIZE(device_fields); i++)
		if (device_text(d, i))
			cJSON_AddStringToObject(o, device_fields[i].json, device_text(d, i));
	cJSON_AddStringToObject(o, "gateway_id", d->id);	/* directly connected */
	cJSON_AddStringToObject(o, "node_type", "GATEWAY");
	cJSON_AddStringToObject(o, "status", device_status(d));
	return o;
}

struct device_query {		/* ListDevices' query parameters */
	long limit, offset;
	uint64_t below;			/* records under this one; the marker */
	char buf[DEV_TEXTS][TEXT_MAX + 32];
	const char *filter[DEV_TEXTS];	/* NULL: any */
};

static int device_query(const struct rest_in *in, struct device_query *dq)	/* 0, or -1 if a parameter is bad */
{
	char buf[64];
	const char *v;
	size_t i;

	memset(dq, 0, sizeof(*dq));
	dq->limit = PAGE_DEFAULT;
	dq->below = UINT64_MAX;
	if (((v = rest_arg(in, "limit=", buf, sizeof buf)) && parse_long(v, 1, PAGE_MAX, &dq->limit)) ||
	    ((v = rest_arg(in, "offset=", buf, sizeof buf)) &&
	     parse_long(v, 0, OFFSET_MAX, &dq->offset)) ||
	    ((v = rest_arg(in, "marker=", buf, sizeof buf)) && marker_record(v, &dq->below)))
		return -1;
	for (i = 0; i < LWS_ARRAY_SIZE(device_fields); i++) {
		char prefix[32];

		snprintf(prefix, sizeof prefix, "%s=", device_fields[i].json);
		if (device_fields[i].filter)
			dq->filter[i] = rest_arg(in, prefix, dq->buf[i], sizeof dq->buf[i]);
	}
	return 0;
}

static int device_matches(const struct device *d, const struct device_query *dq)	/* passes every filter */
{
	size_t i;

	for (i = 0; i < LWS_ARRAY_SIZE(dq->filter); i++)
		if (dq->filter[i] && (!device_text(d, i) || strcmp(dq->filter[i], device_text(d, i))))
			return 0;
	return 1;
}

/* Newest first; a page starts below the marker (the last record of the
 * one before), skips offset, holds limit; count is every device the
 * filters pass. */
static int rest_devices(struct rest_args *a)	/* GET /v5/iot/{project_id}/devices */
{
	struct device_query dq;
	cJSON *list, *page;
	const struct device *last = NULL;
	long count = 0, taken = 0;
	char marker[MARKER_LEN + 1];
	lws_dll2_t *d;

	if (device_query(a->in, &dq))
		return rest_error(a, 400, "IOTDA.000006", "Invalid input data: limit (1-50), "
				  "offset (0-500), marker (from the page before).");
	list = cJSON_CreateArray();
	for (d = lws_dll2_get_tail(&a->r->devices); d; d = d->prev) {
		const struct device *dev = lws_container_of(d, struct device, list);

		if (!device_matches(dev, &dq))
			continue;
		count++;
		if (dev->record >= dq.below || dq.offset-- > 0 || taken == dq.limit)
			continue;
		cJSON_AddItemToArray(list, device_info(dev));
		last = dev;
		taken++;
	}
	a->out = cJSON_CreateObject();
	cJSON_AddItemToObject(a->out, "devices", list);
	page = cJSON_AddObjectToObject(a->out, "page");
	cJSON_AddNumberToObject(page, "count", (double)count);
	if (last) {
		record_marker(last->record, marker);
		cJSON_AddStringToObject(page, "marker", marker);
	}
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

/* The event the device would get when the tunnel is created (its events
 * channel gets it then, if open). */
static int rest_notify(struct rest_args *a)	/* GET /sandbox/tunnels/{tunnel_id}/notify */
{
	struct tunnel *t = tunnel_find(a->r, a->tunnel);

	if (!t || t->closed)
		return rest_no_tunnel(a);
	a->out = notify_event(a, t);
	return 200;
}

static const struct rest_route {	/* the REST API: method, path pattern, handler */
	int method;
	const char *pattern;
	int (*handler)(struct rest_args *a);
	int tunnel_api;			/* IoTDA's tunnel API: 403 with --no-tunnel-edition */
} rest_routes[] = {
	{ LWSHUMETH_POST,   "/v5/iot/{project_id}/tunnels",             rest_create, 1 },
	{ LWSHUMETH_GET,    "/v5/iot/{project_id}/tunnels",             rest_list,   1 },
	{ LWSHUMETH_GET,    "/v5/iot/{project_id}/tunnels/{tunnel_id}", rest_show,   1 },
	{ LWSHUMETH_PUT,    "/v5/iot/{project_id}/tunnels/{tunnel_id}", rest_close,  1 },
	{ LWSHUMETH_DELETE, "/v5/iot/{project_id}/tunnels/{tunnel_id}", rest_delete, 1 },
	{ LWSHUMETH_GET,    "/v5/iot/{project_id}/devices",             rest_devices, 0 },
	{ LWSHUMETH_GET,    "/sandbox/tunnels/{tunnel_id}/notify",      rest_notify, 0 },
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

static int rest_token_ok(const struct rest_in *in, const char *want)	/* X-Auth-Token is want */
{
	char got[TOKEN_MAX + 1] = "";

	return token_matches(got, in->header(in->ctx, "x-auth-token", got, sizeof got), want);
}

/* Headers lws knows are tokens (found by their "name:"); the rest it keeps
 * as custom headers, under their lowercase names with the colon. */
static int lws_header(void *ctx, const char *name, char *out, size_t size)	/* a request header; <0 absent */
{
	struct lws *wsi = ctx;
	char colon[SIG_NAME_MAX + 2];
	int i, n = snprintf(colon, sizeof colon, "%s:", name);

	for (i = 0; i < WSI_TOKEN_COUNT; i++) {
		const char *tok = (const char *)lws_token_to_string((enum lws_token_indexes)i);

		if (tok && !strcmp(tok, colon))
			return lws_hdr_total_length(wsi, (enum lws_token_indexes)i) > 0 ?
			       lws_hdr_copy(wsi, out, (int)size, (enum lws_token_indexes)i) : -1;
	}
	return lws_hdr_custom_copy(wsi, out, (int)size, colon, n);
}

static int lws_arg(void *ctx, int i, char *out, size_t size)	/* the i-th query parameter; <0 past the last */
{
	return lws_hdr_copy_fragment(ctx, out, (int)size, WSI_TOKEN_HTTP_URI_ARGS, i);
}

/* lws has URL-decoded them ('+' too) and split them at '&'; empty ones are
 * skipped, as the gateway's URL parser skips them. */
static int query_args(const struct rest_in *in, struct sig_req *q, char *store, size_t size)	/* the query; -1 if too many */
{
	size_t used = 0;
	int i, n;

	for (i = 0; (n = in->arg(in->ctx, i, store + used, size - used)) >= 0; i++) {
		if (!n)
			continue;
		if (q->nargs == SIG_ARGS_MAX)
			return -1;
		q->args[q->nargs++] = store + used;
		used += (size_t)n + 1;
	}
	return 0;
}

static enum sig_result rest_signature(struct rest_args *a, const char *authz)	/* checks the request's signature */
{
	struct relay *r = a->r;
	struct rest_call *c = &a->p->call;
	char store[HEADER_MAX + SIG_ARGS_MAX + 1];
	struct sig_keys k = { r->ak, r->sk, r->region };
	struct sig_req q = { .method = method_name[c->method], .path = c->path,
			     .header = a->in->header, .ctx = a->in->ctx,
			     .body = c->body.p, .body_len = c->body.len };

	if (query_args(a->in, &q, store, sizeof store))
		return SIG_UNREADABLE;
	return sig_verify(&k, &q, authz, time(NULL));
}

/* A good X-Auth-Token or a good signature lets the call in; every refusal
 * is IoTDA's 401 IOTDA.000002, whichever failed. */
static int rest_auth(struct rest_args *a)	/* 0, or the 401 to answer */
{
	struct relay *r = a->r;
	char authz[HEADER_MAX + 1];
	enum sig_result e;

	if (r->api_token && rest_token_ok(a->in, r->api_token))
		return 0;
	if (!r->ak || a->in->header(a->in->ctx, "authorization", authz, sizeof authz) <= 0) {
		a->note = r->api_token ? "X-Auth-Token refused" : "no Authorization";
		return rest_error(a, 401, AUTH_CODE, r->api_token ?
				  AUTH_FAILED "missing or wrong X-Auth-Token." :
				  AUTH_FAILED "no " SIG_BASIC " or " SIG_DERIVED
				  " Authorization header");
	}
	e = rest_signature(a, authz);
	if (e != SIG_OK) {
		a->note = sig_errors[e].why;
		return rest_error(a, 401, AUTH_CODE, sig_errors[e].msg);
	}
	a->note = sig_schemes[scheme_of(authz)].note;
	return 0;
}

/* A token bucket of rate_limit tokens, refilled at rate_limit a second, a
 * token a call; counted in millionths of a token, so refilling is exact. */
static int rate_take(struct relay *r)	/* 1 if a REST call may go now; counts it */
{
	const uint64_t one = 1000000, full = (uint64_t)r->rate_limit * one;
	lws_usec_t now = lws_now_usecs(), elapsed = now - r->bucket_at;

	if (r->rate_limit) {
		r->bucket = elapsed >= LWS_US_PER_SEC ? full :
			    r->bucket + (uint64_t)elapsed * (uint64_t)r->rate_limit;
		r->bucket = r->bucket < full ? r->bucket : full;
		r->bucket_at = now;
		if (r->bucket < one) {
			r->throttled++;
			return 0;
		}
		r->bucket -= one;
	}
	r->served++;
	return 1;
}

static int rest_throttled(struct rest_args *a)	/* 429 IOTDA.021101, the counts in the log */
{
	struct relay *r = a->r;

	snprintf(a->note_buf, sizeof a->note_buf, "over %ld calls a second: %lu served, %lu refused",
		 r->rate_limit, r->served, r->throttled);
	a->note = a->note_buf;
	return rest_error(a, 429, "IOTDA.021101", "Too many requests: the API's flow control "
			  "refused the call; retry later.");
}

static int rest_route(struct rest_args *a, const struct rest_route **hit)	/* finds and runs a handler */
{
	const struct rest_call *c = &a->p->call;
	int path_known = 0, status;
	size_t i;

	for (i = 0; i < LWS_ARRAY_SIZE(rest_routes) && !*hit; i++)
		if (route_match(rest_routes[i].pattern, c->path, a)) {
			path_known = 1;
			if (rest_routes[i].method == c->method)
				*hit = &rest_routes[i];
		}
	if (!a->r->api_token && !a->r->ak)
		return rest_error(a, 404, "IOTDA.000404", "The REST API is off: start the "
				  "relay with --api-token or --ak and --sk-file.");
	if (!rate_take(a->r))
		return rest_throttled(a);
	if (!*hit)
		return path_known ? rest_error(a, 405, "IOTDA.000405", "Method not allowed.") :
				    rest_error(a, 404, "IOTDA.000404", "No such API.");
	if (c->body_too_big)	/* before auth: a signature covers the whole body */
		return rest_error(a, 413, "IOTDA.000413", "Request body too large.");
	if ((status = rest_auth(a)))
		return status;
	if ((*hit)->tunnel_api && a->r->no_tunnel_edition)	/* the code is the sandbox's */
		return rest_error(a, 403, "IOTDA.000403", "Operation not allowed. The edition "
				  "of this instance does not support secure tunnels.");
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
	const struct rest_in in = { lws_header, lws_arg, p->wsi };
	struct rest_args a = { .r = p->r, .p = p, .in = &in };
	const struct rest_route *hit = NULL;
	int status = rest_route(&a, &hit);
	int m = p->call.method;

	sb_log("rest: %s %s: %d%s%s%s", m >= 0 && m < (int)LWS_ARRAY_SIZE(method_name) ?
	       method_name[m] : "?", hit ? hit->pattern : "(no route)", status,
	       a.note ? " (" : "", a.note ? a.note : "", a.note ? ")" : "");
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
	case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
		p->peer_close = len >= 2 ? ((const unsigned char *)in)[0] << 8 | ((const unsigned char *)in)[1] : 1005;
		peer_leaving(p);
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

static const char *reading(const struct peer *p)	/* a peer's read state, for the queue report */
{
	return !p ? "absent" : p->rx_off ? "paused" : "read";
}

/* Bytes the relay holds toward each role (queued frames and the delay
 * line), the most it ever held, and whether each side is being read: what
 * a flood leaves in the relay, as opposed to the socket buffers. */
static void relay_report_queues(struct relay *r)	/* SIGUSR2: one line a live tunnel */
{
	lws_dll2_t *d;

	for (d = lws_dll2_get_head(&r->tunnels); d; d = d->next) {
		struct tunnel *t = lws_container_of(d, struct tunnel, list);

		if (!t->peer[ROLE_APP] && !t->peer[ROLE_DEVICE])
			continue;
		sb_log("tunnel %s: queued to app %zu (peak %zu), to device %zu (peak %zu); app %s, device %s",
		       t->id, backlog(t, ROLE_APP), t->peak[ROLE_APP], backlog(t, ROLE_DEVICE),
		       t->peak[ROLE_DEVICE], reading(t->peer[ROLE_APP]), reading(t->peer[ROLE_DEVICE]));
	}
	sb_log("SIGUSR2: queues reported");
}

static void signals_read(struct relay *r, struct lws *wsi)	/* acts on each pending signal */
{
	struct signalfd_siginfo si;

	while (read(lws_get_socket_fd(wsi), &si, sizeof si) == (ssize_t)sizeof si) {
		if (si.ssi_signo == SIGUSR1) {
			relay_drop_devices(r);
			continue;
		}
		if (si.ssi_signo == SIGUSR2) {
			relay_report_queues(r);
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
	sigaddset(set, SIGUSR2);
	sigprocmask(SIG_BLOCK, set, NULL);
}

/* Blocked signals queue on a signalfd the loop reads like any connection:
 * nothing runs in a handler, and no signal slips between checks. */
static int signals_open(struct relay *r)	/* SIGTERM, SIGINT, SIGUSR1, SIGUSR2 into the loop */
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
	"  --ak AK --sk-file FILE enable the REST API for calls signed with this AK/SK\n"
	"                         (SDK-HMAC-SHA256 or the derived V11-HMAC-SHA256, as\n"
	"                         Huawei Cloud's API gateway); the SK is read from\n"
	"                         FILE only, and never logged\n"
	"  --region REGION        the region a derived signature's scope must name\n"
	"                         (default " DEFAULT_REGION ")\n"
	"  --devices FILE         JSON array of the devices that exist, each an id or\n"
	"                         {device_id, name, node_id, product_id, product_name,\n"
	"                         status}; creating a tunnel for another is 404\n"
	"                         (default: any id exists)\n"
	"  --require-online       creating a tunnel for an offline device is 400 (a\n"
	"                         device is online while its events channel is open)\n"
	"  --no-tunnel-edition    every tunnel API call is 403, as on an instance whose\n"
	"                         edition has no secure tunnels\n"
	"  --auth-close           refuse bad tokens on both routes with close 1002 after\n"
	"                         the upgrade (default: the app route answers HTTP\n"
	"                         401/404, the device route closes 1002)\n"
	"  --device-auth http|close  how the device route refuses a bad token or\n"
	"                         tunnel: HTTP 401/404, or close 1002 (default)\n"
	"  --max-message BYTES    largest message relayed from the app (default 10240)\n"
	"  --max-device-message BYTES  largest message relayed from the device\n"
	"                         (default 16384)\n"
	"  --rate-limit N         at most N REST calls a second, the whole relay (a\n"
	"                         token bucket of N); more are refused 429\n"
	"                         IOTDA.021101 (default 0: no limit)\n"
	"  --delay-ms N           delay every message sent by N ms\n"
	"  --cut-after ROLE:N     drop ROLE's (app|device) TCP connection after\n"
	"                         relaying N messages from it (once per tunnel)\n"
	"  --stall-after N        after N relayed messages, read nothing more\n"
	"  --corrupt ROLE:N       change one character in the middle of the data of\n"
	"                         the Nth message from ROLE (app|device), or the\n"
	"                         first after it with 256 characters of data or\n"
	"                         more; once per tunnel; the JSON stays valid\n"
	"  --self-check           check the AK/SK verifier against the worked example\n"
	"                         of Huawei Cloud's API Request Signing Guide and a\n"
	"                         derived signature made by Huawei's own SDK; exit\n"
	"  --help                 this text\n"
	"REST (with --api-token or --ak): a call needs a good X-Auth-Token header or a\n"
	"good signature (Authorization: SDK-HMAC-SHA256 Access=AK, SignedHeaders=...,\n"
	"Signature=HEX, or V11-HMAC-SHA256 Credential=AK/YYYYMMDD/REGION/iotdm,\n"
	"SignedHeaders=..., Signature=HEX; host and X-Sdk-Date: YYYYMMDDTHHMMSSZ\n"
	"signed, the date within 15 minutes).  Refusals: 401 IOTDA.000002.\n"
	"An Instance-Id header is accepted, signed or not.\n"
	"  POST /v5/iot/{project_id}/tunnels {\"device_id\"}   create: 201\n"
	"  GET  /v5/iot/{project_id}/tunnels[?device_id=]     list\n"
	"  GET  /v5/iot/{project_id}/devices[?limit=1..50&marker=&offset=0..500\n"
	"       &product_id=&device_name=&node_id=]  devices, newest first: status\n"
	"       ONLINE while the events channel is open, else --devices' or OFFLINE\n"
	"  GET|PUT|DELETE /v5/iot/{project_id}/tunnels/{id}  show | close | delete\n"
	"  GET  /sandbox/tunnels/{id}/notify   the device's tunnel_notify event\n"
	"Device events, the stand-in for each device's MQTT connection.  It has no\n"
	"auth, so it is served to loopback peers only:\n"
	"  WebSocket /sandbox/devices/{device_id}/events   one per device (a newer one\n"
	"           replaces the older: close 4000); each tunnel created for the\n"
	"           device sends its tunnel_notify event on it as one text frame\n"
	"Signals: SIGUSR1 drops every device's tunnel connection (not the events\n"
	"channels); SIGUSR2 logs each live tunnel's queues (bytes held toward the\n"
	"app and the device, their peaks, which side is being read); SIGTERM/SIGINT\n"
	"exit.\n";

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
	char *s = read_secret(v);
	int rc = s ? opt_api_token(r, s) : -1;

	secret_free(s);
	return rc;
}

static int opt_ak(struct relay *r, const char *v)	/* --ak AK */
{
	if (!valid_token(v) || strlen(v) > AK_MAX)
		return -1;
	free(r->ak);
	r->ak = strdup(v);
	return r->ak ? 0 : -1;
}

static int opt_sk_file(struct relay *r, const char *v)	/* --sk-file FILE: the SK, never argv */
{
	char *s = read_secret(v);

	if (!s || !valid_token(s)) {
		secret_free(s);
		return -1;
	}
	secret_free(r->sk);
	r->sk = s;
	return 0;
}

static int opt_devices(struct relay *r, const char *v) { r->devices_file = v; return 0; }	/* --devices FILE */
static int opt_require_online(struct relay *r, const char *v) { (void)v; r->require_online = 1; return 0; }	/* --require-online */
static int opt_no_tunnel_edition(struct relay *r, const char *v) { (void)v; r->no_tunnel_edition = 1; return 0; }	/* --no-tunnel-edition */
static int opt_self_check(struct relay *r, const char *v) { (void)v; r->self_check = 1; return 0; }	/* --self-check */

static int max_message(struct relay *r, enum role role, const char *v)	/* one role's message limit */
{
	long n;

	if (parse_long(v, 1, MAX_MESSAGE_LIMIT, &n))
		return -1;
	r->max_message[role] = (size_t)n;
	return 0;
}

static int opt_max_message(struct relay *r, const char *v) { return max_message(r, ROLE_APP, v); }	/* --max-message BYTES */
static int opt_max_device_message(struct relay *r, const char *v) { return max_message(r, ROLE_DEVICE, v); }	/* --max-device-message BYTES */

static int opt_region(struct relay *r, const char *v)	/* --region REGION: 1-63 of [a-z0-9-] */
{
	size_t n = strlen(v);

	if (!n || n > REGION_MAX || strspn(v, "abcdefghijklmnopqrstuvwxyz0123456789-") != n)
		return -1;
	r->region = v;
	return 0;
}

static int opt_device_auth(struct relay *r, const char *v)	/* --device-auth close|http */
{
	if (strcmp(v, "close") && strcmp(v, "http"))
		return -1;
	r->device_auth_http = !strcmp(v, "http");
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

static int parse_role_count(const char *v, int *role, unsigned long *count)	/* ROLE:N */
{
	long n;

	for (int k = 0; k < ROLES; k++) {
		size_t rl = strlen(role_name[k]);

		if (!strncmp(v, role_name[k], rl) && v[rl] == ':' &&
		    !parse_long(v + rl + 1, 1, LONG_MAX, &n)) {
			*role = k;
			*count = (unsigned long)n;
			return 0;
		}
	}
	return -1;
}

static int opt_cut_after(struct relay *r, const char *v)	/* --cut-after ROLE:N */
{
	return parse_role_count(v, &r->cut_role, &r->cut_after);
}

static int opt_corrupt(struct relay *r, const char *v)	/* --corrupt ROLE:N */
{
	return parse_role_count(v, &r->corrupt_role, &r->corrupt_nth);
}

static int opt_rate_limit(struct relay *r, const char *v)	/* --rate-limit N */
{
	return parse_long(v, 0, RATE_MAX, &r->rate_limit);
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
	{ "--ak",             opt_ak,             1 },
	{ "--sk-file",        opt_sk_file,        1 },
	{ "--devices",        opt_devices,        1 },
	{ "--require-online", opt_require_online, 0 },
	{ "--no-tunnel-edition", opt_no_tunnel_edition, 0 },
	{ "--self-check",     opt_self_check,     0 },
	{ "--region",         opt_region,         1 },
	{ "--auth-close",     opt_auth_close,     0 },
	{ "--device-auth",    opt_device_auth,    1 },
	{ "--max-message",    opt_max_message,    1 },
	{ "--max-device-message", opt_max_device_message, 1 },
	{ "--rate-limit",     opt_rate_limit,     1 },
	{ "--delay-ms",       opt_delay_ms,       1 },
	{ "--cut-after",      opt_cut_after,      1 },
	{ "--stall-after",    opt_stall_after,    1 },
	{ "--corrupt",        opt_corrupt,        1 },
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
	if (!r->ak != !r->sk)
		usage_exit("--ak and --sk-file go together");
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

static int valid_text(const char *s)	/* 1-256 bytes, no control characters */
{
	size_t i, len = strlen(s);

	for (i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return 0;
	return len >= 1 && len <= TEXT_MAX;
}

static const char *status_of(const char *s)	/* IoTDA's spelling of a status, or NULL */
{
	size_t i;

	for (i = 0; i < LWS_ARRAY_SIZE(device_statuses); i++)
		if (!strcmp(s, device_statuses[i]))
			return device_statuses[i];
	return NULL;
}

static int details_valid(const cJSON *o)	/* an object's details are strings of the right kind */
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "status");
	size_t i;

	for (i = 0; i < LWS_ARRAY_SIZE(device_fields); i++) {
		const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, device_fields[i].member);

		if (f && !(cJSON_IsString(f) && valid_text(f->valuestring)))
			return 0;
	}
	return !v || (cJSON_IsString(v) && status_of(v->valuestring));
}

static void details_take(struct device *d, const cJSON *o)	/* a valid object's details */
{
	const char *status = json_str(o, "status");
	size_t i;

	for (i = 0; i < LWS_ARRAY_SIZE(device_fields); i++) {
		const char *v = json_str(o, device_fields[i].member);

		if (v && !(d->text[i] = strdup(v)))
			abort();
	}
	d->status = status ? status_of(status) : NULL;
}

/* An entry is a device id, or {"device_id", and optional "name", "node_id",
 * "product_id", "product_name", "status"}.  A device listed again keeps
 * its first entry's details. */
static int load_device(struct relay *r, const cJSON *o, int n)	/* one entry of --devices */
{
	const char *id = cJSON_IsString(o) ? o->valuestring : json_str(o, "device_id");
	struct device *d;

	if (!id || !valid_id(id, strlen(id)) || (cJSON_IsObject(o) && !details_valid(o))) {
		sb_log("%s: entry %d: neither a device id (1-128 of A-Z a-z 0-9 _ -) nor {device_id, "
		       "name, node_id, product_id, product_name (1-256 bytes), status (ONLINE, "
		       "OFFLINE, ABNORMAL, INACTIVE or FROZEN)}", r->devices_file, n);
		return -1;
	}
	d = device_find(r, id);
	if (!d)
		d = device_add(r, id);
	if (d->listed)
		return 0;
	d->listed = 1;
	if (cJSON_IsObject(o))
		details_take(d, o);
	return 0;
}

static int load_array(struct relay *r, const char *path,
		      int (*load)(struct relay *r, const cJSON *o, int n))	/* a JSON array file, entry by entry */
{
	size_t len;
	char *text;
	cJSON *all, *o;
	int n = 0, rc = 0;

	if (!path)
		return 0;
	text = read_file(path, &len);
	all = text ? cJSON_ParseWithLength(text, len) : NULL;
	if (text && !cJSON_IsArray(all))
		sb_log("%s: not a JSON array", path);
	if (!cJSON_IsArray(all))
		rc = -1;
	else
		cJSON_ArrayForEach(o, all)
			if (!rc && load(r, o, ++n))
				rc = -1;
	if (text)
		OPENSSL_cleanse(text, len);
	free(text);
	cJSON_Delete(all);
	return rc;
}

/*** self-check *************************************************************/

/* Two worked examples.  The basic one is the API Request Signing Guide's:
 * GET https://service.region.example.com/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs
 * ?limit=2&marker=13551d6b-755d-4757-b956-536f674975c0, empty body.  The
 * derived one was signed by Huawei's own Node.js SDK
 * (@huaweicloud/huaweicloud-sdk-core 3.1.211, DerivedAKSKSigner with
 * processDerivedAuthParams("iotdm", "cn-north-4")): POST
 * https://iotda.example.com/v5/iot/0a1b2c3d4e5f/tunnels {"device_id":"dev-1"}. */
#define EX_AK	"QTWAOYTTINDUT2QVKYUC"
#define EX_SK	"MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc"
#define EX_DATE	"20191115T033655Z"
#define EX_SIG	"7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe"
#define EX_AUTH	SIG_BASIC " Access=" EX_AK ", SignedHeaders=" EX_NAMES ", Signature=" EX_SIG
#define DX_AK	"HPUAEXAMPLEAK4IOTDA7"
#define DX_SK	"tN3vX8qLr2Wm5Yk0Jd7Fs9Bc4Hg6Ue1Zp3Oa8Ri5"
#define DX_DATE	"20261206T080000Z"
#define DX_SCOPE "20261206/" DEFAULT_REGION "/" SIG_SERVICE
#define DX_SIG	"1d5cdfe572f9d73d597bce310de5e8f73ea25fce9a3820cc6847dddf1e22262a"
#define DX_AUTH(scope, names, sig) SIG_DERIVED " Credential=" DX_AK "/" scope \
		", SignedHeaders=" names ", Signature=" sig
#define EX_NAMES "content-type;host;x-sdk-date"	/* both examples sign these */

struct example {		/* a request signed by the book, and what it signs to */
	const char *name, *method, *path, *query[2], *body;
	const char *headers[3][2];	/* in EX_NAMES order */
	const char *ak, *sk, *scope;	/* scope NULL: basic */
	const char *hash, *key, *sig, *authz;	/* key: a derived one's */
};

static const struct example ex_basic = {	/* its query out of order */
	"basic", "GET", "/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs",
	{ "marker=13551d6b-755d-4757-b956-536f674975c0", "limit=2" }, NULL,
	{ { "content-type", "application/json" }, { "host", "service.region.example.com" },
	  { "x-sdk-date", EX_DATE } },
	EX_AK, EX_SK, NULL, "b25362e603ee30f4f25e7858e8a7160fd36e803bb2dfe206278659d71a9bcd7a",
	NULL, EX_SIG, EX_AUTH,
}, ex_derived = {
	"derived", "POST", "/v5/iot/0a1b2c3d4e5f/tunnels", { NULL, NULL },
	"{\"device_id\":\"dev-1\"}",
	{ { "content-type", "application/json" }, { "host", "iotda.example.com" },
	  { "x-sdk-date", DX_DATE } },
	DX_AK, DX_SK, DX_SCOPE, "d1e0bbdd3571f03ea0143a4a541a4e3f451f3099d0080a8d921819dba4a7d26c",
	"7f3c5d83b799099ce04ba9b9c2a02d7f002ba0f0ced0345bdd0a52a04e181392", DX_SIG,
	DX_AUTH(DX_SCOPE, EX_NAMES, DX_SIG),
};

static int ex_header(void *ctx, const char *name, char *out, size_t size)	/* one of the example's headers */
{
	const struct example *ex = ctx;
	size_t i;

	for (i = 0; i < LWS_ARRAY_SIZE(ex->headers); i++)
		if (!strcmp(ex->headers[i][0], name))
			return snprintf(out, size, "%s", ex->headers[i][1]);
	return -1;
}

static void ex_request(struct sig_req *q, const struct example *ex)	/* the example as the verifier sees it */
{
	size_t i;

	memset(q, 0, sizeof(*q));
	q->method = ex->method;
	q->path = ex->path;
	for (i = 0; i < LWS_ARRAY_SIZE(ex->query) && ex->query[i]; i++)
		q->args[q->nargs++] = ex->query[i];
	q->header = ex_header;
	q->ctx = (void *)ex;
	q->body = ex->body;
	q->body_len = ex->body ? strlen(ex->body) : 0;
}

static const struct ex_case {	/* sig_verify on an example, and what it must say */
	const char *name;
	const struct example *ex;
	const char *ak, *sk, *region, *authz;	/* NULL: the example's, DEFAULT_REGION */
	long clock;			/* the relay's clock, from the example's date */
	enum sig_result want;
} ex_cases[] = {
	{ "the example verifies", &ex_basic, NULL, NULL, NULL, NULL, 0, SIG_OK },
	{ "14 minutes later it still does", &ex_basic, NULL, NULL, NULL, NULL, 14 * 60, SIG_OK },
	{ "16 minutes later it is stale", &ex_basic, NULL, NULL, NULL, NULL, 16 * 60, SIG_SKEWED },
	{ "16 minutes earlier too", &ex_basic, NULL, NULL, NULL, NULL, -16 * 60, SIG_SKEWED },
	{ "another SK: mismatch", &ex_basic, NULL, EX_SK "x", NULL, NULL, 0, SIG_MISMATCH },
	{ "another AK: refused", &ex_basic, "OTHERAK", NULL, NULL, NULL, 0, SIG_BAD_AK },
	{ "another scheme: malformed", &ex_basic, NULL, NULL, NULL, "Bearer x", 0, SIG_MALFORMED },
	{ "x-sdk-date unsigned: refused", &ex_basic, NULL, NULL, NULL, SIG_BASIC " Access=" EX_AK
	  ", SignedHeaders=content-type;host, Signature=00", 0, SIG_DATE_UNSIGNED },
	{ "host unsigned: refused", &ex_basic, NULL, NULL, NULL, SIG_BASIC " Access=" EX_AK
	  ", SignedHeaders=content-type;x-sdk-date, Signature=00", 0, SIG_HOST_UNSIGNED },
	{ "a signed header absent: refused", &ex_basic, NULL, NULL, NULL, SIG_BASIC " Access="
	  EX_AK ", SignedHeaders=host;x-sdk-date;x-none, Signature=00", 0, SIG_UNREADABLE },
	{ "a Credential in a basic Authorization: malformed", &ex_basic, NULL, NULL, NULL,
	  SIG_BASIC " Credential=" EX_AK ", SignedHeaders=" EX_NAMES ", Signature=00", 0,
	  SIG_MALFORMED },
	{ "the example verifies", &ex_derived, NULL, NULL, NULL, NULL, 0, SIG_OK },
	{ "16 minutes later: stale", &ex_derived, NULL, NULL, NULL, NULL, 16 * 60,
	  SIG_SKEWED },
	{ "another SK: mismatch", &ex_derived, NULL, DX_SK "x", NULL, NULL, 0,
	  SIG_MISMATCH },
	{ "another AK: refused", &ex_derived, "OTHERAK", NULL, NULL, NULL, 0,
	  SIG_BAD_AK },
	{ "the relay in another region: refused", &ex_derived, NULL, NULL, "cn-east-3",
	  NULL, 0, SIG_SCOPE_REGION },
	{ "a scope of the day before: refused", &ex_derived, NULL, NULL, NULL,
	  DX_AUTH("20261205/" DEFAULT_REGION "/" SIG_SERVICE, EX_NAMES, DX_SIG), 0,
	  SIG_SCOPE_DATE },
	{ "another service: refused", &ex_derived, NULL, NULL, NULL,
	  DX_AUTH("20261206/" DEFAULT_REGION "/iam", EX_NAMES, DX_SIG), 0, SIG_SCOPE_SERVICE },
	{ "host unsigned: refused", &ex_derived, NULL, NULL, NULL,
	  DX_AUTH(DX_SCOPE, "content-type;x-sdk-date", DX_SIG), 0, SIG_HOST_UNSIGNED },
	{ "a scope of two parts: malformed", &ex_derived, NULL, NULL, NULL,
	  DX_AUTH("20261206/" DEFAULT_REGION, EX_NAMES, DX_SIG), 0, SIG_MALFORMED },
	{ "an Access in it: malformed", &ex_derived, NULL, NULL, NULL, SIG_DERIVED
	  " Access=" DX_AK ", SignedHeaders=" EX_NAMES ", Signature=" DX_SIG, 0, SIG_MALFORMED },
	{ "its signature as a basic one: mismatch", &ex_derived, NULL, NULL, NULL,
	  SIG_BASIC " Access=" DX_AK ", SignedHeaders=" EX_NAMES ", Signature=" DX_SIG, 0,
	  SIG_MISMATCH },
};

__attribute__((format(printf, 2, 3)))
static int ex_check(int ok, const char *fmt, ...)	/* one TAP line; returns ok */
{
	va_list ap;

	printf("%s - ", ok ? "ok" : "not ok");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	return ok;
}

static int ex_signs(const struct example *ex)	/* 1 if the example's hash, key and signature come out */
{
	struct sig_req q;
	char hash[HEX256] = "", key[HEX256] = "", sig[HEX256] = "";
	const char *date = ex->headers[2][1];
	time_t t;
	int ok;

	ex_request(&q, ex);
	ok = ex_check(!sdk_date(date, &t), "%s: X-Sdk-Date %s parses", ex->name, date);
	ok &= ex_check(!canonical_hash(&q, EX_NAMES, hash) && !strcmp(hash, ex->hash),
		       "%s: hex(sha256(CanonicalRequest)) %s", ex->name, ex->hash);
	if (ex->key) {
		derived_key(ex->ak, ex->sk, ex->scope, key);
		ok &= ex_check(!strcmp(key, ex->key), "%s: HKDF key %s", ex->name, ex->key);
	}
	sig_sign(ex->ak, ex->sk, ex->scope, date, hash, sig);
	return ok & ex_check(!strcmp(sig, ex->sig), "%s: Signature %s", ex->name, ex->sig);
}

static int ex_verifies(const struct ex_case *c)	/* 1 if sig_verify says what the case wants */
{
	const struct example *ex = c->ex;
	struct sig_keys k = { c->ak ? c->ak : ex->ak, c->sk ? c->sk : ex->sk,
			      c->region ? c->region : DEFAULT_REGION };
	struct sig_req q;
	time_t t = 0;

	sdk_date(ex->headers[2][1], &t);
	ex_request(&q, ex);
	return ex_check(sig_verify(&k, &q, c->authz ? c->authz : ex->authz, t + c->clock) ==
			c->want, "%s: %s", ex->name, c->name);
}

static int self_check(void)	/* --self-check: exit status 0 if all agree */
{
	size_t i;
	int good = ex_signs(&ex_basic) & ex_signs(&ex_derived);

	for (i = 0; i < LWS_ARRAY_SIZE(ex_cases); i++)
		good &= ex_verifies(&ex_cases[i]);
	good &= ex_check(is_loopback("127.0.0.1") && is_loopback("::1") &&
			 is_loopback("::ffff:127.0.0.2") && !is_loopback("10.0.0.1") &&
			 !is_loopback("::ffff:10.0.0.1"), "loopback peers told from others");
	printf("self-check: %s\n", good ? "ok" : "FAILED");
	return !good;
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
	for (d = lws_dll2_get_head(&r->devices); d; d = next) {
		next = d->next;
		device_free(lws_container_of(d, struct device, list));
	}
	secret_free(r->api_token);
	secret_free(r->sk);
	free(r->ak);
}

#ifndef TUNNEL_PLATFORM_NO_MAIN	/* fuzz_relay.c includes this file */
int main(int argc, char **argv)	/* parse, listen, serve until a signal */
{
	static struct relay relay;
	struct relay *r = &relay;

	sb_prog = "tunnel-platform";
	r->max_message[ROLE_APP] = DEFAULT_MAX_MESSAGE;
	r->max_message[ROLE_DEVICE] = DEFAULT_MAX_DEVICE_MESSAGE;
	r->region = DEFAULT_REGION;
	r->cut_role = -1;
	r->stall_after = -1;
	opt_listen(r, DEFAULT_LISTEN);
	parse_args(r, argc, argv);
	signal(SIGPIPE, SIG_IGN);
	lws_set_log_level(LLL_ERR, sb_lws_log);
	if (r->self_check) {
		int bad = self_check();

		relay_stop(r);
		return bad;
	}
	if (relay_start(r) || load_array(r, r->tunnels_file, load_tunnel) ||
	    load_array(r, r->devices_file, load_device)) {
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
	if (r->rate_limit)
		sb_log("rest: %lu calls served, %lu refused over the rate limit of %ld a second",
		       r->served, r->throttled, r->rate_limit);
	relay_stop(r);
	return 0;
}
#endif
