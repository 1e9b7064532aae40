"""Starting a server as a subprocess and stopping it: for the demo, benchmarks and tests.

    with ServerProcess(["--cpu-workers", "1", "--models", "repo/"]) as server:
        client = Client(server.endpoint)

It runs `python -m orloj_rt start ...` bound to a free local port unless `--bind` is given,
waits (bounded) for the ready line, and on exit sends SIGTERM, waits (bounded), and
kills the whole process tree if the server did not stop, so that nothing outlives it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

READY_RE = re.compile(r"^orloj-rt: serving on (\S+)")
DEFAULT_START_TIMEOUT_S = 120.0
DEFAULT_STOP_TIMEOUT_S = 30.0


class ServerProcess:
    """An `orloj-rt start` subprocess (see the module docstring)."""

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
        env: dict[str, str] | None = None,
        stderr=None,
    ):
        args = list(args)
        if "--bind" not in args:
            args += ["--bind", "tcp://127.0.0.1:*"]
        self.args = args
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.env = env
        self.stderr = stderr
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""
        self.ready_line = ""
        self.children: list = []  # psutil.Process objects: they detect pid reuse
        self.returncode: int | None = None
        self._stdout_lines: list[str] = []

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def start(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "orloj_rt", "start", *self.args]
        env = dict(os.environ if self.env is None else self.env)
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env
        )
        ready = threading.Event()

        def read_stdout() -> None:
            for line in self.proc.stdout:
                self._stdout_lines.append(line)
                m = READY_RE.match(line)
                if m and not ready.is_set():
                    self.endpoint = m.group(1)
                    self.ready_line = line.strip()
                    ready.set()

        threading.Thread(target=read_stdout, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout_s
        while not ready.wait(0.05):
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise RuntimeError(f"orloj-rt start exited with code {code} before it was "
                                   f"ready: {' '.join(cmd)}")  # fmt: skip
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"orloj-rt start was not ready within start_timeout_s="
                                   f"{self.start_timeout_s:g} s")  # fmt: skip
        self.children = self._descendants()
        return self

    @property
    def child_pids(self) -> list[int]:
        return [p.pid for p in self.children]

    def _descendants(self) -> list:
        import psutil

        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signals the server and waits for it; kills the tree if it does not stop."""
        import psutil

        if self.proc is None:
            return None
        tree = {p.pid: p for p in [*self.children, *self._descendants()]}
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # nothing may outlive the server, even on a failure path: what is still running
        # shortly after the supervisor exited is killed
        _, alive = psutil.wait_procs(list(tree.values()), timeout=3)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        self.returncode = self.proc.returncode
        return self.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
