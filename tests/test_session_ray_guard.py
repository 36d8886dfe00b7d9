"""The suite's guard of the session Ray (tests/session_ray_guard.py) finds and frees what a module leaves holding its
CPUs: here a detached placement group (what a Train worker group whose controller died looks like) and a detached
actor (outlives the driver that started it), both made on purpose."""

from __future__ import annotations


def test_the_guard_frees_a_left_placement_group_and_actor(ray_session):
    from ray.util.placement_group import placement_group

    from tests.session_ray_guard import free_leftovers, held, wait_until_free

    assert wait_until_free(ray_session, 60) == {}
    pg = placement_group([{"CPU": 1}], lifetime="detached")
    ray_session.get(pg.ready(), timeout=60)

    @ray_session.remote(num_cpus=1)
    class Holder:
        def ready(self):
            return True

    holder = Holder.options(lifetime="detached").remote()
    ray_session.get(holder.ready.remote(), timeout=60)
    assert held(ray_session) == {"CPU": 2.0}
    assert wait_until_free(ray_session, 1) == {"CPU": 2.0}  # nothing frees them by itself

    freed = free_leftovers(ray_session)
    assert len(freed) == 2, freed
    assert freed[0].startswith("placement group ") and "CREATED" in freed[0] and "{'CPU': 1.0}" in freed[0]
    assert freed[1].startswith("actor Holder (ALIVE, ") and "{'CPU': 1.0}" in freed[1] and "detached" in freed[1]
    assert wait_until_free(ray_session, 30) == {}
    assert free_leftovers(ray_session) == []
