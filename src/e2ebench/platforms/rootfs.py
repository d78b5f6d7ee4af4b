"""Root filesystems for the container platform (CN) and the container-in-VM platform (VMCN).

The worker must run the *same* interpreter and libraries in a container as on the host, so the
default root filesystem is no image at all.  In every case the container's root is a
per-session **empty, read-only directory**; what it contains comes in as read-only bind mounts:

* ``host`` (default) — the host's ``/usr`` and ``/etc`` under their own paths (identity
  mapping); ``/bin``, ``/lib``, ``/lib64`` and ``/sbin`` are recreated as the same symlinks as on
  a merged-``/usr`` host (bind-mounted where they are real directories).  Creating it costs a few
  ``mkdir`` calls.
* ``debootstrap`` — a minimal Debian (``debootstrap --variant=minbase bookworm``), built once
  (~50 s, ~190 MB) and cached under ``<cache>/rootfs/``; its top-level directories (``/usr``,
  ``/etc``, ``/var``...) are bound into the empty root, so system libraries come from the image
  and the cached image is never written to.  Built only when asked for.
* a directory path — any prepared root filesystem, used like the debootstrap one.
* an image name — for podman and docker (``debian:bookworm``); it must already be present,
  nothing is pulled.

On top of that the platform binds the Python installation, the virtual environment, the
project's ``src``, the data set and the cache (read-only) and the LoadGen log directory
(read-write), all under their host paths.

Standard library only; nothing here starts a container.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HOST_SYSTEM_DIRS: tuple[str, ...] = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc")
DEBOOTSTRAP_SUITE = "bookworm"
DEBOOTSTRAP_MIRROR = "http://deb.debian.org/debian"
# Shared libraries that a Python built from source (pyenv) and the wheels of the ML stack load at run
# time, beyond what --variant=minbase brings.  Package names are Debian 12 (bookworm) names.
DEBOOTSTRAP_INCLUDE: tuple[str, ...] = (
    "libffi8", "libssl3", "libsqlite3-0", "libbz2-1.0", "liblzma5", "zlib1g", "libreadline8",
    "libncursesw6", "libgdbm6", "libuuid1", "libexpat1", "libstdc++6", "libgomp1", "ca-certificates",
)
ROOTFS_KINDS: tuple[str, ...] = ("host", "debootstrap")
# top-level directories of an image that every container gets fresh (or from the host) instead
IMAGE_PRIVATE_DIRS = frozenset({"dev", "proc", "sys", "tmp", "run", "mnt", "media", "home", "root", "boot",
                                "lost+found"})


class RootfsError(RuntimeError):
    """The root filesystem could not be prepared."""


@dataclasses.dataclass(frozen=True)
class RootfsChoice:
    """What the user asked for: ``host``, ``debootstrap``, a directory or an image name."""

    kind: str                    # host | debootstrap | directory | image
    value: str = ""              # the directory path or image name

    @classmethod
    def parse(cls, text: str | None) -> "RootfsChoice":
        text = (text or "host").strip()
        if text in ROOTFS_KINDS:
            return cls(text)
        if text.startswith("image:"):
            return cls("image", text[len("image:"):])
        if text.startswith("dir:"):
            return cls("directory", text[len("dir:"):])
        if text.startswith("/"):
            return cls("directory", text)
        return cls("image", text)

    def __str__(self) -> str:
        return self.kind if self.kind in ROOTFS_KINDS else f"{self.kind}:{self.value}"


# ---------------------------------------------------------------------------
# What the worker needs from the host


def project_src_dir() -> Path:
    """The directory that holds the ``e2ebench`` package (``.../src``), as the worker's PYTHONPATH."""
    return Path(__file__).resolve().parents[2]


def python_environment_dirs() -> list[str]:
    """Host directories that make up the running Python environment, outermost first.

    The Python installation (``sys.base_prefix``, e.g. a pyenv version), the virtual environment
    (``sys.prefix``), the project's ``src`` and every other existing ``sys.path`` directory that
    is not inside one of those.
    """
    candidates = [Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), project_src_dir()]
    # the interpreter the venv points at may live elsewhere than base_prefix (symlink chains)
    candidates.append(Path(os.path.realpath(sys.executable)).parent.parent)
    for entry in sys.path:
        if entry and os.path.isdir(entry):
            candidates.append(Path(entry).resolve())
    return minimal_cover([str(p) for p in candidates if p.exists()])


def minimal_cover(paths: list[str], covered_by: tuple[str, ...] = ()) -> list[str]:
    """Drop duplicates and paths inside another listed path (or inside ``covered_by``); sorted."""
    out: list[str] = []
    for p in sorted({os.path.normpath(p) for p in paths}, key=lambda s: (s.count("/"), s)):
        if p == "/":
            continue
        if any(is_within(p, q) for q in list(covered_by) + out):
            continue
        out.append(p)
    return sorted(out)


def is_within(path: str, parent: str) -> bool:
    """``path`` equals ``parent`` or lies below it (string paths, no symlink resolution)."""
    parent = parent.rstrip("/") or "/"
    return path == parent or path.startswith(parent + "/")


def system_layout(source_root: Path | str = "/") -> tuple[list[str], dict[str, str]]:
    """(bind mounts, symlinks) that give an empty root the system directories of ``source_root``.

    For the host (``"/"``): ``/usr``, ``/etc`` and, where they are real directories, ``/lib``,
    ``/lib64``, ``/bin``, ``/sbin`` as identity binds; where the host has a merged ``/usr`` those
    four are symlinks (``usr/lib``) and are recreated as the same symlinks instead of mounts.
    For an image directory (debootstrap, or one the user prepared): every top-level directory
    except the per-container ones (``/dev``, ``/proc``, ``/sys``, ``/tmp``, ``/run``, ``/root``,
    ``/home``...) as ``"SRC:DEST"`` binds, and its top-level symlinks.  The container's root
    stays a per-session empty directory, so a shared cached image never collects mount points.
    """
    source_root = Path(source_root)
    host = os.path.normpath(str(source_root)) == "/"
    if host:
        names = [d.lstrip("/") for d in HOST_SYSTEM_DIRS]
    else:
        names = sorted(n for n in os.listdir(source_root) if n not in IMAGE_PRIVATE_DIRS and not n.startswith("."))
    binds: list[str] = []
    links: dict[str, str] = {}
    for name in names:
        path = source_root / name
        if path.is_symlink():
            links["/" + name] = os.readlink(path)
        elif path.is_dir():
            binds.append("/" + name if host else f"{path}:/{name}")
    return binds, links


def host_layout() -> tuple[list[str], dict[str, str]]:
    """:func:`system_layout` of the host."""
    return system_layout("/")


# ---------------------------------------------------------------------------
# The empty "host" root


def make_empty_root(root: Path, symlinks: dict[str, str]) -> Path:
    """Create an empty root directory with the given symlinks (``{"/lib": "usr/lib"}``)."""
    root.mkdir(parents=True, exist_ok=True)
    for link, target in symlinks.items():
        path = root / link.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() and os.readlink(path) == target:
            continue
        path.symlink_to(target)
    return root


def empty_root_tar(out: Path, symlinks: dict[str, str]) -> Path:
    """A tar archive of an empty root with ``symlinks`` (what ``docker import`` turns into an image)."""
    with tarfile.open(out, "w") as tar:
        for link, target in sorted(symlinks.items()):
            info = tarfile.TarInfo(link.lstrip("/"))
            info.type = tarfile.SYMTYPE
            info.linkname = target
            info.mode = 0o777
            tar.addfile(info)
    return out


def layout_tag(symlinks: dict[str, str]) -> str:
    """A short stable tag for an empty-root image with these symlinks."""
    text = "\n".join(f"{k}->{v}" for k, v in sorted(symlinks.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------
# debootstrap


def debootstrap_root_dir(cache: Path, suite: str = DEBOOTSTRAP_SUITE) -> Path:
    return cache / "rootfs" / f"debootstrap-{suite}-minbase"


def debootstrap_ready(cache: Path, suite: str = DEBOOTSTRAP_SUITE) -> bool:
    return (debootstrap_root_dir(cache, suite) / ".e2ebench-complete").exists()


def build_debootstrap_root(cache: Path, suite: str = DEBOOTSTRAP_SUITE, mirror: str | None = None,
                           timeout_s: float = 1200.0, log=None) -> Path:
    """Build (once) and return a minimal Debian root filesystem under ``<cache>/rootfs/``.

    ``debootstrap --variant=minbase --include=<libraries> SUITE DIR MIRROR`` into a temporary
    directory beside the target, renamed into place when complete; a file lock makes concurrent
    callers wait for one build.  Needs root, ``debootstrap`` and access to the Debian mirror
    (``E2EBENCH_DEBOOTSTRAP_MIRROR`` overrides it).
    """
    target = debootstrap_root_dir(cache, suite)
    marker = target / ".e2ebench-complete"
    if marker.exists():
        return finish_image(target)
    if shutil.which("debootstrap") is None:
        raise RootfsError("debootstrap is not installed (apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise RootfsError("debootstrap needs root")
    target.parent.mkdir(parents=True, exist_ok=True)
    mirror = mirror or os.environ.get("E2EBENCH_DEBOOTSTRAP_MIRROR", DEBOOTSTRAP_MIRROR)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return finish_image(target)
        if target.exists():  # an interrupted build
            shutil.rmtree(target, ignore_errors=True)
        tmp = target.parent / f".{target.name}.building-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        argv = ["debootstrap", "--variant=minbase", f"--include={','.join(DEBOOTSTRAP_INCLUDE)}", suite,
                str(tmp), mirror]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
            if proc.returncode != 0:
                raise RootfsError(f"debootstrap failed (exit {proc.returncode}): "
                                  f"{(proc.stdout + proc.stderr)[-1500:]}")
            # apt caches are not needed inside a read-only benchmark root
            shutil.rmtree(tmp / "var" / "cache" / "apt" / "archives", ignore_errors=True)
            (tmp / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
            finish_image(tmp)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        marker.write_text(f"{suite} minbase built in {time.perf_counter() - t0:.1f} s from {mirror}\n")
        if log:
            log(f"built {target} in {time.perf_counter() - t0:.1f} s")
    return target


def finish_image(root: Path) -> Path:
    """Files a container engine mounts over and that minbase lacks (``/etc/hosts``); idempotent."""
    etc = root / "etc"
    defaults = {"hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
                "hostname": "e2ebench\n", "resolv.conf": ""}
    for name, text in defaults.items():
        path = etc / name
        if etc.is_dir() and not os.path.lexists(path) and os.access(etc, os.W_OK):
            path.write_text(text)
    return root
