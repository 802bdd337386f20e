"""A published model version and a running router app for the router tests."""

from __future__ import annotations

import asyncio
import contextlib

import redis
import torch
from aiohttp.test_utils import TestClient, TestServer

from deploy.settings import REDIS_PREFIX
from feature_store.model_store import ModelStore, TierForm
from learner.models import ExpressiveCross, LightTwoTower
from router.app import make_app


def publish(client: redis.Redis, seed: int, store: ModelStore | None = None) -> int:
    """Publish a version of randomly initialised tiers (distinct per seed)."""
    torch.manual_seed(seed)
    tiers = {m.name: TierForm(*m.export()) for m in (LightTwoTower(dim=8), ExpressiveCross(dim=8))}
    return (store or ModelStore(client, prefix=REDIS_PREFIX, keep_versions=100)).publish(
        tiers, trained_until_event_ts_ms=1, trained_until_finalized_ts_ms=1, samples_seen=seed)


def tiers_of(seed: int) -> dict[str, tuple[dict, dict]]:
    """Both tiers' serving forms, randomly initialised (distinct per seed), as a LoadedVersion holds them."""
    torch.manual_seed(seed)
    return {m.name: m.export() for m in (LightTwoTower(dim=8), ExpressiveCross(dim=8))}


def body(n: int = 50, **extra) -> dict:
    return {"request_id": "r", "user_id": "u", "k": 10,
            "candidates": [{"item_id": f"i{i}", "content_type": "video"} for i in range(n)], **extra}


@contextlib.asynccontextmanager
async def serve(client: redis.Redis, **kwargs):
    app = make_app(client, prefix=REDIS_PREFIX, poll_s=0.1, **kwargs)
    async with TestClient(TestServer(app)) as http:
        for _ in range(100):
            if (await http.get("/readyz")).status == 200:
                break
            await asyncio.sleep(0.05)
        yield http
