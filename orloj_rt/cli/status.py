"""`orloj-rt status`: a live table of a server's models, from its `health` and `stats`.

    orloj-rt status --endpoint tcp://127.0.0.1:5555          # refreshes until Ctrl-C
    orloj-rt status --endpoint tcp://127.0.0.1:5555 --once   # one table

Per model: requests queued in the scheduler, in flight, answered, the finish rate (ok
within the SLO over answered) since the server started and over the last refresh, and the
drops, rejections and errors; above the table the server's status and its workers.
"""

from __future__ import annotations

import signal
import sys
import time

CLEAR = "\x1b[H\x1b[J"  # cursor home, clear to the end: a terminal redraws in place


def register(sub) -> None:
    from orloj_rt.protocol.wire import DEFAULT_ENDPOINT

    p = sub.add_parser(
        "status",
        help="show a live table of a server's models: queues, finish rate, drops, workers",
        description=(
            "Print a table of per-model queue length, requests in flight, finish rate (ok "
            "within the SLO / answered; since start and over the last refresh), drops, "
            "rejections and errors, and the server's workers. Refreshes every --interval "
            "seconds until Ctrl-C; --once prints it once."
        ),
    )
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, metavar="ENDPOINT",
                   help="the server's ZeroMQ endpoint (default: %(default)s)")  # fmt: skip
    p.add_argument("--once", action="store_true", help="print the table once and exit")
    p.add_argument("--interval", type=float, default=1.0, metavar="S",
                   help="seconds between refreshes (default: %(default)s)")  # fmt: skip
    p.add_argument("--curve-keys", metavar="DIR",
                   help="for a server started with --curve-keys: a directory holding "
                        "server.key and this client's client.key_secret")  # fmt: skip
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="give up when the server does not answer within S seconds "
                        "(default: %(default)s)")  # fmt: skip
    p.set_defaults(func=run)


def _rate(met: int, answered: int) -> str:
    return f"{100.0 * met / answered:5.1f}%" if answered > 0 else "    -"


def _answered(c: dict) -> int:
    return c.get("ok", 0) + c.get("dropped", 0) + c.get("rejected", 0) + c.get("error", 0)


def render(endpoint: str, health: dict, stats: dict, previous: dict | None) -> str:
    """The table for one refresh; `previous` is the last refresh's `stats` (or None)."""
    workers = f"{health.get('workers_ready', 0)}/{health.get('workers', 0)} ready"
    lines = [
        f"orloj-rt at {endpoint}: {health.get('status', '?')}, workers {workers}, policy "
        f"{stats.get('policy', '?')}, up {stats.get('uptime_s', 0.0):.0f} s, "
        f"{stats.get('in_flight', 0)} in flight",
        "",
    ]
    head = ("model", "queued", "in flight", "answered", "finish", "recent", "dropped",
            "rejected", "errors")  # fmt: skip
    rows = []
    before = (previous or {}).get("models", {})
    for name, c in sorted(stats.get("models", {}).items()):
        answered = _answered(c)
        b = before.get(name)
        if b is not None:
            recent = _rate(c.get("met_slo", 0) - b.get("met_slo", 0), answered - _answered(b))
        else:
            recent = "    -"
        queued = (c.get("scheduler") or {}).get("queued", "-")
        rows.append((name, str(queued), str(c.get("in_flight", 0)), str(answered),
                     _rate(c.get("met_slo", 0), answered), recent, str(c.get("dropped", 0)),
                     str(c.get("rejected", 0)), str(c.get("error", 0))))  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        cells = [r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:],
                                                                      strict=True)]  # fmt: skip
        lines.append("  ".join(cells))
    lines.append("")
    lines.append("finish: ok within the SLO / answered, since start; recent: since the last "
                 "refresh")  # fmt: skip
    return "\n".join(lines)


def run(args) -> int:
    from orloj_rt.client import Client

    if args.interval <= 0:
        print("orloj-rt status: --interval must be positive", file=sys.stderr)
        return 2
    live = not args.once
    clear = live and sys.stdout.isatty()
    if live:
        # Ctrl-C ends the live view even where SIGINT came ignored from the parent (a
        # background job of a non-interactive shell starts so): Python then installs no
        # handler of its own, and the view would sleep on through every Ctrl-C
        signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = None
    try:
        with Client(args.endpoint, timeout_s=args.timeout, curve_keys=args.curve_keys) as c:
            while True:
                try:
                    health, stats = c.health(), c.stats()
                except TimeoutError:
                    print(f"orloj-rt status: no server answers at {args.endpoint} within "
                          f"{args.timeout:g} s (raise --timeout, or check the endpoint)",
                          file=sys.stderr)  # fmt: skip
                    return 1
                table = render(args.endpoint, health, stats, previous)
                print((CLEAR if clear else "") + table, flush=True)
                if not live:
                    return 0
                if not clear:
                    print(flush=True)  # a blank line between tables in a log or a pipe
                previous = stats
                time.sleep(args.interval)
    except KeyboardInterrupt:  # Ctrl-C ends the live view: not an error
        return 0
