"""What the simulator says the runtime's sweep should give, from this machine's own models.

    .venv/bin/python bench/e2e_model_check.py                   # a table per model
    .venv/bin/python bench/e2e_model_check.py --compare docs/results/e2e_finish_rate/results.json
    .venv/bin/python bench/e2e_model_check.py --json            # one JSON object
    .venv/bin/python bench/e2e_model_check.py --compare R.json --service   # + a live
                                     # server's measured delays in the execution model

`bench/e2e_finish_rate.py` runs the real servers; this script asks whether what they
finish is what the scheduling algorithm itself can finish, or whether the runtime loses
something on the way (stale decisions, a wrong batch model, overheads). For each model of
the issue-5 sweep (`early_exit`, `generate`) it measures, in this process, with one torch
thread, as a CPU worker runs it:

- c(b), with the worker's own warm-up profile (`BatchRunner.profile`);
- the solo-time law: the fastest of 2 solo runs of each of `--samples` requests drawn as
  the sweep draws them (orloj_rt/models/load_inputs.py; `generate` from the Azure trace).

Then it simulates the whole-batch policies through the runtime's own serving core
(`simulate_serving`, orloj_rt/serving: primed from a warm-up of 64 draws of that law, as a
worker's warm-up profiles its examples, and taught from per-request work reports) with
that c(b) and that law, at the sweep's cells (SLO multiples x loads, in units of the mean
solo time), 4,000 Poisson requests per cell. It prints each cell's finish rates, orloj /
fifo, orloj / best other baseline, the clairvoyant oracle, the bound on any
non-clairvoyant policy (orloj_rt/sim/bounds.py), and the issue-5 verdict as the
simulator sees it. With `--compare`, the runtime's figures from an `e2e_finish_rate.py`
results.json are set beside it, cell by cell: orloj / fifo, and the largest gap between
the runtime's finish rate and the simulator's over the policies both ran (issue 14's
target: at most 0.05 in every cell, on a quiet machine). Then each cell is simulated at
the runtime's own rate and SLO (in req/s and ms, converted with the mean timed here),
not at its nominal multiples: the servers set those from the mean they learned at
warm-up, which includes their own overheads.

With `--service`, the execution model also carries what a real server adds to the
model's time (issue 14): a live server (one CPU worker, as the sweep's) answers
`--service-samples` of the same drawn requests one at a time, and each reply's timing
gives one sample of (start delay: `queue_us`, arrival until its worker began, with
nobody ahead; execution-time extra: `exec_us` minus the request's solo time timed here;
reply delay: `total_us - queue_us - exec_us`, from the batch's end to its reply), after
`SERVICE_WARMUP` requests that are not kept (a fresh server's first requests are slow
once). The simulator draws one sample per batch (`simulate_serving(service=...)`): the
batch starts that delay after its dispatch, runs its model time plus the extra, and its
members are answered the reply delay later. The table then has both gaps, without and
with it.

With `--hints` (issue 15) it does the same for `bench/e2e_finish_rate.py --hints`: for each
model there that carries hints (`seq_encoder`, whose hint the server derives: its length,
exact; `generate`, whose clients send its true output length x LogNormal noise of CoV
0.6), it times requests as above, keeping each one's work, and simulates that sweep's
hinted cells with every policy of it (orloj given the hints, as the serving core classes
them; orloj-nohint; sjf-hint; fifo, nexus and clockwork, which ignore them) and the
clairvoyant oracle, each request's hint made from its own work. It prints orloj /
sjf-hint and oracle / sjf-hint beside the hints target's verdict as the simulator sees
it (in cells where fifo finishes 20-60%: orloj >= 2x fifo, >= 1.5x the best of nexus and
clockwork and >= 1.1x sjf-hint), and with `--compare` on a `--hints` results.json the
runtime's orloj / sjf-hint, at the runtime's own rates and SLOs. `--loads` simulates
other loads than the sweep's (e.g. heavier ones, where fifo finishes almost nothing).

    .venv/bin/python bench/e2e_model_check.py --hints --compare docs/results/e2e_hints/results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from e2e_finish_rate import (  # noqa: E402
    BASELINES,
    DEFAULT_MODELS,
    DEFAULT_TRACE,
    FIFO_BAND,
    HINT_POLICIES,
    HINT_SWEEPS,
    HINT_TARGET_VS_SJF,
    POLICIES,
    SWEEPS,
    TARGET_VS_FIFO,
    hint_needs,
    hint_noise,
)

SIM_POLICIES = (*POLICIES, "oracle")
HINT_SIM_POLICIES = (*HINT_POLICIES, "oracle")
HINTED = ("orloj", "sjf-hint")  # the policies given the hints (orloj-nohint: orloj without)
HINT_MODELS = tuple(m for m, h in HINT_SWEEPS.items() if h.hint)  # seq_encoder, generate
SIM_REQUESTS = 4000
WARMUP_DRAWS = 64  # the warm-up profile's examples, as a worker times them
SERVICE_WARMUP = 50  # requests a live server answers before its delays are kept


def measure(model: str, n: int, seed: int) -> tuple[list[float], np.ndarray, list, np.ndarray]:
    """(c(1..max), solo times in seconds of n drawn requests, the drawn requests' inputs,
    their work: tokens, or NaN where the model has no work figure) on this machine."""
    import torch

    from orloj_rt.client.loadgen import read_trace
    from orloj_rt.models.builtin import BUILTIN_MODELS
    from orloj_rt.models.load_inputs import make_inputs
    from orloj_rt.models.loading import build_module
    from orloj_rt.runtime.batch_runner import BatchRunner, examples_for

    torch.set_num_threads(1)  # as `--cpu-workers` runs a worker
    entry = BUILTIN_MODELS[model]
    runner = BatchRunner(entry, build_module(entry))
    inflation = list(runner.profile(examples_for(entry, 16)).inflation)
    rng = np.random.default_rng(seed)
    rows = None
    if model == "generate":
        col = read_trace(str(DEFAULT_TRACE), ["GeneratedTokens"])["GeneratedTokens"]
        rows = {"GeneratedTokens": col[rng.integers(0, len(col), n)]}
    draws = make_inputs(model, entry.spec.to_dict(), n, rng, rows,
                        dict(SWEEPS[model].input_params))  # fmt: skip
    solo = []
    for d in draws:
        member = [d.inputs[t.name] for t in entry.spec.inputs]
        solo.append(min(runner.timed([member]) for _ in range(2)))
    work = np.asarray([np.nan if d.work is None else d.work for d in draws], dtype=float)
    return inflation, np.asarray(solo), [d.inputs for d in draws], work


def measure_service(model: str, inputs: list, solo: np.ndarray, n: int) -> list:
    """(start delay s, execution-time extra s, reply delay s) of n of the drawn requests,
    each answered alone by a live server, after SERVICE_WARMUP (the module docstring)."""
    import tempfile

    from e2e_finish_rate import model_repo

    from orloj_rt.client import Client
    from orloj_rt.runtime.launcher import ServerProcess

    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = model_repo(Path(tmp), model)
        server = ServerProcess(["--models", str(repo), "--cpu-workers", "1", "--policy",
                                "orloj", "--log-level", "WARNING"],
                               start_timeout_s=180).start()  # fmt: skip
        try:
            with Client(server.endpoint, timeout_s=30) as c:
                for k in range(SERVICE_WARMUP + min(n, len(inputs))):
                    i = (k - SERVICE_WARMUP) % len(inputs)
                    r = c.infer(model, inputs[i], slo_ms=60_000)
                    if r.status != "ok":
                        raise RuntimeError(f"{model}: a calibration request got {r.status}: "
                                           f"{r.error}")  # fmt: skip
                    if k < SERVICE_WARMUP:
                        continue
                    q, e, t = (r.timing[k] * 1e-6 for k in ("queue_us", "exec_us", "total_us"))
                    samples.append((q, e - solo[i], max(0.0, t - q - e)))
        finally:
            server.stop()
    return samples


def simulate_cell(x: np.ndarray, inflation: list[float], slo: float, load: float,
                  seed: int, service: list | None = None) -> dict:  # fmt: skip
    """Every policy's finish rate on one cell; x: solo times in units of their mean;
    `service`: measured (start delay, execution extra, reply delay) samples, in those units."""
    from orloj_rt.sim.bounds import finish_rate_bound
    from orloj_rt.sim.simulator import simulate_serving

    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1.0 / load, SIM_REQUESTS))
    solo = rng.choice(x, SIM_REQUESTS)
    deadline = arrival + slo
    apps = ["default"] * SIM_REQUESTS
    warmup = rng.choice(x, WARMUP_DRAWS)
    rates = {}
    for name in SIM_POLICIES:
        out = simulate_serving(name, arrival, deadline, solo, apps, inflation, warmup,
                               workers=1, clairvoyant=name == "oracle",
                               service=service)  # fmt: skip
        rates[name] = out.summary(arrival, deadline)["finish_rate"]
    rates["bound"] = finish_rate_bound(x, slo, 1.0 / load, inflation)
    return rates


def simulate_hint_cell(x: np.ndarray, work: np.ndarray, kind: str, inflation: list[float],
                       slo: float, load: float, seed: int) -> dict:  # fmt: skip
    """`--hints`: every policy of the hints sweep, and the oracle, on one cell. Each
    request draws one timed request (its solo time x, in units of their mean, and its
    work); its hint is that work ("derived": the server's exact length) or the work x
    LogNormal noise of CoV 0.6 ("client": e2e_finish_rate.hint_noise), in the warm-up's
    draws too."""
    from orloj_rt.sim.simulator import simulate_serving

    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1.0 / load, SIM_REQUESTS))
    deadline = arrival + slo
    idx = rng.integers(0, len(x), SIM_REQUESTS)
    warm = rng.integers(0, len(x), WARMUP_DRAWS)
    hints, warm_hints = work[idx], work[warm]
    if kind == "client":
        hints = hints * hint_noise(SIM_REQUESTS, [seed, 1])
        warm_hints = warm_hints * hint_noise(WARMUP_DRAWS, [seed, 2])
    apps = ["default"] * SIM_REQUESTS
    rates = {}
    for name in HINT_SIM_POLICIES:
        given = name in HINTED
        out = simulate_serving("orloj" if name == "orloj-nohint" else name, arrival, deadline,
                               x[idx], apps, inflation, x[warm], workers=1,
                               hints=hints if given else None,
                               warmup_hints=warm_hints if given else None,
                               clairvoyant=name == "oracle")  # fmt: skip
        rates[name] = out.summary(arrival, deadline)["finish_rate"]
    return rates


def hint_verdict(r: dict) -> str:
    """The hints target (bench/e2e_finish_rate.py --hints) on simulated finish rates."""
    if not FIFO_BAND[0] <= r["fifo"] <= FIFO_BAND[1]:
        return "fifo outside 20-60%"
    needs = hint_needs(r["fifo"], max(r["nexus"], r["clockwork"]), r["sjf-hint"])
    return "**met**" if all(r["orloj"] >= n for n in needs.values()) else "**missed**"


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def hint_rows(model: str, x: np.ndarray, work: np.ndarray, inflation: list[float],
              mean: float, seen: dict, seed: int, loads=None) -> list[dict]:  # fmt: skip
    """`--hints`: the rows of one model's hinted cells (at the runtime's own rates and
    SLOs where `seen` has the cell), at `loads` instead of the sweep's if given."""
    sweep = HINT_SWEEPS[model]
    rows = []
    for load in loads or sweep.loads:
        for slo in sweep.slo_mults:
            rt = seen.get((model, round(slo, 3), round(load, 3)))
            cell_slo, cell_load = cell_units(rt, slo, load, mean)
            r = simulate_hint_cell(x, work, sweep.hint, inflation, cell_slo, cell_load, seed)
            row = {"model": model, "slo_mult": slo, "load": load, "hints": sweep.hint, **r,
                   "orloj_vs_sjf": ratio(r["orloj"], r["sjf-hint"]),
                   "oracle_vs_sjf": ratio(r["oracle"], r["sjf-hint"]),
                   "orloj_vs_nexus_clockwork": ratio(r["orloj"], max(r["nexus"],
                                                                     r["clockwork"])),
                   "orloj_vs_fifo": ratio(r["orloj"], r["fifo"]),
                   "target": hint_verdict(r)}  # fmt: skip
            if rt and "orloj" in rt and "sjf-hint" in rt:
                row["runtime"] = {p: v for p, v in rt.items() if p[0] != "_"}
                row["runtime_orloj_vs_sjf"] = ratio(rt["orloj"], rt["sjf-hint"])
            rows.append(row)
    return rows


def print_hints(out: dict, compare: bool) -> None:
    """`--hints`: the models, then one table of every hinted cell."""
    for model, m in out["models"].items():
        print(f"{model}: mean solo {m['mean_solo_ms']:.2f} ms, CoV {m['solo_cov']:.2f}, "
              f"c(2) {m['inflation'][1]:.2f}, c({len(m['inflation'])}) {m['inflation'][-1]:.2f}")
    cols = ["model", "hints", "load", "SLO / mean", *HINT_SIM_POLICIES, "orloj / sjf-hint",
            "oracle / sjf-hint", "orloj / best of nexus, clockwork", "orloj / fifo"]
    if compare:
        cols.append("runtime: orloj / sjf-hint")
    cols.append("target (simulated)")
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))

    def fmt(v):
        return "-" if v is None else f"{v:.2f}"

    for r in out["rows"]:
        cells = [r["model"], r["hints"], f"{r['load']:g}", f"{r['slo_mult']:g}",
                 *(f"{r[p]:.3f}" for p in HINT_SIM_POLICIES), fmt(r["orloj_vs_sjf"]),
                 fmt(r["oracle_vs_sjf"]), fmt(r["orloj_vs_nexus_clockwork"]),
                 fmt(r["orloj_vs_fifo"])]  # fmt: skip
        if compare:
            cells.append(fmt(r.get("runtime_orloj_vs_sjf")))
        print("| " + " | ".join(cells + [r["target"]]) + " |")
    band = [r for r in out["rows"] if r["target"] != "fifo outside 20-60%"]
    if band:
        def span(key):
            vals = [r[key] for r in band if r[key] is not None]
            return f"{min(vals):.3f}-{max(vals):.3f}" if vals else "-"

        print(f"\ncells where fifo finishes 20-60%: {len(band)}; the hints target met (as "
              f"simulated) in {sum(r['target'] == '**met**' for r in band)}; there orloj / "
              f"sjf-hint {span('orloj_vs_sjf')}, the clairvoyant oracle / sjf-hint "
              f"{span('oracle_vs_sjf')} (target {HINT_TARGET_VS_SJF})")
    print(f"\nelapsed {out['elapsed_s']:.0f} s")


def cell_units(rt: dict | None, slo: float, load: float, mean: float) -> tuple[float, float]:
    """(SLO, load) to simulate, in units of the mean solo time timed here (`mean`, s): the
    nominal cell's, or with a runtime cell `rt` its own rate and SLO in this law's units
    (its servers set them from the mean they learned at warm-up, which includes their
    own overheads and so is not the mean timed here)."""
    if rt:
        return rt["_slo_ms"] / 1e3 / mean, rt["_rate"] * mean
    return slo, load


def runtime_cells(path: Path) -> dict:
    """{(model, slo_mult, load): {policy: finish rate, "_rate": req/s, "_slo_ms": ms}}
    from a results.json."""
    rows = json.loads(path.read_text())["details"]
    cells: dict = {}
    for r in rows:
        key = (r["model"], round(r["slo_mult"], 3), round(r["load"], 3))
        c = cells.setdefault(key, {"_rate": r["rate"], "_slo_ms": r["slo_ms"]})
        c[r["policy"]] = r["finish_rate"]
    return cells


def runtime_ratios(c: dict) -> tuple[float, float]:
    """(orloj / fifo, orloj / best other) of one runtime cell."""
    best = max((c[p] for p in BASELINES if p != "fifo" and p in c), default=0.0)
    vf = c["orloj"] / c["fifo"] if c.get("fifo") else float("nan")
    return vf, c["orloj"] / best if best else float("nan")


def verdict(r: dict) -> str:
    if not FIFO_BAND[0] <= r["fifo"] <= FIFO_BAND[1]:
        return "fifo outside 20-60%"
    best = max(r[p] for p in BASELINES)
    ok = r["orloj"] >= TARGET_VS_FIFO * r["fifo"] and r["orloj"] >= best
    return "**met**" if ok else "**missed**"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", help="comma-separated (default early_exit,generate; with "
                    "--hints, the hinted models: " + ",".join(HINT_MODELS) + ")")
    ap.add_argument("--hints", action="store_true",
                    help="the --hints sweep's hinted cells, with sjf-hint and orloj-nohint")
    ap.add_argument("--loads", help="with --hints: these loads (comma-separated, in units "
                    "of the mean solo time) instead of the sweep's, e.g. 1.2,2,4")
    ap.add_argument("--samples", type=int, default=300,
                    help="requests timed solo per model (default 300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare", type=Path, metavar="RESULTS_JSON",
                    help="an e2e_finish_rate.py results.json: its orloj / fifo beside")
    ap.add_argument("--service", action="store_true",
                    help="also simulate with a live server's measured delays (docstring)")
    ap.add_argument("--service-samples", type=int, default=200,
                    help="requests the live server answers alone, per model (default 200)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    t0 = time.monotonic()
    seen = runtime_cells(args.compare) if args.compare else {}
    out = {"models": {}, "rows": []}
    if args.hints and args.service:
        ap.error("--service is for the default sweep; leave it out with --hints")
    if args.loads and not args.hints:
        ap.error("--loads is for --hints (the default sweep keeps its cells)")
    try:
        loads = [float(v) for v in args.loads.split(",")] if args.loads else None
    except ValueError:
        ap.error(f"--loads: comma-separated numbers, got {args.loads!r}")
    if loads is not None and not all(v > 0 for v in loads):
        ap.error(f"--loads: every load must be > 0, got {args.loads!r}")
    models = (args.models or ",".join(HINT_MODELS if args.hints else DEFAULT_MODELS)).split(",")
    for model in models:
        if model not in (HINT_MODELS if args.hints else SWEEPS):
            ap.error(f"unknown model {model!r}; choose from "
                     f"{', '.join(HINT_MODELS if args.hints else SWEEPS)}")
        if not args.json:
            print(f"{model}: profiling c(b) and timing {args.samples} requests solo ...",
                  flush=True)  # fmt: skip
        inflation, solo, inputs, work = measure(model, args.samples, args.seed)
        mean = float(solo.mean())
        out["models"][model] = {"inflation": inflation, "mean_solo_ms": mean * 1e3,
                                "solo_cov": float(solo.std() / mean)}  # fmt: skip
        service = None
        if args.service:
            if not args.json:
                print(f"{model}: {args.service_samples} requests alone through a live "
                      "server ...", flush=True)  # fmt: skip
            raw = measure_service(model, inputs, solo, args.service_samples)
            service = [(d / mean, e / mean, p / mean) for d, e, p in raw]
            arr = np.asarray(raw)
            out["models"][model]["service"] = {
                "samples": len(raw),
                "start_delay_ms": {"median": float(np.median(arr[:, 0]) * 1e3),
                                   "p99": float(np.quantile(arr[:, 0], 0.99) * 1e3)},
                "exec_extra_ms": {"median": float(np.median(arr[:, 1]) * 1e3),
                                  "p99": float(np.quantile(arr[:, 1], 0.99) * 1e3)},
                "reply_delay_ms": {"median": float(np.median(arr[:, 2]) * 1e3),
                                   "p99": float(np.quantile(arr[:, 2], 0.99) * 1e3)},
            }  # fmt: skip
        if args.hints:
            out["rows"] += hint_rows(model, solo / mean, work, inflation, mean, seen, args.seed,
                                     loads)
            continue
        sweep = SWEEPS[model]
        for load in sweep.loads:
            for slo in sweep.slo_mults:
                rt = seen.get((model, round(slo, 3), round(load, 3)))
                cell_slo, cell_load = cell_units(rt, slo, load, mean)
                r = simulate_cell(solo / mean, inflation, cell_slo, cell_load, args.seed)
                served = None
                if service:
                    served = simulate_cell(solo / mean, inflation, cell_slo, cell_load,
                                           args.seed, service)  # fmt: skip
                best = max(r[p] for p in BASELINES if p != "fifo")
                row = {"model": model, "slo_mult": slo, "load": load, **r,
                       "orloj_vs_fifo": r["orloj"] / r["fifo"] if r["fifo"] else None,
                       "orloj_vs_best_other": r["orloj"] / best if best else None,
                       "target": verdict(r)}  # fmt: skip
                if served is not None:
                    row["with_service"] = served
                if rt and "orloj" in rt:
                    vf, vb = runtime_ratios(rt)
                    row["runtime_orloj_vs_fifo"], row["runtime_orloj_vs_best_other"] = vf, vb
                    gaps = {p: abs(rt[p] - r[p]) for p in rt if p in r and p[0] != "_"}
                    worst = max(gaps, key=gaps.get)
                    row["runtime"] = {p: v for p, v in rt.items() if p[0] != "_"}
                    row["max_gap"], row["max_gap_policy"] = gaps[worst], worst
                    if served is not None:
                        gaps = {p: abs(rt[p] - served[p]) for p in rt
                                if p in served and p[0] != "_"}  # fmt: skip
                        worst = max(gaps, key=gaps.get)
                        row["max_gap_service"] = gaps[worst]
                        row["max_gap_service_policy"] = worst
                out["rows"].append(row)
    out["elapsed_s"] = time.monotonic() - t0
    if args.json:
        print(json.dumps(out))
        return 0
    if args.hints:
        print_hints(out, bool(seen))
        return 0
    for model, m in out["models"].items():
        print(f"{model}: mean solo {m['mean_solo_ms']:.2f} ms, CoV {m['solo_cov']:.2f}, "
              f"c(2) {m['inflation'][1]:.2f}, c({len(m['inflation'])}) {m['inflation'][-1]:.2f}")
        if "service" in m:
            sv = m["service"]
            d, e, p = sv["start_delay_ms"], sv["exec_extra_ms"], sv["reply_delay_ms"]
            print(f"  a live server, {sv['samples']} requests alone: start delay median "
                  f"{d['median']:.3f} ms (p99 {d['p99']:.3f}), execution - solo median "
                  f"{e['median']:.3f} ms (p99 {e['p99']:.3f}), reply delay median "
                  f"{p['median']:.3f} ms (p99 {p['p99']:.3f})")
    cols = ["model", "load", "SLO / mean", *SIM_POLICIES, "bound", "orloj / fifo",
            "orloj / best other"]  # fmt: skip
    if seen:
        cols += ["runtime: orloj / fifo", "runtime: orloj / best other",
                 "max |runtime - sim| finish"]
        if args.service:
            cols.append("with the server's delays")
    cols.append("target (simulated)")
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in out["rows"]:
        cells = [r["model"], f"{r['load']:g}", f"{r['slo_mult']:g}",
                 *(f"{r[p]:.3f}" for p in (*SIM_POLICIES, "bound")),
                 f"{r['orloj_vs_fifo']:.2f}" if r["orloj_vs_fifo"] else "-",
                 f"{r['orloj_vs_best_other']:.2f}" if r["orloj_vs_best_other"] else "-"]
        if seen:
            cells += [f"{r['runtime_orloj_vs_fifo']:.2f}" if "runtime_orloj_vs_fifo" in r
                      else "-", f"{r['runtime_orloj_vs_best_other']:.2f}"
                      if "runtime_orloj_vs_best_other" in r else "-",
                      f"{r['max_gap']:.3f} ({r['max_gap_policy']})" if "max_gap" in r
                      else "-"]  # fmt: skip
            if args.service:
                cells.append(f"{r['max_gap_service']:.3f} ({r['max_gap_service_policy']})"
                             if "max_gap_service" in r else "-")
        cells.append(r["target"])
        print("| " + " | ".join(cells) + " |")
    for key, what in (("max_gap", "the model alone"),
                      ("max_gap_service", "with the live server's delays")):
        gaps = [r[key] for r in out["rows"] if key in r]
        orloj = [abs(r["runtime"]["orloj"] - (r["with_service"] if key == "max_gap_service"
                                              else r)["orloj"])
                 for r in out["rows"] if key in r and "orloj" in r["runtime"]]  # fmt: skip
        if gaps:
            within = sum(g <= 0.05 for g in gaps)
            print(f"\nruntime vs simulator, {what}: {within} of {len(gaps)} cells within "
                  f"0.05 for every policy (largest gap {max(gaps):.3f}); orloj alone: "
                  f"{sum(g <= 0.05 for g in orloj)} of {len(orloj)} (largest "
                  f"{max(orloj):.3f}); target: every cell, on a quiet machine")
    print(f"\nelapsed {out['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
