import pytest
import torch

torch.set_num_threads(2)

# A run small enough for tests: a 2-layer 32-wide TinyLM, a few prompts, a few steps.
TINY = [
    "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.d_ff=64", "model.max_len=96", "env.width=1",
    "env.n_sft=200", "env.n_train=64", "env.n_test=8", "env.sft_depths=[1]", "env.rl_depths=[1]",
    "sft.steps=10", "sft.batch_size=16", "sft.warmup=2",
    "rl.steps=2", "rl.prompts_per_step=4", "rl.group_size=4", "rl.max_new_tokens=24", "rl.minibatches=2",
    "eval.n_samples=2", "eval.pass_k=[1,2]", "eval.every=100", "run.progress=false", "run.checkpoint_every=1",
]


@pytest.fixture
def tiny_overrides(tmp_path):
    return [*TINY, f"run.out_dir={tmp_path}"]


@pytest.fixture
def load_script():
    """`load_script("name")`: the module scripts/name.py, loaded from its file (scripts/ is not a package)."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" /
                                                      f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
