"""The session's Ray is free again after each test module, or the suite says who holds it and frees it.

Why: the session's Ray (tests/conftest.py) has 3 logical CPUs, exactly what one search trial (its driver and one
Ray Train worker) and one pooled eval actor take. One placement group or actor left behind by a module makes every
later search on that pytest worker wait for ever: CI on 2026-12-07 (commit 9922ef7) had test_search_pool run into
its 900 s timeout and the next module's `t2vu tune` into its 1500 s one, 40 of the run's 60 minutes, on one pytest
worker only; the same tree passed locally four times. Likely holders: a Ray Train worker group whose controller died
(Ray Train v2 removes such a group from a detached cleaner that asks the State API whether the controller is dead,
and keeps asking while that API does not answer), or an actor of a driver a test killed.

What it costs: two resource queries per module when nothing is held; the State API only when something is.
"""

from __future__ import annotations

import time

RESOURCES = ("CPU", "GPU")


def held(ray) -> dict[str, float]:
    """CPU/GPU of the connected Ray that something holds now."""
    total, free = ray.cluster_resources(), ray.available_resources()
    return {k: total[k] - free.get(k, 0.0) for k in RESOURCES if total.get(k, 0.0) - free.get(k, 0.0) > 1e-6}


def wait_until_free(ray, timeout_s: float) -> dict[str, float]:
    """What is still held after up to `timeout_s` (Ray frees a finished worker group's resources asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while (busy := held(ray)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return busy


def free_leftovers(ray) -> list[str]:
    """Remove every placement group not yet removed and kill every live actor that holds CPU or GPU; one line per
    thing freed (what it was, who created it)."""
    from ray._raylet import ActorID, PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group
    from ray.util.state import list_actors, list_placement_groups

    address = ray.get_runtime_context().gcs_address
    freed = []
    for pg in list_placement_groups(address=address, detail=True):
        if pg.state != "REMOVED":
            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg.placement_group_id))))
            freed.append(f"placement group {pg.placement_group_id[:12]} ({pg.state}, bundles {pg.bundles}, "
                         f"job {pg.creator_job_id}{', detached' if pg.is_detached else ''})")
    core = ray._private.worker.global_worker.core_worker
    for actor in list_actors(address=address, detail=True, filters=[("state", "!=", "DEAD")]):
        needs = {k: v for k, v in (actor.required_resources or {}).items() if k in RESOURCES and v}
        if needs:
            core.kill_actor(ActorID.from_hex(actor.actor_id), True)
            name = actor.class_name.rsplit(".<locals>.", 1)[-1]
            freed.append(f"actor {name} ({actor.state}, {needs}, job {actor.job_id}"
                         f"{', detached' if actor.is_detached else ''})")
    return freed
