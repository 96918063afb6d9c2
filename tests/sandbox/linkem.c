/* linkem.c: a link emulator.  A TCP proxy that makes the loopback between the
 * console and the sandbox relay behave like a slow, lossy, flaky cellular
 * link, for tests and benchmarks, as an ordinary user (no netem, no root).
 *
 *   linkem --listen 127.0.0.1:PORT|0 --to HOST:PORT [--delay MS] [--jitter MS]
 *          [--rate BYTES_PER_SECOND] [--loss PERCENT] [--buffer BYTES]
 *          [--blackhole on|off] [--seed N] [--control PATH]
 *
 * Each accepted connection is connected onward to --to and both directions
 * ("up": client to target, "down": back) go through the same model:
 *   - bytes are read in segments of at most SEG bytes, at most --buffer bytes
 *     held per direction (past it the source is not read: its sender's socket
 *     fills, and memory stays bounded);
 *   - a segment is transmitted once the link is free (the previous one's
 *     serialisation at --rate is over), then arrives one flight later:
 *     --delay +- --jitter, plus a retransmission delay when "lost" (--loss
 *     percent of segments); a segment is delivered only after the one ahead
 *     of it, so nothing is reordered and a loss blocks what follows
 *     (head-of-line, as TCP);
 *   - a FIN or a reset from an endpoint travels as a marker behind the data;
 *   - a blackhole stops everything, both ways, for every connection, and
 *     refuses and resets nothing: new connections are accepted and connected
 *     onward, data waits (bounded as above), and when it ends all that is
 *     held is delivered.
 * Settings change at run time through the --control FIFO (lines: delay MS,
 * jitter MS, rate BPS, loss PCT, blackhole on|off, stats) or signals
 * (SIGUSR1 blackhole on, SIGUSR2 off, SIGHUP stats); each change is logged on
 * stderr, where tests wait for it.  "listening on ADDR:PORT" goes to stdout.
 *
 * One thread, one ppoll() loop.  The timers are each direction's next
 * transmission and next arrival, scanned every turn (a few connections);
 * nothing spins.  Signals arrive through a signalfd; SIGTERM/SIGINT end it
 * cleanly.  No byte of the traffic reaches the log.
 *
 * Contents, one banner each:
 *   tunables
 *   types           struct chunk, struct dir, struct pair, struct link
 *   helpers         clock, random numbers, log, numbers, addresses
 *   the link model  serialisation, flight, loss, deadlines
 *   queues          chunks in, bytes out, markers
 *   forwarding      read a source, deliver to a destination
 *   connections     accept, connect onward, close
 *   settings        the table shared by the command line and the control
 *   control         FIFO lines, signals, stats
 *   the loop        pollfds and the ppoll
 *   main
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/*** tunables ***************************************************************/

#define SEG		1460		/* a segment: one Ethernet-sized TCP payload */
#define READ_MAX	65536		/* bytes taken from a source at once */
#define IOV_SEGS	64		/* segments written in one sendmsg */
#define DEFAULT_BUFFER	(1 << 20)	/* bytes held per direction */
#define BUFFER_MIN	SEG
#define BUFFER_MAX	(1L << 30)
#define RTO_MIN_US	200000		/* Linux's minimum retransmission timeout */
#define MS_MAX		600000		/* --delay and --jitter at most */
#define RATE_MAX	10000000000L	/* --rate at most: 10 GB/s */
#define LINE_MAX_CTL	256		/* a control line at most */
#define LINE_MAX_LOG	512		/* a log line at most */
#define NAME_MAX_ADDR	300		/* HOST:PORT as given */

/*** types ******************************************************************/

enum side { CLIENT, TARGET };		/* a pair's sockets: accepted, connected onward */
enum { UP, DOWN };			/* a pair's directions: UP reads CLIENT, DOWN reads TARGET */
static const char *const dir_name[2] = { "up", "down" };
enum mark { DATA, FIN, RST };		/* what a chunk carries */

struct chunk {			/* one segment on the link, or an endpoint's FIN or reset */
	struct chunk *next;
	int64_t t;			/* read time until transmitted, then arrival time */
	enum mark mark;
	size_t len, off;		/* data bytes, and how many are written already */
	char data[];
};

/* A direction's chunks in one FIFO: the transmitted ones (in flight or
 * arrived) first, then from unsent on those still waiting for the link. */
struct dir {
	struct chunk *head, *tail, *unsent;
	size_t held;			/* data bytes in the FIFO not yet written */
	int64_t link_free;		/* when the link is through with the last segment */
	uint64_t forwarded;		/* data bytes written to the destination */
	int reading;			/* the source may still send */
	int done;			/* its FIN was delivered, or its destination is gone */
};

struct pair {			/* one proxied connection */
	struct pair *next;
	unsigned long id;
	int fd[2];			/* by enum side */
	int connecting;			/* TARGET's connect still under way */
	int reset;			/* a reset was delivered: close both with RST */
	int pfd;			/* its first pollfd this turn; -1: none */
	struct dir dir[2];		/* dir[d] reads fd[d] and writes fd[!d] */
};

struct link {			/* the whole program */
	/* the model, changeable at run time */
	int delay_ms, jitter_ms, blackhole;
	long rate;			/* bytes per second; 0: unlimited */
	double loss;			/* percent of segments */
	/* set once */
	size_t buffer;
	char listen[NAME_MAX_ADDR], to[NAME_MAX_ADDR];
	struct sockaddr_storage to_addr;
	socklen_t to_len;
	const char *ctl_path;
	int ctl_made;			/* we made the FIFO: remove it at exit */
	uint64_t rng;
	/* state */
	int lfd, ctl_fd, sig_fd, running, quit;
	char ctl_line[LINE_MAX_CTL];
	size_t ctl_len;
	int ctl_overlong;		/* dropping the rest of a line too long */
	struct pair *pairs;
	unsigned long pairs_made;
	size_t npairs;
	uint64_t forwarded[2];		/* every connection's, by direction */
	struct pollfd *pfd;
	size_t pfd_cap;
};

/*** helpers ****************************************************************/

static int64_t now_us(void)	/* the monotonic clock, in microseconds */
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double rnd_unit(struct link *l)	/* uniform in [0, 1): xorshift64* */
{
	l->rng ^= l->rng >> 12;
	l->rng ^= l->rng << 25;
	l->rng ^= l->rng >> 27;
	return (double)((l->rng * 0x2545F4914F6CDD1DULL) >> 11) / (double)(1ULL << 53);
}

/* One write a line: a test reading the log never sees half of one. */
static void lk_log(const char *fmt, ...)	/* one timestamped line to stderr */
{
	char line[LINE_MAX_LOG];
	struct timespec ts;
	va_list ap;
	int n;

	clock_gettime(CLOCK_REALTIME, &ts);
	n = snprintf(line, sizeof line, "%ld.%03ld linkem: ", (long)ts.tv_sec, ts.tv_nsec / 1000000);
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof line - 1)
		n = (int)sizeof line - 1;
	line[n++] = '\n';
	fwrite(line, 1, (size_t)n, stderr);
}

static int parse_num(const char *s, double lo, double hi, double *out)	/* a number in [lo, hi] */
{
	char *end;
	double v;

	if (!s || !*s)
		return -1;
	errno = 0;
	v = strtod(s, &end);
	if (errno || *end || !(v >= lo && v <= hi))
		return -1;
	*out = v;
	return 0;
}

static int parse_int(const char *s, double lo, double hi, long *out)	/* a whole number in [lo, hi] */
{
	double v;

	if (parse_num(s, lo, hi, &v) || v != (double)(long)v)
		return -1;
	*out = (long)v;
	return 0;
}

/* HOST:PORT, HOST possibly [v6]; resolves to the first TCP address. */
static int resolve(const char *hostport, int passive, struct sockaddr_storage *sa, socklen_t *len)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = passive ? AI_PASSIVE : 0 };
	struct addrinfo *res;
	char host[NAME_MAX_ADDR];
	const char *colon = strrchr(hostport, ':');
	size_t hl = colon ? (size_t)(colon - hostport) : 0;
	int rc;

	if (!hl || hl >= sizeof host || !colon[1])
		return -1;
	if (hostport[0] == '[' && hostport[hl - 1] == ']')	/* [::1]:PORT */
		memcpy(host, hostport + 1, hl -= 2);
	else
		memcpy(host, hostport, hl);
	host[hl] = '\0';
	if ((rc = getaddrinfo(host, colon + 1, &hints, &res))) {
		lk_log("%s: %s", hostport, gai_strerror(rc));
		return -1;
	}
	memcpy(sa, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

static void addr_text(const struct sockaddr *sa, socklen_t len, char *out, size_t n)	/* ADDR:PORT, [v6]:PORT */
{
	char host[64], port[8];

	if (getnameinfo(sa, len, host, sizeof host, port, sizeof port, NI_NUMERICHOST | NI_NUMERICSERV)) {
		snprintf(out, n, "?");
		return;
	}
	snprintf(out, n, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

/*** the link model *********************************************************/

static int64_t tx_us(const struct link *l, size_t len)	/* time to serialise len bytes */
{
	return l->rate ? (int64_t)len * 1000000 / l->rate : 0;
}

/* A lost segment is sent again after a retransmission timeout: at least
 * Linux's 200 ms floor, and a round trip's worth (2 x one-way delay). */
static int64_t rto_us(const struct link *l)	/* what one loss adds */
{
	int64_t rtt = 2 * (int64_t)l->delay_ms * 1000;

	return rtt > RTO_MIN_US ? rtt : RTO_MIN_US;
}

static int64_t flight_us(struct link *l)	/* one segment's way across: delay, jitter, maybe a loss */
{
	int64_t us = (int64_t)l->delay_ms * 1000;

	if (l->jitter_ms)
		us += (int64_t)((rnd_unit(l) * 2 - 1) * l->jitter_ms * 1000);
	if (us < 0)
		us = 0;
	if (l->loss > 0 && rnd_unit(l) * 100 < l->loss)
		us += rto_us(l);
	return us;
}

/* Transmits what the link has finished serialising by now.  A segment
 * starts when it was read or when the one before is through, whichever is
 * later, so a late wake-up costs no throughput; it arrives a flight after
 * its last byte left.  Delivery takes the FIFO's head only, so a segment
 * that arrives early (less jitter) waits behind the one ahead: nothing is
 * reordered, and a lost one blocks the rest, as in TCP. */
static void dir_transmit(struct link *l, struct dir *d, int64_t now)	/* the serialiser */
{
	while (d->unsent && d->link_free <= now) {
		struct chunk *c = d->unsent;
		int64_t start = c->t > d->link_free ? c->t : d->link_free;

		d->link_free = start + tx_us(l, c->len);
		c->t = d->link_free + flight_us(l);
		d->unsent = c->next;
	}
}

static int arrived(const struct dir *d, int64_t now)	/* the head has crossed the link by now */
{
	return d->head && d->head != d->unsent && d->head->t <= now;
}

static int64_t dir_deadline(const struct link *l, const struct dir *d, int64_t now)	/* its next timer; INT64_MAX: none */
{
	int64_t t = INT64_MAX;

	if (l->blackhole || d->done)
		return t;
	if (d->head && d->head != d->unsent && d->head->t > now)
		t = d->head->t;
	if (d->unsent && d->link_free > now && d->link_free < t)
		t = d->link_free;
	return t;
}

/*** queues *****************************************************************/

static void dir_push(struct dir *d, enum mark m, const char *data, size_t len, int64_t now)	/* appends a chunk */
{
	struct chunk *c = malloc(sizeof *c + len);

	if (!c)
		abort();
	c->next = NULL;
	c->t = now;
	c->mark = m;
	c->len = len;
	c->off = 0;
	if (len)	/* a marker has no data (and memcpy no NULL) */
		memcpy(c->data, data, len);
	if (d->tail)
		d->tail->next = c;
	else
		d->head = c;
	d->tail = c;
	if (!d->unsent)
		d->unsent = c;
	d->held += len;
}

static void dir_pop(struct dir *d)	/* frees the head */
{
	struct chunk *c = d->head;

	d->head = c->next;
	if (!d->head)
		d->tail = NULL;
	if (d->unsent == c)
		d->unsent = c->next;
	d->held -= c->len - c->off;
	free(c);
}

static void dir_clear(struct dir *d)	/* frees every chunk */
{
	while (d->head)
		dir_pop(d);
}

static void dir_consume(struct link *l, struct dir *d, int di, size_t n)	/* n bytes were written */
{
	d->forwarded += n;
	l->forwarded[di] += n;
	while (n) {
		struct chunk *c = d->head;
		size_t k = c->len - c->off < n ? c->len - c->off : n;

		c->off += k;
		d->held -= k;
		n -= k;
		if (c->off == c->len)
			dir_pop(d);
	}
}

static size_t dir_gather(const struct dir *d, int64_t now, struct iovec *iov)	/* arrived data, for sendmsg */
{
	const struct chunk *c;
	size_t n = 0;

	for (c = d->head; c != d->unsent && c->t <= now && c->mark == DATA && n < IOV_SEGS; c = c->next) {
		iov[n].iov_base = (char *)c->data + c->off;
		iov[n++].iov_len = c->len - c->off;
	}
	return n;
}

/*** forwarding *************************************************************/

/* The destination is gone (a write failed): what is held for it is lost,
 * and its source is not read any more.  The reverse direction reads the
 * dead socket, sees why, and passes that on to the other endpoint. */
static void dir_dead(struct pair *p, int di, int err)	/* gives a direction up */
{
	struct dir *d = &p->dir[di];

	lk_log("conn %lu: %s: %s", p->id, dir_name[di], strerror(err));
	dir_clear(d);
	d->done = 1;
	d->reading = 0;
}

static void deliver_mark(struct pair *p, int di)	/* an endpoint's FIN or reset reaches the other */
{
	struct dir *d = &p->dir[di];
	enum mark m = d->head->mark;

	dir_pop(d);
	d->done = 1;
	if (m == RST)
		p->reset = 1;
	else
		shutdown(p->fd[!di], SHUT_WR);
}

static void dir_deliver(struct link *l, struct pair *p, int di, int64_t now)	/* writes what has arrived */
{
	struct dir *d = &p->dir[di];
	struct iovec iov[IOV_SEGS];
	struct msghdr mh = { .msg_iov = iov };
	ssize_t n;

	if (d->done || !arrived(d, now))
		return;
	if (d->head->mark != DATA) {
		deliver_mark(p, di);
		return;
	}
	mh.msg_iovlen = dir_gather(d, now, iov);
	n = sendmsg(p->fd[!di], &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
	if (n >= 0)
		dir_consume(l, d, di, (size_t)n);
	else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
		dir_dead(p, di, errno);
}

static void dir_read(struct link *l, struct pair *p, int di, int64_t now)	/* takes what the source sent, up to the bound */
{
	struct dir *d = &p->dir[di];
	char buf[READ_MAX];
	size_t room = l->buffer - d->held, off;
	ssize_t n;

	if (!room)	/* (a 0-byte recv would read as a FIN) */
		return;
	n = recv(p->fd[di], buf, room < sizeof buf ? room : sizeof buf, MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	if (n <= 0) {	/* an endpoint's FIN or reset goes across like data */
		d->reading = 0;
		dir_push(d, n ? RST : FIN, NULL, 0, now);
		return;
	}
	for (off = 0; off < (size_t)n; off += SEG)
		dir_push(d, DATA, buf + off, (size_t)n - off < SEG ? (size_t)n - off : SEG, now);
}

/*** connections ************************************************************/

static void sock_setup(int fd)	/* no Nagle: the emulated link decides the timing */
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* The target refused or failed: nothing goes up, and a reset travels down
 * to the client like any other event on the link (a blackhole holds it). */
static void pair_refused(struct pair *p, int err, int64_t now)	/* the onward connect failed */
{
	lk_log("conn %lu: connecting onward: %s", p->id, strerror(err));
	p->connecting = 0;
	dir_clear(&p->dir[UP]);
	p->dir[UP].done = 1;
	p->dir[UP].reading = p->dir[DOWN].reading = 0;
	dir_push(&p->dir[DOWN], RST, NULL, 0, now);
}

static void pair_connected(struct link *l, struct pair *p, int64_t now)	/* the onward connect is over */
{
	int err = 0;
	socklen_t n = sizeof err;

	if (getsockopt(p->fd[TARGET], SOL_SOCKET, SO_ERROR, &err, &n) < 0)
		err = errno;
	if (err) {
		pair_refused(p, err, now);
		return;
	}
	p->connecting = 0;
	lk_log("conn %lu: connected to %s", p->id, l->to);
}

static struct pair *pair_new(struct link *l, int cfd)	/* a pair around an accepted socket */
{
	struct pair *p = calloc(1, sizeof *p);
	int d;

	if (!p)
		abort();
	p->id = ++l->pairs_made;
	p->fd[CLIENT] = cfd;
	p->fd[TARGET] = -1;
	p->pfd = -1;
	for (d = 0; d < 2; d++)
		p->dir[d].reading = 1;
	p->next = l->pairs;
	l->pairs = p;
	l->npairs++;
	return p;
}

static void pair_dial(struct link *l, struct pair *p, int64_t now)	/* connects onward, without waiting */
{
	int fd = socket(l->to_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	p->fd[TARGET] = fd;
	if (fd < 0) {
		pair_refused(p, errno, now);
		return;
	}
	sock_setup(fd);
	p->connecting = 1;
	if (connect(fd, (struct sockaddr *)&l->to_addr, l->to_len) == 0)
		pair_connected(l, p, now);
	else if (errno != EINPROGRESS)
		pair_refused(p, errno, now);
}

static void accept_all(struct link *l, int64_t now)	/* takes every pending connection */
{
	struct sockaddr_storage sa;
	socklen_t len = sizeof sa;
	char from[80];
	int fd;

	while ((fd = accept4(l->lfd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
		struct pair *p = pair_new(l, fd);

		sock_setup(fd);
		addr_text((struct sockaddr *)&sa, len, from, sizeof from);
		lk_log("conn %lu: accepted from %s", p->id, from);
		pair_dial(l, p, now);
		len = sizeof sa;
	}
}

static void pair_free(struct link *l, struct pair *p)	/* closes both sockets (RST after a reset) */
{
	struct linger lg = { 1, 0 };
	int s, d;

	for (s = 0; s < 2; s++) {
		if (p->fd[s] < 0)
			continue;
		if (p->reset)
			setsockopt(p->fd[s], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
		close(p->fd[s]);
	}
	for (d = 0; d < 2; d++)
		dir_clear(&p->dir[d]);
	if (!l->quit)
		lk_log("conn %lu: closed%s (up %llu bytes, down %llu bytes)", p->id,
		       p->reset ? " by a reset" : "", (unsigned long long)p->dir[UP].forwarded,
		       (unsigned long long)p->dir[DOWN].forwarded);
	l->npairs--;
	free(p);
}

static void pairs_sweep(struct link *l)	/* frees the pairs that are over */
{
	struct pair **pp = &l->pairs;

	while (*pp) {
		struct pair *p = *pp;

		if (l->quit || p->reset || (p->dir[UP].done && p->dir[DOWN].done)) {
			*pp = p->next;
			pair_free(l, p);
		} else {
			pp = &p->next;
		}
	}
}

/*** settings ***************************************************************/

/* Every setter logs its change once the loop runs (tests wait on those lines);
 * on the command line the start-up line tells them all. */
#define CHANGED(l, ...) do { if ((l)->running) lk_log(__VA_ARGS__); } while (0)

static int set_ms(struct link *l, const char *v, int *field, const char *what)	/* delay or jitter */
{
	long ms;

	if (parse_int(v, 0, MS_MAX, &ms))
		return -1;
	*field = (int)ms;
	CHANGED(l, "%s %ld ms", what, ms);
	return 0;
}

static int set_delay(struct link *l, const char *v) { return set_ms(l, v, &l->delay_ms, "delay"); }	/* delay MS */
static int set_jitter(struct link *l, const char *v) { return set_ms(l, v, &l->jitter_ms, "jitter"); }	/* jitter MS */

static int set_rate(struct link *l, const char *v)	/* rate BYTES_PER_SECOND, 0: unlimited */
{
	if (parse_int(v, 0, RATE_MAX, &l->rate))
		return -1;
	if (l->rate)
		CHANGED(l, "rate %ld B/s", l->rate);
	else
		CHANGED(l, "rate unlimited");
	return 0;
}

static int set_loss(struct link *l, const char *v)	/* loss PERCENT */
{
	if (parse_num(v, 0, 100, &l->loss))
		return -1;
	CHANGED(l, "loss %g%%", l->loss);
	return 0;
}

/* The link was down, not busy: once it is back, serialisation starts from
 * now, not from where it stopped (no burst "owed" from the outage). */
static void links_restart(struct link *l)	/* after a blackhole: every link free from now */
{
	int64_t t = now_us();
	struct pair *p;
	int d;

	for (p = l->pairs; p; p = p->next)
		for (d = 0; d < 2; d++)
			if (p->dir[d].link_free < t)
				p->dir[d].link_free = t;
}

static int set_blackhole(struct link *l, const char *v)	/* blackhole on|off */
{
	int on = v && !strcmp(v, "on");

	if (!on && (!v || strcmp(v, "off")))
		return -1;
	if (l->blackhole && !on)
		links_restart(l);
	l->blackhole = on;
	CHANGED(l, "blackhole %s", on ? "on" : "off");
	return 0;
}

static int set_stats(struct link *l, const char *v)	/* stats: bytes forwarded and held, each way */
{
	size_t held[2] = { 0, 0 };
	struct pair *p;
	int d;

	(void)v;
	for (p = l->pairs; p; p = p->next)
		for (d = 0; d < 2; d++)
			held[d] += p->dir[d].held;
	lk_log("stats: connections %zu, up forwarded %llu buffered %zu, down forwarded %llu buffered %zu%s",
	       l->npairs, (unsigned long long)l->forwarded[UP], held[UP],
	       (unsigned long long)l->forwarded[DOWN], held[DOWN], l->blackhole ? ", blackhole on" : "");
	return 0;
}

static int set_addr(char *dst, const char *v)	/* keeps HOST:PORT if it fits */
{
	return snprintf(dst, NAME_MAX_ADDR, "%s", v) < NAME_MAX_ADDR ? 0 : -1;
}

static int set_listen(struct link *l, const char *v) { return set_addr(l->listen, v); }	/* --listen ADDR:PORT */
static int set_to(struct link *l, const char *v) { return set_addr(l->to, v); }	/* --to HOST:PORT */
static int set_control(struct link *l, const char *v) { l->ctl_path = v; return 0; }	/* --control PATH */

static int set_buffer(struct link *l, const char *v)	/* --buffer BYTES */
{
	long n;

	if (parse_int(v, BUFFER_MIN, BUFFER_MAX, &n))
		return -1;
	l->buffer = (size_t)n;
	return 0;
}

static int set_seed(struct link *l, const char *v)	/* --seed N: repeatable jitter and loss */
{
	long n;

	if (parse_int(v, 0, 1e15, &n))
		return -1;
	l->rng = (uint64_t)n * 0x9E3779B97F4A7C15ULL + 1;	/* xorshift needs a non-zero state */
	return 0;
}

enum { OPT = 1, CTL = 2 };	/* where a setting may be given */

static const struct setting {
	const char *name;		/* the control word; the option is --name */
	int (*set)(struct link *, const char *);
	int where, takes_arg;
} settings[] = {
	{ "listen", set_listen, OPT, 1 },
	{ "to", set_to, OPT, 1 },
	{ "delay", set_delay, OPT | CTL, 1 },
	{ "jitter", set_jitter, OPT | CTL, 1 },
	{ "rate", set_rate, OPT | CTL, 1 },
	{ "loss", set_loss, OPT | CTL, 1 },
	{ "blackhole", set_blackhole, OPT | CTL, 1 },
	{ "buffer", set_buffer, OPT, 1 },
	{ "seed", set_seed, OPT, 1 },
	{ "control", set_control, OPT, 1 },
	{ "stats", set_stats, CTL, 0 },
};

static const struct setting *setting_find(const char *name, int where)	/* by name, or NULL */
{
	size_t i;

	for (i = 0; i < sizeof settings / sizeof settings[0]; i++)
		if (!strcmp(settings[i].name, name) && (settings[i].where & where))
			return &settings[i];
	return NULL;
}

/*** control ****************************************************************/

static void control_line(struct link *l, char *line)	/* applies one "NAME [ARG]" line */
{
	size_t n = strlen(line);
	const struct setting *s;
	char *arg;

	while (n && (line[n - 1] == ' ' || line[n - 1] == '\t'))	/* echo's stray blanks */
		line[--n] = '\0';
	arg = strchr(line, ' ');
	if (arg)
		*arg++ = '\0';
	if (!*line)
		return;
	s = setting_find(line, CTL);
	if (!s)
		lk_log("control: unknown command \"%.40s\"", line);
	else if (!s->takes_arg != !arg || s->set(l, arg))
		lk_log("control: bad line for %s", s->name);
}

static void control_byte(struct link *l, char c)	/* gathers a line; an overlong one is dropped */
{
	if (c == '\n') {
		l->ctl_line[l->ctl_len] = '\0';
		if (l->ctl_overlong)
			lk_log("control: line too long, ignored");
		else
			control_line(l, l->ctl_line);
		l->ctl_len = 0;
		l->ctl_overlong = 0;
	} else if (c == '\r' || l->ctl_overlong) {
		return;
	} else if (l->ctl_len + 1 < sizeof l->ctl_line) {
		l->ctl_line[l->ctl_len++] = c;
	} else {
		l->ctl_overlong = 1;
	}
}

static void control_read(struct link *l)	/* every line written to the FIFO so far */
{
	char buf[512];
	ssize_t n, i;

	while ((n = read(l->ctl_fd, buf, sizeof buf)) > 0)
		for (i = 0; i < n; i++)
			control_byte(l, buf[i]);
}

/* Opened read-write, the FIFO always has a writer (us): no EOF, no POLLHUP
 * between two writers, and `echo delay 100 > PATH` never blocks. */
static int control_open(struct link *l)	/* makes (or reuses) the FIFO */
{
	struct stat st;

	if (!l->ctl_path)
		return 0;
	if (mkfifo(l->ctl_path, 0600) == 0)
		l->ctl_made = 1;
	else if (errno != EEXIST || stat(l->ctl_path, &st) || !S_ISFIFO(st.st_mode)) {
		lk_log("--control %s: %s", l->ctl_path, errno == EEXIST ? "exists, not a FIFO" : strerror(errno));
		return -1;
	}
	l->ctl_fd = open(l->ctl_path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (l->ctl_fd < 0) {
		lk_log("--control %s: %s", l->ctl_path, strerror(errno));
		return -1;
	}
	return 0;
}

/* Blocked signals queue on a signalfd the loop reads like a socket: nothing
 * runs in a handler, and none slips between two checks. */
static int signals_open(struct link *l)	/* SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP into the loop */
{
	static const int sigs[] = { SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP };
	sigset_t set;
	size_t i;

	sigemptyset(&set);
	for (i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		sigaddset(&set, sigs[i]);
	sigprocmask(SIG_BLOCK, &set, NULL);
	l->sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (l->sig_fd < 0)
		lk_log("signalfd: %s", strerror(errno));
	return l->sig_fd < 0 ? -1 : 0;
}

static void signals_read(struct link *l)	/* acts on each pending signal */
{
	struct signalfd_siginfo si;

	while (read(l->sig_fd, &si, sizeof si) == (ssize_t)sizeof si) {
		switch (si.ssi_signo) {
		case SIGUSR1:
			set_blackhole(l, "on");
			break;
		case SIGUSR2:
			set_blackhole(l, "off");
			break;
		case SIGHUP:
			set_stats(l, NULL);
			break;
		default:
			lk_log("exiting on %s", strsignal((int)si.ssi_signo));
			l->quit = 1;
		}
	}
}

/*** the loop ***************************************************************/

enum { PFD_SIG, PFD_LISTEN, PFD_CTL, PFD_PAIRS };	/* the fixed pollfds, then two a pair */

static short side_events(const struct link *l, const struct pair *p, int s, int64_t now)	/* what to wait for on a socket */
{
	const struct dir *in = &p->dir[s], *out = &p->dir[!s];
	short ev = 0;

	if (p->connecting && s == TARGET)
		return POLLOUT;
	if (in->reading && in->held < l->buffer)
		ev |= POLLIN;
	if (!p->connecting && !l->blackhole && !out->done && arrived(out, now))
		ev |= POLLOUT;
	return ev;
}

/* A socket nobody waits on is left out (fd -1): a hung-up one would
 * otherwise wake every poll with POLLHUP while its reader is paused. */
static int64_t pair_poll(struct link *l, struct pair *p, struct pollfd *pf, int64_t now)	/* its pollfds; its next timer */
{
	int64_t t = INT64_MAX, dt;
	int s;

	for (s = 0; s < 2; s++) {
		pf[s].events = side_events(l, p, s, now);
		pf[s].fd = pf[s].events ? p->fd[s] : -1;
		pf[s].revents = 0;
		dt = dir_deadline(l, &p->dir[s], now);
		if (dt < t)
			t = dt;
	}
	return t;
}

static void pfd_room(struct link *l)	/* room for the fixed pollfds and two a pair */
{
	size_t need = PFD_PAIRS + 2 * l->npairs;

	if (need <= l->pfd_cap)
		return;
	l->pfd_cap = need * 2;
	l->pfd = realloc(l->pfd, l->pfd_cap * sizeof *l->pfd);
	if (!l->pfd)
		abort();
}

static int64_t poll_prepare(struct link *l, int64_t now, nfds_t *n)	/* transmits, fills pollfds; returns the next timer */
{
	int64_t t = INT64_MAX, dt;
	struct pair *p;
	int d;

	pfd_room(l);
	l->pfd[PFD_SIG] = (struct pollfd){ .fd = l->sig_fd, .events = POLLIN };
	l->pfd[PFD_LISTEN] = (struct pollfd){ .fd = l->lfd, .events = POLLIN };
	l->pfd[PFD_CTL] = (struct pollfd){ .fd = l->ctl_fd, .events = POLLIN };
	*n = PFD_PAIRS;
	for (p = l->pairs; p; p = p->next) {
		for (d = 0; d < 2 && !l->blackhole; d++)
			dir_transmit(l, &p->dir[d], now);
		p->pfd = (int)*n;
		dt = pair_poll(l, p, &l->pfd[*n], now);
		if (dt < t)
			t = dt;
		*n += 2;
	}
	return t;
}

static void pair_events(struct link *l, struct pair *p, int64_t now)	/* acts on what poll said of its sockets */
{
	const struct pollfd *pf = &l->pfd[p->pfd];
	int s;

	if (p->connecting && pf[TARGET].revents) {
		pair_connected(l, p, now);
		return;
	}
	for (s = 0; s < 2; s++) {
		if (!pf[s].revents)
			continue;
		if (pf[s].events & POLLIN)
			dir_read(l, p, s, now);
		if ((pf[s].events & POLLOUT) && !p->reset)
			dir_deliver(l, p, !s, now);
	}
}

static void loop(struct link *l)	/* serves until SIGTERM or SIGINT */
{
	struct timespec ts;
	struct pair *p;
	int64_t now, t;
	nfds_t n;

	l->running = 1;
	while (!l->quit) {
		now = now_us();
		t = poll_prepare(l, now, &n);
		if (t != INT64_MAX) {
			ts.tv_sec = (t - now) / 1000000;
			ts.tv_nsec = (t - now) % 1000000 * 1000;
		}
		if (ppoll(l->pfd, n, t == INT64_MAX ? NULL : &ts, NULL) < 0 && errno != EINTR)
			break;
		now = now_us();
		for (p = l->pairs; p; p = p->next)
			if (p->pfd >= 0)
				pair_events(l, p, now);
		if (l->pfd[PFD_SIG].revents)
			signals_read(l);
		if (l->pfd[PFD_CTL].revents)
			control_read(l);
		if (l->pfd[PFD_LISTEN].revents)
			accept_all(l, now);
		pairs_sweep(l);
	}
}

/*** main *******************************************************************/

static const char usage_text[] =
	"usage: linkem --listen ADDR:PORT --to HOST:PORT [options]\n"
	"A TCP proxy that emulates a slow, lossy, flaky link (each direction alike).\n"
	"  --listen ADDR:PORT     where to accept (port 0: any free one; printed as\n"
	"                         \"listening on ADDR:PORT\" on stdout)\n"
	"  --to HOST:PORT         where to connect each accepted connection onward\n"
	"  --delay MS             one-way delay (default 0)\n"
	"  --jitter MS            +- MS uniformly on each segment's delay; bytes are\n"
	"                         never reordered (default 0)\n"
	"  --rate BYTES           bytes a second each way (default 0: unlimited)\n"
	"  --loss PERCENT         segments (<= 1460 bytes) held back a retransmission\n"
	"                         timeout, max(200 ms, 2 x delay), with everything\n"
	"                         behind them (default 0)\n"
	"  --blackhole on|off     start with the link dead (default off)\n"
	"  --buffer BYTES         held per direction at most; past it the source is\n"
	"                         not read (default 1048576)\n"
	"  --seed N               repeatable jitter and losses\n"
	"  --control PATH         a FIFO (made if absent) that takes lines:\n"
	"                         delay MS | jitter MS | rate BYTES | loss PERCENT |\n"
	"                         blackhole on|off | stats\n"
	"Signals: SIGUSR1 blackhole on, SIGUSR2 blackhole off, SIGHUP stats,\n"
	"SIGTERM/SIGINT exit.  Every change and each connection is logged on stderr.\n";

static int parse_args(struct link *l, int argc, char **argv)	/* the option table; 1: --help */
{
	int i;

	for (i = 1; i < argc; i++) {
		const struct setting *s = strncmp(argv[i], "--", 2) ? NULL : setting_find(argv[i] + 2, OPT);

		if (!strcmp(argv[i], "--help"))
			return 1;
		if (!s || i + 1 >= argc || s->set(l, argv[++i])) {
			fprintf(stderr, "linkem: bad option or value: %s\n%s", argv[i], usage_text);
			return -1;
		}
	}
	if (!*l->listen || !*l->to) {
		fprintf(stderr, "linkem: --listen and --to are required\n%s", usage_text);
		return -1;
	}
	return 0;
}

static int listen_open(struct link *l)	/* binds, listens, prints "listening on ADDR:PORT" */
{
	struct sockaddr_storage sa;
	socklen_t len;
	char name[80];
	int one = 1;

	if (resolve(l->listen, 1, &sa, &len))
		return -1;
	l->lfd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (l->lfd < 0 || setsockopt(l->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
	    bind(l->lfd, (struct sockaddr *)&sa, len) || listen(l->lfd, 128) ||
	    getsockname(l->lfd, (struct sockaddr *)&sa, &len)) {
		lk_log("--listen %s: %s", l->listen, strerror(errno));
		return -1;
	}
	addr_text((struct sockaddr *)&sa, len, name, sizeof name);
	printf("listening on %s\n", name);
	fflush(stdout);
	lk_log("%s -> %s: delay %d ms, jitter %d ms, rate %ld B/s%s, loss %g%%, buffer %zu, blackhole %s",
	       name, l->to, l->delay_ms, l->jitter_ms, l->rate, l->rate ? "" : " (unlimited)", l->loss,
	       l->buffer, l->blackhole ? "on" : "off");
	return 0;
}

static void link_free(struct link *l)	/* closes and frees everything */
{
	l->quit = 1;
	pairs_sweep(l);
	if (l->lfd >= 0)
		close(l->lfd);
	if (l->sig_fd >= 0)
		close(l->sig_fd);
	if (l->ctl_fd >= 0)
		close(l->ctl_fd);
	if (l->ctl_made)
		unlink(l->ctl_path);
	free(l->pfd);
}

int main(int argc, char **argv)	/* parse, listen, forward until a signal */
{
	struct link l = { .buffer = DEFAULT_BUFFER, .lfd = -1, .ctl_fd = -1, .sig_fd = -1 };
	int rc;

	if (getrandom(&l.rng, sizeof l.rng, 0) != (ssize_t)sizeof l.rng || !l.rng)
		l.rng = (uint64_t)now_us() | 1;
	rc = parse_args(&l, argc, argv);
	if (rc) {
		if (rc > 0)
			fputs(usage_text, stdout);
		return rc > 0 ? 0 : 2;
	}
	rc = 1;
	if (!resolve(l.to, 0, &l.to_addr, &l.to_len) && !signals_open(&l) && !control_open(&l) &&
	    !listen_open(&l)) {
		loop(&l);
		rc = 0;
	}
	link_free(&l);
	return rc;
}
