"""How every Kafka client of the project authenticates: plaintext, TLS, SASL or SASL over TLS.

One object, built by the operator's settings and passed to the components, turned into the
keyword arguments of kafka-python clients (producer SDK, learner, admin) and into Faust's
``broker_credentials``. The password is never printed: the dataclass' repr leaves it out.

Examples
--------
>>> sec = KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "hap", "s3cret")
>>> sec.client_options()["sasl_plain_username"], "s3cret" in repr(sec)
('hap', False)
>>> KafkaSecurity().client_options()
{'security_protocol': 'PLAINTEXT'}
"""

from __future__ import annotations

import dataclasses
import ssl
from typing import Any

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclasses.dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """``protocol`` is Kafka's ``security.protocol``; SASL needs ``username`` and ``password``;
    ``ca_file`` verifies the brokers' TLS certificates (default: the system's CAs)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"Kafka security protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.sasl_mechanism not in MECHANISMS:
            raise ValueError(f"Kafka SASL mechanism must be one of {', '.join(MECHANISMS)}")
        if self.sasl and not (self.username and self.password):
            raise ValueError(f"Kafka {self.protocol} needs a SASL username and password")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's producer, consumer and admin clients."""
        out: dict[str, Any] = {"security_protocol": self.protocol}
        if self.sasl:
            out.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                       sasl_plain_password=self.password)
        if self.tls and self.ca_file:
            out["ssl_cafile"] = self.ca_file
        return out

    def aiokafka_options(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's clients (a TLS context in place of a CA file)."""
        out = {k: v for k, v in self.client_options().items() if k != "ssl_cafile"}
        if self.tls:
            out["ssl_context"] = ssl.create_default_context(cafile=self.ca_file)
        return out

    def faust_credentials(self) -> Any:
        """Faust's ``broker_credentials`` (None for plaintext)."""
        import faust

        context = ssl.create_default_context(cafile=self.ca_file) if self.tls else None
        if self.sasl:
            return faust.SASLCredentials(username=self.username, password=self.password, ssl_context=context,
                                         mechanism=self.sasl_mechanism)
        return faust.SSLCredentials(context) if context is not None else None


PLAINTEXT = KafkaSecurity()
