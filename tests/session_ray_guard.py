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
    thing freed. Placement groups come from the GCS (no dashboard needed: a dead dashboard is one way groups are
    left); actors' resources from the State API, or, where it does not answer, every live actor not Ray's own."""
    from ray._raylet import ActorID, PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    freed = []
    for pg_id, pg in ray.util.placement_group_table().items():
        if pg["state"] != "REMOVED":
            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))
            freed.append(f"placement group {pg_id[:12]} ({pg['state']}, bundles {list(pg['bundles'].values())})")
    core = ray._private.worker.global_worker.core_worker
    for actor_id, line in live_actors(ray):
        core.kill_actor(ActorID.from_hex(actor_id), True)
        freed.append(line)
    return freed


def live_actors(ray) -> list[tuple[str, str]]:
    """(actor id, description) of the live actors holding CPU/GPU."""
    from ray.util.state import list_actors

    try:
        actors = list_actors(address=ray.get_runtime_context().gcs_address, detail=True,
                             filters=[("state", "!=", "DEAD")], timeout=30)
    except Exception as exc:  # the State API needs the dashboard; the GCS table does not, but has no resources
        return [(a["ActorID"], f"actor {a['ActorClassName']} ({a['State']}, State API down: {type(exc).__name__})")
                for a in ray._private.state.actors().values()
                if a["State"] != "DEAD" and not a["ActorClassName"].startswith("_")]
    found = []
    for actor in actors:
        needs = {k: v for k, v in (actor.required_resources or {}).items() if k in RESOURCES and v}
        if needs:
            name = actor.class_name.rsplit(".<locals>.", 1)[-1]
            found.append((actor.actor_id, f"actor {name} ({actor.state}, {needs}, job {actor.job_id}"
                                          f"{', detached' if actor.is_detached else ''})"))
    return found
