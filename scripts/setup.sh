#!/usr/bin/env bash
# Prepare this machine for vlmkit's tests and local deployment (Debian/Ubuntu, as root or with sudo):
# the Debian packages the test hosts and mirrors need, and a virtual environment in .venv with the
# pinned CPU stack (requirements/cpu.txt, the same set the cpu profile deploys) plus the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(debootstrap systemd-container apt-cacher-ng nginx-light git curl)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  # Keep package scripts from starting daemons (apt-cacher-ng, nginx) on this machine: tests start
  # their own, bound to the addresses they choose.
  policy=/usr/sbin/policy-rc.d
  created_policy=false
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null && as_root chmod 755 "$policy"
    created_policy=true
  fi
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if $created_policy; then as_root rm -f "$policy"; fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and exactly: on these machines the pinned CPU build lies on local disk, while an
# unpinned torch would pull a CUDA build of several GB.
.venv/bin/python -m pip install -q -c requirements/cpu.txt torch
.venv/bin/python -m pip install -q -c requirements/cpu.txt -e '.[test]'
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
