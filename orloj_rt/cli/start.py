"""`orloj-rt start`: serve models until SIGTERM / SIGINT (`orloj-rt stop`, Ctrl-C)."""

from __future__ import annotations

import os

from orloj_rt.cli._server_args import add_server_arguments, options_from_args


def register(sub) -> None:
    p = sub.add_parser(
        "start",
        help="start a server (supervisor, frontend, scheduler, workers) in the foreground",
        description=(
            "Start an orloj-rt server in the foreground. It prints one line, "
            "'orloj-rt: serving on ENDPOINT ...', on stdout once every worker is ready; "
            "logs go to stderr. SIGTERM or SIGINT (orloj-rt stop, Ctrl-C) shuts it down "
            "cleanly: in-flight requests are answered, shared memory is removed. "
            "--http-port and --grpc-port add the KServe v2 / Open Inference Protocol over "
            "HTTP and gRPC (tritonclient works as is), --metrics-port Prometheus metrics; "
            "the ready line names their addresses."
        ),
    )
    add_server_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from orloj_rt.runtime.proc import configure_logging
    from orloj_rt.runtime.supervisor import Supervisor

    configure_logging(args.log_level, "supervisor")
    options, code = options_from_args(args)
    if options is None:
        return code

    def announce(endpoint: str) -> None:
        devices = options.devices
        workers = (f"{len(devices)} cpu worker(s)" if devices[0] == "cpu"
                   else f"gpu(s) {','.join(d.split(':')[1] for d in devices)}")  # fmt: skip
        names = ", ".join(e.spec.name for e in options.models)
        # the gateway's addresses (--http-port, --grpc-port, --metrics-port), e.g.
        # "; grpc 127.0.0.1:8001; http http://127.0.0.1:8000"
        urls = "".join(f"; {k} {v}" for k, v in sorted(supervisor.urls.items()))
        print(f"orloj-rt: serving on {endpoint} (models: {names}; {workers}; "
              f"policy: {options.policy}; pid {os.getpid()}{urls})", flush=True)  # fmt: skip

    supervisor = Supervisor(options, announce)  # = run_supervisor_process(options, announce)
    return supervisor.run()
