"""The multi-process runtime: supervisor, frontend, scheduler and workers.

    clients --ZeroMQ--> frontend --descriptors--> scheduler --batches--> workers
                           | inputs into shared-memory rings  ^ read in place |
                           +------------------------------------------------+

One module per process role (`frontend`, `scheduler`, `worker`, `supervisor`), each with
its `run_<role>_process()`; every message between them is in `messages`; the client wire
protocol (its contract: docs/protocol.md) is in `wire`; the rings are in `shm_ring`; model
execution is in `batch_runner`. `launcher` starts a server as a subprocess (tests, demo,
benchmarks); `security` holds the client socket's safe defaults (loopback, CURVE keys,
frame size); `worker_preload` is what the fork server that workers come from imports.
Importing this package imports neither torch nor ZeroMQ.
"""
