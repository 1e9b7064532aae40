"""End-to-end finish rate: the real runtime, real models, the same load under every policy.

    .venv/bin/python bench/e2e_finish_rate.py                    # the sweep: a table
    .venv/bin/python bench/e2e_finish_rate.py --quick            # a reduced sweep, < 3 min
    .venv/bin/python bench/e2e_finish_rate.py --json             # one JSON object
    .venv/bin/python bench/e2e_finish_rate.py --out docs/results/e2e_finish_rate   # + PNG
    .venv/bin/python bench/e2e_finish_rate.py --hints --out docs/results/e2e_hints  # issue 15
    .venv/bin/python bench/e2e_finish_rate.py --variants                 # issue 17

For each model (one at a time) it starts one server per policy (`orloj-rt start --models
REPO --cpu-workers 1 --policy P`: frontend, scheduler, one CPU worker), one after another,
and runs them side by side. Each gets the same unmeasured warm-up, from which its
scheduler learns the model's mean solo time; the median over the servers sets the cells:
SLO = multiple x mean, rate = load / mean (as the simulator's units do). Every cell's
open-loop Poisson load is the same seeded requests for every policy; it is cut into
chunks of a few seconds of arrivals, and the policies take turns chunk by chunk, starting
with a different one each time, so that other jobs on a shared machine hit every policy
alike.

- `early_exit`: bimodal exit depths: 80% exit after 2 layers, 20% run all 12; token
  length uniform 8..32 (orloj_rt/models/load_inputs.py).
- `generate`: lengths from the `GeneratedTokens` column of the Azure LLM conversation
  trace 2023 (../shared/data/azure-llm-2023/conv.csv), rows drawn at random, divided by 8:
  mean 27 tokens, CoV 0.76, 1..125.

Finish rate: answered ok within the SLO / requests sent. `scheduler_cpu`: the scheduler
process's CPU time (user + system, psutil) over the cell's wall time, as a share of one
core. The load generator runs in this process, on the same machine as the server.

Targets (issue 5): for early_exit and generate, at every cell where fifo finishes 20-60%,
orloj finishes >= 1.5x fifo and at least as much as the best other baseline; the
scheduler's share of one core < 25% at the highest load of the sweep.

`--hints` (issue 15): cost hints end to end. Policies orloj (which files hinted requests
under hint classes, orloj_rt/serving/hints.py), `orloj-nohint` (this script's label for
orloj started with `--policy-param hint_classes=0`), sjf-hint, fifo, nexus, clockwork;
models:

- `seq_encoder`: lengths from the trace's `ContextTokens` column, rows drawn at random,
  divided by 16 (mean 72 tokens, CoV 0.93, 1..256); its solo time follows its length.
  The client sends no hint: the server derives it (`hint = "length(tokens)"`).
- `generate` as above; each request carries a client hint: its true output length (the
  tokens it generates) x an independent LogNormal noise factor of mean 1 and CoV 0.6,
  drawn from a seeded stream of its own, so every policy sees the same hints.
- `early_exit` as above, without hints (the control: orloj against orloj-nohint).

`--variants` (issue 17): accuracy scaling end to end. early_exit (bimodal depths, as
above) on two orloj servers: `orloj` serves it without variants (its repository says
`variants = []`), `orloj+variants` with its built-in variants (`full`, `half`: at most 6
layers, `quarter`: at most 3; declared accuracies 1.0, 0.93, 0.85). Its capacity is
measured first on the `orloj` server: the ok replies per second under a saturating load
(4x the rate of one mean solo time) with an SLO no request misses. Each cell sends 2x that
capacity. Answered within SLO: ok and within its SLO / requests sent; `mean_accuracy`: the
declared accuracy of the variant that served each request answered within its SLO
(1.0 without variants); `utility`: their sum / requests sent. Target (issue 17):
orloj+variants answers >= 1.5x as many requests within their SLO as orloj.

After every cell, the orloj and sjf-hint servers' `stats` give the hint classes fitted and
each class's mean solo time learned so far (`hint_stats` in the JSON). Targets (issue 15):
for seq_encoder and generate, where fifo finishes 20-60%, orloj >= 2x fifo, >= 1.5x the
best of nexus and clockwork, >= 1.1x sjf-hint; for early_exit, orloj no worse than
orloj-nohint within noise (two binomial standard errors of the difference, at least 0.03).
Each hinted cell's `reach` bounds every policy's finish rate there: after the warm-up the
fifo server answers requests of PROBE_WORKS works alone (`probe_floors`), which gives a
floor under the latency of a request by its work, and `reach` is the share of the cell's
requests whose floor is within the SLO. A check that asks for more than the reach (or
more than 1) is out of reach of every policy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orloj_rt.client import Client  # noqa: E402
from orloj_rt.client.loadgen import arrival_times, read_trace, run_open_loop  # noqa: E402
from orloj_rt.models.builtin import BUILTIN_MODELS  # noqa: E402
from orloj_rt.models.load_inputs import make_inputs  # noqa: E402
from orloj_rt.runtime.launcher import ServerProcess  # noqa: E402
from orloj_rt.serving.hints import CLASS_SEPARATOR  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT.parent / "shared" / "data" / "azure-llm-2023" / "conv.csv"
POLICIES = ("orloj", "fifo", "edf", "nexus", "clockwork")
BASELINES = ("fifo", "edf", "nexus", "clockwork")
APP = "e2e"
FIFO_BAND = (0.2, 0.6)
TARGET_VS_FIFO = 1.5
TARGET_SCHED_CPU = 0.25

# `--step` (issue 8): whole-batch orloj against step-level batching
STEP_POLICIES = ("orloj", "fcfs-step", "orloj-step")
ORLOJ_BAND = (0.2, 0.6)  # cells where whole-batch orloj finishes 20-60%: orloj-step >= 2x
TARGET_STEP_VS_ORLOJ = 2.0
TARGET_STEP_VS_FCFS = 3.0  # at 2x overload of the step capacity
TARGET_STEP_OVERHEAD = 0.05  # per-step coordination, of the step time

# `--hints` (issue 15): cost hints end to end
HINT_POLICIES = ("orloj", "orloj-nohint", "sjf-hint", "fifo", "nexus", "clockwork")
#: labels of this script that run a policy with parameters: label -> server arguments
POLICY_ARGS = {"orloj-nohint": ("--policy", "orloj", "--policy-param", "hint_classes=0")}
HINT_CLASS_POLICIES = ("orloj", "sjf-hint", "orloj-nohint")  # hint classes recorded (nohint: none)
HINT_NOISE_COV = 0.6  # generate's client hints: true length x LogNormal(mean 1, CoV 0.6)
HINT_NOISE_STREAM = 15  # appended to a cell's seed key: the noise's own stream
HINT_TARGET_VS_FIFO = 2.0
HINT_TARGET_VS_NEXUS_CLOCKWORK = 1.5
HINT_TARGET_VS_SJF = 1.1
#: `--hints`: the works probed alone after the warm-up (at quantiles of the model's
#: requests), each this many times, for each cell's `reach` (`probe_floors`)
PROBE_WORKS, PROBE_REPEATS, PROBE_DRAW = 24, 3, 4000
PROBE_SERVER = "fifo"  # probed: its batching learns nothing from the probes
CONTROL_MIN_TOLERANCE = 0.03  # early_exit: orloj >= orloj-nohint - max(this, 2 SE)
DEFAULT_MODELS = ("early_exit", "generate")

# `--variants` (issue 17): early_exit with and without its variants, at 2x its capacity
VARIANT_LABELS = ("orloj", "orloj+variants")
VARIANT_MODEL = "early_exit"
VARIANT_OVERLOAD = 2.0  # the cells' rate, in units of the measured capacity
VARIANT_SLO_MULTS = (5.0, 10.0, 20.0)
VARIANT_QUICK_SLO_MULTS = (10.0,)
VARIANT_REQUESTS, VARIANT_QUICK_REQUESTS = 1500, 600
CAPACITY_LOAD = 4.0  # the capacity probe's rate, in units of one mean solo time
CAPACITY_REQUESTS = 1200
TARGET_VARIANTS = 1.5


@dataclass(frozen=True)
class ModelSweep:
    """One model's sweep. Its cells are set in units of the model's mean solo time as
    learned during the warm-up (as the simulator does): SLO = slo_mult x mean, rate =
    load / mean. So the sweep means the same on a faster or busier machine; the
    absolute SLOs (ms) and rates (req/s) are reported."""

    name: str
    slo_mults: tuple[float, ...]
    loads: tuple[float, ...]
    quick_slo_mults: tuple[float, ...]
    quick_loads: tuple[float, ...]
    requests: int
    quick_requests: int
    warmup_rate: float
    warmup_slo_ms: float
    input_params: tuple[tuple[str, float], ...] = ()
    trace_column: str | None = None  # the trace column its inputs are drawn from


SWEEPS = {
    "early_exit": ModelSweep(
        "early_exit",
        slo_mults=(5.0, 10.0, 20.0),
        loads=(0.5, 1.0, 1.5),
        quick_slo_mults=(10.0,),
        quick_loads=(1.0,),
        requests=1500,
        quick_requests=600,
        warmup_rate=150.0,
        warmup_slo_ms=200.0,
        input_params=(("deep_fraction", 0.2), ("shallow", 2)),
    ),
    "generate": ModelSweep(
        "generate",
        slo_mults=(3.0, 6.0, 12.0),
        loads=(0.7, 1.2, 2.0),
        quick_slo_mults=(6.0,),
        quick_loads=(1.2,),
        requests=800,
        quick_requests=300,
        warmup_rate=40.0,
        warmup_slo_ms=2000.0,
        trace_column="GeneratedTokens",
    ),
    # lengths: the trace's ContextTokens / 16 (mean 72, CoV 0.93, 1..256); solo time
    # about a + k x length (1 ms at the shortest, 12 ms at 256 on the 2-core VM)
    "seq_encoder": ModelSweep(
        "seq_encoder",
        slo_mults=(3.0, 5.0, 10.0),
        loads=(0.7, 1.0, 1.5),
        quick_slo_mults=(5.0,),
        quick_loads=(1.0,),
        requests=1200,
        quick_requests=600,
        warmup_rate=200.0,
        warmup_slo_ms=500.0,
        trace_column="ContextTokens",
    ),
}


@dataclass(frozen=True)
class HintSweep:
    """One model's `--hints` cells (a subset of its SWEEPS cells, to keep the run under
    15 minutes on the 2-core VM) and its hints: "derived" (the server derives them, the
    client sends none), "client" (true work x noise), or None (no hints)."""

    slo_mults: tuple[float, ...]
    loads: tuple[float, ...]
    requests: int
    quick_slo_mults: tuple[float, ...]
    quick_loads: tuple[float, ...]
    quick_requests: int
    hint: str | None


HINT_SWEEPS = {
    "seq_encoder": HintSweep(slo_mults=(3.0, 5.0, 10.0), loads=(0.7, 1.0, 1.5),
                             requests=600, quick_slo_mults=(5.0,), quick_loads=(1.0,),
                             quick_requests=400, hint="derived"),
    "generate": HintSweep(slo_mults=(3.0, 6.0, 12.0), loads=(1.2, 2.0), requests=500,
                          quick_slo_mults=(3.0,), quick_loads=(2.0,), quick_requests=300,
                          hint="client"),
    "early_exit": HintSweep(slo_mults=(5.0, 10.0, 20.0), loads=(1.0, 1.5), requests=800,
                            quick_slo_mults=(10.0,), quick_loads=(1.0,), quick_requests=400,
                            hint=None),
}  # fmt: skip


@dataclass(frozen=True)
class StepSweep:
    """One model's `--step` sweep. `loads` are in units of the whole-batch mean solo time,
    as in the default sweep; `overloads` in units of the step capacity, the rate that
    keeps a full step batch busy, as the orloj-step server learned it during the warm-up
    (`step_capacity`). 2 is twice what continuous batching can serve at best."""

    slo_mults: tuple[float, ...]
    loads: tuple[float, ...]
    overload_slo_mults: tuple[float, ...]
    overloads: tuple[float, ...]
    quick_slo_mults: tuple[float, ...]
    quick_loads: tuple[float, ...]
    quick_overloads: tuple[float, ...]


STEP_SWEEPS = {
    "generate": StepSweep(slo_mults=(2.0, 3.0, 6.0), loads=(2.0, 3.0),
                          overload_slo_mults=(3.0, 6.0), overloads=(2.0,),
                          quick_slo_mults=(3.0,), quick_loads=(2.0,),
                          quick_overloads=(2.0,)),  # fmt: skip
    "early_exit": StepSweep(slo_mults=(10.0, 20.0), loads=(1.0, 1.5),
                            overload_slo_mults=(10.0,), overloads=(2.0,),
                            quick_slo_mults=(10.0,), quick_loads=(1.5,),
                            quick_overloads=()),  # fmt: skip
}


def model_repo(directory: Path, model: str) -> Path:
    """A repository serving the built-in `model` with its full model only (`variants =
    []`): the sweeps compare scheduling; `--variants` compares accuracy scaling."""
    repo = directory / f"repo_{model}"
    repo.mkdir(parents=True, exist_ok=True)
    (repo / f"{model}.toml").write_text(f'builtin = "{model}"\nvariants = []\n')
    return repo


def hint_noise(n: int, key: list, cov: float = HINT_NOISE_COV) -> np.ndarray:
    """n LogNormal factors of mean 1 and CoV `cov`, from their own stream (the cell's key
    and HINT_NOISE_STREAM): the same for every policy, independent of the inputs."""
    rng = np.random.default_rng([*key, HINT_NOISE_STREAM])
    sigma2 = np.log1p(cov * cov)
    return rng.lognormal(-sigma2 / 2, np.sqrt(sigma2), n)


def workload(model: str, n: int, rate: float, slo_ms: float, seed: int, trace,
             hints: str | None = None):  # fmt: skip
    """The same requests and send times for every policy (seeded by model and cell).
    `hints="client"`: every request carries a hint, its true work x `hint_noise`;
    "derived" or None: no request carries one (the server derives it, or there is none)."""
    sweep = SWEEPS[model]
    key = [seed, sum(map(ord, model)), int(rate * 1000), int(slo_ms * 1000), n]
    rng = np.random.default_rng(key)
    times = arrival_times(n, rate, rng)
    rows = None
    if sweep.trace_column is not None and trace is not None:
        col = trace[sweep.trace_column]
        rows = {sweep.trace_column: col[rng.integers(0, len(col), n)]}
    spec = BUILTIN_MODELS[model].spec.to_dict()
    draws = make_inputs(model, spec, n, rng, rows, dict(sweep.input_params))
    requests = [{"model": model, "inputs": d.inputs, "slo_ms": slo_ms, "app": APP}
                for d in draws]  # fmt: skip
    work = [d.work for d in draws]
    if hints == "client":
        for r, w, f in zip(requests, work, hint_noise(n, key), strict=True):
            r["hint"] = float(w * f)
    return requests, times.tolist(), work


def scheduler_pid(endpoint: str) -> int:
    with Client(endpoint, timeout_s=30) as c:
        return int(c.health()["pids"]["scheduler"])


def run_chunk(endpoint: str, pid: int, requests, times, slo_ms: float):
    """One chunk of a cell's load on one server: its outcomes, and the scheduler's CPU
    seconds and the wall seconds it took."""
    import psutil

    proc = psutil.Process(pid)
    c0 = proc.cpu_times()
    t0 = time.perf_counter()
    report = run_open_loop(endpoint, requests, times, drain_timeout_s=5.0 + 2 * slo_ms / 1e3)
    wall = time.perf_counter() - t0
    c1 = proc.cpu_times()
    return report.outcomes, c1.user - c0.user + c1.system - c0.system, wall


def aggregate(chunks) -> dict:
    outcomes = [o for c in chunks for o in c[0]]
    cpu_s = sum(c[1] for c in chunks)
    wall_s = sum(c[2] for c in chunks)
    ok = [o for o in outcomes if o.status == "ok"]
    lat = sorted(o.latency_s for o in ok)
    counts = {k: sum(o.status == k for o in outcomes)
              for k in ("ok", "dropped", "rejected", "error", "lost")}  # fmt: skip
    return {
        "finish_rate": sum(o.status == "ok" and o.met_slo for o in outcomes) / len(outcomes),
        "scheduler_cpu": cpu_s / wall_s,
        "counts": counts,
        "late": sum(not o.met_slo for o in ok),
        "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3 if lat else None,
        "mean_batch": float(np.mean([o.batch_size for o in ok])) if ok else 0.0,
    }


def chunks_of(requests, times, slo_ms: float, chunk_s: float):
    """The cell's load cut into consecutive pieces of about `chunk_s` seconds of arrivals
    (at least 10 SLOs long, so that the empty start of a piece matters little), each with
    its send times from 0."""
    span = max(chunk_s, 10 * slo_ms / 1e3)
    out, start = [], 0
    while start < len(times):
        end = start
        while end < len(times) and times[end] - times[start] < span:
            end += 1
        t0 = times[start]
        out.append((requests[start:end], [t - t0 for t in times[start:end]]))
        start = end
    return out


def start_servers(model: str, policies, repo: Path, log,
                  policy: str | None = None) -> dict[str, ServerProcess]:  # fmt: skip
    """One server per policy, started one after another (each measures its model's c(b)
    and prior at warm-up: two warming up at once would disturb each other). A label of
    POLICY_ARGS (orloj-nohint) starts its policy with its parameters; `policy`, when
    given, is every label's policy (the labels name repositories: --variants)."""
    servers: dict[str, ServerProcess] = {}
    try:
        for p in policies:
            chosen = ("--policy", policy) if policy else POLICY_ARGS.get(p, ("--policy", p))
            server_args = ["--models", str(repo), "--cpu-workers", "1", *chosen,
                           "--log-level", "WARNING"]  # fmt: skip
            servers[p] = ServerProcess(server_args, stderr=log, start_timeout_s=180).start()
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def stop_servers(servers: dict[str, ServerProcess]) -> list[str]:
    bad = []
    for p, s in servers.items():
        if s.stop() != 0:
            bad.append(f"the {p} server exited with {s.returncode}")
    return bad


def learned_mean_solo_s(servers: dict[str, ServerProcess], model: str) -> float:
    """The median over the servers of the mean solo time their schedulers learned during
    the warm-up (every policy's scheduler learns it, from the model's work reports). A
    server with hint classes learns it per class (`APP#h<k>`): its mean pools the app's
    and its classes' samples."""
    time.sleep(1.2)  # the scheduler's figures reach `stats` once a second
    means = []
    for s in servers.values():
        with Client(s.endpoint, timeout_s=30) as c:
            apps = c.stats()["models"][model]["scheduler"]["apps"]
        mine = [a for name, a in apps.items()
                if (name == APP or name.startswith(APP + CLASS_SEPARATOR)) and a["samples"]]
        if mine:
            n = sum(a["samples"] for a in mine)
            means.append(sum(a["mean_solo_ms"] * a["samples"] for a in mine) / n / 1e3)
    if not means:
        raise RuntimeError(f"{model}: no solo time was learned during the warm-up")
    return float(np.median(means))


def hint_class_stats(servers: dict[str, ServerProcess], model: str, policies) -> dict:
    """Per server of `policies`: its scheduler's hint classes of APP (hints seen, fits,
    classes fitted, each class's hint range) and each class's mean solo time and samples
    as learned so far (since the server started: the warm-up and every cell before)."""
    time.sleep(1.2)  # the scheduler's figures reach `stats` once a second
    out = {}
    for p in policies:
        if p not in servers:
            continue
        with Client(servers[p].endpoint, timeout_s=30) as c:
            sched = c.stats()["models"][model]["scheduler"]
        book = sched.get("hint_classes", {}).get(APP)
        apps = sched["apps"]
        classes = (book or {}).get("classes", [])
        out[p] = {
            "hints_seen": book["hints_seen"] if book else 0,
            "fits": book["fits"] if book else 0,
            "classes": len(classes),
            "edges": [c["hint_from"] for c in classes[1:]],
            "class_mean_solo_ms": {c["app"]: round(apps[c["app"]]["mean_solo_ms"], 3)
                                   for c in classes if c["app"] in apps},
            "class_samples": {c["app"]: apps[c["app"]]["samples"]
                              for c in classes if c["app"] in apps},
            "class_source": {c["app"]: apps[c["app"]]["source"]
                             for c in classes if c["app"] in apps},
        }  # fmt: skip
    return out


def step_capacity(server: ServerProcess, model: str) -> tuple[float, float]:
    """(the step capacity in req/s, the mean solo work in s) from a step server after its
    warm-up: a full batch of max-batch members, each step taking the wall time the
    scheduler has learned for a full step (`learned_step_max_ms`: the model's time and
    the worker's overhead as served, not the warm-up's quiet c(b) x step), each member
    running the mean number of steps that the warm-up's members ran."""
    with Client(server.endpoint, timeout_s=30) as c:
        sched = c.stats()["models"][model]["scheduler"]
    apps, steps = sched["apps"], sched["steps"]
    mean_s = (apps[APP]["mean_solo_ms"] if APP in apps and apps[APP]["samples"]
              else sched["prior_mean_ms"]) / 1e3  # fmt: skip
    mean_steps = (apps[APP]["mean_steps"] if APP in apps and apps[APP]["samples"]
                  else mean_s * 1e3 / steps["step_solo_ms"])  # fmt: skip
    b = BUILTIN_MODELS[model].spec.max_batch_size
    return b / (steps["learned_step_max_ms"] / 1e3 * mean_steps), mean_s


def step_stats(servers: dict[str, ServerProcess], model: str) -> dict:
    """Each step server's per-step accounting (step_scheduling.StepCoordinator.stats):
    the model's time per step, the worker's other time per step (overhead), and of it the
    coordination with the scheduler, as shares of the step time, in wall and CPU time."""
    time.sleep(1.2)  # the scheduler's figures reach `stats` once a second
    out = {}
    for p, s in servers.items():
        with Client(s.endpoint, timeout_s=30) as c:
            st = c.stats()["models"][model]["scheduler"].get("steps")
        if st:
            out[p] = {k: st[k] for k in (
                "steps", "timed_steps", "mean_members", "mean_step_ms", "mean_overhead_us",
                "overhead_share", "mean_coord_us", "coord_share", "mean_step_cpu_ms",
                "overhead_cpu_share", "coord_cpu_share", "finished", "ended")}  # fmt: skip
    return out


def probe_floors(endpoint: str, model: str, seed: int, trace, hints) -> list[tuple[int, float]]:
    """`--hints`: a floor under the latency of a request, by its work: (work, ms) pairs in
    increasing work. PROBE_WORKS works at quantiles of PROBE_DRAW of the model's requests
    (its smallest and largest among them), each request sent PROBE_REPEATS times alone to
    the idle server; each work's fastest reply, less the smallest work's fastest reply (so
    the floor leaves out the path through the server and the smallest request's own cost,
    which a busy server may pay faster than an idle one). A model's cost grows with its
    work (a longer input, more steps; seq_encoder pads each batch to its longest member),
    so a request of work w takes at least the largest floor of the works probed at or
    below w, alone or in any batch: no policy answers it within an SLO below that
    floor."""
    reqs, _, work = workload(model, PROBE_DRAW, 1.0, 60_000.0, seed + 3000, trace, hints)
    by_work: dict[int, dict] = {}
    for r, w in zip(reqs, work, strict=True):
        by_work.setdefault(int(w), r)
    works = sorted(by_work)
    picks = sorted({works[round(q * (len(works) - 1))]
                    for q in np.linspace(0.0, 1.0, PROBE_WORKS)})  # fmt: skip
    fastest = {}
    for w in picks:
        lat = []
        for _ in range(PROBE_REPEATS):
            out = run_open_loop(endpoint, [by_work[w]], [0.0], drain_timeout_s=30.0).outcomes[0]
            if out.status != "ok":
                raise RuntimeError(f"{model}: the probe of work {w} was answered {out.status}")
            lat.append(out.latency_s * 1e3)
        fastest[w] = min(lat)
    base = fastest[picks[0]]
    floors, top = [], 0.0
    for w in picks:  # the largest floor at or below each work (noise can break the order)
        top = max(top, fastest[w] - base)
        floors.append((w, top))
    return floors


def reach_of(floors: list[tuple[int, float]] | None, work, slo_ms: float) -> float | None:
    """The share of requests (by their `work`) whose latency floor (`probe_floors`) is
    within `slo_ms`: an upper bound on every policy's finish rate in the cell."""
    if not floors:
        return None
    keys = [w for w, _ in floors]
    ok = 0
    for w in work:
        i = int(np.searchsorted(keys, w, side="right")) - 1
        ok += i < 0 or floors[i][1] <= slo_ms
    return ok / len(work)


def plan_cells(model: str, args, servers, mean_s: float) -> list[tuple]:
    """The cells to run: (slo_ms, rate, slo multiple, load, load unit)."""
    if args.slos or args.rates:  # absolute cells, as asked
        slos = [float(x) for x in (args.slos or "100").split(",")]
        rates = [float(x) for x in (args.rates or "10").split(",")]
        return [(s_, r_, s_ / 1e3 / mean_s, r_ * mean_s, "solo") for r_ in rates for s_ in slos]
    if args.hints:
        hs = HINT_SWEEPS[model]
        mults = hs.quick_slo_mults if args.quick else hs.slo_mults
        loads = hs.quick_loads if args.quick else hs.loads
        return [(round(m_ * mean_s * 1e3, 1), round(ld / mean_s, 1), m_, ld, "solo")
                for ld in loads for m_ in mults]  # fmt: skip
    if not args.step:
        sweep = SWEEPS[model]
        mults = sweep.quick_slo_mults if args.quick else sweep.slo_mults
        loads = sweep.quick_loads if args.quick else sweep.loads
        return [(round(m_ * mean_s * 1e3, 1), round(ld / mean_s, 1), m_, ld, "solo")
                for ld in loads for m_ in mults]  # fmt: skip
    sweep = STEP_SWEEPS[model]
    mults = sweep.quick_slo_mults if args.quick else sweep.slo_mults
    loads = sweep.quick_loads if args.quick else sweep.loads
    cells = [(round(m_ * mean_s * 1e3, 1), round(ld / mean_s, 1), m_, ld, "solo")
             for ld in loads for m_ in mults]  # fmt: skip
    overloads = sweep.quick_overloads if args.quick else sweep.overloads
    if overloads:
        step_server = servers.get("orloj-step") or servers.get("fcfs-step")
        if step_server is None:
            raise RuntimeError("--step overload cells need an orloj-step or fcfs-step server")
        capacity, _ = step_capacity(step_server, model)
        mults = sweep.quick_slo_mults if args.quick else sweep.overload_slo_mults
        cells += [(round(m_ * mean_s * 1e3, 1), round(ov * capacity, 1), m_, ov, "step")
                  for ov in overloads for m_ in mults]  # fmt: skip
    return cells


def run_model(model: str, policies, args, repo: Path, trace, log,
              step_overheads: dict | None = None) -> list[dict]:  # fmt: skip
    """Every cell under every policy. The servers run side by side (an idle one costs
    nothing), and each cell's load is cut into chunks that the policies run in turn, so
    that a change in the machine's background load does not favour one policy. The step
    servers' per-step accounting over the whole run goes into `step_overheads[model]`.
    `--hints`: requests carry the model's hints (HINT_SWEEPS), in the warm-up too, and
    after every cell the hint classes of the orloj and sjf-hint servers go into their
    rows (`hint_stats`)."""
    sweep = SWEEPS[model]
    hints = HINT_SWEEPS[model].hint if args.hints else None
    rows = []
    t0 = time.monotonic()
    servers = start_servers(model, policies, repo, log)
    if not args.json:
        print(f"  {model}: {len(servers)} servers ready in {time.monotonic() - t0:.1f} s",
              flush=True)  # fmt: skip
    try:
        pids = {p: scheduler_pid(s.endpoint) for p, s in servers.items()}
        # warm-up: every policy learns from the same unmeasured load (orloj's learned
        # distribution replaces its prior after 32 solo times; clockwork fills its window)
        reqs, times, _ = workload(model, args.warmup, sweep.warmup_rate, sweep.warmup_slo_ms,
                                  args.seed + 1000, trace, hints)  # fmt: skip
        for s in servers.values():
            run_open_loop(s.endpoint, reqs, times, drain_timeout_s=30.0)
        mean_s = learned_mean_solo_s(servers, model)
        cells = plan_cells(model, args, servers, mean_s)
        if not args.json:
            print(f"  {model}: mean solo time learned at warm-up {mean_s * 1e3:.2f} ms",
                  flush=True)  # fmt: skip
        floors = None
        if args.hints and hints is not None and PROBE_SERVER in servers:
            floors = probe_floors(servers[PROBE_SERVER].endpoint, model, args.seed, trace,
                                  hints)  # fmt: skip
            if not args.json:
                print(f"  {model}: latency floors alone, ms by work: "
                      + ", ".join(f"{w}: {f:.2f}" for w, f in floors), flush=True)
        turn = 0
        for slo_ms, rate, mult, load, unit in cells:
            counts = HINT_SWEEPS[model] if args.hints else sweep
            n = args.requests or (counts.quick_requests if args.quick else counts.requests)
            reqs, times, work = workload(model, n, rate, slo_ms, args.seed, trace, hints)
            cell_reach = reach_of(floors, work, slo_ms)
            done: dict[str, list] = {p: [] for p in policies}
            # the policies take turns, chunk by chunk, starting with a different one each
            # time: background load that comes and goes hits every policy alike
            for creqs, ctimes in chunks_of(reqs, times, slo_ms, args.chunk_s):
                for i in range(len(policies)):
                    p = policies[(turn + i) % len(policies)]
                    done[p].append(run_chunk(servers[p].endpoint, pids[p], creqs, ctimes,
                                             slo_ms))  # fmt: skip
                turn += 1
            classes = (hint_class_stats(servers, model, HINT_CLASS_POLICIES)
                       if args.hints else {})  # fmt: skip
            for p in policies:
                r = aggregate(done[p])
                r.update(model=model, slo_ms=slo_ms, rate=rate, policy=p, slo_mult=mult,
                         load=load, load_unit=unit, mean_solo_ms=mean_s * 1e3)  # fmt: skip
                if args.hints:
                    r["hints"] = hints or "none"
                    if cell_reach is not None:
                        r["reach"] = cell_reach
                        r["latency_floors_ms"] = floors
                if p in classes:
                    r["hint_stats"] = classes[p]
                rows.append(r)
                if not args.json:
                    print(f"  {model:<11} {p:<12} SLO {slo_ms:>6g} ms ({mult:g}x)  rate "
                          f"{rate:>6g}/s (load {load:g}{'' if unit == 'solo' else ' ' + unit})"
                          f"  finish {r['finish_rate']:6.1%}  "
                          f"batch {r['mean_batch']:5.2f}  sched cpu "
                          f"{r['scheduler_cpu']:5.1%}  {r['counts']}", flush=True)  # fmt: skip
            if not args.json:
                for p, st in classes.items():
                    means = " ".join(f"{v:.2f}" for v in st["class_mean_solo_ms"].values())
                    print(f"  {model:<11} {p:<12} {st['hints_seen']} hints seen, "
                          f"{st['classes']} classes; mean solo ms by class: {means or '-'}",
                          flush=True)  # fmt: skip
        if step_overheads is not None:
            step_overheads[model] = step_stats(servers, model)
    finally:
        bad = stop_servers(servers)
    if bad:
        raise RuntimeError("; ".join(bad))
    policy_order = {p: i for i, p in enumerate(policies)}
    rows.sort(key=lambda r: (r["rate"], r["slo_ms"], policy_order[r["policy"]]))
    return rows


def variant_repos(directory: Path) -> dict[str, Path]:
    """Per label, a repository serving early_exit without variants or with its own."""
    out = {}
    for label, extra in (("orloj", "variants = []\n"), ("orloj+variants", "")):
        repo = directory / ("repo_" + label.replace("+", "_"))
        repo.mkdir(parents=True, exist_ok=True)
        (repo / f"{VARIANT_MODEL}.toml").write_text(f'builtin = "{VARIANT_MODEL}"\n{extra}')
        out[label] = repo
    return out


def measure_capacity(server: ServerProcess, mean_s: float, seed: int) -> float:
    """The ok replies per second of `server` under a saturating load (CAPACITY_LOAD x the
    rate of one mean solo time) with an SLO (60 s) that no request misses."""
    rate = CAPACITY_LOAD / mean_s
    reqs, times, _ = workload(VARIANT_MODEL, CAPACITY_REQUESTS, rate, 60_000.0, seed + 2000,
                              None)  # fmt: skip
    report = run_open_loop(server.endpoint, reqs, times, drain_timeout_s=60.0)
    ok = sum(o.status == "ok" for o in report.outcomes)
    if not ok or report.duration_s <= 0:
        raise RuntimeError("the capacity probe got no ok reply")
    return ok / report.duration_s


def variant_row(chunks, accuracy: dict[str, float]) -> dict:
    """`aggregate` plus what accuracy scaling adds: per variant the requests it answered
    (ok) and of them in time; answered within SLO; the mean declared accuracy of the
    answers in time and the utility (their accuracies summed / requests sent)."""
    r = aggregate(chunks)
    outcomes = [o for c in chunks for o in c[0]]
    in_time = [o for o in outcomes if o.status == "ok" and o.met_slo]
    accs = [accuracy.get(o.variant, 1.0) if o.variant else 1.0 for o in in_time]
    mix: dict[str, dict] = {}
    for o in outcomes:
        if o.status == "ok":
            m = mix.setdefault(o.variant or "-", {"ok": 0, "in_slo": 0})
            m["ok"] += 1
            m["in_slo"] += bool(o.met_slo)
    r.update(answered_in_slo=r["finish_rate"], variants=mix,
             mean_accuracy=float(np.mean(accs)) if accs else None,
             utility=float(sum(accs)) / len(outcomes))  # fmt: skip
    return r


def run_variants(args, tmp_path: Path, log) -> tuple[list[dict], dict]:
    """`--variants`: the capacity, then every cell on both servers, chunk by chunk in
    turns (as run_model does)."""
    repos = variant_repos(tmp_path)
    accuracy = {v.name: v.accuracy for v in BUILTIN_MODELS[VARIANT_MODEL].spec.variants}
    sweep = SWEEPS[VARIANT_MODEL]
    servers: dict[str, ServerProcess] = {}
    rows: list[dict] = []
    t0 = time.monotonic()
    try:
        for label in VARIANT_LABELS:
            servers.update(start_servers(VARIANT_MODEL, [label], repos[label], log,
                                         policy="orloj"))  # fmt: skip
        if not args.json:
            print(f"  {VARIANT_MODEL}: {len(servers)} servers ready in "
                  f"{time.monotonic() - t0:.1f} s", flush=True)  # fmt: skip
        pids = {p: scheduler_pid(s.endpoint) for p, s in servers.items()}
        reqs, times, _ = workload(VARIANT_MODEL, args.warmup, sweep.warmup_rate,
                                  sweep.warmup_slo_ms, args.seed + 1000, None)  # fmt: skip
        for s in servers.values():
            run_open_loop(s.endpoint, reqs, times, drain_timeout_s=30.0)
        mean_s = learned_mean_solo_s({"orloj": servers["orloj"]}, VARIANT_MODEL)
        capacity = measure_capacity(servers["orloj"], mean_s, args.seed)
        rate = round(VARIANT_OVERLOAD * capacity, 1)
        if not args.json:
            print(f"  {VARIANT_MODEL}: mean solo time {mean_s * 1e3:.2f} ms; capacity "
                  f"{capacity:.0f} ok/s (orloj, no variants); cells at {rate:g} req/s",
                  flush=True)  # fmt: skip
        mults = VARIANT_QUICK_SLO_MULTS if args.quick else VARIANT_SLO_MULTS
        n = args.requests or (VARIANT_QUICK_REQUESTS if args.quick else VARIANT_REQUESTS)
        turn = 0
        for mult in mults:
            slo_ms = round(mult * mean_s * 1e3, 1)
            reqs, times, _ = workload(VARIANT_MODEL, n, rate, slo_ms, args.seed, None)
            done: dict[str, list] = {p: [] for p in VARIANT_LABELS}
            for creqs, ctimes in chunks_of(reqs, times, slo_ms, args.chunk_s):
                for i in range(len(VARIANT_LABELS)):
                    p = VARIANT_LABELS[(turn + i) % len(VARIANT_LABELS)]
                    done[p].append(run_chunk(servers[p].endpoint, pids[p], creqs, ctimes,
                                             slo_ms))  # fmt: skip
                turn += 1
            for p in VARIANT_LABELS:
                r = variant_row(done[p], accuracy if p == "orloj+variants" else {})
                r.update(model=VARIANT_MODEL, slo_ms=slo_ms, rate=rate, policy=p,
                         slo_mult=mult, load=VARIANT_OVERLOAD, load_unit="capacity",
                         mean_solo_ms=mean_s * 1e3, capacity=capacity)  # fmt: skip
                rows.append(r)
                if not args.json:
                    mix = " ".join(f"{k}:{v['ok']}" for k, v in sorted(r["variants"].items()))
                    print(f"  {p:<15} SLO {slo_ms:>6g} ms ({mult:g}x)  rate {rate:>6g}/s  "
                          f"in SLO {r['answered_in_slo']:6.1%}  accuracy "
                          f"{r['mean_accuracy'] or 0:.3f}  batch {r['mean_batch']:5.2f}  "
                          f"{r['counts']}  variants {mix}", flush=True)  # fmt: skip
    finally:
        bad = stop_servers(servers)
    if bad:
        raise RuntimeError("; ".join(bad))
    return rows, {"capacity": capacity, "mean_solo_ms": mean_s * 1e3, "rate": rate}


def variant_table(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """`--variants`: markdown lines and one verdict per cell (target: orloj+variants
    answers >= 1.5x orloj's requests within their SLO)."""
    by = {(r["slo_ms"], r["policy"]): r for r in rows}
    head = ("| load (capacity) | rate /s | SLO / mean solo | SLO ms | orloj in SLO | "
            "orloj+variants in SLO | ratio | mean accuracy | utility (orloj, +variants) | "
            "variants served (ok) | target |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    verdicts = []
    for s in sorted({r["slo_ms"] for r in rows}):
        o, v = by.get((s, "orloj")), by.get((s, "orloj+variants"))
        if o is None or v is None:
            continue
        a, b = o["answered_in_slo"], v["answered_in_slo"]
        ratio = b / a if a else float("inf") if b else None
        met = ratio is not None and ratio >= TARGET_VARIANTS
        verdicts.append({"slo_ms": s, "slo_mult": v["slo_mult"], "rate": v["rate"],
                         "orloj": a, "orloj+variants": b, "ratio": ratio,
                         "mean_accuracy": v["mean_accuracy"], "met": met})  # fmt: skip
        mix = ", ".join(f"{k} {x['ok']}" for k, x in sorted(v["variants"].items()))
        acc = "-" if v["mean_accuracy"] is None else f"{v['mean_accuracy']:.3f}"
        lines.append(f"| {v['load']:g} | {v['rate']:g} | {v['slo_mult']:g} | {s:g} | "
                     f"{a:.3f} | {b:.3f} | {'-' if ratio is None else f'{ratio:.2f}'} | "
                     f"{acc} | {o['utility']:.3f}, {v['utility']:.3f} | {mix} | "
                     f"{'**met**' if met else '**missed**'} |")  # fmt: skip
    return lines, verdicts


# ---------------------------------------------------------------------- reports
def cell_table(rows: list[dict], policies) -> tuple[list[str], list[dict]]:
    """Markdown lines, and one verdict per cell (model, slo, rate)."""
    by = {(r["model"], r["slo_ms"], r["rate"], r["policy"]): r for r in rows}
    cells = sorted({(r["model"], r["rate"], r["slo_ms"]) for r in rows})
    head = ("| model | load | rate /s | SLO / mean solo | SLO ms | " + " | ".join(policies)
            + " | orloj / fifo | orloj / best other | orloj's scheduler CPU | target |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    verdicts = []
    for m, rate, s in cells:
        fr = {p: by[(m, s, rate, p)]["finish_rate"] for p in policies if (m, s, rate, p) in by}
        o, f = fr.get("orloj"), fr.get("fifo")
        best_other = max((fr[p] for p in BASELINES if p in fr and p != "fifo"), default=None)
        best_all = max((fr[p] for p in BASELINES if p in fr), default=None)
        band = f is not None and FIFO_BAND[0] <= f <= FIFO_BAND[1]
        met = None
        if band and o is not None:
            met = o >= TARGET_VS_FIFO * f and (best_all is None or o >= best_all)
        cpu = by.get((m, s, rate, "orloj"), {}).get("scheduler_cpu")
        verdicts.append({"model": m, "slo_ms": s, "rate": rate, "orloj": o, "fifo": f,
                         "best_other": best_other, "in_fifo_band": band,
                         "met": met})  # fmt: skip
        values = " | ".join(f"{fr[p]:.3f}" if p in fr else "-" for p in policies)
        vs_fifo = f"{o / f:.2f}" if o is not None and f else "-"
        vs_best = f"{o / best_other:.2f}" if o is not None and best_other else "-"
        cpu_text = f"{cpu:.1%}" if cpu is not None else "-"
        target = ("fifo outside 20-60%" if not band
                  else "**met**" if met else "**missed**")  # fmt: skip
        any_row = next(by[(m, s, rate, p)] for p in policies if (m, s, rate, p) in by)
        load, mult = any_row.get("load"), any_row.get("slo_mult")
        lines.append(f"| {m} | {'-' if load is None else f'{load:.2g}'} | {rate:g} | "
                     f"{'-' if mult is None else f'{mult:.3g}'} | {s:g} | {values} | "
                     f"{vs_fifo} | {vs_best} | {cpu_text} | {target} |")  # fmt: skip
    return lines, verdicts


def _binomial_tolerance(a: float, b: float, n: int) -> float:
    """Two standard errors of the difference of two finish rates of n requests each, at
    least CONTROL_MIN_TOLERANCE."""
    se = np.sqrt((a * (1 - a) + b * (1 - b)) / max(n, 1))
    return float(max(CONTROL_MIN_TOLERANCE, 2 * se))


HINT_CAPTIONS = {
    "derived": "the client sends no hint; the server derives each request's hint, its "
               "token count (`hint = \"length(tokens)\"`); lengths: the Azure conversation "
               "trace's ContextTokens / 16, rows drawn at random (mean 72, CoV 0.93, "
               "1..256); the solo time follows the length",
    "client": "each request carries a client hint: its true output length (the Azure "
              "trace's GeneratedTokens / 8, rows drawn at random: mean 27, CoV 0.76, "
              "1..125) x an independent LogNormal noise factor of mean 1 and CoV "
              f"{HINT_NOISE_COV} (its own seeded stream: the same hints for every policy)",
    "none": "no hints (the control): orloj should match orloj-nohint within noise",
}


def hint_needs(fifo: float, nexus_clockwork: float | None, sjf: float | None) -> dict:
    """What issue 15's hints target asks of orloj's finish rate in a cell, per check: 2x
    fifo's, 1.5x the best of nexus and clockwork, 1.1x sjf-hint's (those that ran)."""
    needs = {"vs_fifo": HINT_TARGET_VS_FIFO * fifo}
    if nexus_clockwork is not None:
        needs["vs_nexus_clockwork"] = HINT_TARGET_VS_NEXUS_CLOCKWORK * nexus_clockwork
    if sjf is not None:
        needs["vs_sjf_hint"] = HINT_TARGET_VS_SJF * sjf
    return needs


def hint_table(rows: list[dict], policies) -> tuple[list[str], list[dict]]:
    """`--hints`: a markdown table per model, and one verdict per cell. Targets (issue
    15): where requests carry hints and fifo finishes 20-60%, orloj >= 2x fifo, >= 1.5x
    the best of nexus and clockwork, >= 1.1x sjf-hint; without hints (early_exit), orloj
    >= orloj-nohint - tolerance (`_binomial_tolerance`) in every cell."""
    by = {(r["model"], r["slo_ms"], r["rate"], r["policy"]): r for r in rows}
    lines: list[str] = []
    verdicts = []

    def ratio(a, b):
        return f"{a / b:.2f}" if a is not None and b else ("inf" if a else "-")

    for m in dict.fromkeys(r["model"] for r in rows):
        cells = sorted({(r["rate"], r["slo_ms"]) for r in rows if r["model"] == m})
        kind = next(r.get("hints", "none") for r in rows if r["model"] == m)
        mean = next(r["mean_solo_ms"] for r in rows if r["model"] == m)
        n_req = next(sum(r["counts"].values()) for r in rows if r["model"] == m)
        lines += [f"### {m}", "", f"Hints: {HINT_CAPTIONS[kind]}. Mean solo time learned at "
                  f"warm-up {mean:.2f} ms; {n_req} requests a cell.", ""]  # fmt: skip
        head = ("| load | rate /s | SLO / mean solo | SLO ms | " + " | ".join(policies)
                + " | reach | orloj / fifo | orloj / best of nexus, clockwork | "
                "orloj / sjf-hint | orloj / orloj-nohint | orloj's classes | target |")
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for rate, s in cells:
            got = {p: by[(m, s, rate, p)] for p in policies if (m, s, rate, p) in by}
            fr = {p: r["finish_rate"] for p, r in got.items()}
            o, f, sj, nh = (fr.get(p) for p in ("orloj", "fifo", "sjf-hint", "orloj-nohint"))
            nc = max((fr[p] for p in ("nexus", "clockwork") if p in fr), default=None)
            any_row = next(iter(got.values()))
            n = sum(any_row["counts"].values())
            # no policy finishes more than the requests whose latency floor is within the
            # SLO (`reach`), nor more than all of them
            limit = any_row.get("reach", 1.0)
            stats = {p: r["hint_stats"] for p, r in got.items() if "hint_stats" in r}
            v = {"model": m, "slo_ms": s, "rate": rate, "load": any_row["load"],
                 "slo_mult": any_row["slo_mult"], "hints": kind,
                 "finish_rates": fr, "best_nexus_clockwork": nc,
                 "in_fifo_band": f is not None and FIFO_BAND[0] <= f <= FIFO_BAND[1],
                 "reach": any_row.get("reach"), "target": None, "met": None, "checks": {},
                 "hint_stats": stats}  # fmt: skip
            if kind != "none" and v["in_fifo_band"] and o is not None:
                needs = hint_needs(f, nc, sj)
                checks = {k: o >= need for k, need in needs.items()}
                # a check that asks for more than `limit` is out of reach of every
                # policy in this cell, and so is the cell's target (all its checks)
                out_of_reach = [k for k, need in needs.items() if need > limit]
                met = all(checks.values())
                v.update(target="hints", checks=checks, met=met, needs=needs,
                         unreachable=out_of_reach,
                         verdict="met" if met else "unreachable" if out_of_reach else "missed")
            elif kind == "none" and o is not None and nh is not None:
                tol = _binomial_tolerance(o, nh, n)
                v.update(target="control", tolerance=tol, met=o >= nh - tol,
                         checks={"vs_orloj_nohint": o >= nh - tol})  # fmt: skip
            verdicts.append(v)
            if v["target"] == "hints":
                failed = [k for k, ok in v["checks"].items() if not ok]
                missed = [k for k in failed if k not in v["unreachable"]]
                out = [f"{k} needs {v['needs'][k]:.2f}" for k in v["unreachable"]]
                target = {"met": "**met**", "missed": "**missed**"}.get(v["verdict"],
                                                                        "**unreachable**")
                if out:
                    target += f": {', '.join(out)} > {limit:.3g}"
                if missed:
                    target += f"; missed in reach: {', '.join(missed)}"
            elif v["target"] == "control":
                target = (f"{'**met**' if v['met'] else '**missed**'} (tolerance "
                          f"{v['tolerance']:.3f})")  # fmt: skip
            else:
                target = "fifo outside 20-60%"
            own = stats.get("orloj")
            classes = "-" if own is None else str(own["classes"])
            values = " | ".join(f"{fr[p]:.3f}" if p in fr else "-" for p in policies)
            bound = "-" if v["reach"] is None else f"{v['reach']:.3f}"
            lines.append(f"| {any_row['load']:.2g} | {rate:g} | {any_row['slo_mult']:.3g} | "
                         f"{s:g} | {values} | {bound} | {ratio(o, f)} | {ratio(o, nc)} | "
                         f"{ratio(o, sj)} | {ratio(o, nh)} | {classes} | {target} |")
        lines.append("")
    return lines, verdicts


def hint_lines(rows: list[dict], policies) -> tuple[list[str], list[dict]]:
    """`--hints`: the tables and each cell's verdict, then the classes after each cell."""
    lines, verdicts = hint_table(rows, policies)
    lines += ["### Hint classes after each cell", "",
              "(orloj's and sjf-hint's schedulers, `op: \"stats\"`: each class's mean "
              "solo time over its samples since the server started)", "",
              *hint_stats_lines(verdicts)]  # fmt: skip
    return lines, verdicts


def render_from(path: Path) -> int:
    """`--render-from`: a --hints run's results.md and verdicts again, from its saved
    results.json (its figures unchanged), with this version's verdicts."""
    saved = json.loads(path.read_text())
    if saved.get("mode") != "hints":
        print(f"{path}: --render-from takes the results.json of a --hints run", file=sys.stderr)
        return 2
    ran = [p for p in HINT_POLICIES if any(r["policy"] == p for r in saved["details"])]
    lines, verdicts = hint_lines(saved["details"], ran)
    saved["cells"] = verdicts
    path.write_text(json.dumps(saved, indent=1))
    (path.parent / "results.md").write_text(
        f"`{saved['command']}` ({saved['elapsed_s']:.0f} s; verdicts written again from its "
        f"results.json by `python bench/e2e_finish_rate.py --render-from {path}`)\n\n"
        + "\n".join(lines) + "\n")  # fmt: skip
    for line in hint_verdict_lines(verdicts):
        print(line)
    return 0


def hint_stats_lines(verdicts: list[dict]) -> list[str]:
    """The hint classes of the orloj and sjf-hint servers after each cell: classes fitted
    and each class's mean solo time learned so far (since the server started)."""
    head = ("| model | load | SLO / mean solo | policy | hints seen | fits | classes | "
            "class edges (hint) | mean solo ms by class, h0 first (samples) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for v in verdicts:
        for p, st in v["hint_stats"].items():
            means = ", ".join(f"{st['class_mean_solo_ms'][a]:.2f} ({st['class_samples'][a]})"
                              for a in st["class_mean_solo_ms"])  # fmt: skip
            edges = ", ".join(f"{e:.3g}" for e in st["edges"])
            lines.append(f"| {v['model']} | {v['load']:.2g} | {v['slo_mult']:.3g} | {p} | "
                         f"{st['hints_seen']} | {st['fits']} | {st['classes']} | "
                         f"{edges or '-'} | {means or '-'} |")
    return lines


def hint_verdict_lines(verdicts: list[dict]) -> list[str]:
    """`--hints`: met or missed, cell by cell, then a count per target."""
    out = []
    for v in verdicts:
        cell = f"{v['model']} load {v['load']:g} SLO {v['slo_mult']:g}x"
        fr = v["finish_rates"]
        if v["target"] == "hints":
            parts = [f"{k} {'met' if ok else 'MISSED'}"
                     + (f" (unreachable: needs {v['needs'][k]:.3f} > "
                        f"{1.0 if v.get('reach') is None else v['reach']:.3f})"
                        if k in v["unreachable"] else "")
                     for k, ok in v["checks"].items()]  # fmt: skip
            verdict = {"met": "met", "missed": "MISSED"}.get(v["verdict"], "UNREACHABLE")
            out.append(f"{cell}: fifo {fr['fifo']:.3f} in 20-60%: orloj {fr['orloj']:.3f}; "
                       + ", ".join(parts) + f" -> {verdict}")
        elif v["target"] == "control":
            out.append(f"{cell}: control, orloj {fr['orloj']:.3f} vs orloj-nohint "
                       f"{fr['orloj-nohint']:.3f} (tolerance {v['tolerance']:.3f}) -> "
                       f"{'met' if v['met'] else 'MISSED'}")  # fmt: skip
    hinted = [v for v in verdicts if v["target"] == "hints"]
    control = [v for v in verdicts if v["target"] == "control"]
    out.append(f"cells with hints where fifo finishes 20-60%: {len(hinted)}; orloj >= "
               f"{HINT_TARGET_VS_FIFO:g}x fifo, >= {HINT_TARGET_VS_NEXUS_CLOCKWORK:g}x the "
               f"best of nexus and clockwork and >= {HINT_TARGET_VS_SJF:g}x sjf-hint in "
               f"{sum(v['verdict'] == 'met' for v in hinted)} of them; out of reach of "
               "every policy in "
               f"{sum(v['verdict'] == 'unreachable' for v in hinted)} (a check there asks for "
               "a finish rate above 1, or above the cell's reach); missed in "
               f"{sum(v['verdict'] == 'missed' for v in hinted)}")  # fmt: skip
    if control:
        out.append(f"early_exit (no hints): orloj within noise of orloj-nohint or better in "
                   f"{sum(bool(v['met']) for v in control)} of {len(control)} cells")
    return out


def step_table(rows: list[dict], overheads: dict) -> tuple[list[str], list[dict], dict]:
    """`--step`: markdown lines, one verdict per cell, and the overhead verdict per model.
    Targets (issue 8, for generate; early_exit's figures measure the catch-up strategy
    against whole batches): orloj-step >= 2x whole-batch orloj where orloj finishes
    20-60%; orloj-step >= 3x fcfs-step at 2x overload of the step capacity; per-step
    coordination <= 5% of the step time."""
    by = {(r["model"], r["slo_ms"], r["rate"], r["policy"]): r for r in rows}
    cells = sorted({(r["model"], r["rate"], r["slo_ms"]) for r in rows})
    head = ("| model | load | rate /s | SLO / mean solo | SLO ms | orloj | fcfs-step | "
            "orloj-step | orloj-step / orloj | orloj-step / fcfs-step | mean batch "
            "(orloj, fcfs-step, orloj-step) | target |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    verdicts = []
    for m, rate, s in cells:
        got = {p: by[(m, s, rate, p)] for p in STEP_POLICIES if (m, s, rate, p) in by}
        fr = {p: r["finish_rate"] for p, r in got.items()}
        any_row = next(iter(got.values()))
        unit, load, mult = any_row.get("load_unit", "solo"), any_row["load"], any_row["slo_mult"]
        o, f, st = fr.get("orloj"), fr.get("fcfs-step"), fr.get("orloj-step")
        kind, met = None, None
        if m == "generate" and st is not None:
            if unit == "step" and load >= 2 and f is not None:
                kind, met = "overload", st >= TARGET_STEP_VS_FCFS * f
            elif unit == "solo" and o is not None and ORLOJ_BAND[0] <= o <= ORLOJ_BAND[1]:
                kind, met = "vs whole-batch", st >= TARGET_STEP_VS_ORLOJ * o
        verdicts.append({"model": m, "slo_ms": s, "rate": rate, "load": load,
                         "load_unit": unit, "orloj": o, "fcfs-step": f, "orloj-step": st,
                         "target": kind, "met": met})  # fmt: skip

        def ratio(a, b):
            return f"{a / b:.2f}" if a is not None and b else ("inf" if a else "-")

        values = " | ".join(f"{fr[p]:.3f}" if p in fr else "-" for p in STEP_POLICIES)
        batches = ", ".join(f"{got[p]['mean_batch']:.1f}" if p in got else "-"
                            for p in STEP_POLICIES)  # fmt: skip
        target = ("-" if kind is None else
                  f"{kind}: {'**met**' if met else '**missed**'}")  # fmt: skip
        load_text = f"{load:.2g}" + (" (step capacity)" if unit == "step" else "")
        lines.append(f"| {m} | {load_text} | {rate:g} | {mult:.3g} | {s:g} | {values} | "
                     f"{ratio(st, o)} | {ratio(st, f)} | {batches} | {target} |")  # fmt: skip
    overhead = {}
    for m, per_policy in overheads.items():
        shares = [v["coord_share"] for v in per_policy.values() if v["timed_steps"]]
        worst = max(shares) if shares else None
        overhead[m] = {"policies": per_policy, "max_coord_share": worst,
                       "met": worst is not None and worst <= TARGET_STEP_OVERHEAD}  # fmt: skip
    return lines, verdicts, overhead


def overhead_lines(overhead: dict) -> list[str]:
    head = ("| model | policy | steps timed | mean members | model time per step (ms) | "
            "other worker time per step (us, share) | of it coordination (us, share) | "
            "coordination, CPU-time share |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for m, o in overhead.items():
        for p, v in o["policies"].items():
            lines.append(f"| {m} | {p} | {v['timed_steps']} | {v['mean_members']:.1f} | "
                         f"{v['mean_step_ms']:.3f} | {v['mean_overhead_us']:.0f} "
                         f"({v['overhead_share']:.1%}) | {v['mean_coord_us']:.0f} "
                         f"({v['coord_share']:.1%}) | {v['coord_cpu_share']:.1%} |")  # fmt: skip
    return lines


def cpu_verdict(rows: list[dict]) -> dict:
    out = {}
    for m in sorted({r["model"] for r in rows}):
        top = max(r["rate"] for r in rows if r["model"] == m)
        at_top = [r for r in rows if r["model"] == m and r["rate"] == top]
        worst = max(r["scheduler_cpu"] for r in at_top)
        out[m] = {"rate": top, "max_scheduler_cpu": worst,
                  "met": worst < TARGET_SCHED_CPU}  # fmt: skip
    return out


def plot(rows: list[dict], policies, path: Path) -> None:
    """Finish rate against SLO, one panel per (model, rate): a row per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    rates = {m: sorted({r["rate"] for r in rows if r["model"] == m}) for m in models}
    ncols = max(len(v) for v in rates.values())
    fig, axes = plt.subplots(len(models), ncols, figsize=(3.6 * ncols, 3.0 * len(models)),
                             squeeze=False)  # fmt: skip
    for i, m in enumerate(models):
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(rates[m]):
                ax.axis("off")
                continue
            rate = rates[m][j]
            cell = [r for r in rows if r["model"] == m and r["rate"] == rate]
            for p in policies:
                pts = sorted((r["slo_ms"], r["finish_rate"]) for r in cell if r["policy"] == p)
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, marker="o", label=p, linewidth=2.4 if p == "orloj" else 1.2)
            load = cell[0].get("load")
            ax.set_title(f"{m}, {rate:g} req/s" + (f" (load {load:g})" if load else ""),
                         fontsize=9)  # fmt: skip
            ax.set_xlabel("SLO (ms)", fontsize=8)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("finish rate", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    ap.add_argument("--models", default=None,
                    help="comma-separated models (default: " + ",".join(DEFAULT_MODELS)
                    + "; with --hints " + ",".join(HINT_SWEEPS) + ")")  # fmt: skip
    ap.add_argument("--policies", default=None,
                    help="comma-separated policies (default: " + ",".join(POLICIES)
                    + "; with --step " + ",".join(STEP_POLICIES) + "; with --hints "
                    + ",".join(HINT_POLICIES) + ")")  # fmt: skip
    ap.add_argument("--step", action="store_true",
                    help="step-level batching (issue 8): whole-batch orloj, fcfs-step and "
                         "orloj-step, at the step sweep's cells, with the per-step overhead")
    ap.add_argument("--hints", action="store_true",
                    help="cost hints end to end (issue 15): seq_encoder with server-derived "
                         "hints, generate with noisy client hints, early_exit without; "
                         "orloj, orloj-nohint (orloj with hint_classes=0), sjf-hint and the "
                         "baselines; the hint classes learned after every cell")
    ap.add_argument("--variants", action="store_true",
                    help="accuracy scaling end to end (issue 17): early_exit on orloj "
                         "without and with its variants, at 2x its measured capacity")
    ap.add_argument("--slos", help="comma-separated SLOs in ms instead of the sweep's "
                                   "multiples of the mean solo time (one model only)")
    ap.add_argument("--rates", help="comma-separated rates in req/s instead of the sweep's "
                                    "loads (one model only)")
    ap.add_argument("--requests", type=int, default=None,
                    help="requests per cell (default: early_exit 1500, generate 800, "
                         "seq_encoder 1200; --quick 600, 300, 600; with --hints: 800, 500, "
                         "600; --quick 400, 300, 400)")  # fmt: skip
    ap.add_argument("--warmup", type=int, default=None,
                    help="unmeasured warm-up requests per server (default 200, with "
                         "--hints 300; --quick 100)")  # fmt: skip
    ap.add_argument("--chunk-s", type=float, default=3.0,
                    help="policies take turns every S seconds of a cell's arrivals (at least "
                         "10 SLOs; default %(default)s)")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="a reduced sweep (under 3 minutes)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE,
                    help="the Azure conversation trace (default: %(default)s)")  # fmt: skip
    ap.add_argument("--out", type=Path, help="write results.json, results.md and the PNG here")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--plot-from", type=Path, metavar="RESULTS_JSON",
                    help="only redraw the PNG (beside the file) from a run's results.json")
    ap.add_argument("--render-from", type=Path, metavar="RESULTS_JSON",
                    help="only write results.md and the verdicts again from a --hints run's "
                    "results.json (its figures as they were)")  # fmt: skip
    args = ap.parse_args()
    if args.render_from:
        return render_from(args.render_from)
    if sum(map(bool, (args.hints, args.step, args.variants))) > 1:
        ap.error("--hints, --step and --variants are separate sweeps: give one")
    if args.variants:
        return main_variants(args)
    if args.models is None:
        args.models = ",".join(HINT_SWEEPS if args.hints else DEFAULT_MODELS)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.policies is None:
        args.policies = ",".join(STEP_POLICIES if args.step else
                                 HINT_POLICIES if args.hints else POLICIES)  # fmt: skip
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if args.plot_from:
        saved = json.loads(args.plot_from.read_text())
        ran = [p for p in dict.fromkeys((*POLICIES, *STEP_POLICIES, *HINT_POLICIES))
               if any(r["policy"] == p for r in saved["details"])]
        name = "e2e_hints.png" if saved.get("mode") == "hints" else "e2e_finish_rate.png"
        plot(saved["details"], ran, args.plot_from.parent / name)
        return 0
    known = HINT_SWEEPS if args.hints else SWEEPS
    bad = [m for m in models if m not in known]
    if bad:
        ap.error(f"unknown model(s) {bad}; choose from {list(known)}")
    if (args.slos or args.rates) and len(models) != 1:
        ap.error("--slos and --rates need exactly one model (--models NAME)")
    args.warmup = args.warmup or (100 if args.quick else 300 if args.hints else 200)
    columns = sorted({SWEEPS[m].trace_column for m in models} - {None})
    trace = read_trace(str(args.trace), columns) if columns else None

    started = time.monotonic()
    load_before = os.getloadavg()
    rows: list[dict] = []
    step_overheads: dict = {}
    with tempfile.TemporaryDirectory(prefix="orloj_e2e_") as tmp:
        tmp_path = Path(tmp)
        log_path = tmp_path / "servers.log"
        with open(log_path, "w") as log:
            for m in models:
                repo = model_repo(tmp_path, m)
                try:
                    rows += run_model(m, policies, args, repo, trace, log, step_overheads)
                except Exception:
                    log.flush()
                    print(log_path.read_text()[-4000:], file=sys.stderr)
                    raise
    elapsed = time.monotonic() - started
    if args.step:
        lines, verdicts, overhead = step_table(rows, step_overheads)
        lines += ["", *overhead_lines(overhead)]
    elif args.hints:
        lines, verdicts = hint_lines(rows, policies)
        overhead = None
    else:
        lines, verdicts = cell_table(rows, policies)
        overhead = None
    cpu = cpu_verdict(rows)
    command = "python bench/e2e_finish_rate.py " + " ".join(sys.argv[1:])
    result = {
        "mode": "step" if args.step else "hints" if args.hints else "default",
        "rows": [{k: r[k] for k in ("model", "slo_ms", "rate", "policy", "finish_rate",
                                    "scheduler_cpu")} for r in rows],  # fmt: skip
        "details": rows,
        "cells": verdicts,
        "scheduler_cpu_at_top_rate": cpu,
        "step_overhead": overhead,
        "elapsed_s": elapsed,
        "command": command,
        # the machine's load average (1, 5, 15 min) before and after: other jobs on a
        # shared machine move every figure
        "loadavg": {"before": load_before, "after": os.getloadavg()},
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=1))
        (args.out / "results.md").write_text(f"`{command}` ({elapsed:.0f} s)\n\n"
                                             + "\n".join(lines) + "\n")  # fmt: skip
        plot(rows, policies, args.out / ("e2e_hints.png" if args.hints
                                         else "e2e_finish_rate.png"))  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return 0
    print()
    print("\n".join(lines))
    print()
    if args.step:
        for kind, text in (("vs whole-batch", "whole-batch orloj finishes 20-60%: orloj-step "
                                              ">= 2x orloj"),
                           ("overload", "2x overload: orloj-step >= 3x fcfs-step")):
            cells = [v for v in verdicts if v["target"] == kind]
            print(f"generate cells where {text}: met in {sum(bool(v['met']) for v in cells)} "
                  f"of {len(cells)}")  # fmt: skip
        for m, o in overhead.items():
            w = o["max_coord_share"]
            print(f"{m}: per-step coordination at most "
                  f"{'-' if w is None else f'{w:.1%}'} of the step time (target <= 5%: "
                  f"{'met' if o['met'] else 'missed'})")  # fmt: skip
    elif args.hints:
        for line in hint_verdict_lines(verdicts):
            print(line)
    else:
        band = [v for v in verdicts if v["in_fifo_band"]]
        met = sum(bool(v["met"]) for v in band)
        print(f"cells where fifo finishes 20-60%: {len(band)}; orloj >= 1.5x fifo and >= the "
              f"best baseline in {met} of them")  # fmt: skip
    for m, c in cpu.items():
        print(f"{m}: scheduler CPU at the top rate ({c['rate']:g}/s): at most "
              f"{c['max_scheduler_cpu']:.1%} of one core (target < 25%: "
              f"{'met' if c['met'] else 'missed'})")  # fmt: skip
    print(f"elapsed {elapsed:.0f} s")
    return 0


def main_variants(args) -> int:
    """`--variants`: run, then the table (or one JSON object) and the verdict."""
    args.warmup = args.warmup or (100 if args.quick else 200)
    started = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="orloj_e2e_") as tmp:
        tmp_path = Path(tmp)
        log_path = tmp_path / "servers.log"
        with open(log_path, "w") as log:
            try:
                rows, probe = run_variants(args, tmp_path, log)
            except Exception:
                log.flush()
                print(log_path.read_text()[-4000:], file=sys.stderr)
                raise
    elapsed = time.monotonic() - started
    lines, verdicts = variant_table(rows)
    command = "python bench/e2e_finish_rate.py " + " ".join(sys.argv[1:])
    result = {
        "mode": "variants",
        "rows": [{k: r[k] for k in ("model", "slo_ms", "rate", "policy", "answered_in_slo",
                                    "mean_accuracy", "utility")} for r in rows],  # fmt: skip
        "details": rows,
        "cells": verdicts,
        "capacity": probe,
        "elapsed_s": elapsed,
        "command": command,
        "loadavg": {"before": load_before, "after": os.getloadavg()},
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=1))
        (args.out / "results.md").write_text(f"`{command}` ({elapsed:.0f} s)\n\n"
                                             + "\n".join(lines) + "\n")  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return 0
    print()
    print("\n".join(lines))
    print()
    met = sum(bool(v["met"]) for v in verdicts)
    print(f"early_exit at {VARIANT_OVERLOAD:g}x its capacity ({probe['capacity']:.0f} ok/s): "
          f"orloj+variants answers >= {TARGET_VARIANTS:g}x orloj's requests within their "
          f"SLO in {met} of {len(verdicts)} cells")  # fmt: skip
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
          f"elapsed {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
