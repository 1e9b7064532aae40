"""The node actor: a Ray actor, pinned to one Ray node, that owns and watches that node's
orloj-rt instance (`orloj-rt start`: supervisor, frontend, scheduler, workers).

    controller (controller.py) --creates, NodeAffinity soft=False--> NodeInstance on node i
    NodeInstance --subprocess--> `python -m orloj_rt start --bind tcp://HOST:PORT ...`
                                 env ORLOJ_RT_CLUSTER_STATE / _NODE: its scheduler publishes
                                 its state to the router (publish.py)

The class is plain Python; controller.py wraps it with `ray.remote(max_restarts=-1)`, so
that Ray restarts an actor that dies, and the new actor starts the instance again.
A watcher thread starts the instance, reads its ready line, and restarts it when it exits
without being asked to: at once if it had served, else after 0.2 s, doubling up to 5 s
while it keeps failing before it is ready. The instance gets PR_SET_PDEATHSIG (SIGTERM),
set from that thread: if the actor dies, the instance shuts down cleanly (answers what it
holds, removes its shared memory) instead of outliving it.

Instances on one machine (a test cluster) never collide: each binds its own port (picked
free here), and shared-memory names carry the supervisor's pid (shm_ring.instance_id).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from orloj_rt.cluster.publish import NODE_ENV, STATE_ENV

READY_RE = re.compile(r"^orloj-rt: serving on (\S+)")
PR_SET_PDEATHSIG = 1
RESTART_DELAY_S = 0.2
RESTART_DELAY_MAX_S = 5.0
STOP_TIMEOUT_S = 30.0


@dataclass
class InstanceSpec:
    """What `orloj-rt start` runs on every node (the same on each)."""

    state_endpoint: str  # the router's state socket
    models: str = ""  # a model repository directory, present on every node; "": built-ins
    gpus: int = 0  # GPUs per node; 0: CPU workers
    cpu_workers: int = 1
    host: str = ""  # where the instance binds; "": this Ray node's IP
    policy: str = "orloj"
    extra_args: list = field(default_factory=list)  # more `orloj-rt start` flags
    ready_timeout_s: float = 180.0


def _pdeathsig() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("localhost", "::1")


class NodeInstance:
    """One node's instance (see the module docstring). Its methods are the actor's."""

    def __init__(self, node_name: str, spec: InstanceSpec):
        self.node = node_name
        self.spec = spec
        if spec.host:
            self.host = spec.host
        else:
            import ray

            self.host = ray.util.get_node_ip_address()
        self.log_path = os.path.join(tempfile.gettempdir(), f"orloj-rt-cluster-{node_name}.log")
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""
        self.state = "starting"
        self.starts = 0
        self.restarts = 0
        self.last_exit = ""
        self.ready_since = 0.0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="orloj-rt-node", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the actor's API
    def status(self) -> dict:
        p = self.proc
        return {
            "node": self.node,
            "host": self.host,
            "endpoint": self.endpoint,
            "state": self.state,
            "supervisor_pid": p.pid if p is not None and p.poll() is None else 0,
            "actor_pid": os.getpid(),
            "starts": self.starts,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "serving_for_s": round(time.monotonic() - self.ready_since, 1)
            if self.state == "serving" else 0.0,
            "log": self.log_path,
        }  # fmt: skip

    def wait_ready(self, timeout_s: float) -> dict:
        self._ready.wait(timeout_s)
        return self.status()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> dict:
        """Stops the instance (SIGTERM: it drains and removes its shared memory); waits."""
        from orloj_rt.runtime.shm_ring import remove_stale_segments

        self._stop.set()
        self._terminate(timeout_s)
        self._thread.join(timeout_s)
        self.state = "stopped"
        # an instance killed outright (SIGKILL: Ray kills an actor's children with it when
        # its node goes) could not unlink its rings; its supervisor is gone, so they are
        # stale: removed here, as the next `orloj-rt start` on this machine would
        remove_stale_segments()
        return self.status()

    def kill_instance(self) -> int:
        """SIGKILL to every process of the instance (a crash, for tests and benchmarks):
        the watcher starts it again. Returns the killed supervisor's pid (0: none)."""
        import psutil

        p = self.proc
        if p is None or p.poll() is not None:
            return 0
        with contextlib.suppress(psutil.Error):
            tree = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
            for q in tree:
                with contextlib.suppress(psutil.Error):
                    q.kill()
        return p.pid

    # ------------------------------------------------------------------ the watcher
    def _command(self, port: int) -> list[str]:
        s = self.spec
        cmd = [sys.executable, "-m", "orloj_rt", "start", "--bind", f"tcp://{self.host}:{port}",
               "--policy", s.policy, "--ready-timeout", str(s.ready_timeout_s)]  # fmt: skip
        if s.models:
            cmd += ["--models", s.models]
        if s.gpus > 0:
            # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPUs: they are 0..gpus-1 here
            cmd += ["--gpus", ",".join(str(i) for i in range(s.gpus))]
        else:
            cmd += ["--cpu-workers", str(s.cpu_workers)]
        if not is_loopback(self.host):
            cmd.append("--allow-remote")  # the router reaches it over the network
        return cmd + list(s.extra_args)

    def _watch(self) -> None:
        delay = RESTART_DELAY_S
        while not self._stop.is_set():
            ready = self._run_once()
            if self._stop.is_set():
                break
            self.restarts += 1
            self.state = "restarting"
            # an instance that served starts again at once; one that never got ready
            # backs off (0.2 s, doubling up to 5 s)
            if ready:
                delay = RESTART_DELAY_S
                continue
            self._stop.wait(delay)
            delay = min(RESTART_DELAY_MAX_S, delay * 2)
        self.state = "stopped"

    def _run_once(self) -> bool:
        """Starts the instance, waits for it to exit; whether it got ready."""
        env = dict(os.environ)
        env[STATE_ENV] = self.spec.state_endpoint
        env[NODE_ENV] = self.node
        port = free_port(self.host)
        cmd = self._command(port)
        with self._lock:
            if self._stop.is_set():
                return False
            log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
            try:
                self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env,
                                             text=True, preexec_fn=_pdeathsig)  # fmt: skip
            finally:
                log.close()
            self.starts += 1
            self.state = "starting"
        ready = False
        for line in self.proc.stdout:  # ends when the instance exits
            m = READY_RE.match(line)
            if m and not ready:
                ready = True
                self.endpoint = m.group(1)
                self.ready_since = time.monotonic()
                self.state = "serving"
                self._ready.set()
        code = self.proc.wait()
        self.last_exit = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        return ready

    def _terminate(self, timeout_s: float) -> None:
        import psutil

        with self._lock:
            p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            tree = psutil.Process(p.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
        _, alive = psutil.wait_procs(tree, timeout=3)
        for q in alive:  # nothing outlives the instance
            with contextlib.suppress(psutil.Error):
                q.kill()
