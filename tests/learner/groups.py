"""Deterministic sample groups for learner tests, from the simulator's world and the real assembler."""

from streams.assembler import AssemblerConfig, add_exposure, add_ranking, assemble, new_pending
from streams.pool import CandidatePool
from streams.schemas import SampleGroup
from streams.simulator.world import World


def simulated_groups(n: int, seed: int = 0, n_candidates: int = 300) -> list[SampleGroup]:
    world = World(seed=seed, n_users=200, n_items=3000)
    pool = CandidatePool()
    for i in range(3000):
        pool.add(world.item_id(i), "video")
    groups = []
    for index in range(n):
        request = world.request(index, n_candidates=n_candidates)
        state = new_pending()
        add_ranking(state, {}, request.ranking, 0)
        for _, event in request.events:
            add_exposure(state, event, 0, 30_000)
        stats = lambda ids, at: [{"exp_1d": float(world.popularity[int(i[1:])] > 0)} for i in ids]  # noqa: E731
        groups.append(assemble(state, request.ranking, AssemblerConfig(), pool, stats, 0))
    return groups
