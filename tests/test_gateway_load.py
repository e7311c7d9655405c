"""The gateway under many waiting clients: /runsync and /cancel waiters hold no Redis
connection, so 300 of them leave /health, /run, /status and /cancel answering, and the
gateway's connections stay within its bound; at that bound a request is answered 503
"busy" with Retry-After, never "cannot be reached"."""
import signal
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import pytest
import requests

from tests.fleet_support import NO_REDIS, REDIS, Gateway, RedisServer, start_worker
from worker.fleet.connect import GATEWAY_CONNECTIONS

pytestmark = [pytest.mark.skipif(REDIS is None, reason=NO_REDIS), pytest.mark.slow]
WAITERS = 300


def gateway_connections(r) -> list:
    return [c for c in r.client_list() if c.get("name") == "gpu-worker-gateway"]


def holds_none(r) -> bool:
    """No gateway connection is in a blocking command, and the pool stays in bound."""
    mine = gateway_connections(r)
    return len(mine) <= GATEWAY_CONNECTIONS and not any("b" in c["flags"] for c in mine)


@pytest.fixture
def fleet(tmp_path):
    srv = RedisServer(tmp_path / "redis")
    procs = []
    yield srv, procs
    for p in procs:
        p.kill()
    srv.close()


def test_hundreds_of_waiters_hold_no_connection_and_starve_nothing(fleet, tmp_path):
    srv, procs = fleet
    gw = Gateway(srv, "ep", tmp_path)
    procs.append(gw)
    r = srv.client()
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=WAITERS + 8)
    session.mount("http://", adapter)

    def runsync(i):
        return session.post(gw.url + "/runsync?wait=120000", json={"input": {"echo": i}},
                            timeout=180).json()

    with ThreadPoolExecutor(WAITERS) as pool:
        waiting = [pool.submit(runsync, i) for i in range(WAITERS)]
        deadline = time.monotonic() + 120
        while r.xlen("gw:{ep}:jobs") < WAITERS:        # every waiter's job is queued
            assert time.monotonic() < deadline and not any(f.done() for f in waiting), \
                [f.result() for f in waiting if f.done()][:3]
            time.sleep(0.05)
        # no worker yet: every /runsync is waiting; the others still answer, at once
        health = gw.get("/health", timeout=10)
        assert health.status_code == 200, health.text
        assert health.json()["jobs"]["inQueue"] == WAITERS
        queued = gw.post("/run", {"input": {}}, timeout=10)
        assert queued.status_code == 200, queued.text
        job = queued.json()["id"]
        assert gw.get(f"/status/{job}", timeout=10).json()["status"] == "IN_QUEUE"
        assert gw.post(f"/cancel/{job}", timeout=10).json()["status"] == "CANCELLED"
        assert holds_none(r) and gateway_connections(r), r.client_list()
        procs.append(start_worker(srv, "ep", tmp_path, WORKER_CHILDREN="2"))
        answers = [f.result() for f in waiting]
    assert [a["status"] for a in answers] == ["COMPLETED"] * WAITERS
    assert sorted(a["output"]["echo"] for a in answers) == list(range(WAITERS))
    assert holds_none(r)


def test_a_gateway_out_of_connections_says_busy_not_unreachable(fleet, tmp_path):
    """The server stalls (SIGSTOP) with more requests in flight than connections: the
    requests beyond the pool (one connection is the gateway's subscription) are told the
    gateway is busy; once the server is back the ones that held a connection are
    answered."""
    srv, procs = fleet
    gw = Gateway(srv, "ep", tmp_path)
    procs.append(gw)
    assert gw.get("/health").status_code == 200
    many, beyond = GATEWAY_CONNECTIONS + 16, 16 + 1
    srv.proc.send_signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(many) as pool:
            flying = [pool.submit(gw.get, "/health", timeout=60) for _ in range(many)]
            early = []
            for f in as_completed(flying, timeout=120):     # the busy ones, first
                early.append(f.result())
                if len(early) == beyond:
                    break
            srv.proc.send_signal(signal.SIGCONT)
            answers = [f.result() for f in flying]
    finally:
        srv.proc.send_signal(signal.SIGCONT)
    assert all(a.status_code == 503 and "busy" in a.text and a.headers.get("Retry-After")
               for a in early), [a.text for a in early]
    busy = [a for a in answers if "busy" in a.text]
    assert len(busy) >= beyond and any(a.status_code == 200 for a in answers)
    assert not any("cannot be reached" in a.text for a in busy)
    assert gw.get("/health").status_code == 200


def test_waiters_ride_out_a_redis_restart_and_are_answered(fleet, tmp_path):
    """Redis (AOF) shut down for longer than a waiter's re-read interval, then back: the
    waiters keep waiting and are answered COMPLETED once a worker runs their jobs."""
    srv, procs = fleet
    srv.close()
    srv = RedisServer(tmp_path / "redis-aof", aof="everysec")
    try:
        gw = Gateway(srv, "ep", tmp_path)
        procs.append(gw)
        with ThreadPoolExecutor(20) as pool:
            waiting = [pool.submit(gw.post, "/runsync?wait=120000", {"input": {"echo": i}},
                                   timeout=180) for i in range(20)]
            r, deadline = srv.client(), time.monotonic() + 60
            while r.xlen("gw:{ep}:jobs") < 20:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            srv.shutdown()
            time.sleep(7)              # the outage itself: past a waiter's 5 s re-read
            srv.start()
            procs.append(start_worker(srv, "ep", tmp_path))
            answers = [f.result().json() for f in waiting]
    finally:
        srv.close()
    assert [a["status"] for a in answers] == ["COMPLETED"] * 20, answers[:3]
