#!/usr/bin/env bash
# Build the local CI base image trainyard-base:bookworm-py311 from scratch (no registry needed).
#
#   docker/base/build-local-base.sh [--force] [--tag NAME:TAG]
#
# debootstrap (minbase) of Debian bookworm + python3.11 / venv / pip / CA certificates and the
# two shared libraries opencv-python needs (libGL.so.1, libglib-2.0.so.0), then `docker import`.
# `python` and `pip` on PATH are a venv at /opt/venv, so `pip install` never hits Debian's
# externally-managed-environment error. There is no torch in this base: build the training
# image on it with --build-arg INSTALL_TORCH=1 (see docker/train.Dockerfile).
#
# Idempotent: exits at once when the image already exists (unless --force). Needs root (or
# sudo), debootstrap and a Debian mirror (DEBIAN_MIRROR, default deb.debian.org). ~1-2 min.
set -euo pipefail

TAG="${TRAINYARD_BASE_IMAGE:-trainyard-base:bookworm-py311}"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3,python3-venv,python3-pip,ca-certificates,libgl1,libglib2.0-0"
FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    --tag) TAG="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$FORCE" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG already exists ($(docker image inspect --format '{{.Id}}' "$TAG" | cut -c1-19)); --force rebuilds it"
  exit 0
fi

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
command -v debootstrap >/dev/null 2>&1 || command -v /usr/sbin/debootstrap >/dev/null 2>&1 \
  || { echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }
DEBOOTSTRAP="$(command -v debootstrap || echo /usr/sbin/debootstrap)"

start=$(date +%s)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/trainyard-base.XXXXXX")"
ROOTFS="$WORK/rootfs"
cleanup() { $SUDO rm -rf --one-file-system "$WORK"; }
trap cleanup EXIT

echo "== debootstrap $SUITE ($MIRROR) -> $ROOTFS"
$SUDO "$DEBOOTSTRAP" --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
  || { tail -n 30 "$WORK/debootstrap.log" >&2; echo "debootstrap failed (log above)" >&2; exit 1; }
echo "   debootstrap: $(( $(date +%s) - start ))s"

echo "== venv at /opt/venv"
$SUDO chroot "$ROOTFS" /usr/bin/python3 -m venv /opt/venv
$SUDO chroot "$ROOTFS" /opt/venv/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version; print("   python", sys.version.split()[0])'

echo "== trim"
$SUDO chroot "$ROOTFS" apt-get clean
$SUDO rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/debconf/*-old \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/var/log/* \
  "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
# docker mounts its own resolv.conf/hostname/hosts; don't ship the build host's
: | $SUDO tee "$ROOTFS/etc/resolv.conf" >/dev/null
echo "$SUITE" | $SUDO tee "$ROOTFS/etc/debian_chroot" >/dev/null

echo "== docker import $TAG"
PYVER="$($SUDO chroot "$ROOTFS" /opt/venv/bin/python -c 'import platform; print(platform.python_version())')"
$SUDO tar -C "$ROOTFS" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . \
  | docker import \
      --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV VIRTUAL_ENV=/opt/venv' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'ENV DEBIAN_FRONTEND=noninteractive' \
      --change 'ENV PIP_DISABLE_PIP_VERSION_CHECK=1' \
      --change "LABEL org.trainyard.base=debian-$SUITE-minbase org.trainyard.python=$PYVER" \
      --change 'CMD ["python"]' \
      --message "debootstrap $SUITE minbase + $PACKAGES" \
      - "$TAG" >/dev/null

docker run --rm "$TAG" python -c 'import sys, ssl, venv; print("   check:", sys.executable, sys.version.split()[0], ssl.OPENSSL_VERSION)'
echo "== $TAG built in $(( $(date +%s) - start ))s, $(docker image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
