"""STAND-INS for NVIDIA's repository, runfile and archives, built here because the real ones cannot be
fetched from this machine (and the test hosts have no GPU).

What is built (every file says it is a stand-in; nothing here is NVIDIA's):
- a signed flat apt repository laid out like NVIDIA's (`compute/cuda/repos/debian12/x86_64/`) with
  NVIDIA's package names and versions: cuda-keyring 1.1-1 (carrying this repository's test key, and a
  source list and pin like the real package), cuda-toolkit-12-4 12.4.1-1 with cuda-nvcc-12-4,
  cuda-cudart-12-4 and libcublas-12-4 (and, as NVIDIA's do, the config packages that add
  /etc/ld.so.conf.d/000_cuda.conf and 988_cuda-12.conf and the /usr/local/cuda alternatives),
  libcudnn9-cuda-12 / libcudnn9-dev-cuda-12 9.1.0.70-1 and, as
  decoys a missing pin would pick, 9.8.0.87-1; cuda-drivers-550 550.54.15-1 with
  libnvidia-compute-550 (a stand-in nvidia-smi that fails until the next reboot, like a fresh
  driver); nvidia-open-580 580.95.05-1 with libnvidia-compute-580 (a libcuda.so.1 whose cuInit
  answers 100 before the reboot and 802 on an NVSwitch board without Fabric Manager) and a
  persistence daemon whose unit says --no-persistence-mode, as Canonical's does;
  nvidia-fabricmanager-580 at the driver's version and a newer decoy, each refusing another
  driver version as the real one does; nvidia-open-535, a transitional package of nvidia-open-580
  as Ubuntu makes of old branches; and linux-headers-<kernel>;
- the runfile `compute/cuda/12.4.0/local_installers/cuda_12.4.0_550.54.14_linux.run`: a shell script
  with the real installer's `--silent --toolkit --toolkitpath= --tmpdir=` interface that unpacks a
  CUDA 12.4.0 tree; and a broken one that installs 12.3 under the 12.4 name;
- the cuDNN archive `compute/cudnn/redist/cudnn/linux-x86_64/cudnn-linux-x86_64-9.1.0.70_cuda12-archive.tar.xz`.

nvcc prints the real 12.4 version banners; the libraries are real ELF shared objects (built with gcc)
whose sonames match NVIDIA's and whose version functions (cudaRuntimeGetVersion, cudnnGetVersion)
answer as the real ones do, so ldconfig and ctypes treat them as the real thing.

`StandinServer` serves the tree on the bridge address (python's http.server in a thread, stopped
with the test session) and logs every path asked; `ForwardProxy` is an HTTP proxy that forwards only
to that server and logs what passed through it.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import socketserver
import subprocess
import tarfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

HERE = Path(__file__).resolve().parent
NVIDIA_SMI = HERE / "standins" / "nvidia-smi"
ARCH = "amd64"
MULTIARCH = "x86_64-linux-gnu"
REPO_DISTRO = "debian12"  # NVIDIA's repository for the test hosts' Debian 12
REPO_PATH = f"compute/cuda/repos/{REPO_DISTRO}/x86_64"
RUNFILE = "cuda_12.4.0_550.54.14_linux.run"
BROKEN_RUNFILE = "cuda_12.4.0_550.54.14_linux-broken-standin.run"
CUDNN_ARCHIVE = "cudnn-linux-x86_64-9.1.0.70_cuda12-archive.tar.xz"
KEYRING_DEB = "cuda-keyring_1.1-1_all.deb"

# nvcc --version of the real releases (12.4.1 from the apt packages, 12.4.0 from the runfile).
NVCC_BANNERS = {
    "12.4.1": ("Thu_Mar_28_02:18:24_PDT_2024", "12.4, V12.4.131", "cuda_12.4.r12.4/compiler.34097967_0"),
    "12.4.0": ("Tue_Feb_27_16:19:38_PST_2024", "12.4, V12.4.99", "cuda_12.4.r12.4/compiler.33961263_0"),
    "12.3.2": ("Wed_Nov_22_10:17:15_PST_2023", "12.3, V12.3.107", "cuda_12.3.r12.3/compiler.33567101_0"),
}

STUB_SOURCES = {
    "cudart": "int cudaRuntimeGetVersion(int *version) {{ *version = {version}; return 0; }}\n",
    "cublas": "int cublasGetVersion_v2(void *handle, int *version) {{ (void)handle; *version = {version}; return 0; }}\n",
    "cudnn": "#include <stddef.h>\nsize_t cudnnGetVersion(void) {{ return {version}; }}\n",
    # libcuda.so.1 of driver {version}: cuInit answers as the real one does before a reboot (100: no
    # device) and on an NVSwitch board whose fabric is not up (802: system not ready).
    "cuda": textwrap.dedent("""\
        #include <unistd.h>
        int cuDriverGetVersion(int *version) {{ *version = 13000; return 0; }}
        int cuInit(unsigned int flags) {{
          (void)flags;
          if (access("/run/nvidia-standin/reboot-pending", F_OK) == 0) return 100;
          if (access("/etc/nvidia-standin/fabric-required", F_OK) == 0
              && access("/run/nvidia-standin/fabric-running", F_OK) != 0) return 802;
          return 0;
        }}
        """),
}

DRIVER_580 = "580.95.05"
# Canonical's unit starts the daemon with --no-persistence-mode on some branches; so does the stand-in's.
PERSISTENCED_UNIT = textwrap.dedent("""\
    [Unit]
    Description=STAND-IN for NVIDIA's persistence daemon (vlmkit tests)
    [Service]
    Type=oneshot
    RemainAfterExit=yes
    ExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced --no-persistence-mode --verbose
    [Install]
    WantedBy=multi-user.target
    """)
PERSISTENCED = textwrap.dedent("""\
    #!/bin/sh
    # STAND-IN for NVIDIA's nvidia-persistenced (vlmkit tests): sets the stand-in GPUs' persistence mode
    # as the real daemon does (on unless --no-persistence-mode), then exits.
    mode=on
    for arg in "$@"; do
      case "$arg" in --no-persistence-mode) mode=off ;; --persistence-mode) mode=on ;; esac
    done
    mkdir -p /run/nvidia-standin
    if [ "$mode" = on ]; then touch /run/nvidia-standin/persistence; else rm -f /run/nvidia-standin/persistence; fi
    """)


def fabricmanager_script(version: str) -> str:
    return textwrap.dedent(f"""\
        #!/bin/sh
        # STAND-IN for NVIDIA's nv-fabricmanager {version} (vlmkit tests): like the real one, it refuses to
        # run with a driver of another version; otherwise the fabric counts as trained while it runs.
        driver=$(python3 -c 'import json; print(json.load(open("/etc/nvidia-smi-standin.json"))["driver_version"])')
        if [ "$driver" != "{version}" ]; then
          echo "fabric manager {version} does not match the driver $driver" >&2
          exit 1
        fi
        mkdir -p /run/nvidia-standin && touch /run/nvidia-standin/fabric-running
        """)


FABRICMANAGER_UNIT = textwrap.dedent("""\
    [Unit]
    Description=STAND-IN for NVIDIA's fabric manager (vlmkit tests)
    [Service]
    Type=oneshot
    RemainAfterExit=yes
    ExecStart=/usr/bin/nv-fabricmanager -c /usr/share/nvidia/nvswitch/fabricmanager.cfg
    ExecStop=/bin/rm -f /run/nvidia-standin/fabric-running
    [Install]
    WantedBy=multi-user.target
    """)


class StandinError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    return [tool for tool in ("gcc", "dpkg-deb", "gpg") if shutil.which(tool) is None]


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise StandinError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result


def nvcc_script(release: str) -> str:
    built, version, build = NVCC_BANNERS[release]
    return textwrap.dedent(f"""\
        #!/bin/sh
        # STAND-IN for NVIDIA's nvcc {release} (vlmkit tests): prints the real version banner, compiles nothing.
        case "$1" in
          --version|-V)
            echo "nvcc: NVIDIA (R) Cuda compiler driver"
            echo "Copyright (c) 2005-2024 NVIDIA Corporation"
            echo "Built on {built}"
            echo "Cuda compilation tools, release {version}"
            echo "Build {build}"
            ;;
          *) echo "nvcc (vlmkit stand-in): compiles nothing" >&2; exit 1 ;;
        esac
        """)


def cudnn_header(version: str) -> str:
    major, minor, patch = version.split(".")[:3]
    return textwrap.dedent(f"""\
        /* STAND-IN for NVIDIA's cudnn_version.h (vlmkit tests). */
        #ifndef CUDNN_VERSION_H_
        #define CUDNN_VERSION_H_
        #define CUDNN_MAJOR {major}
        #define CUDNN_MINOR {minor}
        #define CUDNN_PATCHLEVEL {patch}
        #define CUDNN_VERSION (CUDNN_MAJOR * 10000 + CUDNN_MINOR * 100 + CUDNN_PATCHLEVEL)
        #endif
        """)


@dataclass
class Deb:
    name: str
    version: str
    files: dict[str, bytes | str] = field(default_factory=dict)  # path -> content; "->target" for a symlink
    depends: str = ""
    arch: str = ARCH
    postinst: str = ""
    conffiles: tuple[str, ...] = ()
    modes: dict[str, int] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version}_{self.arch}.deb"


class StandinBuilder:
    """Builds the stand-in tree once per test session under `root` (served as the mirror's root)."""

    def __init__(self, root: Path, work: Path) -> None:
        self.root, self.work = root, work
        self.gnupg = work / "gnupg"
        self.keyring = work / "cuda-archive-keyring.gpg"
        self.offline = root.parent / "offline"  # what an operator keeps on the controller for offline hosts

    # --- pieces ---------------------------------------------------------------------------------

    def stub_library(self, kind: str, version: int, soname: str) -> bytes:
        out = self.work / "stubs" / f"{soname}-{version}"
        out.parent.mkdir(parents=True, exist_ok=True)
        source = out.with_suffix(".c")
        source.write_text(f"/* STAND-IN for {soname} (vlmkit tests). */\n" + STUB_SOURCES[kind].format(version=version))
        _run(["gcc", "-shared", "-fPIC", "-O0", f"-Wl,-soname,{soname}", "-o", str(out), str(source)])
        return out.read_bytes()

    def signing_key(self) -> None:
        self.gnupg.mkdir(mode=0o700, parents=True, exist_ok=True)
        env = dict(os.environ, GNUPGHOME=str(self.gnupg))
        _run(
            [
                "gpg",
                "--batch",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--quick-gen-key",
                "vlmkit STAND-IN CUDA repository <standin@vlmkit.invalid>",
                "ed25519",
                "sign",
                "never",
            ],
            env=env,
        )
        _run(["gpg", "--batch", "--yes", "--output", str(self.keyring), "--export"], env=env)

    def build_deb(self, deb: Deb, dest: Path) -> Path:
        tree = self.work / "debs" / f"{deb.name}-{deb.version}"
        shutil.rmtree(tree, ignore_errors=True)
        (tree / "DEBIAN").mkdir(parents=True)
        for path, content in deb.files.items():
            target = tree / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str) and content.startswith("->"):
                target.symlink_to(content[2:])
                continue
            target.write_bytes(content.encode() if isinstance(content, str) else content)
            target.chmod(deb.modes.get(path, 0o755 if "/bin/" in path else 0o644))
        control = [
            f"Package: {deb.name}", f"Version: {deb.version}", f"Architecture: {deb.arch}",
            "Maintainer: vlmkit tests <standin@vlmkit.invalid>", "Section: devel", "Priority: optional",
        ]  # fmt: skip
        if deb.depends:
            control.append(f"Depends: {deb.depends}")
        control.append(f"Description: STAND-IN for NVIDIA's {deb.name} {deb.version} (vlmkit tests, not NVIDIA's)")
        (tree / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
        if deb.conffiles:
            (tree / "DEBIAN" / "conffiles").write_text("".join(f"{path}\n" for path in deb.conffiles))
        if deb.postinst:
            postinst = tree / "DEBIAN" / "postinst"
            postinst.write_text("#!/bin/sh\nset -e\n" + deb.postinst)
            postinst.chmod(0o755)
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / deb.filename
        _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(out)])
        return out

    # --- the packages ---------------------------------------------------------------------------

    def packages(self, kernel: str, repo_url: str) -> list[Deb]:
        home = "/usr/local/cuda-12.4"
        lib = f"{home}/targets/x86_64-linux/lib"
        cudart = self.stub_library("cudart", 12040, "libcudart.so.12")
        cublas = self.stub_library("cublas", 120405, "libcublas.so.12")
        debs = [
            Deb(
                "cuda-keyring",
                "1.1-1",
                arch="all",
                files={
                    "/usr/share/keyrings/cuda-archive-keyring.gpg": self.keyring.read_bytes(),
                    # Like the real package's list, but pointing nowhere real: if the role failed to remove
                    # it, apt update on the host would fail instead of reaching out.
                    f"/etc/apt/sources.list.d/cuda-{REPO_DISTRO}-x86_64.list": "deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] "
                    f"{repo_url}/not-the-role-source/ /\n",
                    "/etc/apt/preferences.d/cuda-repository-pin-600": "Package: *\nPin: release l=NVIDIA CUDA\nPin-Priority: 600\n",
                },
                conffiles=(
                    f"/etc/apt/sources.list.d/cuda-{REPO_DISTRO}-x86_64.list",
                    "/etc/apt/preferences.d/cuda-repository-pin-600",
                ),
            ),
            Deb(
                "cuda-toolkit-12-4",
                "12.4.1-1",
                depends="cuda-nvcc-12-4 (>= 12.4.131), cuda-cudart-12-4 (>= 12.4.127), libcublas-12-4 (>= 12.4.5.8)",
                files={"/usr/share/doc/cuda-toolkit-12-4/README.standin": "STAND-IN metapackage (vlmkit tests)\n"},
            ),
            Deb("cuda-nvcc-12-4", "12.4.131-1", files={f"{home}/bin/nvcc": nvcc_script("12.4.1")}),
            # Like NVIDIA's packages: /usr/local/cuda and /usr/local/cuda-12 are alternatives pointing at
            # /usr/local/cuda-12.4, and ld.so.conf.d names the same library folder through both, first.
            Deb(
                "cuda-toolkit-config-common",
                "12.4.127-1",
                arch="all",
                files={"/etc/ld.so.conf.d/000_cuda.conf": "/usr/local/cuda/targets/x86_64-linux/lib\n"},
            ),
            Deb(
                "cuda-toolkit-12-config-common",
                "12.4.127-1",
                arch="all",
                files={"/etc/ld.so.conf.d/988_cuda-12.conf": "/usr/local/cuda-12/targets/x86_64-linux/lib\n"},
            ),
            Deb(
                "cuda-toolkit-12-4-config-common",
                "12.4.127-1",
                arch="all",
                files={"/usr/share/doc/cuda-toolkit-12-4-config-common/README.standin": "STAND-IN (vlmkit tests)\n"},
                postinst=textwrap.dedent("""\
                    update-alternatives --install /usr/local/cuda cuda /usr/local/cuda-12.4 124
                    update-alternatives --install /usr/local/cuda-12 cuda-12 /usr/local/cuda-12.4 124
                    """),
            ),
            Deb(
                "cuda-cudart-12-4",
                "12.4.127-1",
                depends="cuda-toolkit-config-common, cuda-toolkit-12-config-common, cuda-toolkit-12-4-config-common",
                files={
                    f"{lib}/libcudart.so.12.4.127": cudart,
                    f"{lib}/libcudart.so.12": "->libcudart.so.12.4.127",
                    f"{home}/lib64": "->targets/x86_64-linux/lib",
                    f"{home}/version.json": json.dumps({"cuda": {"name": "CUDA SDK", "version": "12.4.1"}}) + "\n",
                },
            ),
            Deb(
                "libcublas-12-4",
                "12.4.5.8-1",
                files={
                    f"{lib}/libcublas.so.12.4.5.8": cublas,
                    f"{lib}/libcublas.so.12": "->libcublas.so.12.4.5.8",
                },
            ),
            Deb(
                "libnvidia-compute-550",
                "550.54.15-1",
                files={"/usr/share/doc/libnvidia-compute-550/README.standin": "STAND-IN (vlmkit tests)\n"},
            ),
            Deb(
                "cuda-drivers-550",
                "550.54.15-1",
                depends="libnvidia-compute-550 (= 550.54.15-1)",
                files={
                    "/usr/bin/nvidia-smi": NVIDIA_SMI.read_bytes(),
                    "/etc/nvidia-smi-standin.json": json.dumps(
                        {
                            "driver_version": "550.54.15",
                            "cuda_version": "12.4",
                            "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559}],
                        }
                    )
                    + "\n",
                    "/lib/systemd/system/nvidia-persistenced.service": textwrap.dedent("""\
                    [Unit]
                    Description=STAND-IN for NVIDIA's persistence daemon (vlmkit tests)
                    [Service]
                    Type=oneshot
                    RemainAfterExit=yes
                    ExecStart=/usr/bin/nvidia-smi -pm 1
                    [Install]
                    WantedBy=multi-user.target
                    """),
                },
                postinst=textwrap.dedent("""\
                # Like a freshly installed driver: its module is not loaded until the next boot.
                if [ "$1" = configure ] && [ -z "$2" ]; then
                  mkdir -p /run/nvidia-standin && touch /run/nvidia-standin/reboot-pending
                fi
                """),
            ),
            Deb(
                "libnvidia-compute-580",
                f"{DRIVER_580}-1",
                files={
                    f"/usr/lib/{MULTIARCH}/libcuda.so.{DRIVER_580}": self.stub_library("cuda", 0, "libcuda.so.1"),
                    f"/usr/lib/{MULTIARCH}/libcuda.so.1": f"->libcuda.so.{DRIVER_580}",
                },
                postinst="ldconfig\n",
            ),
            Deb(
                "nvidia-open-580",
                f"{DRIVER_580}-1",
                depends=f"libnvidia-compute-580 (= {DRIVER_580}-1)",
                files={
                    "/usr/bin/nvidia-smi": NVIDIA_SMI.read_bytes(),
                    "/usr/bin/nvidia-persistenced": PERSISTENCED,
                    "/etc/nvidia-smi-standin.json": json.dumps(
                        {
                            "driver_version": DRIVER_580,
                            "cuda_version": "13.0",
                            "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559}],
                        }
                    )
                    + "\n",
                    "/lib/systemd/system/nvidia-persistenced.service": PERSISTENCED_UNIT,
                },
                postinst=textwrap.dedent("""\
                # Like a freshly installed driver: its module is not loaded until the next boot.
                if [ "$1" = configure ] && [ -z "$2" ]; then
                  mkdir -p /run/nvidia-standin && touch /run/nvidia-standin/reboot-pending
                fi
                """),
            ),
            # Like Ubuntu's old branches turned transitional: asking for 535 installs 580.
            Deb(
                "nvidia-open-535",
                f"{DRIVER_580}-1",
                arch="all",
                depends=f"nvidia-open-580 (= {DRIVER_580}-1)",
                files={
                    "/usr/share/doc/nvidia-open-535/README.standin": "STAND-IN transitional package (vlmkit tests)\n"
                },
            ),
            Deb(
                f"linux-headers-{kernel}",
                "1.0-1",
                files={f"/usr/share/doc/linux-headers-{kernel}/README.standin": "STAND-IN (vlmkit tests)\n"},
            ),
        ]
        for version in (DRIVER_580, "580.105.08"):  # the driver's own, and a newer decoy a missing pin would take
            debs.append(
                Deb(
                    "nvidia-fabricmanager-580",
                    f"{version}-1",
                    files={
                        "/usr/bin/nv-fabricmanager": fabricmanager_script(version),
                        "/lib/systemd/system/nvidia-fabricmanager.service": FABRICMANAGER_UNIT,
                    },
                )
            )
        for version in ("9.1.0.70", "9.8.0.87"):  # the pinned one, and a newer decoy
            number = int(version.split(".")[0]) * 10000 + int(version.split(".")[1]) * 100 + int(version.split(".")[2])
            short = ".".join(version.split(".")[:3])
            debs.append(
                Deb(
                    "libcudnn9-cuda-12",
                    f"{version}-1",
                    files={
                        f"/usr/lib/{MULTIARCH}/libcudnn.so.{short}": self.stub_library(
                            "cudnn", number, "libcudnn.so.9"
                        ),
                        f"/usr/lib/{MULTIARCH}/libcudnn.so.9": f"->libcudnn.so.{short}",
                    },
                    postinst="ldconfig\n",
                )
            )  # as the real library packages do (ldconfig trigger)
            debs.append(
                Deb(
                    "libcudnn9-dev-cuda-12",
                    f"{version}-1",
                    depends=f"libcudnn9-cuda-12 (= {version}-1)",
                    files={
                        f"/usr/include/{MULTIARCH}/cudnn_version_v9.h": cudnn_header(version),
                        f"/usr/include/{MULTIARCH}/cudnn_v9.h": "/* STAND-IN cudnn.h (vlmkit tests) */\n#include <cudnn_version.h>\n",
                    },
                    postinst=textwrap.dedent(f"""\
                update-alternatives --install /usr/include/cudnn.h libcudnn /usr/include/{MULTIARCH}/cudnn_v9.h 90 \\
                  --slave /usr/include/cudnn_version.h libcudnn_version_h /usr/include/{MULTIARCH}/cudnn_version_v9.h
                """),
                )
            )
        return debs

    def repository(self, debs: list[Deb]) -> None:
        repo = self.root / REPO_PATH
        repo.mkdir(parents=True, exist_ok=True)
        stanzas = []
        for deb in debs:
            path = self.build_deb(deb, repo)
            data = path.read_bytes()
            control = _run(["dpkg-deb", "-f", str(path)]).stdout.strip()
            stanzas.append(
                control + f"\nFilename: ./{path.name}\nSize: {len(data)}\n"
                f"MD5sum: {hashlib.md5(data).hexdigest()}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
            )
        packages = "\n".join(stanzas).encode()
        (repo / "Packages").write_bytes(packages)
        (repo / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
        lines = [
            "Origin: NVIDIA STAND-IN (vlmkit tests)",
            "Label: NVIDIA CUDA",
            f"Architectures: {ARCH} all",
            f"Date: {formatdate(time.time() - 3600, usegmt=True)}",
            "SHA256:",
        ]
        for name in ("Packages", "Packages.gz"):
            content = (repo / name).read_bytes()
            lines.append(f" {hashlib.sha256(content).hexdigest()} {len(content)} {name}")
        (repo / "Release").write_text("\n".join(lines) + "\n")
        env = dict(os.environ, GNUPGHOME=str(self.gnupg))
        _run(
            ["gpg", "--batch", "--yes", "--clearsign", "--output", str(repo / "InRelease"), str(repo / "Release")],
            env=env,
        )
        _run(["gpg", "--batch", "--yes", "--armor", "--detach-sign", "--output", str(repo / "Release.gpg"),
              str(repo / "Release")], env=env)  # fmt: skip

    def runfile(self, name: str, release: str, cudart_version: int) -> Path:
        """A shell installer with the runfile's toolkit interface and a CUDA tree as its payload."""
        payload = io.BytesIO()
        with tarfile.open(fileobj=payload, mode="w:gz") as tar:

            def add(path: str, data: bytes | None = None, link: str | None = None, mode: int = 0o644) -> None:
                info = tarfile.TarInfo(path)
                info.mtime = 0
                if link is not None:
                    info.type, info.linkname = tarfile.SYMTYPE, link
                    tar.addfile(info)
                else:
                    info.size, info.mode = len(data), mode
                    tar.addfile(info, io.BytesIO(data))

            lib = "targets/x86_64-linux/lib"
            add("bin/nvcc", nvcc_script(release).encode(), mode=0o755)
            add(f"{lib}/libcudart.so.{release}", self.stub_library("cudart", cudart_version, "libcudart.so.12"))
            add(f"{lib}/libcudart.so.12", link=f"libcudart.so.{release}")
            add(f"{lib}/libcublas.so.{release}", self.stub_library("cublas", cudart_version * 10, "libcublas.so.12"))
            add(f"{lib}/libcublas.so.12", link=f"libcublas.so.{release}")
            add("lib64", link="targets/x86_64-linux/lib")
            add("version.json", json.dumps({"cuda": {"name": "CUDA SDK", "version": release}}).encode())
        import base64

        script = textwrap.dedent(f"""\
            #!/bin/sh
            # STAND-IN for NVIDIA's {RUNFILE} (vlmkit tests; not NVIDIA's). It takes the real installer's
            # toolkit-only interface and unpacks a CUDA {release} tree (nvcc banner, runtime and cuBLAS stubs).
            silent= toolkit= path=/usr/local/cuda-{release.rsplit(".", 1)[0]} tmp=/tmp
            for arg in "$@"; do
              case "$arg" in
                --silent) silent=1 ;;
                --toolkit) toolkit=1 ;;
                --toolkitpath=*) path="${{arg#--toolkitpath=}}" ;;
                --tmpdir=*) tmp="${{arg#--tmpdir=}}" ;;
                --override|--no-man-page|--no-opengl-libs|--no-drm) ;;
                --driver) echo "stand-in runfile: refusing --driver (the roles never ask for it)" >&2; exit 2 ;;
                *) echo "stand-in runfile: unknown option $arg" >&2; exit 2 ;;
              esac
            done
            [ -n "$silent" ] && [ -n "$toolkit" ] || {{ echo "stand-in runfile: needs --silent --toolkit" >&2; exit 2; }}
            [ -d "$tmp" ] || {{ echo "stand-in runfile: no temporary folder $tmp" >&2; exit 2; }}
            mkdir -p "$path"
            sed '1,/^__PAYLOAD_BELOW__$/d' "$0" | base64 -d | tar -xzf - -C "$path" || exit 3
            echo "[INFO]: STAND-IN installed CUDA {release} toolkit in $path" >> /var/log/cuda-installer.log
            exit 0
            __PAYLOAD_BELOW__
            """)
        out = self.root / "compute/cuda/12.4.0/local_installers" / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(script.encode() + base64.encodebytes(payload.getvalue()))
        out.chmod(0o755)
        return out

    def cudnn_archive(self) -> Path:
        top = CUDNN_ARCHIVE.removesuffix(".tar.xz")
        out = self.root / "compute/cudnn/redist/cudnn/linux-x86_64" / CUDNN_ARCHIVE
        out.parent.mkdir(parents=True, exist_ok=True)
        library = self.stub_library("cudnn", 90100, "libcudnn.so.9")
        with tarfile.open(out, "w:xz") as tar:

            def add(path: str, data: bytes | None = None, link: str | None = None) -> None:
                info = tarfile.TarInfo(f"{top}/{path}")
                info.mtime = 0
                if link is not None:
                    info.type, info.linkname = tarfile.SYMTYPE, link
                    tar.addfile(info)
                else:
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))

            add("include/cudnn_version.h", cudnn_header("9.1.0.70").encode())
            add("lib/libcudnn.so.9.1.0", library)
            add("lib/libcudnn.so.9", link="libcudnn.so.9.1.0")
            add("lib/libcudnn.so", link="libcudnn.so.9")
            add("LICENSE", b"STAND-IN archive for the vlmkit tests; not NVIDIA's cuDNN.\n")
        return out

    def build(self, kernel: str, repo_url: str) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.signing_key()
        debs = self.packages(kernel, repo_url)
        self.repository(debs)
        self.runfile(RUNFILE, "12.4.0", 12040)
        self.runfile(BROKEN_RUNFILE, "12.3.2", 12030)
        self.cudnn_archive()
        self.offline.mkdir(parents=True, exist_ok=True)
        for source in (
            self.root / REPO_PATH / KEYRING_DEB,
            self.root / "compute/cuda/12.4.0/local_installers" / RUNFILE,
            self.root / "compute/cudnn/redist/cudnn/linux-x86_64" / CUDNN_ARCHIVE,
        ):
            shutil.copy2(source, self.offline / source.name)


# --- serving ---------------------------------------------------------------------------------------


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@dataclass
class StandinServer:
    """The stand-in tree over HTTP on one address and a free port; logs the paths requested."""

    root: Path
    address: str
    requests: list[str] = field(default_factory=list)
    _server: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self._server.server_address[1]}"

    def start(self) -> StandinServer:
        log, root = self.requests, str(self.root)

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=root, **kwargs)

            def log_message(self, *_args) -> None:
                log.append(self.path)

        self._server = _Server((self.address, 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@dataclass
class ForwardProxy:
    """An HTTP proxy for the hosts' http_proxy: forwards GETs to the stand-in server only, logs them."""

    address: str
    allowed_prefix: str
    requests: list[str] = field(default_factory=list)
    _server: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self._server.server_address[1]}"

    def start(self) -> ForwardProxy:
        log, allowed = self.requests, self.allowed_prefix
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                log.append(self.path)
                if not self.path.startswith(allowed + "/"):
                    self.send_error(403, "the test proxy forwards to the stand-in server only")
                    return
                try:
                    with direct.open(self.path, timeout=30) as answer:
                        body = answer.read()
                        status = answer.status
                except urllib.error.HTTPError as exc:
                    self.send_error(exc.code)
                    return
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                pass

        self._server = _Server((self.address, 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
