"""What a QEMU guest needs from the host: a kernel, an initramfs, a data disk, init scripts.

* :mod:`.kernel` finds a guest kernel (configured path, the cache, or a Debian ``linux-image``
  package fetched with ``apt-get download``) and resolves kernel-module dependencies.
* :mod:`.initramfs` builds a busybox-static initramfs (pure-Python ``newc`` cpio, gzip) with the
  virtio / 9p / virtio-blk / ext4 modules and the init script ``init.sh``.
* :mod:`.disk` turns a data set folder into a read-only ext4 disk image (``mkfs.ext4 -d``, no loop
  device) so that the guest reads its input through a virtual disk.
* :mod:`.qmp` is a small synchronous QMP client (JSON over the unix socket).

Everything built here is cached under ``<cache>/guest/`` (``cache`` = ``$E2EBENCH_CACHE`` or
``~/.cache/e2ebench``).  The shell templates ``init.sh`` (PID 1 in the initramfs) and ``job.sh``
(run in the guest, chrooted into the host root) ship as package data.
"""

from __future__ import annotations

import os
from pathlib import Path

GUEST_DIR = Path(__file__).resolve().parent


def guest_cache_dir() -> Path:
    """``<cache>/guest`` where kernels, initramfs images, data disks and the KVM verdict are kept."""
    base = Path(os.environ.get("E2EBENCH_CACHE", Path.home() / ".cache" / "e2ebench"))
    return base / "guest"


def template(name: str) -> str:
    """The text of a shell template shipped with the package (``init.sh``, ``job.sh``)."""
    return (GUEST_DIR / name).read_text()
