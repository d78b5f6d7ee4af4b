"""The guest kernel: find one, or fetch Debian's, and resolve its module dependencies.

Where the kernel comes from, in this order:

1. a configured path: the platform option ``kernel`` or ``$E2EBENCH_GUEST_KERNEL`` (a bzImage), with
   its modules from the option ``modules_dir`` / ``$E2EBENCH_GUEST_MODULES`` (``.../lib/modules/<ver>``;
   guessed next to the image or under ``/lib/modules/<ver>`` when not given);
2. a kernel fetched earlier into ``<cache>/guest/kernels/<version>/``;
3. Debian's current ``linux-image-<abi>-amd64``: the package the ``linux-image-amd64`` meta package
   depends on (``apt-cache depends``), downloaded with ``apt-get download`` and unpacked with
   ``dpkg-deb -x`` into the cache (~400 MB).  Debian packages do not ship ``modules.dep`` (``depmod``
   writes it at install time), so it is generated with ``depmod -b`` or, without kmod, from each
   module's ``.modinfo`` ``depends=`` field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

from e2ebench.platforms.guest import guest_cache_dir

KERNEL_ENV = "E2EBENCH_GUEST_KERNEL"
MODULES_ENV = "E2EBENCH_GUEST_MODULES"
META_PACKAGE = "linux-image-amd64"
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


class KernelError(RuntimeError):
    """No usable guest kernel (with a message that says how to get one)."""


@dataclasses.dataclass(frozen=True)
class GuestKernel:
    """A bootable kernel image and the directory holding its loadable modules."""

    version: str                  # "6.1.0-57-amd64" (from the bzImage header or the file name)
    image: Path                   # the bzImage QEMU boots with -kernel
    modules_dir: Path | None      # .../lib/modules/<version>; None: every needed driver is built in
    source: str                   # "configured" | "cache" | "fetched"

    def as_dict(self) -> dict:
        return {"version": self.version, "image": str(self.image),
                "modules_dir": str(self.modules_dir) if self.modules_dir else None, "source": self.source}


# ---------------------------------------------------------------------------
# Reading kernel images


def bzimage_version(path: Path) -> str | None:
    """The release string (``uname -r``) stored in an x86 bzImage's setup header, or None.

    The setup header starts at 0x1F1; ``HdrS`` at 0x202 marks it; the 16-bit field at 0x20E points
    (relative to 0x200) at a NUL-terminated string whose first word is the release.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(0x10000)
    except OSError:
        return None
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return None
    pointer = struct.unpack_from("<H", head, 0x20E)[0] + 0x200
    if pointer >= len(head):
        return None
    text = head[pointer : pointer + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    return text.split()[0] if text.strip() else None


def extract_vmlinux(bzimage: Path, out: Path) -> Path:
    """Decompress the ELF ``vmlinux`` embedded in a bzImage (for engines that cannot boot bzImages).

    Finds the xz or gzip payload by its magic bytes and keeps the first candidate that decompresses
    to an ELF file (stdlib lzma/gzip only; zstd-compressed kernels are not supported).
    """
    data = bzimage.read_bytes()
    candidates: list[tuple[int, Callable[[bytes], bytes]]] = []
    for magic, opener in ((b"\xfd7zXZ\x00", _xz_prefix), (b"\x1f\x8b\x08", _gzip_prefix)):
        start = data.find(magic)
        while start >= 0:
            candidates.append((start, opener))
            start = data.find(magic, start + 1)
    for start, opener in sorted(candidates):
        try:
            elf = opener(data[start:])
        except (lzma.LZMAError, OSError, EOFError, gzip.BadGzipFile):
            continue
        if elf[:4] == b"\x7fELF":
            out.write_bytes(elf)
            return out
    raise KernelError(f"no xz or gzip compressed ELF kernel found inside {bzimage}")


def _xz_prefix(blob: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(blob)


def _gzip_prefix(blob: bytes) -> bytes:
    import zlib

    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(blob)


# ---------------------------------------------------------------------------
# Kernel modules


def module_name(path: str | Path) -> str:
    """``kernel/fs/9p/9p.ko`` -> ``9p``; ``crc32c-intel.ko.xz`` -> ``crc32c_intel`` (as the kernel names it)."""
    base = Path(path).name
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """``modules.dep`` -> {module name: (relative path, [relative paths of every dependency])}."""
    table: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, deps = line.partition(":")
        path = path.strip()
        if path:
            table[module_name(path)] = (path, deps.split())
    return table


def read_module_bytes(path: Path) -> bytes:
    name = path.name
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        raise KernelError(f"{path}: zstd-compressed modules need depmod (kmod) to resolve dependencies")
    return path.read_bytes()


def read_modinfo(path: Path) -> dict[str, list[str]]:
    """The ``key=value`` strings of a module's ELF ``.modinfo`` section (``depends``, ``softdep``, ...)."""
    elf = read_module_bytes(path)
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise KernelError(f"{path} is not a 64-bit ELF module")
    endian = "<" if elf[5] == 1 else ">"
    shoff = struct.unpack_from(endian + "Q", elf, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", elf, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        name_offset = struct.unpack_from(endian + "I", elf, base)[0]
        offset, size = struct.unpack_from(endian + "QQ", elf, base + 0x18)
        return name_offset, offset, size

    _, strtab_offset, _ = section(shstrndx)
    info: dict[str, list[str]] = {}
    for index in range(shnum):
        name_offset, offset, size = section(index)
        end = elf.index(b"\0", strtab_offset + name_offset)
        if elf[strtab_offset + name_offset : end] != b".modinfo":
            continue
        for item in elf[offset : offset + size].split(b"\0"):
            key, sep, value = item.decode("utf-8", "replace").partition("=")
            if sep:
                info.setdefault(key, []).append(value)
    return info


def generate_modules_dep(modules_dir: Path) -> str:
    """A ``modules.dep`` computed from every module's ``depends=`` field (what depmod writes, for the
    dependency part; without symbol versions or aliases).  Each line lists the full transitive closure."""
    paths: dict[str, str] = {}
    direct: dict[str, list[str]] = {}
    for path in sorted(modules_dir.rglob("*.ko*")):
        if not path.name.endswith(MODULE_SUFFIXES):
            continue
        rel = str(path.relative_to(modules_dir))
        name = module_name(rel)
        paths.setdefault(name, rel)
        depends = read_modinfo(path).get("depends", [""])[0]
        direct[name] = [module_name(d) for d in depends.split(",") if d]
    lines = []
    for name in sorted(paths, key=lambda n: paths[n]):
        closure: list[str] = []
        _closure(name, direct, closure, set())
        deps = [paths[d] for d in closure if d != name and d in paths]
        lines.append(f"{paths[name]}: {' '.join(deps)}".rstrip() if deps else f"{paths[name]}:")
    return "\n".join(lines) + "\n"


def _closure(name: str, direct: dict[str, list[str]], out: list[str], seen: set[str]) -> None:
    if name in seen:
        return
    seen.add(name)
    for dep in direct.get(name, []):
        _closure(dep, direct, out, seen)
    out.append(name)


@dataclasses.dataclass
class ModuleIndex:
    """A kernel's module directory: where each module is and what it depends on."""

    modules_dir: Path
    dependencies: dict[str, tuple[str, list[str]]]
    builtin: frozenset[str]

    @classmethod
    def load(cls, modules_dir: Path) -> "ModuleIndex":
        dep_file = modules_dir / "modules.dep"
        if not dep_file.exists():
            ensure_modules_dep(modules_dir)
        builtin_file = modules_dir / "modules.builtin"
        builtin = frozenset(module_name(line.strip()) for line in builtin_file.read_text().splitlines()
                            if line.strip()) if builtin_file.exists() else frozenset()
        return cls(modules_dir, parse_modules_dep(dep_file.read_text()), builtin)

    def resolve(self, wanted: Iterable[str]) -> list[tuple[str, Path]]:
        """Modules to ``insmod``, dependencies first: [(name, absolute path)].  Built-in ones are skipped."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in seen:
                return
            if name not in self.dependencies:
                if name in self.builtin:
                    seen.add(name)
                    return
                needed_by = f" (needed by {chain[-1]})" if chain else ""
                raise KernelError(f"kernel module {name}{needed_by} is neither in {self.modules_dir}/modules.dep "
                                  "nor built in")
            seen.add(name)
            _, deps = self.dependencies[name]
            for dep in deps:
                visit(module_name(dep), chain + (name,))
            order.append(name)

        for name in wanted:
            visit(module_name(name), ())
        return [(name, self.modules_dir / self.dependencies[name][0]) for name in order]


def ensure_modules_dep(modules_dir: Path) -> Path:
    """Write ``modules.dep`` for a module tree that lacks one (depmod when installed, else pure Python)."""
    dep_file = modules_dir / "modules.dep"
    version = modules_dir.name
    base = modules_dir.parent.parent.parent  # <base>/lib/modules/<version>
    depmod = shutil.which("depmod") or next((p for p in ("/usr/sbin/depmod", "/sbin/depmod") if os.access(p, os.X_OK)), None)
    if depmod and modules_dir.parent.name == "modules" and modules_dir.parent.parent.name == "lib":
        proc = subprocess.run([depmod, "-b", str(base), version], capture_output=True, text=True, timeout=300)
        if proc.returncode == 0 and dep_file.exists():
            return dep_file
    text = generate_modules_dep(modules_dir)
    tmp = dep_file.with_name(f".modules.dep.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(dep_file)
    return dep_file


# ---------------------------------------------------------------------------
# Finding and fetching


def _configured(kernel: str | None, modules_dir: str | None) -> GuestKernel | None:
    kernel = kernel or os.environ.get(KERNEL_ENV) or None
    modules_dir = modules_dir or os.environ.get(MODULES_ENV) or None
    if not kernel:
        return None
    image = Path(kernel).expanduser()
    if not image.is_file():
        raise KernelError(f"configured guest kernel {image} does not exist (option kernel / ${KERNEL_ENV})")
    version = bzimage_version(image) or re.sub(r"^(vmlinuz|bzImage)-?", "", image.name) or "unknown"
    if modules_dir:
        mods: Path | None = Path(modules_dir).expanduser()
        if not mods.is_dir():
            raise KernelError(f"configured guest modules directory {mods} does not exist (option modules_dir / ${MODULES_ENV})")
    else:
        guesses = [image.parent.parent / "lib" / "modules" / version, Path("/lib/modules") / version]
        mods = next((g for g in guesses if g.is_dir()), None)
    return GuestKernel(version, image.resolve(), mods.resolve() if mods else None, "configured")


def kernels_dir() -> Path:
    return guest_cache_dir() / "kernels"


def _cached() -> GuestKernel | None:
    root = kernels_dir()
    if not root.is_dir():
        return None
    found = []
    for entry in root.iterdir():
        if entry.name.startswith(".") or not (entry / ".complete").exists():
            continue
        image = entry / "boot" / f"vmlinuz-{entry.name}"
        mods = entry / "lib" / "modules" / entry.name
        if image.is_file() and mods.is_dir():
            found.append(GuestKernel(entry.name, image, mods, "cache"))
    return max(found, key=lambda k: _version_key(k.version)) if found else None


def _version_key(version: str) -> tuple:
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"[.-]", version))


def find_kernel(kernel: str | None = None, modules_dir: str | None = None) -> GuestKernel | None:
    """A configured or cached kernel, without touching the network (cheap: for ``doctor``)."""
    return _configured(kernel, modules_dir) or _cached()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created) for the duration of the block: one cache builder at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def debian_kernel_package(update_if_missing: bool = True) -> str:
    """The versioned ``linux-image-<abi>-amd64`` package behind Debian's ``linux-image-amd64`` meta package."""
    if not shutil.which("apt-cache"):
        raise KernelError("no guest kernel configured and apt-cache is missing: set $E2EBENCH_GUEST_KERNEL "
                          "(a bzImage) and $E2EBENCH_GUEST_MODULES (its lib/modules/<version>)")
    for attempt in range(2):
        proc = subprocess.run(["apt-cache", "depends", "--no-recommends", "--no-suggests", META_PACKAGE],
                              capture_output=True, text=True, timeout=120)
        match = re.search(r"Depends:\s*(linux-image-[0-9][^\s]*-amd64)\b", proc.stdout)
        if match:
            return match.group(1)
        if attempt == 0 and update_if_missing and os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "update"], capture_output=True, text=True, timeout=600)
    raise KernelError(f"apt-cache does not know {META_PACKAGE} (run `apt-get update`), or set $E2EBENCH_GUEST_KERNEL")


def fetch_kernel(package: str | None = None, progress: Callable[[str], None] | None = None) -> GuestKernel:
    """Download and unpack Debian's kernel package into ``<cache>/guest/kernels/<version>`` (once)."""
    say = progress or (lambda message: None)
    for tool in ("apt-get", "dpkg-deb"):
        if not shutil.which(tool):
            raise KernelError(f"cannot fetch a guest kernel: {tool} is missing; set $E2EBENCH_GUEST_KERNEL instead")
    package = package or debian_kernel_package()
    version = package.removeprefix("linux-image-")
    root = kernels_dir()
    target = root / version
    with file_lock(root / ".fetch.lock"):
        if (target / ".complete").exists():
            return GuestKernel(version, target / "boot" / f"vmlinuz-{version}", target / "lib" / "modules" / version, "cache")
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".fetch-{version}-", dir=root))
        try:
            say(f"downloading {package} (apt-get download)")
            proc = subprocess.run(["apt-get", "download", package], cwd=scratch, capture_output=True, text=True, timeout=1800)
            debs = sorted(scratch.glob("*.deb"))
            if proc.returncode != 0 or not debs:
                raise KernelError(f"apt-get download {package} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
            tree = scratch / "tree"
            say(f"unpacking {debs[0].name} (dpkg-deb -x)")
            proc = subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tree)], capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                raise KernelError(f"dpkg-deb -x {debs[0].name} failed: {proc.stderr.strip()[-500:]}")
            image = tree / "boot" / f"vmlinuz-{version}"
            mods = tree / "lib" / "modules" / version
            if not image.is_file() or not mods.is_dir():
                raise KernelError(f"{debs[0].name} has no boot/vmlinuz-{version} or lib/modules/{version}")
            ensure_modules_dep(mods)
            (tree / ".complete").write_text(package + "\n")
            if target.exists():
                shutil.rmtree(target)
            tree.rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return GuestKernel(version, target / "boot" / f"vmlinuz-{version}", target / "lib" / "modules" / version, "fetched")


def ensure_kernel(kernel: str | None = None, modules_dir: str | None = None, fetch: bool = True,
                  progress: Callable[[str], None] | None = None) -> GuestKernel:
    """A configured or cached kernel; fetched from Debian when there is none and ``fetch`` is allowed."""
    found = find_kernel(kernel, modules_dir)
    if found:
        return found
    if not fetch:
        raise KernelError(f"no guest kernel: set ${KERNEL_ENV}, or allow fetching Debian's {META_PACKAGE}")
    return fetch_kernel(progress=progress)
