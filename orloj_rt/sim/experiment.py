"""One simulation cell: a workload, a set of policies, the metrics of each.

This is what `orloj-rt sim` and bench/finish_rate.py run. Every policy sees the same
requests. Whole-batch policies run inside the runtime's own serving core
(`simulate_serving`, orloj_rt/serving): the core builds the policy as the scheduler
process does, primes it from a warm-up profile (the solo times of an independent sample
of the workload, as a worker's warm-up measures its examples), and teaches it from the
same reports a worker sends (batch times, per-request work).

With `batching="step"` (step-level batching, issue 8) the step policies (`orloj-step`,
`fcfs-step`, `edf-step`, `oracle-step`) run inside the serving core too
(`simulate_serving_steps`): the batch is re-formed every `step` units of solo work, the
workers report each step boundary (`StepProgress`) and apply the core's `StepUpdate`s at
their next boundary, as in the runtime. Whole-batch policies run whole batches in either
mode, so a step cell compares both kinds on the same requests. (`simulate_steps`, which
calls a step policy directly at each boundary, stays for direct policy tests.)

A policy name with the suffix `+hint` (e.g. `orloj+hint`, `orloj-step+hint`) is that
policy given the requests' cost hints: the serving core classes them and learns each
class's distribution online (orloj_rt/serving/hints.py), as in the runtime. `sjf-hint`
always gets them. The workload must have hints (`hint_cv`). Every other policy gets no
hint (the oracle gets each request's true solo time instead).

A multi-app cell (`WorkloadSpec.app_mix`, orloj_rt/sim/mix.py) tags each request with its
app; every policy's metrics then gain "apps": {name: the same metrics over that app's
requests, with "requests" and "finished" (on time) counts}, and "jain", Jain's index of
the apps' finish rates (each app's finished over what it asked for).

Utility (issue 17, orloj_rt/policies/utility.py). `SimConfig.variants` gives the model
variants as (name, cost scale, accuracy), the full model first: a policy name with the
suffix `+variants` (orloj+variants) and `loki-threshold` serve a model with them; every
other policy a model without. `priorities` gives tiers as (tier, share of the requests,
weight); each request draws its tier from its own seeded stream (`tiers_of`), and orloj
gets the weights as `tier_weights` (fifo serves a higher tier first; the other baselines
have no tiers). `fairness` > 0 is orloj's fairness gain. Every policy's metrics gain
`answered_in_slo` (the requests answered in time, a share of all: the finish rate),
`mean_accuracy` (over those answers, of the variant that served each; 1 without
variants), `utility` (the sum over them of tier weight x accuracy, over the requests: the
finish rate when there are neither tiers nor variants) and with tiers "tiers": {tier:
{"requests", "finished", "finish_rate", "late", "dropped", "weight"}}; with variants
"variants": {name: requests served}.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from orloj_rt.engine.pure.batch_model import DEFAULT_ALPHA, DEFAULT_MAX_BATCH, Inflation
from orloj_rt.policies.step_base import DEFAULT_STEP
from orloj_rt.protocol.stats import jain
from orloj_rt.sim.simulator import COMPLETED, Outcome, simulate_serving
from orloj_rt.sim.step_simulator import simulate_serving_steps
from orloj_rt.sim.workloads import WorkloadSpec, generate

ALL_POLICIES = ("orloj", "fifo", "edf", "nexus", "clockwork", "oracle")
#: The default policies of a step-level cell: whole-batch orloj and the oracle against the
#: step policies.
STEP_CELL_POLICIES = ("orloj", "oracle", "fcfs-step", "edf-step", "orloj-step")
BATCHING = ("whole", "step")
HINT_SUFFIX = "+hint"
VARIANT_SUFFIX = "+variants"
#: the policies that always serve the model's variants in a cell that has them
VARIANT_ALWAYS = ("loki-threshold",)
#: seeds the stream that draws the requests' tiers (apart from the workload's streams)
TIER_STREAM = 0x7172


def policy_base(name: str) -> str:
    """The registered policy behind a cell's name: without +variants and +hint."""
    return name.removesuffix(VARIANT_SUFFIX).removesuffix(HINT_SUFFIX)


def uses_variants(name: str) -> bool:
    return name.endswith(VARIANT_SUFFIX) or policy_base(name) in VARIANT_ALWAYS


@dataclass(frozen=True)
class SimConfig:
    """A simulation cell: the workload, the serving set-up, and the policies to compare."""

    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    workers: int = 1
    max_batch: int = DEFAULT_MAX_BATCH
    batch_alpha: float = DEFAULT_ALPHA
    policies: tuple[str, ...] = ALL_POLICIES
    # extra constructor arguments per policy, e.g. {"orloj": {"theta": 0.8}}
    policy_params: dict = field(default_factory=dict)
    # "step": the model can re-form its batch every `step` units of solo work
    batching: str = "whole"
    step: float = DEFAULT_STEP
    # the model's variants as (name, cost scale, accuracy), the full model first
    variants: tuple = ()
    # priority tiers as (tier, share of requests, weight); tier 0 takes the rest
    priorities: tuple = ()
    fairness: float = 0.0

    def __post_init__(self) -> None:
        from orloj_rt.policies import HINTED, is_step_policy

        for name in self.policies:
            if name.endswith(VARIANT_SUFFIX) and not self.variants:
                raise ValueError(f"policy {name!r} serves the model's variants: give "
                                 "--variants NAME:COST:ACCURACY,...")
            if name.endswith(VARIANT_SUFFIX) and policy_base(name) != "orloj":
                raise ValueError(f"policy {name!r}: only orloj takes {VARIANT_SUFFIX} "
                                 "(loki-threshold always serves the variants)")
        if self.batching not in BATCHING:
            raise ValueError(f"unknown batching {self.batching!r}; choose one of {BATCHING}")
        if not (self.step > 0 and self.step < float("inf")):
            raise ValueError(f"the step's solo work must be > 0, got {self.step!r}")
        for name in self.policies:
            name = name.removesuffix(VARIANT_SUFFIX)
            if is_step_policy(name.removesuffix(HINT_SUFFIX)) and self.batching != "step":
                raise ValueError(f"policy {name!r} is step-level: it needs step "
                                 "batching (--batching step)")
            if name.endswith(HINT_SUFFIX) and name.removesuffix(HINT_SUFFIX) not in HINTED:
                raise ValueError(f"policy {name!r}: {name.removesuffix(HINT_SUFFIX)} uses no "
                                 f"cost hints; give one of {', '.join(HINTED)} the suffix")

    def to_json(self) -> dict:
        out = asdict(self.workload)
        if self.workload.app_mix:
            out["slo"] = None  # each app has its own
            out["app_mix"] = [dict(a, slo_units=self.workload.app_mix[i].slo_units)
                              for i, a in enumerate(out["app_mix"])]
        else:
            del out["app_mix"]
        out.update(
            workers=self.workers,
            max_batch=self.max_batch,
            batch_alpha=self.batch_alpha,
            policies=list(self.policies),
            batching=self.batching,
        )
        if self.batching == "step":
            out["step"] = self.step
        if self.policy_params:
            out["policy_params"] = self.policy_params
        if self.variants:
            out["variants"] = [{"name": n, "cost_scale": c, "accuracy": a}
                               for n, c, a in self.variants]  # fmt: skip
        if self.priorities:
            out["priorities"] = [{"tier": t, "share": p, "weight": w}
                                 for t, p, w in self.priorities]  # fmt: skip
        if self.fairness:
            out["fairness"] = self.fairness
        return out

    def tier_weights(self) -> list[float] | None:
        """Each tier's weight, tier 0 first (1 unless given; an unlisted tier between
        listed ones weighs 10^k, orloj's default), or None without tiers."""
        if not self.priorities:
            return None
        from orloj_rt.policies.utility import DEFAULT_TIER_BASE

        top = max(t for t, _, _ in self.priorities)
        weights = [DEFAULT_TIER_BASE**k for k in range(top + 1)]
        weights[0] = 1.0
        for t, _, w in self.priorities:
            weights[t] = float(w)
        return weights

    def variant_specs(self) -> list:
        from orloj_rt.policies.utility import VariantSpec

        return [VariantSpec(n, a, c) for n, c, a in self.variants]


def tiers_of(config: SimConfig, n: int):
    """Each of the n requests' tier, drawn with the shares of `config.priorities` from
    a stream of the workload's seed (the same for every policy), or None."""
    import numpy as np

    if not config.priorities:
        return None
    rng = np.random.default_rng([config.workload.seed, TIER_STREAM])
    tiers = [0] + [t for t, _, _ in config.priorities]
    shares = [t_share for _, t_share, _ in config.priorities]
    p = [max(0.0, 1.0 - sum(shares)), *shares]
    return rng.choice(tiers, size=n, p=p).astype(int)


def uses_hints(name: str) -> bool:
    """Whether policy `name` of a cell is given the requests' cost hints."""
    return name.endswith(HINT_SUFFIX) or name == "sjf-hint"


def run_policy(config: SimConfig, name: str, requests=None) -> dict:
    """Simulates one policy on the cell's requests, through the serving core (which builds
    its prior from the warm-up sample, as the runtime does); returns its metrics."""
    from orloj_rt.policies import POLICIES, STEP_POLICIES, is_step_policy

    if requests is None:
        requests = generate(config.workload)
    base = policy_base(name)
    if base not in POLICIES and base not in STEP_POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of: "
                         f"{', '.join(sorted(POLICIES))} (step-level: "
                         f"{', '.join(sorted(STEP_POLICIES))}), with {HINT_SUFFIX} for "
                         "one given cost hints")  # fmt: skip
    hints = warmup_hints = None
    if uses_hints(name):
        if requests.hint is None:
            raise ValueError(f"policy {name!r} needs cost hints: give the workload a hint_cv")
        hints, warmup_hints = requests.hint, requests.prior_hint
    table = Inflation(config.max_batch, config.batch_alpha).table
    params = dict(config.policy_params.get(name, {}))
    clairvoyant = base in ("oracle", "oracle-step")
    tiers = tiers_of(config, len(requests.arrival))
    if base in ("orloj", "orloj-step") and config.priorities:
        params.setdefault("tier_weights", config.tier_weights())
    if base == "orloj" and config.fairness:
        params.setdefault("fairness", config.fairness)
    variants = config.variant_specs() if uses_variants(name) and config.variants else None
    if is_step_policy(base):
        outcome: Outcome = simulate_serving_steps(
            base, requests.arrival, requests.deadline, requests.solo, requests.app, table,
            requests.prior, step=config.step, workers=config.workers, hints=hints,
            warmup_hints=warmup_hints, clairvoyant=clairvoyant, policy_params=params,
            priorities=None if tiers is None else tiers.tolist(),
        )  # fmt: skip
    else:
        outcome = simulate_serving(
            base, requests.arrival, requests.deadline, requests.solo, requests.app, table,
            requests.prior, workers=config.workers, hints=hints, warmup_hints=warmup_hints,
            clairvoyant=clairvoyant, policy_params=params, variants=variants,
            priorities=None if tiers is None else tiers.tolist(),
        )  # fmt: skip
    return summarise(outcome, requests, config, tiers)


def summarise(outcome: Outcome, requests, config: SimConfig | None = None,
              tiers=None) -> dict:  # fmt: skip
    """The policy's metrics; in a multi-app cell also per app (the module docstring)."""
    out = outcome.summary(requests.arrival, requests.deadline)
    if requests.spec.app_mix:
        out["apps"] = app_summary(outcome, requests)
        out["jain"] = jain([a["finish_rate"] for a in out["apps"].values()])
    out.update(utility_summary(outcome, requests, config, tiers))
    return out


def utility_summary(outcome: Outcome, requests, config: SimConfig | None, tiers) -> dict:
    """answered_in_slo, mean_accuracy, utility, and per tier / per variant counts."""
    import numpy as np

    n = len(outcome.state)
    on_time = (outcome.state == COMPLETED) & (outcome.finish <= requests.deadline)
    acc = np.ones(n)
    out: dict = {}
    if outcome.variant is not None and config is not None and config.variants:
        table = np.array([a for _, _, a in config.variants] + [1.0])
        acc = table[outcome.variant]  # -1 (not served) reads the last entry, 1.0
        names = [v for v, _, _ in config.variants]
        out["variants"] = {names[k]: int((outcome.variant == k).sum())
                           for k in range(len(names))}  # fmt: skip
    weight = np.ones(n)
    if tiers is not None and config is not None:
        weight = np.asarray(config.tier_weights())[tiers]
        out["tiers"] = {}
        for t in sorted(set(tiers.tolist())):
            mine = tiers == t
            fin = int((on_time & mine).sum())
            done_t = (outcome.state == COMPLETED) & mine
            out["tiers"][str(t)] = {"requests": int(mine.sum()), "finished": fin,
                                    "finish_rate": fin / max(1, int(mine.sum())),
                                    "late": int(done_t.sum()) - fin,
                                    "dropped": int((mine & (outcome.state != COMPLETED)).sum()),
                                    "weight": float(config.tier_weights()[t])}  # fmt: skip
    done = int(on_time.sum())
    out["answered_in_slo"] = done / n if n else 0.0
    out["mean_accuracy"] = float(acc[on_time].mean()) if done else None
    out["utility"] = float((weight * acc)[on_time].sum()) / n if n else 0.0
    return out


def app_summary(outcome: Outcome, requests) -> dict:
    """{app: metrics over its requests}, in the mix's order: Outcome.summary's fields but
    mean_batch (batches mix apps), and "requests" and "finished" (on time)."""
    import numpy as np

    apps = np.asarray(requests.app)
    out = {}
    for spec in requests.spec.app_mix:
        mine = apps == spec.name
        part = Outcome(state=outcome.state[mine], finish=outcome.finish[mine], batches=0,
                       batch_sizes=outcome.batch_sizes[:0], end_time=outcome.end_time)
        m = part.summary(requests.arrival[mine], requests.deadline[mine])
        del m["mean_batch"]
        done = part.state == COMPLETED
        finished = int((done & (part.finish <= requests.deadline[mine])).sum())
        out[spec.name] = {"requests": int(mine.sum()), "finished": finished, **m}
    return out


def run(config: SimConfig) -> dict:
    """Every policy of the cell on the same requests: {"config": ..., "policies": ...}."""
    requests = generate(config.workload)
    results = {name: run_policy(config, name, requests) for name in config.policies}
    return {"config": config.to_json(), "policies": results}
