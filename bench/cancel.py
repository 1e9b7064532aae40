#!/usr/bin/env python3
"""Cancellation under load (issue 18): does a cancelled request cost the others anything?

    .venv/bin/python bench/cancel.py                  # a table
    .venv/bin/python bench/cancel.py --json           # one JSON object

early_exit on one CPU worker, policy orloj, at `--load` (1.5) times the rate one worker
serves it one request at a time (the mean solo time learned at the server's warm-up), SLO
`--slo-mult` (10) times that mean, `--requests` (3,000) Poisson arrivals with the sweep's
inputs (orloj_rt/models/load_inputs.py). A client cancels a random `--cancel-share` (30%)
of them `--cancel-after-ms` (1) after sending each. Two runs, each on a fresh server:

- **with cancels**: every request sent, the chosen ones cancelled;
- **without them**: the same send times and inputs, the chosen requests not sent at all.

It checks (issue 18's targets): every request got exactly one reply; the cancelled ones
that were still queued never reached a worker (the scheduler's count of requests run in
batches equals the replies `ok` plus the cancels that found their target running); and
the finish rate of the requests not cancelled is at least that of the run without the
cancelled ones, minus 0.03.
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

MODEL = "early_exit"
TARGET_GAP = 0.03


def start_server():
    from orloj_rt.runtime.launcher import ServerProcess

    return ServerProcess(["--cpu-workers", "1", "--policy", "orloj", "--log-level", "WARNING"],
                         start_timeout_s=180).start()  # fmt: skip


def mean_solo_s(endpoint: str) -> float:
    from orloj_rt.client import Client

    with Client(endpoint, timeout_s=30) as c:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sched = c.stats()["models"][MODEL].get("scheduler") or {}
            if sched.get("prior_mean_ms"):
                return sched["prior_mean_ms"] / 1e3
            time.sleep(0.2)
    raise RuntimeError("the scheduler reported no prior mean within 30 s")


def batched(endpoint: str) -> int:
    """Requests the scheduler has sent to workers (batches x mean batch size)."""
    from orloj_rt.client import Client

    time.sleep(1.5)  # the scheduler's stats come every second or so
    with Client(endpoint, timeout_s=30) as c:
        s = c.stats()["models"][MODEL]["scheduler"]
    return round(s["batches"] * s["mean_batch_size"])


def plan(n: int, rate: float, slo_ms: float, share: float, seed: int):
    from orloj_rt.client.loadgen import arrival_times
    from orloj_rt.models.builtin import BUILTIN_MODELS
    from orloj_rt.models.load_inputs import make_inputs

    rng = np.random.default_rng(seed)
    times = arrival_times(n, rate, rng).tolist()
    draws = make_inputs(MODEL, BUILTIN_MODELS[MODEL].spec.to_dict(), n, rng)
    requests = [{"model": MODEL, "inputs": d.inputs, "slo_ms": slo_ms, "app": "cancel"}
                for d in draws]  # fmt: skip
    chosen = sorted(rng.choice(n, size=int(round(share * n)), replace=False).tolist())
    return requests, times, chosen


def run(endpoint: str, requests, times, cancel_after: dict | None):
    from orloj_rt.client.loadgen import run_open_loop

    return run_open_loop(endpoint, requests, times, drain_timeout_s=10.0,
                         cancel_after=cancel_after)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--load", type=float, default=1.5)
    ap.add_argument("--slo-mult", type=float, default=10.0)
    ap.add_argument("--cancel-share", type=float, default=0.3)
    ap.add_argument("--cancel-after-ms", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    t0 = time.monotonic()

    server = start_server()
    try:
        mean = mean_solo_s(server.endpoint)
        rate = args.load / mean
        slo_ms = args.slo_mult * mean * 1e3
        requests, times, chosen = plan(args.requests, rate, slo_ms, args.cancel_share,
                                       args.seed)  # fmt: skip
        say(f"{MODEL}: mean solo {mean * 1e3:.3f} ms; {args.requests} requests at "
            f"{rate:.0f}/s (load {args.load:g}), SLO {slo_ms:.1f} ms; cancelling "
            f"{len(chosen)} of them {args.cancel_after_ms:g} ms after sending ...")
        after = {i: args.cancel_after_ms / 1e3 for i in chosen}
        with_cancels = run(server.endpoint, requests, times, after)
        ran = batched(server.endpoint)
    finally:
        server.stop()
    keep = [i for i in range(args.requests) if i not in set(chosen)]
    say(f"the same load without the {len(chosen)} cancelled requests, on a fresh server ...")
    server = start_server()
    try:
        without = run(server.endpoint, [requests[i] for i in keep], [times[i] for i in keep],
                      None)  # fmt: skip
    finally:
        server.stop()

    out_w = with_cancels.outcomes
    statuses = {s: sum(o.status == s for o in out_w)
                for s in ("ok", "dropped", "rejected", "error", "cancelled", "lost")}  # fmt: skip
    results = {r: sum(v == r for v in with_cancels.cancels.values())
               for r in ("queued", "running", "answered", "unknown")}  # fmt: skip
    rest = [out_w[i] for i in keep]
    rest_finish = sum(o.status == "ok" and o.met_slo for o in rest) / len(rest)
    base_finish = without.finish_rate
    one_reply = statuses["lost"] == 0 and with_cancels.extra_replies == 0 and all(
        o.status != "unsent" for o in out_w)  # fmt: skip
    never_ran = ran == statuses["ok"] + results["running"] + statuses["error"]
    out = {
        "model": MODEL, "mean_solo_ms": mean * 1e3, "rate": rate, "slo_ms": slo_ms,
        "requests": args.requests, "cancelled_sent": len(chosen),
        "cancel_after_ms": args.cancel_after_ms, "statuses": statuses,
        "cancel_results": results, "run_by_workers": ran,
        "finish_rest_with_cancels": rest_finish, "finish_without_cancelled": base_finish,
        "targets": {
            "one_reply_each": one_reply,
            "queued_cancels_never_ran": never_ran,
            "finish_not_worse": rest_finish >= base_finish - TARGET_GAP,
        },
        "elapsed_s": time.monotonic() - t0,
    }  # fmt: skip
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"\nreplies: {statuses}, extra replies {with_cancels.extra_replies}")
    print(f"cancels: {results}")
    print(f"requests run by workers {ran} = ok {statuses['ok']} + cancels that found their "
          f"target running {results['running']} + error {statuses['error']}: "
          f"{'yes' if never_ran else 'NO'}")
    print(f"finish rate of the {len(keep)} requests not cancelled: {rest_finish:.3f}; "
          f"the same load without the cancelled ones: {base_finish:.3f}")
    for name, ok in out["targets"].items():
        print(f"{'PASS' if ok else 'MISS'} {name}")
    print(f"elapsed {out['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
