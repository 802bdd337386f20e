"""How every component connects to Redis: URL, AUTH password and TLS, with bounded timeouts.

``redis://`` is plain TCP, ``rediss://`` TLS (``ca_file`` verifies the server). The password
comes from the environment (``HAP_REDIS_PASSWORD``) and is never printed: the repr leaves it
out and :meth:`RedisEndpoint.redacted` masks one written into the URL.

Examples
--------
>>> ep = RedisEndpoint("redis://:pw@127.0.0.1:6379/0", password="s3cret")
>>> ep.redacted(), "s3cret" in repr(ep)
('redis://:***@127.0.0.1:6379/0', False)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import redis

TIMEOUT_S = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class RedisEndpoint:
    url: str
    password: str | None = dataclasses.field(default=None, repr=False)
    ca_file: str | None = None

    def client(self, timeout_s: float = TIMEOUT_S) -> redis.Redis:
        """A new client; a dead server fails a call within ``timeout_s`` instead of hanging it."""
        options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        if self.password:
            options["password"] = self.password
        if self.ca_file and self.url.startswith("rediss://"):
            options["ssl_ca_certs"] = self.ca_file
        return redis.Redis.from_url(self.url, **options)

    def redacted(self) -> str:
        """The URL with any password in it masked, for logs and status output."""
        return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", self.url)

    def __repr__(self) -> str:
        return f"RedisEndpoint(url={self.redacted()!r}, ca_file={self.ca_file!r})"
