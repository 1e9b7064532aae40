"""The server options shared by `orloj-rt start` and `orloj-rt demo`, and their checks."""

from __future__ import annotations

import argparse
import math
import os
import sys

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def policy_names() -> list[str]:
    """The registered policies, read at run time (the registry grows): whole-batch, then
    step-level (docs/runtime.md: a model without steps under a step policy is served in
    whole batches by its counterpart, e.g. orloj-step -> orloj)."""
    from orloj_rt.policies import POLICIES, STEP_POLICIES

    return sorted(POLICIES) + sorted(STEP_POLICIES)


def default_worker_threads(n_cpu_workers: int) -> int:
    """torch threads per CPU worker: the cores left after the frontend and scheduler,
    shared, at most 4 (small models gain nothing from more)."""
    cores = os.cpu_count() or 1
    return max(1, min(4, (cores - 2) // max(1, n_cpu_workers)))


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    from orloj_rt.protocol.wire import DEFAULT_ENDPOINT
    from orloj_rt.runtime.security import DEFAULT_MAX_FRAME_BYTES

    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--gpus",
        metavar="IDS",
        help="serve on these CUDA devices, one worker each, e.g. 0,1, or all "
        "(default: every visible GPU, or one CPU worker where there is none)",
    )
    where.add_argument(
        "--cpu-workers",
        type=int,
        metavar="N",
        help="serve on the CPU with N worker processes",
    )
    p.add_argument(
        "--models",
        metavar="DIR",
        help="a model repository: a directory of *.toml model configs "
        "(default: the built-in models early_exit and resnet_static)",
    )
    p.add_argument(
        "--bind",
        default=DEFAULT_ENDPOINT,
        metavar="ENDPOINT",
        help="the ZeroMQ endpoint clients connect to: tcp://HOST:PORT (PORT * picks a "
        "free port) or ipc:///path (default: %(default)s)",
    )
    p.add_argument("--policy", default="orloj", choices=policy_names(),
                   help="the batching policy (default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--policy-param", action="append", metavar="KEY=VALUE",
        help="a constructor argument of the policy, e.g. theta=0.8 (repeat for more); the "
        "same keys as `orloj-rt sim --policy-param`. VALUE reads as true/false, none, an "
        "integer, a number, a comma-separated list, or else text (docs/simulation.md)",
    )  # fmt: skip
    p.add_argument(
        "--fairness", type=float, default=0.0, metavar="F",
        help="fairness across apps (orloj): under overload, the apps' weights adapt online "
        "so that each app's finish rate stays near the model's; F is the gain, 0 is off "
        "(the same as --policy-param fairness=F; docs/simulation.md#fairness) "
        "(default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--max-apps", type=int, default=256, metavar="N",
        help="the most apps per model that the scheduler keeps state for (a learned "
        "distribution, stats), the overflow app included; beyond, a new app's requests "
        "share the app '~other' and are served as usual. An app with nothing in flight "
        "that is not seen for 60 s is forgotten (docs/runtime.md#apps) (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--log-level", default="INFO", choices=LOG_LEVELS, type=str.upper,
        help="the server's log level; logs go to stderr (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--worker-threads",
        type=int,
        metavar="N",
        help="torch threads per CPU worker (default: the cores left after the frontend and "
        "scheduler, shared among the workers, at most 4)",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=180.0,
        metavar="S",
        help="give up if the workers are not warmed up and ready after S seconds "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="on SIGTERM/SIGINT, let in-flight requests finish for up to S seconds; the rest "
        "are answered 'rejected' (default: %(default)s)",
    )
    p.add_argument(
        "--hang-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="a worker that holds a batch (or step members) for S seconds without finishing "
        "a batch or reporting a step is treated as hung: it is killed and restarted, and its "
        "requests re-queued or answered 'error'. Set it above your longest batch; 0 turns it "
        "off (default: %(default)s)",
    )
    p.add_argument(
        "--max-frame-bytes",
        type=_byte_size,
        default=DEFAULT_MAX_FRAME_BYTES,
        metavar="N",
        help="the largest frame (header or tensor) the client socket reads, in bytes (a "
        "suffix K, M or G is 1024-based). Any smaller frame that is wrong for its model is "
        "answered 'error'; a bigger one is never read: ZeroMQ closes that connection, and "
        "the client's other replies wait for it to reconnect (docs/protocol.md). At least "
        "the largest model input (default: 64M)",
    )
    # the gateway process (runtime/gateway_common.py; docs/http.md, docs/grpc.md,
    # docs/metrics.md): off unless a port is given
    p.add_argument(
        "--http-port",
        type=_port,
        metavar="P",
        help="also serve the KServe v2 / Open Inference Protocol over HTTP on port P "
        "(0 picks a free port; default: off)",
    )
    p.add_argument(
        "--grpc-port",
        type=_port,
        metavar="P",
        help="also serve the KServe v2 / Open Inference Protocol over gRPC on port P "
        "(inference.GRPCInferenceService, as Triton's gRPC port: tritonclient[grpc] works "
        "as is; docs/grpc.md; 0 picks a free port, which the ready line names; default: off)",
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        metavar="P",
        help="serve Prometheus metrics at http://HOST:P/metrics (0 picks a free port; "
        "default: off)",
    )
    p.add_argument(
        "--http-header-timeout",
        type=_seconds,
        metavar="S",
        help="close an HTTP connection whose request headers are not complete S seconds after "
        "their first byte (the first request's: after the connect) (default: 10)",
    )
    p.add_argument(
        "--http-body-timeout",
        type=_seconds,
        metavar="S",
        help="answer 408 and close the connection when an inference request's body is not "
        "complete S seconds after its headers (default: 60)",
    )
    p.add_argument(
        "--http-keepalive-timeout",
        type=_seconds,
        metavar="S",
        help="close an HTTP connection that has no request in progress for S seconds "
        "(default: 75)",
    )
    p.add_argument(
        "--http-max-body-bytes",
        type=_positive_int,
        metavar="N",
        help="answer 413 to a request body over N bytes (default: 8 MiB, or more where a "
        "model's full batch as JSON needs more; docs/http.md)",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="let --bind name an address other machines can reach (e.g. tcp://*:5555), and "
        "the gateway's ports (--http-port, --grpc-port, --metrics-port) listen on every "
        "interface; without it everything listens on this machine only (127.0.0.1, ::1, "
        "ipc://)",
    )
    p.add_argument(
        "--curve-keys",
        metavar="DIR",
        help="require ZeroMQ CURVE on the client socket: DIR holds the server's key pair and "
        "authorized_clients/*.key, the public keys of the clients it serves (make it with "
        "`orloj-rt keys DIR`; docs/reliability.md). Default: off",
    )


def _byte_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = units.get(t[-1:], 1)
    try:
        n = int(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        n = -1
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (e.g. 67108864 "
                                         "or 64M)")  # fmt: skip
    return n


def _seconds(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        s = math.nan
    if not 0 < s < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return s


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number > 0")
    return n


def http_limits(args):
    """The HTTP ports' limits from the flags; a flag not given keeps HttpLimits' default."""
    from orloj_rt.runtime.http_gateway import HttpLimits

    given = {"header_timeout_s": args.http_header_timeout,
             "body_timeout_s": args.http_body_timeout,
             "keepalive_timeout_s": args.http_keepalive_timeout,
             "max_body_bytes": args.http_max_body_bytes}  # fmt: skip
    return HttpLimits(**{k: v for k, v in given.items() if v is not None})


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0..65535)")
    return port


def resolve_devices(args) -> tuple[list[str] | None, str]:
    """The worker devices, or None and a message (the caller exits 2)."""
    if args.cpu_workers is not None:
        if args.cpu_workers < 1:
            return None, "--cpu-workers must be at least 1"
        return ["cpu"] * args.cpu_workers, ""
    import torch

    cuda = torch.cuda.is_available()
    if args.gpus is not None:
        if not cuda:
            return None, (
                f"--gpus {args.gpus}: CUDA is not available here (torch {torch.__version__}, "
                "torch.cuda.is_available() is False). Serve on the CPU instead with "
                "--cpu-workers N, e.g. --cpu-workers 1"
            )
        count = torch.cuda.device_count()
        if args.gpus.strip() == "all":
            return [f"cuda:{i}" for i in range(count)], ""
        try:
            ids = [int(x) for x in args.gpus.split(",") if x.strip()]
        except ValueError:
            return None, (f"--gpus {args.gpus!r}: give comma-separated device ids, e.g. 0,1, "
                          "or all")  # fmt: skip
        bad = [i for i in ids if not 0 <= i < count]
        if not ids or bad or len(set(ids)) != len(ids):
            return None, (f"--gpus {args.gpus}: ids must be distinct, in 0..{count - 1} "
                          f"({count} visible GPU(s))")  # fmt: skip
        return [f"cuda:{i}" for i in ids], ""
    if cuda:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())], ""
    return ["cpu"], ""


def options_from_args(args):
    """(ServerOptions, 0), or (None, exit code) after printing why to stderr."""
    from orloj_rt.models.builtin import default_entries
    from orloj_rt.models.repository import load_repository
    from orloj_rt.runtime.security import check_bind, check_frame_limit
    from orloj_rt.runtime.supervisor import ServerOptions

    problem = check_bind(args.bind, args.allow_remote)
    if problem:
        print(f"orloj-rt start: {problem}", file=sys.stderr)
        return None, 2
    if args.max_apps < 1:
        print(f"orloj-rt start: --max-apps {args.max_apps}: give at least 1",
              file=sys.stderr)  # fmt: skip
        return None, 2
    if not args.hang_timeout >= 0:  # also refuses nan
        print(f"orloj-rt start: --hang-timeout {args.hang_timeout:g}: give seconds >= 0 "
              "(0 turns the hang watch off)", file=sys.stderr)  # fmt: skip
        return None, 2
    devices, problem = resolve_devices(args)
    if devices is None:
        print(f"orloj-rt start: {problem}", file=sys.stderr)
        return None, 2
    try:
        models = load_repository(args.models) if args.models else default_entries()
    except ValueError as exc:
        print(f"orloj-rt start: {exc}", file=sys.stderr)
        return None, 2
    problem = check_frame_limit(models, args.max_frame_bytes)
    if problem:
        print(f"orloj-rt start: {problem}", file=sys.stderr)
        return None, 2
    from orloj_rt.sim.policy_params import PolicyParamError, accepted_keys, parse_for_server

    texts = list(args.policy_param or [])
    if args.fairness:
        if not (args.fairness > 0 and args.fairness < float("inf")):
            print(f"orloj-rt start: --fairness {args.fairness:g}: give a gain above 0 (e.g. 2), "
                  "or 0 for off", file=sys.stderr)  # fmt: skip
            return None, 2
        if any(t.split("=", 1)[0].rsplit(":", 1)[-1].strip() == "fairness" for t in texts):
            print("orloj-rt start: --fairness and --policy-param fairness=... both given: "
                  "give one", file=sys.stderr)  # fmt: skip
            return None, 2
        if "fairness" not in accepted_keys(args.policy):
            print(f"orloj-rt start: --fairness {args.fairness:g}: policy {args.policy} has no "
                  "fairness across apps; serve with --policy orloj", file=sys.stderr)  # fmt: skip
            return None, 2
        texts.append(f"fairness={args.fairness!r}")
    try:  # the policy is built with them now, so that a bad one stops the start here
        policy_params = parse_for_server(texts, args.policy, models)
    except PolicyParamError as exc:
        print(f"orloj-rt start: {exc}", file=sys.stderr)
        return None, 2
    n_cpu = sum(d == "cpu" for d in devices)
    threads = args.worker_threads or default_worker_threads(n_cpu)
    return (
        ServerOptions(
            models=models,
            devices=devices,
            bind=args.bind,
            policy=args.policy,
            policy_params={**policy_params, "max_apps": args.max_apps},  # read by the scheduler
            log_level=args.log_level,
            ready_timeout_s=args.ready_timeout,
            drain_timeout_s=args.drain_timeout,
            hang_timeout_s=args.hang_timeout,
            worker_threads=threads,
            http_port=args.http_port,
            metrics_port=args.metrics_port,
            grpc_port=args.grpc_port,
            http_limits=http_limits(args),
            allow_remote=args.allow_remote,
            curve_keys=args.curve_keys or "",
            max_frame_bytes=args.max_frame_bytes,
        ),
        0,
    )
