/* sandbox.h: what the sandbox relay, the sandbox device agent and the
 * protocol test client share: logging, the JSON envelope, an outbound
 * message queue with LWS_PRE headroom.  Header-only; every function static. */
#ifndef SANDBOX_H
#define SANDBOX_H

#include <libwebsockets.h>
#include <cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/*** logging ****************************************************************/

static const char *sb_prog = "sandbox";	/* set by main: the name in log lines */

static inline void sb_log(const char *fmt, ...)	/* one timestamped line to stderr */
{
	struct timespec ts;
	va_list ap;

	clock_gettime(CLOCK_REALTIME, &ts);
	fprintf(stderr, "%ld.%03ld %s: ", (long)ts.tv_sec, ts.tv_nsec / 1000000, sb_prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static inline void sb_lws_log(int level, const char *line)	/* lws errors into our log */
{
	(void)level;
	fprintf(stderr, "%s: lws: %s", sb_prog, line);
}

/*** the envelope (README Protocol §2) ******************************************/

/* Serialises one message; data is consumed (may be NULL for JSON null).
 * Returns a malloc'd, NUL-terminated string. */
static inline char *sb_envelope(const char *op, const char *request_id, cJSON *data)
{
	cJSON *m = cJSON_CreateObject();
	char *s;

	cJSON_AddStringToObject(m, "operation_type", op);
	cJSON_AddStringToObject(m, "tunnel_service_type", "ssh");
	if (request_id)
		cJSON_AddStringToObject(m, "request_id", request_id);
	else
		cJSON_AddNullToObject(m, "request_id");
	cJSON_AddItemToObject(m, "data", data ? data : cJSON_CreateNull());
	s = cJSON_PrintUnformatted(m);
	cJSON_Delete(m);
	return s;
}

static inline cJSON *sb_status(const char *code, const char *msg)	/* disconnect data */
{
	cJSON *d = cJSON_CreateObject();

	cJSON_AddStringToObject(d, "status_code", code);
	cJSON_AddStringToObject(d, "status_msg", msg);
	return d;
}

/*** outbound queue: whole frames with LWS_PRE headroom *********************/

struct sb_frame {
	struct sb_frame *next;
	size_t len;
	unsigned char buf[];	/* LWS_PRE bytes of headroom, then len bytes */
};

struct sb_queue {
	struct sb_frame *head, *tail;
	size_t bytes;		/* payload bytes queued */
};

/* Appends a copy of len bytes; returns 1 when the queue was empty before,
 * i.e. when the caller must ask lws for a writable callback. */
static inline int sb_queue_push(struct sb_queue *q, const void *p, size_t len)
{
	struct sb_frame *f = malloc(sizeof(*f) + LWS_PRE + len);
	int was_empty = q->head == NULL;

	if (!f)
		abort();
	f->next = NULL;
	f->len = len;
	memcpy(f->buf + LWS_PRE, p, len);
	if (q->tail)
		q->tail->next = f;
	else
		q->head = f;
	q->tail = f;
	q->bytes += len;
	return was_empty;
}

/* Writes the head frame as one text frame; returns -1 on a write error,
 * 1 when more frames remain, 0 when the queue is now empty. */
static inline int sb_queue_write(struct sb_queue *q, struct lws *wsi)
{
	struct sb_frame *f = q->head;

	if (!f)
		return 0;
	if (lws_write(wsi, f->buf + LWS_PRE, f->len, LWS_WRITE_TEXT) < (int)f->len)
		return -1;
	q->head = f->next;
	if (!q->head)
		q->tail = NULL;
	q->bytes -= f->len;
	free(f);
	return q->head != NULL;
}

static inline void sb_queue_clear(struct sb_queue *q)	/* frees every queued frame */
{
	while (q->head) {
		struct sb_frame *f = q->head;

		q->head = f->next;
		free(f);
	}
	q->tail = NULL;
	q->bytes = 0;
}

/*** inbound reassembly ****************************************************/

struct sb_rxbuf {
	char *p;
	size_t len, cap;
};

/* Appends one fragment; returns -1 past max bytes (the caller closes 1009). */
static inline int sb_rx_append(struct sb_rxbuf *b, const void *in, size_t len, size_t max)
{
	if (b->len + len > max)
		return -1;
	if (b->len + len + 1 > b->cap) {
		size_t cap = (b->len + len + 1) * 2;
		char *p = realloc(b->p, cap);

		if (!p)
			abort();
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, in, len);
	b->len += len;
	b->p[b->len] = '\0';
	return 0;
}

static inline void sb_rx_free(struct sb_rxbuf *b)	/* releases the buffer */
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

#endif
