# e2ebench job script: run by init.sh inside the guest, chrooted into the host root (read-only).
#
# The host writes, next to this file in the job directory:
#   job.env    shell-quoted settings: E2EBENCH_GUEST_MODE (vm | vmcn), E2EBENCH_OUTPUT_DIR (the LoadGen
#              log directory's path, bind-mounted from $JOB/output so that it is writable),
#              E2EBENCH_CGROUP_SUBTREE (controllers to enable, VMCN), E2EBENCH_DATA_MOUNT (the data disk's mount)
#   worker.sh  the command that starts the worker (the worker itself for vm, runc for vmcn), shell-quoted
# Markers on the console: @@E2EBENCH_GUEST_READY@@ (the guest is ready to start the worker: what
# provision_s ends with), @@E2EBENCH_WORKER_EXIT@@ rc=N, @@E2EBENCH_GUEST_ERROR@@ <why>.
JOB=${0%/*}
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
uptime_s() { read -r up _ < /proc/uptime; echo "$up"; }
fail() { echo "@@E2EBENCH_GUEST_ERROR@@ $*"; exit 70; }

. "$JOB/job.env" || fail "cannot read $JOB/job.env"
cd / || fail "no /"
if [ -n "${E2EBENCH_OUTPUT_DIR:-}" ]; then
    mkdir -p "$E2EBENCH_OUTPUT_DIR" 2>/dev/null
    mount --bind "$JOB/output" "$E2EBENCH_OUTPUT_DIR" || fail "cannot bind $JOB/output to $E2EBENCH_OUTPUT_DIR"
fi
if [ -n "${E2EBENCH_CGROUP_SUBTREE:-}" ]; then
    echo "$E2EBENCH_CGROUP_SUBTREE" > /sys/fs/cgroup/cgroup.subtree_control \
        || fail "cannot enable '$E2EBENCH_CGROUP_SUBTREE' in the guest's cgroup.subtree_control"
fi
DATA_SOURCE=none
if [ -n "${E2EBENCH_DATA_MOUNT:-}" ]; then
    while read -r dev mnt fstype _; do
        [ "$mnt" = "$E2EBENCH_DATA_MOUNT" ] && DATA_SOURCE="$dev:$fstype"
    done < /proc/mounts
fi
echo "@@E2EBENCH_GUEST_READY@@ uptime=$(uptime_s) cpus=$(nproc) mode=$E2EBENCH_GUEST_MODE data=$DATA_SOURCE"
/bin/sh "$JOB/worker.sh"
rc=$?
if [ "$rc" -ne 0 ]; then
    # loglevel=3 keeps the kernel's OOM-killer lines (KERN_ERR) off the console: copy them, so that the host
    # can tell an OOM-killed worker ("out of memory (limit N MiB)") from a crash
    dmesg 2>/dev/null | grep -E 'Out of memory|oom-kill:|invoked oom-killer' | tail -n 5 | sed 's/^/e2ebench-guest-kernel: /'
fi
echo "@@E2EBENCH_WORKER_EXIT@@ rc=$rc uptime=$(uptime_s)"
if [ -n "${E2EBENCH_OUTPUT_DIR:-}" ]; then
    umount "$E2EBENCH_OUTPUT_DIR" 2>/dev/null
fi
sync
exit $rc
