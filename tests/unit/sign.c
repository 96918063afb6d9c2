/*
 * The console's request signing as a filter, for tests/unit/signing.test.sh
 * to compare with Huawei's own SDK signer: JSON lines on stdin, one request
 * each (the shape tests/unit/huawei-sign.js reads), one Authorization header
 * on stdout for each.  tunnel_tui.c is included: these are its functions.
 */
#ifndef TUNNEL_TUI_NO_MAIN
#define TUNNEL_TUI_NO_MAIN
#endif
#pragma GCC diagnostic ignored "-Wunused-function"	/* main's helpers */
#include "../../tunnel_tui.c"

static int sign_line(const char *line)	/* one request; 0, or -1 if malformed */
{
	cJSON *r = cJSON_Parse(line), *hs = cJSON_GetObjectItem(r, "headers"), *h;
	const char *(*headers)[2] = calloc(32, sizeof(*headers));
	const char *body = json_str(r, "body") ? json_str(r, "body") : "";
	const char *sk = json_str(r, "sk");
	int n = 0;
	char auth[1024];
	struct sign_input in = { json_str(r, "method"), json_str(r, "path"), json_str(r, "query"),
				 NULL, 0, body, strlen(body), json_str(r, "date") };
	struct signer sg = { SIGN_DERIVED, json_str(r, "ak"), sk, sk ? strlen(sk) : 0,
			     json_str(r, "region") };

	cJSON_ArrayForEach(h, hs)
		if (n < 32) {
			headers[n][0] = cJSON_GetArrayItem(h, 0)->valuestring;
			headers[n++][1] = cJSON_GetArrayItem(h, 1)->valuestring;
		}
	if (json_str(r, "signing") && !strcmp(json_str(r, "signing"), "basic"))
		sg.how = SIGN_BASIC;
	in.headers = (const char *const (*)[2])headers;
	in.nheaders = n;
	if (!in.method || !in.path || !in.date || !sg.ak || !sk || !sg.region) {
		cJSON_Delete(r);
		free(headers);
		return -1;
	}
	sign_request(&in, &sg, auth, sizeof(auth));
	puts(auth);
	cJSON_Delete(r);
	free(headers);
	return 0;
}

int main(void)
{
	char line[65536];

	while (fgets(line, sizeof(line), stdin))
		if (line[0] != '\n' && sign_line(line) < 0) {
			fprintf(stderr, "sign: a malformed request: %s", line);
			return 1;
		}
	return 0;
}
