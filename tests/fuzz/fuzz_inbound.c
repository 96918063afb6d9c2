/*
 * fuzz_inbound: libFuzzer target for everything a device or the platform can
 * send the console.  Inbound frames are the console's widest attack surface:
 * they come from the network, README Protocol §2 says they may hold invalid UTF-8
 * and any JSON shape, and their data goes straight into a terminal emulator,
 * the scrollback ring, the asciicast recorder and the screen.
 *
 * The console's own code runs: tunnel_message() (section 8 of tunnel_tui.c)
 * decodes, routes and feeds the terminal emulator, ends sessions on disconnect, handles
 * connect_tunnel (and reopening) and pong, without curses input or an lws
 * context (t->wsi is NULL, app.ui_up is 0).
 *
 * The fixture: one tunnel "fuzz-dev" (80x24 PTY, online), built once.  Each
 * input gets three fresh live sessions on it with known request_ids: A and B
 * are 80x24, B is the latest (where unknown ids go), W is 200x12 as a pty =
 * auto session opened on a wide terminal is; each records into an in-memory
 * file.  The input's hash picks the reopen mode and whether passwords are
 * remembered.  Sessions are made fresh rather than revived across inputs so
 * that every crash reproduces from its one input file (-minimize_crash and
 * the regressions/ replay need that); within an input, ended sessions are
 * put back to live between the steps below, not between frames.
 *
 * Each input goes, in order:
 *   1. whole, as one frame;
 *   2. as a sequence of frames, cut at every 0x1e byte (RFC 7464's record
 *      separator) or, with none, at 1-3 offsets derived from the input, with
 *      the console's own state machine between frames (disconnects end
 *      sessions, connect_tunnel reopens them);
 *   3. every frame's string data again, re-encoded as 2-4 command_response
 *      messages cut at data-derived offsets, so escape sequences and UTF-8
 *      characters split across messages (§4.6) are fed the way devices do;
 *   4. for 1 input in 256: a burst of more lines than the scrollback keeps.
 * An input that holds "__TT_" (the --exec markers' prefix) runs in --exec
 * mode: session A's output then goes to the batch parser that looks for the
 * BEGIN and END markers (nonce 0123456789abcdef) instead of its terminal.
 * Then every session is checked (state, scrollback ring, the search text of
 * every row with a canary after search_back()'s 4096-byte buffer, as ASan
 * misses an overrun that far; its recording is valid UTF-8 asciicast with
 * one JSON event per line), the screen is drawn with curses into /dev/null,
 * and utf8_sanitize() is checked on the raw input: valid UTF-8 out, at most 3
 * bytes held back, identity on valid input, the same result whole or in
 * pieces.
 */
#define TUNNEL_TUI_NO_MAIN
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"	/* main's helpers */
#include "../../tunnel_tui.c"
#include "fuzz_util.h"
#pragma GCC diagnostic pop

#define NSESS		3
#define MAX_FRAMES	64		/* frames of one input that are fed */
#define ROW_CAP		4096		/* search_back()'s row buffer */
#define ROW_GUARD	32768		/* canary bytes after it */
#define BURST_LINES	100		/* lines per burst frame */
#define NONCE		"0123456789abcdef"	/* the --exec markers' */

static const char *const known_ids[NSESS] = {
	"11111111-1111-4111-8111-111111111111",	/* A: 80x24 */
	"22222222-2222-4222-8222-222222222222",	/* B: 80x24, the latest */
	"33333333-3333-4333-8333-333333333333",	/* W: 200x12 */
};

static struct tunnel fx;		/* the fixture tunnel */
static struct session *sess[NSESS];
static int rec_fd[NSESS];		/* in-memory recording files */
static char rowbuf[ROW_CAP + ROW_GUARD];
static struct batch fx_batch;		/* --exec mode, for inputs that ask */
static struct batch_job fx_job;

/*** small helpers **********************************************************/

/* Aborts with a reason: libFuzzer reports the input as a crash. */
static void fail(int line, const char *what)
{
	fprintf(stderr, "fuzz_inbound.c:%d: check failed: %s\n", line, what);
	abort();
}
#define CHECK(cond) do { if (!(cond)) fail(__LINE__, #cond); } while (0)

/* Strict UTF-8 (RFC 3629): no overlongs, surrogates or code points > U+10FFFF. */
static int utf8_valid(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;

	for (size_t i = 0; i < n;) {
		unsigned char c = u[i];
		size_t k = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 :
			   c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
		unsigned char lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80;
		unsigned char hi = c == 0xed ? 0x9f : c == 0xf4 ? 0x8f : 0xbf;

		if (!k || i + k > n)
			return 0;
		if (k > 1 && (u[i + 1] < lo || u[i + 1] > hi))
			return 0;
		for (size_t j = 2; j < k; j++)
			if ((u[i + j] & 0xc0) != 0x80)
				return 0;
		i += k;
	}
	return 1;
}

/*** the fixture ************************************************************/

/* An asciicast recording into rec_fd[i], emptied, so rec_output() runs. */
static void attach_recording(struct session *s, int i)
{
	struct recording *r = xcalloc(sizeof(*r));

	CHECK(ftruncate(rec_fd[i], 0) == 0 && lseek(rec_fd[i], 0, SEEK_SET) == 0);
	r->fd = dup(rec_fd[i]);
	CHECK(r->fd >= 0);
	r->start_us = now_us();
	snprintf(r->path, sizeof(r->path), "fuzz-%d.cast", i);
	s->rec = r;
}

/* Puts session i back to live with its known id (a reopen gives a random one). */
static void revive_session(int i)
{
	struct session *s = sess[i];

	s->state = S_LIVE;
	s->dropped = 0;
	copy_str(s->request_id, sizeof(s->request_id), known_ids[i]);
}

/* Every session live again, B the latest, the tunnel online. */
static void revive(void)
{
	for (int i = 0; i < NSESS; i++)
		revive_session(i);
	fx.latest = sess[1];
	fx.state = T_ONLINE;
	fx.device_ready = 1;
}

/* Three fresh sessions on the reset tunnel; reopen mode chosen by the input. */
static void fixture_up(uint32_t h)
{
	fx.state = T_ONLINE;
	fx.device_ready = 1;
	fx.dropped = 0;
	fx.last_error_report_us = 0;
	fx.event[0] = '\0';
	fx.rtt_ms = -1;
	copy_str(fx.ping_id, sizeof(fx.ping_id), "ping-1");
	fx.ping_sent_us = now_us();
	fx.cfg.reopen = (enum reopen)(h % 3);
	fx.cfg.remember_password = (h >> 2) & 1;
	for (int i = 0; i < NSESS; i++) {
		fx.cfg.pty_cols = i == 2 ? 200 : 80;
		fx.cfg.pty_rows = i == 2 ? 12 : 24;
		sess[i] = session_new(&fx, "user");
		if (fx.cfg.remember_password) {
			sess[i]->password = secret_dup("pw", 2);
			sess[i]->password_len = 2;
		}
		attach_recording(sess[i], i);
	}
	fx.cfg.pty_cols = 80;
	fx.cfg.pty_rows = 24;
	revive();
	app.sel_tunnel = &fx;
	app.sel_session = sess[h >> 3 & 1];
	app.mode = M_NORMAL;
	app.zoom = 0;
}

/* Frees the sessions and whatever a reopen queued; the tunnel stays. */
static void fixture_down(void)
{
	while (fx.sessions) {
		struct session *s = fx.sessions;

		fx.sessions = s->next;
		session_free(s);
	}
	fx.latest = NULL;
	app.sel_session = NULL;
	lane_clear(&fx.control);
	lane_clear(&fx.held);
	lane_clear(&fx.bulk);
}

/* --exec mode: session A runs a command; its output goes to the parser. */
static void batch_up(void)
{
	memset(&fx_job, 0, sizeof(fx_job));
	fx_job.tunnel = &fx;
	fx_job.session = sess[0];
	fx_job.exit_code = -1;
	fx_job.start_us = now_us();
	fx_job.file = fopen("/dev/null", "w");
	CHECK(fx_job.file);
	fx_batch.command = "uname -a";
	copy_str(fx_batch.nonce, sizeof(fx_batch.nonce), NONCE);
	fx_batch.jobs = &fx_job;
	fx_batch.njobs = 1000;	/* never all done: quit_now() needs an lws context */
	fx_batch.done = 0;
	sess[0]->job = &fx_job;
	app.batch = &fx_batch;
}

/* Back to interactive mode; what the job parsed is consistent. */
static void batch_down(void)
{
	CHECK(!fx_job.done || fx_job.status);
	CHECK(fx_job.done || !memchr(fx_job.line.p ? fx_job.line.p : "", '\n', fx_job.line.len));
	CHECK(!fx_job.begun || fx_job.sent);
	if (fx_job.file)
		fclose(fx_job.file);
	buf_free(&fx_job.pre);
	buf_free(&fx_job.line);
	buf_free(&fx_job.held);
	sess[0]->job = NULL;
	app.batch = NULL;
}

/*** checks *****************************************************************/

/* The rows are the grid's own, each once, however it scrolled. */
static void check_grid(const struct grid *g, const struct session *s)
{
	static unsigned char seen[4096];

	CHECK(g->row && g->rows == s->rows && g->cols == s->cols && g->rows <= (int)sizeof(seen));
	memset(seen, 0, (size_t)g->rows);
	for (int r = 0; r < g->rows; r++) {
		ptrdiff_t k = g->row[r] - 1 - g->cells, stride = g->cols + 1;

		CHECK(k >= 0 && k % stride == 0 && k / stride < g->rows && !seen[k / stride]);
		seen[k / stride] = 1;
		for (int c = (int)*row_used(g->row[r]); c < g->cols; c += 1 + c / 8)	/* past "used": blank (spot checks) */
			CHECK(!g->row[r][c].ch && g->row[r][c].fg == COLOR_DEFAULT && g->row[r][c].bg == COLOR_DEFAULT &&
			      !g->row[r][c].attrs && g->row[r][c].width == 1);
	}
}

/* The session list, the routing target and every scrollback ring are sane. */
static void check_invariants(void)
{
	int n = 0;

	for (struct session *s = fx.sessions; s; s = s->next, n++) {
		CHECK(s->state >= S_PENDING && s->state <= S_ENDED);
		CHECK(s->state != S_ENDED || s->note[0]);
		CHECK(strnlen(s->note, sizeof(s->note)) < sizeof(s->note));
		CHECK(s->sb_count >= 0 && s->sb_count <= SCROLLBACK_LINES);
		CHECK(s->sb_head >= 0 && s->sb_head < SCROLLBACK_LINES);
		CHECK(s->scroll >= 0 && s->scroll <= s->sb_count);
		for (int i = 0; i < s->sb_count; i++) {
			const struct sbline *l = sb_line(s, i);

			CHECK(l && l->cols <= s->cols && l->nruns <= l->cols &&
			      l->nruns * sizeof(struct sbrun) + l->cols <= l->room);
		}
		check_grid(&s->primary, s);
		if (s->alt.row)
			check_grid(&s->alt, s);
		CHECK(s->grid == (s->altscreen ? &s->alt : &s->primary));
	}
	CHECK(n == NSESS);
	CHECK(!fx.latest || fx.latest->state != S_ENDED);
}

/* Every history row as copy mode's search reads it: nothing written past
 * cap; copy mode's moves stay inside the history. */
static void check_rows(struct session *s)
{
	static char guard[ROW_GUARD];

	memset(guard, 0xa5, sizeof(guard));
	memcpy(rowbuf + ROW_CAP, guard, sizeof(guard));
	for (int vr = 0; vr < s->sb_count + s->rows; vr++)
		row_text(s, vr, rowbuf, ROW_CAP);
	if (memcmp(rowbuf + ROW_CAP, guard, sizeof(guard)))
		fail(__LINE__, "row_text() wrote past the end of its buffer");
	copy_str(app.search, sizeof(app.search), "\x01");	/* never matches: all rows */
	app.search_len = 1;
	s->scroll = 0;
	app.copy = (struct copy){ s, history_rows(s) - 1, s->cols - 1, SEL_NONE, 0, 0, 0 };
	copy_search(&app.copy, 0);
	copy_word(&app.copy, -1);
	copy_rows(&app.copy, -(1 << 20));
	copy_word(&app.copy, +1);
	copy_line_edge(&app.copy, 1);
	copy_rows(&app.copy, 1 << 21);
	copy_word(&app.copy, 0);
	CHECK(app.copy.row >= 0 && app.copy.row < history_rows(s) && app.copy.col >= 0 && app.copy.col < s->cols);
	CHECK(s->scroll >= 0 && s->scroll <= s->sb_count);
	app.copy.s = NULL;
}

/* The recording is what asciinema plays: UTF-8, one JSON event per line. */
static void check_recording(int i)
{
	struct stat st;
	char *p, *line, *nl;

	CHECK(fstat(rec_fd[i], &st) == 0);
	if (!st.st_size)
		return;
	p = xrealloc(NULL, (size_t)st.st_size);
	CHECK(pread(rec_fd[i], p, (size_t)st.st_size, 0) == st.st_size);
	if (!utf8_valid(p, (size_t)st.st_size))
		fail(__LINE__, "the asciicast recording is not valid UTF-8");
	for (line = p; line < p + st.st_size; line = nl + 1) {
		cJSON *ev;

		nl = memchr(line, '\n', (size_t)(p + st.st_size - line));
		CHECK(nl);
		ev = cJSON_ParseWithLength(line, (size_t)(nl - line));
		CHECK(cJSON_IsArray(ev) && cJSON_GetArraySize(ev) == 3 &&
		      cJSON_IsString(cJSON_GetArrayItem(ev, 2)));
		cJSON_Delete(ev);
	}
	free(p);
}

/* Copy mode over the history: the copied text is valid UTF-8 and no longer
 * than what the selected rows hold. */
static void check_copy(struct session *s, uint32_t h)
{
	int rows = history_rows(s);
	struct buf text = { 0 };

	app.copy = (struct copy){ s, (int)(h >> 9) % rows, (int)(h >> 17) % s->cols, (enum sel)(h >> 24 & 3),
				  (int)(h >> 12) % rows, (int)(h >> 20) % s->cols, 0 };
	buf_append(&text, "", 0);
	selection_text(s, &app.copy, &text);
	if (!utf8_valid(text.p, text.len))
		fail(__LINE__, "copied text is not valid UTF-8");
	CHECK(text.len <= (size_t)(abs(app.copy.row - app.copy.arow) + 1) * ((size_t)s->cols * 4 + 1));
	buf_free(&text);
}

/* The screen as curses would show it, one session (chosen by h) selected. */
static void draw_one(uint32_t h)
{
	struct session *s = sess[(h >> 4) % NSESS];

	app.zoom = h >> 6 & 1;
	app.sel_session = s;
	s->scroll = (int)(h >> 7) % (s->sb_count + 1);
	app.mode = s->scroll ? M_COPY : M_NORMAL;
	if (s->scroll)	/* copy mode: a cursor and a selection anywhere */
		check_copy(s, h);
	draw();
	app.mode = M_NORMAL;
	app.copy.s = NULL;
}

/*
 * utf8_sanitize() (the asciicast writer's): valid UTF-8 out, all but at most
 * 3 bytes consumed (an incomplete sequence), valid input passes unchanged,
 * and fed in pieces with the held-back tail carried (as rec_output() does) it
 * gives the same bytes.
 */
static void check_sanitizer(const char *p, size_t n, uint32_t seed)
{
	struct buf whole = { 0 }, parts = { 0 }, tail = { 0 };
	size_t used = utf8_sanitize(&whole, p, n), cuts[4], from = 0;
	int k = cut_points(&(uint32_t){ seed }, n, cuts, 4);

	CHECK(used <= n && n - used <= 3);
	if (!utf8_valid(whole.p ? whole.p : "", whole.len))
		fail(__LINE__, "utf8_sanitize() produced invalid UTF-8");
	if (used < n) {	/* held back: a lead byte and continuations only */
		CHECK((unsigned char)p[used] >= 0xc2 && (unsigned char)p[used] <= 0xf4);
		for (size_t i = used + 1; i < n; i++)
			CHECK(((unsigned char)p[i] & 0xc0) == 0x80);
	}
	if (utf8_valid(p, n))
		CHECK(used == n && whole.len == n && (!n || !memcmp(whole.p, p, n)));
	for (int i = 0; i <= k; i++) {
		size_t to = i < k ? cuts[i] : n;

		buf_append(&tail, p + from, to - from);
		buf_consume(&tail, utf8_sanitize(&parts, tail.p, tail.len));
		from = to;
	}
	CHECK(parts.len == whole.len && !memcmp(parts.p ? parts.p : "", whole.p ? whole.p : "", whole.len));
	CHECK(tail.len == n - used);
	buf_free(&whole);
	buf_free(&parts);
	buf_free(&tail);
}

/*** feeding ****************************************************************/

/* One frame through the console's whole inbound path. */
static void feed(const char *p, size_t n)
{
	tunnel_message(&fx, p, n);
	check_invariants();
}

/* data as one command_response for request_id, encoded as a device does. */
static void feed_output(const char *request_id, const char *data, size_t n)
{
	struct buf json = { 0 }, msg = { 0 };

	json_string(&json, data, n);
	encode_message(&msg, OP_COMMAND_RESPONSE, request_id, json.p);
	feed(msg.p, msg.len);
	buf_free(&json);
	buf_free(&msg);
}

/* The frame's string data again, cut into 2-4 command_response messages. */
static void feed_data_split(const char *frame, size_t n)
{
	struct inbound m;
	char err[160];
	size_t cuts[3], from = 0;
	int k;

	if (decode_message(frame, n, &m, err, sizeof(err)) < 0)
		return;
	if (m.data && m.data_len) {
		k = cut_points(&(uint32_t){ hash_bytes(m.data, m.data_len) }, m.data_len, cuts, 3);
		for (int i = 0; i <= k; i++) {
			size_t to = i < k ? cuts[i] : m.data_len;

			feed_output(m.request_id ? m.request_id : "", m.data + from, to - from);
			from = to;
		}
	}
	cJSON_Delete(m.root);
}

/* Cuts the input into frames: at 0x1e bytes, else at 1-3 derived offsets. */
static int split_frames(const char *p, size_t n, uint32_t h, size_t *start, size_t *len)
{
	size_t cuts[3], from = 0;
	int k = 0, c;

	if (memchr(p, 0x1e, n)) {
		for (size_t i = 0; i <= n && k < MAX_FRAMES; i++)
			if (i == n || p[i] == 0x1e) {
				start[k] = from;
				len[k++] = i - from;
				from = i + 1;
			}
		return k;
	}
	c = cut_points(&(uint32_t){ h }, n, cuts, 1 + (int)(h % 3));
	for (int i = 0; i <= c; i++) {
		size_t to = i < c ? cuts[i] : n;

		start[k] = from;
		len[k++] = to - from;
		from = to;
	}
	return k;
}

/* More lines than the scrollback keeps, each starting with input bytes. */
static void scroll_burst(const char *p, size_t n)
{
	struct buf lines = { 0 };
	size_t head = n < 32 ? n : 32;

	for (int i = 0; i < BURST_LINES; i++) {
		buf_append(&lines, p, head);
		buf_printf(&lines, " line %d\r\n", i);
	}
	for (int i = 0; i <= SCROLLBACK_LINES / BURST_LINES + 1; i++)
		feed_output(known_ids[1], lines.p, lines.len);
	buf_free(&lines);
}

/*** libFuzzer **************************************************************/

/* The tunnel, curses on /dev/null (never on the fuzzer's terminal), memfds. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	FILE *out = fopen("/dev/null", "w"), *in = fopen("/dev/null", "r");

	(void)argc;
	(void)argv;
	setlocale(LC_ALL, "C.UTF-8");
	cJSON_InitHooks(&(cJSON_Hooks){ malloc, wiping_free });
	copy_str(fx.cfg.name, sizeof(fx.cfg.name), "fuzz-dev");
	copy_str(fx.cfg.username, sizeof(fx.cfg.username), "user");
	fx.cfg.pty_cols = 80;
	fx.cfg.pty_rows = 24;
	app.tunnels = app.sel_tunnel = &fx;
	for (int i = 0; i < NSESS; i++) {
		rec_fd[i] = memfd_create("fuzz-cast", MFD_CLOEXEC);
		CHECK(rec_fd[i] >= 0);
	}
	CHECK(out && in && newterm("xterm-256color", out, in));
	resize_term(30, 110);
	start_color();
	use_default_colors();
	app.colors = COLORS;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = size ? (const char *)data : "";	/* never NULL */
	uint32_t h = hash_bytes(data, size);
	size_t start[MAX_FRAMES], len[MAX_FRAMES];
	int k;

	fixture_up(h);
	if (memmem(p, size, "__TT_", 5))
		batch_up();
	feed(p, size);
	revive();
	k = split_frames(p, size, h, start, len);
	for (int i = 0; i < k; i++)
		feed(p + start[i], len[i]);
	revive();
	for (int i = 0; i < k; i++)
		feed_data_split(p + start[i], len[i]);
	if (h % 256 == 0)
		scroll_burst(p, size);
	for (int i = 0; i < NSESS; i++) {
		check_rows(sess[i]);
		check_recording(i);
	}
	draw_one(h);
	if (app.batch)
		batch_down();
	fixture_down();
	check_sanitizer(p, size, h);
	return 0;
}
