"""Which loaded models to unload so another fits: a pure function, tested on its own.

Given the model to load, the models loaded now (how much memory each takes, whether a
request holds it, when it was last used) and the limits, ``plan_eviction`` answers with
the models to unload, least recently used first, never one that is leased; or with
``CannotFit`` when even unloading every idle model would not make room (``permanent``:
the model alone is larger than the limit, so waiting will not help).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Loaded:
    name: str
    memory_gb: float = 0.0
    leased: bool = False
    last_used: float = 0.0


@dataclasses.dataclass(frozen=True)
class Limits:
    max_loaded: int | None = None
    max_memory_gb: float | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """Unload these (in this order), then load the target."""

    evict: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class CannotFit:
    reason: str
    permanent: bool = False


def _fits(count: int, memory_gb: float, limits: Limits) -> bool:
    if limits.max_loaded is not None and count > limits.max_loaded:
        return False
    return limits.max_memory_gb is None or memory_gb <= limits.max_memory_gb + 1e-9


def plan_eviction(target: str, target_memory_gb: float, loaded: Sequence[Loaded],
                  limits: Limits) -> Plan | CannotFit:
    """What to unload so ``target`` fits within ``limits`` next to ``loaded``."""
    others = [m for m in loaded if m.name != target]
    if len(others) < len(loaded):  # already loaded: nothing to do
        return Plan()
    if limits.max_memory_gb is not None and target_memory_gb > limits.max_memory_gb + 1e-9:
        return CannotFit(f"it needs about {target_memory_gb:.1f} GB, more than max_memory_gb = "
                         f"{limits.max_memory_gb:g}", permanent=True)
    count = len(others) + 1
    memory = sum(m.memory_gb for m in others) + target_memory_gb
    evict: list[str] = []
    for model in sorted((m for m in others if not m.leased), key=lambda m: m.last_used):
        if _fits(count, memory, limits):
            break
        evict.append(model.name)
        count -= 1
        memory -= model.memory_gb
    if not _fits(count, memory, limits):
        leased = sorted(m.name for m in others if m.leased)
        return CannotFit(f"{len(leased)} loaded model(s) are in use ({', '.join(leased)}) and no idle "
                         f"one can be unloaded to make room (max_loaded = {limits.max_loaded}, "
                         f"max_memory_gb = {limits.max_memory_gb})")
    return Plan(tuple(evict))
