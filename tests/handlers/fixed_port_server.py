"""As worker-sglang does: at import, start the model server as a subprocess on a fixed
port (FIXED_PORT) and wait until it answers; each job asks it. A second copy's server
fails "address in use" in its own process, while the copy's wait is answered by the
first copy's server."""
import os
import subprocess
import sys
import time
import urllib.request

import worker

PORT = int(os.environ["FIXED_PORT"])
SERVER = f"""
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", {PORT}), H).serve_forever()
"""
server = subprocess.Popen([sys.executable, "-c", SERVER])


def ask() -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/", timeout=5) as answer:
        return int(answer.read())


deadline = time.monotonic() + 30
while True:
    try:
        ask()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)


def handler(job):
    return {"server": ask(), "own_server": server.poll() is None}


worker.start({"handler": handler})
