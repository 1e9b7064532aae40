"""`--policy-param KEY=VALUE`: policy knobs from the command line, for `orloj-rt sim` and
`orloj-rt start` alike (docs/simulation.md, "Policy knobs").

A KEY is a keyword argument of the policy's constructor (`make_policy(name, **params)`),
except those the serving set-up fixes: max_batch, alpha, inflation and step. VALUE is
read as, in this order:

    true / false (any case)       a bool
    none (any case)               None
    an integer (-3, 10)           an int
    a number (0.8, 1e-3, inf)     a float
    a comma-separated list        a list, each item read by these rules (2,4,8; a
                                  one-item list ends with a comma: 4,)
    anything else                 the text itself (order=density)

`orloj-rt sim` also takes `POLICY:KEY=VALUE`, for one policy of the cell; a bare KEY=VALUE
goes to every policy of the cell that has KEY. Checking builds each policy with its
params, so an unknown key, a bad type or a value out of range is one clear line.
"""

from __future__ import annotations

import inspect
import re

FLAG = "--policy-param"
#: constructor arguments that the serving set-up (or the simulator's own flags) fix
RESERVED = ("self", "max_batch", "alpha", "inflation", "step", "variants", "app_weights")
HINT_SUFFIX = "+hint"
#: keys the serving core reads for the policies that use cost hints (HINTED), not the policy
HINT_KEYS = ("hint_classes",)
#: keys that `orloj-rt start` takes as flags of their own (the scheduler, not the policy,
#: keeps the apps' table)
SERVER_FLAGS = {"max_apps": "--max-apps"}
#: the keys that `orloj-rt sim`'s own flags set for every policy
SIM_FLAGS = {"max_batch": "--max-batch", "alpha": "--batch-alpha",
             "inflation": "--batch-alpha", "step": "--step"}
_INT = re.compile(r"^[+-]?\d+$")


class PolicyParamError(ValueError):
    """A `--policy-param` that cannot be used; its message is one line."""


def parse_value(text: str):
    """VALUE as the module docstring reads it."""
    t = text.strip()
    if "," in t:
        return [parse_value(v) for v in t.split(",") if v.strip()]
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    if _INT.match(t):
        return int(t)
    try:
        return float(t)
    except ValueError:
        return t


def split_param(text: str) -> tuple[str | None, str, object]:
    """`[POLICY:]KEY=VALUE` -> (POLICY or None, KEY, parsed VALUE); ValueError if malformed."""
    left, sep, value = text.partition("=")
    scope, colon, key = left.rpartition(":")
    key = key.strip()
    if not sep or not key or not value.strip() or (colon and not scope.strip()):
        raise ValueError(f"{text!r} is not KEY=VALUE")
    if not key.isidentifier():
        raise ValueError(f"{text!r}: {key!r} is not a key name")
    return (scope.strip() or None), key, parse_value(value)


def _factory(name: str):
    from orloj_rt.policies import POLICIES, STEP_POLICIES

    return POLICIES.get(name) or STEP_POLICIES.get(name)


def _signature(cls):
    try:
        return inspect.signature(cls)
    except (TypeError, ValueError):
        # a compiled class (the native OrlojPolicy) has none: its pure twin has the same one
        from orloj_rt.engine import pure

        twin = getattr(pure, getattr(cls, "__name__", ""), None)
        return inspect.signature(twin) if twin is not None else None


def accepted_keys(name: str) -> tuple[str, ...]:
    """The keys policy `name` takes (NAME+hint: its base's); the policies that use cost
    hints (HINTED) also `hint_classes`, which the serving core reads."""
    from orloj_rt.policies import HINTED

    base = name.removesuffix("+variants").removesuffix(HINT_SUFFIX)
    factory = _factory(base)
    if factory is None:
        return ()
    keys: list[str] = []
    for cls in getattr(factory, "__mro__", (factory,)):
        if cls is object:
            break
        sig = _signature(cls)
        if sig is None:
            break
        params = list(sig.parameters.values())
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in keys:
                keys.append(p.name)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break  # else (oracle-step's *args, **kwargs) its base class says what it takes
    keys = [k for k in keys if k not in RESERVED]
    if base == "orloj":  # it maximises utility with these (orloj_rt/policies/utility.py)
        from orloj_rt.policies import UTILITY_KEYS

        keys += [k for k in UTILITY_KEYS if k not in keys]
    if base in HINTED:
        keys += list(HINT_KEYS)
    return tuple(keys)


def _shown(text: str, given: str | None) -> str:
    return f"{FLAG} {given if given is not None else text}"


def check_policy(name: str, params: dict, *, max_batch: int = 32, inflation=None,
                 step: float | None = None, given: dict | None = None,
                 context: str = "", hidden: tuple = (), model: str = "") -> None:
    """Builds policy `name` with `params` as the runtime would; PolicyParamError (one line,
    naming the flag, the key, the policy and its keys) if it cannot be built.
    `given` maps each key to the flag's text, for the message."""
    from orloj_rt.policies import is_step_policy, make_policy
    from orloj_rt.serving.hints import check_classes

    given = given or {}
    keys = tuple(k for k in accepted_keys(name) if k not in hidden)
    listed = ", ".join(keys) if keys else "none"
    where = f"policy {name}{context}"
    for key in params:
        if key not in keys:
            why = (" (the serving set-up fixes it)" if key in RESERVED else "")
            raise PolicyParamError(f"{_shown(key, given.get(key))}: {where} has no key "
                                   f"{key!r}{why}; accepted keys: {listed}")
    base = name.removesuffix("+variants").removesuffix(HINT_SUFFIX)
    kw = {k: v for k, v in params.items() if k not in HINT_KEYS}
    extra = {"step": step} if is_step_policy(base) and step is not None else {}
    try:
        make_policy(base, max_batch=max_batch, inflation=inflation, **extra, **kw)
        if "hint_classes" in params:
            check_classes(params["hint_classes"])
    except (TypeError, ValueError) as exc:
        text = str(exc)
        bad = [k for k in params if k in text or k.replace("_", " ") in text] or list(params)
        shown = "; ".join(_shown(k, given.get(k)) for k in bad)
        msg = " ".join(text.split())
        raise PolicyParamError(f"{shown}: a bad value for {where}{model}: {msg}; accepted "
                               f"keys: {listed}") from None


def parse_for_server(texts: list[str] | None, policy: str, models) -> dict:
    """`orloj-rt start --policy-param ...` -> the params of ServerOptions.policy_params.

    The scheduler gives the same params to every model's policy: for a step policy, a
    model without steps is served by its whole-batch counterpart (orloj-step -> orloj),
    which must take them too. PolicyParamError (one line) if any cannot be used."""
    from orloj_rt.policies import serving_mode
    from orloj_rt.policies.step_base import DEFAULT_STEP

    texts = texts or []
    params: dict = {}
    given: dict = {}
    shown = ", ".join(k for k in accepted_keys(policy) if k not in SERVER_FLAGS) or "no key"
    for text in texts:
        try:
            scope, key, value = split_param(text)
        except ValueError as exc:
            raise PolicyParamError(f"{FLAG} {exc}; give KEY=VALUE, e.g. {FLAG} theta=0.8 "
                                   f"(policy {policy} accepts: {shown})") from None
        if scope is not None and scope != policy:
            raise PolicyParamError(f"{FLAG} {text}: the server runs policy {policy}, not "
                                   f"{scope}; give {key}={text.partition('=')[2]} (policy "
                                   f"{policy} accepts: {shown})")
        if key in SERVER_FLAGS:
            raise PolicyParamError(f"{FLAG} {text}: {key} is a server option: give "
                                   f"{SERVER_FLAGS[key]} {text.partition('=')[2]} instead")
        params[key] = value
        given[key] = text
    if not params:
        return {}
    served: dict[str, str] = {}
    for entry in models:
        name, step_level = serving_mode(entry.spec, policy)
        if name not in served:
            served[name] = "" if name == policy else (
                f" (it serves model {entry.spec.name}, which has no steps, for {policy})")
        check_policy(name, params, max_batch=entry.spec.max_batch_size,
                     step=DEFAULT_STEP if step_level else None, given=given,
                     context=served[name], hidden=tuple(SERVER_FLAGS),
                     model=f" (model {entry.spec.name}, max batch "
                     f"{entry.spec.max_batch_size})")
    return params


def parse_for_cell(texts: list[str] | None, policies, *, max_batch: int = 32,
                   inflation=None, step: float | None = None) -> dict:
    """`orloj-rt sim --policy-param ...` -> SimConfig.policy_params, {policy: {key: value}}.
    A bare KEY=VALUE goes to every policy of the cell that has KEY; POLICY:KEY=VALUE to
    that one. PolicyParamError (one line) if one cannot be used."""
    out: dict[str, dict] = {}
    given: dict[str, dict] = {}
    keys = {p: accepted_keys(p) for p in policies}

    def listing() -> str:
        return "; ".join(f"{p}: {', '.join(k) or 'none'}" for p, k in keys.items())

    for text in texts or []:
        try:
            scope, key, value = split_param(text)
        except ValueError as exc:
            raise PolicyParamError(f"{FLAG} {exc}; give [POLICY:]KEY=VALUE, e.g. {FLAG} "
                                   f"orloj:theta=0.8 (accepted keys: {listing()})") from None
        if scope is not None:
            if scope not in keys:
                raise PolicyParamError(f"{FLAG} {text}: policy {scope!r} is not in this cell "
                                       f"({', '.join(policies)}); name one of them, or add "
                                       "it to --policies")
            targets = [scope]
            if key not in keys[scope]:
                raise PolicyParamError(f"{FLAG} {text}: policy {scope} has no key {key!r}; "
                                       f"accepted keys: {', '.join(keys[scope]) or 'none'}")
        else:
            targets = [p for p in policies if key in keys[p]]
            if not targets and key in SIM_FLAGS:
                raise PolicyParamError(f"{FLAG} {text}: {key} is not a policy knob here: "
                                       f"give {SIM_FLAGS[key]} instead")
            if not targets:
                raise PolicyParamError(f"{FLAG} {text}: no policy of this cell has the key "
                                       f"{key!r}; accepted keys: {listing()}")
        for p in targets:
            out.setdefault(p, {})[key] = value
            given.setdefault(p, {})[key] = text
    for p, params in out.items():
        check_policy(p, params, max_batch=max_batch, inflation=inflation, step=step,
                     given=given[p])
    return out
