"""Imports a module nothing else here uses, to show it is imported in the child only."""
import child_only_marker  # noqa: F401  (beside this file: on the child's sys.path)

import worker

worker.start({"handler": lambda job: "marker loaded"})
