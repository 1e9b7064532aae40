"""Message channels between the runtime's own processes: non-blocking Unix socket pairs.

Why not ZeroMQ inside the instance: a ZeroMQ message crosses the sender's I/O thread and
the receiver's I/O thread before the receiver's own thread sees it: three wake-ups per
hop. A socket pair is one. Measured on the 2-vCPU development VM (notes in
docs/runtime.md): a 4-hop ring of Python processes forwarding 100 bytes took 35 us per
hop over ZeroMQ ipc and 16 us per hop over kernel pipes (multiprocessing.Pipe), which
wake the receiver the way a socket pair does. Clients still speak ZeroMQ (docs/protocol.md).

Wire format of one message (little-endian):

    u32 body_len | u32 n_parts | u32 part_len x n_parts | part_0 | part_1 | ...

`send(parts)` writes with one `sendmsg` (scatter-gather: the parts are not joined in
user space), and never blocks: what the kernel does not take is kept, by reference, in an
outbox that `flush()` writes when the socket is writable (the owner polls POLLOUT while
`wants_write`). `recv()` never blocks either: it reads what is there into one reused
buffer, copies each complete message out of it once, keeps a partial message for later,
and returns each message as a list of memoryviews into its copy (valid as long as they
are referenced). The reused buffer matters: a fresh 256 KiB `recv` allocation is above
glibc's mmap threshold; a 200-byte message took 15.5 us that way and 2.8 us with the
reused buffer plus the copy (warm, on the development VM).
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from collections.abc import Sequence

RECV_CHUNK = 256 * 1024
MAX_IOV = 1000  # below IOV_MAX (1024) with room for the length header
_U32 = struct.Struct("<I")


class ChannelClosed(ConnectionError):
    """The peer closed its end (it exited)."""


class Channel:
    """One end of a socket pair carrying multi-part messages (see the module docstring)."""

    # class-level defaults: close() works on a half-built object
    sock: socket.socket | None = None
    closed = False

    def __init__(self, sock: socket.socket, name: str = ""):
        self.sock = sock
        self.name = name
        sock.setblocking(False)
        self._fd = sock.fileno()
        self._pending = bytearray()  # the start of a message not yet fully received
        self._out: deque = deque()  # buffers not yet taken by the kernel, in order
        self._rbuf = bytearray(RECV_CHUNK)
        self._rview = memoryview(self._rbuf)

    @classmethod
    def pair(cls) -> tuple[socket.socket, socket.socket]:
        """A connected pair of sockets; wrap each end in a Channel in its own process."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        return a, b

    def fileno(self) -> int:
        return self._fd

    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    # ------------------------------------------------------------------ sending
    def send(self, parts: Sequence) -> None:
        """Queues one message (byte buffers: bytes, or memoryviews cast to "B")."""
        lens = [len(p) for p in parts]
        n = len(parts)
        head = struct.pack(f"<II{n}I", 4 + 4 * n + sum(lens), n, *lens)
        if self._out:
            self._out.append(head)
            self._out.extend(parts)
            self.flush()
            return
        if n < MAX_IOV:
            bufs = [head, *parts]
            total = len(head) + sum(lens)
            try:
                sent = self.sock.sendmsg(bufs)
            except BlockingIOError:
                sent = 0
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ChannelClosed(f"channel {self.name}: peer gone") from exc
            if sent == total:
                return
            self._queue_rest(bufs, sent)
            return
        self._out.append(head)
        self._out.extend(parts)
        self.flush()

    def _queue_rest(self, bufs: list, sent: int) -> None:
        for b in bufs:
            size = len(b)
            if sent >= size:
                sent -= size
                continue
            self._out.append(memoryview(b)[sent:] if sent else b)
            sent = 0

    def flush(self) -> bool:
        """Writes what the kernel takes now; True when the outbox is empty."""
        out = self._out
        while out:
            bufs = [out[i] for i in range(min(len(out), MAX_IOV))]
            try:
                sent = self.sock.sendmsg(bufs)
            except BlockingIOError:
                return False
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ChannelClosed(f"channel {self.name}: peer gone") from exc
            while out and sent >= len(out[0]):
                sent -= len(out.popleft())
            if sent:
                out[0] = memoryview(out[0])[sent:]
                return False
        return True

    # ------------------------------------------------------------------ receiving
    def recv(self) -> list[list[memoryview]]:
        """Every complete message readable now; raises ChannelClosed at the peer's EOF."""
        messages: list[list[memoryview]] = []
        rbuf, rview = self._rbuf, self._rview
        while True:
            try:
                n = self.sock.recv_into(rbuf)
            except BlockingIOError:
                break
            except ConnectionResetError:
                n = 0
            if not n:
                if messages:
                    self.closed = True  # report the messages now, the EOF next call
                    break
                raise ChannelClosed(f"channel {self.name}: peer closed")
            if self._pending:
                self._pending += rview[:n]
                data = self._pending
                view = memoryview(data)
            else:
                data, view = rbuf, rview
            pos = 0
            end = n if data is rbuf else len(data)
            while end - pos >= 4:
                body = _U32.unpack_from(data, pos)[0]
                if end - pos - 4 < body:
                    break
                # one copy out of the reused buffer; the message's parts view the copy
                messages.append(_split(memoryview(bytes(view[pos + 4 : pos + 4 + body]))))
                pos += 4 + body
            # NOTE: a fresh bytearray for the rest: `data` is reused, or viewed by nothing
            # that outlives this call only because every message was copied above
            self._pending = bytearray(view[pos:end]) if pos < end else bytearray()
            if n < RECV_CHUNK:
                break
        if self.closed and not messages:
            raise ChannelClosed(f"channel {self.name}: peer closed")
        return messages

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._out.clear()


def _split(body: memoryview) -> list[memoryview]:
    n = _U32.unpack_from(body, 0)[0]
    lens = struct.unpack_from(f"<{n}I", body, 4)
    pos = 4 + 4 * n
    parts = []
    for size in lens:
        parts.append(body[pos : pos + size])
        pos += size
    return parts
