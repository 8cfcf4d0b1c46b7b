"""The one way rtrl connects to Redis: from a URL, so that a password, an ACL user and TLS are all set there.

    redis://127.0.0.1:6379/0                                     no authentication (loopback only)
    redis://:PASSWORD@host:6379/0                                `requirepass`
    redis://USER:PASSWORD@host:6379/0                            an ACL user
    rediss://USER:PASSWORD@host:6380/0?ssl_ca_certs=/certs/ca.pem  TLS, server verified against that CA
    ...&ssl_certfile=/certs/client.pem&ssl_keyfile=/certs/client.key  plus a client certificate
    unix:///run/redis.sock?db=0                                  a local socket

Characters such as @ : / in a password must be percent-encoded. `redacted_url` is what logs show.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis

from rtrl.config import PREFIX, SettingsError

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
# Query parameters naming files: checked at start so that a typo fails with the parameter's name, not
# with an SSL error on the first command.
_FILE_PARAMETERS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


class RedisUrlError(ValueError):
    """A Redis URL that cannot be used; the message says what to fix (never the password)."""


def redacted_url(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_redis_url(url: str) -> None:
    """Raises RedisUrlError when `url` is not a Redis URL redis-py accepts or names a file that cannot be read."""
    if not url.startswith(REDIS_SCHEMES):
        raise RedisUrlError(
            f"{redacted_url(url)!r} is not a Redis URL; write it like redis://[USER:PASSWORD@]HOST:6379/0 "
            "(rediss:// for TLS)."
        )
    try:
        query = parse_qs(urlsplit(url).query)
        redis.connection.parse_url(url)
    except ValueError as error:
        raise RedisUrlError(f"{redacted_url(url)!r} is not a valid Redis URL: {error}.") from None
    for name in _FILE_PARAMETERS:
        for path in query.get(name, []):
            if not Path(path).is_file():
                raise RedisUrlError(
                    f"{name}={path} in the Redis URL {redacted_url(url)!r} is not a readable file; fix the path."
                )


def connect_redis(url: str, **options: Any) -> redis.Redis:
    """A client for the Redis at `url` (see the module docstring); `options` are redis-py's keyword
    arguments such as socket_timeout. Connecting is lazy: the first command reaches the server."""
    check_redis_url(url)
    return redis.Redis.from_url(url, **options)


def checked_redis_url(url: str) -> str:
    """RTRL_REDIS_URL checked at start ("" stays "": no Redis); raises SettingsError saying what to fix."""
    if url:
        try:
            check_redis_url(url)
        except RedisUrlError as error:
            raise SettingsError(f"{PREFIX}REDIS_URL: {error}") from None
    return url
