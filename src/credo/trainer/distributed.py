"""Data parallelism under `torchrun`: the process group, FSDP2 sharding, and the few collectives the RL step needs.

Every helper is a no-op (or the single-process computation, exactly) when no process group is initialised, so the
trainer calls them unconditionally and one process behaves as before.

- Process group: `init_from_env` joins the group `torchrun` describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
  MASTER_PORT in the environment): gloo on the CPU, NCCL on CUDA.
- Sharding (`shard_policy`): FSDP2 `fully_shard` on every decoder layer (TinyLM `blocks`, a Hugging Face model's
  `layers`), then on the policy itself (embedding, final norm, LM head), with a mixed-precision policy on GPUs
  (compute dtype for parameters, float32 gradient reductions; the sharded masters stay float32). `hidden_states`
  is registered as a forward method, so the trainer's chunked log-probs (`trainer.logprobs`: body once, LM head in
  chunks) run through FSDP's hooks: the root's parameters are gathered once per micro-batch and stay gathered until
  its backward (`reshard_after_forward=False`), whatever the number of LM-head chunks per rank; so is
  `packed_hidden_states` (shared prompts under data parallelism, `trainer.logprobs`). Gradients are
  reduce-scattered as SUMS (`set_gradient_divide_factor(1)`): the update normalises every rank's loss by global
  counts already (`trainer.update`), so the sum over ranks is the one-process gradient.
- Generation: ranks decode on full weights (`generation_copy`, refreshed by `copy_full_weights` parameter by
  parameter, so no rank holds the full model twice during the refresh); rollouts and rank 0's evaluation then need
  no collective.
- LoRA policies are not sharded: every rank holds the frozen base and the adapters whole (the adapters are a
  small share of the memory), and the adapters' gradients are summed over ranks after each backward
  (`sync_replicated_grads`, as DDP with peft); checkpoints keep the adapters as one process does.
- SFT warm start (before sharding): each rank runs its share of every batch on a whole copy of the model and the
  gradients are summed (`all_reduce_grads`), the loss normalised by the batch's global token count.
- Checkpoints: `full_model_state` / `full_optimizer_state` gather each tensor in turn onto rank 0 in the
  one-process format (same keys, integer optimizer ids), so a checkpoint resumes with any number of processes;
  `load_optimizer_state` cuts the full tensors back into this rank's shards.

FSDP2: torch.distributed.fsdp.fully_shard (PyTorch ≥ 2.6); the same sharding verl and prime-rl use for their actors.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

# ---- ranks -----------------------------------------------------------------------------------------------------


def is_distributed() -> bool:
    """Whether this process is one of several data-parallel ranks: a process group of more than one process is
    initialised (under `torchrun`, after `init_from_env`). A group of one is not: vLLM's in-process engine creates
    one of its own (world size 1), and the one-process run must stay one (no FSDP sharding, no collectives)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that logs, evaluates and writes checkpoints, the report and `final_model/`."""
    return rank() == 0


def local_world_size() -> int:
    """Processes on this node (`LOCAL_WORLD_SIZE` from torchrun; 1 when not distributed)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if is_distributed() else 1


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group `torchrun` describes in the environment; returns True when this call created it (the
    caller then owns `close`). gloo for a CPU `device`, NCCL for CUDA (and `cuda.set_device(LOCAL_RANK)`).
    Without RANK/WORLD_SIZE in the environment, or when a group already exists, nothing happens. The collective
    timeout is `CREDO_DIST_TIMEOUT_S` seconds (default 3600: rank 0 evaluates while the others wait)."""
    if not dist.is_available() or dist.is_initialized() or "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = datetime.timedelta(seconds=float(os.environ.get("CREDO_DIST_TIMEOUT_S", "3600")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    return True


def close() -> None:
    """Leave the process group, if one is initialised."""
    if dist.is_available() and dist.is_initialized():  # also a group of one (torchrun --nproc-per-node 1)
        dist.destroy_process_group()


def rank_seed(seed: int) -> int:
    """The seed of this rank's random streams (sampling, selection): `seed` on rank 0, so one process keeps its
    numbers; `seed + 1_000_003 · rank` elsewhere, so ranks draw different samples."""
    return seed + 1_000_003 * rank()


def share(items: list[Any]) -> list[Any]:
    """This rank's contiguous share of `items` (sizes differ by at most one, earlier ranks larger; the whole list
    when not distributed). The step's prompts are split this way, whole groups per rank."""
    n, w, r = len(items), world_size(), rank()
    return items[n * r // w : n * (r + 1) // w]


# ---- collectives -----------------------------------------------------------------------------------------------


def _comm_device() -> torch.device:
    """Where collective tensors live: the current CUDA device for NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """Element-wise sum / max / min of a list of floats over ranks (float64); the list itself when not
    distributed. Raises KeyError for another `op`."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return t.cpu().tolist()


def any_true(flag: bool) -> bool:
    """Whether `flag` holds on any rank (every rank gets the same answer, so all take the same branch)."""
    return flag if not is_distributed() else all_reduce([float(flag)], "max")[0] > 0


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order; `[obj]` when not distributed."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_grads(parameters: Iterable[torch.Tensor]) -> None:
    """Sum each trainable parameter's gradient over ranks, in place (zeros stand in where a rank has none, e.g. an
    empty share of the batch): data parallelism on whole, unsharded modules, as DDP does (the SFT warm start runs
    before FSDP2 shards the policy). Nothing when not distributed."""
    if not is_distributed():
        return
    for p in parameters:
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)


def is_sharded_module(module: nn.Module) -> bool:
    """Whether `module` holds FSDP2-sharded parameters (`shard_policy`)."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def sync_replicated_grads(module: nn.Module) -> None:
    """Under data parallelism with a module that is not sharded (a LoRA policy: every rank holds the frozen base
    and the adapters whole), sum the gradients over ranks (`all_reduce_grads`); nothing for an FSDP2-sharded
    module (its backward reduce-scatters) or in one process."""
    if is_distributed() and not is_sharded_module(module):
        all_reduce_grads(module.parameters())


def from_main(fn: Callable[[], Any]) -> Any:
    """`fn()` computed on rank 0 and sent to every rank (the result must be picklable; the other ranks do not call
    `fn`, so only rank 0's random streams advance); `fn()` itself when not distributed."""
    if not is_distributed():
        return fn()
    box = [fn() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def row_offset(n: int) -> tuple[int, int]:
    """(rows on lower ranks, rows on all ranks) for `n` local rows: this rank's rows are rows
    [offset, offset + n) of the global batch, the ranks' batches concatenated in rank order. (0, n) alone."""
    if not is_distributed():
        return 0, n
    counts = [int(c) for c in all_gather_object(n)]
    return sum(counts[: rank()]), sum(counts)


def shared_permutation(n: int, generator: torch.Generator) -> torch.Tensor:
    """A permutation of range(n) [n] that every rank shares: drawn from rank 0's `generator` and broadcast (the
    other ranks' generators are not advanced). One process: `torch.randperm(n, generator=generator)`."""
    if not is_distributed():
        return torch.randperm(n, generator=generator)
    perm = torch.randperm(n, generator=generator) if is_main() else torch.empty(n, dtype=torch.long)
    perm = perm.to(_comm_device())
    dist.broadcast(perm, src=0)
    return perm.cpu()


def local_rows(idx: torch.Tensor, offset: int, n: int) -> torch.Tensor:
    """The global rows `idx` [k] that live on this rank (rows offset … offset + n − 1), as local row numbers, in
    the order of `idx`; `idx` itself when not distributed."""
    if not is_distributed():
        return idx
    mine = (idx >= offset) & (idx < offset + n)
    return idx[mine] - offset


def global_fraction(local: float) -> float:
    """`local` / Σ_ranks `local`: the share of a count (tokens, sequences) held by this rank; 1 when not
    distributed, 0 when the total is 0."""
    if not is_distributed():
        return 1.0
    total = all_reduce([float(local)])[0]
    return float(local) / total if total > 0 else 0.0


def reduce_metrics(metrics: dict[str, float], weight: float, sums: Iterable[str] = ()) -> dict[str, float]:
    """Metrics of all ranks in one dict: keys starting with one of `sums` add up over ranks (counts, shares of a
    global loss); other
    keys are means weighted by each rank's `weight` (e.g. its trained tokens; an unweighted mean over the ranks
    that have the key when every weight is 0). Ranks may hold different keys; values that are not numbers stay
    this rank's. The dict itself when not
    distributed."""
    if not is_distributed():
        return dict(metrics)
    prefixes = tuple(sums)
    other = {k: v for k, v in metrics.items() if isinstance(v, bool) or not isinstance(v, int | float)}
    metrics = {k: float(v) for k, v in metrics.items() if k not in other}
    keys = sorted(set().union(*all_gather_object(sorted(metrics))))
    rows = [[float(k in metrics), metrics.get(k, 0.0) * weight, weight * (k in metrics), metrics.get(k, 0.0)]
            for k in keys]
    flat = all_reduce([x for row in rows for x in row])
    out = {}
    for i, k in enumerate(keys):
        present, weighted, w, plain = flat[4 * i : 4 * i + 4]
        out[k] = plain if k.startswith(prefixes) else (weighted / w if w > 0 else plain / max(1.0, present))
    return {**other, **out}


# ---- sharding ---------------------------------------------------------------------------------------------------


def decoder_layers(policy: nn.Module) -> list[nn.Module]:
    """The policy's repeated decoder layers, each one FSDP unit: TinyLM/TinyVLM `blocks`, or the `layers` of a
    Hugging Face policy's decoder (`HFPolicy.model.get_decoder()`). Raises TypeError for another model."""
    if hasattr(policy, "blocks"):
        return list(policy.blocks)
    model = getattr(policy, "model", None)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise TypeError(f"{type(policy).__name__}: no decoder layers found to shard (TinyLM blocks or a Hugging Face "
                        "decoder's .layers)")
    return list(layers)


def shard_policy(policy: nn.Module, compute_dtype: torch.dtype | None = None) -> nn.Module:
    """FSDP2-shard `policy` in place over all ranks (module docstring) and return it; the policy itself when not
    distributed. `compute_dtype` below float32 on CUDA: parameters are all-gathered in it and gradients reduced in
    float32 (FSDP's `MixedPrecisionPolicy`); on the CPU parameters stay float32."""
    if not is_distributed():
        return policy
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    cuda = next(policy.parameters()).device.type == "cuda"
    low = compute_dtype is not None and compute_dtype != torch.float32
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) if cuda and low else None
    kwargs = {"mp_policy": mp} if mp is not None else {}
    for layer in decoder_layers(policy):
        fully_shard(layer, **kwargs)
    fully_shard(policy, reshard_after_forward=False, **kwargs)
    for method in ("hidden_states", "packed_hidden_states"):  # the log-prob forwards (trainer.logprobs)
        if hasattr(policy, method):
            register_fsdp_forward_method(policy, method)
    for m in policy.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # sums: each rank's loss is its share of the global loss
            m.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
    return policy


def is_sharded(t: Any) -> bool:
    """Whether `t` is a DTensor (an FSDP-sharded parameter, gradient or optimizer state)."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a DTensor (an all-gather: every rank must call it, in the same order); a plain
    tensor as it is."""
    return t.full_tensor() if is_sharded(t) else t


def generation_copy(policy: nn.Module) -> nn.Module:
    """What the ranks' generation backend decodes with: under data parallelism, a TinyLM/TinyVLM policy gets a
    full-weight eval copy (taken before sharding, refreshed by `copy_full_weights` after each update); a Hugging
    Face policy keeps itself (the native backend decodes on its own engine copy, refreshed by `sync_weights`).
    The policy itself when not distributed."""
    if not is_distributed() or not hasattr(policy, "blocks"):
        return policy
    return copy.deepcopy(policy).eval().requires_grad_(False)


@torch.no_grad()
def copy_full_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy `src`'s (possibly sharded) parameters into `dst`'s full ones of the same names, one parameter gathered
    at a time (collective: every rank calls it). Nothing when `dst` is `src`. Raises KeyError on a missing name."""
    if dst is src:
        return
    target = dict(dst.named_parameters())
    for name, p in src.named_parameters():
        target[name].copy_(full_tensor(p.detach()))


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> float:
    """Clip gradients to a global L2 norm of `max_norm` and return the norm before clipping (as
    `torch.nn.utils.clip_grad_norm_`, which it is for plain tensors). Sharded (DTensor) gradients: the squared
    norms of the local shards are summed over ranks; plain gradients under data parallelism are replicas, counted
    once (rank 0). Clip coefficient min(1, max_norm / (norm + 1e-6)), as torch's."""
    params = [p for p in parameters if p.grad is not None]
    if not any(is_sharded(p.grad) for p in params):
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    sq = 0.0
    for p in params:
        g = p.grad.to_local() if is_sharded(p.grad) else p.grad
        if is_sharded(p.grad) or is_main():
            sq += float(g.detach().double().pow(2).sum())
    norm = math.sqrt(all_reduce([sq])[0])
    coef = min(1.0, max_norm / (norm + 1e-6))
    if coef < 1.0 or not math.isfinite(norm):
        for p in params:
            (p.grad.to_local() if is_sharded(p.grad) else p.grad).mul_(coef if math.isfinite(norm) else math.nan)
    return norm


# ---- checkpoints ------------------------------------------------------------------------------------------------


def _gathered(tensors: dict[Any, Any]) -> dict[Any, Any]:
    """Each value gathered in key order (collective); on rank 0 a CPU copy, on the others nothing is kept."""
    out = {}
    for k, v in tensors.items():
        t = full_tensor(v.detach()) if isinstance(v, torch.Tensor) else v
        if is_main():
            out[k] = t.cpu().clone() if isinstance(t, torch.Tensor) else t
    return out


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with every tensor whole, on rank 0 (the other ranks get {}); the state dict itself when
    not distributed. Collective."""
    if not is_distributed():
        return model.state_dict()
    return _gathered(model.state_dict())


def full_optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """`opt.state_dict()` (integer parameter ids, as one process saves it) with every state tensor whole, on rank
    0 ({} elsewhere); the state dict itself when not distributed. Collective."""
    sd = opt.state_dict()
    if not is_distributed():
        return sd
    state = {i: _gathered(sd["state"][i]) for i in sorted(sd["state"])}
    return {"state": state, "param_groups": sd["param_groups"]} if is_main() else {}


def load_optimizer_state(opt: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    """Load a full optimizer state (`full_optimizer_state`, or one process's `state_dict()`) into an optimizer over
    sharded parameters: each state tensor shaped like its parameter is cut into this rank's shard (every rank holds
    `sd`; no communication). `opt.load_state_dict(sd)` when not distributed."""
    if not is_distributed():
        opt.load_state_dict(sd)
        return
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in opt.param_groups for p in group["params"]]

    def shard_like(v: Any, p: torch.Tensor) -> Any:
        if is_sharded(p) and isinstance(v, torch.Tensor) and v.shape == p.shape:
            return distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
        return v

    state = {i: {k: shard_like(v, params[int(i)]) for k, v in s.items()} for i, s in sd["state"].items()}
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def rank_part(state: dict[str, Any], key: str) -> Any:
    """This rank's `key` ("rng", "methods") in a checkpoint: from `state["ranks"][rank]` when the run that wrote it
    had this rank, else the top level (rank 0's, also what one process writes) on rank 0, else None (a rank the
    saving run did not have starts from its own seed)."""
    ranks = state.get("ranks") or []
    if rank() < len(ranks):
        return ranks[rank()][key]
    return state[key] if rank() == 0 else None
