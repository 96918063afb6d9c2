/* fuzz_util.h: what every fuzz target shares: deterministic choices
 * derived from the input (a hash, and a small generator seeded by it). */
#ifndef FUZZ_UTIL_H
#define FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* FNV-1a: options, cut points and comparisons derived from the input. */
static inline uint32_t hash_bytes(const void *p, size_t n)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < n; i++)
		h = (h ^ ((const uint8_t *)p)[i]) * 16777619u;
	return h;
}

/* xorshift32: the next pseudo-random number from a state seeded by a hash. */
static inline uint32_t next_rand(uint32_t *st)
{
	uint32_t x = *st ? *st : 0x9e3779b9u;

	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return *st = x;
}

/* Up to max sorted, distinct cut points strictly inside (0, n), drawn
 * from *seed (which advances). */
static inline int cut_points(uint32_t *seed, size_t n, size_t *cuts, int max)
{
	int k = 0;

	for (int i = 0; i < max && n > 1; i++) {
		size_t c = 1 + next_rand(seed) % (n - 1);
		int j = k;

		while (j > 0 && cuts[j - 1] > c)
			j--;
		if (j > 0 && cuts[j - 1] == c)
			continue;
		memmove(&cuts[j + 1], &cuts[j], (size_t)(k - j) * sizeof(*cuts));
		cuts[j] = c;
		k++;
	}
	return k;
}

#endif
