"""Every child as random as a fresh interpreter.

A child forked from the forkserver inherits the state of every random generator that was
loaded there: torch's (WORKER_PRELOAD=torch), numpy's global one, and with warm refresh
whatever the module's import made. A fresh interpreter seeds each of them from the OS at
import, so children side by side, and the child after a refresh, would draw the same
"random" numbers: the same diffusion noise, the same dropout, the same crops. So before
the module's code runs (cold) or its jobs run (warm) each child reseeds, from the OS,
the global generators a fresh process would have seeded: torch's CPU generator (a device's
generators are made fresh in each child, when the device starts) and numpy's global one
when `numpy.random` is loaded. CPython reseeds `random` after a fork by itself.

Never over a seed set on purpose. A cold child runs the module after the reseed, so its
own seeding stands. A warm template ran the module's import in the forkserver: the seed
calls made then (`random.seed`, `numpy.random.seed`, `torch.manual_seed`,
`torch.cuda.manual_seed[_all]`, and what calls them: `transformers.set_seed`, Lightning's
`seed_everything`) are recorded (`watch`), and those generators keep the import's state in
every child, as a cold child running the same module would have (`random`'s state is put
back after CPython's own reseed). A generator *object* the module makes at import
(`np.random.default_rng()`, `random.Random()`) is shared state like any other global:
every child starts with the one the import made.
"""
from __future__ import annotations

import contextlib
import random
import sys

# The seed functions that set a generator on purpose, by the family they seed.
SEEDERS = {"random": ("random", ("seed",)),
           "numpy.random": ("numpy", ("seed",)),
           "torch": ("torch", ("manual_seed",)),
           "torch.random": ("torch", ("manual_seed",)),
           "torch.cuda": ("torch", ("manual_seed", "manual_seed_all"))}


def reseed(seeded: frozenset = frozenset(), random_state=None) -> None:
    """In a new child: reseed what a fresh interpreter would have seeded, except the
    families in `seeded` (seeded on purpose by a warm import: `random_state` is then the
    import's `random` state)."""
    if "random" in seeded and random_state is not None:
        random.setstate(random_state)
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None and "numpy" not in seeded:
        with contextlib.suppress(Exception):
            numpy_random.seed()
    torch = sys.modules.get("torch")
    if torch is not None and "torch" not in seeded:
        with contextlib.suppress(Exception):
            _reseed_torch(torch)


def _reseed_torch(torch) -> None:
    """The CPU generator only. A device's generators (CUDA, XPU, MPS) are made when the
    device starts, and no device can have started in the forkserver (fork_safety.py): a
    child makes them as a fresh interpreter does, with any seed call the warm import
    queued for them. (Queueing a reseed for them costs a millisecond per child:
    torch records the stack of every lazy call.)"""
    torch.default_generator.seed()


@contextlib.contextmanager
def watch():
    """Record which families the code run inside seeds on purpose; yields the set."""
    seeded: set = set()
    undo: list = []

    def wrap(module) -> None:
        family, names = SEEDERS[module.__name__]
        for name in names:
            original = getattr(module, name, None)
            if original is None or getattr(original, "_gpu_worker_seed", False):
                continue

            def recorded(*args, _original=original, _family=family, **kwargs):
                seeded.add(_family)
                return _original(*args, **kwargs)
            recorded._gpu_worker_seed = True
            setattr(module, name, recorded)
            undo.append((module, name, original))

    class Finder:
        """Wraps the seed functions of a seeding module the code imports, once loaded."""

        @staticmethod
        def find_spec(name, path=None, target=None):
            if name not in SEEDERS:
                return None
            spec = None
            for finder in sys.meta_path:         # whoever would have found it
                if finder is not Finder and hasattr(finder, "find_spec"):
                    spec = finder.find_spec(name, path, target)
                    if spec is not None:
                        break
            if spec is None or spec.loader is None or \
                    not hasattr(spec.loader, "exec_module"):
                return None
            load = spec.loader.exec_module

            def exec_module(module):
                load(module)
                wrap(module)
                if name == "torch":          # its submodules loaded inside its own import
                    for sub in ("torch.random", "torch.cuda"):
                        if sub in sys.modules:
                            wrap(sys.modules[sub])
            spec.loader.exec_module = exec_module
            return spec

    for name in SEEDERS:
        if name in sys.modules:
            wrap(sys.modules[name])
    sys.meta_path.insert(0, Finder)
    try:
        yield seeded
    finally:
        sys.meta_path.remove(Finder)
        for module, name, original in reversed(undo):
            setattr(module, name, original)
