# tunnel_tui: `make` builds, `make demo` runs the console against the local
# sandbox, `make test` runs every test.  Both install missing Debian packages
# (the list is vendor/packages) first.

PREFIX  ?= /usr/local
DESTDIR ?=
CC      ?= cc
CFLAGS  ?= -O2 -g
WARN     = -std=gnu11 -Wall -Wextra -Werror -D_GNU_SOURCE
PKGS     = libwebsockets libcjson ncursesw openssl zlib
SBPKGS   = libwebsockets libcjson libssh openssl
PKGCFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKGLIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lutil
SBCFLAGS  = $(shell pkg-config --cflags $(SBPKGS) 2>/dev/null)
SBLIBS    = $(shell pkg-config --libs $(SBPKGS) 2>/dev/null) -lutil
B        = build

SANDBOX  = tests/sandbox/tunnel-platform tests/sandbox/tunnel-device tests/sandbox/tunnel-client \
	   tests/sandbox/linkem
TESTBINS = $(B)/unit_tests $(B)/sign $(B)/hostile-relay $(B)/freecheck.so $(B)/vtdiff
VTCFLAGS = $(shell pkg-config --cflags vterm 2>/dev/null)
VTLIBS   = $(shell pkg-config --libs vterm 2>/dev/null)

.PHONY: all deps demo test test-asan asan bench fuzz install uninstall clean certs

all: tunnel_tui $(SANDBOX)

tunnel_tui: tunnel_tui.c
	$(CC) $(CFLAGS) $(WARN) $(PKGCFLAGS) -o $@ $< $(PKGLIBS) -lm

tests/sandbox/tunnel-platform: tests/sandbox/tunnel-platform.c tests/sandbox/sandbox.h
	$(CC) $(CFLAGS) $(WARN) $(SBCFLAGS) -o $@ $< $(SBLIBS)

tests/sandbox/tunnel-device: tests/sandbox/tunnel-device.c tests/sandbox/sandbox.h
	$(CC) $(CFLAGS) $(WARN) $(SBCFLAGS) -o $@ $< $(SBLIBS)

$(B)/unit_tests: tests/unit/unit_tests.c tunnel_tui.c | $(B)
	$(CC) $(CFLAGS) $(WARN) -DTUNNEL_TUI_NO_MAIN $(PKGCFLAGS) -o $@ $< $(PKGLIBS) -lm

# The emulator against libvterm (the tests' judge, not the console's).
$(B)/vtdiff: tests/unit/vtdiff.c tunnel_tui.c | $(B)
	$(CC) $(CFLAGS) $(WARN) -DTUNNEL_TUI_NO_MAIN $(PKGCFLAGS) $(VTCFLAGS) -o $@ $< $(PKGLIBS) $(VTLIBS) -lm

$(B)/sign: tests/unit/sign.c tunnel_tui.c | $(B)
	$(CC) $(CFLAGS) $(WARN) -DTUNNEL_TUI_NO_MAIN $(PKGCFLAGS) -o $@ $< $(PKGLIBS) -lm

tests/sandbox/tunnel-client: tests/sandbox/tunnel-client.c tests/sandbox/sandbox.h
	$(CC) $(CFLAGS) $(WARN) $(SBCFLAGS) -o $@ $< $(SBLIBS)

# The link emulator needs no library: plain sockets and poll.
tests/sandbox/linkem: tests/sandbox/linkem.c
	$(CC) $(CFLAGS) $(WARN) -o $@ $<

$(B)/hostile-relay: tests/e2e/hostile-relay.c tests/sandbox/sandbox.h | $(B)
	$(CC) $(CFLAGS) $(WARN) $(SBCFLAGS) -o $@ $< $(SBLIBS)

$(B)/freecheck.so: tests/e2e/freecheck.c | $(B)
	$(CC) $(CFLAGS) $(WARN) -shared -fPIC -o $@ $<

$(B):
	mkdir -p $@

# Installs every package of vendor/packages that is missing or older than listed.
deps:
	@sh tests/deps.sh vendor/packages

certs: $(B)/certs/ca.pem
$(B)/certs/ca.pem: tests/sandbox/mkcerts.sh
	sh tests/sandbox/mkcerts.sh $(B)/certs

demo: deps
	$(MAKE) all certs
	sh tests/sandbox/demo.sh

# Everything, twice: plain builds, then AddressSanitizer + UBSan builds.
test: deps
	$(MAKE) all certs $(TESTBINS) asan
	sh tests/run.sh --asan

test-asan: deps
	$(MAKE) all certs asan
	sh tests/run.sh --asan-only

# The sanitizer builds (clang), beside the plain ones: build/asan/.
A        = $(B)/asan
ASANCC   = clang
ASANFLAGS = -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
ASANBINS = $(A)/tunnel_tui $(A)/unit_tests $(A)/sign $(A)/tunnel-platform $(A)/tunnel-device \
	   $(A)/tunnel-client $(A)/hostile-relay $(A)/linkem $(A)/vtdiff
asan: $(ASANBINS)

$(A)/tunnel_tui: tunnel_tui.c | $(A)
	$(ASANCC) $(ASANFLAGS) $(WARN) $(PKGCFLAGS) -o $@ $< $(PKGLIBS) -lm

$(A)/unit_tests: tests/unit/unit_tests.c tunnel_tui.c | $(A)
	$(ASANCC) $(ASANFLAGS) $(WARN) -DTUNNEL_TUI_NO_MAIN $(PKGCFLAGS) -o $@ $< $(PKGLIBS) -lm

$(A)/vtdiff: tests/unit/vtdiff.c tunnel_tui.c | $(A)
	$(ASANCC) $(ASANFLAGS) $(WARN) -DTUNNEL_TUI_NO_MAIN $(PKGCFLAGS) $(VTCFLAGS) -o $@ $< $(PKGLIBS) $(VTLIBS) -lm

$(A)/sign: tests/unit/sign.c tunnel_tui.c | $(A)
	$(ASANCC) $(ASANFLAGS) $(WARN) -DTUNNEL_TUI_NO_MAIN $(PKGCFLAGS) -o $@ $< $(PKGLIBS) -lm

$(A)/tunnel-%: tests/sandbox/tunnel-%.c tests/sandbox/sandbox.h | $(A)
	$(ASANCC) $(ASANFLAGS) $(WARN) $(SBCFLAGS) -o $@ $< $(SBLIBS)

$(A)/hostile-relay: tests/e2e/hostile-relay.c tests/sandbox/sandbox.h | $(A)
	$(ASANCC) $(ASANFLAGS) $(WARN) $(SBCFLAGS) -o $@ $< $(SBLIBS)

$(A)/linkem: tests/sandbox/linkem.c | $(A)
	$(ASANCC) $(ASANFLAGS) $(WARN) -o $@ $<

$(A):
	mkdir -p $@

bench: deps
	$(MAKE) all certs
	sh tests/bench/run.sh

# FUZZ_SECONDS=N make fuzz: N seconds per target instead of 600.
fuzz: deps
	sh tests/fuzz/run.sh $${FUZZ_SECONDS:-600}

install: tunnel_tui
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 755 tunnel_tui $(DESTDIR)$(PREFIX)/bin/tunnel_tui
	install -m 644 tunnel_tui.1 $(DESTDIR)$(PREFIX)/share/man/man1/tunnel_tui.1

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/tunnel_tui $(DESTDIR)$(PREFIX)/share/man/man1/tunnel_tui.1

clean:
	rm -rf tunnel_tui $(SANDBOX) $(B)/*_tests $(B)/sign $(B)/vtdiff $(B)/freecheck.so $(B)/hostile-relay $(A) $(B)/fuzz

# The benchmarks' pty driver and load generator, and the terminal layer's
# own benchmark (tests/bench/; make bench builds them).
.PHONY: bench-harness
bench-harness: $(B)/ptyharness $(B)/vtbench
$(B)/vtbench: tests/bench/vtbench.c tunnel_tui.c | $(B)
	$(CC) $(CFLAGS) $(WARN) $(PKGCFLAGS) $(VTCFLAGS) -o $@ $< $(PKGLIBS) $(VTLIBS) -lm
$(B)/ptyharness: tests/bench/ptyharness.c | $(B)
	$(CC) $(CFLAGS) $(WARN) $(shell pkg-config --cflags vterm) -o $@ $< $(shell pkg-config --libs vterm) -lutil -lm
