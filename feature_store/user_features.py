"""Users' features in Redis: one JSON document per user, ``{prefix}feat:user:{id}``.

The streams worker writes a user's recent history (``{"history": [item ids, most recent last]}``)
as its exposures arrive; the router reads it for a request that brings no history of its own.
The key is spelled here only.

Examples
--------
>>> user_features_key("u1", "run1:")
'run1:feat:user:u1'
"""

from __future__ import annotations


def user_features_key(user_id: str, prefix: str) -> str:
    """The Redis key of ``user_id``'s features."""
    return f"{prefix}feat:user:{user_id}"
