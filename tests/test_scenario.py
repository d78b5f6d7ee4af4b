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
    assert "no GPU" in infeasibility(Deployment.parse("CN/4/PIN/GPU"), host)
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
