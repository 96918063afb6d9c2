/*
 * fuzz_relay: libFuzzer target for the sandbox relay (tests/sandbox/
 * tunnel-platform.c): everything its peers can send it.  Every test and
 * demo talks to this relay, and they take README Protocol §7 on trust: whole
 * messages relayed byte for byte, a ping answered with a pong and never
 * forwarded, a message over the limit refused with disconnect "413" (at its
 * first chunk, never buffered), one connection per role, the REST API
 * guarded by X-Auth-Token or an AK/SK signature, no token in a listing.
 * Its peers are test programs, some hostile on purpose, and the relay must
 * hold its contract, and not crash, whatever they send.
 *
 * The relay's own code runs, without sockets: the file is included with
 * TUNNEL_PLATFORM_NO_MAIN; its peers here have no wsi, so they only queue,
 * count and change state (tunnel-platform.c skips every lws call on them);
 * an lws context with no listener holds its timers, which this file fires
 * itself.  Message chunks go in through peer_chunk() (the reassembly, the
 * size cap, ping detection, the relay into the other side's queue or the
 * delay line, the --cut-after and --stall-after faults), REST calls through
 * rest_route() (routing, X-Auth-Token, the AK/SK verifier, the handlers,
 * tunnel_notify on the events channel) with headers and query from
 * struct rest_in, the tunnels and devices files through load_array().
 *
 * An input is two option bytes (the app's and the device's message limits,
 * 10240/16384, 64/512, 512/64 or 4096/10240; the delay line, who is
 * connected first, which REST auth is on, the faults, a rate limit; see
 * setup()), then records separated by 0x1e, each a letter and a payload:
 *   a d   a message from the app / the device, in one chunk
 *   f F   the same, cut into 1-4 frames of 1-3 chunks at derived offsets
 *   o O   a frame that says it is BE16 x 4 bytes longer than the payload
 *         (first byte 0xff: nearly 2^63), the rest sent if the relay takes it
 *   c C   a new app / device connection (replacing the older one)
 *   g G   the app / device sends a close;  k  the app's TCP connection drops
 *   K     SIGUSR1: every device connection dropped
 *   w W   every app / device queue written out, then closed if asked
 *   z     the delay line's timer fires, with all its messages due or (a
 *         payload byte) only the first N % (messages + 1);  x  the token expires
 *   e E   the events channel of the device named by the payload opens / closes
 *   r     a REST call: "METHOD PATH?QUERY\nName: value\n...\n\nBODY".  In the
 *         path, {new} is the last tunnel created.  "x-sdk-date: now" is the
 *         time; "authorization: sign h1;h2" becomes a true SDK-HMAC-SHA256
 *         signature over those headers, "authorization: derive h1;h2" a
 *         true V11-HMAC-SHA256 one; "x-fuzz-repeat: N" sends the body N
 *         times (413)
 *   t v   a tunnels file / a devices file (--tunnels, --devices)
 * and at the end the whole input as one fragmented message from each side.
 *
 * After every step, what the relay queued is checked against what §7 says
 * it must (the exact bytes, or a platform message's operation, request_id
 * and status code), and then its state: the tunnel's connections, queue and
 * delay-line byte counts, flow control (who is read given the backlogs),
 * the devices and their events channels.  A REST reply has a known status,
 * a body unless 204, an IoTDA error shape, and no secret: never the API
 * token or SK, never a tunnel token but the one a create or notify hands
 * out.  A ListDevices page is the one worked out here from the relay's
 * devices, and a 429 comes exactly when the rate limit's bucket is empty.
 * A 2xx needs the right token or a signature this file made; one it
 * made must verify, and stop verifying when the body, method, AK or clock
 * changes, or a derived one's region (not when the query is reordered).  A file is accepted exactly
 * when every entry is valid, and its tunnels are then there as listed.
 */
#define TUNNEL_PLATFORM_NO_MAIN
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"	/* main's helpers */
#include "../sandbox/tunnel-platform.c"
#include "fuzz_util.h"
#pragma GCC diagnostic pop

#include <sys/mman.h>

#define SEP		0x1e		/* between records */
#define FIXTURE_ID	"fuzz-tunnel"
#define FIXTURE_DEV	"fuzz-dev"
/* '!' is in no id and no Host the relay echoes: a secret with one can only
 * reach a REST reply by a leak. */
#define SRC_TOKEN	"fuzz!src!token"
#define DEV_TOKEN	"fuzz!dev!token"
#define API_TOKEN	"fuzz!api!token"
#define FUZZ_AK		"FUZZAK"
#define FUZZ_SK		"FUZZ!SK!secret"
#define MAX_PEERS	16		/* connections one input may open */
#define MAX_SENT	8		/* frames one step may queue toward one peer */
#define MAX_CHUNKS	12		/* 4 frames of 3 chunks */
#define MAX_HEADERS	32
#define MAX_ARGS	48		/* more than SIG_ARGS_MAX */
#define MAX_MADE	64		/* REST-created tunnels remembered */
#define MAX_REPEAT	100		/* x-fuzz-repeat at most */

static struct relay R;
static struct tunnel *T;		/* the fixture tunnel; NULL once deleted */
static struct peer pool[MAX_PEERS];	/* every connection an input opened */
static int dead[MAX_PEERS];		/* closed (LWS_CALLBACK_CLOSED) already */
static int npeers;
static struct peer *cur[ROLES];		/* the newest connection of each role */
static char api_token[] = API_TOKEN, ak[] = FUZZ_AK, sk[] = FUZZ_SK;
static FILE *log_out;			/* the real stderr; the relay's log goes nowhere */
static int file_fd;			/* the tunnels and devices files */
static char file_path[64];
static char made[MAX_MADE][ID_MAX + 1];	/* ids of tunnels made by REST */
static int nmade;
static char new_id[ID_MAX + 1];		/* the last of them: {new} */

/*** small helpers **********************************************************/

/* Aborts with a reason: libFuzzer reports the input as a crash. */
static void fail(int line, const char *what)
{
	fprintf(log_out ? log_out : stderr, "fuzz_relay.c:%d: check failed: %s\n", line, what);
	abort();
}
#define CHECK(cond) do { if (!(cond)) fail(__LINE__, #cond); } while (0)

/* A NUL-terminated, writable copy of n bytes. */
static char *text_copy(const char *p, size_t n)
{
	char *t = malloc(n + 1);

	CHECK(t);
	if (n)
		memcpy(t, p, n);
	t[n] = '\0';
	return t;
}

/* An id as README Protocol §7 and the REST API define it: 1-128 of [A-Za-z0-9_-]. */
static int id_ok(const char *s)
{
	size_t n = strlen(s);

	return n >= 1 && n <= ID_MAX &&
	       strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

/* A token as the relay's options and files take them: 1-256 visible ASCII. */
static int token_ok(const char *s)
{
	size_t n = strlen(s);

	if (n < 1 || n > TOKEN_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (s[i] < 0x21 || s[i] > 0x7e)
			return 0;
	return 1;
}

/* s ends with the given suffix. */
static int ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);

	return n >= k && !strcmp(s + n - k, suffix);
}

/* The pool index of a connection. */
static int peer_index(const struct peer *p)
{
	return (int)(p - pool);
}

/*** what was queued ********************************************************/

struct frame { const char *p; size_t len; };

struct snap {			/* the state one step starts from */
	struct peer *to[ROLES];		/* the tunnel's connection of each role */
	int queued[MAX_PEERS];		/* frames in each connection's queue */
	int delayed;			/* messages in the delay line */
	unsigned long dropped, relayed_from[ROLES], relayed;
	unsigned long throttled;	/* REST calls refused 429 */
};

/* Frames in a queue, after checking its tail and byte count. */
static int queue_len(const struct sb_queue *q)
{
	const struct sb_frame *f, *last = NULL;
	size_t bytes = 0;
	int n = 0;

	for (f = q->head; f; f = f->next, n++) {
		bytes += f->len;
		last = f;
	}
	CHECK(q->tail == last && q->bytes == bytes);
	return n;
}

/* Messages in the fixture's delay line. */
static int delay_len(void)
{
	int n = 0;

	for (const struct delayed *d = T ? T->dq_head : NULL; d; d = d->next)
		n++;
	return n;
}

/* Remembers what is queued now, so a step's own frames can be told apart. */
static void snap_take(struct snap *s)
{
	memset(s, 0, sizeof(*s));
	for (int i = 0; i < npeers; i++)
		s->queued[i] = queue_len(&pool[i].q);
	s->relayed = R.relayed;
	s->throttled = R.throttled;
	if (!T)
		return;
	for (int i = 0; i < ROLES; i++) {
		s->to[i] = T->peer[i];
		s->relayed_from[i] = T->relayed_from[i];
	}
	s->delayed = delay_len();
	s->dropped = T->dropped;
}

/* The frames queued toward p since the snapshot, directly or in the delay
 * line; fills up to MAX_SENT, returns how many there are. */
static int sent_to(const struct snap *s, const struct peer *p, struct frame *f)
{
	const struct sb_frame *q = p->q.head;
	int i, n = 0;

	for (i = 0; q; q = q->next, i++)
		if (i >= s->queued[peer_index(p)]) {
			if (n < MAX_SENT)
				f[n] = (struct frame){ (const char *)q->buf + LWS_PRE, q->len };
			n++;
		}
	i = 0;
	for (const struct delayed *d = T ? T->dq_head : NULL; d; d = d->next, i++)
		if (i >= s->delayed && d->to == p->role && d->to_serial == p->serial) {
			if (n < MAX_SENT)
				f[n] = (struct frame){ d->data, d->len };
			n++;
		}
	return n;
}

/* A platform message (README Protocol §2): this operation, request_id rid (NULL:
 * JSON null), data null or, with a status code, {status_code, status_msg}. */
static void check_envelope(const struct frame *f, const char *op, const char *rid,
			   const char *status)
{
	cJSON *m = cJSON_ParseWithLength(f->p, f->len);
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "request_id");
	const cJSON *data = cJSON_GetObjectItemCaseSensitive(m, "data");
	const char *got = json_str(m, "operation_type"), *type = json_str(m, "tunnel_service_type");

	CHECK(cJSON_IsObject(m) && !memchr(f->p, '\0', f->len));
	CHECK(got && !strcmp(got, op) && type && !strcmp(type, "ssh"));
	CHECK(rid ? cJSON_IsString(id) && !strcmp(id->valuestring, rid) : cJSON_IsNull(id));
	if (status) {
		const char *code = json_str(data, "status_code");

		CHECK(code && !strcmp(code, status) && json_str(data, "status_msg"));
	} else {
		CHECK(cJSON_IsNull(data));
	}
	cJSON_Delete(m);
}

/*
 * What p was sent in this step is exactly spec, in order: 'm' the message
 * (m, n) byte for byte, 'P' a pong for rid, 'T' connect_tunnel, and a
 * disconnect: '1' 401, '3' 413, '4' 404, '9' 409, '0' 410.  p NULL: nobody.
 */
static void check_sent(const struct snap *s, const struct peer *p, const char *spec,
		       const char *m, size_t n, const char *rid)
{
	static const char *const codes[] = { "410", "401", NULL, "413", "404",
					     NULL, NULL, NULL, NULL, "409" };
	struct frame f[MAX_SENT];
	int k;

	if (!p)
		return;
	k = sent_to(s, p, f);
	CHECK(k == (int)strlen(spec));
	for (int i = 0; i < k; i++)
		switch (spec[i]) {
		case 'm':
			CHECK(f[i].len == n && (!n || !memcmp(f[i].p, m, n)));
			break;
		case 'P':
			check_envelope(&f[i], "pong", rid, NULL);
			break;
		case 'T':
			check_envelope(&f[i], "connect_tunnel", NULL, NULL);
			break;
		default:
			check_envelope(&f[i], "disconnect", NULL, codes[spec[i] - '0']);
		}
}

/* Nobody was sent anything in this step. */
static void check_quiet(const struct snap *s)
{
	for (int i = 0; i < npeers; i++)
		check_sent(s, &pool[i], "", NULL, 0, NULL);
}

/*** state ******************************************************************/

/* A tunnel's delay line: sorted by due time, its byte counts right. */
static void check_delay_line(const struct tunnel *t)
{
	const struct delayed *d, *last = NULL;
	size_t bytes[ROLES] = { 0, 0 };

	for (d = t->dq_head; d; d = d->next) {
		CHECK(d->to == ROLE_APP || d->to == ROLE_DEVICE);
		CHECK(!last || last->due <= d->due);
		bytes[d->to] += d->len;
		last = d;
	}
	CHECK(t->dq_tail == last);
	CHECK(t->delayed_bytes[ROLE_APP] == bytes[ROLE_APP] &&
	      t->delayed_bytes[ROLE_DEVICE] == bytes[ROLE_DEVICE]);
}

/* Flow control: a full backlog stops whoever feeds it, until it halves. */
static void check_flow(const struct tunnel *t)
{
	const struct peer *app = t->peer[ROLE_APP], *dev = t->peer[ROLE_DEVICE];

	if (!app && !dev)
		return;	/* flow is worked out again when one connects */
	for (int i = 0; i < ROLES; i++) {
		size_t b = backlog(t, (enum role)i);

		CHECK(t->full[i] ? b >= QUEUE_LOW : b <= QUEUE_HIGH);
	}
	CHECK(!app || app->rx_off == (R.stalled || t->full[ROLE_APP] || t->full[ROLE_DEVICE]));
	CHECK(!dev || dev->rx_off == (R.stalled || t->full[ROLE_APP]));
}

/* Tunnels, connections, devices: consistent with each other. */
static void check_state(void)
{
	lws_dll2_t *d;

	for (d = lws_dll2_get_head(&R.tunnels); d; d = d->next) {
		const struct tunnel *t = lws_container_of(d, struct tunnel, list);

		CHECK(id_ok(t->id) && id_ok(t->device_id));
		CHECK(token_ok(t->token[ROLE_APP]) && token_ok(t->token[ROLE_DEVICE]));
		for (int i = 0; i < ROLES; i++) {
			const struct peer *p = t->peer[i];

			CHECK(!p || (t == T && p->t == t && (int)p->role == i && !p->events &&
				     !p->close_code));
		}
		CHECK(!(t->closed || t->expired) || (!t->peer[0] && !t->peer[1]));
		check_delay_line(t);
		check_flow(t);
	}
	for (int i = 0; i < npeers; i++) {
		const struct peer *p = &pool[i];

		queue_len(&p->q);
		CHECK(p->rx.cap <= 2 * (R.max_message[p->role] + 1));	/* never buffered past the limit */
		CHECK(!dead[i] || (!p->q.head && !p->rx.p && !p->t && !p->dev));
		CHECK(!p->t || p->t->peer[p->role] == p);
		CHECK(!p->dev || p->dev->events == p);
	}
	for (d = lws_dll2_get_head(&R.devices); d; d = d->next) {
		const struct device *dv = lws_container_of(d, struct device, list);

		CHECK(id_ok(dv->id) && (dv->listed || dv->events));
		CHECK(!dv->events || dv->events->dev == dv);
	}
}

/*** connections ************************************************************/

/* A fresh connection of a role, as ws_filter() starts one; NULL if none left. */
static struct peer *peer_new(enum role role)
{
	struct peer *p;

	if (npeers == MAX_PEERS)
		return NULL;
	p = &pool[npeers++];
	memset(p, 0, sizeof(*p));
	p->r = &R;
	p->role = role;
	p->serial = ++R.serials;
	return p;
}

/* A new connection joins the fixture (the handshake's checks passed); the
 * older one of its role is replaced: 409 and close 4000 for an app, the app
 * told 410 for a device; then connect_tunnel if both are there. */
static void connect_peer(enum role role)
{
	struct peer *p, *old, *app;
	struct snap s;

	if (!T || T->closed || T->expired || R.stalled || npeers == MAX_PEERS)
		return;	/* refused at the handshake, or the relay answers nothing */
	snap_take(&s);
	old = T->peer[role];
	p = peer_new(role);
	peer_attach(p, T);
	cur[role] = p;
	CHECK(T->peer[role] == p && p->t == T);
	app = T->peer[ROLE_APP];
	if (old)
		CHECK(!old->t && old->close_code == 4000);
	if (role == ROLE_APP) {
		if (old)
			check_sent(&s, old, "9", NULL, 0, NULL);
		check_sent(&s, p, T->peer[ROLE_DEVICE] ? "T" : "", NULL, 0, NULL);
		check_sent(&s, T->peer[ROLE_DEVICE], "", NULL, 0, NULL);
	} else {
		if (old)
			CHECK(!old->q.head);
		check_sent(&s, app, old ? "0T" : "T", NULL, 0, NULL);
		check_sent(&s, p, "", NULL, 0, NULL);
	}
}

/* The connection of a role sends a close: gone now (the app hears of a device's). */
static void leave(enum role role)
{
	struct peer *p = cur[role];
	struct snap s;
	int was;

	if (!p || dead[peer_index(p)])
		return;
	snap_take(&s);
	was = T && T->peer[role] == p;
	peer_leaving(p);
	CHECK(!p->t && (!T || T->peer[role] != p));
	if (was && role == ROLE_DEVICE)
		check_sent(&s, s.to[ROLE_APP], "0", NULL, 0, NULL);
}

/* The app's TCP connection drops (peer_drop, as --cut-after does). */
static void drop_app(void)
{
	struct peer *p = cur[ROLE_APP];

	if (!p || dead[peer_index(p)])
		return;
	peer_drop(p);
	CHECK(!p->t && !p->q.head);
}

/* SIGUSR1: every device connection drops; each app hears 410. */
static void drop_devices(void)
{
	struct snap s;

	snap_take(&s);
	relay_drop_devices(&R);
	if (!T)
		return;
	CHECK(!T->peer[ROLE_DEVICE]);
	if (s.to[ROLE_DEVICE]) {
		CHECK(!s.to[ROLE_DEVICE]->q.head);
		check_sent(&s, s.to[ROLE_APP], "0", NULL, 0, NULL);
	}
}

/* Every queue of a role written out, as peer_writable() does; a connection
 * that asked to close is then closed, as lws does. */
static void write_out(enum role role)
{
	for (int i = 0; i < npeers; i++) {
		struct peer *p = &pool[i];

		if (dead[i] || p->role != role)
			continue;
		sb_queue_clear(&p->q);	/* all of it sent */
		if (p->close_code) {
			peer_closed(p);
			dead[i] = 1;
		} else if (p->t) {
			tunnel_flow(p->t);
		}
	}
}

/* The delay line's timer fires with the first due messages of the line
 * (all, or as many as the payload's first byte says), the others an hour
 * off: each due one reaches the connection it was meant for, if that is
 * still the tunnel's, and the others wait, the timer set again. */
static void fire_delay(const char *pl, size_t pn)
{
	struct snap s;
	struct delayed *d;
	uint32_t *hash;
	size_t *len;
	uint64_t *serial;
	int n = delay_len(), k = 0, due;
	lws_usec_t later = lws_now_usecs() + 3600 * LWS_US_PER_SEC, *was;

	if (!n)
		return;
	due = pn ? (unsigned char)pl[0] % (n + 1) : n;
	snap_take(&s);
	hash = calloc((size_t)n, sizeof(*hash));
	len = calloc((size_t)n, sizeof(*len));
	serial = calloc((size_t)n, sizeof(*serial));
	was = calloc((size_t)n, sizeof(*was));
	CHECK(hash && len && serial && was);
	for (d = T->dq_head; d; d = d->next, k++) {
		hash[k] = hash_bytes(d->data, d->len);
		len[k] = d->len;
		serial[k] = d->to_serial;
		was[k] = d->due;
		d->due = k < due ? 0 : later;
	}
	lws_sul_cancel(&T->delay_sul);	/* lws takes a timer off its list first */
	delay_fire(&T->delay_sul);
	CHECK(delay_len() == n - due);
	for (d = T->dq_head, k = due; d; d = d->next, k++)
		d->due = was[k];	/* the line stays sorted for later messages */
	n = due;
	for (int i = 0; i < npeers; i++) {
		const struct peer *p = &pool[i];
		const struct sb_frame *f = p->q.head;
		int skip = s.queued[i];

		while (f && skip--)
			f = f->next;
		for (k = 0; k < n; k++) {
			if (serial[k] != p->serial || T->peer[p->role] != p)
				continue;
			CHECK(f && f->len == len[k] &&
			      hash_bytes(f->buf + LWS_PRE, f->len) == hash[k]);
			f = f->next;
		}
		CHECK(!f);
	}
	free(hash);
	free(len);
	free(serial);
	free(was);
}

/* Both connections of a tunnel that was just closed or expired: each told
 * why (code) and closing 1000; checked on the snapshot's connections. */
static void check_evicted(const struct snap *s, const char *code)
{
	for (int i = 0; i < ROLES; i++) {
		struct peer *p = s->to[i];

		if (!p)
			continue;
		CHECK(!p->t && p->close_code == 1000);
		check_sent(s, p, code, NULL, 0, NULL);
	}
}

/* The tunnel's token expires (its timer fires): both connections go, 401. */
static void expire(void)
{
	struct snap s;

	if (!T || T->expired)
		return;
	snap_take(&s);
	lws_sul_cancel(&T->expiry_sul);
	tunnel_expire(&T->expiry_sul);
	CHECK(T->expired && !T->peer[0] && !T->peer[1] && !T->dq_head);
	check_evicted(&s, "1");
}

/* An events channel for the device named by the payload (the MQTT
 * stand-in) opens: it replaces an older one, which closes 4000. */
static void events_open(const char *pl, size_t n)
{
	char *id = text_copy(pl, n);
	struct device *d = NULL;
	struct peer *p, *old = NULL;

	if (!id_ok(id) || (R.devices_file && !device_find(&R, id)) || npeers == MAX_PEERS) {
		free(id);	/* refused at the handshake */
		return;
	}
	d = device_find(&R, id);
	old = d ? d->events : NULL;
	p = peer_new(ROLE_DEVICE);
	p->events = 1;
	snprintf(p->device_id, sizeof p->device_id, "%s", id);
	events_attach(p);
	d = device_find(&R, id);
	CHECK(d && d->events == p && p->dev == d);
	CHECK(!old || (!old->dev && old->close_code == 4000));
	free(id);
}

/* The device's events channel closes; an unlisted device is forgotten. */
static void events_close(const char *pl, size_t n)
{
	char *id = text_copy(pl, n);
	struct device *d = device_find(&R, id);
	struct peer *p = d ? d->events : NULL;
	int listed = d && d->listed;

	if (p) {
		peer_leaving(p);
		d = device_find(&R, id);
		CHECK(!p->dev && (listed ? d && !d->events : !d));
	}
	free(id);
}

/*** messages ***************************************************************/

struct chunk { size_t off, len, rest; int final; };

/* Cuts n bytes into 1-4 frames of 1-3 chunks each, as lws hands them over:
 * rest is what is still to come of the chunk's frame. */
static int plan_chunks(size_t n, uint32_t seed, struct chunk *c)
{
	size_t frame[4], chunk[3], from = 0;
	int nf = cut_points(&seed, n, frame, (int)(seed % 4)), k = 0;

	for (int i = 0; i <= nf; i++) {
		size_t to = i < nf ? frame[i] : n, at = from;
		int nc = cut_points(&seed, to - from, chunk, (int)(next_rand(&seed) % 3));

		for (int j = 0; j <= nc; j++) {
			size_t end = j < nc ? from + chunk[j] : to;

			c[k++] = (struct chunk){ at, end - at, to - end, i == nf };
			at = end;
		}
		from = to;
	}
	return k;
}

/* The app's message is a ping, parsed as the relay parses it; *rid its
 * request_id if that is a string (malloc'd), else NULL. */
static int ping_of(const char *m, size_t n, char **rid)
{
	cJSON *j = cJSON_ParseWithLength(m, n);
	const char *op = json_str(j, "operation_type"), *id = json_str(j, "request_id");
	int ping = op && !strcmp(op, "ping");

	*rid = ping && id ? strdup(id) : NULL;
	cJSON_Delete(j);
	return ping;
}

/*
 * What one whole message of total bytes (m: all of them, unless over the
 * limit) from p must have done, given the snapshot from before its first
 * chunk and whether p was the tunnel's live connection then.
 */
static void check_message(const struct snap *s, struct peer *p, enum role from,
			  const char *m, size_t total, int live)
{
	enum role to = from == ROLE_APP ? ROLE_DEVICE : ROLE_APP;
	struct peer *app = s->to[ROLE_APP], *dest = s->to[to];
	char *rid = NULL;
	int cut;

	if (!live) {	/* replaced, refused, gone or the relay stalled: ignored */
		check_quiet(s);
		CHECK(!T || (T->dropped == s->dropped && R.relayed == s->relayed));
		return;
	}
	if (total > R.max_message[from]) {	/* 413, close 1009: the sender's app side told */
		CHECK(!p->t && T->peer[from] != p && p->close_code == 1009 && !p->rx.len);
		if (from == ROLE_APP) {
			check_sent(s, p, "3", NULL, 0, NULL);
		} else {
			check_sent(s, app, "30", NULL, 0, NULL);
			check_sent(s, p, "", NULL, 0, NULL);
		}
		CHECK(T->dropped == s->dropped && R.relayed == s->relayed);
		return;
	}
	if (from == ROLE_APP && ping_of(m, total, &rid)) {	/* answered, never forwarded */
		check_sent(s, p, "P", NULL, 0, rid);
		check_sent(s, dest, "", NULL, 0, NULL);
		CHECK(p->t == T && T->dropped == s->dropped && R.relayed == s->relayed);
		free(rid);
		return;
	}
	if (!dest) {	/* nobody to relay to: dropped, counted */
		check_quiet(s);
		CHECK(p->t == T && T->dropped == s->dropped + 1 && R.relayed == s->relayed);
		return;
	}
	CHECK(T->relayed_from[from] == s->relayed_from[from] + 1 && R.relayed == s->relayed + 1);
	cut = R.cut_role == (int)from && T->relayed_from[from] == R.cut_after;
	if (cut) {	/* --cut-after: the sender's TCP connection dropped */
		CHECK(!p->t && !p->q.head);
		check_sent(s, dest, from == ROLE_DEVICE ? "m0" : "m", m, total, NULL);
	} else {
		CHECK(p->t == T);
		check_sent(s, dest, "m", m, total, NULL);
		check_sent(s, p, "", NULL, 0, NULL);
	}
	if (R.stall_after >= 0 && R.relayed == (unsigned long)R.stall_after)
		CHECK(R.stalled);
}

/* The message's sender now: its connection, and whether the relay reads it. */
static struct peer *sender(enum role from, int *live)
{
	struct peer *p = cur[from];

	*live = p && T && p->t == T && !R.stalled;
	CHECK(!*live || !p->rx.len);	/* no message half-gathered between steps */
	return p;
}

/* A whole message from a role: in one chunk, or fragmented. */
static void send_message(enum role from, const char *m, size_t n, int fragmented)
{
	struct chunk c[MAX_CHUNKS] = { { 0, n, 0, 1 } };
	struct snap s;
	int live, k = 1;
	struct peer *p = sender(from, &live);

	if (!p)
		return;
	if (fragmented)
		k = plan_chunks(n, hash_bytes(m, n), c);
	snap_take(&s);
	for (int i = 0; i < k; i++) {
		peer_chunk(p, m + c[i].off, c[i].len, c[i].rest, c[i].final);
		if (live && c[i].off + c[i].len + c[i].rest > R.max_message[from])
			CHECK(!p->t);	/* refused at the first chunk that shows it */
	}
	check_message(&s, p, from, m, n, live);
}

/*
 * One frame whose header says it is longer than what came: the payload's
 * first two bytes give the rest to come (BE16 x 4, or with 0xff first
 * nearly 2^63, the most RFC 6455 lets lws accept).  Over the limit, the
 * relay must refuse at this first chunk; else the rest is sent, 1000 bytes
 * a chunk, as copies of the payload.
 */
static void send_declared(enum role from, const char *pl, size_t n)
{
	const unsigned char *u = (const unsigned char *)pl;
	size_t rest, total, bn;
	const char *body;
	char *m = NULL;
	struct snap s;
	int live;
	struct peer *p = sender(from, &live);

	if (!p || n < 2)
		return;
	body = pl + 2;
	bn = n - 2;
	rest = u[0] == 0xff ? (SIZE_MAX >> 1) - u[1] : ((size_t)u[0] << 8 | u[1]) * 4;
	total = bn + rest;
	snap_take(&s);
	peer_chunk(p, body, bn, rest, 1);
	if (live && total > R.max_message[from])
		CHECK(!p->t);	/* refused at this first chunk */
	if (total <= R.max_message[from]) {
		m = malloc(total + 1);
		CHECK(m);
		for (size_t i = 0; i < total; i++)
			m[i] = bn ? body[i % bn] : 'x';
		for (size_t off = bn; off < total; ) {
			size_t len = total - off < 1000 ? total - off : 1000;

			peer_chunk(p, m + off, len, total - off - len, 1);
			off += len;
		}
	} else {
		peer_chunk(p, body, bn, 0, 1);	/* after the refusal: ignored */
	}
	check_message(&s, p, from, m, total, live);
	free(m);
}

/*** REST *******************************************************************/

struct req {			/* one REST call, from its record */
	char *text;			/* the record, writable */
	int method;			/* LWSHUMETH_*, -1 unknown */
	char path[PATH_LEN];
	const char *name[MAX_HEADERS];	/* lowercase, as lws keeps them */
	char *value[MAX_HEADERS];
	size_t vlen[MAX_HEADERS];
	int nh;
	char *arg[MAX_ARGS];
	size_t alen[MAX_ARGS];
	int nargs;
	const char *body;
	size_t body_len;
	int reps;
	char date[17], authz[HEADER_MAX + 1];	/* what this file put in */
	char names[HEADER_MAX - 256];		/* the headers it signed (authz has room) */
	char scope[SCOPE_MAX + 1];		/* a derived signature's */
	int derived;				/* signed V11-HMAC-SHA256 */
};

/* struct rest_in's header(): as lws_header() gives one (empty is absent). */
static int req_header(void *ctx, const char *name, char *out, size_t size)
{
	struct req *q = ctx;

	for (int i = 0; i < q->nh; i++)
		if (!strcmp(q->name[i], name)) {
			if (!q->vlen[i] || q->vlen[i] >= size)
				return -1;
			memcpy(out, q->value[i], q->vlen[i]);
			out[q->vlen[i]] = '\0';
			return (int)q->vlen[i];
		}
	return -1;
}

/* struct rest_in's arg(): as lws_hdr_copy_fragment() gives one. */
static int req_arg(void *ctx, int i, char *out, size_t size)
{
	struct req *q = ctx;

	if (i < 0 || i >= q->nargs || q->alen[i] >= size)
		return -1;
	memcpy(out, q->arg[i], q->alen[i]);
	out[q->alen[i]] = '\0';
	return (int)q->alen[i];
}

/* The index of the first header of that name, or -1. */
static int req_find(const struct req *q, const char *name)
{
	for (int i = 0; i < q->nh; i++)
		if (!strcmp(q->name[i], name))
			return i;
	return -1;
}

/* The request line's target: the path ({new} replaced, "" when lws would
 * give none) and the query, split at '&' (empty parameters kept, as lws). */
static void req_target(struct req *q, char *target)
{
	char *qm = strchr(target, '?'), *braces;
	char path[2 * PATH_LEN];

	if (qm) {
		*qm = '\0';
		for (char *a = qm + 1; q->nargs < MAX_ARGS; ) {
			char *amp = strchr(a, '&');

			if (amp)
				*amp = '\0';
			q->arg[q->nargs] = a;
			q->alen[q->nargs++] = strlen(a);
			if (!amp)
				break;
			a = amp + 1;
		}
	}
	braces = strstr(target, "{new}");
	if (braces)
		snprintf(path, sizeof path, "%.*s%s%s", (int)(braces - target), target, new_id,
			 braces + 5);
	else
		snprintf(path, sizeof path, "%s", target);
	if (q->method >= 0 && strlen(path) < PATH_LEN)	/* as rest_begin() */
		memcpy(q->path, path, strlen(path) + 1);
}

/* "METHOD TARGET\nName: value\n...\n\nBODY", parsed as lws would. */
static void req_parse(struct req *q, const char *pl, size_t n)
{
	char *t, *end, *line, *nl, *sp, *target = "";
	size_t len;
	int i;

	memset(q, 0, sizeof(*q));
	q->text = t = text_copy(pl, n);
	end = t + n;
	q->method = -1;
	q->reps = 1;
	nl = memchr(t, '\n', n);
	line = t;
	t = nl ? nl + 1 : end;
	if (nl)
		*nl = '\0';
	line[strcspn(line, "\r")] = '\0';
	sp = strchr(line, ' ');
	if (sp) {
		*sp = '\0';
		target = sp + 1;
	}
	for (i = 0; i < (int)LWS_ARRAY_SIZE(method_name); i++)
		if (!strcmp(line, method_name[i]))
			q->method = i;
	req_target(q, target);
	while (t < end) {	/* headers, up to an empty line */
		char *colon, *v;

		line = t;
		nl = memchr(t, '\n', (size_t)(end - t));
		len = nl ? (size_t)(nl - t) : (size_t)(end - t);
		t = nl ? nl + 1 : end;
		if (len && line[len - 1] == '\r')
			len--;
		if (!len)
			break;
		line[len] = '\0';
		colon = memchr(line, ':', len);
		if (!colon || colon == line || q->nh == MAX_HEADERS)
			continue;
		*colon = '\0';
		for (char *c = line; *c; c++)
			*c = (char)tolower((unsigned char)*c);
		v = colon + 1;
		while (v < line + len && (*v == ' ' || *v == '\t'))
			v++;
		q->name[q->nh] = line;
		q->value[q->nh] = v;
		q->vlen[q->nh++] = (size_t)(line + len - v);
	}
	q->body = t;
	q->body_len = (size_t)(end - t);
	i = req_find(q, "x-fuzz-repeat");
	if (i >= 0)
		q->reps = atoi(q->value[i]) < 1 ? 1 : atoi(q->value[i]) > MAX_REPEAT ? MAX_REPEAT :
			  atoi(q->value[i]);
}

/* The request as the AK/SK verifier sees it (args in store). */
static int req_sig(struct req *q, const struct peer *rp, struct sig_req *sq, char *store,
		   size_t size)
{
	const struct rest_in in = { req_header, req_arg, q };

	memset(sq, 0, sizeof(*sq));
	sq->method = method_name[q->method];
	sq->path = rp->call.path;
	sq->header = req_header;
	sq->ctx = q;
	sq->body = rp->call.body.p;
	sq->body_len = rp->call.body.len;
	return query_args(&in, sq, store, size);
}

/* The relay's keys, or them with another AK or region. */
static struct sig_keys keys(const char *ak, const char *region)
{
	return (struct sig_keys){ ak ? ak : R.ak, R.sk, region ? region : R.region };
}

/*
 * "x-sdk-date: now" becomes the time, and "authorization: sign h1;h2" a
 * basic signature of the request over those headers with the relay's AK/SK,
 * "authorization: derive h1;h2" a derived one (scoped to the date's day, the
 * relay's region and iotdm); the signature is "00" when the names are not
 * valid ones.  Returns 1 if it signed.
 */
static int req_sign(struct req *q, const struct peer *rp)
{
	char store[HEADER_MAX + SIG_ARGS_MAX + 1], hash[HEX256], sig[HEX256] = "00";
	char date[64] = "", *names;
	struct sig_req sq;
	int ai = req_find(q, "authorization"), di = req_find(q, "x-sdk-date"), ok = 0;

	if (di >= 0 && q->vlen[di] == 3 && !memcmp(q->value[di], "now", 3)) {
		iotda_time(time(NULL), q->date);
		q->value[di] = q->date;
		q->vlen[di] = 16;
	}
	if (!R.ak || ai < 0 || q->method < 0)
		return 0;
	q->derived = !strncmp(q->value[ai], "derive", 6);
	if (!q->derived && strncmp(q->value[ai], "sign", 4))
		return 0;
	q->value[ai][q->vlen[ai]] = '\0';
	names = trim(q->value[ai] + (q->derived ? 6 : 4));
	snprintf(q->names, sizeof q->names, "%s", names);
	if (di >= 0)
		req_header(q, "x-sdk-date", date, sizeof date);
	snprintf(q->scope, sizeof q->scope, "%.8s/%s/" SIG_SERVICE, trim(date), R.region);
	if (names_valid(q->names) && !req_sig(q, rp, &sq, store, sizeof store) &&
	    !canonical_hash(&sq, q->names, hash)) {
		sig_sign(R.ak, R.sk, q->derived ? q->scope : NULL, trim(date), hash, sig);
		ok = 1;
	}
	if (q->derived)
		snprintf(q->authz, sizeof q->authz, SIG_DERIVED " Credential=%s/%s, "
			 "SignedHeaders=%s, Signature=%s", R.ak, q->scope, q->names, sig);
	else
		snprintf(q->authz, sizeof q->authz, SIG_BASIC " Access=%s, SignedHeaders=%s, "
			 "Signature=%s", R.ak, q->names, sig);
	q->value[ai] = q->authz;
	q->vlen[ai] = strlen(q->authz);
	return ok;
}

/* sig_verify on the request, with keys. */
static enum sig_result verify(struct req *q, struct sig_req *sq, struct sig_keys k, time_t now)
{
	return sig_verify(&k, sq, q->authz, now);
}

/*
 * The verifier on a request this file signed: with the time as its date and
 * host and x-sdk-date among the names (not authorization, which the signing
 * changes) it verifies; and then not with one byte more body, another
 * method, another AK or a clock 16 minutes on, nor (a derived one) in a
 * relay of another region, but still with the query reversed.
 */
static enum sig_result check_signed(struct req *q, const struct peer *rp)
{
	char store[HEADER_MAX + SIG_ARGS_MAX + 1], *body;
	struct sig_req sq;
	time_t now = time(NULL);
	enum sig_result e;
	int m = q->method;

	if (req_sig(q, rp, &sq, store, sizeof store))
		return SIG_UNREADABLE;
	e = verify(q, &sq, keys(NULL, NULL), now);
	if (q->date[0] && names_have(q->names, "x-sdk-date") && names_have(q->names, "host") &&
	    !names_have(q->names, "authorization"))
		CHECK(e == SIG_OK);
	if (e != SIG_OK)
		return e;
	req_sig(q, rp, &sq, store, sizeof store);
	for (int i = 0; i < sq.nargs / 2; i++) {
		const char *a = sq.args[i];

		sq.args[i] = sq.args[sq.nargs - 1 - i];
		sq.args[sq.nargs - 1 - i] = a;
	}
	CHECK(verify(q, &sq, keys(NULL, NULL), now) == SIG_OK);
	CHECK(verify(q, &sq, keys("OTHERAK", NULL), now) == SIG_BAD_AK);
	CHECK(verify(q, &sq, keys(NULL, NULL), now + SIG_SKEW + 60) == SIG_SKEWED);
	CHECK(verify(q, &sq, keys(NULL, "xx-other-1"), now) ==
	      (q->derived ? SIG_SCOPE_REGION : SIG_OK));
	sq.method = method_name[(m + 1) % 8];
	CHECK(verify(q, &sq, keys(NULL, NULL), now) == SIG_MISMATCH);
	sq.method = method_name[m];
	body = malloc(sq.body_len + 1);
	CHECK(body);
	if (sq.body_len)
		memcpy(body, sq.body, sq.body_len);
	body[sq.body_len] = 'x';
	sq.body = body;
	sq.body_len++;
	CHECK(verify(q, &sq, keys(NULL, NULL), now) == SIG_MISMATCH);
	free(body);
	return e;
}

/* X-Auth-Token is the relay's --api-token (compared as C strings, as the relay does). */
static int req_token_ok(struct req *q)
{
	char got[TOKEN_MAX + 1];

	return R.api_token && req_header(q, "x-auth-token", got, sizeof got) > 0 &&
	       !strcmp(got, R.api_token);
}

/* The WebSocket route table on the same path: an id it takes is a valid one,
 * exactly what sits between the route's prefix and suffix. */
static void check_ws_route(const char *path)
{
	char id[ID_MAX + 1];
	const struct ws_route *w = ws_route(path, id);
	size_t pl, il;

	if (!w)
		return;
	pl = strlen(w->prefix);
	il = strlen(id);
	CHECK(id_ok(id) && strlen(path) == pl + il + strlen(w->suffix));
	CHECK(!strncmp(path, w->prefix, pl) && !memcmp(path + pl, id, il) &&
	      !strcmp(path + pl + il, w->suffix));
}

/* Whether a tunnel's token is a secret no reply may hold by accident: the
 * fixture's ('!') and those of tunnels REST made (random). */
static int secret_token(const struct tunnel *t, const char *token)
{
	if (strchr(token, '!'))
		return 1;
	for (int i = 0; i < nmade; i++)
		if (!strcmp(made[i], t->id))
			return 1;
	return 0;
}

/* No secret in a reply, but the one token it may hand out (NULL: none). */
static void check_secrets(const char *out, const char *allowed)
{
	lws_dll2_t *d;

	if (!out)
		return;
	CHECK(!strstr(out, API_TOKEN) && !strstr(out, FUZZ_SK));
	for (d = lws_dll2_get_head(&R.tunnels); d; d = d->next) {
		const struct tunnel *t = lws_container_of(d, struct tunnel, list);

		for (int i = 0; i < ROLES; i++)
			if (t->token[i] != allowed && secret_token(t, t->token[i]))
				CHECK(!strstr(out, t->token[i]));
	}
}

/* A tunnel's WebSocket URL for a role, as the relay's replies give it. */
static void check_url(const char *url, const struct tunnel *t, const char *route)
{
	char suffix[ID_MAX + 64];

	snprintf(suffix, sizeof suffix, "/v5/iot/tunnels/%s/%s", t->id, route);
	CHECK(url && !strncmp(url, "ws://", 5) && ends_with(url, suffix));
}

/* A tunnel_notify event (what IoTDA publishes to the device) for t. */
static void check_notify(const cJSON *ev, const struct tunnel *t)
{
	const cJSON *list = cJSON_GetObjectItemCaseSensitive(ev, "services");
	const cJSON *svc = cJSON_GetArrayItem(list, 0);
	const cJSON *paras = cJSON_GetObjectItemCaseSensitive(svc, "paras");
	const char *dev = json_str(ev, "object_device_id"), *id = json_str(svc, "service_id");
	const char *type = json_str(svc, "event_type"), *time = json_str(svc, "event_time");
	const char *token = json_str(paras, "tunnel_access_token");

	CHECK(dev && !strcmp(dev, t->device_id) && cJSON_GetArraySize(list) == 1);
	CHECK(id && !strcmp(id, "$tunnel_manager") && type && !strcmp(type, "tunnel_notify"));
	CHECK(time && strlen(time) == 16);
	CHECK(token && !strcmp(token, t->token[ROLE_DEVICE]));
	CHECK(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(paras, "expires_in")));
	check_url(json_str(paras, "tunnel_uri"), t, "device-connect");
}

/* POST …/tunnels answered 201: the tunnel is there, for the body's device,
 * and the device's events channel, if open, got its tunnel_notify. */
static void check_created(const struct snap *s, const struct peer *rp, const cJSON *out)
{
	const char *id = json_str(out, "tunnel_id"), *token = json_str(out, "tunnel_access_token");
	cJSON *body = cJSON_ParseWithLength(rp->call.body.p, rp->call.body.len);
	const char *dev = json_str(body, "device_id");
	const struct tunnel *t = id ? tunnel_find(&R, id) : NULL;
	const struct device *d;
	struct frame f[MAX_SENT];

	CHECK(t && strlen(id) == 36 && dev && !strcmp(t->device_id, dev) && !t->closed);
	CHECK(token && !strcmp(token, t->token[ROLE_APP]) && strlen(token) == 32);
	CHECK(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(out, "expires_in")));
	check_url(json_str(out, "tunnel_uri"), t, "source-connect");
	if (nmade < MAX_MADE)
		snprintf(made[nmade++], ID_MAX + 1, "%s", id);
	snprintf(new_id, sizeof new_id, "%s", id);
	d = device_find(&R, dev);
	CHECK(!R.devices_file || (d && d->listed));
	CHECK(!R.require_online || (d && d->events));
	for (int i = 0; i < npeers; i++) {
		const struct peer *p = &pool[i];
		int k = sent_to(s, p, f);

		if (d && d->events == p) {
			cJSON *ev;

			CHECK(k == 1);
			ev = cJSON_ParseWithLength(f[0].p, f[0].len);
			check_notify(ev, t);
			cJSON_Delete(ev);
		} else {
			CHECK(k == 0);
		}
	}
	cJSON_Delete(body);
}

/* GET …/tunnels[?device_id=]: every tunnel of that device (all without),
 * each a TunnelInfo with no token. */
static void check_list(struct req *q, const cJSON *out)
{
	const struct rest_in in = { req_header, req_arg, q };
	const cJSON *list = cJSON_GetObjectItemCaseSensitive(out, "tunnels"), *o;
	char buf[ID_MAX + 16];
	const char *dev = rest_arg(&in, "device_id=", buf, sizeof buf);
	lws_dll2_t *d;
	int n = 0;

	CHECK(cJSON_IsArray(list));
	for (d = lws_dll2_get_head(&R.tunnels); d; d = d->next) {
		const struct tunnel *t = lws_container_of(d, struct tunnel, list);

		n += !dev || !strcmp(dev, t->device_id);
	}
	CHECK(cJSON_GetArraySize(list) == n);
	cJSON_ArrayForEach(o, list) {
		const char *id = json_str(o, "tunnel_id"), *dv = json_str(o, "device_id");
		const char *st = json_str(o, "status");

		CHECK(id && tunnel_find(&R, id) && dv && (!dev || !strcmp(dev, dv)));
		CHECK(st && (!strcmp(st, "OPEN") || !strcmp(st, "CLOSED")));
		CHECK(!cJSON_GetObjectItemCaseSensitive(o, "tunnel_access_token"));
	}
}

/* A device's detail as ListDevices must give it: the file's, else (for a
 * name or node_id) its id, else none. */
static const char *detail_of(const struct device *d, int field, int id_default)
{
	return d->text[field] ? d->text[field] : id_default ? d->id : NULL;
}

/* The device passes the query's filters, by name, node_id and product_id. */
static int passes(const struct device *d, struct req *q)
{
	static const struct { const char *param; int field, id_default; } filters[] = {
		{ "device_name=", DEV_NAME, 1 }, { "node_id=", DEV_NODE, 1 },
		{ "product_id=", DEV_PRODUCT, 0 },
	};
	const struct rest_in in = { req_header, req_arg, q };
	char buf[TEXT_MAX + 32];

	for (size_t i = 0; i < LWS_ARRAY_SIZE(filters); i++) {
		const char *want = rest_arg(&in, filters[i].param, buf, sizeof buf);
		const char *have = detail_of(d, filters[i].field, filters[i].id_default);

		if (want && (!have || strcmp(want, have)))
			return 0;
	}
	return 1;
}

/*
 * GET …/devices answered 200: the relay's devices that pass the filters,
 * newest record first, below the marker, past the offset, at most limit;
 * page.count every one that passes, page.marker the last one's record.
 * Each is a QueryDeviceSimplify with the status IoTDA would give.
 */
static void check_devices(struct req *q, const cJSON *out)
{
	const struct rest_in in = { req_header, req_arg, q };
	const cJSON *o = cJSON_GetObjectItemCaseSensitive(out, "devices")->child;
	const cJSON *page = cJSON_GetObjectItemCaseSensitive(out, "page");
	const struct device *last = NULL;
	struct device_query dq;
	long count = 0, taken = 0, skip;
	char marker[MARKER_LEN + 1];

	CHECK(device_query(&in, &dq) == 0 && dq.limit >= 1 && dq.limit <= PAGE_MAX);
	skip = dq.offset;
	for (lws_dll2_t *d = lws_dll2_get_tail(&R.devices); d; d = d->prev) {
		const struct device *dv = lws_container_of(d, struct device, list);
		const char *id = json_str(o, "device_id"), *st = json_str(o, "status");
		const char *name = json_str(o, "device_name");

		CHECK(!d->prev || lws_container_of(d->prev, struct device, list)->record < dv->record);
		if (!passes(dv, q))
			continue;
		count++;
		if (dv->record >= dq.below || skip-- > 0 || taken == dq.limit)
			continue;
		CHECK(o && id && st && name && !strcmp(id, dv->id));
		CHECK(!strcmp(st, dv->events ? "ONLINE" : dv->status ? dv->status : "OFFLINE"));
		CHECK(!strcmp(name, detail_of(dv, DEV_NAME, 1)));
		last = dv;
		taken++;
		o = o->next;
	}
	CHECK(!o && cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(page, "count")) == count);
	if (last)
		record_marker(last->record, marker);
	CHECK(last ? !strcmp(json_str(page, "marker"), marker) : !json_str(page, "marker"));
}

/* An error reply: IoTDA's {error_code, error_msg}. */
static void check_error(const cJSON *out)
{
	CHECK(json_str(out, "error_code") && json_str(out, "error_msg"));
}

/* What one REST call answered, and did, is what the API says. */
static void check_reply(const struct snap *s, struct req *q, const struct peer *rp,
			const struct rest_args *a, const struct rest_route *hit, int status,
			int authorized, int was_closed)
{
	char *out = a->out ? cJSON_PrintUnformatted(a->out) : NULL;
	const struct tunnel *t = a->tunnel[0] ? tunnel_find(&R, a->tunnel) : NULL;
	const char *allowed = NULL;

	CHECK(status == 200 || status == 201 || status == 204 || status == 400 || status == 401 ||
	      status == 403 || status == 404 || status == 405 || status == 413 || status == 429);
	CHECK((status == 429) == (R.throttled == s->throttled + 1));	/* the bucket was empty */
	CHECK((status == 204) == !a->out && (!out || cJSON_IsObject(a->out)));
	CHECK(!hit || hit->method == q->method);
	if (!R.api_token && !R.ak)
		CHECK(status == 404);
	if (status == 405 || status == 413 || status == 401 || status == 403)
		CHECK(!!hit == (status != 405));
	if (status == 413)
		CHECK(rp->call.body_too_big);
	if (status < 300)
		CHECK(hit && authorized && !rp->call.body_too_big &&
		      !(hit->tunnel_api && R.no_tunnel_edition));
	if (hit && authorized && !rp->call.body_too_big)
		CHECK(status != 401);
	if (status >= 400)
		check_error(a->out);
	if (hit && hit->handler == rest_create && status == 201) {
		const char *id = json_str(a->out, "tunnel_id");

		t = id ? tunnel_find(&R, id) : NULL;
		allowed = t ? t->token[ROLE_APP] : NULL;
		check_created(s, rp, a->out);
	} else if (hit && hit->handler == rest_list && status == 200) {
		check_list(q, a->out);
	} else if (hit && hit->handler == rest_devices) {
		const struct rest_in in = { req_header, req_arg, q };
		struct device_query dq;

		if (status == 200)
			check_devices(q, a->out);
		else if (status == 400)
			CHECK(device_query(&in, &dq) != 0);
	} else if (hit && hit->handler == rest_show && status == 200) {
		const char *id = json_str(a->out, "tunnel_id");

		CHECK(t && id && !strcmp(id, t->id));
	} else if (hit && hit->handler == rest_notify && status == 200) {
		CHECK(t && !t->closed);
		check_notify(a->out, t);
		allowed = t->token[ROLE_DEVICE];
	} else if (hit && hit->handler == rest_close && status == 204) {
		CHECK(t && t->closed && !t->peer[0] && !t->peer[1]);
		if (t == T && !was_closed)
			check_evicted(s, "4");
	} else if (hit && hit->handler == rest_delete) {
		CHECK(status == 204 ? !t : status != 400 || (t && !t->closed));
	}
	if (!(hit && hit->handler == rest_create && status == 201))
		for (int i = 0; i < npeers; i++)	/* only a create notifies */
			if (pool[i].events)
				check_sent(s, &pool[i], "", NULL, 0, NULL);
	check_secrets(out, allowed);
	free(out);
}

/* The rate limit's bucket never serves more than it holds plus what
 * refilled since the input's first counted call. */
static void check_rate(void)
{
	static lws_usec_t first;
	lws_usec_t now = lws_now_usecs();

	if (R.served + R.throttled == 1)
		first = now;
	if (R.rate_limit)
		CHECK(R.served <= (unsigned long)(R.rate_limit +
						 (now - first) * R.rate_limit / LWS_US_PER_SEC));
}

/* One REST call, as rest_begin(), rest_body() and rest_dispatch() see it. */
static void rest_call(const char *pl, size_t n)
{
	struct req q;
	struct peer rp;
	const struct rest_in in = { req_header, req_arg, &q };
	struct rest_args a;
	const struct rest_route *hit = NULL;
	struct snap s;
	int status, authorized, was_closed = T ? T->closed : 0;
	enum sig_result e = SIG_RESULTS;

	req_parse(&q, pl, n);
	memset(&rp, 0, sizeof rp);
	rp.r = &R;
	rp.call.method = q.method;
	memcpy(rp.call.path, q.path, sizeof q.path);
	for (int i = 0; q.body_len && i < q.reps; i++)
		rest_body(&rp, q.body, q.body_len);
	check_ws_route(rp.call.path);
	if (req_sign(&q, &rp))
		e = check_signed(&q, &rp);
	authorized = req_token_ok(&q) || (R.ak && e == SIG_OK);
	snap_take(&s);
	memset(&a, 0, sizeof a);
	a.r = &R;
	a.p = &rp;
	a.in = &in;
	status = rest_route(&a, &hit);
	T = tunnel_find(&R, FIXTURE_ID);	/* DELETE may have freed it */
	check_reply(&s, &q, &rp, &a, hit, status, authorized, was_closed);
	check_rate();
	cJSON_Delete(a.out);
	rest_call_free(&rp.call);
	free(q.text);
}

/*** files ******************************************************************/

/* The payload as the file the relay reads (a memfd, by its /proc path). */
static void file_put(const char *pl, size_t n)
{
	CHECK(ftruncate(file_fd, 0) == 0);
	CHECK(!n || pwrite(file_fd, pl, n, 0) == (ssize_t)n);
}

/* One --tunnels entry by the documented rules; NULL if invalid, else its id. */
static const char *tunnel_entry(const cJSON *o, long *expires_in)
{
	const char *id = json_str(o, "tunnel_id"), *dev = json_str(o, "device_id");
	const char *src = json_str(o, "source_token"), *dtok = json_str(o, "device_token");
	const cJSON *e = cJSON_GetObjectItemCaseSensitive(o, "expires_in");

	*expires_in = DEFAULT_EXPIRES_IN;
	if (e) {
		if (!cJSON_IsNumber(e) || !(e->valuedouble >= 0 && e->valuedouble <= EXPIRES_MAX))
			return NULL;
		*expires_in = (long)e->valuedouble;
	}
	if (!id || !id_ok(id) || !dev || !id_ok(dev) || !src || !token_ok(src) ||
	    (dtok && !token_ok(dtok)))
		return NULL;
	return id;
}

/* A tunnels entry that loads: valid, and its id new to the relay and to
 * the entries before it in arr. */
static int tunnel_entry_new(const cJSON *o, const cJSON *arr)
{
	long exp;
	const char *id = tunnel_entry(o, &exp);

	for (const cJSON *p = arr->child; id && p != o; p = p->next)
		if (!strcmp(json_str(p, "tunnel_id"), id))
			return 0;
	return id && !tunnel_find(&R, id);
}

/* A detail of a --devices entry: absent, or 1-256 bytes with no control
 * character. */
static int detail_ok(const cJSON *o, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
	size_t n;

	if (!v)
		return 1;
	if (!cJSON_IsString(v))
		return 0;
	n = strlen(v->valuestring);
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)v->valuestring[i] < 0x20 || v->valuestring[i] == 0x7f)
			return 0;
	return n >= 1 && n <= TEXT_MAX;
}

/* A status IoTDA has, or none. */
static int status_ok(const cJSON *o)
{
	static const char *const known[] = { "ONLINE", "OFFLINE", "ABNORMAL", "INACTIVE", "FROZEN" };
	const char *s = json_str(o, "status");

	for (size_t i = 0; s && i < LWS_ARRAY_SIZE(known); i++)
		if (!strcmp(s, known[i]))
			return 1;
	return !cJSON_GetObjectItemCaseSensitive(o, "status");
}

/* The id a devices entry names: the string, or an object's device_id. */
static const char *entry_id(const cJSON *o)
{
	return cJSON_IsString(o) ? o->valuestring : json_str(o, "device_id");
}

static int device_entry(const cJSON *o, const cJSON *arr)	/* a devices entry that loads */
{
	const char *id = entry_id(o);

	(void)arr;
	if (!id || !id_ok(id))
		return 0;
	return cJSON_IsString(o) || (detail_ok(o, "name") && detail_ok(o, "node_id") &&
				     detail_ok(o, "product_id") && detail_ok(o, "product_name") &&
				     status_ok(o));
}

/* Writes pl as the file a relay option names and loads it: load_array's
 * result; *good: how many entries of arr load, judged by valid first. */
static int file_load(const char *pl, size_t n, const char **option, const cJSON *arr,
		     int (*load)(struct relay *, const cJSON *, int),
		     int (*valid)(const cJSON *, const cJSON *), int *good)
{
	const cJSON *o;

	*good = 0;
	cJSON_ArrayForEach(o, arr) {
		if (!valid(o, arr))
			break;
		++*good;
	}
	file_put(pl, n);
	*option = file_path;
	return load_array(&R, file_path, load);
}

/* --tunnels: accepted exactly when a JSON array of valid, new entries; the
 * ones before the first bad entry are loaded, as listed. */
static void tunnels_file(const char *pl, size_t n)
{
	cJSON *all = cJSON_ParseWithLength(pl, n), *arr = cJSON_IsArray(all) ? all : NULL, *o;
	unsigned int before = R.tunnels.count;
	int good, rc = file_load(pl, n, &R.tunnels_file, arr, load_tunnel, tunnel_entry_new, &good);
	int i = 0;
	long exp;

	T = tunnel_find(&R, FIXTURE_ID);
	CHECK((rc == 0) == (arr && good == cJSON_GetArraySize(arr)) &&
	      R.tunnels.count == before + (unsigned int)good);
	cJSON_ArrayForEach(o, arr) {
		const char *id, *dtok = json_str(o, "device_token");
		const struct tunnel *t;

		if (i++ == good)
			break;
		id = tunnel_entry(o, &exp);
		t = tunnel_find(&R, id);
		CHECK(t && !strcmp(t->device_id, json_str(o, "device_id")) && !t->closed);
		CHECK(!strcmp(t->token[ROLE_APP], json_str(o, "source_token")));
		CHECK(!strcmp(t->token[ROLE_DEVICE], dtok ? dtok : json_str(o, "source_token")));
		CHECK(exp ? exp < 2 || !t->expired : t->expired);
	}
	cJSON_Delete(all);
}

/* --devices: accepted exactly when a JSON array of valid entries; those
 * before the first bad one are known after, listed. */
static void devices_file(const char *pl, size_t n)
{
	cJSON *all = cJSON_ParseWithLength(pl, n), *arr = cJSON_IsArray(all) ? all : NULL, *o;
	int good, rc = file_load(pl, n, &R.devices_file, arr, load_device, device_entry, &good);
	int i = 0;

	CHECK((rc == 0) == (arr && good == cJSON_GetArraySize(arr)));
	cJSON_ArrayForEach(o, arr) {
		if (i++ == good)
			break;
		const struct device *d = device_find(&R, entry_id(o));

		CHECK(d && d->listed);
	}
	cJSON_Delete(all);
}

/*** the input **************************************************************/

/* The relay's options from the two option bytes, the fixture tunnel, and
 * (unless the bytes say not) an app and a device on it. */
static void setup(uint8_t c0, uint8_t c1)
{
	static const size_t maxes[ROLES][4] = {	/* each pair differs: both ways round */
		{ DEFAULT_MAX_MESSAGE, 64, 512, 4096 },
		{ DEFAULT_MAX_DEVICE_MESSAGE, 512, 64, DEFAULT_MAX_MESSAGE },
	};

	R.max_message[ROLE_APP] = maxes[ROLE_APP][c0 & 3];
	R.max_message[ROLE_DEVICE] = maxes[ROLE_DEVICE][c0 & 3];
	R.region = DEFAULT_REGION;
	R.delay_ms = c0 & 4 ? 1 : 0;
	R.api_token = c0 & 0x20 ? NULL : api_token;
	R.ak = c0 & 0x40 ? ak : NULL;
	R.sk = c0 & 0x40 ? sk : NULL;
	R.require_online = c0 >> 7;
	R.cut_role = (c1 & 7) >= 6 ? c1 >> 3 & 1 : -1;
	R.cut_after = (c1 & 7) >= 6 ? (c1 & 7) - 5u : 0;
	R.stall_after = (c1 >> 4 & 3) == 3 ? 3 : -1;
	R.rate_limit = (c1 >> 4 & 3) == 2 ? 2 : 0;	/* a bucket of 2: the third quick call is 429 */
	R.bucket = 0;
	R.bucket_at = 0;
	R.served = R.throttled = 0;
	R.no_tunnel_edition = c1 >> 6 == 3;
	R.tunnels_file = R.devices_file = NULL;
	R.relayed = 0;
	R.stalled = R.quit = R.exiting = 0;
	T = tunnel_new(&R, FIXTURE_ID, FIXTURE_DEV, SRC_TOKEN, DEV_TOKEN, 3600);
	tunnel_arm(T);
	if (!(c0 & 0x10))
		connect_peer(ROLE_APP);
	if (!(c0 & 0x08))
		connect_peer(ROLE_DEVICE);
}

/* Everything freed, as relay_stop() does: timers, then the connections'
 * CLOSED callbacks (the tunnels still there), then tunnels and devices. */
static void teardown(void)
{
	lws_dll2_t *d, *next;

	R.exiting = 1;
	for (d = lws_dll2_get_head(&R.tunnels); d; d = d->next) {
		struct tunnel *t = lws_container_of(d, struct tunnel, list);

		lws_sul_cancel(&t->expiry_sul);
		delay_clear(t);
	}
	for (int i = 0; i < npeers; i++)
		if (!dead[i])
			peer_closed(&pool[i]);
	for (d = lws_dll2_get_head(&R.tunnels); d; d = next) {
		next = d->next;
		tunnel_free(lws_container_of(d, struct tunnel, list));
	}
	for (d = lws_dll2_get_head(&R.devices); d; d = next) {
		next = d->next;
		device_free(lws_container_of(d, struct device, list));
	}
	CHECK(!R.tunnels.count && !R.devices.count);
	memset(dead, 0, sizeof dead);
	npeers = nmade = 0;
	cur[ROLE_APP] = cur[ROLE_DEVICE] = NULL;
	T = NULL;
	new_id[0] = '\0';
}

/* One record: its letter says what happens (see the top of the file). */
static void record(char op, const char *pl, size_t n)
{
	switch (op) {
	case 'a': send_message(ROLE_APP, pl, n, 0); break;
	case 'd': send_message(ROLE_DEVICE, pl, n, 0); break;
	case 'f': send_message(ROLE_APP, pl, n, 1); break;
	case 'F': send_message(ROLE_DEVICE, pl, n, 1); break;
	case 'o': send_declared(ROLE_APP, pl, n); break;
	case 'O': send_declared(ROLE_DEVICE, pl, n); break;
	case 'c': connect_peer(ROLE_APP); break;
	case 'C': connect_peer(ROLE_DEVICE); break;
	case 'g': leave(ROLE_APP); break;
	case 'G': leave(ROLE_DEVICE); break;
	case 'k': drop_app(); break;
	case 'K': drop_devices(); break;
	case 'w': write_out(ROLE_APP); break;
	case 'W': write_out(ROLE_DEVICE); break;
	case 'z': fire_delay(pl, n); break;
	case 'x': expire(); break;
	case 'e': events_open(pl, n); break;
	case 'E': events_close(pl, n); break;
	case 'r': rest_call(pl, n); break;
	case 't': tunnels_file(pl, n); break;
	case 'v': devices_file(pl, n); break;
	default: break;
	}
}

/*** libFuzzer **************************************************************/

/* The relay's timers' lws context (no listener), its log sent nowhere, the
 * memfd its files are read from. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const struct lws_protocols none[] = {
		{ "fuzz", lws_callback_http_dummy, 0, 0, 0, NULL, 0 },
		{ NULL, NULL, 0, 0, 0, NULL, 0 }
	};
	struct lws_context_creation_info info;

	(void)argc;
	(void)argv;
	log_out = stderr;
	stderr = fopen("/dev/null", "w");	/* sb_log(); libFuzzer and ASan keep fd 2 */
	CHECK(stderr);
	sb_prog = "fuzz_relay";
	lws_set_log_level(0, NULL);
	memset(&info, 0, sizeof info);
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.protocols = none;
	info.user = &R;
	R.ctx = lws_create_context(&info);
	CHECK(R.ctx);
	file_fd = memfd_create("fuzz-relay-file", MFD_CLOEXEC);
	CHECK(file_fd >= 0);
	snprintf(file_path, sizeof file_path, "/proc/self/fd/%d", file_fd);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = size ? (const char *)data : "";	/* never NULL */
	size_t off = size < 2 ? size : 2;

	setup(size > 0 ? data[0] : 0, size > 1 ? data[1] : 0);
	check_state();
	while (off < size) {
		const char *rec = p + off, *sep = memchr(rec, SEP, size - off);
		size_t n = sep ? (size_t)(sep - rec) : size - off;

		if (n)
			record(rec[0], rec + 1, n - 1);
		check_state();
		off += n + 1;
	}
	send_message(ROLE_APP, p, size, 1);
	check_state();
	send_message(ROLE_DEVICE, p, size, 1);
	check_state();
	teardown();
	return 0;
}
