/* tunnel-device: the sandbox device agent of tunnel_tui.
 *
 * It plays the device side of the IoTDA-style secure tunnel (README Protocol §8):
 * one WebSocket to the platform's device-connect URL, JSON messages in and
 * out, and every `connect` turned into a shell session, either on a local
 * pseudo-terminal (--backend pty) or over SSH to a real sshd (--backend ssh).
 * `--profile c-sdk` behaves like the official Huawei C device SDK, quirks
 * included, so the console can be tested against what real devices do.
 *
 * The tunnel is fixed (--url, --notify) or, with --events, announced: a
 * second WebSocket stands in for the device's MQTT connection, and each
 * tunnel_notify event on it (re)opens the tunnel connection on the tunnel it
 * names.  Both WebSockets are a struct conn; a struct conn_kind says what
 * differs between them.
 *
 * One thread runs everything through lws: the WebSockets, the pty masters and
 * ssh sockets (adopted as RAW_FILE), a signalfd and the lws_sul timers.  The
 * only other threads are short-lived ssh login workers (see the ssh backend).
 * The log lines tests wait for are listed in usage_tail.
 *
 * Contents: includes and tunables; state; helpers (ids, JSON strings, UTF-8);
 * outbound messages; the two profiles; sessions; the pty backend; the ssh
 * backend; inbound messages; the WebSockets; the tunnel; the events channel;
 * signals and children; command line; setup and teardown; main.
 */

/*** includes and tunables ***************************************************/

#include "sandbox.h"
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libssh/libssh.h>
#include <limits.h>
#include <pthread.h>
#include <pty.h>
#include <pwd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define RID_MAX		128		/* longest request_id kept; longer: dropped */
#define CSDK_RID_LEN	36		/* c-sdk: its request_id buffer holds 37 bytes */
#define RX_MAX		(1u << 20)	/* largest inbound message reassembled */
#define MSG_MAX		8192		/* full profile: command_response, serialized */
#define READ_FULL	4096		/* full profile: bytes read from a shell at once */
#define READ_CSDK	2048		/* c-sdk: the official SDK's read buffer */
#define READ_MAX	4096		/* the larger of the two */
#define DRAIN_READS	64		/* reads spent flushing an ended shell */
#define OUT_FULL	(16u << 10)	/* full profile: unsent output that stops reading shells */
#define OUT_CSDK	0		/* c-sdk: a read's message is sent before the next read */
#define SNDBUF		(32 << 10)	/* a WebSocket's socket send buffer (see conn_up) */
#define IN_MAX		(1u << 20)	/* keystrokes held for a shell not reading */
#define INPUT_RETRY_US	10000		/* held keystrokes: retried this often (a backstop for POLLOUT) */
#define CARRY_MS	20		/* a split UTF-8 tail waits this long for its rest */
#define EXIT_GRACE_MS	250		/* shell gone, pty still open (a background job) */
#define STOP_GRACE_MS	2000		/* SIGTERM: time for the close handshake */
#define PING_SECS	20		/* WebSocket PING after this long idle */
#define HANGUP_SECS	60		/* and hang up after this long without a PONG */
#define SSH_TIMEOUT_S	10L		/* libssh connect/auth timeout */
#define TOKEN_MAX	256		/* README Protocol §1 */
#define ID_MAX		128		/* a device id: 1-128 of A-Z a-z 0-9 _ - */
#define EVENT_MAX	65536		/* largest tunnel_notify event (file or frame) */
#define PTY_COLS	128		/* the official devices' fixed PTY */
#define PTY_ROWS	30
#define PTY_TERM	"xterm"
#define COLS_MIN	20
#define COLS_MAX	500
#define ROWS_MIN	5
#define ROWS_MAX	200
#define SHELL_PATH	"/usr/local/bin:/usr/bin:/bin"
#define SYSTEM_CA	"/etc/ssl/certs/ca-certificates.crt"

/* Reconnect delays (README Protocol §4.8): 1 s doubling to 30 s, 20 % jitter. */
static const uint32_t backoff_ms[] = { 1000, 2000, 4000, 8000, 16000, 30000 };

static const lws_retry_bo_t retry_policy = {
	.retry_ms_table = backoff_ms,
	.retry_ms_table_count = LWS_ARRAY_SIZE(backoff_ms),
	.conceal_count = LWS_RETRY_CONCEAL_ALWAYS,
	.secs_since_valid_ping = PING_SECS,
	.secs_since_valid_hangup = HANGUP_SECS,
	.jitter_percent = 20,
};

/* Ends after which a WebSocket must not come back (README Protocol §4.8): a
 * close code, or an HTTP status refusing the upgrade.  status: the exit
 * status when the agent leaves on it. */
static const struct final_end {
	int close;
	unsigned http;
	int status;
	const char *why;
} tunnel_finals[] = {
	{ 1000, 0, 0, "the platform closed the tunnel (close 1000)" },
	{ 1002, 0, 1, "the platform refused the device token (close 1002)" },
	{ 4000, 0, 1, "replaced by a newer connection of this device (close 4000)" },
	{ 0, 401, 1, "the platform refused the device (HTTP 401)" },
	{ 0, 403, 1, "the platform refused the device (HTTP 403)" },
	{ 0, 404, 1, "the platform refused the device (HTTP 404)" },
}, events_finals[] = {
	{ 4000, 0, 1, "events channel: replaced by a newer agent of this device (close 4000)" },
};

static const char usage_head[] =
	"usage: tunnel-device (--url URL (--token T | --token-file F) | --notify F\n"
	"                      | --device-id ID --events URL) [options]\n"
	"The sandbox device agent: answers secure-tunnel `connect` messages with shell\n"
	"sessions on a local pty or on an sshd.  The tunnel is fixed (--url, --notify)\n"
	"or announced: with --events the agent holds a WebSocket standing in for the\n"
	"device's MQTT connection, and every tunnel_notify event on it opens the tunnel\n"
	"it names (one at a time: a newer event closes the current tunnel and its\n"
	"sessions first).\n\n";

static const char usage_tail[] =
	"\nThe pty backend runs the shell user's login shell (or --shell), whatever name\n"
	"logs in; the name and password must match a line of --login-file.  The shell\n"
	"user is the agent's own, or the --run-as USER (uid, gid, groups, home); then\n"
	"the agent itself stays root.\n"
	"Without --login-file it refuses every login (disconnect 400).\n\n"
	"Log lines on stderr (tests wait on them; REQID is the request_id):\n"
	"  connected                     the WebSocket is up\n"
	"  disconnected (close CODE)     it went down (1006: no close frame)\n"
	"  connection failed: WHY        an attempt failed before the upgrade\n"
	"  reconnecting in N ms          the next attempt is scheduled\n"
	"  session REQID: login ok       the shell runs\n"
	"  session REQID: login failed   disconnect 400 was sent\n"
	"  session REQID: ended          shell exit (after disconnect 408), replaced,\n"
	"                                closed by the app, or the tunnel was lost\n"
	"  dropped a malformed message   unparseable JSON (contents never logged)\n"
	"  message without tunnel_service_type (official devices crash on this)\n"
	"                                c-sdk profile only\n"
	"  ignored operation_type OP     one the profile does not handle (c-sdk: all\n"
	"                                but connect and command, as the SDK)\n"
	"With --wedge (c-sdk), after a shell exit until the tunnel connection ends:\n"
	"  wedged: 408 sent              the exit sent its 408; the agent is stuck\n"
	"  wedged: no 408                it sent none (commands are dropped)\n"
	"  wedged: connect REQID answered, then silence   the next connect: no shell\n"
	"  wedged: stale 408 sent        right after that answer, when the exit sent none\n"
	"  wedged: OP ignored            any other message meanwhile (contents never logged)\n"
	"  wedge cleared: the tunnel connection ended\n"
	"  ... (close 1000|1002|4000); exiting   the platform said stop: no reconnect\n"
	"  ... (HTTP 401|403|404); exiting       refused before the upgrade: the same\n"
	"  stopping on signal N          SIGTERM/SIGINT/SIGHUP: close 1001, shells killed\n"
	"With --events, besides the tunnel's lines above:\n"
	"  events channel connected      its WebSocket is up\n"
	"  events channel closed (close CODE)   it went down; reconnects with backoff\n"
	"  events channel connection failed: WHY\n"
	"  events channel reconnecting in N ms\n"
	"  tunnel_notify for tunnel T    an event: the tunnel connection goes to T\n"
	"  closing tunnel T for the new one   close 1000; its sessions end first\n"
	"  tunnel_notify for device D; ignored   an event for another device\n"
	"  dropped a malformed event     no tunnel_notify with URI, token and device\n"
	"  dropped an oversized event    over 64 KiB\n"
	"  ...; waiting for the next tunnel_notify   instead of \"; exiting\" after the\n"
	"                                tunnel's close 1000|1002|4000 or HTTP 401|403|404\n"
	"  events channel: replaced by a newer agent of this device (close 4000); exiting\n"
	"Exit status: 0 after close 1000 or SIGTERM/SIGINT; 1 when the platform\n"
	"refuses the device (HTTP 401/403/404, close 1002 or 4000) or on a fatal\n"
	"error; 2 on bad options.  With --events: 0 on SIGTERM/SIGINT, 1 after close\n"
	"4000 on the events channel or on a fatal error, 2 on bad options.\n";

/*** state *******************************************************************/

struct account {			/* who the pty shells run as: the agent's user or --run-as */
	char *name, *home, *shell;
	const char *path;		/* their PATH */
	int login;			/* a login shell (argv[0] "-sh"), or a plain one */
	int switch_user;		/* --run-as: the child becomes uid/gid/groups */
	uid_t uid;
	gid_t gid;
	gid_t *groups;			/* its supplementary groups, looked up before any fork */
	int ngroups;
};

struct cred {				/* one line of --login-file */
	struct cred *next;
	char *user, *pass;
};

/* --wedge: how the official SDK gets stuck after a shell exit (README Protocol
 * §4, routing): its channel-close callback takes a lock its reader thread
 * holds.  Whether the 408 went out first is a race the modes pick. */
struct wedge_mode {
	const char *name;
	unsigned pct_408;		/* the chance, in percent, that the exit sends its 408 */
};

static const struct wedge_mode wedge_modes[] = { { "no-408", 0 }, { "408", 100 }, { "random", 50 } };

/* W_ARMED: a shell exited, the next connect is answered and then sticks;
 * W_STUCK: that connect came, nothing more is handled. */
enum wedge { W_NONE, W_ARMED, W_STUCK };

struct config {				/* the command line, checked and resolved */
	const char *url, *token_arg, *token_file, *notify, *backend, *profile;
	const char *ssh, *known_hosts, *login_file, *cacert, *device_id, *events, *home, *wedge;
	const char *shell, *path, *run_as;
	const struct wedge_mode *wedge_mode;	/* NULL: no --wedge */
	int insecure, help;
	char ssh_host[256];
	int ssh_port;
	char *known_hosts_path;		/* owned */
	struct cred *creds;
	struct account me;
};

struct login {				/* what a connect asks for */
	char *user, *pass;		/* in the parsed message; wiped after use */
	unsigned cols, rows;
	char term[32];
};

enum sstate { S_LOGIN, S_LIVE, S_DEAD };
enum link { L_IDLE, L_CONNECTING, L_OPEN, L_SWITCHING, L_STOPPING, L_STATES };

struct ssh_job;
struct agent;

struct target {				/* where a WebSocket goes */
	char *url_buf;			/* owned: the URL, carved by lws_parse_uri */
	char *token;			/* owned, wiped; NULL: no auth header */
	const char *host;		/* inside url_buf */
	char path[1024];
	int port, tls;
};

/* What differs between the two WebSockets: the log lines (formats), when
 * to give up, what their messages mean. */
struct conn_kind {
	const char *proto;		/* the lws protocol */
	const char *up, *closed, *failed, *retry, *oversized;
	const struct final_end *finals;
	size_t nfinals;
	size_t rx_max;			/* largest message reassembled */
	void (*message)(struct agent *a, const char *text, size_t len);
	int (*writeable)(struct agent *a, struct lws *wsi);	/* -1: close it */
	void (*lost)(struct agent *a);	/* it went down: drop what lived on it */
	void (*final)(struct agent *a, const struct final_end *f);
};

/* One client WebSocket.  Life: L_IDLE -> L_CONNECTING (wsi set) -> L_OPEN
 * -> L_IDLE again (retry, switch, wait or leave), or via L_SWITCHING (we
 * close 1000 for the next target) or L_STOPPING (we close 1001 to exit). */
struct conn {
	struct agent *a;
	const struct conn_kind *kind;
	struct target to;		/* where it goes */
	struct target next;		/* tunnel: announced, taken once it is down */
	struct lws *wsi;		/* from the attempt until it ends */
	enum link link;
	lws_sorted_usec_list_t sul_connect;
	uint16_t retries;
	int close_code;			/* from the peer's close frame, or ours; 0: none */
	struct sb_rxbuf rx;
	int rx_skip;			/* the message being received is too big */
};

/* One request_id.  Life: S_LOGIN (backend logging in) -> S_LIVE (shell fd
 * adopted by lws) -> S_DEAD (ended or killed).  The struct is freed by
 * session_release() once lws has closed its fd and no login worker holds it. */
struct session {
	struct session *next;
	struct agent *a;
	char rid[RID_MAX + 1];
	enum sstate state;
	int failed;			/* login refused: no "ended" line */
	int worker;			/* an ssh login thread owns u.ssh.job */
	int kill_sig;			/* what the pty's process group gets */
	struct lws *wsi;		/* the adopted pty master or ssh socket */
	struct sb_rxbuf in;		/* keystrokes the backend has not taken */
	unsigned char carry[4];		/* full profile: a UTF-8 char split by a read */
	size_t ncarry;
	lws_sorted_usec_list_t sul_carry, sul_exit, sul_write;
	union {
		struct { pid_t pid; int fd; } pty;
		struct { ssh_session ssh; ssh_channel chan; struct ssh_job *job; } ssh;
	} u;
};

/* A backend turns a login into a shell.  Optional entries may be NULL. */
struct backend {
	const char *name;
	void (*login)(struct session *s, const struct login *l);  /* ends in session_login_done(), now or later */
	ssize_t (*read)(struct session *s, unsigned char *buf, size_t n);  /* >0 bytes, 0 nothing yet, -1 ended */
	ssize_t (*write)(struct session *s, const unsigned char *p, size_t n);  /* bytes taken, -1 broken */
	void (*flush)(struct session *s);	/* optional: push out what the backend buffered */
	int (*backlog)(struct session *s);	/* optional: nonzero while it holds unsent bytes */
	void (*collect)(struct agent *a);	/* optional: finish logins done by workers */
	void (*join)(struct session *s);	/* optional: wait for the login worker */
	void (*close)(struct session *s);	/* frees what login made */
};

/* A profile is how the device talks: ours (full) or the official C SDK's. */
struct profile {
	const char *name;
	int single;			/* one session: a connect silently replaces it */
	int fixed_pty;			/* 128x30 xterm whatever the connect asks */
	int quirks;			/* the SDK's drops and truncations */
	size_t read_size;		/* bytes read from a shell at a time */
	size_t out_high;		/* queued bytes over which shells are not read (to half) */
	void (*accepted)(struct session *s);	/* a connect arrived, before login */
	void (*login_ok)(struct session *s);
	void (*login_failed)(struct session *s, const char *why);
	void (*output)(struct session *s, const unsigned char *p, size_t n);
	void (*flush)(struct session *s);	/* the shell ended: send held-back bytes */
	void (*exited)(struct session *s);
};

struct agent {				/* the whole program's state */
	struct config cfg;
	const struct profile *prof;
	const struct backend *be;
	struct lws_context *ctx;
	struct lws_vhost *vh;
	struct conn tun;		/* the tunnel: the sessions live on it */
	struct conn ev;			/* --events: the MQTT stand-in */
	lws_sorted_usec_list_t sul_stop;
	struct sb_queue out;		/* the tunnel's */
	int paused;			/* shells not read: the queue went over prof->out_high */
	struct session *sessions;
	char latest_rid[CSDK_RID_LEN + 1];	/* c-sdk: echoed on its output */
	int have_latest;
	enum wedge wedge;		/* c-sdk --wedge: how stuck the SDK is */
	int owes_408;			/* the exit sent no 408: the next connect will */
	int sigfd;
	int stopping;			/* winding down: sessions gone, closing with 1001 */
	int quit, status;
};

static const struct backend pty_backend, ssh_backend;
static const struct profile full_profile, csdk_profile;
static const struct conn_kind tunnel_kind, events_kind;
static const struct backend *const backends[] = { &pty_backend, &ssh_backend };
static const struct profile *const profiles[] = { &full_profile, &csdk_profile };

/*** helpers: ids, JSON strings, UTF-8 ***************************************/

static const char *loggable(const char *s)	/* a peer's id, safe for one log line */
{
	static char buf[68];
	size_t i;

	if (!s)
		return "(none)";
	for (i = 0; s[i] && i < 64; i++)
		buf[i] = isalnum((unsigned char)s[i]) || strchr("-_.:", s[i]) ? s[i] : '?';
	buf[i] = '\0';
	if (s[i])
		strcpy(buf + 61, "...");
	return buf;
}

static int token_ok(const char *t)	/* 1-256 printable chars without spaces: an HTTP header's */
{
	size_t n = strlen(t), i;

	for (i = 0; i < n; i++)
		if (t[i] <= ' ' || t[i] > '~')
			return 0;
	return n >= 1 && n <= TOKEN_MAX;
}

static int id_ok(const char *id)	/* a device id: 1-128 of A-Z a-z 0-9 _ - */
{
	size_t n = strlen(id);

	return n >= 1 && n <= ID_MAX && strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
					       "0123456789_-") == n;
}

static void wipe(char *s)	/* passwords and tokens leave no copy in memory */
{
	if (s)
		explicit_bzero(s, strlen(s));
}

/* The two-character JSON escapes of control bytes; the rest are \u00XX. */
static const char short_esc[32] = { ['\b'] = 'b', ['\t'] = 't', ['\n'] = 'n', ['\f'] = 'f', ['\r'] = 'r' };

static size_t json_esc_len(unsigned char c)	/* bytes c takes inside a JSON string */
{
	if (c == '"' || c == '\\')
		return 2;
	if (c < 0x20)
		return short_esc[c] ? 2 : 6;
	return 1;
}

static size_t json_esc_total(const unsigned char *p, size_t n)	/* escaped length of p */
{
	size_t t = 0;

	while (n--)
		t += json_esc_len(*p++);
	return t;
}

/* Escapes like cJSON: bytes >= 0x80 pass raw, so split or invalid UTF-8 from
 * a shell reaches the app as it was (README Protocol §1).  Returns the end. */
static char *json_escape(char *d, const unsigned char *p, size_t n)
{
	static const char hex[] = "0123456789abcdef";

	for (; n--; p++) {
		if (*p == '"' || *p == '\\') {
			*d++ = '\\';
			*d++ = (char)*p;
		} else if (*p < 0x20 && short_esc[*p]) {
			*d++ = '\\';
			*d++ = short_esc[*p];
		} else if (*p < 0x20) {
			memcpy(d, "\\u00", 4);
			d[4] = hex[*p >> 4];
			d[5] = hex[*p & 15];
			d += 6;
		} else
			*d++ = (char)*p;
	}
	return d;
}

static int utf8_cont(unsigned char c)	/* a continuation byte 10xxxxxx */
{
	return (c & 0xC0) == 0x80;
}

static size_t utf8_seq_len(unsigned char c)	/* bytes a lead byte announces */
{
	if (c >= 0xF0 && c <= 0xF4)
		return 4;
	if (c >= 0xE0 && c <= 0xEF)
		return 3;
	return c >= 0xC2 && c <= 0xDF ? 2 : 1;
}

/* How many bytes at the end of p begin a character whose rest is not there. */
static size_t utf8_split_tail(const unsigned char *p, size_t n)
{
	size_t back;

	for (back = 1; back <= 3 && back <= n; back++)
		if (!utf8_cont(p[n - back]))
			return utf8_seq_len(p[n - back]) > back ? back : 0;
	return 0;
}

/* The longest prefix of p whose escaped size fits budget, ending on a
 * character boundary whenever one is in reach.  budget >= 6 guarantees > 0. */
static size_t chunk_len(const unsigned char *p, size_t n, size_t budget)
{
	size_t i, used = 0, boundary = 0;

	for (i = 0; i < n; i++) {
		used += json_esc_len(p[i]);
		if (used > budget)
			break;
		if (i + 1 == n || !utf8_cont(p[i + 1]))
			boundary = i + 1;
	}
	if (i == n)
		return n;
	return boundary ? boundary : i;
}

/*** outbound messages *******************************************************/

static void agent_send(struct agent *a, const char *p, size_t n)	/* queues one frame */
{
	struct session *s;

	if (a->tun.link != L_OPEN)
		return;		/* nobody to tell: the sessions die with the tunnel */
	if (sb_queue_push(&a->out, p, n))
		lws_callback_on_writable(a->tun.wsi);
	if (a->paused || a->out.bytes <= a->prof->out_high)
		return;
	/* the platform is slower than the shells: stop reading them, as a real
	 * device that sends each read before the next, so a Ctrl-C is not
	 * queued behind a backlog */
	a->paused = 1;
	for (s = a->sessions; s; s = s->next)
		if (s->wsi)
			lws_rx_flow_control(s->wsi, 0);
}

static void agent_send_owned(struct agent *a, char *json)	/* queues and frees a string */
{
	if (json)
		agent_send(a, json, strlen(json));
	free(json);
}

/* The full profile's command_response, built by hand: cJSON strings stop at a
 * NUL byte, and the size must be known exactly to stay within MSG_MAX. */
static const char resp_head[] =
	"{\"operation_type\":\"command_response\",\"tunnel_service_type\":\"ssh\",\"request_id\":\"";
static const char resp_mid[] = "\",\"data\":\"";
static const char resp_tail[] = "\"}";

static size_t resp_overhead(const char *rid)	/* serialized size without the data */
{
	return sizeof resp_head - 1 + json_esc_total((const unsigned char *)rid, strlen(rid)) +
	       sizeof resp_mid - 1 + sizeof resp_tail - 1;
}

static void send_response(struct session *s, const unsigned char *p, size_t n)	/* one message */
{
	size_t rl = strlen(s->rid);
	char *buf = malloc(resp_overhead(s->rid) + json_esc_total(p, n) + 1), *d = buf;	/* + stpcpy's NUL */

	if (!buf)
		abort();
	d = stpcpy(d, resp_head);
	d = json_escape(d, (const unsigned char *)s->rid, rl);
	d = stpcpy(d, resp_mid);
	d = json_escape(d, p, n);
	d = stpcpy(d, resp_tail);
	agent_send(s->a, buf, (size_t)(d - buf));
	free(buf);
}

static void send_output(struct session *s, const unsigned char *p, size_t n)	/* as many messages as MSG_MAX needs */
{
	size_t budget = MSG_MAX - resp_overhead(s->rid), k;

	for (; n; p += k, n -= k) {
		k = chunk_len(p, n, budget);
		send_response(s, p, k);
	}
}

/*** the two profiles ********************************************************/

static void full_accepted(struct session *s)	/* nothing until the login is decided */
{
	(void)s;
}

static void full_login_ok(struct session *s)	/* "success": the shell runs */
{
	agent_send_owned(s->a, sb_envelope("connect_response", s->rid, cJSON_CreateString("success")));
}

static void full_login_failed(struct session *s, const char *why)	/* 400 with the reason */
{
	agent_send_owned(s->a, sb_envelope("disconnect", s->rid, sb_status("400", why)));
}

static void full_flush(struct session *s)	/* sends a held-back UTF-8 tail as it is */
{
	size_t n = s->ncarry;

	s->ncarry = 0;
	lws_sul_cancel(&s->sul_carry);
	if (n)
		send_output(s, s->carry, n);
}

static void carry_timeout(lws_sorted_usec_list_t *sul)	/* the rest of the char never came */
{
	struct session *s = lws_container_of(sul, struct session, sul_carry);

	if (s->state == S_LIVE)
		full_flush(s);
}

/* Holds back a character split by the read so no message ends inside one. */
static void full_output(struct session *s, const unsigned char *p, size_t n)
{
	unsigned char buf[sizeof s->carry + READ_MAX];
	size_t total = s->ncarry + n, keep;

	memcpy(buf, s->carry, s->ncarry);
	memcpy(buf + s->ncarry, p, n);
	keep = utf8_split_tail(buf, total);
	s->ncarry = keep;
	memcpy(s->carry, buf + total - keep, keep);
	send_output(s, buf, total - keep);
	if (keep)
		lws_sul_schedule(s->a->ctx, 0, &s->sul_carry, carry_timeout, CARRY_MS * LWS_US_PER_MS);
}

static void full_exited(struct session *s)	/* 408 for this request_id; the tunnel stays */
{
	agent_send_owned(s->a, sb_envelope("disconnect", s->rid, sb_status("408", "the SSH channel closed")));
}

static cJSON *csdk_message(const char *op, const char *rid)	/* the SDK's envelope, member order kept */
{
	cJSON *m = cJSON_CreateObject();

	cJSON_AddStringToObject(m, "operation_type", op);
	cJSON_AddStringToObject(m, "tunnel_service_type", "ssh");
	if (rid)	/* the SDK adds a NULL string, i.e. nothing */
		cJSON_AddStringToObject(m, "request_id", rid);
	return m;
}

static void csdk_send(struct agent *a, cJSON *m)	/* cJSON_Print: the SDK sends formatted JSON */
{
	agent_send_owned(a, cJSON_Print(m));
	cJSON_Delete(m);
}

static void csdk_disconnect(struct agent *a, const char *rid, const char *code, const char *msg)
{	/* the SDK's WssClientSendDisConn */
	cJSON *m = csdk_message("disconnect", rid);

	cJSON_AddItemToObject(m, "data", sb_status(code, msg));
	csdk_send(a, m);
}

static void csdk_accepted(struct session *s)	/* connect_response at once, without data */
{
	csdk_send(s->a, csdk_message("connect_response", s->rid[0] ? s->rid : NULL));
}

static void csdk_login_ok(struct session *s)	/* the SDK says nothing more */
{
	(void)s;
}

static void csdk_login_failed(struct session *s, const char *why)	/* its one fixed text, prefix and all */
{
	(void)why;
	csdk_disconnect(s->a, s->rid[0] ? s->rid : NULL, "400", "WssClientListenerOnMsg: Create SSH channel failed");
}

/* Raw reads as the SDK sends them: cut wherever the read ended, the latest
 * request_id received, and the string stopping at a NUL (cJSON_CreateString). */
static void csdk_output(struct session *s, const unsigned char *p, size_t n)
{
	struct agent *a = s->a;
	char *str = strndup((const char *)p, n);
	cJSON *m = csdk_message("command_response", a->have_latest ? a->latest_rid : NULL);

	cJSON_AddStringToObject(m, "data", str);
	free(str);
	csdk_send(a, m);
}

static void csdk_flush(struct session *s)	/* nothing is held back */
{
	(void)s;
}

static void csdk_408(struct agent *a)	/* the SDK's channel-close notice, whatever closed it */
{
	csdk_disconnect(a, "SSH_timeout_disconnect", "408", "SSH idles for too long, the session will be closed");
}

static void csdk_exited(struct session *s)	/* the channel-close callback; --wedge: then stuck */
{
	struct agent *a = s->a;
	uint32_t r = 0;

	if (!a->cfg.wedge_mode) {
		csdk_408(a);
		return;
	}
	lws_get_random(a->ctx, &r, sizeof r);
	a->owes_408 = r % 100 >= a->cfg.wedge_mode->pct_408;
	if (!a->owes_408)
		csdk_408(a);
	a->wedge = W_ARMED;
	sb_log(a->owes_408 ? "wedged: no 408" : "wedged: 408 sent");
}

static const struct profile full_profile = {
	"full", 0, 0, 0, READ_FULL, OUT_FULL, full_accepted, full_login_ok, full_login_failed,
	full_output, full_flush, full_exited,
};

static const struct profile csdk_profile = {
	"c-sdk", 1, 1, 1, READ_CSDK, OUT_CSDK, csdk_accepted, csdk_login_ok, csdk_login_failed,
	csdk_output, csdk_flush, csdk_exited,
};

/*** sessions ****************************************************************/

static struct session *session_new(struct agent *a, const char *rid)	/* a session in S_LOGIN */
{
	struct session *s = calloc(1, sizeof(*s));

	if (!s)
		abort();
	s->a = a;
	s->kill_sig = SIGHUP;
	snprintf(s->rid, sizeof s->rid, "%s", rid);
	s->next = a->sessions;
	a->sessions = s;
	return s;
}

static struct session *session_find(struct agent *a, const char *rid)	/* the open session of rid */
{
	struct session *s;

	for (s = a->sessions; s; s = s->next)
		if (s->state != S_DEAD && rid && !strcmp(s->rid, rid))
			return s;
	return NULL;
}

static struct session *session_any(struct agent *a)	/* c-sdk: the one open session */
{
	struct session *s;

	for (s = a->sessions; s && s->state == S_DEAD; s = s->next)
		;
	return s;
}

static void session_release(struct session *s)	/* frees s once lws and the worker let go */
{
	struct session **pp;

	if (s->wsi || s->worker)
		return;
	for (pp = &s->a->sessions; *pp; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	if (!s->failed)
		sb_log("session %s: ended", loggable(s->rid));
	s->a->be->close(s);
	lws_sul_cancel(&s->sul_carry);
	lws_sul_cancel(&s->sul_exit);
	lws_sul_cancel(&s->sul_write);
	if (s->in.p)	/* keystrokes may be a sudo password */
		explicit_bzero(s->in.p, s->in.cap);
	sb_rx_free(&s->in);
	free(s);
}

static void session_close_wsi(struct session *s)	/* lws closes the fd, then releases s */
{
	lws_rx_flow_control(s->wsi, 0);	/* no more RX callbacks meanwhile */
	lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

static void session_kill(struct session *s, int sig)	/* ends s without telling the app */
{
	if (s->state == S_DEAD)
		return;
	s->state = S_DEAD;
	s->kill_sig = sig;
	if (s->wsi)
		session_close_wsi(s);
	else
		session_release(s);
}

static void sessions_kill_all(struct agent *a, int sig)	/* replaced, tunnel lost, stopping */
{
	struct session *s, *next;

	for (s = a->sessions; s; s = next) {
		next = s->next;
		session_kill(s, sig);
	}
}

/* Shell output to messages until it would block; -1 once the shell ended.
 * force: the shell is over, read what is left whatever the queue holds. */
static int session_pump(struct session *s, int force)
{
	struct agent *a = s->a;
	unsigned char buf[READ_MAX];
	ssize_t n;
	int i;

	for (i = 0; !force || i < DRAIN_READS; i++) {
		if (!force && a->paused) {	/* level-triggered: stop the RX callbacks too */
			lws_rx_flow_control(s->wsi, 0);
			return 0;
		}
		n = a->be->read(s, buf, a->prof->read_size);
		if (n <= 0)
			return (int)n;
		a->prof->output(s, buf, (size_t)n);
	}
	return 0;
}

static void session_finish(struct session *s)	/* the shell ended: output first, then the notice */
{
	if (s->state != S_LIVE)
		return;
	session_pump(s, 1);
	s->a->prof->flush(s);
	s->a->prof->exited(s);
	s->state = S_DEAD;
}

static void session_rearm(lws_sorted_usec_list_t *sul);

static void session_flush_input(struct session *s)	/* hands buffered keystrokes to the shell */
{
	const struct backend *be = s->a->be;
	ssize_t w;

	while (s->in.len) {
		w = be->write(s, (unsigned char *)s->in.p, s->in.len);
		if (w <= 0) {
			if (w < 0)	/* the shell is going; its EOF ends the session */
				s->in.len = 0;
			break;
		}
		memmove(s->in.p, s->in.p + w, s->in.len - (size_t)w);
		s->in.len -= (size_t)w;
	}
	if (s->wsi && (s->in.len || (be->backlog && be->backlog(s)))) {
		lws_callback_on_writable(s->wsi);
		/* lws 4.1 can lose that request (it clears POLLOUT after a
		 * RAW_WRITEABLE_FILE callback, undoing one made inside it): a
		 * 50 KB paste stalled on a full tty.  A timer retries as well. */
		lws_sul_schedule(s->a->ctx, 0, &s->sul_write, session_rearm, INPUT_RETRY_US);
	}
}

static void session_input(struct session *s, const void *p, size_t n)	/* keystrokes from a command */
{
	if (sb_rx_append(&s->in, p, n, IN_MAX) < 0) {
		sb_log("session %s: input backlog full, %zu bytes dropped", loggable(s->rid), n);
		return;
	}
	if (s->state == S_LIVE)
		session_flush_input(s);
}

static int session_adopt(struct session *s, int fd)	/* lws watches fd (and closes it) from now on */
{
	lws_adopt_desc_t d = {
		.vh = s->a->vh, .type = LWS_ADOPT_RAW_FILE_DESC, .vh_prot_name = "session", .opaque = s,
	};

	d.fd.filefd = fd;
	s->wsi = lws_adopt_descriptor_vhost_via_info(&d);
	if (s->wsi && s->a->paused)
		lws_rx_flow_control(s->wsi, 0);
	return s->wsi != NULL;
}

/* Where every backend's login ends: fd is the shell's (pty master or ssh
 * socket) on success; why says what failed otherwise. */
static void session_login_done(struct session *s, int fd, const char *why)
{
	struct agent *a = s->a;

	if (!why && (fd < 0 || !session_adopt(s, fd)))
		why = "internal error: cannot watch the shell";
	if (why) {
		s->failed = 1;
		sb_log("session %s: login failed", loggable(s->rid));
		a->prof->login_failed(s, why);
		session_kill(s, SIGHUP);
		return;
	}
	s->state = S_LIVE;
	sb_log("session %s: login ok", loggable(s->rid));
	a->prof->login_ok(s);
	session_flush_input(s);
}

static int session_readable(struct session *s)	/* RAW_RX_FILE; -1 makes lws close the fd */
{
	if (s->state != S_LIVE)
		return 0;
	if (session_pump(s, 0) < 0) {
		session_finish(s);
		return -1;
	}
	session_flush_input(s);	/* ssh: a window adjust may have come in */
	return 0;
}

static int session_writeable(struct session *s);

static void session_rearm(lws_sorted_usec_list_t *sul)	/* input left over: as if writeable */
{
	struct session *s = lws_container_of(sul, struct session, sul_write);

	if (s->wsi && session_writeable(s) < 0)
		session_close_wsi(s);
}

static int session_writeable(struct session *s)	/* RAW_WRITEABLE_FILE: the shell takes input again */
{
	const struct backend *be = s->a->be;

	if (s->state != S_LIVE)
		return 0;
	if (be->flush)
		be->flush(s);
	session_flush_input(s);
	if (session_pump(s, 0) < 0) {	/* ssh: the flush may have read packets */
		session_finish(s);
		return -1;
	}
	return 0;
}

static void session_wsi_closed(struct session *s)	/* RAW_CLOSE_FILE: e.g. POLLHUP while paused */
{
	session_finish(s);
	s->wsi = NULL;
	session_release(s);
}

static void session_exit_timeout(lws_sorted_usec_list_t *sul)	/* shell gone, pty held by a background job */
{
	struct session *s = lws_container_of(sul, struct session, sul_exit);

	if (s->state != S_LIVE)
		return;
	session_finish(s);
	session_close_wsi(s);
}

static void sessions_resume(struct agent *a)	/* the queue drained: read the shells again */
{
	struct session *s;

	a->paused = 0;
	for (s = a->sessions; s && !a->paused; s = s->next) {
		if (!s->wsi || s->state != S_LIVE)
			continue;
		lws_rx_flow_control(s->wsi, 1);
		if (session_pump(s, 0) < 0) {	/* ssh buffers what it read before the pause */
			session_finish(s);
			session_close_wsi(s);
		}
	}
}

/*** the pty backend *********************************************************/

static int ct_equal(const char *secret, const char *guess)	/* no early exit: timing tells nothing */
{
	size_t ns = strlen(secret), ng = strlen(guess), i;
	unsigned char d = ns != ng;

	for (i = 0; i < ns; i++)
		d |= (unsigned char)(secret[i] ^ guess[ng ? i % ng : 0]);
	return d == 0;
}

static int creds_match(const struct cred *c, const char *user, const char *pass)	/* checks every line */
{
	int ok = 0;

	for (; c; c = c->next)
		ok |= ct_equal(c->user, user) & ct_equal(c->pass, pass);
	return ok;
}

static int env_build(char **env, const struct account *me, const char *term)	/* the shell's whole environment */
{
	const char *vars[][2] = {
		{ "TERM", term }, { "HOME", me->home }, { "USER", me->name }, { "LOGNAME", me->name },
		{ "SHELL", me->shell }, { "PATH", me->path }, { "LANG", "C.UTF-8" },
	};
	size_t i;

	for (i = 0; i < LWS_ARRAY_SIZE(vars); i++)
		if (asprintf(&env[i], "%s=%s", vars[i][0], vars[i][1]) < 0) {
			env[i] = NULL;
			return -1;
		}
	return 0;
}

/* In the child: become the --run-as user.  Groups, gid, uid in that order
 * (after setuid there is no right left to change the others), then proof it
 * took: a shell that is still root in any way must not start.  The tty goes
 * to the user first, as login does (screen, mesg want their own).  System
 * calls only: the group list was read before the fork. */
static int child_become(const struct account *me)
{
	if (fchown(STDIN_FILENO, me->uid, (gid_t)-1) || setgroups((size_t)me->ngroups, me->groups) ||
	    setgid(me->gid) || setuid(me->uid))
		return -1;
	if (getuid() != me->uid || geteuid() != me->uid || getgid() != me->gid || getegid() != me->gid)
		return -1;
	return setuid(0) == 0 ? -1 : 0;
}

static void child_exec(const struct account *me, char **argv, char **env)	/* in the child; never returns */
{
	static const char denied[] = "tunnel-device: cannot become the --run-as user\n";
	sigset_t none;
	int sig;

	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);	/* the agent blocks these for its signalfd */
	for (sig = 1; sig < NSIG; sig++)	/* ignored survives exec: a `cmd &` agent */
		signal(sig, SIG_DFL);		/* would leave Ctrl-C dead in the shell */
	close_range(3, ~0U, 0);			/* lws's sockets are not the shell's business */
	if (me->switch_user && child_become(me)) {
		(void)!write(STDERR_FILENO, denied, sizeof denied - 1);	/* the session shows it */
		_exit(126);
	}
	if (chdir(me->home) < 0 && chdir("/") < 0)	/* as the user: a home it cannot enter is not one */
		_exit(126);
	execve(me->shell, argv, env);
	_exit(127);
}

/* Forks the agent user's shell on a new pty.  Everything the child needs
 * is allocated before fork: a login worker thread may hold malloc's lock. */
static pid_t pty_spawn(const struct account *me, const struct login *l, int *master)
{
	struct winsize ws = { .ws_row = (unsigned short)l->rows, .ws_col = (unsigned short)l->cols };
	const char *base = strrchr(me->shell, '/');
	char *env[8] = { 0 }, *argv[2] = { NULL, NULL };
	pid_t pid = -1;
	size_t i;

	if (env_build(env, me, l->term) == 0 &&
	    asprintf(&argv[0], "%s%s", me->login ? "-" : "", base ? base + 1 : me->shell) >= 0) {
		pid = forkpty(master, NULL, NULL, &ws);
		if (pid == 0)
			child_exec(me, argv, env);
	}
	for (i = 0; env[i]; i++)
		free(env[i]);
	free(argv[0]);
	return pid;
}

static void pty_login(struct session *s, const struct login *l)	/* --login-file check, then the shell */
{
	struct agent *a = s->a;
	int fd;
	pid_t pid;

	if (!a->cfg.creds || !creds_match(a->cfg.creds, l->user, l->pass)) {
		session_login_done(s, -1, a->cfg.creds ? "authentication failed" :
				   "this device accepts no login (no --login-file)");
		return;
	}
	pid = pty_spawn(&a->cfg.me, l, &fd);
	if (pid < 0) {
		session_login_done(s, -1, "cannot start a shell");
		return;
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	s->u.pty.pid = pid;
	s->u.pty.fd = fd;
	session_login_done(s, fd, NULL);
}

static ssize_t pty_read(struct session *s, unsigned char *buf, size_t n)	/* EIO: the slave side is gone */
{
	ssize_t r = read(s->u.pty.fd, buf, n);

	if (r > 0)
		return r;
	return r < 0 && (errno == EAGAIN || errno == EINTR) ? 0 : -1;
}

static ssize_t pty_write(struct session *s, const unsigned char *p, size_t n)	/* the tty's input queue */
{
	ssize_t w = write(s->u.pty.fd, p, n);

	if (w >= 0)
		return w;
	return errno == EAGAIN || errno == EINTR ? 0 : -1;
}

static void pty_close(struct session *s)	/* lws closed the master; the shell goes too */
{
	if (s->u.pty.pid > 0)	/* 0 once reaped: never signal a recycled pid */
		kill(-s->u.pty.pid, s->kill_sig);
}

static const struct backend pty_backend = {
	"pty", pty_login, pty_read, pty_write, NULL, NULL, NULL, NULL, pty_close,
};

/*** the ssh backend *********************************************************/

/* libssh's connect, key exchange and password check block.  They run in a
 * worker thread per login, so a slow or refusing sshd (PAM delays a failed
 * password by ~2 s) never stalls the other sessions or the WebSocket.  The
 * worker owns only its job; when done it wakes the loop with
 * lws_cancel_service() and the loop takes the result (ssh_collect). */
struct ssh_job {
	struct lws_context *ctx;
	pthread_t thread;
	atomic_int done;
	char host[256];
	int port;
	const char *known_hosts;
	char *user, *pass;
	unsigned cols, rows;
	char term[32];
	ssh_session ssh;		/* results, once done */
	ssh_channel chan;
	char why[300];			/* empty on success */
};

static int mkdir_parents(const char *file)	/* the directories above file, mode 700 */
{
	char *dir = strdup(file), *p;

	if (!dir)
		return -1;
	for (p = strchr(dir + 1, '/'); p; p = strchr(p + 1, '/')) {
		*p = '\0';
		if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
			free(dir);
			return -1;
		}
		*p = '/';
	}
	free(dir);
	return 0;
}

static int job_fail(struct ssh_job *j, const char *fmt, const char *arg)	/* records why; returns -1 */
{
	snprintf(j->why, sizeof j->why, fmt, arg);
	return -1;
}

static int job_connect(struct ssh_job *j)	/* TCP, key exchange; no ~/.ssh/config surprises */
{
	int verbosity = SSH_LOG_NOLOG;
	long timeout = SSH_TIMEOUT_S;
	bool no = false;
	char where[300];

	j->ssh = ssh_new();
	if (!j->ssh)
		return job_fail(j, "%s", "out of memory");
	ssh_options_set(j->ssh, SSH_OPTIONS_LOG_VERBOSITY, &verbosity);
	ssh_options_set(j->ssh, SSH_OPTIONS_PROCESS_CONFIG, &no);
	ssh_options_set(j->ssh, SSH_OPTIONS_HOST, j->host);
	ssh_options_set(j->ssh, SSH_OPTIONS_PORT, &j->port);
	ssh_options_set(j->ssh, SSH_OPTIONS_USER, j->user);
	ssh_options_set(j->ssh, SSH_OPTIONS_TIMEOUT, &timeout);
	ssh_options_set(j->ssh, SSH_OPTIONS_KNOWNHOSTS, j->known_hosts);
	ssh_options_set(j->ssh, SSH_OPTIONS_GLOBAL_KNOWNHOSTS, "/dev/null");
	if (ssh_connect(j->ssh) == SSH_OK)
		return 0;
	snprintf(where, sizeof where, "cannot reach the SSH server %s:%d: %%s", j->host, j->port);
	return job_fail(j, where, ssh_get_error(j->ssh));
}

static int job_hostkey(struct ssh_job *j)	/* trust on first use, refuse a changed key */
{
	switch (ssh_session_is_known_server(j->ssh)) {
	case SSH_KNOWN_HOSTS_OK:
		return 0;
	case SSH_KNOWN_HOSTS_UNKNOWN:
	case SSH_KNOWN_HOSTS_NOT_FOUND:
		if (mkdir_parents(j->known_hosts) == 0 && ssh_session_update_known_hosts(j->ssh) == SSH_OK)
			return 0;
		return job_fail(j, "cannot record the SSH host key in %s", j->known_hosts);
	case SSH_KNOWN_HOSTS_CHANGED:
	case SSH_KNOWN_HOSTS_OTHER:
		return job_fail(j, "the SSH server's host key changed; refusing "
				"(delete its line from %s to accept the new key)", j->known_hosts);
	default:
		return job_fail(j, "cannot check the SSH host key: %s", ssh_get_error(j->ssh));
	}
}

static int job_auth(struct ssh_job *j)	/* password authentication */
{
	int rc = ssh_userauth_password(j->ssh, NULL, j->pass);

	wipe(j->pass);
	return rc == SSH_AUTH_SUCCESS ? 0 : job_fail(j, "%s", "authentication failed");
}

static int job_shell(struct ssh_job *j)	/* a channel with a PTY and a shell */
{
	j->chan = ssh_channel_new(j->ssh);
	if (j->chan && ssh_channel_open_session(j->chan) == SSH_OK &&
	    ssh_channel_request_pty_size(j->chan, j->term, (int)j->cols, (int)j->rows) == SSH_OK &&
	    ssh_channel_request_shell(j->chan) == SSH_OK)
		return 0;
	return job_fail(j, "cannot open a shell: %s", ssh_get_error(j->ssh));
}

static void job_drop_conn(struct ssh_job *j)	/* frees what a failed login made */
{
	if (j->chan)
		ssh_channel_free(j->chan);
	if (j->ssh) {
		ssh_disconnect(j->ssh);
		ssh_free(j->ssh);
	}
	j->chan = NULL;
	j->ssh = NULL;
}

static void *ssh_worker(void *arg)	/* the login thread: touches nothing but its job */
{
	struct ssh_job *j = arg;

	if (job_connect(j) || job_hostkey(j) || job_auth(j) || job_shell(j))
		job_drop_conn(j);
	wipe(j->pass);
	atomic_store(&j->done, 1);
	lws_cancel_service(j->ctx);	/* -> LWS_CALLBACK_EVENT_WAIT_CANCELLED */
	return NULL;
}

static void job_free(struct ssh_job *j)	/* the job, not the connection it made */
{
	wipe(j->pass);
	free(j->pass);
	free(j->user);
	free(j);
}

static void ssh_login(struct session *s, const struct login *l)	/* starts the worker */
{
	struct ssh_job *j = calloc(1, sizeof(*j));
	struct config *c = &s->a->cfg;

	if (!j)
		abort();
	j->ctx = s->a->ctx;
	snprintf(j->host, sizeof j->host, "%s", c->ssh_host);
	j->port = c->ssh_port;
	j->known_hosts = c->known_hosts_path;
	j->user = strdup(l->user);
	j->pass = strdup(l->pass);
	j->cols = l->cols;
	j->rows = l->rows;
	memcpy(j->term, l->term, sizeof j->term);
	if (!j->user || !j->pass || pthread_create(&j->thread, NULL, ssh_worker, j)) {
		job_free(j);
		session_login_done(s, -1, "cannot start the SSH login");
		return;
	}
	s->u.ssh.job = j;
	s->worker = 1;
}

static struct ssh_job *ssh_take_job(struct session *s)	/* joins the worker, keeps its connection */
{
	struct ssh_job *j = s->u.ssh.job;

	pthread_join(j->thread, NULL);
	s->u.ssh.job = NULL;
	s->worker = 0;
	s->u.ssh.ssh = j->ssh;
	s->u.ssh.chan = j->chan;
	return j;
}

static void ssh_finish_login(struct session *s)	/* in the loop: the worker is done */
{
	struct ssh_job *j = ssh_take_job(s);
	int fd = -1;

	if (s->state == S_DEAD)		/* replaced or the tunnel went while logging in */
		session_release(s);
	else if (j->why[0])
		session_login_done(s, -1, j->why);
	else {
		ssh_set_blocking(s->u.ssh.ssh, 0);
		/* lws closes what it adopts; libssh keeps and closes the original */
		fd = fcntl(ssh_get_fd(s->u.ssh.ssh), F_DUPFD_CLOEXEC, 0);
		session_login_done(s, fd, NULL);
	}
	job_free(j);
}

static void ssh_collect(struct agent *a)	/* EVENT_WAIT_CANCELLED: finished logins */
{
	struct session *s;

	do {
		for (s = a->sessions; s; s = s->next)
			if (s->worker && atomic_load(&s->u.ssh.job->done))
				break;
		if (s)
			ssh_finish_login(s);	/* may free s: rescan */
	} while (s);
}

static void ssh_join(struct session *s)	/* at exit: wait out a login in progress */
{
	if (s->worker)
		job_free(ssh_take_job(s));
}

static ssize_t ssh_read(struct session *s, unsigned char *buf, size_t n)	/* stdout only: a PTY merges stderr */
{
	ssh_channel c = s->u.ssh.chan;
	int r = ssh_channel_read_nonblocking(c, buf, (uint32_t)n, 0);

	if (r > 0)
		return r;
	if (r == SSH_AGAIN)
		return 0;
	if (r < 0 || ssh_channel_is_eof(c) || ssh_channel_is_closed(c))
		return -1;
	return 0;
}

static ssize_t ssh_write(struct session *s, const unsigned char *p, size_t n)	/* partial when the window is full */
{
	int w = ssh_channel_write(s->u.ssh.chan, p, (uint32_t)n);

	return w < 0 ? -1 : w;
}

static void ssh_flush(struct session *s)	/* the socket is writable again */
{
	ssh_blocking_flush(s->u.ssh.ssh, 0);
}

static int ssh_backlog(struct session *s)	/* libssh still holds bytes for the socket */
{
	return ssh_get_poll_flags(s->u.ssh.ssh) & SSH_WRITE_PENDING;
}

static void ssh_close(struct session *s)	/* channel, then connection */
{
	if (s->u.ssh.chan)
		ssh_channel_free(s->u.ssh.chan);
	if (s->u.ssh.ssh) {
		ssh_disconnect(s->u.ssh.ssh);
		ssh_free(s->u.ssh.ssh);
	}
	s->u.ssh.chan = NULL;
	s->u.ssh.ssh = NULL;
}

static const struct backend ssh_backend = {
	"ssh", ssh_login, ssh_read, ssh_write, ssh_flush, ssh_backlog, ssh_collect, ssh_join, ssh_close,
};

/*** inbound messages ********************************************************/

/* A scanner for one member of the raw JSON text, used after cJSON accepted
 * the message: cJSON's strings end at the first NUL, and keystrokes may hold
 * one (Ctrl-@), so command data is decoded here, byte for byte. */

static const char *js_ws(const char *p, const char *e)	/* skips JSON whitespace */
{
	while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

static const char *js_skip_string(const char *p, const char *e)	/* p at '"': past the closing one */
{
	for (p++; p < e; p++) {
		if (*p == '\\')
			p++;
		else if (*p == '"')
			return p + 1;
	}
	return NULL;
}

static const char *js_skip_value(const char *p, const char *e)	/* past one value */
{
	int depth = 0;

	while (p < e) {
		if (*p == '"') {
			if (!(p = js_skip_string(p, e)) || depth == 0)
				return p;
			continue;
		}
		if (*p == '{' || *p == '[')
			depth++;
		else if (*p == '}' || *p == ']') {
			if (depth == 0)
				return p;	/* a primitive ended with its container */
			if (--depth == 0)
				return p + 1;
		} else if (depth == 0 && strchr(", \t\r\n", *p))
			return p;
		p++;
	}
	return depth == 0 ? p : NULL;
}

static int hex4(const char *p, const char *e, unsigned *v)	/* four hex digits */
{
	int i;

	*v = 0;
	if (e - p < 4)
		return -1;
	for (i = 0; i < 4; i++) {
		if (!isxdigit((unsigned char)p[i]))
			return -1;
		*v = *v * 16 + (unsigned)(isdigit((unsigned char)p[i]) ? p[i] - '0' : (p[i] | 0x20) - 'a' + 10);
	}
	return 0;
}

static size_t utf8_put(unsigned long cp, char *out)	/* encodes one code point */
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xC0 | cp >> 6);
		out[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xE0 | cp >> 12);
		out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
		out[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (char)(0xF0 | cp >> 18);
	out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
	out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
	out[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* One escape, p just after its backslash; surrogate pairs join, a lone
 * surrogate becomes U+FFFD.  Returns past the escape, NULL if malformed. */
static const char *js_unescape(const char *p, const char *e, unsigned long *cp)
{
	static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
	const char *q;
	unsigned hi, lo;

	if (p >= e)
		return NULL;
	if (*p != 'u') {
		if (!(q = memchr(from, *p, 8)))
			return NULL;
		*cp = (unsigned char)to[q - from];
		return p + 1;
	}
	if (hex4(p + 1, e, &hi))
		return NULL;
	p += 5;
	*cp = hi >= 0xD800 && hi <= 0xDFFF ? 0xFFFD : hi;
	if (hi >= 0xD800 && hi <= 0xDBFF && e - p >= 6 && p[0] == '\\' && p[1] == 'u' &&
	    !hex4(p + 2, e, &lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
		*cp = 0x10000 + ((unsigned long)(hi - 0xD800) << 10) + (lo - 0xDC00);
		p += 6;
	}
	return p;
}

/* Decodes the string at p (its opening quote) into out; -1 if it does not
 * fit cap or is malformed.  Decoding never grows: cap = its raw size is enough. */
static int js_decode(const char *p, const char *e, char *out, size_t cap, size_t *len)
{
	unsigned long cp;
	size_t n = 0, k;
	char tmp[4];

	for (p++; p < e && *p != '"';) {
		if (*p != '\\') {	/* raw bytes, >= 0x80 included, pass as they are */
			if (n >= cap)
				return -1;
			out[n++] = *p++;
			continue;
		}
		if (!(p = js_unescape(p + 1, e, &cp)) || n + (k = utf8_put(cp, tmp)) > cap)
			return -1;
		memcpy(out + n, tmp, k);
		n += k;
	}
	*len = n;
	return p < e ? 0 : -1;
}

static const char *js_member(const char *p, const char *e, const char *key)	/* a top-level member's value */
{
	char name[40];
	size_t n;
	int match;
	const char *k;

	p = js_ws(p, e);
	if (e - p >= 3 && !memcmp(p, "\xEF\xBB\xBF", 3))	/* cJSON skips a BOM too */
		p = js_ws(p + 3, e);
	if (p >= e || *p++ != '{')
		return NULL;
	for (;;) {
		if ((p = js_ws(p, e)) >= e || *p != '"' || !(p = js_skip_string(k = p, e)))
			return NULL;
		match = !js_decode(k, p, name, sizeof name, &n) && n == strlen(key) && !memcmp(name, key, n);
		if ((p = js_ws(p, e)) >= e || *p++ != ':')
			return NULL;
		p = js_ws(p, e);
		if (match)
			return p;
		if (!(p = js_skip_value(p, e)) || (p = js_ws(p, e)) >= e || *p++ != ',')
			return NULL;
	}
}

struct inbound {			/* one parsed message */
	cJSON *root;
	const char *op, *rid, *service;
	cJSON *data;
	const char *text;		/* the frame as received */
	size_t len;
};

static char *str_member(const cJSON *o, const char *k)	/* a string member or NULL */
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static unsigned size_member(const cJSON *o, const char *k, unsigned dflt, unsigned lo, unsigned hi)
{	/* a terminal dimension: a number or a numeric string, clamped */
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	char *end = NULL;
	double d;

	if (cJSON_IsNumber(v))
		d = v->valuedouble;
	else if (cJSON_IsString(v)) {
		d = strtod(v->valuestring, &end);
		if (end == v->valuestring || *end)
			return dflt;
	} else
		return dflt;
	if (d != d)
		return dflt;
	return d < lo ? lo : d > hi ? hi : (unsigned)d;
}

static void login_from(const struct agent *a, const cJSON *data, struct login *l)	/* the connect's data */
{
	const char *term = str_member(data, "term");
	size_t i, n = term ? strlen(term) : 0;
	int ok = !a->prof->fixed_pty && n > 0 && n < sizeof l->term;

	l->user = str_member(data, "username");
	l->pass = str_member(data, "password");
	l->cols = a->prof->fixed_pty ? PTY_COLS : size_member(data, "cols", PTY_COLS, COLS_MIN, COLS_MAX);
	l->rows = a->prof->fixed_pty ? PTY_ROWS : size_member(data, "rows", PTY_ROWS, ROWS_MIN, ROWS_MAX);
	for (i = 0; ok && i < n; i++)	/* it goes into the environment: keep it tame */
		ok = isalnum((unsigned char)term[i]) || strchr("-_.+", term[i]);
	snprintf(l->term, sizeof l->term, "%s", ok ? term : PTY_TERM);
}

static void on_connect(struct agent *a, const struct inbound *m)	/* a new SSH session */
{
	struct session *s;
	struct login l;

	if (!m->rid && !a->prof->quirks) {
		sb_log("connect without request_id; dropped");
		return;
	}
	if (a->prof->single)
		sessions_kill_all(a, SIGHUP);
	else if ((s = session_find(a, m->rid)))
		session_kill(s, SIGHUP);
	s = session_new(a, m->rid ? m->rid : "");
	a->prof->accepted(s);
	login_from(a, m->data, &l);
	if (!l.user || !l.pass)
		session_login_done(s, -1, "connect needs data.username and data.password");
	else
		a->be->login(s, &l);
	wipe(l.pass);
}

static void on_command(struct agent *a, const struct inbound *m)	/* keystrokes for a session */
{
	struct session *s = a->prof->single ? session_any(a) : session_find(a, m->rid);
	const char *v = js_member(m->text, m->text + m->len, "data");
	char *buf;
	size_t n;

	if (!cJSON_IsString(m->data) || !v || *v != '"') {
		sb_log("command without string data; ignored");
		return;
	}
	if (!s) {
		sb_log("command for unknown session %s; ignored", loggable(m->rid));
		return;
	}
	buf = malloc(m->len);
	if (!buf)
		abort();
	if (js_decode(v, m->text + m->len, buf, m->len, &n) == 0)
		session_input(s, buf, a->prof->quirks ? strnlen(buf, n) : n);	/* the SDK uses strlen */
	explicit_bzero(buf, m->len);
	free(buf);
}

static void on_disconnect(struct agent *a, const struct inbound *m)	/* the app ends a session */
{
	struct session *s = session_find(a, m->rid);

	if (s)
		session_kill(s, SIGHUP);
}

static const struct handler {
	const char *op;
	void (*fn)(struct agent *a, const struct inbound *m);
	int sdk;			/* the official SDK handles it too */
} handlers[] = {
	{ "connect", on_connect, 1 },
	{ "command", on_command, 1 },
	{ "disconnect", on_disconnect, 0 },
};

static void wedged_connect(struct agent *a, const struct inbound *m)	/* answered, then stuck */
{
	csdk_send(a, csdk_message("connect_response", m->rid));
	sb_log("wedged: connect %s answered, then silence", loggable(m->rid));
	if (a->owes_408) {	/* destroying the old channel runs its close callback now */
		csdk_408(a);
		sb_log("wedged: stale 408 sent");
	}
	a->owes_408 = 0;
	a->wedge = W_STUCK;
}

static int wedged_takes(struct agent *a, const struct inbound *m)	/* 1: the wedge swallowed m */
{
	if (a->wedge == W_ARMED && !strcmp(m->op, "connect"))
		wedged_connect(a, m);
	else if (a->wedge != W_NONE)
		sb_log("wedged: %s ignored", loggable(m->op));
	return a->wedge != W_NONE;
}

/* The SDK copies a connect's or command's request_id into a 37-byte buffer,
 * once it has the data it needs; its output carries the latest, cut to 36. */
static void csdk_note_rid(struct agent *a, const struct inbound *m)
{
	int takes = !strcmp(m->op, "connect") ? m->data != NULL : !strcmp(m->op, "command") && cJSON_IsString(m->data);

	if (!m->rid || !takes)
		return;
	snprintf(a->latest_rid, sizeof a->latest_rid, "%.*s", CSDK_RID_LEN, m->rid);
	a->have_latest = 1;
}

/* The official SDK strcmp()s tunnel_service_type and operation_type without
 * a NULL check; the c-sdk profile drops what would crash it, and says so. */
static int quirks_admit(const struct inbound *m)
{
	if (!m->service)
		sb_log("message without tunnel_service_type (official devices crash on this)");
	else if (strcmp(m->service, "ssh"))
		sb_log("wrong tunnel_service_type %s; dropped", loggable(m->service));
	else if (!m->op)
		sb_log("message without operation_type (official devices crash on this)");
	else
		return 1;
	return 0;
}

static int admit(struct agent *a, const struct inbound *m)	/* 1 if m is to be handled */
{
	if (a->prof->quirks && !quirks_admit(m))
		return 0;
	if (!m->op) {
		sb_log("message without operation_type; dropped");
		return 0;
	}
	if (m->rid && strlen(m->rid) > RID_MAX) {
		sb_log("request_id longer than %d bytes; dropped", RID_MAX);
		return 0;
	}
	if (a->prof->quirks)
		csdk_note_rid(a, m);
	return !wedged_takes(a, m);
}

static void message_dispatch(struct agent *a, const char *text, size_t len)	/* one whole frame */
{
	struct inbound m = { .text = text, .len = len };
	size_t i;

	m.root = cJSON_ParseWithLength(text, len);
	if (!cJSON_IsObject(m.root)) {
		sb_log("dropped a malformed message");
		cJSON_Delete(m.root);
		return;
	}
	m.op = str_member(m.root, "operation_type");
	m.rid = str_member(m.root, "request_id");
	m.service = str_member(m.root, "tunnel_service_type");
	m.data = cJSON_GetObjectItemCaseSensitive(m.root, "data");
	if (admit(a, &m)) {
		for (i = 0; i < LWS_ARRAY_SIZE(handlers) && strcmp(m.op, handlers[i].op); i++)
			;
		if (i < LWS_ARRAY_SIZE(handlers) && (handlers[i].sdk || !a->prof->quirks))
			handlers[i].fn(a, &m);
		else
			sb_log("ignored operation_type %s", loggable(m.op));
	}
	cJSON_Delete(m.root);
}

/*** the WebSockets **********************************************************/

static void target_clear(struct target *t)	/* frees it, the token wiped */
{
	wipe(t->token);
	free(t->token);
	free(t->url_buf);
	memset(t, 0, sizeof(*t));
}

/* ws[s]://host[:port]/path and a token (NULL: none) into t; -1 leaves t as
 * it was when the URL is not one. */
static int target_set(struct target *t, const char *url, const char *token)
{
	struct target n = { .url_buf = strdup(url) };
	const char *prot, *host, *path;

	if (!n.url_buf)
		abort();
	if (lws_parse_uri(n.url_buf, &prot, &host, &n.port, &path) || !*host ||
	    (strcmp(prot, "ws") && strcmp(prot, "wss"))) {
		free(n.url_buf);
		return -1;
	}
	n.tls = !strcmp(prot, "wss");
	n.host = host;
	snprintf(n.path, sizeof n.path, "/%s", path);
	if (token && !(n.token = strdup(token)))
		abort();
	target_clear(t);
	*t = n;
	return 0;
}

static const char *target_tunnel(const struct target *t)	/* the tunnel id in its path, loggable */
{
	const char *p = strstr(t->path, "/tunnels/");
	char id[ID_MAX + 1];

	if (!p)
		return loggable(NULL);
	p += strlen("/tunnels/");
	snprintf(id, sizeof id, "%.*s", (int)strcspn(p, "/?"), p);
	return loggable(id);
}

static void conn_connect(lws_sorted_usec_list_t *sul)	/* one connection attempt */
{
	static const char cannot[] = "cannot start the connection";
	struct conn *c = lws_container_of(sul, struct conn, sul_connect);
	struct lws_client_connect_info i;
	struct lws *wsi;
	int insecure = LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK | LCCSCF_ALLOW_INSECURE;

	if (!c->to.url_buf)
		return;		/* --events: no tunnel announced (yet) */
	memset(&i, 0, sizeof i);
	i.context = c->a->ctx;
	i.address = c->to.host;
	i.port = c->to.port;
	i.path = c->to.path;
	i.host = i.address;
	i.origin = i.address;
	i.ssl_connection = c->to.tls ? LCCSCF_USE_SSL | (c->a->cfg.insecure ? insecure : 0) : 0;
	i.local_protocol_name = c->kind->proto;	/* and no Sec-WebSocket-Protocol */
	i.retry_and_idle_policy = &retry_policy;
	i.opaque_user_data = c;		/* how the callbacks tell the two apart */
	c->link = L_CONNECTING;
	c->close_code = 0;
	wsi = lws_client_connect_via_info(&i);
	if (c->link != L_CONNECTING)
		return;		/* it failed already, and said so */
	c->wsi = wsi;
	if (!wsi) {	/* failed before any callback: try again */
		c->link = L_IDLE;
		sb_log(c->kind->failed, (int)sizeof cannot - 1, cannot);
		lws_sul_schedule(c->a->ctx, 0, &c->sul_connect, conn_connect, 1000 * LWS_US_PER_MS);
	}
}

static void conn_retry(struct conn *c)	/* schedules the next attempt, with backoff */
{
	char conceal;
	unsigned ms = lws_retry_get_delay_ms(c->a->ctx, &retry_policy, &c->retries, &conceal);

	sb_log(c->kind->retry, ms);
	lws_sul_schedule(c->a->ctx, 0, &c->sul_connect, conn_connect, (lws_usec_t)ms * LWS_US_PER_MS);
}

static void conn_schedule_now(struct conn *c)	/* connects at once, a retry pending or not */
{
	lws_sul_cancel(&c->sul_connect);
	lws_sul_schedule(c->a->ctx, 0, &c->sul_connect, conn_connect, 1);
}

static void agent_stop_timeout(lws_sorted_usec_list_t *sul)	/* the close handshake took too long */
{
	lws_container_of(sul, struct agent, sul_stop)->quit = 1;
}

static int conn_stop(struct conn *c)	/* no more attempts; an open one closes 1001: 1 then */
{
	lws_sul_cancel(&c->sul_connect);
	if (c->link != L_OPEN && c->link != L_SWITCHING)
		return 0;	/* one connecting is dropped with the context */
	c->link = L_STOPPING;
	lws_callback_on_writable(c->wsi);
	return 1;
}

static void agent_check_stopped(struct agent *a)	/* leaves once no close handshake is pending */
{
	if (a->tun.link != L_STOPPING && a->ev.link != L_STOPPING)
		a->quit = 1;
}

static void agent_wind_down(struct agent *a)	/* shells killed, WebSockets closed 1001, then quit */
{
	int busy;

	a->stopping = 1;
	sessions_kill_all(a, SIGKILL);
	busy = conn_stop(&a->tun);
	busy |= conn_stop(&a->ev);
	if (!busy) {
		a->quit = 1;
		return;
	}
	lws_sul_schedule(a->ctx, 0, &a->sul_stop, agent_stop_timeout, STOP_GRACE_MS * LWS_US_PER_MS);
}

static void agent_leave(struct agent *a, int status, const char *why)	/* "WHY; exiting", then wind down */
{
	sb_log("%s; exiting", why);
	a->status = status;
	agent_wind_down(a);
}

static void conn_down(struct conn *c)	/* it ended: forget the wsi and half a message */
{
	c->wsi = NULL;
	c->link = L_IDLE;
	if (c->rx.p)	/* a half-received connect may hold a password */
		explicit_bzero(c->rx.p, c->rx.cap);
	c->rx.len = 0;
	c->rx_skip = 0;
	c->kind->lost(c->a);
}

static void conn_up(struct conn *c, struct lws *wsi)	/* CLIENT_ESTABLISHED */
{
	int sndbuf = SNDBUF;

	/* A device's uplink holds about a round trip of data; on loopback the
	 * kernel would grow the buffer to megabytes behind a slow platform, and
	 * a Ctrl-C would wait for all of it. */
	setsockopt(lws_get_socket_fd(wsi), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
	c->wsi = wsi;
	c->link = L_OPEN;
	c->retries = 0;
	sb_log("%s", c->kind->up);
}

static void conn_take_next(struct conn *c)	/* the announced target replaces the current one */
{
	target_clear(&c->to);
	c->to = c->next;
	memset(&c->next, 0, sizeof c->next);
	c->retries = 0;
	conn_schedule_now(c);
}

static const struct final_end *final_find(const struct conn_kind *k, int code, unsigned http)
{	/* a closed one has code, a refused one http: the end if it is final */
	size_t i;

	for (i = 0; i < k->nfinals; i++)
		if (k->finals[i].close == code && k->finals[i].http == http)
			return &k->finals[i];
	return NULL;
}

static void conn_ended(struct conn *c, int code, unsigned http)	/* after its log line: what next */
{
	struct agent *a = c->a;
	const struct final_end *f = final_find(c->kind, code, http);

	if (a->stopping)
		agent_check_stopped(a);
	else if (c->next.url_buf)
		conn_take_next(c);
	else if (f)
		c->kind->final(a, f);
	else
		conn_retry(c);
}

static void conn_closed(struct conn *c)	/* CLIENT_CLOSED */
{
	int code = c->close_code ? c->close_code : 1006;

	if (c->link == L_IDLE || c->a->quit)
		return;
	conn_down(c);
	sb_log(c->kind->closed, code);
	conn_ended(c, code, 0);
}

static void conn_failed(struct conn *c, struct lws *wsi, const char *in, size_t len)
{	/* CLIENT_CONNECTION_ERROR: an HTTP refusal may be final, the rest is retried */
	unsigned status = wsi ? lws_http_client_http_response(wsi) : 0;

	if (c->link == L_IDLE || c->a->quit)
		return;
	conn_down(c);
	sb_log(c->kind->failed, in ? (int)len : 13, in ? in : "unknown error");
	if (in && memmem(in, len, "unauthorized", 12) && !status)
		status = 401;
	conn_ended(c, 0, status);
}

/* lws 4.1 frees a wsi killed before the upgrade (switch_connecting) without
 * a CONNECTION_ERROR: its destruction is then the failure.  After an error
 * or a close, c->wsi is NULL already and this does nothing. */
static void conn_destroyed(struct conn *c, struct lws *wsi)	/* WSI_DESTROY */
{
	static const char gone[] = "abandoned before the upgrade";

	if (c->wsi == wsi)
		conn_failed(c, NULL, gone, sizeof gone - 1);
}

static void conn_receive(struct conn *c, struct lws *wsi, const void *in, size_t len)
{	/* reassembles fragments, hands whole messages on while it is open */
	if (!c->rx_skip && sb_rx_append(&c->rx, in, len, c->kind->rx_max) < 0) {
		c->rx_skip = 1;
		sb_log("%s", c->kind->oversized);
	}
	if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi))
		return;
	if (!c->rx_skip && c->link == L_OPEN)
		c->kind->message(c->a, c->rx.p ? c->rx.p : "", c->rx.len);
	if (c->rx.p)	/* a connect carries a password, an event a token */
		explicit_bzero(c->rx.p, c->rx.len);
	c->rx.len = 0;
	c->rx_skip = 0;
}

/* How we close on purpose, by link state; code 0: not closing. */
static const struct farewell {
	int code;
	const char *reason;
} farewells[L_STATES] = {
	[L_SWITCHING] = { LWS_CLOSE_STATUS_NORMAL, "a newer tunnel replaces this one" },
	[L_STOPPING] = { LWS_CLOSE_STATUS_GOINGAWAY, "device agent stopping" },
};

static int conn_farewell(struct conn *c, struct lws *wsi)	/* WRITEABLE: 1 when closing (return -1) */
{
	const struct farewell *f = &farewells[c->link];

	if (!f->code)
		return 0;
	c->close_code = f->code;	/* for the "disconnected" line */
	lws_close_reason(wsi, (enum lws_close_status)f->code, (unsigned char *)f->reason, strlen(f->reason));
	return 1;
}

static int conn_add_token(struct conn *c, struct lws *wsi, void *in, size_t len)	/* the auth header */
{
	unsigned char **p = in, *end = *p + len;
	const char *t = c->to.token;

	if (!t)
		return 0;	/* the events channel: none */
	return lws_add_http_header_by_name(wsi, (const unsigned char *)"tunnel_access_token:",
					   (const unsigned char *)t, (int)strlen(t), p, end) ? -1 : 0;
}

static int close_code_of(const unsigned char *in, size_t len)	/* a close frame's status */
{
	return len >= 2 ? in[0] << 8 | in[1] : 0;
}

static struct conn *conn_of(struct agent *a, struct lws *wsi)	/* which of ours wsi is, or NULL */
{
	struct conn *c = lws_get_opaque_user_data(wsi);

	return a && (c == &a->tun || c == &a->ev) ? c : NULL;
}

static int conn_event(struct lws *wsi, enum lws_callback_reasons reason, void *in, size_t len)
{	/* both WebSockets' client callbacks */
	struct conn *c = conn_of(lws_context_user(lws_get_context(wsi)), wsi);

	if (!c)
		return 0;
	switch (reason) {
	case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
		return conn_add_token(c, wsi, in, len);
	case LWS_CALLBACK_CLIENT_ESTABLISHED:
		conn_up(c, wsi);
		break;
	case LWS_CALLBACK_CLIENT_RECEIVE:
		conn_receive(c, wsi, in, len);
		break;
	case LWS_CALLBACK_CLIENT_WRITEABLE:
		return c->kind->writeable(c->a, wsi);
	case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
		c->close_code = close_code_of(in, len);
		break;
	case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
		conn_failed(c, wsi, in, len);
		break;
	case LWS_CALLBACK_CLIENT_CLOSED:
		conn_closed(c);
		break;
	case LWS_CALLBACK_WSI_DESTROY:
		conn_destroyed(c, wsi);
		break;
	default:
		break;
	}
	return 0;
}

/*** the tunnel **************************************************************/

static void tunnel_lost(struct agent *a)	/* every session dies with the tunnel */
{
	if (a->wedge != W_NONE)	/* as restarting the SDK's tunnel would */
		sb_log("wedge cleared: the tunnel connection ended");
	a->wedge = W_NONE;
	a->owes_408 = 0;
	sessions_kill_all(a, SIGHUP);
	sb_queue_clear(&a->out);
	a->paused = 0;
}

static int tunnel_writeable(struct agent *a, struct lws *wsi)	/* one frame per callback */
{
	int more;

	if (conn_farewell(&a->tun, wsi))
		return -1;
	more = sb_queue_write(&a->out, wsi);
	if (more < 0)
		return -1;
	if (more)
		lws_callback_on_writable(wsi);
	if (a->paused && a->out.bytes <= a->prof->out_high / 2)
		sessions_resume(a);
	return 0;
}

static void final_leave(struct agent *a, const struct final_end *f)	/* a final end: exit */
{
	agent_leave(a, f->status, f->why);
}

static void tunnel_final(struct agent *a, const struct final_end *f)	/* exit; with --events, wait */
{
	if (!a->cfg.events) {
		final_leave(a, f);
		return;
	}
	sb_log("%s; waiting for the next tunnel_notify", f->why);
	target_clear(&a->tun.to);	/* its token is of no more use */
}

static const struct conn_kind tunnel_kind = {
	.proto = "tunnel",
	.up = "connected",
	.closed = "disconnected (close %d)",
	.failed = "connection failed: %.*s",
	.retry = "reconnecting in %u ms",
	.oversized = "dropped an oversized message",
	.finals = tunnel_finals,
	.nfinals = LWS_ARRAY_SIZE(tunnel_finals),
	.rx_max = RX_MAX,
	.message = message_dispatch,
	.writeable = tunnel_writeable,
	.lost = tunnel_lost,
	.final = tunnel_final,
};

static int cb_tunnel(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{	/* the tunnel; also where a finished ssh login wakes the loop */
	struct agent *a = lws_context_user(lws_get_context(wsi));

	(void)user;
	if (reason == LWS_CALLBACK_EVENT_WAIT_CANCELLED && a && a->be->collect)
		a->be->collect(a);
	return conn_event(wsi, reason, in, len);
}

/*** the events channel ******************************************************/

/* IoTDA publishes tunnel_notify to the device over MQTT; here it is a text
 * frame on a WebSocket, or a file (--notify).  Members (README Protocol §8):
 * object_device_id, services[] {event_type "tunnel_notify", paras
 * {tunnel_uri (tunnel_url accepted too), tunnel_access_token}}. */
struct notify {				/* one parsed event; strings owned */
	char *device, *url, *token;
};

static void notify_free(struct notify *n)	/* the token wiped */
{
	wipe(n->token);
	free(n->token);
	free(n->url);
	free(n->device);
	memset(n, 0, sizeof(*n));
}

static const cJSON *notify_paras(const cJSON *root)	/* the paras of its tunnel_notify service */
{
	const cJSON *svc;

	cJSON_ArrayForEach(svc, cJSON_GetObjectItemCaseSensitive(root, "services")) {
		const char *ev = str_member(svc, "event_type");

		if (ev && !strcmp(ev, "tunnel_notify"))
			return cJSON_GetObjectItemCaseSensitive(svc, "paras");
	}
	return NULL;
}

static char *dup_or_null(const char *s)	/* strdup that passes NULL through */
{
	char *d = s ? strdup(s) : NULL;

	if (s && !d)
		abort();
	return d;
}

static int notify_parse(const char *text, size_t len, struct notify *n)	/* 0, or -1: no URI and token */
{
	cJSON *root = cJSON_ParseWithLength(text, len);
	const cJSON *paras = notify_paras(root);
	char *url = str_member(paras, "tunnel_uri"), *tok = str_member(paras, "tunnel_access_token");

	if (!url)
		url = str_member(paras, "tunnel_url");
	if (url && tok) {
		n->url = dup_or_null(url);
		n->token = dup_or_null(tok);
		n->device = dup_or_null(str_member(root, "object_device_id"));
	}
	wipe(tok);
	cJSON_Delete(root);
	return n->url ? 0 : -1;
}

/* An announced tunnel replaces the current one; how, by the link's state.
 * Each path ends in conn_take_next() once the old connection is down. */

static void switch_idle(struct agent *a)	/* nothing up (a retry may be pending): go */
{
	conn_take_next(&a->tun);
}

static void switch_connecting(struct agent *a)	/* abandon the attempt: its error takes the next */
{
	if (a->tun.wsi)
		lws_set_timeout(a->tun.wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

static void switch_open(struct agent *a)	/* sessions end first, then close 1000 */
{
	sb_log("closing tunnel %s for the new one", target_tunnel(&a->tun.to));
	sessions_kill_all(a, SIGHUP);
	a->tun.link = L_SWITCHING;
	lws_callback_on_writable(a->tun.wsi);
}

static void switch_pending(struct agent *a)	/* already closing: the newest target wins */
{
	(void)a;
}

static void (*const switchers[L_STATES])(struct agent *a) = {
	[L_IDLE] = switch_idle,
	[L_CONNECTING] = switch_connecting,
	[L_OPEN] = switch_open,
	[L_SWITCHING] = switch_pending,
	[L_STOPPING] = switch_pending,
};

static void tunnel_announced(struct agent *a, struct target *t)	/* takes t: the tunnel goes there */
{
	sb_log("tunnel_notify for tunnel %s", target_tunnel(t));
	target_clear(&a->tun.next);
	a->tun.next = *t;
	memset(t, 0, sizeof(*t));
	switchers[a->tun.link](a);
}

static void events_message(struct agent *a, const char *text, size_t len)	/* one event */
{
	struct notify n = { 0 };
	struct target t = { 0 };
	int bad = notify_parse(text, len, &n) || !n.device || !token_ok(n.token) ||
		  target_set(&t, n.url, n.token);

	if (bad)
		sb_log("dropped a malformed event");
	else if (strcmp(n.device, a->cfg.device_id))
		sb_log("tunnel_notify for device %s; ignored", loggable(n.device));
	else
		tunnel_announced(a, &t);
	target_clear(&t);
	notify_free(&n);
}

static int events_writeable(struct agent *a, struct lws *wsi)	/* only ever to close it */
{
	return conn_farewell(&a->ev, wsi) ? -1 : 0;
}

static void events_lost(struct agent *a)	/* the tunnel does not depend on it */
{
	(void)a;
}

static const struct conn_kind events_kind = {
	.proto = "events",
	.up = "events channel connected",
	.closed = "events channel closed (close %d)",
	.failed = "events channel connection failed: %.*s",
	.retry = "events channel reconnecting in %u ms",
	.oversized = "dropped an oversized event",
	.finals = events_finals,
	.nfinals = LWS_ARRAY_SIZE(events_finals),
	.rx_max = EVENT_MAX,
	.message = events_message,
	.writeable = events_writeable,
	.lost = events_lost,
	.final = final_leave,
};

static int cb_events(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{	/* the events channel */
	(void)user;
	return conn_event(wsi, reason, in, len);
}

static int cb_session(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{	/* a shell: pty master or ssh socket */
	struct session *s = lws_get_opaque_user_data(wsi);

	(void)user;
	(void)in;
	(void)len;
	if (!s)
		return 0;
	switch (reason) {
	case LWS_CALLBACK_RAW_RX_FILE:
		return session_readable(s);
	case LWS_CALLBACK_RAW_WRITEABLE_FILE:
		return session_writeable(s);
	case LWS_CALLBACK_RAW_CLOSE_FILE:
		session_wsi_closed(s);
		break;
	default:
		break;
	}
	return 0;
}

/*** signals and children ****************************************************/

static void agent_stop(struct agent *a, int signo)	/* SIGTERM/SIGINT/SIGHUP: close 1001, leave */
{
	if (a->stopping) {	/* a second signal: leave now */
		a->quit = 1;
		return;
	}
	sb_log("stopping on signal %d", signo);
	agent_wind_down(a);
}

static void children_reap(struct agent *a)	/* SIGCHLD: no zombies, and notice a shell's exit */
{
	struct session *s;
	pid_t pid;

	while ((pid = waitpid(-1, NULL, WNOHANG)) > 0) {
		for (s = a->sessions; s && !(a->be == &pty_backend && s->u.pty.pid == pid); s = s->next)
			;
		if (!s)
			continue;
		s->u.pty.pid = 0;
		/* normally the pty's EOF comes first; if a background job keeps
		 * it open, end the session after a grace period anyway */
		if (s->state == S_LIVE)
			lws_sul_schedule(a->ctx, 0, &s->sul_exit, session_exit_timeout,
					 EXIT_GRACE_MS * LWS_US_PER_MS);
	}
}

static void signals_readable(struct agent *a)	/* drains the signalfd */
{
	struct signalfd_siginfo si;

	while (read(a->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
		if (si.ssi_signo == SIGCHLD)
			children_reap(a);
		else
			agent_stop(a, (int)si.ssi_signo);
	}
}

static int cb_signals(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{	/* the signalfd */
	struct agent *a = lws_context_user(lws_get_context(wsi));

	(void)user;
	(void)in;
	(void)len;
	if (reason == LWS_CALLBACK_RAW_RX_FILE)
		signals_readable(a);
	else if (reason == LWS_CALLBACK_RAW_CLOSE_FILE)
		a->sigfd = -1;
	return 0;
}

static const struct lws_protocols protocols[] = {
	{ "tunnel", cb_tunnel, 0, 0, 0, NULL, 0 },	/* first: gets the connection errors */
	{ "events", cb_events, 0, 0, 0, NULL, 0 },
	{ "session", cb_session, 0, 0, 0, NULL, 0 },
	{ "signals", cb_signals, 0, 0, 0, NULL, 0 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 },
};

/*** command line ************************************************************/

static const struct option_spec {
	const char *name, *arg, *help;
	size_t off;			/* where the value goes in struct config */
} options[] = {
	{ "url", "URL", "device-connect URL, ws:// or wss://.../v5/iot/tunnels/ID/device-connect",
	  offsetof(struct config, url) },
	{ "token", "TOKEN", "the tunnel_access_token (visible in ps: prefer --token-file)",
	  offsetof(struct config, token_arg) },
	{ "token-file", "FILE", "read the token from FILE", offsetof(struct config, token_file) },
	{ "notify", "FILE", "a tunnel_notify event (IoTDA $tunnel_manager JSON): URL and token",
	  offsetof(struct config, notify) },
	{ "device-id", "ID", "this device (1-128 of A-Z a-z 0-9 _ -), for --events",
	  offsetof(struct config, device_id) },
	{ "events", "URL", "ws[s]://HOST:PORT/sandbox/devices/ID/events, the MQTT\n"
	  "                        stand-in (no token): its tunnel_notify events say\n"
	  "                        which tunnel to open.  Needs --device-id; not with\n"
	  "                        --url, --token, --token-file, --notify",
	  offsetof(struct config, events) },
	{ "backend", "pty|ssh", "where shells run (default pty)", offsetof(struct config, backend) },
	{ "ssh", "HOST:PORT", "the sshd of --backend ssh (default 127.0.0.1:22)", offsetof(struct config, ssh) },
	{ "known-hosts", "FILE", "trust-on-first-use host keys (default\n"
	  "                        $XDG_STATE_HOME/tunnel-device/known_hosts)", offsetof(struct config, known_hosts) },
	{ "login-file", "FILE", "user:password lines the pty backend accepts", offsetof(struct config, login_file) },
	{ "home", "DIR", "the pty backend's HOME and start folder (default the\n"
	  "                        shell user's home): its own dotfiles, not the user's", offsetof(struct config, home) },
	{ "shell", "PROGRAM", "what a pty session runs (default the shell user's\n"
	  "                        login shell, as a login shell); PROGRAM runs as a plain\n"
	  "                        interactive shell: no /etc/profile to reset --path",
	  offsetof(struct config, shell) },
	{ "run-as", "USER", "root only: pty sessions run as USER (its uid, gid and\n"
	  "                        groups, its login shell unless --shell, its home\n"
	  "                        unless --home), never as root",
	  offsetof(struct config, run_as) },
	{ "path", "DIRS", "the PATH of pty sessions (default\n"
	  "                        " SHELL_PATH "); a login shell's\n"
	  "                        /etc/profile may set another",
	  offsetof(struct config, path) },
	{ "profile", "full|c-sdk", "full (default), or mimic the official C device SDK",
	  offsetof(struct config, profile) },
	{ "wedge", "MODE", "c-sdk: after a shell exit, stick as the SDK does until\n"
	  "                        the tunnel reconnects; MODE no-408, 408 or random\n"
	  "                        (either, half and half).  Default: no wedge",
	  offsetof(struct config, wedge) },
	{ "cacert", "FILE", "trust this CA too for wss://", offsetof(struct config, cacert) },
	{ "insecure", NULL, "accept any server certificate (loud)", offsetof(struct config, insecure) },
	{ "help", NULL, "this text", offsetof(struct config, help) },
};

static void usage(FILE *f)	/* the help text, options from their table */
{
	size_t i;

	fputs(usage_head, f);
	for (i = 0; i < LWS_ARRAY_SIZE(options); i++) {
		const struct option_spec *o = &options[i];
		int w = (int)strlen(o->name) + (o->arg ? (int)strlen(o->arg) + 1 : 0);

		fprintf(f, "  --%s%s%s%*s%s\n", o->name, o->arg ? " " : "", o->arg ? o->arg : "",
			w < 20 ? 20 - w : 1, "", o->help);
	}
	fputs(usage_tail, f);
}

static void bad_usage(const char *fmt, const char *arg)	/* message, usage, exit 2 */
{
	fprintf(stderr, "tunnel-device: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n\n");
	usage(stderr);
	exit(2);
}

static const struct option_spec *option_find(const char *name, size_t n)	/* by name, without "--" */
{
	size_t i;

	for (i = 0; i < LWS_ARRAY_SIZE(options); i++)
		if (strlen(options[i].name) == n && !strncmp(options[i].name, name, n))
			return &options[i];
	return NULL;
}

static const char **option_slot(struct config *c, const struct option_spec *o)	/* where its value goes */
{
	return (const char **)(void *)((char *)c + o->off);
}

static void options_parse(struct config *c, int argc, char **argv)	/* --name VALUE, --name=VALUE */
{
	const struct option_spec *o;
	const char *name, *eq, *val;
	int i;

	for (i = 1; i < argc; i++) {
		if (strncmp(argv[i], "--", 2))
			bad_usage("unexpected argument '%s'", argv[i]);
		name = argv[i] + 2;
		eq = strchr(name, '=');
		if (!(o = option_find(name, eq ? (size_t)(eq - name) : strlen(name))))
			bad_usage("unknown option '%s'", argv[i]);
		if (!o->arg) {
			if (eq)
				bad_usage("%s takes no value", argv[i]);
			*(int *)((char *)c + o->off) = 1;
			continue;
		}
		val = eq ? eq + 1 : i + 1 < argc ? argv[++i] : NULL;
		if (!val)
			bad_usage("%s needs a value", argv[i]);
		*option_slot(c, o) = val;
	}
}

static char *file_read(const char *path, size_t max)	/* a small file as a string, or NULL */
{
	FILE *f = fopen(path, "r");
	char *buf = f ? malloc(max + 1) : NULL;
	size_t n = buf ? fread(buf, 1, max + 1, f) : 0;

	if (f)
		fclose(f);
	if (!buf || n > max) {
		free(buf);
		return NULL;
	}
	buf[n] = '\0';
	return buf;
}

static char *token_from_file(const char *path)	/* the first line, trailing blanks cut */
{
	char *t = file_read(path, 4096);
	size_t n;

	if (!t)
		bad_usage("cannot read the token file %s", path);
	n = strcspn(t, "\r\n");
	while (n && isspace((unsigned char)t[n - 1]))
		n--;
	t[n] = '\0';
	return t;
}

static void notify_read(const char *path, struct notify *n)	/* --notify FILE */
{
	char *text = file_read(path, EVENT_MAX);
	int bad = !text || notify_parse(text, strlen(text), n);

	if (text)
		explicit_bzero(text, strlen(text));
	free(text);
	if (bad)
		bad_usage("%s is not a tunnel_notify event with tunnel_uri and tunnel_access_token", path);
}

static void tunnel_resolve(struct agent *a)	/* fixed tunnel: exactly one token source */
{
	struct config *c = &a->cfg;
	struct notify n = { 0 };

	if (!!c->token_arg + !!c->token_file + !!c->notify != 1)
		bad_usage("%s", "give exactly one of --token, --token-file, --notify");
	if (!c->notify != !!c->url)
		bad_usage("%s", c->notify ? "--notify gives the URL: drop --url" : "--url is missing");
	if (c->device_id)
		bad_usage("%s", "--device-id goes with --events");
	if (c->notify)
		notify_read(c->notify, &n);
	else {
		n.url = dup_or_null(c->url);
		n.token = c->token_file ? token_from_file(c->token_file) : dup_or_null(c->token_arg);
	}
	if (!token_ok(n.token))
		bad_usage("the token must be 1-%s printable characters without spaces", "256");
	if (target_set(&a->tun.to, n.url, n.token))
		bad_usage("bad URL %s (want ws:// or wss://)", n.url);
	notify_free(&n);
}

/* The tunnel comes from the events channel, so no option may name one. */
static const char *const events_excludes[] = { "url", "token", "token-file", "notify" };

static void events_resolve(struct agent *a)	/* --events: its URL, --device-id */
{
	struct config *c = &a->cfg;
	size_t i;

	for (i = 0; i < LWS_ARRAY_SIZE(events_excludes); i++)
		if (*option_slot(c, option_find(events_excludes[i], strlen(events_excludes[i]))))
			bad_usage("--events excludes --%s", events_excludes[i]);
	if (!c->device_id)
		bad_usage("%s", "--events needs --device-id");
	if (!id_ok(c->device_id))
		bad_usage("bad --device-id '%s' (1-128 of A-Z a-z 0-9 _ -)", c->device_id);
	if (target_set(&a->ev.to, c->events, NULL))
		bad_usage("bad URL %s (want ws:// or wss://)", c->events);
}

static char *known_hosts_default(const struct account *me)	/* $XDG_STATE_HOME or ~/.local/state */
{
	const char *state = getenv("XDG_STATE_HOME");
	char *p = NULL;
	int r = state && *state == '/' ? asprintf(&p, "%s/tunnel-device/known_hosts", state) :
		asprintf(&p, "%s/.local/state/tunnel-device/known_hosts", me->home);

	if (r < 0)
		abort();
	return p;
}

static void ssh_resolve(struct config *c)	/* HOST:PORT, [v6]:PORT; the known-hosts path */
{
	const char *spec = c->ssh ? c->ssh : "127.0.0.1:22", *colon = strrchr(spec, ':');
	char *end = NULL;
	long port = colon ? strtol(colon + 1, &end, 10) : 0;
	size_t hl = colon ? (size_t)(colon - spec) : 0;

	if (!colon || *end || port < 1 || port > 65535 || hl == 0 || hl >= sizeof c->ssh_host)
		bad_usage("bad --ssh %s (want HOST:PORT)", spec);
	if (spec[0] == '[' && hl > 2 && spec[hl - 1] == ']')
		snprintf(c->ssh_host, sizeof c->ssh_host, "%.*s", (int)hl - 2, spec + 1);
	else
		snprintf(c->ssh_host, sizeof c->ssh_host, "%.*s", (int)hl, spec);
	c->ssh_port = (int)port;
	c->known_hosts_path = c->known_hosts ? strdup(c->known_hosts) : known_hosts_default(&c->me);
	if (!c->known_hosts_path)
		abort();
}

static void creds_load(struct config *c)	/* --login-file: user:password per line, # comments */
{
	FILE *f = fopen(c->login_file, "r");
	char *line = NULL, *colon;
	size_t cap = 0;
	struct cred *cr;
	struct stat st;

	if (!f)
		bad_usage("cannot read the login file %s", c->login_file);
	if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077))
		sb_log("warning: %s is readable by other users", c->login_file);
	while (getline(&line, &cap, f) > 0) {
		line[strcspn(line, "\r\n")] = '\0';
		if (line[0] == '#' || !(colon = strchr(line, ':')))
			continue;
		*colon = '\0';
		if (!(cr = calloc(1, sizeof(*cr))) || !(cr->user = strdup(line)) || !(cr->pass = strdup(colon + 1)))
			abort();
		cr->next = c->creds;
		c->creds = cr;
	}
	if (line)
		explicit_bzero(line, cap);
	free(line);
	fclose(f);
}

/* From the password database: the user named (--run-as), else the agent's own. */
static void account_load(struct account *me, const char *name)
{
	struct passwd pw, *res = NULL;
	char buf[4096];
	int r = name ? getpwnam_r(name, &pw, buf, sizeof buf, &res) : getpwuid_r(getuid(), &pw, buf, sizeof buf, &res);

	if (r || !res) {
		if (name)
			bad_usage("--run-as: no user '%s'", name);
		fprintf(stderr, "tunnel-device: who am I? (no passwd entry for uid %u)\n", (unsigned)getuid());
		exit(1);
	}
	me->name = strdup(pw.pw_name);
	me->home = strdup(pw.pw_dir && *pw.pw_dir ? pw.pw_dir : "/");
	me->shell = strdup(pw.pw_shell && *pw.pw_shell ? pw.pw_shell : "/bin/sh");
	me->path = SHELL_PATH;
	me->login = 1;
	me->uid = pw.pw_uid;
	me->gid = pw.pw_gid;
	if (!me->name || !me->home || !me->shell)
		abort();
}

/* What initgroups would set, read now: the child may not use NSS (a login
 * worker thread may hold a lock across the fork). */
static void groups_load(struct account *me)
{
	int n = 16;

	if (!(me->groups = malloc((size_t)n * sizeof *me->groups)))
		abort();
	while (getgrouplist(me->name, me->gid, me->groups, &n) < 0)	/* n: how many there are */
		if (!(me->groups = realloc(me->groups, (size_t)n * sizeof *me->groups)))
			abort();
	me->ngroups = n;
}

/* Whose shells: the agent's user, or --run-as USER's.  The agent itself
 * keeps its uid: it reads its token, login and CA files, and signals the
 * shells.  USER may not be root: the option exists to shed root. */
static void account_resolve(struct agent *a)
{
	struct config *c = &a->cfg;

	if (c->run_as && a->be != &pty_backend)
		bad_usage("%s", "--run-as goes with --backend pty");
	if (c->run_as && geteuid() != 0)
		bad_usage("--run-as %s needs root: only root can start a shell as another user", c->run_as);
	account_load(&c->me, c->run_as);
	if (c->run_as && c->me.uid == 0)
		bad_usage("--run-as %s is root: name an unprivileged user", c->run_as);
	if (c->run_as) {
		groups_load(&c->me);
		c->me.switch_user = 1;
	}
	if (c->home) {	/* tests and demos: shells that read no personal dotfiles */
		free(c->me.home);
		c->me.home = strdup(c->home);
	}
}

static void wedge_resolve(struct agent *a)	/* --wedge MODE, c-sdk only */
{
	struct config *c = &a->cfg;
	size_t i;

	if (!c->wedge)
		return;
	for (i = 0; i < LWS_ARRAY_SIZE(wedge_modes) && strcmp(c->wedge, wedge_modes[i].name); i++)
		;
	if (i == LWS_ARRAY_SIZE(wedge_modes))
		bad_usage("unknown --wedge '%s' (no-408, 408 or random)", c->wedge);
	if (!a->prof->quirks)
		bad_usage("%s", "--wedge needs --profile c-sdk");
	c->wedge_mode = &wedge_modes[i];
}

/* --shell runs as a plain interactive shell: as a login shell it would read
 * the host's /etc/profile, which sets a PATH of its own over --path. */
static void shell_resolve(struct agent *a)	/* --shell, --path: the pty backend's */
{
	struct config *c = &a->cfg;

	if ((c->shell || c->path) && a->be != &pty_backend)
		bad_usage("%s", "--shell and --path go with --backend pty");
	if (c->path && !*c->path)
		bad_usage("%s", "--path is empty");
	if (c->path)
		c->me.path = c->path;
	if (!c->shell)
		return;
	if (c->shell[0] != '/' || access(c->shell, X_OK))
		bad_usage("--shell %s is not an absolute path to a program", c->shell);
	free(c->me.shell);
	if (!(c->me.shell = strdup(c->shell)))
		abort();
	c->me.login = 0;
}

static void config_load(struct agent *a, int argc, char **argv)	/* everything, or exit 0/2 */
{
	struct config *c = &a->cfg;
	size_t i;

	options_parse(c, argc, argv);
	if (c->help) {
		usage(stdout);
		exit(0);
	}
	for (i = 0; i < LWS_ARRAY_SIZE(backends) && strcmp(c->backend ? c->backend : "pty", backends[i]->name); i++)
		;
	if (i == LWS_ARRAY_SIZE(backends))
		bad_usage("unknown backend '%s' (pty or ssh)", c->backend);
	a->be = backends[i];
	for (i = 0; i < LWS_ARRAY_SIZE(profiles) && strcmp(c->profile ? c->profile : "full", profiles[i]->name); i++)
		;
	if (i == LWS_ARRAY_SIZE(profiles))
		bad_usage("unknown profile '%s' (full or c-sdk)", c->profile);
	a->prof = profiles[i];
	wedge_resolve(a);
	if (c->cacert && access(c->cacert, R_OK))
		bad_usage("cannot read the CA file %s", c->cacert);
	if (c->events)
		events_resolve(a);
	else
		tunnel_resolve(a);
	account_resolve(a);
	shell_resolve(a);
	ssh_resolve(c);
	if (c->login_file)
		creds_load(c);
}

/*** setup and teardown ******************************************************/

static int signals_adopt(struct agent *a)	/* SIGCHLD, SIGTERM, SIGINT, SIGHUP through a signalfd */
{
	sigset_t set;
	lws_sock_file_fd_type fd;

	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	a->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	fd.filefd = a->sigfd;
	return a->sigfd >= 0 && lws_adopt_descriptor_vhost(a->vh, LWS_ADOPT_RAW_FILE_DESC, fd, "signals", NULL) ? 0 : -1;
}

static int agent_init(struct agent *a)	/* lws context, signals; the first connect is scheduled */
{
	struct lws_context_creation_info info;
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, NULL);	/* before any thread: workers inherit the mask */
	signal(SIGPIPE, SIG_IGN);
	ssh_init();
	lws_set_log_level(LLL_ERR, sb_lws_log);
	memset(&info, 0, sizeof info);
	info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.protocols = protocols;
	info.user = a;
	info.pt_serv_buf_size = 16384;	/* headroom for the token header */
	/* lws loads the system store and adds this file (LWS_SSL_CLIENT_USE_OS_CA_CERTS) */
	info.client_ssl_ca_filepath = a->cfg.cacert ? a->cfg.cacert : access(SYSTEM_CA, R_OK) ? NULL : SYSTEM_CA;
	a->sigfd = -1;
	a->ctx = lws_create_context(&info);
	if (!a->ctx || !(a->vh = lws_get_vhost_by_name(a->ctx, "default")) || signals_adopt(a))
		return -1;
	if (a->cfg.insecure)
		sb_log("warning: --insecure: the platform's certificate is NOT checked");
	if (a->be == &pty_backend && !a->cfg.creds)
		sb_log("warning: no --login-file: every login will be refused");
	if (a->cfg.events)
		sb_log("device %s: waiting for tunnel_notify events", a->cfg.device_id);
	conn_schedule_now(a->cfg.events ? &a->ev : &a->tun);
	return 0;
}

static void sessions_shutdown(struct agent *a)	/* every session, now, before the context goes */
{
	struct session *s;

	while ((s = a->sessions)) {
		s->state = S_DEAD;
		s->kill_sig = SIGKILL;
		if (a->be->join)
			a->be->join(s);	/* a worker calls lws_cancel_service(ctx) */
		if (s->wsi)
			lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_SYNC);
		if (a->sessions == s) {	/* lws did not call RAW_CLOSE_FILE */
			s->wsi = NULL;
			session_release(s);
		}
	}
}

static void config_free(struct config *c)	/* secrets wiped */
{
	struct cred *cr;

	while ((cr = c->creds)) {
		c->creds = cr->next;
		wipe(cr->pass);
		free(cr->pass);
		free(cr->user);
		free(cr);
	}
	free(c->known_hosts_path);
	free(c->me.name);
	free(c->me.home);
	free(c->me.shell);
	free(c->me.groups);
}

static void agent_free(struct agent *a)	/* sessions, lws, children, memory */
{
	sessions_shutdown(a);
	if (a->ctx)
		lws_context_destroy(a->ctx);
	while (waitpid(-1, NULL, 0) > 0)	/* the shells got SIGKILL */
		;
	sb_queue_clear(&a->out);
	sb_rx_free(&a->tun.rx);
	sb_rx_free(&a->ev.rx);
	target_clear(&a->tun.to);
	target_clear(&a->tun.next);
	target_clear(&a->ev.to);
	config_free(&a->cfg);
	ssh_finalize();
}

/*** main ********************************************************************/

int main(int argc, char **argv)	/* options, then the lws loop until told to stop */
{
	static struct agent a;

	sb_prog = "tunnel-device";
	a.tun = (struct conn){ .a = &a, .kind = &tunnel_kind };
	a.ev = (struct conn){ .a = &a, .kind = &events_kind };
	config_load(&a, argc, argv);
	if (agent_init(&a)) {
		sb_log("cannot set up the event loop");
		a.status = 1;
	} else
		while (!a.quit && lws_service(a.ctx, 0) >= 0)
			;
	a.quit = 1;	/* lws_context_destroy's callbacks must not reconnect */
	agent_free(&a);
	return a.status;
}
