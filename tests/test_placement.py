"""Which GPUs each child gets (placement.plan): pure, every combination of the settings."""
from hypothesis import given
from hypothesis import strategies as st

from worker.parent.placement import plan, shared, visible_gpus

G4 = ["GPU-0", "GPU-1", "GPU-2", "GPU-3"]


def test_no_gpu_means_cpu_children():
    assert plan([], None, 0) == [()]
    assert plan([], None, 3) == [(), (), ()]
    assert plan([], 2, 0) == [()]


def test_one_child_per_gpu_by_default():
    assert plan(G4, None, 0) == [("GPU-0",), ("GPU-1",), ("GPU-2",), ("GPU-3",)]


def test_gpus_per_child_slices_and_zero_gives_every_gpu_to_one_child():
    assert plan(G4, 2, 0) == [("GPU-0", "GPU-1"), ("GPU-2", "GPU-3")]
    assert plan(G4, 0, 0) == [tuple(G4)]
    assert plan(G4, 0, 2) == [tuple(G4), tuple(G4)]
    assert plan(G4, 3, 0) == [("GPU-0", "GPU-1", "GPU-2")]          # one GPU left idle
    assert plan(G4[:1], 2, 0) == [("GPU-0",)]                        # more than there are


def test_children_divide_the_gpus_evenly_or_share_them():
    assert plan(G4, None, 2) == [("GPU-0", "GPU-1"), ("GPU-2", "GPU-3")]
    assert plan(G4[:1], None, 2) == [("GPU-0",), ("GPU-0",)]         # two on one GPU
    assert plan(G4[:2], 1, 3) == [("GPU-0",), ("GPU-1",), ("GPU-0",)]
    assert shared(plan(G4[:1], None, 2)) == [True, True]
    assert shared(plan(G4, None, 0)) == [False] * 4


@given(st.integers(0, 8), st.none() | st.integers(0, 9), st.integers(0, 9))
def test_every_plan_gives_each_child_a_valid_slice(gpus, per_child, children):
    visible = [f"GPU-{i}" for i in range(gpus)]
    slices = plan(visible, per_child, children)
    assert len(slices) >= 1 and (not children or len(slices) == children)
    for devices in slices:
        assert set(devices) <= set(visible) and len(set(devices)) == len(devices)
        assert bool(devices) == bool(visible)


def test_without_nvml_the_variable_is_read_as_cuda_reads_it():
    assert visible_gpus("0,1,2") == ["0", "1", "2"]
    assert visible_gpus("1,-1,2") == ["1"]
    assert visible_gpus(None) == [] and visible_gpus("") == []
