"""Build the gpu-worker images where users are: with or without an image registry,
behind a TLS-intercepting proxy, from a local wheelhouse. Standard library only.

    python3 docker/build.py cpu|gpu [--tag T] [--base IMAGE] [--torch-index URL|pip] [-- ARGS]

What this machine has is read at build time, never written into the repository:
- the base: `--base`, else PYTHON_IMAGE, else python:3.11-slim-bookworm; where that is
  not here and cannot be pulled, gpu-worker-base:bookworm, made from Debian's packages by
  docker/make-base.sh if it is missing too;
- pip's index, extra indexes, find-links and CA bundle, from pip's own configuration
  (files and PIP_* variables, as `pip config list` shows them). Local folders and file://
  indexes are served read-only over loopback HTTP while the build runs (the build's steps
  share the host's network), and the CA bundle too: the builder stage fetches it into a
  temporary file for the step that needs it and deletes it in the same step, so it is in
  no layer of either stage (one Dockerfile for BuildKit and the legacy builder, which
  refuses `RUN --mount`);
- HTTP_PROXY, HTTPS_PROXY and NO_PROXY from the environment (Docker's predefined build
  arguments: used by the steps, kept in no image);
- torch's source: the Dockerfile's own index unless `--torch-index` names another;
  `--torch-index pip` (or an index that does not answer) takes torch from pip's
  configuration like every other package.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = {"gpu": ROOT / "docker" / "Dockerfile", "cpu": ROOT / "docker" / "Dockerfile.cpu"}
DEFAULT_BASE = "python:3.11-slim-bookworm"
DEBIAN_BASE = "gpu-worker-base:bookworm"
PULL_TIMEOUT_S = 120
PROBE_TIMEOUT_S = 10
# The loopback server's port is part of the URLs passed as build arguments, and a changed
# argument rebuilds every step after it: the same port each time keeps torch's step cached.
LOOPBACK_PORT = int(os.environ.get("DOCKER_BUILD_PORT", "38421"))


def say(text: str) -> None:
    print(f"docker-build: {text}", file=sys.stderr, flush=True)


def docker(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], **kw)


def engine_problem() -> str | None:
    """Why no image can be built here, or None."""
    if shutil.which("docker") is None:
        return "no docker command (Debian: apt-get install -y docker.io)"
    proc = docker("info", "--format", "{{.ServerVersion}}", capture_output=True, text=True)
    if proc.returncode != 0:
        return "no Docker engine answers: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return None


def have_image(name: str) -> bool:
    return docker("image", "inspect", name, capture_output=True).returncode == 0


def choose_base(asked: str | None) -> str:
    base = asked or os.environ.get("PYTHON_IMAGE") or DEFAULT_BASE
    if have_image(base):
        return base
    try:
        pulled = docker("pull", "-q", base, capture_output=True, text=True,
                        timeout=PULL_TIMEOUT_S)
        if pulled.returncode == 0:
            return base
        why = (pulled.stderr.strip().splitlines() or ["?"])[-1]
    except subprocess.TimeoutExpired:
        why = f"no answer in {PULL_TIMEOUT_S}s"
    if asked:
        raise SystemExit(f"docker-build: the base {base} is not here and cannot be pulled: {why}")
    say(f"{base} cannot be pulled ({why}); using {DEBIAN_BASE}, from Debian's packages")
    if not have_image(DEBIAN_BASE):
        say(f"making {DEBIAN_BASE} (docker/make-base.sh; about a minute)")
        subprocess.run([str(ROOT / "docker" / "make-base.sh"), DEBIAN_BASE], check=True)
    return DEBIAN_BASE


def pip_config() -> dict[str, str]:
    """pip's settings as pip itself resolves them: PIP_* variables over the config files'
    [install] over [global]."""
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                          capture_output=True, text=True)
    rank = {"global": 0, "install": 1, ":env:": 2}
    best: dict[str, tuple[int, str]] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^([^.]+)\.([\w-]+)='(.*)'$", line)
        if m and m.group(1) in rank:
            level, key, value = rank[m.group(1)], m.group(2).replace("_", "-"), m.group(3)
            if key not in best or level >= best[key][0]:
                best[key] = (level, value)
    return {key: value for key, (_, value) in best.items()}


class Loopback:
    """Read-only HTTP on 127.0.0.1 for what the build may read of this machine: the CA
    bundle and the local folders pip's configuration names, nothing else."""

    def __init__(self):
        self.roots: dict[str, Path] = {}
        handler = functools.partial(_Handler, roots=self.roots)
        try:
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", LOOPBACK_PORT), handler)
        except OSError:
            say(f"127.0.0.1:{LOOPBACK_PORT} is in use: another port, so no cached pip step "
                "is reused (DOCKER_BUILD_PORT picks one)")
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def share(self, path: Path) -> str:
        """The URL under which folder or file `path` is served."""
        name = f"{len(self.roots)}"
        self.roots[name] = path
        return f"{self.base}/{name}" + ("/" if path.is_dir() else f"/{path.name}")

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, roots: dict[str, Path], **kw):
        self.roots = roots
        super().__init__(*args, **kw)

    def translate_path(self, path: str) -> str:
        parts = urllib.parse.unquote(urllib.parse.urlsplit(path).path).lstrip("/").split("/")
        root = self.roots.get(parts[0])
        if root is None:
            return "/nonexistent"
        if root.is_file():
            return str(root) if parts[1:] == [root.name] else "/nonexistent"
        target = (root / "/".join(parts[1:])).resolve()
        inside = target == root.resolve() or root.resolve() in target.parents
        return str(target) if inside else "/nonexistent"

    def log_message(self, *args):        # pip's requests are not news
        pass


def local_path(location: str) -> Path | None:
    if location.startswith("file:"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(location).path))
    if "://" not in location:
        return Path(location).expanduser()
    return None


def served_index(url: str, loop: Loopback) -> str:
    """A file:// index as a loopback URL. Its parent folder is served, since simple
    indexes link their files relatively (../../files/...)."""
    path = local_path(url)
    if path is None:
        return url
    return loop.share(path.parent).rstrip("/") + "/" + path.name


def build_args(config: dict[str, str], loop: Loopback) -> dict[str, str]:
    args: dict[str, str] = {}
    if "index-url" in config:
        args["PIP_INDEX_URL"] = served_index(config["index-url"], loop)
    extra = config.get("extra-index-url", "").split()
    if extra:
        args["PIP_EXTRA_INDEX_URL"] = " ".join(served_index(u, loop) for u in extra)
    links = []
    for location in config.get("find-links", "").split():
        path = local_path(location)
        links.append(location if path is None else loop.share(path))
    if links:
        args["PIP_FIND_LINKS"] = " ".join(links)
    if config.get("trusted-host"):
        args["PIP_TRUSTED_HOST"] = config["trusted-host"]
    cert = config.get("cert") or os.environ.get("REQUESTS_CA_BUNDLE")
    if cert and Path(cert).is_file():
        args["BUILD_CA_URL"] = loop.share(Path(cert))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
                 "no_proxy"):
        if os.environ.get(name):
            args[name] = os.environ[name]
    return args


def dockerfile_default(path: Path, name: str) -> str:
    m = re.search(rf"^ARG {name}=(\S+)", path.read_text(), re.M)
    return m.group(1) if m else ""


def torch_index(asked: str | None, dockerfile: Path) -> str:
    """The index torch comes from; "" for pip's own configuration."""
    if asked == "pip":
        return ""
    url = asked or dockerfile_default(dockerfile, "TORCH_INDEX_URL")
    probe = url.rstrip("/") + "/torch/"
    try:
        urllib.request.urlopen(probe, timeout=PROBE_TIMEOUT_S).close()
        return url
    except Exception as exc:      # noqa: BLE001 - any failure means: not from here
        say(f"torch's index {url} does not answer from here ({exc.__class__.__name__}); "
            "torch comes from pip's configuration instead")
        return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("flavour", choices=sorted(DOCKERFILES))
    ap.add_argument("--tag", help="the image's name (default gpu-worker:<flavour>)")
    ap.add_argument("--base", help=f"the base image (default $PYTHON_IMAGE or {DEFAULT_BASE})")
    ap.add_argument("--torch-index", help="where torch comes from: an index URL, or 'pip'")
    ap.epilog = "Arguments after -- go to docker build as they are."
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    opts = ap.parse_args(argv[:split])
    opts.docker_args = argv[split + 1:]
    problem = engine_problem()
    if problem:
        say(problem)
        return 2
    dockerfile = DOCKERFILES[opts.flavour]
    tag = opts.tag or f"gpu-worker:{opts.flavour}"
    base = choose_base(opts.base)
    env = dict(os.environ)
    buildkit = docker("buildx", "version", capture_output=True).returncode == 0
    env.setdefault("DOCKER_BUILDKIT", "1" if buildkit else "0")
    with Loopback() as loop:
        args = build_args(pip_config(), loop)
        args["PYTHON_IMAGE"] = base
        args["TORCH_INDEX_URL"] = torch_index(opts.torch_index, dockerfile)
        cmd = ["docker", "build", "--network", "host", "-f", str(dockerfile), "-t", tag]
        for key, value in args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        cmd += [*opts.docker_args, str(ROOT)]
        say(f"building {tag} from {base} "
            f"({'BuildKit' if env['DOCKER_BUILDKIT'] == '1' else 'the legacy builder'}; "
            f"passed from this machine: {', '.join(sorted(k for k in args if k.startswith(('PIP_', 'BUILD_CA')))) or 'nothing'})")
        started = time.monotonic()
        rc = subprocess.run(cmd, env=env).returncode
    took = time.monotonic() - started
    if rc != 0:
        say(f"docker build failed (exit {rc}) after {took:.0f}s")
        return rc
    size = docker("image", "inspect", "-f", "{{.Size}}", tag, capture_output=True, text=True)
    say(f"{tag} built in {took:.0f}s, {int(size.stdout.strip() or 0) / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
