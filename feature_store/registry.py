"""The names of the training methods and serving policies, listed once.

The learner trains with a method, the router serves with a policy, and the CLIs (`hap learner
--method`, `hap router --policy`, `hap demo`, `hap replay`), the settings and `hap eval` take their
choices and defaults from here. It lives in ``feature_store/`` because both the learner and the
router read it, as they read the scoring function of :mod:`feature_store.policies`.

>>> DEFAULT_METHOD in METHODS and DEFAULT_POLICY in POLICIES
True
"""

from __future__ import annotations

#: training methods (``OnlineTrainer(method=...)``): GHCL and the two one-loss baselines
METHODS = ("ghcl", "mixed", "softmax")
#: serving policies (:func:`feature_store.policies.score_policy`): the light tier alone, DAMR, the expressive tier alone
POLICIES = ("light", "damr", "expressive_all")
DEFAULT_METHOD = "ghcl"
DEFAULT_POLICY = "damr"
