/*
 * fuzz_config: libFuzzer target for the devices file (README "Configuration").
 * The file is the user's, but it is often copied from elsewhere, edited by
 * hand and shared; a broken one must end in "FILE:LINE: problem" and exit 2,
 * never in a crash or in a half-valid configuration.
 *
 * The console's own config_parse() runs on the input (a writable,
 * NUL-terminated copy, as read_file() gives it), with the unit tests' calling
 * convention.  Then what it accepted is checked against the documented rules:
 * every device named (1-63 chars, unique), with a ws:// or wss:// url and
 * exactly one token source, a token of at most 256 chars, a PTY of auto or
 * 10..1000 x 2..1000, the prefix a control key, the heartbeat 1-3600 s.  A
 * rejection must name the file and a line.  parse_prefix() and parse_size()
 * also get the whole input and every line's value on their own.
 */
#define TUNNEL_TUI_NO_MAIN
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"	/* main's helpers */
#include "../../tunnel_tui.c"
#pragma GCC diagnostic pop

/* Aborts with a reason: libFuzzer reports the input as a crash. */
static void fail(int line, const char *what)
{
	fprintf(stderr, "fuzz_config.c:%d: check failed: %s\n", line, what);
	abort();
}
#define CHECK(cond) do { if (!(cond)) fail(__LINE__, #cond); } while (0)

/* A NUL-terminated, writable copy of the input. */
static char *text_copy(const uint8_t *data, size_t size)
{
	char *t = xrealloc(NULL, size + 1);

	if (size)
		memcpy(t, data, size);
	t[size] = '\0';
	return t;
}

/* parse_size(): "auto" is 0x0, anything else accepted is in range. */
static void check_size(const char *v)
{
	int cols = -1, rows = -1;

	if (parse_size(v, &cols, &rows) < 0)
		return;
	if (!strcmp(v, "auto"))
		CHECK(cols == 0 && rows == 0);
	else
		CHECK(cols >= 10 && cols <= 1000 && rows >= 2 && rows <= 1000);
}

/* parse_prefix(): -1, or Ctrl-A … Ctrl-Z. */
static void check_prefix(const char *v)
{
	int k = parse_prefix(v);

	CHECK(k == -1 || (k >= 1 && k <= 26));
}

/* Both value parsers on the whole text and on every line's value. */
static void check_values(const uint8_t *data, size_t size)
{
	char *t = text_copy(data, size), *nl;

	check_size(t);
	check_prefix(t);
	for (char *s = t; s && *s; s = nl) {
		char *eq;

		nl = strchr(s, '\n');
		if (nl)
			*nl++ = '\0';
		eq = strchr(s, '=');
		s = trim(eq ? eq + 1 : s);
		check_size(s);
		check_prefix(s);
	}
	free(t);
}

/* An accepted configuration follows every documented rule. */
static void check_accepted(const struct config *c)
{
	CHECK(c->prefix_key >= 1 && c->prefix_key <= 26);
	CHECK(c->heartbeat_s == 0 || (c->heartbeat_s >= 1 && c->heartbeat_s <= 3600));
	CHECK(strnlen(c->record_dir, sizeof(c->record_dir)) < sizeof(c->record_dir));
	CHECK(c->ndev == 0 || (c->dev && token_sources));
	for (int i = 0; i < c->ndev; i++) {
		const struct device_config *d = &c->dev[i];
		const struct token_source *ts = &token_sources[i];
		size_t nlen = strnlen(d->name, sizeof(d->name));

		CHECK(nlen >= 1 && nlen < sizeof(d->name));
		for (int j = 0; j < i; j++)
			CHECK(strcmp(c->dev[j].name, d->name) != 0);
		CHECK(!strncmp(d->url, "ws://", 5) || !strncmp(d->url, "wss://", 6));
		CHECK(!!d->token + !!ts->file[0] + !!ts->env[0] == 1);
		CHECK(!d->token || strlen(d->token) <= 256);
		CHECK((d->pty_cols == 0 && d->pty_rows == 0) ||
		      (d->pty_cols >= 10 && d->pty_cols <= 1000 &&
		       d->pty_rows >= 2 && d->pty_rows <= 1000));
		CHECK(d->reopen == REOPEN_ASK || d->reopen == REOPEN_AUTO || d->reopen == REOPEN_NEVER);
		CHECK(d->line >= 1);
		CHECK(strnlen(d->attach, sizeof(d->attach)) < sizeof(d->attach));
	}
}

/* A rejection names the file and a line: "f:LINE: …". */
static void check_rejected(const char *err)
{
	char *end;
	long line;

	CHECK(!strncmp(err, "f:", 2));
	line = strtol(err + 2, &end, 10);
	CHECK(end > err + 2 && line >= 1 && *end == ':');
}

/* config_parse() as the console calls it; everything it allocated freed. */
static void check_parse(const uint8_t *data, size_t size)
{
	struct config c = { .prefix_key = 7 };
	char err[300] = "", *text = text_copy(data, size);
	int r = config_parse(&c, text, "f", err, sizeof(err));

	CHECK(r == 0 || r == -1);
	CHECK(c.ndev >= 0);
	if (r == 0)
		check_accepted(&c);
	else
		check_rejected(err);
	for (int i = 0; i < c.ndev; i++)
		secret_free(c.dev[i].token);
	free(c.dev);
	free(token_sources);
	token_sources = NULL;
	free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_parse(data, size);
	check_values(data, size);
	return 0;
}
