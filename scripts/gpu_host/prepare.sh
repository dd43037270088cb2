#!/usr/bin/env bash
# Prepare, on this machine, what the GPU test host needs on the lent GPU machine (which reaches no
# network): a Debian 12 root with systemd, systemd-nspawn and OpenSSH, and the wheels the deploy and
# its controller lack there. Everything goes to .gpuhost/ (git-ignored), in parts of at most ~60 MB so
# each travels in one device call. docs/lab/gpu-host.md says how the parts are carried and used.
#
#   bash scripts/gpu_host/prepare.sh BASE_FREEZE
#
# BASE_FREEZE: `pip list --format=freeze` of the GPU machine's CUDA torch environment (/opt/torch/.venv):
# only the lock's packages it lacks, or has at another version, are downloaded (the deploy reuses the
# rest from there, as python_env_reuse_from does on a rented server with a CUDA torch).
set -euo pipefail
cd "$(dirname "$0")/../.."
base_freeze=${1:?usage: prepare.sh BASE_FREEZE, the pip freeze of the torch env on the GPU machine}
out=.gpuhost
cache=.cache/gpu-host
mkdir -p "$out" "$cache/debs"
mirror=$(.venv/bin/python -c 'from tests.lab.hosts import DEBIAN_MIRROR; print(DEBIAN_MIRROR)')
[ -n "$mirror" ] || { echo "prepare: no Debian bookworm archive in apt's sources; set VLMKIT_TEST_DEBIAN_MIRROR" >&2; exit 2; }

# 1. The Debian 12 root: the chroot systemd-nspawn runs from, and the source of the systemd, D-Bus and
#    OpenSSH files grafted into the host's Ubuntu root.
if [ ! -f "$out/debian.tar.xz" ]; then
  rm -rf "$cache/debian"
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,libpam-systemd,openssh-server,openssh-client,systemd-container,sudo \
    --cache-dir="$PWD/$cache/debs" bookworm "$cache/debian" "$mirror" >"$cache/debootstrap.log"
  rm -rf "$cache"/debian/usr/share/{doc,man,info,locale} "$cache"/debian/var/cache/apt/archives/*.deb
  : >"$cache/debian/etc/machine-id"
  rm -f "$cache"/debian/etc/ssh/ssh_host_*
  tar -C "$cache/debian" -cJf "$out/debian.tar.xz" .
fi

# 2. Wheels: the controller's (ansible-core, testinfra and what the GPU machine lacks of their needs)
#    and the service environment's (the gpu lock less torch's family, less what the base already has).
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_39_x86_64 --platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$@"
}
mkdir -p "$cache/wheels"
.venv/bin/python scripts/gpu_host/missing_pins.py requirements/gpu.txt "$base_freeze" >"$cache/service-pins.txt"
download -d "$cache/wheels/service" -r "$cache/service-pins.txt"
download -d "$cache/wheels/controller" ansible-core==2.19.14 resolvelib==1.2.1 cryptography==50.0.2 cffi==2.1.1 \
  pycparser==3.12 pytest-testinfra==10.2.2
# Parts of at most 60 MB, biggest wheels first.
rm -rf "$out"/wheels-*
.venv/bin/python scripts/gpu_host/split.py "$out" 60000000 "$cache/wheels/controller" "$cache/wheels/service"
du -sh "$out"/* | sed 's/^/prepare: /'
