"""The frames sandbox: seeded disjoint splits, a total verifier, the asked digit unreadable in the thumbnail grid
and readable in the frame select_frames returns, warm-start tool traces on a configurable share."""

import numpy as np
import pytest
import torch

from credo.envs import make_env
from credo.envs.frames import FramesConfig, FramesEnv, grid_shape
from credo.envs.tools import TOOLS, ToolContext
from credo.models import build_policy
from credo.rollout.multiturn import parse_tool_call, reference_trajectory
from credo.trainer.config import EnvConfig, ModelConfig


def _env(**kw) -> FramesEnv:
    return FramesEnv(FramesConfig(**{"n_sft": 40, "n_train": 40, "n_test": 40, **kw}))


def test_seeded_and_disjoint_splits():
    a, b = _env(), _env()
    for x, y in zip(a.examples("test"), b.examples("test"), strict=True):
        assert x.prompt == y.prompt and np.array_equal(np.asarray(x.images[0]), np.asarray(y.images[0]))
    assert not np.array_equal(np.asarray(a.examples("test")[0].images[0]),
                              np.asarray(_env(seed=1).examples("test")[0].images[0]))
    key = lambda e: (tuple(e.meta["digits"]), e.meta["target"])  # noqa: E731
    test = {key(e) for e in a.examples("test")}
    for split in ("sft", "train"):
        exs = a.examples(split)
        assert {e.id for e in exs}.isdisjoint({e.id for e in a.examples("test")})
        assert not test & {key(e) for e in exs}


def test_forbidden_keys_are_redrawn():
    env = _env(n_frames=2, n_test=150, n_train=30)  # 10*10*2 = 200 keys: train must avoid the test's
    test = {(tuple(e.meta["digits"]), e.meta["target"]) for e in env.examples("test")}
    assert not test & {(tuple(e.meta["digits"]), e.meta["target"]) for e in env.examples("train")}


def test_verifier_is_total():
    env = _env()
    ex = env.examples("test")[0]
    assert env.verify(f"<answer>{ex.reference}</answer>", ex).value == 1.0
    assert env.verify(f"<answer>{(ex.reference + 1) % 10}</answer>", ex).value == 0.0
    for junk in ("", "<answer></answer>", "<answer>x</answer>", "\x00" * 5, "<answer>" * 50, "9" * 500):
        assert env.verify(junk, ex).value in (0.0, 1.0)


def test_digit_unreadable_in_the_grid_readable_in_the_selected_frame():
    env = _env()
    assert grid_shape(6) == (2, 3) and grid_shape(4) == (2, 2) and grid_shape(8) == (3, 3)
    for ex in env.examples("test")[:10]:
        k = ex.meta["target"]
        assert ex.prompt.endswith(f"frame {k}?") and ex.reference == ex.meta["digits"][k - 1]
        view = np.asarray(ex.images[0].resize((48, 48))).mean(-1)  # what the model sees without the tool
        obs = TOOLS["select_frames"]({"target_frames": [k]}, ToolContext(ex.images, ex.meta, image_size=48))
        frame = np.asarray(obs.images[0]).mean(-1)
        assert obs.images[0].size == (48, 48) and np.array_equal(np.asarray(obs.images[0]), ex.meta["frames"][k - 1])
        assert (view < 110).sum() == 0 and (frame < 80).sum() > 30  # strokes survive only at full resolution
        # the digit moves: its position changes from frame to frame
        assert ex.meta["path"][0] != ex.meta["path"][-1]


@pytest.mark.parametrize("frac,lo,hi", [(0.0, 0, 0), (1.0, 200, 200), (0.3, 40, 80)])
def test_tool_traces_on_a_configurable_share(frac, lo, hi):
    env = _env(n_sft=200, sft_tool_frac=frac)
    turns = [env.reference_turns(e) for e in env.examples("sft")]
    n_tool = sum(len(t) == 2 for t in turns)
    assert lo <= n_tool <= hi
    for ex, t in zip(env.examples("sft"), turns, strict=True):
        assert t[-1] == f"<answer>{ex.reference}</answer>"
        if len(t) == 2:
            assert parse_tool_call(t[0]) == ("select_frames", {"target_frames": [ex.meta["target"]]})


def test_registered_and_multiturn_sft_row_holds_the_real_frame():
    env = make_env(EnvConfig(name="frames", n_sft=8, n_train=4, n_test=4, options={"sft_tool_frac": 1.0}))
    assert isinstance(env, FramesEnv) and env.cfg.sft_tool_frac == 1.0
    with pytest.raises(ValueError, match="unknown env.options"):
        make_env(EnvConfig(name="frames", options={"nope": 1}))
    torch.manual_seed(0)
    _, tok = build_policy(ModelConfig(kind="tinyvlm", d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=512,
                                      image_size=16, patch_size=4))
    ex = env.examples("sft")[0]
    row = reference_trajectory(tok, env, ex, env.reference_turns(ex), image_size=16)
    want = TOOLS["select_frames"]({"target_frames": [ex.meta["target"]]}, ToolContext(ex.images, ex.meta, 16))
    assert len(row.images) == 2 and np.array_equal(np.asarray(row.images[1]), np.asarray(want.images[0]))
    assert row.n_tool_calls == 1 and "Here are the selected frames (Frame Size: 16x16" in row.text
