# shellcheck shell=bash
# The gateway's TLS test makes a self-signed certificate with openssl.
if ! command -v openssl >/dev/null 2>&1; then
  echo "--- installing openssl"
  apt_install openssl
fi
