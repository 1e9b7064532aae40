"""Server-derived cost hints end to end: a real server (frontend, scheduler, a CPU worker)
serving the built-in `seq_encoder`, which declares `hint = "length(tokens)"`.

The derived hint is seen where the scheduler uses it: under `--policy oracle`, which reads
each request's hint as its solo time in seconds and answers `error` for a request without
one (the scheduler cannot queue it). With an SLO of 60 s, a request of L tokens sent with
no hint is served when L s fits (L <= 20 here) and dropped at once when it cannot (100
tokens: 100 s > 60 s), so each answer shows that its hint reached the scheduler and that
it was the request's length; a client's hint changes both answers the other way.
"""

from __future__ import annotations

import numpy as np
import pytest

from orloj_rt.client import Client
from orloj_rt.models import seq_encoder

from .helpers import run_cli, running_server

SLO_MS = 60_000.0  # the oracle reads hints as seconds: 60 s of slack
SEQ_TOML = ('builtin = "seq_encoder"\nname = "seq"\nmax_batch_size = 4\n'
            f"default_slo_ms = {SLO_MS}\nfactory_args = {{ num_layers = 1 }}\n")  # fmt: skip


@pytest.fixture(scope="module")
def oracle_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("hint_repo")
    (repo / "seq.toml").write_text(SEQ_TOML)
    with running_server(tmp_path_factory.mktemp("logs"), "--models", str(repo),
                        "--policy", "oracle") as s:  # fmt: skip
        yield s


def test_the_models_answer_shows_the_declaration(oracle_server):
    with Client(oracle_server.endpoint, timeout_s=60) as c:
        (seq,) = c.models()
    assert seq["name"] == "seq" and seq["hint"] == "length(tokens)"


def test_requests_without_a_hint_are_served_with_the_derived_one(oracle_server):
    rng = np.random.default_rng(0)
    with Client(oracle_server.endpoint, timeout_s=60) as c:
        for length in (1, 5, 20):
            r = c.infer("seq", {"tokens": seq_encoder.tokens_of_length(length, rng)})
            # without a hint reaching it, the oracle could not queue it: `error`
            assert r.status == "ok", (length, r.status, r.error)
            assert int(r.outputs["length"]) == length
        # 100 tokens: a derived hint of 100 (s) cannot fit 60 s: dropped, not run
        r = c.infer("seq", {"tokens": seq_encoder.tokens_of_length(100, rng)})
        assert r.status == "dropped", (r.status, r.error)
        stats = c.stats()["models"]["seq"]
    assert stats["ok"] >= 3 and stats["dropped"] >= 1 and stats["error"] == 0, stats


def test_a_client_hint_overrides_the_derived_one(oracle_server):
    rng = np.random.default_rng(1)
    with Client(oracle_server.endpoint, timeout_s=60) as c:
        long = c.infer("seq", {"tokens": seq_encoder.tokens_of_length(100, rng)}, hint=0.001)
        assert long.status == "ok", (long.status, long.error)  # derived: 100 s, dropped
        assert int(long.outputs["length"]) == 100
        short = c.infer("seq", {"tokens": seq_encoder.tokens_of_length(2, rng)}, hint=1000.0)
        assert short.status == "dropped", (short.status, short.error)  # derived: 2 s, ok


def test_a_bad_declaration_stops_the_start_with_one_line(tmp_path):
    (tmp_path / "seq.toml").write_text('builtin = "seq_encoder"\nhint = "nonzero(token)"\n')
    r = run_cli("start", "--models", str(tmp_path), "--cpu-workers", "1",
                "--bind", "tcp://127.0.0.1:*", timeout=60)  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert "serving on" not in r.stdout
    msg = r.stderr.strip().splitlines()[-1]
    assert msg.startswith(f"orloj-rt start: model config {tmp_path / 'seq.toml'}: field "
                          "`hint`: 'nonzero(token)': 'token' is not an input"), msg  # fmt: skip
    assert 'Fix: name one of its inputs (tokens), e.g. hint = "nonzero(tokens)"' in msg, msg
