"""`orloj-rt sim --policy-param`: values, scoping, and the one-line errors."""

from __future__ import annotations

import json

import pytest

from orloj_rt.cli import main
from orloj_rt.sim.policy_params import accepted_keys, parse_value, split_param

ARGS = ["sim", "--workload", "bimodal", "--slo-mult", "3", "--load", "2", "--requests", "150",
        "--prior-samples", "1000"]


@pytest.mark.parametrize("text, value", [
    ("true", True), ("False", False), ("none", None), ("3", 3), ("-2", -2), ("0.8", 0.8),
    ("1e-3", 1e-3), ("2,4,8", [2, 4, 8]), ("density", "density"),
])
def test_values(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value)


def test_split_and_keys():
    assert split_param("theta=0.8") == (None, "theta", 0.8)
    assert split_param("orloj+hint:hint_classes=4") == ("orloj+hint", "hint_classes", 4)
    for bad in ("theta", "=1", "theta=", ":theta=1", "the ta=1"):
        with pytest.raises(ValueError):
            split_param(bad)
    assert {"theta", "epsilon", "pools"} <= set(accepted_keys("orloj"))  # native: pure twin's
    assert "history" in accepted_keys("clockwork")
    assert {"theta", "end_epsilon", "learn"} <= set(accepted_keys("oracle-step"))  # *kwargs
    for hinted in ("orloj", "orloj+hint", "orloj-step", "sjf-hint"):  # the core reads it
        assert "hint_classes" in accepted_keys(hinted), hinted
    assert "hint_classes" not in accepted_keys("fifo")
    for name in ("orloj", "fifo", "orloj-step"):
        assert not {"max_batch", "alpha", "inflation", "step"} & set(accepted_keys(name))


def test_params_reach_the_policies(capsys):
    assert main(ARGS + ["--json", "--policies", "orloj,fifo,clockwork",
                        "--policy-param", "epsilon=0.05", "--policy-param", "orloj:theta=0.7",
                        "--policy-param", "fifo:preferred_batch_sizes=4,8",
                        "--policy-param", "history=3"]) == 0
    params = json.loads(capsys.readouterr().out)["config"]["policy_params"]
    assert params == {"orloj": {"epsilon": 0.05, "theta": 0.7},
                      "fifo": {"preferred_batch_sizes": [4, 8]}, "clockwork": {"history": 3}}
    # they change what the policy does: theta near 1 makes orloj far stricter
    main(ARGS + ["--json", "--policies", "orloj"])
    base = json.loads(capsys.readouterr().out)["policies"]["orloj"]
    main(ARGS + ["--json", "--policies", "orloj", "--policy-param", "theta=0.999"])
    strict = json.loads(capsys.readouterr().out)["policies"]["orloj"]
    assert strict != base


@pytest.mark.parametrize("param, said", [
    ("foo=1", "--policy-param foo=1: no policy of this cell has the key 'foo'; accepted keys: "
              "orloj: theta"),
    ("orloj:foo=1", "--policy-param orloj:foo=1: policy orloj has no key 'foo'; accepted keys: "
                    "theta, epsilon"),
    ("theta=2", "--policy-param theta=2: a bad value for policy orloj: theta"),
    ("theta=abc", "--policy-param theta=abc: a bad value for policy orloj"),
    ("history=2.5", "--policy-param history=2.5: a bad value for policy clockwork: history"),
    ("theta", "--policy-param 'theta' is not KEY=VALUE; give [POLICY:]KEY=VALUE"),
    ("lifo:theta=1", "policy 'lifo' is not in this cell"),
    ("max_batch=4", "give --max-batch instead"),
])
def test_errors_exit_2_with_one_line(capsys, param, said):
    assert main(ARGS + ["--policy-param", param]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1, err


def test_hint_and_step_policies_take_their_keys(capsys):
    assert main(ARGS + ["--json", "--policies", "orloj+hint", "--hint-cv", "0.3",
                        "--policy-param", "hint_classes=4"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["policy_params"] == {
        "orloj+hint": {"hint_classes": 4}}
    assert main(ARGS + ["--policies", "orloj+hint", "--hint-cv", "0.3",
                        "--policy-param", "hint_classes=-1"]) == 2
    assert "hint_classes must be an integer >= 0" in capsys.readouterr().err
    assert main(ARGS + ["--batching", "step", "--policies", "orloj-step",
                        "--policy-param", "end_epsilon=7"]) == 2
    assert "a bad value for policy orloj-step: end_epsilon" in capsys.readouterr().err
