"""HAP_REDIS_PREFIX is used end to end: the keys the model store and the item statistics write land
under it, the router serves what is under it, and `hap models` finds versions only under its own."""

import asyncio
import json
import time

from aiohttp.test_utils import TestClient, TestServer

from deploy.settings import REDIS_PREFIX, Settings, settings_env
from feature_store.item_stats import ItemStats
from feature_store.model_store import ModelStore
from router.app import make_app

from ..router.conftest import body, publish
from .conftest import hap

MINUTE_MS = 60_000


def test_a_non_default_redis_prefix_holds_every_key_and_is_what_the_readers_use(redis_client, redis_url, cli_env):
    env = {**cli_env, **settings_env(redis_url=redis_url, redis_prefix="run9:")}
    settings = Settings.load(env)
    assert settings.redis_prefix == "run9:" != REDIS_PREFIX
    store = ModelStore(redis_client, prefix=settings.redis_prefix, keep_versions=100)
    version = publish(redis_client, 3, store)
    ItemStats(redis_client, settings.redis_prefix).record([("i1", "exp", int(time.time() * 1000) - 2 * MINUTE_MS)])

    keys = sorted(k.decode() for k in redis_client.keys("*"))
    assert any("model:manifest" in k for k in keys) and any("stats:item:i1" in k for k in keys)
    assert all(k.startswith(("run9:", "{run9:")) for k in keys), keys
    assert ModelStore(redis_client, prefix=REDIS_PREFIX).manifest() is None  # nothing under the default

    async def serve() -> dict:
        app = make_app(redis_client, prefix=settings.redis_prefix, poll_s=0.1)
        async with TestClient(TestServer(app)) as http:
            for _ in range(100):
                if (await http.get("/readyz")).status == 200:
                    break
                await asyncio.sleep(0.05)
            return await (await http.post("/v1/prerank", json=body(5))).json()

    assert asyncio.run(serve())["version"] == version

    listed = hap(env, "models", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [v["version"] for v in json.loads(listed.stdout)] == [version]
    default = hap({**env, **settings_env(redis_prefix=REDIS_PREFIX)}, "models", "list", "--json")
    assert json.loads(default.stdout) == []
