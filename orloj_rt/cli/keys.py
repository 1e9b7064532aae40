"""`orloj-rt keys DIR`: make the CURVE keys for `orloj-rt start --curve-keys DIR`."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "keys",
        help="make CURVE keys: a server pair and client pairs (for --curve-keys)",
        description=(
            "Make (or add to) a CURVE key directory: the server's key pair (kept if it "
            "exists), and one key pair per --client NAME (default: one named 'client'), "
            "whose public key goes into DIR/authorized_clients/ so that the server admits "
            "it. Start the server with `orloj-rt start --curve-keys DIR`; give a client "
            "DIR/server.key and its NAME.key_secret (Python: Client(endpoint, "
            "curve_keys=DIR) reads server.key and client.key_secret there). Restart the "
            "server to admit clients added later."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="the key directory (created 0700)")
    p.add_argument("--client", action="append", metavar="NAME",
                   help="make a key pair for this client (repeatable; default: client)")
    p.add_argument("--force", action="store_true",
                   help="replace existing key files instead of refusing")  # fmt: skip
    p.set_defaults(func=run)


def run(args) -> int:
    from orloj_rt.runtime.security import KeysError, create_keys

    try:
        written = create_keys(args.dir, args.client or ["client"], force=args.force)
    except (KeysError, OSError) as exc:
        print(f"orloj-rt keys: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
