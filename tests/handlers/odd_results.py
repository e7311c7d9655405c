"""Returns an odd value, named by the job's input: the table every mode must end the same
way (tests/test_result_rule.py)."""
import datetime

import numpy as np

import worker


def _cyclic():
    value = []
    value.append(value)
    return value


VALUES = {
    "nan": lambda: {"x": float("nan")},
    "infinity": lambda: [float("inf"), float("-inf")],
    "bytes": lambda: b"\x00\xff",
    "set": lambda: {1, 2},
    "datetime": lambda: datetime.datetime(2026, 12, 6, 12, 0),
    "numpy_float32": lambda: np.float32(1.5),
    "numpy_float64": lambda: np.float64(2.5),       # a float subclass: JSON as it is
    "numpy_int": lambda: np.int64(7),
    "numpy_array": lambda: np.arange(3),
    "big_int": lambda: 2**70,                     # past int64 and uint64
    "huge_int": lambda: 10**5000,                 # past Python's int-to-str limit
    "int_key": lambda: {1: "a", 2.5: "b", None: "c", True: "d"},
    "tuple_key": lambda: {(1, 2): "a"},
    "cyclic": _cyclic,
    "lone_surrogate": lambda: "\ud800",
    "too_large": lambda: "é" * (2**20 // 2 + 1),     # just over 1 MiB of UTF-8
}


def handler(job):
    return VALUES[job["input"]["kind"]]()


worker.start({"handler": handler})
