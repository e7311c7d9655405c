"""Where the time goes, step by step: the figures behind docs/benchmarks.md's "Where the time
went" (the fixes' evidence, not targets).

    .venv/bin/python bench/profile_paths.py runsync   # /runsync's steps, and the HTTP floors
    .venv/bin/python bench/profile_paths.py refresh   # a refresh's steps in the supervisor
    .venv/bin/python bench/profile_paths.py body      # a 10 MB body's parse, count, copies

runsync: a worker on the local API in this process (its source-side methods wrapped with
timestamps), 3 s of trivial /runsync requests from a subprocess; medians of: submit -> the
job's Run written to the child, Run written -> the result at the listener, result -> the
request's coroutine resumed. Then the same client against a bare ASGI app and a bare
FastAPI route on uvicorn: the HTTP stack's own cost.
refresh: timestamps of the old child's exit, the spawn, the new child's Ready and the next
job's start, after each refresh job's result (torch handler, WORKER_PRELOAD=torch).
"""
import collections
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import loopback

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import bench_api  # noqa: E402
import bench_core  # noqa: E402

CLIENT = r"""
import sys, time, requests
url, secs = sys.argv[1], float(sys.argv[2])
s = requests.Session(); s.trust_env = False
body = b'{"input": {"prompt": "hi"}}'
while True:
    try:
        if s.post(url, data=body, timeout=2).ok: break
    except requests.RequestException: time.sleep(0.2)
t, end = [], time.time() + secs
while time.time() < end:
    t0 = time.perf_counter(); s.post(url, data=body); t.append(time.perf_counter() - t0)
t.sort(); print(f"{t[len(t) // 2] * 1000:.2f}")
"""
FLOOR_APP = r"""
import sys, uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
BODY = b'{"id":"x","status":"COMPLETED","output":{"ok":true}}'
async def bare(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})
api = FastAPI()
@api.post("/runsync")
async def runsync(request: Request):
    await request.body()
    return Response(BODY, media_type="application/json")
uvicorn.run(bare if sys.argv[2] == "bare" else api, host="127.0.0.1", port=int(sys.argv[1]),
            log_level="warning")
"""


def client_p50(url: str, seconds: float = 3.0) -> float:
    out = subprocess.run([sys.executable, "-c", CLIENT, url, str(seconds)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout)


def runsync_steps() -> None:
    import uvicorn
    from worker.config import Settings
    from worker.parent.channel import Channel
    from worker.sources import job_store, local_api
    from worker.targets import ScriptTarget
    marks = collections.defaultdict(list)

    def wrap(cls, name, key, coroutine=False):
        original = getattr(cls, name)
        if coroutine:
            async def timed(self, *args):
                out = await original(self, *args)
                marks[key].append(time.perf_counter())
                return out
        else:
            def timed(self, *args):
                marks[key].append(time.perf_counter())
                return original(self, *args)
        setattr(cls, name, timed)
    wrap(job_store.JobStore, "submit", "submit")
    wrap(job_store.JobStore, "on_result", "result")
    wrap(job_store.JobStore, "wait", "resumed", coroutine=True)
    original_send = Channel.send

    def send(self, data):
        if isinstance(data, tuple) or data[5:10] == b'"run"':    # a job, not a Stop
            marks["run sent"].append(time.perf_counter())
        return original_send(self, data)
    Channel.send = send
    port = bench_api.free_port()
    settings = Settings(api_port=port, api_host="127.0.0.1", log_level="WARN")
    app = local_api.create_app(settings, ScriptTarget(str(HERE / "handlers" / "rp_trivial.py")))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    p50 = client_p50(f"http://127.0.0.1:{port}/runsync")
    server.should_exit = True
    n = min(len(v) for v in marks.values())
    steps = ["submit", "run sent", "result", "resumed"]
    print(f"/runsync trivial, the whole request: p50 {p50:.2f} ms ({n} requests)")
    for a, b in zip(steps, steps[1:]):
        gaps = [(marks[b][i] - marks[a][i]) * 1e6 for i in range(n // 2, n)]
        print(f"  {a} -> {b}: median {statistics.median(gaps):.0f} us")
    for kind in ("bare", "fastapi"):
        port = bench_api.free_port()
        proc = subprocess.Popen([sys.executable, "-c", FLOOR_APP, str(port), kind])
        try:
            print(f"the same client against a {kind} ASGI app on uvicorn (no job): p50 "
                  f"{client_p50(f'http://127.0.0.1:{port}/runsync'):.2f} ms")
        finally:
            bench_api.end(proc)


def refresh_steps(rounds: int = 7) -> None:
    from worker import protocol as P
    from worker.parent import events as E
    from worker.parent.child_host import ChildHost
    from worker.parent.core import SupervisorCore
    from worker.parent.mp_launcher import MpLauncher
    marks = collections.defaultdict(list)

    def wrap(cls, name, key, after=False):
        original = getattr(cls, name)

        def timed(self, *args, **kwargs):
            if not after:
                marks[key].append(time.perf_counter())
            out = original(self, *args, **kwargs)
            if after:
                marks[key].append(time.perf_counter())
            return out
        setattr(cls, name, timed)
    wrap(ChildHost, "exited", "old child's exit seen")
    wrap(MpLauncher, "start", "fork returned", after=True)
    original_handle = SupervisorCore.handle

    def handle(self, event, now):
        if type(event) is E.Message and isinstance(event.msg, P.Ready):
            marks["new child ready"].append(time.perf_counter())
        return original_handle(self, event, now)
    SupervisorCore.handle = handle
    sup = bench_core.supervisor("torch_refresh.py", preload=("torch",))
    rows = []
    for r in range(rounds):
        c = bench_core.Counter(2)
        sup.submit({"id": f"r{r}", "input": {"refresh": True}}, c)
        sup.submit({"id": f"n{r}", "input": {}}, c)
        c.event.wait(120)
        t0 = c.ends[f"r{r}"]
        rows.append([(marks[k][-1] - t0) * 1000 for k in marks] + [(c.starts[f"n{r}"] - t0)
                                                                  * 1000])
    sup.stop()
    sup.join(30)
    print("refresh steps, ms after the refresh job's result (median of "
          f"{rounds}, torch handler, WORKER_PRELOAD=torch):")
    medians = {name: statistics.median(row[i] for row in rows)
               for i, name in enumerate([*marks, "next job started"])}
    for name, ms in sorted(medians.items(), key=lambda item: item[1]):
        print(f"  {name}: {ms:.1f} ms")


def body_costs(n: int = 10) -> None:
    """What handling a 10 MB body costs, piece by piece, in this process (median of n)."""
    import json

    import msgspec

    from worker.jsonlimits import nesting
    raw = b'{"input": {"data": "' + b"a" * (10 * 2**20 - 64) + b'"}}'

    def median_ms(fn) -> float:
        fn()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)
    print("a 10 MB JSON body (one 10 MB string), median ms:")
    for label, fn in (("json.loads (standard library)", lambda: json.loads(raw)),
                      ("msgspec.json.decode", lambda: msgspec.json.decode(raw)),
                      ("two bytes.count passes (the old nesting shortcut)",
                       lambda: raw.count(b"[") + raw.count(b"{")),
                      ("nesting() now (memchr, stops at 201)", lambda: nesting(raw)),
                      ("b'x' + body[1:] (two copies)", lambda: b"x" + raw[1:])):
        print(f"  {label}: {median_ms(fn):.1f} ms")


if __name__ == "__main__":
    with loopback.only():     # nothing here leaves loopback (bench/loopback.py)
        what = sys.argv[1] if len(sys.argv) > 1 else "all"
        if what in ("runsync", "all"):
            runsync_steps()
        if what in ("refresh", "all"):
            refresh_steps()
        if what in ("body", "all"):
            body_costs()
