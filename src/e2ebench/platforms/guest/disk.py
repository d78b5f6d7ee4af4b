"""Data sets as virtual disks: a read-only ext4 image built with ``mkfs.ext4 -d`` (no loop device, no root).

The guest reads its input through a virtio-blk disk, as in the paper, rather than through the 9p
share of the host root.  An image holds one data set: a folder's contents, or a single file.  Images
are cached in ``<cache>/guest/disks/<fingerprint>.ext4``; the fingerprint covers the data set's
real path and every entry's relative path, type, size and mtime, so editing the data builds a new
image.  ext4 was chosen over squashfs because e2fsprogs is on every Debian host (squashfs-tools is
not); the image has no journal and is mounted ``ro,noload``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from e2ebench.platforms.guest import guest_cache_dir

BLOCK_BYTES = 4096
INODE_BYTES = 256


class DiskImageError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class DataImage:
    """An ext4 image of a data set and where the data set lies inside it."""

    image: Path          # the ext4 image file
    source: Path         # the host data set (folder or file)
    inner_path: str      # "" when the image root *is* the folder; the file name for a single file
    cached: bool         # kept in the cache (else the caller removes it)
    size_bytes: int


def fingerprint(source: Path) -> str:
    """sha256 over the real path and each entry's relative path, type, size and mtime (ns)."""
    source = source.resolve()
    digest = hashlib.sha256(str(source).encode() + b"\0")
    if source.is_file():
        st = source.stat()
        digest.update(f"f:{source.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()
    for root, dirs, files in os.walk(source):
        dirs.sort()
        rel_root = os.path.relpath(root, source)
        for name in sorted(files):
            st = os.lstat(os.path.join(root, name))
            digest.update(f"f:{os.path.join(rel_root, name)}:{st.st_mode:o}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        for name in dirs:
            digest.update(f"d:{os.path.join(rel_root, name)}\n".encode())
    return digest.hexdigest()


def image_size_bytes(source: Path) -> tuple[int, int]:
    """(image size, inode count) that fit ``source``: every file rounded up to whole blocks, an inode
    and a block per entry, 25% + 8 MiB slack for ext4's own metadata."""
    entries = 1
    data_bytes = 0
    if source.is_file():
        entries += 1
        data_bytes += -(-source.stat().st_size // BLOCK_BYTES) * BLOCK_BYTES
    else:
        for root, dirs, files in os.walk(source):
            entries += len(dirs) + len(files)
            data_bytes += BLOCK_BYTES * len(dirs)
            for name in files:
                size = os.lstat(os.path.join(root, name)).st_size
                data_bytes += -(-size // BLOCK_BYTES) * BLOCK_BYTES
    inodes = entries + 64
    raw = data_bytes + inodes * (INODE_BYTES + BLOCK_BYTES)
    size = int(raw * 1.25) + 8 * 1024 * 1024
    return -(-size // BLOCK_BYTES) * BLOCK_BYTES, inodes


def mkfs_command(image: Path, content_dir: Path, size_bytes: int, inodes: int, label: str = "e2edata") -> list[str]:
    """``mkfs.ext4`` populating a new image from ``content_dir`` (``-d``), no journal, no reserved blocks."""
    return [
        "mkfs.ext4", "-q", "-F", "-L", label, "-b", str(BLOCK_BYTES), "-I", str(INODE_BYTES), "-N", str(inodes),
        "-m", "0", "-O", "^has_journal", "-E", "root_owner=0:0", "-d", str(content_dir), str(image),
        f"{size_bytes // 1024}k",
    ]


def build_image(source: Path, image: Path) -> int:
    """Write an ext4 image holding ``source`` (a folder's contents, or one file); returns its size."""
    if not shutil.which("mkfs.ext4"):
        raise DiskImageError("mkfs.ext4 is missing: apt-get install e2fsprogs")
    source = source.resolve()
    size, inodes = image_size_bytes(source)
    staging = None
    content = source
    try:
        if source.is_file():
            staging = Path(tempfile.mkdtemp(prefix=".stage-", dir=image.parent))
            try:
                os.link(source, staging / source.name)
            except OSError:
                shutil.copy2(source, staging / source.name)
            content = staging
        proc = subprocess.run(mkfs_command(image, content, size, inodes), capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise DiskImageError(f"mkfs.ext4 -d {content} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return size


def data_image(source: Path, scratch_dir: Path, use_cache: bool = True, cache: Path | None = None) -> DataImage:
    """The ext4 image of ``source``: from the cache (built there once) or built in ``scratch_dir``."""
    source = Path(source).resolve()
    if not source.exists():
        raise DiskImageError(f"data set {source} does not exist")
    inner = source.name if source.is_file() else ""
    if use_cache:
        root = (cache or guest_cache_dir()) / "disks"
        root.mkdir(parents=True, exist_ok=True)
        target = root / f"{fingerprint(source)[:24]}.ext4"
        if not target.exists():
            fd, tmp = tempfile.mkstemp(prefix=".disk-", suffix=".ext4", dir=root)
            os.close(fd)
            try:
                build_image(source, Path(tmp))
                os.replace(tmp, target)
            finally:
                Path(tmp).unlink(missing_ok=True)
        return DataImage(target, source, inner, True, target.stat().st_size)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    target = scratch_dir / "data.ext4"
    build_image(source, target)
    return DataImage(target, source, inner, False, target.stat().st_size)
