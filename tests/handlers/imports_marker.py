"""Imports a module nothing else here uses, to show it is imported in the child only."""
import colorsys  # noqa: F401

import worker

worker.start({"handler": lambda job: "colorsys loaded"})
