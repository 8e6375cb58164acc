#!/usr/bin/env bash
# install-deps.sh - install what building and testing Postmux needs on Debian 12.
# Idempotent: packages already present are skipped by apt-get.
set -euo pipefail

pkgs=(
  meson ninja-build pkg-config gcc
  libglib2.0-dev libjson-glib-dev libsoup-3.0-dev libcurl4-openssl-dev
  libssl-dev libsqlite3-dev libgmime-3.0-dev
  json-schema-test-suite python3 swaks python3-aiosmtpd openssl glib-networking
  libcrypt-dev libnet-ssleay-perl libio-socket-ssl-perl msmtp curl
  clang libclang-rt-14-dev
  make mandoc groff-base sqlite3 iproute2
  dovecot-core dovecot-submissiond
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # Never let a package's maintainer script start a system service (Dovecot,
  # Postfix) during this install; the guard goes away again afterwards.
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod 755 /usr/sbin/policy-rc.d
    guard=/usr/sbin/policy-rc.d
    trap '$sudo rm -f "$guard"' EXIT
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
