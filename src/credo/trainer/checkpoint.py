"""Atomic checkpoints: everything needed for a resumed run to equal an uninterrupted one."""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from credo.data import InputError


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """`write(f)` to a temp file in the same folder, fsync, then rename over `path` (a reader never sees a
    partial file; a crash leaves the old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in `obj` (nested dicts, lists and tuples): a lower bound of its `torch.save` size."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save `obj` to `path` atomically (`write_atomic`). Raises OSError (ENOSPC) before writing anything
    when the folder's file system has less free space than the tensors of `obj` take (`tensor_bytes`): the
    previous checkpoint stays, and the message says how much is needed and free."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    need, free = tensor_bytes(obj), shutil.disk_usage(path.parent).free
    if need > free:
        raise OSError(errno.ENOSPC, f"checkpoint {path}: needs at least {need / 2**30:.2f} GiB, {path.parent} has "
                      f"{free / 2**30:.2f} GiB free; nothing written, the previous checkpoint is kept")
    write_atomic(path, lambda f: torch.save(obj, f))


def write_jsonl_atomic(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """One JSON object per line, written atomically (`write_atomic`)."""
    write_atomic(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "generator": generator.get_state()}


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    generator.set_state(state["generator"])


def load(path: str | Path) -> dict[str, Any]:
    """What `save_atomic` wrote to `path` (the loop's `checkpoint.pt`), on the CPU. Raises InputError naming `path`
    when the file is not a PyTorch pickle (another file given to `credo eval`)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as err:
        raise InputError(f"{path}: not a credo checkpoint ({type(err).__name__}: {err})") from None
    return state


def model_state(policy: Any) -> dict[str, Any]:
    """What a checkpoint keeps of the model: the adapter tensors of a LoRA policy (its base weights never change
    and are `start_model/`), the whole `state_dict()` otherwise."""
    adapters = getattr(policy, "adapter_state_dict", None)
    return adapters() if adapters is not None else policy.state_dict()


def load_model_state(policy: Any, state: dict[str, Any]) -> None:
    """Load `model_state` output back into a policy built the same way (LoRA adapters already applied)."""
    load_adapters = getattr(policy, "load_adapter_state_dict", None)
    if load_adapters is not None:
        load_adapters(state)
    else:
        policy.load_state_dict(state)
