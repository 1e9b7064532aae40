# cython: language_level=3, boundscheck=False, wraparound=False
"""The cluster router's relay in C (orloj_rt.cluster._relay): its poll loop and the moves
of whole messages between the clients' socket and the nodes' sockets, through libzmq's C
API, with the router's Python code (router.py) deciding each message, or deciding ahead
(the fast path, below).

    relay = Relay(owner, client_handle)         # owner: the ClusterRouter
    relay.set_nodes([node.sock.underlying, ...])   # again whenever the nodes change
    flags = relay.serve(timeout_ms)             # one wake-up; 2 if replies were relayed

Per message it calls the owner, which keeps every rule (routing, ids, exactly one reply):

- a client's message [ident, b"", header, data...]:
  `owner._request(ident, header) -> None | (node index, header out, pending)`: None when
  the owner answered it itself (or dropped it); else the relay sends
  [b"", header out, data...] to that node (the data frames as received: not copied),
  keeps a reference to each data frame in `pending.data` (`Held`, for a re-route), then
  calls `owner._settle()` (the bookkeeping that need not delay the send);
- a node's message [b"", header, data...]:
  `owner._reply(node index, header) -> None | (client ident, header out)`, then the relay
  sends [ident, b"", header out, data...] to the client and calls `owner._settle()`.

The fast path, with no call into the owner before the send: a client's infer whose
kind (model, app, slo_ms as its header names them) is in `decisions` (made ahead by the
owner, valid until a time) goes to that node with our next id put in its header here
(`next_id`), and is kept in `sent` (our id -> client, its id as msgpack, the node's
socket); then `owner._fast_sent(...)` does the bookkeeping. A node's reply to a request
in `sent`, from that node's socket and not `rejected`, goes back to its client with the
client's id put back here; then `owner._fast_replied(our id, status)`. Anything else
(another op, a header this parser does not take, a kind without a valid decision, a
rejected or unknown reply) takes the owner's path above; the owner clears `decisions`
whenever they may be wrong (a state, a send, a node gone) and removes from `sent` what
it answers or routes again itself.

What this saves per message is pyzmq's Python layer (a getpid per socket call, a Frame
object per frame, the poll's lists) and, on the fast path, the owner's Python before the
send.
libzmq is the one pyzmq loaded (its functions found by `load()`), so the sockets are
pyzmq's own (their `underlying` handles). Optional: setup.py builds it when it can, and
router.py runs its Python loop without it.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from libc.errno cimport EAGAIN, EINTR
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy

cdef extern from *:
    """
    #include <stddef.h>
    typedef struct { unsigned char _[64]; } __attribute__((aligned(8))) orr_msg_t;
    typedef struct { void *socket; int fd; short events; short revents; } orr_pollitem_t;
    typedef int (*orr_msg_fn)(orr_msg_t *);
    typedef int (*orr_msg_init_size_fn)(orr_msg_t *, size_t);
    typedef int (*orr_msg_io_fn)(orr_msg_t *, void *, int);
    typedef int (*orr_msg_copy_fn)(orr_msg_t *, orr_msg_t *);
    typedef void *(*orr_msg_data_fn)(orr_msg_t *);
    typedef size_t (*orr_msg_size_fn)(const orr_msg_t *);
    typedef int (*orr_poll_fn)(orr_pollitem_t *, int, long);
    typedef int (*orr_errno_fn)(void);
    """
    ctypedef struct orr_msg_t:
        pass
    ctypedef struct orr_pollitem_t:
        void *socket
        int fd
        short events
        short revents
    ctypedef int (*orr_msg_fn)(orr_msg_t *)
    ctypedef int (*orr_msg_init_size_fn)(orr_msg_t *, size_t)
    ctypedef int (*orr_msg_io_fn)(orr_msg_t *, void *, int)
    ctypedef int (*orr_msg_copy_fn)(orr_msg_t *, orr_msg_t *)
    ctypedef void *(*orr_msg_data_fn)(orr_msg_t *)
    ctypedef size_t (*orr_msg_size_fn)(const orr_msg_t *)
    ctypedef int (*orr_poll_fn)(orr_pollitem_t *, int, long)
    ctypedef int (*orr_errno_fn)()

# libzmq's stable ABI (zmq.h)
DEF ZMQ_DONTWAIT = 1
DEF ZMQ_SNDMORE = 2
DEF ZMQ_POLLIN = 1
DEF MAX_PER_WAKE = 256  # messages read from one socket per wake-up
DEF MAX_NODES = 1024

cdef orr_msg_fn z_init = NULL
cdef orr_msg_fn z_close = NULL
cdef orr_msg_init_size_fn z_init_size = NULL
cdef orr_msg_io_fn z_recv = NULL
cdef orr_msg_io_fn z_send = NULL
cdef orr_msg_copy_fn z_copy = NULL
cdef orr_msg_data_fn z_data = NULL
cdef orr_msg_size_fn z_size = NULL
cdef orr_msg_fn z_more = NULL
cdef orr_poll_fn z_poll = NULL
cdef orr_errno_fn z_errno = NULL
cdef bint loaded = False


def load():
    """Finds the functions of the libzmq that pyzmq loaded (the same library, so that
    pyzmq's socket handles are valid here). Raises ImportError, naming why, when it
    cannot (then router.py relays in Python)."""
    global z_init, z_close, z_init_size, z_recv, z_send, z_copy, z_data, z_size, z_more
    global z_poll, z_errno, loaded
    if loaded:
        return
    import ctypes

    import zmq

    path = ""
    with open("/proc/self/maps") as maps:
        for line in maps:
            name = line.rstrip("\n").rpartition(" ")[2]  # (no negative index: wraparound off)
            if "libzmq" in name.rpartition("/")[2]:
                path = name
                break
    if not path:
        raise ImportError("the relay found no libzmq loaded by pyzmq")
    lib = ctypes.CDLL(path)
    maj, mnr, pat = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    lib.zmq_version(ctypes.byref(maj), ctypes.byref(mnr), ctypes.byref(pat))
    if (maj.value, mnr.value, pat.value) != zmq.zmq_version_info():
        raise ImportError(f"the libzmq at {path} is not pyzmq's")

    def addr(name):
        return <uintptr_t>ctypes.cast(getattr(lib, name), ctypes.c_void_p).value

    z_init = <orr_msg_fn><uintptr_t>addr("zmq_msg_init")
    z_close = <orr_msg_fn><uintptr_t>addr("zmq_msg_close")
    z_init_size = <orr_msg_init_size_fn><uintptr_t>addr("zmq_msg_init_size")
    z_recv = <orr_msg_io_fn><uintptr_t>addr("zmq_msg_recv")
    z_send = <orr_msg_io_fn><uintptr_t>addr("zmq_msg_send")
    z_copy = <orr_msg_copy_fn><uintptr_t>addr("zmq_msg_copy")
    z_data = <orr_msg_data_fn><uintptr_t>addr("zmq_msg_data")
    z_size = <orr_msg_size_fn><uintptr_t>addr("zmq_msg_size")
    z_more = <orr_msg_fn><uintptr_t>addr("zmq_msg_more")
    z_poll = <orr_poll_fn><uintptr_t>addr("zmq_poll")
    z_errno = <orr_errno_fn><uintptr_t>addr("zmq_errno")
    loaded = True


# ---------------------------------------------------------------- msgpack, a header's fields
cdef inline unsigned long long _be(const unsigned char *b, int n) noexcept:
    cdef unsigned long long v = 0
    cdef int i
    for i in range(n):
        v = (v << 8) | b[i]
    return v


cdef Py_ssize_t _skip(const unsigned char *b, Py_ssize_t i, Py_ssize_t n, int depth) noexcept:
    """The index after the msgpack object at b[i], or -1 (truncated, malformed, too deep)."""
    cdef unsigned char t
    cdef unsigned long long count = 0, k
    cdef Py_ssize_t size = 0
    if i >= n or depth > 32:
        return -1
    t = b[i]
    if t <= 0x7f or t >= 0xe0 or t == 0xc0 or t == 0xc2 or t == 0xc3:
        return i + 1
    if 0xa0 <= t <= 0xbf:
        size = 1 + (t & 0x1f)
    elif t == 0xcc or t == 0xd0:
        size = 2
    elif t == 0xcd or t == 0xd1:
        size = 3
    elif t == 0xca or t == 0xce or t == 0xd2:
        size = 5
    elif t == 0xcb or t == 0xcf or t == 0xd3:
        size = 9
    elif 0xd4 <= t <= 0xd8:
        size = 2 + (1 << (t - 0xd4))
    elif t == 0xc4 or t == 0xd9 or t == 0xc7:
        if i + 2 > n:
            return -1
        size = 2 + <Py_ssize_t>b[i + 1] + (1 if t == 0xc7 else 0)
    elif t == 0xc5 or t == 0xda or t == 0xc8:
        if i + 3 > n:
            return -1
        size = 3 + <Py_ssize_t>_be(b + i + 1, 2) + (1 if t == 0xc8 else 0)
    elif t == 0xc6 or t == 0xdb or t == 0xc9:
        if i + 5 > n:
            return -1
        size = 5 + <Py_ssize_t>_be(b + i + 1, 4) + (1 if t == 0xc9 else 0)
    else:  # arrays and maps
        if 0x90 <= t <= 0x9f or 0x80 <= t <= 0x8f:
            count = t & 0x0f
            i += 1
        elif t == 0xdc or t == 0xde:
            if i + 3 > n:
                return -1
            count = _be(b + i + 1, 2)
            i += 3
        elif t == 0xdd or t == 0xdf:
            if i + 5 > n:
                return -1
            count = _be(b + i + 1, 4)
            i += 5
        else:
            return -1  # 0xc1: never used
        if t <= 0x8f or t == 0xde or t == 0xdf:
            count *= 2
        k = 0
        while k < count:
            i = _skip(b, i, n, depth + 1)
            if i < 0:
                return -1
            k += 1
        return i
    return i + size if i + size <= n else -1


cdef inline int _str(const unsigned char *b, Py_ssize_t i, Py_ssize_t n,
                     Py_ssize_t *start, Py_ssize_t *length) noexcept:
    """A msgpack str at b[i]: its bytes' start and length; -1 if b[i] is no str."""
    cdef unsigned char t = b[i]
    if 0xa0 <= t <= 0xbf:
        start[0], length[0] = i + 1, t & 0x1f
    elif t == 0xd9 and i + 2 <= n:
        start[0], length[0] = i + 2, b[i + 1]
    elif t == 0xda and i + 3 <= n:
        start[0], length[0] = i + 3, <Py_ssize_t>_be(b + i + 1, 2)
    else:
        return -1
    return 0 if start[0] + length[0] <= n else -1


cdef inline bint _is(const unsigned char *b, Py_ssize_t start, Py_ssize_t length,
                     const char *word, Py_ssize_t wlen) noexcept:
    cdef Py_ssize_t j
    if length != wlen:
        return False
    for j in range(wlen):
        if b[start + j] != <unsigned char>word[j]:
            return False
    return True


cdef inline Py_ssize_t _pair(const unsigned char *b, Py_ssize_t i, Py_ssize_t n,
                             Py_ssize_t *ks, Py_ssize_t *kl, Py_ssize_t *vend) noexcept:
    """The map pair at b[i]: its key's string (ks, kl) and the end of its value (vend);
    returns where the value starts, or -1 for a pair that is not a string key and a
    value within n."""
    if i >= n or _str(b, i, n, ks, kl) < 0:
        return -1
    i = ks[0] + kl[0]
    vend[0] = _skip(b, i, n, 0)
    return -1 if vend[0] < 0 else i


cdef inline Py_ssize_t _map_head(const unsigned char *b, Py_ssize_t n,
                                 unsigned long long *count) noexcept:
    """The index of a header's first key, its map's pairs in `count`; -1 when the header
    is not a fixmap or map16 (a header has a few keys)."""
    if n < 1:
        return -1
    cdef unsigned char t = b[0]
    if 0x80 <= t <= 0x8f:
        count[0] = t & 0x0f
        return 1
    if t == 0xde and n >= 3:
        count[0] = _be(b + 1, 2)
        return 3
    return -1


cdef int _number(const unsigned char *b, Py_ssize_t i, double *out) noexcept:
    """A msgpack int or float at b[i] as a double: 0, or -1 if it is neither (bool too)."""
    cdef unsigned char t = b[i]
    cdef unsigned long long u
    cdef float f
    cdef double d
    if t <= 0x7f:
        out[0] = t
    elif t >= 0xe0:
        out[0] = <signed char>t
    elif 0xcc <= t <= 0xcf:
        out[0] = <double>_be(b + i + 1, 1 << (t - 0xcc))
    elif 0xd0 <= t <= 0xd3:
        u = _be(b + i + 1, 1 << (t - 0xd0))
        if t == 0xd0:
            out[0] = <signed char>u
        elif t == 0xd1:
            out[0] = <short>u
        elif t == 0xd2:
            out[0] = <int>u
        else:
            out[0] = <long long>u
    elif t == 0xca:
        u = _be(b + i + 1, 4)
        memcpy(&f, &u, 4)  # little-endian hosts (x86-64, aarch64)
        out[0] = f
    elif t == 0xcb:
        u = _be(b + i + 1, 8)
        memcpy(&d, &u, 8)
        out[0] = d
    else:
        return -1
    return 0


cdef inline long long _now_ns() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000000000LL + ts.tv_nsec


cdef bytes _uint(unsigned long long v):
    """v as msgpack's smallest unsigned encoding."""
    cdef unsigned char out[9]
    cdef int n, j
    if v <= 0x7f:
        out[0] = <unsigned char>v
        n = 1
    elif v <= 0xff:
        out[0], n = 0xcc, 2
    elif v <= 0xffff:
        out[0], n = 0xcd, 3
    elif v <= 0xffffffff:
        out[0], n = 0xce, 5
    else:
        out[0], n = 0xcf, 9
    for j in range(1, n):
        out[j] = <unsigned char>(v >> (8 * (n - 1 - j)))
    return PyBytes_FromStringAndSize(<char *>out, n)


cdef class Held:
    """A data frame kept for a re-route: a reference to the received message (libzmq
    counts references: no byte copied). `send(handle, more)` sends it again."""

    cdef orr_msg_t msg

    def __cinit__(self):
        z_init(&self.msg)

    def __dealloc__(self):
        if z_close != NULL:
            z_close(&self.msg)

    def __len__(self):
        return z_size(&self.msg)

    def send(self, uintptr_t handle, bint more):
        """Sends a reference to the frame on the socket `handle` (pyzmq's `underlying`)."""
        cdef orr_msg_t m
        z_init(&m)
        z_copy(&m, &self.msg)
        if z_send(&m, <void *>handle, ZMQ_DONTWAIT | (ZMQ_SNDMORE if more else 0)) < 0:
            z_close(&m)
            raise OSError(z_errno(), "the relay could not send a kept frame")


cdef int _with_id(orr_msg_t *head, const unsigned char *b, Py_ssize_t n, Py_ssize_t id_s,
                  Py_ssize_t id_e, bytes new_id) except -1:
    """`head` initialised to the header b[:n] with its id's value b[id_s:id_e] replaced
    by `new_id` (msgpack bytes)."""
    cdef Py_ssize_t rl = PyBytes_GET_SIZE(new_id)
    if z_init_size(head, id_s + rl + (n - id_e)) < 0:
        raise MemoryError()
    cdef char *h = <char *>z_data(head)
    memcpy(h, b, id_s)
    memcpy(h + id_s, PyBytes_AS_STRING(new_id), rl)
    memcpy(h + id_s + rl, b + id_e, n - id_e)
    return 0


cdef inline bytes _bytes(orr_msg_t *m):
    return PyBytes_FromStringAndSize(<char *>z_data(m), z_size(m))


cdef inline int _send_bytes(void *sock, bytes b, int flags):
    cdef orr_msg_t m
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    if z_init_size(&m, n) < 0:
        return -1
    if n:
        memcpy(z_data(&m), PyBytes_AS_STRING(b), n)
    if z_send(&m, sock, flags) < 0:
        z_close(&m)
        return -1
    return 0


cdef class Relay:
    """See the module docstring."""

    cdef object owner
    # the fast path (see the module docstring): decisions made ahead by the owner, and
    # the requests it forwarded, by our id
    cdef public dict decisions  # (model, app, slo_ms or None) -> (node index, until ns)
    cdef public dict sent  # our id -> (client ident, client id as msgpack, node handle)
    cdef public unsigned long long next_id  # our ids, the owner's too
    cdef public unsigned long long fast_requests, fast_replies  # relayed by the fast path
    cdef orr_pollitem_t items[MAX_NODES + 1]
    cdef int n  # poll items: the client socket, then the nodes'
    cdef unsigned long generation  # set_nodes calls: node handles may be gone since
    cdef orr_msg_t *parts
    cdef int cap

    def __cinit__(self):
        self.parts = NULL
        self.cap = 0

    def __init__(self, owner, uintptr_t client_handle):
        load()
        self.owner = owner
        self.items[0].socket = <void *>client_handle
        self.items[0].fd = 0
        self.items[0].events = ZMQ_POLLIN
        self.n = 1
        self.generation = 0
        self.decisions = {}
        self.sent = {}
        self.next_id = 1
        self.fast_requests = self.fast_replies = 0
        self._grow(16)

    def __dealloc__(self):
        free(self.parts)

    cdef int _grow(self, int cap) except -1:
        cdef orr_msg_t *p = <orr_msg_t *>realloc(self.parts, cap * sizeof(orr_msg_t))
        if p == NULL:
            raise MemoryError()
        self.parts = p
        self.cap = cap
        return 0

    def set_nodes(self, handles):
        """The nodes' sockets (pyzmq `underlying` handles), in the order of the indexes
        the owner's `_request` returns and its `_reply` receives."""
        if len(handles) > MAX_NODES:
            raise ValueError(f"the relay serves at most {MAX_NODES} nodes")
        cdef int i
        for i, h in enumerate(handles):
            self.items[i + 1].socket = <void *><uintptr_t>h
            self.items[i + 1].fd = 0
            self.items[i + 1].events = ZMQ_POLLIN
        self.n = 1 + len(handles)
        self.generation += 1

    cdef int _recv(self, void *sock) except -2:
        """One whole message into self.parts: its number of parts, 0 if none waits."""
        cdef int k = 0
        while True:
            if k == self.cap:
                self._grow(2 * self.cap)
            z_init(&self.parts[k])
            if z_recv(&self.parts[k], sock, ZMQ_DONTWAIT) < 0:
                z_close(&self.parts[k])
                if k == 0 and z_errno() == EAGAIN:
                    return 0
                self._close(0, k)
                raise OSError(z_errno(), "the relay could not receive a message")
            k += 1
            if not z_more(&self.parts[k - 1]):
                return k

    cdef void _close(self, int start, int end):
        cdef int i
        for i in range(start, end):
            z_close(&self.parts[i])

    cdef int _send_parts(self, void *sock, int start, int end) except -1:
        """Sends parts[start:end] as the rest of a message (moved, not copied)."""
        cdef int i
        for i in range(start, end):
            if z_send(&self.parts[i], sock, ZMQ_DONTWAIT | (ZMQ_SNDMORE if i < end - 1 else 0)) < 0:
                self._close(i, end)
                return -1
        return 0

    cdef bint _fast_request(self, int k) except -1:
        """An infer whose kind has a decision made ahead: forwarded here, then the owner
        told (`_fast_sent`). False (nothing done) for anything else: the owner decides."""
        cdef const unsigned char *b = <const unsigned char *>z_data(&self.parts[2])
        cdef Py_ssize_t n = z_size(&self.parts[2]), i = 0, ks = 0, kl = 0, vend
        cdef Py_ssize_t id_s = -1, id_e = -1, ms = -1, ml = 0, as_ = -1, al = 0
        cdef unsigned long long count = 0, pair
        cdef double slo = 0.0
        cdef bint has_slo = False
        i = _map_head(b, n, &count)
        if i < 0:
            return False
        pair = 0
        while pair < count:
            pair += 1
            i = _pair(b, i, n, &ks, &kl, &vend)
            if i < 0:
                return False
            if _is(b, ks, kl, "id", 2):
                id_s, id_e = i, vend
            elif _is(b, ks, kl, "op", 2):
                if _str(b, i, n, &ks, &kl) < 0 or not _is(b, ks, kl, "infer", 5):
                    return False
            elif _is(b, ks, kl, "model", 5):
                if _str(b, i, n, &ms, &ml) < 0:
                    return False
            elif _is(b, ks, kl, "app", 3):
                if _str(b, i, n, &as_, &al) < 0:
                    return False
            elif _is(b, ks, kl, "slo_ms", 6):
                if b[i] == 0xc0:
                    has_slo = False
                elif _number(b, i, &slo) == 0:
                    has_slo = True
                else:
                    return False
            i = vend
        if id_s < 0 or ms < 0 or i != n:
            return False
        try:
            key = (PyUnicode_DecodeUTF8(<char *>b + ms, ml, NULL),
                   "default" if as_ < 0 else PyUnicode_DecodeUTF8(<char *>b + as_, al, NULL),
                   slo if has_slo else None)
        except UnicodeDecodeError:
            return False
        got = self.decisions.get(key)
        if got is None:
            return False
        node, until = got
        if _now_ns() > until or not 0 <= node < self.n - 1:
            return False
        cdef void *dst = self.items[node + 1].socket
        cdef unsigned long long rid = self.next_id
        self.next_id += 1
        cdef orr_msg_t head
        _with_id(&head, b, n, id_s, id_e, _uint(rid))
        ident = _bytes(&self.parts[0])
        raw = _bytes(&self.parts[2])
        cid_raw = PyBytes_FromStringAndSize(<char *>b + id_s, id_e - id_s)
        cdef list kept = []
        cdef Held hd
        cdef int j
        for j in range(3, k):  # a reference to each data frame, for a re-route
            hd = Held.__new__(Held)
            z_copy(&hd.msg, &self.parts[j])
            kept.append(hd)
        z_close(&self.parts[0])
        z_close(&self.parts[2])
        if z_send(&self.parts[1], dst, ZMQ_DONTWAIT | ZMQ_SNDMORE) < 0:
            self._close(1, 2)
            z_close(&head)
            self._close(3, k)
            raise OSError(z_errno(), "the relay could not forward a request")
        if z_send(&head, dst, ZMQ_DONTWAIT | (ZMQ_SNDMORE if k > 3 else 0)) < 0:
            z_close(&head)
            self._close(3, k)
            raise OSError(z_errno(), "the relay could not forward a request")
        if self._send_parts(dst, 3, k) < 0:
            raise OSError(z_errno(), "the relay could not forward a request")
        self.sent[rid] = (ident, cid_raw, <uintptr_t>dst)
        self.fast_requests += 1
        self.owner._fast_sent(ident, raw, rid, node, kept, key, cid_raw)
        return True

    cdef bint _fast_reply(self, int k, void *sock) except -1:
        """A reply to a request of the fast path, unless `rejected` (the owner may route
        it again): relayed here with the client's id, then the owner told
        (`_fast_replied`). False (nothing done) for anything else."""
        cdef const unsigned char *b = <const unsigned char *>z_data(&self.parts[1])
        cdef Py_ssize_t n = z_size(&self.parts[1]), i = 0, ks = 0, kl = 0, vend
        cdef Py_ssize_t id_s = -1, id_e = -1, ss = -1, sl = 0
        cdef unsigned long long count = 0, pair, rid = 0
        cdef unsigned char t
        i = _map_head(b, n, &count)
        if i < 0:
            return False
        pair = 0
        while pair < count:
            pair += 1
            i = _pair(b, i, n, &ks, &kl, &vend)
            if i < 0:
                return False
            if _is(b, ks, kl, "id", 2):
                t = b[i]
                if t <= 0x7f:
                    rid = t
                elif 0xcc <= t <= 0xcf:
                    rid = _be(b + i + 1, 1 << (t - 0xcc))
                else:
                    return False
                id_s, id_e = i, vend
            elif _is(b, ks, kl, "status", 6):
                if _str(b, i, n, &ss, &sl) < 0:
                    return False
            i = vend
        if id_s < 0 or ss < 0 or i != n or _is(b, ss, sl, "rejected", 8):
            return False
        got = self.sent.get(rid)
        if got is None:
            return False
        ident, cid_raw, handle = got
        if <uintptr_t>handle != <uintptr_t>sock:
            return False  # not from the node it was sent to: the owner's rules
        del self.sent[rid]
        status = PyUnicode_DecodeUTF8(<char *>b + ss, sl, "replace")
        cdef orr_msg_t head
        _with_id(&head, b, n, id_s, id_e, cid_raw)
        z_close(&self.parts[1])
        cdef void *client = self.items[0].socket
        # a ROUTER drops what it cannot route (a gone client): no error here
        if _send_bytes(client, ident, ZMQ_DONTWAIT | ZMQ_SNDMORE) < 0:
            self._close(0, 1)
            z_close(&head)
            self._close(2, k)
        elif z_send(&self.parts[0], client, ZMQ_DONTWAIT | ZMQ_SNDMORE) < 0:
            self._close(0, 1)
            z_close(&head)
            self._close(2, k)
        elif z_send(&head, client, ZMQ_DONTWAIT | (ZMQ_SNDMORE if k > 2 else 0)) < 0:
            z_close(&head)
            self._close(2, k)
        else:
            self._send_parts(client, 2, k)
        self.fast_replies += 1
        self.owner._fast_replied(rid, status)
        return True

    def serve(self, int timeout_ms):
        """Waits up to timeout_ms for messages and relays what came: 1 if a client's
        message was read, 2 if replies were relayed (or both)."""
        cdef int rc, i, n = self.n, flags = 0
        cdef unsigned long gen = self.generation
        cdef short rev[MAX_NODES + 1]
        rc = z_poll(self.items, n, timeout_ms)
        if rc < 0:
            if z_errno() == EINTR:
                return 0
            raise OSError(z_errno(), "the relay's poll failed")
        if rc == 0:
            return 0
        for i in range(n):
            rev[i] = self.items[i].revents
        if rev[0] & ZMQ_POLLIN:
            flags |= 1
            if self._clients(gen):
                return flags
        for i in range(1, n):
            if rev[i] & ZMQ_POLLIN:
                flags |= 2
                if self._replies(i - 1, gen):
                    return flags
        return flags

    cdef bint _clients(self, unsigned long gen) except -1:
        """The clients' messages; True if the nodes changed meanwhile (stop this wake)."""
        cdef void *sock = self.items[0].socket
        cdef void *dst
        cdef int k, j, node
        cdef object out, pending, held
        cdef Held h
        cdef list kept
        for _ in range(MAX_PER_WAKE):
            k = self._recv(sock)
            if k == 0:
                return False
            if k < 3 or z_size(&self.parts[1]) != 0:
                self._close(0, k)  # no empty delimiter frame: not the protocol; ignored
                continue
            if self.decisions and self._fast_request(k):
                if self.generation != gen:
                    return True
                continue
            try:
                out = self.owner._request(_bytes(&self.parts[0]), _bytes(&self.parts[2]))
            except BaseException:
                self._close(0, k)
                raise
            if out is None or self.generation != gen:
                self._close(0, k)
                if self.generation != gen:
                    return True
                continue
            node, head, pending = out
            if not 0 <= node < self.n - 1:
                self._close(0, k)
                raise IndexError(f"the relay has no node {node}")
            dst = self.items[node + 1].socket
            kept = []
            for j in range(3, k):  # a reference to each data frame, for a re-route
                h = Held.__new__(Held)
                z_copy(&h.msg, &self.parts[j])
                kept.append(h)
            pending.data = kept
            z_close(&self.parts[0])
            z_close(&self.parts[2])
            # the empty delimiter (parts[1]) goes first: SNDHWM 0, never blocks
            if z_send(&self.parts[1], dst, ZMQ_DONTWAIT | ZMQ_SNDMORE) < 0:
                self._close(1, 2)
                self._close(3, k)
                raise OSError(z_errno(), "the relay could not forward a request")
            if _send_bytes(dst, head, ZMQ_DONTWAIT | (ZMQ_SNDMORE if k > 3 else 0)) < 0:
                self._close(3, k)
                raise OSError(z_errno(), "the relay could not forward a request")
            if self._send_parts(dst, 3, k) < 0:
                raise OSError(z_errno(), "the relay could not forward a request")
            self.owner._settle()
            if self.generation != gen:
                return True
        return False

    cdef bint _replies(self, int node, unsigned long gen) except -1:
        """A node's replies; True if the nodes changed meanwhile (stop this wake)."""
        cdef void *sock = self.items[node + 1].socket
        cdef void *client = self.items[0].socket
        cdef int k
        cdef object out
        for _ in range(MAX_PER_WAKE):
            k = self._recv(sock)
            if k == 0:
                return False
            if k < 2:
                self._close(0, k)
                continue
            if self.sent and self._fast_reply(k, sock):
                if self.generation != gen:
                    return True
                continue
            try:
                out = self.owner._reply(node, _bytes(&self.parts[1]))
            except BaseException:
                self._close(0, k)
                raise
            if out is None:
                self._close(0, k)
            else:
                ident, head = out
                z_close(&self.parts[1])
                # a ROUTER drops what it cannot route (a gone client): no error here
                if _send_bytes(client, ident, ZMQ_DONTWAIT | ZMQ_SNDMORE) < 0:
                    self._close(0, 1)
                    self._close(2, k)
                elif z_send(&self.parts[0], client, ZMQ_DONTWAIT | ZMQ_SNDMORE) < 0:
                    self._close(0, 1)
                    self._close(2, k)
                elif _send_bytes(client, head,
                                 ZMQ_DONTWAIT | (ZMQ_SNDMORE if k > 2 else 0)) < 0:
                    self._close(2, k)
                else:
                    self._send_parts(client, 2, k)
                self.owner._settle()
            if self.generation != gen:
                return True
        return False
