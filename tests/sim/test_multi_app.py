"""Multi-app cells: the --apps grammar and its errors, the requests, and the per-app output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from orloj_rt.cli import main
from orloj_rt.sim import SimConfig, WorkloadSpec, generate, run
from orloj_rt.sim.mix import AppSpec, format_apps, parse_apps
from orloj_rt.sim.workloads import MIX

SPEC = "short:bimodal:slo=2:share=0.7,long:lognormal:slo=10:share=0.3"
SMALL = ["--load", "2", "--requests", "300", "--prior-samples", "2000", "--seed", "3"]


def test_the_grammar():
    short, long = parse_apps(SPEC)
    assert short == AppSpec("short", "bimodal", slo=2.0, share=0.7)
    assert long == AppSpec("long", "lognormal", slo=10.0, share=0.3)
    # shares left out split the rest; slo falls back to --slo-mult; mean scales the law
    a, b, c = parse_apps("a:static:share=0.5,b:bimodal:mean=0.25,c:lognormal:slo=9",
                         default_slo=4)
    assert (a.share, b.share, c.share) == pytest.approx((0.5, 0.25, 0.25))
    assert (a.slo, b.slo, c.slo) == (4.0, 4.0, 9.0)
    assert b.mean == 0.25 and b.slo_units == pytest.approx(1.0)
    assert parse_apps(" x:static:slo=3 ") == (AppSpec("x", "static", 3.0, 1.0),)
    assert parse_apps(format_apps((a, b, c))) == (a, b, c)


@pytest.mark.parametrize("text, said", [
    ("", "--apps is empty"),
    ("short", "is not NAME:WORKLOAD"),
    ("short:slo=2", "unknown workload 'slo=2'"),
    ("short:gauss:slo=2", "unknown workload 'gauss'"),
    ("short:bimodal:sla=2", "unknown key 'sla'; the keys are slo, share, mean"),
    ("short:bimodal:slo", "'slo' is not KEY=VALUE"),
    ("short:bimodal:slo=x", "slo must be a number > 0"),
    ("short:bimodal:slo=0", "slo must be a number > 0"),
    ("short:bimodal:slo=2:share=1.5", "share must be a number in (0, 1]"),
    ("short:bimodal:slo=2:mean=-1", "mean must be a number > 0"),
    ("short:bimodal:slo=2:slo=3", "slo is given twice"),
    ("a b:bimodal:slo=2", "app name 'a b'"),
    ("a:bimodal:slo=2,a:static:slo=2", "'a' appears twice"),
    ("a:bimodal:slo=2,,b:static:slo=2", "app 2 is empty"),
    ("a:bimodal:slo=2:share=0.7,b:static:slo=2:share=0.2", "sum to 0.9, not 1"),
    ("a:bimodal:slo=2:share=1,b:static:slo=2", "leaving nothing for b"),
    ("a:bimodal", "app 'a' has no SLO: add :slo=S"),
])
def test_grammar_errors_name_the_part_and_the_fix(text, said):
    with pytest.raises(ValueError, match=None) as err:
        parse_apps(text)
    assert said in str(err.value) and "\n" not in str(err.value)


def test_requests_carry_their_app_slo_and_law():
    mix = parse_apps("light:bimodal:slo=3:share=0.8:mean=0.25,heavy:lognormal:slo=10:share=0.2")
    spec = WorkloadSpec(solo=MIX, load=2, requests=20_000, seed=1, prior_samples=20_000,
                        app_mix=mix)
    r = generate(spec)
    apps = np.asarray(r.app)
    light, heavy = apps == "light", apps == "heavy"
    assert light.mean() == pytest.approx(0.8, abs=0.01)
    assert np.allclose((r.deadline - r.arrival)[light], 0.75)  # slo 3 x mean 0.25
    assert np.allclose((r.deadline - r.arrival)[heavy], 10.0)
    assert r.solo[light].mean() == pytest.approx(0.25, rel=0.02)
    assert r.solo[heavy].mean() == pytest.approx(1.0, rel=0.05)
    assert r.prior.mean() == pytest.approx(0.8 * 0.25 + 0.2, rel=0.05)  # the mixture
    assert np.all(np.diff(r.arrival) >= 0)
    again = generate(spec)
    assert again.app == r.app and np.array_equal(again.solo, r.solo)


def test_a_mix_needs_solo_mix_and_no_hints():
    mix = parse_apps(SPEC)
    with pytest.raises(ValueError, match="solo='mix'"):
        WorkloadSpec(solo="bimodal", app_mix=mix)
    with pytest.raises(ValueError, match="not supported in a multi-app cell"):
        WorkloadSpec(solo=MIX, app_mix=mix, hint_cv=0.3)
    # a single-app cell is unchanged by the new field
    assert generate(WorkloadSpec(requests=50)).app == ["default"] * 50


def test_run_gives_per_app_metrics():
    spec = WorkloadSpec(solo=MIX, load=2, requests=300, prior_samples=2000,
                        app_mix=parse_apps(SPEC))
    out = run(SimConfig(workload=spec, policies=("edf", "fifo")))
    assert out["config"]["solo"] == "mix" and out["config"]["slo"] is None
    assert [a["name"] for a in out["config"]["app_mix"]] == ["short", "long"]
    for m in out["policies"].values():
        apps = m["apps"]
        assert list(apps) == ["short", "long"]
        assert sum(a["requests"] for a in apps.values()) == 300
        on_time = sum(a["finished"] for a in apps.values())
        assert on_time == round(m["finish_rate"] * 300)
        for a in apps.values():
            assert a["completed"] + a["dropped"] + a["rejected"] == a["requests"]
            assert a["finish_rate"] == pytest.approx(a["finished"] / a["requests"])


def test_cli_json_has_per_app_fields(capsys):
    assert main(["sim", "--apps", SPEC, *SMALL, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["app_mix"][0] == {"name": "short", "workload": "bimodal", "slo": 2.0,
                                           "share": 0.7, "mean": 1.0, "slo_units": 2.0}
    assert list(out["policies"]) == ["orloj", "fifo", "edf", "nexus", "clockwork", "oracle"]
    for m in out["policies"].values():
        assert set(m["apps"]) == {"short", "long"}
        for a in m["apps"].values():
            assert {"requests", "finished", "finish_rate", "completed", "late", "dropped",
                    "rejected", "p50_latency", "p99_latency"} <= set(a)


def test_cli_table_shows_each_app(capsys):
    assert main(["sim", "--apps", SPEC, *SMALL, "--policies", "orloj,edf"]) == 0
    table = capsys.readouterr().out
    assert "workload=mix load=2" in table and "finish by app" in table
    assert "short: bimodal x 1, slo 2" in table and "\nedf " in table


def test_cli_slo_mult_is_the_default_slo(capsys):
    assert main(["sim", "--apps", "a:static,b:bimodal:slo=9", "--slo-mult", "4", *SMALL,
                 "--json", "--policies", "edf"]) == 0
    mix = json.loads(capsys.readouterr().out)["config"]["app_mix"]
    assert [a["slo"] for a in mix] == [4.0, 9.0] and [a["share"] for a in mix] == [0.5, 0.5]


@pytest.mark.parametrize("args, said", [
    (["--apps", SPEC, "--workload", "bimodal"], "--apps and --workload exclude each other"),
    (["--apps", SPEC, "--hint-cv", "0.3"], "--hint-cv is not supported with --apps"),
    (["--apps", "a:bimodal:sla=2"], "unknown key 'sla'"),
    (["--workload", "bimodal"], "required: --slo-mult (or give --apps SPEC"),
    (["--slo-mult", "3"], "required: --workload"),
])
def test_cli_errors_exit_2_with_one_line(capsys, args, said):
    assert main(["sim", *SMALL, *args]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1 and err.startswith("orloj-rt sim: ")
