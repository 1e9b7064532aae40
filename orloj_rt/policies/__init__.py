"""Every scheduling policy by name, behind one factory, for the simulator and the runtime.

    policy = make_policy("orloj", max_batch=32, inflation=table_or_None, **params)
    policy.set_default_distribution(prior)

All policies implement `orloj_rt.engine.interface.Policy`. `orloj` comes from the active
engine (compiled, or the pure twin with ORLOJ_RT_PURE=1); the baselines are Python over the
active engine's `RequestQueue`:

    fifo       Triton's dynamic batcher: oldest first, preferred sizes (powers of two),
               queue delay 0.1 x SLO, queue timeout = SLO -> rejected
    edf        earliest deadline first; drops the expired
    nexus      a deterministic offline profile l(b): the duty-cycle batch size (largest b
               with 2 l(b) <= SLO), early drop by a sliding window
    clockwork  the maximum of the last 10 measured batch times per size; power-of-two
               batches; drops what that estimate says cannot make it
    oracle     the clairvoyant twin of orloj: knows each request's true time (an upper
               reference; the simulator gives it the true times)
    sjf-hint   shortest predicted first: each request's prediction is the mean of its
               (hint-class) app's distribution; drops what cannot finish alone by it, then
               a greedy batch that meets every member's deadline by the prediction
    loki-threshold  Loki-style accuracy scaling: the whole model at the most accurate
               variant that keeps up with the arrivals and drains the queue within the SLO
               (orloj's batching within it); the full model where there are no variants

Priorities, app weights, fairness and variants (issue 17, orloj_rt/policies/utility.py):
`orloj` given `variants` (two or more), `app_weights`, `tier_weights`, `priorities=True` or
`fairness` > 0 is a `UtilityPolicy`: expected utility (weight x accuracy) per unit of time.
fifo honours a request's priority as Triton's priority levels do (a higher tier always
first); edf, nexus, clockwork, the oracle and sjf-hint have no priorities (their systems
have none) and ignore it.

Cost hints reach the policies in `HINTED` as apps: the serving core files each hinted
request under a class of its hint, `APP#h<k>`, with its own learned distribution
(orloj_rt/serving/hints.py); orloj is then built with pools=True.

Step-level policies (`STEP_POLICIES`) implement `orloj_rt.policies.step_interface.
StepPolicy` instead: for iterative models whose batch is re-formed at every step, they
are called at each step boundary, by the simulator (`orloj-rt sim --batching step`) and
by the runtime (`orloj-rt start --policy orloj-step`, which serves a model without steps
with the whole-batch counterpart: docs/runtime.md#step-level-batching). `make_policy`
builds them too, with `step=` (the solo work of one step):

    orloj-step   distribution-aware admission, dropping and ending from each running
                 member's conditional distribution given the work it has done
    fcfs-step    continuous batching as LLM servers do it: arrival order, no deadlines
    edf-step     earliest deadline first; drops and ends the expired
    oracle-step  orloj-step knowing each request's true time (an upper reference)

`POLICIES` stays the list of whole-batch policies; the runtime's `--policy` offers both
(`orloj_rt.cli._server_args.policy_names`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from orloj_rt.engine import OrlojPolicy
from orloj_rt.engine.interface import Policy
from orloj_rt.policies.clockwork import ClockworkPolicy
from orloj_rt.policies.edf import EdfPolicy
from orloj_rt.policies.edf_step import EdfStepPolicy
from orloj_rt.policies.fcfs_step import FcfsStepPolicy
from orloj_rt.policies.fifo import TritonFifoPolicy
from orloj_rt.policies.nexus import NexusPolicy
from orloj_rt.policies.oracle import ClairvoyantOraclePolicy
from orloj_rt.policies.orloj_step import ClairvoyantStepOraclePolicy, OrlojStepPolicy
from orloj_rt.policies.sjf_hint import SjfHintPolicy
from orloj_rt.policies.step_interface import StepPolicy
from orloj_rt.policies.utility import LokiThresholdPolicy, UtilityPolicy, wants_utility

PolicyFactory = Callable[..., Policy | StepPolicy]

#: name -> factory(max_batch=..., inflation=..., **params)
POLICIES: dict[str, PolicyFactory] = {
    "orloj": OrlojPolicy,
    "fifo": TritonFifoPolicy,
    "edf": EdfPolicy,
    "nexus": NexusPolicy,
    "clockwork": ClockworkPolicy,
    "oracle": ClairvoyantOraclePolicy,
    "sjf-hint": SjfHintPolicy,
    "loki-threshold": LokiThresholdPolicy,
}

#: the policies that choose among a model's variants (given `variants` by the serving core)
VARIANT_POLICIES = ("orloj", "loki-threshold")
#: the keys orloj takes beyond its engine's, when it maximises utility (utility.py)
UTILITY_KEYS = ("tier_weights", "fairness", "priorities", "horizon", "choice", "reserve",
                "min_accuracy")

#: The policies a deployment may choose; the oracle needs true times only a simulator has.
#: sjf-hint, also deployable, is the hint-aware baseline: it is compared where requests
#: carry cost hints (HINTED), so it stays out of this list of every cell's baselines.
BASELINES = ("fifo", "edf", "nexus", "clockwork")

#: the policies that get cost-hint classes from the serving core (orloj_rt/serving/hints.py)
HINTED = ("orloj", "orloj-step", "sjf-hint")

#: Step-level policies (orloj_rt/policies/step_interface.py): called at every step boundary
#: of an iterative model, factory(max_batch=..., inflation=..., step=..., **params).
STEP_POLICIES: dict[str, PolicyFactory] = {
    "orloj-step": OrlojStepPolicy,
    "fcfs-step": FcfsStepPolicy,
    "edf-step": EdfStepPolicy,
    "oracle-step": ClairvoyantStepOraclePolicy,
}


def is_step_policy(name: str) -> bool:
    """Whether `name` is a step-level policy (it needs step-level batching)."""
    return name in STEP_POLICIES


#: the whole-batch policy that serves a model without steps under a step policy
WHOLE_BATCH_FALLBACK = {
    "orloj-step": "orloj",
    "fcfs-step": "fifo",
    "edf-step": "edf",
    "oracle-step": "oracle",
}


def serving_mode(spec, policy: str) -> tuple[str, bool]:
    """(the policy that serves this model, whether it is served step by step): a model
    that declares steps (`spec.step_kind`) under a step policy is served step by step; a
    model without steps under a step policy by its whole-batch counterpart."""
    if not is_step_policy(policy):
        return policy, False
    if spec.step_kind is None:
        return WHOLE_BATCH_FALLBACK.get(policy, "orloj"), False
    return policy, True


def make_policy(
    name: str,
    *,
    max_batch: int,
    inflation: Sequence[float] | None = None,
    **params,
) -> Policy | StepPolicy:
    """Builds policy `name` for one model, whole-batch or step-level; ValueError naming
    the choices if unknown."""
    factory = POLICIES.get(name) or STEP_POLICIES.get(name)
    if name == "orloj":
        if wants_utility(params):
            factory = UtilityPolicy
        else:
            for key in ("variants", "app_weights", *UTILITY_KEYS):
                params.pop(key, None)
    if factory is None:
        raise ValueError(
            f"unknown policy {name!r}; choose one of: {', '.join(sorted(POLICIES))} "
            f"(step-level: {', '.join(sorted(STEP_POLICIES))})"
        )
    if inflation is not None:
        return factory(max_batch=max_batch, inflation=list(inflation), **params)
    return factory(max_batch=max_batch, **params)
