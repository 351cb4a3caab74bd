#!/usr/bin/env bash
# Makes throwaway certificates for the TLS, mTLS and token tests, at test time, with Debian's
# openssl: nothing secret is committed. Usage: make-test-certs.sh OUTDIR
#   ca.pem ca.key                 the test CA
#   server.pem server.key         signed by ca, for localhost / 127.0.0.1 / ::1
#   client.pem client.key         signed by ca (mTLS: accepted)
#   other-ca.pem other-ca.key     a second, unrelated CA
#   other-client.pem/.key         signed by other-ca (mTLS: refused)
#   other-server.pem/.key         signed by other-ca (a client trusting ca refuses it)
# EC P-256 keys: fast to make. Valid for 2 days (tests make them fresh every run).
set -euo pipefail
out=${1:?usage: make-test-certs.sh OUTDIR}
mkdir -p "$out"
cd "$out"
ossl() { openssl "$@" 2>/dev/null; }

make_ca() {  # name
  ossl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -keyout "$1.key" \
    -out "$1.pem" -days 2 -subj "/CN=shardlm test $1" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}
make_leaf() {  # name ca usage
  local ext
  ext=$(mktemp)
  if [ "$3" = server ]; then
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n' >"$ext"
  else
    printf 'extendedKeyUsage=clientAuth\n' >"$ext"
  fi
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n' >>"$ext"
  ossl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -keyout "$1.key" \
    -out "$1.csr" -subj "/CN=shardlm test $1"
  ossl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -out "$1.pem" \
    -days 2 -extfile "$ext"
  rm -f "$1.csr" "$ext"
}

make_ca ca
make_ca other-ca
make_leaf server ca server
make_leaf client ca client
make_leaf other-client other-ca client
make_leaf other-server other-ca server
chmod 600 ./*.key
for f in server client other-client other-server; do
  openssl verify -CAfile "$( [ "${f#other-}" = "$f" ] && echo ca || echo other-ca ).pem" \
    "$f.pem" >/dev/null
done
echo "make-test-certs: certificates in $out"
