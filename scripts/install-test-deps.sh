#!/usr/bin/env bash
# Installs the real components the end-to-end tests start (nothing is mocked where the
# real thing is cheap to start): Apache with mod_cgid, nginx with fcgiwrap, spawn-fcgi,
# vsftpd and lftp for the FTP deploy, tesseract for the OCR bot of the spam suite, espeak-ng
# for the audio CAPTCHA's asset script, redis-server for the shared store of several nodes,
# Chromium for the browser test, openssl for the test CA, and aiosmtpd as the SMTP
# server. Idempotent: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
have apache2 || [ -x /usr/sbin/apache2 ] || need_apt+=(apache2)
have nginx || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
have fcgiwrap || [ -x /usr/sbin/fcgiwrap ] || need_apt+=(fcgiwrap)
have spawn-fcgi || [ -x /usr/bin/spawn-fcgi ] || need_apt+=(spawn-fcgi)
have chromium || need_apt+=(chromium)
have openssl || need_apt+=(openssl)
have curl || need_apt+=(curl)
have lftp || need_apt+=(lftp)
have vsftpd || [ -x /usr/sbin/vsftpd ] || need_apt+=(vsftpd)
have tesseract || need_apt+=(tesseract-ocr)
have espeak-ng || need_apt+=(espeak-ng)
have redis-server || [ -x /usr/bin/redis-server ] || need_apt+=(redis-server)

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing ${need_apt[*]}; run as root (or install them) first" >&2
    exit 1
  fi
  echo "install-test-deps: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The SMTP server used by the mail tests.
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  echo "install-test-deps: pip install aiosmtpd"
  python3 -m pip install -q --disable-pip-version-check aiosmtpd
fi

# Playwright's driver library (no browser download: it drives Debian's Chromium).
if [ -f tests/browser/package.json ] && [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "install-test-deps: npm install (tests/browser)"
  (cd tests/browser && npm install --no-audit --no-fund --silent)
fi
