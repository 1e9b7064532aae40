"""The GPU check: run it first on any machine with CUDA (the CUDA paths were written
without a GPU at hand and have never run).

    .venv/bin/python bench/gpu_check.py                 # every built-in model
    .venv/bin/python bench/gpu_check.py --models resnet_static,seq_encoder --json

On a machine without CUDA it says so and exits 0. With CUDA, for every built-in model:

1. **Graphs against eager, in this process** (device `--device`, default cuda:0): the
   model's batch runner as a worker builds it (`make_runner`: CUDA graphs for a model with
   `cuda_graphs = true`, one per (batch bucket, shape bucket)), and the eager runner on the
   same module; both run the same inputs (the model's own examples) at every batch bucket,
   and their outputs must be equal (integers) or close (floats: rtol 1e-3, atol 1e-4). It
   prints the capture time and, per bucket, the batch latency of both (median of
   `--reps`). A model that cannot be captured (`cuda_graphs = false`: data-dependent
   control flow) is checked eager on CUDA against eager on the CPU instead; an early-exit
   model may exit at another layer on a float difference near its threshold, so that
   comparison is reported and only fails on an error.
2. **A live server**: `orloj-rt start --gpus all` serving the model (one worker per
   visible GPU, each capturing its graphs at warm-up as in production), then an
   open-loop Poisson load of `--requests` of the model's examples at half the capacity
   that step 1 measured, with an SLO of `--slo-x` times the solo latency (at least 5 ms);
   it prints the finish rate, the reply statuses and the client latency p50/p99 per
   batch bucket (of the batch that served each reply).

`--device cpu` runs the same harness on the CPU (nothing is captured there; the server
gets `--cpu-workers 1`): a dry run that checks the script itself, where there is no GPU.

It exits 1 if any check failed (a mismatch, a server that did not start, a request lost
or answered `error`), else 0. `--json` prints one object: {"cuda": bool, "devices": [...],
"models": {name: {...}}, "failures": [...]}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FLOAT_RTOL = 1e-3
FLOAT_ATOL = 1e-4
MIN_SLO_MS = 5.0


def compare(want: list, got: list) -> tuple[bool, float]:
    """(whether every output matches, the largest absolute difference)."""
    ok, worst = True, 0.0
    for a, b in zip(want, got, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return False, float("inf")
        if a.dtype.kind == "f":
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            if a.size:
                worst = max(worst, float(np.max(np.abs(a64 - b64))))
            ok = ok and bool(np.allclose(a64, b64, rtol=FLOAT_RTOL, atol=FLOAT_ATOL))
        else:
            if a.size and a.dtype.kind in "iub":
                worst = max(worst, float(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64)))))
            ok = ok and bool(np.array_equal(a, b))
    return ok, worst


def median_ms(runner, members, reps: int) -> float:
    return statistics.median(runner.timed(members) for _ in range(reps)) * 1e3


def check_in_process(entry, device: str, reps: int) -> dict:
    """Step 1 for one model (see the module docstring)."""
    from orloj_rt.models.loading import build_module
    from orloj_rt.runtime.batch_runner import BatchRunner, examples_for, make_runner

    spec = entry.spec
    examples = examples_for(entry, 8)
    reqs = [[ex[t.name] for t in spec.inputs] for ex in examples]
    out: dict = {"cuda_graphs": bool(spec.cuda_graphs), "buckets": {}}
    if spec.cuda_graphs:
        module = build_module(entry)
        t0 = time.perf_counter()
        graphs = make_runner(entry, module, device)
        out["capture_s"] = time.perf_counter() - t0
        out["graphs"] = len(getattr(graphs, "graphs", {}))
        reference = BatchRunner(entry, module, device)  # the same weights, eager
        out["reference"] = "eager on " + device
    else:
        graphs = BatchRunner(entry, build_module(entry), device)
        reference = BatchRunner(entry, build_module(entry), "cpu")
        out["reference"] = "eager on cpu (the model is not captured: cuda_graphs = false)"
    mismatches = []
    for b in spec.batch_buckets:
        members = [reqs[j % len(reqs)] for j in range(b)]
        want, _ = reference.run(members)
        got, _ = graphs.run(members)
        same, worst = compare(want, got)
        row = {"same": same, "max_abs_diff": worst,
               "ms": median_ms(graphs, members, reps)}  # fmt: skip
        if spec.cuda_graphs:
            row["eager_ms"] = median_ms(reference, members, reps)
        out["buckets"][b] = row
        if not same:
            mismatches.append(b)
    out["solo_ms"] = out["buckets"][min(spec.batch_buckets)]["ms"]
    out["mismatched_buckets"] = mismatches
    # a mismatch of a captured graph is a bug; eager CUDA vs CPU may differ within floats
    out["ok"] = not mismatches or not spec.cuda_graphs
    return out


def check_server(name: str, entry, solo_ms: float, args) -> dict:
    """Step 2 for one model: a live `orloj-rt start --gpus all` and a short load."""
    from orloj_rt.client.loadgen import arrival_times, run_open_loop, summarize
    from orloj_rt.runtime.batch_runner import examples_for
    from orloj_rt.runtime.launcher import ServerProcess

    examples = examples_for(entry, 64, seed=1)
    slo_ms = max(MIN_SLO_MS, args.slo_x * solo_ms)
    rate = 0.5 * 1e3 / max(solo_ms, 1e-3)  # half of one worker's solo capacity
    rng = np.random.default_rng(0)
    times = arrival_times(args.requests, rate, rng).tolist()
    requests = [{"model": name, "inputs": examples[i % len(examples)], "slo_ms": slo_ms}
                for i in range(args.requests)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        (repo / f"{name}.toml").write_text(f'builtin = "{name}"\n')
        log_path = Path(tmp) / "server.log"
        with open(log_path, "w") as log:
            where = ["--cpu-workers", "1"] if args.device == "cpu" else ["--gpus", "all"]
            server = ServerProcess([*where, "--models", str(repo),
                                    "--log-level", "INFO"],
                                   stderr=log, start_timeout_s=300)  # fmt: skip
            t0 = time.perf_counter()
            try:
                server.start()
            except (RuntimeError, TimeoutError) as exc:
                tail = log_path.read_text()[-2000:]
                return {"ok": False, "error": f"{exc}\n{tail}"}
            ready_s = time.perf_counter() - t0
            try:
                report = run_open_loop(server.endpoint, requests, times, drain_timeout_s=30,
                                       max_duration_s=args.seconds)  # fmt: skip
            finally:
                code = server.stop()
        captured = [line for line in log_path.read_text().splitlines() if "captured" in line]
    summary = summarize(report)
    by_size: dict[int, list[float]] = {}
    for o in report.outcomes:
        if o.status == "ok":
            bucket = entry.spec.bucket_batch(max(1, o.batch_size))
            by_size.setdefault(bucket, []).append(o.latency_s * 1e3)
    per_bucket = {b: {"replies": len(v), "p50_ms": float(np.percentile(v, 50)),
                    "p99_ms": float(np.percentile(v, 99))}
                for b, v in sorted(by_size.items())}  # fmt: skip
    counts = summary["counts"]
    ok = counts["lost"] == 0 and counts["error"] == 0 and code == 0
    return {"ok": ok, "ready_s": ready_s, "slo_ms": slo_ms, "rate_per_s": rate,
            "finish_rate": summary["finish_rate"], "counts": counts,
            "latency_by_bucket": per_bucket, "capture_log": captured,
            "exit_code": code}  # fmt: skip


def print_model(name: str, res: dict) -> None:
    ip = res.get("in_process", {})
    print(f"\n== {name}: {'ok' if res['ok'] else 'FAILED'}")
    if "error" in ip:
        print(f"  in process: {ip['error']}")
    elif ip:
        cap = (f"captured {ip['graphs']} graphs in {ip['capture_s']:.2f} s"
               if ip["cuda_graphs"] else "not captured (cuda_graphs = false)")
        print(f"  in process: {cap}; reference: {ip['reference']}")
        print(f"  {'bucket':>6} {'same':>5} {'max|diff|':>10} {'ms':>8} {'eager ms':>9}")
        for b, row in ip["buckets"].items():
            eager = f"{row['eager_ms']:9.3f}" if "eager_ms" in row else f"{'-':>9}"
            print(f"  {b:>6} {str(row['same']):>5} {row['max_abs_diff']:10.2e} "
                  f"{row['ms']:8.3f} {eager}")  # fmt: skip
    sv = res.get("server")
    if sv is None:
        return
    if "error" in sv:
        print(f"  server: {sv['error']}")
        return
    print(f"  server: ready in {sv['ready_s']:.1f} s; {sv['rate_per_s']:.0f} "
          f"req/s, SLO {sv['slo_ms']:.1f} ms: finish rate {sv['finish_rate']:.3f}, "
          f"{sv['counts']}")  # fmt: skip
    for line in sv["capture_log"][:4]:
        print(f"    log: {line.strip()[:140]}")
    for b, row in sv["latency_by_bucket"].items():
        print(f"    bucket {b:>3}: {row['replies']:>5} replies, p50 {row['p50_ms']:.2f} ms, "
              f"p99 {row['p99_ms']:.2f} ms")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated built-in models (default: all)")
    ap.add_argument("--device", default="cuda:0",
                    help="the device of step 1; cpu: a dry run of this script on the CPU")
    ap.add_argument("--reps", type=int, default=5, help="timed runs per bucket")
    ap.add_argument("--requests", type=int, default=400, help="requests per server load")
    ap.add_argument("--seconds", type=float, default=20.0, help="at most this long a load")
    ap.add_argument("--slo-x", type=float, default=10.0, help="SLO as a multiple of solo")
    ap.add_argument("--no-server", action="store_true", help="step 1 only")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    import torch

    from orloj_rt.models.builtin import BUILTIN_MODELS, UNAVAILABLE_MODELS

    dry_run = args.device == "cpu"
    if not dry_run and not torch.cuda.is_available():
        msg = (f"gpu_check: CUDA is not available here (torch {torch.__version__}, "
               "torch.cuda.is_available() is False): nothing to check. Run this on a "
               "machine with a CUDA GPU and a CUDA build of torch.")  # fmt: skip
        if args.json:
            print(json.dumps({"cuda": False, "devices": [], "models": {}, "failures": [],
                              "message": msg}))  # fmt: skip
        else:
            print(msg)
        return 0

    names = args.models.split(",") if args.models else list(BUILTIN_MODELS)
    unknown = [n for n in names if n not in BUILTIN_MODELS]
    if unknown:
        why = "; ".join(f"{n}: {UNAVAILABLE_MODELS.get(n, 'no such built-in model')}"
                        for n in unknown)  # fmt: skip
        print(f"gpu_check: {why} (built-in: {', '.join(BUILTIN_MODELS)})", file=sys.stderr)
        return 2
    devices = (["cpu (a dry run: nothing is captured)"] if dry_run else
               [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
    if not args.json:
        print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"{len(devices)} device(s): {', '.join(devices)}")  # fmt: skip
    results: dict = {}
    failures: list[str] = []
    for name in names:
        entry = BUILTIN_MODELS[name]
        res: dict = {}
        try:
            res["in_process"] = check_in_process(entry, args.device, args.reps)
        except Exception as exc:  # noqa: BLE001 - report every model, then fail
            res["in_process"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if not args.no_server:
            solo = res["in_process"].get("solo_ms", 1.0)
            try:
                res["server"] = check_server(name, entry, solo, args)
            except Exception as exc:  # noqa: BLE001
                res["server"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        res["ok"] = all(part.get("ok", False) for part in res.values())
        if not res["ok"]:
            failures.append(name)
        results[name] = res
        if not args.json:
            print_model(name, res)
    if args.json:
        print(json.dumps({"cuda": not dry_run, "devices": devices, "models": results,
                          "failures": failures}, default=str))  # fmt: skip
    else:
        print(f"\ngpu_check: {len(names) - len(failures)}/{len(names)} models passed"
              + (f"; FAILED: {', '.join(failures)}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
