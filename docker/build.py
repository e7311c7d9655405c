"""Build the gpu-worker images where users are: with or without an image registry,
behind a TLS-intercepting proxy, from a local wheelhouse. Standard library only.

    python3 docker/build.py cpu|gpu [--tag T] [--base IMAGE] [--torch-index URL|pip] [-- ARGS]

What this machine has is read at build time, never written into the repository:
- the base: `--base`, else PYTHON_IMAGE, else python:3.11-slim-bookworm; where that is
  not here and cannot be pulled, gpu-worker-base:bookworm, made from Debian's packages by
  docker/make-base.sh if it is missing too;
- pip's index, extra indexes, find-links, trusted hosts, constraints and CA bundle, from
  pip's own configuration (files and PIP_* variables, as `pip config list` shows them),
  and the Debian mirror apt uses. They go to the build as files served over loopback
  HTTP while it runs (its steps share the host's network): a pip.conf whose local folders
  and file:// indexes are loopback URLs too (package files only), the CA bundle, the
  mirror. A step fetches them into a temporary folder and deletes it before it ends, so
  no layer of either stage keeps them, and the only build argument is their loopback
  URL: a credential in an index URL is in no image's history (the legacy builder, which
  refuses `RUN --mount` secrets, records build arguments in the builder stage's);
- HTTP_PROXY, HTTPS_PROXY and NO_PROXY from the environment (Docker's predefined build
  arguments: used by the steps, kept in no image);
- torch's source: the Dockerfile's own index unless `--torch-index` names another;
  `--torch-index pip` (or an index that does not answer) takes torch from pip's
  configuration like every other package.
"""
from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import http.server
import os
import re
import shutil
import ssl
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
LOOPBACK_PORT = int(os.environ.get("DOCKER_BUILD_PORT") or 38421) \
    if (os.environ.get("DOCKER_BUILD_PORT") or "38421").isdigit() else 0


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
    if proc.returncode != 0:
        say(f"{sys.executable} -m pip config list failed: pip's settings are not passed "
            f"({(proc.stderr.strip().splitlines() or ['?'])[-1]})")
    rank = {"global": 0, "install": 1, ":env:": 2}
    best: dict[str, tuple[int, str]] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^([^.=]+)\.([\w-]+)=(.*)$", line)
        if not m or m.group(1) not in rank:
            continue
        try:
            value = ast.literal_eval(m.group(3))      # pip prints repr(): \n, quotes
        except (ValueError, SyntaxError):
            continue
        level, key = rank[m.group(1)], m.group(2).replace("_", "-")
        if isinstance(value, str) and (key not in best or level >= best[key][0]):
            best[key] = (level, value)
    return {key: value for key, (_, value) in best.items()}


# What a shared folder may give: package files and index pages, nothing else (a file://
# index's parent folder is shared for its ../../files links, and may hold anything).
NOWHERE = "/dev/null/nowhere"      # a path no one can create: /dev/null is not a folder
PACKAGE_FILES = (".whl", ".tar.gz", ".zip", ".tgz", ".tar.bz2", ".metadata", ".html")
# pip settings passed to the build as they are (the ones naming this machine's files are
# translated above, or left out: a cache folder, a log, a client certificate)
PASSED = ("trusted-host", "proxy", "no-index", "timeout", "default-timeout", "retries",
          "pre", "only-binary", "no-binary", "prefer-binary")


class Loopback:
    """Read-only HTTP on 127.0.0.1 for what the build may read of this machine: the
    build's inputs (pip.conf, the CA bundle, the apt mirror: generated, under /inputs/)
    and the package files in the local folders pip's configuration names."""

    def __init__(self):
        self.roots: dict[str, Path] = {}
        self.inputs: dict[str, bytes] = {}
        handler = functools.partial(_Handler, roots=self.roots, inputs=self.inputs)
        try:
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", LOOPBACK_PORT), handler)
        except OSError:
            say(f"127.0.0.1:{LOOPBACK_PORT} is in use: another port, so no cached pip step "
                "is reused (DOCKER_BUILD_PORT picks one)")
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def share(self, folder: Path, listing: bool = True) -> str:
        """The URL under which `folder`'s package files are served; `listing`: its folders
        are listed (pip reads a find-links folder's listing; an index has its pages)."""
        name = f"{len(self.roots)}" + ("" if listing else "i")
        self.roots[name] = folder
        return f"{self.base}/{name}/"

    def digest(self) -> str:
        """Of what is given, in a build argument: a changed input rebuilds the steps that
        read it (the URL alone stays the same), and the digest gives nothing away."""
        h = hashlib.sha256()
        for name in sorted(self.inputs):
            h.update(name.encode() + b"\0" + self.inputs[name] + b"\0")
        return h.hexdigest()[:16]

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, roots: dict[str, Path], inputs: dict[str, bytes], **kw):
        self.roots, self.inputs = roots, inputs
        super().__init__(*args, **kw)

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/inputs/"):
            body = self.inputs.get(path[len("/inputs/"):])
            if body is None:
                return self.send_error(404)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self.wfile.write(body)
        return super().do_GET()

    def translate_path(self, path: str) -> str:
        """A path inside a shared folder (`..` normalised away first): a folder whose real
        path is inside the shared one too (listed only where the share lists), or a
        package file, one a symlink in the folder points to included (pip reads those)."""
        parts = urllib.parse.unquote(urllib.parse.urlsplit(path).path).lstrip("/").split("/")
        root = self.roots.get(parts[0])
        if root is None:
            return NOWHERE
        base = os.path.normpath(root)
        target = os.path.normpath(os.path.join(base, *parts[1:]))
        if target != base and not target.startswith(base + os.sep):
            return NOWHERE
        real, real_base = os.path.realpath(target), os.path.realpath(base)
        if os.path.isdir(target):
            inside = real == real_base or real.startswith(real_base + os.sep)
            listed = not parts[0].endswith("i") or os.path.isfile(os.path.join(target,
                                                                              "index.html"))
            return target if inside and listed else NOWHERE
        if target.endswith(PACKAGE_FILES) and real.endswith(PACKAGE_FILES):
            return target
        return NOWHERE

    def log_message(self, *args):        # pip's requests are not news
        pass


def local_path(location: str) -> Path | None:
    if location.startswith("file:"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(location).path))
    if "://" not in location:
        return Path(location).expanduser()
    return None


def served_index(url: str, loop: Loopback) -> str:
    """A file:// index as a loopback URL. Its parent folder is shared, since simple
    indexes link their files relatively (../../files/...)."""
    path = local_path(url)
    if path is None:
        return url
    return loop.share(path.parent, listing=False) + path.name


def apt_mirror() -> str | None:
    """The Debian mirror this machine's apt uses (DEBIAN_MIRROR overrides), as
    docker/make-base.sh reads it: the first source whose path ends in /debian."""
    if os.environ.get("DEBIAN_MIRROR"):
        return os.environ["DEBIAN_MIRROR"]
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        m = re.search(r"^(?:URIs:|deb)\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s", text + "\n", re.M)
        if m:
            return m.group(1)
    return None


def build_inputs(config: dict[str, str], loop: Loopback) -> list[str]:
    """Put what the build needs of this machine under the loopback server's /inputs/: a
    pip.conf with local locations made loopback URLs, the CA bundle, the apt mirror. Only
    their loopback URL goes in as a build argument: a credential in an index URL stays in
    no image's history. The names of what was given."""
    conf = []
    if config.get("index-url"):
        conf.append(f"index-url = {served_index(config['index-url'], loop)}")
    extra = config.get("extra-index-url", "").split()
    if extra:
        conf.append("extra-index-url = " + " ".join(served_index(u, loop) for u in extra))
    links = [location if local_path(location) is None else loop.share(local_path(location))
             for location in config.get("find-links", "").split()]
    if links:
        conf.append("find-links = " + " ".join(links))
    for key in PASSED:
        if config.get(key):
            conf.append(f"{key} = {config[key]}")
    constraint = local_path(config.get("constraint", ""))
    if constraint is not None and constraint.is_file():
        loop.inputs["constraints.txt"] = constraint.read_bytes()
        conf.append(f"constraint = {loop.base}/inputs/constraints.txt")
    if conf:
        loop.inputs["pip.conf"] = ("[global]\n" + "\n".join(conf) + "\n").encode()
    cert = config.get("cert") or os.environ.get("REQUESTS_CA_BUNDLE")
    if cert and Path(cert).is_file():
        loop.inputs["ca.pem"] = Path(cert).read_bytes()
    elif cert:
        say(f"pip's CA bundle {cert} is not a file: the build uses the base's CAs only")
    mirror = apt_mirror()
    if mirror:
        loop.inputs["apt-mirror"] = mirror.encode()
    return sorted(loop.inputs)


def proxy_args() -> dict[str, str]:
    """Docker's predefined proxy build arguments, from the environment (no image keeps them).
    With a proxy, loopback is added to NO_PROXY: the build's inputs are on 127.0.0.1, and
    neither urllib nor pip bypasses a proxy for loopback by itself."""
    args = {name: os.environ[name] for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
            "https_proxy") if os.environ.get(name)}
    if args:
        given = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
        no_proxy = ",".join(filter(None, [given, "127.0.0.1", "localhost"]))
        args.update(NO_PROXY=no_proxy, no_proxy=no_proxy)
    return args


def dockerfile_default(path: Path, name: str) -> str:
    m = re.search(rf"^ARG {name}=(\S+)", path.read_text(), re.M)
    return m.group(1) if m else ""


def torch_index(asked: str | None, dockerfile: Path, flavour: str, cafile: str | None) -> str:
    """The index torch comes from; "" for pip's own configuration. The CPU image falls
    back to pip's configuration when the index does not answer; the GPU image does not (a
    wheelhouse's +cpu build would win there without a word)."""
    if asked == "pip":
        return ""
    url = asked or dockerfile_default(dockerfile, "TORCH_INDEX_URL")
    probe = url.rstrip("/") + "/torch/"
    try:
        context = ssl.create_default_context(cafile=cafile if cafile else None)
        urllib.request.urlopen(probe, timeout=PROBE_TIMEOUT_S, context=context).close()
        return url
    except Exception as exc:      # noqa: BLE001 - any failure means: not from here
        why = f"torch's index {url} does not answer from here ({exc.__class__.__name__})"
    if flavour == "gpu":
        raise SystemExit(f"docker-build: {why}; name one that does (--torch-index URL, make "
                         "docker-build TORCH_INDEX=URL), or --torch-index pip to take torch "
                         "from pip's configuration")
    say(f"{why}; torch comes from pip's configuration instead")
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
        args = {**proxy_args(), "PYTHON_IMAGE": base, "BUILD_INPUTS_URL": f"{loop.base}/inputs"}
        config = pip_config()
        given = build_inputs(config, loop)
        args["TORCH_INDEX_URL"] = torch_index(opts.torch_index, dockerfile, opts.flavour,
                                              config.get("cert"))
        args["BUILD_INPUTS_DIGEST"] = loop.digest()
        cmd = ["docker", "build", "--network", "host", "-f", str(dockerfile), "-t", tag]
        for key, value in args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        cmd += [*opts.docker_args, str(ROOT)]
        say(f"building {tag} from {base} "
            f"({'BuildKit' if env['DOCKER_BUILDKIT'] == '1' else 'the legacy builder'}; "
            f"from this machine, over loopback: {', '.join(given) or 'nothing'})")
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
