"""The container platform (CN): OCI bundles, real runc / podman / docker containers, clean teardown.

Pure tests check the generated OCI configuration; the others start real containers (runc by
default, podman, and docker when a daemon can be started here) with the tiny IC model and check
what the worker saw inside, and that no container, cgroup (in any hierarchy) or bundle is left
after success, timeout, Ctrl-C and a SIGKILLed runner.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import E2EBENCH, cli_cwd
from e2ebench import runner
from e2ebench.platforms import cgroups
from e2ebench.platforms import container as cn
from e2ebench.platforms import rootfs
from e2ebench.scenario import Scenario
from e2ebench.store import Store

pytestmark = pytest.mark.platform

HOST_CPUS = sorted(os.sched_getaffinity(0))
CAN_WRITE, WHY = cgroups.writable()
RUNC_REASON = ("runc is not installed" if not shutil.which("runc") else
               "runc containers need root here" if os.geteuid() != 0 else
               None if CAN_WRITE else f"cgroups not writable: {WHY}")
needs_runc = pytest.mark.skipif(RUNC_REASON is not None, reason=RUNC_REASON or "")
TINY = ["--variant", "tiny", "--batch-size", "2"]


# ---------------------------------------------------------------------------
# helpers


def leftovers(owner: int) -> list[str]:
    """Everything a run by process ``owner`` could leave: runc containers, cgroups in every
    hierarchy (runc's v1 cgroupsPath creates one per controller), bundle and spec directories."""
    out = [f"runc:{c['id']}" for c in cn.runc_containers() if cn._owner_of(c.get("id", "")) == owner]
    out += [str(d) for d in cn.container_cgroup_leftovers(only_dead_owners=False) if cgroups.owner_pid(d.name) == owner]
    out += [str(d) for d in cgroups.list_children() if cgroups.owner_pid(d.name) == owner]
    for pattern in (f"bundle-cn-{owner}-*", f"specs-cn-{owner}-*"):
        out += glob.glob(os.path.join(tempfile.gettempdir(), "*", pattern))
    return out


def run_cli_popen(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(E2EBENCH + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cli_cwd(),
                            env={**os.environ, **(env or {})})


def cli_json(args: list[str], env: dict | None = None, timeout: float = 300) -> tuple[int, dict | None, str, int]:
    proc = run_cli_popen(args + ["--json"], env)
    out, err = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.strip()]
    return proc.returncode, (json.loads(lines[-1]) if lines else None), err, proc.pid


def run_in_session(platform: cn.Container, deployment: str, workdir: Path, data: Path, timeout_s: float = 300,
                   requests: int = 4) -> tuple[dict, dict]:
    scenario = Scenario.parse(f"ic@{deployment}")
    workload = runner.Workload(requests=requests, batch_size=2, variant="tiny", timeout_s=timeout_s).resolved("ic")
    with platform.session(scenario.deployment, workdir) as session:
        result = runner.execute(session, scenario, workload, data, workdir / "logs").as_dict()
        info = dict(session.info)
    return result, info


def wait_for_container(owner: int, timeout_s: float = 120) -> dict | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for c in cn.runc_containers():
            if cn._owner_of(c.get("id", "")) == owner and c.get("status") == "running":
                return c
        time.sleep(0.1)
    return None


def probe_payload(bundle: Path, cid: str, timeout: float = 60) -> dict:
    proc = subprocess.run(["runc", "run", "--bundle", str(bundle), cid], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


PAYLOAD = ("import json, os; from e2ebench import measure; lim = measure.cpu_limits(); "
           "print(json.dumps({'cpus': lim.effective_cpus, 'quota': lim.cpu_quota_cores, 'net': sorted(os.listdir('/sys/class/net')),"
           " 'in_container': measure.environment()['in_container'], 'root': sorted(os.listdir('/')),"
           " 'writable_root': os.access('/', os.W_OK), 'python': os.path.realpath('/proc/self/exe')}))")


# ---------------------------------------------------------------------------
# the OCI configuration (pure)


def test_vanilla_config_has_a_cfs_quota_and_no_cpuset():
    config = cn.oci_config(["/bin/true"], {"A": "1"}, root="rootfs", readonly_binds=["/usr"], writable_binds=[],
                           quota_cores=1.5, cpuset=None, cgroups_path="/e2ebench/cn-1-abc")
    cpu = config["linux"]["resources"]["cpu"]
    assert cpu == {"quota": 150_000, "period": 100_000}
    assert config["linux"]["cgroupsPath"] == "/e2ebench/cn-1-abc"
    assert config["root"] == {"path": "rootfs", "readonly": True}
    assert config["process"]["args"] == ["/bin/true"] and config["process"]["env"] == ["A=1"]
    assert config["process"]["noNewPrivileges"] is True and "rlimits" not in config["process"]


def test_pinned_config_has_a_cpuset_and_no_quota():
    config = cn.oci_config(["x"], {}, root="/r", readonly_binds=[], writable_binds=[], quota_cores=None,
                           cpuset=[3, 1, 2, 7], cgroups_path=None)
    assert config["linux"]["resources"]["cpu"] == {"cpus": "1-3,7"}
    assert "cgroupsPath" not in config["linux"]
    with pytest.raises(ValueError):
        cn.oci_config(["x"], {}, root="/r", readonly_binds=[], writable_binds=[], quota_cores=0, cpuset=None,
                      cgroups_path=None)


def test_namespaces_isolate_the_network_unless_asked():
    kw = dict(root="r", readonly_binds=[], writable_binds=[], quota_cores=None, cpuset=None, cgroups_path=None)
    isolated = cn.oci_config(["x"], {}, **kw)
    shared = cn.oci_config(["x"], {}, network=True, **kw)
    types = [n["type"] for n in isolated["linux"]["namespaces"]]
    assert set(types) == {"pid", "ipc", "uts", "mount", "cgroup", "network"}
    assert "network" not in [n["type"] for n in shared["linux"]["namespaces"]]
    sys_isolated = next(m for m in isolated["mounts"] if m["destination"] == "/sys")
    sys_shared = next(m for m in shared["mounts"] if m["destination"] == "/sys")
    assert sys_isolated["type"] == "sysfs" and sys_shared["type"] == "bind" and "ro" in sys_shared["options"]


def test_mounts_system_first_then_read_only_binds_then_writable_ones():
    config = cn.oci_config(["x"], {}, root="r", quota_cores=None, cpuset=None, cgroups_path=None,
                           readonly_binds=["/work/proj/.venv", "/usr", "/work/proj", "/usr/lib/python3", "/img/opt:/opt"],
                           writable_binds=["/work/proj/results/logs"])
    mounts = config["mounts"]
    dests = [m["destination"] for m in mounts]
    assert dests[:8] == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup", "/tmp"]
    binds = [m for m in mounts if m["type"] == "bind"]
    # /usr/lib/python3 and /work/proj/.venv are already visible through /usr and /work/proj
    assert [(m["source"], m["destination"]) for m in binds] == [
        ("/img/opt", "/opt"), ("/usr", "/usr"), ("/work/proj", "/work/proj"),
        ("/work/proj/results/logs", "/work/proj/results/logs")]
    assert [m["options"] for m in binds] == [["rbind", "ro"]] * 3 + [["rbind", "rw"]]
    cgroup = next(m for m in mounts if m["destination"] == "/sys/fs/cgroup")
    assert cgroup["type"] == "cgroup" and "ro" in cgroup["options"]


def test_bundle_root_gets_symlinks_and_mount_points(tmp_path):
    image = tmp_path / "image"
    (image / "opt").mkdir(parents=True)
    data_file = tmp_path / "one.bin"
    data_file.write_bytes(b"x")
    bundle = cn.make_oci_bundle(tmp_path / "bundle", ["/bin/true"], {}, root=Path("rootfs"),
                                readonly_binds=["/usr", f"{data_file}:/data/one.bin", f"{image / 'opt'}:/opt",
                                                "/opt/venv:/opt/venv"],
                                writable_binds=["/tmp/logs-x"], quota_cores=None, cpuset=[0], cgroups_path=None,
                                symlinks={"/lib": "usr/lib"}, cwd="/work")
    config = json.loads((bundle / "config.json").read_text())
    root = bundle / "rootfs"
    assert config["root"]["path"] == "rootfs"
    assert os.readlink(root / "lib") == "usr/lib"
    assert (root / "usr").is_dir() and (root / "proc").is_dir() and (root / "sys").is_dir() and (root / "work").is_dir()
    assert (root / "data" / "one.bin").is_file()                  # a file bind gets a file mount point
    assert not (root / "tmp" / "logs-x").exists()                 # inside the tmpfs: the runtime's job
    assert (image / "opt" / "venv").is_dir()                      # inside an image bind: made in its source
    assert not (root / "opt" / "venv").exists()


def test_rootfs_choices_and_image_layout(tmp_path):
    assert rootfs.RootfsChoice.parse(None) == rootfs.RootfsChoice("host")
    assert rootfs.RootfsChoice.parse("debootstrap").kind == "debootstrap"
    assert rootfs.RootfsChoice.parse("/srv/root") == rootfs.RootfsChoice("directory", "/srv/root")
    assert rootfs.RootfsChoice.parse("debian:bookworm") == rootfs.RootfsChoice("image", "debian:bookworm")
    for name in ("usr", "etc", "var", "proc", "tmp", "root"):
        (tmp_path / name).mkdir()
    (tmp_path / "lib").symlink_to("usr/lib")
    binds, links = rootfs.system_layout(tmp_path)
    assert binds == [f"{tmp_path}/etc:/etc", f"{tmp_path}/usr:/usr", f"{tmp_path}/var:/var"]
    assert links == {"/lib": "usr/lib"}
    host_binds, host_links = rootfs.host_layout()
    assert "/usr" in host_binds and all(not os.path.islink(b) for b in host_binds)
    assert all(os.readlink(k) == v for k, v in host_links.items())
    env_dirs = rootfs.python_environment_dirs()
    assert str(rootfs.project_src_dir()) in env_dirs or any(str(rootfs.project_src_dir()).startswith(d + "/") for d in env_dirs)


def test_engine_choice_and_container_environment():
    assert cn.Container().engine in cn.ENGINES
    assert cn.Container(engine="podman").engine == "podman"
    with pytest.raises(cn.PlatformError):
        cn.Container(engine="lxc")
    with pytest.raises(cn.PlatformError):
        cn.Container(engine="runc", rootfs="debian:bookworm")
    env = cn.container_env(source={"HOME": "/root", "OMP_NUM_THREADS": "7", "SECRET_TOKEN": "x", "LANG": "C.UTF-8",
                                   "E2EBENCH_FOO": "1"})
    assert env["E2EBENCH_IN_CONTAINER"] == "1" and env["PYTHONPATH"] == str(rootfs.project_src_dir())
    assert env["LANG"] == "C.UTF-8" and env["E2EBENCH_FOO"] == "1"
    assert "OMP_NUM_THREADS" not in env and "SECRET_TOKEN" not in env


# ---------------------------------------------------------------------------
# real runc containers with a small payload


@needs_runc
def test_runc_container_sees_its_limits_and_no_network(tmp_path):
    binds, links = rootfs.host_layout()
    readonly = binds + rootfs.python_environment_dirs()
    env = cn.container_env()
    argv = [sys.executable, "-c", PAYLOAD]
    seen = {}
    for mode, quota, cpuset in (("VNL", 1.0, None), ("PIN", None, [HOST_CPUS[-1]]), ("NET", None, None)):
        name = cgroups.cgroup_name(cn.CGROUP_KIND)
        path = cn.runc_cgroups_path(name)
        bundle = cn.make_oci_bundle(tmp_path / mode, argv, env, root=Path("rootfs"), readonly_binds=readonly,
                                    writable_binds=[], quota_cores=quota, cpuset=cpuset, cgroups_path=path,
                                    symlinks=links, network=mode == "NET")
        try:
            seen[mode] = probe_payload(bundle, cn.CONTAINER_PREFIX + name)
        finally:
            subprocess.run(["runc", "delete", "--force", cn.CONTAINER_PREFIX + name], capture_output=True)
        assert [d for d in cn.cgroup_dirs_of(path) if d.exists()] == []
    assert seen["VNL"]["quota"] == 1.0 and seen["VNL"]["cpus"] == HOST_CPUS
    assert seen["PIN"]["quota"] is None and seen["PIN"]["cpus"] == [HOST_CPUS[-1]]
    assert seen["NET"]["net"] == sorted(os.listdir("/sys/class/net"))     # network=True: the host's interfaces
    for s in seen.values():
        assert s["net"] == ["lo"] or s is seen["NET"]
        assert s["in_container"] is True and s["writable_root"] is False
        assert s["python"] == os.path.realpath(sys.executable)       # the host's interpreter
        assert s["root"] == sorted({*os.listdir(tmp_path / "VNL" / "rootfs")})
    assert leftovers(os.getpid()) == []


@needs_runc
def test_probe_reports_every_engine():
    availability = cn.Container().probe()
    engines = availability.details["engines"]
    assert set(engines) == {"runc", "podman", "docker"}
    assert engines["runc"]["installed"] and engines["runc"]["works"], engines["runc"]
    assert availability.usable == engines[availability.details["engine"]]["works"]
    for check in engines.values():
        assert check["reason"]


# ---------------------------------------------------------------------------
# real runs of the worker


@needs_runc
@pytest.mark.parametrize("deployment", ["CN/1/VNL/CPU", "CN/2/PIN/CPU"])
def test_cli_run_in_a_runc_container(tmp_path, ic_data, deployment):
    cores = int(deployment.split("/")[1])
    if cores > len(HOST_CPUS):
        pytest.skip(f"needs {cores} host CPUs")
    store = tmp_path / "r.sqlite"
    rc, result, err, pid = cli_json(["run", "ic", deployment, "--requests", "4", "--data", str(ic_data), "--store",
                                     str(store)] + TINY, env={cn.ENGINE_ENV: "runc"})
    assert rc == 0, err
    assert result["error"] is None and result["completed"] == 4
    plan = cgroups.plan_limits(cores, deployment.split("/")[2], HOST_CPUS)
    if plan.cpus:
        assert result["effective_cpus"] == list(plan.cpus) and result["cpu_quota_cores"] is None
    else:
        assert result["effective_cpus"] == HOST_CPUS and result["cpu_quota_cores"] == pytest.approx(cores)
    assert result["threads"]["torch_intra_op"] == cores
    assert result["environment"]["in_container"] is True and result["environment"]["hostname"] == cn.HOSTNAME
    assert result["cold_start"]["provision_s"] > 0 and result["cold_start"]["process_start_s"] > 0
    assert Path(result["logs_dir"], "mlperf_log_summary.txt").exists()   # written through the writable bind
    with Store(store) as s:
        [row] = s.runs()
        info = row["result"]["platform_info"]
    assert info["engine"] == "runc" and info["container_id"].startswith(f"e2ebench-cn-{pid}-")
    assert info["rootfs"] == "host"
    assert leftovers(pid) == []


@needs_runc
def test_runner_pinned_one_core(tmp_path, ic_data):
    result, info = run_in_session(cn.Container(engine="runc"), "CN/1/PIN/CPU", tmp_path, ic_data)
    assert result["error"] is None, result.get("output_tail")
    assert result["effective_cpus"] == [HOST_CPUS[-1]] and result["bind_cpus"] == [HOST_CPUS[-1]]
    assert info["pinned_cpus"] == [HOST_CPUS[-1]] and info["cgroups_path"].endswith(info["container_id"][len("e2ebench-"):])
    assert leftovers(os.getpid()) == [] and not list(tmp_path.glob("bundle-*"))


@needs_runc
def test_a_hanging_worker_is_killed_at_the_timeout(tmp_path, ic_data):
    """A 1-second budget ends the worker while it still imports torch: killed, removed, reported."""
    t0 = time.monotonic()
    result, info = run_in_session(cn.Container(engine="runc"), "CN/1/PIN/CPU", tmp_path, ic_data, timeout_s=1.0)
    assert "timed out" in result["error"]
    assert time.monotonic() - t0 < 30
    assert not [c for c in cn.runc_containers() if c.get("id") == info["container_id"]]
    assert leftovers(os.getpid()) == []


@needs_runc
def test_ctrl_c_leaves_nothing_behind(tmp_path, ic_data):
    proc = run_cli_popen(["run", "ic", "CN/1/PIN/CPU", "--requests", "2000", "--data", str(ic_data), "--store",
                          str(tmp_path / "r.sqlite"), "--json"] + TINY, env={cn.ENGINE_ENV: "runc"})
    try:
        container = wait_for_container(proc.pid)
        assert container is not None, proc.communicate(timeout=60)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert leftovers(proc.pid) == []
    assert not Path(f"/proc/{container['pid']}").exists()


@needs_runc
def test_leftovers_of_a_killed_runner_are_removed_by_the_next_session(tmp_path, ic_data):
    proc = run_cli_popen(["run", "ic", "CN/1/VNL/CPU", "--requests", "2000", "--data", str(ic_data), "--store",
                          str(tmp_path / "r.sqlite"), "--json"] + TINY, env={cn.ENGINE_ENV: "runc"})
    try:
        container = wait_for_container(proc.pid)
        assert container is not None, proc.communicate(timeout=60)
        proc.kill()       # SIGKILL: no teardown; the container, its cgroups and the bundle stay
        proc.wait()
        assert leftovers(proc.pid)
        removed = cn.remove_stale_containers("runc")
        assert f"runc:{container['id']}" in removed
        assert not [c for c in cn.runc_containers() if c.get("id") == container["id"]]
        assert [x for x in leftovers(proc.pid) if "bundle-" not in x and "specs-" not in x] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for d in glob.glob(os.path.join(tempfile.gettempdir(), "e2ebench-*")):
            if glob.glob(os.path.join(d, f"bundle-cn-{proc.pid}-*")):
                shutil.rmtree(d, ignore_errors=True)   # the dead runner's own temp dir


@needs_runc
def test_debootstrap_root_filesystem(tmp_path, ic_data):
    """The worker runs on a minimal Debian image's libraries with the project's Python bound in."""
    built = rootfs.debootstrap_root_dir(Path.home() / ".cache" / "e2ebench")
    if not rootfs.debootstrap_ready(built.parents[1]):
        if os.environ.get("E2EBENCH_TEST_DEBOOTSTRAP") != "1":
            pytest.skip("no cached debootstrap image; building one takes ~50 s and 200 MB: "
                        "set E2EBENCH_TEST_DEBOOTSTRAP=1 to build it in ~/.cache/e2ebench")
        rootfs.build_debootstrap_root(built.parents[1])
    before = sorted(os.listdir(built))
    result, info = run_in_session(cn.Container(engine="runc", rootfs=str(built)), "CN/1/VNL/CPU", tmp_path, ic_data)
    assert result["error"] is None, result.get("output_tail")
    assert info["rootfs_source"] == str(built) and result["environment"]["in_container"] is True
    assert sorted(os.listdir(built)) == before and os.listdir(built / "tmp") == []   # the cached image stays clean
    assert leftovers(os.getpid()) == []


# ---------------------------------------------------------------------------
# podman and docker


def _podman_reason() -> str | None:
    if not shutil.which("podman"):
        return "podman is not installed"
    check = cn.check_podman()
    return None if check.works else f"podman cannot run a container here: {check.reason}"


@needs_runc
def test_podman_run(tmp_path, ic_data):
    reason = _podman_reason()
    if reason:
        pytest.skip(reason)
    result, info = run_in_session(cn.Container(engine="podman"), "CN/1/VNL/CPU", tmp_path, ic_data)
    assert result["error"] is None, result.get("output_tail")
    assert result["cpu_quota_cores"] == pytest.approx(1.0) and result["effective_cpus"] == HOST_CPUS
    assert result["environment"]["in_container"] is True and info["engine"] == "podman"
    assert result["environment"]["hostname"] == cn.HOSTNAME
    names = subprocess.run(cn.podman_base_argv() + ["ps", "--all", "--format", "{{.Names}}"], capture_output=True,
                           text=True).stdout.split()
    assert info["container_id"] not in names
    assert leftovers(os.getpid()) == []


@pytest.fixture
def docker_daemon():
    """A private dockerd (temp data-root, no iptables, no bridge) for one test; stopped after it."""
    if not (shutil.which("dockerd") and shutil.which("docker")):
        pytest.skip("dockerd / docker CLI not installed")
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root")
    base = Path(tempfile.mkdtemp(prefix="e2ebench-dockerd-", dir="/tmp"))
    host = f"unix://{base}/docker.sock"
    nofile = resource_limits()
    log = open(base / "dockerd.log", "w")
    proc = subprocess.Popen(
        ["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none", "--data-root", str(base / "data"),
         "--exec-root", str(base / "exec"), "--pidfile", str(base / "dockerd.pid"), "-H", host,
         "--default-ulimit", f"nofile={nofile}:{nofile}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if cn.check_docker(host).works:
                break
            time.sleep(0.3)
        else:
            pytest.skip(f"dockerd did not start here: {(base / 'dockerd.log').read_text()[-400:]}")
        yield host
    finally:
        subprocess.run(["docker", "-H", host, "rm", "--force", *subprocess.run(
            ["docker", "-H", host, "ps", "-aq"], capture_output=True, text=True).stdout.split()], capture_output=True)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def resource_limits() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@needs_runc
def test_docker_run(tmp_path, ic_data, docker_daemon):
    result, info = run_in_session(cn.Container(engine="docker", docker_host=docker_daemon), "CN/1/PIN/CPU", tmp_path,
                                  ic_data)
    assert result["error"] is None, result.get("output_tail")
    assert result["effective_cpus"] == [HOST_CPUS[-1]] and result["cpu_quota_cores"] is None
    assert result["environment"]["in_container"] is True and result["environment"]["hostname"] == cn.HOSTNAME
    assert info["engine"] == "docker" and info["image"].startswith("e2ebench/hostroot:")
    ps = subprocess.run(["docker", "-H", docker_daemon, "ps", "-aq"], capture_output=True, text=True)
    assert ps.stdout.split() == []
    assert leftovers(os.getpid()) == []
