"""The discrete-event simulator: workloads, a virtual clock, and the real policy objects.

    from orloj_rt.sim import SimConfig, WorkloadSpec, run
    result = run(SimConfig(WorkloadSpec(solo="lognormal", slo=5, load=2)))
    result = run(SimConfig(WorkloadSpec(load=6), batching="step",
                           policies=("orloj", "fcfs-step", "orloj-step")))
    mix = parse_apps("short:bimodal:slo=2:share=0.7,long:lognormal:slo=10:share=0.3")
    result = run(SimConfig(WorkloadSpec(solo="mix", load=2, app_mix=mix)))  # per-app too

See docs/simulation.md for the exact workload definitions.
"""

from orloj_rt.sim.experiment import ALL_POLICIES, SimConfig, run, run_policy
from orloj_rt.sim.mix import AppSpec, parse_apps
from orloj_rt.sim.simulator import Outcome, SimulationError, simulate
from orloj_rt.sim.step_simulator import simulate_steps
from orloj_rt.sim.workloads import Requests, WorkloadSpec, generate

__all__ = [
    "ALL_POLICIES",
    "AppSpec",
    "Outcome",
    "Requests",
    "SimConfig",
    "SimulationError",
    "WorkloadSpec",
    "generate",
    "parse_apps",
    "run",
    "run_policy",
    "simulate",
    "simulate_steps",
]
