/* ptyharness: the measuring hand of `make bench` (tests/bench/run.sh).
 *
 *   ptyharness gen FILE BYTES        writes BYTES of realistic terminal output
 *                                    (log lines, SGR colours, 256/true colour,
 *                                    CJK, box drawing, progress bars redrawn
 *                                    with CR/EL, cursor-up status columns)
 *   ptyharness stream INTERVAL_MS    a coloured log line every INTERVAL_MS, forever
 *   ptyharness drive [--size CxR] [--client RID FIFO USER PASSFILE] -- CMD...
 *
 * drive plays the user's terminal.  It runs CMD on a pty of CxR (default
 * 120x40), reads everything CMD draws into a screen model (libvterm's parser
 * and state layer over a cheap grid of characters, so scrolling costs
 * O(rows), never the measured program's time), answers terminal queries, and
 * obeys one command per stdin line, answering one line on stdout.  Waiting is
 * poll() on the output: nothing here sleeps to find out whether something
 * happened; the clock is CLOCK_MONOTONIC, read right after write() of a key
 * and right after the read() whose bytes completed the awaited screen.
 *
 * --client: CMD is `tunnel-client ... --discard --save RID FIFO`, the protocol
 * baseline.  Its stdin gets JSON frames (connect as USER with the password in
 * PASSFILE, then keys as command frames of request_id RID); the screen model
 * is fed from FIFO, the session's raw output.
 *
 * Commands (TEXT: C escapes \r \n \t \e \\ \xHH; REGEX: POSIX extended, matched
 * against a screen row's text with trailing blanks removed):
 *   send TEXT                        type TEXT                  -> ok
 *   drain MS                         read for MS ms             -> ok BYTES
 *   wait MS REGEX                    until a row matches        -> ok CMD_MS SPAWN_MS
 *   waitcur MS REGEX                 until the cursor's row matches
 *   lat N GAPMIN GAPMAX FILE REGEX   N keystroke echoes at a prompt (cursor row
 *                                    matches REGEX); GAP ms between keys; the
 *                                    samples are appended to FILE (ms, one a
 *                                    line) -> ok N P50 P90 P99 MAX MEAN
 *   tput MS MARKER TEXT              type TEXT, time until MARKER is on screen
 *                                    (client: in the raw stream) -> ok MS BYTES
 *   ctrlc MS REGEX                   Ctrl-C, time until the cursor row matches
 *   typist LINES SETTLE PLEN FILE REGEX   a person typing command lines at a
 *                                    shell prompt (see do_typist) -> ok KEYS
 *                                    WITHIN_20MS PCT SHOWN_P50 ECHO_P50 WRONG
 *                                    UNDERLINED_LEFT NEVER_SHOWN LINES_DIFFERENT
 *   ctl FIFO LINE                    LINE to a control FIFO (linkem's); sets the mark
 *   mark                             sets the mark: the *m commands count from it
 *   waitm / gonem / waitmcur MS REGEX   until a row matches / none does / the
 *                                    cursor's row does    -> ok MS_SINCE_MARK
 *   waitrow MS ROW REGEX             until row ROW matches      -> ok MS_SINCE_MARK
 *   untilm MS                        reads until MS after the mark
 *   since                            -> ok MS_SINCE_MARK
 *   autotype GAP_MS [reset]          from now on a key (a b c ... z a ...) every
 *                                    GAP_MS, whatever else runs; 0 stops; reset:
 *                                    the count of keys typed starts again -> ok TYPED
 *   count MS                         until a remote key counter ("got N" on the
 *                                    cursor's row) has the first key typed after the mark
 *                                    -> ok MS_SINCE_MARK MS_SINCE_THAT_KEY N TYPED
 *   trace FILE [COLS] | trace off     every change of the status bar and of the
 *                                    first COLS columns of the other rows, with
 *                                    the ms since the mark, to FILE
 *   rowtext OFFSET                   -> ok TEXT of the row OFFSET from the cursor's
 *   pid                              -> ok PID
 *   dump                             the screen to stderr       -> ok
 *   quit                             SIGTERM (then SIGKILL) the child, exit
 * A failed wait answers `timeout ...` and dumps the screen to stderr.  The
 * screen model keeps, beside each character, whether it was drawn underlined.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pty.h>
#include <regex.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <vterm.h>

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void die(const char *fmt, ...)
{
	va_list ap;

	fputs("ptyharness: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)	/* xorshift64: the same bytes on every run */
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state >> 16);
}
#define PICK(a) ((a)[rnd() % (sizeof(a) / sizeof(*(a)))])

/*** gen: realistic output ****************************************************/

static const char *const words[] = {
	"connection", "pump", "valve", "sensor", "reading", "retry", "timeout", "ok",
	"firmware", "update", "mqtt", "publish", "topic", "payload", "bytes", "flush",
	"watchdog", "reset", "voltage", "current", "pressure", "flow", "modbus", "slave",
	"register", "queue", "depth", "latency", "handshake", "session", "cache", "hit",
};
static const char *const modules[] = {
	"core", "net.mqtt", "io.modbus", "ota", "sensors", "storage", "tunnel", "cron",
};
static const char *const levels[] = {
	"\033[32mINFO \033[0m", "\033[32mINFO \033[0m", "\033[32mINFO \033[0m",
	"\033[36mDEBUG\033[0m", "\033[33mWARN \033[0m", "\033[1;31mERROR\033[0m",
};
static const char *const cjk[] = {	/* two columns each */
	"设备", "状态", "正常", "温度", "压力", "流量", "告警", "恢复", "连接", "断开",
	"升级", "成功", "失败", "重试", "传感器", "数据", "上报", "网关", "电压", "电流",
	"ポンプ", "バルブ", "接続", "完了", "상태", "정상",
};
static const char *const files[] = {
	"bin", "etc", "config.yaml", "firmware-2.4.1.bin", "logs", "run.sh", "data.db",
	"README.md", "lib", "tmp", "modbus.map", "certs", "backup.tar.gz", "node",
};
static const char *const file_sgr[] = {
	"\033[01;34m", "\033[01;32m", "\033[0m", "\033[01;31m", "\033[01;36m", "\033[00m",
};

struct out { char *p; size_t len, cap; };

static void out_add(struct out *o, const char *s, size_t n)
{
	if (o->len + n > o->cap) {
		o->cap = (o->cap + n) * 2;
		o->p = realloc(o->p, o->cap);
		if (!o->p)
			die("out of memory");
	}
	memcpy(o->p + o->len, s, n);
	o->len += n;
}

static void out_printf(struct out *o, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	out_add(o, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

static unsigned long line_no;

static void gen_log(struct out *o)	/* 2024-06-01 12:03:04.512 INFO  [net.mqtt] ... */
{
	int cols;

	line_no++;
	out_printf(o, "2024-06-01 %02lu:%02lu:%02lu.%03u %s [%s] ", line_no / 3600 % 24,
		   line_no / 60 % 60, line_no % 60, rnd() % 1000, PICK(levels), PICK(modules));
	cols = 40;
	while (cols < 60 + (int)(rnd() % 28)) {
		const char *w = PICK(words);

		if (rnd() % 5 == 0)
			out_printf(o, "%s=\033[1m%u\033[22m ", w, rnd() % 100000);
		else
			out_printf(o, "%s ", w);
		cols += (int)strlen(w) + 1 + (rnd() % 5 == 0 ? 6 : 0);
	}
	out_add(o, "\n", 1);
}

static void gen_ls(struct out *o)	/* ls --color=auto */
{
	int n = 4 + (int)(rnd() % 4);

	for (int i = 0; i < n; i++)
		out_printf(o, "%s%-16s\033[0m", PICK(file_sgr), PICK(files));
	out_add(o, "\n", 1);
}

static void gen_cjk(struct out *o)	/* 设备 pump-07 状态：正常 ... */
{
	int cols = 0;

	out_printf(o, "[%lu] ", line_no++);
	while (cols < 70) {
		const char *w = PICK(cjk);

		out_printf(o, "%s", w);
		cols += (int)strlen(w) / 3 * 2;
		if (rnd() % 3 == 0) {
			out_printf(o, " \033[35m%u.%u\033[0m ", rnd() % 500, rnd() % 10);
			cols += 7;
		} else {
			out_add(o, "，", 3);
			cols += 2;
		}
	}
	out_add(o, "\n", 1);
}

static void gen_progress(struct out *o)	/* redrawn in place: CR, EL */
{
	const char *name = PICK(files);

	for (int pct = 0; pct <= 100; pct += 20 + (int)(rnd() % 15)) {
		int fill = pct / 5;

		out_printf(o, "\r\033[2K%-20s [\033[32m%.*s\033[0m%*s] %3d%% %u.%uMB/s", name, fill,
			   "####################", 20 - fill, "", pct, rnd() % 20, rnd() % 10);
	}
	out_printf(o, "\r\033[2K%-20s [\033[32m####################\033[0m] 100%% done\n", name);
}

static void gen_table(struct out *o)	/* box drawing, 256 colours */
{
	if (rnd() % 4 == 0) {
		out_add(o, "├", 3);
		for (int i = 0; i < 60; i++)
			out_add(o, i % 15 == 14 ? "┼" : "─", 3);
		out_add(o, "┤\n", 4);
		return;
	}
	out_printf(o, "│ \033[38;5;%um%-12s\033[0m │ %8.2f │ \033[38;5;%um%-6s\033[0m │ %-22s │\n",
		   16 + rnd() % 216, PICK(words), (rnd() % 100000) / 100.0, 16 + rnd() % 216,
		   rnd() % 3 ? "ok" : "alarm", PICK(modules));
}

static void gen_status(struct out *o)	/* systemd style: text, then up and over */
{
	out_printf(o, "Starting %s %s service...\n", PICK(words), PICK(modules));
	out_printf(o, "\033[1A\033[70G\033[1;32m[  OK  ]\033[0m\n");
}

static void gen_truecolor(struct out *o)	/* 24-bit gradient bar */
{
	static const char *const blocks[] = { "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█" };
	int r = (int)(rnd() % 256);

	out_add(o, "load ", 5);
	for (int i = 0; i < 64; i++)
		out_printf(o, "\033[38;2;%d;%d;%dm%s", (r + i * 3) % 256, 200 - i * 2, i * 4,
			   PICK(blocks));
	out_add(o, "\033[0m\n", 5);
}

static int cmd_gen(int argc, char **argv)
{
	struct out o = { 0 };
	size_t want;
	FILE *f;

	if (argc != 4)
		die("usage: gen FILE BYTES");
	want = strtoull(argv[3], NULL, 10);
	while (o.len < want) {
		unsigned k = rnd() % 100;
		size_t before = o.len;

		if (k < 52)	/* shares of lines; by bytes the colour escapes weigh more */
			gen_log(&o);
		else if (k < 62)
			gen_ls(&o);
		else if (k < 77)
			gen_cjk(&o);
		else if (k < 82)
			gen_progress(&o);
		else if (k < 94)
			gen_table(&o);
		else if (k < 99)
			gen_status(&o);
		else
			gen_truecolor(&o);
		if (o.len > want) {	/* never cut a line (an escape, a character): pad */
			o.len = before;
			while (o.len < want) {
				size_t n = want - o.len > 80 ? 80 : want - o.len;

				for (size_t i = 0; i + 1 < n; i++)
					out_add(&o, "=", 1);
				out_add(&o, "\n", 1);
			}
		}
	}
	f = fopen(argv[2], "wb");
	if (!f || fwrite(o.p, 1, o.len, f) != o.len || fclose(f))
		die("%s: %s", argv[2], strerror(errno));
	printf("%zu\n", o.len);
	return 0;
}

/*** stream: a busy log ******************************************************/

static int cmd_stream(int argc, char **argv)
{
	struct timespec next;
	long interval_ns;
	struct out o = { 0 };

	if (argc != 3)
		die("usage: stream INTERVAL_MS");
	interval_ns = (long)(atof(argv[2]) * 1e6);
	rng_state ^= (uint64_t)getpid() << 20;
	setvbuf(stdout, NULL, _IONBF, 0);
	clock_gettime(CLOCK_MONOTONIC, &next);
	for (;;) {
		o.len = 0;
		gen_log(&o);
		if (write(1, o.p, o.len) < 0)
			return 1;
		next.tv_nsec += interval_ns;
		while (next.tv_nsec >= 1000000000L) {
			next.tv_nsec -= 1000000000L;
			next.tv_sec++;
		}
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
	}
}

/*** drive: the screen model **************************************************/


/* A cell: its character, and UL when it was drawn underlined (the console
 * underlines predicted characters not yet confirmed by their echo). */
#define UL	0x80000000u
#define CH(c)	((c) & ~UL)

static struct screen {
	int rows, cols;
	uint32_t **row;		/* row pointers: a full-width scroll rotates them */
	unsigned char *dirty;	/* rows written since the last marker check */
	VTermPos cur;
	VTerm *vt;
	VTermState *st;
} scr;

static void row_clear(int r, int c0, int c1)
{
	for (int c = c0; c < c1; c++)
		scr.row[r][c] = ' ';
	scr.dirty[r] = 1;
}

static int cb_putglyph(VTermGlyphInfo *info, VTermPos pos, void *user)
{
	VTermValue ul;

	(void)user;
	if (pos.row < 0 || pos.row >= scr.rows || pos.col < 0 || pos.col >= scr.cols)
		return 1;
	vterm_state_get_penattr(scr.st, VTERM_ATTR_UNDERLINE, &ul);
	scr.row[pos.row][pos.col] = (info->chars[0] ? info->chars[0] : ' ') | (ul.number ? UL : 0);
	if (info->width == 2 && pos.col + 1 < scr.cols)
		scr.row[pos.row][pos.col + 1] = 0;	/* the right half of a wide one */
	scr.dirty[pos.row] = 1;
	return 1;
}

static int cb_movecursor(VTermPos pos, VTermPos old, int visible, void *user)
{
	(void)old, (void)visible, (void)user;
	scr.cur = pos;
	return 1;
}

static int cb_erase(VTermRect r, int selective, void *user)
{
	(void)selective, (void)user;
	for (int y = r.start_row; y < r.end_row && y < scr.rows; y++)
		row_clear(y, r.start_col, r.end_col < scr.cols ? r.end_col : scr.cols);
	return 1;
}

static int cb_scrollrect(VTermRect r, int down, int right, void *user)
{
	int h = r.end_row - r.start_row, w = r.end_col - r.start_col;

	(void)user;
	if (abs(down) >= h || abs(right) >= w)
		return cb_erase(r, 0, NULL);
	if (right == 0 && r.start_col == 0 && r.end_col == scr.cols) {	/* rotate rows */
		uint32_t *tmp[512];
		int n = abs(down);

		if (down > 0) {
			memcpy(tmp, scr.row + r.start_row, (size_t)n * sizeof(*tmp));
			memmove(scr.row + r.start_row, scr.row + r.start_row + n,
				(size_t)(h - n) * sizeof(*tmp));
			memcpy(scr.row + r.end_row - n, tmp, (size_t)n * sizeof(*tmp));
			for (int y = r.end_row - n; y < r.end_row; y++)
				row_clear(y, 0, scr.cols);
		} else {
			memcpy(tmp, scr.row + r.end_row - n, (size_t)n * sizeof(*tmp));
			memmove(scr.row + r.start_row + n, scr.row + r.start_row,
				(size_t)(h - n) * sizeof(*tmp));
			memcpy(scr.row + r.start_row, tmp, (size_t)n * sizeof(*tmp));
			for (int y = r.start_row; y < r.start_row + n; y++)
				row_clear(y, 0, scr.cols);
		}
		return 1;
	}
	/* a partial rectangle: cell by cell (insert/delete line in a region, ICH/DCH) */
	{
		int y0 = down >= 0 ? r.start_row : r.end_row - 1, dy = down >= 0 ? 1 : -1;

		for (int y = y0; y >= r.start_row && y < r.end_row; y += dy) {
			int sy = y + down;

			if (sy >= r.start_row && sy < r.end_row) {
				int x0 = right >= 0 ? r.start_col : r.end_col - 1, dx = right >= 0 ? 1 : -1;

				for (int x = x0; x >= r.start_col && x < r.end_col; x += dx) {
					int sx = x + right;

					scr.row[y][x] = sx >= r.start_col && sx < r.end_col ? scr.row[sy][sx] : ' ';
				}
				scr.dirty[y] = 1;
			} else {
				row_clear(y, r.start_col, r.end_col);
			}
		}
	}
	return 1;
}

static int cb_settermprop(VTermProp prop, VTermValue *val, void *user)
{
	(void)val, (void)user;
	if (prop == VTERM_PROP_ALTSCREEN)	/* one buffer here: a switch starts clean */
		for (int y = 0; y < scr.rows; y++)
			row_clear(y, 0, scr.cols);
	return 1;
}

static const VTermStateCallbacks state_cbs = {
	.putglyph = cb_putglyph, .movecursor = cb_movecursor, .scrollrect = cb_scrollrect,
	.erase = cb_erase, .settermprop = cb_settermprop,
};

static int master = -1;		/* pty master (pty mode) */

static void cb_output(const char *s, size_t len, void *user)	/* answers to queries */
{
	(void)user;
	if (master >= 0 && write(master, s, len) < 0)
		return;
}

static void screen_init(int rows, int cols)
{
	scr.rows = rows;
	scr.cols = cols;
	scr.row = calloc((size_t)rows, sizeof(*scr.row));
	scr.dirty = calloc((size_t)rows, 1);
	for (int y = 0; y < rows; y++) {
		scr.row[y] = malloc((size_t)cols * sizeof(uint32_t));
		row_clear(y, 0, cols);
	}
	scr.vt = vterm_new(rows, cols);
	vterm_set_utf8(scr.vt, 1);
	vterm_output_set_callback(scr.vt, cb_output, NULL);
	scr.st = vterm_obtain_state(scr.vt);
	vterm_state_set_callbacks(scr.st, &state_cbs, NULL);
	vterm_state_reset(scr.st, 1);
}

static void screen_reset(void)
{
	vterm_state_reset(scr.st, 1);
	for (int y = 0; y < scr.rows; y++)
		row_clear(y, 0, scr.cols);
}

/* Columns c0 to c1 of a row as UTF-8, trailing blanks removed. */
static const char *row_text_part(int y, int c0, int c1)
{
	static char buf[8192];
	size_t n = 0, keep = 0;

	for (int x = c0 < 0 ? 0 : c0; x < c1 && x < scr.cols && n + 8 < sizeof(buf); x++) {
		uint32_t c = CH(scr.row[y][x]);

		if (c == 0)
			continue;
		if (c < 0x80)
			buf[n++] = (char)c;
		else if (c < 0x800) {
			buf[n++] = (char)(0xc0 | c >> 6);
			buf[n++] = (char)(0x80 | (c & 0x3f));
		} else if (c < 0x10000) {
			buf[n++] = (char)(0xe0 | c >> 12);
			buf[n++] = (char)(0x80 | (c >> 6 & 0x3f));
			buf[n++] = (char)(0x80 | (c & 0x3f));
		} else {
			buf[n++] = (char)(0xf0 | c >> 18);
			buf[n++] = (char)(0x80 | (c >> 12 & 0x3f));
			buf[n++] = (char)(0x80 | (c >> 6 & 0x3f));
			buf[n++] = (char)(0x80 | (c & 0x3f));
		}
		if (c != ' ')
			keep = n;
	}
	buf[keep] = '\0';
	return buf;
}

static const char *row_text(int y)	/* a whole row */
{
	return row_text_part(y, 0, scr.cols);
}

static void screen_dump(const char *why)
{
	fprintf(stderr, "--- screen (%s), cursor %d,%d ---\n", why, scr.cur.row, scr.cur.col);
	for (int y = 0; y < scr.rows; y++)
		fprintf(stderr, "%s\n", row_text(y));
	fprintf(stderr, "---\n");
}

/*** drive: the child *********************************************************/

static struct {
	int client;		/* the protocol client, not a pty */
	const char *rid, *fifo, *user;
	char pass[1024];
	int in_fd;		/* client: its stdin */
	int out_fd;		/* what we read: the pty master or the FIFO */
	int eof;
	pid_t pid;
	double spawn_ms;
	unsigned long long bytes;
	/* a raw marker search (client tput) instead of the screen */
	const char *raw_marker;
	int raw_found;
	char carry[256];
	size_t carry_len;
} ch = { .in_fd = -1, .out_fd = -1 };

static void json_escape(struct out *o, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];

		if (c == '"' || c == '\\')
			out_printf(o, "\\%c", c);
		else if (c < 0x20)
			out_printf(o, "\\u%04x", c);
		else
			out_add(o, (const char *)&c, 1);
	}
}

static void write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die("write to the child: %s", strerror(errno));
		p += w;
		n -= (size_t)w;
	}
}

static void client_frame(const char *op, const char *data_json)
{
	struct out o = { 0 };

	out_printf(&o, "{\"operation_type\":\"%s\",\"tunnel_service_type\":\"ssh\","
		   "\"request_id\":\"%s\",\"data\":%s}\n", op, ch.rid, data_json);
	write_all(ch.in_fd, o.p, o.len);
	free(o.p);
}

static void type_bytes(const char *p, size_t n)	/* what the user types */
{
	struct out o = { 0 };

	if (!ch.client) {
		write_all(master, p, n);
		return;
	}
	out_add(&o, "\"", 1);
	json_escape(&o, p, n);
	out_add(&o, "\"", 2);	/* the quote and a NUL */
	client_frame("command", o.p);
	free(o.p);
}

/* MARKER in the byte stream; returns how many of p's bytes end it, else 0. */
static size_t raw_scan(const char *p, size_t n)
{
	static char buf[sizeof(ch.carry) + 65536];
	size_t ml = strlen(ch.raw_marker), keep, total = ch.carry_len + n, end = 0;
	char *hit;

	memcpy(buf, ch.carry, ch.carry_len);
	memcpy(buf + ch.carry_len, p, n);
	hit = memmem(buf, total, ch.raw_marker, ml);
	if (hit) {
		ch.raw_found = 1;
		end = (size_t)(hit - buf) + ml - ch.carry_len;
	}
	keep = total < ml - 1 ? total : ml - 1;
	memcpy(ch.carry, buf + total - keep, keep);
	ch.carry_len = keep;
	return end;
}

/*** drive: a hand that keeps typing, and a record of the screen *************/

static double mark_ms;		/* set by ctl and mark; the *m commands count from it */

/* autotype: a key every gap ms (a b c ... z a ...) while anything else runs,
 * as a user goes on typing into a link that stalls. */
static struct {
	double gap, next;		/* ms; gap 0: off */
	unsigned long n;		/* keys typed */
	unsigned long after_mark;	/* the first key typed after the mark (1-based); 0: none yet */
	double after_mark_t;		/* when it was typed */
} at;

static void autotype_tick(void)
{
	double t = now_ms();
	char c;

	if (at.gap <= 0 || t < at.next)
		return;
	c = (char)('a' + at.n % 26);
	type_bytes(&c, 1);
	at.n++;
	if (!at.after_mark && mark_ms > 0) {
		at.after_mark = at.n;
		at.after_mark_t = t;
	}
	at.next = at.next + at.gap > t ? at.next + at.gap : t + at.gap;
}

static double autotype_wait(double timeout_ms)	/* shortened to the next key */
{
	double left;

	if (at.gap <= 0)
		return timeout_ms;
	left = at.next - now_ms();
	left = left < 0 ? 0 : left;
	return timeout_ms < 0 || left < timeout_ms ? left : timeout_ms;
}

/* trace: every change of the status bar (the last row) and of the first
 * cols columns of the other rows (the console's device list), with the time
 * since the mark: what the console said, and when. */
static struct {
	FILE *f;
	int cols;
	char **last;
} tr;

static void trace_check(void)
{
	if (!tr.f)
		return;
	for (int y = 0; y < scr.rows; y++) {
		const char *text = row_text_part(y, 0, y == scr.rows - 1 ? scr.cols : tr.cols);

		if (tr.last[y] && !strcmp(tr.last[y], text))
			continue;
		free(tr.last[y]);
		tr.last[y] = strdup(text);
		fprintf(tr.f, "%.1f %d %s\n", now_ms() - mark_ms, y, text);
	}
	fflush(tr.f);
}

/* Reads what the child drew (waits at most timeout_ms); 0 on timeout. */
static int pump(double timeout_ms)
{
	static char buf[65536];
	struct pollfd pf = { ch.out_fd, POLLIN, 0 };
	int r;
	ssize_t n;

	autotype_tick();
	timeout_ms = autotype_wait(timeout_ms);
	if (ch.eof) {
		if (timeout_ms > 0)
			usleep((useconds_t)(timeout_ms * 1000));	/* nothing can come */
		return 0;
	}
	r = poll(&pf, 1, timeout_ms < 0 ? -1 : (int)ceil(timeout_ms));
	if (r <= 0)
		return 0;
	n = read(ch.out_fd, buf, sizeof(buf));
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (n <= 0) {
		ch.eof = 1;
		fprintf(stderr, "ptyharness: the child's output ended\n");
		return 0;
	}
	ch.bytes += (unsigned long long)n;
	if (ch.raw_marker && !ch.raw_found) {
		size_t end = raw_scan(buf, (size_t)n);

		if (!ch.raw_found)
			return 1;
		screen_reset();	/* the screen restarts after the marker: enough for prompts */
		vterm_input_write(scr.vt, buf + end, (size_t)n - end);
		return 1;
	}
	vterm_input_write(scr.vt, buf, (size_t)n);
	trace_check();
	return 1;
}

typedef int cond_fn(const void *arg);

/* Reads until cond holds; returns ms waited, or -1 after timeout_ms. */
static double wait_until(double timeout_ms, cond_fn *cond, const void *arg)
{
	double t0 = now_ms(), left;

	for (;;) {
		if (cond(arg))
			return now_ms() - t0;
		left = t0 + timeout_ms - now_ms();
		if (left <= 0)
			return -1;
		pump(left);
	}
}

static int any_row_matches(const void *arg)
{
	for (int y = 0; y < scr.rows; y++)
		if (regexec(arg, row_text(y), 0, NULL, 0) == 0)
			return 1;
	return 0;
}

static int cursor_row_matches(const void *arg)
{
	return scr.cur.row >= 0 && scr.cur.row < scr.rows &&
	       regexec(arg, row_text(scr.cur.row), 0, NULL, 0) == 0;
}

static int marker_drawn(const void *arg)	/* only rows written since the last look */
{
	if (ch.raw_marker)
		return ch.raw_found;
	for (int y = 0; y < scr.rows; y++) {
		if (!scr.dirty[y])
			continue;
		scr.dirty[y] = 0;
		if (strstr(row_text(y), arg))
			return 1;
	}
	return 0;
}

struct cell_want { int row, col; uint32_t c; };

static int cell_is(const void *arg)
{
	const struct cell_want *w = arg;

	return CH(scr.row[w->row][w->col]) == w->c;
}

static int line_cleared(const void *arg)	/* after Ctrl-U: blank, cursor home */
{
	const struct cell_want *w = arg;

	return CH(scr.row[w->row][w->col]) == ' ' && scr.cur.row == w->row && scr.cur.col == w->col;
}

/*** drive: commands **********************************************************/

static size_t unescape(char *s)	/* C escapes in place; returns the length */
{
	char *o = s;

	for (char *p = s; *p; p++) {
		if (*p != '\\' || !p[1]) {
			*o++ = *p;
			continue;
		}
		switch (*++p) {
		case 'r': *o++ = '\r'; break;
		case 'n': *o++ = '\n'; break;
		case 't': *o++ = '\t'; break;
		case 'e': *o++ = 033; break;
		case 'x': {
			char hex[3] = { p[1], p[1] ? p[2] : 0, 0 };

			*o++ = (char)strtol(hex, NULL, 16);
			p += p[1] && p[2] ? 2 : p[1] ? 1 : 0;
			break;
		}
		default: *o++ = *p; break;
		}
	}
	return (size_t)(o - s);
}

static char *next_field(char **line)	/* the next blank-separated word */
{
	char *s = *line, *e;

	while (*s == ' ')
		s++;
	e = s + strcspn(s, " ");
	if (*e)
		*e++ = '\0';
	*line = e;
	return s;
}

static int compile(regex_t *re, const char *pattern)
{
	if (regcomp(re, pattern, REG_EXTENDED | REG_NOSUB)) {
		printf("err bad regex\n");
		return -1;
	}
	return 0;
}

static void reply_wait(double ms, double t0, const char *what)
{
	if (ms < 0) {
		printf("timeout %s\n", what);
		screen_dump(what);
	} else {
		printf("ok %.3f %.3f\n", ms, t0 - ch.spawn_ms + ms);
	}
}

static void do_wait(char *args, int cursor)
{
	double timeout = atof(next_field(&args)), t0 = now_ms();
	regex_t re;

	if (compile(&re, args) < 0)
		return;
	reply_wait(wait_until(timeout, cursor ? cursor_row_matches : any_row_matches, &re), t0, args);
	regfree(&re);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double pct(const double *v, int n, double q)	/* nearest rank */
{
	int k = (int)ceil(q * n) - 1;

	return v[k < 0 ? 0 : k >= n ? n - 1 : k];
}

/* N keys typed at the prompt, each timed until its echo is on the screen;
 * rounds of at most 20 keys, each round wiped with Ctrl-U (not timed). */
static void do_lat(char *args)
{
	int n = atoi(next_field(&args)), done = 0, round = 0;
	double gmin = atof(next_field(&args)), gmax = atof(next_field(&args));
	const char *file = next_field(&args);
	double *v = calloc((size_t)n + 1, sizeof(double)), sum = 0;
	regex_t re;
	FILE *f;

	if (compile(&re, args) < 0)
		return;
	f = fopen(file, "a");	/* rounds of several configurations interleave */
	while (done < n) {
		struct cell_want home;
		int k;

		if (wait_until(10000, cursor_row_matches, &re) < 0) {
			printf("timeout prompt after %d keys\n", done);
			screen_dump("lat: no prompt");
			goto out;
		}
		home = (struct cell_want){ scr.cur.row, scr.cur.col, ' ' };
		k = scr.cols - home.col - 2;
		k = k > 20 ? 20 : k;
		if (k < 1) {
			printf("err no room to type\n");
			goto out;
		}
		for (int i = 0; i < k && done < n; i++, done++) {
			double gap = gmin + (gmax - gmin) * (rnd() % 1001) / 1000.0, t0, ms;
			struct cell_want w = { home.row, home.col + i, 'a' + (uint32_t)(i * 7 + round) % 26 };
			char c = (char)w.c;

			for (double end = now_ms() + gap; now_ms() < end;)	/* think time, reading */
				pump(end - now_ms());
			t0 = now_ms();
			type_bytes(&c, 1);
			ms = wait_until(5000, cell_is, &w);
			if (ms < 0) {
				printf("timeout echo of key %d\n", done);
				screen_dump("lat: no echo");
				goto out;
			}
			v[done] = now_ms() - t0;
			sum += v[done];
			if (f)
				fprintf(f, "%.3f\n", v[done]);
		}
		type_bytes("\025", 1);	/* Ctrl-U: readline wipes the line */
		if (wait_until(5000, line_cleared, &home) < 0) {
			printf("timeout Ctrl-U\n");
			screen_dump("lat: line not cleared");
			goto out;
		}
		round++;
	}
	qsort(v, (size_t)n, sizeof(double), cmp_double);
	printf("ok %d %.3f %.3f %.3f %.3f %.3f\n", n, pct(v, n, 0.5), pct(v, n, 0.9),
	       pct(v, n, 0.99), v[n - 1], sum / n);
out:
	if (f)
		fclose(f);
	free(v);
	regfree(&re);
}

static void do_tput(char *args)
{
	double timeout = atof(next_field(&args)), t0, ms;
	char *marker = next_field(&args);
	size_t n = unescape(args);
	unsigned long long b0 = ch.bytes;

	while (pump(0))	/* what was drawn before is not part of it */
		;
	for (int y = 0; y < scr.rows; y++)
		scr.dirty[y] = 0;
	if (ch.client) {
		ch.raw_marker = marker;
		ch.raw_found = 0;
		ch.carry_len = 0;
	}
	t0 = now_ms();
	type_bytes(args, n);
	ms = wait_until(timeout, marker_drawn, marker);
	ch.raw_marker = NULL;
	if (ms < 0) {
		printf("timeout %s\n", marker);
		screen_dump("tput");
	} else {
		printf("ok %.3f %llu\n", now_ms() - t0, ch.bytes - b0);
	}
}

static void do_ctrlc(char *args)
{
	double timeout = atof(next_field(&args)), t0, ms;
	regex_t re;

	if (compile(&re, args) < 0)
		return;
	while (pump(0))
		;
	t0 = now_ms();
	type_bytes("\003", 1);
	ms = wait_until(timeout, cursor_row_matches, &re);
	if (ms < 0) {
		printf("timeout prompt\n");
		screen_dump("ctrlc");
	} else {
		printf("ok %.3f\n", now_ms() - t0);
	}
	regfree(&re);
}

/* ctl FIFO LINE: a line to the link emulator's control FIFO; the mark is set
 * the moment it is written. */
static void do_ctl(char *args)
{
	const char *path = next_field(&args);
	char line[512];
	int fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC), n;

	n = snprintf(line, sizeof(line), "%s\n", args);
	if (fd < 0 || write(fd, line, (size_t)n) != n) {
		printf("err %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	close(fd);
	mark_ms = now_ms();
	at.after_mark = 0;
	if (tr.f)
		fprintf(tr.f, "# mark: %s\n", args);
	printf("ok\n");
}

static int no_row_matches(const void *arg)
{
	return !any_row_matches(arg);
}

struct row_re { int row; regex_t re; };

static int row_matches(const void *arg)
{
	const struct row_re *r = arg;

	return r->row >= 0 && r->row < scr.rows && regexec(&r->re, row_text(r->row), 0, NULL, 0) == 0;
}

/* waitrow MS ROW REGEX: until that row matches -> ok MS_SINCE_MARK */
static void do_wait_row(char *args)
{
	double timeout = atof(next_field(&args));
	struct row_re r;

	r.row = atoi(next_field(&args));
	if (compile(&r.re, args) < 0)
		return;
	if (wait_until(timeout, row_matches, &r) < 0) {
		printf("timeout row %d %s\n", r.row, args);
		screen_dump(args);
	} else {
		printf("ok %.1f\n", now_ms() - mark_ms);
	}
	regfree(&r.re);
}

/* waitm / gonem / waitmcur MS REGEX: until a row matches (none does, the
 * cursor's row matches) -> ok MS_SINCE_MARK */
static void do_wait_mark(char *args, cond_fn *cond)
{
	double timeout = atof(next_field(&args)), ms;
	regex_t re;

	if (compile(&re, args) < 0)
		return;
	ms = wait_until(timeout, cond, &re);
	if (ms < 0) {
		printf("timeout %s\n", args);
		screen_dump(args);
	} else {
		printf("ok %.1f\n", now_ms() - mark_ms);
	}
	regfree(&re);
}

/* The count a remote key counter prints ("got N" at the end of the
 * cursor's row); -1: none. */
static long remote_count(void)
{
	const char *t, *g = NULL;
	char *end;
	long v;

	if (scr.cur.row < 0 || scr.cur.row >= scr.rows)
		return -1;
	t = row_text(scr.cur.row);
	for (const char *p = t; (p = strstr(p, "got ")); p += 4)
		g = p;
	if (!g)
		return -1;
	v = strtol(g + 4, &end, 10);
	return end != g + 4 && !*end ? v : -1;
}

static int counted_after_mark(const void *arg)
{
	(void)arg;
	return at.after_mark && remote_count() >= (long)at.after_mark;
}

/* count MS: until the remote counter has the first key typed after the
 * mark -> ok MS_SINCE_MARK MS_SINCE_THAT_KEY COUNT TYPED */
static void do_count(char *args)
{
	double ms = wait_until(atof(args), counted_after_mark, NULL), t = now_ms();

	if (ms < 0) {
		printf("timeout count %ld of %lu typed (first after the mark: %lu)\n", remote_count(),
		       at.n, at.after_mark);
		screen_dump("count");
	} else {
		printf("ok %.1f %.1f %ld %lu\n", t - mark_ms, t - at.after_mark_t, remote_count(), at.n);
	}
}

static void do_trace(char *args)
{
	if (tr.f)
		fclose(tr.f);
	tr.f = NULL;
	for (int y = 0; tr.last && y < scr.rows; y++) {
		free(tr.last[y]);
		tr.last[y] = NULL;
	}
	if (strcmp(args, "off")) {
		const char *file = next_field(&args);

		tr.cols = atoi(args) > 0 ? atoi(args) : 30;
		tr.f = fopen(file, "a");
		mark_ms = now_ms();	/* the timeline starts here, or at the next mark */
		if (!tr.last)
			tr.last = calloc((size_t)scr.rows, sizeof(*tr.last));
		if (!tr.f) {
			printf("err %s: %s\n", file, strerror(errno));
			return;
		}
		trace_check();
	}
	printf("ok\n");
}

/* typist: a person at a shell prompt on a slow link.  Each line is a
 * command `echo WORDS` (3-6 words of 4-10 random letters, a space between),
 * typed at 30-70 ms a key once the prompt is there and 400-800 ms of
 * reading have passed; every printable key is timed until its character is
 * in its cell (shown: drawn at all, a prediction or the echo) and until it
 * is there not underlined (echo: the console underlines predictions not yet
 * confirmed on a slow link; with prediction off the two are the same).
 * A space changes no cell: it is shown when the cursor has passed it.
 * SETTLE ms after the last echo the line as drawn is kept (and underlined
 * characters anywhere on screen counted: predictions still unconfirmed);
 * Enter; the line as the shell had it is what echo printed.  Every cell
 * where the two differ is a wrong character left on screen. */
struct tkey {
	int row, col;
	uint32_t c;
	double t, shown, echo;	/* when typed; when seen (0: not yet) */
};

/* A letter shows in its cell; a space changes no cell, it shows when the
 * cursor has gone past it, and counts as echoed with the next letter. */
static void tkeys_update(struct tkey *k, int n)
{
	double t = 0;

	for (int i = n - 1; i >= 0; i--) {
		uint32_t v;

		if (k[i].echo)
			continue;
		if (k[i].c == ' ') {
			if (!k[i].shown && scr.cur.row == k[i].row && scr.cur.col > k[i].col)
				k[i].shown = t = t ? t : now_ms();
			if (i + 1 < n && k[i + 1].echo)
				k[i].echo = k[i + 1].echo;
			continue;
		}
		v = scr.row[k[i].row][k[i].col];
		if (CH(v) != k[i].c)
			continue;
		t = t ? t : now_ms();
		if (!k[i].shown)
			k[i].shown = t;
		if (!(v & UL))
			k[i].echo = t;
	}
}

static void tkeys_pump(struct tkey *k, int n, double until)	/* reads until then, watching */
{
	for (double left; (left = until - now_ms()) > 0;) {
		pump(left);
		tkeys_update(k, n);
	}
}

static int tkeys_echoed(struct tkey *k, int n)
{
	for (int i = 0; i < n; i++)
		if (!k[i].echo)
			return 0;
	return 1;
}

static void do_typist(char *args)
{
	int lines = atoi(next_field(&args)), keys = 0, within = 0, missing = 0, wrong = 0, ul_left = 0,
	    remote_diff = 0, plen, nechoes = 0;
	double settle = atof(next_field(&args)), *shown_v, *echo_v;
	const char *file;
	regex_t re;
	FILE *f;

	plen = atoi(next_field(&args));
	file = next_field(&args);
	if (compile(&re, args) < 0)
		return;
	f = fopen(file, "a");
	shown_v = calloc((size_t)lines * 80 + 1, sizeof(double));
	echo_v = calloc((size_t)lines * 80 + 1, sizeof(double));
	for (int line = 0; line < lines; line++) {
		struct tkey k[96] = { { 0 } };
		char text[96], drawn[128], shell[128];
		int n = 0, row, col0, words = 3 + (int)(rnd() % 4), nd = 0, ns = 0, ul = 0;
		double last_echo = 0, t;

		if (wait_until(15000, cursor_row_matches, &re) < 0) {
			printf("timeout prompt before line %d\n", line);
			screen_dump("typist: no prompt");
			goto out;
		}
		row = scr.cur.row;
		col0 = scr.cur.col;
		n = snprintf(text, sizeof(text), "echo");
		for (int w = 0; w < words; w++) {
			int len = 4 + (int)(rnd() % 7);

			text[n++] = ' ';
			for (int i = 0; i < len; i++)
				text[n++] = (char)('a' + rnd() % 26);
		}
		text[n] = '\0';
		if (col0 + n >= scr.cols - 1 || col0 < plen) {
			printf("err no room to type\n");
			goto out;
		}
		tkeys_pump(k, 0, now_ms() + 400 + rnd() % 401);	/* reading the last output */
		for (int i = 0; i < n; i++) {
			tkeys_pump(k, i, now_ms() + 30 + rnd() % 41);
			k[i] = (struct tkey){ row, col0 + i, (uint32_t)(unsigned char)text[i], 0, 0, 0 };
			k[i].t = now_ms();
			type_bytes(text + i, 1);
			tkeys_update(k, i + 1);
		}
		for (t = now_ms() + 5000; !tkeys_echoed(k, n) && now_ms() < t;) {
			pump(t - now_ms());
			tkeys_update(k, n);
		}
		for (int i = 0; i < n; i++)
			last_echo = k[i].echo > last_echo ? k[i].echo : last_echo;
		tkeys_pump(k, n, (tkeys_echoed(k, n) ? last_echo : now_ms()) + settle);
		for (int x = col0; x < scr.cols && nd + 1 < (int)sizeof(drawn); x++) {	/* the line as drawn */
			uint32_t v = scr.row[row][x];

			drawn[nd++] = CH(v) < 0x80 && CH(v) ? (char)CH(v) : '?';
		}
		for (int y = 0; y < scr.rows; y++)	/* unconfirmed predictions, anywhere */
			for (int x = 0; x < scr.cols; x++)
				ul += (scr.row[y][x] & UL) && CH(scr.row[y][x]) != ' ';
		while (nd && drawn[nd - 1] == ' ')
			nd--;
		drawn[nd] = '\0';
		type_bytes("\r", 1);
		if (wait_until(15000, cursor_row_matches, &re) < 0) {	/* the typed row never does */
			printf("timeout prompt after line %d\n", line);
			screen_dump("typist: no prompt after Enter");
			goto out;
		}
		/* the output row is just above the new prompt: echo's words, as the shell had them */
		ns = snprintf(shell, sizeof(shell), "echo %s", row_text_part(scr.cur.row - 1, col0 - plen, scr.cols));
		for (int i = 0; i < nd || i < ns; i++)
			wrong += i >= nd || i >= ns || drawn[i] != shell[i];
		ul_left += ul;
		remote_diff += strcmp(shell, text) != 0;
		for (int i = 0; i < n; i++) {
			keys++;
			shown_v[keys - 1] = k[i].shown ? k[i].shown - k[i].t : 1e9;
			missing += !k[i].shown;
			within += shown_v[keys - 1] <= 20;
			echo_v[nechoes++] = text[i] == ' ' ? 0 : k[i].echo ? k[i].echo - k[i].t : 1e9;
			nechoes -= text[i] == ' ';
			if (f)
				fprintf(f, "%d %d %c %.3f %.3f\n", line, i, text[i] == ' ' ? '_' : text[i],
					k[i].shown ? k[i].shown - k[i].t : -1, k[i].echo ? k[i].echo - k[i].t : -1);
		}
		if (f && (strcmp(drawn, shell) || ul))
			fprintf(f, "# line %d: drawn \"%s\" (%d underlined), the shell's \"%s\"\n", line, drawn, ul, shell);
	}
	qsort(shown_v, (size_t)keys, sizeof(double), cmp_double);
	qsort(echo_v, (size_t)nechoes, sizeof(double), cmp_double);
	printf("ok %d %d %.1f %.1f %.1f %d %d %d %d\n", keys, within, keys ? 100.0 * within / keys : 0,
	       keys ? pct(shown_v, keys, 0.5) : 0, nechoes ? pct(echo_v, nechoes, 0.5) : 0, wrong, ul_left,
	       missing, remote_diff);
out:
	if (f)
		fclose(f);
	free(shown_v);
	free(echo_v);
	regfree(&re);
}

static void stop_child(void)
{
	int st;

	if (ch.pid <= 0)
		return;
	kill(ch.pid, SIGTERM);
	for (int i = 0; i < 200; i++) {
		if (waitpid(ch.pid, &st, WNOHANG) == ch.pid) {
			ch.pid = 0;
			return;
		}
		pump(10);
	}
	kill(ch.pid, SIGKILL);
	waitpid(ch.pid, &st, 0);
	ch.pid = 0;
}

static int command(char *line)	/* one stdin line; 0 after quit */
{
	char *name = next_field(&line);

	if (!strcmp(name, "send")) {
		size_t n = unescape(line);

		type_bytes(line, n);
		printf("ok\n");
	} else if (!strcmp(name, "drain")) {
		unsigned long long b0 = ch.bytes;

		for (double end = now_ms() + atof(line); now_ms() < end;)
			pump(end - now_ms());
		printf("ok %llu\n", ch.bytes - b0);
	} else if (!strcmp(name, "wait") || !strcmp(name, "waitcur")) {
		do_wait(line, name[4] == 'c');
	} else if (!strcmp(name, "lat")) {
		do_lat(line);
	} else if (!strcmp(name, "tput")) {
		do_tput(line);
	} else if (!strcmp(name, "ctrlc")) {
		do_ctrlc(line);
	} else if (!strcmp(name, "typist")) {
		do_typist(line);
	} else if (!strcmp(name, "ctl")) {
		do_ctl(line);
	} else if (!strcmp(name, "mark")) {
		mark_ms = now_ms();
		at.after_mark = 0;
		printf("ok\n");
	} else if (!strcmp(name, "waitm") || !strcmp(name, "gonem") || !strcmp(name, "waitmcur")) {
		do_wait_mark(line, name[0] == 'g' ? no_row_matches : name[5] ? cursor_row_matches : any_row_matches);
	} else if (!strcmp(name, "rowtext")) {	/* the row OFFSET from the cursor's */
		int y = scr.cur.row + atoi(line);

		printf("ok %s\n", y >= 0 && y < scr.rows ? row_text(y) : "");
	} else if (!strcmp(name, "since")) {
		printf("ok %.1f\n", now_ms() - mark_ms);
	} else if (!strcmp(name, "waitrow")) {
		do_wait_row(line);
	} else if (!strcmp(name, "untilm")) {	/* reads until MS after the mark */
		for (double end = mark_ms + atof(line); now_ms() < end;)
			pump(end - now_ms());
		printf("ok\n");
	} else if (!strcmp(name, "autotype")) {	/* GAP_MS [reset]: reset counts from 0 */
		at.gap = atof(next_field(&line));
		at.next = now_ms();
		if (!strcmp(line, "reset"))
			at.n = at.after_mark = 0;
		printf("ok %lu\n", at.n);
	} else if (!strcmp(name, "count")) {
		do_count(line);
	} else if (!strcmp(name, "trace")) {
		do_trace(line);
	} else if (!strcmp(name, "pid")) {
		printf("ok %d\n", (int)ch.pid);
	} else if (!strcmp(name, "dump")) {
		screen_dump("dump");
		printf("ok\n");
	} else if (!strcmp(name, "quit")) {
		stop_child();
		printf("ok\n");
		fflush(stdout);
		return 0;
	} else if (*name) {
		printf("err unknown command %s\n", name);
	}
	fflush(stdout);
	return 1;
}

static void spawn_pty(char **argv, int rows, int cols)
{
	struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };

	ch.spawn_ms = now_ms();
	ch.pid = forkpty(&master, NULL, NULL, &ws);
	if (ch.pid < 0)
		die("forkpty: %s", strerror(errno));
	if (ch.pid == 0) {
		execvp(argv[0], argv);
		_exit(127);
	}
	ch.out_fd = master;
}

static void spawn_client(char **argv, int rows, int cols)
{
	int in[2];
	char data[1400];
	struct out o = { 0 };

	if (mkfifo(ch.fifo, 0600) < 0 && errno != EEXIST)
		die("mkfifo %s: %s", ch.fifo, strerror(errno));
	ch.out_fd = open(ch.fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (ch.out_fd < 0 || pipe2(in, O_CLOEXEC) < 0)
		die("%s: %s", ch.fifo, strerror(errno));
	ch.spawn_ms = now_ms();
	ch.pid = fork();
	if (ch.pid == 0) {
		dup2(in[0], 0);
		dup2(2, 1);	/* its event lines go to our log */
		execvp(argv[0], argv);
		_exit(127);
	}
	close(in[0]);
	ch.in_fd = in[1];
	json_escape(&o, ch.pass, strlen(ch.pass));
	out_add(&o, "", 1);
	snprintf(data, sizeof(data), "{\"username\":\"%s\",\"password\":\"%s\",\"cols\":%d,"
		 "\"rows\":%d,\"term\":\"xterm-256color\"}", ch.user, o.p, cols, rows);
	explicit_bzero(o.p, o.len);
	free(o.p);
	client_frame("connect", data);
	explicit_bzero(data, sizeof(data));
}

static void read_pass(const char *path)
{
	FILE *f = fopen(path, "r");

	if (!f || !fgets(ch.pass, sizeof(ch.pass), f))
		die("%s: cannot read", path);
	fclose(f);
	ch.pass[strcspn(ch.pass, "\r\n")] = '\0';
}

static void on_signal(int sig)	/* stopped from outside: the child goes too */
{
	if (ch.pid > 0)
		kill(ch.pid, SIGTERM);
	_exit(128 + sig);
}

static int cmd_drive(int argc, char **argv)
{
	int cols = 120, rows = 40, i;
	char line[4096];
	size_t len = 0;

	for (i = 2; i < argc && strcmp(argv[i], "--"); i++) {
		if (!strcmp(argv[i], "--size") && i + 1 < argc) {
			if (sscanf(argv[++i], "%dx%d", &cols, &rows) != 2)
				die("--size COLSxROWS");
		} else if (!strcmp(argv[i], "--client") && i + 4 < argc) {
			ch.client = 1;
			ch.rid = argv[++i];
			ch.fifo = argv[++i];
			ch.user = argv[++i];
			read_pass(argv[++i]);
		} else {
			die("drive: unknown option %s", argv[i]);
		}
	}
	if (i + 1 >= argc)
		die("drive: no command after --");
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	signal(SIGHUP, on_signal);
	screen_init(rows, cols);
	if (ch.client)
		spawn_client(argv + i + 1, rows, cols);
	else
		spawn_pty(argv + i + 1, rows, cols);
	for (;;) {	/* commands; the child's output is read all the while */
		struct pollfd pf[2] = { { 0, POLLIN, 0 }, { ch.out_fd, POLLIN, 0 } };
		char *nl;
		ssize_t n;

		autotype_tick();
		if (poll(pf, ch.eof ? 1 : 2, (int)ceil(autotype_wait(-1))) < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		if (!ch.eof && pf[1].revents)
			pump(0);
		if (!pf[0].revents)
			continue;
		n = read(0, line + len, sizeof(line) - 1 - len);
		if (n <= 0)
			break;
		len += (size_t)n;
		line[len] = '\0';
		while ((nl = strchr(line, '\n'))) {
			*nl = '\0';
			if (!command(line)) {
				return 0;
			}
			len -= (size_t)(nl + 1 - line);
			memmove(line, nl + 1, len + 1);
		}
	}
	stop_child();
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "gen"))
		return cmd_gen(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "stream"))
		return cmd_stream(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "drive"))
		return cmd_drive(argc, argv);
	die("usage: ptyharness gen FILE BYTES | stream MS | drive [...] -- CMD...");
	return 2;
}
