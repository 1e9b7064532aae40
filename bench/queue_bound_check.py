#!/usr/bin/env python3
"""The waiting bound against the simulator: every policy that does not know solo times
must stay under it (orloj_rt/sim/queue_bound.py), the clairvoyant oracle need not.

For each workload x SLO x rate (one worker, Poisson arrivals, max batch 32, c(b) = 1 +
0.15 (b - 1)): the bound and its Monte Carlo standard error, and the finish rates of
orloj, fifo, edf, nexus, clockwork and the oracle on the same requests. A cell is OVER
when the best policy without solo times beats the bound by more than 3 standard errors
of the run's finish rate plus 3 of the bound's (that would be a bug in the bound).

    python bench/queue_bound_check.py                        # the table (about 2 min)
    python bench/queue_bound_check.py --json                 # one JSON object
    python bench/queue_bound_check.py --depth 3 --samples 50000   # tighter, slower
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BLIND = ("orloj", "fifo", "edf", "nexus", "clockwork")


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="bimodal,lognormal")
    ap.add_argument("--slos", type=floats, default=[2.0, 5.0])
    ap.add_argument("--rates", type=floats, default=[0.3, 1.0, 2.0],
                    help="arrivals per mean solo time")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--samples", type=int, default=20_000,
                    help="the bound's Monte Carlo batches per size")
    ap.add_argument("--depth", type=int, default=2, choices=(1, 2, 3))
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    import numpy as np

    from orloj_rt.engine.pure.batch_model import Inflation
    from orloj_rt.sim import SimConfig, WorkloadSpec, run
    from orloj_rt.sim.queue_bound import waiting_finish_rate_bound
    from orloj_rt.sim.workloads import sample_solo

    rows, t0 = [], time.time()
    workloads = [w for w in args.workloads.split(",") if w]
    for solo, slo, rate in itertools.product(workloads, args.slos, args.rates):
        spec = WorkloadSpec(solo=solo, slo=slo, load=rate, requests=args.requests,
                            seed=args.seed)  # fmt: skip
        result = run(SimConfig(spec, policies=(*BLIND, "oracle")))
        fr = {p: m["finish_rate"] for p, m in result["policies"].items()}
        law = sample_solo(spec, np.random.default_rng(args.seed + 1), 100_000)
        bound, se = waiting_finish_rate_bound(law, slo, rate, Inflation(32, 0.15).table,
                                              samples=args.samples, depth=args.depth)  # fmt: skip
        best = max(BLIND, key=lambda p: fr[p])
        noise = 3 * math.sqrt(fr[best] * (1 - fr[best]) / args.requests) + 3 * se
        rows.append({"workload": solo, "slo": slo, "rate": rate, "bound": bound, "se": se,
                     "best": best, "best_rate": fr[best], "oracle": fr["oracle"],
                     "over": fr[best] > bound + noise})  # fmt: skip
        if not args.json:
            r = rows[-1]
            print(f"{solo:9s} SLO {slo:g} rate {rate:g}: bound {bound:.4f} +- {se:.4f}, "
                  f"best without solo times {fr[best]:.4f} ({best}), oracle "
                  f"{fr['oracle']:.4f}{'  OVER' if r['over'] else ''}", flush=True)
    out = {"rows": rows, "over": sum(r["over"] for r in rows),
           "max_best_minus_bound": max(r["best_rate"] - r["bound"] for r in rows),
           "seconds": round(time.time() - t0, 1), "command": " ".join(
               ["python", "bench/queue_bound_check.py", *(argv if argv is not None
                                                         else sys.argv[1:])])}  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{out['over']} of {len(rows)} cells over the bound; largest best - bound "
              f"{out['max_best_minus_bound']:+.4f} ({out['seconds']} s)")
    return 1 if out["over"] else 0


if __name__ == "__main__":
    sys.exit(main())
