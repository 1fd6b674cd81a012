"""Selective Sample Replay: core maths on hand-computed cases, the replay buffer, and the per-step selection."""

import io

import pytest
import torch

from credo.core.selection import nonzero_samples, replay_fill, replay_probs, ssr_probs, ssr_sample
from credo.data import Sample
from credo.trainer.config import ConfigError, RLConfig, load_config
from credo.trainer.replay import ReplayBuffer, make_replay_buffer, ssr_select


def _sample(k: int, group: int = 0) -> Sample:
    """A tiny sample whose completion token and log-prob encode ``k`` (to recognise it after a draw)."""
    return Sample(
        example_id=f"e{k}", group_id=group, prompt_ids=torch.tensor([1, 2]), completion_ids=torch.tensor([k]),
        loss_mask=torch.ones(1), segment_ids=torch.ones(1, dtype=torch.long),
        sampler_logprobs=torch.tensor([-0.1 * k]), finish_reason="stop", reward=float(k),
    )


# ---- core ----------------------------------------------------------------------------------------------------


def test_nonzero_samples_is_sample_level():
    # 1e-9 is below the 1e-8 threshold; index 1 is dropped although its group (with index 0) is informative
    adv = torch.tensor([0.5, 0.0, -1.5, 1e-9, 2.0])
    assert nonzero_samples(adv).tolist() == [0, 2, 4]
    assert nonzero_samples(torch.zeros(3)).numel() == 0


def test_ssr_probs_hand_case():
    adv = torch.tensor([0.5, 0.0, -1.5, 1e-9, 2.0])
    # α = 1: |A| = 0.5, 1.5, 2.0 over the effective samples, sum 4 → 1/8, 3/8, 1/2
    assert ssr_probs(adv, 1.0).tolist() == [0.125, 0.0, 0.375, 0.0, 0.5]
    # α = 2: 0.25, 2.25, 4 over a sum of 6.5
    assert torch.allclose(ssr_probs(adv, 2.0), torch.tensor([0.25, 0, 2.25, 0, 4], dtype=torch.float64) / 6.5)
    # α = 0: uniform over the three effective samples (zeros stay at 0, not 0^0 = 1)
    assert torch.allclose(ssr_probs(adv, 0.0), torch.tensor([1, 0, 1, 0, 1], dtype=torch.float64) / 3)
    assert ssr_probs(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def test_ssr_sample_draws_only_effective_and_alpha0_uniform():
    adv = torch.tensor([0.0, 3.0, 0.0, -0.01])
    g = torch.Generator().manual_seed(0)
    idx = ssr_sample(adv, 4000, alpha=0.0, generator=g)
    assert set(idx.tolist()) == {1, 3} and idx.tolist() == sorted(idx.tolist())
    share = (idx == 1).float().mean().item()
    assert abs(share - 0.5) < 0.03  # α = 0 ignores the 300x difference in |A|


def test_ssr_sample_frequencies_follow_abs_adv():
    # P = 1/8, 3/8, 1/2 (see the hand case); 20 000 draws: std of a share ≤ 0.0036, tolerance 0.015 is > 4σ
    adv = torch.tensor([0.5, 0.0, -1.5, 1e-9, 2.0])
    idx = ssr_sample(adv, 20_000, alpha=1.0, generator=torch.Generator().manual_seed(1234))
    freq = torch.bincount(idx, minlength=5).double() / 20_000
    assert freq[1] == 0 and freq[3] == 0
    assert torch.allclose(freq, torch.tensor([0.125, 0, 0.375, 0, 0.5], dtype=torch.float64), atol=0.015)


def test_ssr_sample_deterministic_under_seed():
    adv = torch.tensor([0.3, -0.7, 0.0, 1.1, -0.2, 0.0])
    a = ssr_sample(adv, 8, generator=torch.Generator().manual_seed(7))
    b = ssr_sample(adv, 8, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.dtype == torch.long and a.numel() == 8


def test_ssr_sample_without_replacement():
    adv = torch.tensor([0.3, -0.7, 0.0, 1.1])
    idx = ssr_sample(adv, 3, replacement=False, generator=torch.Generator().manual_seed(0))
    assert idx.tolist() == [0, 1, 3]  # three distinct draws from three effective samples: all of them
    with pytest.raises(ValueError, match="distinct"):
        ssr_sample(adv, 4, replacement=False)
    with pytest.raises(ValueError, match="non-zero"):
        ssr_sample(torch.zeros(3), 1)
    assert ssr_sample(torch.zeros(3), 0).numel() == 0


def test_replay_probs_hand_case():
    # (|A| + ε) with ε = 0.5: 1, 2, 1.5 over 4.5 → 2/9, 4/9, 1/3
    p = replay_probs(torch.tensor([0.5, -1.5, 1.0]), eps=0.5)
    assert torch.allclose(p, torch.tensor([2 / 9, 4 / 9, 1 / 3], dtype=torch.float64))
    # released ε = 1e-4: 0.5001, 1.5001, 1.0001 over 3.0003
    p = replay_probs(torch.tensor([0.5, -1.5, 1.0]))
    assert torch.allclose(p, torch.tensor([0.5001, 1.5001, 1.0001], dtype=torch.float64) / 3.0003)


def test_replay_fill_full_passes_then_weighted():
    adv = torch.tensor([0.5, -1.5, 1.0, 2.0])
    g = torch.Generator().manual_seed(0)
    idx = replay_fill(adv, 10, generator=g)  # 10 > 4: two full passes (8), then 2 drawn
    assert idx.numel() == 10 and idx[:8].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    idx = replay_fill(adv, 8, generator=g)  # 8 = 2·4: the released `while n > N` takes one pass, then draws 4
    assert idx.numel() == 8 and idx[:4].tolist() == [0, 1, 2, 3]
    assert replay_fill(adv, 3, generator=g).numel() == 3
    assert replay_fill(torch.zeros(0), 5).numel() == 0  # empty history: nothing (no endless loop)
    assert replay_fill(adv, 0).numel() == 0


# ---- the buffer ----------------------------------------------------------------------------------------------


def test_buffer_fifo_eviction():
    buf = ReplayBuffer(capacity=3)
    buf.add([_sample(1), _sample(2)], torch.tensor([0.1, -0.2]))
    buf.add([_sample(3), _sample(4)], torch.tensor([0.3, -0.4]))
    assert len(buf) == 3
    assert torch.allclose(buf.advantages(), torch.tensor([-0.2, 0.3, -0.4], dtype=torch.float64))
    with pytest.raises(ValueError):
        buf.add([_sample(5)], torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError):
        ReplayBuffer(0)


def test_buffer_draw_weights_and_returns_originals():
    buf = ReplayBuffer(capacity=4, eps=0.0)
    buf.add([_sample(1), _sample(2)], torch.tensor([1.0, -3.0]))
    g = torch.Generator().manual_seed(3)
    # n ≤ N: a weighted draw with P = 1/4, 3/4; 2000 calls of 2 draws, std of the share ≈ 0.007, tolerance 0.03
    ks = torch.tensor([int(s.completion_ids[0]) for _ in range(2000) for s in buf.draw(2, g)[0]])
    assert abs((ks == 2).float().mean().item() - 0.75) < 0.03
    # n > N: 5 = two full passes + 1 drawn
    samples, adv = buf.draw(5, g)
    assert [int(s.completion_ids[0]) for s in samples[:4]] == [1, 2, 1, 2] and adv.dtype == torch.float32
    assert adv[:4].tolist() == [1.0, -3.0, 1.0, -3.0]
    # off-policy replay keeps the generating step's sampler log-probs
    assert all(torch.equal(s.sampler_logprobs, torch.tensor([-0.1 * int(s.completion_ids[0])])) for s in samples)
    assert ReplayBuffer(3).draw(4, g)[0] == []


def test_buffer_state_dict_round_trip_gives_identical_draws():
    buf = ReplayBuffer(capacity=5, eps=1e-4)
    buf.add([_sample(k, group=k) for k in range(1, 8)], torch.tensor([0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7]))
    blob = io.BytesIO()
    torch.save(buf.state_dict(), blob)
    blob.seek(0)
    restored = ReplayBuffer(capacity=1)
    restored.load_state_dict(torch.load(blob, weights_only=True))
    assert restored.capacity == 5 and len(restored) == 5
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for n in (3, 7, 12):
        s1, a1 = buf.draw(n, g1)
        s2, a2 = restored.draw(n, g2)
        assert torch.equal(a1, a2)
        assert [(x.example_id, x.group_id, x.completion_ids.tolist()) for x in s1] == [
            (x.example_id, x.group_id, x.completion_ids.tolist()) for x in s2
        ]
    # FIFO continues identically after the reload
    buf.add([_sample(9)], torch.tensor([0.9]))
    restored.add([_sample(9)], torch.tensor([0.9]))
    assert torch.equal(buf.advantages(), restored.advantages())


def test_make_replay_buffer_defaults_to_half_the_rollout_batch():
    assert make_replay_buffer(RLConfig()).capacity == 16 * 8 // 2
    assert make_replay_buffer(RLConfig(ssr_buffer=10, ssr_eps=0.5)).eps == 0.5
    assert make_replay_buffer(RLConfig(ssr_buffer=10)).capacity == 10


# ---- ssr_select ----------------------------------------------------------------------------------------------


def test_ssr_select_no_replay_when_enough_effective():
    # 4 groups of 2; groups 0 and 2 informative → 4 effective samples, size = 8 // 2 = 4: all drawn from this batch
    samples = [_sample(k, group=k // 2) for k in range(8)]
    adv = torch.tensor([1.0, -1.0, 0.0, 0.0, 0.5, -0.5, 0.0, 0.0])
    buf = ReplayBuffer(capacity=4)
    kept, kept_adv, m = ssr_select(samples, adv, buf, RLConfig(ssr=True), torch.Generator().manual_seed(0))
    assert len(kept) == 4 and kept_adv.shape == (4,)
    assert {int(s.completion_ids[0]) for s in kept} <= {0, 1, 4, 5}
    assert all(adv[int(s.completion_ids[0])] == a for s, a in zip(kept, kept_adv, strict=True))
    assert m == {"ssr/effective_share_before": 0.5, "ssr/effective_share_after": 1.0, "ssr/replayed": 0.0,
                 "ssr/buffer_size": 4.0, "ssr/batch_size": 4.0}


def test_ssr_select_tops_up_from_buffer():
    buf = ReplayBuffer(capacity=6)
    old = [_sample(k, group=100 + k) for k in (20, 21, 22)]
    buf.add(old, torch.tensor([0.2, -0.2, 0.9]))
    # one informative group (2 effective samples) out of 4; size 4 → 2 from this batch + 2 replayed
    samples = [_sample(k, group=k // 2) for k in range(8)]
    adv = torch.tensor([0.0, 0.0, 0.7, -0.7, 0.0, 0.0, 0.0, 0.0])
    kept, kept_adv, m = ssr_select(samples, adv, buf, RLConfig(ssr=True), torch.Generator().manual_seed(0))
    assert m["ssr/effective_share_before"] == 0.25 and m["ssr/replayed"] == 2.0
    assert m["ssr/buffer_size"] == 5.0 and m["ssr/batch_size"] == 4.0 and m["ssr/effective_share_after"] == 1.0
    assert {int(s.completion_ids[0]) for s in kept[:2]} <= {2, 3}
    assert {int(s.completion_ids[0]) for s in kept[2:]} <= {2, 3, 20, 21, 22}  # the history includes this step
    assert (kept_adv.abs() > 0).all()


def test_ssr_select_batch_frac_and_empty():
    samples = [_sample(k, group=k // 2) for k in range(8)]
    buf = ReplayBuffer(capacity=4)
    # nothing effective and an empty buffer: an empty selection (the loop skips the update)
    kept, kept_adv, m = ssr_select(samples, torch.zeros(8), buf, RLConfig(ssr=True))
    assert kept == [] and kept_adv.numel() == 0 and m["ssr/effective_share_after"] == 0.0
    # ssr_batch_frac = 1 keeps the batch size: 2 effective + 6 replayed (the history holds only those 2)
    adv = torch.tensor([0.0, 0.0, 0.7, -0.7, 0.0, 0.0, 0.0, 0.0])
    cfg = RLConfig(ssr=True, ssr_batch_frac=1.0)
    kept, kept_adv, m = ssr_select(samples, adv, buf, cfg, torch.Generator().manual_seed(0))
    assert len(kept) == 8 and m["ssr/replayed"] == 6.0 and m["ssr/buffer_size"] == 2.0


def test_ssr_select_deterministic_under_seed():
    samples = [_sample(k, group=k // 4) for k in range(16)]
    adv = torch.linspace(-1, 1, 16)
    runs = []
    for _ in range(2):
        buf = ReplayBuffer(capacity=8)
        g = torch.Generator().manual_seed(5)
        out = [ssr_select(samples, adv * (step + 1) % 0.7, buf, RLConfig(ssr=True), g) for step in range(3)]
        runs.append([([s.example_id for s in k], a.tolist()) for k, a, _ in out])
    assert runs[0] == runs[1]


def test_config_switches():
    cfg = load_config(None, ["rl.ssr=true", "rl.ssr_alpha=2", "rl.ssr_buffer=32"])
    assert cfg.rl.ssr and cfg.rl.ssr_alpha == 2.0 and cfg.rl.ssr_buffer == 32 and cfg.rl.ssr_eps == 1e-4
    with pytest.raises(ConfigError, match="rl.ssr"):
        load_config(None, ["rl.ssr=true", "rl.selection=nonzero"])
    with pytest.raises(ConfigError, match="rl.ssr_alpha"):
        load_config(None, ["rl.ssr_alpha=-1"])
    with pytest.raises(ConfigError, match="rl.ssr_batch_frac"):
        load_config(None, ["rl.ssr_batch_frac=0"])
