/*
 * tunnel_tui: a split-screen console for IoT devices behind a cloud "secure
 * tunnel" (Huawei IoTDA).  The platform relays JSON messages over WebSocket
 * between this application and a device, which turns them into SSH sessions;
 * several sessions (request_ids) share one tunnel.  Left: devices and their
 * sessions.  Right: the selected session's live terminal (an emulator of its own).
 *
 * The wire protocol is the README's "Protocol" section: §N in comments here
 * is its section N.  One thread: libwebsockets owns the loop (it does not
 * honour lws_service's timeout, and Debian's build has no external poll);
 * the keyboard and a signalfd come in as RAW_FILE descriptors; every timer
 * is an lws_sul.
 *
 * Contents (search for the banners):
 *   1. tunables          limits, timeouts, colours, the key bindings table
 *   2. data types        struct app, struct tunnel (one WebSocket),
 *                        struct session (one request_id)
 *   3. utilities         buffers, secrets, time, UTF-8
 *   4. protocol          encode, decode, route, chunk, AK/SK signing:
 *                        pure, unit-tested
 *   5. configuration     the devices file, --tunnel-json, tokens
 *   6. terminal          recording, grids, scrollback, the emulator
 *   7. sessions          open, end, reopen, input
 *   8. network           the lws callback, send lanes, heartbeat, reconnect
 *   9. IoTDA API         create, watch and close tunnels by device ID
 *  10. screen            layout, list, pane, status bar, overlays
 *  11. keys              bindings, modes, dialogs
 *  12. batch exec        --exec: one command on many devices, no screen
 *  13. file transfer     Ctrl-g u / d, --put, --get: files through the
 *                        remote shell, as text, chunk by chunk, verified
 *  14. startup and exit  terminal restore, signals, command line, main
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE	/* memmem, explicit_bzero, …: builds with any flags */
#endif
#include <libwebsockets.h>
#include <cJSON.h>
#include <curses.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <zlib.h>

#include <ctype.h>
#include <dirent.h>
#include <stddef.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <arpa/inet.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <wchar.h>

/************************************************************************
 *** 1. tunables
 ************************************************************************/

#define TUNNEL_TUI_VERSION  "0.1.0"
#define MAX_MESSAGE         10240	/* bytes per WebSocket message (§1) */
#define INPUT_CHUNK         4096	/* input bytes per command message (§4.5) */
#define RX_LIMIT            (1 << 20)	/* larger inbound frames are dropped */
#define BULK_QUEUE_CAP      (4 << 20)	/* pasted bytes waiting to be sent */
#define SCROLLBACK_LINES    5000
#define ROWS_MAX            1000	/* a PTY's rows that are drawn row by row (more: in full) */
#define LIST_WIDTH          26		/* the device list's columns */
#define HEARTBEAT_S         20		/* JSON and WebSocket pings (§4.8) */
#define DEAD_LINK_BEATS     3		/* silent heartbeats before the link is dead */
#define DEVICE_WAIT_S       10		/* send connect anyway after this (§4.2) */
#define STALE_S             3		/* unanswered this long: "no answer for N s" */
#define PROBE_US            1000000	/* input unanswered: ping this often */
#define ACTIVE_DEAD_S       10		/* input unanswered this long: the link is dead */
#define HANDSHAKE_S         15		/* TCP, TLS and the upgrade, all told */
#define PREDICT_RTT_MS      30		/* predict = auto: local echo from this round trip */
#define PREDICT_MAX         128		/* characters predicted ahead of the echo */
#define PREDICT_GIVE_UP_MS  1000	/* an echo this late (or 3 round trips): none comes */
#define PREDICT_MARK_MS     80		/* unconfirmed characters underlined from this round trip */
#define FRAME_INTERVAL_US   16000	/* at most ~60 redraws a second */
#define PAIR_CACHE          509		/* colour pairs remembered for drawing (a prime) */
#define ERROR_REPORT_S      5		/* rate limit for malformed-input notices */
#define DEFAULT_PTY_COLS    128		/* what official devices run (§5) */
#define DEFAULT_PTY_ROWS    30
#define SHORT_ID            4		/* request_id characters shown in the list */
#define LOGIN_TIMEOUT_S     15		/* no output this long after connect_response: wedged */
#define CLOSE_WAIT_US       500000	/* for the close handshake when quitting */
#define CLIP_MAX            (100 * 1024)	/* copied bytes sent by OSC 52: xterm's limit is near */
#define OSC_MAX             (CLIP_MAX / 3 * 4 + 64)	/* a device's OSC 52, base64 */
#define GUARD_US            500000	/* a question the device raised ignores keys this long */
#define MOUSE_WHEEL_LINES   3		/* rows a wheel step scrolls */
#define DOUBLE_CLICK_US     400000	/* a second click this soon selects a word */
#define BATCH_PARALLEL      20		/* --exec devices at once, by default */
#define BATCH_PARALLEL_MAX  100		/* IoTDA: 100 devices in remote login per instance */

/* Reconnect backoff (§4.8): 1 s doubling to 30 s, each with ±20 % jitter. */
static const uint32_t backoff_ms[] = { 1000, 2000, 4000, 8000, 16000, 30000 };

/* lws's own WebSocket PING/PONG heartbeat and dead-link hang-up; the
 * interval is [console] heartbeat = SECONDS (default HEARTBEAT_S). */
static lws_retry_bo_t ws_heartbeat = {
	.secs_since_valid_ping = HEARTBEAT_S,
	.secs_since_valid_hangup = HEARTBEAT_S * DEAD_LINK_BEATS,
};

/* Colour pairs of the console's own chrome (not of remote output). */
enum chrome { C_NORMAL, C_BORDER, C_SELECTED, C_STATUS, C_ALERT, C_DIM,
	      C_GOOD, C_WARN, C_BANNER, C_MARK, C_COUNT };
static const short chrome_colors[C_COUNT][2] = {	/* fg, bg; -1 default */
	[C_NORMAL] = { -1, -1 },	[C_BORDER] = { COLOR_BLUE, -1 },
	[C_SELECTED] = { COLOR_BLACK, COLOR_CYAN },
	[C_STATUS] = { COLOR_BLACK, COLOR_WHITE },
	[C_ALERT] = { COLOR_WHITE, COLOR_RED },	[C_DIM] = { COLOR_BLUE, -1 },
	[C_GOOD] = { COLOR_GREEN, -1 },	[C_WARN] = { COLOR_YELLOW, -1 },
	[C_BANNER] = { COLOR_WHITE, COLOR_MAGENTA },
	[C_MARK] = { COLOR_BLACK, COLOR_YELLOW },
};

/*
 * How a session's end is shown inline (§4.7): SGR that remote output is very
 * unlikely to use together (bold, reverse, magenta) framed by box rules.
 */
#define END_LINE_SGR  "\033[0;1;7;35m"
#define BYE_LINE_SGR  "\033[0;7;34m"	/* a session the user ended: no fault */
#define END_LINE_OFF  "\033[0m"
#define BYE_WINDOW_US 10000000	/* an end this soon after "exit" is the user's */
#define SDK_408_TEXT  "SSH idles for too long"	/* the official SDK's, for any exit */

/* Status codes and close codes (§6) explained in the list and status bar. */
static const struct { const char *code, *meaning; } status_meanings[] = {
	{ "400", "SSH login failed" },	{ "401", "token invalid or expired" },
	{ "404", "tunnel closed" },	{ "408", "shell ended" },
	{ "409", "another connection took this tunnel" },
	{ "410", "device went away" },	{ "413", "message too big" },
	{ "1000", "closed" },		{ "1002", "authentication failed" },
	{ "1006", "connection lost" },	{ "1009", "message too big" },
	{ "1015", "TLS handshake failed" },
	{ "4000", "another connection took this tunnel" },
};

/* Every bindable action has one signature (as in dvtm). */
union arg { int i; const char *s; };
typedef void action_fn(const union arg *arg);
static action_fn act_new_session, act_close_session, act_move, act_zoom,
		 act_copy_mode, act_help, act_quit, act_send_prefix,
		 act_reopen, act_next_device, act_redraw, act_mark, act_broadcast,
		 act_solo, act_record, act_marker, act_device, act_connect, act_filter,
		 act_compact, act_pick, act_paste_copied, act_rename, act_transfer;

/* After the prefix key (Ctrl-g by default): */
static const struct binding {
	int key;		/* a character or a curses KEY_ code */
	const char *keyname;	/* as the help overlay shows it */
	action_fn *fn;
	union arg arg;
	const char *help;
} bindings[] = {
	{ 'n', "n", act_new_session, { 0 }, "new session on the selected device (log in)" },
	{ 'r', "r", act_reopen, { 0 }, "reopen: the selected ended session, or a device's lost ones" },
	{ 'x', "x", act_close_session, { 0 }, "close the selected session, or the device's tunnel" },
	{ 'c', "c", act_connect, { 0 }, "connect the device again (by device_id: a new tunnel)" },
	{ 'j', "j / Down", act_move, { .i = +1 }, "next device or session" },
	{ KEY_DOWN, NULL, act_move, { .i = +1 }, NULL },
	{ 'k', "k / Up", act_move, { .i = -1 }, "previous device or session" },
	{ KEY_UP, NULL, act_move, { .i = -1 }, NULL },
	{ '\t', "Tab", act_next_device, { .i = +1 }, "next device" },
	{ KEY_BTAB, NULL, act_next_device, { .i = -1 }, NULL },
	{ '1', "1 … 9", act_device, { .i = 1 }, "device 1 … 9, its first session" },
	{ '2', NULL, act_device, { .i = 2 }, NULL }, { '3', NULL, act_device, { .i = 3 }, NULL },
	{ '4', NULL, act_device, { .i = 4 }, NULL }, { '5', NULL, act_device, { .i = 5 }, NULL },
	{ '6', NULL, act_device, { .i = 6 }, NULL }, { '7', NULL, act_device, { .i = 7 }, NULL },
	{ '8', NULL, act_device, { .i = 8 }, NULL }, { '9', NULL, act_device, { .i = 9 }, NULL },
	{ 'o', "o", act_pick, { 0 }, "open a device from the API's list (IoTDA)" },
	{ '/', "/", act_filter, { 0 }, "filter the list as you type; Enter jumps to the match" },
	{ 'v', "v", act_compact, { 0 }, "compact list (a row per device) or full" },
	{ 'z', "z", act_zoom, { 0 }, "zoom: hide or show the list" },
	{ 'm', "m", act_mark, { 0 }, "mark or unmark the session for broadcast" },
	{ 'b', "b", act_broadcast, { 0 }, "broadcast: type into every marked live session" },
	{ 's', "s", act_solo, { 0 }, "solo: type into this session only (broadcast paused)" },
	{ 'R', "R", act_record, { 0 }, "record the session (asciicast) or stop" },
	{ 'M', "M", act_marker, { 0 }, "add a chapter marker to the recording" },
	{ '[', "[", act_copy_mode, { 0 }, "copy mode: move, select (Space), y copies, q leaves" },
	{ ']', "]", act_paste_copied, { 0 }, "paste what was copied last" },
	{ ',', ",", act_rename, { 0 }, "name the session (kept when it is reopened)" },
	{ 'u', "u", act_transfer, { .i = 1 }, "upload a file to the device (or stop its transfer)" },
	{ 'd', "d", act_transfer, { .i = 0 }, "download a file from the device (or stop its transfer)" },
	{ 'l', "l", act_redraw, { 0 }, "redraw the screen" },
	{ '?', "?", act_help, { 0 }, "this help" },
	{ 'q', "q", act_quit, { 0 }, "quit (asks when sessions are live)" },
	{ 0, "prefix", act_send_prefix, { 0 }, "the prefix twice sends it to the session" },
};

/************************************************************************
 *** 2. data types
 ************************************************************************/

enum tunnel_state {	/* one WebSocket to the platform */
	T_IDLE, T_CONNECTING, T_WAITING, T_ONLINE, T_RECONNECTING,
	T_AUTH_FAILED, T_CLOSED, T_CREATING, T_API_ERROR, T_CERT_FAILED
};
static const char *const tunnel_state_names[] = {
	[T_IDLE] = "idle", [T_CONNECTING] = "connecting",
	[T_WAITING] = "waiting for device", [T_ONLINE] = "online",
	[T_RECONNECTING] = "reconnecting", [T_AUTH_FAILED] = "auth failed",
	[T_CLOSED] = "closed", [T_CREATING] = "creating tunnel",
	[T_API_ERROR] = "API error",	[T_CERT_FAILED] = "certificate refused",
};

enum remote_clip { CLIP_ASK, CLIP_ALLOW, CLIP_DENY };	/* remote_clipboard = */

enum session_state { S_PENDING, S_LOGIN, S_LIVE, S_ENDED };
static const char *const session_state_names[] = {
	[S_PENDING] = "waiting", [S_LOGIN] = "login", [S_LIVE] = "live",
	[S_ENDED] = "ended",
};

enum op {	/* the eight operation types (§3), and what is not one */
	OP_UNKNOWN, OP_CONNECT_TUNNEL, OP_CONNECT, OP_CONNECT_RESPONSE,
	OP_COMMAND, OP_COMMAND_RESPONSE, OP_DISCONNECT, OP_PING, OP_PONG
};
static const char *const op_names[] = {
	[OP_UNKNOWN] = "", [OP_CONNECT_TUNNEL] = "connect_tunnel",
	[OP_CONNECT] = "connect", [OP_CONNECT_RESPONSE] = "connect_response",
	[OP_COMMAND] = "command", [OP_COMMAND_RESPONSE] = "command_response",
	[OP_DISCONNECT] = "disconnect", [OP_PING] = "ping", [OP_PONG] = "pong",
};

struct buf {		/* a growable byte buffer */
	char *p;
	size_t len, cap;
};

struct inbound {	/* one decoded message; pointers into root */
	enum op op;
	const char *op_name;		/* as received, for error reports */
	const char *request_id;		/* NULL when absent or null */
	const char *data;		/* string data, else NULL */
	size_t data_len;
	int has_data;			/* a data member at all (official devices omit it) */
	char status_code[16];		/* disconnect: as a string, cleaned */
	char status_msg[200];		/* cleaned; "" when absent */
	cJSON *root;
};

struct frame {		/* one serialised message with LWS_PRE headroom */
	struct frame *next;
	struct session *owner;		/* bulk input's session, else NULL */
	size_t len;
	unsigned char buf[];
};

struct lane {		/* a FIFO of frames */
	struct frame *head, *tail;
	size_t bytes;
};

struct cell {		/* one screen cell, compact (scrollback keeps many) */
	uint32_t ch;			/* 0: blank */
	uint32_t fg, bg;		/* packed: see pack_color() */
	uint8_t attrs;			/* ATTR_* */
	uint8_t width;			/* 1, or 2 for a wide character */
};
enum { ATTR_BOLD = 1, ATTR_UNDERLINE = 2, ATTR_ITALIC = 4, ATTR_BLINK = 8,
       ATTR_REVERSE = 16,
       ATTR_WRAPPED = 128 };	/* on a row's first cell: it continues the row above (autowrap) */

struct grid {		/* a screen's cells: row pointers, rotated when it scrolls */
	struct cell *cells;		/* rows * (1 + cols), one block */
	struct cell **row;		/* row[r]: somewhere in cells; row[r][-1] is its header */
	int rows, cols;
};

struct sbline {		/* one scrollback line, packed (see sb_push), trailing blanks trimmed */
	uint16_t cols;			/* cells */
	uint16_t nruns;			/* struct sbrun in data, then the text */
	uint32_t room;			/* bytes of data allocated: a reused slot keeps its memory */
	uint32_t packed : 31;		/* a number of its own: unpacked copies know it */
	uint32_t wrapped : 1;		/* it continues the line above (autowrap) */
	unsigned char data[];
};

enum { VT_AUTOWRAP = 1, VT_INSERT = 2, VT_ORIGIN = 4, VT_NEWLINE = 8, VT_APPCURSOR = 16,
       VT_APPKEYPAD = 32, VT_PASTE = 64, VT_FOCUS = 128 };	/* struct vt's modes */
enum vt_parse { VP_GROUND, VP_ESC, VP_CSI, VP_CSI_IGNORE, VP_OSC, VP_STRING };
enum { MOUSE_NONE, MOUSE_CLICK, MOUSE_DRAG, MOUSE_MOVE };	/* what the remote asked to be told */
enum mouse_enc { MOUSE_X10, MOUSE_UTF8, MOUSE_SGR, MOUSE_URXVT };
#define VT_PARAMS 16		/* CSI parameters kept; a sequence with more is dropped */

struct pos { int row, col; };

struct vt {		/* a terminal's state besides its cells */
	int row, col;			/* the cursor */
	int phantom;			/* a glyph reached the margin: the next one wraps first */
	int top, bottom;		/* the scroll region: rows [top, bottom); bottom -1: the last row */
	unsigned modes;			/* VT_* */
	struct cell pen;		/* what printing and erasing leave */
	uint32_t last;			/* the last glyph, for REP */
	int last_width;
	uint8_t g[2], gl;		/* charsets G0 G1 ('B' ASCII, '0' line drawing, 'A' UK); GL's */
	struct { int row, col, visible; struct cell pen; } saved;	/* DECSC */
	uint8_t *tabs;			/* a bit per column */
	int mouse;			/* MOUSE_*: which reports the remote wants */
	enum mouse_enc mouse_enc;
	/* the parser */
	enum vt_parse state;
	int ended;			/* the string (VP_OSC …) an ESC ended: "\\" after it is ST */
	int param[VT_PARAMS];		/* -1: missing */
	uint16_t more;			/* bit i: a ':' followed parameter i (a sub-parameter) */
	int nparam;
	char leader, inter, final;
	uint32_t cp;			/* UTF-8: the character so far, */
	int need, total;		/* its bytes still to come, and all of them */
};

enum predict { PREDICT_AUTO, PREDICT_ALWAYS, PREDICT_NEVER };	/* predict = … */

/* Local echo, mosh's way: a typed key is drawn at once where the remote
 * will echo it, and checked against the echo when it comes.  An epoch
 * begins at every key that is not a printable, a backspace or an arrow;
 * its predictions show only once its first one proved right, so where the
 * remote does not echo (passwords) nothing ever shows. */
struct prediction {
	int row, col;			/* where, on the remote screen */
	uint32_t ch;			/* 0: an erase (backspace) */
	int epoch;
	int64_t sent_us;
};

struct predictor {
	struct prediction p[PREDICT_MAX];
	int n;
	int epoch;			/* the current one */
	int proven;			/* the newest epoch whose first prediction proved right */
	int row, col;			/* the predicted cursor; row -1: take the real one */
	unsigned made, confirmed, wrong;	/* for the record (and the bench) */
};

struct session {	/* one SSH session: one request_id */
	struct session *next;
	struct tunnel *tunnel;
	char request_id[40];
	char user[64];
	enum session_state state;
	char note[160];			/* connect_response text or end reason */
	int rows, cols;			/* the remote PTY's size */
	struct vt vt;			/* the emulator's state */
	struct grid primary, alt;	/* alt: made when a program first asks for it */
	struct grid *grid;		/* the one shown */
	uint64_t dirty[ROWS_MAX / 64 + 1];	/* screen rows changed since drawn */
	int dirty_all;			/* every row: a switch of screens, a resize */
	struct sbline **sb;		/* ring of SCROLLBACK_LINES */
	int sb_head, sb_count;
	int scroll;			/* lines scrolled back in copy mode */
	int altscreen, cursor_visible;
	int reverse_video;		/* DECSCNM: a visual bell flashes with it */
	struct buf keys;		/* typed input not yet sent */
	int bulk_frames;		/* its frames waiting in the bulk lane */
	char *password;			/* remember_password = session only: locked */
	size_t password_len;
	int attached;			/* attach command sent for this login */
	int dropped;			/* ended by a lost tunnel or device: reopenable */
	int marked;			/* receives broadcast keystrokes */
	struct recording *rec;		/* asciicast output, or NULL */
	struct batch_job *job;		/* --exec: what this session runs */
	int unseen;			/* output since last shown */
	int got_output;			/* since its connect: a late 408 is not its own */
	size_t unanswered;		/* typed bytes sent since the tunnel last heard anything */
	struct predictor pred;		/* local echo ahead of the remote's */
	lws_sorted_usec_list_t sul_predict;	/* gives up on echoes that never come */
	char title[64];			/* the remote's window title (OSC 0/2), cleaned */
	char name[64];			/* the user's (Ctrl-g ,): over the title */
	int64_t exit_typed_us;		/* when exit, logout or ^D was sent */
	char typed[8];			/* the last printable keys since the last Enter */
	int typed_len;			/* its length, -1 once a control key came */
	int login_tries;		/* refused logins in a row (ssh asks 3 times) */
	lws_sorted_usec_list_t sul_login;	/* no output after connect_response: wedged */
	struct buf osc;			/* the OSC being read: a clipboard set is ours */
	int osc_over;			/* longer than OSC_MAX: dropped */
	struct buf clip_offer;		/* a complete OSC 52 "c;BASE64", not yet asked about */
	struct xfer *xfer;		/* a file transfer holds it (section 13) */
};

enum reopen { REOPEN_ASK, REOPEN_AUTO, REOPEN_NEVER };	/* reopen = … */


/* sessions = …: auto learns from the device (an official one answers
 * connect_response without data and runs one session at a time). */
enum sessions { SESSIONS_AUTO, SESSIONS_MULTI, SESSIONS_SINGLE };

struct recording {	/* one asciicast v2 file being written */
	int fd;
	off_t size;			/* bytes of whole events written */
	int64_t start_us;
	int markers;
	char path[PATH_MAX];
	struct buf tail;		/* an incomplete UTF-8 sequence held back */
};

struct device_config {	/* one [device NAME] section or URL */
	char name[64];
	char url[1024];
	char username[64];
	char device_id[130];		/* opened through the IoTDA API, not a url */
	char cacert[PATH_MAX];
	int pty_cols, pty_rows;		/* 0: size to the pane */
	int sessions;			/* enum sessions */
	int predict;			/* enum predict */
	int login_timeout_s;		/* -1: [console]'s, else LOGIN_TIMEOUT_S; 0: none */
	char attach[256];		/* typed after every login, e.g. tmux new -A */
	int reopen;			/* enum reopen */
	int remember_password;		/* for reopen = auto: kept locked per session */
	char *token;			/* secret: locked memory */
	time_t expires;			/* 0: unknown */
	int line;			/* where it was defined, for errors */
};

struct tunnel {		/* one device: one WebSocket */
	struct tunnel *next;
	struct device_config cfg;
	struct lws_vhost *vhost;
	struct lws *wsi;
	lws_sorted_usec_list_t sul_connect;	/* reconnect backoff */
	lws_sorted_usec_list_t sul_ping;	/* JSON ping + dead-link check */
	lws_sorted_usec_list_t sul_device_wait; /* §4.2: 10 s for the device */
	unsigned retries;
	enum tunnel_state state;
	int device_ready;		/* connect_tunnel seen, or waited long */
	int official;			/* answers as the official SDK: one session, 128x30 */
	int close_code;			/* last WebSocket close code */
	char close_reason[128];		/* and its reason */
	char tls_error[96];		/* why its certificate was refused, in words */
	void *header_token;		/* the token's copy in lws's handshake buffer */
	int lock_fd;			/* its device lock, + 1; 0: none held */
	int force_lock;			/* connect even if another tunnel_tui holds it */
	char event[160];		/* the last tunnel-level event */
	int64_t reconnect_at_us;
	int64_t last_rx_us;
	int64_t waiting_since_us;	/* sent something unanswered since; 0: nothing */
	int input_waiting;		/* … and keystrokes among it (dead sooner) */
	int first_ping;			/* a new link whose first ping is unanswered */
	lws_sorted_usec_list_t sul_live;	/* probes while an answer is due */
	lws_sorted_usec_list_t sul_handshake;	/* HANDSHAKE_S for the connection */
	const char *phase;		/* how far the handshake got */
	int64_t ping_sent_us;
	char ping_id[40];
	int rtt_ms;			/* -1: not measured yet */
	int srtt_ms;			/* smoothed, for prediction; -1: not yet */
	int64_t last_error_report_us;
	unsigned dropped;		/* malformed messages dropped */
	struct buf rx;			/* reassembles fragments */
	int rx_skip;			/* dropping the rest of a bad frame */
	struct lane control, held, bulk;	/* see tunnel_write_one() */
	struct session *sessions;
	struct session *latest;		/* latest session sent to (§4 routing) */
	/* opened by device_id through the IoTDA API */
	char tunnel_id[130];		/* the API's tunnel, while it is open */
	char api_state[96];		/* the API's view: tunnel and device states */
	lws_sorted_usec_list_t sul_api;	/* polls the tunnel's state */
	int expiry_warned;
	/* file transfer (section 13) */
	struct xfer *xfer;		/* its one transfer at a time */
	unsigned xfer_tools;		/* the tools its shell has, once probed */
	int xfer_probed;
	char xfer_cwd[512];		/* the host shell's directory a transfer last saw */
};

enum sel { SEL_NONE, SEL_CHAR, SEL_LINE, SEL_RECT };

struct copy {		/* copy mode: a cursor and a selection over a session's history */
	struct session *s;
	int row, col;			/* the cursor: a history row (0: the oldest kept), a column */
	enum sel sel;
	int arow, acol;			/* where the selection began */
	int by_mouse;			/* entered by the wheel or a drag: left at their end */
};

struct mouse {		/* one report from the outer terminal, 0-based cells */
	int button;			/* 0-2 left, middle, right; 3 release (X10); | MB_* */
	int x, y, press, mods;		/* mods: 4 shift, 8 meta, 16 ctrl */
};
enum { MB_MOTION = 32, MB_WHEEL = 64, MB_MODS = 4 | 8 | 16 };

enum mode { M_NORMAL, M_PREFIX, M_LOGIN, M_CONFIRM, M_COPY, M_SEARCH,
	    M_HELP, M_FILTER, M_PICK, M_RENAME, M_XFER, M_MODES };	/* M_MODES: the tables' size */

struct dialog {		/* the login dialog and yes/no questions */
	struct tunnel *tunnel;
	struct session *reopen;		/* reopen this session, else a new one */
	char user[64];
	char *password;			/* secret: locked memory */
	size_t password_len;
	int field;			/* 0 username, 1 password */
	char question[200];
	void (*on_yes)(void);
	int64_t guard_until_us;		/* keys before this were typed for the session */
	void (*on_no)(void);		/* set after confirm(), for a "no" that must act */
	int mask;			/* bullets shown for the password: changes each key */
	char notice[120];		/* e.g. a refused password, before trying again */
};

static struct app {	/* the whole program's state */
	/* event loop */
	struct lws_context *ctx;
	struct lws_vhost *vhost;		/* no extra CA */
	lws_sorted_usec_list_t sul_draw, sul_tick, sul_close;
	int closing;			/* WebSockets saying close 1000 (on_closing) */
	int64_t last_draw_us;
	struct shown {			/* what the last frame showed: the same, and only */
		const struct session *s;	/* the changed rows of the pane are drawn */
		int x0, w, h, top, left, lines, cols, mode, overlay, predicted;
	} shown;
	int redraw;			/* the next frame draws everything (Ctrl-g l, resize) */
	int frame_full;			/* this frame does */
	int dry;			/* drawing only hashes what it would draw (see draw_list_if_changed) */
	uint64_t drawn_hash, list_hash;
	int cursor_wanted, cursor_shown;	/* the terminal's cursor: see show_cursor */
	int quit;
	int exit_code;
	/* devices and selection */
	struct tunnel *tunnels;
	struct tunnel *sel_tunnel;
	struct session *sel_session;	/* NULL: the device row */
	/* screen */
	int ui_up;			/* curses is active */
	int colors;			/* the terminal's colours, for remote output; 0: none */
	int clipboard_off;		/* clipboard = off: copies stay in the console */
	enum remote_clip remote_clipboard;	/* a device's OSC 52 */
	int mouse_off;			/* mouse = off: the outer terminal keeps the mouse */
	struct {			/* the last press: drags, double and triple clicks */
		int button, x, y, clicks, vr, col;
		int64_t at_us;
		struct session *s;	/* pressed in its pane (NULL: elsewhere) */
	} click;
	int mono;			/* the chrome in attributes only (NO_COLOR, no colours) */
	int zoom;
	int list_w;			/* the list's columns, without its rule */
	int list_w_set;			/* list_width = N; 0: fit the names */
	int list_top;			/* the first row in view */
	int compact;			/* one row per device */
	char filter[64];		/* the list filter (Ctrl-g /) */
	size_t filter_len;
	struct { struct tunnel *t; struct session *s; } filter_from;	/* Esc returns here */
	int dirty;
	enum mode mode;
	struct dialog dlg;
	char search[128];
	size_t search_len;
	char rename[64];		/* Ctrl-g , being typed */
	size_t rename_len;
	struct copy copy;		/* copy mode: its cursor and selection */
	struct buf clip;		/* what was copied last: Ctrl-g ] pastes it */
	struct {			/* a device's clipboard set, for the user to allow */
		struct buf data;
		char from[80];
		int waiting;		/* not yet asked: a dialog was open */
	} offer;
	char flash[200];		/* a one-off message in the status bar */
	int64_t flash_until_us;
	char start_warning[200];	/* shown once the screen is up (stderr with --exec) */
	char default_user[64];		/* --user: for devices added from the picker */
	int login_timeout_s;		/* [console]'s, for them too */
	/* input */
	int prefix_key;
	int paste;			/* inside a bracketed paste */
	struct buf paste_buf;
	char esc_seq[32];		/* a pending escape sequence (a mouse report's, too) */
	int esc_len;
	/* broadcast and recording */
	int broadcast, solo;
	struct buf pending_paste;	/* awaiting "paste into N sessions?" */
	char record_dir[PATH_MAX];
	char record_error[PATH_MAX + 100];	/* shown until the next recording starts */
	/* --exec */
	struct batch *batch;
	/* options */
	int insecure;
	int allow_plaintext;		/* ws:// and http:// to other machines */
	FILE *log;
} app = { .prefix_key = 0x07, .exit_code = 0 };

/* File transfer (section 13): what the rest of the console calls. */
struct xfer;
static int xfer_output(struct session *s, const char *p, size_t n);
static int xfer_busy(const struct session *s);
static int xfer_key(struct session *s, int ch, int fn);
static void xfer_session_ended(struct session *s, const char *code);
static void xfer_session_freed(struct session *s);
static void xfer_tunnel_back(struct tunnel *t);
static int xfer_pending(const struct tunnel *t);
static int xfer_status(const struct tunnel *t, char *out, size_t cap);
static void key_xfer(int ch, int fn);
static void draw_xfer_dialog(void);

/************************************************************************
 *** 3. utilities
 ************************************************************************/

static void ui_end(void);
static void usage_error(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static int64_t now_us(void)		/* monotonic microseconds */
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void clean_text(char *dst, size_t cap, const char *src, size_t n);
static void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void flash_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void tunnel_event(struct tunnel *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void batch_finish(struct batch_job *j, const char *status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* A line in --log, if any.  Cleaned here too: a forged newline or escape
 * must not reach whoever reads the log (tail -f runs escapes). */
static void log_line(const char *fmt, ...)
{
	va_list ap;
	time_t t = time(NULL);
	char when[32], raw[1024], line[1024];

	if (!app.log)
		return;
	strftime(when, sizeof(when), "%F %T", localtime(&t));
	va_start(ap, fmt);
	vsnprintf(raw, sizeof(raw), fmt, ap);
	va_end(ap);
	clean_text(line, sizeof(line), raw, strlen(raw));
	fprintf(app.log, "%s %s\n", when, line);
	fflush(app.log);
}

static void die(const char *fmt, ...)	/* the one fatal exit: terminal first */
{
	va_list ap;

	ui_end();
	fputs("tunnel_tui: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void *xrealloc(void *p, size_t n)	/* realloc or die */
{
	p = realloc(p, n ? n : 1);
	if (!p)
		die("out of memory");
	return p;
}

static void *xcalloc(size_t n)		/* zeroed memory or die */
{
	void *p = calloc(1, n ? n : 1);

	if (!p)
		die("out of memory");
	return p;
}

static void copy_str(char *dst, size_t cap, const char *src)	/* bounded, terminated */
{
	size_t n = src ? strnlen(src, cap - 1) : 0;

	memcpy(dst, src ? src : "", n);
	dst[n] = '\0';
}

/* Room for n more bytes.  Grows by allocate, copy, wipe, free: buffers
 * carry keystrokes, pastes and connect messages, and realloc would free
 * old copies unwiped. */
static void buf_reserve(struct buf *b, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		char *grown = xrealloc(NULL, (b->len + n + 1) * 2);

		if (b->p) {
			memcpy(grown, b->p, b->len);
			explicit_bzero(b->p, b->cap);
			free(b->p);
		}
		b->p = grown;
		b->cap = (b->len + n + 1) * 2;
	}
}

static void buf_append(struct buf *b, const void *p, size_t n)	/* grows as needed */
{
	buf_reserve(b, n);
	memcpy(b->p + b->len, p, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static int base64_value(unsigned char c)	/* -1: not in the alphabet */
{
	return c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ? c - 'a' + 26 :
	       c >= '0' && c <= '9' ? c - '0' + 52 : c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Base64 (RFC 4648) onto out; padding optional.  -1 on any other byte. */
static int base64_decode(const char *in, size_t n, struct buf *out)
{
	unsigned char *bytes = xcalloc(n / 4 * 3 + 3);
	uint32_t acc = 0;
	size_t k = 0, i = 0;
	int bits = 0, v = 0;

	for (; i < n && in[i] != '=' && (v = base64_value((unsigned char)in[i])) >= 0; i++) {
		acc = acc << 6 | (uint32_t)v;
		if ((bits += 6) >= 8)
			bytes[k++] = (unsigned char)(acc >> (bits -= 8));
	}
	while (i < n && in[i] == '=' && v >= 0)
		i++;
	if (i == n)
		buf_append(out, bytes, k);
	explicit_bzero(bytes, k);
	free(bytes);
	return i == n ? 0 : -1;
}

static void field_backspace(char *p, size_t *len)	/* drops one UTF-8 character */
{
	while (*len && ((unsigned char)p[*len - 1] & 0xc0) == 0x80)
		p[--*len] = '\0';
	if (*len)
		p[--*len] = '\0';
}

static void buf_printf(struct buf *b, const char *fmt, ...)	/* formatted append */
{
	char tmp[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	buf_append(b, tmp, n < (int)sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

static void buf_consume(struct buf *b, size_t n)	/* drops n bytes from the front */
{
	memmove(b->p, b->p + n, b->len - n);
	b->len -= n;
}

static void buf_free(struct buf *b)	/* wipes (it may hold input) and frees */
{
	if (b->p)
		explicit_bzero(b->p, b->cap);
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* Secrets (tokens, passwords) live in their own locked, undumpable pages,
 * wiped before they are unmapped; the mapping's size sits just before. */
static char *secret_alloc(size_t n)	/* n bytes of locked memory, zeroed */
{
	size_t len = (n + 16 + 4095) & ~(size_t)4095;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die("out of memory");
	(void)mlock(p, len);	/* best effort: RLIMIT_MEMLOCK may refuse */
	(void)madvise(p, len, MADV_DONTDUMP);
	memcpy(p, &len, sizeof(len));
	return p + 16;
}

static void secret_free(char *p)	/* wipes and releases */
{
	size_t len;

	if (!p)
		return;
	memcpy(&len, p - 16, sizeof(len));
	explicit_bzero(p - 16, len);
	munmap(p - 16, len);
}

static char *secret_dup(const char *s, size_t n)	/* a locked copy of n bytes */
{
	char *p = secret_alloc(n + 1);

	memcpy(p, s, n);
	return p;
}

static int utf8_seq_len(unsigned char c)	/* bytes in a sequence led by c */
{
	return c < 0x80 ? 1 : c < 0xc0 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 :
	       c < 0xf8 ? 4 : 1;
}

/* Code points that would steer the terminal or reorder what it shows: C1
 * controls and the bidirectional overrides, embeddings and isolates. */
static int is_steering(uint32_t cp)
{
	return (cp >= 0x80 && cp <= 0x9f) || (cp >= 0x202a && cp <= 0x202e) ||
	       (cp >= 0x2066 && cp <= 0x2069) || cp == 0x200e || cp == 0x200f || cp == 0x61c;
}

static int utf8_decode(const unsigned char *p, size_t n, uint32_t *cp)	/* bytes used, 0 if invalid */
{
	static const uint32_t min[] = { 0, 0, 0x80, 0x800, 0x10000 };
	int k = utf8_seq_len(p[0]);

	if (p[0] < 0x80) {
		*cp = p[0];
		return 1;
	}
	if (k < 2 || (size_t)k > n || p[0] < 0xc2)
		return 0;
	*cp = p[0] & (0xff >> (k + 1));
	for (int i = 1; i < k; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		*cp = *cp << 6 | (p[i] & 0x3f);
	}
	return *cp < min[k] || *cp > 0x10ffff || (*cp >= 0xd800 && *cp <= 0xdfff) ? 0 : k;
}

static size_t utf8_back(const char *s, size_t o)	/* o moved back to a character's start */
{
	while (o && ((unsigned char)s[o] & 0xc0) == 0x80)
		o--;
	return o;
}

/*
 * The one cleaner for text from a peer or a file that is drawn or logged:
 * controls (C0, DEL, C1) and bidi controls become visible escapes (\x1b,
 * \n, \u202e), invalid UTF-8 becomes U+FFFD, and the result fits cap bytes
 * (cut at a character, marked with …).  Idempotent: its escapes are plain text.
 */
static void clean_text(char *dst, size_t cap, const char *src, size_t n)
{
	const unsigned char *p = (const unsigned char *)src;
	size_t o = 0;
	char piece[16];

	for (size_t i = 0, k; i < n && cap; i += k) {
		uint32_t cp = 0;
		int len = (k = (size_t)utf8_decode(p + i, n - i, &cp)) ? (int)k : 0;

		if (!k) {	/* one invalid byte */
			k = 1;
			len = snprintf(piece, sizeof(piece), "\xef\xbf\xbd");
		} else if (cp < 0x20 || cp == 0x7f) {
			len = snprintf(piece, sizeof(piece), cp == '\n' ? "\\n" : cp == '\t' ? "\\t" :
				       cp == '\r' ? "\\r" : "\\x%02x", cp);
		} else if (is_steering(cp)) {
			len = snprintf(piece, sizeof(piece), "\\u%04x", cp);
		} else {
			memcpy(piece, p + i, k);
		}
		if (o + (size_t)len >= cap) {	/* no room: cut at a character, marked */
			o = cap < 4 ? o : o + 3 < cap ? o : utf8_back(dst, cap - 4);
			if (cap >= 4) {
				memcpy(dst + o, "…", 3);
				o += 3;
			}
			break;
		}
		memcpy(dst + o, piece, (size_t)len);
		o += (size_t)len;
	}
	if (cap)
		dst[o] = '\0';
}

static void clean_in_place(char *s, size_t cap)	/* clean_text over itself */
{
	char tmp[1024];

	clean_text(tmp, cap < sizeof(tmp) ? cap : sizeof(tmp), s, strlen(s));
	copy_str(s, cap, tmp);
}

/* A name as one path component: [A-Za-z0-9._-] kept, anything else '_',
 * no leading dot (a device named ../../x writes nothing outside). */
static void safe_component(const char *name, char *out, size_t cap)
{
	size_t i = 0;

	for (; name[i] && i + 1 < cap; i++)
		out[i] = isalnum((unsigned char)name[i]) || strchr("._-", name[i]) ? name[i] : '_';
	if (!i && cap > 1)
		out[i++] = '_';
	if (out[0] == '.')
		out[0] = '_';
	out[i] = '\0';
}

/* A file the console writes (log, recording, --outdir): 0600, and never
 * through a symbolic link planted where it goes.  A FILE, or NULL (errno). */
static FILE *open_private(const char *path, int flags, const char *mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | flags, 0600);
	FILE *f = fd < 0 ? NULL : fdopen(fd, mode);

	if (fd >= 0 && !f)
		close(fd);
	return f;
}

struct url {		/* the parts of a ws[s]:// or http[s]:// URL we act on */
	char host[256];
	int port;
	int tls;			/* wss:// or https:// */
};

static int url_parse(const char *url, struct url *u)	/* 0, or -1 if not one of ours */
{
	const char *rest = !strncmp(url, "wss://", 6) || !strncmp(url, "https://", 8) ? strstr(url, "://") + 3 :
			   !strncmp(url, "ws://", 5) || !strncmp(url, "http://", 7) ? strstr(url, "://") + 3 : NULL;
	size_t n;

	if (!rest)
		return -1;
	u->tls = url[2] == 's' || url[4] == 's';
	if (*rest == '[') {	/* [v6]:port */
		n = strcspn(rest + 1, "]");
		snprintf(u->host, sizeof(u->host), "%.*s", (int)n, rest + 1);
		rest += n + 2;
	} else {
		n = strcspn(rest, ":/?");
		snprintf(u->host, sizeof(u->host), "%.*s", (int)n, rest);
		rest += n;
	}
	u->port = *rest == ':' ? atoi(rest + 1) : u->tls ? 443 : 80;
	return u->host[0] && u->port > 0 && u->port < 65536 ? 0 : -1;
}

/* This machine, whatever the network does: localhost, 127.0.0.0/8, ::1
 * (an address, not a name that merely starts with 127.). */
static int host_is_loopback(const char *host)
{
	unsigned char a[16];

	if (!strcmp(host, "localhost"))
		return 1;
	if (inet_pton(AF_INET, host, a) == 1)
		return a[0] == 127;
	return inet_pton(AF_INET6, host, a) == 1 && !memcmp(a, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\1", 16);
}

/* Plaintext (ws://, http://) carries tokens, passwords and signatures in
 * clear: only to this machine, unless the user says --allow-plaintext. */
static const char *plaintext_problem(const char *url, int allowed)
{
	struct url u;

	if (url_parse(url, &u) < 0)
		return "not a ws://, wss://, http:// or https:// URL";
	if (u.tls || allowed || host_is_loopback(u.host))
		return NULL;
	return "plaintext to another machine sends tokens and passwords in clear: "
	       "use wss:// (https://), or --allow-plaintext";
}

static void new_request_id(char out[40])	/* a UUIDv4 (§2, our choice) */
{
	unsigned char r[16];
	FILE *f = fopen("/dev/urandom", "rb");

	if (!f || fread(r, 1, sizeof(r), f) != sizeof(r))
		die("cannot read /dev/urandom");
	fclose(f);
	r[6] = (r[6] & 0x0f) | 0x40;
	r[8] = (r[8] & 0x3f) | 0x80;
	snprintf(out, 40, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
		 "%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4], r[5],
		 r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]);
}

/************************************************************************
 *** 4. protocol: encode, decode, route, chunk (pure: no I/O)
 ************************************************************************/

static enum op op_from_name(const char *s)	/* OP_UNKNOWN if not one of §3 */
{
	for (size_t i = 1; s && i < sizeof(op_names) / sizeof(*op_names); i++)
		if (!strcmp(s, op_names[i]))
			return (enum op)i;
	return OP_UNKNOWN;
}

static size_t escaped_len(unsigned char c)	/* bytes c takes inside a JSON string */
{
	if (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t' ||
	    c == '\b' || c == '\f')
		return 2;
	return c < 0x20 ? 6 : 1;
}

/* Appends s as a JSON string literal.  Bytes >= 0x80 pass through as they
 * are: the protocol carries raw bytes (§1, §2). */
static void json_string(struct buf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	char esc[6] = { '\\', 'u', '0', '0', 0, 0 };

	buf_append(b, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		const char *two = c == '"' ? "\\\"" : c == '\\' ? "\\\\" :
			c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" :
			c == '\b' ? "\\b" : c == '\f' ? "\\f" : NULL;

		if (two) {
			buf_append(b, two, 2);
		} else if (c < 0x20) {
			esc[4] = hex[c >> 4];
			esc[5] = hex[c & 15];
			buf_append(b, esc, 6);
		} else {
			buf_append(b, &s[i], 1);
		}
	}
	buf_append(b, "\"", 1);
}

/* The envelope (§2) around data that is already JSON ("null", an object). */
static void encode_message(struct buf *b, enum op op, const char *request_id,
			   const char *data_json)
{
	buf_printf(b, "{\"operation_type\":\"%s\",\"tunnel_service_type\":\"ssh\","
		   "\"request_id\":", op_names[op]);
	if (request_id)
		json_string(b, request_id, strlen(request_id));
	else
		buf_append(b, "null", 4);
	buf_append(b, ",\"data\":", 8);
	buf_append(b, data_json, strlen(data_json));
	buf_append(b, "}", 1);
}

/* A command message carrying n raw input bytes. */
static void encode_command(struct buf *b, const char *request_id,
			   const char *bytes, size_t n)
{
	struct buf data = { 0 };

	json_string(&data, bytes, n);
	encode_message(b, OP_COMMAND, request_id, data.p);
	buf_free(&data);
}

/* A connect message (§3): credentials plus our optional PTY members.  The
 * caller wipes b after use: it holds the password. */
static void encode_connect(struct buf *b, const char *request_id,
			   const char *user, const char *password,
			   size_t password_len, int cols, int rows)
{
	struct buf data = { 0 };

	buf_append(&data, "{\"username\":", 12);
	json_string(&data, user, strlen(user));
	buf_append(&data, ",\"password\":", 12);
	json_string(&data, password, password_len);
	buf_printf(&data, ",\"cols\":%d,\"rows\":%d,\"term\":\"xterm-256color\"}",
		   cols, rows);
	encode_message(b, OP_CONNECT, request_id, data.p);
	buf_free(&data);
}

/*
 * How many of n input bytes the next command message may carry: at most
 * max_in bytes, at most max_escaped bytes once escaped, and never ending
 * inside a UTF-8 sequence (unless one sequence alone is cut off by n).
 */
static size_t chunk_len(const char *s, size_t n, size_t max_in, size_t max_escaped)
{
	size_t i = 0, esc = 0;

	while (i < n) {
		size_t k = (size_t)utf8_seq_len((unsigned char)s[i]), e = 0;

		if (i + k > n)
			k = n - i;
		for (size_t j = 0; j < k; j++)
			e += escaped_len((unsigned char)s[i + j]);
		if (i + k > max_in || esc + e > max_escaped)
			break;
		i += k;
		esc += e;
	}
	return i;
}

static const char *json_str(cJSON *o, const char *key)	/* a string member or NULL */
{
	cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int valid_id(const char *s, size_t max)	/* 1-max of [A-Za-z0-9_-] (§1) */
{
	size_t n = s ? strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") : 0;

	return n >= 1 && n <= max && !s[n];
}

static int valid_token(const char *s)	/* 1-256 visible ASCII: a header value as it is (§1) */
{
	size_t n = 0;

	for (; s && s[n]; n++)
		if ((unsigned char)s[n] <= 0x20 || (unsigned char)s[n] >= 0x7f)
			return 0;
	return n >= 1 && n <= 256;
}

#define EXPIRES_MAX_S (10.0 * 365 * 86400)	/* a token's life, at most */

struct tunnel_reply {	/* a create-tunnel answer, checked: pointers into its JSON */
	const char *uri, *token, *tunnel_id, *device_id;
	long expires_in;		/* 0: not given */
};

/* A create-tunnel answer (the API's, or --tunnel-json's) as §1 shapes it:
 * NULL when every field can be used, else what is wrong, for the user. */
static const char *tunnel_reply_check(cJSON *j, int need_id, int plaintext_ok, struct tunnel_reply *r)
{
	cJSON *exp = cJSON_GetObjectItemCaseSensitive(j, "expires_in");
	const char *why;

	r->uri = json_str(j, "tunnel_uri");
	r->token = json_str(j, "tunnel_access_token");
	r->tunnel_id = json_str(j, "tunnel_id");
	r->device_id = json_str(j, "device_id");
	r->expires_in = 0;
	if (!r->uri || !r->token)
		return "no tunnel_uri and tunnel_access_token: not a create-tunnel answer";
	if (strncmp(r->uri, "wss://", 6) && strncmp(r->uri, "ws://", 5))
		return "tunnel_uri is not a ws:// or wss:// URL";
	if ((why = plaintext_problem(r->uri, plaintext_ok)))
		return why;
	if (strlen(r->uri) >= 1024 || strpbrk(r->uri, " \r\n\t"))
		return "tunnel_uri is too long or holds blanks";
	if (!valid_token(r->token))
		return "tunnel_access_token is not 1-256 visible characters";
	if ((need_id || r->tunnel_id) && !valid_id(r->tunnel_id, 128))
		return "tunnel_id is not 1-128 of A-Z a-z 0-9 _ -";
	if (exp && (!cJSON_IsNumber(exp) || !(exp->valuedouble >= 1 && exp->valuedouble <= EXPIRES_MAX_S)))
		return "expires_in is not a number of seconds up to ten years";
	r->expires_in = exp ? (long)exp->valuedouble : 0;
	return NULL;
}

struct pick {		/* a device as ListDevices names it; strings cleaned */
	char id[130], name[96], product[96], status[16];
	char tunnel[96];		/* what ListDeviceTunnels said of it; "": not asked */
};

static void pick_field(cJSON *d, const char *key, char *out, size_t cap)	/* peer text, cleaned */
{
	const char *v = json_str(d, key);

	clean_text(out, cap, v ? v : "", v ? strlen(v) : 0);
}

/* One ListDevices page: its devices appended to *devs (grown), the next
 * page's marker into marker ("" after the last).  The devices read, or -1
 * if the answer is not a page. */
static int parse_devices_page(const char *reply, size_t len, struct pick **devs, int *n, int *cap,
			      char *marker, size_t mcap)
{
	cJSON *j = cJSON_ParseWithLength(reply ? reply : "", len), *list, *d;
	int got = 0;

	list = cJSON_GetObjectItemCaseSensitive(j, "devices");
	marker[0] = '\0';
	if (!cJSON_IsArray(list)) {
		cJSON_Delete(j);
		return -1;
	}
	cJSON_ArrayForEach(d, list) {
		struct pick *p;

		if (!valid_id(json_str(d, "device_id"), 128))
			continue;	/* an id we could not use in a request */
		if (*n == *cap) {
			*cap = *cap ? *cap * 2 : 64;
			*devs = xrealloc(*devs, (size_t)*cap * sizeof(**devs));
		}
		p = memset(&(*devs)[(*n)++], 0, sizeof(**devs));
		copy_str(p->id, sizeof(p->id), json_str(d, "device_id"));
		pick_field(d, json_str(d, "device_name") ? "device_name" : "device_id", p->name, sizeof(p->name));
		pick_field(d, json_str(d, "product_name") ? "product_name" : "product_id", p->product,
			   sizeof(p->product));
		pick_field(d, "status", p->status, sizeof(p->status));
		got++;
	}
	if (valid_id(json_str(cJSON_GetObjectItemCaseSensitive(j, "page"), "marker"), 128))
		copy_str(marker, mcap, json_str(cJSON_GetObjectItemCaseSensitive(j, "page"), "marker"));
	cJSON_Delete(j);
	return got;
}

static const char *connect_state(cJSON *j, const char *key)	/* "CONNECTED" either shape */
{
	cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);

	return cJSON_IsString(v) ? v->valuestring : json_str(v, "status");
}

/* A device's tunnels (ListDeviceTunnels) in words: who holds an open one. */
static void tunnels_text(const char *reply, size_t len, char *out, size_t cap)
{
	cJSON *j = cJSON_ParseWithLength(reply ? reply : "", len), *list, *t, *open = NULL;
	const char *src;

	list = cJSON_GetObjectItemCaseSensitive(j, "tunnels");
	cJSON_ArrayForEach(t, list)
		if (json_str(t, "status") && !strcmp(json_str(t, "status"), "OPEN"))
			open = t;
	src = open ? connect_state(open, "source_connect_state") : NULL;
	if (!cJSON_IsArray(list))
		snprintf(out, cap, "tunnels unknown");
	else if (!open)
		snprintf(out, cap, "no open tunnel");
	else if (src && !strcmp(src, "CONNECTED"))
		snprintf(out, cap, "tunnel open, in use by another console");
	else
		snprintf(out, cap, "tunnel open, no console on it");
	cJSON_Delete(j);
}

/* A --where condition on a picked device: FIELD=VALUE (equal) or
 * FIELD~VALUE (contains), case-blind; FIELD is name, id, product or
 * status.  1 match, 0 not, -1 if expr is not a condition. */
static int where_match(const struct pick *p, const char *expr)
{
	static const struct { const char *field; size_t offset; } fields[] = {
		{ "name", offsetof(struct pick, name) }, { "id", offsetof(struct pick, id) },
		{ "product", offsetof(struct pick, product) }, { "status", offsetof(struct pick, status) },
	};
	size_t n = strcspn(expr, "=~");
	const char *v = expr + n + 1;

	if (!expr[n] || !*v)
		return -1;
	for (size_t i = 0; i < sizeof(fields) / sizeof(*fields); i++)
		if (strlen(fields[i].field) == n && !strncmp(expr, fields[i].field, n)) {
			const char *have = (const char *)p + fields[i].offset;

			return expr[n] == '=' ? !strcasecmp(have, v) : strcasestr(have, v) != NULL;
		}
	return -1;
}

/* disconnect data (§3): the code may be a string or a number.  Both are
 * shown inside the console's own marked line: cleaned, so no control may
 * end that line early and fake remote output after it. */
static void decode_status(struct inbound *m, cJSON *data)
{
	cJSON *code = cJSON_GetObjectItemCaseSensitive(data, "status_code");
	cJSON *msg = cJSON_GetObjectItemCaseSensitive(data, "status_msg");

	if (cJSON_IsString(code))
		clean_text(m->status_code, sizeof(m->status_code), code->valuestring,
			   strlen(code->valuestring));
	else if (cJSON_IsNumber(code) && fabs(code->valuedouble) < 1e9)
		snprintf(m->status_code, sizeof(m->status_code), "%d", code->valueint);
	if (cJSON_IsString(msg))
		clean_text(m->status_msg, sizeof(m->status_msg), msg->valuestring, strlen(msg->valuestring));
}

/*
 * cJSON ends a string at a decoded \u0000, which would cut the rest of the
 * output off: NUL escapes become U+FFFF (a noncharacter) for the parse and
 * NUL bytes again after it.  NULL when the frame has none.
 */
static char *nul_escapes_out(const char *p, size_t n)
{
	char *q;

	if (!memmem(p, n, "\\u0000", 6))
		return NULL;
	q = memcpy(xrealloc(NULL, n), p, n);
	for (size_t i = 0; i + 5 < n; i++)
		if (q[i] == '\\' && q[++i] == 'u' && !memcmp(q + i + 1, "0000", 4))
			memcpy(q + i + 1, "FFFF", 4);
	return q;
}

static size_t nul_restore(char *s)	/* U+FFFF back to NUL; the true length */
{
	size_t o = 0;

	for (size_t i = 0; s[i]; i++) {
		if (!memcmp(s + i, "\xef\xbf\xbf", 3)) {
			s[o++] = '\0';
			i += 2;
		} else {
			s[o++] = s[i];
		}
	}
	return o;
}

/*
 * Parses one inbound frame.  Returns 0 (the caller frees m->root), or -1
 * with err set: the frame is then reported and dropped (§2).
 */
static int decode_message(const char *p, size_t n, struct inbound *m,
			  char *err, size_t errlen)
{
	cJSON *data;

	char *fixed = nul_escapes_out(p, n);
	const char *src = fixed ? fixed : p, *end = src;

	memset(m, 0, sizeof(*m));
	m->root = cJSON_ParseWithLengthOpts(src, n, &end, 0);
	while (m->root && end < src + n && isspace((unsigned char)*end))
		end++;
	if (fixed)
		explicit_bzero(fixed, n);
	free(fixed);
	if (!m->root || !cJSON_IsObject(m->root) || end != src + n) {
		snprintf(err, errlen, "malformed message (%zu bytes, not a JSON object)", n);
		cJSON_Delete(m->root);
		m->root = NULL;
		return -1;
	}
	m->op_name = json_str(m->root, "operation_type");
	m->op = op_from_name(m->op_name);
	m->request_id = json_str(m->root, "request_id");
	data = cJSON_GetObjectItemCaseSensitive(m->root, "data");
	m->has_data = data != NULL;
	if (cJSON_IsString(data)) {
		m->data = data->valuestring;
		m->data_len = fixed ? nul_restore(data->valuestring) : strlen(data->valuestring);
	} else if (cJSON_IsObject(data)) {
		decode_status(m, data);
	}
	if (m->op != OP_UNKNOWN)
		return 0;
	snprintf(err, errlen, "unknown operation_type \"%.40s\"",
		 m->op_name ? m->op_name : "(none)");
	cJSON_Delete(m->root);
	m->root = NULL;
	return -1;
}

static struct session *find_session(struct tunnel *t, const char *request_id)
{	/* the open session with this request_id, or NULL */
	for (struct session *s = t->sessions; s && request_id; s = s->next)
		if (s->state != S_ENDED && !strcmp(s->request_id, request_id))
			return s;
	return NULL;
}

/*
 * Which session an inbound message belongs to (§4, routing); NULL means the
 * tunnel itself.  Official devices echo the latest request_id they received
 * and say SSH_timeout_disconnect on shell exit: both go to the tunnel's
 * latest session.  A disconnect without a request_id is the platform's.
 */
static struct session *route_message(struct tunnel *t, const struct inbound *m)
{
	struct session *s;

	if (m->op == OP_CONNECT_TUNNEL || m->op == OP_PONG)
		return NULL;
	if (m->op == OP_DISCONNECT && (!m->request_id || !*m->request_id))
		return NULL;
	s = find_session(t, m->request_id);
	if (s)
		return s;
	return t->latest && t->latest->state != S_ENDED ? t->latest : NULL;
}

static const char *status_meaning(const char *code)	/* §6, or "" */
{
	for (size_t i = 0; i < sizeof(status_meanings) / sizeof(*status_meanings); i++)
		if (!strcmp(code, status_meanings[i].code))
			return status_meanings[i].meaning;
	return "";
}

/*** AK/SK request signing (SDK-HMAC-SHA256, the public API signing guide) ***/

struct sign_input {	/* one request to sign; headers lowercase, sorted */
	const char *method, *path, *query;
	const char *const (*headers)[2];	/* { name, value } pairs */
	int nheaders;
	const char *body;
	size_t body_len;
	const char *date;			/* X-Sdk-Date: YYYYMMDDTHHMMSSZ */
};

static void hex_encode(const unsigned char *p, size_t n, char *out)	/* 2n+1 bytes */
{
	static const char hex[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hex[p[i] >> 4];
		out[2 * i + 1] = hex[p[i] & 15];
	}
	out[2 * n] = '\0';
}

static void sha256_hex(const void *p, size_t n, char out[65])	/* lowercase hex digest */
{
	unsigned char md[32];
	unsigned int len = 0;

	EVP_Digest(p, n, md, &len, EVP_sha256(), NULL);
	hex_encode(md, 32, out);
}

/* RFC 3986: unreserved characters stay, every other byte becomes %XX. */
static void uri_encode(struct buf *b, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~')
			buf_append(b, &s[i], 1);
		else
			buf_printf(b, "%%%02X", c);
	}
}

static void canonical_uri(struct buf *b, const char *path)	/* each segment encoded, ends in / */
{
	const char *seg = path;

	while (*seg == '/')
		seg++;
	buf_append(b, "/", 1);
	while (*seg) {
		size_t n = strcspn(seg, "/");

		uri_encode(b, seg, n);
		buf_append(b, "/", 1);
		seg += n;
		while (*seg == '/')
			seg++;
	}
}

struct query_pair { const char *name, *value; };	/* as given, before encoding */

static int cmp_query_pair(const void *a, const void *b)	/* qsort: by name, then value */
{
	const struct query_pair *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	return c ? c : strcmp(x->value, y->value);
}

/* name=value pairs sorted by name, then value, as given (Huawei's signers
 * sort before they encode), each part encoded, joined with &. */
static void canonical_query(struct buf *b, const char *query)
{
	char *copy = strdup(query ? query : ""), *save = NULL;
	struct query_pair pairs[64];
	int n = 0;

	for (char *p = strtok_r(copy, "&", &save); p && n < 64; p = strtok_r(NULL, "&", &save)) {
		char *eq = strchr(p, '=');

		if (eq)
			*eq = '\0';
		pairs[n++] = (struct query_pair){ p, eq ? eq + 1 : "" };
	}
	qsort(pairs, (size_t)n, sizeof(*pairs), cmp_query_pair);
	for (int i = 0; i < n; i++) {
		if (i)
			buf_append(b, "&", 1);
		uri_encode(b, pairs[i].name, strlen(pairs[i].name));
		buf_append(b, "=", 1);
		uri_encode(b, pairs[i].value, strlen(pairs[i].value));
	}
	if (!n)
		buf_append(b, "", 0);
	free(copy);
}

/* The canonical request's SHA-256, as hex (the guide's HashedCanonicalRequest). */
static void hashed_canonical_request(const struct sign_input *in, char out[65])
{
	struct buf cr = { 0 };
	char body_hash[65];

	buf_printf(&cr, "%s\n", in->method);
	canonical_uri(&cr, in->path);
	buf_append(&cr, "\n", 1);
	canonical_query(&cr, in->query);
	buf_append(&cr, "\n", 1);
	for (int i = 0; i < in->nheaders; i++)
		buf_printf(&cr, "%s:%s\n", in->headers[i][0], in->headers[i][1]);
	buf_append(&cr, "\n", 1);
	for (int i = 0; i < in->nheaders; i++)
		buf_printf(&cr, "%s%s", i ? ";" : "", in->headers[i][0]);
	sha256_hex(in->body ? in->body : "", in->body_len, body_hash);
	buf_printf(&cr, "\n%s", body_hash);
	sha256_hex(cr.p, cr.len, out);
	buf_free(&cr);
}

/* Who signs API requests, and how: the basic algorithm signs with the SK
 * itself; the derived one (standard and enterprise instances, where remote
 * login lives) with a key derived per day, region and service. */
enum signing { SIGN_DERIVED, SIGN_BASIC };
#define SIGN_SERVICE "iotdm"		/* the service name IoTDA signs under */

struct signer {
	enum signing how;
	const char *ak, *sk;		/* secrets: locked memory */
	size_t sk_len;
	const char *region;		/* derived: e.g. cn-north-4 */
};

static void hmac_sha256(const void *key, size_t key_len, const void *p, size_t n,
			unsigned char out[32])	/* out = HMAC-SHA256(key, p) */
{
	size_t len = 0;

	EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, key_len, p, n, out, 32, &len);
}

/* The derived key: lower-case hex of HKDF-SHA256 (RFC 5869; ikm the SK, salt
 * the AK, info the scope, 32 bytes: one expand block). */
static void derived_key(const struct signer *sg, const char *scope, char out[65])
{
	unsigned char prk[32], okm[32];
	struct buf info = { 0 };

	hmac_sha256(sg->ak, strlen(sg->ak), sg->sk, sg->sk_len, prk);
	buf_printf(&info, "%s%c", scope, 1);
	hmac_sha256(prk, sizeof(prk), info.p, info.len, okm);
	hex_encode(okm, sizeof(okm), out);
	explicit_bzero(prk, sizeof(prk));
	explicit_bzero(okm, sizeof(okm));
	buf_free(&info);
}

/* The Authorization header value for a request signed with AK/SK. */
static void sign_request(const struct sign_input *in, const struct signer *sg,
			 char *auth, size_t cap)
{
	char hashed[65], to_sign[256], scope[128], key[65], sig[65];
	unsigned char mac[32];
	struct buf names = { 0 };
	int derived = sg->how == SIGN_DERIVED;

	hashed_canonical_request(in, hashed);
	snprintf(scope, sizeof(scope), "%.8s/%.64s/" SIGN_SERVICE, in->date, sg->region);
	if (derived) {
		snprintf(to_sign, sizeof(to_sign), "V11-HMAC-SHA256\n%s\n%s\n%s", in->date, scope, hashed);
		derived_key(sg, scope, key);
		hmac_sha256(key, 64, to_sign, strlen(to_sign), mac);
		explicit_bzero(key, sizeof(key));
	} else {
		snprintf(to_sign, sizeof(to_sign), "SDK-HMAC-SHA256\n%s\n%s", in->date, hashed);
		hmac_sha256(sg->sk, sg->sk_len, to_sign, strlen(to_sign), mac);
	}
	hex_encode(mac, 32, sig);
	for (int i = 0; i < in->nheaders; i++)
		buf_printf(&names, "%s%s", i ? ";" : "", in->headers[i][0]);
	if (derived)
		snprintf(auth, cap, "V11-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s",
			 sg->ak, scope, names.p ? names.p : "", sig);
	else
		snprintf(auth, cap, "SDK-HMAC-SHA256 Access=%s, SignedHeaders=%s, Signature=%s",
			 sg->ak, names.p ? names.p : "", sig);
	buf_free(&names);
	explicit_bzero(mac, sizeof(mac));
}

/* The region a derived signature names: the host label just before
 * .myhuaweicloud.com ({id}.st1.iotda-app.cn-north-4.myhuaweicloud.com). */
static int region_from_endpoint(const char *endpoint, char *out, size_t cap)
{
	const char *host = strstr(endpoint, "://"), *end, *dom;
	const char *label;

	host = host ? host + 3 : endpoint;
	end = host + strcspn(host, ":/");
	dom = memmem(host, (size_t)(end - host), ".myhuaweicloud.com", 18);
	if (!dom || dom + 18 != end)
		return -1;
	for (label = dom; label > host && label[-1] != '.'; label--)
		;
	if (label == dom || (size_t)(dom - label) >= cap)
		return -1;
	snprintf(out, cap, "%.*s", (int)(dom - label), label);
	return 0;
}

static void sdk_date(time_t t, char out[17])	/* X-Sdk-Date: 20191115T033655Z */
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}

/************************************************************************
 *** 5. configuration: the devices file, --tunnel-json, tokens
 ************************************************************************/

struct iotda_config {	/* the [iotda] section: the IoTDA API */
	char endpoint[512];		/* e.g. https://iotda.example.com */
	char project_id[130];
	char instance_id[130];
	char token_file[PATH_MAX];	/* an IAM token, instead of AK/SK */
	char cacert[PATH_MAX];
	int leave_open;			/* close_tunnels = no */
	char region[64];		/* derived signing's; default from the endpoint */
	int rate;			/* requests a second at most (API_RATE) */
	int signing;			/* enum signing: derived (default) or basic */
};

struct config {		/* what the file and the command line say */
	struct device_config *dev;
	int ndev;
	int prefix_key;
	int heartbeat_s;
	int login_timeout_s;		/* -1: LOGIN_TIMEOUT_S */
	int compact;			/* list = compact */
	int list_w;			/* list_width = N; 0: auto */
	int clipboard_off;		/* clipboard = off */
	int remote_clipboard;		/* enum remote_clip */
	int mouse_off;			/* mouse = off */
	char record_dir[PATH_MAX];
	struct iotda_config iotda;
	char token_file[PATH_MAX];	/* --token-file, for URL arguments */
};

struct token_source {	/* where one device's token comes from */
	char file[PATH_MAX];
	char env[64];
};
static struct token_source *token_sources;	/* parallel to config.dev */

typedef int key_setter(struct device_config *d, struct token_source *ts,
		       const char *v, char *err, size_t errlen);

static int parse_size(const char *v, int *cols, int *rows)	/* "auto" or COLSxROWS */
{
	char tail;

	if (!strcmp(v, "auto")) {
		*cols = *rows = 0;
		return 0;
	}
	if (sscanf(v, "%dx%d%c", cols, rows, &tail) != 2 || *cols < 10 ||
	    *rows < 2 || *cols > 1000 || *rows > 1000)
		return -1;
	return 0;
}

static int set_url(struct device_config *d, struct token_source *ts,
		   const char *v, char *err, size_t errlen)	/* url = ws[s]://… */
{
	(void)ts;
	if (strncmp(v, "wss://", 6) && strncmp(v, "ws://", 5)) {
		snprintf(err, errlen, "url must start with wss:// or ws://");
		return -1;
	}
	copy_str(d->url, sizeof(d->url), v);
	return 0;
}

static int set_token(struct device_config *d, struct token_source *ts,
		     const char *v, char *err, size_t errlen)	/* token = … */
{
	(void)ts;
	if (strlen(v) > 256) {
		snprintf(err, errlen, "token is longer than 256 characters");
		return -1;
	}
	secret_free(d->token);
	d->token = secret_dup(v, strlen(v));
	return 0;
}

static int set_pty(struct device_config *d, struct token_source *ts,
		   const char *v, char *err, size_t errlen)	/* pty = auto|CxR */
{
	(void)ts;
	if (parse_size(v, &d->pty_cols, &d->pty_rows) == 0)
		return 0;
	snprintf(err, errlen, "pty must be auto or COLSxROWS, e.g. 128x30");
	return -1;
}

static int parse_int(const char *v, int lo, int hi, int *out)	/* strict decimal in [lo, hi] */
{
	char *end;
	long n;

	errno = 0;
	n = strtol(v, &end, 10);
	if (errno || end == v || *end || n < lo || n > hi)
		return -1;
	*out = (int)n;
	return 0;
}

static int set_device_login_timeout(struct device_config *d, struct token_source *ts,
				    const char *v, char *err, size_t errlen)	/* login_timeout = S */
{
	(void)ts;
	if (parse_int(v, 0, 3600, &d->login_timeout_s) == 0)
		return 0;
	snprintf(err, errlen, "login_timeout must be 0-3600 seconds (0: never)");
	return -1;
}

/* The device keys: most are a string field or a choice among words (the
 * word's position is the value); the rest have a setter. */
enum key_kind { K_STRING, K_TOKEN_SOURCE, K_CHOICE, K_SETTER };
#define DEV(field)  K_STRING, offsetof(struct device_config, field), \
		    sizeof(((struct device_config *)0)->field)
#define SRC(field)  K_TOKEN_SOURCE, offsetof(struct token_source, field), \
		    sizeof(((struct token_source *)0)->field)
#define CHOICE(field) K_CHOICE, offsetof(struct device_config, field), sizeof(int)
static const struct device_key {
	const char *key;
	enum key_kind kind;
	size_t offset, size;
	const char *choices;		/* K_CHOICE: "a|b|c" */
	key_setter *set;		/* K_SETTER */
} device_keys[] = {
	{ "url", K_SETTER, 0, 0, NULL, set_url },
	{ "token", K_SETTER, 0, 0, NULL, set_token },
	{ "pty", K_SETTER, 0, 0, NULL, set_pty },
	{ "token_file", SRC(file), NULL, NULL },
	{ "token_env", SRC(env), NULL, NULL },
	{ "username", DEV(username), NULL, NULL },
	{ "cacert", DEV(cacert), NULL, NULL },
	{ "attach", DEV(attach), NULL, NULL },
	{ "device_id", DEV(device_id), NULL, NULL },
	{ "sessions", CHOICE(sessions), "auto|multi|single", NULL },
	{ "predict", CHOICE(predict), "auto|always|never", NULL },
	{ "login_timeout", K_SETTER, 0, 0, NULL, set_device_login_timeout },
	{ "reopen", CHOICE(reopen), "ask|auto|never", NULL },
	{ "remember_password", CHOICE(remember_password), "never|session", NULL },
};

/* v's position among choices ("a|b|c"), into *field. */
static int pick_word(const char *key, const char *choices, int *field, const char *v,
		     char *err, size_t errlen)
{
	const char *c = choices;
	size_t n = strlen(v);

	for (int i = 0; *c; i++) {
		size_t len = strcspn(c, "|");

		if (len == n && !strncmp(c, v, n)) {
			*field = i;
			return 0;
		}
		c += len + (c[len] == '|');
	}
	snprintf(err, errlen, "%s must be one of %s", key, choices);
	return -1;
}

static int set_device_key(const struct device_key *k, struct device_config *d,
			  struct token_source *ts, const char *v, char *err, size_t errlen)
{	/* one key of a [device] section */
	char *field = k->kind == K_TOKEN_SOURCE ? (char *)ts + k->offset : (char *)d + k->offset;

	if (k->kind == K_SETTER)
		return k->set(d, ts, v, err, errlen);
	if (k->kind == K_CHOICE)
		return pick_word(k->key, k->choices, (int *)(void *)field, v, err, errlen);
	if (!*v || strlen(v) >= k->size) {
		snprintf(err, errlen, "%s must be 1-%zu characters", k->key, k->size - 1);
		return -1;
	}
	copy_str(field, k->size, v);
	return 0;
}

/* "C-g", "^g", "Ctrl-g" → 7; -1 if not a control key. */
static int parse_prefix(const char *v)
{
	const char *k = !strncasecmp(v, "ctrl-", 5) ? v + 5 :
			!strncasecmp(v, "c-", 2) ? v + 2 : v[0] == '^' ? v + 1 : NULL;

	if (!k || !k[0] || k[1] || !isalpha((unsigned char)k[0]))
		return -1;
	return tolower((unsigned char)k[0]) - 'a' + 1;
}

static char *trim(char *s)	/* strips surrounding blanks, in place */
{
	char *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

static void strip_comment(char *s)	/* "; …" or "# …" at the start or after a blank */
{
	for (char *p = s; *p; p++)
		if ((*p == ';' || *p == '#') && (p == s || isspace((unsigned char)p[-1]))) {
			*p = '\0';
			return;
		}
}

/* Starts a new [device NAME] section. */
static int config_add_device(struct config *c, const char *name, int line,
			     char *err, size_t errlen)
{
	struct device_config *d;
	char shown[sizeof(d->name)];

	if (!*name || strlen(name) >= sizeof(d->name)) {
		snprintf(err, errlen, "a device needs a name of 1-63 characters");
		return -1;
	}
	clean_text(shown, sizeof(shown), name, strlen(name));
	if (strcmp(shown, name)) {
		snprintf(err, errlen, "a device name must be plain text (no control or bidi characters)");
		return -1;
	}
	for (int i = 0; i < c->ndev; i++)
		if (!strcmp(c->dev[i].name, name)) {
			snprintf(err, errlen, "device \"%s\" is defined twice (first on line %d)",
				 name, c->dev[i].line);
			return -1;
		}
	c->dev = xrealloc(c->dev, (c->ndev + 1) * sizeof(*c->dev));
	token_sources = xrealloc(token_sources, (c->ndev + 1) * sizeof(*token_sources));
	d = memset(&c->dev[c->ndev], 0, sizeof(*d));
	memset(&token_sources[c->ndev++], 0, sizeof(*token_sources));
	copy_str(d->name, sizeof(d->name), name);
	d->line = line;
	d->login_timeout_s = -1;
	return 0;
}

enum section { SEC_NONE, SEC_DEVICE, SEC_CONSOLE, SEC_IOTDA };

/* A [section] line: [device NAME], [console] or [iotda]; its kind or -1. */
static int config_section(struct config *c, char *s, int line, char *err, size_t errlen)
{
	char *end = strchr(s, ']');

	if (!end || end[1]) {
		snprintf(err, errlen, "a section header must end with ]");
		return -1;
	}
	*end = '\0';
	s = trim(s + 1);
	if (!strcmp(s, "console") || !strcmp(s, "iotda"))
		return !strcmp(s, "console") ? SEC_CONSOLE : SEC_IOTDA;
	if (strncmp(s, "device", 6) || !isspace((unsigned char)s[6])) {
		snprintf(err, errlen, "unknown section [%s] (expected [device NAME], [console] "
			 "or [iotda])", s);
		return -1;
	}
	return config_add_device(c, trim(s + 6), line, err, errlen) < 0 ? -1 : SEC_DEVICE;
}

typedef int global_setter(struct config *c, const char *v, char *err, size_t errlen);

static int set_heartbeat(struct config *c, const char *v, char *err, size_t errlen)
{	/* heartbeat = SECONDS */
	if (parse_int(v, 1, 3600, &c->heartbeat_s) == 0)
		return 0;
	snprintf(err, errlen, "heartbeat must be 1-3600 seconds");
	return -1;
}

/* A choice key of a global section: a word's position among its choices. */
#define CHOICE_KEY(fn, field, key, choices) \
static int fn(struct config *c, const char *v, char *err, size_t errlen) \
{ \
	return pick_word(key, choices, &c->field, v, err, errlen); \
}
CHOICE_KEY(set_list, compact, "list", "full|compact")
CHOICE_KEY(set_clipboard, clipboard_off, "clipboard", "osc52|off")
CHOICE_KEY(set_remote_clipboard, remote_clipboard, "remote_clipboard", "ask|allow|deny")
CHOICE_KEY(set_mouse, mouse_off, "mouse", "on|off")

static int set_list_width(struct config *c, const char *v, char *err, size_t errlen)
{	/* list_width = auto|N */
	if (!strcmp(v, "auto")) {
		c->list_w = 0;
		return 0;
	}
	if (parse_int(v, 16, 120, &c->list_w) == 0)
		return 0;
	snprintf(err, errlen, "list_width must be auto or 16-120 columns");
	return -1;
}

static int set_login_timeout(struct config *c, const char *v, char *err, size_t errlen)
{	/* login_timeout = SECONDS: every device's default */
	if (parse_int(v, 0, 3600, &c->login_timeout_s) == 0)
		return 0;
	snprintf(err, errlen, "login_timeout must be 0-3600 seconds (0: never)");
	return -1;
}

static int set_prefix(struct config *c, const char *v, char *err, size_t errlen)
{	/* prefix = C-g */
	c->prefix_key = parse_prefix(v);
	if (c->prefix_key > 0)
		return 0;
	snprintf(err, errlen, "prefix must be a control key such as C-g");
	return -1;
}

/* A string key of a global section: where it goes, how long it may be. */
#define STRING_KEY(fn, field) \
static int fn(struct config *c, const char *v, char *err, size_t errlen) \
{ \
	if (strlen(v) < sizeof(c->field)) { \
		copy_str(c->field, sizeof(c->field), v); \
		return 0; \
	} \
	snprintf(err, errlen, "value longer than %zu characters", sizeof(c->field) - 1); \
	return -1; \
}
STRING_KEY(set_record_dir_key, record_dir)
STRING_KEY(set_endpoint, iotda.endpoint)
STRING_KEY(set_project_id, iotda.project_id)
STRING_KEY(set_instance_id, iotda.instance_id)
STRING_KEY(set_iam_token_file, iotda.token_file)
STRING_KEY(set_iotda_cacert, iotda.cacert)
STRING_KEY(set_region, iotda.region)

static int set_api_rate(struct config *c, const char *v, char *err, size_t errlen)
{	/* rate = N: API requests a second at most */
	if (parse_int(v, 1, 1000, &c->iotda.rate) == 0)
		return 0;
	snprintf(err, errlen, "rate must be 1-1000 requests a second");
	return -1;
}

static int set_signing(struct config *c, const char *v, char *err, size_t errlen)
{	/* signing = derived|basic: V11-HMAC-SHA256 or SDK-HMAC-SHA256 */
	if (strcmp(v, "derived") && strcmp(v, "basic")) {
		snprintf(err, errlen, "signing must be derived or basic");
		return -1;
	}
	c->iotda.signing = !strcmp(v, "basic") ? SIGN_BASIC : SIGN_DERIVED;
	return 0;
}

static int set_close_tunnels(struct config *c, const char *v, char *err, size_t errlen)
{	/* close_tunnels = yes|no: close the tunnels we created on quit */
	if (strcmp(v, "yes") && strcmp(v, "no")) {
		snprintf(err, errlen, "close_tunnels must be yes or no");
		return -1;
	}
	c->iotda.leave_open = !strcmp(v, "no");
	return 0;
}

static const struct { enum section sec; const char *key; global_setter *set; } global_keys[] = {
	{ SEC_CONSOLE, "prefix", set_prefix },	{ SEC_CONSOLE, "heartbeat", set_heartbeat },
	{ SEC_CONSOLE, "record_dir", set_record_dir_key },
	{ SEC_CONSOLE, "login_timeout", set_login_timeout },
	{ SEC_CONSOLE, "list", set_list },		{ SEC_CONSOLE, "list_width", set_list_width },
	{ SEC_CONSOLE, "clipboard", set_clipboard },	{ SEC_CONSOLE, "mouse", set_mouse },
	{ SEC_CONSOLE, "remote_clipboard", set_remote_clipboard },
	{ SEC_IOTDA, "endpoint", set_endpoint },	{ SEC_IOTDA, "project_id", set_project_id },
	{ SEC_IOTDA, "instance_id", set_instance_id },	{ SEC_IOTDA, "token_file", set_iam_token_file },
	{ SEC_IOTDA, "cacert", set_iotda_cacert },	{ SEC_IOTDA, "close_tunnels", set_close_tunnels },
	{ SEC_IOTDA, "region", set_region },		{ SEC_IOTDA, "signing", set_signing },
	{ SEC_IOTDA, "rate", set_api_rate },
};

/* One key = value line inside a section. */
static int config_key(struct config *c, enum section sec, char *key, char *val,
		      char *err, size_t errlen)
{
	for (size_t i = 0; i < sizeof(global_keys) / sizeof(*global_keys); i++)
		if (global_keys[i].sec == sec && !strcmp(key, global_keys[i].key))
			return global_keys[i].set(c, val, err, errlen);
	for (size_t i = 0; sec == SEC_DEVICE && i < sizeof(device_keys) / sizeof(*device_keys); i++)
		if (!strcmp(key, device_keys[i].key))
			return set_device_key(&device_keys[i], &c->dev[c->ndev - 1],
					      &token_sources[c->ndev - 1], val, err, errlen);
	snprintf(err, errlen, "unknown key \"%s\"", key);
	return -1;
}

static int config_line(struct config *c, char *s, int line, int *section,
		       char *err, size_t errlen)	/* one line of the file */
{
	char *eq;

	strip_comment(s);
	s = trim(s);
	if (!*s)
		return 0;
	if (*s == '[') {
		int r = config_section(c, s, line, err, errlen);

		*section = r < 0 ? SEC_NONE : r;
		return r < 0 ? -1 : 0;
	}
	eq = strchr(s, '=');
	if (!eq) {
		snprintf(err, errlen, "expected key = value");
		return -1;
	}
	if (!*section) {
		snprintf(err, errlen, "\"%s\" is outside any [device NAME] section", trim(s));
		return -1;
	}
	*eq = '\0';
	return config_key(c, (enum section)*section, trim(s), trim(eq + 1), err, errlen);
}

/* A device needs a url and one source of token, or a device_id (and then
 * neither: the API makes the tunnel). */
static const char *device_problem(const struct device_config *d, const struct token_source *ts)
{
	int sources = !!d->token + !!ts->file[0] + !!ts->env[0];

	if (d->device_id[0] && (d->url[0] || sources))
		return "has a device_id: it takes no url or token (the IoTDA API makes them)";
	if (d->device_id[0])
		return NULL;
	if (!d->url[0])
		return "has no url (or device_id)";
	return sources == 1 ? NULL : "needs exactly one of token_file, token_env, token";
}

static int config_check(struct config *c, const char *file, char *err, size_t errlen)
{	/* every device, and [iotda] when a device needs it */
	for (int i = 0; i < c->ndev; i++) {
		const char *why = device_problem(&c->dev[i], &token_sources[i]);

		if (why) {
			snprintf(err, errlen, "%s:%d: device \"%s\" %s", file, c->dev[i].line,
				 c->dev[i].name, why);
			return -1;
		}
		if (c->dev[i].device_id[0] && (!c->iotda.endpoint[0] || !c->iotda.project_id[0])) {
			snprintf(err, errlen, "%s:%d: device \"%s\" has a device_id: [iotda] needs "
				 "endpoint and project_id", file, c->dev[i].line, c->dev[i].name);
			return -1;
		}
	}
	return 0;
}

/* Parses a whole devices file held in text (modified in place).  Errors name
 * the file and line. */
static int config_parse(struct config *c, char *text, const char *file,
			char *err, size_t errlen)
{
	int line = 0, section = 0;
	char msg[256];

	for (char *s = text, *nl; s && *s; s = nl) {
		nl = strchr(s, '\n');
		if (nl)
			*nl++ = '\0';
		line++;
		if (config_line(c, s, line, &section, msg, sizeof(msg)) < 0) {
			snprintf(err, errlen, "%s:%d: %s", file, line, msg);
			return -1;
		}
	}
	return config_check(c, file, err, errlen);
}

/* Reads a whole file (at most max bytes) into a NUL-terminated buffer. */
static char *read_file(const char *path, size_t max, size_t *len, char *err, size_t errlen)
{
	FILE *f = fopen(path, "rb");
	char *p;
	size_t n;

	if (!f) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return NULL;
	}
	p = xcalloc(max + 1);
	n = fread(p, 1, max + 1, f);
	fclose(f);
	if (n > max) {
		snprintf(err, errlen, "%s: larger than %zu bytes", path, max);
		free(p);
		return NULL;
	}
	if (len)
		*len = n;
	return p;
}

/* A secret from a file (at most max characters): first line, surrounding
 * blanks dropped; warns when others may read the file. */
static char *secret_from_file(const char *path, size_t max, char *warn, size_t warnlen,
			      char *err, size_t errlen)
{
	struct stat st;
	char *raw = read_file(path, max + 64, NULL, err, errlen), *tok, *secret;

	if (!raw)
		return NULL;
	tok = trim(raw);
	tok[strcspn(tok, "\r\n")] = '\0';
	if (!*tok || strlen(tok) > max)
		snprintf(err, errlen, "%s: must hold 1-%zu characters", path, max);
	secret = *err ? NULL : secret_dup(tok, strlen(tok));
	explicit_bzero(raw, max + 65);
	free(raw);
	if (secret && stat(path, &st) == 0 && (st.st_mode & 077))
		snprintf(warn, warnlen, "%s is readable by others (chmod 600 it)", path);
	return secret;
}

static char *token_from_file(const char *path, char *warn, size_t warnlen,
			     char *err, size_t errlen)	/* a tunnel token: 1-256 chars */
{
	return secret_from_file(path, 256, warn, warnlen, err, errlen);
}

/* A token from the environment, then scrubbed from it so that it does not
 * show in /proc/PID/environ (ps e). */
static char *token_from_env(const char *name, char *err, size_t errlen)
{
	char *v = getenv(name), *secret;

	if (!v || !*v) {
		snprintf(err, errlen, "environment variable %s is not set", name);
		return NULL;
	}
	secret = secret_dup(v, strlen(v));
	explicit_bzero(v, strlen(v));
	unsetenv(name);
	return secret;
}

/* Fills in every device's token; a problem that is not fatal (a readable
 * token file) goes to that device's warn slot. */
static int config_resolve_tokens(struct config *c, char warns[][160], char *err, size_t errlen)
{
	for (int i = 0; i < c->ndev; i++) {
		struct token_source *ts = &token_sources[i];
		char e[300] = "";

		if (ts->file[0])
			c->dev[i].token = token_from_file(ts->file, warns[i], 160, e, sizeof(e));
		else if (ts->env[0])
			c->dev[i].token = token_from_env(ts->env, e, sizeof(e));
		if (!c->dev[i].token && !c->dev[i].device_id[0]) {	/* the API brings one */
			snprintf(err, errlen, "device \"%s\": %s", c->dev[i].name, e);
			return -1;
		}
	}
	return 0;
}

/* "…/tunnels/ID/source-connect" → ID, for naming a device given by URL. */
static void tunnel_id_from_url(const char *url, char *out, size_t cap)
{
	const char *p = strstr(url, "/tunnels/"), *e;

	if (!p) {
		copy_str(out, cap, url);
		return;
	}
	p += 9;
	e = strchr(p, '/');
	snprintf(out, cap, "%.*s", (int)(e ? (size_t)(e - p) : strlen(p)), p);
}

/* A device from a URL argument or a create-tunnel response. */
static struct device_config *config_add_url(struct config *c, const char *url, const char *name)
{
	char id[64], err[128];

	if (name)
		copy_str(id, sizeof(id), name);
	else
		tunnel_id_from_url(url, id, sizeof(id));
	for (int n = 2; config_add_device(c, id, 0, err, sizeof(err)) < 0; n++) {
		char base[48];

		tunnel_id_from_url(url, base, sizeof(base));
		snprintf(id, sizeof(id), "%s-%d", name ? name : base, n);
	}
	copy_str(c->dev[c->ndev - 1].url, sizeof(c->dev[0].url), url);
	return &c->dev[c->ndev - 1];
}

/* --tunnel-json: the create-tunnel API response as it comes. */
static int config_tunnel_json(struct config *c, const char *path, char *err, size_t errlen)
{
	char *text = read_file(path, 65536, NULL, err, errlen), name[64];
	cJSON *j = text ? cJSON_Parse(text) : NULL;
	struct tunnel_reply r;
	const char *why = text ? tunnel_reply_check(j, 0, app.allow_plaintext, &r) : NULL;
	struct device_config *d;

	if (why)
		snprintf(err, errlen, "%s: %s", path, why);
	if (text && !why) {
		if (r.device_id)	/* a name to show: peer text, cleaned */
			clean_text(name, sizeof(name), r.device_id, strlen(r.device_id));
		d = config_add_url(c, r.uri, r.device_id ? name : NULL);
		d->token = secret_dup(r.token, strlen(r.token));
		d->expires = r.expires_in ? time(NULL) + r.expires_in : 0;
	}
	if (text)
		explicit_bzero(text, strlen(text));
	free(text);
	cJSON_Delete(j);	/* cJSON frees through wiping_free() */
	return *err ? -1 : 0;
}

/************************************************************************
 *** 6. terminal: recording, grids, scrollback, the emulator
 ************************************************************************/

static void session_touched(struct session *s);
static void session_queue_keys(struct session *s, const char *p, size_t n);
static void flash_msg(const char *fmt, ...);
static void ui_dirty(void);

/*
 * Appends n bytes of terminal output as valid UTF-8 (asciicast needs it):
 * invalid bytes become U+FFFD; an incomplete sequence at the end is not
 * consumed (returns how many bytes were), so the next chunk completes it.
 */
static size_t utf8_sanitize(struct buf *out, const char *p, size_t n)
{
	const unsigned char *u = (const unsigned char *)p;
	size_t i = 0;

	while (i < n) {
		int k = u[i] < 0x80 ? 1 : u[i] >= 0xc2 && u[i] <= 0xdf ? 2 :
			u[i] >= 0xe0 && u[i] <= 0xef ? 3 : u[i] >= 0xf0 && u[i] <= 0xf4 ? 4 : 0;
		int j = 1;

		while (k > 1 && j < k && i + j < n && (u[i + j] & 0xc0) == 0x80)
			j++;
		if (k > 1 && j < k && i + j == n)
			break;	/* incomplete at the end: wait for the rest */
		if (k > 1 && j == k && !((u[i] == 0xe0 && u[i + 1] < 0xa0) ||
					 (u[i] == 0xed && u[i + 1] > 0x9f) ||
					 (u[i] == 0xf0 && u[i + 1] < 0x90) ||
					 (u[i] == 0xf4 && u[i + 1] > 0x8f)))
			buf_append(out, p + i, (size_t)k);
		else if (k == 1)
			buf_append(out, p + i, 1);
		else
			buf_append(out, "\xef\xbf\xbd", 3);
		i += k > 1 && j == k ? (size_t)k : 1;
	}
	return i;
}

static int write_all(int fd, const char *p, size_t n)	/* 0, or -1 with errno */
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static void rec_stop(struct session *s)	/* closes the file; it stays playable */
{
	if (!s->rec)
		return;
	if (s->rec->fd >= 0)
		close(s->rec->fd);
	buf_free(&s->rec->tail);
	free(s->rec);
	s->rec = NULL;
}

/* A write failed (disk full, folder gone): say so; the session carries on.
 * A half-written event is cut off so the file still plays. */
static void rec_fail(struct session *s)
{
	snprintf(app.record_error, sizeof(app.record_error), "recording stopped: %s: %s",
		 s->rec->path, strerror(errno));
	if (s->rec->fd >= 0)
		(void)!ftruncate(s->rec->fd, s->rec->size);
	log_line("%s", app.record_error);
	rec_stop(s);
	flash_msg("%s", app.record_error);
}

/* One asciicast v2 event line: [seconds, "o" or "m", "text"]. */
static void rec_event(struct session *s, const char *type, const char *text, size_t n)
{
	struct buf line = { 0 };

	buf_printf(&line, "[%.6f, \"%s\", ", (double)(now_us() - s->rec->start_us) / 1e6, type);
	json_string(&line, text, n);
	buf_append(&line, "]\n", 2);
	if (write_all(s->rec->fd, line.p, line.len) < 0)
		rec_fail(s);
	else
		s->rec->size += (off_t)line.len;
	buf_free(&line);
}

static void rec_output(struct session *s, const char *p, size_t n)	/* "o" events */
{
	struct buf *tail = &s->rec->tail, clean = { 0 };
	size_t used;

	buf_append(tail, p, n);
	used = utf8_sanitize(&clean, tail->p, tail->len);
	buf_consume(tail, used);
	if (clean.len)
		rec_event(s, "o", clean.p, clean.len);
	buf_free(&clean);
}

static void rec_marker(struct session *s)	/* an "m" event: a training chapter */
{
	char label[32];

	snprintf(label, sizeof(label), "chapter %d", ++s->rec->markers);
	rec_event(s, "m", label, strlen(label));
	if (s->rec)
		flash_msg("marker: %s", label);
}

static int mkdir_p(const char *dir)	/* like mkdir -p, mode 700 */
{
	char path[PATH_MAX];

	copy_str(path, sizeof(path), dir);
	for (char *p = path + 1; *p; p++)
		if (*p == '/') {
			*p = '\0';
			if (mkdir(path, 0700) < 0 && errno != EEXIST)
				return -1;
			*p = '/';
		}
	return mkdir(path, 0700) < 0 && errno != EEXIST ? -1 : 0;
}

static const char *tunnel_name(const struct session *s);

/* Starts DIR/DEVICE-DATE-ID.cast with the header; the size is the PTY's. */
static void rec_start(struct session *s)
{
	struct recording *r = xcalloc(sizeof(*r));
	char when[32], title[200], name[64];
	struct buf head = { 0 };
	time_t now = time(NULL);

	strftime(when, sizeof(when), "%Y%m%d-%H%M%S", localtime(&now));
	safe_component(tunnel_name(s), name, sizeof(name));
	snprintf(r->path, sizeof(r->path), "%.3900s/%s-%s-%.4s.cast", app.record_dir,
		 name, when, s->request_id);
	r->fd = mkdir_p(app.record_dir) < 0 ? -1 :
		open(r->path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
	r->start_us = now_us();
	s->rec = r;
	snprintf(title, sizeof(title), "%s %s", tunnel_name(s), s->user);
	buf_printf(&head, "{\"version\": 2, \"width\": %d, \"height\": %d, \"timestamp\": %lld, "
		   "\"env\": {\"TERM\": \"xterm-256color\"}, \"title\": ", s->cols, s->rows, (long long)now);
	json_string(&head, title, strlen(title));
	buf_append(&head, "}\n", 2);
	if (r->fd < 0 || write_all(r->fd, head.p, head.len) < 0)
		rec_fail(s);
	else {
		r->size = (off_t)head.len;
		app.record_error[0] = '\0';
		flash_msg("recording to %s", r->path);
	}
	buf_free(&head);
}

#define COLOR_DEFAULT 0xff000000u	/* packed colours: default */
#define COLOR_INDEXED 0x01000000u	/* | index */
#define COLOR_RGB     0x02000000u	/* | r << 16 | g << 8 | b */

static const struct cell blank_cell = { 0, COLOR_DEFAULT, COLOR_DEFAULT, 0, 1 };

static int cell_blank(const struct cell *c)	/* nothing visible in it */
{
	return (c->ch == 0 || c->ch == ' ') && c->bg == COLOR_DEFAULT &&
	       !(c->attrs & (ATTR_REVERSE | ATTR_UNDERLINE));
}

static void cells_fill(struct cell *c, int n, struct cell v)	/* n copies of v */
{
	for (int i = 0; i < n; i++)	/* a plain loop: faster than memcpy at line widths */
		c[i] = v;
}

/* A screen's cells, one block, behind row pointers: a scroll rotates the
 * pointers instead of moving every cell of the screen.  Each row has a
 * header cell before it that travels with it: how many of its columns may
 * hold anything but a blank (past them, all are blank_cell), so a line
 * scrolling away is packed and cleared without looking at its blank end. */
static uint32_t *row_used(struct cell *row)	/* the row's columns in use, at most */
{
	return &row[-1].ch;
}

static void row_uses(struct cell *row, int to)	/* columns up to to may be written */
{
	if (*row_used(row) < (uint32_t)to)
		*row_used(row) = (uint32_t)to;
}

static void grid_alloc(struct grid *g, int rows, int cols)	/* blank */
{
	g->rows = rows;
	g->cols = cols;
	g->cells = xrealloc(NULL, (size_t)rows * (size_t)(cols + 1) * sizeof(struct cell));
	g->row = xrealloc(NULL, (size_t)rows * sizeof(*g->row));
	cells_fill(g->cells, rows * (cols + 1), blank_cell);
	for (int r = 0; r < rows; r++) {
		g->row[r] = g->cells + (size_t)r * (size_t)(cols + 1) + 1;
		*row_used(g->row[r]) = 0;
	}
}

static void grid_free(struct grid *g)
{
	free(g->cells);
	free(g->row);
	memset(g, 0, sizeof(*g));
}

static void grid_resize(struct grid *g, int rows, int cols)	/* keeps the top-left overlap */
{
	struct grid n;

	if (!g->row)
		return;
	grid_alloc(&n, rows, cols);
	for (int r = 0; r < rows && r < g->rows; r++) {
		int used = (int)*row_used(g->row[r]);

		memcpy(n.row[r], g->row[r], (size_t)(cols < g->cols ? cols : g->cols) * sizeof(struct cell));
		*row_used(n.row[r]) = (uint32_t)(used < cols ? used : cols);
	}
	grid_free(g);
	*g = n;
}

static void rows_reverse(struct cell **r, int n)	/* r[0..n) back to front */
{
	for (int i = 0, j = n - 1; i < j; i++, j--) {
		struct cell *t = r[i];

		r[i] = r[j];
		r[j] = t;
	}
}

static void rows_rotate(struct cell **r, int n, int k)	/* row k comes first */
{
	struct cell *t;

	if (k == 1 || k == n - 1) {	/* a line at a time: the usual scroll */
		t = k == 1 ? r[0] : r[n - 1];
		memmove(k == 1 ? r : r + 1, k == 1 ? r + 1 : r, (size_t)(n - 1) * sizeof(*r));
		r[k == 1 ? n - 1 : 0] = t;
		return;
	}
	rows_reverse(r, k);
	rows_reverse(r + k, n - k);
	rows_reverse(r, n);
}

/*** scrollback: lines as text and runs of attributes ********************/

/*
 * A scrollback line is its characters as UTF-8 and the runs of colour and
 * attributes over them: a 93-column line of coloured log output is ~150
 * bytes instead of 1.5 KB of cells.  Lines are unpacked into cells only
 * when drawn, searched or copied.
 */
struct sbrun {		/* colours and attributes from a column on */
	uint16_t col;
	uint8_t attrs;
	uint32_t fg, bg;
};

static int vt_width(uint32_t ch);

static size_t utf8_put(uint32_t c, char *out)	/* c as UTF-8: 1-4 bytes */
{
	if (c < 0x80) {
		out[0] = (char)c;
		return 1;
	}
	if (c < 0x800) {
		out[0] = (char)(0xc0 | c >> 6);
		out[1] = (char)(0x80 | (c & 0x3f));
		return 2;
	}
	if (c < 0x10000) {
		out[0] = (char)(0xe0 | c >> 12);
		out[1] = (char)(0x80 | (c >> 6 & 0x3f));
		out[2] = (char)(0x80 | (c & 0x3f));
		return 3;
	}
	out[0] = (char)(0xf0 | c >> 18);
	out[1] = (char)(0x80 | (c >> 12 & 0x3f));
	out[2] = (char)(0x80 | (c >> 6 & 0x3f));
	out[3] = (char)(0x80 | (c & 0x3f));
	return 4;
}

static uint32_t utf8_get(const unsigned char **p)	/* one character of valid UTF-8 */
{
	const unsigned char *u = *p;
	int n = u[0] < 0x80 ? 1 : u[0] < 0xe0 ? 2 : u[0] < 0xf0 ? 3 : 4;
	uint32_t c = n == 1 ? u[0] : u[0] & (0x7f >> n);

	for (int i = 1; i < n; i++)
		c = c << 6 | (u[i] & 0x3f);
	*p += n;
	return c;
}

/* The packed size of cells[0..n): runs and text; a wide character's right
 * half is implied by its width. */
static size_t sb_measure(const struct cell *c, int n, int *nruns)
{
	size_t text = 0;
	char mb[4];

	*nruns = 0;
	for (int i = 0; i < n; i++) {
		if (i && c[i - 1].width == 2)
			continue;
		if (!i || c[i].fg != c[i - 1].fg || c[i].bg != c[i - 1].bg ||
		    (c[i].attrs ^ c[i - 1].attrs) & ~ATTR_WRAPPED)
			++*nruns;
		text += c[i].ch < 0x80 ? 1 : utf8_put(c[i].ch, mb);
	}
	return (size_t)*nruns * sizeof(struct sbrun) + text;
}

static void sb_pack(struct sbline *l, const struct cell *c, int n)	/* cells into l's runs and text */
{
	struct sbrun *run = (struct sbrun *)(void *)l->data;
	char *t = (char *)l->data + (size_t)l->nruns * sizeof(struct sbrun);
	int r = 0;

	for (int i = 0; i < n; i++) {
		if (i && c[i - 1].width == 2)
			continue;
		if (!i || c[i].fg != c[i - 1].fg || c[i].bg != c[i - 1].bg ||
		    (c[i].attrs ^ c[i - 1].attrs) & ~ATTR_WRAPPED)
			run[r++] = (struct sbrun){ (uint16_t)i, (uint8_t)(c[i].attrs & ~ATTR_WRAPPED), c[i].fg, c[i].bg };
		if (c[i].ch < 0x80)
			*t++ = c[i].ch ? (char)c[i].ch : ' ';
		else
			t += utf8_put(c[i].ch, t);
	}
}

/* A line leaves the top of the screen: packed, trailing blanks trimmed,
 * into the ring (a full ring reuses its oldest line's memory). */
static void sb_push(struct session *s, const struct cell *cells, int cols)	/* cols: those in use */
{
	static uint32_t packed;	/* every line packed gets its own number: see sb_cells */
	struct sbline *l;
	int n = cols, nruns, slot;
	size_t size;

	while (n > 0 && cell_blank(&cells[n - 1]))
		n--;
	if (n && n < cols && cells[n - 1].width == 2)
		n++;	/* a wide character keeps its right half */
	size = sb_measure(cells, n, &nruns);
	slot = (s->sb_head + s->sb_count) % SCROLLBACK_LINES;
	if (s->sb_count == SCROLLBACK_LINES) {
		s->sb_head = (s->sb_head + 1) % SCROLLBACK_LINES;
		if (app.copy.s == s) {	/* every history row moved up one */
			app.copy.row -= app.copy.row > 0;
			app.copy.arow -= app.copy.arow > 0;
		}
	} else {
		s->sb_count++;
	}
	l = s->sb[slot];
	if (!l || size > l->room || size < l->room / 4) {	/* realloc showed in profiles */
		l = xrealloc(l, sizeof(*l) + size);
		l->room = (uint32_t)size;
	}
	*l = (struct sbline){ (uint16_t)n, (uint16_t)nruns, l->room, ++packed,
			      (uint8_t)(n && (cells[0].attrs & ATTR_WRAPPED)) };
	sb_pack(l, cells, n);
	s->sb[slot] = l;
	if (s->scroll)	/* keep the user's view still while output arrives */
		s->scroll = s->scroll < s->sb_count ? s->scroll + 1 : s->sb_count;
}

static const struct sbline *sb_line(const struct session *s, int i)	/* 0: oldest */
{
	return s->sb[(s->sb_head + i) % SCROLLBACK_LINES];
}

/* A scrollback line as cells, valid until the next call: the last one
 * unpacked is kept, as callers walk a row cell by cell. */
static const struct cell *sb_cells(const struct sbline *l)
{
	static struct { struct cell *c; int room; const struct sbline *l; uint32_t packed; } u;
	const struct sbrun *run = (const struct sbrun *)(const void *)l->data;
	const unsigned char *t = l->data + (size_t)l->nruns * sizeof(struct sbrun);
	int r = 0;

	if (u.l == l && u.packed == l->packed)
		return u.c;
	if (l->cols + 1 > u.room) {
		u.room = l->cols + 1;
		u.c = xrealloc(u.c, (size_t)u.room * sizeof(*u.c));
	}
	for (int col = 0; col < l->cols; col++) {
		while (r + 1 < l->nruns && run[r + 1].col <= col)
			r++;
		u.c[col] = (struct cell){ utf8_get(&t), run[r].fg, run[r].bg, run[r].attrs, 1 };
		if (u.c[col].ch >= 0x80 && vt_width(u.c[col].ch) == 2 && col + 1 < l->cols) {
			u.c[col].width = 2;
			u.c[col + 1] = u.c[col];
			u.c[++col].ch = 0;
			u.c[col].width = 1;
		}
	}
	if (l->cols && l->wrapped)
		u.c[0].attrs |= ATTR_WRAPPED;
	u.l = l;
	u.packed = l->packed;
	return u.c;
}

static int history_rows(const struct session *s)	/* scrollback, then screen */
{
	return s->sb_count + s->grid->rows;
}

/* History row vr (scrollback, then screen) as cells; a scrollback row's
 * are valid until the next call. */
static const struct cell *history_cells(const struct session *s, int vr, int *n)
{
	const struct sbline *l;

	if (vr < s->sb_count) {
		l = sb_line(s, vr);
		*n = l->cols;
		return sb_cells(l);
	}
	*n = s->grid->cols;
	return s->grid->row[vr - s->sb_count];
}

static int row_continues(const struct session *s, int vr)	/* autowrapped from row vr - 1 */
{
	if (vr <= 0 || vr >= history_rows(s))
		return 0;
	if (vr < s->sb_count)
		return sb_line(s, vr)->wrapped;
	return !!(s->grid->row[vr - s->sb_count][0].attrs & ATTR_WRAPPED);
}

/* Columns from..to of a row as UTF-8; a wide character counts whole; the
 * trailing blanks go unless the row wraps on (they are text then). */
static void cells_text(const struct cell *c, int n, int from, int to, int trim, struct buf *out)
{
	size_t keep = out->len;
	char mb[MB_LEN_MAX];

	if (from > 0 && from < n && c[from - 1].width == 2)
		from--;
	for (int i = from; i <= to && i < n; i++) {
		int k = i > 0 && c[i - 1].width == 2 ? 0 : wctomb(mb, c[i].ch ? (wchar_t)c[i].ch : L' ');

		if (k > 0)
			buf_append(out, mb, (size_t)k);
		if (k > 0 && (!trim || (c[i].ch && c[i].ch != ' ')))
			keep = out->len;
	}
	out->len = keep;
	if (out->p)
		out->p[keep] = '\0';
}

struct span { int r0, c0, r1, c1, left, right; };	/* a selection, first point first */

static struct span sel_span(const struct copy *cp)
{
	int before = cp->arow < cp->row || (cp->arow == cp->row && cp->acol <= cp->col);

	return (struct span){ before ? cp->arow : cp->row, before ? cp->acol : cp->col,
			      before ? cp->row : cp->arow, before ? cp->col : cp->acol,
			      cp->acol < cp->col ? cp->acol : cp->col, cp->acol < cp->col ? cp->col : cp->acol };
}

/* The selection's text: rows joined by newlines, autowrapped rows joined
 * as one line (not in a rectangle), as tmux copies. */
static void selection_text(const struct session *s, const struct copy *cp, struct buf *out)
{
	struct span sp = sel_span(cp);
	int r0 = sp.r0, c0 = sp.c0, r1 = sp.r1, c1 = sp.c1, left = sp.left, right = sp.right;

	for (int r = r0, n; r <= r1; r++) {
		const struct cell *c = history_cells(s, r, &n);
		int joined = cp->sel != SEL_RECT && r < r1 && row_continues(s, r + 1);
		int from = cp->sel == SEL_RECT ? left : cp->sel == SEL_CHAR && r == r0 ? c0 : 0;
		int to = cp->sel == SEL_RECT ? right : cp->sel == SEL_CHAR && r == r1 ? c1 : INT_MAX;

		cells_text(c, n, from, to, !joined, out);
		if (r < r1 && !joined)
			buf_append(out, "\n", 1);
	}
}

static int in_selection(const struct session *s, int vr, int col)	/* drawn reversed */
{
	const struct copy *cp = &app.copy;
	struct span sp = sel_span(cp);

	if (cp->s != s || cp->sel == SEL_NONE || vr < sp.r0 || vr > sp.r1)
		return 0;
	if (cp->sel == SEL_LINE)
		return 1;
	if (cp->sel == SEL_RECT)
		return col >= sp.left && col <= sp.right;
	return (vr > sp.r0 || col >= sp.c0) && (vr < sp.r1 || col <= sp.c1);
}

/* History row vr (scrollback, then screen) as UTF-8 text, for search; the
 * right half of a wide character is no column of its own. */
static void row_text_cols(const struct session *s, int vr, char *out, size_t cap, int *col_at)
{	/* row_text, and the column each byte of it came from */
	int cols;
	const struct cell *c = history_cells(s, vr, &cols);
	size_t n = 0;

	for (int i = 0; i < cols && n + MB_LEN_MAX < cap; i++) {
		int k = i && c[i - 1].width == 2 ? 0 : wctomb(out + n, c[i].ch ? (wchar_t)c[i].ch : L' ');

		for (int b = 0; col_at && b < k; b++)
			col_at[n + (size_t)b] = i;
		n += k > 0 ? (size_t)k : 0;
	}
	out[n] = '\0';
}

static void row_text(const struct session *s, int vr, char *out, size_t cap)
{
	row_text_cols(s, vr, out, cap, NULL);
}


static void vt_title(struct session *s, const char *title)	/* OSC 0/2 names the session */
{
	char clean[sizeof(s->title)];

	clean_text(clean, sizeof(clean), title, strlen(title));
	if (strcmp(clean, s->title)) {
		copy_str(s->title, sizeof(s->title), clean);
		ui_dirty();
	}
}

/*** the emulator: remote output into the grid ***************************/

/*
 * The console's own terminal emulator: an xterm subset, as libvterm's
 * state layer implements it, writing runs of text straight into the grid.
 * libvterm 0.1.4 took a third of the console's CPU under streaming output
 * (a callback per glyph) and needed a filter for two of its bugs (memory
 * corrupted by a CSI with more than 16 arguments, a crash on U+0080-U+009F
 * in insert mode); tests/unit/vtdiff.c holds this one to libvterm's
 * screen, cell by cell, on random streams and on real programs' output.
 * Where xterm and libvterm differ, it follows xterm (CSI s and u save and
 * restore the cursor; ?47 switches screens; every parameter of SM/RM).
 */
static int vt_width(uint32_t ch)	/* columns a character takes: 0, 1 or 2 */
{
	int w;

	if (ch < 0x300)
		return 1;
	w = wcwidth((wchar_t)ch);
	return w < 0 ? 1 : w;
}

static int vt_bottom(const struct session *s)	/* the scroll region's end (exclusive) */
{
	return s->vt.bottom < 0 ? s->rows : s->vt.bottom;
}

static void vt_reply(struct session *s, const char *fmt, ...)	/* an answer to a query */
	__attribute__((format(printf, 2, 3)));

static void vt_touch(struct session *s, int from, int to)	/* rows [from, to) changed: to draw */
{
	for (int r = from; r < to && r < ROWS_MAX; r++)
		s->dirty[r / 64] |= 1ull << (r % 64);
}

static void vt_fill(struct session *s, int row, int from, int to)	/* blanks with the pen's background */
{
	struct cell e = blank_cell, *c = s->grid->row[row];
	uint32_t *used = row_used(c);

	e.bg = s->vt.pen.bg;
	vt_touch(s, row, row + 1);
	if (e.bg != COLOR_DEFAULT) {
		row_uses(c, to);
	} else if ((uint32_t)to >= *used) {	/* past used, all is blank already */
		to = (int)*used;
		*used = from < to ? (uint32_t)from : *used;
	}
	if (from < to)
		cells_fill(c + from, to - from, e);
}

static void vt_blank(struct session *s, int row, int from, int to)	/* erases: a wide character whole */
{
	const struct cell *c;

	from = from < 0 ? 0 : from;
	to = to > s->cols ? s->cols : to;
	if (row < 0 || row >= s->rows || from >= to)
		return;
	c = s->grid->row[row];
	if (from && c[from - 1].width == 2)
		from--;
	if (to < s->cols && c[to - 1].width == 2)
		to++;
	vt_fill(s, row, from, to);
}

/* Rows [top, bottom) move up n rows (down if n < 0); the rows they leave
 * are blanked.  Lines leaving the top of the whole primary screen go to
 * the scrollback. */
static void vt_scroll(struct session *s, int top, int bottom, int n)
{
	struct grid *g = s->grid;
	int h = bottom - top, k = abs(n) < h ? abs(n) : h;

	if (k <= 0)
		return;
	for (int i = 0; n > 0 && top == 0 && g == &s->primary && i < k; i++)
		sb_push(s, g->row[i], (int)*row_used(g->row[i]));
	rows_rotate(g->row + top, h, n > 0 ? k : h - k);
	vt_touch(s, top, bottom);
	for (int r = n > 0 ? bottom - k : top, i = 0; i < k; i++)
		vt_fill(s, r + i, 0, s->cols);
}

static void vt_shift(struct session *s, int n)	/* the cursor's row from the cursor: right n (left if n < 0) */
{
	struct cell *row = s->grid->row[s->vt.row];
	int col = s->vt.col, w = s->cols - col, k = abs(n) < w ? abs(n) : w;

	vt_touch(s, s->vt.row, s->vt.row + 1);
	if (col && row[col - 1].width == 2)	/* a wide character split: it goes */
		row[col - 1] = row[col] = blank_cell;
	if (n > 0) {
		memmove(row + col + k, row + col, (size_t)(w - k) * sizeof(*row));
		row_uses(row, (int)*row_used(row) + k < s->cols ? (int)*row_used(row) + k : s->cols);
	} else
		memmove(row + col, row + col + k, (size_t)(w - k) * sizeof(*row));
	vt_fill(s, s->vt.row, n > 0 ? col : s->cols - k, n > 0 ? col + k : s->cols);
	if (row[s->cols - 1].width == 2)	/* pushed half off the edge */
		row[s->cols - 1] = blank_cell;
}

static void vt_linefeed(struct session *s)
{
	struct vt *v = &s->vt;

	if (v->row == vt_bottom(s) - 1)
		vt_scroll(s, v->top, vt_bottom(s), 1);
	else if (v->row < s->rows - 1)
		v->row++;
}

static uint32_t vt_charset(const struct vt *v, uint32_t ch)	/* DEC line drawing for G0/G1 = '0' */
{
	static const uint16_t dec[0x7f - 0x60] = {
		0x25c6, 0x2592, 0x2409, 0x240c, 0x240d, 0x240a, 0x00b0, 0x00b1, 0x2424, 0x240b,
		0x2518, 0x2510, 0x250c, 0x2514, 0x253c, 0x23ba, 0x23bb, 0x2500, 0x23bc, 0x23bd,
		0x251c, 0x2524, 0x2534, 0x252c, 0x2502, 0x2264, 0x2265, 0x03c0, 0x2260, 0x00a3,
		0x00b7,
	};
	uint8_t set = v->g[v->gl];

	if (set == '0' && ch >= 0x60 && ch < 0x7f)
		return dec[ch - 0x60];
	return set == 'A' && ch == '#' ? 0xa3 : ch;
}

/* One character at the cursor: a pending wrap first, then the glyph, its
 * right half if wide, and the cursor after it (or the wrap pending). */
static void vt_glyph(struct session *s, uint32_t ch, int width)
{
	struct vt *v = &s->vt;
	int wrapped = 0;
	struct cell *c;

	if (v->phantom || v->col + width > s->cols) {
		vt_linefeed(s);
		v->col = 0;
		v->phantom = 0;
		wrapped = 1;
	}
	if (v->modes & VT_INSERT)
		vt_shift(s, width);
	c = s->grid->row[v->row] + v->col;
	if (v->col && c[-1].width == 2)	/* over a wide character's right half: its left goes, as in xterm */
		c[-1] = (struct cell){ ' ', c[-1].fg, c[-1].bg, c[-1].attrs, 1 };
	if (v->col + width < s->cols && c[width - 1].width == 2)
		c[width] = blank_cell;	/* over a left half: its right half goes */
	*c = v->pen;
	c->ch = ch;
	c->attrs |= wrapped ? ATTR_WRAPPED : 0;
	if (width == 2 && v->col + 1 < s->cols) {
		c->width = 2;
		c[1] = v->pen;
	}
	row_uses(s->grid->row[v->row], v->col + width < s->cols ? v->col + width : s->cols);
	vt_touch(s, v->row, v->row + 1);
	v->last = ch;
	v->last_width = width;
	if (v->col + width >= s->cols)
		v->phantom = !!(v->modes & VT_AUTOWRAP);
	else
		v->col += width;
}

/* Printable ASCII from p: as many as fit on the row go in one loop (the
 * common case: most output is plain text), the rest through vt_glyph. */
static const unsigned char *vt_text(struct session *s, const unsigned char *p, const unsigned char *end)
{
	struct vt *v = &s->vt;

	while (p < end && *p >= 0x20 && *p < 0x7f) {
		struct cell *row = s->grid->row[v->row];
		int k = 0, room = s->cols - v->col;

		if (v->phantom || room <= 1 || (v->modes & VT_INSERT) || v->g[v->gl] != 'B' ||
		    (v->col && row[v->col - 1].width == 2)) {
			vt_glyph(s, vt_charset(v, *p), 1);
			p++;
			continue;
		}
		while (k < room - 1 && p + k < end && p[k] >= 0x20 && p[k] < 0x7f)
			k++;
		if (row[v->col + k - 1].width == 2)
			row[v->col + k] = blank_cell;	/* over a left half: its right half goes */
		for (int i = 0; i < k; i++) {
			row[v->col + i] = v->pen;
			row[v->col + i].ch = p[i];
		}
		row_uses(row, v->col + k);
		vt_touch(s, v->row, v->row + 1);
		v->col += k;
		v->last = p[k - 1];
		v->last_width = 1;
		p += k;
	}
	return p;
}

/* UTF-8 from the ground state; a bad sequence shows as U+FFFD.  The
 * decoder keeps its state across messages: devices cut anywhere. */
static void vt_utf8(struct session *s, unsigned char c)
{
	static const uint32_t least[] = { 0, 0, 0x80, 0x800, 0x10000 };
	struct vt *v = &s->vt;
	uint32_t ch;

	if (c >= 0x80 && c < 0xc0 && v->need) {
		v->cp = v->cp << 6 | (c & 0x3f);
		if (--v->need)
			return;
		ch = v->cp < least[v->total] || (v->cp >= 0xd800 && v->cp <= 0xdfff) || v->cp > 0x10ffff ||
		     v->cp == 0xfffe || v->cp == 0xffff ? 0xfffd : v->cp;
	} else {
		if (v->need)
			vt_glyph(s, 0xfffd, 1);
		v->need = 0;
		if (c < 0x80) {
			vt_text(s, &c, &c + 1);
			return;
		}
		v->total = c >= 0xc0 && c < 0xe0 ? 2 : c >= 0xe0 && c < 0xf0 ? 3 : c >= 0xf0 && c < 0xf8 ? 4 : 0;
		v->need = v->total ? v->total - 1 : 0;
		v->cp = c & (0x3f >> (v->total ? v->total - 1 : 0));
		if (v->total)
			return;
		ch = 0xfffd;
	}
	if (ch >= 0x80 && ch < 0xa0)	/* C1 as UTF-8: no terminal prints it */
		return;
	int w = vt_width(ch);

	if (w)	/* a combining character (width 0): the cell keeps its base */
		vt_glyph(s, ch, w);
}

/*** the emulator: controls and escape sequences ***/

static void vt_tab(struct session *s, int n, int dir)	/* n tab stops on (back if dir < 0) */
{
	struct vt *v = &s->vt;

	while (n > 0) {
		if ((dir > 0 && v->col >= s->cols - 1) || (dir < 0 && v->col < 1))
			return;
		v->col += dir;
		if (v->tabs[v->col / 8] & (1 << (v->col % 8)))
			n--;
	}
}

static void ctl_bs(struct session *s)	{ s->vt.col -= s->vt.col > 0; }
static void ctl_ht(struct session *s)	{ vt_tab(s, 1, +1); }
static void ctl_cr(struct session *s)	{ s->vt.col = 0; }
static void ctl_so(struct session *s)	{ s->vt.gl = 1; }
static void ctl_si(struct session *s)	{ s->vt.gl = 0; }
static void ctl_ind(struct session *s)	{ vt_linefeed(s); }
static void ctl_hts(struct session *s)	{ s->vt.tabs[s->vt.col / 8] |= (uint8_t)(1 << (s->vt.col % 8)); }

static void ctl_lf(struct session *s)	/* LF, VT, FF */
{
	vt_linefeed(s);
	if (s->vt.modes & VT_NEWLINE)
		s->vt.col = 0;
}

static void ctl_nel(struct session *s)
{
	vt_linefeed(s);
	s->vt.col = 0;
}

static void ctl_ri(struct session *s)	/* reverse index: up, scrolling down at the top */
{
	if (s->vt.row == s->vt.top)
		vt_scroll(s, s->vt.top, vt_bottom(s), -1);
	else if (s->vt.row > 0)
		s->vt.row--;
}

/* C0 controls, and the C1 ones ESC Fe stands for (IND, NEL, HTS, RI). */
static void (*const vt_controls[0xa0])(struct session *) = {
	[0x08] = ctl_bs, [0x09] = ctl_ht, [0x0a] = ctl_lf, [0x0b] = ctl_lf, [0x0c] = ctl_lf,
	[0x0d] = ctl_cr, [0x0e] = ctl_so, [0x0f] = ctl_si,
	[0x84] = ctl_ind, [0x85] = ctl_nel, [0x88] = ctl_hts, [0x8d] = ctl_ri,
};

static void vt_control(struct session *s, unsigned char c)	/* a move cancels a pending wrap */
{
	int row = s->vt.row, col = s->vt.col;

	if (!vt_controls[c])
		return;
	vt_controls[c](s);
	if (row != s->vt.row || col != s->vt.col)
		s->vt.phantom = 0;
}

static void vt_tabs_default(struct session *s, int from, int to)	/* a stop every 8 columns */
{
	for (int col = from; col < to; col++)
		if (col % 8)
			s->vt.tabs[col / 8] &= (uint8_t)~(1 << (col % 8));
		else
			s->vt.tabs[col / 8] |= (uint8_t)(1 << (col % 8));
}

static void vt_save(struct session *s, int save)	/* DECSC, DECRC */
{
	struct vt *v = &s->vt;

	if (save) {
		v->saved.row = v->row;
		v->saved.col = v->col;
		v->saved.visible = s->cursor_visible;
		v->saved.pen = v->pen;
		return;
	}
	if (v->row != v->saved.row || v->col != v->saved.col)
		v->phantom = 0;
	v->row = v->saved.row < s->rows ? v->saved.row : s->rows - 1;
	v->col = v->saved.col < s->cols ? v->saved.col : s->cols - 1;
	s->cursor_visible = v->saved.visible;
	v->pen = v->saved.pen;
}

static void vt_altscreen(struct session *s, int on)	/* made when first asked for; entered blank */
{
	if (on && !s->alt.row)
		grid_alloc(&s->alt, s->rows, s->cols);
	s->grid = on ? &s->alt : &s->primary;
	s->altscreen = on;
	s->dirty_all = 1;
	for (int r = 0; on && r < s->rows; r++)
		vt_blank(s, r, 0, s->cols);
}

static void vt_reset(struct session *s, int hard)	/* RIS (hard), DECSTR (soft) */
{
	struct vt *v = &s->vt;

	v->top = 0;
	v->bottom = -1;
	v->modes = VT_AUTOWRAP;
	v->pen = blank_cell;
	v->g[0] = v->g[1] = 'B';
	v->gl = 0;
	v->mouse_enc = MOUSE_X10;
	s->cursor_visible = 1;
	vt_tabs_default(s, 0, s->cols);
	if (!hard)
		return;
	if (s->altscreen)
		vt_altscreen(s, 0);
	s->vt.mouse = 0;
	s->reverse_video = 0;
	v->row = v->col = v->phantom = 0;
	for (int r = 0; r < s->rows; r++)
		vt_blank(s, r, 0, s->cols);
}

static void vt_decaln(struct session *s)	/* ESC # 8: the screen full of E */
{
	for (int r = 0; r < s->rows; r++) {
		for (int c = 0; c < s->cols; c++) {
			s->grid->row[r][c] = s->vt.pen;
			s->grid->row[r][c].ch = 'E';
		}
		row_uses(s->grid->row[r], s->cols);
	}
	s->dirty_all = 1;
}

/* ESC with an intermediate byte or none, and its final byte. */
static void vt_escape(struct session *s, char inter, unsigned char final)
{
	struct vt *v = &s->vt;

	if ((inter == '(' || inter == ')') && final >= 0x30)
		v->g[inter - '('] = final == '0' || final == 'A' ? final : 'B';
	else if (inter == '#' && final == '8')
		vt_decaln(s);
	else if (!inter && (final == '7' || final == '8'))
		vt_save(s, final == '7');
	else if (!inter && (final == '=' || final == '>'))
		v->modes = final == '=' ? v->modes | VT_APPKEYPAD : v->modes & ~VT_APPKEYPAD;
	else if (!inter && final == 'c')
		vt_reset(s, 1);
}

/*** the emulator: control sequences (CSI) ***/

static int csi_arg(const struct vt *v, int i, int missing)	/* parameter i, or missing's value */
{
	return i < v->nparam && v->param[i] >= 0 ? v->param[i] : missing;
}

static int csi_count(const struct vt *v)	/* the first parameter as a count: 0 is 1 */
{
	int n = csi_arg(v, 0, 1);

	return n ? n : 1;
}

static int vt_in_region(const struct session *s)	/* the cursor is inside the scroll region */
{
	return s->vt.row >= s->vt.top && s->vt.row < vt_bottom(s);
}

static void csi_cuu(struct session *s)	{ s->vt.row -= csi_count(&s->vt); }
static void csi_cud(struct session *s)	{ s->vt.row += csi_count(&s->vt); }
static void csi_cuf(struct session *s)	{ s->vt.col += csi_count(&s->vt); }
static void csi_cub(struct session *s)	{ s->vt.col -= csi_count(&s->vt); }
static void csi_cha(struct session *s)	{ s->vt.col = csi_arg(&s->vt, 0, 1) - 1; }
static void csi_cht(struct session *s)	{ vt_tab(s, csi_count(&s->vt), +1); }
static void csi_cbt(struct session *s)	{ vt_tab(s, csi_count(&s->vt), -1); }
static void csi_su(struct session *s)	{ vt_scroll(s, s->vt.top, vt_bottom(s), csi_count(&s->vt)); }
static void csi_sd(struct session *s)	{ vt_scroll(s, s->vt.top, vt_bottom(s), -csi_count(&s->vt)); }

static void csi_cnl(struct session *s)	/* E, F: lines down or up, column 1 */
{
	s->vt.row += s->vt.final == 'E' ? csi_count(&s->vt) : -csi_count(&s->vt);
	s->vt.col = 0;
}

static void csi_cup(struct session *s)	/* H, f: row;col, in the region with DECOM */
{
	struct vt *v = &s->vt;

	v->row = csi_arg(v, 0, 1) - 1 + (v->modes & VT_ORIGIN ? v->top : 0);
	v->col = csi_arg(v, 1, 1) - 1;
}

static void csi_vpa(struct session *s)	/* d: row, in the region with DECOM */
{
	s->vt.row = csi_arg(&s->vt, 0, 1) - 1 + (s->vt.modes & VT_ORIGIN ? s->vt.top : 0);
}

static void csi_ed(struct session *s)	/* J: below, above, all */
{
	struct vt *v = &s->vt;
	int how = csi_arg(v, 0, 0);

	if (how == 0) {
		vt_blank(s, v->row, v->col, s->cols);
		for (int r = v->row + 1; r < s->rows; r++)
			vt_blank(s, r, 0, s->cols);
	} else if (how == 1) {
		for (int r = 0; r < v->row; r++)
			vt_blank(s, r, 0, s->cols);
		vt_blank(s, v->row, 0, v->col + 1);
	} else if (how == 2) {
		for (int r = 0; r < s->rows; r++)
			vt_blank(s, r, 0, s->cols);
	}
}

static void csi_el(struct session *s)	/* K: right, left, all of the row */
{
	struct vt *v = &s->vt;
	int how = csi_arg(v, 0, 0);

	if (how >= 0 && how <= 2)
		vt_blank(s, v->row, how == 0 ? v->col : 0, how == 1 ? v->col + 1 : s->cols);
	else
		v->final = 0;	/* not a sequence: no effect at all */
}

static void csi_il(struct session *s)	/* L, M: insert or delete lines at the cursor */
{
	if (vt_in_region(s))
		vt_scroll(s, s->vt.row, vt_bottom(s), s->vt.final == 'L' ? -csi_count(&s->vt) : csi_count(&s->vt));
}

static void csi_ich(struct session *s)	/* @, P: insert or delete characters */
{
	if (vt_in_region(s))
		vt_shift(s, s->vt.final == '@' ? csi_count(&s->vt) : -csi_count(&s->vt));
}

static void csi_ech(struct session *s)	/* X: erase characters */
{
	vt_blank(s, s->vt.row, s->vt.col, s->vt.col + csi_count(&s->vt));
}

static void csi_rep(struct session *s)	/* b: the last glyph again to the margin at most (no wrap, no insert, as libvterm) */
{
	struct vt *v = &s->vt;
	int end = v->col + csi_count(v);
	struct cell *c;

	end = end < s->cols ? end : s->cols;
	for (; v->last_width && v->col < end; v->col += v->last_width) {
		c = s->grid->row[v->row] + v->col;
		*c = v->pen;
		c->ch = v->last;
		if (v->last_width == 2 && v->col + 1 < s->cols) {
			c->width = 2;
			c[1] = v->pen;
		}
		row_uses(s->grid->row[v->row], v->col + v->last_width < s->cols ? v->col + v->last_width : s->cols);
		vt_touch(s, v->row, v->row + 1);
	}
	if (v->col + v->last_width >= s->cols && (v->modes & VT_AUTOWRAP))
		v->phantom = 1;
}

static void csi_tbc(struct session *s)	/* g: clear a tab stop, or all */
{
	int how = csi_arg(&s->vt, 0, 0);

	if (how == 0)
		s->vt.tabs[s->vt.col / 8] &= (uint8_t)~(1 << (s->vt.col % 8));
	else if (how == 3 || how == 5)
		memset(s->vt.tabs, 0, (size_t)(s->cols + 7) / 8);
	else if (how != 1 && how != 2 && how != 4)
		s->vt.final = 0;	/* not a sequence: no effect at all */
}

static void csi_stbm(struct session *s)	/* r: the scroll region; the cursor home */
{
	struct vt *v = &s->vt;
	int top = csi_arg(v, 0, 1) - 1, bottom = csi_arg(v, 1, -1);

	top = top < 0 ? 0 : top > s->rows ? s->rows : top;
	bottom = bottom < -1 ? -1 : bottom > s->rows ? s->rows : bottom;
	if (top == 0 && bottom == s->rows)
		bottom = -1;
	if ((bottom < 0 ? s->rows : bottom) <= top)
		top = 0, bottom = -1;
	v->top = top;
	v->bottom = bottom;
	v->row = v->modes & VT_ORIGIN ? top : 0;
	v->col = 0;
}

static void csi_scosc(struct session *s)	{ vt_save(s, s->vt.final == 's'); }	/* s, u: as xterm */

static void csi_da(struct session *s)	/* c: what terminal this is (a VT100 with AVO, as libvterm) */
{
	if (s->vt.leader == '>')
		vt_reply(s, "\033[>0;100;0c");
	else if (csi_arg(&s->vt, 0, 0) == 0)
		vt_reply(s, "\033[?1;2c");
}

static void csi_dsr(struct session *s)	/* n: status, the cursor's position */
{
	const char *q = s->vt.leader == '?' ? "?" : "";
	int what = csi_arg(&s->vt, 0, 0);

	if (what == 5)
		vt_reply(s, "\033[%s0n", q);
	else if (what == 6)
		vt_reply(s, "\033[%s%d;%dR", q, s->vt.row + 1, s->vt.col + 1);
}

static void csi_decstr(struct session *s)	{ vt_reset(s, 0); }

/* The modes SM/RM set: ANSI ones (no leader) and DEC private ones (?). */
static const struct vt_mode_bit { int num, dec; unsigned bit; } vt_mode_bits[] = {
	{ 4, 0, VT_INSERT }, { 20, 0, VT_NEWLINE }, { 1, 1, VT_APPCURSOR }, { 6, 1, VT_ORIGIN },
	{ 7, 1, VT_AUTOWRAP }, { 1004, 1, VT_FOCUS }, { 2004, 1, VT_PASTE },
};

static void vt_mode(struct session *s, int num, int dec, int on)	/* one mode of SM/RM */
{
	struct vt *v = &s->vt;

	for (size_t i = 0; i < sizeof(vt_mode_bits) / sizeof(*vt_mode_bits); i++)
		if (vt_mode_bits[i].num == num && vt_mode_bits[i].dec == dec)
			v->modes = on ? v->modes | vt_mode_bits[i].bit : v->modes & ~vt_mode_bits[i].bit;
	if (!dec)
		return;
	if (num == 6) {	/* DECOM homes the cursor */
		v->row = on ? v->top : 0;
		v->col = 0;
	} else if (num == 5) {
		s->reverse_video = on;
		s->dirty_all = 1;
	} else if (num == 25) {
		s->cursor_visible = on;
	} else if (num == 9 || num == 1000 || num == 1002 || num == 1003) {
		v->mouse = !on ? 0 : num == 1003 ? MOUSE_MOVE : num == 1002 ? MOUSE_DRAG : MOUSE_CLICK;
	} else if (num == 1005 || num == 1006 || num == 1015) {
		v->mouse_enc = !on ? MOUSE_X10 : num == 1005 ? MOUSE_UTF8 : num == 1006 ? MOUSE_SGR : MOUSE_URXVT;
	} else if (num == 47 || num == 1047 || num == 1049) {
		if (num == 1049 && on)
			vt_save(s, 1);
		if (on || s->altscreen)	/* entered blank, even from itself */
			vt_altscreen(s, on);
		if (num == 1049 && !on)
			vt_save(s, 0);
	} else if (num == 1048) {
		vt_save(s, on);
	}
}

static void csi_mode(struct session *s)	/* h, l: every parameter */
{
	for (int i = 0; i < s->vt.nparam; i++)
		if (s->vt.param[i] >= 0)
			vt_mode(s, s->vt.param[i], s->vt.leader == '?', s->vt.final == 'h');
}

static void csi_decrqm(struct session *s)	/* ? Ps $ p: is a DEC mode set (1), reset (2), unknown (0) */
{
	int num = csi_arg(&s->vt, 0, 0), state = 0;

	for (size_t i = 0; i < sizeof(vt_mode_bits) / sizeof(*vt_mode_bits); i++)
		if (vt_mode_bits[i].num == num && vt_mode_bits[i].dec)
			state = s->vt.modes & vt_mode_bits[i].bit ? 1 : 2;
	if (num == 25 || num == 1049 || num == 1047)
		state = (num == 25 ? s->cursor_visible : s->altscreen) ? 1 : 2;
	vt_reply(s, "\033[?%d;%d$y", num, state);
}

static uint32_t sgr_color(const struct vt *v, int *i)	/* 38/48 ;5;N or ;2;R;G;B (or with colons) */
{
	int kind = csi_arg(v, *i + 1, -1), k = *i + 2;
	uint32_t c = 0;

	if (kind == 5 && k < v->nparam && v->param[k] >= 0) {
		c = COLOR_INDEXED | (uint32_t)(v->param[k] & 0xff);
		*i = k;
	} else if (kind == 2 && k + 2 < v->nparam) {
		c = COLOR_RGB | (uint32_t)(csi_arg(v, k, 0) & 0xff) << 16 |
		    (uint32_t)(csi_arg(v, k + 1, 0) & 0xff) << 8 | (uint32_t)(csi_arg(v, k + 2, 0) & 0xff);
		*i = k + 2;
	} else {
		*i = kind == 2 ? v->nparam : kind == 5 ? k : *i + 1;
	}
	return c;
}

/* SGR: attributes and colours; every parameter, sub-parameters (4:0,
 * 38:2:R:G:B) skipped as one. */
static void csi_sgr(struct session *s)
{
	static const uint8_t on[108] = { [1] = ATTR_BOLD, [3] = ATTR_ITALIC, [4] = ATTR_UNDERLINE,
		[5] = ATTR_BLINK, [7] = ATTR_REVERSE, [21] = ATTR_UNDERLINE };
	static const uint8_t off[108] = { [22] = ATTR_BOLD, [23] = ATTR_ITALIC, [24] = ATTR_UNDERLINE,
		[25] = ATTR_BLINK, [27] = ATTR_REVERSE };
	struct vt *v = &s->vt;
	struct cell *pen = &v->pen;

	for (int i = 0; i < v->nparam; i++) {
		int a = v->param[i] < 0 ? 0 : v->param[i], first = i;
		uint32_t c;

		if (a == 0)
			*pen = blank_cell;
		else if (a == 4 && (v->more >> i & 1) && csi_arg(v, i + 1, 1) == 0)
			pen->attrs &= (uint8_t)~ATTR_UNDERLINE;
		else if (a < 108 && on[a])
			pen->attrs |= on[a];
		else if (a < 108 && off[a])
			pen->attrs &= (uint8_t)~off[a];
		else if ((a >= 30 && a <= 37) || (a >= 90 && a <= 97))
			pen->fg = COLOR_INDEXED | (uint32_t)(a >= 90 ? a - 90 + 8 : a - 30);
		else if ((a >= 40 && a <= 47) || (a >= 100 && a <= 107))
			pen->bg = COLOR_INDEXED | (uint32_t)(a >= 100 ? a - 100 + 8 : a - 40);
		else if (a == 39 || a == 49)
			*(a == 39 ? &pen->fg : &pen->bg) = COLOR_DEFAULT;
		else if ((a == 38 || a == 48) && (c = sgr_color(v, &i)))
			*(a == 38 ? &pen->fg : &pen->bg) = c;
		for (i = i > first ? i : first; i < v->nparam - 1 && (v->more >> i & 1); i++)
			;
	}
}

/* The CSI sequences: final byte, leader ('?', '>'), intermediate byte;
 * "moves": it places the cursor, which cancels a pending wrap even when
 * the cursor stays where it was (as libvterm). */
static const struct csi_op { char final, leader, inter, moves; void (*fn)(struct session *); } csi_ops[] = {
	{ '@', 0, 0, 0, csi_ich }, { 'A', 0, 0, 1, csi_cuu }, { 'B', 0, 0, 1, csi_cud },
	{ 'C', 0, 0, 1, csi_cuf }, { 'D', 0, 0, 1, csi_cub }, { 'E', 0, 0, 1, csi_cnl },
	{ 'F', 0, 0, 1, csi_cnl }, { 'G', 0, 0, 1, csi_cha }, { 'H', 0, 0, 1, csi_cup },
	{ 'I', 0, 0, 0, csi_cht }, { 'J', 0, 0, 0, csi_ed }, { 'J', '?', 0, 0, csi_ed },
	{ 'K', 0, 0, 0, csi_el }, { 'K', '?', 0, 0, csi_el }, { 'L', 0, 0, 0, csi_il },
	{ 'M', 0, 0, 0, csi_il }, { 'P', 0, 0, 0, csi_ich }, { 'S', 0, 0, 0, csi_su },
	{ 'T', 0, 0, 0, csi_sd }, { 'X', 0, 0, 0, csi_ech }, { 'Z', 0, 0, 0, csi_cbt },
	{ '`', 0, 0, 1, csi_cha }, { 'a', 0, 0, 1, csi_cuf }, { 'b', 0, 0, 0, csi_rep },
	{ 'c', 0, 0, 0, csi_da }, { 'c', '>', 0, 0, csi_da }, { 'd', 0, 0, 1, csi_vpa },
	{ 'e', 0, 0, 1, csi_cud }, { 'f', 0, 0, 1, csi_cup }, { 'g', 0, 0, 0, csi_tbc },
	{ 'h', 0, 0, 0, csi_mode }, { 'h', '?', 0, 0, csi_mode }, { 'j', 0, 0, 1, csi_cub },
	{ 'k', 0, 0, 1, csi_cuu }, { 'l', 0, 0, 0, csi_mode }, { 'l', '?', 0, 0, csi_mode },
	{ 'm', 0, 0, 0, csi_sgr }, { 'n', 0, 0, 0, csi_dsr }, { 'n', '?', 0, 0, csi_dsr },
	{ 'p', 0, '!', 0, csi_decstr }, { 'p', '?', '$', 0, csi_decrqm }, { 'r', 0, 0, 0, csi_stbm },
	{ 's', 0, 0, 0, csi_scosc }, { 'u', 0, 0, 0, csi_scosc },
};

/* Runs a complete CSI; the cursor ends inside the screen (the region with
 * DECOM), and a move cancels a pending wrap (REP keeps its own).  One a
 * handler finds invalid (it clears final) has no effect at all. */
static void csi_dispatch(struct session *s, unsigned char final)
{
	struct vt *v = &s->vt;
	int row = v->row, col = v->col, lo, hi;

	v->final = (char)final;
	for (size_t i = 0; i < sizeof(csi_ops) / sizeof(*csi_ops); i++) {
		const struct csi_op *op = &csi_ops[i];

		if (op->final != (char)final || op->leader != v->leader || op->inter != v->inter)
			continue;
		op->fn(s);
		if (!v->final)	/* the handler found it invalid */
			return;
		lo = v->modes & VT_ORIGIN ? v->top : 0;
		hi = v->modes & VT_ORIGIN ? vt_bottom(s) - 1 : s->rows - 1;
		v->row = v->row < lo ? lo : v->row > hi ? hi : v->row;
		v->col = v->col < 0 ? 0 : v->col > s->cols - 1 ? s->cols - 1 : v->col;
		if (final != 'b' && (row != v->row || col != v->col || op->moves))
			v->phantom = 0;
		return;
	}
}

/*** the emulator: the parser ***/

/* An OSC has ended: titles (0, 2) name the session; a clipboard write
 * (52) waits for the user (clip_offered); the rest are ignored. */
static void osc_end(struct session *s)
{
	const char *p = s->osc.p ? s->osc.p : "";

	if (!s->osc_over && (!strncmp(p, "0;", 2) || !strncmp(p, "2;", 2)))
		vt_title(s, p + 2);
	if (!s->osc_over && s->osc.len > 3 && !memcmp(p, "52;", 3)) {
		buf_free(&s->clip_offer);
		buf_append(&s->clip_offer, p + 3, s->osc.len - 3);
	}
	s->osc.len = 0;
	s->osc_over = 0;
}

static void vt_csi_byte(struct session *s, unsigned char c)	/* parameters, leader, intermediate, final */
{
	struct vt *v = &s->vt;

	if (c >= '0' && c <= '9' && !v->inter) {
		int *p = &v->param[v->nparam - 1];

		*p = *p < 0 ? c - '0' : *p < 100000 ? *p * 10 + c - '0' : *p;
	} else if ((c == ';' || c == ':') && !v->inter) {
		v->more |= (uint16_t)(c == ':') << (v->nparam - 1);
		if (v->nparam < VT_PARAMS)
			v->param[v->nparam++] = -1;
		else
			v->state = VP_CSI_IGNORE;	/* too many: the whole sequence goes */
	} else if (c >= 0x3c && c <= 0x3f && v->nparam == 1 && v->param[0] < 0 && !v->leader) {
		v->leader = (char)c;
	} else if (c >= 0x20 && c <= 0x2f) {
		v->state = v->inter ? VP_CSI_IGNORE : v->state;
		v->inter = (char)c;
	} else {
		v->state = VP_GROUND;
		if (c >= 0x40 && c <= 0x7e)
			csi_dispatch(s, c);
	}
}

static void vt_esc_byte(struct session *s, unsigned char c)	/* after ESC */
{
	struct vt *v = &s->vt;

	if (c >= 0x20 && c <= 0x2f) {
		v->inter = (char)c;
		return;
	}
	v->state = VP_GROUND;
	if (!v->inter && c == '[') {
		v->state = VP_CSI;
		v->nparam = 1;
		v->param[0] = -1;
		v->more = 0;
		v->leader = 0;
	} else if (!v->inter && c == ']') {
		v->state = VP_OSC;
		s->osc.len = 0;
		s->osc_over = 0;
	} else if (!v->inter && (c == 'P' || c == 'X' || c == '^' || c == '_')) {
		v->state = VP_STRING;	/* DCS, SOS, PM, APC: read and ignored */
	} else if (!v->inter && c >= 0x40 && c < 0x60) {
		vt_control(s, (unsigned char)(c + 0x40));
	} else if (c >= 0x30 && c < 0x7f) {
		vt_escape(s, v->inter, c);
	}
}

static void vt_string_byte(struct session *s, unsigned char c)	/* OSC kept (up to OSC_MAX), others not */
{
	if (s->vt.state != VP_OSC)
		return;
	if (s->osc.len >= OSC_MAX)
		s->osc_over = 1;
	else
		buf_append(&s->osc, (const char *)&c, 1);
}

/* One byte that is not printable ASCII in the ground state: controls act
 * in any state (as in libvterm and xterm), CAN and SUB cancel, ESC starts
 * a sequence or (in a string) may end it. */
static void vt_byte(struct session *s, unsigned char c)
{
	struct vt *v = &s->vt;
	int in_string = v->state == VP_OSC || v->state == VP_STRING;

	if (c == 0x18 || c == 0x1a) {
		v->state = VP_GROUND;
	} else if (c == 0 || c == 0x7f) {
		return;
	} else if (c == 0x1b) {
		v->ended = in_string ? v->state : 0;
		v->state = VP_ESC;
		v->inter = 0;
	} else if (c == 0x07 && in_string) {
		if (v->state == VP_OSC)
			osc_end(s);
		v->state = VP_GROUND;
	} else if (c < 0x20) {
		vt_control(s, c);
	} else if (v->state == VP_ESC && v->ended && c == '\\') {	/* ST */
		if (v->ended == VP_OSC)
			osc_end(s);
		v->state = VP_GROUND;
	} else if (v->state == VP_ESC) {
		vt_esc_byte(s, c);
	} else if (v->state == VP_CSI) {
		vt_csi_byte(s, c);
	} else if (v->state == VP_CSI_IGNORE) {
		v->state = c >= 0x40 && c <= 0x7e ? VP_GROUND : v->state;
	} else if (in_string) {
		vt_string_byte(s, c);
	} else {
		vt_utf8(s, c);
	}
}

/* Remote output, parsed: text runs go in a loop of their own. */
static void vt_write(struct session *s, const char *p, size_t n)
{
	const unsigned char *b = (const unsigned char *)p, *end = b + n;

	while (b < end) {
		if (s->vt.state == VP_GROUND && *b >= 0x20 && *b < 0x7f && !s->vt.need)
			b = vt_text(s, b, end);
		else
			vt_byte(s, *b++);
	}
}

/*** the emulator: keys, mouse and paste, as the remote asked for them ***/

static void vt_output(struct session *s, const char *p, size_t n)	/* keys and replies */
{
	session_queue_keys(s, p, n);
}

static void vt_reply(struct session *s, const char *fmt, ...)
{
	char out[64];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(out, sizeof(out), fmt, ap);
	va_end(ap);
	if (n > 0 && (size_t)n < sizeof(out))
		vt_output(s, out, (size_t)n);
}

/* Function keys as xterm sends them: cursor keys (SS3 in application
 * mode), keys with a number (Delete is 3~), F1-F4 (SS3); modifiers as
 * ";N" (Shift 2).  F13-F24 are curses's shifted F1-F12. */
static const struct fkey { int curses; char final; int num, mod; } fkeys[] = {
	{ KEY_UP, 'A', 0, 0 }, { KEY_DOWN, 'B', 0, 0 }, { KEY_RIGHT, 'C', 0, 0 }, { KEY_LEFT, 'D', 0, 0 },
	{ KEY_HOME, 'H', 0, 0 }, { KEY_END, 'F', 0, 0 },
	{ KEY_SR, 'A', 0, 2 }, { KEY_SF, 'B', 0, 2 }, { KEY_SRIGHT, 'C', 0, 2 }, { KEY_SLEFT, 'D', 0, 2 },
	{ KEY_SHOME, 'H', 0, 2 }, { KEY_SEND, 'F', 0, 2 },
	{ KEY_IC, '~', 2, 0 }, { KEY_DC, '~', 3, 0 }, { KEY_SDC, '~', 3, 2 },
	{ KEY_PPAGE, '~', 5, 0 }, { KEY_NPAGE, '~', 6, 0 },
	{ KEY_F(1), 'P', 0, 0 }, { KEY_F(2), 'Q', 0, 0 }, { KEY_F(3), 'R', 0, 0 }, { KEY_F(4), 'S', 0, 0 },
	{ KEY_F(5), '~', 15, 0 }, { KEY_F(6), '~', 17, 0 }, { KEY_F(7), '~', 18, 0 }, { KEY_F(8), '~', 19, 0 },
	{ KEY_F(9), '~', 20, 0 }, { KEY_F(10), '~', 21, 0 }, { KEY_F(11), '~', 23, 0 }, { KEY_F(12), '~', 24, 0 },
};

/* A key from curses (fn: a KEY_ code) as the remote's terminal sends it;
 * returns its length (0: nothing to send).  out holds 32 bytes. */
static int key_encode(const struct session *s, int ch, int fn, char *out)
{
	int mod = 0, app = s->vt.modes & VT_APPCURSOR;

	if (!fn) {
		if (ch == '\r' || ch == '\n')
			return s->vt.modes & VT_NEWLINE ? (memcpy(out, "\r\n", 2), 2) : (out[0] = '\r', 1);
		if (ch == 8 || ch == 127)
			return out[0] = 0x7f, 1;
		return ch >= 0 && ch < 0x110000 ? (int)utf8_put((uint32_t)ch, out) : 0;
	}
	if (ch == KEY_BACKSPACE || ch == KEY_ENTER)
		return key_encode(s, ch == KEY_ENTER ? '\r' : 127, 0, out);
	if (ch == KEY_BTAB)
		return (int)(memcpy(out, "\033[Z", 3), 3);
	if (ch >= KEY_F(13) && ch <= KEY_F(24)) {
		ch -= 12;
		mod = 2;
	}
	for (size_t i = 0; i < sizeof(fkeys) / sizeof(*fkeys); i++) {
		const struct fkey *k = &fkeys[i];

		mod = k->curses == ch && k->mod ? k->mod : mod;
		if (k->curses != ch)
			continue;
		if (k->num)
			return snprintf(out, 32, mod ? "\033[%d;%d~" : "\033[%d~", k->num, mod);
		if (mod)
			return snprintf(out, 32, "\033[1;%d%c", mod, k->final);
		return snprintf(out, 32, "\033%c%c", app || strchr("PQRS", k->final) ? 'O' : '[', k->final);
	}
	return 0;
}

/* A mouse report in the encoding the remote chose; code as X10's (0-2
 * buttons, 3 release, +32 motion, +64 wheel, +4/8/16 modifiers). */
static void vt_mouse_report(struct session *s, int code, int press, int row, int col)
{
	char out[32], *p = out;
	int n;

	if (s->vt.mouse_enc == MOUSE_SGR) {
		n = snprintf(out, sizeof(out), "\033[<%d;%d;%d%c", code, col + 1, row + 1, press ? 'M' : 'm');
	} else if (s->vt.mouse_enc == MOUSE_URXVT) {
		n = snprintf(out, sizeof(out), "\033[%d;%d;%dM", press || (code & 64) ? code : (code & ~3) | 3,
			     col + 1, row + 1);
	} else {
		code = press || (code & 64) ? code : (code & ~3) | 3;
		p += sprintf(p, "\033[M");
		if (s->vt.mouse_enc == MOUSE_UTF8) {
			p += utf8_put((uint32_t)(code + 32), p);
			p += utf8_put((uint32_t)(col + 33), p);
			p += utf8_put((uint32_t)(row + 33), p);
		} else {
			*p++ = (char)(code + 32);
			*p++ = (char)(col + 33 > 255 ? 255 : col + 33);
			*p++ = (char)(row + 33 > 255 ? 255 : row + 33);
		}
		n = (int)(p - out);
	}
	vt_output(s, out, (size_t)n);
}

/*** the emulator: a session's terminal made, resized, freed ***/

static void vt_open(struct session *s)	/* a blank terminal the size of the remote PTY */
{
	grid_alloc(&s->primary, s->rows, s->cols);
	s->grid = &s->primary;
	s->sb = xcalloc(SCROLLBACK_LINES * sizeof(*s->sb));
	s->vt = (struct vt){ .bottom = -1, .saved = { 0, 0, 1, blank_cell } };
	s->vt.tabs = xcalloc((size_t)(s->cols + 7) / 8);
	vt_reset(s, 1);
	s->pred.row = -1;	/* no prediction yet: the first epoch is unproven */
	s->pred.epoch = 1;
}

static void vt_resize(struct session *s, int rows, int cols)	/* the grids keep their top-left */
{
	struct vt *v = &s->vt;

	v->tabs = xrealloc(v->tabs, (size_t)(cols + 7) / 8);
	vt_tabs_default(s, s->cols, cols);
	grid_resize(&s->primary, rows, cols);
	grid_resize(&s->alt, rows, cols);
	s->rows = rows;
	s->cols = cols;
	v->bottom = v->bottom > rows ? rows : v->bottom;
	v->top = v->top >= vt_bottom(s) ? 0 : v->top;
	if (v->phantom && v->col < cols - 1) {
		v->phantom = 0;
		v->col++;
	}
	v->row = v->row < rows ? v->row : rows - 1;
	v->col = v->col < cols ? v->col : cols - 1;
	s->dirty_all = 1;
}

static void vt_close(struct session *s)	/* frees the grids, the scrollback, the tab stops */
{
	for (int i = 0; i < s->sb_count; i++)
		free(s->sb[(s->sb_head + i) % SCROLLBACK_LINES]);
	free(s->sb);
	grid_free(&s->primary);
	grid_free(&s->alt);
	free(s->vt.tabs);
	buf_free(&s->osc);
	buf_free(&s->clip_offer);
}

/* Writes a console line into the session's terminal, distinct from remote
 * output: leaves the alternate screen first so it stays in the scrollback. */
static void term_feed(struct session *s, const char *p, size_t n);

static void vt_notice(struct session *s, const char *sgr, const char *text)
{
	struct buf b = { 0 };

	if (s->altscreen)
		buf_append(&b, "\033[?1049l", 8);
	buf_printf(&b, "\033[0m%s%s── %s ──%s\r\n", s->vt.col || s->vt.phantom ? "\r\n" : "", sgr, text, END_LINE_OFF);
	term_feed(s, b.p, b.len);
	buf_free(&b);
}

/* What the terminal shows: into the emulator, and into the recording if any. */
static void clip_offered(struct session *s);

static void term_feed(struct session *s, const char *p, size_t n)
{
	vt_write(s, p, n);
	session_touched(s);
	if (s->rec)
		rec_output(s, p, n);
	if (s->clip_offer.len)
		clip_offered(s);
}

/************************************************************************
 *** 7. sessions: open, end, reopen, input
 ************************************************************************/

static void tunnel_kick(struct tunnel *t);
static void lane_push(struct lane *l, const struct buf *b);
static void lane_drop_owned(struct lane *l, struct session *s);
static void batch_tunnel_failed(struct tunnel *t, const char *status, const char *fmt, ...);
static void predict_forget(struct session *s);
static void predict_check(struct session *s);
static void batch_kick(void);
static void batch_session_output(struct session *s, const char *p, size_t n);
static void batch_session_ended(struct session *s, const char *code, const char *msg);
static void pane_size(int *cols, int *rows);

static int session_accepts_input(const struct session *s)	/* live enough to type */
{
	return s && (s->state == S_PENDING || s->state == S_LOGIN || s->state == S_LIVE);
}

static int broadcast_targets(struct session **out, int max)	/* marked and live */
{
	int n = 0;

	for (struct tunnel *t = app.tunnels; t; t = t->next)
		for (struct session *s = t->sessions; s; s = s->next)
			if (s->marked && session_accepts_input(s) && !xfer_busy(s) && n < max)
				out[n++] = s;
	return n;
}

static int broadcasting(void)	/* keystrokes fan out now */
{
	return app.broadcast && !app.solo;
}

static const char *tunnel_name(const struct session *s)	/* its device's name */
{
	return s->tunnel->cfg.name;
}

static void session_touched(struct session *s)	/* its terminal changed */
{
	if (s == app.sel_session) {
		ui_dirty();
	} else if (!s->unseen) {
		s->unseen = 1;
		ui_dirty();	/* the list shows the activity marker */
	}
}

/* A new session on t, sized to the device's fixed PTY or to the pane. */
static struct session *session_new(struct tunnel *t, const char *user)
{
	struct session *s = xcalloc(sizeof(*s)), **tail = &t->sessions;

	s->tunnel = t;
	copy_str(s->user, sizeof(s->user), user);
	s->cols = t->cfg.pty_cols;
	s->rows = t->cfg.pty_rows;
	if (!s->cols && t->official) {	/* it ignores the size we ask for */
		s->cols = DEFAULT_PTY_COLS;
		s->rows = DEFAULT_PTY_ROWS;
	} else if (!s->cols && app.batch) {	/* no pane: wide, so output lines do not wrap */
		s->cols = 200;
		s->rows = 50;
	} else if (!s->cols)
		pane_size(&s->cols, &s->rows);
	vt_open(s);
	while (*tail)
		tail = &(*tail)->next;
	*tail = s;
	return s;
}

static void session_resize(struct session *s, int cols, int rows)	/* to the remote PTY's real size */
{
	if (s->cols == cols && s->rows == rows)
		return;
	s->cols = cols;
	s->rows = rows;
	vt_resize(s, rows, cols);
	ui_dirty();
}

static void session_free(struct session *s)	/* unlinks nothing: see callers */
{
	xfer_session_freed(s);
	lws_sul_cancel(&s->sul_login);
	lws_sul_cancel(&s->sul_predict);
	rec_stop(s);
	secret_free(s->password);
	vt_close(s);
	buf_free(&s->keys);
	free(s);
}

/* Why a session ended, in words: what the device or platform said (the
 * official SDK's one 408 text explained), and what typing was lost. */
static void end_reason(const struct session *s, const char *code, const char *msg, char *out, size_t cap)
{
	const char *meaning = status_meaning(code);
	size_t unsent = s->keys.len;
	int n;

	if (!*code)	/* ended here, not by the device or platform */
		n = snprintf(out, cap, "%s", msg);
	else
		n = snprintf(out, cap, "disconnected %s: %s%s", code, msg && *msg ? msg : *meaning ? meaning :
			     "no reason given", msg && strstr(msg, SDK_408_TEXT) ?
			     " (the official SDK's words for any shell exit)" : "");
	if (unsent && n > 0 && (size_t)n < cap)	/* typing is never lost without a word */
		n += snprintf(out + n, cap - (size_t)n, "; %zu typed byte%s not sent", unsent,
			      unsent == 1 ? "" : "s");
	if (s->unanswered && n > 0 && (size_t)n < cap)
		snprintf(out + n, cap - (size_t)n, "; %zu typed byte%s sent but never answered",
			 s->unanswered, s->unanswered == 1 ? "" : "s");
}

static int ended_by_user(const struct session *s, const char *code)	/* exit, logout, ^D */
{
	return !strcmp(code, "408") && s->exit_typed_us && now_us() - s->exit_typed_us < BYE_WINDOW_US;
}

/* Ends a session: the reason goes inline in its terminal and in the list,
 * as a fault unless the user just ended the shell. */
static void session_end(struct session *s, const char *code, const char *msg)
{
	char line[240];
	int bye = ended_by_user(s, code);

	if (s->state == S_ENDED)
		return;
	s->state = S_ENDED;
	lws_sul_cancel(&s->sul_login);
	predict_forget(s);
	if (s->xfer)
		xfer_session_ended(s, code);
	else if (s->job)
		batch_session_ended(s, code, msg);
	if (bye)
		snprintf(line, sizeof(line), "session ended: the shell exited%s%s%s", s->tunnel->official ?
			 " (official devices need a new tunnel before the next login: " : "",
			 s->tunnel->official ? keyname(app.prefix_key) : "", s->tunnel->official ? " c)" : "");
	else
		end_reason(s, code, msg, line, sizeof(line));
	buf_free(&s->keys);
	lane_drop_owned(&s->tunnel->bulk, s);	/* its device session is gone */
	clean_in_place(line, sizeof(line));	/* it goes into the terminal: no escapes */
	copy_str(s->note, sizeof(s->note), line);
	vt_notice(s, bye ? BYE_LINE_SGR : END_LINE_SGR, line);
	log_line("%s session %.8s: %s", s->tunnel->cfg.name, s->request_id, line);
	if (s->tunnel->latest == s)
		s->tunnel->latest = NULL;
	ui_dirty();
}

static void tunnel_end_sessions(struct tunnel *t, const char *code, const char *msg)
{	/* a tunnel-level end reaches every session it ends; they may reopen */
	for (struct session *s = t->sessions; s; s = s->next)
		if (s->state != S_ENDED) {
			session_end(s, code, msg);
			s->dropped = 1;
		}
}

/* Sends connect (§4.3) with a fresh request_id; the password is wiped by the
 * caller and, inside the queued frame, when the frame is freed. */
static void session_login(struct session *s, const char *password, size_t password_len)
{
	struct tunnel *t = s->tunnel;
	struct buf b = { 0 };

	new_request_id(s->request_id);
	encode_connect(&b, s->request_id, s->user, password, password_len, s->cols, s->rows);
	if (t->cfg.remember_password && password != s->password) {
		secret_free(s->password);
		s->password = secret_dup(password, password_len);
		s->password_len = password_len;
	}
	s->attached = 0;
	s->dropped = 0;
	s->got_output = 0;
	lane_push(t->device_ready ? &t->control : &t->held, &b);
	buf_free(&b);
	s->state = t->device_ready ? S_LOGIN : S_PENDING;
	s->note[0] = '\0';
	s->scroll = 0;
	t->latest = s;
	log_line("%s session %.8s: connect sent as %s", t->cfg.name, s->request_id, s->user);
	tunnel_kick(t);
}

/* Reopening keeps the old screen above, with a line between. */
static void session_reopen(struct session *s, const char *password, size_t password_len)
{
	vt_notice(s, END_LINE_SGR, "new session");
	session_login(s, password, password_len);
}

static void session_output(struct session *s, const char *p, size_t n)	/* §4.6 */
{
	if (s->state == S_LOGIN || s->state == S_PENDING)
		s->state = S_LIVE;
	if (!s->got_output) {
		s->got_output = 1;
		s->login_tries = 0;
		lws_sul_cancel(&s->sul_login);
	}
	if (s->xfer && xfer_output(s, p, n))
		return;
	if (s->job) {
		batch_session_output(s, p, n);
		return;
	}
	term_feed(s, p, n);
	if (s->pred.n)
		predict_check(s);
	if (!s->attached && s->tunnel->cfg.attach[0]) {	/* the remote work, resumed */
		s->attached = 1;
		session_queue_keys(s, s->tunnel->cfg.attach, strlen(s->tunnel->cfg.attach));
		session_queue_keys(s, "\r", 1);
	}
}

/*** local echo prediction **********************************************/

static int predicting(const struct session *s)	/* is local echo on for s now? */
{
	const struct tunnel *t = s->tunnel;

	if (t->cfg.predict == PREDICT_NEVER || broadcasting() || s->state != S_LIVE || s->scroll)
		return 0;
	return t->cfg.predict == PREDICT_ALWAYS || t->srtt_ms > PREDICT_RTT_MS;
}

static void predict_epoch(struct session *s)	/* a new epoch, from the real cursor */
{
	s->pred.epoch++;
	s->pred.row = -1;
}

static void predict_forget(struct session *s)	/* wrong, or given up on: all go */
{
	if (s->pred.n)
		session_touched(s);
	s->pred.n = 0;
	predict_epoch(s);
	lws_sul_cancel(&s->sul_predict);
}

static void on_predict_timeout(lws_sorted_usec_list_t *sul);

static int64_t predict_give_up_us(const struct session *s)	/* an echo later than this: none */
{
	int rtt3 = 3 * s->tunnel->srtt_ms;

	return (int64_t)(rtt3 > PREDICT_GIVE_UP_MS ? rtt3 : PREDICT_GIVE_UP_MS) * 1000;
}

static void predict_push(struct session *s, uint32_t ch)	/* one cell, at the predicted cursor */
{
	if (s->pred.n == PREDICT_MAX) {
		predict_forget(s);
		return;
	}
	s->pred.p[s->pred.n++] = (struct prediction){ s->pred.row, s->pred.col, ch, s->pred.epoch, now_us() };
	s->pred.made++;
	if (app.ctx && lws_dll2_is_detached(&s->sul_predict.list))	/* not yet watching */
		lws_sul_schedule(app.ctx, 0, &s->sul_predict, on_predict_timeout, predict_give_up_us(s));
	session_touched(s);
}

/* A key the user typed, as the remote will most likely echo it:
 * printables and backspace change a cell, arrows move the cursor, any
 * other key starts a new epoch. */
static void predict_key(struct session *s, int ch, int fn)
{
	struct pos cur;

	if (!predicting(s)) {
		predict_forget(s);
		return;
	}
	if (s->pred.row < 0) {
		cur = (struct pos){ s->vt.row, s->vt.col };
		s->pred.row = cur.row;
		s->pred.col = cur.col;
	}
	if (!fn && ch >= 32 && ch != 127 && wcwidth((wchar_t)ch) == 1 && s->pred.col < s->cols - 1) {
		predict_push(s, (uint32_t)ch);
		s->pred.col++;
	} else if (((!fn && (ch == 127 || ch == 8)) || (fn && ch == KEY_BACKSPACE)) && s->pred.col > 0) {
		s->pred.col--;
		predict_push(s, 0);
	} else if (fn && (ch == KEY_LEFT || ch == KEY_RIGHT) &&
		   s->pred.col + (ch == KEY_LEFT ? -1 : 1) >= 0 && s->pred.col + 1 < s->cols) {
		s->pred.col += ch == KEY_LEFT ? -1 : 1;
	} else {
		predict_epoch(s);
	}
}

static int prediction_passed(const struct prediction *p, struct pos cur)	/* the echo went by */
{
	if (!p->ch)	/* an erase: the cursor came back over it */
		return cur.row != p->row || cur.col <= p->col;
	return cur.row > p->row || (cur.row == p->row && cur.col > p->col);
}

static int prediction_right(const struct session *s, const struct prediction *p)
{
	const struct cell *c;

	if (p->row >= s->grid->rows || p->col >= s->grid->cols)
		return 0;
	c = &s->grid->row[p->row][p->col];
	return p->ch ? c->ch == p->ch : c->ch == 0 || c->ch == ' ';
}

/* The remote's output came: each prediction its echo went past is proven
 * (and proves its epoch) or wrong (and all go: the screen is the remote's
 * again); one waiting longer than an echo takes is given up on. */
static void predict_check(struct session *s)
{
	struct pos cur;
	int kept = 0;

	cur = (struct pos){ s->vt.row, s->vt.col };
	for (int i = 0; i < s->pred.n; i++) {
		struct prediction *p = &s->pred.p[i];

		if (!prediction_passed(p, cur)) {
			if (now_us() - p->sent_us > predict_give_up_us(s)) {
				predict_forget(s);
				return;
			}
			s->pred.p[kept++] = *p;
		} else if (!prediction_right(s, p)) {
			s->pred.wrong++;
			predict_forget(s);
			return;
		} else {
			s->pred.confirmed++;
			s->pred.proven = p->epoch > s->pred.proven ? p->epoch : s->pred.proven;
		}
	}
	s->pred.n = kept;
}

static void on_predict_timeout(lws_sorted_usec_list_t *sul)	/* no output came at all */
{
	struct session *s = lws_container_of(sul, struct session, sul_predict);

	predict_check(s);
	if (s->pred.n)
		lws_sul_schedule(app.ctx, 0, &s->sul_predict, on_predict_timeout, predict_give_up_us(s));
}

static int is_interrupt(const char *p, size_t n)	/* ^C, ^\, ^Z only */
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != 0x03 && p[i] != 0x1c && p[i] != 0x1a)
			return 0;
	return n > 0;
}

static int session_paste(struct session *s, const char *p, size_t n);

/* Keystrokes (already encoded: key_encode) wait in the session's buffer and go
 * out, coalesced, ahead of bulk sends when the socket is writable; while a
 * paste of this session is still queued, only interrupts overtake it, so
 * what is typed after a paste (Enter, Ctrl-D) arrives after it. */
static void session_queue_keys(struct session *s, const char *p, size_t n)
{
	if (s->state == S_ENDED || xfer_busy(s))	/* a transfer's typing is its own */
		return;
	if (s->bulk_frames && !is_interrupt(p, n) && session_paste(s, p, n) == 0)
		return;
	buf_append(&s->keys, p, n);
	s->scroll = 0;
	tunnel_kick(s->tunnel);
}

/* Input chunked (§4.5) into the bulk lane, behind keystrokes, in order. */
static void bulk_push(struct session *s, const char *p, size_t n)
{
	struct tunnel *t = s->tunnel;
	const size_t budget = MAX_MESSAGE - 256;

	while (n) {
		size_t k = chunk_len(p, n, INPUT_CHUNK, budget);
		struct buf b = { 0 };

		if (!k)		/* a lone broken sequence longer than a chunk */
			k = n < INPUT_CHUNK ? n : INPUT_CHUNK;
		encode_command(&b, s->request_id, p, k);
		lane_push(&t->bulk, &b);
		t->bulk.tail->owner = s;
		s->bulk_frames++;
		buf_free(&b);
		p += k;
		n -= k;
	}
	t->latest = s;
	tunnel_kick(t);
}

/* A paste: into the bulk lane, unless too much waits there already. */
static int session_paste(struct session *s, const char *p, size_t n)
{
	if (xfer_busy(s)) {
		flash_msg("a transfer runs in this session: the paste was not sent");
		return 0;
	}
	if (s->state == S_ENDED || s->tunnel->bulk.bytes + n * 2 > BULK_QUEUE_CAP)
		return -1;
	bulk_push(s, p, n);
	s->scroll = 0;
	return 0;
}

/************************************************************************
 *** 8. network: the lws callback, send lanes, heartbeat, reconnect
 ************************************************************************/

static void tunnel_connect(struct tunnel *t);

static void lane_push(struct lane *l, const struct buf *b)	/* copies b into a frame */
{
	struct frame *f = xrealloc(NULL, sizeof(*f) + LWS_PRE + b->len);

	f->next = NULL;
	f->owner = NULL;
	f->len = b->len;
	memcpy(f->buf + LWS_PRE, b->p, b->len);
	if (l->tail)
		l->tail->next = f;
	else
		l->head = f;
	l->tail = f;
	l->bytes += b->len;
}

static void frame_free(struct frame *f)	/* wiped: connect frames hold passwords */
{
	explicit_bzero(f->buf, LWS_PRE + f->len);
	free(f);
}

static struct frame *lane_pop(struct lane *l)	/* the oldest frame, unlinked */
{
	struct frame *f = l->head;

	if (f) {
		l->head = f->next;
		if (!l->head)
			l->tail = NULL;
		l->bytes -= f->len;
		if (f->owner)
			f->owner->bulk_frames--;
	}
	return f;
}

static void lane_clear(struct lane *l)	/* drops and wipes every frame */
{
	struct frame *f;

	while ((f = lane_pop(l)))
		frame_free(f);
}

static void lane_drop_owned(struct lane *l, struct session *s)	/* s's frames go */
{
	struct lane keep = { 0 };
	struct frame *f;

	while ((f = lane_pop(l))) {
		if (f->owner == s) {
			frame_free(f);
			continue;
		}
		f->next = NULL;
		if (keep.tail)
			keep.tail->next = f;
		else
			keep.head = f;
		keep.tail = f;
		keep.bytes += f->len;
		if (f->owner)
			f->owner->bulk_frames++;	/* lane_pop counted it out */
	}
	*l = keep;
}

static void lane_move(struct lane *dst, struct lane *src)	/* appends all of src */
{
	if (!src->head)
		return;
	if (dst->tail)
		dst->tail->next = src->head;
	else
		dst->head = src->head;
	dst->tail = src->tail;
	dst->bytes += src->bytes;
	memset(src, 0, sizeof(*src));
}

static int tunnel_stale(const struct tunnel *t);

/* Typed keys to send now.  None while the link owes an answer: they wait,
 * and go when it answers again (or are named as not sent if it dies). */
static struct session *session_with_keys(struct tunnel *t)
{
	if (tunnel_stale(t))
		return NULL;
	for (struct session *s = t->sessions; s; s = s->next)
		if (s->keys.len && (s->state == S_LOGIN || s->state == S_LIVE))
			return s;
	return NULL;
}

static int tunnel_has_output(struct tunnel *t)	/* anything to write now */
{
	return t->control.head || t->bulk.head || session_with_keys(t);
}

/* Redis's write path: ask for one writable callback when there is work. */
static void tunnel_kick(struct tunnel *t)
{
	if (t->wsi && t->state >= T_WAITING && t->state <= T_ONLINE && tunnel_has_output(t))
		lws_callback_on_writable(t->wsi);
}

static int write_frame(struct tunnel *t, unsigned char *p, size_t n)	/* one text frame */
{
	return lws_write(t->wsi, p, n, LWS_WRITE_TEXT) < (int)n ? -1 : 0;
}

/*** liveness: a stale link shown in seconds, a dead one found in ten ***/

static int tunnel_stale(const struct tunnel *t)	/* an answer is overdue */
{
	return t->waiting_since_us && now_us() - t->waiting_since_us >= STALE_S * 1000000LL;
}

static int stale_seconds(const struct tunnel *t)	/* how long it has been silent */
{
	return t->waiting_since_us ? (int)((now_us() - t->waiting_since_us) / 1000000) : 0;
}

static void on_live_probe(lws_sorted_usec_list_t *sul);

/* Something went out that gets an answer (keys an echo, at least the
 * platform's pong to the probes): from now on one is due. */
static void expect_answer(struct tunnel *t, int input)
{
	if (!t->waiting_since_us) {
		t->waiting_since_us = now_us();
		lws_sul_schedule(app.ctx, 0, &t->sul_live, on_live_probe, PROBE_US);
	}
	t->input_waiting |= input;
}

static void heard_from(struct tunnel *t)	/* anything came in: the link lives */
{
	int was_stale = tunnel_stale(t);

	t->last_rx_us = now_us();
	t->waiting_since_us = 0;
	t->input_waiting = 0;
	t->first_ping = 0;
	lws_sul_cancel(&t->sul_live);
	for (struct session *s = t->sessions; s; s = s->next)
		s->unanswered = 0;
	if (was_stale) {
		tunnel_event(t, "answering again");
		tunnel_kick(t);	/* the keys it held go now */
	}
}

/* Writes keystrokes of one session as one command message (§4.5). */
static int write_keys(struct tunnel *t, struct session *s)
{
	static unsigned char out[LWS_PRE + MAX_MESSAGE];
	size_t k = chunk_len(s->keys.p, s->keys.len, INPUT_CHUNK, MAX_MESSAGE - 256);
	struct buf b = { 0 };
	int r;

	if (!k)
		k = s->keys.len < INPUT_CHUNK ? s->keys.len : INPUT_CHUNK;
	encode_command(&b, s->request_id, s->keys.p, k);
	memcpy(out + LWS_PRE, b.p, b.len);
	r = write_frame(t, out + LWS_PRE, b.len);
	explicit_bzero(out + LWS_PRE, b.len);
	buf_free(&b);
	buf_consume(&s->keys, k);
	s->unanswered += k;
	t->latest = s;
	expect_answer(t, 1);
	return r;
}

/* One frame per writable callback: control (connect, ping) first, then
 * keystrokes, then bulk (pastes), so Ctrl-C overtakes a flood. */
static int tunnel_write_one(struct tunnel *t)
{
	struct lane *l = t->control.head ? &t->control : t->bulk.head ? &t->bulk : NULL;
	struct session *s = t->control.head ? NULL : session_with_keys(t);
	struct frame *f;
	int r;

	if (s)
		r = write_keys(t, s);
	else if (l && (f = lane_pop(l))) {
		r = write_frame(t, f->buf + LWS_PRE, f->len);
		frame_free(f);
	} else
		return 0;
	if (r == 0)
		tunnel_kick(t);
	return r;
}

/* Tunnel-level news: the list and status bar show it; the log keeps it. */
static void tunnel_event(struct tunnel *t, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(t->event, sizeof(t->event), fmt, ap);
	va_end(ap);
	clean_in_place(t->event, sizeof(t->event));	/* it carries peer text */
	log_line("%s: %s", t->cfg.name, t->event);
	ui_dirty();
}

/* Bad input is reported (rate-limited) and dropped, never fatal (§2). */
static void tunnel_report(struct tunnel *t, const char *what)
{
	int64_t now = now_us();

	t->dropped++;
	if (now - t->last_error_report_us < ERROR_REPORT_S * 1000000LL)
		return;
	t->last_error_report_us = now;
	tunnel_event(t, "dropped %u bad message%s: %s", t->dropped,
		     t->dropped == 1 ? "" : "s", what);
}

static void device_ready(struct tunnel *t)	/* connect_tunnel, or waited 10 s */
{
	t->device_ready = 1;
	lane_move(&t->control, &t->held);
	for (struct session *s = t->sessions; s; s = s->next)
		if (s->state == S_PENDING)
			s->state = S_LOGIN;
	tunnel_kick(t);
}

static void on_device_wait(lws_sorted_usec_list_t *sul)	/* §4.2: send anyway */
{
	struct tunnel *t = lws_container_of(sul, struct tunnel, sul_device_wait);

	if (app.batch && !t->device_ready) {	/* nobody waits at a batch run's terminal */
		batch_tunnel_failed(t, "offline", "the device did not come online within %d s",
				    DEVICE_WAIT_S);
		return;
	}
	if (!t->device_ready && t->held.head)
		tunnel_event(t, "no connect_tunnel after %d s: sending login anyway", DEVICE_WAIT_S);
	device_ready(t);
}

static void reopen_dropped(struct tunnel *t);

static void on_connect_tunnel(struct tunnel *t)	/* the device is online */
{
	t->state = T_ONLINE;
	lws_sul_cancel(&t->sul_device_wait);
	tunnel_event(t, "device online");
	device_ready(t);
	xfer_tunnel_back(t);	/* before reopen_dropped counts its session */
	reopen_dropped(t);
}

/* A disconnect without a session (§4 routing): the platform's word on the
 * tunnel.  410: the device went; the WebSocket stays and waits for it. */
static void on_tunnel_disconnect(struct tunnel *t, const struct inbound *m)
{
	const char *code = m->status_code[0] ? m->status_code : "?";

	tunnel_end_sessions(t, code, m->status_msg);
	tunnel_event(t, "disconnect %s: %s", code, *m->status_msg ? m->status_msg : status_meaning(code));
	if (!strcmp(code, "410")) {
		t->device_ready = 0;
		t->state = T_WAITING;
	}
}

static void on_pong(struct tunnel *t, const struct inbound *m)	/* round trip */
{
	int rtt;

	if (m->request_id && !strcmp(m->request_id, t->ping_id)) {
		rtt = (int)((now_us() - t->ping_sent_us) / 1000);
		t->ping_id[0] = '\0';
		if (rtt != t->rtt_ms && t == app.sel_tunnel)	/* only the bar shows it */
			ui_dirty();
		t->rtt_ms = rtt;
		t->srtt_ms = t->srtt_ms < 0 ? rtt : (7 * t->srtt_ms + rtt) / 8;
	}
}

/* No output long after the device took the login: an official device
 * wedged by a shell exit (§4 routing) answers every connect, then nothing. */
static void on_login_timeout(lws_sorted_usec_list_t *sul)
{
	struct session *s = lws_container_of(sul, struct session, sul_login);
	struct tunnel *t = s->tunnel;
	char why[160];

	if (s->got_output || s->state == S_ENDED)
		return;
	snprintf(why, sizeof(why), "no output %d s after the device took the login: it looks wedged; "
		 "%s c %s", t->cfg.login_timeout_s, keyname(app.prefix_key),
		 t->cfg.device_id[0] ? "makes a new tunnel" : "reconnects the tunnel");
	session_end(s, "", why);
}

static int tunnel_single(const struct tunnel *t)	/* one SSH session at a time */
{
	return t->cfg.sessions == SESSIONS_SINGLE || (t->cfg.sessions == SESSIONS_AUTO && t->official);
}

/* A connect_response without data is the official SDK's fingerprint: from
 * now on the device runs one session at a time on a 128x30 PTY, and a new
 * login has just replaced any other session on it. */
static void tunnel_learn_official(struct tunnel *t, struct session *s)
{
	t->official = 1;
	tunnel_event(t, "official SDK device: one session at a time, %dx%d", DEFAULT_PTY_COLS,
		     DEFAULT_PTY_ROWS);
	if (!t->cfg.pty_cols)
		session_resize(s, DEFAULT_PTY_COLS, DEFAULT_PTY_ROWS);
	for (struct session *o = t->sessions; o && tunnel_single(t); o = o->next)
		if (o != s && o->state != S_ENDED)
			session_end(o, "", "replaced by a newer login: this device runs one session at a time");
}

static void on_connect_response(struct tunnel *t, struct session *s, const struct inbound *m)
{	/* §4.4: the device took the login; success shows as output */
	clean_text(s->note, sizeof(s->note), m->data ? m->data : "", m->data ? m->data_len : 0);
	if (!m->has_data && !t->official)
		tunnel_learn_official(t, s);
	if (!s->got_output && t->cfg.login_timeout_s > 0)
		lws_sul_schedule(app.ctx, 0, &s->sul_login, on_login_timeout,
				 (lws_usec_t)t->cfg.login_timeout_s * LWS_US_PER_SEC);
	ui_dirty();
}

static void open_login(struct tunnel *t, struct session *reopen);
static void select_session(struct tunnel *t, struct session *s);

/* A refused login (400 before any output) asks again in the dialog, as
 * ssh does, three times in all; a remembered password was wrong: forgotten. */
static void login_refused(struct session *s)
{
	secret_free(s->password);
	s->password = NULL;
	if (!app.ui_up || s->got_output || s->job || s->xfer || ++s->login_tries >= 3 || app.mode != M_NORMAL) {
		if (s->login_tries >= 3)
			flash_msg("%s: the login was refused 3 times", s->tunnel->cfg.name);
		return;
	}
	select_session(s->tunnel, s);
	open_login(s->tunnel, s);
	snprintf(app.dlg.notice, sizeof(app.dlg.notice), "login refused: try again (%d of 3)",
		 s->login_tries + 1);
}

/* Official devices send a shell exit's 408 as SSH_timeout_disconnect, and
 * after an exit that sent none, send it on the next connect: a 408 routed
 * here by that name, before this session's first output, is not its own. */
static int stale_disconnect(const struct session *s, const struct inbound *m)
{
	return !s->got_output && m->request_id && strcmp(m->request_id, s->request_id);
}

/* A session's message: output, acceptance, or its end. */
static void on_session_message(struct tunnel *t, struct session *s, const struct inbound *m)
{
	if (!s) {
		tunnel_report(t, "a message for no open session");
		return;
	}
	if (m->op == OP_COMMAND_RESPONSE && m->data)
		session_output(s, m->data, m->data_len);
	else if (m->op == OP_CONNECT_RESPONSE)
		on_connect_response(t, s, m);
	else if (m->op == OP_DISCONNECT && stale_disconnect(s, m))
		tunnel_event(t, "ignored a late %s: it ended the session before %.4s",
			     m->status_code[0] ? m->status_code : "disconnect", s->request_id);
	else if (m->op == OP_DISCONNECT) {
		session_end(s, m->status_code[0] ? m->status_code : "?", m->status_msg);
		if (!strcmp(m->status_code, "400"))
			login_refused(s);
	} else
		tunnel_report(t, "an unexpected operation_type from the platform");
}

static void tunnel_message(struct tunnel *t, const char *p, size_t n)	/* one whole frame */
{
	struct inbound m;
	char err[160];

	if (decode_message(p, n, &m, err, sizeof(err)) < 0) {
		tunnel_report(t, err);
		return;
	}
	if (m.op == OP_CONNECT_TUNNEL)
		on_connect_tunnel(t);
	else if (m.op == OP_PONG)
		on_pong(t, &m);
	else if (m.op == OP_DISCONNECT && (!m.request_id || !*m.request_id))
		on_tunnel_disconnect(t, &m);
	else
		on_session_message(t, route_message(t, &m), &m);
	cJSON_Delete(m.root);
}

/* Reassembles fragments; binary and oversize frames are
 * reported and dropped whole. */
static void tunnel_receive(struct tunnel *t, struct lws *wsi, const void *in, size_t len)
{
	int final = lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi);

	heard_from(t);
	if (lws_frame_is_binary(wsi) && !t->rx_skip && !t->rx.len) {
		tunnel_report(t, "a binary frame");
		t->rx_skip = 1;
	} else if (!t->rx_skip && t->rx.len + len > RX_LIMIT) {
		tunnel_report(t, "a frame over 1 MB");
		t->rx_skip = 1;
	}
	if (!t->rx_skip)
		buf_append(&t->rx, in, len);
	if (!final)
		return;
	if (!t->rx_skip)
		tunnel_message(t, t->rx.p, t->rx.len);
	t->rx.len = 0;
	t->rx_skip = 0;
}

static void send_ping(struct tunnel *t)	/* a JSON ping: the round trip, and a probe */
{
	struct buf b = { 0 };

	snprintf(t->ping_id, sizeof(t->ping_id), "ping-%lld", (long long)now_us());
	t->ping_sent_us = now_us();
	encode_message(&b, OP_PING, t->ping_id, "null");
	lane_push(&t->control, &b);
	buf_free(&b);
	expect_answer(t, 0);
	tunnel_kick(t);
}

static void link_dead(struct tunnel *t, const char *why)	/* closes it: the normal retry follows */
{
	tunnel_event(t, "%s: the link is dead", why);
	t->close_code = 1006;
	snprintf(t->close_reason, sizeof(t->close_reason), "%s", why);
	lws_set_timeout(t->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

/* While an answer is due: a ping each second (the platform always answers
 * one), the counter on screen, and the verdict: dead after ACTIVE_DEAD_S
 * when typing or a new link's first ping went unanswered. */
static void on_live_probe(lws_sorted_usec_list_t *sul)
{
	struct tunnel *t = lws_container_of(sul, struct tunnel, sul_live);
	char why[64];

	if (!t->wsi || !t->waiting_since_us)
		return;
	if ((t->input_waiting || t->first_ping) && stale_seconds(t) >= ACTIVE_DEAD_S) {
		snprintf(why, sizeof(why), "no answer for %d s", stale_seconds(t));
		link_dead(t, why);
		return;
	}
	if (t->input_waiting || t->first_ping)
		send_ping(t);
	ui_dirty();	/* the counter */
	lws_sul_schedule(app.ctx, 0, &t->sul_live, on_live_probe, PROBE_US);
}

/* Every heartbeat: a JSON ping for the round trip, and, idle, the
 * dead-link check of §4.8 (three beats without a byte). */
static void on_ping_timer(lws_sorted_usec_list_t *sul)
{
	struct tunnel *t = lws_container_of(sul, struct tunnel, sul_ping);
	int beat = ws_heartbeat.secs_since_valid_ping, dead = beat * DEAD_LINK_BEATS;
	char why[64];

	if (!t->wsi)
		return;
	if (now_us() - t->last_rx_us > dead * 1000000LL) {
		snprintf(why, sizeof(why), "no traffic for %d s", dead);
		link_dead(t, why);
		return;
	}
	send_ping(t);
	lws_sul_schedule(app.ctx, 0, &t->sul_ping, on_ping_timer, (lws_usec_t)beat * LWS_US_PER_SEC);
}

static void on_reconnect_timer(lws_sorted_usec_list_t *sul)	/* backoff over */
{
	tunnel_connect(lws_container_of(sul, struct tunnel, sul_connect));
}

static void schedule_reconnect(struct tunnel *t)	/* §4.8 backoff with jitter */
{
	unsigned n = sizeof(backoff_ms) / sizeof(*backoff_ms);
	uint32_t ms = backoff_ms[t->retries < n ? t->retries : n - 1];
	unsigned char r;

	lws_get_random(app.ctx, &r, 1);
	ms = ms * 4 / 5 + (uint32_t)(((uint64_t)ms * 2 / 5) * r / 255);
	ms = ms > backoff_ms[n - 1] ? backoff_ms[n - 1] : ms;	/* the cap is the cap, jitter or not */
	t->retries++;
	t->state = T_RECONNECTING;
	t->reconnect_at_us = now_us() + (int64_t)ms * 1000;
	lws_sul_schedule(app.ctx, 0, &t->sul_connect, on_reconnect_timer, (lws_usec_t)ms * 1000);
}

/* Close codes and HTTP answers after which retrying cannot help (§4.1, §4.8). */
static int is_final_close(int code)
{
	return code == 1000 || code == 1002 || code == 4000 || code == 1015 ||
	       code == 401 || code == 403 || code == 404;
}

/* The WebSocket is gone (closed, refused, dead): every session of the tunnel
 * ends showing why; then reconnect unless the close was final. */
static void tunnel_lost(struct tunnel *t, int code, const char *why)
{
	char c[16];

	snprintf(c, sizeof(c), "%d", code);
	t->wsi = NULL;
	lws_sul_cancel(&t->sul_ping);
	lws_sul_cancel(&t->sul_device_wait);
	lws_sul_cancel(&t->sul_live);
	lws_sul_cancel(&t->sul_handshake);
	t->waiting_since_us = 0;
	t->input_waiting = 0;
	lane_clear(&t->control);
	lane_clear(&t->held);
	lane_clear(&t->bulk);
	t->rx.len = 0;
	t->rx_skip = 0;
	t->device_ready = 0;
	tunnel_end_sessions(t, c, why);
	if (app.quit)
		return;
	if (!is_final_close(code) && (!app.batch || xfer_pending(t)))
		schedule_reconnect(t);
	else
		t->state = code == 1015 ? T_CERT_FAILED :
			   (code == 1002 || code == 401 || code == 403) ? T_AUTH_FAILED : T_CLOSED;
	if (code == 1006 || code == 1015)	/* no close frame: the reason says it all */
		tunnel_event(t, "%s", why);
	else
		tunnel_event(t, "%s%s: %s", code < 1000 ? "HTTP " : "closed ", c, why);
}

static void on_established(struct tunnel *t)	/* the WebSocket is up (§4.1) */
{
	t->state = T_WAITING;
	t->retries = 0;
	t->close_code = 0;
	t->close_reason[0] = '\0';
	t->last_rx_us = now_us();
	t->rtt_ms = -1;
	t->srtt_ms = -1;
	t->first_ping = 1;	/* the platform answers pings: a new link proves itself */
	lws_sul_cancel(&t->sul_handshake);
	tunnel_event(t, "connected");
	lws_sul_schedule(app.ctx, 0, &t->sul_device_wait, on_device_wait,
			 DEVICE_WAIT_S * LWS_US_PER_SEC);
	lws_sul_schedule(app.ctx, 0, &t->sul_ping, on_ping_timer, 1 * LWS_US_PER_SEC);
}

/* The peer's close frame: its code and reason, for tunnel_lost(). */
static void on_peer_close(struct tunnel *t, const unsigned char *in, size_t len)
{
	t->close_code = len >= 2 ? in[0] << 8 | in[1] : 1005;
	clean_text(t->close_reason, sizeof(t->close_reason), (const char *)in + 2, len > 2 ? len - 2 : 0);
}

static void tunnel_where(const struct tunnel *t, char *out, size_t cap)	/* "host:port" */
{
	struct url u;

	if (url_parse(t->cfg.url, &u) < 0)
		snprintf(out, cap, "?");
	else
		snprintf(out, cap, strchr(u.host, ':') ? "[%s]:%d" : "%s:%d", u.host, u.port);
}

/* lws's words for a failed connection, and ours (it knows no errno). */
static const struct { const char *lws, *words; } connect_failures[] = {
	{ "Timed out waiting SSL", "no answer to the TLS handshake" },
	{ "Unable to connect", "refused or unreachable" },
	{ "getaddrinfo", "host name not found" },
	{ "Peer hung up", "the server hung up" },
	{ "timeout", "timed out" },
	{ "SSL", "TLS handshake failed" },
};

static void connect_cause(const char *in, char *out, size_t cap)	/* in words */
{
	for (size_t i = 0; in && i < sizeof(connect_failures) / sizeof(*connect_failures); i++)
		if (strstr(in, connect_failures[i].lws)) {
			snprintf(out, cap, "%s", connect_failures[i].words);
			return;
		}
	clean_text(out, cap, in ? in : "connection failed", in ? strlen(in) : 17);
}

/* A refused handshake (§4.1) shows the HTTP status we got, whatever it
 * was; a refused certificate says why and is not retried in a loop (the
 * user reconnects with Ctrl-g c); other failures name host, port and cause. */
static void on_connect_error(struct tunnel *t, struct lws *wsi, const char *in)
{
	int status = wsi ? (int)lws_http_client_http_response(wsi) : 0;
	char why[400], cause[96], where[300];

	if (!status && in && strstr(in, "unauthorized"))
		status = 401;
	tunnel_where(t, where, sizeof(where));
	connect_cause(in, cause, sizeof(cause));
	if (t->tls_error[0]) {
		snprintf(why, sizeof(why), "certificate of %.200s refused: %s", where, t->tls_error);
		tunnel_lost(t, 1015, why);
	} else if (status >= 400) {
		tunnel_lost(t, status, status == 404 ? "tunnel unknown or closed" :
			    status == 401 || status == 403 ? "token refused" : cause);
	} else {
		snprintf(why, sizeof(why), "cannot connect to %.200s: %s", where, cause);
		tunnel_lost(t, 1006, why);
	}
}

static void on_closed(struct tunnel *t)	/* CLIENT_CLOSED: after a close or a drop */
{
	int code = t->close_code ? t->close_code : 1006;
	char c[16];

	snprintf(c, sizeof(c), "%d", code);
	if (code == 4000) {	/* our words: the console does not fight back by itself */
		char why[96];

		snprintf(why, sizeof(why), "another connection took this tunnel; %s c takes it back",
			 keyname(app.prefix_key));
		tunnel_lost(t, code, why);
	} else
		tunnel_lost(t, code, t->close_reason[0] ? t->close_reason :
			    *status_meaning(c) ? status_meaning(c) : "connection closed");
}

static void on_append_headers(struct tunnel *t, void *in, size_t len)	/* §1 token header */
{
	unsigned char **p = in, *end = *p + len, *at = *p;
	const char *tok = t->cfg.token;

	if (lws_add_http_header_by_name(t->wsi, (const unsigned char *)"tunnel_access_token:",
					(const unsigned char *)tok, (int)strlen(tok), p, end))
		log_line("%s: the token did not fit in the handshake", t->cfg.name);
	else
		t->header_token = memmem(at, (size_t)(*p - at), tok, strlen(tok));
}

/* lws builds the handshake in its service buffer, which it frees unwiped
 * at exit: once the request is out, the token's copy there goes, if no
 * later use of the buffer has overwritten it already. */
static void wipe_header_token(struct tunnel *t)
{
	size_t n = t->cfg.token ? strlen(t->cfg.token) : 0;

	if (t->header_token && n && !memcmp(t->header_token, t->cfg.token, n))
		explicit_bzero(t->header_token, n);
	t->header_token = NULL;
}

/* X509 verification errors in words: OpenSSL's own reach lws as
 * "error:00000001:lib(0)::reason(1)". */
static const struct { int err; const char *words; } cert_errors[] = {
	{ X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, "signed by an unknown certificate authority" },
	{ X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE, "signed by an unknown certificate authority" },
	{ X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT, "signed by an unknown certificate authority" },
	{ X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN, "signed by an unknown certificate authority" },
	{ X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, "self-signed" },
	{ X509_V_ERR_HOSTNAME_MISMATCH, "issued for another host name" },
	{ X509_V_ERR_IP_ADDRESS_MISMATCH, "issued for another address" },
	{ X509_V_ERR_CERT_HAS_EXPIRED, "expired" },
	{ X509_V_ERR_CERT_NOT_YET_VALID, "not valid yet" },
	{ X509_V_ERR_CERT_REVOKED, "revoked" },
};

static void cert_words(int err, char *out, size_t cap)	/* a verification error, for people */
{
	for (size_t i = 0; i < sizeof(cert_errors) / sizeof(*cert_errors); i++)
		if (cert_errors[i].err == err) {
			snprintf(out, cap, "%s", cert_errors[i].words);
			return;
		}
	snprintf(out, cap, "%s", X509_verify_cert_error_string(err));
}

static char *cert_error_slot(struct lws *wsi);

/* OpenSSL's verdict on each certificate of the peer's chain: the first
 * refusal is kept, in words, for the connection error; --insecure
 * overrules every refusal, as it says it does. */
static int on_cert_check(struct lws *wsi, X509_STORE_CTX *x509, int ok)
{
	int err = X509_STORE_CTX_get_error(x509);
	char *slot;

	if (ok || err == X509_V_OK)
		return 0;
	if (app.insecure) {
		X509_STORE_CTX_set_error(x509, X509_V_OK);
		return 0;
	}
	slot = cert_error_slot(wsi);
	if (slot && !*slot)
		cert_words(err, slot, 96);
	return 0;
}

static void tls_reached(struct lws *wsi)	/* the server sent its certificate */
{
	const struct lws_protocols *p = lws_get_protocol(wsi);
	struct tunnel *t = lws_get_opaque_user_data(wsi);

	if (p && !strcmp(p->name, "tunnel") && (uintptr_t)t >= 16)
		t->phase = "TLS handshake";
}

static void tty_readable(void);
static void signal_readable(int fd);
#define RAW_TTY     ((void *)1)	/* opaque data of the adopted descriptors */
#define RAW_SIGNALS ((void *)2)
#define WS_CLOSING  ((void *)3)	/* a WebSocket its tunnel left: saying close 1000 */

static int on_raw_file(struct lws *wsi)	/* the keyboard or the signalfd */
{
	if (lws_get_opaque_user_data(wsi) == RAW_TTY)
		tty_readable();
	else
		signal_readable(lws_get_socket_fd(wsi));
	return 0;
}

/* A WebSocket its tunnel left (the user closed the device, or quits): it
 * says close 1000 at its next write and is gone (§4.9). */
static int on_closing(struct lws *wsi, enum lws_callback_reasons reason)
{
	static const char why[] = "closed by the user";

	if (reason == LWS_CALLBACK_CLIENT_WRITEABLE) {
		lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, (unsigned char *)why, sizeof(why) - 1);
		return -1;
	}
	if (reason == LWS_CALLBACK_WSI_DESTROY)
		app.closing--;
	return 0;
}

/* The one lws callback: each case hands over to a named helper. */
static int lws_event(struct lws *wsi, enum lws_callback_reasons reason,
		     void *user, void *in, size_t len)
{
	struct tunnel *t = lws_get_opaque_user_data(wsi);

	(void)user;
	switch (reason) {
	case LWS_CALLBACK_OPENSSL_PERFORM_SERVER_CERT_VERIFICATION:
		tls_reached(wsi);
		return on_cert_check(wsi, user, (int)len);
	case LWS_CALLBACK_RAW_RX_FILE:
		return on_raw_file(wsi);
	case LWS_CALLBACK_RAW_CLOSE_FILE:
		return 0;
	default:
		break;
	}
	if (t == WS_CLOSING)
		return on_closing(wsi, reason);
	if (!t || (uintptr_t)t < 16)
		return lws_callback_http_dummy(wsi, reason, user, in, len);
	switch (reason) {
	case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
		t->phase = "WebSocket upgrade";	/* TCP and TLS are done */
		on_append_headers(t, in, len);
		break;
	case LWS_CALLBACK_CLIENT_RECEIVE_PONG:
		heard_from(t);
		break;
	case LWS_CALLBACK_CLOSED_CLIENT_HTTP:	/* lws 4.1: the upgrade never answered */
		if (t->state == T_CONNECTING)
			on_connect_error(t, wsi, "no answer to the WebSocket upgrade");
		break;
	case LWS_CALLBACK_CLIENT_ESTABLISHED:
		wipe_header_token(t);
		on_established(t);
		break;
	case LWS_CALLBACK_CLIENT_RECEIVE:
		tunnel_receive(t, wsi, in, len);
		break;
	case LWS_CALLBACK_CLIENT_WRITEABLE:
		return tunnel_write_one(t);
	case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
		on_peer_close(t, in, len);
		break;
	case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
		wipe_header_token(t);
		on_connect_error(t, wsi, in);
		break;
	case LWS_CALLBACK_CLIENT_CLOSED:
		on_closed(t);
		break;
	default:
		break;
	}
	return 0;
}

static int api_event(struct lws *wsi, enum lws_callback_reasons reason,
		     void *user, void *in, size_t len);

static const struct lws_protocols protocols[] = {
	{ "tunnel", lws_event, 0, MAX_MESSAGE, 0, NULL, 0 },
	{ "api", api_event, 0, 4096, 0, NULL, 0 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 }
};

/* One client vhost per distinct extra CA, the CA its own TLS context's
 * alone: lws shares one context among vhosts configured alike, so a CA
 * loaded into it by a callback would be trusted for every device. */
static struct lws_vhost *vhost_for_ca(const char *ca)
{
	struct lws_context_creation_info info;
	struct lws_vhost *vh;
	char name[32];
	static int n;

	for (struct tunnel *t = app.tunnels; t; t = t->next)
		if (t->vhost && !strcmp(t->cfg.cacert, ca))
			return t->vhost;
	if (!*ca && app.vhost)
		return app.vhost;
	memset(&info, 0, sizeof(info));
	snprintf(name, sizeof(name), "ca%d", n++);
	info.vhost_name = name;
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.protocols = protocols;
	info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
	info.client_ssl_ca_filepath = *ca ? ca : NULL;	/* part of lws's sharing key */
	vh = lws_create_vhost(app.ctx, &info);
	if (!vh)
		die("cannot set up TLS for CA file %s", *ca ? ca : "(system)");
	return vh;
}

/* Every phase of a connection has one deadline: a server that accepts
 * TCP and says nothing, finishes TLS and says nothing, or never answers
 * the upgrade, ends here and the normal retry follows (lws 4.1 would
 * leave some of these waiting for ever). */
static void on_handshake_timeout(lws_sorted_usec_list_t *sul)
{
	struct tunnel *t = lws_container_of(sul, struct tunnel, sul_handshake);
	char where[300], why[400];

	if (t->state != T_CONNECTING || !t->wsi)
		return;
	tunnel_where(t, where, sizeof(where));
	snprintf(why, sizeof(why), "no answer from %.200s within %d s (stuck at the %s)", where,
		 HANDSHAKE_S, t->phase);
	lws_set_opaque_user_data(t->wsi, NULL);
	lws_set_timeout(t->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
	tunnel_lost(t, 1006, why);
}

/* Opens (or reopens) the tunnel's WebSocket.  DNS blocks here: the list
 * already says "connecting" (lws 4.1 has no asynchronous DNS). */
static void tunnel_connect(struct tunnel *t)
{
	struct lws_client_connect_info i;
	char url[1024], fullpath[1024];
	const char *proto, *path;

	memset(&i, 0, sizeof(i));
	copy_str(url, sizeof(url), t->cfg.url);
	if (lws_parse_uri(url, &proto, &i.address, &i.port, &path)) {
		t->state = T_CLOSED;
		tunnel_event(t, "bad url");
		return;
	}
	snprintf(fullpath, sizeof(fullpath), "/%s", path);
	i.path = fullpath;
	i.context = app.ctx;
	i.vhost = t->vhost;
	i.host = i.origin = i.address;
	i.ssl_connection = strcmp(proto, "wss") ? 0 : LCCSCF_USE_SSL;
	if (app.insecure && i.ssl_connection)
		i.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK |
				    LCCSCF_ALLOW_INSECURE |
				    LCCSCF_ALLOW_EXPIRED;
	i.local_protocol_name = "tunnel";
	i.retry_and_idle_policy = &ws_heartbeat;
	i.opaque_user_data = t;
	i.pwsi = &t->wsi;
	t->state = T_CONNECTING;
	t->close_code = 0;
	t->close_reason[0] = '\0';
	t->tls_error[0] = '\0';
	t->phase = i.ssl_connection ? "TCP connection or TLS handshake" : "TCP connection";
	lws_sul_schedule(app.ctx, 0, &t->sul_handshake, on_handshake_timeout, HANDSHAKE_S * LWS_US_PER_SEC);
	ui_dirty();
	if (!lws_client_connect_via_info(&i) && !t->wsi && t->state == T_CONNECTING)
		on_connect_error(t, NULL, "Unable to connect");
}

/************************************************************************
 *** 9. IoTDA API: create, watch and close tunnels by device ID
 ************************************************************************/

enum api_op { API_CREATE, API_SHOW, API_CLOSE, API_DEVICES, API_TUNNELS };

struct api_call;
typedef void api_done_fn(struct api_call *c);	/* a reply for a call that is no tunnel's */

struct api_call {	/* one HTTP request: waiting its turn, or in flight */
	struct api_call *next;
	struct tunnel *tunnel;		/* the tunnel's calls (create, show, close) */
	api_done_fn *done;		/* else: who takes the reply (the picker, --where) */
	enum api_op op;
	char method[8];
	char host[300];			/* as sent and as signed */
	char path[600];			/* without the query (signed apart) */
	char query[300];		/* ListDevices: limit, marker; ListDeviceTunnels: device_id */
	char tunnel_id[130];		/* for SHOW and CLOSE */
	struct buf body, reply;
	int status;
	int finished;
	int attempt;			/* answered "too many requests" this often */
	int64_t due_us;			/* not before (a backoff) */
	char tls_error[96];		/* why the API's certificate was refused */
};

static struct api {	/* where the API is and who we are there */
	struct iotda_config cfg;
	char *ak, *sk, *iam_token;	/* secrets: locked memory */
	size_t sk_len;
	struct lws_vhost *vhost;
	struct api_call *calls;		/* in flight */
	struct api_call *waiting;	/* paced or backing off, by due time */
	double tokens;			/* the pacing bucket */
	int64_t refilled_us;
	lws_sorted_usec_list_t sul_pump;
} api;

#define API_POLL_S       30	/* how often a tunnel's state is asked for */
#define API_REPLY_MAX    (1 << 20)	/* a ListDevices page of 50 is ~30 KB */
#define EXPIRY_WARN_S    300	/* warn this long before a token expires */
#define API_RATE         10	/* requests a second at most, in bursts of as many */
#define API_RETRIES      6	/* after "too many requests" (429, IOTDA.0211xx) */

/* Backoff after "too many requests": seconds, the last one repeated. */
static const int api_backoff_s[] = { 1, 2, 4, 8, 16, 30 };

static void api_call_start(struct tunnel *t, enum api_op op);
static void on_api_poll(lws_sorted_usec_list_t *sul);

static int api_is_tls(void)	/* https:// endpoint */
{
	return !strncmp(api.cfg.endpoint, "https://", 8);
}

/* The endpoint split for lws: address, port, base path; the Host header
 * omits a default port, as the signing guide says. */
static int api_target(char *addr, size_t cap, int *port, char *base, size_t bcap)
{
	char url[sizeof(api.cfg.endpoint)];
	const char *proto, *a, *p;

	copy_str(url, sizeof(url), api.cfg.endpoint);
	if (lws_parse_uri(url, &proto, &a, port, &p))
		return -1;
	copy_str(addr, cap, a);
	snprintf(base, bcap, "/%s", p);
	while (strlen(base) > 1 && base[strlen(base) - 1] == '/')
		base[strlen(base) - 1] = '\0';
	return 0;
}

static void api_paths(struct api_call *c, const char *base)	/* method and path per op */
{
	static const char *const methods[] = { [API_CREATE] = "POST", [API_SHOW] = "GET",
					       [API_CLOSE] = "PUT", [API_DEVICES] = "GET",
					       [API_TUNNELS] = "GET" };
	int id = c->op == API_SHOW || c->op == API_CLOSE;

	copy_str(c->method, sizeof(c->method), methods[c->op]);
	snprintf(c->path, sizeof(c->path), "%s/v5/iot/%s/%s%s%s", strcmp(base, "/") ? base : "",
		 api.cfg.project_id, c->op == API_DEVICES ? "devices" : "tunnels", id ? "/" : "",
		 id ? c->tunnel_id : "");
	if (c->op == API_CREATE) {
		buf_append(&c->body, "{\"device_id\":", 13);
		json_string(&c->body, c->tunnel->cfg.device_id, strlen(c->tunnel->cfg.device_id));
		buf_append(&c->body, "}", 1);
	} else if (c->op == API_CLOSE) {
		buf_append(&c->body, "{}", 2);
	}
}

/* Headers: a signature (AK/SK) or the IAM token, the date, the instance. */
static int api_headers(struct lws *wsi, struct api_call *c, unsigned char **p, unsigned char *end)
{
	char date[17], auth[600], len[16];
	const char *hdrs[4][2] = { { "content-type", "application/json" }, { "host", c->host },
				   { "instance-id", api.cfg.instance_id }, { "x-sdk-date", date } };
	int n = 0;
	const char *(*list)[2] = hdrs;
	struct sign_input in = { c->method, c->path, c->query, NULL, 0, c->body.p, c->body.len, date };

	sdk_date(time(NULL), date);
	if (!api.cfg.instance_id[0]) {	/* drop instance-id from the signed list */
		hdrs[2][0] = hdrs[3][0];
		hdrs[2][1] = hdrs[3][1];
	}
	in.headers = (const char *const (*)[2])list;
	in.nheaders = api.cfg.instance_id[0] ? 4 : 3;
	snprintf(len, sizeof(len), "%zu", c->body.len);
#define ADD(name, value) n |= lws_add_http_header_by_name(wsi, (const unsigned char *)name, \
			(const unsigned char *)(value), (int)strlen(value), p, end)
	ADD("content-type:", "application/json");
	ADD("x-sdk-date:", date);
	if (api.cfg.instance_id[0])
		ADD("instance-id:", api.cfg.instance_id);
	if (c->body.len)
		ADD("content-length:", len);
	if (api.iam_token)
		ADD("x-auth-token:", api.iam_token);
	else {
		sign_request(&in, &(struct signer){ api.cfg.signing, api.ak, api.sk, api.sk_len,
						     api.cfg.region }, auth, sizeof(auth));
		ADD("authorization:", auth);
	}
#undef ADD
	return n;
}

/* An API failure as the list shows it, "API 400 IOTDA.014016: message"
 * (the service's words, cleaned), or why there was no answer.  Returns 1
 * when the service says the device is offline. */
static int api_error_text(int status, const char *reply, size_t len, char *out, size_t cap)
{
	cJSON *j = status ? cJSON_ParseWithLength(reply ? reply : "", len) : NULL;
	const char *code = json_str(j, "error_code"), *msg = json_str(j, "error_msg");
	int offline = code && !strcmp(code, "IOTDA.014016");
	char raw[512];

	if (status)
		snprintf(raw, sizeof(raw), "API %d %.64s%s%.400s", status, code ? code : "",
			 code && msg ? ": " : "", msg ? msg : "");
	else
		snprintf(raw, sizeof(raw), "%.*s", len ? (int)(len < 500 ? len : 500) : 27,
			 len ? reply : "the API cannot be reached");
	clean_text(out, cap, raw, strlen(raw));
	cJSON_Delete(j);
	return offline;
}

static void api_error(struct api_call *c, const char *what)	/* shown, logged; --exec's job ends */
{
	struct tunnel *t = c->tunnel;
	char text[160];
	int offline;

	if (c->tls_error[0]) {
		c->status = 0;
		c->reply.len = 0;
		buf_printf(&c->reply, "certificate of %s refused: %s", c->host, c->tls_error);
	}
	offline = api_error_text(c->status, c->reply.p, c->reply.len, text, sizeof(text));
	if (c->op != API_CLOSE)
		t->state = T_API_ERROR;
	tunnel_event(t, "%s: %s", what, text);
	if (app.batch && c->op == API_CREATE)	/* that device's job ends now, saying why */
		batch_tunnel_failed(t, offline ? "offline" : "api error", "%s", t->event);
}

/* 201: the tunnel exists; connect to it with the token it came with. */
static void api_created(struct api_call *c)
{
	struct tunnel *t = c->tunnel;
	cJSON *j = cJSON_ParseWithLength(c->reply.p, c->reply.len);
	struct tunnel_reply r;
	const char *why = tunnel_reply_check(j, 1, app.allow_plaintext, &r);

	if (why) {
		c->status = 0;
		c->reply.len = 0;
		buf_printf(&c->reply, "the API's answer is refused: %s", why);
		api_error(c, "create tunnel");
	} else {
		copy_str(t->cfg.url, sizeof(t->cfg.url), r.uri);
		copy_str(t->tunnel_id, sizeof(t->tunnel_id), r.tunnel_id);
		secret_free(t->cfg.token);
		t->cfg.token = secret_dup(r.token, strlen(r.token));
		t->cfg.expires = r.expires_in ? time(NULL) + r.expires_in : 0;
		t->expiry_warned = 0;
		tunnel_event(t, "tunnel %.12s created", r.tunnel_id);
		tunnel_connect(t);
		lws_sul_schedule(app.ctx, 0, &t->sul_api, on_api_poll, 2 * LWS_US_PER_SEC);
	}
	cJSON_Delete(j);
}


/* The API's view of a tunnel, "API: tunnel OPEN, device CONNECTED": its
 * words, cleaned. */
static void api_state_text(const char *reply, size_t len, char *out, size_t cap)
{
	cJSON *j = cJSON_ParseWithLength(reply ? reply : "", len);
	const char *st = json_str(j, "status"), *dev = connect_state(j, "device_connect_state");
	char raw[200];

	snprintf(raw, sizeof(raw), "API: tunnel %.40s, device %.40s", st ? st : "?", dev ? dev : "?");
	clean_text(out, cap, raw, strlen(raw));
	cJSON_Delete(j);
}

static void api_shown(struct api_call *c)	/* 200: shown under the device */
{
	struct tunnel *t = c->tunnel;
	char text[sizeof(t->api_state)];

	api_state_text(c->reply.p, c->reply.len, text, sizeof(text));
	if (strcmp(text, t->api_state)) {
		copy_str(t->api_state, sizeof(t->api_state), text);
		log_line("%s: %s", t->cfg.name, text);
		ui_dirty();
	}
}

static int api_too_busy(const struct api_call *c)	/* 429, or an IOTDA.0211xx rate limit */
{
	cJSON *j;
	const char *code;
	int busy = c->status == 429;

	if (!busy && c->status >= 400 && (j = cJSON_ParseWithLength(c->reply.p ? c->reply.p : "", c->reply.len))) {
		code = json_str(j, "error_code");
		busy = code && !strncmp(code, "IOTDA.0211", 10);
		cJSON_Delete(j);
	}
	return busy;
}

static void api_enqueue(struct api_call *c);

/* "Too many requests": the same request again after a backoff, up to
 * API_RETRIES times; the service's limits are per tenant, not per call. */
static int api_retry(struct api_call *c)
{
	struct api_call *again;
	int wait;

	if (!api_too_busy(c) || c->attempt >= API_RETRIES)
		return 0;
	wait = api_backoff_s[c->attempt < (int)(sizeof(api_backoff_s) / sizeof(*api_backoff_s)) ?
			     c->attempt : (int)(sizeof(api_backoff_s) / sizeof(*api_backoff_s)) - 1];
	again = xcalloc(sizeof(*again));
	again->tunnel = c->tunnel;
	again->done = c->done;
	again->op = c->op;
	again->attempt = c->attempt + 1;
	again->due_us = now_us() + wait * 1000000LL;
	copy_str(again->query, sizeof(again->query), c->query);
	copy_str(again->tunnel_id, sizeof(again->tunnel_id), c->tunnel_id);
	log_line("API busy (%d): %s again in %d s", c->status, c->path, wait);
	api_enqueue(again);
	return 1;
}

/* A reply is complete: act on it by operation. */
static void api_finished(struct api_call *c)
{
	struct tunnel *t = c->tunnel;
	int ok = c->status >= 200 && c->status < 300;

	c->finished = 1;
	if ((t || c->done) && api_retry(c))
		return;
	if (c->done)
		c->done(c);
	if (!t)
		return;
	if (c->op == API_CREATE)
		ok ? api_created(c) : api_error(c, "create tunnel");
	else if (c->op == API_SHOW && ok)
		api_shown(c);
	else if (c->op == API_CLOSE)
		ok ? tunnel_event(t, "tunnel %.12s closed over the API", c->tunnel_id)
		   : api_error(c, "close tunnel");
}

static void api_call_free(struct api_call *c)	/* unlinks and frees */
{
	struct api_call **pp = &api.calls;

	while (*pp && *pp != c)
		pp = &(*pp)->next;
	if (*pp)
		*pp = c->next;
	buf_free(&c->body);
	buf_free(&c->reply);
	free(c);
}

static int api_write_body(struct lws *wsi, struct api_call *c)	/* POST/PUT body */
{
	unsigned char *buf = xcalloc(LWS_PRE + c->body.len + 1);
	int r;

	memcpy(buf + LWS_PRE, c->body.p, c->body.len);
	r = lws_write(wsi, buf + LWS_PRE, c->body.len, LWS_WRITE_HTTP_FINAL) < (int)c->body.len;
	lws_client_http_body_pending(wsi, 0);
	free(buf);
	return r ? -1 : 0;
}

static int api_read(struct lws *wsi)	/* lets lws deliver the body */
{
	char buf[LWS_PRE + 2048], *p = buf + LWS_PRE;
	int len = (int)sizeof(buf) - LWS_PRE;

	return lws_http_client_read(wsi, &p, &len) < 0 ? -1 : 0;
}

static void api_append(struct api_call *c, const void *in, size_t len)	/* reply bytes */
{
	if (c->reply.len + len <= API_REPLY_MAX)
		buf_append(&c->reply, in, len);
}

/* The API connections' callback: each case a few lines. */
/* No whole reply (no connection, or it ended early): said where it shows. */
static void api_failed(struct api_call *c, const char *why)
{
	static const char *const what[] = { [API_CREATE] = "create tunnel", [API_SHOW] = "show tunnel",
		[API_CLOSE] = "close tunnel", [API_DEVICES] = "list devices", [API_TUNNELS] = "list tunnels" };

	c->status = why ? 0 : c->status;
	buf_printf(&c->reply, "%s", why ? why : "");
	c->finished = 1;
	if (c->done)
		c->done(c);
	if (c->tunnel)
		api_error(c, what[c->op]);
}

static char *cert_error_slot(struct lws *wsi)	/* its tunnel's or API call's */
{
	const struct lws_protocols *p = lws_get_protocol(wsi);
	void *u = lws_get_opaque_user_data(wsi);

	if (!p || (uintptr_t)u < 16)
		return NULL;
	return !strcmp(p->name, "api") ? ((struct api_call *)u)->tls_error : ((struct tunnel *)u)->tls_error;
}

static int api_event(struct lws *wsi, enum lws_callback_reasons reason,
		     void *user, void *in, size_t len)
{
	struct api_call *c = lws_get_opaque_user_data(wsi);

	if (!c)
		return lws_callback_http_dummy(wsi, reason, user, in, len);
	switch (reason) {
	case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
		if (c->body.len) {
			lws_client_http_body_pending(wsi, 1);
			lws_callback_on_writable(wsi);
		}
		return api_headers(wsi, c, in, (unsigned char *)*(char **)in + len) ? -1 : 0;
	case LWS_CALLBACK_CLIENT_HTTP_WRITEABLE:
		return api_write_body(wsi, c);
	case LWS_CALLBACK_ESTABLISHED_CLIENT_HTTP:
		c->status = (int)lws_http_client_http_response(wsi);
		return 0;
	case LWS_CALLBACK_RECEIVE_CLIENT_HTTP:
		return api_read(wsi);
	case LWS_CALLBACK_RECEIVE_CLIENT_HTTP_READ:
		api_append(c, in, len);
		return 0;
	case LWS_CALLBACK_COMPLETED_CLIENT_HTTP:
		api_finished(c);
		return 0;
	case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
	case LWS_CALLBACK_CLOSED_CLIENT_HTTP:
		if (!c->finished)
			api_failed(c, reason == LWS_CALLBACK_CLIENT_CONNECTION_ERROR ? in : NULL);
		lws_set_opaque_user_data(wsi, NULL);
		api_call_free(c);
		return 0;
	default:
		return 0;
	}
}

/* Sends one request now: its HTTP connection, signed when it is made. */
static void api_send(struct api_call *c)
{
	struct lws_client_connect_info i;
	char addr[256], base[300], uri[sizeof(c->path) + sizeof(c->query) + 1];
	int port;

	if (api_target(addr, sizeof(addr), &port, base, sizeof(base)) < 0) {
		api_failed(c, "bad [iotda] endpoint");
		free(c);
		return;
	}
	snprintf(c->host, sizeof(c->host), (port == 443 && api_is_tls()) || (port == 80 && !api_is_tls()) ?
		 "%s" : "%s:%d", addr, port);
	api_paths(c, base);
	snprintf(uri, sizeof(uri), "%s%s%s", c->path, c->query[0] ? "?" : "", c->query);
	c->next = api.calls;
	api.calls = c;
	memset(&i, 0, sizeof(i));
	i.context = app.ctx;
	i.vhost = api.vhost;
	i.address = addr;
	i.port = port;
	i.path = uri;
	i.host = c->host;
	i.origin = c->host;
	i.method = c->method;
	i.alpn = "http/1.1";
	i.ssl_connection = api_is_tls() ? LCCSCF_USE_SSL : 0;
	if (app.insecure && i.ssl_connection)
		i.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK |
				    LCCSCF_ALLOW_INSECURE | LCCSCF_ALLOW_EXPIRED;
	i.local_protocol_name = "api";
	i.opaque_user_data = c;
	if (!lws_client_connect_via_info(&i) && !c->finished) {
		api_failed(c, "the API cannot be reached");
		api_call_free(c);
	}
}

static void on_api_pump(lws_sorted_usec_list_t *sul);

/* Paced sending: a bucket of API_RATE requests refilled every second; a
 * request waits for its turn and for its backoff, if any. */
static void api_pump(void)
{
	int64_t now = now_us(), next = 0;

	int rate = api.cfg.rate ? api.cfg.rate : API_RATE;

	api.tokens += (double)(now - api.refilled_us) * rate / 1e6;
	api.tokens = api.tokens > rate ? rate : api.tokens;
	api.refilled_us = now;
	while (api.waiting && api.waiting->due_us <= now && api.tokens >= 1) {
		struct api_call *c = api.waiting;

		api.waiting = c->next;
		api.tokens -= 1;
		api_send(c);
	}
	if (api.waiting)
		next = api.waiting->due_us > now ? api.waiting->due_us - now : (int64_t)(1e6 / rate);
	if (next && app.ctx)
		lws_sul_schedule(app.ctx, 0, &api.sul_pump, on_api_pump, next);
}

static void on_api_pump(lws_sorted_usec_list_t *sul)	/* a request's turn has come */
{
	(void)sul;
	api_pump();
}

static void api_enqueue(struct api_call *c)	/* waits by due time, then api_pump sends it */
{
	struct api_call **pp = &api.waiting;

	while (*pp && (*pp)->due_us <= c->due_us)
		pp = &(*pp)->next;
	c->next = *pp;
	*pp = c;
	api_pump();
}

static struct api_call *api_call_new(struct tunnel *t, enum api_op op)	/* not yet sent */
{
	struct api_call *c = xcalloc(sizeof(*c));

	c->tunnel = t;
	c->op = op;
	if (t)
		copy_str(c->tunnel_id, sizeof(c->tunnel_id), t->tunnel_id);
	return c;
}

static void api_call_start(struct tunnel *t, enum api_op op)	/* one request for tunnel t */
{
	api_enqueue(api_call_new(t, op));
}

/*** the device picker's data: ListDevices, paged; ListDeviceTunnels ***/

#define PICK_PAGE        50	/* devices a ListDevices page (the API's most) */
#define PICK_ASK_US      300000	/* the highlight rests this long before its tunnels are asked */

static struct picker {	/* Ctrl-g o, and --where: the project's devices */
	struct pick *devs;
	int n, cap;
	int loading;			/* a page is on its way */
	int complete;			/* every page is in */
	char error[200];
	int sel, top;			/* in the filtered view */
	char filter[64];
	size_t filter_len;
	char asked[130];		/* the device whose tunnels are being asked */
	lws_sorted_usec_list_t sul_ask;
	void (*on_complete)(void);	/* --where: once every page is in */
} picker;

static void picker_fetch(const char *marker);
static void picker_highlight(const struct pick *p);

static void on_devices_page(struct api_call *c)	/* a page in: the next one asked for */
{
	char marker[130];
	int got = c->status == 200 ? parse_devices_page(c->reply.p, c->reply.len, &picker.devs, &picker.n,
							  &picker.cap, marker, sizeof(marker)) : -1;

	picker.loading = 0;
	if (got < 0) {
		api_error_text(c->status, c->reply.p, c->reply.len, picker.error, sizeof(picker.error));
		picker.complete = 1;
	} else if (got == PICK_PAGE && marker[0]) {
		picker_fetch(marker);
	} else {
		picker.complete = 1;
	}
	if (picker.complete && picker.on_complete)
		picker.on_complete();
	if (app.mode == M_PICK && picker.n && !picker.asked[0])	/* the first row's tunnels */
		picker_highlight(&picker.devs[0]);
	ui_dirty();
}

static void picker_fetch(const char *marker)	/* one ListDevices page after marker */
{
	struct api_call *c = api_call_new(NULL, API_DEVICES);

	snprintf(c->query, sizeof(c->query), "limit=%d%s%s", PICK_PAGE, *marker ? "&marker=" : "", marker);
	c->done = on_devices_page;
	picker.loading = 1;
	api_enqueue(c);
}

static void picker_load(void)	/* every page again, from the first */
{
	picker.n = 0;
	picker.complete = 0;
	picker.error[0] = '\0';
	picker.sel = picker.top = 0;
	picker_fetch("");
}

static struct pick *pick_by_id(const char *id)
{
	for (int i = 0; i < picker.n; i++)
		if (!strcmp(picker.devs[i].id, id))
			return &picker.devs[i];
	return NULL;
}

static void on_device_tunnels(struct api_call *c)	/* ListDeviceTunnels: who holds it */
{
	struct pick *p = pick_by_id(c->query + strlen("device_id="));

	if (p && c->status == 200)
		tunnels_text(c->reply.p, c->reply.len, p->tunnel, sizeof(p->tunnel));
	else if (p)
		api_error_text(c->status, c->reply.p, c->reply.len, p->tunnel, sizeof(p->tunnel));
	ui_dirty();
}

static void on_pick_rest(lws_sorted_usec_list_t *sul)	/* the highlight rested: ask */
{
	struct pick *p = pick_by_id(picker.asked);
	struct api_call *c;

	(void)sul;
	if (!p || p->tunnel[0])
		return;
	c = api_call_new(NULL, API_TUNNELS);
	snprintf(c->query, sizeof(c->query), "device_id=%s", p->id);
	c->done = on_device_tunnels;
	copy_str(p->tunnel, sizeof(p->tunnel), "asking…");
	api_enqueue(c);
}

static void picker_highlight(const struct pick *p)	/* its tunnels asked for, once it rests */
{
	if (!p || p->tunnel[0] || !strcmp(picker.asked, p->id))
		return;
	copy_str(picker.asked, sizeof(picker.asked), p->id);
	lws_sul_schedule(app.ctx, 0, &picker.sul_ask, on_pick_rest, PICK_ASK_US);
}

static void on_api_poll(lws_sorted_usec_list_t *sul)	/* the tunnel's state, now and then */
{
	struct tunnel *t = lws_container_of(sul, struct tunnel, sul_api);

	if (!t->tunnel_id[0])
		return;
	api_call_start(t, API_SHOW);
	if (!app.batch)	/* a batch run shows no state: its calls go to the work */
		lws_sul_schedule(app.ctx, 0, &t->sul_api, on_api_poll, API_POLL_S * LWS_US_PER_SEC);
}

/*** one owner per device on this machine *****************************/

/* IoTDA keeps one connection per role and tunnel: two of our processes on
 * one device would take it from each other.  Each device opened holds a
 * lock file, flock()ed while the process runs (the kernel lets go however
 * it ends): $XDG_RUNTIME_DIR/tunnel_tui/, else /tmp/tunnel_tui-UID/. */
static int lock_dir(char *out, size_t cap)	/* 0 when it is ours and private */
{
	const char *run = getenv("XDG_RUNTIME_DIR");
	struct stat st;

	if (run && *run)
		snprintf(out, cap, "%.3000s/tunnel_tui", run);
	else
		snprintf(out, cap, "/tmp/tunnel_tui-%u", (unsigned)getuid());
	if (mkdir(out, 0700) < 0 && errno != EEXIST)
		return -1;
	return lstat(out, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == getuid() &&
	       !(st.st_mode & 077) ? 0 : -1;
}

static void lock_name(const struct tunnel *t, char *out, size_t cap)	/* one per device */
{
	char hash[65], id[140];

	if (t->cfg.device_id[0]) {
		safe_component(t->cfg.device_id, id, sizeof(id));
		snprintf(out, cap, "id-%s.lock", id);
		return;
	}
	sha256_hex(t->cfg.url, strcspn(t->cfg.url, "?"), hash);
	snprintf(out, cap, "url-%.16s.lock", hash);
}

/* Takes t's device lock: 0 (held, or no lock possible here, or force),
 * -1 with who holds it in holder. */
static int device_lock(struct tunnel *t, int force, char *holder, size_t cap)
{
	char dir[PATH_MAX], name[200], path[PATH_MAX + 200], line[160];
	int fd, n;

	if (t->lock_fd || lock_dir(dir, sizeof(dir)) < 0)
		return 0;
	lock_name(t, name, sizeof(name));
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return 0;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		n = (int)read(fd, line, sizeof(line) - 1);
		line[n > 0 ? n : 0] = '\0';
		clean_text(holder, cap, line, strcspn(line, "\n"));
		close(fd);
		return force ? 0 : -1;
	}
	n = snprintf(line, sizeof(line), "tunnel_tui pid %d (%s)\n", (int)getpid(),
		     app.batch ? "--exec" : "console");
	(void)!ftruncate(fd, 0);
	(void)!pwrite(fd, line, (size_t)n, 0);
	t->lock_fd = fd + 1;
	return 0;
}

static void device_unlock(struct tunnel *t)	/* the device is let go */
{
	if (t->lock_fd)
		close(t->lock_fd - 1);
	t->lock_fd = 0;
}

/* Opens a device: by its url, or by asking the API for a tunnel first;
 * not while another tunnel_tui holds it (Ctrl-g c takes it over). */
static void tunnel_start(struct tunnel *t)
{
	char holder[160];

	if (device_lock(t, t->force_lock, holder, sizeof(holder)) < 0) {
		t->state = T_CLOSED;
		tunnel_event(t, "held by %s: %s c takes it over", holder, keyname(app.prefix_key));
		return;
	}
	if (!t->cfg.device_id[0]) {
		tunnel_connect(t);
		return;
	}
	t->state = T_CREATING;
	t->api_state[0] = '\0';
	tunnel_event(t, "creating a tunnel for device %s", t->cfg.device_id);
	api_call_start(t, API_CREATE);
}

/* The tunnel lets go of its WebSocket: an open one closes with 1000
 * (on_closing), one still connecting is dropped; late callbacks find no
 * tunnel either way. */
static void tunnel_release_ws(struct tunnel *t)
{
	int up = t->state >= T_WAITING && t->state <= T_ONLINE;

	lws_set_opaque_user_data(t->wsi, up ? WS_CLOSING : NULL);
	if (up) {
		app.closing++;
		lws_callback_on_writable(t->wsi);
	}
	lws_set_timeout(t->wsi, PENDING_TIMEOUT_USER_OK, up ? 1 : LWS_TO_KILL_ASYNC);	/* whole seconds, in 4.1 */
}

static struct lws_vhost *vhost_for_ca(const char *ca);
static void list_fit(void);

/* A device picked from the API's list joins the console as if it had
 * been configured by its ID: a unique name, the API's CA, --user. */
static struct tunnel *tunnel_add_by_id(const char *id, const char *name)
{
	struct tunnel *t = xcalloc(sizeof(*t)), **tail = &app.tunnels;
	char unique[64];
	int clash = 1;

	copy_str(unique, sizeof(unique), name);
	for (int k = 2; clash; k++) {
		clash = 0;
		for (struct tunnel *u = app.tunnels; u; u = u->next)
			clash |= !strcmp(u->cfg.name, unique);
		if (clash)
			snprintf(unique, sizeof(unique), "%.50s-%d", name, k);
	}
	copy_str(t->cfg.name, sizeof(t->cfg.name), unique);
	copy_str(t->cfg.device_id, sizeof(t->cfg.device_id), id);
	copy_str(t->cfg.username, sizeof(t->cfg.username), app.default_user);
	copy_str(t->cfg.cacert, sizeof(t->cfg.cacert), api.cfg.cacert);
	t->cfg.login_timeout_s = app.login_timeout_s;
	t->rtt_ms = -1;
	t->vhost = vhost_for_ca(t->cfg.cacert);
	while (*tail)
		tail = &(*tail)->next;
	*tail = t;
	list_fit();
	return t;
}

/* The user is done with this tunnel: its WebSocket closes (1000) and, if
 * the API made the tunnel, the tunnel too. */
static void tunnel_close(struct tunnel *t)
{
	if (t->wsi) {
		tunnel_release_ws(t);
		tunnel_lost(t, 1000, "closed here");
	}
	lws_sul_cancel(&t->sul_connect);
	lws_sul_cancel(&t->sul_api);
	if (t->tunnel_id[0])
		api_call_start(t, API_CLOSE);
	t->tunnel_id[0] = '\0';
	t->state = T_CLOSED;
	device_unlock(t);
}

static void on_close_wait(lws_sorted_usec_list_t *sul)	/* the close handshakes took too long */
{
	(void)sul;
	lws_cancel_service(app.ctx);
}

/* On quit: every open WebSocket says close 1000 and gets CLOSE_WAIT_US for
 * the handshake (the platform sees a user's quit, not a lost link). */
static void tunnels_close_all(void)
{
	int64_t deadline = now_us() + CLOSE_WAIT_US;

	for (struct tunnel *t = app.tunnels; t; t = t->next)
		if (t->wsi) {
			tunnel_release_ws(t);
			t->wsi = NULL;
		}
	lws_sul_schedule(app.ctx, 0, &app.sul_close, on_close_wait, CLOSE_WAIT_US);
	while (app.closing > 0 && now_us() < deadline && lws_service(app.ctx, 0) >= 0)
		;
	lws_sul_cancel(&app.sul_close);
}

/* On quit: close the tunnels the API made (unless close_tunnels = no) and
 * wait for the answers, a few seconds at most. */
static void api_close_all(void)
{
	int64_t deadline = now_us() + 5 * 1000000LL;

	for (struct tunnel *t = app.tunnels; t && !api.cfg.leave_open; t = t->next)
		if (t->tunnel_id[0]) {
			api_call_start(t, API_CLOSE);
			t->tunnel_id[0] = '\0';
		}
	while ((api.calls || api.waiting) && now_us() < deadline && lws_service(app.ctx, 0) >= 0)
		;
}

/* A token that is about to expire: say so once, and how to get a new one. */
static void check_expiry(struct tunnel *t)
{
	long left = t->cfg.expires ? (long)(t->cfg.expires - time(NULL)) : LONG_MAX;

	if (left > EXPIRY_WARN_S || left <= 0 || t->expiry_warned)
		return;
	t->expiry_warned = 1;
	tunnel_event(t, "token expires in %ldm%02lds%s%s%s", left / 60, left % 60,
		     t->cfg.device_id[0] ? ": " : "", t->cfg.device_id[0] ? keyname(app.prefix_key) : "",
		     t->cfg.device_id[0] ? " c makes a new tunnel" : "");
	flash_msg("%s: the tunnel token expires in %ldm%02lds", t->cfg.name, left / 60, left % 60);
}

/************************************************************************
 *** 10. screen: layout, list, pane, status bar, overlays
 ************************************************************************/

static void draw(void);
static void put(int y, int x, int w, enum chrome c, attr_t a, const char *fmt, ...)
	__attribute__((format(printf, 6, 7)));

/* The terminal's cursor: shown only where a field or the session wants
 * it, and switched only when that changes (each switch is bytes to the
 * terminal on every frame otherwise). */
static void show_cursor(int on)
{
	app.cursor_wanted = on;
}

static void offer_ask(void);

static void on_draw_timer(lws_sorted_usec_list_t *sul)	/* coalesced redraw */
{
	(void)sul;
	if (app.offer.waiting && app.mode == M_NORMAL)
		offer_ask();
	draw();
}

/* Marks the screen stale; draws at most once per frame interval, and at
 * once when the last frame is older than that (keystroke echo stays fast). */
static void ui_dirty(void)
{
	int64_t wait;

	if (app.dirty || !app.ui_up)
		return;
	app.dirty = 1;
	if (!app.ctx)	/* before the loop: run() draws the first frame itself */
		return;
	wait = app.last_draw_us + FRAME_INTERVAL_US - now_us();
	lws_sul_schedule(app.ctx, 0, &app.sul_draw, on_draw_timer, wait > 0 ? wait : 0);
}

static int list_width(void)	/* its columns with its rule; 0 when zoomed */
{
	return app.zoom ? 0 : app.list_w + 1;
}


static void pane_size(int *cols, int *rows)	/* the terminal pane's size */
{
	*cols = COLS - list_width();
	*rows = LINES - 1;
	if (*cols < 10)
		*cols = 10;
	if (*rows < 2)
		*rows = 2;
}

static int pair(int fg, int bg)	/* a colour pair, allocated on demand */
{
	int p;

	if (!app.colors)
		return 0;
	p = alloc_pair(fg, bg);
	return p < 0 ? 0 : p;
}

/* alloc_pair() searches a tree on every call, and the pane asks once a cell
 * each frame: remembered here, and checked, as curses recycles the least
 * recently used pair once every pair is taken. */
static int pair_cached(int fg, int bg)
{
	static int seen[PAIR_CACHE];
	int *p = &seen[((unsigned)fg * 31u + (unsigned)bg) % PAIR_CACHE], f, b;

	if (*p <= 0 || extended_pair_content(*p, &f, &b) != OK || f != fg || b != bg)
		*p = pair(fg, bg);
	return *p;
}

static int chrome(enum chrome c)	/* a pair for the console's own colours */
{
	return app.mono ? 0 : pair(chrome_colors[c][0], chrome_colors[c][1]);
}

/* Without colour (NO_COLOR, a monochrome terminal) the chrome still marks
 * the selection, the status bar and alerts: by reverse video and bold. */
static attr_t chrome_attr(enum chrome c)
{
	static const attr_t mono[C_COUNT] = {
		[C_SELECTED] = A_REVERSE, [C_STATUS] = A_REVERSE, [C_ALERT] = A_REVERSE | A_BOLD,
		[C_BANNER] = A_REVERSE, [C_MARK] = A_REVERSE | A_BOLD, [C_DIM] = A_DIM,
		[C_WARN] = A_BOLD,
	};

	return app.mono ? mono[c] : 0;
}

/* xterm's 256-colour palette as RGB (for terminals with fewer colours). */
static uint32_t palette_rgb(int idx)
{
	static const int level[6] = { 0, 95, 135, 175, 215, 255 };
	static const uint32_t base[16] = {
		0x000000, 0xcd0000, 0x00cd00, 0xcdcd00, 0x0000ee, 0xcd00cd, 0x00cdcd, 0xe5e5e5,
		0x7f7f7f, 0xff0000, 0x00ff00, 0xffff00, 0x5c5cff, 0xff00ff, 0x00ffff, 0xffffff };
	int g;

	if (idx < 16)
		return base[idx];
	if (idx >= 232) {
		g = 8 + 10 * (idx - 232);
		return (uint32_t)(g << 16 | g << 8 | g);
	}
	idx -= 16;
	return (uint32_t)(level[idx / 36] << 16 | level[idx / 6 % 6] << 8 | level[idx % 6]);
}

static int rgb_to_256(uint32_t rgb)	/* nearest xterm cube or grey */
{
	int r = rgb >> 16 & 255, g = rgb >> 8 & 255, b = rgb & 255;
	int q[3] = { r, g, b }, cube = 16, grey, gi;

	for (int i = 0; i < 3; i++)
		cube += (q[i] < 48 ? 0 : q[i] < 115 ? 1 : (q[i] - 35) / 40) * (i == 0 ? 36 : i == 1 ? 6 : 1);
	gi = ((r + g + b) / 3 - 3) / 10;
	grey = 232 + (gi < 0 ? 0 : gi > 23 ? 23 : gi);
	if (abs(r - g) < 12 && abs(g - b) < 12)
		return grey;
	return cube;
}

static int rgb_to_8(uint32_t rgb)	/* nearest of the eight basic colours */
{
	return ((rgb >> 16 & 255) > 127 ? COLOR_RED : 0) |
	       ((rgb >> 8 & 255) > 127 ? COLOR_GREEN : 0) | ((rgb & 255) > 127 ? COLOR_BLUE : 0);
}

/* A packed colour in what this terminal can show: direct colour, 256,
 * or 8/16 colours; -1 is the terminal's default. */
static int curses_color(uint32_t c)
{
	uint32_t v = c & 0xffffff;

	if (c == COLOR_DEFAULT || !app.colors)
		return -1;
	if ((c & 0xff000000) == COLOR_INDEXED) {
		if ((int)v < app.colors)
			return (int)v;
		v = palette_rgb((int)v);
	}
	if (app.colors >= 0x1000000)
		return (int)v;
	if (app.colors >= 256)
		return rgb_to_256(v);
	return rgb_to_8(v);
}

static void draw_cell(int y, int x, const struct cell *c)	/* one remote cell */
{
	wchar_t wc[2] = { c->ch ? (wchar_t)c->ch : L' ', 0 };
	attr_t a = (c->attrs & ATTR_BOLD ? A_BOLD : 0) |
		   (c->attrs & ATTR_UNDERLINE ? A_UNDERLINE : 0) |
		   (c->attrs & ATTR_ITALIC ? A_ITALIC : 0) |
		   (c->attrs & ATTR_BLINK ? A_BLINK : 0) |
		   (c->attrs & ATTR_REVERSE ? A_REVERSE : 0);
	int p = pair_cached(curses_color(c->fg), curses_color(c->bg));
	cchar_t cc;

	if (wc[0] < 32 || (wc[0] >= 0x7f && wc[0] < 0xa0) || is_steering((uint32_t)wc[0]))
		wc[0] = L' ';
	setcchar(&cc, wc, a, 0, &p);
	mvadd_wch(y, x, &cc);
}

/* Row vr of the session's history: scrollback lines, then the screen. */
/* Which columns of history row vr the search text covers (copy mode
 * shows every match); bit c of marks[c / 8]. */
static void row_matches(const struct session *s, int vr, uint8_t *marks, int cols)
{
	char text[4096];
	int col_at[4096];

	memset(marks, 0, (size_t)(cols + 7) / 8);
	if (!app.search_len || (app.mode != M_COPY && app.mode != M_SEARCH) ||
	    vr >= s->sb_count + s->grid->rows)	/* below a PTY shorter than the pane */
		return;
	row_text_cols(s, vr, text, sizeof(text), col_at);
	for (const char *m = text; (m = strstr(m, app.search)); m++)
		for (size_t b = (size_t)(m - text); b < (size_t)(m - text) + app.search_len; b++)
			if (col_at[b] < cols)
				marks[col_at[b] / 8] |= (uint8_t)(1 << (col_at[b] % 8));
}

/* A predicted character over the remote's cell, if one is shown there:
 * underlined while the link is slow enough that it matters. */
static void predicted_cell(const struct session *s, int row, int col, struct cell *c)
{
	for (int i = s->pred.n - 1; i >= 0; i--) {
		const struct prediction *p = &s->pred.p[i];

		if (p->row != row || p->col != col || p->epoch > s->pred.proven)
			continue;
		c->ch = p->ch;
		c->width = 1;
		if (s->tunnel->srtt_ms > PREDICT_MARK_MS)
			c->attrs |= ATTR_UNDERLINE;
		return;
	}
}

/* One row of the pane, cleared first: only the changed rows are drawn
 * when nothing else changed (the frame is then not erased). */
static void draw_row(const struct session *s, int vr, int y, int x0, int off_x, int w)
{
	static const struct cell blank = { 0, COLOR_DEFAULT, COLOR_DEFAULT, 0, 1 };
	int srow = vr - s->sb_count, n = 0;
	const struct cell *cells = vr < history_rows(s) ? history_cells(s, vr, &n) : NULL;
	uint8_t marks[(1000 + 7) / 8];

	if (!app.frame_full) {
		attr_set(A_NORMAL, 0, NULL);
		mvhline(y, x0, ' ', w);
	}

	row_matches(s, vr, marks, 1000);
	for (int x = 0; x < w;) {
		int col = off_x + x;
		struct cell c = blank;

		if (cells && col < n)
			c = cells[col];
		if (cells && col < n && srow >= 0)
			c.attrs ^= s->reverse_video ? ATTR_REVERSE : 0;
		if (c.width == 2 && x + 1 >= w)
			c = blank;	/* half a wide character does not fit */
		if (col < 1000 && marks[col / 8] & (1 << (col % 8)))
			c.attrs |= ATTR_REVERSE | ATTR_BOLD;	/* a search match */
		if (in_selection(s, vr, col))
			c.attrs ^= ATTR_REVERSE;
		if (srow >= 0 && srow < s->rows)
			predicted_cell(s, srow, col, &c);
		if (!cell_blank(&c))	/* erase() left blanks: most of a pane, usually */
			draw_cell(y, x0 + x, &c);
		x += c.width == 2 ? 2 : 1;
	}
}

/* The first history row and column in view: the cursor stays visible when
 * the remote PTY is larger than the pane (§5); copy mode looks back. */
static void pane_origin(const struct session *s, int w, int h, int *top, int *left)
{
	struct pos cur;
	int oy = 0, ox = 0;

	cur = (struct pos){ s->vt.row, s->vt.col };
	if (s->rows > h && cur.row >= h)
		oy = cur.row - h + 1 > s->rows - h ? s->rows - h : cur.row - h + 1;
	if (s->cols > w && cur.col >= w)
		ox = cur.col - w + 1 > s->cols - w ? s->cols - w : cur.col - w + 1;
	*top = s->sb_count + oy - s->scroll;
	if (*top < 0)
		*top = 0;
	*left = ox;
}

/* Draws the terminal; returns where its cursor shows on screen, or -1. */
static int pane_row_changed(const struct session *s, int row)	/* a screen row to draw this frame */
{
	return app.frame_full || s->dirty_all || row < 0 || row >= ROWS_MAX ||
	       (s->dirty[row / 64] >> (row % 64) & 1);
}

static int draw_pane(struct session *s, int x0, int w, int h, int *cx)
{
	int top, left;
	struct pos cur;

	pane_origin(s, w, h, &top, &left);
	for (int y = 0; y < h; y++)
		if (pane_row_changed(s, top + y - s->sb_count))
			draw_row(s, top + y, y, x0, left, w);
	memset(s->dirty, 0, sizeof(s->dirty));
	s->dirty_all = 0;
	if (s->cols < w)	/* the PTY's edge, where the remote's lines wrap */
		for (int y = 0; y < h && y < s->rows; y++)
			put(y, x0 + s->cols, 1, C_DIM, 0, "┊");
	cur = (struct pos){ s->vt.row, s->vt.col };
	if (s->pred.row >= 0 && s->pred.epoch <= s->pred.proven) {	/* ahead of the echo */
		cur.row = s->pred.row;
		cur.col = s->pred.col;
	}
	cur.row += s->sb_count - top;
	cur.col -= left;
	*cx = x0 + cur.col;
	if (app.copy.s == s && app.mode == M_COPY) {	/* copy mode's cursor, where it is */
		cur.row = app.copy.row - top;
		cur.col = app.copy.col - left;
		*cx = x0 + cur.col;
		return cur.row >= 0 && cur.row < h && cur.col >= 0 && cur.col < w ? cur.row : -1;
	}
	if (app.mode == M_NORMAL && s->cursor_visible && !s->scroll && s->state != S_ENDED &&
	    cur.row >= 0 && cur.row < h && cur.col >= 0 && cur.col < w)
		return cur.row;
	return -1;
}

static int text_cols(const char *text)	/* columns a UTF-8 string takes */
{
	wchar_t wide[256];
	size_t n = mbstowcs(wide, text, 255);
	int cols = n == (size_t)-1 ? -1 : wcswidth(wide, n);

	return cols < 0 ? (int)strlen(text) : cols;
}

/* Text at (y, x), at most w columns, in a chrome colour and attributes. */
static void draw_hash(const void *p, size_t n)	/* what a frame draws, hashed (FNV-1a) */
{
	for (size_t i = 0; i < n; i++)
		app.drawn_hash = (app.drawn_hash ^ ((const unsigned char *)p)[i]) * 0x100000001b3ull;
}

static void draw_hash_at(int y, int x, int w, int c, attr_t a)	/* where and how */
{
	int where[5] = { y, x, w, c, (int)a };

	draw_hash(where, sizeof(where));
}

static void put(int y, int x, int w, enum chrome c, attr_t a, const char *fmt, ...)
{
	char raw[512], text[512];
	wchar_t wide[512];
	va_list ap;
	int n, cols = 0, i;

	va_start(ap, fmt);
	vsnprintf(raw, sizeof(raw), fmt, ap);
	va_end(ap);
	clean_text(text, sizeof(text), raw, strlen(raw));	/* a byte cut anywhere blanks nothing */
	n = (int)mbstowcs(wide, text, 511);
	if (n < 0)
		n = 0;
	for (i = 0; i < n; i++) {
		int cw = wcwidth(wide[i]);

		if (cols + (cw > 0 ? cw : 0) > w)
			break;
		cols += cw > 0 ? cw : 0;
	}
	draw_hash_at(y, x, w, c, a);
	draw_hash(wide, (size_t)i * sizeof(*wide));
	if (app.dry)
		return;
	attr_set(a | chrome_attr(c), 0, &(int){ chrome(c) });
	mvaddnwstr(y, x, wide, i);
	attr_set(A_NORMAL, 0, &(int){ 0 });
}

static void fill(int y, int x, int w, enum chrome c)	/* a blank run in colour c */
{
	draw_hash_at(y, x, w, c, 0);
	if (app.dry)
		return;
	attr_set(chrome_attr(c), 0, &(int){ chrome(c) });
	mvhline(y, x, ' ', w);
	attr_set(A_NORMAL, 0, &(int){ 0 });
}

/* How many of wide[0..n) fit in w columns; at a blank if one is near. */
static int wrap_at(const wchar_t *wide, int n, int w)
{
	int i = 0, cols = 0, blank = -1;

	while (i < n && cols + (wcwidth(wide[i]) > 0 ? wcwidth(wide[i]) : 0) <= w) {
		cols += wcwidth(wide[i]) > 0 ? wcwidth(wide[i]) : 0;
		blank = wide[i] == L' ' ? i : blank;
		i++;
	}
	return i < n && blank > w / 2 ? blank + 1 : i;
}

static int wrapped_lines(const char *text, int w, int most)	/* as draw_wrapped breaks it */
{
	wchar_t wide[512];
	int n = (int)mbstowcs(wide, text, 511), lines = 0;

	for (int i = 0, k; n > 0 && i < n && lines < most; i += k ? k : n, lines++)
		k = wrap_at(wide + i, n - i, w);
	return lines;
}

/* Text over up to lines rows of w columns each, broken at blanks. */
static void draw_wrapped(int y, int x, int w, int lines, enum chrome c, const char *text)
{
	wchar_t wide[512];
	int n = (int)mbstowcs(wide, text, 511), i = 0;

	for (int line = 0; line < lines && n > 0 && i < n; line++) {
		int k = wrap_at(wide + i, n - i, w);

		draw_hash_at(y + line, x, w, c, 0);
		draw_hash(wide + i, (size_t)k * sizeof(*wide));
		if (!app.dry) {
			attr_set(chrome_attr(c), 0, &(int){ chrome(c) });
			mvaddnwstr(y + line, x, wide + i, k);
			attr_set(A_NORMAL, 0, &(int){ 0 });
		}
		i += k ? k : n;
	}
}

static void short_id(const struct session *s, char out[SHORT_ID + 1])	/* "7f1c" */
{
	copy_str(out, SHORT_ID + 1, s->request_id[0] ? s->request_id : "----");
}

static enum chrome tunnel_color(const struct tunnel *t)	/* its state at a glance */
{
	return t->state == T_ONLINE ? C_GOOD :
	       t->state == T_AUTH_FAILED || t->state == T_CLOSED ? C_ALERT :
	       t->state == T_RECONNECTING || t->state == T_WAITING ? C_WARN : C_DIM;
}

static void tunnel_state_text(const struct tunnel *t, char *out, size_t cap)
{	/* "online", "retry in 4s", "online · 3 bad", "online · expires 4m10s" */
	char bad[48] = "";
	long left = t->cfg.expires ? (long)(t->cfg.expires - time(NULL)) : LONG_MAX;

	if (tunnel_stale(t))	/* counting, in seconds: the link owes an answer */
		snprintf(bad, sizeof(bad), " · no answer %ds", stale_seconds(t));
	else if (tunnel_single(t))	/* why a second login asks first */
		snprintf(bad, sizeof(bad), " · single");
	if (t->dropped)
		snprintf(bad + strlen(bad), sizeof(bad) - strlen(bad), " · %u bad", t->dropped);
	if (left <= EXPIRY_WARN_S)	/* soon: stays in view, unlike an event */
		snprintf(bad + strlen(bad), sizeof(bad) - strlen(bad), left > 0 ?
			 " · expires %ldm%02lds" : " · token expired", left / 60, left % 60);
	if (t->state == T_RECONNECTING)
		snprintf(out, cap, "retry in %llds%s",
			 (long long)((t->reconnect_at_us - now_us()) / 1000000 + 1), bad);
	else
		snprintf(out, cap, "%s%s", tunnel_state_names[t->state], bad);
}

/* What the device's link does not protect, loud beside its name. */
static const char *tunnel_badge(const struct tunnel *t)
{
	struct url u;

	if (url_parse(t->cfg.url, &u) < 0)
		return NULL;
	return !u.tls ? "PLAINTEXT" : app.insecure ? "INSECURE" : NULL;
}

/*** the list: rows, filter, scrolling *********************************/

/* The list is as wide as its longest name and badge needs (at least
 * LIST_WIDTH, at most a third of the screen), or list_width = N: fixed
 * when devices come and go, so panes keep their size; events wrap. */
static void list_fit(void)
{
	int w = app.list_w_set ? app.list_w_set : LIST_WIDTH, most = COLS / 3;

	for (struct tunnel *t = app.tunnels; t && !app.list_w_set; t = t->next) {
		const char *badge = tunnel_badge(t);
		int need = text_cols(t->cfg.name) + (badge ? (int)strlen(badge) + 1 : 0) + 2;

		w = need > w ? need : w;
	}
	if (!app.list_w_set && w > most)
		w = most > LIST_WIDTH ? most : LIST_WIDTH;
	app.list_w = w < COLS - 20 ? w : COLS - 20 > 10 ? COLS - 20 : 10;
}


struct row {		/* one entry of the list: a device, or one of its sessions */
	struct tunnel *t;
	struct session *s;		/* NULL: the device itself */
	int h;				/* screen lines it takes */
};

static int filter_hit(const char *text)	/* the list filter, case-blind, in text */
{
	return !app.filter_len || (text && strcasestr(text, app.filter));
}

static int session_hit(const struct session *s)	/* by its id, user or title */
{
	return filter_hit(s->request_id) || filter_hit(s->user) || filter_hit(s->title) || filter_hit(s->name);
}

static int wrapped_lines(const char *text, int w, int most);

static int event_lines(const struct tunnel *t)	/* the last event: wrapped, two lines at most */
{
	return wrapped_lines(t->event, app.list_w - 2, 2);
}

static int device_row_height(const struct tunnel *t)
{
	return app.compact ? 1 : 2 + event_lines(t);
}

/* The list's rows in order: each device that passes the filter, then its
 * sessions (in compact mode only the selected device's).  rows may be NULL
 * to count them. */
static int list_rows(struct row *rows)
{
	int n = 0;

	for (struct tunnel *t = app.tunnels; t; t = t->next) {
		int dev = filter_hit(t->cfg.name) || filter_hit(t->cfg.device_id), any = dev;

		for (struct session *s = t->sessions; s && !any; s = s->next)
			any = session_hit(s);
		if (!any)
			continue;
		if (rows)
			rows[n] = (struct row){ t, NULL, device_row_height(t) };
		n++;
		for (struct session *s = t->sessions; s && (!app.compact || t == app.sel_tunnel); s = s->next)
			if (dev || session_hit(s)) {
				if (rows)
					rows[n] = (struct row){ t, s, 1 };
				n++;
			}
	}
	return n;
}

static struct row *list_snapshot(int *n, int *sel)	/* the rows, and the selected one's index */
{
	struct row *rows;

	*n = list_rows(NULL);
	rows = xcalloc((size_t)(*n + 1) * sizeof(*rows));
	list_rows(rows);
	for (*sel = 0; *sel < *n; ++*sel)
		if (rows[*sel].t == app.sel_tunnel && rows[*sel].s == app.sel_session)
			break;
	if (*sel == *n)	/* filtered out, or nothing selected */
		*sel = *n ? 0 : -1;
	return rows;
}

/* Scrolls the list so the selected row is whole in view, below a "more
 * above" line and above a "more below" line when those are needed. */
static void list_scroll(const struct row *rows, int n, int sel, int avail)
{
	if (sel < 0)
		return;
	if (app.list_top > sel)
		app.list_top = sel;
	for (;;) {
		int y = app.list_top > 0;

		for (int i = app.list_top; i <= sel; i++)
			y += rows[i].h;
		if (y + (sel < n - 1) <= avail || app.list_top == sel)
			return;
		app.list_top++;
	}
}

static int devices_in(const struct row *rows, int from, int to)	/* device rows in [from, to) */
{
	int n = 0;

	for (int i = from; i < to; i++)
		n += rows[i].s == NULL;
	return n;
}

/* "▲ 12 more devices": what the list holds beyond its edge (or, with no
 * device there, how many sessions). */
static void draw_more(int y, const struct row *rows, int from, int to, const char *where)
{
	int devices = devices_in(rows, from, to), n = devices ? devices : to - from;

	fill(y, 0, app.list_w, C_NORMAL);
	put(y, 1, app.list_w - 1, C_WARN, A_BOLD, "%s %d more %s%s", where, n,
	    devices ? "device" : "session", n == 1 ? "" : "s");
}

static void short_state(const struct tunnel *t, char *out, size_t cap)	/* for a compact row */
{
	static const char *const names[] = {
		[T_IDLE] = "idle", [T_CONNECTING] = "connecting", [T_WAITING] = "waiting",
		[T_ONLINE] = "online", [T_RECONNECTING] = "retry", [T_AUTH_FAILED] = "auth failed",
		[T_CLOSED] = "closed", [T_CREATING] = "creating", [T_API_ERROR] = "API error",
		[T_CERT_FAILED] = "cert refused",
	};

	if (t->state == T_RECONNECTING)
		snprintf(out, cap, "retry %llds", (long long)((t->reconnect_at_us - now_us()) / 1000000 + 1));
	else
		snprintf(out, cap, "%s", names[t->state]);
}

static int draw_device_row(struct tunnel *t, int y)	/* name, state, last event */
{
	char st[64];
	int sel = t == app.sel_tunnel && !app.sel_session, w = app.list_w;
	const char *badge = tunnel_badge(t);
	int bw = badge ? (int)strlen(badge) + 1 : 0, sw;

	tunnel_state_text(t, st, sizeof(st));
	fill(y, 0, w, sel ? C_SELECTED : C_NORMAL);
	if (app.compact) {
		short_state(t, st, sizeof(st));
		sw = text_cols(st) + 1;
		put(y, 1, w - 1 - sw - bw, sel ? C_SELECTED : C_NORMAL, A_BOLD, "%s", t->cfg.name);
		put(y, w - sw - bw, sw, sel ? C_SELECTED : tunnel_color(t), 0, "%s", st);
	} else {
		put(y, 1, w - 1 - bw, sel ? C_SELECTED : C_NORMAL, A_BOLD, "%s", t->cfg.name);
		put(y + 1, 2, w - 2, tunnel_color(t), 0, "%s", st);
		draw_wrapped(y + 2, 2, w - 2, event_lines(t), C_DIM, t->event);
	}
	if (badge)
		put(y, w - bw, bw, C_ALERT, A_BOLD, "%s", badge);
	return device_row_height(t);
}

static const char *session_label(const struct session *s)	/* the user's name, or the title */
{
	return s->name[0] ? s->name : s->title;
}

static void draw_session_row(struct session *s, int y)	/* id, user, state, activity */
{
	char id[SHORT_ID + 1];
	int sel = s == app.sel_session, w = app.list_w;
	enum chrome c = sel ? C_SELECTED : s->state == S_ENDED ? C_DIM : C_NORMAL;

	short_id(s, id);
	fill(y, 0, w, sel ? C_SELECTED : C_NORMAL);
	put(y, 1, w - 1, c, 0, " %s %-4s %-8.8s %s%s%s", s->unseen ? "*" : " ", id, s->user,
	    session_state_names[s->state], session_label(s)[0] ? " " : "", session_label(s));
	if (s->marked)	/* broadcast target: impossible to miss */
		put(y, 0, 2, app.broadcast ? C_ALERT : C_MARK, A_BOLD, "◆");
	if (s->rec)
		put(y, w - 2, 1, C_ALERT, A_BOLD, "●");
}

static void draw_list(void)	/* the left column: scrolled to the selection */
{
	int n, sel, avail = LINES - 1, y, i;
	struct row *rows = list_snapshot(&n, &sel);

	for (y = 0; !app.frame_full && y < avail; y++)	/* the frame was not erased */
		fill(y, 0, app.list_w, C_NORMAL);

	list_scroll(rows, n, sel, avail);
	if (app.list_top >= n)
		app.list_top = 0;
	y = app.list_top > 0;
	if (y)
		draw_more(0, rows, 0, app.list_top, "▲");
	for (i = app.list_top; i < n && y + rows[i].h + (i < n - 1) <= avail; i++)
		y += rows[i].s ? (draw_session_row(rows[i].s, y), 1) : draw_device_row(rows[i].t, y);
	if (i < n)
		draw_more(y, rows, i, n, "▼");
	if (!n && app.filter_len)
		put(0, 1, app.list_w - 1, C_DIM, 0, "nothing matches");
	free(rows);
	draw_hash_at(app.broadcast, broadcasting(), 0, 0, 0);
	if (app.dry)
		return;
	attr_set(app.broadcast ? A_BOLD : A_NORMAL, 0,
		 &(int){ chrome(broadcasting() ? C_ALERT : C_BORDER) });
	mvvline(0, app.list_w, broadcasting() ? '#' | A_BOLD : ACS_VLINE, LINES - 1);
	attr_set(A_NORMAL, 0, &(int){ 0 });
}

/* The list, drawn only if what it shows changed since the last frame (a
 * dry pass hashes it: formatting costs less than drawing and refreshing). */
static void draw_list_if_changed(void)
{
	app.drawn_hash = 0xcbf29ce484222325ull;
	app.dry = !app.frame_full;
	draw_list();
	app.dry = 0;
	if (!app.frame_full && app.drawn_hash == app.list_hash)
		return;
	app.list_hash = app.drawn_hash;
	if (!app.frame_full)
		draw_list();
}

static void expiry_text(const struct tunnel *t, char *out, size_t cap)	/* "token 3h12m" */
{
	long left = t->cfg.expires ? (long)(t->cfg.expires - time(NULL)) : 0;

	if (!t->cfg.expires)
		out[0] = '\0';
	else if (left <= 0)
		snprintf(out, cap, " │ TOKEN EXPIRED");
	else if (left < 600)
		snprintf(out, cap, " │ token %ldm%02lds", left / 60, left % 60);
	else
		snprintf(out, cap, " │ token %ldh%02ldm", left / 3600, left / 60 % 60);
}

static const char *mode_hint(void)	/* the status bar's right end */
{
	static char hint[64];
	static const char *const names[M_MODES] = {
		[M_NORMAL] = "", [M_PREFIX] = "PREFIX", [M_LOGIN] = "LOGIN",
		[M_CONFIRM] = "CONFIRM", [M_COPY] = "COPY", [M_SEARCH] = "SEARCH",
		[M_HELP] = "HELP", [M_FILTER] = "FILTER", [M_PICK] = "DEVICES", [M_RENAME] = "NAME",
		[M_XFER] = "TRANSFER" };

	snprintf(hint, sizeof(hint), "%s%s%s ? help ", names[app.mode],
		 *names[app.mode] ? " │ " : "", keyname(app.prefix_key));
	return hint;
}

/* Loud markers at the status bar's left: insecure TLS, broadcast, recording. */
static int draw_alerts(int y)
{
	struct session *targets[256];
	int x = 0, n = broadcast_targets(targets, 256);
	char text[64];

	if (app.insecure) {
		put(y, x, COLS - x, C_ALERT, A_BOLD, " INSECURE TLS ");
		x += 15;
	}
	if (app.sel_tunnel && tunnel_badge(app.sel_tunnel) && !strcmp(tunnel_badge(app.sel_tunnel), "PLAINTEXT")) {
		put(y, x, COLS - x, C_ALERT, A_BOLD, " PLAINTEXT ");
		x += 12;
	}
	if (app.broadcast) {
		snprintf(text, sizeof(text), " BROADCAST%s → %d ", app.solo ? " (solo)" : "", n);
		put(y, x, COLS - x, app.solo ? C_MARK : C_ALERT, A_BOLD, "%s", text);
		x += (int)strlen(text);
	}
	if (app.sel_session && app.sel_session->rec) {
		put(y, x, COLS - x, C_ALERT, A_BOLD, " ● REC ");
		x += 8;
	} else if (app.record_error[0]) {
		put(y, x, COLS - x, C_ALERT, A_BOLD, " REC FAILED ");
		x += 13;
	}
	return x;
}

static size_t held_keys(const struct tunnel *t)	/* typed, waiting for the link */
{
	size_t n = 0;

	for (const struct session *s = t->sessions; s; s = s->next)
		n += s->keys.len;
	return n;
}

/* The remote PTY against the pane: "" when they agree. */
static const char *pty_fit(const struct session *s)
{
	static char text[64];
	int w, h;

	pane_size(&w, &h);
	if (s->cols == w && s->rows == h)
		return "";
	snprintf(text, sizeof(text), " │ PTY %dx%d %s pane %dx%d", s->cols, s->rows,
		 s->cols > w || s->rows > h ? "clipped to" : "in", w, h);
	return text;
}

/* Copy mode: where the cursor is in the history, the selection, the keys. */
static void draw_scroll_status(const struct session *s, int y, int x, int w)
{
	static const char *const sel_names[] = { [SEL_CHAR] = "selecting", [SEL_LINE] = "selecting lines",
						 [SEL_RECT] = "selecting a rectangle" };
	const struct copy *cp = &app.copy;
	int total = history_rows(s);

	if (cp->sel != SEL_NONE)
		put(y, x, w, C_STATUS, 0, " line %d of %d │ %s │ y copies │ q drops it", cp->row + 1,
		    total, sel_names[cp->sel]);
	else
		put(y, x, w, C_STATUS, 0, " line %d of %d%s │ Space/v select · V line · ^V rect · / search%s │ q leaves",
		    cp->row + 1, total, s->scroll ? "" : " (the end)", app.search_len ? " · n next" : "");
}

static void draw_status(void)	/* device │ session │ rtt │ token │ mode, hint */
{
	struct tunnel *t = app.sel_tunnel;
	struct session *s = app.sel_session;
	char rtt[64] = "", exp[48] = "", sess[400] = "", id[SHORT_ID + 1], xfer[400];
	const char *hint = mode_hint();
	int y = LINES - 1, hw = (int)strlen(hint), x;

	fill(y, 0, COLS, C_STATUS);
	x = draw_alerts(y);
	if (t && tunnel_stale(t))	/* never a stale round trip */
		snprintf(rtt, sizeof(rtt), " │ NO ANSWER FOR %d s%s", stale_seconds(t),
			 held_keys(t) ? ", typing held" : "");
	else if (t && t->rtt_ms >= 0 && t->state == T_ONLINE)
		snprintf(rtt, sizeof(rtt), " │ rtt %d ms", t->rtt_ms);
	if (t)
		expiry_text(t, exp, sizeof(exp));
	if (s) {	/* connect_response's text (not a mere "success"), or the end reason */
		int note = s->note[0] && (s->state != S_LIVE || strcasecmp(s->note, "success"));

		short_id(s, id);
		char user[48], text[104], title[48];	/* cut at characters, not bytes */

		clean_text(user, sizeof(user), s->user, strlen(s->user));
		clean_text(text, sizeof(text), s->note, note ? strlen(s->note) : 0);
		clean_text(title, sizeof(title), session_label(s), strlen(session_label(s)));
		snprintf(sess, sizeof(sess), " │ %s %s %s%s%s%s%s%s", id, user, session_state_names[s->state],
			 note ? ": " : "", text, title[0] ? " │ " : "", title, pty_fit(s));
	}
	if (app.flash[0] && now_us() < app.flash_until_us)
		put(y, x, COLS - hw - x, C_ALERT, A_BOLD, " %s ", app.flash);
	else if (app.mode == M_COPY && s)
		draw_scroll_status(s, y, x, COLS - hw - x);
	else if (xfer_status(t, xfer, sizeof(xfer)))	/* a transfer's progress */
		put(y, x, COLS - hw - x, C_STATUS, A_BOLD, " %s", xfer);
	else if (t)
		put(y, x, COLS - hw - x, C_STATUS, 0, " %s%s%s%s%s%s",
		    t->cfg.name, sess, rtt, exp, s ? "" : " │ ", s ? "" : t->event);
	put(y, COLS - hw, hw, C_STATUS, A_BOLD, "%s", hint);
}

static void draw_box(int y, int x, int h, int w, const char *title)	/* a framed overlay */
{
	for (int i = 0; i < h; i++)
		fill(y + i, x, w, C_STATUS);
	attr_set(chrome_attr(C_STATUS), 0, &(int){ chrome(C_STATUS) });
	mvhline(y, x, ACS_HLINE, w);
	mvhline(y + h - 1, x, ACS_HLINE, w);
	mvvline(y, x, ACS_VLINE, h);
	mvvline(y, x + w - 1, ACS_VLINE, h);
	mvaddch(y, x, ACS_ULCORNER);
	mvaddch(y, x + w - 1, ACS_URCORNER);
	mvaddch(y + h - 1, x, ACS_LLCORNER);
	mvaddch(y + h - 1, x + w - 1, ACS_LRCORNER);
	attr_set(A_NORMAL, 0, &(int){ 0 });
	put(y, x + 2, w - 4, C_STATUS, A_BOLD, " %s ", title);
}

/* The login dialog: the password shows as a fixed mask, never its length. */
/* A box width for content of cols columns: room around it, within the screen. */
static int box_width(int cols, int least)
{
	int w = cols + 4 > least ? cols + 4 : least;

	return w < COLS - 2 ? w : COLS;
}

/* The password's mask: bullets (3 bytes each) in a number that changes on
 * every key and says nothing of its length; none while it is empty. */
static const char bullets[] = "••••••••";	/* as many as the longest mask (mask_shuffle) */

static int mask_cols(void)
{
	return app.dlg.password_len ? app.dlg.mask : 0;
}

/* The login dialog.  The password shows as a mask that changes on every
 * key (feedback) but whose length says nothing of the password's. */
static void draw_login(void)
{
	static const char hint[] = "Enter log in · Tab next field · Esc cancel";
	const struct dialog *d = &app.dlg;
	int need = text_cols(d->tunnel->cfg.name) + 9, h = d->notice[0] ? 7 : 6;
	int w = box_width(need > text_cols(d->notice) ? need : text_cols(d->notice), text_cols(hint) + 4);
	int x = (COLS - w) / 2, y = LINES / 2 - 3;

	draw_box(y, x, h, w, d->reopen ? "reopen session" : "log in");
	put(y + 1, x + 2, w - 4, C_STATUS, 0, "device   %s", d->tunnel->cfg.name);
	put(y + 2, x + 2, w - 4, C_STATUS, d->field == 0 ? A_BOLD : 0, "user     %s", d->user);
	put(y + 3, x + 2, w - 4, C_STATUS, d->field == 1 ? A_BOLD : 0, "password %.*s",
	    mask_cols() * 3, bullets);
	if (d->notice[0])
		put(y + 4, x + 2, w - 4, C_ALERT, A_BOLD, "%s", d->notice);
	put(y + h - 2, x + 2, w - 4, C_STATUS, A_DIM, "%s", hint);
	move(y + 2 + d->field, x + 11 + (d->field == 0 ? text_cols(d->user) : mask_cols()));
	show_cursor(1);
}

static void draw_confirm(void)	/* a yes/no question, wrapped to the screen */
{
	int w = box_width(text_cols(app.dlg.question), 40), lines, x, y;

	if (w > COLS * 3 / 4 && COLS >= 60)
		w = COLS * 3 / 4;
	lines = wrapped_lines(app.dlg.question, w - 4, 4);
	x = (COLS - w) / 2;
	y = LINES / 2 - 2;
	draw_box(y, x, lines + 3, w, "confirm");
	draw_wrapped(y + 1, x + 2, w - 4, lines, C_STATUS, app.dlg.question);
	put(y + lines + 1, x + 2, w - 4, C_STATUS, A_BOLD, "y: yes   n / Esc: no");
}

static int help_entries(int *widest)	/* bindings with help, and the widest line */
{
	int n = 0;

	*widest = 0;
	for (size_t i = 0; i < sizeof(bindings) / sizeof(*bindings); i++)
		if (bindings[i].help) {
			int w = 12 + text_cols(bindings[i].help);

			*widest = w > *widest ? w : *widest;
			n++;
		}
	return n;
}

/* Generated from bindings[]: the help cannot drift from the keys.  Sized
 * to the screen: two columns when one does not fit its height. */
static void draw_help(void)
{
	int widest, n = help_entries(&widest), room = LINES - 5, cols, per, w, h, x, y, k = 0;
	char prefix[16], head[128];

	copy_str(prefix, sizeof(prefix), keyname(app.prefix_key));
	snprintf(head, sizeof(head), "Press %s, then:%s", prefix, app.mouse_off ? "" :
		 "   (mouse: a click selects, the wheel scrolls back, a drag copies)");
	cols = n > room && COLS >= 2 * widest + 6 ? 2 : 1;
	per = (n + cols - 1) / cols;
	w = cols * widest + (cols - 1) * 2;
	w = box_width(w > text_cols(head) ? w : text_cols(head), 40);	/* the mouse line whole when it fits */
	h = (per < room ? per : room) + 4;
	x = (COLS - w) / 2;
	y = (LINES - 1 - h) / 2;
	draw_box(y, x, h, w, "keys");
	put(y + 1, x + 2, w - 4, C_STATUS, 0, "%s", head);
	for (size_t i = 0; i < sizeof(bindings) / sizeof(*bindings); i++) {
		const char *key = bindings[i].fn == act_send_prefix ? prefix : bindings[i].keyname;
		int col = k / per, row = k % per;

		if (!bindings[i].help)
			continue;
		k++;
		if (row < h - 4)
			put(y + 2 + row, x + 2 + col * (widest + 2), widest, C_STATUS, 0, "  %-*s %s",
			    10 + (int)strlen(key) - text_cols(key), key, bindings[i].help);	/* printf pads bytes */
	}
	put(y + h - 1, x + 2, w - 4, C_STATUS, A_DIM, per > h - 4 ? " more than fits: enlarge the "
	    "terminal · any key closes " : " any key closes ");
}

static const char *placeholder_hint(const struct tunnel *t)	/* what can be done now */
{
	static char hint[160];
	const char *k = keyname(app.prefix_key);

	if (t->state == T_WAITING || t->state == T_ONLINE)
		snprintf(hint, sizeof(hint), "Press %s n (or Enter) to log in, %s ? for help.", k, k);
	else if (t->state == T_CONNECTING || t->state == T_CREATING || t->state == T_RECONNECTING)
		snprintf(hint, sizeof(hint), "Not connected yet; %s c connects now, %s ? for help.", k, k);
	else
		snprintf(hint, sizeof(hint), "%s c connects again, %s ? for help.", k, k);
	return hint;
}

/* No session selected: say what the device is doing and how to log in. */
static void draw_placeholder(int x0, int w)
{
	struct tunnel *t = app.sel_tunnel;
	char st[32];

	if (!t) {
		put(1, x0 + 2, w - 2, C_NORMAL, 0, "No devices yet: %s o opens one from the API's list.",
		    keyname(app.prefix_key));
		return;
	}
	tunnel_state_text(t, st, sizeof(st));
	put(1, x0 + 2, w - 2, C_NORMAL, A_BOLD, "%s", t->cfg.name);
	put(2, x0 + 2, w - 2, tunnel_color(t), 0, "%s", st);
	put(3, x0 + 2, w - 2, C_DIM, 0, "%s", t->event);
	put(4, x0 + 2, w - 2, C_DIM, 0, "%s", t->api_state);
	put(5, x0 + 2, w - 2, C_NORMAL, 0, "%s", placeholder_hint(t));
}

static void draw_search_prompt(void)	/* "/text" over the status bar */
{
	fill(LINES - 1, 0, COLS, C_STATUS);
	put(LINES - 1, 0, COLS, C_STATUS, A_BOLD, "search back: %s", app.search);
	move(LINES - 1, 13 + (int)app.search_len);
	show_cursor(1);
}

static void draw_filter_prompt(void)	/* the filter being typed, over the status bar */
{
	int n, sel;
	struct row *rows = list_snapshot(&n, &sel);

	fill(LINES - 1, 0, COLS, C_STATUS);
	put(LINES - 1, 0, COLS, C_STATUS, A_BOLD, "filter: %s", app.filter);
	put(LINES - 1, 9 + text_cols(app.filter) + 2, COLS, C_STATUS, 0,
	    "%d device%s · Up/Down choose · Enter jumps · Esc back", devices_in(rows, 0, n),
	    devices_in(rows, 0, n) == 1 ? "" : "s");
	move(LINES - 1, 8 + text_cols(app.filter));
	show_cursor(1);
	free(rows);
}

static void draw_rename_prompt(void)	/* the session's new name, over the status bar */
{
	put(LINES - 1, 0, COLS, C_STATUS, A_BOLD, "name: %s", app.rename);
	put(LINES - 1, 8 + text_cols(app.rename), COLS, C_STATUS, 0,
	    "Enter names the session · empty: the remote's title again · Esc back");
	move(LINES - 1, 6 + text_cols(app.rename));
	show_cursor(1);
}

static int pick_hit(const struct pick *p)	/* the picker's filter: name, id, product, status */
{
	const char *f = picker.filter;

	return !picker.filter_len || strcasestr(p->name, f) || strcasestr(p->id, f) ||
	       strcasestr(p->product, f) || strcasestr(p->status, f);
}

static int pick_view(int *idx)	/* the devices the filter shows, their indices */
{
	int n = 0;

	for (int i = 0; i < picker.n; i++)
		if (pick_hit(&picker.devs[i]))
			idx[n++] = i;
	return n;
}

static struct tunnel *tunnel_of_device(const char *id)	/* open here already? */
{
	for (struct tunnel *t = app.tunnels; t; t = t->next)
		if (!strcmp(t->cfg.device_id, id))
			return t;
	return NULL;
}

static void draw_pick_row(const struct pick *p, int y, int x, int w, int sel)
{
	enum chrome c = sel ? C_SELECTED : !strcmp(p->status, "ONLINE") ? C_GOOD : C_DIM;

	fill(y, x, w, sel ? C_SELECTED : C_STATUS);
	put(y, x + 1, 9, c, A_BOLD, "%s", p->status);
	put(y, x + 11, w - 11, sel ? C_SELECTED : C_STATUS, 0, "%-24.24s %-16.16s %s%s", p->name,
	    p->product, p->id, tunnel_of_device(p->id) ? " · open here" : "");
}

/* Ctrl-g o: the project's devices from the API, filtered as you type. */
static void draw_picker(void)
{
	int idx[picker.n + 1], n = pick_view(idx), w = box_width(COLS - 8, 60), h = LINES - 3;
	int x = (COLS - w) / 2, y = 1, rows = h - 5;
	const struct pick *cur = n ? &picker.devs[idx[picker.sel]] : NULL;

	picker.sel = picker.sel >= n ? (n ? n - 1 : 0) : picker.sel;
	picker.top = picker.sel < picker.top ? picker.sel :
		     picker.sel >= picker.top + rows ? picker.sel - rows + 1 : picker.top;
	draw_box(y, x, h, w, "devices");
	put(y + 1, x + 2, w - 4, C_STATUS, 0, "%d of %d device%s%s%s", n, picker.n, picker.n == 1 ? "" : "s",
	    picker.complete ? "" : " · loading…", picker.error[0] ? " · " : "");
	if (picker.error[0])
		put(y + 1, x + 40, w - 42, C_ALERT, A_BOLD, "%s", picker.error);
	put(y + 2, x + 2, w - 4, C_STATUS, A_BOLD, "filter: %s", picker.filter);
	for (int i = 0; i < rows && picker.top + i < n; i++)
		draw_pick_row(&picker.devs[idx[picker.top + i]], y + 3 + i, x + 1, w - 2,
			      picker.top + i == picker.sel);
	if (cur)
		put(y + h - 2, x + 2, w - 4, C_STATUS, 0, "%s: %s", cur->name,
		    cur->tunnel[0] ? cur->tunnel : "tunnels not asked yet");
	put(y + h - 1, x + 2, w - 4, C_STATUS, A_DIM, " type to filter · ↑↓ PgUp PgDn · Enter opens · "
	    "^R reloads · Esc closes ");
	move(y + 2, x + 10 + text_cols(picker.filter));
	show_cursor(1);
}

static void (*const mode_draws[M_MODES])(void) = {	/* what each mode puts on top of the screen */
	[M_LOGIN] = draw_login, [M_CONFIRM] = draw_confirm, [M_HELP] = draw_help,
	[M_SEARCH] = draw_search_prompt, [M_FILTER] = draw_filter_prompt, [M_PICK] = draw_picker,
	[M_RENAME] = draw_rename_prompt, [M_XFER] = draw_xfer_dialog,
};

static void draw_overlay(void)	/* whatever the mode puts on top */
{
	if (mode_draws[app.mode])
		mode_draws[app.mode]();
}

/* Whether this frame must draw everything: anything but the pane's rows
 * changed (the session, the layout, a mode or dialog, predictions). */
static int frame_changed(int x0, int w, int h)
{
	const struct session *s = app.sel_session;
	struct shown f = { s, x0, w, h, 0, 0, LINES, COLS, app.mode, app.offer.waiting, s && s->pred.n };

	if (s)
		pane_origin(s, w, h, &f.top, &f.left);
	const struct shown *o = &app.shown;

	if (f.s == o->s && f.x0 == o->x0 && f.w == o->w && f.h == o->h && f.top == o->top && f.left == o->left &&
	    f.lines == o->lines && f.cols == o->cols && f.mode == o->mode && f.overlay == o->overlay &&
	    !app.redraw && s && app.mode == M_NORMAL && !f.predicted && !o->predicted)
		return 0;
	app.shown = f;
	app.redraw = 0;
	return 1;
}

static void draw(void)	/* the screen, sent in one update: what changed, mostly */
{
	int x0 = list_width(), w, h, cy = -1, cx = 0;

	app.dirty = 0;
	app.last_draw_us = now_us();
	pane_size(&w, &h);
	app.frame_full = frame_changed(x0, w, h);
	if (app.frame_full)
		erase();
	show_cursor(0);
	if (COLS < 30 || LINES < 6) {
		put(0, 0, COLS, C_ALERT, A_BOLD, "too small: %dx%d", COLS, LINES);
		put(1, 0, COLS, C_NORMAL, 0, "needs 30x6");
		refresh();
		app.redraw = 1;
		return;
	}
	if (!app.zoom)
		draw_list_if_changed();
	if (app.sel_session)
		cy = draw_pane(app.sel_session, x0, w, h, &cx);
	else
		draw_placeholder(x0, w);
	if (app.mode != M_SEARCH && app.mode != M_RENAME)
		draw_status();
	if (cy >= 0) {
		move(cy, cx);
		show_cursor(1);
	}
	draw_overlay();
	if (app.cursor_wanted != app.cursor_shown)
		curs_set(app.cursor_shown = app.cursor_wanted);
	refresh();
}

/************************************************************************
 *** 11. keys: bindings, modes, dialogs
 ************************************************************************/

static void flash_msg(const char *fmt, ...)	/* a short message in the status bar */
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(app.flash, sizeof(app.flash), fmt, ap);
	va_end(ap);
	app.flash_until_us = now_us() + 4000000;
	ui_dirty();
}

/* Does LINE[0..N) end with a prompt character, a space and the first K
 * bytes of WORD (as far as the remote's echo has come)? */
static int prompt_then(const char *line, size_t n, const char *word, size_t k)
{
	if (!k)
		return n && strchr("$#>%", line[n - 1]);
	return n >= k + 2 && !memcmp(line + n - k, word, k) && line[n - k - 1] == ' ' &&
	       strchr("$#>%", line[n - k - 2]);
}

static const char *const exit_words[] = { "exit", "logout" };	/* what ends a shell */

/* "exit" or "logout" if the keys typed since the last Enter end with it:
 * whatever came before went to a program that has ended (q in less). */
static const char *typed_exit(const struct session *s)
{
	size_t n = s->typed_len > 0 ? (size_t)s->typed_len : 0;

	for (size_t i = 0; i < sizeof(exit_words) / sizeof(*exit_words); i++) {
		size_t w = strlen(exit_words[i]);

		if (n >= w && !memcmp(s->typed + n - w, exit_words[i], w))
			return exit_words[i];
	}
	return NULL;
}

/* Is the line at the cursor a prompt with "exit" or "logout" after it (in the
 * remote's echo, or typed and not yet echoed), or nothing (for ^D)?  The echo
 * counts whatever keys full-screen programs or completion took before. */
static int at_exit_prompt(const struct session *s, int eof)
{
	char line[512];
	const char *typed = typed_exit(s);
	size_t n, tn = typed ? strlen(typed) : 0;

	if (s->altscreen)
		return 0;
	row_text(s, s->sb_count + s->vt.row, line, sizeof(line));
	n = strlen(line);
	while (n && line[n - 1] == ' ')
		line[--n] = '\0';
	if (eof)
		return prompt_then(line, n, "", 0);
	for (size_t i = 0; i < sizeof(exit_words) / sizeof(*exit_words); i++)
		if (prompt_then(line, n, exit_words[i], strlen(exit_words[i])))
			return 1;
	for (size_t k = 0; k < tn; k++)	/* Enter came before the whole echo */
		if (prompt_then(line, n, typed, k))
			return 1;
	return 0;
}

/* Keeps the last printable keys typed since the last Enter (a control key
 * forgets them): a fast "exit" and Enter reach here before its echo. */
static void track_typed(struct session *s, int ch, int fn)
{
	if (!fn && (ch == 127 || ch == 8) && s->typed_len > 0) {
		s->typed[--s->typed_len] = '\0';
	} else if (!fn && ch > ' ' && ch < 127 && s->typed_len >= 0) {
		if ((size_t)s->typed_len + 1 == sizeof(s->typed))	/* the tail is what counts */
			memmove(s->typed, s->typed + 1, (size_t)--s->typed_len);
		s->typed[s->typed_len++] = (char)ch;
		s->typed[s->typed_len] = '\0';
	} else {
		s->typed_len = -1;	/* unknown until the next Enter */
	}
}

/* Enter on "exit" or "logout" at a prompt, or ^D on an empty one: the
 * user ends the shell, and its end is no fault. */
static void follow_typing(struct session *s, int ch, int fn)
{
	int enter = !fn && (ch == '\r' || ch == '\n'), eof = !fn && ch == 4;

	if ((enter || eof) && at_exit_prompt(s, eof)) {
		s->exit_typed_us = now_us();
		if (s->tunnel->official)
			flash_msg("%s: official devices wedge after a shell exit: %s c reconnects "
				  "before the next login", s->tunnel->cfg.name, keyname(app.prefix_key));
	}
	if (enter) {
		s->typed_len = 0;
		s->typed[0] = '\0';
	} else
		track_typed(s, ch, fn);
}

static void type_key(struct session *s, int ch, int fn)	/* one key to the remote */
{
	char out[32];
	int n = key_encode(s, ch, fn, out);

	follow_typing(s, ch, fn);
	predict_key(s, ch, fn);
	if (n > 0)
		vt_output(s, out, (size_t)n);
}

static void open_login(struct tunnel *t, struct session *reopen)	/* the dialog */
{
	struct dialog *d = &app.dlg;

	d->tunnel = t;
	d->reopen = reopen;
	copy_str(d->user, sizeof(d->user), reopen ? reopen->user : t->cfg.username);
	d->field = d->user[0] ? 1 : 0;
	explicit_bzero(d->password, 1024);
	d->password_len = 0;
	d->notice[0] = '\0';
	app.mode = M_LOGIN;
	ui_dirty();
}

static void confirm(void (*on_yes)(void), const char *fmt, ...)	/* asks y/n */
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(app.dlg.question, sizeof(app.dlg.question), fmt, ap);
	va_end(ap);
	app.dlg.on_yes = on_yes;
	app.dlg.guard_until_us = 0;
	app.dlg.on_no = NULL;
	app.mode = M_CONFIRM;
	ui_dirty();
}

static struct session *live_session(struct tunnel *t)	/* any session not ended */
{
	for (struct session *s = t->sessions; s; s = s->next)
		if (s->state != S_ENDED)
			return s;
	return NULL;
}

static void login_selected_device(void)	/* after the single-session warning */
{
	open_login(app.sel_tunnel, NULL);
}

static int tunnel_can_login(struct tunnel *t)	/* connected, or says why not */
{
	if (t->state == T_WAITING || t->state == T_ONLINE)
		return 1;
	flash_msg("%s is %s: cannot log in now", t->cfg.name, tunnel_state_names[t->state]);
	return 0;
}

static void act_new_session(const union arg *arg)	/* n: log in to the device */
{
	struct tunnel *t = app.sel_tunnel;
	struct session *live;

	(void)arg;
	if (!t || !tunnel_can_login(t))
		return;
	live = live_session(t);
	if (tunnel_single(t) && live)
		confirm(login_selected_device, "%s runs one SSH session: a new login replaces "
			"session %.4s. Go on?", t->cfg.name, live->request_id);
	else
		open_login(t, NULL);
}

static int dropped_sessions(struct tunnel *t, int *remembered);
static void reopen_tunnel(struct tunnel *t);

static int pty_fits_pane(const struct session *s)	/* as big as the pane now */
{
	int w, h;

	pane_size(&w, &h);
	return s->cols == w && s->rows == h;
}

static void reopen_at_pane_size(void)	/* after the question: a new shell, the pane's size */
{
	struct session *s = app.sel_session;
	int w, h;

	session_end(s, "", "reopened at the pane's size");
	pane_size(&w, &h);
	session_resize(s, w, h);
	if (s->password)
		session_reopen(s, s->password, s->password_len);
	else
		open_login(s->tunnel, s);
}

/* There is no resize message (§5): a live session gets the pane's size
 * only as a new shell; official devices have one size whatever is asked. */
static void offer_pane_size(struct session *s)
{
	int w, h;

	pane_size(&w, &h);
	if (s->tunnel->official || s->tunnel->cfg.pty_cols)
		flash_msg("%s runs a fixed %dx%d PTY", s->tunnel->cfg.name, s->cols, s->rows);
	else
		confirm(reopen_at_pane_size, "Reopen session %.4s at the pane's size (%dx%d)? Its shell "
			"ends; the old screen stays above.", s->request_id, w, h);
}

/* r: on a device, its lost sessions; on an ended session, that one.  A new
 * request_id each, the old screen kept above. */
static void act_reopen(const union arg *arg)
{
	struct session *s = app.sel_session;
	struct tunnel *t = app.sel_tunnel;
	int remembered;

	(void)arg;
	if (!t || !tunnel_can_login(t))
		return;
	if (!s && dropped_sessions(t, &remembered))
		reopen_tunnel(t);
	else if (s && s->state != S_ENDED && !pty_fits_pane(s))
		offer_pane_size(s);
	else if (!s || s->state != S_ENDED)
		flash_msg("select an ended session, or a device that lost sessions");
	else if (s->password)
		session_reopen(s, s->password, s->password_len);
	else
		open_login(t, s);
}

static void select_session(struct tunnel *t, struct session *s)	/* focus */
{
	app.sel_tunnel = t;
	app.sel_session = s;
	if (s)
		s->unseen = 0;
	ui_dirty();
}

static void forget_selected_session(void)	/* removes it from the list */
{
	struct session *s = app.sel_session, **pp = &s->tunnel->sessions;

	session_end(s, "", "closed here");
	while (*pp != s)
		pp = &(*pp)->next;
	*pp = s->next;
	select_session(s->tunnel, s->next);
	if (s->tunnel->latest == s)
		s->tunnel->latest = NULL;
	session_free(s);
}

static void close_selected_tunnel(void)	/* after the question */
{
	struct tunnel *t = app.sel_tunnel;

	tunnel_end_sessions(t, "", "closed here");
	tunnel_close(t);
	tunnel_event(t, "closed here; %s c connects again", keyname(app.prefix_key));
}

static void act_close_session(const union arg *arg)	/* x */
{
	struct session *s = app.sel_session;
	struct tunnel *t = app.sel_tunnel;

	(void)arg;
	if (!s && t && t->state != T_CLOSED)
		confirm(close_selected_tunnel, "Close the tunnel to %s%s?", t->cfg.name,
			t->tunnel_id[0] ? " (and the IoTDA tunnel itself)" : "");
	else if (!s)
		flash_msg("select a session to close it");
	else if (s->state == S_ENDED)
		forget_selected_session();
	else
		confirm(forget_selected_session, "Close session %.4s? Its shell on the device "
			"runs on until it exits or idles out.", s->request_id);
}

static void act_move(const union arg *arg)	/* j / k: the next or previous row */
{
	int n = list_rows(NULL), i = 0;
	struct row *rows = xcalloc((size_t)n * sizeof(*rows));

	list_rows(rows);
	while (i < n && !(rows[i].t == app.sel_tunnel && rows[i].s == app.sel_session))
		i++;
	i = i >= n ? 0 : i + arg->i < 0 ? 0 : i + arg->i >= n ? n - 1 : i + arg->i;
	if (n)
		select_session(rows[i].t, rows[i].s);
	free(rows);
}

static void act_next_device(const union arg *arg)	/* Tab / Shift-Tab */
{
	struct tunnel *t = app.sel_tunnel, *prev = NULL;

	if (!t)
		return;
	if (arg->i > 0) {
		select_session(t->next ? t->next : app.tunnels, NULL);
		return;
	}
	for (struct tunnel *u = app.tunnels; u; u = u->next)
		if (u->next == t || (!u->next && t == app.tunnels))
			prev = u;
	select_session(prev ? prev : t, NULL);
}

/* c: the device connects again, whatever its state (closed, failed,
 * connecting, wedged, about to expire); one opened by device_id gets a new
 * tunnel from the API, and a create still in flight is forgotten. */
static void act_connect(const union arg *arg)
{
	struct tunnel *t = app.sel_tunnel;

	(void)arg;
	if (!t)
		return;
	for (struct api_call *c = api.calls; c; c = c->next)
		if (c->tunnel == t && c->op == API_CREATE)
			c->tunnel = NULL;	/* its answer finds no tunnel */
	for (struct api_call *c = api.waiting; c; c = c->next)
		if (c->tunnel == t && c->op == API_CREATE)
			c->tunnel = NULL;
	tunnel_end_sessions(t, "", "reconnecting on request");
	if (t->wsi || t->tunnel_id[0])
		tunnel_close(t);
	lws_sul_cancel(&t->sul_connect);
	t->retries = 0;
	t->force_lock = 1;	/* the user's word: even if another tunnel_tui holds it */
	tunnel_start(t);
	flash_msg("%s: connecting again", t->cfg.name);
}

static void act_device(const union arg *arg)	/* 1 … 9 */
{
	struct tunnel *t = app.tunnels;

	for (int i = 1; t && i < arg->i; i++)
		t = t->next;
	if (t)
		select_session(t, t->sessions);
	else
		flash_msg("there is no device %d", arg->i);
}

static void act_filter(const union arg *arg)	/* /: filter the list as you type */
{
	(void)arg;
	app.filter_from.t = app.sel_tunnel;
	app.filter_from.s = app.sel_session;
	app.filter_len = 0;
	app.filter[0] = '\0';
	app.mode = M_FILTER;
	ui_dirty();
}

static void act_compact(const union arg *arg)	/* v: one row per device, or the full list */
{
	(void)arg;
	app.compact = !app.compact;
	app.list_top = 0;
	ui_dirty();
}

/* o: the device picker.  It needs the API: an [iotda] section and
 * credentials; the list is loaded once and kept (^R in it reloads). */
static void act_pick(const union arg *arg)
{
	(void)arg;
	if (!api.ak && !api.iam_token) {
		flash_msg("the device picker needs an [iotda] section and HUAWEICLOUD_SDK_AK/SK "
			  "(or [iotda] token_file)");
		return;
	}
	if (!picker.n && !picker.loading)
		picker_load();
	app.mode = M_PICK;
	ui_dirty();
}

static void act_zoom(const union arg *arg)	/* z */
{
	(void)arg;
	app.zoom = !app.zoom;
	ui_dirty();
}

static void copy_enter(struct session *s);

static void act_copy_mode(const union arg *arg)	/* [: scroll and copy mode */
{
	(void)arg;
	if (app.sel_session)
		copy_enter(app.sel_session);
}

static void paste_done(const char *p, size_t n);

static void act_paste_copied(const union arg *arg)	/* ]: through the paste path */
{
	(void)arg;
	if (!app.clip.len)
		flash_msg("nothing copied yet: %s [ starts copy mode, Space selects, y copies",
			  keyname(app.prefix_key));
	else
		paste_done(app.clip.p, app.clip.len);
}

static void act_rename(const union arg *arg)	/* ,: the session's name */
{
	struct session *s = app.sel_session;

	(void)arg;
	if (!s) {
		flash_msg("select a session to name it");
		return;
	}
	copy_str(app.rename, sizeof(app.rename), s->name[0] ? s->name : s->title);
	app.rename_len = strlen(app.rename);
	app.mode = M_RENAME;
	ui_dirty();
}

static void act_help(const union arg *arg)	/* ? */
{
	(void)arg;
	app.mode = M_HELP;
	ui_dirty();
}

static void quit_now(void)	/* leaves the loop; main cleans up */
{
	app.quit = 1;
	lws_cancel_service(app.ctx);
}

static void act_quit(const union arg *arg)	/* q */
{
	int live = 0;

	(void)arg;
	for (struct tunnel *t = app.tunnels; t; t = t->next)
		for (struct session *s = t->sessions; s; s = s->next)
			live += s->state != S_ENDED;
	if (live)
		confirm(quit_now, "%d session%s live. Quit?", live, live == 1 ? " is" : "s are");
	else
		quit_now();
}

static void act_send_prefix(const union arg *arg)	/* prefix twice */
{
	(void)arg;
	if (session_accepts_input(app.sel_session))
		type_key(app.sel_session, app.prefix_key, 0);
}

static void act_mark(const union arg *arg)	/* m */
{
	(void)arg;
	if (!app.sel_session) {
		flash_msg("select a session to mark it");
		return;
	}
	app.sel_session->marked = !app.sel_session->marked;
	ui_dirty();
}

static void act_broadcast(const union arg *arg)	/* b */
{
	struct session *t[1];

	(void)arg;
	app.broadcast = !app.broadcast;
	app.solo = 0;
	if (app.broadcast && !broadcast_targets(t, 1))
		flash_msg("broadcast is on, but no marked session is live (%s m marks one)",
			  keyname(app.prefix_key));
	ui_dirty();
}

static void act_solo(const union arg *arg)	/* s */
{
	(void)arg;
	if (!app.broadcast)
		flash_msg("solo pauses broadcast: broadcast is off");
	app.solo = app.broadcast && !app.solo;
	ui_dirty();
}

static void act_record(const union arg *arg)	/* R */
{
	struct session *s = app.sel_session;

	(void)arg;
	if (!s)
		flash_msg("select a session to record it");
	else if (s->rec) {
		flash_msg("recording saved: %s", s->rec->path);
		rec_stop(s);
	} else
		rec_start(s);
	ui_dirty();
}

static void act_marker(const union arg *arg)	/* M */
{
	(void)arg;
	if (app.sel_session && app.sel_session->rec)
		rec_marker(app.sel_session);
	else
		flash_msg("markers go into a recording: %s R starts one", keyname(app.prefix_key));
}

/* After the tunnel or device came back: the sessions it lost log in again,
 * at once with a remembered password, else through the login dialog. */
static void reopen_tunnel(struct tunnel *t)
{
	struct session *ask = NULL;

	for (struct session *s = t->sessions; s; s = s->next) {
		if (!s->dropped || s->state != S_ENDED)
			continue;
		if (s->password)
			session_reopen(s, s->password, s->password_len);
		else if (!ask)
			ask = s;
	}
	if (ask) {
		select_session(t, ask);
		open_login(t, ask);
	}
}

static int dropped_sessions(struct tunnel *t, int *remembered)	/* reopenable */
{
	int n = 0;

	*remembered = 0;
	for (struct session *s = t->sessions; s; s = s->next)
		if (s->dropped && s->state == S_ENDED) {
			n++;
			*remembered += s->password != NULL;
		}
	return n;
}

static void reopen_dropped(struct tunnel *t)	/* on connect_tunnel */
{
	int remembered, n = dropped_sessions(t, &remembered);

	if (!n || t->cfg.reopen == REOPEN_NEVER || app.batch)
		return;
	if (t->cfg.reopen == REOPEN_AUTO && remembered == n) {
		reopen_tunnel(t);
		return;
	}
	/* ask: say so where it shows, without a dialog that would eat typing */
	tunnel_event(t, "back: %d lost session%s, %s r reopens", n, n == 1 ? "" : "s",
		     keyname(app.prefix_key));
	flash_msg("%s is back: %s r reopens its %d lost session%s", t->cfg.name,
		  keyname(app.prefix_key), n, n == 1 ? "" : "s");
}

static void act_redraw(const union arg *arg)	/* l */
{
	(void)arg;
	clearok(curscr, TRUE);
	app.redraw = 1;
	ui_dirty();
}

static void key_prefix(int ch, int fn)	/* the key after the prefix */
{
	app.mode = M_NORMAL;
	ui_dirty();
	for (size_t i = 0; i < sizeof(bindings) / sizeof(*bindings); i++)
		if ((bindings[i].fn == act_send_prefix && !fn && ch == app.prefix_key) ||
		    (bindings[i].key && bindings[i].key == ch && (fn || ch < KEY_MIN))) {
			bindings[i].fn(&bindings[i].arg);
			return;
		}
	flash_msg("%s %s is not bound: %s ? lists the keys", keyname(app.prefix_key),
	      fn ? keyname(ch) : unctrl((chtype)ch), keyname(app.prefix_key));
}

static void key_normal(int ch, int fn)	/* everything goes to the session */
{
	struct session *s = app.sel_session;

	struct session *targets[256];
	int n;

	if (!fn && ch == app.prefix_key) {
		app.mode = M_PREFIX;
		ui_dirty();
	} else if (broadcasting()) {
		n = broadcast_targets(targets, 256);
		for (int i = 0; i < n; i++)
			type_key(targets[i], ch, fn);
		if (!n)
			flash_msg("broadcast: no marked session is live; nothing was sent");
	} else if (xfer_key(s, ch, fn)) {	/* a transfer holds the session */
		return;
	} else if (session_accepts_input(s)) {
		type_key(s, ch, fn);
	} else if (!fn && (ch == '\r' || ch == '\n')) {
		(s ? act_reopen : act_new_session)(&(union arg){ 0 });
	} else {
		flash_msg("%s: press Enter or %s n to log in", s ? "this session has ended" :
		      "no session here", keyname(app.prefix_key));
	}
}

static void login_submit(void)	/* Enter in the login dialog */
{
	struct dialog *d = &app.dlg;
	struct session *s = d->reopen;
	struct tunnel *t = d->tunnel;

	if (!d->user[0]) {
		flash_msg("enter a user name");
		return;
	}
	if (tunnel_single(t))	/* the device replaces its session silently */
		for (struct session *o = t->sessions; o; o = o->next)
			if (o != s && o->state != S_ENDED)
				session_end(o, "", "replaced by a newer login: this device runs one session at a time");
	if (s) {
		copy_str(s->user, sizeof(s->user), d->user);
		session_reopen(s, d->password, d->password_len);
	} else {
		s = session_new(t, d->user);
		session_login(s, d->password, d->password_len);
	}
	explicit_bzero(d->password, 1024);
	d->password_len = 0;
	app.mode = M_NORMAL;
	select_session(t, s);
}


static void field_add(int ch)	/* a character into the focused field */
{
	struct dialog *d = &app.dlg;
	char mb[MB_LEN_MAX];
	int n = wctomb(mb, (wchar_t)ch);
	size_t ulen = strlen(d->user);

	if (n <= 0)
		return;
	if (d->field == 0 && ulen + (size_t)n < sizeof(d->user)) {
		memcpy(d->user + ulen, mb, (size_t)n);
		d->user[ulen + (size_t)n] = '\0';	/* an erased field holds old bytes past its end */
	} else if (d->field == 1 && d->password_len + (size_t)n < 1023) {
		memcpy(d->password + d->password_len, mb, (size_t)n);
		d->password_len += (size_t)n;
		d->password[d->password_len] = '\0';
	}
	explicit_bzero(mb, sizeof(mb));
}

static void mask_shuffle(void)	/* a new bullet count, unrelated to the password's length */
{
	static uint32_t x;

	x = x ? x : (uint32_t)now_us() | 1;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	app.dlg.mask = 3 + (int)(x % 6);
}

static void key_login(int ch, int fn)	/* the login dialog */
{
	struct dialog *d = &app.dlg;
	size_t ulen = strlen(d->user);

	if (d->field == 1)
		mask_shuffle();
	if (!fn && ch == 27) {
		explicit_bzero(d->password, 1024);
		d->password_len = 0;
		app.mode = M_NORMAL;
	} else if ((!fn && (ch == '\r' || ch == '\n')) || (fn && ch == KEY_ENTER)) {
		login_submit();
	} else if ((!fn && ch == '\t') || (fn && (ch == KEY_UP || ch == KEY_DOWN || ch == KEY_BTAB))) {
		d->field = !d->field;
	} else if ((!fn && (ch == 127 || ch == 8)) || (fn && ch == KEY_BACKSPACE)) {
		if (d->field)
			field_backspace(d->password, &d->password_len);
		else
			field_backspace(d->user, &ulen);
	} else if (!fn && ch >= 32) {
		field_add(ch);
	}
	ui_dirty();
}

static void key_confirm(int ch, int fn)	/* y or anything else */
{
	if (now_us() < app.dlg.guard_until_us)
		return;
	app.mode = M_NORMAL;
	ui_dirty();
	if (!fn && (ch == 'y' || ch == 'Y') && app.dlg.on_yes)
		app.dlg.on_yes();
	else if (app.dlg.on_no)
		app.dlg.on_no();
}

static void key_help(int ch, int fn)	/* any key closes the help */
{
	(void)ch; (void)fn;
	app.mode = M_NORMAL;
	ui_dirty();
}

/*** the clipboard: what was copied, what a device offers *************/

/* OSC 52 to the outer terminal: the laptop's clipboard, through ssh and
 * tmux alike; too big for terminals to take, it stays for Ctrl-g ]. */
static void clipboard_out(const char *p, size_t n)
{
	unsigned char *b64;
	int len;

	if (app.clipboard_off || n > CLIP_MAX)
		return;
	b64 = xcalloc(4 * ((n + 2) / 3) + 1);
	len = EVP_EncodeBlock(b64, (const unsigned char *)p, (int)n);
	printf("\033]52;c;%.*s\007", len, b64);
	fflush(stdout);
	free(b64);
}

static void clip_take(const char *p, size_t n)	/* the paste buffer and the clipboard */
{
	buf_free(&app.clip);
	buf_append(&app.clip, p, n);
	clipboard_out(p, n);
}

static void offer_accept(void)	/* y: the device's text to the clipboard */
{
	clip_take(app.offer.data.p, app.offer.data.len);
	flash_msg("clipboard set from %s (%zu bytes); %s ] pastes it", app.offer.from,
		  app.offer.data.len, keyname(app.prefix_key));
	buf_free(&app.offer.data);
}

/* Asks once no other dialog is open.  Keys typed for the session in the
 * first moment are not taken as the answer. */
static void offer_ask(void)
{
	char preview[64];

	app.offer.waiting = 0;
	clean_text(preview, sizeof(preview), app.offer.data.p, app.offer.data.len);
	confirm(offer_accept, "%s wants to set your clipboard to %zu bytes: \"%s%s\". Allow it?",
		app.offer.from, app.offer.data.len, preview,
		strlen(preview) < app.offer.data.len ? "…" : "");
	app.dlg.guard_until_us = now_us() + GUARD_US;
}

/* A device's OSC 52 "SELECTION;BASE64": allowed, refused or asked about
 * as remote_clipboard says; a read ("?") is never answered. */
static void clip_offered(struct session *s)
{
	const char *p = s->clip_offer.p, *data = memchr(p, ';', s->clip_offer.len);
	size_t n = data ? s->clip_offer.len - (size_t)(++data - p) : 0;
	struct buf text = { 0 };

	if (!data || (n == 1 && *data == '?'))
		log_line("%s: a request to read the clipboard, not answered", tunnel_name(s));
	else if (base64_decode(data, n, &text) < 0)
		flash_msg("%s sent a clipboard that is not base64: ignored", tunnel_name(s));
	else if (app.remote_clipboard == CLIP_DENY)
		flash_msg("%s tried to set your clipboard: refused (remote_clipboard = deny)", tunnel_name(s));
	else if (app.remote_clipboard == CLIP_ALLOW)
		clip_take(text.p ? text.p : "", text.len);
	else {
		buf_free(&app.offer.data);
		app.offer.data = text;
		text = (struct buf){ 0 };
		snprintf(app.offer.from, sizeof(app.offer.from), "%s", tunnel_name(s));
		app.offer.waiting = 1;
		ui_dirty();
	}
	buf_free(&text);
	buf_free(&s->clip_offer);
}

/*** copy mode: a cursor, a selection and search over the history ***/


/* The view scrolls to keep the copy cursor in it. */
static void copy_follow(struct copy *cp)
{
	struct session *s = cp->s;
	int w, h, top, left;

	cp->row = cp->row < 0 ? 0 : cp->row >= history_rows(s) ? history_rows(s) - 1 : cp->row;
	cp->col = cp->col < 0 ? 0 : cp->col >= s->cols ? s->cols - 1 : cp->col;
	pane_size(&w, &h);
	pane_origin(s, w, h, &top, &left);
	if (cp->row < top)
		s->scroll += top - cp->row;
	else if (cp->row >= top + h)
		s->scroll -= cp->row - (top + h - 1);
	s->scroll = s->scroll < 0 ? 0 : s->scroll > s->sb_count ? s->sb_count : s->scroll;
	ui_dirty();
}

static void copy_enter(struct session *s)	/* the cursor where the terminal's is */
{
	struct pos cur;

	cur = (struct pos){ s->vt.row, s->vt.col };
	app.copy = (struct copy){ s, s->sb_count + cur.row, cur.col, SEL_NONE, 0, 0, 0 };
	app.mode = M_COPY;
	ui_dirty();
}

static void copy_leave(struct copy *cp, int arg)	/* back to the live terminal */
{
	(void)arg;
	if (cp->s)
		cp->s->scroll = 0;
	cp->s = NULL;
	app.mode = M_NORMAL;
	ui_dirty();
}

typedef void copy_fn(struct copy *cp, int arg);	/* every copy-mode key, one signature */
enum { PAGE = 10000, HALF = 20000 };		/* copy_rows: by the pane's height */

static void copy_cols(struct copy *cp, int arg)	/* h l */
{
	cp->col += arg;
	copy_follow(cp);
}

static void copy_rows(struct copy *cp, int arg)	/* j k, pages, half pages */
{
	int w, h;

	pane_size(&w, &h);
	cp->row += abs(arg) == PAGE ? (arg > 0 ? h : -h) : abs(arg) == HALF ? (arg > 0 ? h / 2 : -h / 2) : arg;
	copy_follow(cp);
}

static int cell_is_word(const struct session *s, int vr, int col)	/* not a blank */
{
	int n;
	const struct cell *c = history_cells(s, vr, &n);

	return col < n && c[col].ch && c[col].ch != ' ';
}

/* w, b, e: the next word's start, this or the previous word's start, this
 * or the next word's end; across rows. */
static void copy_word(struct copy *cp, int arg)
{
	struct session *s = cp->s;
	int r = cp->row, c = cp->col, last = history_rows(s) - 1, cols = s->cols;
	int end = arg == 0, dir = arg < 0 ? -1 : 1, was;

#define STEP() do { c += dir; if (c >= cols) { if (r == last) { c = cols - 1; break; } r++; c = 0; } \
		    else if (c < 0) { if (r == 0) { c = 0; break; } r--; c = cols - 1; } } while (0)
	if (end || dir < 0) {
		STEP();
		while (!cell_is_word(s, r, c) && !(r == (dir < 0 ? 0 : last) && c == (dir < 0 ? 0 : cols - 1)))
			STEP();
		while (cell_is_word(s, r, c) && c + dir >= 0 && c + dir < cols && cell_is_word(s, r, c + dir))
			c += dir;
	} else {
		was = cell_is_word(s, r, c);
		while (was && cell_is_word(s, r, c) && !(r == last && c == cols - 1))
			STEP();
		while (!cell_is_word(s, r, c) && !(r == last && c == cols - 1))
			STEP();
	}
#undef STEP
	cp->row = r;
	cp->col = c;
	copy_follow(cp);
}

static void copy_line_edge(struct copy *cp, int arg)	/* 0 start, 1 end of text, 2 first word */
{
	int n, i = 0;
	const struct cell *c = history_cells(cp->s, cp->row, &n);

	if (arg == 1)
		for (i = n - 1; i > 0 && (!c[i].ch || c[i].ch == ' '); i--)
			;
	else if (arg == 2)
		while (i < n - 1 && (!c[i].ch || c[i].ch == ' '))
			i++;
	cp->col = i;
	copy_follow(cp);
}

static void copy_history_edge(struct copy *cp, int arg)	/* g, G */
{
	cp->row = arg ? history_rows(cp->s) - 1 : 0;
	copy_follow(cp);
}

static void copy_view(struct copy *cp, int arg)	/* H M L: top, middle, bottom of the view */
{
	int w, h, top, left;

	pane_size(&w, &h);
	pane_origin(cp->s, w, h, &top, &left);
	cp->row = top + (arg == 0 ? 0 : arg == 1 ? h / 2 : h - 1);
	copy_follow(cp);
}

static void copy_select(struct copy *cp, int arg)	/* begin, change or end a selection */
{
	if (cp->sel == (enum sel)arg) {
		cp->sel = SEL_NONE;
	} else {
		if (cp->sel == SEL_NONE) {
			cp->arow = cp->row;
			cp->acol = cp->col;
		}
		cp->sel = (enum sel)arg;
	}
	ui_dirty();
}

static void copy_yank(struct copy *cp, int arg)	/* y, Enter: copy and leave */
{
	struct buf text = { 0 };

	if (cp->sel == SEL_NONE) {
		flash_msg("nothing selected: Space or v starts a selection, V a line, ^V a rectangle");
		return;
	}
	buf_append(&text, "", 0);
	selection_text(cp->s, cp, &text);
	clip_take(text.p, text.len);
	buf_free(&text);
	flash_msg("copied %zu bytes%s; %s ] pastes them", app.clip.len, app.clipboard_off ? "" :
		  app.clip.len > CLIP_MAX ? " (too many for the clipboard)" : " to the clipboard",
		  keyname(app.prefix_key));
	copy_leave(cp, arg);
}

static void copy_cancel(struct copy *cp, int arg)	/* q, Esc: a selection first, then the mode */
{
	if (cp->sel != SEL_NONE) {
		cp->sel = SEL_NONE;
		ui_dirty();
	} else {
		copy_leave(cp, arg);
	}
}

static void copy_search_start(struct copy *cp, int arg)	/* /: type the text */
{
	(void)cp;
	(void)arg;
	app.mode = M_SEARCH;
	app.search_len = 0;
	app.search[0] = '\0';
}

/* n (and Enter after /): the match above the cursor (or earlier on its
 * row), the cursor on its first character. */
static void copy_search(struct copy *cp, int arg)
{
	char text[4096];
	int col_at[4096];

	(void)arg;
	for (int vr = cp->row; vr >= 0 && app.search_len; vr--) {
		char *m = NULL, *from = text;

		row_text_cols(cp->s, vr, text, sizeof(text), col_at);
		for (char *f; (f = strstr(from, app.search)) && (vr < cp->row || col_at[f - text] < cp->col); from = f + 1)
			m = f;
		if (m) {
			cp->row = vr;
			cp->col = col_at[m - text];
			copy_follow(cp);
			return;
		}
	}
	flash_msg("\"%s\" not found above", app.search);
}

/* Copy mode's keys: vi's and emacs's, as tmux's copy mode has them. */
static const struct copy_key { int key, fn; copy_fn *act; int arg; } copy_keys[] = {
	{ 'h', 0, copy_cols, -1 }, { KEY_LEFT, 1, copy_cols, -1 }, { 2, 0, copy_cols, -1 },
	{ 'l', 0, copy_cols, +1 }, { KEY_RIGHT, 1, copy_cols, +1 }, { 6, 0, copy_cols, +1 },
	{ 'k', 0, copy_rows, -1 }, { KEY_UP, 1, copy_rows, -1 }, { 16, 0, copy_rows, -1 },
	{ 'j', 0, copy_rows, +1 }, { KEY_DOWN, 1, copy_rows, +1 }, { 14, 0, copy_rows, +1 },
	{ KEY_PPAGE, 1, copy_rows, -PAGE }, { KEY_NPAGE, 1, copy_rows, +PAGE },
	{ 21, 0, copy_rows, -HALF }, { 4, 0, copy_rows, +HALF },
	{ 'w', 0, copy_word, +1 }, { 'b', 0, copy_word, -1 }, { 'e', 0, copy_word, 0 },
	{ '0', 0, copy_line_edge, 0 }, { KEY_HOME, 1, copy_line_edge, 0 }, { 1, 0, copy_line_edge, 0 },
	{ '$', 0, copy_line_edge, 1 }, { KEY_END, 1, copy_line_edge, 1 }, { 5, 0, copy_line_edge, 1 },
	{ '^', 0, copy_line_edge, 2 },
	{ 'g', 0, copy_history_edge, 0 }, { 'G', 0, copy_history_edge, 1 },
	{ 'H', 0, copy_view, 0 }, { 'M', 0, copy_view, 1 }, { 'L', 0, copy_view, 2 },
	{ ' ', 0, copy_select, SEL_CHAR }, { 'v', 0, copy_select, SEL_CHAR }, { 0, 0, copy_select, SEL_CHAR },
	{ 'V', 0, copy_select, SEL_LINE }, { 22, 0, copy_select, SEL_RECT }, { 'r', 0, copy_select, SEL_RECT },
	{ 'y', 0, copy_yank, 0 }, { '\r', 0, copy_yank, 0 }, { '\n', 0, copy_yank, 0 },
	{ KEY_ENTER, 1, copy_yank, 0 },
	{ 'q', 0, copy_cancel, 0 }, { 27, 0, copy_cancel, 0 }, { 7, 0, copy_cancel, 0 },
	{ '/', 0, copy_search_start, 0 }, { 'n', 0, copy_search, 0 },
};

static void key_copy(int ch, int fn)	/* copy mode: its keys table */
{
	if (!app.copy.s || app.copy.s != app.sel_session) {
		copy_leave(&app.copy, 0);
		return;
	}
	for (size_t i = 0; i < sizeof(copy_keys) / sizeof(*copy_keys); i++)
		if (copy_keys[i].key == ch && copy_keys[i].fn == !!fn) {
			copy_keys[i].act(&app.copy, copy_keys[i].arg);
			return;
		}
}

/* A one-line text field: Backspace erases a character, printable keys
 * are added.  Returns 1 if the key was the field's. */
static int field_type(char *text, size_t cap, size_t *len, int ch, int fn)
{
	char mb[MB_LEN_MAX];
	int n;

	if ((!fn && (ch == 127 || ch == 8)) || (fn && ch == KEY_BACKSPACE)) {
		field_backspace(text, len);
		return 1;
	}
	if (fn || ch < 32 || (n = wctomb(mb, (wchar_t)ch)) <= 0)
		return 0;
	if (*len + (size_t)n < cap) {
		memcpy(text + *len, mb, (size_t)n);
		*len += (size_t)n;
		text[*len] = '\0';
	}
	return 1;
}

static void key_search(int ch, int fn)	/* typing the search text */
{
	if (!fn && (ch == '\r' || ch == '\n')) {
		app.mode = M_COPY;
		if (app.copy.s)
			copy_search(&app.copy, 0);
	} else if (!fn && ch == 27) {
		app.mode = M_COPY;
	} else {
		field_type(app.search, sizeof(app.search), &app.search_len, ch, fn);
	}
	ui_dirty();
}

/*** the mouse: the list, the pane, and remote programs that ask for it */

/* "B;X;Y" and M or m (SGR 1006, after "\e[<"), NUL-terminated. */
static int mouse_parse_sgr(const char *p, struct mouse *m)
{
	int b, x, y, end = 0;
	char fin;

	if (sscanf(p, "%d;%d;%d%c%n", &b, &x, &y, &fin, &end) != 4 || p[end] ||
	    (fin != 'M' && fin != 'm') || b < 0 || x < 1 || y < 1)
		return 0;
	*m = (struct mouse){ b & ~MB_MODS, x - 1, y - 1, fin == 'M', b & MB_MODS };
	return 1;
}

/* Three bytes after "\e[M" (X10, for terminals without SGR): each + 32. */
static int mouse_parse_x10(const unsigned char *p, struct mouse *m)
{
	int b = p[0] - 32;

	if (p[0] < 32 || p[1] < 33 || p[2] < 33)
		return 0;
	*m = (struct mouse){ b & ~MB_MODS, p[1] - 33, p[2] - 33, (b & 3) != 3 || (b & MB_WHEEL), b & MB_MODS };
	return 1;
}

static int list_row_at(int y, struct row *out)	/* the list row drawn on line y */
{
	int n, sel, at = app.list_top > 0, i, hit = 0;
	struct row *rows = list_snapshot(&n, &sel);

	if (y < at && app.list_top > 0 && app.list_top <= n) {	/* ▲: the row above */
		*out = rows[app.list_top - 1];
		hit = 1;
	}
	for (i = app.list_top; !hit && i < n && y >= at; at += rows[i++].h)
		if (y < at + rows[i].h || (i + 1 < n && y == at + rows[i].h &&
					   at + rows[i].h + rows[i + 1].h + (i + 1 < n - 1) > LINES - 1)) {
			*out = rows[y < at + rows[i].h ? i : i + 1];	/* or ▼: the row below */
			hit = 1;
		}
	free(rows);
	return hit;
}

static void mouse_list(const struct mouse *m)	/* click selects, the wheel moves */
{
	struct row r;

	if (m->button & MB_WHEEL)
		act_move(&(union arg){ .i = m->button & 1 ? +1 : -1 });
	else if (m->press && !(m->button & MB_MOTION) && (m->button & 3) == 0 && list_row_at(m->y, &r)) {
		if (app.mode == M_COPY)
			copy_leave(&app.copy, 0);
		select_session(r.t, r.s);
	}
}

/* To a remote program that asked for the mouse, encoded as it asked
 * (X10, UTF-8, SGR or urxvt coordinates).  Shift keeps it here. */
static int mouse_remote(struct session *s, const struct mouse *m, int vr, int col)
{
	int row = vr - s->sb_count, code = m->button, motion = m->button & MB_MOTION;

	if (!s->vt.mouse || app.mode != M_NORMAL || (m->mods & 4) || s->scroll || !session_accepts_input(s) ||
	    row < 0 || row >= s->rows || col >= s->cols)
		return 0;
	if ((code & 3) == 3 && !(code & MB_WHEEL) && !motion)
		code = (code & ~3) | app.click.button;	/* X10 reports say release, not which */
	if (!motion || s->vt.mouse == MOUSE_MOVE || (s->vt.mouse == MOUSE_DRAG && app.click.s == s))
		vt_mouse_report(s, code | m->mods, m->press || (code & MB_WHEEL), row, col);
	return 1;
}

/* The wheel scrolls the history (copy mode, left again at the end when
 * the wheel brought it); the copy cursor stays in view. */
static void mouse_wheel(struct session *s, int up)
{
	struct copy *cp = &app.copy;
	int w, h, top, left;

	if (app.mode != M_COPY) {
		if (!up || !s->sb_count)
			return;
		copy_enter(s);
		cp->by_mouse = 1;
	}
	s->scroll += up ? MOUSE_WHEEL_LINES : -MOUSE_WHEEL_LINES;
	s->scroll = s->scroll < 0 ? 0 : s->scroll > s->sb_count ? s->sb_count : s->scroll;
	pane_size(&w, &h);
	pane_origin(s, w, h, &top, &left);
	cp->row = cp->row < top ? top : cp->row >= top + h ? top + h - 1 : cp->row;
	if (!s->scroll && cp->by_mouse && cp->sel == SEL_NONE)
		copy_leave(cp, 0);
	ui_dirty();
}

static void select_word_at(struct copy *cp)	/* a double click */
{
	while (cp->acol > 0 && cell_is_word(cp->s, cp->row, cp->acol - 1))
		cp->acol--;
	while (cp->col + 1 < cp->s->cols && cell_is_word(cp->s, cp->row, cp->col + 1))
		cp->col++;
	cp->sel = SEL_CHAR;
}

/* Left button in the pane: a drag selects (copy mode from its first move),
 * a double click a word, a triple click the line; the release copies. */
static void mouse_select(struct session *s, const struct mouse *m, int vr, int col)
{
	struct copy *cp = &app.copy;

	if (!(m->button & MB_MOTION) && m->press) {
		if (app.mode != M_COPY && app.click.clicks < 2)
			return;	/* a click alone changes nothing; a drag or a double click starts */
		if (app.mode != M_COPY) {
			copy_enter(s);
			cp->by_mouse = 1;
		}
		*cp = (struct copy){ s, vr, col, app.click.clicks == 3 ? SEL_LINE : SEL_NONE, vr, col, cp->by_mouse };
		if (app.click.clicks == 2)
			select_word_at(cp);
	} else if (m->press && app.click.s == s) {	/* a drag */
		if (app.mode != M_COPY) {
			copy_enter(s);
			*cp = (struct copy){ s, app.click.vr, app.click.col, SEL_NONE, app.click.vr, app.click.col, 1 };
		}
		cp->sel = cp->sel == SEL_NONE ? SEL_CHAR : cp->sel;
		cp->by_mouse = 1;
		cp->row = vr;
		cp->col = col;
	} else if (!m->press && app.mode == M_COPY && cp->s == s && cp->by_mouse && cp->sel != SEL_NONE) {
		copy_yank(cp, 0);
		return;
	}
	if (app.mode == M_COPY)
		copy_follow(cp);
}

/* Clicks counted at one cell; where a press in the pane began. */
static void mouse_count_click(const struct mouse *m, struct session *s, int vr, int col)
{
	int64_t now = now_us();
	int again = m->x == app.click.x && m->y == app.click.y && now - app.click.at_us < DOUBLE_CLICK_US;

	app.click.clicks = again && app.click.clicks < 3 ? app.click.clicks + 1 : 1;
	app.click.button = m->button & 3;
	app.click.x = m->x;
	app.click.y = m->y;
	app.click.at_us = now;
	app.click.s = s;
	app.click.vr = vr;
	app.click.col = col;
}

/* A press, drag or release in the pane, at history row vr: a drag at its
 * top or bottom edge goes one row beyond, and copy mode scrolls there. */
static void mouse_pane(struct session *s, const struct mouse *m)
{
	int w, h, top, left, vr, col, y = m->y;

	pane_size(&w, &h);
	pane_origin(s, w, h, &top, &left);
	if (app.mode == M_COPY && (m->button & MB_MOTION))
		y = y <= 0 ? -1 : y >= h - 1 ? h : y;
	vr = top + (y < h ? y : h);
	col = left + m->x - list_width();
	col = col < 0 ? 0 : col >= s->cols ? s->cols - 1 : col;
	if (m->press && !(m->button & (MB_MOTION | MB_WHEEL)))
		mouse_count_click(m, s, vr, col);
	if (mouse_remote(s, m, vr, col))
		return;
	if (m->button & MB_WHEEL)
		mouse_wheel(s, !(m->button & 1));
	else if ((m->button & 3) == 1 && m->press && !(m->button & MB_MOTION))
		act_paste_copied(NULL);
	else if ((m->button & 3) == 0 || (!m->press && (m->button & 3) == 3))
		mouse_select(s, m, vr, col);
}

static void mouse_event(const struct mouse *m)	/* where it happened decides */
{
	if (app.mouse_off || (app.mode != M_NORMAL && app.mode != M_COPY))
		return;
	if (!m->press && !(m->button & MB_WHEEL) && app.click.s && app.sel_session == app.click.s) {
		mouse_pane(app.click.s, m);	/* a release belongs to where it was pressed */
		app.click.s = NULL;
	} else if (!app.zoom && m->x < app.list_w) {
		mouse_list(m);
	} else if (m->x >= list_width() && app.sel_session && m->y < LINES - 1) {
		mouse_pane(app.sel_session, m);
	}
}

static void filter_jump(void)	/* the selection to the first row the filter shows */
{
	int n, sel;
	struct row *rows = list_snapshot(&n, &sel);

	if (n && !(rows[sel].t == app.sel_tunnel && rows[sel].s == app.sel_session))
		select_session(rows[0].t, rows[0].s);
	free(rows);
}

static void filter_end(int keep)	/* Enter: stay on the match; Esc: back */
{
	if (!keep)
		select_session(app.filter_from.t, app.filter_from.s);
	app.filter_len = 0;
	app.filter[0] = '\0';
	app.mode = M_NORMAL;
	ui_dirty();
}

/* Ctrl-g /: the list shows only devices and sessions whose name, id, user
 * or title holds the text typed; arrows choose, Enter jumps there. */
static void key_filter(int ch, int fn)
{
	if (!fn && (ch == '\r' || ch == '\n'))
		filter_end(1);
	else if (!fn && ch == 27)
		filter_end(0);
	else if (fn && (ch == KEY_UP || ch == KEY_DOWN))
		act_move(&(union arg){ .i = ch == KEY_UP ? -1 : +1 });
	else if (field_type(app.filter, sizeof(app.filter), &app.filter_len, ch, fn))
		filter_jump();
	ui_dirty();
}

static void key_rename(int ch, int fn)	/* typing a session's name */
{
	struct session *s = app.sel_session;

	if (!fn && (ch == '\r' || ch == '\n') && s)
		clean_text(s->name, sizeof(s->name), app.rename, app.rename_len);
	if (!fn && (ch == '\r' || ch == '\n' || ch == 27))
		app.mode = M_NORMAL;
	else
		field_type(app.rename, sizeof(app.rename), &app.rename_len, ch, fn);
	ui_dirty();
}

static void pick_open_chosen(void)	/* after a question, or at once */
{
	struct pick *p = pick_by_id(picker.asked);
	struct tunnel *t;

	if (!p)
		return;
	t = tunnel_add_by_id(p->id, p->name);
	select_session(t, NULL);
	tunnel_start(t);
	app.mode = M_NORMAL;
}

/* Enter in the picker: a device open here already is selected; one that
 * is not online, or whose tunnel another console holds, asks first. */
static void pick_open(struct pick *p)
{
	struct tunnel *t = tunnel_of_device(p->id);

	copy_str(picker.asked, sizeof(picker.asked), p->id);
	if (t) {
		select_session(t, t->sessions);
		app.mode = M_NORMAL;
	} else if (strcmp(p->status, "ONLINE")) {
		confirm(pick_open_chosen, "%s is %s: a tunnel made now waits for it. Open anyway?",
			p->name, p->status);
	} else if (strstr(p->tunnel, "in use")) {
		confirm(pick_open_chosen, "Another console holds the tunnel to %s (IoTDA keeps one a "
			"device): opening takes it over. Open anyway?", p->name);
	} else {
		pick_open_chosen();
	}
	ui_dirty();
}

static void key_picker(int ch, int fn)	/* the device picker */
{
	int idx[picker.n + 1], n = pick_view(idx), page = LINES - 8;

	if (!fn && ch == 27)
		app.mode = M_NORMAL;
	else if (!fn && (ch == '\r' || ch == '\n') && n)
		pick_open(&picker.devs[idx[picker.sel < n ? picker.sel : 0]]);
	else if (!fn && ch == 0x12)	/* ^R */
		picker_load();
	else if (fn && (ch == KEY_UP || ch == KEY_DOWN || ch == KEY_PPAGE || ch == KEY_NPAGE)) {
		picker.sel += ch == KEY_UP ? -1 : ch == KEY_DOWN ? 1 : ch == KEY_PPAGE ? -page : page;
		picker.sel = picker.sel < 0 ? 0 : picker.sel >= n ? (n ? n - 1 : 0) : picker.sel;
	} else if (field_type(picker.filter, sizeof(picker.filter), &picker.filter_len, ch, fn)) {
		picker.sel = picker.top = 0;
	}
	n = pick_view(idx);
	if (app.mode == M_PICK && n)	/* who holds its tunnel, once the highlight rests */
		picker_highlight(&picker.devs[idx[picker.sel < n ? picker.sel : 0]]);
	ui_dirty();
}

static void (*const mode_keys[M_MODES])(int ch, int fn) = {	/* key handling per mode */
	[M_NORMAL] = key_normal, [M_PREFIX] = key_prefix, [M_LOGIN] = key_login,
	[M_CONFIRM] = key_confirm, [M_COPY] = key_copy, [M_SEARCH] = key_search,
	[M_HELP] = key_help, [M_FILTER] = key_filter, [M_PICK] = key_picker, [M_RENAME] = key_rename,
	[M_XFER] = key_xfer,
};

static void paste_into(struct session *s, const char *p, size_t n);

static void paste_pending(void)	/* "yes": the held paste to every target */
{
	struct session *targets[256];
	int n = broadcast_targets(targets, 256);

	for (int i = 0; i < n; i++)
		paste_into(targets[i], app.pending_paste.p, app.pending_paste.len);
	buf_free(&app.pending_paste);
}

/* A multi-line paste to several sessions asks first (it runs commands). */
static void paste_broadcast(const char *p, size_t n)
{
	struct session *targets[256];
	int k = broadcast_targets(targets, 256), lines = 0;

	for (size_t i = 0; i < n; i++)	/* terminals paste line ends as \r or \n */
		lines += p[i] == '\r' || (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'));
	buf_free(&app.pending_paste);
	buf_append(&app.pending_paste, p, n);
	if (k > 1 && lines)
		confirm(paste_pending, "Paste %d lines into %d sessions?",
			lines + (p[n - 1] != '\n' && p[n - 1] != '\r'), k);
	else
		paste_pending();
}

/* A bracketed paste from the outer terminal, delivered whole: into the
 * session (bracketed if the remote asked), or into the focused field. */
static void paste_done(const char *p, size_t n)
{
	if (app.mode == M_LOGIN || app.mode == M_SEARCH || app.mode == M_XFER) {
		wchar_t wc;
		mbstate_t st = { 0 };

		for (size_t k; n && (k = mbrtowc(&wc, p, n, &st)) > 0 && k <= n; p += k, n -= k)
			if (wc >= 32)
				mode_keys[app.mode](wc, 0);
		return;
	}
	if (app.mode != M_NORMAL)
		return;
	if (broadcasting())
		paste_broadcast(p, n);
	else if (session_accepts_input(app.sel_session))
		paste_into(app.sel_session, p, n);
}

/* A paste into one session, framed as the remote asked (bracketed paste). */
static void paste_into(struct session *s, const char *p, size_t n)
{
	struct buf body = { 0 };
	int bracketed = !!(s->vt.modes & VT_PASTE);

	buf_append(&body, "\033[200~", bracketed ? 6 : 0);
	for (size_t i = 0; i < n; i++)	/* as xterm pastes: newlines become CR */
		buf_append(&body, p[i] == '\n' ? "\r" : &p[i], 1);
	buf_append(&body, "\033[201~", bracketed ? 6 : 0);
	if (session_paste(s, body.p, body.len) < 0)
		flash_msg("paste of %zu bytes to %s refused: too much is waiting to be sent",
			  n, tunnel_name(s));
	buf_free(&body);
}

static void key_in(int ch, int fn);

static void esc_flush(void)	/* a held escape sequence turned out to be keys */
{
	int n = app.esc_len;

	app.esc_len = 0;
	for (int i = 0; i < n; i++)
		mode_keys[app.mode]((unsigned char)app.esc_seq[i], 0);
}

static int paste_byte(int ch)	/* inside a paste: collect until its end marker */
{
	static const char end[] = "\033[201~";
	char mb[MB_LEN_MAX];
	int n = wctomb(mb, (wchar_t)ch);
	struct buf *b = &app.paste_buf;

	if (n > 0)
		buf_append(b, mb, (size_t)n);
	if (b->len < 6 || memcmp(b->p + b->len - 6, end, 6))
		return 0;
	app.paste = 0;
	paste_done(b->p, b->len - 6);
	buf_free(b);
	return 1;
}

/* A held escape sequence: a bracketed paste's start, a mouse report
 * (SGR "\e[<B;X;YM", X10 "\e[M" and 3 bytes), or keys after all. */
static void esc_more(int ch)
{
	static const char paste[] = "\033[200~";
	struct mouse m;
	int sgr = app.esc_len >= 3 && !memcmp(app.esc_seq, "\033[<", 3);
	int x10 = app.esc_len >= 3 && !memcmp(app.esc_seq, "\033[M", 3);

	app.esc_seq[app.esc_len++] = (char)ch;
	app.esc_seq[app.esc_len] = '\0';
	if (sgr && (ch == 'M' || ch == 'm')) {
		app.esc_len = 0;
		if (mouse_parse_sgr(app.esc_seq + 3, &m))
			mouse_event(&m);
	} else if (x10 && app.esc_len == 6) {
		app.esc_len = 0;
		if (mouse_parse_x10((const unsigned char *)app.esc_seq + 3, &m))
			mouse_event(&m);
	} else if (sgr || (x10 && app.esc_len < 6)) {
		if ((!isdigit(ch) && ch != ';' && sgr) || app.esc_len >= (int)sizeof(app.esc_seq) - 1)
			esc_flush();
	} else if (!memcmp(app.esc_seq, paste, (size_t)app.esc_len)) {
		if (app.esc_len == 6) {
			app.esc_len = 0;
			app.paste = 1;
		}
	} else if (app.esc_len > 3 || (app.esc_len == 3 && ch != '<' && ch != 'M')) {
		esc_flush();
	}
}

/* One key from curses.  Escape sequences are held just long enough to tell
 * a bracketed paste or a mouse report from keys; curses may have taken a
 * report's start as KEY_MOUSE (kmous), its rest follows as keys. */
static void key_in(int ch, int fn)
{
	if (app.paste && !fn) {
		paste_byte(ch);
		return;
	}
	if (fn && ch == KEY_MOUSE) {
		const char *kmous = tigetstr("kmous");
		int sgr = kmous && kmous != (char *)-1 && strstr(kmous, "[<");

		esc_flush();
		memcpy(app.esc_seq, sgr ? "\033[<" : "\033[M", 3);
		app.esc_len = 3;
		return;
	}
	if (!fn && (app.esc_len || ch == 27) && ch < 128 + 128 * (app.esc_len >= 3 && app.esc_seq[2] == 'M')) {
		esc_more(ch);
		return;
	}
	esc_flush();
	mode_keys[app.mode](ch, fn);
}

static void tty_readable(void)	/* drains every key curses has */
{
	wint_t wc;
	int r, keys = 0, avail = 0;

	while ((r = wget_wch(stdscr, &wc)) != ERR) {
		keys++;
		if (!(r == KEY_CODE_YES && wc == KEY_RESIZE))
			key_in((int)wc, r == KEY_CODE_YES);
	}
	if (!app.paste)
		esc_flush();
	if (!keys && ioctl(0, FIONREAD, &avail) == 0 && avail == 0) {
		log_line("the terminal went away");	/* readable with nothing: EOF */
		app.exit_code = 1;
		quit_now();
	}
}

/************************************************************************
 *** 12. batch exec: one command on many devices, no screen (--exec)
 ************************************************************************/

struct batch_job {	/* one device's run of the command */
	struct tunnel *tunnel;
	struct session *session;
	int sent;			/* the command line has been typed */
	int begun;			/* its begin marker has been seen */
	int done;
	const char *status;		/* ok, failed, timeout, login failed, … */
	char detail[160];
	int exit_code;			/* -1: never learned */
	int64_t start_us, end_us;
	struct buf pre;			/* output before the begin marker */
	struct buf line;		/* a partial output line */
	struct buf held;		/* the last whole line, shown one line late */
	int has_held;
	FILE *file;			/* --outdir DEVICE.out */
	int started;			/* launched (the governor lets N run at once) */
	int released;			/* its tunnel closed, its slot free */
	lws_sorted_usec_list_t sul_timeout;
	struct xfer *xfer;		/* --put / --get: its transfer, while it runs */
	uint64_t bytes;			/* … verified, or as far as it got */
	char checksum[80];		/* … the whole file's, "sha256:HEX" */
};

enum batch_kind { B_EXEC, B_PUT, B_GET };

struct batch {		/* the whole --exec (--put, --get) run */
	enum batch_kind kind;
	const char *from, *to;		/* --put LOCAL REMOTE, --get REMOTE LOCALDIR */
	int overwrite;			/* --overwrite: files there may be replaced */
	const char *command, *outdir;
	int clean;			/* output to a terminal: cleaned (not --raw) */
	char nonce[20];
	int timeout_s;
	int name_width;
	struct batch_job *jobs;
	int njobs, done;
	int parallel;			/* the governor: at most this many jobs at once */
	int force;			/* --force: devices another tunnel_tui holds too */
	char *password;			/* secret: locked, for logins still to come */
	size_t password_len;
	int progress_tty;		/* stderr is a terminal: progress on one line */
	int64_t progress_us;
	lws_sorted_usec_list_t sul_step;
};

/*
 * The one line typed into each shell.  The command travels as printf %b
 * escapes inside eval, so quotes, newlines and comments in it cannot break
 * the line; it runs in a subshell, so its own exit ends only that; the
 * markers are split in the typed text (__TT_ BEGIN) so the echo of this
 * line never matches them, and the exit status follows END.
 */
static void batch_script(struct buf *b, const char *cmd, const char *nonce)
{
	buf_printf(b, "printf '%%s%%s\\n' __TT_ BEGIN_%s; (eval \"$(printf '%%b' '", nonce);
	for (const char *p = cmd; *p; p++) {
		if (*p == '\\')
			buf_append(b, "\\\\", 2);
		else if (*p == '\'')
			buf_append(b, "\\0047", 5);
		else if (*p == '\n')
			buf_append(b, "\\n", 2);
		else
			buf_append(b, p, 1);
	}
	buf_printf(b, "')\"); printf '\\n%%s%%s:%%d\\n' __TT_ END_%s \"$?\"; exit\r", nonce);
}

static void batch_finish(struct batch_job *j, const char *status, const char *fmt, ...)
{	/* a job's verdict; the last one ends the run */
	va_list ap;

	if (j->done)
		return;
	j->done = 1;
	j->status = status;
	j->end_us = now_us();
	va_start(ap, fmt);
	vsnprintf(j->detail, sizeof(j->detail), fmt, ap);
	va_end(ap);
	lws_sul_cancel(&j->sul_timeout);
	if (j->file)
		fclose(j->file);
	j->file = NULL;
	app.batch->done++;
	batch_kick();	/* its slot goes to the next device, outside this callback */
}

/* One output line.  To a terminal, cleaned like any peer text (a device
 * must not set the clipboard, the title or clear the screen), tabs kept;
 * to --outdir files and with --raw, the bytes as they came. */
static void batch_emit(struct batch_job *j, const char *line, size_t n)
{
	char *clean;

	if (j->file) {
		fwrite(line, 1, n, j->file);
		fputc('\n', j->file);
		return;
	}
	printf("%-*s | ", app.batch->name_width, j->tunnel->cfg.name);
	if (!app.batch->clean) {
		fwrite(line, 1, n, stdout);
		fputc('\n', stdout);
		return;
	}
	clean = xcalloc(n * 4 + 4);	/* a byte becomes at most 4: \x1b */
	for (size_t i = 0, k; i < n; i += k + 1) {
		const char *tab = memchr(line + i, '\t', n - i);

		k = tab ? (size_t)(tab - line) - i : n - i;
		clean_text(clean, n * 4 + 4, line + i, k);
		printf("%s%s", clean, tab ? "\t" : "");
	}
	fputc('\n', stdout);
	free(clean);
}

/* A whole line of command output; the END marker closes the job.  Lines
 * go out one late: the newline before END is the marker's, not output. */
static void batch_line(struct batch_job *j, const char *line, size_t n)
{
	char end[48];
	int len = snprintf(end, sizeof(end), "__TT_END_%s:", app.batch->nonce);

	if (n && line[n - 1] == '\r')
		n--;
	if (n >= (size_t)len && !memcmp(line, end, (size_t)len)) {
		if (j->has_held && j->held.len)
			batch_emit(j, j->held.p, j->held.len);
		j->exit_code = (int)strtol(line + len, NULL, 10);
		if (j->exit_code < 0 || j->exit_code > 255)	/* not a shell's status */
			j->exit_code = 255;
		batch_finish(j, j->exit_code ? "failed" : "ok", "%s", "");
		return;
	}
	if (j->has_held)
		batch_emit(j, j->held.p, j->held.len);
	j->held.len = 0;
	buf_append(&j->held, line, n);
	j->has_held = 1;
}

static void batch_output(struct batch_job *j, const char *p, size_t n)	/* §4.6 bytes */
{
	char begin[48];
	char *nl, *at;

	if (j->done)
		return;
	if (!j->begun) {
		snprintf(begin, sizeof(begin), "__TT_BEGIN_%s\r\n", app.batch->nonce);
		buf_append(&j->pre, p, n);
		if (!(at = memmem(j->pre.p, j->pre.len, begin, strlen(begin)))) {
			if (j->pre.len > strlen(begin))	/* keep only what a marker may start in */
				buf_consume(&j->pre, j->pre.len - strlen(begin));
			return;
		}
		j->begun = 1;
		at += strlen(begin);
		p = at;
		n = j->pre.len - (size_t)(at - j->pre.p);
	}
	buf_append(&j->line, p, n);
	while (!j->done && (nl = memchr(j->line.p, '\n', j->line.len))) {
		batch_line(j, j->line.p, (size_t)(nl - j->line.p));
		buf_consume(&j->line, (size_t)(nl - j->line.p) + 1);
	}
}

/* The shell answered (banner, prompt): type the command line once. */
static void batch_session_output(struct session *s, const char *p, size_t n)
{
	struct batch_job *j = s->job;
	struct buf script = { 0 };

	if (app.batch->kind != B_EXEC)	/* after its transfer: nothing more to do */
		return;
	if (!j->sent) {
		j->sent = 1;
		batch_script(&script, app.batch->command, app.batch->nonce);
		session_queue_keys(s, script.p, script.len);
		buf_free(&script);
	}
	batch_output(j, p, n);
}

static void batch_session_ended(struct session *s, const char *code, const char *msg)
{	/* the shell ended before the END marker: say why */
	struct batch_job *j = s->job;

	if (!strcmp(code, "400"))
		batch_finish(j, "login failed", "%s", msg ? msg : "");
	else if (!j->sent)
		batch_finish(j, "unreachable", "%s%s%s", code, *code ? ": " : "", msg ? msg : "");
	else
		batch_finish(j, "disconnected", "%s: %s", code, msg ? msg : status_meaning(code));
}

/* A device the run cannot reach at all (API refusal, device offline): its
 * job ends at once; the other devices carry on. */
static void batch_tunnel_failed(struct tunnel *t, const char *status, const char *fmt, ...)
{
	char detail[160];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	for (struct session *s = t->sessions; s; s = s->next)
		if (s->job)
			batch_finish(s->job, status, "%s", detail);
}

static void on_batch_timeout(lws_sorted_usec_list_t *sul)	/* --timeout passed */
{
	struct batch_job *j = lws_container_of(sul, struct batch_job, sul_timeout);

	batch_finish(j, "timeout", "no result after %d s", app.batch->timeout_s);
}

/************************************************************************
 *** 13. file transfer: files through the remote shell (Ctrl-g u / d,
 ***     --put, --get)
 ************************************************************************/

/*
 * The tunnel carries keystrokes and terminal output, and not cleanly:
 * official devices cut their output at a NUL byte, messages have a size
 * limit, a tty line holds 4095 bytes.  So a file travels as text that the
 * device's own tools make or take, and the console drives the remote shell
 * with commands only.  It types one line at the prompt that starts a
 * command loop in a POSIX shell (sh -c, whatever the login shell is), then
 * one line a step.  Each reply is a line "=TT<nonce>= KIND ARGS"; the
 * typed text never holds that marker in one piece, so no echo matches.
 *
 *   hello      W, the loop's directory (pwd), P and the tools it found
 *   stat       Q: what the remote path is, its size, the temporary file's
 *   download   g FIRST END GZ: C, each chunk's hash ("i hash" lines), H,
 *              then the run's bytes as one text (base64, hexdump or od;
 *              gzip'd first when that pays) cut into chunks by length, D.
 *              The text goes through cat (encoders write a tty a line at a
 *              time); the console decodes it as it streams
 *   upload     u I N GZ, then N bytes of text (base64 lines, or printf
 *              lines that sh runs): head -c N reads exactly those, dd
 *              writes chunk I in place; A I status, the hash of what the
 *              file now holds there, K I
 *   verify     V, the whole file's sha256 (md5 where that is all), F size
 *              (a download's last run brings it, made while the run
 *              streams); the temporary name is renamed only then (R for an
 *              upload's), on either side
 *
 * A chunk whose hash or length is wrong, or that never came, is asked for
 * (sent) again.  Verified chunks survive a lost session, and the transfer
 * goes on from them when it comes back.  Where stty exists the tty's echo
 * goes off and uploads run several chunks ahead; without it every typed
 * byte is echoed, and a chunk waits for the one before (an echo must not
 * fall between the bytes of a reply).
 */

#define XFER_UP_CHUNK     (128 << 10)	/* upload: raw bytes a chunk */
#define XFER_DOWN_MIN     (64 << 10)	/* download chunks: small files ... */
#define XFER_DOWN_MAX     (1 << 20)	/* ... to large ones (a chunk's hash: two processes there) */
#define XFER_DOWN_CHUNKS  16		/* chunks a file has before they grow */
#define XFER_LINE         2048		/* a typed data line: far inside a tty's 4095 */
#define XFER_WINDOW       (512 << 10)	/* typed, unacknowledged bytes (the agent keeps 1 MiB) */
#define XFER_BOOT_S       15		/* the command loop answers within this */
#define XFER_STALL_S      30		/* a step silent this long: interrupt, resynchronise */
#define XFER_SYNC_US      1000000	/* no output this long: the sync line again */
#define XFER_SYNC_TRIES   10
#define XFER_TRIES        3		/* attempts a chunk; resyncs without progress */
#define XFER_GZ_PERCENT   90		/* gzip a chunk when that leaves at most this */
#define XFER_BATCH_WAIT_S 120		/* --put/--get: a lost tunnel must be back by then */
#define XN(a) (sizeof(a) / sizeof(*(a)))

/*** the device's tools, and what a transfer uses of them ***************/

enum xtool { XT_BASE64, XT_HEXDUMP, XT_OD, XT_MD5, XT_SHA256, XT_GZIP, XT_HEAD, XT_DD,
	     XT_STTY, XT_WC, XT_COUNT };
static const char *const xtool_names[XT_COUNT] = {
	[XT_BASE64] = "base64", [XT_HEXDUMP] = "hexdump", [XT_OD] = "od", [XT_MD5] = "md5sum",
	[XT_SHA256] = "sha256sum", [XT_GZIP] = "gzip", [XT_HEAD] = "head", [XT_DD] = "dd",
	[XT_STTY] = "stty", [XT_WC] = "wc",
};
#define XT(t) (1u << (t))

struct xcodec {		/* one way for file bytes to travel as text */
	unsigned needs;			/* tools it takes on the device */
	const char *shell;		/* the device's end: encoder (download), decoder (upload) */
	int hex;			/* download: hex digits, blanks between; else base64 */
	int script;			/* upload: printf lines run by sh; else base64 lines */
};

static const struct xcodec down_codecs[] = {	/* the fastest first */
	{ XT(XT_BASE64), "base64", 0, 0 },
	{ XT(XT_HEXDUMP), "hexdump -v -e '32/1 \"%02x\" \"\\n\"'", 1, 0 },
	{ XT(XT_OD), "od -An -v -tx1", 1, 0 },
};

static const struct xcodec up_codecs[] = {
	{ XT(XT_BASE64), "base64 -d", 0, 0 },
	{ 0, "sh", 0, 1 },	/* printf with octal escapes: every POSIX shell has it */
};

struct xhash {		/* a checksum both ends compute */
	enum xtool tool;
	const char *name;
	const EVP_MD *(*md)(void);
	int hexlen;
};

static const struct xhash xhashes[] = {	/* the file: the first there; chunks: the last */
	{ XT_SHA256, "sha256", EVP_sha256, 64 },
	{ XT_MD5, "md5", EVP_md5, 32 },
};

struct xplan {		/* what a transfer uses on one device */
	const struct xcodec *codec;
	const struct xhash *file, *chunk;
	int gzip;			/* the device has gzip (the console has zlib) */
	int echo_off;			/* stty: echo off, typing may run ahead */
};

/* The fastest path the tools allow: NULL, or what is missing, in words. */
static const char *xfer_plan(unsigned tools, int up, struct xplan *pl)
{
	const struct xcodec *codecs = up ? up_codecs : down_codecs;
	size_t n = up ? XN(up_codecs) : XN(down_codecs);

	memset(pl, 0, sizeof(*pl));
	for (size_t i = 0; i < n && !pl->codec; i++)
		if ((codecs[i].needs & tools) == codecs[i].needs)
			pl->codec = &codecs[i];
	for (size_t i = 0; i < XN(xhashes); i++)
		if (tools & XT(xhashes[i].tool)) {
			pl->file = pl->file ? pl->file : &xhashes[i];
			pl->chunk = &xhashes[i];
		}
	pl->gzip = !!(tools & XT(XT_GZIP));
	pl->echo_off = !!(tools & XT(XT_STTY));
	if (!pl->file)
		return "neither sha256sum nor md5sum, so nothing could verify the file";
	if (!pl->codec)
		return "none of base64, hexdump and od, so the file cannot travel as text";
	if (!(tools & XT(XT_DD)) || !(tools & XT(XT_WC)) || (up && !(tools & XT(XT_HEAD))))
		return up ? "no dd, head or wc" : "no dd or wc";
	return NULL;
}

static unsigned parse_tools(const char *words)	/* "base64 md5sum …" as a set */
{
	unsigned set = 0;
	char copy[256], *save = NULL;

	copy_str(copy, sizeof(copy), words);
	for (char *w = strtok_r(copy, " ", &save); w; w = strtok_r(NULL, " ", &save))
		for (int i = 0; i < XT_COUNT; i++)
			if (!strcmp(w, xtool_names[i]))
				set |= XT(i);
	return set;
}

/*** typed text: command lines and data (pure) **************************/

static int sh_plain(unsigned char c)	/* typed as itself in a printf format */
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr(" ._/+,:@=", c));	/* never '-': a format must not start with one */
}

static size_t sh_byte(char *out, unsigned char c)	/* one byte of a printf format: itself or \ooo */
{
	if (sh_plain(c)) {
		*out = (char)c;
		return 1;
	}
	out[0] = '\\';
	out[1] = (char)('0' + (c >> 6));
	out[2] = (char)('0' + (c >> 3 & 7));
	out[3] = (char)('0' + (c & 7));
	return 4;
}

/* var=path, however odd its bytes: printf rebuilds them on the device, so
 * the typed line is plain ASCII (an x keeps trailing newlines); a leading
 * ~ is $HOME. */
static void sh_assign(struct buf *b, const char *var, const char *path)
{
	int home = path[0] == '~' && (path[1] == '/' || !path[1]);
	char one[4];

	buf_printf(b, "%s=$(printf '", var);
	for (const char *p = path + home; *p; p++)
		buf_append(b, one, sh_byte(one, (unsigned char)*p));
	buf_printf(b, "x'); %s=%s${%s%%x}; ", var, home ? "\"$HOME\"" : "", var);
}

/* Upload text without base64: lines of printf '…' for sh to run. */
static void printf_lines(struct buf *b, const unsigned char *p, size_t n)
{
	char line[XFER_LINE + 16];
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		if (!o) {
			memcpy(line, "printf '", 8);
			o = 8;
		}
		o += sh_byte(line + o, p[i]);
		if (o > XFER_LINE - 8 || i + 1 == n) {
			memcpy(line + o, "'\n", 2);
			buf_append(b, line, o + 2);
			o = 0;
		}
	}
}

static const char b64_digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Upload text: base64 in lines of XFER_LINE characters, each ending \n. */
static void b64_lines(struct buf *b, const unsigned char *p, size_t n)
{
	char line[XFER_LINE + 8];
	size_t o = 0;

	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);

		line[o++] = b64_digits[v >> 18];
		line[o++] = b64_digits[v >> 12 & 63];
		line[o++] = i + 1 < n ? b64_digits[v >> 6 & 63] : '=';
		line[o++] = i + 2 < n ? b64_digits[v & 63] : '=';
		if (o == XFER_LINE || i + 3 >= n) {
			line[o++] = '\n';
			buf_append(b, line, o);
			o = 0;
		}
	}
}

static int b64_value(unsigned char c)	/* 0-63, 64 for '=', -2 a blank, -1 anything else */
{
	return c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ? c - 'a' + 26 :
	       c >= '0' && c <= '9' ? c - '0' + 52 : c == '+' ? 62 : c == '/' ? 63 : c == '=' ? 64 :
	       c == '\r' || c == '\n' || c == ' ' ? -2 : -1;
}

static int hex_value(unsigned char c)	/* 0-15, -2 a blank, -1 anything else */
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
	       c >= 'A' && c <= 'F' ? c - 'A' + 10 : c == '\r' || c == '\n' || c == ' ' ? -2 : -1;
}

static const signed char *b64_table(void)	/* b64_value of every byte, looked up */
{
	static signed char t[256];
	static int made;

	for (int c = 0; !made && c < 256; c++)
		t[c] = (signed char)b64_value((unsigned char)c);
	made = 1;
	return t;
}

struct xdec {		/* download text to bytes, however the messages cut it */
	int hex;			/* hex digits, else base64 */
	uint32_t v;			/* the bits gathered */
	int k, pad;			/* digits gathered; base64's '=' seen */
	int bad;			/* a character the encoding does not have */
};

static size_t b64_feed(struct xdec *st, const char *s, size_t n, unsigned char *out)	/* bytes out */
{
	const signed char *t = b64_table();
	size_t o = 0;
	int d;

	for (size_t i = 0; i < n && !st->bad; i++) {
		if ((d = t[(unsigned char)s[i]]) == -2)
			continue;
		st->bad = d < 0 || (st->pad && d != 64);
		st->pad += d == 64;
		st->v = st->v << 6 | (d < 0 || d == 64 ? 0 : (uint32_t)d);
		if (++st->k == 4) {
			out[o++] = (unsigned char)(st->v >> 16);
			if (st->pad < 2)
				out[o++] = (unsigned char)(st->v >> 8);
			if (st->pad < 1)
				out[o++] = (unsigned char)st->v;
			st->k = 0;
			st->v = 0;
		}
	}
	return st->bad ? 0 : o;
}

static size_t hex_feed(struct xdec *st, const char *s, size_t n, unsigned char *out)	/* bytes out */
{
	size_t o = 0;
	int d;

	for (size_t i = 0; i < n && !st->bad; i++) {
		if ((d = hex_value((unsigned char)s[i])) == -2)
			continue;
		st->bad = d < 0;
		st->v = st->v << 4 | (uint32_t)(d & 15);
		if (++st->k == 2) {
			out[o++] = (unsigned char)st->v;
			st->k = 0;
			st->v = 0;
		}
	}
	return st->bad ? 0 : o;
}

/* Text in (any piece of it), bytes out: at most n of them.  0 and bad set
 * on a character the encoding does not have. */
static size_t xdec_feed(struct xdec *st, const char *s, size_t n, unsigned char *out)
{
	return (st->hex ? hex_feed : b64_feed)(st, s, n, out);
}


/* gzip's format (the device's gzip -dc reads it): 0, or -1. */
static int gz_pack(const void *p, size_t n, struct buf *out)
{
	z_stream z = { 0 };
	size_t room;
	int r;

	if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		return -1;
	room = deflateBound(&z, (uLong)n);
	buf_reserve(out, room);
	z.next_in = (Bytef *)p;
	z.avail_in = (uInt)n;
	z.next_out = (Bytef *)out->p + out->len;
	z.avail_out = (uInt)room;
	r = deflate(&z, Z_FINISH);
	out->len += z.total_out;
	deflateEnd(&z);
	return r == Z_STREAM_END ? 0 : -1;
}

typedef void bytes_fn(void *ctx, const unsigned char *p, size_t n);

/* gzip'd bytes in (any piece of a stream), what they inflate to out
 * through emit.  0, or -1 on damage or bytes after the stream's end. */
static int gz_stream(z_stream *z, const void *p, size_t n, bytes_fn *emit, void *ctx)
{
	unsigned char out[65536];
	int r;

	z->next_in = (Bytef *)p;
	z->avail_in = (uInt)n;
	do {
		z->next_out = out;
		z->avail_out = sizeof(out);
		r = inflate(z, Z_NO_FLUSH);
		emit(ctx, out, sizeof(out) - z->avail_out);
		if ((r != Z_OK && r != Z_BUF_ERROR && r != Z_STREAM_END) || (r == Z_STREAM_END && z->avail_in))
			return -1;
	} while (r != Z_STREAM_END && !z->avail_out);
	return 0;
}

/*** the command loop's lines (pure) *************************************/

/* Typed at the prompt: ^E ^U clear what the user had typed (line editors
 * and a canonical tty alike); a POSIX shell runs the loop; an INT trap
 * makes ^C stop a step, not the loop.  exec: the loop is the session. */
static void xfer_boot_line(struct buf *b, const char *nonce, int exec)
{
	buf_printf(b, "\005\025 %ssh -c 'N=%s; m() { printf \"\\n=TT%%s= %%s\\n\" \"$N\" \"$*\"; }; ",
		   exec ? "exec " : "", nonce);
	buf_printf(b, "trap \"c=1\" INT; while :; do c=; IFS= read -r l || { [ \"$c\" ] && continue; break; }; "
		   "eval \"$l\"; done'\r");
}

static void xfer_hello_line(struct buf *b, int probe)	/* its directory; its tools, unless known */
{
	buf_printf(b, "m W; pwd; p=");
	if (probe) {
		buf_printf(b, "; for t in");
		for (int i = 0; i < XT_COUNT; i++)
			buf_printf(b, " %s", xtool_names[i]);
		buf_printf(b, "; do command -v $t >/dev/null 2>&1 && p=\"$p $t\"; done");
	}
	buf_printf(b, "; m P$p\n");
}

/* The step functions, once the tools are known: h and H hash a chunk and
 * the file; u writes an upload chunk, g sends a run of download chunks. */
static void xfer_setup_line(struct buf *b, const struct xplan *pl, int up)
{
	const char *c = pl->codec->shell;

	if (pl->echo_off)
		buf_printf(b, "_s=$(stty -g) && stty -echo && trap 'stty \"$_s\"' EXIT; ");
	buf_printf(b, "h() { %s; }; H() { %s; }; ", xtool_names[pl->chunk->tool], xtool_names[pl->file->tool]);
	if (up) {
		buf_printf(b, "d0() { %s; }; d1() { %s | gzip -dc; }; ", c, c);
		buf_printf(b, "u() { head -c $2 | { d$3 2>/dev/null; cat >/dev/null; } | dd of=\"$_t\" bs=$_B "
			   "seek=$1 conv=notrunc 2>/dev/null; m A $1 $?; dd if=\"$_t\" bs=$_B skip=$1 count=1 "
			   "2>/dev/null | h; m K $1; }; ");
	} else {
		buf_printf(b, "e0() { %s; }; e1() { gzip -1c | %s; }; ", c, c);
		buf_printf(b, "g() { m C $1; _i=$1; while [ $_i -lt $2 ] && [ -z \"$c\" ]; do printf '%%s ' $_i; "
			   "dd if=\"$_f\" bs=$_B skip=$_i count=1 2>/dev/null | h; _i=$((_i+1)); done; m H; "
			   "[ -z \"$c\" ] && dd if=\"$_f\" bs=$_B skip=$1 count=$(($2-$1)) 2>/dev/null | e$3 | cat; "
			   "m D; }; ");
	}
}

/* Q for a download: d, n (none), o (other, unreadable) or f, the size,
 * and (gzip) what the first 64 kB compress to. */
static void xfer_stat_down_line(struct buf *b, const char *remote, int gzip)
{
	sh_assign(b, "_f", remote);
	buf_printf(b, "if [ -d \"$_f\" ]; then m Q d 0 0; elif [ -f \"$_f\" ] && [ -r \"$_f\" ]; then "
		   "m Q f $(wc -c <\"$_f\") %s; elif [ -e \"$_f\" ]; then m Q o 0 0; else m Q n 0 0; fi\n",
		   gzip ? "$(dd if=\"$_f\" bs=65536 count=1 2>/dev/null | gzip -1c | wc -c)" : "0");
}

/* Q for an upload: what the target is (n, f, d, o), whether its folder is
 * writable, the temporary file's size (-1: none) and the target's size. */
static void xfer_stat_up_line(struct buf *b, const char *remote, const char *part, const char *dir)
{
	sh_assign(b, "_f", remote);
	sh_assign(b, "_t", part);
	sh_assign(b, "_p", dir);
	buf_printf(b, "k=n; [ -e \"$_f\" ] && k=o; [ -f \"$_f\" ] && k=f; [ -d \"$_f\" ] && k=d; w=0; "
		   "[ -w \"$_p\" ] && w=1; z=-1; [ -f \"$_t\" ] && z=$(wc -c <\"$_t\"); e=0; ");
	buf_printf(b, "[ $k = f ] && e=$(wc -c <\"$_f\"); m Q $k $w $z $e\n");
}

static void xfer_verify_line(struct buf *b, int up, uint64_t size)	/* V, the hash, F size */
{
	if (up)	/* the temporary file cut (or made) to the size first */
		buf_printf(b, "dd if=/dev/null of=\"$_t\" bs=1 seek=%llu 2>/dev/null; ", (unsigned long long)size);
	buf_printf(b, "m V; H <\"$%s\"; m F $(wc -c <\"$%s\")\n", up ? "_t" : "_f", up ? "_t" : "_f");
}

static void xfer_commit_line(struct buf *b, int overwrite)	/* R 0 renamed, 1 failed, 2 exists */
{
	if (!overwrite)
		buf_printf(b, "if [ -e \"$_f\" ]; then m R 2; else ");
	buf_printf(b, "mv -f \"$_t\" \"$_f\" && m R 0 || m R 1%s\n", overwrite ? "" : "; fi");
}

static void xfer_exit_line(struct buf *b, int remove_part)	/* Z, and the loop ends */
{
	buf_printf(b, "%sm Z; exit\n", remove_part ? "rm -f \"$_t\"; " : "");
}

/*** the loop's replies (pure) *******************************************/

/* Finds the loop's reply lines in a session's output: each ends a body
 * (what came since the previous one) and is handed over with it. */
struct xscan {
	char marker[16];		/* "=TT<nonce>=" */
	size_t mlen;
	struct buf pend;		/* not yet placed: a marker may begin here */
	struct buf body;		/* since the last reply line */
	size_t body_max;		/* more is dropped, and flagged */
	int overflow;
	void (*sink)(void *ctx, const char *p, size_t n);	/* set: bodies stream here instead */
};

struct xreply {		/* one reply line and the body before it */
	char kind;
	char args[120];
	const char *body;
	size_t body_len;
	int overflow;			/* the body outgrew body_max */
};

typedef int xreply_fn(void *ctx, const struct xreply *r);	/* 1 stops the scan */

static void xscan_init(struct xscan *sc, const char *nonce, size_t body_max)
{
	sc->mlen = (size_t)snprintf(sc->marker, sizeof(sc->marker), "=TT%s=", nonce);
	sc->pend.len = sc->body.len = 0;
	sc->body_max = body_max;
	sc->overflow = 0;
	sc->sink = NULL;
}

static void xscan_body(struct xscan *sc, const char *p, size_t n, void *ctx)	/* kept, or to the sink */
{
	size_t room = sc->body_max > sc->body.len ? sc->body_max - sc->body.len : 0;

	if (sc->sink) {
		if (n)
			sc->sink(ctx, p, n);
		return;
	}
	sc->overflow |= n > room;
	buf_append(&sc->body, p, n < room ? n : room);
}

/* The reply line at pend's start: its kind and arguments (CR dropped). */
static void xscan_line(const struct xscan *sc, const char *nl, struct xreply *r)
{
	const char *p = sc->pend.p + sc->mlen;
	size_t n = (size_t)(nl - p);

	while (n && (p[n - 1] == '\r' || p[n - 1] == ' '))
		n--;
	while (n && *p == ' ') {
		p++;
		n--;
	}
	r->kind = n ? *p : 0;
	p += n ? 1 : 0;
	n -= n ? 1 : 0;
	while (n && *p == ' ') {
		p++;
		n--;
	}
	snprintf(r->args, sizeof(r->args), "%.*s", (int)(n < sizeof(r->args) ? n : sizeof(r->args) - 1), p);
}

/* Feeds output in; calls fn for each whole reply.  Returns 1 when fn
 * stopped it: pend then holds what followed that reply's line. */
static int xscan_feed(struct xscan *sc, const char *p, size_t n, xreply_fn *fn, void *ctx)
{
	buf_append(&sc->pend, p, n);
	for (;;) {
		char *at = memmem(sc->pend.p, sc->pend.len, sc->marker, sc->mlen), *nl;
		size_t before = at ? (size_t)(at - sc->pend.p) :
				sc->pend.len - (sc->pend.len < sc->mlen ? sc->pend.len : sc->mlen - 1);
		struct xreply r;
		int stop;

		xscan_body(sc, sc->pend.p, before, ctx);
		buf_consume(&sc->pend, before);
		if (!at)
			return 0;
		nl = memchr(sc->pend.p, '\n', sc->pend.len);
		if (!nl && sc->pend.len < sc->mlen + sizeof(r.args))
			return 0;	/* the rest of the line is still coming */
		if (!nl) {	/* a marker without a line: not a reply */
			xscan_body(sc, sc->pend.p, sc->mlen, ctx);
			buf_consume(&sc->pend, sc->mlen);
			continue;
		}
		xscan_line(sc, nl, &r);
		r.body = sc->body.p ? sc->body.p : "";
		r.body_len = sc->body.len;
		r.overflow = sc->overflow;
		buf_consume(&sc->pend, (size_t)(nl - sc->pend.p) + 1);
		stop = fn(ctx, &r);
		sc->body.len = 0;
		sc->overflow = 0;
		if (stop)
			return 1;
	}
}

static void xscan_free(struct xscan *sc)
{
	buf_free(&sc->pend);
	buf_free(&sc->body);
}

/* The first run of exactly hexlen hex digits in a body: a hash line
 * ("d41d8cd9…  -").  0, or -1 when there is none. */
static int parse_hash(const char *s, size_t n, int hexlen, char *out)
{
	for (size_t i = 0; i < n; i++) {
		size_t k = 0;

		while (i + k < n && isxdigit((unsigned char)s[i + k]))
			k++;
		if (k == (size_t)hexlen) {
			for (size_t j = 0; j < k; j++)
				out[j] = (char)tolower((unsigned char)s[i + j]);
			out[k] = '\0';
			return 0;
		}
		i += k;
	}
	return -1;
}

/* A body that is one line of text (pwd's): without its line ends. */
static void body_text(const char *s, size_t n, char *out, size_t cap)
{
	while (n && (*s == '\r' || *s == '\n')) {
		s++;
		n--;
	}
	while (n && (s[n - 1] == '\r' || s[n - 1] == '\n'))
		n--;
	snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), s);
}

/*** chunks, paths, progress (pure) **************************************/

enum { XC_WANTED, XC_ASKED, XC_DONE };	/* a chunk: to do, asked for (sent), verified */

static uint32_t xfer_chunk_size(int up, uint64_t size)	/* bytes a chunk */
{
	uint32_t c = XFER_DOWN_MIN;

	if (up)
		return XFER_UP_CHUNK;
	while (c < XFER_DOWN_MAX && size / c > XFER_DOWN_CHUNKS)
		c *= 2;
	return c;
}

/* The first run of chunks still to do: [*a, *b).  0 when there is none. */
static int next_wanted_run(const uint8_t *st, uint32_t n, uint32_t *a, uint32_t *b)
{
	uint32_t i = 0;

	while (i < n && st[i] != XC_WANTED)
		i++;
	if (i == n)
		return 0;
	*a = i;
	while (i < n && st[i] == XC_WANTED)
		i++;
	*b = i;
	return 1;
}

static const char *base_name(const char *path)	/* what follows the last '/' */
{
	const char *slash = strrchr(path, '/');

	return slash ? slash + 1 : path;
}

static void parent_dir(const char *path, char *out, size_t cap)	/* "." for a bare name, "/" for /x */
{
	const char *base = base_name(path);
	size_t n = (size_t)(base - path);

	while (n > 1 && path[n - 1] == '/')
		n--;
	if (!n)
		snprintf(out, cap, ".");
	else
		snprintf(out, cap, "%.*s", (int)n, path);
}

/* Where a file is written until it is verified: DIR/.NAME.ID.ttpart
 * (the name cut so the whole stays within NAME_MAX). */
static void part_name(const char *path, const char *id, char *out, size_t cap)
{
	const char *base = base_name(path);

	snprintf(out, cap, "%.*s.%.200s.%s.ttpart", (int)(base - path), path, base, id);
}

/* The directory a prompt or window title names: "user@host:/dir$ ",
 * "user@host: ~/dir" (the defaults of Debian's bash and OpenWrt's ash).
 * 1 when there is one. */
static int cwd_from_text(const char *text, char *out, size_t cap)
{
	const char *at = strchr(text, '@'), *colon = at ? strchr(at, ':') : NULL, *start, *end;

	if (!colon || strchr(at, ' ') < colon)
		return 0;
	start = colon + 1 + (colon[1] == ' ');
	if (*start != '/' && *start != '~')
		return 0;
	end = start + strcspn(start, "$#>%");
	while (end > start && end[-1] == ' ')
		end--;
	snprintf(out, cap, "%.*s", (int)(end - start), start);
	return 1;
}

static void human_bytes(double n, char *out, size_t cap)	/* "950 B", "1.5 kB", "23.4 MB" */
{
	static const char *const units[] = { "B", "kB", "MB", "GB", "TB" };
	size_t u = 0;

	while (n >= 1000 && u + 1 < XN(units)) {
		n /= 1000;
		u++;
	}
	snprintf(out, cap, u ? "%.1f %s" : "%.0f %s", n, units[u]);
}

struct xrate {		/* bytes a second, smoothed */
	int64_t at_us;
	uint64_t at_bytes;
	double bps;
};

static void xrate_note(struct xrate *r, int64_t now, uint64_t bytes)	/* bytes done by now */
{
	double dt = (double)(now - r->at_us) / 1e6;

	if (r->at_us && dt < 0.5)
		return;
	if (r->at_us && bytes >= r->at_bytes)
		r->bps = r->bps > 0 ? 0.5 * r->bps + 0.5 * (double)(bytes - r->at_bytes) / dt :
			 (double)(bytes - r->at_bytes) / dt;
	r->at_us = now;
	r->at_bytes = bytes;
}

/* "▕█████▍      ▏  45%  4.5 MB of 10.0 MB  2.1 MB/s  ETA 3 s": the bar in eighths. */
static void progress_text(char *out, size_t cap, uint64_t done, uint64_t total, double bps)
{
	static const char *const eighths[] = { "", "▏", "▎", "▍", "▌", "▋", "▊", "▉" };
	double frac = total ? (double)done / (double)total : 1;
	int cells = 12, full = (int)(frac * cells), part = (int)(frac * cells * 8) % 8;
	char bar[128] = "", d[24], t[24], rate[24] = "-", eta[32] = "";
	size_t o = 0;

	for (int i = 0; i < cells; i++)
		o += (size_t)snprintf(bar + o, sizeof(bar) - o, "%s", i < full ? "█" : i == full ? eighths[part] : " ");
	human_bytes((double)done, d, sizeof(d));
	human_bytes((double)total, t, sizeof(t));
	if (bps > 0) {
		human_bytes(bps, rate, sizeof(rate) - 2);
		strcat(rate, "/s");
		snprintf(eta, sizeof(eta), "  ETA %.0f s", (double)(total - done) / bps);
	}
	snprintf(out, cap, "▕%s▏ %3d%%  %s of %s  %s%s", bar, (int)(frac * 100), d, t, rate, eta);
}

/*** a transfer: the state machine over one session **********************/

enum xphase {
	XP_LOGIN,	/* its own session logs in */
	XP_BOOT,	/* the loop typed: its hello awaited */
	XP_STAT,	/* asked what the remote path is */
	XP_ASK,		/* the user decides about replacing the remote file */
	XP_DATA,	/* chunks travel */
	XP_SYNC,	/* a step interrupted (^C): the sync reply awaited */
	XP_VERIFY,	/* the whole file's hash asked for */
	XP_COMMIT,	/* upload: the rename asked for */
	XP_EXIT,	/* the loop told to end */
	XP_PAUSED,	/* the session was lost: waiting for it to come back */
	XP_DONE,
};

struct xrun {		/* download: one run of chunks, streaming in */
	uint32_t next, end;		/* the chunk being filled; the run's end */
	struct buf bytes;		/* that chunk's bytes so far */
	struct xdec dec;
	z_stream z;
	int gz;				/* z is in use: the run is gzip'd */
	int broken;			/* its text went wrong: the rest of it is asked again */
};

struct xfer {		/* one file on its way, to or from one device */
	struct tunnel *tunnel;
	struct session *session;	/* where the loop runs */
	struct session *origin;		/* where the user started it; NULL once closed */
	struct batch_job *job;		/* --put / --get */
	int up;				/* upload, else download */
	int own;			/* its own session: a multi-session device, or a batch run */
	enum xphase phase;
	int stopping;			/* cancelled or failed: the loop ends at the next chance */
	int waiting;			/* a line was typed whose reply has not come */
	int ok;				/* verified and renamed */
	int wrote;			/* upload: a chunk went: its temporary file may be there */
	int part_left;			/* … and stays: the loop could not remove it */
	const char *status;		/* --put/--get's word for a failure; NULL: "failed" */
	int overwrite;			/* the user said replace (or --overwrite) */
	char local[PATH_MAX];		/* upload: the source; download: the final name */
	char part[PATH_MAX];		/* download: where it is written until verified */
	char remote[PATH_MAX];		/* the remote file as given, then with its name */
	char rpart[PATH_MAX];		/* upload: the remote temporary name */
	char cwd[PATH_MAX];		/* the loop's directory, from pwd */
	char id[9];			/* in temporary names: stays across resumes */
	char nonce[9];			/* in this loop's replies: new each time */
	int fd;				/* the local file */
	uint64_t size, done_bytes;
	uint32_t chunk, nchunks;
	uint8_t *state, *tries;		/* per chunk: XC_*, attempts */
	int in_flight;			/* upload: chunks typed, not yet acknowledged */
	int run_open;			/* download: a run is streaming */
	int verify_sent;		/* download: it brings the whole file's hash as well */
	int gz;				/* download: compressed runs */
	char (*sums)[65];		/* download: each chunk's hash, as the device sent it */
	struct xrun run;		/* download: the run streaming in */
	EVP_MD_CTX *whole;		/* the whole file's hash, over chunks verified in order */
	uint32_t hashed;		/* chunks in it */
	struct xplan plan;
	struct xscan scan;
	struct buf shown;		/* the host's output before the loop answered */
	unsigned seq;			/* sync lines */
	int syncs, resyncs;		/* sync lines unanswered; resyncs without progress */
	enum xphase after_sync;
	struct xrate rate;
	int64_t paused_us;
	int relogins;			/* its own session back by itself, without progress */
	int resumed;			/* it was paused: it goes on from its verified chunks */
	char *password;			/* its own session's, to log in again after a loss */
	size_t password_len;
	char hash[65];			/* the whole file's, verified */
	char why[240];			/* a failure, in words */
	lws_sorted_usec_list_t sul;	/* deadlines: the hello, stalls, sync repeats */
	lws_sorted_usec_list_t sul_reap;	/* its own session, ended: out of the list */
};

static void xfer_step(struct xfer *x);
static void xfer_finish(struct xfer *x);
static void xfer_fail(struct xfer *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void xfer_interrupt(struct xfer *x, enum xphase then);

static const char *xfer_verb(const struct xfer *x, int past)	/* "upload", "downloaded" … */
{
	return x->up ? (past ? "uploaded" : "upload") : (past ? "downloaded" : "download");
}

static size_t chunk_bytes(const struct xfer *x, uint32_t i)	/* chunk i's length */
{
	uint64_t off = (uint64_t)i * x->chunk;

	return x->size - off < x->chunk ? (size_t)(x->size - off) : x->chunk;
}

static void digest_hex(const EVP_MD *md, const void *p, size_t n, char *out)	/* lowercase hex */
{
	unsigned char d[EVP_MAX_MD_SIZE];
	unsigned int len = 0;

	EVP_Digest(p, n, d, &len, md, NULL);
	hex_encode(d, len, out);
}

/* A hash over a local file's bytes [off, size), finished, as hex: 0, or
 * -1 if the file is shorter. */
static int file_hash_rest(int fd, uint64_t off, uint64_t size, EVP_MD_CTX *c, char *out)
{
	unsigned char buf[65536], d[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	ssize_t r = 1;

	while (off < size && (r = pread(fd, buf, size - off < sizeof(buf) ? size - off : sizeof(buf),
					(off_t)off)) > 0) {
		EVP_DigestUpdate(c, buf, (size_t)r);
		off += (uint64_t)r;
	}
	EVP_DigestFinal_ex(c, d, &len);
	hex_encode(d, len, out);
	return off == size ? 0 : -1;
}

static void xfer_type(struct xfer *x, const char *p, size_t n)	/* to the loop, in order */
{
	bulk_push(x->session, p, n);
}

static void xfer_send(struct xfer *x, struct buf *b)	/* a built line: typed, then freed */
{
	xfer_type(x, b->p, b->len);
	buf_free(b);
}

static void on_xfer_timer(lws_sorted_usec_list_t *sul);

static void xfer_arm(struct xfer *x, int64_t us)	/* the watchdog, from now */
{
	if (app.ctx && !app.quit)
		lws_sul_schedule(app.ctx, 0, &x->sul, on_xfer_timer, us);
}

static void random_hex(char *out, size_t bytes)	/* 2 * bytes hex digits */
{
	unsigned char r[16];

	if (app.ctx)
		lws_get_random(app.ctx, r, bytes);
	else
		RAND_bytes(r, (int)bytes);
	hex_encode(r, bytes, out);
}

static size_t xfer_body_max(const struct xfer *x)	/* a reply's body: a run's hash lines at most */
{
	return (size_t)x->nchunks * 80 + 65536;
}

/* The loop is typed into the session: a new nonce, so nothing a previous
 * loop left in flight is read as this one's. */
static void xfer_begin(struct xfer *x)
{
	struct buf b = { 0 };

	if (x->resumed)	/* after a lost session */
		log_line("%s: the %s goes on from byte %llu", x->tunnel->cfg.name, xfer_verb(x, 0),
			 (unsigned long long)x->done_bytes);
	random_hex(x->nonce, 4);
	xscan_init(&x->scan, x->nonce, xfer_body_max(x));
	x->shown.len = 0;
	x->run_open = x->in_flight = x->syncs = 0;
	x->phase = XP_BOOT;
	x->waiting = 1;
	xfer_boot_line(&b, x->nonce, x->own);
	xfer_hello_line(&b, !x->tunnel->xfer_probed);
	xfer_send(x, &b);
	xfer_arm(x, XFER_BOOT_S * LWS_US_PER_SEC);
}

static void xrun_close(struct xfer *x)	/* the streaming run is over: its state goes */
{
	if (x->run.gz)
		inflateEnd(&x->run.z);
	x->run.gz = 0;
	x->run.broken = 1;	/* a piece still in hand is dropped */
	x->run.bytes.len = 0;
	x->scan.sink = NULL;
}

/* Verified chunks stay; those asked for or in flight are to do again. */
static void xfer_forget_flight(struct xfer *x)
{
	for (uint32_t i = 0; x->state && i < x->nchunks; i++)
		if (x->state[i] == XC_ASKED)
			x->state[i] = XC_WANTED;
	x->in_flight = 0;
	x->run_open = 0;
	x->verify_sent = 0;
	xrun_close(x);
}

static void xfer_chunks(struct xfer *x, uint64_t size)	/* the chunk table, all to do */
{
	x->size = size;
	x->chunk = xfer_chunk_size(x->up, size);
	x->nchunks = (uint32_t)((size + x->chunk - 1) / x->chunk);
	x->state = xcalloc(x->nchunks);
	x->tries = xcalloc(x->nchunks);
	x->sums = x->up ? NULL : xcalloc(x->nchunks * sizeof(*x->sums));
	x->done_bytes = 0;
	x->scan.body_max = xfer_body_max(x);
}

static void x_run_text(void *ctx, const char *p, size_t n);

static EVP_MD_CTX *xfer_whole(struct xfer *x)	/* the whole file's hash, begun */
{
	if (!x->whole) {
		x->whole = EVP_MD_CTX_new();
		EVP_DigestInit_ex(x->whole, x->plan.file->md(), NULL);
		x->hashed = 0;
	}
	return x->whole;
}

/* The whole file's hash takes each chunk verified in order (the usual
 * case); the rest is read back from the file when it is verified. */
static void xfer_progress(struct xfer *x, uint32_t i, const void *bytes)	/* chunk i verified */
{
	if (i == x->hashed) {
		EVP_DigestUpdate(xfer_whole(x), bytes, chunk_bytes(x, i));
		x->hashed++;
	}
	x->state[i] = XC_DONE;
	x->done_bytes += chunk_bytes(x, i);
	x->resyncs = x->relogins = 0;
	xrate_note(&x->rate, now_us(), x->done_bytes);
	if (x->tunnel == app.sel_tunnel)
		ui_dirty();
}

/* A chunk failed its check: again, up to XFER_TRIES times. */
static void xfer_retry(struct xfer *x, uint32_t i, const char *what)
{
	x->state[i] = XC_WANTED;
	log_line("%s: %s chunk %u %s; asked again", x->tunnel->cfg.name, xfer_verb(x, 0), i, what);
	if (++x->tries[i] >= XFER_TRIES)
		xfer_fail(x, "chunk %u (at byte %llu) %s %d times: does the file change while it is %s?",
			  i, (unsigned long long)i * x->chunk, what, XFER_TRIES, x->up ? "written" : "read");
}

/*** replies ***/

static const char *xfer_remote_shown(const struct xfer *x, char *out, size_t cap)	/* absolute */
{
	if (x->remote[0] == '/' || x->remote[0] == '~' || !x->cwd[0])
		snprintf(out, cap, "%s", x->remote);
	else
		snprintf(out, cap, "%.2000s%s%.2000s", x->cwd, strcmp(x->cwd, "/") ? "/" : "", x->remote);
	return out;
}

/* P: the loop runs; its directory and tools.  Then the step functions
 * and the question about the remote path. */
static int x_hello(struct xfer *x, const struct xreply *r)
{
	struct tunnel *t = x->tunnel;
	struct buf b = { 0 };
	const char *missing;

	if (x->phase != XP_BOOT)
		return 0;
	x->waiting = 0;
	body_text(r->body, r->body_len, x->cwd, sizeof(x->cwd));
	if (!x->own)	/* the host shell's: the next dialog starts there */
		copy_str(t->xfer_cwd, sizeof(t->xfer_cwd), x->cwd);
	if (!t->xfer_probed) {
		t->xfer_tools = parse_tools(r->args);
		t->xfer_probed = 1;
	}
	if ((missing = xfer_plan(t->xfer_tools, x->up, &x->plan))) {
		xfer_fail(x, "the device cannot take part: %s", missing);	/* the loop is told to end */
		return 0;
	}
	if (x->stopping) {	/* cancelled while it started */
		xfer_step(x);
		return 0;
	}
	xfer_setup_line(&b, &x->plan, x->up);
	xfer_send(x, &b);
	x->phase = XP_STAT;
	xfer_step(x);
	return 0;
}

/* The upload's remote names follow the target: its temporary file beside it. */
static void xfer_up_target(struct xfer *x, const char *remote)
{
	copy_str(x->remote, sizeof(x->remote), remote);
	part_name(x->remote, x->id, x->rpart, sizeof(x->rpart));
}

static void xfer_ask_replace(struct xfer *x, long long size);

/* An upload going on: its verified chunks count only while the remote
 * temporary file still holds them all (part: its size, -1 none). */
static void xfer_resume_up(struct xfer *x, long long part)
{
	uint64_t end = 0;

	for (uint32_t i = 0; i < x->nchunks; i++)
		if (x->state[i] == XC_DONE)
			end = (uint64_t)i * x->chunk + chunk_bytes(x, i);
	x->done_bytes = 0;
	for (uint32_t i = 0; i < x->nchunks; i++) {
		if (part < 0 || (uint64_t)part < end)	/* gone or cut: from the start */
			x->state[i] = XC_WANTED;
		x->done_bytes += x->state[i] == XC_DONE ? chunk_bytes(x, i) : 0;
	}
}

/* Q, upload: a folder gets the file's name; a file there is replaced only
 * when the user says so; an old temporary file is resumed only if it is
 * still there. */
static int x_stat_up(struct xfer *x, const struct xreply *r)
{
	char kind = 0, joined[PATH_MAX], dir[PATH_MAX];
	int writable = 0;
	long long part = -1, size = 0;

	sscanf(r->args, "%c %d %lld %lld", &kind, &writable, &part, &size);
	parent_dir(x->remote, dir, sizeof(dir));
	if (kind == 'd') {
		snprintf(joined, sizeof(joined), "%.3800s%s%.250s", x->remote,
			 x->remote[strlen(x->remote) - 1] == '/' ? "" : "/", base_name(x->local));
		xfer_up_target(x, joined);
		x->phase = XP_STAT;	/* asked again about the file in it */
		xfer_step(x);
	} else if (kind == 'o') {
		xfer_fail(x, "%s exists and is not a regular file", x->remote);
	} else if (!writable) {
		xfer_fail(x, "cannot write in %s on the device", dir);
	} else {
		xfer_resume_up(x, part);
		if (kind == 'f' && !x->overwrite)
			xfer_ask_replace(x, size);
		else
			x->phase = XP_DATA;
		xfer_step(x);
	}
	return 0;
}

/* Q, download: a readable file, as big as when the transfer began. */
static int x_stat_down(struct xfer *x, const struct xreply *r)
{
	char kind = 0;
	long long size = -1, gz = 0;

	sscanf(r->args, "%c %lld %lld", &kind, &size, &gz);
	if (kind != 'f' || size < 0) {
		xfer_fail(x, "%s %s on the device", x->remote, kind == 'd' ? "is a folder" :
			  kind == 'n' ? "does not exist" : "is not a readable file");
		return 0;
	}
	if (x->state && (uint64_t)size != x->size) {
		xfer_fail(x, "%s changed size on the device (%lld bytes, was %llu)", x->remote, size,
			  (unsigned long long)x->size);
		return 0;
	}
	if (!x->state)
		xfer_chunks(x, (uint64_t)size);
	x->gz = x->plan.gzip && size > 0 &&
		gz * 100 <= (size < 65536 ? size : 65536) * XFER_GZ_PERCENT;
	x->phase = XP_DATA;
	xfer_step(x);
	return 0;
}

static int x_stat(struct xfer *x, const struct xreply *r)	/* Q */
{
	if (x->phase != XP_STAT)
		return 0;
	x->waiting = 0;
	if (x->stopping) {
		xfer_step(x);
		return 0;
	}
	return x->up ? x_stat_up(x, r) : x_stat_down(x, r);
}

static int chunk_arg(const struct xfer *x, const char *args, uint32_t *i)	/* 0 if args name one */
{
	char *end;
	unsigned long v = strtoul(args, &end, 10);

	if (end == args || v >= x->nchunks)
		return -1;
	*i = (uint32_t)v;
	return 0;
}

static int x_run_begin(struct xfer *x, const struct xreply *r)	/* C first: the run the device sends */
{
	if (x->phase == XP_DATA && x->run_open && strtoul(r->args, NULL, 10) != x->run.next)
		x->run.broken = 1;	/* not the run asked for */
	return 0;
}

/* H: the run's chunk hashes ("i hash" lines); its text streams next. */
static int x_run_sums(struct xfer *x, const struct xreply *r)
{
	const char *p = r->body, *end = r->body + r->body_len;
	char *after;

	if (x->phase != XP_DATA || !x->run_open || x->run.broken)
		return 0;
	while (p < end) {
		unsigned long i = strtoul(p, &after, 10);
		const char *nl = memchr(after, '\n', (size_t)(end - after));
		size_t n = (size_t)((nl ? nl : end) - after);

		if (after > p && i >= x->run.next && i < x->run.end &&
		    parse_hash(after, n, x->plan.chunk->hexlen, x->sums[i]) < 0)
			x->sums[i][0] = '\0';
		p = nl ? nl + 1 : end;
	}
	x->run.dec = (struct xdec){ .hex = x->plan.codec->hex };
	x->run.gz = x->gz && inflateInit2(&x->run.z, 16 + MAX_WBITS) == Z_OK;
	x->run.broken = x->gz && !x->run.gz;
	x->scan.sink = x_run_text;
	return 0;
}

/* A whole chunk of the run: checked against its hash, into the part file. */
static void x_chunk_whole(struct xfer *x, uint32_t i, const void *bytes)
{
	char sum[65];

	digest_hex(x->plan.chunk->md(), bytes, chunk_bytes(x, i), sum);
	if (strcmp(sum, x->sums[i]))
		xfer_retry(x, i, "failed its check");
	else if (pwrite(x->fd, bytes, chunk_bytes(x, i), (off_t)i * x->chunk) != (ssize_t)chunk_bytes(x, i))
		xfer_fail(x, "cannot write %s: %s", x->part, strerror(errno));
	else
		xfer_progress(x, i, bytes);
}

/* Bytes of the run into its chunks, each checked when whole; more than
 * the run holds breaks it. */
static void x_run_fill(struct xfer *x, const unsigned char *p, size_t n)
{
	struct xrun *run = &x->run;

	while (n && !run->broken && x->phase == XP_DATA) {
		size_t want = run->next < run->end ? chunk_bytes(x, run->next) - run->bytes.len : 0;
		size_t take = n < want ? n : want;

		run->broken = !want;
		buf_append(&run->bytes, p, take);
		p += take;
		n -= take;
		if (want && take == want) {
			x_chunk_whole(x, run->next++, run->bytes.p);
			run->bytes.len = 0;
		}
	}
}

static void x_run_bytes(void *ctx, const unsigned char *p, size_t n)	/* bytes_fn: into chunks */
{
	x_run_fill(ctx, p, n);
}

static void x_run_unpack(struct xfer *x, const unsigned char *p, size_t n)	/* inflated first if gzip'd */
{
	if (!x->run.gz)
		x_run_fill(x, p, n);
	else if (gz_stream(&x->run.z, p, n, x_run_bytes, x) < 0)
		x->run.broken = 1;
}

/* The run's text as it streams (the scanner's sink): decoded a piece at a time. */
static void x_run_text(void *ctx, const char *p, size_t n)
{
	struct xfer *x = ctx;
	unsigned char out[49152];	/* base64 gives 3 of 4, hex 1 of 2 */

	while (n && !x->run.broken) {
		size_t k = n < 65536 ? n : 65536, got = xdec_feed(&x->run.dec, p, k, out);

		x->run.broken |= x->run.dec.bad;
		x_run_unpack(x, out, got);
		p += k;
		n -= k;
	}
}

static int x_run_end(struct xfer *x, const struct xreply *r)	/* D: what did not come goes again */
{
	(void)r;
	if (x->phase != XP_DATA || !x->run_open)
		return 0;
	x->run_open = 0;
	xrun_close(x);
	for (uint32_t i = 0; i < x->nchunks && !x->stopping; i++)
		if (x->state[i] == XC_ASKED)
			xfer_retry(x, i, "never came whole");
	x->verify_sent &= x->done_bytes == x->size;	/* chunks to do again: a later hash counts */
	xfer_step(x);
	return 0;
}

static int x_written(struct xfer *x, const struct xreply *r)	/* A i status */
{
	uint32_t i;
	int status = -1;

	if (x->phase != XP_DATA || chunk_arg(x, r->args, &i) < 0 || x->state[i] != XC_ASKED)
		return 0;
	sscanf(r->args, "%*u %d", &status);
	if (status)
		xfer_fail(x, "the device could not write %s (full, or not allowed?)", x->rpart);
	return 0;
}

/* Upload chunk i from the local file: 0, or -1 (the transfer fails). */
static int xfer_read(struct xfer *x, uint32_t i, void *into)
{
	ssize_t got = pread(x->fd, into, chunk_bytes(x, i), (off_t)i * x->chunk);

	if (got == (ssize_t)chunk_bytes(x, i))
		return 0;
	xfer_fail(x, "cannot read %s: %s", x->local, got < 0 ? strerror(errno) : "it shrank meanwhile");
	return -1;
}

/* K i: the hash of what chunk i's place in the file now holds. */
static int x_acked(struct xfer *x, const struct xreply *r)
{
	unsigned char *raw;
	size_t want;
	char got[65], sum[65];
	uint32_t i;

	if (x->phase != XP_DATA || chunk_arg(x, r->args, &i) < 0 || x->state[i] != XC_ASKED)
		return 0;
	x->in_flight--;
	want = chunk_bytes(x, i);
	raw = xrealloc(NULL, want);
	if (xfer_read(x, i, raw) == 0) {
		digest_hex(x->plan.chunk->md(), raw, want, sum);
		if (parse_hash(r->body, r->body_len, x->plan.chunk->hexlen, got) == 0 && !strcmp(sum, got))
			xfer_progress(x, i, raw);
		else
			xfer_retry(x, i, "arrived damaged");
	}
	free(raw);
	xfer_step(x);
	return 0;
}

static void xfer_commit_local(struct xfer *x);

/* The local file's whole hash: its chunks verified in order are in it
 * already, the rest is read back.  0, or -1 if the file is short. */
static int xfer_local_hash(struct xfer *x, char *out)
{
	uint64_t off = (uint64_t)x->hashed * x->chunk;	/* past the end: the last chunk is short */
	int r = file_hash_rest(x->fd, off < x->size ? off : x->size, x->size, xfer_whole(x), out);

	EVP_MD_CTX_free(x->whole);	/* finished: a later check starts again */
	x->whole = NULL;
	return r;
}

/* F size: the whole file's hash, against the local file's. */
static int x_verified(struct xfer *x, const struct xreply *r)
{
	char got[65], mine[65];
	unsigned long long size = strtoull(r->args, NULL, 10);

	if (x->phase != XP_VERIFY)
		return 0;
	x->waiting = 0;
	if (x->stopping)
		xfer_step(x);
	else if (xfer_local_hash(x, mine) < 0)
		xfer_fail(x, "cannot read %s: %s", x->up ? x->local : x->part, strerror(errno));
	else if (parse_hash(r->body, r->body_len, x->plan.file->hexlen, got) < 0 || strcmp(got, mine) ||
		 size != x->size)
		xfer_fail(x, "the whole file's %s differs (%s): did the file change during the transfer?",
			  x->plan.file->name, size != x->size ? "and its size" : "its size is right");
	else {
		copy_str(x->hash, sizeof(x->hash), mine);
		if (x->up) {
			struct buf b = { 0 };

			x->phase = XP_COMMIT;
			xfer_commit_line(&b, x->overwrite);
			xfer_send(x, &b);
		} else
			xfer_commit_local(x);
	}
	return 0;
}

static int x_renamed(struct xfer *x, const struct xreply *r)	/* R: the upload has its name */
{
	if (x->phase != XP_COMMIT)
		return 0;
	x->waiting = 0;
	if (!strcmp(r->args, "0")) {	/* done, even if a cancel came meanwhile */
		x->ok = 1;
		x->stopping = 0;
		x->phase = XP_DATA;	/* all done: xfer_step ends the loop */
		xfer_step(x);
	} else if (!strcmp(r->args, "2"))
		xfer_fail(x, "%s appeared on the device meanwhile: not replaced", x->remote);
	else
		xfer_fail(x, "the device could not rename %s", x->rpart);
	return 0;
}

static int x_synced(struct xfer *x, const struct xreply *r)	/* S seq: the loop is ours again */
{
	if (x->phase != XP_SYNC || strtoul(r->args, NULL, 10) != x->seq)
		return 0;
	x->waiting = 0;
	x->phase = x->after_sync;
	xfer_step(x);
	return 0;
}

static int x_exited(struct xfer *x, const struct xreply *r)	/* Z: the loop is over */
{
	(void)r;
	return x->phase == XP_EXIT;
}

/* Each reply by its kind; any of them shows the loop is alive. */
static int xfer_reply(void *ctx, const struct xreply *r)
{
	static const struct { char kind; int (*fn)(struct xfer *, const struct xreply *); } kinds[] = {
		{ 'P', x_hello }, { 'Q', x_stat }, { 'C', x_run_begin }, { 'H', x_run_sums },
		{ 'D', x_run_end }, { 'A', x_written }, { 'K', x_acked },
		{ 'F', x_verified }, { 'R', x_renamed }, { 'S', x_synced }, { 'Z', x_exited },
	};
	struct xfer *x = ctx;

	if (x->phase == XP_BOOT && r->kind != 'P')
		return 0;	/* a previous loop's late words */
	for (size_t i = 0; i < XN(kinds); i++)
		if (kinds[i].kind == r->kind)
			return kinds[i].fn(x, r);
	return 0;
}

/*** steps ***/

static int xfer_window(const struct xfer *x)	/* upload chunks typed ahead of their answers */
{
	size_t typed = x->plan.codec->script ? (size_t)x->chunk * 3 : (size_t)x->chunk * 4 / 3;

	if (!x->plan.echo_off)	/* an echo must not fall among the bytes of a reply */
		return 1;
	return XFER_WINDOW / typed > 1 ? (int)(XFER_WINDOW / typed) : 1;
}

/* Upload chunk i: read, gzip'd if that pays, typed as text after its line. */
static void x_send_chunk(struct xfer *x, uint32_t i)
{
	size_t n = chunk_bytes(x, i);
	struct buf raw = { 0 }, gz = { 0 }, text = { 0 }, line = { 0 };
	int packed;

	buf_reserve(&raw, n);
	if (xfer_read(x, i, raw.p) < 0) {
		buf_free(&raw);
		return;
	}
	raw.len = n;
	x->wrote = 1;
	packed = x->plan.gzip && gz_pack(raw.p, n, &gz) == 0 && gz.len * 100 <= n * XFER_GZ_PERCENT;
	(x->plan.codec->script ? printf_lines : b64_lines)(&text, (unsigned char *)(packed ? gz.p : raw.p),
							   packed ? gz.len : n);
	buf_printf(&line, "_B=%u; u %u %zu %d\n", x->chunk, i, text.len, packed);
	xfer_send(x, &line);
	xfer_send(x, &text);
	x->state[i] = XC_ASKED;
	x->in_flight++;
	buf_free(&raw);
	buf_free(&gz);
}

/* Download chunks [a, b).  The run that should finish the file brings the
 * whole file's hash too, made while the run streams (V after it, F). */
static void x_send_run(struct xfer *x, uint32_t a, uint32_t b)
{
	struct buf line = { 0 };
	uint32_t c, d;

	x->verify_sent = !next_wanted_run(x->state + b, x->nchunks - b, &c, &d);
	if (x->verify_sent)
		buf_printf(&line, "_B=%u; { H <\"$_f\"; } | { g %u %u %d; m V; cat; m F $(wc -c <\"$_f\"); }\n",
			   x->chunk, a, b, x->gz);
	else
		buf_printf(&line, "_B=%u; g %u %u %d\n", x->chunk, a, b, x->gz);
	xfer_send(x, &line);
	memset(x->state + a, XC_ASKED, b - a);
	x->run_open = 1;
	x->run.next = a;
	x->run.end = b;
	x->run.broken = 0;
}

static void xfer_ask(struct xfer *x, enum xphase phase, void (*line)(struct buf *, const struct xfer *))
{
	struct buf b = { 0 };

	x->phase = phase;
	x->waiting = 1;
	line(&b, x);
	xfer_send(x, &b);
}

static void verify_line(struct buf *b, const struct xfer *x)
{
	xfer_verify_line(b, x->up, x->size);
}

static void stat_line(struct buf *b, const struct xfer *x)
{
	char dir[PATH_MAX];

	parent_dir(x->remote, dir, sizeof(dir));
	if (x->up)
		xfer_stat_up_line(b, x->remote, x->rpart, dir);
	else
		xfer_stat_down_line(b, x->remote, x->plan.gzip);
}

static void exit_line(struct buf *b, const struct xfer *x)	/* a failed upload's part goes */
{
	xfer_exit_line(b, x->up && !x->ok);
}

/* Chunks while some are to do (an upload within its window), then the
 * whole file's check; stopping, the loop ends once nothing is in flight. */
static void xfer_data_step(struct xfer *x)
{
	uint32_t a, b;

	if (x->stopping || x->ok) {
		if (!x->in_flight && !x->run_open)
			xfer_ask(x, XP_EXIT, exit_line);
		return;
	}
	if (x->up) {
		while (x->in_flight < xfer_window(x) && !x->stopping && next_wanted_run(x->state, x->nchunks, &a, &b))
			x_send_chunk(x, a);
	} else if (!x->run_open && next_wanted_run(x->state, x->nchunks, &a, &b)) {
		x_send_run(x, a, b);
	}
	if (x->stopping || x->in_flight || x->run_open || x->done_bytes != x->size)
		return;
	if (x->verify_sent) {	/* the hash is on its way already */
		x->phase = XP_VERIFY;
		x->waiting = 1;
	} else
		xfer_ask(x, XP_VERIFY, verify_line);
}

/* What the loop gets next, by phase; the watchdog follows the step. */
static void xfer_step(struct xfer *x)
{
	if (x->phase == XP_STAT && !x->stopping)
		xfer_ask(x, XP_STAT, stat_line);
	else if (x->phase == XP_DATA)
		xfer_data_step(x);
	else if (x->stopping && x->phase != XP_EXIT && x->phase != XP_SYNC)
		xfer_ask(x, XP_EXIT, exit_line);
	if (x->phase != XP_ASK && x->phase != XP_DONE)
		xfer_arm(x, XFER_STALL_S * LWS_US_PER_SEC);
}

/* ^C stops the step the loop runs (the INT trap keeps the loop); the sync
 * line, repeated until answered, says when it listens again.  What was
 * in flight is to do again. */
static void xfer_interrupt(struct xfer *x, enum xphase then)
{
	struct session *s = x->session;
	struct buf b = { 0 };

	lane_drop_owned(&s->tunnel->bulk, s);
	xfer_forget_flight(x);
	buf_append(&s->keys, "\003", 1);
	tunnel_kick(s->tunnel);
	x->phase = XP_SYNC;
	x->waiting = 1;
	x->after_sync = then;
	x->syncs = 0;
	buf_printf(&b, "m S %u\n", ++x->seq);
	xfer_send(x, &b);
	xfer_arm(x, XFER_SYNC_US);
}

/* Cancelled or failed: the loop ends at its next reply (a streaming
 * download is interrupted), the temporary files go. */
static void xfer_stop(struct xfer *x)
{
	x->stopping = 1;
	if (x->phase == XP_PAUSED || x->phase == XP_LOGIN || !session_accepts_input(x->session))
		xfer_finish(x);
	else if (x->phase == XP_DATA && x->run_open)
		xfer_interrupt(x, XP_DATA);
	else if (x->phase == XP_DATA || !x->waiting)
		xfer_step(x);
	/* else a reply is awaited (hello, stat, verify, rename, sync): it steps */
}

static void xfer_fail(struct xfer *x, const char *fmt, ...)	/* the first reason is kept */
{
	va_list ap;

	if (x->stopping)
		return;
	va_start(ap, fmt);
	vsnprintf(x->why, sizeof(x->why), fmt, ap);
	va_end(ap);
	clean_in_place(x->why, sizeof(x->why));	/* it holds remote names */
	xfer_stop(x);
}

static void xfer_cancel(struct xfer *x)	/* the user's Esc */
{
	if (x->stopping)
		return;	/* on its way out already */
	snprintf(x->why, sizeof(x->why), "cancelled");
	xfer_stop(x);
}

static void xfer_paused_tick(struct xfer *x);

/* The watchdog: a step silent too long is interrupted and asked again (a
 * few times); a sync line unanswered is said again; otherwise the device
 * is not answering, and typing more would not help. */
static void on_xfer_timer(lws_sorted_usec_list_t *sul)
{
	struct xfer *x = lws_container_of(sul, struct xfer, sul);
	struct buf b = { 0 };

	if (x->phase == XP_PAUSED) {
		xfer_paused_tick(x);
		return;
	}
	if (x->phase == XP_DATA && x->session->bulk_frames) {	/* still typing: a slow link */
		xfer_arm(x, XFER_STALL_S * LWS_US_PER_SEC);
		return;
	}
	if (x->phase == XP_DATA && !x->stopping && ++x->resyncs <= XFER_TRIES) {
		xfer_interrupt(x, XP_DATA);
		return;
	}
	if (x->phase == XP_SYNC && ++x->syncs < XFER_SYNC_TRIES) {
		buf_printf(&b, "m S %u\n", x->seq);
		xfer_send(x, &b);
		xfer_arm(x, XFER_SYNC_US);
		return;
	}
	if (!x->why[0])
		snprintf(x->why, sizeof(x->why), x->phase == XP_BOOT ? "the shell did not answer within %d s: is "
			 "it at a prompt, and a POSIX shell?" : "the device stopped answering for %d s",
			 x->phase == XP_BOOT ? XFER_BOOT_S : XFER_STALL_S);
	x->stopping = 1;
	xfer_finish(x);
}

/* Paused in its own session: it logs in again by itself while the device
 * is there (a few times); a batch run waits XFER_BATCH_WAIT_S at most. */
static void xfer_paused_tick(struct xfer *x)
{
	struct tunnel *t = x->tunnel;

	if (t->state == T_ONLINE && t->device_ready && x->relogins++ < XFER_TRIES)
		xfer_tunnel_back(t);
	else if (t->state == T_ONLINE && t->device_ready)
		xfer_fail(x, "its session keeps ending");
	else if (x->job && now_us() - x->paused_us > XFER_BATCH_WAIT_S * 1000000LL)
		xfer_fail(x, "the tunnel did not come back within %d s", XFER_BATCH_WAIT_S);
	else
		xfer_arm(x, LWS_US_PER_SEC);
}

/*** the local end ***/

/* The verified download takes its name: never over a file the user did
 * not say to replace, even one that appeared meanwhile. */
static void xfer_commit_local(struct xfer *x)
{
	mode_t mask = umask(0);

	umask(mask);
	if (fchmod(x->fd, 0666 & ~mask) < 0 || fsync(x->fd) < 0 ||
	    renameat2(AT_FDCWD, x->part, AT_FDCWD, x->local, x->overwrite ? 0 : RENAME_NOREPLACE) < 0) {
		xfer_fail(x, "cannot name it %s: %s", x->local, strerror(errno));
		return;
	}
	x->part[0] = '\0';
	x->ok = 1;
	x->phase = XP_DATA;
	xfer_step(x);
}

static void xfer_close_local(struct xfer *x)	/* the fd; an unfinished download's part file */
{
	if (x->fd >= 0)
		close(x->fd);
	x->fd = -1;
	if (x->part[0])
		unlink(x->part);
	x->part[0] = '\0';
}

/* The outcome in words: "downloaded /var/log/x to ./x: 1048576 bytes,
 * sha256 …", or why not. */
static void xfer_outcome(const struct xfer *x, char *out, size_t cap)
{
	char remote[PATH_MAX];
	const char *from = x->up ? x->local : xfer_remote_shown(x, remote, sizeof(remote));
	const char *to = x->up ? xfer_remote_shown(x, remote, sizeof(remote)) : x->local;

	if (x->ok)
		snprintf(out, cap, "%s %s to %s: %llu bytes, %s %s", xfer_verb(x, 1), from, to,
			 (unsigned long long)x->size, x->plan.file->name, x->hash);
	else
		snprintf(out, cap, "%s of %s %s: %s%s%s", xfer_verb(x, 0), from,
			 strcmp(x->why, "cancelled") ? "failed" : "stopped", x->why,
			 x->part_left ? "; the device keeps " : "", x->part_left ? x->rpart : "");
}

static void batch_xfer_done(struct xfer *x);
static void on_xfer_reap(lws_sorted_usec_list_t *sul);

/* Where the outcome shows: the host's pane (a line), the status bar, the
 * log; the batch summary. */
static void xfer_report(struct xfer *x)
{
	char raw[PATH_MAX * 2 + 400], text[1024];
	struct session *pane = x->own ? x->origin : x->session;

	xfer_outcome(x, raw, sizeof(raw));
	clean_text(text, sizeof(text), raw, strlen(raw));	/* it holds remote names */
	log_line("%s: %s", x->tunnel->cfg.name, text);
	if (x->job) {
		batch_xfer_done(x);
		return;
	}
	flash_msg("%s: %s", x->tunnel->cfg.name, text);
	if (pane && !pane->altscreen)
		vt_notice(pane, x->ok ? BYE_LINE_SGR : END_LINE_SGR, text);
}


static void xfer_free(struct xfer *x)	/* timers, local file, memory */
{
	lws_sul_cancel(&x->sul);
	lws_sul_cancel(&x->sul_reap);
	xfer_close_local(x);
	if (x->tunnel->xfer == x)
		x->tunnel->xfer = NULL;
	if (x->session && x->session->xfer == x)
		x->session->xfer = NULL;
	free(x->state);
	free(x->tries);
	free(x->sums);
	xrun_close(x);
	buf_free(&x->run.bytes);
	xscan_free(&x->scan);
	EVP_MD_CTX_free(x->whole);
	buf_free(&x->shown);
	secret_free(x->password);
	free(x);
}

static void on_xfer_reap(lws_sorted_usec_list_t *sul)	/* its own session is over: out of the list */
{
	struct xfer *x = lws_container_of(sul, struct xfer, sul_reap);
	struct session *s = x->session, **pp = &s->tunnel->sessions;

	while (*pp && *pp != s)
		pp = &(*pp)->next;
	if (*pp)
		*pp = s->next;
	if (app.sel_session == s)
		select_session(s->tunnel, x->origin);
	if (s->tunnel->latest == s)
		s->tunnel->latest = NULL;
	s->xfer = NULL;
	x->session = NULL;
	session_free(s);
	xfer_free(x);
}

/* The loop answered nothing useful and may still run: ^C and the exit
 * line end it (only once it has said hello: before, the typing could
 * land in the user's own shell).  0 when it could not be told. */
static int xfer_abandon_loop(struct xfer *x)
{
	struct session *s = x->session;
	struct buf b = { 0 };

	if (!session_accepts_input(s) || x->phase == XP_BOOT || x->phase == XP_LOGIN || x->phase == XP_PAUSED)
		return 0;
	buf_append(&s->keys, "\003", 1);
	xfer_exit_line(&b, x->up && !x->ok);
	xfer_send(x, &b);
	return 1;
}

/* The end: reported; the local file closed (a partial download removed);
 * a host session's own output flows again, from what followed the loop.
 * Its own session leaves the list once it has ended. */
static void xfer_finish(struct xfer *x)
{
	struct session *s = x->session;
	enum xphase was = x->phase;
	int told;

	if (was == XP_DONE)
		return;
	lws_sul_cancel(&x->sul);
	told = was == XP_EXIT || xfer_abandon_loop(x);	/* the exit line removes the part file */
	x->part_left = x->up && !x->ok && x->wrote && !told;
	x->phase = XP_DONE;
	xfer_close_local(x);
	if (!x->ok && !x->why[0])
		snprintf(x->why, sizeof(x->why), "stopped");
	xfer_report(x);
	if (x->tunnel->xfer == x)
		x->tunnel->xfer = NULL;
	if (x->own && !x->job) {
		if (s->state == S_ENDED && !app.quit)
			lws_sul_schedule(app.ctx, 0, &x->sul_reap, on_xfer_reap, 1);
		else if (was == XP_LOGIN || was == XP_BOOT)	/* no loop yet: its shell ends */
			bulk_push(s, "exit\r", 5);
		return;
	}
	s->xfer = NULL;
	if (!x->own && was == XP_BOOT && x->shown.len)	/* what the shell said instead of hello */
		term_feed(s, x->shown.p, x->shown.len);
	else if (!x->own && x->scan.pend.len)	/* what followed the loop's end */
		term_feed(s, x->scan.pend.p, x->scan.pend.len);
	xfer_free(x);
}

/*** hooks: where the rest of the console meets a transfer ***/

static int xfer_busy(const struct session *s)	/* a transfer holds its typing */
{
	return s && s->xfer && s->xfer->phase != XP_PAUSED;
}

/* A session's output while a transfer holds it: replies, never shown.
 * 0 lets it through: a host session's login, before the loop is typed. */
static int xfer_output(struct session *s, const char *p, size_t n)
{
	struct xfer *x = s->xfer;

	if (x->phase == XP_DONE)
		return 1;	/* its own session, ending */
	if (x->phase == XP_LOGIN || x->phase == XP_PAUSED) {
		s->attached = 1;	/* no attach command into the loop */
		xfer_begin(x);
		return x->own;
	}
	if (x->phase == XP_BOOT && !x->own && x->shown.len < 65536)
		buf_append(&x->shown, p, n < 65536 ? n : 65536);
	if (x->phase == XP_SYNC)	/* what was in flight drains first: the sync reply follows */
		xfer_arm(x, XFER_SYNC_US);
	else if (x->phase > XP_BOOT && x->phase != XP_ASK)
		xfer_arm(x, XFER_STALL_S * LWS_US_PER_SEC);	/* it is alive */
	if (xscan_feed(&x->scan, p, n, xfer_reply, x))
		xfer_finish(x);
	return 1;
}

/* A key for a session a transfer holds: Esc cancels it, anything else is
 * refused, visibly.  0: not held (a paused transfer lets Enter reopen). */
static int xfer_key(struct session *s, int ch, int fn)
{
	struct xfer *x = s ? s->xfer : NULL;

	if (!x || x->phase == XP_DONE)
		return 0;
	if (!fn && ch == 27) {
		flash_msg("%s: the %s stops", s->tunnel->cfg.name, xfer_verb(x, 0));
		xfer_cancel(x);
		return 1;
	}
	if (x->phase == XP_PAUSED)
		return 0;
	flash_msg("%s runs in this session: it takes no typing (Esc stops it)", x->up ? "an upload" : "a download");
	return 1;
}

/* The session is over (lost, ended, replaced): a transfer not finished
 * waits for it to come back, with its verified chunks. */
static void xfer_session_ended(struct session *s, const char *code)
{
	struct xfer *x = s->xfer;

	if (x->phase == XP_DONE) {	/* its own session, after the loop: out of the list */
		if (!app.quit)
			lws_sul_schedule(app.ctx, 0, &x->sul_reap, on_xfer_reap, 1);
		return;
	}
	if (x->phase == XP_LOGIN && !strcmp(code, "400")) {
		x->status = "login failed";
		snprintf(x->why, sizeof(x->why), "the device refused the login");
	}
	if (x->stopping || x->why[0] || app.quit) {
		if (!x->why[0])
			snprintf(x->why, sizeof(x->why), "the console quit");
		x->stopping = 1;
		xfer_finish(x);
		return;
	}
	lws_sul_cancel(&x->sul);
	xfer_forget_flight(x);
	x->phase = XP_PAUSED;
	x->resumed = 1;
	x->paused_us = now_us();
	if (x->own)	/* it logs in again by itself when it can */
		xfer_arm(x, LWS_US_PER_SEC);
	log_line("%s: the %s paused at byte %llu: the session was lost", x->tunnel->cfg.name,
		 xfer_verb(x, 0), (unsigned long long)x->done_bytes);
	if (!x->job)
		flash_msg("%s: the %s paused: %s", x->tunnel->cfg.name, xfer_verb(x, 0), x->own ?
			  "it goes on when the device is back" : "it goes on when the session is reopened");
}

/* A session is freed: a transfer in it ends, one it started forgets it. */
static void xfer_session_freed(struct session *s)
{
	struct xfer *other = s->tunnel->xfer;

	if (other && other->origin == s)
		other->origin = NULL;
	if (!s->xfer)
		return;
	if (s->xfer->phase != XP_DONE) {
		if (!s->xfer->why[0])
			snprintf(s->xfer->why, sizeof(s->xfer->why), "its session was closed");
		s->xfer->stopping = 1;
		xfer_finish(s->xfer);
	}
	if (s->xfer)	/* its own session's: not freed by finishing */
		xfer_free(s->xfer);
}

/* connect_tunnel: a paused transfer's own session logs in again. */
static void xfer_tunnel_back(struct tunnel *t)
{
	struct xfer *x = t->xfer;
	const char *pw = x && x->job ? app.batch->password : x ? x->password : NULL;
	size_t n = x && x->job ? app.batch->password_len : x ? x->password_len : 0;

	if (!x || x->phase != XP_PAUSED || !x->own || !pw || x->session->state != S_ENDED)
		return;
	lws_sul_cancel(&x->sul);
	x->phase = XP_LOGIN;
	session_reopen(x->session, pw, n);
}

static int xfer_pending(const struct tunnel *t)	/* --put/--get: reconnect to go on */
{
	return t->xfer && t->xfer->job && t->xfer->phase == XP_PAUSED;
}

/* The status bar while the selected device has a transfer: what, how far,
 * how fast, how to stop it.  0 when it has none. */
static int xfer_status(const struct tunnel *t, char *out, size_t cap)
{
	const struct xfer *x = t ? t->xfer : NULL;
	char prog[200], stop[48] = "Esc stops it";
	const char *name;

	if (!x)
		return 0;
	name = base_name(x->up ? x->local : x->remote);
	progress_text(prog, sizeof(prog), x->done_bytes, x->size, x->rate.bps);
	if (x->own)	/* Esc belongs to the user's own session there */
		snprintf(stop, sizeof(stop), "%s %c stops it", keyname(app.prefix_key), x->up ? 'u' : 'd');
	if (x->phase == XP_PAUSED)
		snprintf(out, cap, "%s %.100s paused at %llu of %llu bytes: %s", x->up ? "⇡" : "⇣", name,
			 (unsigned long long)x->done_bytes, (unsigned long long)x->size, x->own ?
			 "goes on when the device is back" : "r reopens its session and it goes on");
	else if (x->phase < XP_DATA)
		snprintf(out, cap, "%s %.100s: %s", x->up ? "⇡" : "⇣", name, x->phase == XP_ASK ?
			 "waiting for your answer" : "starting…");
	else
		snprintf(out, cap, "%s %.100s %s  │ %s", x->up ? "⇡" : "⇣", name, prog,
			 x->stopping ? "stopping…" : stop);
	return 1;
}

/*** starting one ***/

static void expand_home(const char *in, char *out, size_t cap)	/* a local ~/ is $HOME/ */
{
	const char *home = getenv("HOME");

	if (in[0] == '~' && (in[1] == '/' || !in[1]) && home)
		snprintf(out, cap, "%s%s", home, in + 1);
	else
		snprintf(out, cap, "%s", in);
}

static int is_dir(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* A download's local name: into a folder (or a path ending in /) under
 * the remote file's name. */
static void download_target(const char *local, const char *remote, char *out, size_t cap)
{
	size_t n = strlen(local);

	if (!n || local[n - 1] == '/' || is_dir(local))
		snprintf(out, cap, "%s%s%s", n ? local : ".", n && local[n - 1] == '/' ? "" : "/", base_name(remote));
	else
		snprintf(out, cap, "%s", local);
}

/* The local end of a new transfer: the source opened (upload) or the part
 * file made beside the target (download).  NULL with why in words. */
static struct xfer *xfer_new(struct tunnel *t, int up, const char *local, const char *remote,
			     char *why, size_t cap)
{
	struct xfer *x = xcalloc(sizeof(*x));
	struct stat st;

	x->tunnel = t;
	x->up = up;
	x->fd = -1;
	random_hex(x->id, 4);
	copy_str(x->local, sizeof(x->local), local);
	if (up) {
		xfer_up_target(x, remote[0] ? remote : ".");
		x->fd = open(local, O_RDONLY | O_CLOEXEC);
		if (x->fd >= 0 && fstat(x->fd, &st) == 0 && S_ISREG(st.st_mode))
			xfer_chunks(x, (uint64_t)st.st_size);
		else
			snprintf(why, cap, "%s: %s", local, x->fd < 0 ? strerror(errno) : "not a regular file");
	} else {
		copy_str(x->remote, sizeof(x->remote), remote);
		part_name(local, x->id, x->part, sizeof(x->part));
		x->fd = open(x->part, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (x->fd < 0) {
			snprintf(why, cap, "%s: %s", x->part, strerror(errno));
			x->part[0] = '\0';	/* not ours to remove */
		}
	}
	if (up ? x->state != NULL : x->fd >= 0)
		return x;
	xfer_free(x);
	return NULL;
}

/* It begins: in the host session at its prompt (a one-session device),
 * or in a session of its own that logs in first. */
static void xfer_launch(struct xfer *x, struct session *host, const char *password, size_t len)
{
	struct tunnel *t = x->tunnel;

	t->xfer = x;
	if (host) {
		x->session = host;
		host->xfer = x;
		xfer_begin(x);
		return;
	}
	x->own = 1;
	x->phase = XP_LOGIN;
	x->session = session_new(t, x->origin ? x->origin->user : t->cfg.username);
	x->session->xfer = x;
	x->session->attached = 1;
	snprintf(x->session->title, sizeof(x->session->title), "%s %.50s", x->up ? "⇡" : "⇣",
		 base_name(x->up ? x->local : x->remote));
	if (!x->job) {
		x->password = secret_dup(password, len);
		x->password_len = len;
	}
	session_login(x->session, password, len);
}

static struct xfer *xasking;	/* the transfer whose question is open */

static struct xfer *xfer_live(struct xfer *x)	/* x, if it still exists */
{
	for (struct tunnel *t = app.tunnels; t && x; t = t->next)
		if (t->xfer == x)
			return x;
	return NULL;
}

static void replace_yes(void)	/* the upload replaces the remote file */
{
	struct xfer *x = xfer_live(xasking);

	if (x && x->phase == XP_ASK) {
		x->overwrite = 1;
		x->phase = XP_DATA;
		xfer_step(x);
	}
}

static void replace_no(void)
{
	struct xfer *x = xfer_live(xasking);

	if (x && x->phase == XP_ASK) {
		snprintf(x->why, sizeof(x->why), "%.180s exists on the device: not replaced", x->remote);
		x->status = "exists";
		xfer_stop(x);
	}
}

/* The remote file exists: the user says (a batch run has said, with
 * --overwrite or not). */
static void xfer_ask_replace(struct xfer *x, long long size)
{
	char shown[PATH_MAX];

	x->phase = XP_ASK;
	xasking = x;
	if (x->job || !app.ui_up || app.mode != M_NORMAL) {
		replace_no();
		return;
	}
	confirm(replace_yes, "%s:%s exists (%lld bytes). Replace it?", x->tunnel->cfg.name,
		xfer_remote_shown(x, shown, sizeof(shown)), size);
	app.dlg.on_no = replace_no;
}

/*** Ctrl-g u / d: the dialog ***/

enum { XF_LOCAL, XF_REMOTE, XF_PASSWORD };

static struct xdialog {	/* the transfer dialog */
	struct tunnel *tunnel;
	struct session *origin;
	int up;
	char local[PATH_MAX], remote[PATH_MAX];
	size_t local_len, remote_len;
	int field;			/* XF_* */
	int need_password;
	int replace_ok, prompt_ok;	/* questions answered yes */
	char matches[200];		/* Tab's candidates, when several */
} xdlg;

static const int xfield_order[2][3] = {	/* download, upload: the fields top down */
	{ XF_REMOTE, XF_LOCAL, XF_PASSWORD }, { XF_LOCAL, XF_REMOTE, XF_PASSWORD },
};

/* The remote folder the host shell is most likely in: its window title or
 * prompt line, else the directory a transfer there last saw. */
static void guess_remote_dir(const struct session *s, char *out, size_t cap)
{
	char line[512];

	row_text(s, s->sb_count + s->vt.row, line, sizeof(line));
	if (!cwd_from_text(s->title, out, cap) && !cwd_from_text(line, out, cap))
		snprintf(out, cap, "%s", s->tunnel->xfer_cwd);
	if (out[0] && out[strlen(out) - 1] != '/')
		strncat(out, "/", cap - strlen(out) - 1);
}

static void xdialog_open(struct tunnel *t, struct session *s, int up)
{
	struct xdialog *d = &xdlg;
	char cwd[PATH_MAX];

	memset(d, 0, sizeof(*d));
	d->tunnel = t;
	d->origin = s;
	d->up = up;
	guess_remote_dir(s, d->remote, sizeof(d->remote));
	if (getcwd(cwd, sizeof(cwd)))
		snprintf(d->local, sizeof(d->local), "%.4000s/", strcmp(cwd, "/") ? cwd : "");
	d->local_len = strlen(d->local);
	d->remote_len = strlen(d->remote);
	d->need_password = !tunnel_single(t) && !s->password;
	d->field = xfield_order[up][0];
	explicit_bzero(app.dlg.password, 1024);
	app.dlg.password_len = 0;
	app.mode = M_XFER;
	ui_dirty();
}

static void act_transfer_cancel(void)	/* "yes" to stopping the device's transfer */
{
	if (app.sel_tunnel && app.sel_tunnel->xfer)
		xfer_cancel(app.sel_tunnel->xfer);
}

/* u / d: one transfer a device at a time, as the selected session's user;
 * on a one-session device not over a full-screen program. */
static void act_transfer(const union arg *arg)
{
	struct tunnel *t = app.sel_tunnel;
	struct session *s = app.sel_session;

	if (t && t->xfer)
		confirm(act_transfer_cancel, "Stop the %s of %s?", xfer_verb(t->xfer, 0),
			base_name(t->xfer->up ? t->xfer->local : t->xfer->remote));
	else if (!s || s->state != S_LIVE || s->xfer)	/* not a transfer's own session either */
		flash_msg("select a live session: a transfer runs as its user (%s n logs in)",
			  keyname(app.prefix_key));
	else if (tunnel_single(t) && s->altscreen)
		flash_msg("%s runs one session and a full-screen program is in it: leave the program, "
			  "then %s %c again", t->cfg.name, keyname(app.prefix_key), arg->i ? 'u' : 'd');
	else
		xdialog_open(t, s, arg->i);
}

static int looks_like_prompt(const struct session *s)	/* the cursor's line ends in $ # > % */
{
	char line[512];
	size_t n;

	row_text(s, s->sb_count + s->vt.row, line, sizeof(line));
	n = strlen(line);
	while (n && line[n - 1] == ' ')
		n--;
	return n && strchr("$#>%", line[n - 1]);
}

static void xdialog_submit(void);

static void replace_local_yes(void)	/* "yes": the local file may be replaced */
{
	xdlg.replace_ok = 1;
	xdialog_submit();
}

static void not_prompt_yes(void)	/* "yes": type at that line all the same */
{
	xdlg.prompt_ok = 1;
	xdialog_submit();
}

/* The questions a start may need, asked before anything happens: a local
 * file to replace, a host line that is not a prompt.  1 when one is open. */
static int xdialog_asks(const char *target)
{
	struct xdialog *d = &xdlg;

	if (!d->up && !d->replace_ok && access(target, F_OK) == 0) {
		confirm(replace_local_yes, "%s exists here. Replace it?", target);
		return 1;
	}
	if (tunnel_single(d->tunnel) && !d->prompt_ok && !looks_like_prompt(d->origin)) {
		confirm(not_prompt_yes, "The line at %s's cursor does not look like a shell prompt; the "
			"transfer types its commands there. Go on?", d->tunnel->cfg.name);
		return 1;
	}
	return 0;
}

/* Enter: the paths checked, the questions asked, then it starts. */
static void xdialog_submit(void)
{
	struct xdialog *d = &xdlg;
	char local[PATH_MAX], target[PATH_MAX], why[PATH_MAX + 100] = "";
	struct session *o = d->origin;
	struct xfer *x;

	app.mode = M_NORMAL;
	ui_dirty();
	expand_home(d->local, local, sizeof(local));
	if (!d->up && (!d->remote[0] || d->remote[strlen(d->remote) - 1] == '/')) {
		flash_msg("name the remote file to download");
		return;
	}
	if (d->tunnel->xfer || o->state != S_LIVE || (tunnel_single(d->tunnel) && o->altscreen)) {
		flash_msg("%s: cannot start now: the session changed", d->tunnel->cfg.name);
		return;
	}
	if (d->up)
		copy_str(target, sizeof(target), local);
	else
		download_target(local, d->remote, target, sizeof(target));
	if (xdialog_asks(target))
		return;
	if (!(x = xfer_new(d->tunnel, d->up, target, d->remote, why, sizeof(why)))) {
		flash_msg("%s", why);
		return;
	}
	x->origin = o;
	x->overwrite = d->replace_ok;
	xfer_launch(x, tunnel_single(d->tunnel) ? o : NULL, d->need_password ? app.dlg.password : o->password,
		    d->need_password ? app.dlg.password_len : o->password_len);
	explicit_bzero(app.dlg.password, 1024);
	app.dlg.password_len = 0;
}

static size_t common_prefix(const char *a, const char *b)
{
	size_t n = 0;

	while (a[n] && a[n] == b[n])
		n++;
	return n;
}

/* Tab in the local path: as far as the folder's names agree; a folder
 * gets its '/'; several candidates are listed under the field. */
static void complete_local(char *path, size_t cap, size_t *len, char *list, size_t lcap)
{
	const char *base = base_name(path);
	char dir[PATH_MAX], look[PATH_MAX], common[NAME_MAX + 1] = "", full[PATH_MAX];
	size_t blen = strlen(base);
	struct dirent *e;
	DIR *dh;
	int n = 0;

	snprintf(dir, sizeof(dir), "%.*s", (int)(base - path), path);
	expand_home(dir[0] ? dir : "./", look, sizeof(look));
	list[0] = '\0';
	if (!(dh = opendir(look)))
		return;
	while ((e = readdir(dh))) {
		if (strncmp(e->d_name, base, blen) || !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
		    (e->d_name[0] == '.' && base[0] != '.'))
			continue;
		if (n++)
			common[common_prefix(common, e->d_name)] = '\0';
		else
			copy_str(common, sizeof(common), e->d_name);
		if (strlen(list) + strlen(e->d_name) + 2 < lcap)
			snprintf(list + strlen(list), lcap - strlen(list), "%s%s", list[0] ? "  " : "", e->d_name);
	}
	closedir(dh);
	snprintf(full, sizeof(full), "%s%s", look, common);
	if (n && strlen(path) + strlen(common) - blen + 1 < cap)
		snprintf(path + (base - path), cap - (size_t)(base - path), "%s%s", common,
			 n == 1 && is_dir(full) ? "/" : "");
	if (n == 1)
		list[0] = '\0';
	*len = strlen(path);
}

static void xdialog_move(int by)	/* to the next or previous field */
{
	const int *order = xfield_order[xdlg.up];
	int fields = xdlg.need_password ? 3 : 2, at = 0;

	while (order[at] != xdlg.field)
		at++;
	xdlg.field = order[(at + by + fields) % fields];
}

static void xdialog_clear(void)	/* ^U: the focused field empty */
{
	struct xdialog *d = &xdlg;

	if (d->field == XF_PASSWORD) {
		explicit_bzero(app.dlg.password, 1024);
		app.dlg.password_len = 0;
	} else {
		*(d->field == XF_LOCAL ? d->local : d->remote) = '\0';
		*(d->field == XF_LOCAL ? &d->local_len : &d->remote_len) = 0;
	}
}

static void key_xfer(int ch, int fn)	/* the transfer dialog */
{
	struct xdialog *d = &xdlg;
	char *text = d->field == XF_LOCAL ? d->local : d->remote;
	size_t *len = d->field == XF_LOCAL ? &d->local_len : &d->remote_len;

	if (!fn && ch == 27) {
		explicit_bzero(app.dlg.password, 1024);
		app.dlg.password_len = 0;
		app.mode = M_NORMAL;
	} else if ((!fn && (ch == '\r' || ch == '\n')) || (fn && ch == KEY_ENTER)) {
		xdialog_submit();
	} else if (!fn && ch == '\t' && d->field == XF_LOCAL) {
		complete_local(d->local, sizeof(d->local), &d->local_len, d->matches, sizeof(d->matches));
	} else if ((!fn && ch == '\t') || (fn && (ch == KEY_DOWN || ch == KEY_UP || ch == KEY_BTAB))) {
		xdialog_move(fn && (ch == KEY_UP || ch == KEY_BTAB) ? -1 : 1);
	} else if (!fn && ch == 0x15) {	/* ^U */
		xdialog_clear();
	} else if (d->field == XF_PASSWORD) {
		mask_shuffle();	/* as the login dialog: the bullets say nothing of the length */
		field_type(app.dlg.password, 1024, &app.dlg.password_len, ch, fn);
	} else {
		field_type(text, PATH_MAX, len, ch, fn);
		d->matches[0] = '\0';
	}
	ui_dirty();
}

static const char *field_tail(const char *text, int cols)	/* the end of text that fits */
{
	const char *p = text + strlen(text);

	while (p > text && text_cols(p) < cols - 1)
		p = text + utf8_back(text, (size_t)(p - text) - 1);
	return p;
}

static void draw_xfer_dialog(void)	/* Ctrl-g u / d */
{
	static const char *const labels[] = { [XF_LOCAL] = "local", [XF_REMOTE] = "remote",
					      [XF_PASSWORD] = "password" };
	struct xdialog *d = &xdlg;
	int w = box_width(COLS * 3 / 4 > 60 ? COLS * 3 / 4 : 60, 60), x0 = (COLS - w) / 2, y0 = LINES / 2 - 4;
	int fields = d->need_password ? 3 : 2, h = fields + 4 + (d->matches[0] != '\0'), cy = y0, cx = x0;
	char title[120];

	snprintf(title, sizeof(title), "%s %s", d->up ? "upload to" : "download from", d->tunnel->cfg.name);
	draw_box(y0, x0, h, w, title);
	for (int i = 0; i < fields; i++) {
		int f = xfield_order[d->up][i], sel = f == d->field;
		const char *text = f == XF_LOCAL ? d->local : f == XF_REMOTE ? d->remote : "";
		const char *tail = field_tail(text, w - 15);

		put(y0 + 1 + i, x0 + 2, 10, C_STATUS, sel ? A_BOLD : 0, "%s", labels[f]);
		if (f == XF_PASSWORD)
			put(y0 + 1 + i, x0 + 12, w - 14, C_STATUS, 0, "%.*s", mask_cols() * 3, bullets);
		else
			put(y0 + 1 + i, x0 + 12, w - 14, C_STATUS, 0, "%s%s", tail != text ? "…" : "", tail);
		if (sel) {
			cy = y0 + 1 + i;
			cx = x0 + 12 + (f == XF_PASSWORD ? mask_cols() :
					text_cols(tail) + (tail != text));
		}
	}
	if (d->matches[0])
		put(y0 + 1 + fields, x0 + 2, w - 4, C_STATUS, A_DIM, "%s", d->matches);
	put(y0 + h - 2, x0 + 2, w - 4, C_STATUS, A_DIM, "Enter starts · Tab completes (local) · ↑↓ fields · ^U clears · Esc");
	move(cy, cx);
	curs_set(1);
}

/*** --put LOCAL REMOTE, --get REMOTE LOCALDIR ***/

/* A transfer job's outcome into its summary row. */
static void batch_xfer_done(struct xfer *x)
{
	struct batch_job *j = x->job;

	j->bytes = x->ok ? x->size : x->done_bytes;
	if (x->ok)
		snprintf(j->checksum, sizeof(j->checksum), "%s:%s", x->plan.file->name, x->hash);
	batch_finish(j, x->ok ? "ok" : x->status ? x->status : "failed", "%s", x->ok ? "" : x->why);
	j->xfer = NULL;
}

/* The device's transfer, before its session exists: --get writes into
 * DIR/DEVICE/NAME; neither end replaces a file without --overwrite.
 * 0, or -1 when the job is over already. */
static int batch_xfer_prepare(struct batch_job *j)
{
	struct batch *b = app.batch;
	char dir[PATH_MAX], name[64], local[PATH_MAX], why[PATH_MAX + 100] = "";
	struct xfer *x;

	if (b->kind == B_GET) {
		safe_component(j->tunnel->cfg.name, name, sizeof(name));
		snprintf(dir, sizeof(dir), "%.3000s/%s", b->to, name);
		snprintf(local, sizeof(local), "%.3900s/%.190s", dir, base_name(b->from));
		if (mkdir_p(dir) < 0) {
			batch_finish(j, "failed", "%s: %s", dir, strerror(errno));
			return -1;
		}
		if (!b->overwrite && access(local, F_OK) == 0) {
			batch_finish(j, "exists", "%s exists here (--overwrite replaces it)", local);
			return -1;
		}
	}
	x = xfer_new(j->tunnel, b->kind == B_PUT, b->kind == B_PUT ? b->from : local,
		     b->kind == B_PUT ? b->to : b->from, why, sizeof(why));
	if (!x) {
		batch_finish(j, "failed", "%s", why);
		return -1;
	}
	x->job = j;
	x->overwrite = b->overwrite;
	j->xfer = x;
	return 0;
}

/************************************************************************
 *** 14. startup and exit: terminal restore, signals, command line, main
 ************************************************************************/

static struct termios saved_tty;	/* the outer terminal as we found it */
static int saved_tty_ok;
#define MOUSE_ON  "\033[?1000h\033[?1002h\033[?1006h"	/* clicks, drags; SGR coordinates */
#define MOUSE_OFF "\033[?1006l\033[?1002l\033[?1000l"
static const char tty_reset[] = MOUSE_OFF "\033[?2004l\033[?1049l\033[?25h\033[0m\r\n";

static void restore_tty(void)	/* async-signal-safe: termios and modes */
{
	if (!saved_tty_ok)
		return;
	(void)!write(1, tty_reset, sizeof(tty_reset) - 1);
	tcsetattr(0, TCSANOW, &saved_tty);
}

static void on_crash(int sig)	/* a fatal signal: restore, then die of it */
{
	restore_tty();
	signal(sig, SIG_DFL);
	raise(sig);
}

/* The console needs a terminal that can move its cursor: say so plainly,
 * before curses would draw garbage or exit with its own words. */
static void check_terminal(void)
{
	const char *term = getenv("TERM");

	if (!isatty(0) || !isatty(1))
		usage_error("the console needs a terminal on stdin and stdout (for scripts: --exec)");
	if (!term || !*term || !strcmp(term, "dumb"))
		usage_error("TERM=%s cannot show the console: it needs cursor movement "
			    "(e.g. TERM=xterm-256color)", term && *term ? term : "(unset)");
}

static void curses_on(void)	/* newterm, not initscr: a bad TERM is our error to word */
{
	const char *term = getenv("TERM");
	char *cup;

	if (!newterm(NULL, stdout, stdin))
		usage_error("TERM=%s is not in this machine's terminfo database", term);
	cup = tigetstr("cup");
	if (!cup || cup == (char *)-1) {
		endwin();
		usage_error("TERM=%s cannot move the cursor: the console cannot draw on it", term);
	}
}

static void ui_start(void)	/* curses on; the crash path restores the tty */
{
	static const int fatal[] = { SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL };

	saved_tty_ok = tcgetattr(0, &saved_tty) == 0;
	for (size_t i = 0; i < sizeof(fatal) / sizeof(*fatal); i++)
		signal(fatal[i], on_crash);
	curses_on();
	app.ui_up = 1;
	list_fit();
	if (has_colors()) {	/* NO_COLOR is about our colours, not the remote's */
		start_color();
		use_default_colors();
		app.colors = COLORS;
	}
	app.mono = !app.colors || (getenv("NO_COLOR") && *getenv("NO_COLOR"));
	raw();
	noecho();
	nonl();
	keypad(stdscr, TRUE);
	nodelay(stdscr, TRUE);
	typeahead(-1);	/* no poll of the keyboard in every refresh: keys are read by the loop */
	set_escdelay(25);
	app.cursor_shown = 1;	/* as curses starts */
	fputs("\033[?2004h", stdout);	/* bracketed paste from the outer terminal */
	fputs(app.mouse_off ? "" : MOUSE_ON, stdout);
	fflush(stdout);
	ui_dirty();
}

static void ui_end(void)	/* curses off; the terminal as it was */
{
	if (!app.ui_up)
		return;
	app.ui_up = 0;
	fputs(app.mouse_off ? "\033[?2004l" : MOUSE_OFF "\033[?2004l", stdout);
	fflush(stdout);
	endwin();
	if (saved_tty_ok)
		tcsetattr(0, TCSANOW, &saved_tty);
}

static void on_resize(void)	/* SIGWINCH: follow the outer terminal's size */
{
	struct winsize ws;

	/* resize_term, not resizeterm: that one also pushes KEY_RESIZE into
	 * curses' 136-entry input queue, whose handling of it can drop what
	 * else waits there (a paste once lost exactly 136 characters) */
	if (ioctl(1, TIOCGWINSZ, &ws) == 0 && ws.ws_row && ws.ws_col)
		resize_term(ws.ws_row, ws.ws_col);
	list_fit();
	clearok(curscr, TRUE);
	app.redraw = 1;
	ui_dirty();
}

static void signal_readable(int fd)	/* signals arrive as data (race-free) */
{
	struct signalfd_siginfo si;

	while (read(fd, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo == SIGWINCH) {
			on_resize();
			continue;
		}
		log_line("signal %u: quitting", si.ssi_signo);
		app.exit_code = 128 + (int)si.ssi_signo;
		quit_now();
	}
}

static void adopt(int fd, void *what)	/* a descriptor into the lws loop */
{
	lws_adopt_desc_t d = {
		.vh = app.vhost, .type = LWS_ADOPT_RAW_FILE_DESC,
		.fd = { .filefd = fd }, .vh_prot_name = "tunnel", .opaque = what,
	};

	if (!lws_adopt_descriptor_vhost_via_info(&d))
		die("cannot watch descriptor %d", fd);
}

/* SIGWINCH, SIGINT, SIGTERM, SIGHUP become readable data in the loop. */
static int signals_block(void)	/* to a signalfd, adopted once lws runs */
{
	sigset_t set;
	int fd;

	signal(SIGPIPE, SIG_IGN);
	signal(SIGXFSZ, SIG_IGN);	/* a size limit fails the write: shown, not fatal */
	sigemptyset(&set);
	sigaddset(&set, SIGWINCH);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, NULL);
	fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (fd < 0)
		die("signalfd: %s", strerror(errno));
	return fd;
}

static const char usage_text[] =
"usage: tunnel_tui [options] [URL...]\n"
"A split-screen console for devices behind IoTDA secure tunnels.\n"
"\n"
"  -c, --config FILE      devices file (default $XDG_CONFIG_HOME/tunnel_tui/devices.conf)\n"
"      --tunnel-json FILE a create-tunnel API response (tunnel_uri, tunnel_access_token)\n"
"      --token-file FILE  the token for URL arguments (or env TUNNEL_TUI_TOKEN)\n"
"      --cacert FILE      trust this CA as well as the system's\n"
"      --insecure         do not verify TLS certificates (shown on screen)\n"
"      --allow-plaintext  allow ws:// and http:// to other machines (shown on screen)\n"
"      --log FILE         write events here (never secrets)\n"
"      --record-dir DIR   where recordings go (default $XDG_STATE_HOME/tunnel_tui/recordings)\n"
"      --user NAME        the login name for devices that set none (--exec: for all)\n"
"      --device-id ID     open device ID through the IoTDA API ([iotda] in the config;\n"
"                         HUAWEICLOUD_SDK_AK/SK or [iotda] token_file); repeatable\n"
"\n"
"Batch: tunnel_tui --exec 'COMMAND' [-c FILE] (--all | --devices a,b,... | --where C...)\n"
"        [--password-file FILE] [--timeout S] [--outdir DIR] [--raw] [--parallel N] [--force]\n"
"  --where C picks devices from the IoTDA API's list (C: status=ONLINE, name~pump,\n"
"  product=..., id~...; repeatable, all must hold).  --parallel N (default 20, at most\n"
"  100) devices at once; API calls are paced and back off when the API is busy.\n"
"  A device another tunnel_tui holds is refused unless --force.\n"
"  runs COMMAND on each device in parallel, prints \"device | line\" (or one\n"
"  file per device in DIR), then a summary; exit 0 only if every device ran it\n"
"  with status 0.  Password: --password-file, TUNNEL_TUI_PASSWORD or a prompt.\n"
"  To a terminal, output is cleaned of escapes (as all device text); --raw\n"
"  passes it as it came; --outdir files are always byte-exact.\n"
"Files: tunnel_tui --put LOCAL REMOTE | --get REMOTE LOCALDIR, with the same device\n"
"  choice, password, --parallel, --force and --timeout (default none) as --exec.\n"
"  REMOTE may be a folder; --get writes LOCALDIR/DEVICE/NAME.  Each file is\n"
"  checked chunk by chunk and whole (sha256, or md5), under a temporary name\n"
"  until then; a lost tunnel is reconnected and the transfer goes on.  Files\n"
"  there are not replaced unless --overwrite.  Summary: bytes, checksum, time;\n"
"  exit 0 only if every device's file was verified.\n"
"  -h, --help             this help\n"
"  -V, --version          the version\n"
"\n"
"Keys: Ctrl-g then ? lists them.  Exit status: 0 normal, 1 runtime error,\n"
"2 bad usage or configuration, 128+N killed by signal N.  See tunnel_tui(1).\n";

struct options {	/* the command line */
	const char *config, *tunnel_json, *cacert, *log, *record_dir;
	const char *exec, *devices, *password_file, *outdir, *user;
	const char *device_ids[64];	/* --device-id, repeatable */
	int ndevice_ids;
	int all, timeout_s;
	int raw;			/* --raw: --exec output as it came */
	const char *where[8];		/* --where: devices picked through the API */
	int nwhere;
	int parallel;			/* --parallel: devices at once (--exec) */
	int force;			/* --force: devices another console holds too */
	int urls_from;			/* argv index of the first URL */
	const char *put, *put_to;	/* --put LOCAL REMOTE */
	const char *get, *get_to;	/* --get REMOTE LOCALDIR */
	int overwrite;			/* --overwrite: --put/--get may replace files */
};

static int batch_wanted(const struct options *o)	/* --exec, --put or --get: no screen */
{
	return o->exec || o->put || o->get;
}

/* --put and --get take two arguments: the second is the next word. */
static const char *second_arg(int argc, char **argv, const char *opt)
{
	if (optind >= argc || !argv[optind][0])
		usage_error("%s needs two arguments (--put LOCAL REMOTE, --get REMOTE LOCALDIR)", opt);
	return argv[optind++];
}

static void usage_error(const char *fmt, ...)	/* exit 2 with a reason, the terminal as it was */
{
	va_list ap;

	fputs("tunnel_tui: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\n(tunnel_tui --help lists the options)\n", stderr);
	exit(2);
}

static void add_where(struct options *o, const char *expr)	/* --where FIELD=V | FIELD~V */
{
	struct pick probe = { 0 };

	if (o->nwhere == 8)
		usage_error("at most 8 --where");
	if (where_match(&probe, expr) < 0)
		usage_error("--where %s: expected FIELD=VALUE or FIELD~VALUE, FIELD one of name, id, "
			    "product, status (e.g. status=ONLINE, name~pump)", expr);
	o->where[o->nwhere++] = expr;
}

static const struct option longopts[] = {	/* the command line: see usage_text */
	{ "config", required_argument, NULL, 'c' },
	{ "tunnel-json", required_argument, NULL, 'j' },
	{ "token-file", required_argument, NULL, 't' },
	{ "cacert", required_argument, NULL, 'a' },
	{ "insecure", no_argument, NULL, 'k' },
	{ "allow-plaintext", no_argument, NULL, 'P' },
	{ "raw", no_argument, NULL, 'R' },
	{ "where", required_argument, NULL, 'W' },
	{ "parallel", required_argument, NULL, 'N' },
	{ "force", no_argument, NULL, 'F' },
	{ "log", required_argument, NULL, 'l' },
	{ "record-dir", required_argument, NULL, 'r' },
	{ "exec", required_argument, NULL, 'e' },
	{ "all", no_argument, NULL, 'A' },
	{ "devices", required_argument, NULL, 'd' },
	{ "user", required_argument, NULL, 'u' },
	{ "password-file", required_argument, NULL, 'p' },
	{ "timeout", required_argument, NULL, 'T' },
	{ "outdir", required_argument, NULL, 'o' },
	{ "device-id", required_argument, NULL, 'D' },
	{ "put", required_argument, NULL, 'U' },
	{ "get", required_argument, NULL, 'G' },
	{ "overwrite", no_argument, NULL, 'O' },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, 'V' },
	{ NULL, 0, NULL, 0 } };

static void parse_args(int argc, char **argv, struct options *o, struct config *c)
{	/* options into o and c; exits on --help, --version and errors */
	int ch;

	while ((ch = getopt_long(argc, argv, "c:hV", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': o->config = optarg; break;
		case 'j': o->tunnel_json = optarg; break;
		case 't': copy_str(c->token_file, sizeof(c->token_file), optarg); break;
		case 'a': o->cacert = optarg; break;
		case 'k': app.insecure = 1; break;
		case 'P': app.allow_plaintext = 1; break;
		case 'R': o->raw = 1; break;
		case 'W': add_where(o, optarg); break;
		case 'N':
			if (parse_int(optarg, 1, BATCH_PARALLEL_MAX, &o->parallel) < 0)
				usage_error("--parallel must be 1-%d", BATCH_PARALLEL_MAX);
			break;
		case 'F': o->force = 1; break;
		case 'l': o->log = optarg; break;
		case 'r': o->record_dir = optarg; break;
		case 'e': o->exec = optarg; break;
		case 'U': o->put = optarg; o->put_to = second_arg(argc, argv, "--put"); break;
		case 'G': o->get = optarg; o->get_to = second_arg(argc, argv, "--get"); break;
		case 'O': o->overwrite = 1; break;
		case 'A': o->all = 1; break;
		case 'd': o->devices = optarg; break;
		case 'u': o->user = optarg; break;
		case 'p': o->password_file = optarg; break;
		case 'T': o->timeout_s = atoi(optarg); break;
		case 'o': o->outdir = optarg; break;
		case 'D':
			if (o->ndevice_ids == 64)
				usage_error("at most 64 --device-id");
			o->device_ids[o->ndevice_ids++] = optarg;
			break;
		case 'h': fputs(usage_text, stdout); exit(0);
		case 'V': puts("tunnel_tui " TUNNEL_TUI_VERSION); exit(0);
		default: usage_error("bad option");
		}
	}
	o->urls_from = optind;
	if (!!o->exec + !!o->put + !!o->get > 1)
		usage_error("one of --exec, --put and --get at a time");
	if (o->get && (!*o->get || o->get[strlen(o->get) - 1] == '/'))
		usage_error("--get %s: name the remote file, not a folder", o->get);
	if (o->put && access(o->put, R_OK) < 0)
		usage_error("--put %s: %s", o->put, strerror(errno));
}

static void default_config_path(char *out, size_t cap)	/* XDG, else ~/.config */
{
	const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");

	if (xdg && *xdg)
		snprintf(out, cap, "%s/tunnel_tui/devices.conf", xdg);
	else
		snprintf(out, cap, "%s/.config/tunnel_tui/devices.conf", home ? home : ".");
}

static void set_record_dir(const struct options *o, const struct config *c)
{	/* --record-dir, else record_dir =, else the XDG state folder */
	const char *xdg = getenv("XDG_STATE_HOME"), *home = getenv("HOME");

	if (o->record_dir)
		copy_str(app.record_dir, sizeof(app.record_dir), o->record_dir);
	else if (c->record_dir[0])
		copy_str(app.record_dir, sizeof(app.record_dir), c->record_dir);
	else if (xdg && *xdg)
		snprintf(app.record_dir, sizeof(app.record_dir), "%.3000s/tunnel_tui/recordings", xdg);
	else
		snprintf(app.record_dir, sizeof(app.record_dir), "%.3000s/.local/state/tunnel_tui/recordings",
			 home ? home : ".");
}

static void load_config_file(struct config *c, const char *path, int required)
{	/* the devices file; a missing default file is no error */
	char err[PATH_MAX + 300] = "", *text;

	if (!required && access(path, F_OK) != 0)
		return;
	text = read_file(path, 1 << 20, NULL, err, sizeof(err));
	if (!text || config_parse(c, text, path, err, sizeof(err)) < 0)
		usage_error("%s", err);
	free(text);
}

/* URL arguments share --token-file or TUNNEL_TUI_TOKEN. */
static void add_url_args(struct config *c, int argc, char **argv, int from)
{
	char err[PATH_MAX + 100] = "", warn[160] = "";
	char *token = NULL;

	if (from >= argc)
		return;
	if (c->token_file[0])
		token = token_from_file(c->token_file, warn, sizeof(warn), err, sizeof(err));
	else if (getenv("TUNNEL_TUI_TOKEN"))
		token = token_from_env("TUNNEL_TUI_TOKEN", err, sizeof(err));
	else
		copy_str(err, sizeof(err), "URL arguments need --token-file or TUNNEL_TUI_TOKEN");
	if (!token)
		usage_error("%s", err);
	if (warn[0])
		copy_str(app.start_warning, sizeof(app.start_warning), warn);
	for (int i = from; i < argc; i++) {
		if (strncmp(argv[i], "ws://", 5) && strncmp(argv[i], "wss://", 6))
			usage_error("%s: a URL must start with wss:// or ws://", argv[i]);
		config_add_url(c, argv[i], NULL)->token = secret_dup(token, strlen(token));
	}
	secret_free(token);
}

static void build_tunnels(struct config *c, const struct options *o, char warns[][160])
{	/* one struct tunnel per device, in order */
	struct tunnel **tail = &app.tunnels;
	const char *why;

	for (int i = 0; i < c->ndev; i++) {
		struct tunnel *t = xcalloc(sizeof(*t));

		t->cfg = c->dev[i];
		if (t->cfg.url[0] && (why = plaintext_problem(t->cfg.url, app.allow_plaintext)))
			usage_error("device %s: %s", t->cfg.name, why);
		if (t->cfg.login_timeout_s < 0)
			t->cfg.login_timeout_s = c->login_timeout_s >= 0 ? c->login_timeout_s : LOGIN_TIMEOUT_S;
		if (o->user && (!t->cfg.username[0] || batch_wanted(o)))
			copy_str(t->cfg.username, sizeof(t->cfg.username), o->user);
		if (!t->cfg.cacert[0] && t->cfg.device_id[0])	/* its tunnel is the API's platform */
			copy_str(t->cfg.cacert, sizeof(t->cfg.cacert), c->iotda.cacert);
		if (!t->cfg.cacert[0] && o->cacert)
			copy_str(t->cfg.cacert, sizeof(t->cfg.cacert), o->cacert);
		if (t->cfg.cacert[0] && access(t->cfg.cacert, R_OK) < 0)	/* TLS would only say "unable to connect" */
			usage_error("device %s: CA file %s: %s", t->cfg.name, t->cfg.cacert, strerror(errno));
		t->rtt_ms = -1;
		if (warns[i][0])
			copy_str(t->event, sizeof(t->event), warns[i]);
		*tail = t;
		tail = &t->next;
	}
	app.sel_tunnel = app.tunnels;
}


/* The --exec password: a file, TUNNEL_TUI_PASSWORD, or one prompt on the
 * terminal with echo off.  Never the command line. */
static char *batch_password(const char *file, size_t *len)
{
	char err[PATH_MAX + 100] = "", warn[160] = "", line[1024] = "", *pw = NULL;
	struct termios old, quiet;
	FILE *tty;

	if (file && !(pw = secret_from_file(file, 1023, warn, sizeof(warn), err, sizeof(err))))
		usage_error("--password-file: %s", err);
	if (!pw && getenv("TUNNEL_TUI_PASSWORD"))
		pw = token_from_env("TUNNEL_TUI_PASSWORD", err, sizeof(err));
	if (!pw && (tty = fopen("/dev/tty", "r+"))) {
		fputs("Password: ", tty);
		fflush(tty);
		tcgetattr(fileno(tty), &old);
		quiet = old;
		quiet.c_lflag &= ~(tcflag_t)ECHO;
		tcsetattr(fileno(tty), TCSAFLUSH, &quiet);
		if (fgets(line, sizeof(line), tty))
			pw = secret_dup(line, strcspn(line, "\r\n"));
		tcsetattr(fileno(tty), TCSAFLUSH, &old);
		fputs("\n", tty);
		fclose(tty);
		explicit_bzero(line, sizeof(line));
	}
	if (!pw)
		usage_error("a batch run needs a password: --password-file, TUNNEL_TUI_PASSWORD or a terminal");
	*len = strlen(pw);
	return pw;
}

/* Keeps only the devices --all or --devices names, in config order (with
 * only --where: none of the file's). */
static void batch_select(struct config *c, const struct options *o)
{
	char list[4096], *save = NULL;
	int n = 0;

	if (!o->all && !o->devices && !o->nwhere)
		usage_error("--exec, --put and --get need --all, --devices a,b,... or --where CONDITION");
	copy_str(list, sizeof(list), o->devices ? o->devices : "");
	for (char *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
		int i = 0;

		while (i < c->ndev && strcmp(c->dev[i].name, trim(name)))
			i++;
		if (i == c->ndev)
			usage_error("--devices: no device \"%s\" in the configuration", trim(name));
		c->dev[i].line = -1;	/* chosen */
	}
	for (int i = 0; i < c->ndev; i++)
		if (o->all || c->dev[i].line == -1) {
			token_sources[n] = token_sources[i];
			c->dev[n++] = c->dev[i];
		} else {
			secret_free(c->dev[i].token);
		}
	c->ndev = n;
}

static void batch_open_outfile(struct batch_job *j, const char *dir)	/* DIR/DEVICE.out */
{
	char path[PATH_MAX];

	if (mkdir_p(dir) < 0)
		usage_error("--outdir %s: %s", dir, strerror(errno));
	char name[64];

	safe_component(j->tunnel->cfg.name, name, sizeof(name));
	snprintf(path, sizeof(path), "%.3000s/%s.out", dir, name);
	j->file = open_private(path, O_TRUNC, "w");
	if (!j->file)
		usage_error("%s: %s", path, errno == ELOOP ? "a symbolic link: refused" : strerror(errno));
}

/* One job per tunnel, not yet started: the governor launches them. */
static void batch_prepare(struct batch *b, const struct options *o)
{
	unsigned char r[8];

	lws_get_random(app.ctx, r, sizeof(r));
	snprintf(b->nonce, sizeof(b->nonce), "%02x%02x%02x%02x%02x%02x%02x%02x",
		 r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
	for (struct tunnel *t = app.tunnels; t; t = t->next) {
		struct batch_job *j = &b->jobs[b->njobs++];

		if (!t->cfg.username[0])
			usage_error("device \"%s\" has no username: set one or give --user", t->cfg.name);
		j->tunnel = t;
		j->exit_code = -1;
		if ((int)strlen(t->cfg.name) > b->name_width)
			b->name_width = (int)strlen(t->cfg.name);
		if (o->outdir)
			batch_open_outfile(j, o->outdir);
	}
}

/* No screen to show warnings and badges on: configuration warnings and
 * what the links do not protect go to stderr before anything runs. */
static void batch_warn_links(void)
{
	if (app.start_warning[0])
		fprintf(stderr, "tunnel_tui: warning: %s\n", app.start_warning);
	for (struct tunnel *t = app.tunnels; t; t = t->next)
		if (t->event[0])	/* before it runs, an event is a configuration warning */
			fprintf(stderr, "tunnel_tui: warning: %s: %s\n", t->cfg.name, t->event);
	if (app.insecure)
		fputs("tunnel_tui: warning: --insecure: no TLS certificate is checked\n", stderr);
	for (struct tunnel *t = app.tunnels; t; t = t->next)
		if (tunnel_badge(t) && !strcmp(tunnel_badge(t), "PLAINTEXT"))
			fprintf(stderr, "tunnel_tui: warning: %s: plaintext (ws://): its token and "
				"password travel in clear\n", t->cfg.name);
}

static void on_batch_timeout(lws_sorted_usec_list_t *sul);

static void batch_launch(struct batch_job *j)	/* a session, its login, its tunnel */
{
	struct batch *b = app.batch;
	char holder[160];

	j->started = 1;
	j->start_us = now_us();
	if (device_lock(j->tunnel, b->force, holder, sizeof(holder)) < 0) {
		batch_finish(j, "locked", "held by %s: --force runs it anyway", holder);
		return;
	}
	j->tunnel->force_lock = b->force;
	if (b->kind != B_EXEC) {	/* the transfer logs its own session in */
		if (batch_xfer_prepare(j) < 0)
			return;
		xfer_launch(j->xfer, NULL, b->password, b->password_len);
		j->session = j->xfer->session;
	} else {
		j->session = session_new(j->tunnel, j->tunnel->cfg.username);
		session_login(j->session, b->password, b->password_len);
	}
	j->session->job = j;
	if (b->timeout_s)
		lws_sul_schedule(app.ctx, 0, &j->sul_timeout, on_batch_timeout,
				 (lws_usec_t)b->timeout_s * LWS_US_PER_SEC);
	tunnel_start(j->tunnel);
}

static int batch_running(const struct batch *b)	/* started and not done */
{
	int n = 0;

	for (int i = 0; i < b->njobs; i++)
		n += b->jobs[i].started && !b->jobs[i].done;
	return n;
}

static void batch_progress(int last)	/* done / running / left, on stderr */
{
	struct batch *b = app.batch;
	int running = batch_running(b), left = b->njobs - b->done - running;

	if (!last && now_us() - b->progress_us < 1000000)
		return;
	b->progress_us = now_us();
	fprintf(stderr, "%stunnel_tui: %d done, %d running, %d left%s", b->progress_tty ? "\r" : "",
		b->done, running, left, b->progress_tty && !last ? "\033[K" : "\n");
	fflush(stderr);
}

/* The governor, run from a timer (never inside the callback that ended a
 * job): finished jobs give their tunnel and slot back; pending ones start
 * while fewer than --parallel run; the last one ends the run. */
static void on_batch_step(lws_sorted_usec_list_t *sul)
{
	struct batch *b = lws_container_of(sul, struct batch, sul_step);

	for (int i = 0; i < b->njobs; i++) {
		struct batch_job *j = &b->jobs[i];

		if (j->done && j->started && !j->released) {
			j->released = 1;
			tunnel_close(j->tunnel);
		}
	}
	for (int i = 0; i < b->njobs && batch_running(b) < b->parallel; i++)
		if (!b->jobs[i].started)
			batch_launch(&b->jobs[i]);
	batch_progress(b->done == b->njobs);
	if (b->done == b->njobs)
		quit_now();
	else	/* progress shows each second, whatever happens */
		lws_sul_schedule(app.ctx, 0, &b->sul_step, on_batch_step, LWS_US_PER_SEC);
}

static void batch_kick(void)	/* the governor runs as soon as the loop is free */
{
	if (app.ctx)	/* none in the fuzzers: no loop to run it */
		lws_sul_schedule(app.ctx, 0, &app.batch->sul_step, on_batch_step, 1);
}

/* One device's row: exit code (--exec) or bytes and checksum (--put, --get). */
static void batch_summary_row(const struct batch *b, const struct batch_job *j)
{
	char code[16] = "-";
	double s = (double)(j->end_us - j->start_us) / 1e6;

	if (b->kind != B_EXEC) {
		printf("%-*s  %-12s %10llu %7.1fs  %s\n", b->name_width, j->tunnel->cfg.name, j->status,
		       (unsigned long long)j->bytes, s, j->checksum[0] ? j->checksum : j->detail);
		return;
	}
	if (j->exit_code >= 0)
		snprintf(code, sizeof(code), "%d", j->exit_code);
	printf("%-*s  %-12s %4s %7.1fs  %s\n", b->name_width, j->tunnel->cfg.name, j->status, code, s, j->detail);
}

/* Device, status, exit code or bytes, time; exit 0 only if all ran with
 * status 0 (every file verified). */
static int batch_summary(struct batch *b)
{
	int bad = 0;

	if (b->name_width < 6)
		b->name_width = 6;
	if (b->kind == B_EXEC)
		printf("\n%-*s  %-12s %4s %8s  %s\n", b->name_width, "DEVICE", "STATUS", "EXIT", "TIME", "DETAIL");
	else
		printf("\n%-*s  %-12s %10s %8s  %s\n", b->name_width, "DEVICE", "STATUS", "BYTES", "TIME",
		       "CHECKSUM / DETAIL");
	for (int i = 0; i < b->njobs; i++) {
		struct batch_job *j = &b->jobs[i];

		if (!j->done)
			batch_finish(j, "interrupted", "%s", "");
		if (j->xfer)	/* still running: it ends with the console, unreported */
			j->xfer->job = NULL;
		batch_summary_row(b, j);
		bad += strcmp(j->status, "ok") != 0;
		buf_free(&j->pre);
		buf_free(&j->line);
		buf_free(&j->held);
	}
	fflush(stdout);
	return bad ? 1 : 0;
}

static void on_where_listed(void)	/* every page in: the loop may go on */
{
	lws_cancel_service(app.ctx);
}

/* --where: the devices ListDevices names that meet every condition join
 * the run, by their IDs. */
static void batch_where(const struct options *o)
{
	picker.on_complete = on_where_listed;
	picker_load();
	while (!picker.complete && !app.quit && lws_service(app.ctx, 0) >= 0)
		;
	if (picker.error[0])
		usage_error("--where: list devices: %s", picker.error);
	for (int i = 0; i < picker.n; i++) {
		int all = 1;

		for (int k = 0; k < o->nwhere && all; k++)
			all = where_match(&picker.devs[i], o->where[k]) == 1;
		if (all && !tunnel_of_device(picker.devs[i].id))
			tunnel_add_by_id(picker.devs[i].id, picker.devs[i].name);
	}
	if (!app.tunnels)
		usage_error("--where: no device meets the conditions (%d listed)", picker.n);
}

/* --exec: the same tunnels and sessions, no screen; returns the exit code. */
static int batch_run(const struct options *o)
{
	struct batch b = { .command = o->exec, .outdir = o->outdir, .clean = isatty(1) && !o->raw,
			   .kind = o->put ? B_PUT : o->get ? B_GET : B_EXEC, .overwrite = o->overwrite,
			   .from = o->put ? o->put : o->get, .to = o->put ? o->put_to : o->get_to,
			   .timeout_s = o->timeout_s > 0 ? o->timeout_s : o->exec ? 60 : 0, .force = o->force,
			   .parallel = o->parallel ? o->parallel : BATCH_PARALLEL, .progress_tty = isatty(2) };
	int n = 0;

	b.password = batch_password(o->password_file, &b.password_len);
	if (o->nwhere)
		batch_where(o);
	for (struct tunnel *t = app.tunnels; t; t = t->next)
		n++;
	b.jobs = xcalloc((size_t)n * sizeof(*b.jobs));
	app.batch = &b;
	batch_warn_links();
	batch_prepare(&b, o);
	batch_kick();
	while (!app.quit && lws_service(app.ctx, 0) >= 0)
		;
	lws_sul_cancel(&b.sul_step);
	secret_free(b.password);
	n = batch_summary(&b);
	for (int i = 0; i < b.njobs; i++)	/* sessions outlive the jobs (until exit) */
		if (b.jobs[i].session)
			b.jobs[i].session->job = NULL;
	app.batch = NULL;
	free(b.jobs);
	return app.exit_code ? app.exit_code : n;
}

static void lws_log_emit(int level, const char *line)	/* lws → --log, never stderr */
{
	(void)level;
	log_line("lws: %.*s", (int)strcspn(line, "\n"), line);
}

static void wiping_free(void *p)	/* cJSON's free: parsed frames hold secrets */
{
	if (p)
		explicit_bzero(p, malloc_usable_size(p));
	free(p);
}

static void context_start(void)	/* the lws context and the vhosts (one per CA) */
{
	struct lws_context_creation_info info;

	memset(&info, 0, sizeof(info));
	info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT | LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.protocols = protocols;
	info.pt_serv_buf_size = 32 * 1024;	/* room for long tokens in the handshake */
	info.fd_limit_per_thread = 1024;
	app.ctx = lws_create_context(&info);
	if (!app.ctx)
		die("cannot start libwebsockets");
	app.vhost = vhost_for_ca("");
	for (struct tunnel *t = app.tunnels; t; t = t->next)
		t->vhost = vhost_for_ca(t->cfg.cacert);
	if (api.ak || api.iam_token)
		api.vhost = vhost_for_ca(api.cfg.cacert);
}

static void free_all(struct config *c)	/* everything, secrets wiped */
{
	while (app.tunnels) {
		struct tunnel *t = app.tunnels;

		app.tunnels = t->next;
		lane_clear(&t->control);	/* frames point at sessions: first */
		lane_clear(&t->held);
		lane_clear(&t->bulk);
		while (t->sessions) {
			struct session *s = t->sessions;

			t->sessions = s->next;
			session_free(s);
		}
		buf_free(&t->rx);
		secret_free(t->cfg.token);
		free(t);
	}
	while (api.calls)
		api_call_free(api.calls);
	while (api.waiting) {
		struct api_call *c = api.waiting;

		api.waiting = c->next;
		api_call_free(c);
	}
	secret_free(api.ak);
	secret_free(api.sk);
	secret_free(api.iam_token);
	secret_free(app.dlg.password);
	buf_free(&app.paste_buf);
	buf_free(&app.clip);
	buf_free(&app.offer.data);
	free(c->dev);
	free(token_sources);
}

/* What the screen shows that changes with time alone: retry countdowns,
 * the token countdown, a flash message.  Idle, it does not change. */
static uint64_t clock_text_hash(void)
{
	char text[64];
	uint64_t h = (uint64_t)(app.flash[0] && now_us() < app.flash_until_us);

	for (struct tunnel *t = app.tunnels; t; t = t->next) {
		tunnel_state_text(t, text, sizeof(text));
		for (const char *p = text; *p; p++)
			h = h * 131 + (unsigned char)*p;
	}
	if (app.sel_tunnel) {
		expiry_text(app.sel_tunnel, text, sizeof(text));
		for (const char *p = text; *p; p++)
			h = h * 131 + (unsigned char)*p;
	}
	return h;
}

static void on_tick(lws_sorted_usec_list_t *sul)	/* redraws only what time changed */
{
	static uint64_t last;
	uint64_t h;

	(void)sul;
	for (struct tunnel *t = app.tunnels; t; t = t->next)
		check_expiry(t);
	h = clock_text_hash();
	if (h != last)
		ui_dirty();
	last = h;
	lws_sul_schedule(app.ctx, 0, &app.sul_tick, on_tick, LWS_US_PER_SEC);
}

/* --device-id ID: a device named ID, opened through the API. */
static void add_device_ids(struct config *c, const struct options *o)
{
	char err[200];

	for (int i = 0; i < o->ndevice_ids; i++) {
		if (!c->iotda.endpoint[0] || !c->iotda.project_id[0])
			usage_error("--device-id needs an [iotda] section with endpoint and project_id (-c FILE)");
		if (config_add_device(c, o->device_ids[i], 0, err, sizeof(err)) < 0 ||
		    strlen(o->device_ids[i]) >= sizeof(c->dev[0].device_id))
			usage_error("--device-id %s: %s", o->device_ids[i], err[0] ? err : "too long");
		copy_str(c->dev[c->ndev - 1].device_id, sizeof(c->dev[0].device_id), o->device_ids[i]);
	}
}

/* Credentials for the API, needed when any device is opened by device_id:
 * AK/SK from the environment (as the official SDKs read them; the SK is
 * scrubbed from it) or an IAM token file. */
static void api_setup(const struct config *c, const struct options *o)
{
	char err[PATH_MAX + 100] = "", warn[160] = "";
	const char *ak = getenv("HUAWEICLOUD_SDK_AK");
	int needed = o->nwhere > 0, wanted = c->iotda.endpoint[0] && c->iotda.project_id[0];
	int creds = c->iotda.token_file[0] || (ak && *ak && getenv("HUAWEICLOUD_SDK_SK"));

	for (int i = 0; i < c->ndev; i++)
		needed |= c->dev[i].device_id[0] != '\0';
	if (needed && !wanted)
		usage_error("--where needs an [iotda] section with endpoint and project_id (-c FILE)");
	if (!needed && (!wanted || !creds))	/* the picker will say what it lacks */
		return;
	api.cfg = c->iotda;
	if (api.cfg.token_file[0] && !(api.iam_token = secret_from_file(api.cfg.token_file, 16384,
			warn, sizeof(warn), err, sizeof(err))))
		usage_error("[iotda] token_file: %s", err);
	if (!api.iam_token && (!ak || !*ak || !getenv("HUAWEICLOUD_SDK_SK")))
		usage_error("devices opened by device_id need HUAWEICLOUD_SDK_AK and "
			    "HUAWEICLOUD_SDK_SK, or [iotda] token_file");
	if (!api.iam_token && api.cfg.signing == SIGN_DERIVED && !api.cfg.region[0] &&
	    region_from_endpoint(api.cfg.endpoint, api.cfg.region, sizeof(api.cfg.region)) < 0)
		usage_error("[iotda] endpoint %s names no region: set region = (e.g. cn-north-4) "
			    "for derived signing, or signing = basic", api.cfg.endpoint);
	if (!api.iam_token) {
		api.ak = secret_dup(ak, strlen(ak));
		api.sk = token_from_env("HUAWEICLOUD_SDK_SK", err, sizeof(err));
		api.sk_len = strlen(api.sk);
	}
	if (plaintext_problem(api.cfg.endpoint, app.allow_plaintext))
		usage_error("[iotda] endpoint %s: %s", api.cfg.endpoint,
			    plaintext_problem(api.cfg.endpoint, app.allow_plaintext));
	if (!api.cfg.cacert[0] && o->cacert)
		copy_str(api.cfg.cacert, sizeof(api.cfg.cacert), o->cacert);
	if (api.cfg.cacert[0] && access(api.cfg.cacert, R_OK) < 0)
		usage_error("[iotda] CA file %s: %s", api.cfg.cacert, strerror(errno));
}

/* Devices from the file, --tunnel-json and URLs, with their tokens. */
static char (*load_devices(struct options *o, struct config *c, int argc, char **argv))[160]
{
	char path[PATH_MAX] = "", err[PATH_MAX + 300] = "", (*warns)[160];

	if (!o->config && o->urls_from >= argc && !o->tunnel_json)
		default_config_path(path, sizeof(path));
	if (o->config || path[0])
		load_config_file(c, o->config ? o->config : path, o->config != NULL);
	if (o->tunnel_json && config_tunnel_json(c, o->tunnel_json, err, sizeof(err)) < 0)
		usage_error("%s", err);
	add_device_ids(c, o);
	if (batch_wanted(o))
		batch_select(c, o);
	warns = xcalloc((size_t)(c->ndev + 1) * sizeof(*warns));
	if (config_resolve_tokens(c, warns, err, sizeof(err)) < 0)
		usage_error("%s", err);
	add_url_args(c, argc, argv, o->urls_from);
	if (!c->ndev && !(c->iotda.endpoint[0] && c->iotda.project_id[0]))	/* else: the picker */
		usage_error("no devices: give URLs, --tunnel-json or -c FILE");
	if (!c->ndev && batch_wanted(o) && !o->nwhere)
		usage_error("--exec: no devices (--where picks them from the IoTDA API)");
	return warns;
}

/* Configuration warnings where they are seen: each device's own in the
 * list already; the first of them, and any about URL arguments, flashed. */
static void start_warnings(void)
{
	for (struct tunnel *t = app.tunnels; t && !app.start_warning[0]; t = t->next)
		if (t->event[0])
			snprintf(app.start_warning, sizeof(app.start_warning), "%.60s: %.130s",
				 t->cfg.name, t->event);
	if (app.start_warning[0]) {
		flash_msg("warning: %s", app.start_warning);
		app.flash_until_us = now_us() + 10000000;
	}
}

static int console_run(void)	/* the screen and the loop, until quit */
{
	start_warnings();
	adopt(dup(0), RAW_TTY);
	for (struct tunnel *t = app.tunnels; t; t = t->next)
		tunnel_start(t);
	on_tick(NULL);
	while (!app.quit && lws_service(app.ctx, 0) >= 0)
		;
	return app.exit_code;
}

static int run(int argc, char **argv)	/* everything main does */
{
	struct options o = { 0 };
	struct config c = { .prefix_key = 0x07, .login_timeout_s = -1 };
	char (*warns)[160];
	int code, sigfd;

	setlocale(LC_ALL, "");
	(void)prctl(PR_SET_DUMPABLE, 0);	/* no core, no ptrace: memory holds secrets */
	(void)setrlimit(RLIMIT_CORE, &(struct rlimit){ 0, 0 });
	cJSON_InitHooks(&(cJSON_Hooks){ malloc, wiping_free });
	parse_args(argc, argv, &o, &c);
	warns = load_devices(&o, &c, argc, argv);
	if (o.log && !(app.log = open_private(o.log, O_APPEND, "a")))
		usage_error("--log %s: %s", o.log, errno == ELOOP ? "a symbolic link: refused" : strerror(errno));
	app.prefix_key = c.prefix_key;
	app.compact = c.compact;
	app.clipboard_off = c.clipboard_off;
	app.remote_clipboard = (enum remote_clip)c.remote_clipboard;
	app.mouse_off = c.mouse_off;
	copy_str(app.default_user, sizeof(app.default_user), o.user);
	app.login_timeout_s = c.login_timeout_s >= 0 ? c.login_timeout_s : LOGIN_TIMEOUT_S;
	app.list_w_set = c.list_w;
	if (c.heartbeat_s) {
		ws_heartbeat.secs_since_valid_ping = (uint16_t)c.heartbeat_s;
		ws_heartbeat.secs_since_valid_hangup = (uint16_t)(c.heartbeat_s * DEAD_LINK_BEATS);
	}
	set_record_dir(&o, &c);
	app.dlg.password = secret_alloc(1024);
	lws_set_log_level(app.log ? LLL_ERR | LLL_WARN : 0, lws_log_emit);
	api_setup(&c, &o);
	build_tunnels(&c, &o, warns);
	free(warns);
	sigfd = signals_block();
	if (!batch_wanted(&o)) {	/* the first frame before TLS set-up: the CA bundle takes longest */
		check_terminal();
		ui_start();
		draw();
	}
	context_start();
	adopt(sigfd, RAW_SIGNALS);
	code = batch_wanted(&o) ? batch_run(&o) : console_run();
	tunnels_close_all();
	api_close_all();
	for (struct tunnel *t = app.tunnels; t; t = t->next)
		wipe_header_token(t);	/* a handshake never answered */
	lws_context_destroy(app.ctx);
	ui_end();
	free_all(&c);
	if (app.log)
		fclose(app.log);
	return code;
}

#ifndef TUNNEL_TUI_NO_MAIN
int main(int argc, char **argv)
{
	return run(argc, argv);
}
#endif
