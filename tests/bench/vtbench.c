/* vtbench: the terminal layer alone, no I/O (part of `make bench`).
 *
 *   vtbench FILE COLS ROWS
 *
 * Feeds FILE, in message-sized writes, through
 *   console  tunnel_tui's own terminal layer: term_feed() into a session as
 *            vt_open() sets it up (the console's emulator, its row-pointer
 *            grid, the 5000-line packed scrollback ring);
 *   screen   libvterm's screen layer (VTermScreen) with a scrollback callback
 *            that keeps the same ring: what the console used before it had a
 *            screen layer of its own, and what most libvterm programs use;
 *   parser   libvterm's parser and state with no callbacks: the ceiling of
 *            any screen layer on libvterm;
 * and prints "console MB/s screen MB/s console_kb screen_kb parser MB/s sb_kb": the
 * speeds, the heap one session's terminal takes (grids and screen buffers,
 * no scrollback lines yet) in each, both with the alternate screen made,
 * and the heap the console's scrollback takes after FILE (sb_kb). */
#define TUNNEL_TUI_NO_MAIN
#pragma GCC diagnostic ignored "-Wunused-function"	/* main's helpers */
#include "../../tunnel_tui.c"
#include <malloc.h>
#include <vterm.h>

#define WRITE_SIZE 8000		/* about one relayed message */

static size_t heap_used(void)
{
	return mallinfo2().uordblks;
}

static uint32_t pack_color(const VTermColor *c, int fg)	/* as the console packs colours */
{
	if (fg ? VTERM_COLOR_IS_DEFAULT_FG(c) : VTERM_COLOR_IS_DEFAULT_BG(c))
		return COLOR_DEFAULT;
	if (VTERM_COLOR_IS_INDEXED(c))
		return COLOR_INDEXED | c->indexed.idx;
	return COLOR_RGB | (uint32_t)c->rgb.red << 16 | (uint32_t)c->rgb.green << 8 | c->rgb.blue;
}

static int ring_push(int cols, const VTermScreenCell *cells, void *user)	/* as the console keeps it */
{
	struct session *s = user;
	struct cell row[cols];

	for (int i = 0; i < cols; i++)
		row[i] = (struct cell){ cells[i].chars[0] == (uint32_t)-1 ? 0 : cells[i].chars[0],
					pack_color(&cells[i].fg, 1), pack_color(&cells[i].bg, 0),
					(uint8_t)((cells[i].attrs.bold ? ATTR_BOLD : 0) |
						  (cells[i].attrs.reverse ? ATTR_REVERSE : 0)),
					(uint8_t)cells[i].width };
	sb_push(s, row, cols);
	return 1;
}

static int no_damage(VTermRect r, void *user)
{
	(void)r, (void)user;
	return 1;
}

/* The heap the scrollback takes once IN has gone through a session: the
 * ring of 5000 lines as the console packs them. */
static size_t scrollback_bytes(const struct buf *in, int cols, int rows)
{
	static struct tunnel t = { .cfg.name = "vtbench" };
	struct session s = { .rows = rows, .cols = cols, .tunnel = &t };
	size_t h0 = heap_used(), used;

	vt_open(&s);
	for (size_t i = 0; i < in->len; i += WRITE_SIZE)
		term_feed(&s, in->p + i, in->len - i < WRITE_SIZE ? in->len - i : WRITE_SIZE);
	used = heap_used() - h0;
	vt_close(&s);
	return used;
}

static double run_console(const struct buf *in, int cols, int rows, size_t *bytes)
{
	static struct tunnel t = { .cfg.name = "vtbench" };
	struct session s = { .rows = rows, .cols = cols, .tunnel = &t };
	size_t h0 = heap_used();
	double t0;

	vt_open(&s);
	vt_altscreen(&s, 1);	/* made, as the screen layer's below */
	vt_altscreen(&s, 0);
	*bytes = heap_used() - h0 - SCROLLBACK_LINES * sizeof(*s.sb);
	t0 = now_us() / 1e3;
	for (size_t i = 0; i < in->len; i += WRITE_SIZE)
		term_feed(&s, in->p + i, in->len - i < WRITE_SIZE ? in->len - i : WRITE_SIZE);
	t0 = now_us() / 1e3 - t0;
	vt_close(&s);
	return t0;
}

static double run_screen(const struct buf *in, int cols, int rows, size_t *bytes)
{
	static const VTermScreenCallbacks cbs = { .damage = no_damage, .sb_pushline = ring_push };
	struct session ring = { .rows = rows, .cols = cols };
	size_t h0 = heap_used();
	VTerm *vt = vterm_new(rows, cols);
	VTermScreen *vs;
	double t0;

	vterm_set_utf8(vt, 1);
	vs = vterm_obtain_screen(vt);
	vterm_screen_set_callbacks(vs, &cbs, &ring);
	vterm_screen_enable_altscreen(vs, 1);
	vterm_screen_set_damage_merge(vs, VTERM_DAMAGE_SCROLL);
	vterm_screen_reset(vs, 1);
	*bytes = heap_used() - h0;
	ring.sb = xcalloc(SCROLLBACK_LINES * sizeof(*ring.sb));
	t0 = now_us() / 1e3;
	for (size_t i = 0; i < in->len; i += WRITE_SIZE) {
		vterm_input_write(vt, in->p + i, in->len - i < WRITE_SIZE ? in->len - i : WRITE_SIZE);
		vterm_screen_flush_damage(vs);
	}
	t0 = now_us() / 1e3 - t0;
	vterm_free(vt);
	for (int i = 0; i < ring.sb_count; i++)
		free(ring.sb[(ring.sb_head + i) % SCROLLBACK_LINES]);
	free(ring.sb);
	return t0;
}

static double run_parser(const struct buf *in, int cols, int rows)
{
	VTerm *vt = vterm_new(rows, cols);
	double t0;

	vterm_set_utf8(vt, 1);
	vterm_state_reset(vterm_obtain_state(vt), 1);
	t0 = now_us() / 1e3;
	for (size_t i = 0; i < in->len; i += WRITE_SIZE)
		vterm_input_write(vt, in->p + i, in->len - i < WRITE_SIZE ? in->len - i : WRITE_SIZE);
	t0 = now_us() / 1e3 - t0;
	vterm_free(vt);
	return t0;
}

int main(int argc, char **argv)
{
	struct buf in = { 0 };
	char chunk[65536];
	size_t n, console_bytes, screen_bytes;
	double t_console, t_screen, t_parser;
	FILE *f;

	if (argc != 4 || !(f = fopen(argv[1], "rb"))) {
		fprintf(stderr, "usage: vtbench FILE COLS ROWS\n");
		return 2;
	}
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		buf_append(&in, chunk, n);
	fclose(f);
	t_console = run_console(&in, atoi(argv[2]), atoi(argv[3]), &console_bytes);
	t_screen = run_screen(&in, atoi(argv[2]), atoi(argv[3]), &screen_bytes);
	t_parser = run_parser(&in, atoi(argv[2]), atoi(argv[3]));
	printf("%.2f %.2f %.1f %.1f %.2f %.1f\n", in.len / 1e3 / t_console, in.len / 1e3 / t_screen,
	       console_bytes / 1024.0, screen_bytes / 1024.0, in.len / 1e3 / t_parser,
	       scrollback_bytes(&in, atoi(argv[2]), atoi(argv[3])) / 1024.0);
	buf_free(&in);
	return 0;
}
