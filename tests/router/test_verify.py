"""A version is verified before it is swapped in, and no bad version stops the swap loop: wrong shapes
(against the architecture its spec describes), out-of-range delta rows, a manifest missing a field and
non-finite values are each counted and skipped while the last good version serves and the gauges move."""

import asyncio
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY
from safetensors.numpy import save as st_save

from deploy.settings import REDIS_PREFIX
from feature_store.featurize import ID_BUCKETS
from feature_store.model_store import LoadedVersion, ModelStore, TierForm
from learner.models import ExpressiveCross, LightTwoTower
from router.holder import VersionRejected, verify

from .conftest import body, serve


def tiers(dim: int = 8, seed: int = 0, light_hidden: int = 64, expressive_hidden: int = 128) -> dict[str, TierForm]:
    torch.manual_seed(seed)
    return {m.name: TierForm(*m.export())
            for m in (LightTwoTower(dim=dim, hidden=light_hidden), ExpressiveCross(dim=dim, hidden=expressive_hidden))}


def put(store: ModelStore, forms: dict[str, TierForm]) -> int:
    return store.publish(forms, trained_until_event_ts_ms=int(time.time() * 1000), trained_until_finalized_ts_ms=1,
                         samples_seen=1)


def dense_matrix(form: TierForm) -> str:
    """Some 2-d tensor of the tier that is not an embedding table (no layout assumed)."""
    return next(n for n, a in form.tensors.items() if a.ndim == 2 and n not in form.spec["embeddings"])


def rejected() -> float:
    return REGISTRY.get_sample_value("hap_router_errors_total", {"kind": "model_rejected"}) or 0.0


def load_errors() -> float:
    return REGISTRY.get_sample_value("hap_router_errors_total", {"kind": "model_load"}) or 0.0


def test_bad_versions_are_skipped_and_the_swap_loop_survives(redis_client):
    store = ModelStore(redis_client, prefix=REDIS_PREFIX, keep_versions=100, full_every=100)
    good = put(store, tiers(seed=1))

    def wrong_shape():
        forms = tiers(seed=2)
        name = dense_matrix(forms["light"])
        forms["light"].tensors[name] = forms["light"].tensors[name][:, :-1].copy()
        put(store, forms)

    def spec_disagrees():  # tensors of a dim-4 model under the spec of a dim-8 one
        forms, small = tiers(seed=3), tiers(dim=4, seed=3)
        forms["expressive"] = TierForm(small["expressive"].tensors, forms["expressive"].spec)
        put(store, forms)

    def delta_rows_out_of_range():
        forms = tiers(seed=4)
        for form in forms.values():
            form.touched_rows = {name: np.array([3]) for name in form.spec["embeddings"]}
        put(store, forms)
        key = store.manifest()["tiers"]["light"]["key"]
        blob = {f"{n}::rows": np.array([ID_BUCKETS + 5]) for n in forms["light"].spec["embeddings"]}
        blob |= {f"{n}::values": np.ones((1, 8), np.float32) for n in forms["light"].spec["embeddings"]}
        redis_client.set(key, st_save(blob, metadata={"kind": "delta"}))

    def manifest_missing_a_field():
        manifest = json.loads(redis_client.get(store.manifest_key))
        del manifest["published_ts_ms"]
        manifest["version"] = int(redis_client.incr(store.keys.version_counter))
        redis_client.set(store.manifest_key, json.dumps(manifest))

    async def go():
        async with serve(redis_client, policy="damr", budget=0.3) as http:
            assert (await (await http.get("/readyz")).json())["version"] == good
            counts = []
            for bad in (wrong_shape, spec_disagrees, delta_rows_out_of_range, manifest_missing_a_field):
                before = rejected() + load_errors()
                bad()
                await asyncio.sleep(0.6)  # several polls
                response = await http.post("/v1/prerank", json=body(40))
                assert response.status == 200, bad.__name__
                assert (await response.json())["version"] == good, bad.__name__
                counts.append(rejected() + load_errors() - before)
            ready = await (await http.get("/readyz")).json()
            other = put(store, tiers(dim=4, seed=5, light_hidden=32, expressive_hidden=16))  # another architecture
            await asyncio.sleep(0.6)
            served = await (await http.post("/v1/prerank", json=body(40))).json()
            return counts, ready, other, served

    counts, ready, other, served = asyncio.run(go())
    assert counts == [1, 1, 1, 1]  # each bad version counted once, not once per poll
    assert ready["version"] == good and ready["staleness_s"] < 0.5  # the loop still reaches Redis
    assert served["version"] == other  # the loop survived every bad version and swaps again
    assert any(item["tier"] == "expressive" for item in served["items"])


def test_verify_rejects_nonfinite_values_and_accepts_what_the_learner_exports():
    forms = tiers(seed=6)
    manifest = {"version": 7, "published_ts_ms": 1, "trained_until_event_ts_ms": 1}

    def loaded(f):
        return LoadedVersion(7, {n: (dict(t.tensors), t.spec) for n, t in f.items()}, manifest)

    model = verify(loaded(forms))
    assert model.version == 7
    name = dense_matrix(forms["expressive"])
    forms["expressive"].tensors[name] = forms["expressive"].tensors[name].copy()
    forms["expressive"].tensors[name][0, 0] = np.nan
    with pytest.raises(VersionRejected, match="non-finite") as info:
        verify(loaded(forms))
    assert (info.value.tier, info.value.tensor) == ("expressive", name)
    forms = tiers(seed=6)
    forms["light"].spec = {**forms["light"].spec, "tier": "no-such-tier"}
    with pytest.raises(VersionRejected, match="no reference architecture"):
        verify(loaded(forms))


def test_the_first_version_is_verified_too(redis_client):
    store = ModelStore(redis_client, prefix=REDIS_PREFIX)
    forms = tiers(seed=7)
    name = dense_matrix(forms["light"])
    forms["light"].tensors[name] = forms["light"].tensors[name].T.copy()
    put(store, forms)

    async def go():
        async with serve(redis_client) as http:
            return (await http.get("/readyz")).status, (await http.post("/v1/prerank", json=body())).status

    assert asyncio.run(go()) == (503, 503)  # nothing loaded rather than a model that fails every request


def test_reference_shapes_come_from_a_child_process_in_a_router_without_torch():
    """A router process never imports torch: the child it asks derives the same shapes as the
    learner's export."""
    spec = tiers(dim=4, light_hidden=32)["light"].spec
    code = ("import json, sys; from router.holder import reference_shapes; "
            "shapes = reference_shapes(json.loads(sys.argv[1])); "
            "print(json.dumps({'torch_loaded': 'torch' in sys.modules, 'shapes': shapes}))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout)
    assert out["torch_loaded"] is False
    expected = {name: list(array.shape) for name, array in tiers(dim=4, light_hidden=32)["light"].tensors.items()}
    assert out["shapes"] == expected


def test_a_first_version_derives_both_tiers_references_in_one_child_process():
    """A router's cold start pays for one torch import, not one per tier."""
    forms = tiers(dim=6, light_hidden=24, expressive_hidden=40)  # specs no other test derived
    specs = {name: form.spec for name, form in forms.items()}
    code = ("import json, subprocess, sys; from router import holder; calls = []; run = subprocess.run; "
            "subprocess.run = lambda *a, **k: calls.append(1) or run(*a, **k); "
            "specs = json.loads(sys.argv[1]); holder.prepare_references(list(specs.values())); "
            "shapes = {t: holder.reference_shapes(s) for t, s in specs.items()}; "
            "print(json.dumps({'children': len(calls), 'shapes': shapes}))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(specs)], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout)
    assert out["children"] == 1
    assert out["shapes"] == {t: {n: list(a.shape) for n, a in f.tensors.items()} for t, f in forms.items()}
