"""The `orloj-rt` command line. Each subcommand lives in its own module here.

A subcommand module defines `register(subparsers)`, which adds its parser and sets
`func` to a callable taking the parsed arguments and returning the exit code. Modules
import heavy dependencies (torch, ZeroMQ) inside `func`, so that `orloj-rt --help` and
`orloj-rt sim` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module; listed in the order `orloj-rt --help` shows them
SUBCOMMANDS = {
    "demo": "orloj_rt.cli.demo",
    "start": "orloj_rt.cli.start",
    "stop": "orloj_rt.cli.stop",
    "keys": "orloj_rt.cli.keys",
    "status": "orloj_rt.cli.status",
    "bench": "orloj_rt.cli.bench",
    "sim": "orloj_rt.cli.sim",
    "engine": "orloj_rt.cli.engine_info",
    "cluster": "orloj_rt.cli.cluster",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orloj-rt",
        description="Serve dynamic DNNs with SLO-aware, distribution-aware batching.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # a subcommand not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("orloj-rt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
