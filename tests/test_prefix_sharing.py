"""The native sampler prefills each distinct prompt once and copies its keys and values to the prompt's n rows
(`KVCache.select_rows`): the completions and log-probs are those of prefilling every row."""

import pytest
import torch

from credo.models.tiny import TinyConfig, TinyLM
from credo.rollout import sampler
from credo.rollout.backend import SamplingParams


@pytest.fixture(scope="module")
def model() -> TinyLM:
    torch.manual_seed(0)
    cfg = TinyConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=256, n_kv_heads=2,
                     mlp="swiglu")
    return TinyLM(cfg).eval()


def _generate(model: TinyLM, prompts: list[list[int]], params: SamplingParams, share: bool,
              monkeypatch: pytest.MonkeyPatch) -> list[sampler.Decoded]:
    with monkeypatch.context() as m:
        if not share:
            m.setattr(sampler, "_shared_prefill", sampler._prefill)
        g = torch.Generator().manual_seed(3)
        return sampler.generate(model, prompts, params, eos_id=[], pad_id=0, generator=g)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prefill_equals_per_row_prefill(model: TinyLM, temperature: float,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # three prompts of different lengths (left padding), repeated 4, 3 and 2 times; 80 new tokens grow the
    # copied cache past its first block
    prompts = [[1, 2, 3, 4, 5]] * 4 + [[7, 8]] * 3 + [[9, 10, 11]] * 2
    params = SamplingParams(80, temperature=temperature)
    shared = _generate(model, prompts, params, True, monkeypatch)
    plain = _generate(model, prompts, params, False, monkeypatch)
    assert [len(d.completion_ids) for d in shared] == [80] * len(prompts)
    for a, b in zip(shared, plain, strict=True):
        assert torch.equal(a.completion_ids, b.completion_ids)
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-6, rtol=0)
    if temperature > 0:  # sampled rows of one prompt differ from each other: the copies are independent
        assert not torch.equal(shared[0].completion_ids, shared[1].completion_ids)


def test_select_rows_copies_and_repeats(model: TinyLM) -> None:
    cache = model.new_cache(2, 40)
    ids = torch.tensor([[0, 3, 4], [5, 6, 7]])
    model.step(ids, cache, torch.tensor([[False, True, True], [True, True, True]]))
    index = torch.tensor([1, 0, 1])
    copy = cache.select_rows(index)
    assert copy.k.shape[1] == 3 and copy.length == cache.length and copy.max_len == cache.max_len
    assert torch.equal(copy.k, cache.k[:, index]) and torch.equal(copy.v, cache.v[:, index])
    assert torch.equal(copy.key_valid, cache.key_valid[index]) and torch.equal(copy.next_pos, cache.next_pos[index])
    model.step(torch.tensor([[1], [2], [3]]), copy)  # the copy grows on its own buffers
    assert cache.length == 3 and copy.length == 4
