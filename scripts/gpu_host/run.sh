#!/usr/bin/env bash
# The GPU test host on the lent GPU machine: boot a systemd host that has the GPU (systemd-nspawn, the
# device policy really enforced), deploy playbooks/site.yml to it in the gpu profile over SSH on
# loopback, run the smoke suite (GPU checks inside the unit's sandbox), deploy again (changed=0),
# restart the host and check it comes back ready. Run as root in the repository root there:
#
#   bash scripts/gpu_host/run.sh [stash PART... | all | boot | deploy | smoke | reboot | down]
#
# `stash` keeps carried parts (.gpuhost/wheels-N, debian.tar.xz) in the work folder, for parts that
# need a call each (64 MiB a call); the rest runs from there. docs/lab/gpu-host.md has the whole recipe.
# Reports go to $OUT (or the work folder): deploy-1.log, deploy-2.log, smoke.xml, smoke.log, ...
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
W=${VLMKIT_GPU_HOST_WORK:-/tmp/vlmkit-gpu-host}
OUT=${OUT:-$W/out}
D=$W/launcher                       # Debian 12 root: systemd-nspawn runs chrooted here
H=$D/var/lib/machines/gpu-host      # the host's root: an overlay of this machine's Ubuntu root
BASE_ENV=${VLMKIT_GPU_HOST_BASE_ENV:-/opt/torch/.venv}
NVIDIA=${VLMKIT_GPU_HOST_NVIDIA:-/usr/local/nvidia}
SSH_PORT=2222
CTL=$W/controller                   # ansible-core and testinfra for the controller (this machine)
mkdir -p "$W" "$OUT"
log() { echo "gpu-host: $*" >&2; }

stash() {
  mkdir -p "$W/stash"
  for part in "$@"; do cp -a ".gpuhost/$part" "$W/stash/"; log "stashed $part ($(du -sh ".gpuhost/$part" | cut -f1))"; done
}

find_file() { # a carried part, from the tree or the stash
  if [ -e ".gpuhost/$1" ]; then echo ".gpuhost/$1"; elif [ -e "$W/stash/$1" ]; then echo "$W/stash/$1"; else return 1; fi
}

container_pid() { # PID (here) of the container's systemd
  local p
  for p in /proc/[0-9]*; do
    if [ "$(cat "$p/comm" 2>/dev/null)" = systemd ] && grep -qE '^NSpid:\s+[0-9]+\s+1$' "$p/status" 2>/dev/null; then
      basename "$p"; return 0
    fi
  done
  return 1
}
inside() { nsenter -t "$(container_pid)" -a -r -w "$@"; }

prepare_launcher() {
  if [ ! -f "$D/.unpacked" ]; then
    mkdir -p "$D"
    tar -C "$D" -xJf "$(find_file debian.tar.xz)"
    touch "$D/.unpacked"
  fi
  mountpoint -q "$D" || mount --bind "$D" "$D"
  mountpoint -q "$D/dev" || mount --rbind /dev "$D/dev"
  mountpoint -q "$D/proc" || mount -t proc proc "$D/proc"
  mountpoint -q "$D/sys" || mount --rbind /sys "$D/sys"
  mountpoint -q "$D/run" || mount -t tmpfs tmpfs "$D/run"
  mkdir -p "$D$NVIDIA" && { mountpoint -q "$D$NVIDIA" || mount --bind "$NVIDIA" "$D$NVIDIA"; }
}

prepare_host_root() {
  # The upper layer lives in RAM (tmpfs): an upper directory on / would overlap the lower layer.
  mkdir -p "$W/layer" "$H"
  mountpoint -q "$W/layer" || mount -t tmpfs -o size=48g tmpfs "$W/layer"
  mkdir -p "$W/layer/upper" "$W/layer/work"
  mountpoint -q "$H" || mount -t overlay overlay -o "lowerdir=/,upperdir=$W/layer/upper,workdir=$W/layer/work" "$H"
  [ -f "$H/etc/vlmkit-gpu-host" ] && return 0
  python3 "$REPO/scripts/gpu_host/graft.py" "$D" "$H"
  chroot "$H" ldconfig
  # What the Debian packages' maintainer scripts would have done: system users, enabled units, keys.
  chroot "$H" groupadd -f -r messagebus
  chroot "$H" sh -c 'id messagebus >/dev/null 2>&1 || useradd -r -g messagebus -d /nonexistent -s /usr/sbin/nologin messagebus'
  chroot "$H" sh -c 'id sshd >/dev/null 2>&1 || useradd -r -d /run/sshd -s /usr/sbin/nologin sshd'
  mkdir -p "$H/etc/systemd/system/multi-user.target.wants" "$H/etc/systemd/system/sockets.target.wants"
  ln -sf /usr/lib/systemd/system/ssh.service "$H/etc/systemd/system/multi-user.target.wants/ssh.service"
  ln -sf /usr/lib/systemd/system/dbus.socket "$H/etc/systemd/system/sockets.target.wants/dbus.socket"
  ln -sf /usr/lib/systemd/system/multi-user.target "$H/etc/systemd/system/default.target"
  # No consoles to serve, no network to wait for: the container shares this machine's loopback.
  for unit in getty@tty1.service console-getty.service systemd-networkd-wait-online.service; do
    ln -sf /dev/null "$H/etc/systemd/system/$unit"
  done
  cat /proc/sys/kernel/random/uuid | tr -d - >"$H/etc/machine-id"
  cp "$H/etc/machine-id" "$D/etc/machine-id"
  echo gpu-host >"$H/etc/hostname"
  printf '127.0.0.1 localhost gpu-host\n::1 localhost\n' >"$H/etc/hosts"
  chroot "$H" ssh-keygen -A >/dev/null
  printf 'Port %s\nListenAddress 127.0.0.1\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n' "$SSH_PORT" \
    >"$H/etc/ssh/sshd_config.d/vlmkit-gpu-host.conf"
  mkdir -p "$W/ssh" && [ -f "$W/ssh/id_ed25519" ] || chroot "$D" ssh-keygen -q -t ed25519 -N '' -f /root/id_ed25519
  [ -f "$W/ssh/id_ed25519" ] || mv "$D/root/id_ed25519" "$D/root/id_ed25519.pub" "$W/ssh/"
  install -d -m 0700 "$H/root/.ssh" && install -m 0600 "$W/ssh/id_ed25519.pub" "$H/root/.ssh/authorized_keys"
  # As on a real server: the driver's tools on PATH, its libraries where the loader looks.
  for tool in "$NVIDIA"/bin/*; do ln -sf "$tool" "$H/usr/bin/$(basename "$tool")"; done
  echo "$NVIDIA/lib64" >"$H/etc/ld.so.conf.d/000-nvidia-driver.conf"
  # The model is already on the host's disk (hf_model_download: false): the tiny checkpoint.
  mkdir -p "$H/srv/models"
  "$BASE_ENV/bin/python" -m inference.checkpoint_builder --shape tiny --output "$W/tiny-mllama" >/dev/null
  cp -a "$W/tiny-mllama" "$H/srv/models/tiny-mllama"
  # The service environment's wheels that the base environment lacks: already on the host (host_dir).
  mkdir -p "$H/srv/vlmkit-wheels"
  cp "$W"/stash/wheels-*/service/*.whl .gpuhost/wheels-*/service/*.whl "$H/srv/vlmkit-wheels/" 2>/dev/null || true
  touch "$H/etc/vlmkit-gpu-host"
}

boot() {
  prepare_launcher
  prepare_host_root
  if container_pid >/dev/null; then log "already running (pid $(container_pid))"; return 0; fi
  # No systemd here: nspawn needs its own cgroup and no registration. --capability=all and
  # --system-call-filter=bpf let the container's systemd attach its device-policy BPF programs:
  # without them DevicePolicy= is silently not enforced and the test would pass where a server fails.
  mkdir -p /sys/fs/cgroup/vlmkit-gpu-host
  local nodes=() node
  for node in /dev/nvidia[0-9]* /dev/nvidiactl /dev/nvidia-uvm /dev/nvidia-uvm-tools /dev/nvidia-modeset /dev/nvidia-caps; do
    [ -e "$node" ] && nodes+=("--bind=$node")
  done
  setsid bash -c "echo \$\$ > /sys/fs/cgroup/vlmkit-gpu-host/cgroup.procs; exec chroot '$D' systemd-nspawn -b -q \
    -D /var/lib/machines/gpu-host --machine=gpu-host --register=no --keep-unit --link-journal=no \
    --capability=all --system-call-filter=bpf --resolv-conf=off --timezone=off ${nodes[*]} --bind-ro=$NVIDIA" \
    </dev/null >>"$OUT/console.log" 2>&1 &
  local deadline=$((SECONDS + 60))
  until container_pid >/dev/null; do [ $SECONDS -lt $deadline ] || { log "no container"; tail -20 "$OUT/console.log"; return 1; }; sleep 0.5; done
  local state
  state=$(inside timeout 90 systemctl is-system-running --wait 2>&1 || true)
  log "booted: $state"
  [ "$state" = running ] || inside systemctl --failed --no-pager >&2 || true
  ssh_cmd true || { log "no SSH on 127.0.0.1:$SSH_PORT"; return 1; }
}

controller() {
  if [ ! -d "$CTL/site" ]; then
    # Each wheel once, wherever it was carried (the tree's .gpuhost or the stash).
    local -A wheels=(); local wheel
    for wheel in "$W"/stash/wheels-*/controller/*.whl .gpuhost/wheels-*/controller/*.whl; do
      [ -f "$wheel" ] && wheels[$(basename "$wheel")]=$wheel
    done
    python3 -m pip install -q --no-index --no-deps --target "$CTL/site" "${wheels[@]}"
    # The SSH client, from the Debian root (this machine has none).
    mkdir -p "$CTL/bin" && cp "$D/usr/bin/ssh" "$D/usr/bin/scp" "$D/usr/bin/sftp" "$CTL/bin/"
  fi
  export PYTHONPATH=$CTL/site PATH=$CTL/bin:$CTL/site/bin:$PATH
  export ANSIBLE_SSH_ARGS="-o ControlMaster=auto -o ControlPersist=60s -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
  mkdir -p "$REPO/.cache/gpu-host"
  cp "$W/ssh/id_ed25519" "$REPO/.cache/gpu-host/id_ed25519"
}

ssh_cmd() { controller; ssh -i "$W/ssh/id_ed25519" -p "$SSH_PORT" -o BatchMode=yes -o StrictHostKeyChecking=no \
  -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5 root@127.0.0.1 "$@"; }

secrets() { # the API key, in an extra-vars file only root reads (as a vault file would hold it)
  if [ ! -f "$W/secrets.yml" ]; then
    (umask 077; printf 'vault_vlmkit_api_key: "%s"\n' "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$W/secrets.yml")
  fi
  echo "$W/secrets.yml"
}

deploy() { # deploy N [ANSIBLE ARGS...]: the Nth run of site.yml; prints the recap
  controller
  local n=$1; shift
  python3 -m ansible.cli.playbook -i inventory/gpu-host/hosts.yml playbooks/site.yml -e "@$(secrets)" "$@" 2>&1 | tee "$OUT/deploy-$n.log" | \
    grep -E '^(TASK|fatal|failed|PLAY RECAP)|changed=|FAILED|ok: .*msg' | tail -40
  grep -A2 'PLAY RECAP' "$OUT/deploy-$n.log" | tail -2
  grep -qE 'failed=0' "$OUT/deploy-$n.log" && ! grep -qE 'unreachable=[1-9]|failed=[1-9]' "$OUT/deploy-$n.log"
}

smoke() { # smoke NAME [PYTEST ARGS...]
  controller
  local name=${1:-smoke}; shift || true
  python3 -m pytest -p no:cacheprovider tests/smoke --hosts=ansible://gpu-host --ansible-inventory=inventory/gpu-host/hosts.yml \
    --junitxml="$OUT/$name.xml" -q -rA "$@" 2>&1 | tee "$OUT/$name.log" | grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed" | tail -40
}

reboot_host() { # restart the container (systemd-nspawn exits on a reboot inside), then wait for ready
  local pid started
  pid=$(container_pid)
  inside systemctl poweroff || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
  started=$SECONDS
  boot
  ssh_cmd 'for i in $(seq 1 180); do curl -fsS http://127.0.0.1:8000/health/ready >/dev/null 2>&1 && exit 0; python3 -c "import urllib.request as u; u.urlopen(\"http://127.0.0.1:8000/health/ready\", timeout=2)" 2>/dev/null && exit 0; sleep 1; done; exit 1' \
    && log "ready $((SECONDS - started)) s after the restart, by itself" || { log "not ready after the restart"; return 1; }
}

# A real CUDA error in the deployed service (tests/service/faulty_model.py, fault cuda-assert, through a
# drop-in): the request fails, the process exits (3), systemd starts it again and it is ready again.
cuda_fault() {
  local dropin=$H/etc/systemd/system/vlmkit.service.d/cuda-fault.conf python
  python=$(inside sh -c 'grep -o "^ExecStart=[^ ]*" /etc/systemd/system/vlmkit.service | cut -d= -f2 | sed "s|/vlmkit$|/python|"')
  rm -rf "$H/opt/vlmkit-fault" && mkdir -p "$H/opt/vlmkit-fault" && cp -a tests "$H/opt/vlmkit-fault/"
  mkdir -p "$(dirname "$dropin")"
  printf '[Service]\nEnvironment=VLMKIT_TEST_FAULT=cuda-assert PYTHONPATH=/opt/vlmkit-fault\nExecStart=\nExecStart=%s -m tests.service.faulty_model serve --config /etc/vlmkit/config.yaml\n' "$python" >"$dropin"
  inside systemctl daemon-reload && inside systemctl restart vlmkit
  wait_ready 180 || return 1
  local before; before=$(inside systemctl show -P NRestarts vlmkit)
  inside "$python" -c '
import json, urllib.request, urllib.error
key = [l.split("=", 1)[1].strip() for l in open("/etc/vlmkit/vlmkit.env") if l.startswith("VLMKIT_API_KEY=")][0]
headers = {"Authorization": "Bearer " + key}
model = json.load(urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:8000/v1/models", None, headers)))["data"][0]["id"]
body = json.dumps({"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]}).encode()
request = urllib.request.Request("http://127.0.0.1:8000/v1/chat/completions", body, {"Content-Type": "application/json", "Authorization": "Bearer " + key})
try:
    urllib.request.urlopen(request, timeout=60); print("request: answered 200 (unexpected)")
except urllib.error.HTTPError as error:
    print("request:", error.code, error.read().decode()[:300])
except OSError as error:
    print("request: connection ended:", error)' | tee "$OUT/cuda-fault.txt"
  sleep 5
  wait_ready 180 && echo "ready again; NRestarts $before -> $(inside systemctl show -P NRestarts vlmkit)" | tee -a "$OUT/cuda-fault.txt"
  inside journalctl -u vlmkit --no-pager -o cat | grep -E "device|CUDA|exited|status=|Scheduled restart" | tail -8 | tee -a "$OUT/cuda-fault.txt"
  rm -f "$dropin" && inside systemctl daemon-reload && inside systemctl restart vlmkit && wait_ready 180
}

wait_ready() { # wait_ready SECONDS: until /health/ready answers 200 on the host
  local deadline=$((SECONDS + $1))
  until inside python3 -c 'import urllib.request as u; u.urlopen("http://127.0.0.1:8000/health/ready", timeout=2)' 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { log "not ready within $1 s"; return 1; }
    sleep 1
  done
}

security() { inside systemd-analyze security --no-pager vlmkit.service >"$OUT/security.txt" 2>&1 || true; tail -1 "$OUT/security.txt"; }

down() {
  local pid; pid=$(container_pid || true)
  [ -n "$pid" ] && { inside systemctl poweroff || kill "$pid"; sleep 3; }
  umount -R "$H" 2>/dev/null || true; umount "$W/layer" 2>/dev/null || true
  for m in "$NVIDIA" /run /sys /proc /dev ""; do umount -R "$D$m" 2>/dev/null || true; done
}

versions() {
  { echo "date: $(date -u +%FT%TZ)"; echo "commit: $(git rev-parse HEAD 2>/dev/null || cat .gpuhost/commit 2>/dev/null)";
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || "$NVIDIA/bin/nvidia-smi" --query-gpu=name,driver_version --format=csv,noheader
    "$BASE_ENV/bin/python" -c 'import torch, sys; print("base torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])'
    inside systemctl --version | head -1; grep PRETTY "$H/etc/os-release"; } >"$OUT/versions.txt" 2>&1
  cat "$OUT/versions.txt"
}

step=${1:-all}; shift || true
case $step in
  stash) stash "$@" ;;
  boot) boot ;;
  deploy) boot && deploy "${1:-1}" ;;
  smoke) smoke "$@" ;;
  unsloth) # the reference deployment's loader: the same host, backend unsloth, then the smoke suite again
    deploy unsloth -e inference_service_backend=unsloth && smoke smoke-unsloth
    { inside grep -H backend /etc/vlmkit/config.yaml; inside ls /var/cache/vlmkit;
      inside journalctl -u vlmkit --no-pager -o cat | grep -iE "unsloth|backend" | tail -5; } 2>&1 | tee "$OUT/unsloth-evidence.txt" ;;
  reboot) reboot_host ;;
  security) security ;;
  down) down ;;
  inside) inside "$@" ;;
  cuda-fault) cuda_fault ;;
  all)
    boot && versions
    deploy 1 || { log "first deploy failed"; exit 1; }
    smoke smoke || log "smoke suite failed"
    deploy 2 && grep -qE 'changed=0 ' "$OUT/deploy-2.log" && log "second run: changed=0" || log "second run: NOT changed=0"
    security
    reboot_host
    ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
