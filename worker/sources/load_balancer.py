"""RunPod load-balancing endpoints: the platform sends HTTP straight to the worker, with
no queue in between. The job routes (the local API's /run, /runsync, /status, /stream,
/cancel) answer on 0.0.0.0:PORT, and GET /ping on PORT_HEALTH (the same server when the
ports are equal) says what the supervisor knows: 200 a child can take jobs, 204 a child
is starting, 503 the worker cannot run jobs. A job beyond what the child takes now is
refused at once with 429 and Retry-After, never queued.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..config import Settings
from ..version import __version__
from . import listen, local_api
from .host import SourceHost


def serve(settings: Settings, target) -> int:
    port = settings.port             # run_modes.settle gave api_host 0.0.0.0, api_port PORT
    health = settings.port_health or port
    settings = dataclasses.replace(settings, api_host="0.0.0.0", api_port=port)
    sockets = listen.bind_or_say(settings.api_host, settings.api_port, "worker")
    if sockets is None:
        return 1
    host = SourceHost(settings, target)
    app = local_api.create_app(settings, balanced=True, host=host,
                               exposed=listen.beyond_loopback(sockets))
    if health != port:
        start_ping_server(health, lambda: host.sup.status, host.signalled.is_set)
    print(f"--- gpu-worker {__version__} | load-balancing mode: job routes on 0.0.0.0:{port}, "
          f"GET /ping on 0.0.0.0:{health} ---", file=sys.stderr, flush=True)
    return local_api.run_server(app, settings, host, sockets)


def start_ping_server(port: int, status, stopping=lambda: False,
                      host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """GET /ping alone, on a port of its own, from a thread (it answers even while the
    API's event loop is busy)."""
    class Ping(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?", 1)[0] != "/ping":
                self.send_error(404)
                return
            answer = local_api.ping_response(status(), stopping())
            self.send_response(answer.status_code)
            if answer.status_code != 204:        # a 204 has no body and no length
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, port), Ping)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="gpu-worker-ping", daemon=True).start()
    return server
