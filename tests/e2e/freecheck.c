/*
 * freecheck.so: an LD_PRELOAD allocator hook for the secrets test.  Every
 * block passed to free() or realloc() is searched for the secrets listed in
 * the file $FREECHECK_SECRETS (one a line) before glibc gets it: a hit means
 * a copy of a secret would stay behind in freed memory.  Each hit appends
 * "free SIZE" or "realloc SIZE" to $FREECHECK_OUT, never the secret itself.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void __libc_free(void *p);
extern void *__libc_realloc(void *p, size_t n);

#define SECRETS_MAX 4

static char secrets[SECRETS_MAX][257];
static size_t lens[SECRETS_MAX];
static int nsecrets, out_fd = -1;

__attribute__((constructor)) static void freecheck_init(void)	/* reads the secrets file */
{
	const char *path = getenv("FREECHECK_SECRETS"), *out = getenv("FREECHECK_OUT");
	char text[SECRETS_MAX * 258];
	ssize_t n;
	int fd;

	if (!path || !out || (fd = open(path, O_RDONLY)) < 0)
		return;
	n = read(fd, text, sizeof(text) - 1);
	close(fd);
	for (char *line = text, *nl; n > 0 && line < text + n && nsecrets < SECRETS_MAX; line = nl + 1) {
		nl = memchr(line, '\n', (size_t)(text + n - line));
		if (!nl)
			nl = text + n;
		if (nl > line && nl - line <= 256) {
			memcpy(secrets[nsecrets], line, (size_t)(nl - line));
			lens[nsecrets++] = (size_t)(nl - line);
		}
	}
	out_fd = open(out, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
}

static void freecheck(void *p, const char *what)	/* reports p if it holds a secret */
{
	size_t n;
	char line[64];
	int k;

	if (!p || out_fd < 0)
		return;
	n = malloc_usable_size(p);
	for (int i = 0; i < nsecrets; i++)
		if (memmem(p, n, secrets[i], lens[i])) {
			k = snprintf(line, sizeof(line), "%s %zu secret %d\n", what, n, i + 1);
			(void)!write(out_fd, line, (size_t)k);
			return;
		}
}

void free(void *p)
{
	freecheck(p, "free");
	__libc_free(p);
}

void *realloc(void *p, size_t n)
{
	freecheck(p, "realloc");
	return __libc_realloc(p, n);
}
