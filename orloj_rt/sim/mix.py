"""Multi-app cells: several apps sharing one model, each with its own cost law and SLO.

The grammar of `orloj-rt sim --apps SPEC` (docs/simulation.md, "Multi-app cells"):

    SPEC      := APP ("," APP)*
    APP       := NAME ":" WORKLOAD (":" KEY "=" VALUE)*
    NAME      := letters, digits, "_", "-", "." (unique within SPEC)
    WORKLOAD  := static | bimodal | lognormal | trace
    KEY       := slo | share | mean

    slo=S     the app's SLO as a multiple of its own mean solo time (> 0); default
              `--slo-mult`, which is then required for the apps that leave it out
    share=P   the app's share of the arrivals, 0 < P <= 1. The apps that give none split
              what the others leave equally; the shares must sum to 1
    mean=M    the app's mean solo time in time units (> 0; default 1): its law is the
              workload's (mean 1) times M

    short:bimodal:slo=2:share=0.7,long:lognormal:slo=10:share=0.3

`parse_apps` turns SPEC into `AppSpec`s, or raises `ValueError` naming the bad part and
the fix.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

APP_KINDS = ("static", "bimodal", "lognormal", "trace")
APP_KEYS = ("slo", "share", "mean")
SHARE_TOLERANCE = 1e-6
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
EXAMPLE = "short:bimodal:slo=2:share=0.7,long:lognormal:slo=10:share=0.3"


@dataclass(frozen=True)
class AppSpec:
    """One app of a multi-app cell."""

    name: str
    workload: str  # one of APP_KINDS: its solo-time law, normalised to mean 1
    slo: float  # a multiple of this app's mean solo time
    share: float  # of the arrivals
    mean: float = 1.0  # this app's mean solo time, in units

    def __post_init__(self) -> None:
        if not _NAME.match(self.name or ""):
            raise ValueError(f"app name {self.name!r}: use letters, digits, '_', '-', '.'")
        if self.workload not in APP_KINDS:
            raise ValueError(f"app {self.name!r}: unknown workload {self.workload!r}; choose "
                             f"one of {', '.join(APP_KINDS)}")
        for key in ("slo", "mean"):
            v = getattr(self, key)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"app {self.name!r}: {key} must be a number > 0, got {v!r}")
        if not (0 < self.share <= 1):
            raise ValueError(f"app {self.name!r}: share must be in (0, 1], got {self.share!r}")

    @property
    def slo_units(self) -> float:
        """The SLO in time units: deadline = arrival + slo x mean."""
        return self.slo * self.mean


def _number(app: str, key: str, value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        v = math.nan
    ok = (0 < v <= 1) if key == "share" else (v > 0 and math.isfinite(v))
    if not ok:
        want = "a number in (0, 1]" if key == "share" else "a number > 0"
        raise ValueError(f"--apps: app {app!r}: {key}={value!r}: {key} must be {want} "
                         f"(e.g. {key}={'0.5' if key == 'share' else '2'})")
    return v


def parse_apps(text: str, default_slo: float | None = None) -> tuple[AppSpec, ...]:
    """The apps of `--apps SPEC` (the grammar above). `default_slo` is `--slo-mult`: the
    SLO of the apps that give no slo=. ValueError naming the bad part and the fix."""
    if text is None or not text.strip():
        raise ValueError(f"--apps is empty; give NAME:WORKLOAD[:slo=S][:share=P][:mean=M], "
                         f"comma-separated, e.g. {EXAMPLE}")
    raw = []
    names = set()
    for i, item in enumerate(text.split(","), start=1):
        part = item.strip()
        if not part:
            raise ValueError(f"--apps {text!r}: app {i} is empty (a stray comma?); e.g. "
                             f"{EXAMPLE}")
        fields = [f.strip() for f in part.split(":")]
        if len(fields) < 2 or not fields[0] or not fields[1]:
            raise ValueError(f"--apps: {part!r} is not NAME:WORKLOAD[:KEY=VALUE...]; e.g. "
                             f"short:bimodal:slo=2")
        name, kind = fields[0], fields[1]
        if not _NAME.match(name):
            raise ValueError(f"--apps: {part!r}: app name {name!r} may use letters, digits, "
                             "'_', '-' and '.' only")
        if name in names:
            raise ValueError(f"--apps: the app name {name!r} appears twice; give each app "
                             "its own name")
        names.add(name)
        if kind not in APP_KINDS:
            hint = (" (a KEY=VALUE where the workload goes: the workload comes second, "
                    f"{name}:bimodal:{kind})") if "=" in kind else ""
            raise ValueError(f"--apps: {part!r}: unknown workload {kind!r}; choose one of "
                             f"{', '.join(APP_KINDS)}{hint}")
        values: dict[str, float] = {}
        for kv in fields[2:]:
            key, sep, value = kv.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key or not value:
                raise ValueError(f"--apps: {part!r}: {kv!r} is not KEY=VALUE (keys: "
                                 f"{', '.join(APP_KEYS)}; e.g. {name}:{kind}:slo=2)")
            if key not in APP_KEYS:
                raise ValueError(f"--apps: {part!r}: unknown key {key!r}; the keys are "
                                 f"{', '.join(APP_KEYS)}")
            if key in values:
                raise ValueError(f"--apps: {part!r}: {key} is given twice")
            values[key] = _number(name, key, value)
        if "slo" not in values:
            if default_slo is None:
                raise ValueError(f"--apps: app {name!r} has no SLO: add :slo=S to it (e.g. "
                                 f"{part}:slo=5), or give --slo-mult S for every app without one")
            values["slo"] = float(default_slo)
        raw.append((name, kind, values))
    given = [v["share"] for _, _, v in raw if "share" in v]
    missing = [name for name, _, v in raw if "share" not in v]
    total = sum(given)
    listed = ", ".join(f"{n} {v['share']:g}" for n, _, v in raw if "share" in v)
    if missing:
        rest = 1.0 - total
        if rest <= SHARE_TOLERANCE:
            raise ValueError(f"--apps: the shares given ({listed}) sum to {total:g}, leaving "
                             f"nothing for {', '.join(missing)}; make them sum to less than 1, "
                             "or give every app a share")
        for _, _, v in raw:
            v.setdefault("share", rest / len(missing))
    elif abs(total - 1.0) > SHARE_TOLERANCE:
        raise ValueError(f"--apps: the shares ({listed}) sum to {total:g}, not 1; make them sum "
                         "to 1, or leave one app's share out to give it the rest")
    apps = []
    for name, kind, v in raw:
        apps.append(AppSpec(name=name, workload=kind, slo=v["slo"], share=v["share"],
                            mean=v.get("mean", 1.0)))
    return tuple(apps)


def format_apps(apps) -> str:
    """The SPEC that gives these apps back (every key written out)."""
    return ",".join(f"{a.name}:{a.workload}:slo={a.slo:g}:share={a.share:.12g}"
                    + (f":mean={a.mean:g}" if a.mean != 1.0 else "") for a in apps)
