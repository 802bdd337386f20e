"""Settings from the environment: booleans are spelled out, and a wrong one stops the command."""

import pytest

from deploy.settings import Settings


def test_static_membership_is_off_unless_switched_on_and_a_wrong_value_is_a_clear_error(tmp_path):
    env = {"HAP_DATA_DIR": str(tmp_path)}
    assert not Settings.load(env).streams_static_membership
    assert Settings.load({**env, "HAP_STREAMS_STATIC_MEMBERSHIP": "true"}).streams_static_membership
    assert not Settings.load({**env, "HAP_STREAMS_STATIC_MEMBERSHIP": "0"}).streams_static_membership
    with pytest.raises(SystemExit, match="HAP_STREAMS_STATIC_MEMBERSHIP='maybe' is not a boolean"):
        Settings.load({**env, "HAP_STREAMS_STATIC_MEMBERSHIP": "maybe"})
