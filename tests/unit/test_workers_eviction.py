"""router.workers.eviction.plan_eviction: a pure function, so every case is a table row."""

from __future__ import annotations

from router.workers import CannotFit, Limits, Loaded, Plan, plan_eviction


def test_room_left_unloads_nothing() -> None:
    loaded = [Loaded("a", 4, last_used=1), Loaded("b", 4, last_used=2)]
    assert plan_eviction("c", 4, loaded, Limits(max_loaded=3, max_memory_gb=12)) == Plan(())


def test_no_limits_never_unloads() -> None:
    loaded = [Loaded(f"m{i}", 100, last_used=i) for i in range(50)]
    assert plan_eviction("new", 100, loaded, Limits()) == Plan(())


def test_a_model_already_loaded_needs_nothing() -> None:
    loaded = [Loaded("a", 4, leased=True), Loaded("b", 4, leased=True)]
    assert plan_eviction("a", 4, loaded, Limits(max_loaded=1)) == Plan(())


def test_max_loaded_unloads_the_least_recently_used_idle_model() -> None:
    loaded = [Loaded("new-ish", last_used=30), Loaded("oldest", last_used=10), Loaded("mid", last_used=20)]
    assert plan_eviction("c", 0, loaded, Limits(max_loaded=3)) == Plan(("oldest",))
    assert plan_eviction("c", 0, loaded, Limits(max_loaded=2)) == Plan(("oldest", "mid"))


def test_leased_models_are_never_unloaded_even_when_least_recent() -> None:
    loaded = [Loaded("busy-old", last_used=1, leased=True), Loaded("idle", last_used=5)]
    assert plan_eviction("c", 0, loaded, Limits(max_loaded=2)) == Plan(("idle",))


def test_memory_limit_unloads_until_the_target_fits() -> None:
    loaded = [Loaded("small-old", 2, last_used=1), Loaded("big", 10, last_used=2), Loaded("tiny", 1, last_used=3)]
    # 13 loaded + 6 > 16: unloading small-old (2) is not enough, big (10) too is.
    assert plan_eviction("c", 6, loaded, Limits(max_memory_gb=16)) == Plan(("small-old", "big"))
    assert plan_eviction("c", 3, loaded, Limits(max_memory_gb=16)) == Plan(())


def test_all_leased_cannot_fit_now() -> None:
    loaded = [Loaded("a", leased=True), Loaded("b", leased=True)]
    plan = plan_eviction("c", 0, loaded, Limits(max_loaded=2))
    assert isinstance(plan, CannotFit) and not plan.permanent
    assert "in use (a, b)" in plan.reason and "max_loaded = 2" in plan.reason


def test_idle_models_not_enough_when_the_rest_is_leased() -> None:
    loaded = [Loaded("busy", 10, leased=True), Loaded("idle", 2, last_used=1)]
    plan = plan_eviction("c", 8, loaded, Limits(max_memory_gb=16))
    assert isinstance(plan, CannotFit) and not plan.permanent


def test_a_model_larger_than_the_limit_never_fits() -> None:
    plan = plan_eviction("huge", 40, [], Limits(max_memory_gb=24))
    assert isinstance(plan, CannotFit) and plan.permanent
    assert "40.0 GB" in plan.reason and "max_memory_gb = 24" in plan.reason


def test_both_limits_apply() -> None:
    loaded = [Loaded("a", 1, last_used=1), Loaded("b", 20, last_used=2)]
    # max_loaded alone would unload "a"; memory then still needs "b" gone.
    assert plan_eviction("c", 8, loaded, Limits(max_loaded=2, max_memory_gb=24)) == Plan(("a", "b"))
