"""Placement: disjoint GPU sets (CUDA_VISIBLE_DEVICES) or core sets per parallel trial; too many trials is an error."""

from __future__ import annotations

import os

import pytest

from fulmen.sweep.placement import plan


def test_gpu_slots_are_disjoint_and_keep_the_visible_ids(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    slots = plan(2, devices_per_trial=2)
    assert [s.gpus for s in slots] == [("4", "5"), ("6", "7")]
    assert slots[1].env() == {"CUDA_VISIBLE_DEVICES": "6,7"} and slots[1].describe() == "GPU 6,7"
    assert [s.gpus for s in plan(4)] == [("4",), ("5",), ("6",), ("7",)]
    with pytest.raises(ValueError, match=r"needs 5 GPU seats, but 4 GPU\(s\) x --trials-per-device 1 give 4"):
        plan(5)
    shared = plan(8, trials_per_device=2)  # two trials per GPU, spread before doubling up
    assert [s.gpus[0] for s in shared] == ["4", "5", "6", "7", "4", "5", "6", "7"]


def test_cpu_slots_are_disjoint_core_sets(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cores = sorted(os.sched_getaffinity(0))
    slots = plan(len(cores))
    assert [set(s.cores) for s in slots] == [{c} for c in cores]
    assert slots[0].env()["OMP_NUM_THREADS"] == "1" and slots[0].env()["CUDA_VISIBLE_DEVICES"] == ""
    (whole,) = plan(1, accelerator="cpu")
    assert list(whole.cores) == cores
    with pytest.raises(ValueError, match="need at least one core each"):
        plan(len(cores) + 1)
    with pytest.raises(ValueError, match="no GPU is visible"):
        plan(1, accelerator="gpu")
    with pytest.raises(ValueError, match="--parallel 0: expected a positive integer"):
        plan(0)
