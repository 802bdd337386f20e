"""Deterministic sample groups for learner tests, from the simulator's world and the real assembler."""

from streams.contract.schemas import SampleGroup
from streams.join.pool import CandidatePool
from streams.simulator.offline import group_of
from streams.simulator.world import World


def simulated_groups(n: int, seed: int = 0, n_candidates: int = 300) -> list[SampleGroup]:
    world = World(seed=seed, n_users=200, n_items=3000)
    pool = CandidatePool()
    for i in range(3000):
        pool.add(world.item_id(i), "video")

    def stats(ids, at_ms):  # a popularity-like statistic, as the streams would attach
        return [{"exp_1d": float(world.popularity[int(i[1:])] > 0)} for i in ids]

    return [group_of(world.request(index, n_candidates=n_candidates), pool, stats) for index in range(n)]
