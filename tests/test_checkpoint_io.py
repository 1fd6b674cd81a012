"""Atomic checkpoint files (trainer/checkpoint.py): the free-space check before a save, and a failed write that
leaves the previous file and no temp file."""

from __future__ import annotations

import errno
import shutil
from collections import namedtuple

import pytest
import torch

from credo.trainer import checkpoint as ckpt


def test_tensor_bytes_counts_nested_tensors():
    obj = {"model": {"w": torch.zeros(4, 8), "b": torch.zeros(8, dtype=torch.float16)},
           "opt": [torch.zeros(3, dtype=torch.float64), (torch.zeros(2, dtype=torch.int64), "step")], "n": 7}
    assert ckpt.tensor_bytes(obj) == 4 * 8 * 4 + 8 * 2 + 3 * 8 + 2 * 8


def test_save_refuses_without_space_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    ckpt.save_atomic({"w": torch.ones(3)}, path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 100, 100))  # 100 bytes free
    with pytest.raises(OSError, match="needs at least") as err:
        ckpt.save_atomic({"w": torch.zeros(1000)}, path)  # 4000 bytes
    assert err.value.errno == errno.ENOSPC
    assert torch.equal(ckpt.load(path)["w"], torch.ones(3))  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temp file
    ckpt.save_atomic({"w": torch.zeros(10)}, path)  # 40 bytes fit
    assert ckpt.load(path)["w"].shape == (10,)


def test_failed_write_leaves_no_temp_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    ckpt.save_atomic({"w": torch.ones(2)}, path)

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        ckpt.write_atomic(path, boom)
    assert torch.equal(ckpt.load(path)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
