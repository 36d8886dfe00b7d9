"""Waits on Ray that end: the cluster's room for actors, and a deadline on every wait.

A Ray actor that asks for a resource the cluster lacks is never placed, and `ray.get` on it waits
forever: `runtime.num_actors: 8` with one GPU each hung `t2vu eval` on a 1-GPU machine (issue 22). So:
  actors_that_fit(need)        how many actors of `need` ({"GPU": 1, "CPU": 4}) the cluster's live nodes hold
                               now (each actor on one node), or an autoscaling cluster can grow to hold
  wait_all / wait_any          ray.wait with a deadline; on expiry RayWaitTimeout with one line from the caller
                               that names what never came (a resource, a model load, a row)
RayWaitTimeout is a TimeoutError (an OSError): `t2vu` prints it as one `error:` line, exit 2.
"""

from __future__ import annotations

import math
from typing import Any, Callable


class RayWaitTimeout(TimeoutError):
    """A wait on Ray passed its deadline; the message names what never came."""


def resources_text(res: dict[str, float]) -> str:
    """{"GPU": 1.0, "CPU": 4.0} -> "GPU 1, CPU 4" (GPU first: the one that is short)."""
    keys = sorted(res, key=lambda k: (k != "GPU", k != "CPU", k))
    return ", ".join(f"{k} {res[k]:g}" for k in keys if res[k]) or "nothing"


def cluster_totals() -> tuple[list[dict[str, float]], dict[str, float]]:
    """Each live node's resources, and their sums (only the resources actors ask for: CPU, GPU, custom)."""
    import ray

    nodes = [{k: float(v) for k, v in n.get("Resources", {}).items() if not k.startswith(("node:", "memory",
                                                                                      "object_store_memory"))}
             for n in ray.nodes() if n.get("Alive")]
    totals: dict[str, float] = {}
    for node in nodes:
        for k, v in node.items():
            totals[k] = totals.get(k, 0.0) + v
    return nodes, totals


def max_cluster_resources() -> dict[str, float] | None:
    """What an autoscaling cluster can grow to (its autoscaler's node groups x max counts, as Ray Train reads
    it before placing a worker group); None when Ray knows of no such config (a local Ray, a fixed cluster)."""
    try:
        from ray._private.state import state

        grows = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - a private API: without it, the live nodes are the limit
        return None
    return {k: float(v) for k, v in grows.items()} if grows else None


def actors_that_fit(need: dict[str, float]) -> tuple[int, dict[str, float], bool]:
    """(how many actors asking for `need` the cluster holds at once, the totals that limit them, whether those
    are what an autoscaler can grow the cluster to rather than the live nodes' resources)."""
    nodes, totals = cluster_totals()
    need = {k: v for k, v in need.items() if v > 0}
    if not need:
        return math.inf, totals, False
    fit = sum(min(math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in need.items()) for node in nodes)
    grows = max_cluster_resources()
    if grows:
        fit_max = min(math.floor(grows.get(k, 0.0) / v + 1e-9) for k, v in need.items())
        if fit_max > fit:
            return fit_max, grows, True
    return fit, totals, False


def short_of(n: int, need: dict[str, float], totals: dict[str, float], grows: bool = False) -> str:
    """What `n` actors of `need` ask for that the cluster has less of, e.g. '8 GPUs but the Ray cluster has 1'."""
    has = "can grow to" if grows else "has"
    for k in sorted(need, key=lambda k: (k != "GPU", k)):
        if need[k] > 0 and n * need[k] > totals.get(k, 0.0) + 1e-9:
            return f"{amount(n * need[k], k)} but the Ray cluster {has} {totals.get(k, 0.0):g}"
    return f"{resources_text(need)} each on one node, and the Ray cluster's nodes hold fewer of them at once"


def amount(x: float, resource: str) -> str:
    return f"{x:g} {resource}" + ("" if x == 1 else "s")


def available_text(need: dict[str, float]) -> str:
    """The cluster's free amount of each resource in `need`, now."""
    import ray

    free = ray.available_resources()  # a resource with nothing free is absent here
    keys = sorted((k for k in need if need[k] > 0), key=lambda k: (k != "GPU", k != "CPU", k))
    return ", ".join(f"{k} {float(free.get(k, 0.0)):g}" for k in keys) or "-"


def cluster_use_text(need: dict[str, float]) -> str:
    """'the Ray cluster has GPU 1, CPU 3 in all and GPU 0, CPU 1 free now', for the resources in `need` (the one
    wording of every wait on Ray resources that passed its deadline)."""
    _, totals = cluster_totals()
    return (f"the Ray cluster has {resources_text({k: totals.get(k, 0.0) for k in need if need[k]})} in all and "
            f"{available_text(need)} free now")


def wait_all(refs: list, timeout_s: float, late: Callable[[list[int]], str]) -> list[Any]:
    """ray.get(refs) within `timeout_s`; else RayWaitTimeout(late(indices of the refs still pending))."""
    import ray

    if not refs:
        return []
    _, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    if pending:
        still = set(pending)  # ObjectRefs hash and compare by their id
        raise RayWaitTimeout(late([i for i, r in enumerate(refs) if r in still]))
    return ray.get(list(refs))


def wait_any(refs: list, timeout_s: float, late: Callable[[], str]) -> list:
    """The refs of `refs` that are ready, at least one, within `timeout_s`; else RayWaitTimeout(late())."""
    import ray

    done, _ = ray.wait(list(refs), num_returns=1, timeout=timeout_s)
    if not done:
        raise RayWaitTimeout(late())
    return done
