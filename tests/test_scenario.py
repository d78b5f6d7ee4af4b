import dataclasses

import pytest

from e2ebench.scenario import Deployment, HostFacts, NotationError, Scenario, infeasibility


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("BM/4/PIN/CPU", "BM/4/PIN/CPU"),
        ("vm/32/vnl/gpu", "VM/32/VNL/GPU"),
        (" Cn / 2 / Pin / cpu ", "CN/2/PIN/CPU"),
        ("MVM/16/VNL/CPU", "MVM/16/VNL/CPU"),
        ("vmcn/64/PIN/CPU", "VMCN/64/PIN/CPU"),
    ],
)
def test_deployment_parse_and_format(text, canonical):
    d = Deployment.parse(text)
    assert str(d) == canonical
    assert Deployment.parse(str(d)) == d
    assert Deployment.from_dict(d.as_dict()) == d


@pytest.mark.parametrize(
    "text, names",
    [
        ("XX/4/PIN/CPU", ["'XX'", "BM, CN, VM, MVM, VMCN"]),
        ("BM/four/PIN/CPU", ["'four'", "whole number"]),
        ("BM/0/PIN/CPU", ["'0'"]),
        ("BM/-1/PIN/CPU", ["'-1'"]),
        ("BM/4/PINNED/CPU", ["'PINNED'", "VNL, PIN"]),
        ("BM/4/PIN/TPU", ["'TPU'", "CPU, GPU"]),
        ("BM/4/PIN", ["3 part", "PLATFORM/CORES/CPUMODE/DEVICE"]),
        ("BM/4/PIN/CPU/extra", ["5 part"]),
        ("", ["empty"]),
    ],
)
def test_deployment_errors_name_the_bad_part(text, names):
    with pytest.raises(NotationError) as info:
        Deployment.parse(text)
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_scenario_parse_and_format():
    s = Scenario.parse("IC@bm/2/pin/cpu")
    assert str(s) == "ic@BM/2/PIN/CPU"
    assert s.mode == "e2e"
    s2 = Scenario.parse("nlp@VM/4/VNL/GPU#inference-only")
    assert s2.mode == "inference-only"
    assert str(s2) == "nlp@VM/4/VNL/GPU#inference-only"
    assert Scenario.parse(str(s2)) == s2


@pytest.mark.parametrize("text", ["ic", "ic@", "@BM/1/VNL/CPU", "ic@BM/1/VNL/CPU#fast", "i c@BM/1/VNL/CPU"])
def test_scenario_errors(text):
    with pytest.raises(NotationError):
        Scenario.parse(text)


def test_feasibility_rules():
    host = HostFacts(cores=8, gpus=0, available_platforms=frozenset({"BM", "CN"}),
                     platform_reasons=(("VM", "no qemu"),))
    ok = Deployment.parse("BM/8/PIN/CPU")
    assert infeasibility(ok, host) is None
    assert "host has 8" in infeasibility(Deployment.parse("BM/16/PIN/CPU"), host)
    assert "MVM supports only VNL/CPU" in infeasibility(Deployment.parse("MVM/4/PIN/CPU"), host)
    assert "MVM supports only VNL/CPU" in infeasibility(Deployment.parse("MVM/4/VNL/GPU"), host)
    assert infeasibility(Deployment.parse("CN/4/PIN/GPU"), host).startswith("CN ")     # CN's own GPU reason
    assert "no qemu" in infeasibility(Deployment.parse("VM/4/PIN/CPU"), host)
    gpu_host = HostFacts(cores=8, gpus=1, available_platforms=frozenset({"BM"}))
    assert infeasibility(Deployment.parse("BM/4/PIN/GPU"), gpu_host) is None


@pytest.mark.parametrize(
    "text, canonical, mode, cache",
    [
        ("ic@BM/2/PIN/CPU", "ic@BM/2/PIN/CPU", "e2e", "warm"),
        ("ic@BM/2/PIN/CPU#inference-only", "ic@BM/2/PIN/CPU#inference-only", "inference-only", "warm"),
        ("ic@BM/2/PIN/CPU#cold-cache", "ic@BM/2/PIN/CPU#cold-cache", "e2e", "cold"),
        ("IC@bm/2/pin/cpu#Cold-Cache", "ic@BM/2/PIN/CPU#cold-cache", "e2e", "cold"),
        ("ic@BM/2/PIN/CPU#warm-cache", "ic@BM/2/PIN/CPU", "e2e", "warm"),
        ("ic@BM/2/PIN/CPU#e2e#cold-cache", "ic@BM/2/PIN/CPU#cold-cache", "e2e", "cold"),
        ("ic@BM/2/PIN/CPU#inference-only#warm-cache", "ic@BM/2/PIN/CPU#inference-only", "inference-only", "warm"),
    ],
)
def test_scenario_cache_notation(text, canonical, mode, cache):
    s = Scenario.parse(text)
    assert (s.mode, s.cache) == (mode, cache)
    assert str(s) == canonical
    assert Scenario.parse(str(s)) == s


def test_cache_is_part_of_the_identity():
    warm, cold = Scenario.parse("ic@BM/2/PIN/CPU"), Scenario.parse("ic@BM/2/PIN/CPU#cold-cache")
    assert warm != cold and warm.key != cold.key
    assert warm == Scenario(warm.app, warm.deployment) and warm.cache == "warm"
    assert str(Scenario("ic", Deployment.parse("BM/2/PIN/CPU"), cache="cold")) == "ic@BM/2/PIN/CPU#cold-cache"


@pytest.mark.parametrize(
    "text, names",
    [
        ("ic@BM/2/PIN/CPU#inference-only#cold-cache", ["cold cache has no effect in inference-only mode: no io is timed"]),
        ("ic@BM/2/PIN/CPU#cold-cache#inference-only", ["cold cache has no effect in inference-only mode"]),
        ("ic@BM/2/PIN/CPU#hot-cache", ["'#hot-cache'", "#cold-cache", "#inference-only"]),
        ("ic@BM/2/PIN/CPU#cold-cache#warm-cache", ["cache state twice"]),
        ("ic@BM/2/PIN/CPU#e2e#inference-only", ["mode twice"]),
    ],
)
def test_scenario_cache_errors(text, names):
    with pytest.raises(NotationError) as info:
        Scenario.parse(text)
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_scenario_constructor_checks_the_cache():
    d = Deployment.parse("BM/1/VNL/CPU")
    with pytest.raises(NotationError, match="unknown cache state 'hot'; accepted: warm, cold"):
        Scenario("ic", d, cache="hot")
    with pytest.raises(NotationError, match="no io is timed"):
        Scenario("ic", d, "inference-only", "cold")


# -- platforms as plugins: each class decides its own feasibility ----------------------------------------------


def test_registry_lists_the_built_ins_in_their_order():
    import tomllib
    from pathlib import Path

    from e2ebench.platforms import PLATFORM_CLASSES, platform_classes
    from e2ebench.scenario import PLATFORMS, PLATFORM_TITLES

    classes = platform_classes()
    assert list(classes)[:5] == ["BM", "CN", "VM", "MVM", "VMCN"] and PLATFORMS[:5] == ("BM", "CN", "VM", "MVM", "VMCN")
    assert [c.order for c in classes.values()] == sorted(c.order for c in classes.values())
    assert PLATFORM_TITLES["VMCN"] == "container in VM" and classes["VM"].guest and not classes["CN"].guest
    assert all(c.name == c.NAME == name for name, c in classes.items())
    # the built-ins are registered under the entry-point group too, exactly as the in-code table says
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["e2ebench.platforms"] == PLATFORM_CLASSES


def test_unknown_platform_names_the_registered_ones():
    from e2ebench.platforms import PlatformError, get_platform_class

    with pytest.raises(PlatformError, match="unknown platform 'QQ'; accepted: BM, CN, VM, MVM, VMCN"):
        get_platform_class("QQ")


def test_infeasibility_is_the_platforms_own_rule():
    from e2ebench.platforms import platform_classes

    host = HostFacts(cores=8, gpus=0, available_platforms=frozenset({"BM", "CN", "VM", "MVM", "VMCN"}),
                     gpu_reason="torch 2.13.0+cpu is a CPU build (torch.version.cuda is None)")
    for name, cls in platform_classes().items():
        for text in (f"{name}/4/PIN/GPU", f"{name}/4/VNL/CPU", f"{name}/16/PIN/CPU"):
            d = Deployment.parse(text)
            assert infeasibility(d, host) == cls.supports(d, host)
    # GPU: every GPU platform gives its own reason (BM's carries the host's gpu_reason; CN, VM and VMCN also look
    # at their own GPU path: device nodes for the engine, VFIO)
    assert infeasibility(Deployment.parse("BM/4/PIN/GPU"), host) == (
        "BM has no usable GPU here: torch 2.13.0+cpu is a CPU build (torch.version.cuda is None)")
    for name in ("CN", "VM", "VMCN"):
        reason = infeasibility(Deployment.parse(f"{name}/4/PIN/GPU"), host)
        assert reason.startswith(f"{name} ") and "GPU" in reason
    # MVM: a design limit, whatever the host (the paper's reason)
    gpu_host = HostFacts(cores=8, gpus=1, available_platforms=host.available_platforms, gpu_names=("H200",))
    for text in ("MVM/4/VNL/GPU", "MVM/4/PIN/CPU"):
        reason = infeasibility(Deployment.parse(text), gpu_host)
        assert "MVM supports only VNL/CPU" in reason and "Firecracker has no GPU passthrough" in reason
        assert "no PCI" in reason
    assert infeasibility(Deployment.parse("BM/4/PIN/GPU"), gpu_host) is None
    # an unavailable platform: the probe's reason
    down = HostFacts(cores=8, available_platforms=frozenset({"BM"}), platform_reasons=(("CN", "runc missing"),))
    assert infeasibility(Deployment.parse("CN/2/PIN/CPU"), down) == "platform CN unavailable: runc missing"


def test_detected_gpu_facts_agree_with_torch():
    """HostFacts.detect counts a GPU only when torch.cuda sees it, and otherwise says why."""
    import torch

    host = HostFacts.detect()
    usable = torch.version.cuda is not None and torch.cuda.is_available()
    assert host.gpus == (torch.cuda.device_count() if usable else 0)
    if not usable:
        assert host.gpu_reason and host.gpu_names == ()
        if torch.version.cuda is None:
            assert "CPU build" in host.gpu_reason or "no NVIDIA device node" in host.gpu_reason


def test_gpu_facts_name_every_missing_part():
    from e2ebench.gpu import gpu_facts

    facts = gpu_facts(import_torch=True)
    import torch

    assert facts.torch_version == torch.__version__ and facts.cuda_version == torch.version.cuda
    if not facts.usable:
        if torch.version.cuda is None:
            assert "is a CPU build (torch.version.cuda is None)" in facts.reason
        if not facts.device_nodes:
            assert "no NVIDIA device node" in facts.reason


def test_a_gpu_scenario_says_its_gpu_reason_before_the_core_shortfall():
    host = HostFacts(cores=2, gpus=0, available_platforms=frozenset({"BM"}), gpu_reason="no NVIDIA device node")
    assert infeasibility(Deployment.parse("BM/16/PIN/GPU"), host) == (
        "BM has no usable GPU here: no NVIDIA device node; also 16 cores requested but the host has 2")
    assert infeasibility(Deployment.parse("BM/16/PIN/CPU"), host) == "16 cores requested but the host has 2"
    gpu_host = dataclasses.replace(host, gpus=1, gpu_reason="")
    assert infeasibility(Deployment.parse("BM/16/PIN/GPU"), gpu_host) == "16 cores requested but the host has 2"
