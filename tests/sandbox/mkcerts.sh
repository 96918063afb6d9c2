#!/bin/sh
# Makes a throwaway CA and a server certificate for localhost / 127.0.0.1 in $1,
# so the sandbox serves wss:// and every client keeps certificate checks on.
set -eu
dir=${1:-build/certs}
mkdir -p "$dir"
cd "$dir"
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=tunnel_tui sandbox CA" \
	-keyout ca.key -out ca.pem.tmp 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
	-keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem.tmp -CAkey ca.key -CAcreateserial -days 30 \
	-extfile ext.cnf -out server.pem 2>/dev/null
rm -f server.csr ext.cnf ca.pem.srl ca.srl
chmod 644 ca.pem.tmp server.pem
mv ca.pem.tmp ca.pem
