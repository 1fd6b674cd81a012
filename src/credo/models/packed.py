"""Linear layers of a CPU decoding engine on prepacked copies of its weights (MKL's or oneDNN's packing).

A plain `F.linear` on a CPU lays the weight out for its matmul kernel on every call. At decoding's few rows per
step that repacking costs as much as the product itself. Two packings that PyTorch's own compiler emits for float32
linears (inductor's CPU weight prepacking under freezing), the same idea as vLLM's and IPEX's CPU linears:
- MKL's packed GEMM (`MklPackedLinears`: `torch.ops.mkl._mkl_reorder_linear_weight` / `_mkl_linear`), laid out for
  one row count and laid out again in place when a decoding batch loses its finished rows. On the project's 2-core
  AVX-512 Xeon, at 64 rows, [64, 576] × [576, 3072] ran at 368 GFLOP/s against 332 on oneDNN's packing and 251
  plain, [64, 1536] × [1536, 576] at 370 / 286 / 292, the SmolLM2 head [64, 576] × [576, 49152] at 300 / 259 / 211
  (hot weights, session 24), and a 64-row × ≤ 64-token SmolLM2-135M rollout with EOS took 6.97 s against 7.89 s on
  oneDNN's packing. The default on Intel CPUs (`float32_kernel`).
- oneDNN's (`PackedLinears`: `torch.ops.mkldnn._reorder_linear_weight` / `_linear_pointwise`), one layout for any
  row count: the default elsewhere (measured on a 2-core AMD EPYC, where MKL's packing has not been; sessions 18-22
  read ~2x over plain products at 64 rows there, `benchmarks/packed_linear.py`).

The native engine packs its weights at the first generation call that gains the packing back and keeps the copies
for later calls until its weights change (`sync_weights`, after each update) or are freed (`sleep`, before each
update): `rollout.native.NativeGenerator`, as vLLM keeps its weights laid out for its kernels. The copies cost the
engine's float32 linear and head weights once more (0.54 GB for SmolLM2-135M) while the engine is awake, none during
the update (the RL step of `benchmarks/real_model.py` peaked at 3.51 GB with oneDNN packing, 3.33 GB with
`rollout.pack_weights=false`, session 18). Keeping them matters more than the packing's ~0.13 s for SmolLM2-135M:
each fresh copy is over 0.5 GB of newly touched memory, and in this project's VM first touches of memory another
program freed a while before cost ~2 s of kernel time per call (pages zeroed, `perf`: `clear_page_erms` under
MKL's packing); a 64 × 64-token rollout right after an HF `generate` took 8.3-8.8 s packing afresh (2.2-2.5 s of
kernel time) and 6.8-7.0 s on kept copies (0.4 s; session 25, the 2-core Xeon). A call too short to gain a fresh
packing back (`worth_packing`) decodes plainly, or on copies already kept; `rollout.pack_weights = false` turns
packing off. Float32 weights are packed, and bfloat16 ones as float32 copies on a CPU without bfloat16 dot products
(below; oneDNN refuses bfloat16 packing here); for other weights `pack` returns None and the engine keeps
`DenseLinears`. Kept copies serve a later call only as fresh ones would (`PackedLinears.for_call`: the same layout,
no weight written since), so a call decodes the same whatever calls came before it.

bfloat16 weights on an x86 CPU without bfloat16 dot products (no AVX-512 BF16, no AMX) go through
`Bf16OnFp32Linears`: PyTorch's bfloat16 products there convert to float32 inside the kernel and run ~8x slower than
float32 ones (a 2-core AVX2 EPYC: 15-18 GFLOP/s against 113-120 packed at decoding's 64 rows, session 18). The weights
are packed as float32 copies of their bfloat16 values, the bfloat16 activations widened exactly, and each product's
float32 sum rounded to bfloat16 once: the arithmetic of a bfloat16 matmul with float32 accumulation (what oneDNN's
kernel does), so results match the plain bfloat16 product up to summation order (within one bfloat16 rounding step).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

MIN_DECODE_STEPS = 16  # a call allowed fewer new tokens than this is not packed afresh (`worth_packing`)
MIN_ROWS = 8  # nor a call of fewer rows: at 1 row packed products gain little or lose (`benchmarks/packed_linear.py`)


class DenseLinears:
    """The plain products a decoding step uses (`F.linear`, `torch.addmm`, `torch.bmm`, `torch.baddbmm`): the
    default, on any device."""

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., in] @ weight[out, in].T + bias → [..., out]."""
        return F.linear(x, weight, bias)

    def residual(self, res: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """res [B, out] + x [B, in] @ weight[out, in].T, in one kernel."""
        return torch.addmm(res, x, weight.t())

    def for_rows(self, rows: int) -> DenseLinears:
        """The products for a decoding step of `rows` rows: this object (only `MklPackedLinears`, whose copies
        serve one row count, repacks here)."""
        return self

    def bmm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Batched product of activations a [n, i, k] @ b [n, k, j] (attention, RoPE)."""
        return torch.bmm(a, b)

    def baddbmm(self, bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
        """bias + alpha · a @ b, batched, in one kernel (attention scores)."""
        return torch.baddbmm(bias, a, b, alpha=alpha)


DENSE = DenseLinears()


def _versions(weights: Iterable[torch.Tensor]) -> dict[int, int]:
    """Each tensor's in-place write counter (`Tensor._version`) by `id`; -1 for an inference tensor (made under
    `torch.inference_mode`), which has none (its writes go unseen)."""
    return {id(w): -1 if w.is_inference() else w._version for w in weights}


class PackedLinears(DenseLinears):
    """`DenseLinears` on oneDNN-packed copies of `weights` (each [out, in], float32, CPU); a weight not among them
    falls back to the plain product. Build with `pack`. `batch_hint`: the rows per product the packing is laid out
    for (any number of rows gives the same result)."""

    def __init__(self, weights: Iterable[torch.Tensor], batch_hint: int) -> None:
        weights = list(weights)
        self.batch_hint, self._versions = batch_hint, _versions(weights)
        with torch.no_grad():  # weights are held by reference: `id` stays theirs while this object lives
            # packed in float32 (`.float()` is the tensor itself for float32 weights; bfloat16 ones, for
            # `Bf16OnFp32Linears`, are widened exactly)
            self._packed = {id(w): (w, torch.ops.mkldnn._reorder_linear_weight(w.detach().float(), batch_hint))
                            for w in weights}

    def current(self) -> bool:
        """Whether no weight was written in place since it was packed (PyTorch's version counter of each tensor;
        a weight replaced by assignment to `.data` is not seen: drop the copies then, as `sync_weights` does)."""
        return _versions(entry[0] for entry in self._packed.values()) == self._versions

    def for_call(self, rows: int) -> PackedLinears | None:
        """These copies for a generation call of `rows` rows when they are what `pack(weights, batch_hint=rows)`
        would make now, so a call's products never depend on earlier calls (a resumed run decodes as an
        uninterrupted one); None when they are not (a weight written since, or another batch hint: oneDNN may
        lay the weights out by the hint)."""
        return self if rows == self.batch_hint and self.current() else None

    def _get(self, weight: torch.Tensor) -> torch.Tensor | None:
        entry = self._packed.get(id(weight))
        return None if entry is None else entry[1]

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        packed = self._get(weight)
        if packed is None:
            return super().linear(x, weight, bias)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    def residual(self, res: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        packed = self._get(weight)
        if packed is None:
            return super().residual(res, x, weight)
        return torch.ops.mkldnn._linear_pointwise.binary(x, res, packed, None, "add")


class MklPackedLinears(PackedLinears):
    """`PackedLinears` on MKL's packed GEMM (`cblas_sgemm_pack` / `cblas_sgemm_compute`, through
    `torch.ops.mkl._mkl_reorder_linear_weight` / `_mkl_linear`: the pair inductor's weight prepacking emits for
    float32 linears on CPUs with MKL). MKL lays a copy out for one row count: a product of exactly `rows` rows runs
    on it, any other count runs the plain product (`F.linear`; the two agree within float32 summation order). The
    copies are made and laid out again by `_MklPacker`. `for_rows` lays them out for a decoding batch's new row
    count (finished rows leave the batch: `rollout.sampler`) in place, in the buffers of the first packing (MKL's
    packed size does not depend on the row count here; a buffer too small is replaced), so a repack takes no new
    memory (fresh buffers at each row count grew the RL step's peak RSS by ~0.6 GB: glibc does not reuse freed
    buffers of huge-page alignment for them); below MIN_ROWS rows it keeps the old layout (plain products).
    Float32 weights only. `repacks`: how many times the copies were laid out, the first included."""

    def __init__(self, weights: Iterable[torch.Tensor], batch_hint: int) -> None:
        self._weights = {id(w): w for w in weights}  # by reference: each `id` stays its own while this object lives
        self._packed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.batch_hint, self._versions = batch_hint, _versions(self._weights.values())
        self.rows, self.repacks = 0, 0
        self._pack(batch_hint)

    def _pack(self, rows: int) -> None:
        packer = _mkl_packer()
        assert packer is not None, "MklPackedLinears without MKL's packer (`pack` checks)"
        self.rows = 0  # no product runs packed while the copies are half laid out (an exception leaves them so)
        with torch.no_grad():
            for key, w in self._weights.items():
                if key not in self._packed or not packer.repack(w, self._packed[key][1], rows):
                    self._packed.pop(key, None)  # the old copy (if any) goes before the new one is made
                    self._packed[key] = (w, packer.pack(w, rows))
        self.rows, self.repacks = rows, self.repacks + 1

    def for_rows(self, rows: int) -> DenseLinears:
        if rows != self.rows and rows >= MIN_ROWS:
            self._pack(rows)
        return self

    def for_call(self, rows: int) -> PackedLinears | None:
        """Laid out again for `rows` rows in place (a kept copy is laid out for the last call's last row count),
        as `pack(weights, batch_hint=rows)` lays out fresh ones; None when a weight was written since."""
        if not self.current():
            return None
        if rows != self.rows:
            self._pack(rows)
        return self

    def _get_for(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
        """The packed copy of `weight` when x [..., in] has the rows it was laid out for, else None."""
        return self._get(weight) if x.numel() == self.rows * x.shape[-1] else None

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        packed = self._get_for(x, weight)
        if packed is None:
            return F.linear(x, weight, bias)
        return torch.ops.mkl._mkl_linear(x, packed, weight, bias, self.rows)

    def residual(self, res: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        packed = self._get_for(x, weight)
        if packed is None:
            return torch.addmm(res, x, weight.t())
        return torch.ops.mkl._mkl_linear(x, packed, weight, None, self.rows).add_(res)


class Bf16OnFp32Linears(PackedLinears):
    """`PackedLinears` for bfloat16 weights on a CPU without bfloat16 dot products (module docstring): float32
    packed copies of the weights' bfloat16 values; inputs widened, each result rounded to the input's dtype once.
    A weight not among them falls back to the plain bfloat16 product. The activation products (`bmm`, `baddbmm`:
    attention, RoPE) are widened and rounded the same way."""

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        packed = self._get(weight)
        if packed is None:
            return F.linear(x, weight, bias)
        b = None if bias is None else bias.float()
        return torch.ops.mkldnn._linear_pointwise(x.float(), packed, b, "none", [], "").to(x.dtype)

    def residual(self, res: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        packed = self._get(weight)
        if packed is None:
            return torch.addmm(res, x, weight.t())
        out = torch.ops.mkldnn._linear_pointwise.binary(x.float(), res.float(), packed, None, "add")
        return out.to(res.dtype)

    def bmm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.bmm(a.float(), b.float()).to(a.dtype)

    def baddbmm(self, bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
        return torch.baddbmm(bias.float(), a.float(), b.float(), alpha=alpha).to(a.dtype)


@functools.cache
def bf16_dot_products() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions PyTorch uses (AVX-512 BF16 or AMX tiles); False
    on other x86 CPUs. Non-x86 CPUs count as having them (their bfloat16 path is left as it is)."""
    cpu = torch.cpu
    if not getattr(cpu, "_is_avx2_supported", lambda: False)():
        return True
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


@functools.cache
def _onednn_packs_float32() -> bool:
    """PyTorch is built with oneDNN and a trial float32 pack succeeds (checked once per process)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8), 8)
    except (RuntimeError, AttributeError):
        return False
    return True


def can_pack(weight: torch.Tensor) -> bool:
    """Whether oneDNN packs `weight` here: a float32 CPU tensor, and this PyTorch packs float32 with oneDNN."""
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and _onednn_packs_float32()


def worth_packing(rows: int, new_tokens: int) -> bool:
    """Whether a generation call of `rows` rows × up to `new_tokens` new tokens packs the weights afresh (copies
    kept from an earlier call serve any call of MIN_ROWS rows, `rollout.native`): at least MIN_ROWS rows
    and MIN_DECODE_STEPS tokens allowed (the packing costs ~3 decoding steps of a 64-row batch; at 8 rows packed
    products run 1.6–2.9× faster, at 1 row some run slower). A call that ends early (EOS, stop strings) may not
    gain it back."""
    return rows >= MIN_ROWS and new_tokens >= MIN_DECODE_STEPS


def emulates_bf16(weight: torch.Tensor) -> bool:
    """Whether `weight` is packed as float32 for `Bf16OnFp32Linears`: a bfloat16 CPU tensor on a CPU without
    bfloat16 dot products (`bf16_dot_products`), where oneDNN packs float32."""
    return (weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and not bf16_dot_products()
            and _onednn_packs_float32())


CBLAS_ROW_MAJOR, CBLAS_TRANS, CBLAS_B_MATRIX = 101, 112, 162  # mkl_cblas.h


class _MklPacker:
    """Weights packed for MKL's packed GEMM: first by PyTorch (`torch.ops.mkl._mkl_reorder_linear_weight`, a oneDNN
    tensor that `torch.ops.mkl._mkl_linear` multiplies by `cblas_sgemm_compute`; a dense tensor it would multiply
    plainly), then laid out again for another row count in place, by MKL's `cblas_sgemm_pack` as PyTorch's own
    library exports it (ctypes), called as PyTorch calls it (row-major; B = weightᵀ, leading dimension K) on the
    tensor's buffer (`torch.ops.mkldnn.data_ptr`)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        c_int = ctypes.c_int
        self._size, self._pack = lib.cblas_sgemm_pack_get_size, lib.cblas_sgemm_pack
        self._size.restype, self._size.argtypes = ctypes.c_size_t, [c_int] * 4
        self._pack.restype = None
        self._pack.argtypes = [c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, c_int, ctypes.c_void_p]

    @staticmethod
    def pack(weight: torch.Tensor, rows: int) -> torch.Tensor:
        """float32 `weight` [N, K] packed for products of `rows` rows (a new oneDNN tensor)."""
        return torch.ops.mkl._mkl_reorder_linear_weight(weight.detach(), rows)

    def repack(self, weight: torch.Tensor, packed: torch.Tensor, rows: int) -> bool:
        """Lay `weight` out again in `packed` (from `pack`, the same weight) for products of `rows` rows, in place;
        False (nothing written) when the buffer is too small for that row count."""
        w = weight.detach().contiguous()
        N, K = w.shape
        if torch.ops.mkldnn._nbytes(packed) < self._size(CBLAS_B_MATRIX, rows, N, K):
            return False
        self._pack(CBLAS_ROW_MAJOR, CBLAS_B_MATRIX, CBLAS_TRANS, rows, N, K, 1.0, w.data_ptr(), K,
                   torch.ops.mkldnn.data_ptr(packed))
        return True


@functools.cache
def _mkl_packer() -> _MklPacker | None:
    """The packer, where PyTorch has MKL, its library exports the two functions and a trial weight packed by PyTorch
    for one row count, then another weight of its shape repacked in place for another row count, gives
    `torch.ops.mkl._mkl_linear` the plain products of each (within 1e-4; checked once per process: a repack that
    wrote nothing would leave the first weight's products); else None."""
    if not torch.backends.mkl.is_available():
        return None
    try:
        packer = _MklPacker(ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")))
        g = torch.Generator().manual_seed(0)
        w = torch.randn(96, 80, generator=g)
        packed = packer.pack(w, 24)
        for rows in (24, 9):
            if rows != 24:
                w = torch.randn(96, 80, generator=g)
                if not packer.repack(w, packed, rows):
                    return None
            x = torch.randn(rows, 80, generator=g)
            if not torch.allclose(torch.ops.mkl._mkl_linear(x, packed, w, None, rows), F.linear(x, w), rtol=1e-4,
                                  atol=1e-4):
                return None
    except (OSError, AttributeError, RuntimeError):
        return None
    return packer


@functools.cache
def intel_cpu() -> bool:
    """Whether /proc/cpuinfo names an Intel CPU (False where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("vendor_id") and "GenuineIntel" in line for line in f)
    except OSError:
        return False


def float32_kernel() -> str:
    """The packing `pack(kernel="auto")` uses for float32 weights here: "mkl" on an Intel CPU whose PyTorch has
    MKL's packed GEMM (on the project's 2-core Xeon it ran decoding's products 10-40% faster than oneDNN's packed
    ones, and a 64 × 64-token SmolLM2-135M rollout 1.17x faster: `benchmarks/packed_linear.py`), else "onednn"
    (also measured on a 2-core AMD EPYC, where MKL's has not been)."""
    return "mkl" if intel_cpu() and _mkl_packer() is not None else "onednn"


def pack(weights: Iterable[torch.Tensor], batch_hint: int, kernel: str = "auto") -> PackedLinears | None:
    """Packed products over `weights`: float32 ones (`can_pack`) packed by `kernel` ("mkl": `MklPackedLinears`,
    laid out for `batch_hint` rows; "onednn": `PackedLinears`; "auto": `float32_kernel()`), bfloat16 ones on a CPU
    without bfloat16 dot products as `Bf16OnFp32Linears` (`emulates_bf16`); None when some of them can be packed
    neither way. Raises ValueError for an unknown kernel, or "mkl" where this PyTorch lacks MKL's packed GEMM."""
    if kernel not in ("auto", "mkl", "onednn"):
        raise ValueError(f"kernel={kernel!r}: expected 'auto', 'mkl' or 'onednn'")
    if kernel == "mkl" and _mkl_packer() is None:
        raise ValueError("kernel='mkl': this PyTorch has no usable MKL packed GEMM (`_mkl_packer`)")
    weights = list(weights)
    if weights and all(map(can_pack, weights)):
        cls = MklPackedLinears if (float32_kernel() if kernel == "auto" else kernel) == "mkl" else PackedLinears
        return cls(weights, batch_hint)
    if weights and all(map(emulates_bf16, weights)):
        return Bf16OnFp32Linears(weights, batch_hint)
    return None


__all__ = ["DENSE", "MIN_DECODE_STEPS", "MIN_ROWS", "Bf16OnFp32Linears", "DenseLinears",
           "MklPackedLinears", "PackedLinears", "bf16_dot_products", "can_pack", "emulates_bf16", "float32_kernel",
           "intel_cpu", "pack", "worth_packing"]
