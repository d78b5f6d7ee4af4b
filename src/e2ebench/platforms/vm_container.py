"""Container in VM (VMCN): runc inside a QEMU guest, the worker inside that container.

The guest is the VM platform's (same kernel, initramfs, host root over 9p, data disk, job
directory); in the guest, cgroup2 is mounted at ``/sys/fs/cgroup`` with ``+cpu +cpuset`` enabled in
``cgroup.subtree_control``, and the host's ``runc`` (seen through the 9p root) runs an OCI bundle
written by :func:`e2ebench.platforms.container.make_oci_bundle` into the job directory: an empty
read-only root with the guest's ``/usr``, ``/etc``, the Python environment and the project's ``src``
bind-mounted read-only (identity paths, as on CN), the data disk's mount and the spec read-only,
the result directory and the LoadGen log directory writable.

What VNL and PIN mean, at both levels (the guest always has N vCPUs for an N-core deployment):

============  ================================================  ==========================================
cpu mode      host (the QEMU process)                           guest (the container)
============  ================================================  ==========================================
``VNL``       vCPU threads unpinned; QEMU in a cgroup with a    CFS quota of N cores
              CFS quota of N cores                              (``cpu.max = N*100000 100000``) over all
                                                                N vCPUs; no thread binding
``PIN``       vCPU i's thread bound to its own dedicated host   cpuset = guest CPUs 0..N-1 (all vCPUs),
              core (``sched_setaffinity``); QEMU in a cpuset    no quota; no thread bound to one CPU inside
              cgroup of those cores                             (``bind_cpus`` lists the guest CPUs)
============  ================================================  ==========================================

So the worker must report effective CPUs 0..N-1 and a quota of N cores (VNL) or none (PIN).
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import ClassVar

from e2ebench.platforms import rootfs as rootfs_lib
from e2ebench.platforms.container_config import GpuPassthrough, nvidia_nodes
from e2ebench.platforms.nvidia import host_driver_libraries
from e2ebench.platforms.base import Availability, PlatformError
from e2ebench.platforms.vm import (GUEST_DATA_MOUNT, GUEST_JOB_DIR, VirtualMachine, VirtualMachineSession, guest_sees,
                                   shell_script)
from e2ebench.spec import WorkerSpec

GUEST_CGROUP_SUBTREE = "+cpu +cpuset"
CONTAINER_ID = "e2ebench-vmcn"
# GPU: the bundle is written on the host before the guest boots, when the guest's nvidia-uvm major (dynamic) is not
# known yet; the bundle carries this stand-in number (the largest major) and the guest replaces it before runc runs
UVM_MAJOR_PLACEHOLDER = 4095


def gpu_worker_script(runc_argv: list[str], config_path: str, placeholder: int = UVM_MAJOR_PLACEHOLDER,
                      devices_file: str = "/proc/devices") -> str:
    """The guest-side script of a VMCN GPU run: read the nvidia-uvm major from ``devices_file``, put it into the
    bundle's config.json in place of ``placeholder``, then exec runc (``runc_argv``)."""
    quoted_config = shlex.quote(config_path)
    return ("#!/bin/sh\n"
            f"UVM=$(awk '$2 == \"nvidia-uvm\" {{ print $1; exit }}' {shlex.quote(devices_file)})\n"
            '[ -n "$UVM" ] || { echo "no nvidia-uvm device major in the guest (nvidia_uvm not loaded)" >&2; exit 70; }\n'
            f'sed -i "s/\\"major\\": {placeholder},/\\"major\\": $UVM,/" {quoted_config} || exit 70\n'
            + shell_script(runc_argv).split("\n", 1)[1])


def _container_module():
    """:mod:`e2ebench.platforms.container` (written alongside; imported when a session needs it)."""
    try:
        from e2ebench.platforms import container
    except ImportError as exc:  # pragma: no cover - the module ships with e2ebench
        raise PlatformError(f"VMCN needs e2ebench.platforms.container: {exc}") from None
    return container


class ContainerInVMSession(VirtualMachineSession):
    guest_mode: ClassVar[str] = "vmcn"

    def expected_limits(self) -> tuple[list[int] | None, float | None]:
        if self.deployment.cpu_mode == "PIN":
            return self.guest_cpus(), None
        return self.guest_cpus(), float(self.deployment.cores)

    def container_cpus(self) -> list[int] | None:
        return self.guest_cpus() if self.deployment.cpu_mode == "PIN" else None

    def container_quota_cores(self) -> float | None:
        return None if self.deployment.cpu_mode == "PIN" else float(self.deployment.cores)

    def describe_host_cpu_mode(self) -> str:
        n = self.deployment.cores
        host = super().describe_host_cpu_mode()
        if self.deployment.cpu_mode == "PIN":
            return host + f"; in the guest: container cpuset = guest CPUs 0-{n - 1}, threads bound one per CPU"
        return host + f"; in the guest: container with a CFS quota of {n} core(s) over all {n} vCPUs"

    def job_settings(self, job: Path, spec: WorkerSpec) -> dict[str, str]:
        settings = super().job_settings(job, spec)
        settings["E2EBENCH_CGROUP_SUBTREE"] = GUEST_CGROUP_SUBTREE
        return settings

    def worker_script(self, job: Path, spec: WorkerSpec) -> str:
        """Write the OCI bundle (host side, into the job directory) and return the runc command."""
        container = _container_module()
        system_binds, symlinks = rootfs_lib.system_layout("/")
        python_dirs = [d for d in rootfs_lib.python_environment_dirs() if guest_sees(d)]
        readonly = list(system_binds) + python_dirs + [f"{GUEST_JOB_DIR}/spec"]
        if self._data_host is not None:
            readonly.append(GUEST_DATA_MOUNT)
        if (job / "inputs").is_dir():
            readonly.append(f"{GUEST_JOB_DIR}/inputs")
        writable = [f"{GUEST_JOB_DIR}/result"]
        if spec.output_dir:
            writable.append(spec.output_dir)
        argv = [sys.executable, "-m", "e2ebench.worker", "--spec", f"{GUEST_JOB_DIR}/spec/spec.json",
                "--out", f"{GUEST_JOB_DIR}/result/result.json"]
        gpu_count = self.gpu_count()
        env = container.container_env({"HOME": "/tmp"}, gpu=gpu_count > 0)
        gpu = None
        if gpu_count:
            # the guest's root is the host's: the host's driver libraries are at the same paths in there
            gpu = GpuPassthrough(nvidia_nodes(gpu_count, UVM_MAJOR_PLACEHOLDER), host_driver_libraries())
        bundle = job / "bundle"
        container.make_oci_bundle(bundle, argv, env, root=bundle / "rootfs", readonly_binds=readonly,
                                  writable_binds=writable, quota_cores=self.container_quota_cores(),
                                  cpuset=self.container_cpus(), cgroups_path=f"/e2ebench/{CONTAINER_ID}",
                                  network=False, symlinks=symlinks, gpu=gpu)
        self.info["container"] = {
            "runtime": "runc (the host's binary, run inside the guest)",
            "cgroups_path": f"/e2ebench/{CONTAINER_ID}",
            "quota_cores": self.container_quota_cores(),
            "cpuset": self.container_cpus(),
            "guest_cgroup_subtree": GUEST_CGROUP_SUBTREE,
        }
        runc = shutil.which("runc") or "/usr/sbin/runc"
        runc_argv = [runc, "--root", "/run/runc", "run", "--bundle", f"{GUEST_JOB_DIR}/bundle", CONTAINER_ID]
        if gpu is not None:
            self.info["container"]["gpu_devices"] = [d.path for d in gpu.devices]
            return gpu_worker_script(runc_argv, f"{GUEST_JOB_DIR}/bundle/config.json")
        return shell_script(runc_argv)


class ContainerInVM(VirtualMachine):
    name: ClassVar[str] = "VMCN"
    title: ClassVar[str] = "container in VM"
    colour: ClassVar[str] = "#2ca02c"
    order: ClassVar[int] = 40
    devices: ClassVar[tuple[str, ...]] = ("CPU", "GPU")   # supports(): VM's (the GPU passed through to the guest)
    container: ClassVar[bool] = True
    session_class = ContainerInVMSession

    def missing_tools(self) -> list[tuple[str, str]]:
        missing = super().missing_tools()
        if not shutil.which("runc"):
            missing.append(("runc", "runc"))
        return missing

    def probe(self) -> Availability:
        base = super().probe()
        if not base.usable:
            return base
        details = {**base.details, "runtime": "runc inside the guest (cgroup2, +cpu +cpuset)"}
        return Availability(True, base.reason, emulated=base.emulated, fix=base.fix, details=details)
