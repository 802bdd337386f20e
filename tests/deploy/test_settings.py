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


def test_kafka_security_is_built_by_the_settings_and_an_incomplete_one_stops_the_command(tmp_path):
    env = {"HAP_DATA_DIR": str(tmp_path), "HAP_KAFKA_SECURITY_PROTOCOL": "sasl_ssl"}
    with pytest.raises(SystemExit, match="SASL_SSL needs a SASL username and password"):
        Settings.load(env)
    sec = Settings.load({**env, "HAP_KAFKA_SASL_USERNAME": "u", "HAP_KAFKA_SASL_PASSWORD": "p",
                         "HAP_KAFKA_SSL_CAFILE": "/ca.pem"}).kafka_security
    assert (sec.protocol, sec.username, sec.password, sec.ca_file) == ("SASL_SSL", "u", "p", "/ca.pem")
    assert Settings.load({"HAP_DATA_DIR": str(tmp_path)}).kafka_security.protocol == "PLAINTEXT"
