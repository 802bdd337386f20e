"""The group the streams would emit for a simulated request, assembled in-process (no Kafka).

For experiments and tests that need hybrid sample groups without running the pipeline: the
same assembler as the Faust agents, with the request's events all in.
"""

from __future__ import annotations

from streams.contract.schemas import SampleGroup
from streams.join.assembler import AssemblerConfig, StatsReader, add_exposure, add_ranking, assemble, new_pending
from streams.join.pool import CandidatePool
from streams.simulator.cascade import Request

DEFAULT_CONFIG = AssemblerConfig()


def group_of(request: Request, pool: CandidatePool, stats: StatsReader,
             config: AssemblerConfig = DEFAULT_CONFIG) -> SampleGroup:
    """Label and sample ``request`` as the streams app does once its join window has closed."""
    state = new_pending()
    add_ranking(state, request.ranking, 0)
    for _, event in request.events:
        add_exposure(state, event, 0, config.dwell_threshold_ms)
    return assemble(state, request.ranking, config, pool, stats, 0)
