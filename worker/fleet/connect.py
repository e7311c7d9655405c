"""The connection to the endpoint's Redis (or Valkey): the URL and its secret, never
printed; the server checks a worker or gateway makes once."""
from __future__ import annotations

import logging
from urllib.parse import urlsplit

from .. import redaction
from ..config import Settings, SettingsError
from .keys import GROUP, HOOK_GROUP, Keys

log = logging.getLogger("worker.fleet")

CONNECT_TIMEOUT_S = 5.0
SOCKET_TIMEOUT_S = 10.0        # above the longest blocking read (a worker's BLOCK 1 s)


def password(settings: Settings) -> str | None:
    """WORKER_QUEUE_PASSWORD_FILE's content (a mounted secret), else None: the URL's."""
    path = settings.queue_password_file
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise SettingsError(f"WORKER_QUEUE_PASSWORD_FILE cannot be read: {exc}") from None


def worker_keys(settings: Settings) -> Keys:
    """A worker's endpoint (WORKER_ENDPOINT: one name, no default) as its keys."""
    if not settings.queue_endpoint:
        raise SettingsError("WORKER_QUEUE_URL needs WORKER_ENDPOINT, the endpoint's name on "
                            "the queue (no default: two handlers never share a stream by "
                            "accident)")
    try:
        return Keys(settings.queue_endpoint)
    except ValueError as exc:
        raise SettingsError(f"WORKER_ENDPOINT: {exc}") from None


def check_url(settings: Settings) -> str | None:
    """WORKER_QUEUE_URL and its password file as the client will read them (the worker's
    start and `worker config` ask the same): the password from the file, or None."""
    url = settings.queue_url
    try:
        scheme = urlsplit(url).scheme
    except ValueError:                  # "Invalid IPv6 URL"
        scheme = None
    if scheme not in ("redis", "rediss"):      # the value is never quoted: it holds the key
        raise SettingsError("WORKER_QUEUE_URL must be a redis:// or rediss:// URL")
    secret = password(settings)
    redaction.remember(url, secret)
    from redis.connection import parse_url
    try:
        parse_url(url)
    except Exception:       # noqa: BLE001 - its message may quote a piece of the password
        raise SettingsError("WORKER_QUEUE_URL cannot be read as a Redis URL (a password "
                            "holding '/', '?', '#' or '@' must be percent-encoded, or put "
                            "in WORKER_QUEUE_PASSWORD_FILE)") from None
    return secret


def options(settings: Settings, for_asyncio: bool = False) -> dict:
    url = settings.queue_url
    extra = {}
    secret = check_url(settings)
    if secret is not None:
        extra["password"] = secret
    import redis
    from redis.backoff import ExponentialBackoff
    # A connection the server dropped (a restart) is found stale on its next use: try
    # again on a fresh one before calling it an outage. Retried steps are safe: a job's
    # submit carries its id, and the scripts check before they write.
    if for_asyncio:
        from redis.asyncio.retry import Retry
    else:
        from redis.retry import Retry
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), 2)
    return dict(socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
                health_check_interval=15, decode_responses=False, retry=retry,
                retry_on_error=[redis.ConnectionError, redis.TimeoutError], **extra)


def client(settings: Settings):
    import redis
    return redis.Redis.from_url(settings.queue_url, **options(settings))


# A gateway's connections: its requests each hold one for a round trip or a pipeline,
# never while waiting (endings.py), so a few serve any number of clients — one event loop
# cannot keep more busy; one of them is its end-notice subscription. When all are in use
# a request waits up to POOL_WAIT_S for one, then is answered "busy" (QueueBusy).
GATEWAY_CONNECTIONS = 32
POOL_WAIT_S = 5.0


class QueueBusy(Exception):
    """Every connection of the gateway's pool stayed in use for POOL_WAIT_S."""


def async_client(settings: Settings):
    """The gateway's client: at most GATEWAY_CONNECTIONS connections, whatever the
    library's defaults."""
    import redis.asyncio

    class Pool(redis.asyncio.BlockingConnectionPool):
        async def get_connection(self, *args, **kwargs):
            try:
                return await super().get_connection(*args, **kwargs)
            except redis.ConnectionError as exc:     # redis-py's words for a full pool
                if str(exc) == "No connection available." or \
                        isinstance(exc, getattr(redis, "MaxConnectionsError", ())):
                    raise QueueBusy(f"all {self.max_connections} connections to the queue "
                                    f"stayed in use for {self.timeout:g}s") from None
                raise

    # No blocking read here (waiters hold no connection): a server that does not answer
    # within POOL_WAIT_S is away, and a timeout is not tried again (a stalled server
    # would hold the request three times as long); a dropped connection still is.
    opts = {**options(settings, True), "socket_timeout": POOL_WAIT_S,
            "retry_on_error": [redis.ConnectionError]}
    pool = Pool.from_url(settings.queue_url, max_connections=GATEWAY_CONNECTIONS,
                         timeout=POOL_WAIT_S, client_name="gpu-worker-gateway", **opts)
    return redis.asyncio.Redis(connection_pool=pool)


def eviction_warning(policy: str) -> str | None:
    """What to say about the server's maxmemory-policy: any policy but noeviction may
    drop a job's record or its stream entry under memory pressure."""
    if policy in ("noeviction", ""):
        return None
    return (f"the queue's Redis has maxmemory-policy {policy}: under memory pressure it "
            "may evict job records and stream entries (jobs lost). Set noeviction.")


def check_server(r) -> None:
    """Once at start: the server's version (streams with XAUTOCLAIM: 6.2 and newer) and
    its eviction policy (a warning; a managed server may refuse CONFIG)."""
    import redis
    info = r.info("server")
    version = str(info.get("redis_version", "0"))
    if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < (6, 2):
        raise SettingsError(f"the queue's Redis is {version}; 6.2 or newer is needed "
                            "(XAUTOCLAIM)")
    try:
        answer = r.config_get("maxmemory-policy")
        policy = answer.get("maxmemory-policy", answer.get(b"maxmemory-policy", b""))
        policy = policy.decode() if isinstance(policy, bytes) else str(policy)
    except redis.ResponseError:
        log.info("the queue's Redis does not tell its maxmemory-policy (CONFIG refused); "
                 "make sure it is noeviction")
        return
    warning = eviction_warning(policy)
    if warning:
        log.warning(warning)


def ensure_groups(r, keys) -> None:
    """The consumer groups, made if missing (a server restarted without persistence loses
    them): from the stream's start, so no entry already there is skipped."""
    import redis
    for stream, group in ((keys.stream, GROUP), (keys.hooks, HOOK_GROUP)):
        try:
            r.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


# Refusals a server gives for a moment (full under noeviction, a replica that is not the
# primary yet, a cluster slot moving or down, a script running long): a write waits and
# tries again, as through an outage, instead of being dropped.
def refusal_passes(exc: BaseException) -> bool:
    import redis.exceptions as e
    return isinstance(exc, (e.OutOfMemoryError, e.ReadOnlyError, e.TryAgainError,
                            e.ClusterDownError, e.MasterDownError)) or \
        str(exc).startswith("BUSY")
