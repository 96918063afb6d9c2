/* tunnel-client: the protocol-level test client of the secure tunnel sandbox,
 * a tiny websocat for the tunnel protocol (README: Protocol).  It opens one WebSocket to the relay with
 * the `tunnel_access_token` header, sends what stdin says and prints one line
 * per event on stdout, so shell tests can drive the relay and the device agent
 * and wait for lines.
 *
 *   tunnel-client --url URL [--token-file FILE] [--cacert FILE] [--insecure]
 *                 [--raw] [--save REQUEST_ID FILE]... [--discard] [--rate BYTES]
 *                 [--help]
 *
 * stdin, one line at a time: a line that is not a directive is sent as one
 * text frame, byte for byte (without its newline); empty lines and lines
 * starting with `#` are skipped; directives start with `!` (the table in
 * "stdin and directives").  Lines read before the connection is up wait in the
 * queue.  EOF on stdin keeps the connection open until the peer closes it or
 * SIGTERM/SIGINT (which close with 1000; a second signal leaves at once).
 *
 * stdout, one line per event, flushed: see the "events" section.
 * Exit status: 0 when the connection ended with close code 1000 (sent or
 * received) or by `!quit`, 1 otherwise (refused, error, other close code).
 *
 * Contents: limits and usage; state; command line; events (stdout);
 * inbound messages; outbound queue; stdin and directives; signals;
 * the lws callbacks; main. */

#include "sandbox.h"
#include <errno.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

/*** limits and usage ********************************************************/

#define RX_MAX (16u << 20)	/* largest inbound message we reassemble */
#define MAX_SAVES 8		/* --save may be given this many times */
#define READ_CHUNK 4096		/* bytes read from stdin per callback */

static const char usage_text[] =
	"usage: tunnel-client --url ws[s]://HOST[:PORT]/PATH [options] < script\n"
	"  --url URL           the source-connect (or device-connect) URL\n"
	"  --token-file FILE   token for the tunnel_access_token header\n"
	"                      (default: $TUNNEL_TOKEN; none: no header)\n"
	"  --cacert FILE       trust this CA for wss://\n"
	"  --insecure          accept any certificate (self-signed, wrong name)\n"
	"  --raw               also print every frame as `raw FRAME`\n"
	"  --save REQID FILE   append the command_response data bytes of REQID\n"
	"                      to FILE (repeatable, up to 8; stops at a \\u0000)\n"
	"  --discard           benchmark mode: parse and drop every message, print\n"
	"                      `bytes N messages M` at exit (N: command_response\n"
	"                      data bytes, M: messages received)\n"
	"  --rate BYTES        a slow app: take in at most BYTES of messages a\n"
	"                      second (the socket is not read meanwhile)\n"
	"stdin: JSON lines are sent as text frames; directives:\n"
	"  !close CODE [REASON]      a close frame\n"
	"  !ping [PAYLOAD]           a WebSocket PING\n"
	"  !big N [REQID]            a command message of exactly N bytes\n"
	"  !raw HEX                  these bytes as one text frame\n"
	"  !send OP REQID [DATA]     an envelope (DATA: JSON, default null)\n"
	"  !disconnect REQID CODE [MSG]  a disconnect, as a device sends it\n"
	"  !mark LABEL               once the lines before are sent: `mark LABEL N`\n"
	"  !quit                     leave without a close handshake\n"
	"stdout: open | http STATUS | recv OP REQID DATA | raw FRAME | unparsed LEN\n"
	"        | pong-ws [PAYLOAD] | mark LABEL N | close-sent CODE\n"
	"        | closed CODE [REASON] | error TEXT\n";

/*** state *******************************************************************/

enum ctl_kind { CTL_PING, CTL_CLOSE, CTL_MARK, CTL_QUIT };

struct ctl {			/* a control action, ordered among text frames */
	struct ctl *next;
	enum ctl_kind kind;
	unsigned long after;	/* run once this many text frames are written */
	int code;
	char reason[124];	/* close reason, PING payload (<= 123 bytes) or mark label */
};

struct save {			/* --save REQID FILE */
	const char *request_id;
	FILE *f;
};

static struct client {
	/* options */
	const char *url, *cacert;
	char *token;
	int insecure, raw, discard;
	unsigned long rate;	/* --rate: bytes a second, 0: no limit */
	struct save saves[MAX_SAVES];
	int nsaves;
	/* lws */
	struct lws_context *ctx;
	struct lws *wsi;	/* the WebSocket, once established */
	lws_sorted_usec_list_t sul_rate;	/* --rate: reading resumes then */
	/* outbound: text frames plus ordered control actions */
	struct sb_queue q;
	struct ctl *ctl_head, *ctl_tail;
	unsigned long pushed, written;
	int stopping;		/* a signal asked for a close 1000 */
	/* inbound */
	struct sb_rxbuf rx;
	struct sb_rxbuf line;	/* the stdin line being assembled */
	int peer_code;		/* close code the peer sent, 0 if none */
	char peer_reason[128];
	int sent_code;		/* close code we sent, 0 if none */
	/* outcome */
	int done, reported;
	int normal;		/* ended by close 1000 or !quit: exit 0 */
	unsigned long long bytes, messages;
} c;

/*** command line ************************************************************/

static void die(const char *msg)	/* a usage error: message, usage, exit 2 */
{
	fprintf(stderr, "tunnel-client: %s\n%s", msg, usage_text);
	exit(2);
}

static char *trim_right(char *s)	/* strips trailing whitespace in place */
{
	size_t n = strlen(s);

	while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
		s[--n] = '\0';
	return s;
}

static char *read_token(const char *path)	/* the token file's first line */
{
	char buf[1024];
	FILE *f = fopen(path, "r");

	if (!f) {
		sb_log("%s: %s", path, strerror(errno));
		exit(2);
	}
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	return strdup(trim_right(buf));
}

static void add_save(const char *request_id, const char *path)	/* --save */
{
	FILE *f;

	if (c.nsaves == MAX_SAVES)
		die("too many --save options");
	f = fopen(path, "ab");
	if (!f) {
		sb_log("%s: %s", path, strerror(errno));
		exit(2);
	}
	c.saves[c.nsaves].request_id = request_id;
	c.saves[c.nsaves++].f = f;
}

static void opt_url(char **v) { c.url = v[0]; }	/* --url URL */
static void opt_cacert(char **v) { c.cacert = v[0]; }	/* --cacert FILE */
static void opt_save(char **v) { add_save(v[0], v[1]); }	/* --save REQID FILE */
static void opt_insecure(char **v) { (void)v; c.insecure = 1; }	/* --insecure */
static void opt_raw(char **v) { (void)v; c.raw = 1; }	/* --raw */
static void opt_discard(char **v) { (void)v; c.discard = 1; }	/* --discard */

static void opt_rate(char **v)	/* --rate BYTES */
{
	char *end;

	c.rate = strtoul(v[0], &end, 10);
	if (end == v[0] || *end || !c.rate)
		die("--rate needs a positive number of bytes");
}

static void opt_token_file(char **v)	/* --token-file FILE */
{
	free(c.token);
	c.token = read_token(v[0]);
}

static void opt_help(char **v)	/* --help */
{
	(void)v;
	fputs(usage_text, stdout);
	exit(0);
}

static const struct option {
	const char *name;
	int nargs;		/* values that follow the option */
	void (*set)(char **values);
} options[] = {
	{ "--url",        1, opt_url },
	{ "--token-file", 1, opt_token_file },
	{ "--cacert",     1, opt_cacert },
	{ "--insecure",   0, opt_insecure },
	{ "--raw",        0, opt_raw },
	{ "--save",       2, opt_save },
	{ "--discard",    0, opt_discard },
	{ "--rate",       1, opt_rate },
	{ "--help",       0, opt_help },
};

static void parse_args(int argc, char **argv)	/* fills the options of c */
{
	for (int i = 1; i < argc; i++) {
		size_t k = 0;

		while (k < LWS_ARRAY_SIZE(options) && strcmp(argv[i], options[k].name))
			k++;
		if (k == LWS_ARRAY_SIZE(options))
			die("unknown option");
		if (i + options[k].nargs >= argc)
			die("missing value");
		options[k].set(argv + i + 1);
		i += options[k].nargs;
	}
	if (!c.url)
		die("--url is required");
	if (!c.token && getenv("TUNNEL_TOKEN"))
		c.token = strdup(getenv("TUNNEL_TOKEN"));
}

/*** events (stdout) *********************************************************
 * open                      the WebSocket is established
 * http STATUS               the handshake got STATUS instead of 101
 * recv OP REQID DATA        a message: operation_type, request_id (`-` when
 *                           absent, JSON when not a string), data as compact
 *                           JSON (`-` when absent)
 * raw FRAME                 with --raw: the frame as received (CR/LF shown
 *                           as spaces so it stays one line)
 * unparsed LEN              a frame of LEN bytes that is not JSON
 * pong-ws [PAYLOAD]         a WebSocket PONG (lws PINGs an idle link by
 *                           itself too: those PONGs have no payload)
 * mark LABEL N              !mark LABEL: every line before it is sent; N is
 *                           the command_response data bytes received so far
 * close-sent CODE           our close frame went out (after !close or a signal)
 * closed CODE [REASON]      the peer closed; 1006 when the link just dropped
 * error TEXT                anything else that went wrong
 */

static void emit(const char *fmt, ...)	/* prints one event line, flushed */
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

/* Prints bytes as one line: CR and LF become spaces, NUL becomes `\0`. */
static void emit_bytes(const char *prefix, const char *p, size_t len)
{
	fputs(prefix, stdout);
	for (size_t i = 0; i < len; i++) {
		if (p[i] == '\n' || p[i] == '\r')
			putchar(' ');
		else if (p[i] == '\0')
			fputs("\\0", stdout);
		else
			putchar(p[i]);
	}
	putchar('\n');
	fflush(stdout);
}

/*** inbound messages ********************************************************/

/* A member as text for a `recv` line: `-` when absent, a string as is,
 * anything else as compact JSON.  Returns a malloc'd string. */
static char *member_text(const cJSON *m, const char *name, int quote_strings)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, name);

	if (!v)
		return strdup("-");
	if (cJSON_IsString(v) && !quote_strings)
		return strdup(v->valuestring);
	return cJSON_PrintUnformatted(v);
}

/* The string data of a command_response, or NULL for any other message. */
static const char *response_data(const cJSON *m)
{
	const cJSON *op = cJSON_GetObjectItemCaseSensitive(m, "operation_type");
	const cJSON *d = cJSON_GetObjectItemCaseSensitive(m, "data");

	if (!cJSON_IsString(op) || strcmp(op->valuestring, "command_response"))
		return NULL;
	return cJSON_IsString(d) ? d->valuestring : NULL;
}

static void save_output(const cJSON *m, const char *data)	/* --save files */
{
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "request_id");

	if (!cJSON_IsString(id))
		return;
	for (int i = 0; i < c.nsaves; i++) {
		if (strcmp(c.saves[i].request_id, id->valuestring))
			continue;
		fwrite(data, 1, strlen(data), c.saves[i].f);
		fflush(c.saves[i].f);
	}
}

static void print_message(const cJSON *m)	/* one `recv` line */
{
	char *op = member_text(m, "operation_type", 0);
	char *id = member_text(m, "request_id", 0);
	char *data = member_text(m, "data", 1);

	emit("recv %s %s %s", op, id, data);
	free(op);
	free(id);
	free(data);
}

static void on_message(const char *p, size_t len)	/* one whole frame */
{
	cJSON *m = cJSON_ParseWithLength(p, len);
	const char *data;

	c.messages++;
	if (c.raw && !c.discard)
		emit_bytes("raw ", p, len);
	if (!m) {
		if (!c.discard)
			emit("unparsed %zu", len);
		return;
	}
	data = response_data(m);
	if (data) {
		c.bytes += strlen(data);
		save_output(m, data);
	}
	if (!c.discard)
		print_message(m);
	cJSON_Delete(m);
}

static void rate_resume(lws_sorted_usec_list_t *sul)	/* --rate: the pause is over */
{
	(void)sul;
	if (c.wsi)
		lws_rx_flow_control(c.wsi, 1);
}

static void rate_pause(struct lws *wsi, size_t len)	/* --rate: as long as len bytes take */
{
	lws_rx_flow_control(wsi, 0);
	lws_sul_schedule(c.ctx, 0, &c.sul_rate, rate_resume, (lws_usec_t)(len * LWS_US_PER_SEC / c.rate));
}

/* Reassembles fragments; hands each whole message on.  -1: too big. */
static int on_receive(struct lws *wsi, const void *in, size_t len)
{
	if (sb_rx_append(&c.rx, in, len, RX_MAX) < 0) {
		emit("error inbound message over %u bytes", RX_MAX);
		lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, NULL, 0);
		return -1;
	}
	if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi))
		return 0;
	on_message(c.rx.p ? c.rx.p : "", c.rx.len);
	if (c.rate)
		rate_pause(wsi, c.rx.len);
	c.rx.len = 0;
	return 0;
}

/* Notes the peer's close frame (code, reason); lws answers it itself. */
static void on_peer_close(const unsigned char *in, size_t len)
{
	size_t n = len > 2 ? len - 2 : 0;

	c.peer_code = len >= 2 ? (in[0] << 8 | in[1]) : 1005;
	if (n >= sizeof(c.peer_reason))
		n = sizeof(c.peer_reason) - 1;
	memcpy(c.peer_reason, in + 2 * (len >= 2), n);
	c.peer_reason[n] = '\0';
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)c.peer_reason[i] < 0x20)
			c.peer_reason[i] = '?';
}

static void on_closed(void)	/* the WebSocket is gone: report, stop */
{
	int code = c.peer_code ? c.peer_code : c.sent_code;

	c.done = 1;
	c.wsi = NULL;
	if (c.reported++)
		return;
	if (c.peer_code)
		emit("closed %d%s%s", c.peer_code, *c.peer_reason ? " " : "", c.peer_reason);
	else if (!c.sent_code)
		emit("closed 1006 connection lost");
	c.normal = code == 1000;
}

/* The handshake failed: `http STATUS` when the server answered, else `error`. */
static void on_connect_error(struct lws *wsi, const char *why)
{
	unsigned int status = wsi ? lws_http_client_http_response(wsi) : 0;

	if (!status && why && strstr(why, "unauthorized"))
		status = 401;
	if (status)
		emit("http %u", status);
	else
		emit("error %s", why ? why : "connection failed");
	c.reported = 1;
	c.done = 1;
}

/*** outbound queue **********************************************************/

static void want_write(void)	/* asks for a writable callback when connected */
{
	if (c.wsi)
		lws_callback_on_writable(c.wsi);
}

static void push_frame(const void *p, size_t len)	/* queues one text frame */
{
	sb_queue_push(&c.q, p, len);
	c.pushed++;
	want_write();
}

/* Queues a control action after every frame queued so far. */
static void push_ctl(enum ctl_kind kind, int code, const char *reason)
{
	struct ctl *k = calloc(1, sizeof(*k));

	if (!k)
		abort();
	k->kind = kind;
	k->after = c.pushed;
	k->code = code;
	snprintf(k->reason, sizeof(k->reason), "%s", reason ? reason : "");
	if (c.ctl_tail)
		c.ctl_tail->next = k;
	else
		c.ctl_head = k;
	c.ctl_tail = k;
	want_write();
}

static void free_ctls(void)	/* drops every pending control action */
{
	while (c.ctl_head) {
		struct ctl *k = c.ctl_head;

		c.ctl_head = k->next;
		free(k);
	}
	c.ctl_tail = NULL;
}

/* Sends a close frame; the caller returns -1 so that lws performs it. */
static int send_close(struct lws *wsi, int code, const char *reason)
{
	lws_close_reason(wsi, (enum lws_close_status)code,
			 (unsigned char *)reason, strlen(reason));
	c.sent_code = code;
	emit("close-sent %d", code);
	return -1;
}

static int run_ctl(struct lws *wsi)	/* performs the head control action */
{
	struct ctl *k = c.ctl_head;
	unsigned char ping[LWS_PRE + sizeof(k->reason)];
	size_t n = strlen(k->reason);
	int r = 0;

	c.ctl_head = k->next;
	if (!c.ctl_head)
		c.ctl_tail = NULL;
	memcpy(ping + LWS_PRE, k->reason, n);
	if (k->kind == CTL_PING)
		r = lws_write(wsi, ping + LWS_PRE, n, LWS_WRITE_PING) < (int)n ? -1 : 0;
	else if (k->kind == CTL_CLOSE)
		r = send_close(wsi, k->code, k->reason);
	else if (k->kind == CTL_MARK)
		emit("mark %s %llu", k->reason, c.bytes);
	else
		c.normal = c.done = c.reported = 1;
	free(k);
	return r;
}

/* One write per writable callback: a due control action, else a frame. */
static int on_writable(struct lws *wsi)
{
	int r;

	if (c.sent_code)	/* closing: nothing more goes out */
		return -1;
	if (c.stopping)
		return send_close(wsi, 1000, "");
	if (c.ctl_head && c.ctl_head->after <= c.written) {
		r = run_ctl(wsi);
	} else if (c.q.head) {
		r = sb_queue_write(&c.q, wsi);
		c.written += r >= 0;
	} else {
		return 0;
	}
	if (r < 0)
		return -1;
	if (c.q.head || c.ctl_head)
		lws_callback_on_writable(wsi);
	return 0;
}

/*** stdin and directives ****************************************************/

static int dir_close(char *args)	/* !close CODE [REASON] */
{
	char *end;
	long code = strtol(args, &end, 10);

	if (end == args || code < 1000 || code > 4999)
		return -1;
	while (*end == ' ')
		end++;
	push_ctl(CTL_CLOSE, (int)code, end);
	return 0;
}

static int dir_ping(char *args)	/* !ping [PAYLOAD]: a WebSocket PING */
{
	push_ctl(CTL_PING, 0, args);
	return 0;
}

static int dir_mark(char *args)	/* !mark LABEL: how many bytes came before what was sent */
{
	push_ctl(CTL_MARK, 0, args);
	return 0;
}

static int dir_quit(char *args)	/* !quit: leave without a close handshake */
{
	(void)args;
	push_ctl(CTL_QUIT, 0, NULL);
	return 0;
}

/* !big N [REQID]: a command message of exactly N bytes, data padded with x. */
static int dir_big(char *args)
{
	char id[64] = "big", *head, *buf;
	long n = 0;
	size_t hl;

	if (sscanf(args, "%ld %63s", &n, id) < 1)
		return -1;
	head = sb_envelope("command", id, cJSON_CreateString(""));
	hl = strlen(head) - 2;	/* up to the data's closing quote */
	if (n < (long)hl + 2 || n > (long)RX_MAX || strcmp(head + hl, "\"}")) {
		free(head);
		return -1;
	}
	buf = malloc((size_t)n);
	if (!buf)
		abort();
	memcpy(buf, head, hl);
	memset(buf + hl, 'x', (size_t)n - hl - 2);
	memcpy(buf + n - 2, "\"}", 2);
	push_frame(buf, (size_t)n);
	free(buf);
	free(head);
	return 0;
}

/* Queues an envelope built by sb_envelope (which consumes data). */
static void push_envelope(const char *op, const char *request_id, cJSON *data)
{
	char *s = sb_envelope(op, request_id, data);

	push_frame(s, strlen(s));
	free(s);
}

/* !send OP REQID [DATA]: an envelope; DATA is JSON (default null). */
static int dir_send(char *args)
{
	char op[64], id[160];
	int used = (int)strlen(args);
	cJSON *data = NULL;

	if (sscanf(args, "%63s %159s %n", op, id, &used) < 2)
		return -1;
	if (args[used] && !(data = cJSON_Parse(args + used)))
		return -1;
	push_envelope(op, id, data);
	return 0;
}

/* !disconnect REQID CODE [MSG]: a disconnect as a device sends it. */
static int dir_disconnect(char *args)
{
	char id[160], code[16];
	int used = (int)strlen(args);

	if (sscanf(args, "%159s %15s %n", id, code, &used) < 2)
		return -1;
	push_envelope("disconnect", id, sb_status(code, args + used));
	return 0;
}

static int hex_value(int ch)	/* one hex digit's value, -1 if none */
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	ch |= 0x20;
	return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

static int dir_raw(char *args)	/* !raw HEX: these bytes as a text frame */
{
	size_t n = 0;
	int hi = -1;

	for (char *s = args; *s; s++) {
		int v = hex_value((unsigned char)*s);

		if (*s == ' ')
			continue;
		if (v < 0)
			return -1;
		if (hi < 0) {
			hi = v;
			continue;
		}
		args[n++] = (char)(hi << 4 | v);
		hi = -1;
	}
	if (hi >= 0 || n == 0)
		return -1;
	push_frame(args, n);
	return 0;
}

static const struct directive {
	const char *name;
	int (*run)(char *args);	/* 0 on success, -1 on bad arguments */
} directives[] = {
	{ "close", dir_close },
	{ "ping",  dir_ping },
	{ "big",   dir_big },
	{ "raw",   dir_raw },
	{ "send",  dir_send },
	{ "disconnect", dir_disconnect },
	{ "mark",  dir_mark },
	{ "quit",  dir_quit },
};

static void run_directive(char *line)	/* dispatches `!NAME ARGS` */
{
	size_t n = strcspn(line + 1, " ");
	char *args = line + 1 + n;

	while (*args == ' ')
		args++;
	for (size_t i = 0; i < LWS_ARRAY_SIZE(directives); i++) {
		if (strlen(directives[i].name) != n || strncmp(directives[i].name, line + 1, n))
			continue;
		if (directives[i].run(args) < 0)
			emit("error bad arguments: %s", line);
		return;
	}
	emit("error unknown directive: %s", line);
}

static void on_line(char *line, size_t len)	/* one stdin line, no newline */
{
	if (len == 0 || line[0] == '#')
		return;
	if (line[0] == '!') {
		line[len] = '\0';
		run_directive(line);
		return;
	}
	push_frame(line, len);
}

/* Splits what stdin gave into lines; keeps the unfinished tail. */
static void on_stdin_bytes(const char *p, size_t len)
{
	char *nl;
	size_t used = 0;

	sb_rx_append(&c.line, p, len, (size_t)-1 / 2);
	while ((nl = memchr(c.line.p + used, '\n', c.line.len - used))) {
		*nl = '\0';
		on_line(c.line.p + used, (size_t)(nl - c.line.p) - used);
		used = (size_t)(nl - c.line.p) + 1;
	}
	memmove(c.line.p, c.line.p + used, c.line.len - used);
	c.line.len -= used;
}

/* Reads what stdin has; -1 at EOF (lws then closes our dup of fd 0). */
static int on_stdin(struct lws *wsi)
{
	char buf[READ_CHUNK];
	ssize_t n = read(lws_get_socket_fd(wsi), buf, sizeof(buf));

	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (n > 0) {
		on_stdin_bytes(buf, (size_t)n);
		return 0;
	}
	if (c.line.len) {	/* a last line without newline */
		sb_rx_append(&c.line, "", 1, (size_t)-1 / 2);
		on_line(c.line.p, c.line.len - 1);
		c.line.len = 0;
	}
	return -1;
}

/*** signals *****************************************************************/

static int signal_fd(void)	/* blocks SIGTERM/SIGINT, returns a signalfd */
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

/* First signal: close 1000 (or stop if not connected); second: stop now. */
static int on_signal(struct lws *wsi)
{
	struct signalfd_siginfo si;

	if (read(lws_get_socket_fd(wsi), &si, sizeof(si)) != sizeof(si))
		return 0;
	if (c.stopping || !c.wsi) {
		c.done = 1;
		return 0;
	}
	c.stopping = 1;
	lws_callback_on_writable(c.wsi);
	return 0;
}

/*** the lws callbacks *******************************************************/

/* Adds `tunnel_access_token: TOKEN` to the upgrade request. */
static int append_token(struct lws *wsi, void *in, size_t len)
{
	unsigned char **p = in, *end = *p + len;

	if (!c.token)
		return 0;
	return lws_add_http_header_by_name(wsi, (const unsigned char *)"tunnel_access_token:",
					   (const unsigned char *)c.token,
					   (int)strlen(c.token), p, end) ? -1 : 0;
}

static void on_established(struct lws *wsi)	/* `open`, flush what waits */
{
	c.wsi = wsi;
	emit("open");
	if (c.q.head || c.ctl_head)
		lws_callback_on_writable(wsi);
}

static int ws_callback(struct lws *wsi, enum lws_callback_reasons reason,
		       void *user, void *in, size_t len)	/* the WebSocket */
{
	(void)user;
	switch (reason) {
	case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
		return append_token(wsi, in, len);
	case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
		on_connect_error(wsi, in);
		return 0;
	case LWS_CALLBACK_CLIENT_ESTABLISHED:
		on_established(wsi);
		return 0;
	case LWS_CALLBACK_CLIENT_RECEIVE:
		return on_receive(wsi, in, len);
	case LWS_CALLBACK_CLIENT_RECEIVE_PONG:
		emit_bytes(len ? "pong-ws " : "pong-ws", in, len);
		return 0;
	case LWS_CALLBACK_CLIENT_WRITEABLE:
		return c.done ? -1 : on_writable(wsi);
	case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
		on_peer_close(in, len);
		return 0;
	case LWS_CALLBACK_CLIENT_CLOSED:
		on_closed();
		return 0;
	default:
		return 0;
	}
}

static int stdin_callback(struct lws *wsi, enum lws_callback_reasons reason,
			  void *user, void *in, size_t len)	/* fd 0 */
{
	(void)user, (void)in, (void)len;
	return reason == LWS_CALLBACK_RAW_RX_FILE ? on_stdin(wsi) : 0;
}

static int signal_callback(struct lws *wsi, enum lws_callback_reasons reason,
			   void *user, void *in, size_t len)	/* signalfd */
{
	(void)user, (void)in, (void)len;
	return reason == LWS_CALLBACK_RAW_RX_FILE ? on_signal(wsi) : 0;
}

static const struct lws_protocols protocols[] = {
	{ "tunnel-client", ws_callback, 0, 0, 0, NULL, 0 },	/* first: the default */
	{ "tc-stdin", stdin_callback, 0, 0, 0, NULL, 0 },
	{ "tc-signal", signal_callback, 0, 0, 0, NULL, 0 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 }
};

/*** main ********************************************************************/

static struct lws_context *make_context(void)	/* client-only context */
{
	struct lws_context_creation_info info;

	memset(&info, 0, sizeof(info));
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.protocols = protocols;
	info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
	info.client_ssl_ca_filepath = c.cacert;
	return lws_create_context(&info);
}

/* Adopts fd (owned by lws from now on) as a RAW_FILE of protocol prot. */
static void adopt_fd(int fd, const char *prot)
{
	lws_sock_file_fd_type u;
	struct lws_vhost *vh = lws_get_vhost_by_name(c.ctx, "default");

	if (fd < 0)
		return;
	u.filefd = (lws_filefd_type)fd;
	if (!vh || !lws_adopt_descriptor_vhost(vh, LWS_ADOPT_RAW_FILE_DESC, u, prot, NULL)) {
		emit("error cannot adopt fd %d for %s", fd, prot);
		close(fd);
	}
}

static int connect_url(void)	/* starts the WebSocket handshake; -1 on a bad URL */
{
	struct lws_client_connect_info i;
	const char *prot, *path;
	char *copy = strdup(c.url), fullpath[1024];
	int ok;

	memset(&i, 0, sizeof(i));
	if (lws_parse_uri(copy, &prot, &i.address, &i.port, &path) ||
	    (strcmp(prot, "ws") && strcmp(prot, "wss"))) {
		free(copy);
		return -1;
	}
	snprintf(fullpath, sizeof(fullpath), "/%s", path);
	i.context = c.ctx;
	i.path = fullpath;
	i.host = i.origin = i.address;
	i.ietf_version_or_minus_one = -1;
	if (!strcmp(prot, "wss"))
		i.ssl_connection = LCCSCF_USE_SSL | (c.insecure ? LCCSCF_ALLOW_SELFSIGNED |
			LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK | LCCSCF_ALLOW_EXPIRED |
			LCCSCF_ALLOW_INSECURE : 0);
	ok = lws_client_connect_via_info(&i) != NULL;
	free(copy);
	return ok ? 0 : 1;
}

static void release(void)	/* frees everything main set up */
{
	lws_sul_cancel(&c.sul_rate);
	lws_context_destroy(c.ctx);
	sb_queue_clear(&c.q);
	free_ctls();
	sb_rx_free(&c.rx);
	sb_rx_free(&c.line);
	for (int i = 0; i < c.nsaves; i++)
		fclose(c.saves[i].f);
	free(c.token);
}

int main(int argc, char **argv)
{
	int r;

	sb_prog = "tunnel-client";
	parse_args(argc, argv);
	lws_set_log_level(LLL_ERR, sb_lws_log);
	c.ctx = make_context();
	if (!c.ctx) {
		emit("error cannot create lws context");
		return 1;
	}
	adopt_fd(signal_fd(), "tc-signal");
	adopt_fd(dup(0), "tc-stdin");
	r = connect_url();
	if (r < 0) {
		release();
		die("--url must be ws://HOST[:PORT]/PATH or wss://HOST[:PORT]/PATH");
	}
	if (r > 0)
		emit("error connect failed");
	while (!r && !c.done && lws_service(c.ctx, 0) >= 0)
		;
	if (c.discard)
		emit("bytes %llu messages %llu", c.bytes, c.messages);
	release();
	return c.normal ? 0 : 1;
}
