#!/usr/bin/env bash
# Make a Debian bookworm base image with podman, for machines that reach no
# container registry: debootstrap from Debian's packages, with python3 and
# its venv module (a stand-in for python:3.11-slim) and every CA certificate
# this machine trusts beyond Debian's (pip inside a build may reach PyPI
# through a proxy signed by one of them).
#
#   deploy/standins/make-base.sh [TAG]     (as root; TAG defaults below)
#
# The root filesystem is kept as a tarball in CACHE_DIR, so the image comes
# back in seconds after `podman rmi` or `podman system reset`.
set -euo pipefail

tag=${1:-localhost/gateway-standin-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache_dir=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gateway-container}
tarball=$cache_dir/bookworm-base.tar

if podman image exists "$tag"; then
  echo "$tag: present"
  exit 0
fi
mkdir -p "$cache_dir"

if [ ! -s "$tarball" ]; then
  rootfs=$(mktemp -d /var/tmp/gateway-base.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase \
    --include=ca-certificates,python3,python3-venv,python-is-python3 \
    bookworm "$rootfs" "$mirror"

  cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
  # This machine's own CAs: those installed the Debian way, and any other
  # certificate in the system bundle that Debian's bundle lacks.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  fi
  chroot "$rootfs" update-ca-certificates >/dev/null
  python3 - /etc/ssl/certs/ca-certificates.crt \
    "$rootfs/etc/ssl/certs/ca-certificates.crt" \
    "$rootfs/usr/local/share/ca-certificates/host-extra.crt" <<'PY'
import re, sys
def certs(path):
    text = open(path).read()
    return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
ours = set(certs(sys.argv[2]))
extra = [c for c in certs(sys.argv[1]) if c not in ours]
if extra:
    open(sys.argv[3], "w").write("\n".join(extra) + "\n")
print(f"{len(extra)} extra CA certificate(s) from this machine")
PY
  chroot "$rootfs" update-ca-certificates >/dev/null
  # As Debian's own images do: a package's postinst starts no service.
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod +x "$rootfs/usr/sbin/policy-rc.d"
  # What a slim image leaves out: apt's lists and caches, docs, man pages.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  tar -C "$rootfs" --numeric-owner -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
fi

podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$tarball" "$tag"
