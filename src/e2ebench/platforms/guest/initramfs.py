"""The guest's initramfs: busybox-static, the kernel modules the guest needs, and ``init.sh``.

Written as a ``newc`` cpio archive in pure Python and gzip-compressed (every kernel can unpack
gzip), so building one needs no root, no ``cpio`` binary and no loop device.  Layout::

    /init                 init.sh (PID 1; parameters come from the kernel command line)
    /bin/busybox          the static busybox
    /lib/modules/<name>.ko  the modules, flat
    /modules.load         module names, one per line, dependencies first
    /dev/console          character device 5:1
    /proc /sys /dev /newroot /tmp   mount points

Images are cached in ``<cache>/guest/initramfs/<key>.img.gz``; the key covers the kernel version,
the module files, busybox and the init script, so any change builds a new image.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import shutil
import stat
import struct
import tempfile
from pathlib import Path
from typing import Iterable

from e2ebench.platforms.guest import guest_cache_dir, template
from e2ebench.platforms.guest.kernel import GuestKernel, KernelError, ModuleIndex, read_module_bytes

# virtio over PCI (q35/pc) and MMIO (microvm), the 9p transport and file system (host root, job
# directory), virtio-blk + ext4 for the data disk; crc32c is ext4's soft dependency (metadata_csum).
GUEST_MODULES: tuple[str, ...] = (
    "virtio_pci", "virtio_mmio", "9pnet_virtio", "9p", "virtio_blk", "ext4", "crc32c_generic",
)
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox", "/usr/lib/initramfs-tools/bin/busybox")


class InitramfsError(RuntimeError):
    pass


# ---------------------------------------------------------------------------
# cpio (newc)


@dataclasses.dataclass(frozen=True)
class CpioEntry:
    """One archive member: a directory, regular file, symlink or character device."""

    path: str                       # without leading "/"
    mode: int                       # full st_mode (type bits + permissions)
    data: bytes = b""               # file contents or symlink target
    rdev: tuple[int, int] = (0, 0)  # (major, minor) for device nodes

    @classmethod
    def directory(cls, path: str, perm: int = 0o755) -> "CpioEntry":
        return cls(path, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, path: str, data: bytes, perm: int = 0o644) -> "CpioEntry":
        return cls(path, stat.S_IFREG | perm, data)

    @classmethod
    def chardev(cls, path: str, major: int, minor: int, perm: int = 0o600) -> "CpioEntry":
        return cls(path, stat.S_IFCHR | perm, b"", (major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def cpio_newc(entries: Iterable[CpioEntry]) -> bytes:
    """A ``newc`` (SVR4, no CRC) cpio archive with deterministic inode numbers and mtime 0."""
    out = io.BytesIO()

    def member(ino: int, entry: CpioEntry) -> None:
        name = entry.path.lstrip("/").encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, entry.rdev[0], entry.rdev[1], len(name), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out.write(header + name + _pad4(len(header) + len(name)))
        out.write(entry.data + _pad4(len(entry.data)))

    for ino, entry in enumerate(entries, start=1):
        member(ino, entry)
    member(0, CpioEntry("TRAILER!!!", 0))
    return out.getvalue()


def read_cpio_newc(blob: bytes) -> list[CpioEntry]:
    """Parse a ``newc`` archive (used by tests and ``doctor`` to show what an image holds)."""
    entries = []
    pos = 0
    while pos + 110 <= len(blob):
        if blob[pos : pos + 6] not in (b"070701", b"070702"):
            raise InitramfsError(f"bad cpio magic at offset {pos}")
        fields = [int(blob[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name = blob[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += (4 - pos % 4) % 4
        data = blob[pos : pos + filesize]
        pos += filesize
        pos += (4 - pos % 4) % 4
        if name == "TRAILER!!!":
            break
        entries.append(CpioEntry(name, mode, data, (rmaj, rmin)))
    return entries


# ---------------------------------------------------------------------------
# busybox


def is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (PT_INTERP): it runs without ld.so."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                return False
            endian = "<" if head[5] == 1 else ">"
            phoff = struct.unpack_from(endian + "Q", head, 0x20)[0]
            phentsize, phnum = struct.unpack_from(endian + "HH", head, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    for i in range(phnum):
        if struct.unpack_from(endian + "I", table, i * phentsize)[0] == 3:  # PT_INTERP
            return False
    return True


def find_busybox() -> Path | None:
    """A statically linked busybox (Debian: package busybox-static), or None."""
    for candidate in (shutil.which("busybox"), *BUSYBOX_CANDIDATES):
        if candidate and Path(candidate).is_file() and is_static_elf(Path(candidate)):
            return Path(candidate).resolve()
    return None


# ---------------------------------------------------------------------------
# Building


def initramfs_entries(modules: list[tuple[str, Path]], busybox: Path, init_script: str) -> list[CpioEntry]:
    """The archive members (pure: the caller resolves the modules, dependencies first)."""
    entries = [CpioEntry.directory(d) for d in ("bin", "dev", "lib", "lib/modules", "proc", "sys", "newroot", "tmp")]
    entries.append(CpioEntry.chardev("dev/console", 5, 1))
    entries.append(CpioEntry.file("bin/busybox", busybox.read_bytes(), 0o755))
    entries.append(CpioEntry(path="bin/sh", mode=stat.S_IFLNK | 0o777, data=b"busybox"))
    for name, path in modules:
        entries.append(CpioEntry.file(f"lib/modules/{name}.ko", read_module_bytes(path)))
    entries.append(CpioEntry.file("modules.load", "".join(f"{name}\n" for name, _ in modules).encode()))
    entries.append(CpioEntry.file("init", init_script.encode(), 0o755))
    return entries


def resolve_guest_modules(kernel: GuestKernel, wanted: Iterable[str] = GUEST_MODULES) -> list[tuple[str, Path]]:
    if kernel.modules_dir is None:
        return []  # a kernel with the drivers built in
    return ModuleIndex.load(kernel.modules_dir).resolve(wanted)


def build_initramfs(kernel: GuestKernel, busybox: Path | None = None, wanted: Iterable[str] = GUEST_MODULES,
                    cache: Path | None = None) -> Path:
    """The (cached) gzip'd initramfs for ``kernel``; built when the inputs changed."""
    busybox = busybox or find_busybox()
    if busybox is None:
        raise InitramfsError("no statically linked busybox: apt-get install busybox-static")
    modules = resolve_guest_modules(kernel, wanted)
    init_script = template("init.sh")
    digest = hashlib.sha256()
    digest.update(kernel.version.encode())
    for name, path in modules:
        st = path.stat()
        digest.update(f"{name}:{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    bst = busybox.stat()
    digest.update(f"busybox:{busybox}:{bst.st_size}:{bst.st_mtime_ns}\n".encode())
    digest.update(init_script.encode())
    root = (cache or guest_cache_dir()) / "initramfs"
    target = root / f"{kernel.version}-{digest.hexdigest()[:16]}.img.gz"
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    archive = cpio_newc(initramfs_entries(modules, busybox, init_script))
    fd, tmp = tempfile.mkstemp(prefix=".initramfs-", dir=root)
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz:
            gz.write(archive)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


__all__ = ["GUEST_MODULES", "CpioEntry", "InitramfsError", "KernelError", "build_initramfs", "cpio_newc",
           "find_busybox", "initramfs_entries", "is_static_elf", "read_cpio_newc", "resolve_guest_modules"]
