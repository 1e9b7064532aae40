"""Step-level batching inside one worker, without processes or sockets (runtime/step_runner.py):
members leave and are answered at the step where their own work ends, a newcomer's answer
is the one it gets alone (a `token` model joining a running batch, a `layer` model after
its catch-up), `end` removes members unanswered, every member is accounted for exactly
once over random joins, ends and steps, and a batch larger than its capacity still serves.

The models are the built-in `generate` (token) and `early_exit` (layer), built as the
worker builds them (`build_module`, a `BatchRunner`, `make_step_batch`); the reference
answer of a request is its whole-batch run alone (`BatchRunner.run` of a batch of one)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from orloj_rt.models import early_exit, generate  # noqa: E402
from orloj_rt.models.loading import build_module  # noqa: E402
from orloj_rt.models.spec import ModelEntry  # noqa: E402
from orloj_rt.runtime.batch_runner import BatchRunner  # noqa: E402
from orloj_rt.runtime.step_runner import (  # noqa: E402
    StateRows,
    StepBatch,
    is_step_model,
    make_step_batch,
    profile_steps,
)

SEED = 8
#: logits of a member batched with others vs alone: the same arithmetic up to the order of
#: float reductions (padding is masked out)
ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """As a CPU worker on this machine runs (and reproducible float reductions)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gen() -> BatchRunner:
    return BatchRunner(generate.ENTRY, build_module(generate.ENTRY), "cpu")


@pytest.fixture(scope="module")
def ee() -> BatchRunner:
    return BatchRunner(early_exit.ENTRY, build_module(early_exit.ENTRY), "cpu")


@pytest.fixture
def rng():
    print(f"seed {SEED}")
    return np.random.default_rng(SEED)


class Answers:
    """The `emit` callback: every answer, in order."""

    def __init__(self) -> None:
        self.log: list[tuple] = []  # (token, arrays or None, error or None, batch size)

    def __call__(self, token, arrays, error, started, size) -> None:
        assert isinstance(started, float) and size >= 1
        self.log.append((token, arrays, error, size))

    def tokens(self) -> list[int]:
        return [a[0] for a in self.log]

    def of(self, token: int) -> tuple:
        found = [a for a in self.log if a[0] == token]
        assert len(found) == 1, f"token {token} answered {len(found)} times"
        return found[0]


def new_batch(runner: BatchRunner) -> tuple[StepBatch, Answers]:
    answers = Answers()
    return make_step_batch(runner, answers), answers


def boundary(batch: StepBatch, ended=(), joined=()) -> None:
    """One boundary as the worker runs it: begin, end, join, step."""
    batch.begin()
    batch.end(ended)
    batch.join(list(joined))
    batch.step()


def solo(runner: BatchRunner, inputs: list[np.ndarray]) -> list[np.ndarray]:
    arrays, _ = runner.run([inputs])
    return arrays


def assert_same_generation(runner: BatchRunner, answer: tuple, prompt: np.ndarray) -> None:
    token, arrays, error, _ = answer
    assert error is None, error
    want_tokens, want_count = solo(runner, [prompt])
    assert arrays[0].shape == (1, generate.MAX_NEW_TOKENS) and arrays[0].dtype == np.int64
    assert int(arrays[1][0]) == int(want_count[0]), f"token {token}: length differs"
    np.testing.assert_array_equal(arrays[0], want_tokens, err_msg=f"token {token}")


def assert_same_exit(runner: BatchRunner, answer: tuple, tokens: np.ndarray) -> None:
    token, arrays, error, _ = answer
    assert error is None, error
    want_logits, want_depth = solo(runner, [tokens])
    assert arrays[0].shape == (1, early_exit.NUM_CLASSES) and arrays[0].dtype == np.float32
    assert int(arrays[1][0]) == int(want_depth[0]), f"token {token}: exit layer differs"
    np.testing.assert_allclose(arrays[0], want_logits, rtol=0, atol=ATOL,
                               err_msg=f"token {token}")  # fmt: skip


# ---------------------------------------------------------------------- leaving on time
def test_the_builtin_models_implement_the_step_interface(gen, ee):
    assert is_step_model(gen.module) and is_step_model(ee.module)
    with pytest.raises(ValueError, match="step interface"):
        make_step_batch(BatchRunner(generate.ENTRY, torch.nn.Linear(2, 2), "cpu"), Answers())


def test_token_members_leave_at_the_step_their_generation_ends(gen, rng):
    """Lengths 2, 5, 9 (and 1) together: the prefill makes the first token, each step one
    more, so a member of length L is answered after exactly L - 1 steps (one of length 1
    at its join), reporting L steps; `progress` counts the steps each member ran."""
    lengths = {10: 2, 11: 5, 12: 9, 13: 1}
    prompts = {t: generate.prompt_for_length(n, 3 + t % 4, rng) for t, n in lengths.items()}
    batch, answers = new_batch(gen)
    batch.begin()
    batch.join([(t, [p]) for t, p in prompts.items()])
    assert answers.tokens() == [13], "a one-token generation is done at its prefill"
    assert batch.finished == [[13, 1]]
    assert batch.progress() == ([10, 11, 12], [1, 1, 1])
    answered_at = {13: 0}
    for k in range(1, 12):  # bounded: the longest needs 8 steps
        batch.begin()
        batch.step()
        assert batch.size == len(batch) + len(batch.finished), "size: members of this step"
        for token, steps in batch.finished:
            answered_at[token] = k
            assert steps == lengths[token], f"token {token} reported {steps} steps"
        tokens, steps = batch.progress()
        assert steps == [1 + k] * len(tokens), "every running member ran every step"
        assert set(tokens) == {t for t in lengths if t not in answered_at}
        if not len(batch):
            break
    assert answered_at == {t: n - 1 for t, n in lengths.items()}
    assert sorted(answers.tokens()) == sorted(lengths)
    for t, p in prompts.items():
        assert_same_generation(gen, answers.of(t), p)
    assert answers.of(12)[3] == 1 and answers.of(10)[3] == 3, "size: the step's members"


def test_layer_members_leave_at_their_exit_layer(ee, rng):
    depths = {1: 2, 2: 5, 3: 9, 4: 12}
    inputs = {t: early_exit.tokens_for_depth(d, 8 * t, rng) for t, d in depths.items()}
    batch, answers = new_batch(ee)
    batch.begin()
    batch.join([(t, [x]) for t, x in inputs.items()])
    assert batch.progress() == ([1, 2, 3, 4], [0, 0, 0, 0]), "embeddings: no layer run yet"
    answered_at = {}
    for k in range(1, 20):
        batch.begin()
        batch.step()
        for token, steps in batch.finished:
            answered_at[token] = k
            assert steps == depths[token]
        assert batch.progress()[1] == [k] * len(batch)
        if not len(batch):
            break
    assert answered_at == depths
    for t, x in inputs.items():
        assert_same_exit(ee, answers.of(t), x)


# ---------------------------------------------------------------------- joining
def test_a_token_member_joining_a_running_batch_answers_as_alone(gen, rng):
    """B and C join a batch 5 and 9 steps in (longer and shorter prompts than its
    members'): everyone's tokens are those of its solo run."""
    prompts = {
        1: generate.prompt_for_length(20, 4, rng),
        2: generate.prompt_for_length(14, 32, rng),
        3: generate.prompt_for_length(7, 1, rng),
        4: generate.prompt_for_length(11, 17, rng),
    }
    batch, answers = new_batch(gen)
    boundary(batch, joined=[(1, [prompts[1]]), (2, [prompts[2]])])
    for _ in range(4):
        boundary(batch)
    assert batch.progress() == ([1, 2], [6, 6])
    batch.begin()
    batch.join([(3, [prompts[3]])])
    assert batch.progress() == ([1, 2, 3], [6, 6, 1]), "a newcomer starts at its prefill"
    batch.step()
    for _ in range(3):
        boundary(batch)
    boundary(batch, joined=[(4, [prompts[4]])])
    for _ in range(40):
        if not len(batch):
            break
        boundary(batch)
    assert sorted(answers.tokens()) == [1, 2, 3, 4]
    for t, p in prompts.items():
        assert_same_generation(gen, answers.of(t), p)


@pytest.mark.parametrize("level", [3, 6])
def test_a_layer_member_catches_up_and_answers_as_alone(ee, rng, level):
    """Newcomers join a batch at layer `level`: they run alone up to it (one exits during
    the catch-up and is answered at once), join at its layer, and answer as alone; the
    batch's members too, with longer and shorter sequences padded into their rows."""
    running = {1: early_exit.tokens_for_depth(12, 16, rng),
               2: early_exit.tokens_for_depth(level + 2, 8, rng)}  # fmt: skip
    newcomers = {
        3: early_exit.tokens_for_depth(level - 1, 32, rng),  # exits while catching up
        4: early_exit.tokens_for_depth(level + 1, 32, rng),  # longer than the batch's
        5: early_exit.tokens_for_depth(11, 4, rng),  # shorter
        6: early_exit.tokens_for_depth(level, 12, rng),  # done exactly at the batch's layer
    }
    batch, answers = new_batch(ee)
    boundary(batch, joined=[(t, [x]) for t, x in running.items()])
    for _ in range(level - 1):
        boundary(batch)
    assert batch.progress() == ([1, 2], [level, level])
    batch.begin()
    batch.join([(t, [x]) for t, x in newcomers.items()])
    assert sorted(answers.tokens()) == [3, 6], "exited during the catch-up: answered at once"
    assert sorted(batch.finished) == [[3, level - 1], [6, level]]
    tokens, steps = batch.progress()
    assert sorted(tokens) == [1, 2, 4, 5] and steps == [level] * 4, "joined at the layer"
    assert int(ee.module.progress(batch.rows.view()).min()) == level
    for _ in range(20):
        batch.step()
        if not len(batch):
            break
        batch.begin()
    assert sorted(answers.tokens()) == [1, 2, 3, 4, 5, 6]
    for t, x in {**running, **newcomers}.items():
        assert_same_exit(ee, answers.of(t), x)


# ---------------------------------------------------------------------- ending
def test_ended_members_leave_unanswered_and_the_others_keep_their_rows(gen, rng):
    prompts = {t: generate.prompt_for_length(n, 8, rng)
               for t, n in {1: 9, 2: 12, 3: 4, 4: 10, 5: 2}.items()}  # fmt: skip
    batch, answers = new_batch(gen)
    boundary(batch, joined=[(t, [p]) for t, p in prompts.items()])
    boundary(batch)
    assert answers.tokens() == [5]
    # ended: a running member in the middle (the last row moves into its place), the
    # first row, a member that finished already, and a token never seen (both ignored)
    batch.begin()
    batch.end([2, 1, 5, 999])
    tokens, steps = batch.progress()
    assert sorted(tokens) == [3, 4] and steps == [3, 3]
    assert batch.finished == [] and batch.failed == []
    batch.step()
    for _ in range(20):
        if not len(batch):
            break
        boundary(batch)
    assert sorted(answers.tokens()) == [3, 4, 5]
    for t in (3, 4, 5):
        assert_same_generation(gen, answers.of(t), prompts[t])
    # ending everyone empties the batch, which then serves a newcomer
    boundary(batch, joined=[(6, [prompts[2]]), (7, [prompts[1]])])
    batch.begin()
    batch.end([6, 7])
    assert len(batch) == 0 and batch.progress() == ([], [])
    batch.step()
    assert batch.size == 0 and 6 not in answers.tokens() and 7 not in answers.tokens()
    boundary(batch, joined=[(8, [prompts[4]])])
    for _ in range(20):
        if not len(batch):
            break
        boundary(batch)
    assert_same_generation(gen, answers.of(8), prompts[4])


@pytest.mark.parametrize("kind", ["token", "layer"])
def test_every_member_is_answered_ended_or_running_exactly_once(gen, ee, kind):
    """A seeded random run of joins, ends (of running, finished and unknown tokens) and
    steps: at every boundary each joined token is in exactly one of answered, ended (while
    running) or running; nobody is answered twice; every answer is the solo one."""
    runner = gen if kind == "token" else ee
    rng = np.random.default_rng(SEED + (kind == "layer"))
    print(f"seed {SEED + (kind == 'layer')}")
    cap = runner.spec.max_batch_size
    batch, answers = new_batch(runner)
    inputs: dict[int, np.ndarray] = {}
    ended: set[int] = set()
    next_token = 100
    for _ in range(80):
        batch.begin()
        running = set(batch.progress()[0])
        to_end = []
        if running and rng.random() < 0.3:
            to_end = list(rng.choice(sorted(running), size=int(rng.integers(1, 3))))
            to_end = [int(t) for t in to_end]
        noise = [int(t) for t in rng.choice(sorted(inputs), size=2)] if inputs else []
        batch.end(to_end + [t for t in noise if t not in running] + [-1])
        ended |= set(to_end)
        k = int(rng.integers(1, 4)) if rng.random() < 0.5 else 0
        k = min(k, cap - len(batch))
        members = []
        for _ in range(k):
            if kind == "token":
                x = generate.prompt_for_length(int(rng.integers(1, 13)),
                                               int(rng.integers(1, 33)), rng)  # fmt: skip
            else:
                x = early_exit.tokens_for_depth(int(rng.integers(1, 13)),
                                                int(rng.integers(1, 33)), rng)  # fmt: skip
            inputs[next_token] = x
            members.append((next_token, [x]))
            next_token += 1
        batch.join(members)
        batch.step()
        _check_accounts(batch, answers, inputs, ended)
    for _ in range(20):  # the rest run to their end
        if not len(batch):
            break
        boundary(batch)
        _check_accounts(batch, answers, inputs, ended)
    assert len(batch) == 0
    answered = set(answers.tokens())
    assert answered | ended == set(inputs) and not answered & ended
    assert len(ended) >= 3 and len(answered) >= 20, "the run exercised ends and answers"
    for t in answered:
        if kind == "token":
            assert_same_generation(runner, answers.of(t), inputs[t])
        else:
            assert_same_exit(runner, answers.of(t), inputs[t])


def _check_accounts(batch: StepBatch, answers: Answers, inputs: dict, ended: set) -> None:
    answered = answers.tokens()
    assert len(answered) == len(set(answered)), "a member was answered twice"
    running = set(batch.progress()[0])
    assert len(running) == len(batch) == batch.rows.n
    assert len(batch.tokens) == len(batch.steps) == len(batch.started) == batch.rows.n
    # the steps counted per row are the model's own progress of the member in that row
    if len(batch):
        assert batch.progress()[1] == batch.model.progress(batch.rows.view()).tolist()
    if batch.layer:
        assert len(set(batch.progress()[1])) <= 1, "a layer batch runs one layer a step"
    assert not running & set(answered) and not running & ended and not ended & set(answered)
    assert running | set(answered) | ended == set(inputs)
    assert {t for t, _ in batch.finished} <= set(answered) and batch.failed == []
    assert all(a[2] is None for a in answers.log)


# ---------------------------------------------------------------------- capacity, errors
def small(runner: BatchRunner, max_batch: int) -> BatchRunner:
    """The same module served with a smaller max_batch_size (the rows' capacity)."""
    e = runner.entry
    entry = ModelEntry(e.spec.replace(max_batch_size=max_batch), e.factory, e.factory_args,
                       e.examples)  # fmt: skip
    return BatchRunner(entry, runner.module, "cpu")


def test_a_batch_at_capacity_keeps_its_rows_and_one_beyond_grows(gen, rng, caplog):
    runner = small(gen, 4)
    prompts = {t: generate.prompt_for_length(int(n), 8, rng)
               for t, n in enumerate([6, 3, 9, 10, 7, 5, 8], start=1)}  # fmt: skip
    batch, answers = new_batch(runner)
    boundary(batch, joined=[(t, [prompts[t]]) for t in (1, 2, 3, 4)])
    assert batch.rows.capacity == 4 and len(batch) == 4
    ptrs = {k: b.data_ptr() for k, b in batch.rows.base.items()}
    boundary(batch)  # 2 (length 3) leaves at the 2nd step: a free row
    assert answers.tokens() == [2]
    boundary(batch, joined=[(5, [prompts[5]])])
    assert len(batch) == 4 and batch.rows.capacity == 4 and "capacity" not in caplog.text
    assert {k: b.data_ptr() for k, b in batch.rows.base.items()} == ptrs, "rows reused"
    with caplog.at_level(logging.WARNING, logger="orloj_rt.worker"):
        batch.begin()
        batch.join([(6, [prompts[6]]), (7, [prompts[7]])])  # 6 members: beyond capacity
    assert "exceeds its capacity" in caplog.text
    assert batch.rows.capacity >= 6 and len(batch) == 6
    for _ in range(20):
        batch.step()
        if not len(batch):
            break
        batch.begin()
    assert sorted(answers.tokens()) == list(prompts)
    for t, p in prompts.items():
        assert_same_generation(gen, answers.of(t), p)


def test_a_model_error_fails_its_members_and_the_batch_serves_on(gen, rng, monkeypatch):
    prompts = {t: generate.prompt_for_length(n, 8, rng) for t, n in {1: 9, 2: 6, 3: 5}.items()}
    batch, answers = new_batch(gen)
    boundary(batch, joined=[(1, [prompts[1]]), (2, [prompts[2]])])
    real_step, real_init = gen.module.step, gen.module.init_state

    def broken(*a):
        raise RuntimeError("boom")

    # a failing init_state fails the newcomer only: the running members step on
    monkeypatch.setattr(gen.module, "init_state", broken)
    boundary(batch, joined=[(3, [prompts[3]])])
    assert batch.failed == [3] and answers.of(3)[1] is None
    assert "boom" in answers.of(3)[2] and "generate" in answers.of(3)[2]
    assert batch.progress() == ([1, 2], [3, 3])
    monkeypatch.setattr(gen.module, "init_state", real_init)
    # a failing step fails every member with the error, and empties the batch
    monkeypatch.setattr(gen.module, "step", broken)
    boundary(batch)
    assert sorted(batch.failed) == [1, 2] and len(batch) == 0
    assert all(answers.of(t)[1] is None and "boom" in answers.of(t)[2] for t in (1, 2))
    monkeypatch.setattr(gen.module, "step", real_step)
    boundary(batch, joined=[(4, [prompts[3]])])
    for _ in range(10):
        if not len(batch):
            break
        boundary(batch)
    assert_same_generation(gen, answers.of(4), prompts[3])


# ---------------------------------------------------------------------- rows, profile
def test_state_rows_move_the_last_row_into_a_hole_and_pad_longer_states():
    rows = StateRows({"pad": True}, capacity=4)
    rows.append({"h": torch.arange(3.0)[:, None].repeat(1, 2),
                 "pad": torch.zeros(3, 2, dtype=torch.bool)})  # fmt: skip
    # a longer newcomer pads the rows already there, with STATE_PAD (default 0)
    rows.append({"h": torch.full((1, 3), 7.0), "pad": torch.zeros(1, 3, dtype=torch.bool)})
    view = rows.view()
    assert view["h"].tolist() == [[0, 0, 0], [1, 1, 0], [2, 2, 0], [7, 7, 7]]
    assert view["pad"].tolist() == [[False, False, True]] * 3 + [[False] * 3]
    # holes from the last: row 3 moves into 2's place, then that row into 0's
    assert rows.remove([0, 2]) == [(3, 2), (2, 0)]
    assert rows.n == 2
    assert rows.view()["h"].tolist() == [[7, 7, 7], [1, 1, 0]]
    assert rows.view()["pad"].tolist() == [[False] * 3, [False, False, True]]
    assert rows.row(1)["h"].tolist() == [[1, 1, 0]]


def test_profile_steps_gives_the_step_time_c_and_each_examples_steps(gen):
    from orloj_rt.runtime.batch_runner import examples_for

    runner = small(gen, 4)
    examples = examples_for(runner.entry, 6)
    step_s, inflation, work = profile_steps(runner, examples)
    assert step_s > 0 and len(inflation) == 4 and inflation[0] == 1.0
    assert all(b >= a for a, b in zip(inflation, inflation[1:], strict=False))
    want = [int(solo(runner, [ex["prompt"]])[1][0]) for ex in examples]
    assert work == want
