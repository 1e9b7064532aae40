"""The contracts: between orloj-rt and its clients, and between its processes.

- wire.py: the client wire protocol, version 1 (docs/protocol.md): parsing, validation,
  replies, and the constants clients share.
- messages.py: every message between the server's processes (IPC structs only).
- keys.py: CURVE key files, loaded and made for the server and its clients alike.

Nothing here opens a socket or imports torch; orloj_rt.client imports only this package
(and the model specs), never orloj_rt.runtime.
"""
