"""`orloj-rt bench`: open-loop load against a running server, over the wire protocol.

    orloj-rt bench --model early_exit --rate 300 --requests 2000 --slo-ms 25
    orloj-rt bench --model generate --trace conv.csv --rate 40 --app chat --app search --json

It asks the server for the model's inputs (`models`), draws the requests' inputs with the
model's generator (orloj_rt/models/load_inputs.py: e.g. bimodal exit depths for
early_exit, trace lengths for generate), draws arrival times (Poisson, Gamma, or a trace's
timestamps), sends every request at its time whatever the replies (open loop), and prints
throughput, finish rate, the count of each status and p50/p99 latency; `--json` prints
one JSON object instead. It is bounded in requests (`--requests`) and in time
(`--max-duration`, then `--drain-timeout`), and talks only to a loopback or ipc endpoint
unless `--allow-remote` is given.
"""

from __future__ import annotations

import ipaddress
import json
import sys

MAX_REQUESTS = 1_000_000
EXIT_USAGE = 2


def register(sub) -> None:
    from orloj_rt.protocol.wire import DEFAULT_ENDPOINT

    p = sub.add_parser(
        "bench",
        help="drive open-loop load at a running server and print finish rate and latency",
        description=(
            "Send an open-loop load (Poisson, Gamma or trace arrivals) of one model's "
            "requests to a running orloj-rt server and print throughput, finish rate (ok "
            "within the SLO), the count of each status and p50/p99 latency. Inputs are drawn "
            "per model (early_exit: bimodal exit depths; generate: lengths from the trace's "
            "GeneratedTokens, scaled; seq_encoder: from ContextTokens; any other model: "
            "random inputs of its declared shapes)."
        ),
    )
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                   help="the server's endpoint (default: %(default)s)")  # fmt: skip
    p.add_argument("--model", required=True, help="the model to load")
    load = p.add_argument_group("arrivals (give --rate, --trace, or both)")
    load.add_argument("--rate", type=float, metavar="R",
                      help="mean arrival rate in requests/s; with --trace, the trace's gaps "
                           "are rescaled to this mean rate")  # fmt: skip
    load.add_argument("--trace", metavar="FILE",
                      help="a CSV trace: arrival gaps from its TIMESTAMP column (in file "
                           "order), and per-request token counts where the model's inputs "
                           "use them (GeneratedTokens for generate, ContextTokens for "
                           "seq_encoder)")  # fmt: skip
    load.add_argument("--trace-start", type=int, default=0, metavar="ROW",
                      help="the trace row of the first request (default: %(default)s)")
    load.add_argument("--arrival", choices=("poisson", "gamma"), default="poisson",
                      help="the arrival process without --trace (default: %(default)s)")
    load.add_argument("--arrival-cv", type=float, default=1.0, metavar="CV",
                      help="the coefficient of variation of Gamma gaps (default: "
                           "%(default)s; 1 is Poisson-like, >1 bursty)")  # fmt: skip
    p.add_argument("--requests", type=int, default=1000, metavar="N",
                   help=f"requests to send, at most {MAX_REQUESTS:,} (default: %(default)s)")
    p.add_argument("--slo-ms", type=float, metavar="MS",
                   help="every request's SLO (default: the model's)")  # fmt: skip
    p.add_argument("--app", action="append", metavar="NAME[=WEIGHT]",
                   help="an application tag; repeat for a mix (each request picks one at "
                        "random, by weight; default: one app, 'bench')")  # fmt: skip
    p.add_argument("--inputs", metavar="KIND",
                   help="the input generator (default: the model's own if it is a built-in, "
                        "else generic); see orloj_rt/models/load_inputs.py")  # fmt: skip
    p.add_argument("--input-param", action="append", metavar="KEY=VALUE",
                   help="a parameter of the input generator, e.g. deep_fraction=0.3 "
                        "(repeatable)")  # fmt: skip
    p.add_argument("--hint", action="store_true",
                   help="send the input's cost hint where its generator has one "
                        "(seq_encoder: the length)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--max-duration", type=float, default=300.0, metavar="S",
                   help="stop sending after S seconds; requests not sent by then are "
                        "reported as unsent (default: %(default)s)")  # fmt: skip
    p.add_argument("--drain-timeout", type=float, metavar="S",
                   help="after the last send, wait at most S seconds for replies (default: "
                        "10 s plus the SLO)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="wait at most S seconds for the server's model list (default: "
                        "%(default)s)")  # fmt: skip
    p.add_argument("--allow-remote", action="store_true",
                   help="allow an endpoint that is not loopback or ipc (a load generator "
                        "aimed at someone else's server is an attack)")  # fmt: skip
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="a progress bar on stderr: auto shows it on a terminal "
                        "(default: %(default)s)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------- checks
def is_local_endpoint(endpoint: str) -> bool:
    """ipc://, inproc:// and tcp:// to a loopback address (or localhost) are local."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return False
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    host = host.strip("[]")
    if ";" in host:  # zmq's "source;destination" form: judge the destination
        host = host.rsplit(";", 1)[1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_apps(items: list[str] | None) -> tuple[list[str], list[float]]:
    if not items:
        return ["bench"], [1.0]
    names, weights = [], []
    for item in items:
        name, _, w = item.partition("=")
        if not name.strip():
            raise ValueError(f"--app {item!r}: give a name, e.g. --app search or --app search=2")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"--app {item!r}: the weight must be a number") from None
        if not weight > 0:
            raise ValueError(f"--app {item!r}: the weight must be > 0")
        names.append(name.strip())
        weights.append(weight)
    return names, weights


def _parse_params(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--input-param {item!r}: write KEY=VALUE")
        out[key] = val
    return out


def _fail(text: str, code: int = EXIT_USAGE) -> int:
    print(f"orloj-rt bench: {text}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------- progress
class ProgressBar:
    """A one-line bar on stderr, redrawn at most 10 times a second."""

    WIDTH = 30

    def __init__(self, total: int, label: str, stream=None):
        self.total = max(total, 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr

    def __call__(self, sent: int, answered: int, total: int) -> None:
        done = int(self.WIDTH * answered / self.total)
        bar = "#" * done + "-" * (self.WIDTH - done)
        self.stream.write(f"\r{self.label} [{bar}] sent {sent}/{total}, answered {answered}")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


# ---------------------------------------------------------------------- run
def build_load(args, spec: dict):
    """(requests for run_open_loop, send times, apps, draws) from the arguments."""
    import numpy as np

    from orloj_rt.client.loadgen import arrival_times, read_trace, trace_arrival_times
    from orloj_rt.models.load_inputs import default_kind, make_inputs

    rng = np.random.default_rng(args.seed)
    n = args.requests
    trace = None
    if args.trace:
        trace = read_trace(args.trace)
        if "TIMESTAMP" not in trace:
            raise ValueError(f"--trace {args.trace}: no TIMESTAMP column; the columns are "
                             f"{sorted(trace)}")  # fmt: skip
        rows = len(trace["TIMESTAMP"])
        start = args.trace_start % rows
        times = trace_arrival_times(trace["TIMESTAMP"], n, args.rate, start)
        # the inputs follow the same rows as the arrivals
        order = np.arange(start, start + n) % rows
        trace = {k: v[order] for k, v in trace.items()}
    else:
        times = arrival_times(n, args.rate, rng, args.arrival, args.arrival_cv)
    kind = args.inputs or default_kind(spec["name"])
    draws = make_inputs(kind, spec, n, rng, trace, _parse_params(args.input_param))
    names, weights = _parse_apps(args.app)
    probs = np.asarray(weights) / sum(weights)
    apps = [names[i] for i in rng.choice(len(names), size=n, p=probs)]
    requests = []
    for d, app in zip(draws, apps, strict=True):
        r = {"model": spec["name"], "inputs": d.inputs, "app": app}
        if args.slo_ms is not None:
            r["slo_ms"] = args.slo_ms
        if args.hint and d.hint is not None:
            r["hint"] = d.hint
        requests.append(r)
    return requests, times.tolist(), apps, draws, kind


def run(args) -> int:
    from orloj_rt.client import Client
    from orloj_rt.client.loadgen import run_open_loop, summarize

    if not is_local_endpoint(args.endpoint) and not args.allow_remote:
        return _fail(f"--endpoint {args.endpoint} is not a loopback or ipc endpoint; "
                     "pass --allow-remote to load a server on another host (only one you "
                     "run)")  # fmt: skip
    if not 1 <= args.requests <= MAX_REQUESTS:
        return _fail(f"--requests must be in 1..{MAX_REQUESTS:,}")
    if args.rate is None and not args.trace:
        return _fail("give --rate R (requests/s) or --trace FILE")
    if args.rate is not None and not args.rate > 0:
        return _fail("--rate must be > 0")
    if args.slo_ms is not None and not args.slo_ms > 0:
        return _fail("--slo-ms must be > 0")
    if not args.max_duration > 0 or (args.drain_timeout is not None and args.drain_timeout < 0):
        return _fail("--max-duration must be > 0 and --drain-timeout >= 0")
    if not args.arrival_cv > 0:
        return _fail("--arrival-cv must be > 0")
    try:
        with Client(args.endpoint, timeout_s=args.timeout) as c:
            models = {m["name"]: m for m in c.models()}
    except TimeoutError as exc:
        return _fail(str(exc), 1)
    spec = models.get(args.model)
    if spec is None:
        return _fail(f"the server has no model {args.model!r}; it serves "
                     f"{', '.join(sorted(models)) or 'none'}")  # fmt: skip
    try:
        requests, times, apps, draws, kind = build_load(args, spec)
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    slo_ms = args.slo_ms if args.slo_ms is not None else float(spec["default_slo_ms"])
    drain = args.drain_timeout if args.drain_timeout is not None else 10.0 + slo_ms / 1000.0
    show = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    bar = ProgressBar(len(requests), f"{args.model}") if show else None
    report = run_open_loop(args.endpoint, requests, times, drain_timeout_s=drain,
                           max_duration_s=args.max_duration, progress=bar)  # fmt: skip
    if bar is not None:
        bar.close()
    summary = summarize(report, apps)
    offered = (len(times) - 1) / times[-1] if len(times) > 1 and times[-1] > 0 else None
    work = [d.work for d in draws if d.work is not None]
    result = {
        "model": args.model,
        "endpoint": args.endpoint,
        "inputs": kind,
        "slo_ms": slo_ms,
        "arrival": "trace" if args.trace else args.arrival,
        "offered_rate": offered,
        "mean_work": sum(work) / len(work) if work else None,
        **summary,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(format_text(result))
    problems = summary["counts"]["lost"] or summary["extra_replies"]
    return 1 if problems else 0


def format_text(r: dict) -> str:
    c = r["counts"]
    lat = r["latency_ms"]

    def ms(v) -> str:
        return "-" if v is None else f"{v:.2f} ms"

    offered = f"{r['offered_rate']:.1f} req/s offered" if r["offered_rate"] else "one request"
    lines = [
        f"orloj-rt bench: {r['model']} at {r['endpoint']}, {r['requests']} requests "
        f"({r['arrival']}, {offered}), SLO {r['slo_ms']:g} ms, inputs {r['inputs']}",
        f"  sent         {r['sent']} in {r['duration_s']:.2f} s",
        f"  throughput   {r['throughput']:.1f} req/s ok; goodput {r['goodput']:.1f} req/s "
        "within the SLO",
        f"  finish rate  {r['finish_rate']:.1%} (ok within the SLO / sent)",
        "  status       " + ", ".join(f"{k} {c[k]}" for k in c if c[k] or k in
                                      ("ok", "dropped", "rejected", "error")),
        f"  latency      p50 {ms(lat['p50'])}, p99 {ms(lat['p99'])} (ok replies, client "
        f"side); {r['late']} ok but late; mean batch {r['mean_batch']:.2f}",
    ]  # fmt: skip
    for app, a in (r.get("apps") or {}).items():
        lines.append(f"  app {app:<9} finish rate {a['finish_rate']:.1%} of {a['sent']}, "
                     f"p99 {ms(a['latency_ms']['p99'])}")  # fmt: skip
    if c["lost"]:
        lines.append(f"  WARNING: {c['lost']} request(s) got no reply within the drain timeout")
    return "\n".join(lines)
