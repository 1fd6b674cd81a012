"""`sft.source = "self"`: the warm start from the model's own correct samples (rejection-sampling fine-tuning)."""

from types import SimpleNamespace

import pytest

pytest.importorskip("reasoning_gym")

from credo.envs import make_env  # noqa: E402
from credo.models.tokenizer import CharTokenizer  # noqa: E402
from credo.rollout import backend, engine  # noqa: E402
from credo.trainer.config import SFTConfig, load_config  # noqa: E402
from credo.trainer.sft import self_completions, sft_rows  # noqa: E402


def _env():
    cfg = load_config(None, ["env.name=reasoning_gym:chain_sum", "env.options.max_terms=2",
                             "env.options.max_digits=1", "env.n_sft=2", "env.n_train=4", "env.n_test=2"])
    return make_env(cfg.env)


def _scripted(texts_of):
    """A rollout that writes `texts_of(example)` (one list per example, of length group_size)."""
    def fake(gen, tok, env, examples, group, params, rng=None, first_group_id=0):
        out = [SimpleNamespace(text=t.removesuffix("~"), finish_reason="length" if t.endswith("~") else "stop")
               for ex in examples for t in texts_of(ex)]
        assert len(out) == group * len(examples)
        return out
    return fake


@pytest.fixture(autouse=True)
def _no_engine(monkeypatch):
    monkeypatch.setattr(backend, "as_generator", lambda policy, tok=None: None)


def test_kept_as_written_when_formatted_else_with_the_reference_answer(monkeypatch):
    env = _env()
    exs = env.examples("sft")
    monkeypatch.setattr(engine, "rollout", _scripted(lambda ex: [  # "~": cut at the length cap
        f"{ex.reference}", f"so <answer>{ex.reference}</answer>", f"{int(ex.reference) + 1}", f" {ex.reference} ",
        f"is {ex.reference}~"]))
    cfg = SFTConfig(source="self", self_samples=5, self_verifier="numeric")
    kept_ex, texts, stats = self_completions(None, None, env, exs, cfg, seed=0)
    # per example: the bare number (kept once: " 12 " strips to a duplicate) + the answer block, and the
    # formatted sample as written; the wrong one and the truncated one dropped
    want = []
    for ex in exs:
        want += [f"{ex.reference}\n<answer>{ex.reference}</answer>", f"so <answer>{ex.reference}</answer>"]
    assert texts == want and [e.id for e in kept_ex] == [ex.id for ex in exs for _ in range(2)]
    assert stats == {"sft/self_samples": 10.0, "sft/self_kept": 4.0, "sft/self_examples": 2.0}
    ids, mask, _ = sft_rows(CharTokenizer(), env, kept_ex, completions=texts)
    assert ids.shape[0] == 4 and all(mask[i].sum() == len(texts[i]) + 1 for i in range(4))  # + EOS


def test_without_a_second_verifier_only_formatted_samples_count(monkeypatch):
    env = _env()
    monkeypatch.setattr(engine, "rollout", _scripted(lambda ex: [f"{ex.reference}", f"{ex.reference}"]))
    with pytest.raises(ValueError, match="none of 4 samples was correct"):
        self_completions(None, None, env, env.examples("sft"), SFTConfig(source="self", self_samples=2), seed=0)
