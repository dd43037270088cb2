"""The operator tasks. Each has configure_NAME(parser) and run_NAME(args) -> exit status."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from inference.ops.probe import APP_QUERY, GPU_QUERY, NO_GPU, parse_apps, parse_gpus
from inference.ops.remote import Remote
from inference.ops.status import gpu_lines, render
from inference.ops.target import OpsError, Target, resolve
from inference.ops.tunnel import Tunnel


def _target(args: argparse.Namespace) -> Target:
    vault: tuple[str, ...] = ()
    if args.vault_password_file:
        vault += ("--vault-password-file", args.vault_password_file)
    if args.ask_vault_pass:
        vault += ("--ask-vault-pass",)
    target = resolve(args.host, args.inventory, args.identity, vault)
    target.accept_host_key = args.accept_host_key
    return target


def _remote(args: argparse.Namespace) -> Remote:
    return Remote(_target(args)).open()


def _terminate_on_sigterm() -> None:
    """SIGTERM ends a long-running task like Ctrl-C does: cleanly, exit 0."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _health(url: str) -> dict:
    try:
        with urllib.request.urlopen(f"{url}/health/ready", timeout=10) as answer:
            return {"ready": True, **json.load(answer)}
    except urllib.error.HTTPError as exc:
        try:
            return {"ready": False, **json.load(exc)}
        except ValueError:
            return {"ready": False, "status": f"HTTP {exc.code}"}
    except OSError as exc:
        return {"ready": False, "status": str(exc)}


# --- tunnel ---------------------------------------------------------------------------------------


def configure_tunnel(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--local-port",
        type=int,
        default=None,
        help="port on this machine (default: the service's own port if free, else any free one; 0: any)",
    )
    parser.add_argument(
        "--local-host", default="127.0.0.1", help="address on this machine to listen on (default 127.0.0.1)"
    )


def run_tunnel(args: argparse.Namespace) -> int:
    _terminate_on_sigterm()
    with _remote(args) as remote:
        host, port = remote.service_address()
        try:
            tunnel = Tunnel(remote, host, port, port if args.local_port is None else args.local_port, args.local_host)
        except OpsError:
            if args.local_port is not None:
                raise
            tunnel = Tunnel(remote, host, port, 0, args.local_host)
        with tunnel:
            health = _health(tunnel.url)
            state = f"ready, model {health.get('model')}" if health["ready"] else f"NOT ready: {health.get('status')}"
            print(f"vlmkit on {remote.target.describe()} ({host}:{port} there) is at {tunnel.url}/v1 ({state})")
            print(f"  export VLMKIT_URL={tunnel.url}/v1")
            print("Ctrl-C closes the tunnel.", flush=True)
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        print(f"tunnel closed ({tunnel.connections} connection(s) forwarded)", flush=True)
    return 0


# --- status ---------------------------------------------------------------------------------------


def configure_status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")


def run_status(args: argparse.Namespace) -> int:
    with _remote(args) as remote:
        facts = remote.facts()
        target = remote.target
        facts["target"] = {
            "name": target.name,
            "address": target.address,
            "user": target.user,
            "service": f"{target.service_host}:{target.service_port}",
        }
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        print(render(target.name, facts))
    return 0 if facts["service"]["active_state"] == "active" and facts["ready"].get("ready") else 3


# --- logs -----------------------------------------------------------------------------------------


def configure_logs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C to stop)")
    parser.add_argument(
        "--since", default=None, help='journalctl --since, e.g. "10 min ago", "today", "2025-01-31 12:00"'
    )
    parser.add_argument("--until", default=None, help="journalctl --until")
    parser.add_argument("-n", "--lines", type=int, default=100, help="how many of the last lines (default 100)")
    parser.add_argument("--grep", default=None, help="only lines matching this pattern (journalctl --grep)")


def run_logs(args: argparse.Namespace) -> int:
    _terminate_on_sigterm()
    with _remote(args) as remote:
        command = [
            "journalctl",
            "-u",
            f"{remote.target.unit}.service",
            "--no-pager",
            "-o",
            "short-iso",
            "-n",
            str(args.lines),
        ]
        for option, value in (("--since", args.since), ("--until", args.until), ("--grep", args.grep)):
            if value:
                command += [option, value]
        if args.follow:
            command.append("--follow")
        try:
            # A pseudo-terminal for --follow: Ctrl-C (or closing) then stops journalctl on the server too.
            result = remote.stream(command, privileged=True, pty=args.follow)
        except KeyboardInterrupt:
            return 0
    if args.follow:
        return 0
    return 0 if result.ok or (args.grep and result.exited == 1) else result.exited


# --- restart --------------------------------------------------------------------------------------


def configure_restart(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=900,
        help="seconds to wait for /health/ready after the restart (default 900: a 90B model loads for minutes)",
    )


def run_restart(args: argparse.Namespace) -> int:
    with _remote(args) as remote:
        unit = remote.target.unit
        before = remote.main_pid()
        started = time.monotonic()
        print(f"restarting {unit}.service on {remote.target.describe()} (pid {before})...", flush=True)
        remote.check(["systemctl", "restart", f"{unit}.service"], privileged=True, what=f"systemctl restart {unit}")
        _, ready = remote.wait_ready(args.timeout)
        after = remote.main_pid()
    print(
        f"{unit}.service restarted (pid {before} -> {after}); ready after {time.monotonic() - started:.1f} s, "
        f"model {ready.get('model')} (vlmkit {ready.get('version')})"
    )
    return 0


# --- gpu-watch ------------------------------------------------------------------------------------


def configure_gpu_watch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many refreshes (default: until Ctrl-C)")


def run_gpu_watch(args: argparse.Namespace) -> int:
    _terminate_on_sigterm()
    query = (
        f"nvidia-smi --query-gpu={GPU_QUERY} --format=csv,noheader,nounits && echo '--' && "
        f"nvidia-smi --query-compute-apps={APP_QUERY} --format=csv,noheader,nounits"
    )
    clear = sys.stdout.isatty()
    with _remote(args) as remote:
        if not remote.run("command -v nvidia-smi").ok:
            print(NO_GPU)
            return 0
        shown = 0
        try:
            while not args.count or shown < args.count:
                result = remote.run(query, timeout=60)
                if not result.ok:
                    reason = (result.stdout + result.stderr).strip().splitlines()
                    print(NO_GPU + (f": {reason[0]}" if reason else ""))
                    return 0
                gpus_csv, _, apps_csv = result.stdout.partition("--\n")
                gpu = {"available": True, "gpus": parse_gpus(gpus_csv), "processes": parse_apps(apps_csv)}
                stamp = datetime.datetime.now().strftime("%H:%M:%S")
                screen = [
                    f"{remote.target.name}  {stamp}  (every {args.interval:g} s, Ctrl-C to stop)",
                    *gpu_lines(gpu),
                ]
                print(("\033[H\033[2J" if clear else "") + "\n".join(screen) + ("" if clear else "\n"), flush=True)
                shown += 1
                if not args.count or shown < args.count:
                    time.sleep(args.interval)
        except KeyboardInterrupt:
            pass
    return 0


# --- ask and usecases, through a tunnel -----------------------------------------------------------


def configure_ask(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="local image file, or '-' for a text-only question")
    parser.add_argument("question", help="what to ask about the image")
    _generation_arguments(parser)
    parser.add_argument(
        "--min-tokens",
        type=int,
        default=None,
        help="shortest answer, in tokens (min_tokens, vLLM's extension, which vlmkit serve honours)",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds the answer may take (default 600)")


def _generation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model id (default: the server's only model)")
    parser.add_argument("--max-tokens", type=int, default=None, help="longest answer, in tokens")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (0 = greedy)")


def run_ask(args: argparse.Namespace) -> int:
    import openai

    from inference.client import stream_answer, user_message

    if args.image != "-" and not Path(args.image).is_file():
        print(f"vlmkit ops ask: no such image file: {args.image}", file=sys.stderr)
        return 2
    message = user_message(args.question, args.image)
    with _remote(args) as remote:
        key = remote.api_key()
        host, port = remote.service_address()
        with Tunnel(remote, host, port, 0) as tunnel:
            client = openai.OpenAI(
                base_url=f"{tunnel.url}/v1", api_key=key or "none", max_retries=1, timeout=args.timeout
            )
            try:
                model = args.model or client.models.list().data[0].id
                stream_answer(client, model, [message], args)
            except openai.APIStatusError as exc:
                print(f"vlmkit ops ask: the server answered {exc.status_code}: {exc.message}", file=sys.stderr)
                return 1
            except openai.APITimeoutError:
                print(f"vlmkit ops ask: no answer within {args.timeout:g} s", file=sys.stderr)
                return 1
            except openai.APIConnectionError:
                print(
                    f"vlmkit ops ask: no answer through the tunnel to {host}:{port} on {remote.target.describe()}",
                    file=sys.stderr,
                )
                return 1
    return 0


def configure_usecases(parser: argparse.ArgumentParser) -> None:
    from inference.usecases import add_suite_arguments

    _generation_arguments(parser)
    add_suite_arguments(parser)


def run_usecases(args: argparse.Namespace) -> int:
    from inference.usecases import run_suite

    with _remote(args) as remote:
        key = remote.api_key()
        host, port = remote.service_address()
        with Tunnel(remote, host, port, 0) as tunnel:
            return run_suite(args, f"{tunnel.url}/v1", key or "none")


# --- smoke ----------------------------------------------------------------------------------------


def configure_smoke(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkout",
        type=Path,
        default=None,
        help="the vlmkit checkout holding tests/smoke (default: found from the current folder upwards)",
    )
    parser.add_argument(
        "--pytest-args",
        default="",
        metavar="ARGS",
        help='more pytest arguments, as one string: --pytest-args="-k ready -x"',
    )


def find_checkout(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / "tests" / "smoke" / "conftest.py").is_file():
            return folder
    return None


def run_smoke(args: argparse.Namespace) -> int:
    checkout = args.checkout or find_checkout(Path.cwd())
    if checkout is None or not (checkout / "tests" / "smoke").is_dir():
        raise OpsError("the smoke suite lives in a vlmkit checkout (tests/smoke): run from one, or pass --checkout")
    target = _target(args)
    env = dict(os.environ)
    if target.inventory:
        hosts = [f"--hosts=ansible://{target.name}", f"--ansible-inventory={Path(target.inventory).resolve()}"]
        if (checkout / "ansible.cfg").is_file():
            env.setdefault("ANSIBLE_CONFIG", str(checkout / "ansible.cfg"))
        if args.vault_password_file:
            env["ANSIBLE_VAULT_PASSWORD_FILE"] = str(Path(args.vault_password_file).resolve())
    else:
        who = f"{target.user}@" if target.user else ""
        port = f":{target.port}" if target.port else ""
        hosts = [f"--hosts=ssh://{who}{target.address}{port}"]
        if target.key_file:
            hosts.append(f"--ssh-identity-file={Path(target.key_file).resolve()}")
    extra = shlex.split(args.pytest_args)
    command = [sys.executable, "-m", "pytest", "tests/smoke", *hosts, "-p", "no:cacheprovider", "-q", *extra]
    print(f"smoke suite against {target.describe()}: {' '.join(command[1:])}", flush=True)
    return subprocess.run(command, cwd=checkout, env=env).returncode
