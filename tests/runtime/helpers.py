"""Helpers for runtime tests: a server context that checks for leftovers, raw sockets."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import msgpack
import psutil

from orloj_rt.runtime.launcher import ServerProcess
from orloj_rt.runtime.shm_ring import SEGMENT_PREFIX, SHM_DIR

MODEL_REPO = Path(__file__).parent / "model_repo"
LIGHT_MODELS = ("noop.toml", "sleep.toml")  # start fast: no transformer to warm up
REPLY_TIMEOUT_S = 30.0


def instance_segments(supervisor_pid: int) -> list[str]:
    prefix = f"{SEGMENT_PREFIX}{supervisor_pid}-"
    return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))


def leftovers(server: ServerProcess) -> tuple[list[int], list[str]]:
    alive = [p.pid for p in server.children if process_alive(p.pid)]
    return alive, instance_segments(server.pid)


def light_repo(directory: Path) -> Path:
    """A model repository with only the cheap test models."""
    repo = directory / "light_repo"
    repo.mkdir(exist_ok=True)
    for name in LIGHT_MODELS:
        (repo / name).write_text((MODEL_REPO / name).read_text())
    return repo


@contextmanager
def running_server(log_dir: Path, *args: str, check_exit: bool = True, light: bool = False):
    """A server with the test model repository (unless --models is given); `light`: only
    the noop and sleep models."""
    args = list(args)
    if "--models" not in args:
        args += ["--models", str(light_repo(log_dir) if light else MODEL_REPO)]
    if "--cpu-workers" not in args:
        args += ["--cpu-workers", "1"]
    log_path = log_dir / f"server-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:
        server = ServerProcess(args, stderr=log, start_timeout_s=120)
        try:
            server.start()
            yield server
        finally:
            code = server.stop()
            alive, segments = leftovers(server)
            problems = []
            if check_exit and code != 0:
                problems.append(f"server exit code {code}")
            if alive:
                problems.append(f"processes left: {alive}")
            if segments:
                problems.append(f"/dev/shm segments left: {segments}")
            if problems:
                print(log_path.read_text()[-5000:])
                raise AssertionError("; ".join(problems))


# ---------------------------------------------------------------------- raw protocol helpers
def header(**fields) -> bytes:
    base = {"v": 1, "id": 1, "op": "infer"}
    base.update(fields)
    return msgpack.packb({k: v for k, v in base.items() if v is not None}, use_bin_type=True)


class RawDealer:
    """A DEALER socket speaking the protocol frame by frame (for malformed requests)."""

    def __init__(self, endpoint: str):
        import zmq

        self.zmq = zmq
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, frames: list, delimiter: bool = True) -> None:
        self.sock.send_multipart(([b""] if delimiter else []) + list(frames))

    def recv(self, timeout_s: float = REPLY_TIMEOUT_S) -> tuple[dict, list]:
        if not self.sock.poll(timeout_s * 1000, self.zmq.POLLIN):
            raise TimeoutError(f"no reply within {timeout_s} s")
        frames = self.sock.recv_multipart()
        assert frames[0] == b"", "a reply starts with the empty delimiter"
        return msgpack.unpackb(frames[1], raw=False), frames[2:]

    def quiet(self, wait_s: float = 0.2) -> bool:
        """True if nothing more arrives within wait_s (no duplicate replies)."""
        return not self.sock.poll(wait_s * 1000, self.zmq.POLLIN)

    def close(self) -> None:
        self.sock.close(linger=0)

    def __enter__(self) -> RawDealer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def process_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m orloj_rt ARGS` in its own process group: on a timeout the whole group
    (a server it started included) is killed, so nothing outlives a failed test."""
    proc = subprocess.Popen([sys.executable, "-m", "orloj_rt", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"orloj-rt {' '.join(args)} did not finish in {timeout} s:\n{err}"
        ) from None
    finally:
        with contextlib.suppress(ProcessLookupError):  # what it left in its group goes too
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
