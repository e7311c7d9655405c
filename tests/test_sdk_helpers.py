"""worker.serverless helpers against the runpod SDK's own (installed in the test
environment): same signatures, same results; the download guard over real loopback HTTP."""
import inspect
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, settings, strategies as st
from runpod.serverless.utils import rp_cleanup as sdk_cleanup
from runpod.serverless.utils import rp_debugger as sdk_debugger
from runpod.serverless.utils import rp_download as sdk_download
from runpod.serverless.utils import rp_upload as sdk_upload
from runpod.serverless.utils import rp_validator as sdk_validator

import worker
from worker.serverless import register_fitness_check
from worker.serverless.utils import (rp_cleanup, rp_cuda, rp_debugger, rp_download, rp_ssrf,
                                     rp_upload, rp_validator)

PAIRS = [(rp_validator.validate, sdk_validator.validate),
         (rp_download.download_files_from_urls, sdk_download.download_files_from_urls),
         (rp_download.file, sdk_download.file),
         (rp_cleanup.clean, sdk_cleanup.clean),
         (rp_upload.upload_image, sdk_upload.upload_image),
         (rp_upload.upload_file_to_bucket, sdk_upload.upload_file_to_bucket),
         (rp_upload.upload_in_memory_object, sdk_upload.upload_in_memory_object),
         (rp_debugger.get_debugger_output, sdk_debugger.get_debugger_output)]


@pytest.mark.parametrize("ours, sdk", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_same_signatures_as_the_sdk(ours, sdk):
    assert list(inspect.signature(ours).parameters) == list(inspect.signature(sdk).parameters)


def test_the_helpers_are_where_the_sdk_has_them():
    assert worker.serverless.utils.rp_validator.validate is rp_validator.validate
    assert worker.serverless.utils.download_files_from_urls is \
        rp_download.download_files_from_urls
    from worker.serverless.modules.rp_logger import RunPodLogger
    assert RunPodLogger is worker.RunPodLogger
    assert worker.serverless.register_fitness_check is register_fitness_check


# --- rp_validator: the SDK's results for any input and schema -------------------------------

TYPES = st.sampled_from([int, float, str, bool, list, dict])
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-2, 2),
                   st.text(max_size=3), st.lists(st.integers(0, 3), max_size=2))
RULES = st.fixed_dictionaries({}, optional={
    "type": TYPES, "required": st.booleans(), "default": VALUES,
    "constraints": st.sampled_from([lambda v: v is not None, lambda v: bool(v)])})
KEYS = st.sampled_from(["a", "b", "c", "d"])


def _outcome(fn, raw, schema):
    try:
        return fn(dict(raw), {k: dict(v) for k, v in schema.items()})
    except Exception as exc:      # the SDK raises on some schemas: so must we, alike
        return ("raised", type(exc).__name__)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=4), st.dictionaries(KEYS, RULES, max_size=4))
def test_validate_matches_the_sdk(raw, schema):
    assert _outcome(rp_validator.validate, raw, schema) == \
        _outcome(sdk_validator.validate, raw, schema)


def test_validate_readable_cases():
    schema = {"prompt": {"type": str, "required": True},
              "steps": {"type": int, "required": False, "default": 20},
              "seed": {"type": int, "required": False, "default": None,
                       "constraints": lambda s: s is None or s >= 0},
              "scale": {"type": float, "required": False, "default": 7.5}}
    assert rp_validator.validate({"prompt": "x", "scale": 3}, schema) == \
        {"validated_input": {"prompt": "x", "steps": 20, "seed": None, "scale": 3.0}}
    assert rp_validator.validate({"seed": -1, "extra": 1}, schema) == {"errors": [
        "Unexpected input. extra is not a valid input option.",
        "prompt is a required input.", "seed does not meet the constraints."]}
    # The SDK's quirk, kept for the same results: a value of the default's type skips
    # the constraints (docs/compatibility.md).
    quirk = {"n": {"type": int, "required": False, "default": 1, "constraints": lambda n: n > 0}}
    assert rp_validator.validate({"n": -5}, quirk) == sdk_validator.validate({"n": -5}, quirk) \
        == {"validated_input": {"n": -5}}


# --- rp_debugger, rp_cleanup, rp_cuda, RunPodLogger -----------------------------------------

def test_debugger_timers_and_output():
    rp_debugger.clear_debugger_output()

    @rp_debugger.FunctionTimer
    def step(x):
        with rp_debugger.LineTimer("inner"):
            return x * 2

    assert step(2) == 4 and step.__name__ == "step"
    with pytest.raises(KeyError, match='Checkpoint name "step" already exists'):
        step(3)        # what worker-faster_whisper hit on its second job
    out = rp_debugger.get_debugger_output()
    assert [t["name"] for t in out["timestamps"]] == ["step", "inner"]
    assert set(out["system_info"]) >= {"os", "processor", "python_version"}
    assert rp_debugger.get_debugger_output()["timestamps"] == []      # cleared
    assert step(4) == 8


def test_cleanup_removes_what_the_sdk_removes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for d in ("input_objects", "output_objects", "job_files", "mine", "kept"):
        (tmp_path / d).mkdir()
    (tmp_path / "output.zip").write_text("z")
    rp_cleanup.clean(["mine"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


def test_cuda_probe_agrees_with_the_sdk():
    from runpod.serverless.utils import rp_cuda as sdk_cuda
    assert rp_cuda.is_available() == sdk_cuda.is_available()


@pytest.mark.parametrize("endpoint", [None, "ep"])
def test_logger_lines_match_the_sdk(capsys, monkeypatch, endpoint):
    from runpod import RunPodLogger as SdkLogger
    if endpoint:
        monkeypatch.setenv("RUNPOD_ENDPOINT_ID", endpoint)
    else:
        monkeypatch.delenv("RUNPOD_ENDPOINT_ID", raising=False)
    lines = []
    for logger in (worker.RunPodLogger(), SdkLogger()):
        logger.level = "DEBUG"
        logger.debug("d", "job-1")
        logger.warn("w" * 5000)
        logger.secret("token", "abcdef")
        logger.trace("hidden at DEBUG")
        lines.append(capsys.readouterr().out)
    assert lines[0] == lines[1]


# --- rp_download through the address guard --------------------------------------------------

class _Files(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
            return
        body = b"x" * (4096 if self.path.startswith("/big") else 10)
        self.send_response(200)
        if self.path.startswith("/named"):
            self.send_header("Content-Disposition", 'attachment; filename="weights.bin"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def files_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("module", [rp_download, sdk_download], ids=["ours", "sdk"])
def test_a_loopback_url_is_refused(files_server, module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", raising=False)
    with pytest.raises(ValueError, match="non-public address 127.0.0.1"):
        module.download_files_from_urls("job-1", [f"{files_server}/a.txt"])


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/", "http://10.0.0.1/x",
                                 "http://[::1]/x", "http://[::ffff:127.0.0.1]/x",
                                 "http://100.64.0.1/x", "file:///etc/passwd",
                                 "ftp://example.com/x", "http://[fec0::1]/x",
                                 "http://[2002:a00:1::1]/x", "http://[2002:7f00:1::]/x"])
def test_private_and_odd_urls_are_refused_before_any_connection(url):
    with pytest.raises(rp_ssrf.SSRFError):
        rp_ssrf.safe_get(url)


def test_an_ipv4_inside_an_ipv6_address_is_judged_as_itself():
    assert not rp_ssrf.is_safe_address("2002:a00:1::1")        # 6to4 of 10.0.0.1
    assert rp_ssrf.is_safe_address("2002:808:808::1")          # 6to4 of 8.8.8.8
    assert not rp_ssrf.is_safe_address("fec0::1")              # site-local
    assert not rp_ssrf.is_safe_address("::ffff:169.254.169.254")


def test_downloads_with_private_urls_allowed_match_the_sdk(files_server, tmp_path,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", "true")
    urls = [f"{files_server}/a.txt", None, f"{files_server}/named", "http://127.0.0.1:1/x"]
    ours = rp_download.download_files_from_urls("job-1", urls)
    sdk = sdk_download.download_files_from_urls("job-2", urls)
    for mine, theirs in zip(ours, sdk):
        assert (mine is None) == (theirs is None)
        if mine is not None:
            assert os.path.splitext(mine)[1] == os.path.splitext(theirs)[1]
            assert open(mine, "rb").read() == open(theirs, "rb").read()
    assert ours[0].endswith(".txt") and ours[2].endswith(".bin")
    assert os.path.dirname(ours[0]) == str(tmp_path / "jobs" / "job-1" / "downloaded_files")


def test_the_size_cap_and_a_redirect_to_metadata(files_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", "true")
    monkeypatch.setenv("RUNPOD_MAX_DOWNLOAD_BYTES", "1000")
    with pytest.raises(rp_ssrf.SSRFError, match="size cap"):
        rp_download.download_files_from_urls("job-1", [f"{files_server}/big"])
    monkeypatch.delenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS")
    monkeypatch.setattr(rp_ssrf, "private_allowed", lambda: False)
    with pytest.raises(rp_ssrf.SSRFError):
        rp_ssrf.safe_get(f"{files_server}/redirect")


# --- rp_upload ------------------------------------------------------------------------------

def test_upload_without_a_bucket_saves_locally_as_the_sdk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "img.png").write_bytes(b"png")
    assert rp_upload.upload_in_memory_object("a.bin", b"data") == \
        sdk_upload.upload_in_memory_object("a.bin", b"data") == "local_upload/a.bin"
    path = rp_upload.upload_image("job-1", str(tmp_path / "img.png"))
    assert path.startswith("simulated_uploaded/") and path.endswith(".png")
    assert open(path, "rb").read() == b"png"


def test_upload_to_a_bucket_without_boto3_says_what_to_install(monkeypatch):
    import sys
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", "https://bucket.example.com")
    monkeypatch.setitem(sys.modules, "boto3", None)       # as if not installed
    with pytest.raises(ImportError, match=r"gpu-worker\[s3\]"):
        rp_upload.upload_in_memory_object("a.bin", b"data")


# --- the parent reads RunPodLogger lines back ------------------------------------------------

LEVEL_NAMES = ["DEBUG", "INFO", "WARN", "ERROR", "TRACE"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(LEVEL_NAMES), st.text(), st.one_of(st.none(), st.text(max_size=8)),
       st.booleans())
def test_any_logger_line_is_read_back_at_its_level(level, message, job_id, as_json):
    import io
    import json as _json
    from contextlib import redirect_stdout

    from worker.parent.output import SDK_LEVELS, sdk_line
    logger = worker.RunPodLogger()
    logger.level = "TRACE"
    out = io.StringIO()
    env = {"RUNPOD_ENDPOINT_ID": "ep"} if as_json else {}
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(out):
        if as_json:
            mp.setenv("RUNPOD_ENDPOINT_ID", env["RUNPOD_ENDPOINT_ID"])
        else:
            mp.delenv("RUNPOD_ENDPOINT_ID", raising=False)
        logger.log(message, level, job_id)
    lines = out.getvalue().split("\n")[:-1]
    if as_json:
        assert len(lines) == 1                    # one line whatever the message holds
        parsed = sdk_line(lines[0])
        assert parsed is not None
        record = _json.loads(lines[0])
        assert parsed == (SDK_LEVELS[level], record["message"],
                          job_id if isinstance(job_id, str) else None)
    else:
        parsed = sdk_line(lines[0])
        assert parsed is not None and parsed[0] == SDK_LEVELS[level]


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_no_line_breaks_the_reader(line):
    from worker.parent.output import sdk_line
    parsed = sdk_line(line)
    assert parsed is None or (isinstance(parsed[1], str) and parsed[0] > 0)


def test_a_deeply_nested_line_is_just_a_line():
    from worker.parent.output import sdk_line
    line = '{"requestId": ' + "[" * 16000 + "]" * 16000 + "}"
    assert sdk_line(line) is None


def test_the_output_pump_outlives_a_failing_sink():
    """A sink that raises on a line must not stop the reading of the rest."""
    import os
    from worker.parent.output import OutputPump
    seen = []

    def sink(stream, line, ids):
        if line == "boom":
            raise RuntimeError("sink failed")
        seen.append(line)

    r, w = os.pipe()
    pump = OutputPump({r: "stdout"}, lambda: (), sink)
    pump.start()
    os.write(w, b"first\nboom\nlast\n")
    os.close(w)
    pump.join(10)
    os.close(r)
    assert seen == ["first", "last"] and not pump.is_alive()


# --- a downloaded zip is extracted within the download's limits ---------------------------

def _zip(path, entries):
    import zipfile
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


class _Zip(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Disposition", 'attachment; filename="data.zip"')
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_a_zip_bomb_under_the_download_cap_is_not_extracted_past_it(tmp_path, monkeypatch):
    """0.02 MiB that inflates to 20 MiB, under a 2 MiB cap: fetched (it is small), but
    extraction stops and leaves nothing behind; an honest zip extracts as before."""
    from worker.serverless.utils import rp_archive
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", "true")
    monkeypatch.setenv("RUNPOD_MAX_DOWNLOAD_BYTES", str(2 * 2**20))
    bomb = _zip(tmp_path / "bomb.zip", [("zeros.bin", b"\0" * (20 * 2**20))])
    assert bomb.stat().st_size < 2**20
    _Zip.body = bomb.read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Zip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(rp_archive.UnsafeArchive, match="inflates|cap"):
            rp_download.file(f"http://127.0.0.1:{server.server_address[1]}/d")
        assert [p for p in (tmp_path / "job_files").iterdir() if p.is_dir()] == []
        _Zip.body = _zip(tmp_path / "ok.zip", [("a/b.txt", b"hello"), ("c.txt", b"x")]
                         ).read_bytes()
        got = rp_download.file(f"http://127.0.0.1:{server.server_address[1]}/d")
        assert open(os.path.join(got["extracted_path"], "a", "b.txt")).read() == "hello"
    finally:
        server.shutdown()
        server.server_close()


def test_extraction_bounds_entries_total_bytes_and_names(tmp_path, monkeypatch):
    from worker.serverless.utils import rp_archive
    monkeypatch.setattr(rp_archive, "MAX_ENTRIES", 5)
    many = _zip(tmp_path / "many.zip", [(f"f{i}", b"x") for i in range(6)])
    with pytest.raises(rp_archive.UnsafeArchive, match="6 entries"):
        rp_archive.extract(str(many), str(tmp_path / "out1"))
    total = _zip(tmp_path / "total.zip", [(f"f{i}", os.urandom(4000)) for i in range(3)])
    with pytest.raises(rp_archive.UnsafeArchive, match="cap of 10000"):
        rp_archive.extract(str(total), str(tmp_path / "out2"), cap=10_000)
    assert not (tmp_path / "out2").exists()
    evil = _zip(tmp_path / "evil.zip", [("../../escape.txt", b"x"), ("/abs.txt", b"y")])
    rp_archive.extract(str(evil), str(tmp_path / "out3"))
    assert not (tmp_path / "escape.txt").exists()
    assert sorted(os.listdir(tmp_path / "out3")) == ["abs.txt", "escape.txt"]


def test_the_local_upload_fallback_stays_in_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="outside the folder"):
        rp_upload.upload_in_memory_object("../escaped.bin", b"data")
    assert not (tmp_path / "escaped.bin").exists()
    assert rp_upload.upload_in_memory_object("sub/ok.bin", b"data") == "local_upload/sub/ok.bin"
