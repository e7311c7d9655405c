"""Every child is as random as a fresh interpreter (child/seeds.py): three children in a
row (each job asks for refresh_worker) draw different numbers from torch, numpy and
random — cold with torch and numpy preloaded, and warm — while a module that seeds at
import gets the same seeded numbers in every child, as cold children running it would."""
import pytest

from tests.support import HANDLERS, Harness
from worker.jobs import JobState

pytest.importorskip("torch")
pytest.importorskip("numpy")

WAYS = {"cold, torch and numpy preloaded": dict(preload=("torch", "numpy")),
        "warm refresh": dict(preload=("torch", "numpy"), warm_refresh=True)}


def draws(tmp_path, monkeypatch, seeded: bool, **settings) -> list:
    monkeypatch.chdir(tmp_path)          # the module looks for its marker here
    if seeded:
        (tmp_path / "seed-at-import").write_text("")
    h = Harness(str(HANDLERS / "rng_draws.py"), setup_timeout=120, **settings)
    try:
        out = []
        for _ in range(3):
            result = h.run({}, timeout=120)
            assert result.state is JobState.COMPLETED, result.body
            out.append(result.output)
        if settings.get("warm_refresh"):
            assert h.sup.snapshot()["warm_refresh"] == "on"
    finally:
        h.close()
    assert len({d["pid"] for d in out}) == 3          # three children
    return out


@pytest.mark.parametrize("way", WAYS)
def test_children_draw_what_fresh_interpreters_would(tmp_path, monkeypatch, way):
    out = draws(tmp_path, monkeypatch, False, **WAYS[way])
    for name in ("torch", "numpy", "random"):
        assert len({d[name] for d in out}) == 3, (name, out)


@pytest.mark.parametrize("way", WAYS)
def test_a_module_that_seeds_at_import_gets_its_seeded_numbers_in_every_child(
        tmp_path, monkeypatch, way):
    out = draws(tmp_path, monkeypatch, True, **WAYS[way])
    for name in ("torch", "numpy", "random"):
        assert len({d[name] for d in out}) == 1, (name, out)
