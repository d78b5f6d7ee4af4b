"""Block-device images for guests without 9p (Firecracker): the host root image and the job image.

Root image
    An ext4 image holding exactly what the worker needs, under the same absolute paths as on the
    host: ``/usr``, ``/etc``, the ``/bin /lib /lib64 /sbin`` symlinks (or directories) as on the host,
    the Python installation the virtual environment uses (``sys.base_prefix``) and the virtual
    environment (``sys.prefix``), plus empty mount points (``/proc /sys /dev /tmp /run`` and the
    project's ``src``, which each run brings in its job image: editing the code rebuilds nothing).
    It is built without root mounts or loop devices: the sources are *staged* in a directory next to
    the image (hard links when on the same file system, else a reflink or a copy; only directories
    and symlinks are created), then ``mkfs.ext4 -d STAGING IMAGE`` writes the file system.  Owners,
    modes, file mtimes and symlinks are kept, so ``.pyc`` files stay valid.  Caches (``.pytest_cache``,
    ``.mypy_cache``, ``.ruff_cache``, ``.git``, ``.tox``, ``.cache``) are left out; ``__pycache__`` is kept
    for the interpreter and the libraries (without it every guest would compile torch at import).

    Images are cached in ``<cache>/guest/rootimages/<fingerprint>.ext4`` with a ``.json`` manifest.
    The fingerprint covers each source's path, type, size and mtime and those of its direct
    entries, the virtual environment's installed packages (``*.dist-info`` names and mtimes) and,
    for sources marked ``walk_all``, every file.  A changed fingerprint builds a new image and
    removes the older ones.  Measured here: /usr + /etc + pyenv 3.11.7 + the venv = 211,795 files,
    9.2 GB; staging 12-13 s (all hard links), ``mkfs.ext4 -d`` 100-150 s, image 10.9 GB (9.2 GB on disk).

Job image
    A small writable ext4 image built from the job directory (spec, ``job.sh``, ``job.env``,
    ``worker.sh``) with room for the RunResult and the LoadGen logs; the guest mounts it read-write.
    After the guest has powered off the host reads directories back with ``debugfs -R "rdump ..."``
    (no mount).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable

from e2ebench.platforms.guest import guest_cache_dir
from e2ebench.platforms.guest.disk import BLOCK_BYTES, INODE_BYTES, DiskImageError, mkfs_command
from e2ebench.platforms.guest.kernel import file_lock

FORMAT_VERSION = "rootimage/1"
ALWAYS_EXCLUDED = (".pytest_cache", ".mypy_cache", ".ruff_cache", ".git", ".tox", ".cache")
MOUNT_POINTS = ("proc", "sys", "dev", "tmp", "run", "mnt")
FICLONE = 0x40049409          # ioctl(dest_fd, FICLONE, src_fd): reflink on btrfs / xfs
JOB_IMAGE_ROOM_BYTES = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class RootSource:
    """One host path that the root image carries at the same absolute path.

    ``walk_all``: fingerprint every file below it; otherwise only the path itself and its direct
    entries.  ``exclude``: directory names left out below it (in addition to :data:`ALWAYS_EXCLUDED`).
    ``packages_dir``: a site-packages directory whose ``*.dist-info`` list is part of the fingerprint.
    ``content=False``: only an empty directory (a mount point) at that path: the content comes with
    each run (the project's src, bind-mounted from the job image, so editing it rebuilds nothing).
    """

    path: Path
    walk_all: bool = False
    exclude: tuple[str, ...] = ()
    packages_dir: Path | None = None
    content: bool = True


@dataclasses.dataclass
class StageStats:
    """What staging put into the image: regular files, their bytes (whole 4 KiB blocks, each inode
    counted once), directories, symlinks, and how the files got there (hard link, reflink, copy)."""

    files: int = 0
    file_bytes: int = 0
    block_bytes: int = 0
    dirs: int = 0
    symlinks: int = 0
    linked: int = 0
    reflinked: int = 0
    copied: int = 0
    skipped: int = 0              # sockets, fifos, devices: not carried

    @property
    def entries(self) -> int:
        return self.files + self.dirs + self.symlinks


@dataclasses.dataclass(frozen=True)
class RootImage:
    """A built (or cached) root image."""

    image: Path
    fingerprint: str
    cached: bool                  # True: found in the cache, not built by this call
    size_bytes: int               # the image file's (apparent) size
    manifest: dict                # sources, staged bytes, build_s, mkfs_s, stage_s ...


# ---------------------------------------------------------------------------
# Which paths


def project_src_dir() -> Path:
    """The directory that holds the ``e2ebench`` package (``.../src``), as ``worker_env`` puts on PYTHONPATH."""
    return Path(__file__).resolve().parents[3]


def site_packages(prefix: Path) -> Path | None:
    candidates = sorted(prefix.glob("lib/python3*/site-packages"))
    return candidates[0] if candidates else None


def default_root_sources() -> list[RootSource]:
    """What the worker needs: /usr, /etc, the top-level symlinks, the interpreter, the venv, src."""
    sources = [RootSource(Path("/usr")), RootSource(Path("/etc"))]
    for name in ("bin", "lib", "lib32", "lib64", "libx32", "sbin"):
        path = Path("/") / name
        if path.is_symlink() or path.is_dir():
            sources.append(RootSource(path))
    base = Path(sys.base_prefix).resolve()
    prefix = Path(sys.prefix).resolve()
    src = project_src_dir()
    if not _under(base, Path("/usr")):
        sources.append(RootSource(base))
    if prefix != base and not _under(prefix, Path("/usr")):
        sources.append(RootSource(prefix, packages_dir=site_packages(prefix)))
    if not any(_under(src, s.path) for s in sources):
        sources.append(RootSource(src, content=False))     # a mount point: the job image brings src
    return sources


def _under(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def covers(sources: Iterable[RootSource], host_path: Path) -> bool:
    """True when ``host_path`` lies inside one of ``sources`` (the guest sees it in the root image)."""
    host_path = Path(host_path)
    return any(_under(host_path, s.path) for s in sources)


# ---------------------------------------------------------------------------
# Fingerprint


def _stat_line(tag: str, path: Path) -> str:
    st = os.lstat(path)
    return f"{tag}:{path}:{st.st_mode:o}:{st.st_size}:{st.st_mtime_ns}\n"


def fingerprint(sources: Iterable[RootSource]) -> str:
    """sha256 over the format version and, for each source, its own and its direct entries'
    (path, mode, size, mtime), its installed packages, and (``walk_all``) every file below it."""
    digest = hashlib.sha256(FORMAT_VERSION.encode() + b"\0")
    digest.update(("exclude:" + ",".join(ALWAYS_EXCLUDED) + "\n").encode())
    for source in sources:
        path = source.path
        digest.update(f"source:{path}:walk={source.walk_all}:exclude={','.join(source.exclude)}\n".encode())
        if not source.content:
            digest.update(b"mount point\n")
            continue
        if not os.path.lexists(path):
            digest.update(b"missing\n")
            continue
        digest.update(_stat_line("top", path).encode())
        if path.is_symlink():
            digest.update(f"link:{os.readlink(path)}\n".encode())
            continue
        if path.is_dir():
            for entry in sorted(os.listdir(path)):
                if entry in ALWAYS_EXCLUDED or entry in source.exclude:
                    continue
                digest.update(_stat_line("entry", path / entry).encode())
        if source.packages_dir is not None and source.packages_dir.is_dir():
            for entry in sorted(source.packages_dir.glob("*.dist-info")):
                digest.update(_stat_line("package", entry).encode())
        if source.walk_all and path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in ALWAYS_EXCLUDED and d not in source.exclude)
                for name in sorted(files):
                    digest.update(_stat_line("file", Path(root) / name).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# Staging


def _place_file(source: Path, target: Path, stats: StageStats) -> None:
    """Hard link, else reflink, else copy (keeping mode and times)."""
    try:
        os.link(source, target, follow_symlinks=False)
        stats.linked += 1
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
            raise
    with open(source, "rb") as src, open(target, "wb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
            stats.reflinked += 1
        except OSError:
            shutil.copyfileobj(src, dst, 1024 * 1024)
            stats.copied += 1
    shutil.copystat(source, target, follow_symlinks=False)
    st = os.lstat(source)
    with contextlib.suppress(PermissionError):
        os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)


def _copy_symlink(source: Path, target: Path, stats: StageStats) -> None:
    os.symlink(os.readlink(source), target)
    st = os.lstat(source)
    with contextlib.suppress(OSError, NotImplementedError):
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    stats.symlinks += 1


def _make_dir_like(source: Path, target: Path) -> None:
    target.mkdir(exist_ok=True)
    st = os.lstat(source)
    os.chmod(target, stat.S_IMODE(st.st_mode))
    with contextlib.suppress(PermissionError):
        os.chown(target, st.st_uid, st.st_gid)


def _count_file(st: os.stat_result, seen_inodes: set[tuple[int, int]], stats: StageStats) -> None:
    stats.files += 1
    key = (st.st_dev, st.st_ino)
    if key in seen_inodes:
        return
    seen_inodes.add(key)
    stats.file_bytes += st.st_size
    stats.block_bytes += -(-st.st_size // BLOCK_BYTES) * BLOCK_BYTES


def stage_tree(sources: Iterable[RootSource], staging: Path) -> StageStats:
    """Mirror ``sources`` under ``staging`` at their absolute paths (parents get the host's modes),
    with empty mount points; returns what was staged."""
    stats = StageStats()
    seen: set[tuple[int, int]] = set()
    staging.mkdir(parents=True, exist_ok=True)
    for name in MOUNT_POINTS:
        (staging / name).mkdir(exist_ok=True)
        stats.dirs += 1
    os.chmod(staging / "tmp", 0o1777)
    for source in sorted(sources, key=lambda s: len(Path(s.path).parts)):   # parents before children
        path = Path(source.path)
        if not path.is_absolute():
            raise DiskImageError(f"root image sources must be absolute paths, not {path}")
        if source.content and not os.path.lexists(path):
            raise DiskImageError(f"root image source {path} does not exist")
        # parents, with the host's modes
        for parent in reversed(path.parents[:-1]):
            target = staging / parent.relative_to("/")
            if not target.exists():
                if parent.is_dir():
                    _make_dir_like(parent, target)
                else:
                    target.mkdir(mode=0o755)
                stats.dirs += 1
        target = staging / path.relative_to("/")
        if os.path.lexists(target):
            continue
        if not source.content:
            target.mkdir(mode=0o755)
            stats.dirs += 1
            continue
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            _copy_symlink(path, target, stats)
            continue
        if stat.S_ISREG(st.st_mode):
            _place_file(path, target, stats)
            _count_file(st, seen, stats)
            continue
        excluded = set(ALWAYS_EXCLUDED) | set(source.exclude)
        _make_dir_like(path, target)
        stats.dirs += 1
        for root, dirs, files in os.walk(path):
            root_path = Path(root)
            out_root = staging / root_path.relative_to("/")
            kept = []
            for d in sorted(dirs):
                src_dir = root_path / d
                if d in excluded:
                    continue
                if src_dir.is_symlink():
                    _copy_symlink(src_dir, out_root / d, stats)
                    continue
                _make_dir_like(src_dir, out_root / d)
                stats.dirs += 1
                kept.append(d)
            dirs[:] = kept
            for name in files:
                src_file = root_path / name
                fst = os.lstat(src_file)
                if stat.S_ISLNK(fst.st_mode):
                    _copy_symlink(src_file, out_root / name, stats)
                elif stat.S_ISREG(fst.st_mode):
                    _place_file(src_file, out_root / name, stats)
                    _count_file(fst, seen, stats)
                else:
                    stats.skipped += 1
    return stats


def image_geometry(stats: StageStats, margin: float = 0.10, extra_bytes: int = 64 * 1024 * 1024) -> tuple[int, int]:
    """(image bytes, inode count) for staged content: file blocks + a block per directory + an
    inode table entry per entry, ``margin`` on top and ``extra_bytes`` of slack."""
    inodes = stats.entries + 256
    raw = stats.block_bytes + BLOCK_BYTES * stats.dirs + inodes * INODE_BYTES
    size = int(raw * (1 + margin)) + extra_bytes
    return -(-size // BLOCK_BYTES) * BLOCK_BYTES, inodes


def run_mkfs(image: Path, content: Path, size_bytes: int, inodes: int, label: str) -> None:
    if not shutil.which("mkfs.ext4"):
        raise DiskImageError("mkfs.ext4 is missing: apt-get install e2fsprogs")
    proc = subprocess.run(mkfs_command(image, content, size_bytes, inodes, label=label), capture_output=True,
                          text=True, timeout=7200)
    if proc.returncode != 0:
        raise DiskImageError(f"mkfs.ext4 -d {content} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")


def build_root_image(sources: list[RootSource], image: Path, staging_dir: Path | None = None) -> dict:
    """Stage ``sources`` next to ``image`` and write the ext4 image; returns the build manifest
    (pure apart from the files it writes; the staging directory is always removed)."""
    image = Path(image)
    image.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".stage-", dir=staging_dir or image.parent))
    try:
        t0 = time.perf_counter()
        stats = stage_tree(sources, staging)
        stage_s = time.perf_counter() - t0
        size, inodes = image_geometry(stats)
        t1 = time.perf_counter()
        run_mkfs(image, staging, size, inodes, "e2eroot")
        mkfs_s = time.perf_counter() - t1
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "format": FORMAT_VERSION,
        "sources": [str(s.path) for s in sources],
        "stats": dataclasses.asdict(stats),
        "image_bytes": size,
        "inodes": inodes,
        "stage_s": round(stage_s, 3),
        "mkfs_s": round(mkfs_s, 3),
        "build_s": round(stage_s + mkfs_s, 3),
    }


def rootimages_dir(cache: Path | None = None) -> Path:
    return (cache or guest_cache_dir()) / "rootimages"


def remove_partial_builds(root: Path) -> list[Path]:
    """Remove staging directories and half-written images a killed build left in ``root`` (call
    with the cache lock held: then no build is running there)."""
    removed = []
    for leftover in [*root.glob(".stage-*"), *root.glob(".build-*.ext4")]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


def root_image(sources: list[RootSource] | None = None, cache: Path | None = None, keep_old: bool = False) -> RootImage:
    """The cached root image of ``sources`` (default :func:`default_root_sources`): built when its
    fingerprint is new; older images in the same cache directory are removed unless ``keep_old``."""
    sources = list(sources) if sources is not None else default_root_sources()
    root = rootimages_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(sources)
    target = root / f"{fp[:24]}.ext4"
    manifest_path = target.with_suffix(".json")
    with file_lock(root / ".lock"):
        if target.exists() and manifest_path.exists():
            return RootImage(target, fp, True, target.stat().st_size, json.loads(manifest_path.read_text()))
        remove_partial_builds(root)
        tmp = root / f".build-{os.getpid()}-{fp[:12]}.ext4"
        try:
            manifest = build_root_image(sources, tmp)
            manifest["fingerprint"] = fp
            manifest["built_at"] = time.time()
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if not keep_old:
            for old in root.glob("*.ext4"):
                if old != target:
                    old.unlink(missing_ok=True)
                    old.with_suffix(".json").unlink(missing_ok=True)
    return RootImage(target, fp, False, target.stat().st_size, manifest)


# ---------------------------------------------------------------------------
# The job image


def build_job_image(content: Path, image: Path, room_bytes: int = JOB_IMAGE_ROOM_BYTES) -> int:
    """A writable ext4 image of the job directory ``content`` with ``room_bytes`` free for the
    guest's result and logs; returns its size in bytes."""
    stats = StageStats()
    for root, dirs, files in os.walk(content):
        stats.dirs += len(dirs)
        for name in files:
            st = os.lstat(os.path.join(root, name))
            stats.files += 1
            stats.block_bytes += -(-st.st_size // BLOCK_BYTES) * BLOCK_BYTES
    size, inodes = image_geometry(stats, margin=0.25, extra_bytes=room_bytes)
    run_mkfs(image, content, size, max(inodes, 4096), "e2ejob")
    return size


def copy_tree_for_job(source: Path, target: Path, exclude: tuple[str, ...] = ("__pycache__",)) -> int:
    """Copy ``source`` into ``target`` (inside the job directory) without caches; returns the bytes copied."""
    ignored = set(ALWAYS_EXCLUDED) | set(exclude)
    shutil.copytree(source, target, symlinks=True, ignore=lambda _d, names: [n for n in names if n in ignored],
                    dirs_exist_ok=True)
    return sum(p.stat().st_size for p in target.rglob("*") if p.is_file() and not p.is_symlink())


def debugfs(image: Path, request: str, writable: bool = False, timeout_s: float = 300.0) -> str:
    """Run one debugfs request on an image (no mount); raises DiskImageError when debugfs reports one."""
    if not shutil.which("debugfs"):
        raise DiskImageError("debugfs is missing: apt-get install e2fsprogs")
    argv = ["debugfs", *(["-w"] if writable else []), "-R", request, str(image)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    errors = [line for line in proc.stderr.splitlines()
              if line.strip() and not line.startswith("debugfs ") and "File not found" not in line]
    if proc.returncode != 0 or errors:
        raise DiskImageError(f"debugfs {request!r} on {image} failed: {' '.join(errors)[-800:] or proc.returncode}")
    return proc.stdout


def image_has(image: Path, path: str) -> bool:
    """True when ``path`` exists in the image."""
    proc = subprocess.run(["debugfs", "-R", f"stat {path}", str(image)], capture_output=True, text=True, timeout=60)
    return proc.returncode == 0 and "File not found" not in proc.stderr and bool(proc.stdout.strip())


def read_back(image: Path, paths: Iterable[str], dest: Path) -> list[Path]:
    """Copy directories or files out of an ext4 image into ``dest`` (``debugfs rdump``, no mount);
    returns the host paths of those that existed in the image."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for path in paths:
        if any(c.isspace() or c == '"' for c in path) or any(c.isspace() for c in str(dest)):
            raise DiskImageError(f"debugfs paths cannot contain spaces or quotes: {path!r} -> {dest}")
        if not image_has(image, path):
            continue
        debugfs(image, f"rdump {path} {dest}")
        out.append(dest / Path(path).name)
    return out


__all__ = ["RootImage", "RootSource", "StageStats", "build_job_image", "build_root_image", "copy_tree_for_job", "covers",
           "debugfs", "default_root_sources", "fingerprint", "image_geometry", "image_has", "project_src_dir",
           "read_back", "remove_partial_builds", "root_image", "rootimages_dir", "stage_tree"]
