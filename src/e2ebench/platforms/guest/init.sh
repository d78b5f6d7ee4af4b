#!/bin/busybox sh
# e2ebench guest init: PID 1 inside the initramfs built by e2ebench.platforms.guest.initramfs.
#
# Kernel command line parameters (all optional except e2ebench.job in run mode):
#   e2ebench.mode=run|probe|hold  probe: print the probe marker right after loading the modules, power off;
#                             hold: print it and stay up until QEMU is stopped
#   e2ebench.job=PATH         where to mount the job directory (a 9p share tagged "job"), e.g. /run/e2ebench/job
#   e2ebench.root=9p|/dev/vdX the host root: 9p share tagged "hostroot" (default) or a block device
#   e2ebench.msize=BYTES      9p msize (default 524288)
#   e2ebench.cache=MODE       9p cache mode of the read-only host root (default loose)
#   e2ebench.data=PATH        mount the data disk read-only at PATH (inside the new root)
#   e2ebench.datadev=/dev/vdX the data disk's device (default /dev/vda)
#   e2ebench.jobdev=/dev/vdX  the job directory as a writable ext4 disk instead of the 9p share (Firecracker)
#   e2ebench.overlay=PATH     bind-mount the job directory's overlay/ onto PATH (an empty directory in a root disk;
#                             Firecracker: the project's src comes with each job)
#   e2ebench.keep=P1,P2,...   host paths under /tmp or /run (e.g. a CI checkout's venv and src) that stay visible
#                             over the guest's own tmpfs on /tmp and /run: bound back from the host root
#   e2ebench.halt=poweroff|reboot  how to stop the machine (default poweroff; Firecracker has no ACPI power-off and
#                             exits on the guest's reboot, with reboot=k on the command line)
#   e2ebench.gpu=1            a GPU is passed through (VFIO): after the nvidia modules are loaded, create the device
#                             nodes CUDA opens (/dev/nvidiactl, /dev/nvidia0.., /dev/nvidia-uvm, /dev/nvidia-uvm-tools)
#   virtio_mmio.device=...    added by QEMU's microvm machine; handed to the virtio_mmio module
# Markers on the console: @@E2EBENCH_PROBE_OK@@, @@E2EBENCH_GUEST_ERROR@@ <why>, @@E2EBENCH_GUEST_EXIT@@.
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev

MODE=run; JOB=; KEEP=; ROOT=9p; MSIZE=524288; CACHE=loose; DATA=; DATADEV=/dev/vda; JOBDEV=; HALT=poweroff; OVERLAY=; MMIO=
GPU=
for arg in $($B cat /proc/cmdline); do
    case "$arg" in
        e2ebench.mode=*) MODE=${arg#*=} ;;
        e2ebench.job=*) JOB=${arg#*=} ;;
        e2ebench.keep=*) KEEP=${arg#*=} ;;
        e2ebench.root=*) ROOT=${arg#*=} ;;
        e2ebench.msize=*) MSIZE=${arg#*=} ;;
        e2ebench.cache=*) CACHE=${arg#*=} ;;
        e2ebench.data=*) DATA=${arg#*=} ;;
        e2ebench.datadev=*) DATADEV=${arg#*=} ;;
        e2ebench.jobdev=*) JOBDEV=${arg#*=} ;;
        e2ebench.halt=*) HALT=${arg#*=} ;;
        e2ebench.overlay=*) OVERLAY=${arg#*=} ;;
        e2ebench.gpu=*) GPU=${arg#*=} ;;
        virtio_mmio.device=*) MMIO="$MMIO device=${arg#virtio_mmio.device=}" ;;
    esac
done

halt() {
    $B sync
    if [ "$HALT" = reboot ]; then
        $B reboot -f
    fi
    $B poweroff -f
    $B sleep 30
}
die() {
    echo "@@E2EBENCH_GUEST_ERROR@@ $*"
    halt
}

for m in $($B cat /modules.load); do
    if [ "$m" = virtio_mmio ]; then
        $B insmod /lib/modules/$m.ko $MMIO || die "insmod $m failed"
    else
        $B insmod /lib/modules/$m.ko || die "insmod $m failed"
    fi
done

# The nvidia modules register character majors but create no nodes (udev or nvidia-modprobe would): make them from
# /proc/devices, one /dev/nvidiaN per GPU the driver found.  devtmpfs is one instance: the new root sees them.
if [ -n "$GPU" ]; then
    NV=$($B awk '$2 == "nvidia-frontend" || $2 == "nvidia" { print $1; exit }' /proc/devices)
    UVM=$($B awk '$2 == "nvidia-uvm" { print $1; exit }' /proc/devices)
    [ -n "$NV" ] && [ -n "$UVM" ] || die "GPU passthrough: the nvidia modules registered no devices"
    NGPU=$($B ls /proc/driver/nvidia/gpus 2>/dev/null | $B wc -l)
    [ "$NGPU" -gt 0 ] || die "GPU passthrough: the nvidia driver sees no GPU in the guest"
    $B mknod -m 666 /dev/nvidiactl c "$NV" 255
    i=0
    while [ "$i" -lt "$NGPU" ]; do $B mknod -m 666 "/dev/nvidia$i" c "$NV" "$i"; i=$((i + 1)); done
    $B mknod -m 666 /dev/nvidia-uvm c "$UVM" 0
    $B mknod -m 666 /dev/nvidia-uvm-tools c "$UVM" 1
fi

if [ "$MODE" = probe ] || [ "$MODE" = hold ]; then
    echo "@@E2EBENCH_PROBE_OK@@ uptime=$($B cut -d' ' -f1 /proc/uptime) cpus=$($B nproc)"
    # hold: stay up (for inspecting a running guest from the host) until QEMU is stopped
    while [ "$MODE" = hold ]; do $B sleep 3600; done
    halt
fi

P9="trans=virtio,version=9p2000.L,msize=$MSIZE"
R=/newroot
if [ "$ROOT" = 9p ]; then
    $B mount -t 9p -o "$P9,ro,cache=$CACHE" hostroot $R || die "cannot mount the host root over 9p"
else
    $B mount -t ext4 -o ro,noload "$ROOT" $R || die "cannot mount the root disk $ROOT"
fi
$B mount -t proc proc $R/proc || die "no /proc in the new root"
$B mount -t sysfs sysfs $R/sys || die "no /sys in the new root"
$B mount -t devtmpfs devtmpfs $R/dev || die "no /dev in the new root"
$B mkdir -p $R/dev/shm $R/dev/pts
$B mount -t tmpfs -o mode=1777 shm $R/dev/shm
$B mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
if [ -n "$KEEP" ]; then
    # keep the host root's /tmp and /run reachable before the guest's tmpfs covers them
    $B mkdir -p /host/tmp /host/run
    $B mount -o bind $R/tmp /host/tmp || die "cannot keep the host's /tmp"
    $B mount -o bind $R/run /host/run || die "cannot keep the host's /run"
fi
$B mount -t tmpfs -o mode=1777 tmp $R/tmp || die "no /tmp in the new root"
$B mount -t tmpfs -o mode=0755 run $R/run || die "no /run in the new root"
for path in $(echo "$KEEP" | $B tr ',' ' '); do
    $B mkdir -p "$R$path"
    $B mount -o bind "/host$path" "$R$path" || die "cannot keep $path visible in the guest"
done
$B mount -t cgroup2 cgroup2 $R/sys/fs/cgroup || die "cannot mount cgroup2 in the guest"
if [ -n "$DATA" ]; then
    $B mkdir -p "$R$DATA"
    $B mount -t ext4 -o ro,noload "$DATADEV" "$R$DATA" || die "cannot mount the data disk $DATADEV at $DATA"
fi
[ -n "$JOB" ] || die "no e2ebench.job= on the kernel command line"
$B mkdir -p "$R$JOB"
if [ -n "$JOBDEV" ]; then
    $B mount -t ext4 "$JOBDEV" "$R$JOB" || die "cannot mount the job disk $JOBDEV"
else
    $B mount -t 9p -o "$P9,cache=none" job "$R$JOB" || die "cannot mount the job directory $JOB over 9p"
fi
if [ -n "$OVERLAY" ]; then
    $B mount -o bind "$R$JOB/overlay" "$R$OVERLAY" || die "cannot bind $JOB/overlay to $OVERLAY"
fi

$B chroot $R /bin/sh "$JOB/job.sh"
rc=$?
echo "@@E2EBENCH_GUEST_EXIT@@ rc=$rc uptime=$($B cut -d' ' -f1 /proc/uptime)"
[ -n "$OVERLAY" ] && $B umount "$R$OVERLAY" 2>/dev/null
$B umount "$R$JOB" 2>/dev/null
halt
