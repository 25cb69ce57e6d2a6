#!/usr/bin/env bash
# Builds a local base image for hosts that cannot pull from Docker Hub: debootstrap a minimal
# bookworm from the host's apt mirror, trust the host's extra CA certificates (a TLS-intercepting
# proxy needs them at build time), then `docker import` it. It is tagged under a name of our own,
# never another image's (debian:*, nvidia/cuda:*), so it cannot shadow the real image later; the
# Dockerfiles take it with `--build-arg BASE_IMAGE=flow-vocoder/base:bookworm`.
#
# usage: sudo docker/make-base-image.sh [TAG]     (TAG defaults to flow-vocoder/base:$SUITE)
# env:   MIRROR  apt mirror (default: the host's first Debian URI in /etc/apt/sources.list[.d])
#        SUITE   Debian suite (default: bookworm)
set -euo pipefail

SUITE=${SUITE:-bookworm}
TAG=${1:-flow-vocoder/base:$SUITE}
case "$TAG" in
  debian:*|ubuntu:*|nvidia/*|library/*|docker.io/*)
    echo "make-base-image: refusing to tag a home-made image as $TAG, another image's name; use e.g. flow-vocoder/base:bookworm" >&2
    exit 2 ;;
esac

host_mirror() {
  # The first non-security Debian URI, from either the one-line or the deb822 format.
  local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
  local f
  for f in "${files[@]}"; do
    [ -f "$f" ] || continue
    grep -hoE '^(deb|URIs:)[[:space:]]+(\[[^]]*\][[:space:]]+)?https?://[^[:space:]]+' "$f" \
      | grep -oE 'https?://[^[:space:]]+' | grep -v -- '-security' | head -n 1 && return 0
  done
  return 1
}

MIRROR=${MIRROR:-$(host_mirror || echo http://deb.debian.org/debian)}
MIRROR=${MIRROR%/}
SECURITY_MIRROR=${SECURITY_MIRROR:-${MIRROR}-security}

for tool in debootstrap docker; do
  command -v "$tool" >/dev/null || { echo "make-base-image: $tool not found (apt-get install debootstrap docker.io)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "make-base-image: debootstrap needs root" >&2; exit 1; }

ROOTFS=$(mktemp -d /tmp/bookworm-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

echo "make-base-image: debootstrap $SUITE from $MIRROR into $ROOTFS"
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOTFS" "$MIRROR" >/tmp/make-base-image.log 2>&1 \
  || { tail -n 20 /tmp/make-base-image.log >&2; exit 1; }

# Same apt layout as the official image, pointing at the mirror that worked here.
rm -f "$ROOTFS/etc/apt/sources.list"
cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

# What makes the official image "slim": no docs, man pages or translations from later installs,
# and apt keeps no downloaded packages.
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cat >"$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'APT::Install-Recommends "false";' >"$ROOTFS/etc/apt/apt.conf.d/docker-no-recommends"

# The host's extra CAs (e.g. an egress proxy's), so apt over https and pip work inside builds.
shopt -s nullglob
extra_cas=(/usr/local/share/ca-certificates/*.crt)
if [ ${#extra_cas[@]} -gt 0 ]; then
  cp "${extra_cas[@]}" "$ROOTFS/usr/local/share/ca-certificates/"
  chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1
  echo "make-base-image: trusted ${#extra_cas[@]} extra CA certificate(s): ${extra_cas[*]##*/}"
fi

rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/log/*.log \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/tmp/*

tar --numeric-owner -C "$ROOTFS" -c . | docker import \
  --change 'CMD ["bash"]' \
  --change 'ENV LANG=C.UTF-8' \
  --message "debootstrap --variant=minbase $SUITE $MIRROR" \
  - "$TAG" >/dev/null
echo "make-base-image: tagged $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
