"""State files: every sampler and policy ``state_dict`` round-trips exactly, and nothing is unpickled."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from conftest import Payload

from packwise.samplers import BucketBatchSampler, PackedBatchSampler, PruningSampler, load_state, save_state
from packwise.selection import RS2, InfoBatch, LossThresholdFilter, ReferenceScores, RhoLoss, ScoreStore


def write_payload(path, marker, how: str) -> None:
    if how == "pickle":
        path.write_bytes(pickle.dumps({"epoch": Payload(marker)}))
    else:
        torch.save({"epoch": Payload(marker)}, path)  # a zip, like an .npz


def assert_same(a, b, where="state") -> None:
    """Equal values and equal types all the way down (arrays: dtype, shape and bytes)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), where
    else:
        assert a == b, where


def _states():
    lengths = np.array([5, 9, 3, 7, 12, 4, 8, 6], np.int64)
    packed = PackedBatchSampler(lengths, max_tokens=16, seed=3)
    next(iter(packed))
    bucket = BucketBatchSampler(lengths, max_tokens=20, seed=1)
    info = InfoBatch(8, num_epochs=3, prune_ratio=0.5, seed=0)
    info.update(torch.arange(8), torch.linspace(0.1, 2.0, 8))
    pruning = PruningSampler(info, seed=0)
    rs2 = RS2(8, fraction=0.5, seed=2)
    filt = LossThresholdFilter(prune_ratio=0.5, window=4, seed=0)
    filt.update([0, 1, 2, 3], [0.5, 0.25, 3.0, 4.0])
    rho = RhoLoss(ReferenceScores.from_array(np.array([0.1, 2.0, 0.2, 0.3], np.float32)), filter_ratio=0.5)
    store = ScoreStore(4, 0.9)
    store.update(np.array([1, 3]), np.array([0.5, 1.5], np.float32), 0)
    return {
        "packed": packed.state_dict(),
        "bucket": bucket.state_dict(),
        "pruning": pruning.state_dict(),
        "infobatch": info.state_dict(),
        "rs2": rs2.state_dict(),
        "filter": filt.state_dict(),
        "rho": rho.state_dict(),
        "store": store.state_dict(),
    }


def test_every_state_dict_round_trips_exactly(tmp_path):
    states = _states()
    states["extra"] = {
        "int64": np.int64(2**62 + 1),
        "float32": np.float32(0.1),
        "big": 2**100,
        "nested": {1: (np.arange(3, dtype=np.int32), [None, True, "x"]), (2, 3): {"a": np.zeros((2, 0))}},
        "nan": float("nan"),
    }
    save_state(tmp_path / "s.npz", states)
    back = load_state(tmp_path / "s.npz")
    nan = back["extra"].pop("nan")
    states["extra"].pop("nan")
    assert nan != nan
    assert_same(states, back)


def test_policies_and_samplers_load_what_was_saved(tmp_path):
    info = InfoBatch(8, num_epochs=3, prune_ratio=0.5, seed=0)
    info.update(torch.arange(8), torch.linspace(0.1, 2.0, 8))
    filt = LossThresholdFilter(prune_ratio=0.5, window=4, seed=0)
    filt.update([0, 1, 2, 3], [0.5, 0.25, 3.0, 4.0])
    save_state(tmp_path / "s.npz", {"info": info.state_dict(), "filter": filt.state_dict()})
    back = load_state(tmp_path / "s.npz")
    info2 = InfoBatch(8, num_epochs=3, prune_ratio=0.5, seed=0)
    info2.load_state_dict(back["info"])
    filt2 = LossThresholdFilter(prune_ratio=0.5, window=4, seed=0)
    filt2.load_state_dict(back["filter"])
    assert info2.indices_for_epoch(1).tolist() == info.indices_for_epoch(1).tolist()
    assert filt2.threshold == filt.threshold == 1.9375
    assert [x.tolist() for x in filt2.select([2, 0])] == [x.tolist() for x in filt.select([2, 0])]


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_malicious_pickle_is_refused_and_never_run(tmp_path, how):
    path, marker = tmp_path / "s.npz", tmp_path / "ran"
    write_payload(path, marker, how)
    with pytest.raises(ValueError, match=r"is not a packwise state file .*packwise never unpickles state"):
        load_state(path)
    assert not marker.exists()


def test_object_arrays_are_refused_on_save(tmp_path):
    with pytest.raises(ValueError, match=r"state\['x'\] is an object array"):
        save_state(tmp_path / "s.npz", {"x": np.array([{}], dtype=object)})
    assert not os.listdir(tmp_path)
