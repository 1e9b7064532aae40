"""`orloj-rt start --policy-param`: bad ones stop the start with one line (exit 2, before
any process starts); good ones reach the scheduler's policy."""

from __future__ import annotations

import pytest

from orloj_rt.cli import build_parser
from orloj_rt.cli._server_args import options_from_args

from ..runtime.helpers import light_repo, run_cli


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return light_repo(tmp_path_factory.mktemp("repo"))  # noop and sleep: no steps


@pytest.mark.parametrize("extra, said", [
    (["--policy-param", "foo=1"],
     "--policy-param foo=1: policy orloj has no key 'foo'; accepted keys: theta, epsilon"),
    (["--policy-param", "theta=1.5"],
     "--policy-param theta=1.5: a bad value for policy orloj (model noop, max batch 256): theta"),
    (["--policy-param", "theta=high"],
     "--policy-param theta=high: a bad value for policy orloj (model noop"),
    (["--policy-param", "theta"],
     "--policy-param 'theta' is not KEY=VALUE; give KEY=VALUE, e.g. --policy-param theta=0.8 "
     "(policy orloj accepts: theta, epsilon"),
    (["--policy", "fifo", "--policy-param", "theta=0.8"],
     "--policy-param theta=0.8: policy fifo has no key 'theta'; accepted keys: max_queue_delay"),
    (["--policy", "clockwork", "--policy-param", "history=0"],
     "--policy-param history=0: a bad value for policy clockwork (model noop, max batch 256): "
     "history must be an integer"),
    # a model without steps is served by orloj for orloj-step: orloj must take the key too
    (["--policy", "orloj-step", "--policy-param", "end_epsilon=0.05"],
     "policy orloj (it serves model noop, which has no steps, for orloj-step) has no key "
     "'end_epsilon'"),
])
def test_bad_params_exit_2_with_one_line(repo, extra, said):
    done = run_cli("start", "--models", str(repo), "--cpu-workers", "1", *extra, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("orloj-rt start: ")]
    assert len(lines) == 1 and said in lines[0], done.stderr
    assert "serving on" not in done.stdout


def options(repo, *extra):
    args = build_parser().parse_args(["start", "--models", str(repo), "--cpu-workers", "1",
                                      *extra])
    return options_from_args(args)


def test_good_params_reach_the_scheduler_policy(repo):
    from orloj_rt.protocol.messages import ModelProfile
    from orloj_rt.serving.model import ModelCore

    opts, code = options(repo, "--policy-param", "theta=0.8", "--policy-param",
                         "epsilon=0.05", "--policy-param", "fallback=false")
    assert code == 0
    assert {"theta": 0.8, "epsilon": 0.05, "fallback": False}.items() <= \
        opts.policy_params.items()
    # as the supervisor hands them on (InstanceConfig.policy_params) to the scheduler's
    # serving core
    entry = opts.models[0]
    mq = ModelCore(0, entry.spec, opts.policy, dict(opts.policy_params))
    b = entry.spec.max_batch_size
    mq.configure(ModelProfile([0.001, 0.002], [1.0 + 0.1 * i for i in range(b)], None))
    assert mq.policy.theta == pytest.approx(0.8) and mq.policy.epsilon == pytest.approx(0.05)


def test_no_params_and_other_policies(repo):
    opts, code = options(repo)
    assert code == 0 and not {k for k in opts.policy_params if k != "max_apps"}
    opts, code = options(repo, "--policy", "fifo", "--policy-param", "max_queue_delay=0.002",
                         "--policy-param", "preferred_batch_sizes=1,")
    assert code == 0
    assert opts.policy_params["max_queue_delay"] == 0.002
    assert opts.policy_params["preferred_batch_sizes"] == [1]  # a one-item list
    opts, code = options(repo, "--policy", "orloj", "--policy-param", "orloj:theta=0.5")
    assert code == 0 and opts.policy_params["theta"] == 0.5


def test_values_are_checked_against_every_model(repo, capsys):
    # the sleep model's maximum batch is 1: a preferred size of 4 cannot be used there
    opts, code = options(repo, "--policy", "fifo", "--policy-param",
                         "preferred_batch_sizes=2,4")
    assert opts is None and code == 2
    err = capsys.readouterr().err
    assert err.startswith("orloj-rt start: --policy-param preferred_batch_sizes=2,4: a bad "
                          "value for policy fifo (model sleep, max batch 1): ")


def test_other_policy_scope_is_refused(repo, capsys):
    opts, code = options(repo, "--policy-param", "fifo:max_queue_delay=1")
    assert opts is None and code == 2
    assert "the server runs policy orloj, not fifo" in capsys.readouterr().err


def test_fairness_flag_reaches_orloj_and_is_checked(repo, capsys):
    from orloj_rt.protocol.messages import ModelProfile
    from orloj_rt.serving.model import ModelCore

    opts, code = options(repo, "--fairness", "2")
    assert code == 0 and opts.policy_params["fairness"] == 2.0
    entry = opts.models[0]
    mq = ModelCore(0, entry.spec, opts.policy, dict(opts.policy_params))
    b = entry.spec.max_batch_size
    mq.configure(ModelProfile([0.001, 0.002], [1.0 + 0.1 * i for i in range(b)], None))
    assert mq.policy._fairness == pytest.approx(2.0)  # orloj built as the utility policy
    for extra, said in ((["--fairness", "-1"], "--fairness -1: give a gain above 0"),
                        (["--fairness", "2", "--policy", "fifo"],
                         "--fairness 2: policy fifo has no fairness across apps"),
                        (["--fairness", "2", "--policy-param", "fairness=1"],
                         "--fairness and --policy-param fairness=... both given")):
        opts, code = options(repo, *extra)
        assert opts is None and code == 2
        assert said in capsys.readouterr().err
