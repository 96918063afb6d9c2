/*
 * The console's terminal emulator against libvterm's screen (VTermScreen):
 * the same bytes into both, every cell compared (character, width, bold,
 * underline, italic, blink, reverse, colours) and the cursor, after every
 * chunk of a random split.
 *
 *   vtdiff random SEED ROUNDS   streams from a grammar of the sequences
 *                               programs send (text, CJK, cursor motion,
 *                               erase, insert/delete, scroll regions, SGR
 *                               with 256 and 24-bit colour, modes, the
 *                               alternate screen, charsets, tabs, REP)
 *   vtdiff file FILE COLS ROWS  a real program's output (vim, tmux, top …)
 *
 * Prints "ok - …" or "not ok - …" with the first differing cell and the
 * bytes around it.  Blank cells are compared by background only: libvterm
 * erases with the whole pen, the console (as xterm) with its background.
 * Half of a wide character overwritten: libvterm keeps the other half,
 * the console (as xterm) blanks it; both are accepted.
 * Where xterm and libvterm differ the console follows xterm; the grammar
 * leaves those sequences out (CSI s/u, ?47, RIS), and those that crash
 * libvterm 0.1.4 (more than 16 parameters; REP of a wide character);
 * line drawing comes as programs send it, ASCII between ESC ( 0 and
 * ESC ( B (libvterm decodes a run that starts beyond ASCII as UTF-8
 * whatever the charset).
 */
#ifndef TUNNEL_TUI_NO_MAIN
#define TUNNEL_TUI_NO_MAIN
#endif
#include "../../tunnel_tui.c"
#include <vterm.h>

struct pair {
	struct session *s;
	VTerm *vt;
	VTermScreen *vs;
	int rows, cols;
};

static struct tunnel unit_tunnel = { .cfg.name = "vtdiff" };

static void pair_open(struct pair *p, int cols, int rows)
{
	p->rows = rows;
	p->cols = cols;
	p->s = xcalloc(sizeof(*p->s));
	p->s->rows = rows;
	p->s->cols = cols;
	p->s->tunnel = &unit_tunnel;
	vt_open(p->s);
	p->vt = vterm_new(rows, cols);
	vterm_set_utf8(p->vt, 1);
	p->vs = vterm_obtain_screen(p->vt);
	vterm_screen_enable_altscreen(p->vs, 1);
	vterm_screen_reset(p->vs, 1);
	/* libvterm 0.1.4 loops on a REP before any glyph, and restores a
	 * zeroed pen before any DECSC: give both a glyph and a saved cursor */
	vterm_input_write(p->vt, " \r\0337", 4);
	vt_write(p->s, " \r\0337", 4);
}

static void pair_close(struct pair *p)
{
	vt_close(p->s);
	buf_free(&p->s->keys);	/* the emulator's answers to queries */
	free(p->s);
	vterm_free(p->vt);
}

static uint32_t pack(const VTermColor *c, int fg)	/* libvterm's colour as the console packs it */
{
	if (fg ? VTERM_COLOR_IS_DEFAULT_FG(c) : VTERM_COLOR_IS_DEFAULT_BG(c))
		return COLOR_DEFAULT;
	if (VTERM_COLOR_IS_INDEXED(c))
		return COLOR_INDEXED | c->indexed.idx;
	return COLOR_RGB | (uint32_t)c->rgb.red << 16 | (uint32_t)c->rgb.green << 8 | c->rgb.blue;
}

static uint8_t attrs_of(const VTermScreenCell *c)
{
	return (uint8_t)((c->attrs.bold ? ATTR_BOLD : 0) | (c->attrs.underline ? ATTR_UNDERLINE : 0) |
			 (c->attrs.italic ? ATTR_ITALIC : 0) | (c->attrs.blink ? ATTR_BLINK : 0) |
			 (c->attrs.reverse ? ATTR_REVERSE : 0));
}

static const char *vterm_row(const struct pair *p, int r)	/* a row's text, for the report */
{
	static char out[2048];
	char buf[1024];
	size_t n = vterm_screen_get_text(p->vs, buf, sizeof(buf) - 1, (VTermRect){ r, r + 1, 0, p->cols });

	snprintf(out, sizeof(out), "%.*s", (int)n, buf);
	return out;
}

static const char *console_row(const struct pair *p, int r)
{
	static char out[2048];

	row_text(p->s, p->s->sb_count + r, out, sizeof(out));
	return out;
}

/* The first difference, in words; 0 if none. */
static int pair_differs(const struct pair *p, char *why, size_t cap)
{
	VTermPos cur;

	vterm_state_get_cursorpos(vterm_obtain_state(p->vt), &cur);
	if (cur.row != p->s->vt.row || cur.col != p->s->vt.col) {
		snprintf(why, cap, "cursor: libvterm %d,%d, console %d,%d", cur.row, cur.col, p->s->vt.row, p->s->vt.col);
		return 1;
	}
	for (int r = 0; r < p->rows; r++)
		for (int c = 0; c < p->cols; c++) {
			VTermScreenCell v;
			const struct cell *o = &p->s->grid->row[r][c];
			uint32_t ch;

			if (c && p->s->grid->row[r][c - 1].width == 2)
				continue;	/* a wide character's right half */
			vterm_screen_get_cell(p->vs, (VTermPos){ r, c }, &v);
			ch = v.chars[0] == (uint32_t)-1 ? 0 : v.chars[0];
			if ((ch == 0 || ch == ' ') && (o->ch == 0 || o->ch == ' ')) {
				if (pack(&v.bg, 0) == o->bg || attrs_of(&v) & ATTR_REVERSE || v.chars[0] == (uint32_t)-1)
					continue;	/* (-1: a right half libvterm left behind) */
			} else if (ch == o->ch && attrs_of(&v) == (o->attrs & ~ATTR_WRAPPED) &&
				   pack(&v.fg, 1) == o->fg && pack(&v.bg, 0) == o->bg &&
				   (v.width == o->width || (o->width == 1 && c + 1 < p->cols && !o[1].ch))) {
				continue;	/* libvterm keeps a stale right half: its width says 2 */
			} else if ((o->ch == ' ' || !o->ch) && vt_width(ch) == 2) {
				continue;	/* a wide character split (overwritten, pushed off the edge): xterm blanks it */
			}
			snprintf(why, cap, "cell %d,%d: libvterm U+%04X w%d attrs %x fg %08x bg %08x, "
				 "console U+%04X w%d attrs %x fg %08x bg %08x\n# row %d, libvterm: [%s]\n# row %d, console:  [%s]",
				 r, c, ch, v.width, attrs_of(&v), pack(&v.fg, 1), pack(&v.bg, 0), o->ch, o->width,
				 o->attrs, o->fg, o->bg, r, vterm_row(p, r), r, console_row(p, r));
			return 1;
		}
	return 0;
}

/* Feeds p in random chunks, comparing after each; 0 if all agreed. */
static int pair_feed(struct pair *p, const char *in, size_t n, unsigned *seed, const char *name)
{
	char why[5000];

	for (size_t i = 0, k; i < n; i += k) {
		k = getenv("VTDIFF_CHUNK") ? (size_t)atoi(getenv("VTDIFF_CHUNK")) : 1 + (size_t)rand_r(seed) % 97;
		k = k < n - i ? k : n - i;
		while (i + k < n && ((unsigned char)in[i + k] & 0xc0) == 0x80)
			k++;	/* libvterm 0.1.4 loses a character cut between writes */
		vterm_input_write(p->vt, in + i, k);
		vt_write(p->s, in + i, k);
		if (pair_differs(p, why, sizeof(why))) {
			size_t from = i > 60 ? i - 60 : 0;

			printf("not ok - %s\n# after byte %zu: %s\n# input: ", name, i + k, why);
			for (size_t j = from; j < i + k; j++)
				printf(in[j] >= 0x20 && in[j] < 0x7f ? "%c" : "\\x%02x", (unsigned char)in[j]);
			printf("\n");
			return 1;
		}
	}
	return 0;
}

/*** random streams ***/

static const char *const words[] = {
	"ls", "-la", "hello", "world", "漢字", "テスト", "é", "Ωμέγα", "─│┌┐", "😀", "a", "0123456789",
	"                ", "x", "#", "~", "end",
};

static void gen_csi(struct buf *b, unsigned *seed)	/* one control sequence */
{
	static const char *const finals = "ABCDEFGHJKLMPSTXZ@`adefgI";
	int r = rand_r(seed) % 100, n1 = rand_r(seed) % 30, n2 = rand_r(seed) % 100;

	if (r < 30)
		buf_printf(b, "\033[%d%c", n1, finals[rand_r(seed) % (int)strlen(finals)]);
	else if (r < 38)
		buf_printf(b, "\033[%d;%dH", n1, n2);
	else if (r < 42)
		buf_printf(b, "\033[%dJ", rand_r(seed) % 3);
	else if (r < 46)
		buf_printf(b, "\033[%dK", rand_r(seed) % 3);
	else if (r < 52)
		buf_printf(b, "\033[%d;%dr", n1, n2 % 30);
	else if (r < 54)
		buf_printf(b, "\033[r");
	else if (r < 57)
		buf_printf(b, "\033[%d%c", rand_r(seed) % 6, 'g');
	else if (r < 66)
		buf_printf(b, "\033[?%d%c", (int[]){ 7, 6, 25, 1049, 1047, 1, 2004, 7 }[rand_r(seed) % 8],
			   rand_r(seed) % 2 ? 'h' : 'l');
	else if (r < 70)	/* insert mode, with ASCII: libvterm moves a wide character over by one */
		buf_printf(b, "\033[4h%s\033[4l", (const char *[]){ "ins", "x", "longer text" }[rand_r(seed) % 3]);
	else
		buf_printf(b, "\033[%d;%d;%dm", (int[]){ 0, 1, 3, 4, 5, 7, 22, 23, 24, 25, 27, 39, 49, 21 }[rand_r(seed) % 14],
			   30 + rand_r(seed) % 18, 90 + rand_r(seed) % 18);
}

static void gen_color(struct buf *b, unsigned *seed)	/* 256 and 24-bit colour, ; and : */
{
	int fg = rand_r(seed) % 2 ? 38 : 48, r = rand_r(seed) % 4;

	if (r == 0)
		buf_printf(b, "\033[%d;5;%dm", fg, rand_r(seed) % 256);
	else if (r == 1)
		buf_printf(b, "\033[%d;2;%d;%d;%dm", fg, rand_r(seed) % 256, rand_r(seed) % 256, rand_r(seed) % 256);
	else if (r == 2)
		buf_printf(b, "\033[%d:5:%dm", fg, rand_r(seed) % 256);
	else
		buf_printf(b, "\033[%d:2:%d:%d:%dm", fg, rand_r(seed) % 256, rand_r(seed) % 256, rand_r(seed) % 256);
}

static void gen_piece(struct buf *b, unsigned *seed)
{
	static const char *const esc[] = {
		"\r", "\n", "\r\n", "\b", "\t", "\0337", "\0338", "\033D", "\033E", "\033M", "\033H",
		"\033(0lqqkx\033(B", "\016", "\017", "\033#8", "\033[?7l", "\033[?7h", "x\033[3b", "y\033[99b",
		"\033[4:0m", "\033[4:3m",
	};
	int r = rand_r(seed) % 100;

	if (r < 40)
		buf_printf(b, "%s", words[rand_r(seed) % (int)(sizeof(words) / sizeof(*words))]);
	else if (r < 70)
		gen_csi(b, seed);
	else if (r < 76)
		gen_color(b, seed);
	else
		buf_printf(b, "%s", esc[rand_r(seed) % (int)(sizeof(esc) / sizeof(*esc))]);
}

static int run_random(unsigned seed, int rounds)
{
	int bad = 0;

	for (int round = 0; round < rounds && !bad; round++) {
		struct pair p;
		struct buf b = { 0 };
		char name[80];

		pair_open(&p, 10 + rand_r(&seed) % 40, 3 + rand_r(&seed) % 12);
		while (b.len < 3000)
			gen_piece(&b, &seed);
		snprintf(name, sizeof(name), "random streams (seed %u, round %d)", seed, round);
		bad = pair_feed(&p, b.p, b.len, &seed, name);
		if (bad && getenv("VTDIFF_SAVE")) {	/* for "vtdiff file": the whole stream */
			FILE *f = fopen(getenv("VTDIFF_SAVE"), "wb");

			if (f && fwrite(b.p, 1, b.len, f) == b.len)
				printf("# saved in %s; %dx%d\n", getenv("VTDIFF_SAVE"), p.cols, p.rows);
			if (f)
				fclose(f);
		}
		buf_free(&b);
		pair_close(&p);
	}
	if (!bad)
		printf("ok - random streams: %d rounds, every cell and the cursor as libvterm's after every chunk\n", rounds);
	return bad;
}

static int run_file(const char *path, int cols, int rows)
{
	FILE *f = fopen(path, "rb");
	struct buf b = { 0 };
	char chunk[65536], name[300];
	size_t n;
	unsigned seed = 7;
	struct pair p;
	int bad;

	if (!f) {
		printf("not ok - %s: %s\n", path, strerror(errno));
		return 1;
	}
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		buf_append(&b, chunk, n);
	fclose(f);
	snprintf(name, sizeof(name), "%s (%zu bytes, %dx%d)", path, b.len, cols, rows);
	if (b.len < 200) {
		printf("not ok - %s: too short to prove anything\n", name);
		buf_free(&b);
		return 1;
	}
	pair_open(&p, cols, rows);
	bad = pair_feed(&p, b.p, b.len, &seed, name);
	if (!bad)
		printf("ok - %s: every cell and the cursor as libvterm's after every chunk\n", name);
	pair_close(&p);
	buf_free(&b);
	return bad;
}

int main(int argc, char **argv)
{
	(void)run;	/* the console's main: not this program's */
	setlocale(LC_CTYPE, "C.UTF-8");
	app.remote_clipboard = CLIP_DENY;
	if (argc == 4 && !strcmp(argv[1], "random"))
		return run_random((unsigned)atoi(argv[2]), atoi(argv[3]));
	if (argc == 5 && !strcmp(argv[1], "file"))
		return run_file(argv[2], atoi(argv[3]), atoi(argv[4]));
	fprintf(stderr, "usage: vtdiff random SEED ROUNDS | file FILE COLS ROWS\n");
	return 2;
}
