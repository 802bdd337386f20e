"""Method and policy names come from feature_store/registry.py: the CLIs offer exactly those, the
settings default to its defaults, the router and the trainer refuse any other, hap eval runs them."""

import argparse

import pytest

from deploy.cli import build_parser
from deploy.evaluation.evaluate import LEARNED, LOOP_ARMS
from deploy.settings import FIELD_DEFAULTS
from feature_store.registry import DEFAULT_METHOD, DEFAULT_POLICY, METHODS, POLICIES
from router.prerank import BadRequest, parse_request


def choices(command: str, flag: str) -> tuple[str, ...]:
    sub = next(a for a in build_parser(command)._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if flag in a.option_strings)
    return tuple(action.choices)


def test_the_clis_offer_the_registry_names_and_the_settings_default_to_it():
    assert choices("learner", "--method") == METHODS
    assert choices("demo", "--method") == METHODS
    assert choices("replay", "--method") == METHODS
    assert choices("router", "--policy") == POLICIES
    assert (FIELD_DEFAULTS["learner_method"], FIELD_DEFAULTS["router_policy"]) == (DEFAULT_METHOD, DEFAULT_POLICY)


def test_hap_eval_runs_every_method_and_serves_every_policy():
    assert set(METHODS) <= {kw["method"] for kw in LEARNED.values()} == set(METHODS)
    assert {policy for method, policy in LOOP_ARMS if method in METHODS} == {"light", *POLICIES}


def test_the_router_refuses_a_policy_not_in_the_registry():
    body = {"request_id": "r", "user_id": "u", "k": 1, "candidates": [{"item_id": "i", "content_type": "video"}]}
    for policy in POLICIES:
        assert parse_request({**body, "policy": policy}, max_candidates=10) is not None
    with pytest.raises(BadRequest, match="policy: expected one of light, damr, expressive_all"):
        parse_request({**body, "policy": "bogus"}, max_candidates=10)
