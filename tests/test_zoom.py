"""The zoom sandbox's options: the reference box (the warm start's call) holds the frame at any precision, "read"
traces whose prompt image is the crop, canvas colours; the held-out canvases do not depend on the warm-start
options."""

import numpy as np
import pytest

from credo.envs import make_env
from credo.envs.tools import crop
from credo.envs.zoom import ZoomConfig, ZoomEnv, reference_box
from credo.trainer.config import EnvConfig


@pytest.mark.parametrize("decimals", [1, 2])
def test_reference_box_holds_the_frame(decimals):
    env = ZoomEnv(ZoomConfig(n_sft=2, n_train=2, n_test=200, box_decimals=decimals))
    for ex in env.examples("test"):
        f, b = ex.meta["frame"], ex.meta["box"]
        assert b[0] <= f[0] and b[1] <= f[1] and b[2] >= f[2] and b[3] >= f[3]
        assert b[2] > b[0] and b[3] > b[1]
        assert all(round(v, decimals) == v for v in b)
        assert b[2] - b[0] <= f[2] - f[0] + 2 / 10**decimals  # outward rounding: at most one step per side
    assert reference_box([0.5, 0.2, 0.6, 0.3], 1) == [0.5, 0.2, 0.6, 0.3]  # exact steps stay put
    assert reference_box([0.513, 0.634, 0.578, 0.721], 2) == [0.51, 0.63, 0.58, 0.73]


def test_read_traces_show_the_crop_and_answer_directly():
    cfg = dict(n_sft=400, n_train=20, n_test=20, read_frac=0.3, read_size=32, sft_tool_frac=1.0)
    env = ZoomEnv(ZoomConfig(**cfg))
    sft = env.examples("sft")
    read = [e for e in sft if e.meta.get("read")]
    assert 0.2 < len(read) / len(sft) < 0.4
    plain = ZoomEnv(ZoomConfig(**{**cfg, "read_frac": 0.0}))
    for ex in read[:5]:
        assert ex.images[0].size == (32, 32)
        canvas = plain.render(ex.meta)  # the same canvas as the example without the option
        assert np.array_equal(np.asarray(ex.images[0]), np.asarray(crop(canvas, ex.meta["box"], 32)))
        assert env.reference_turns(ex) == [f"<answer>{ex.reference}</answer>"]
    tool = next(e for e in sft if not e.meta.get("read"))
    assert env.reference_turns(tool)[0].startswith("<tool_call>")  # sft_tool_frac = 1: the others crop
    for split in ("train", "test"):  # evaluation and RL canvases never change with the warm-start options
        assert not any(e.meta.get("read") for e in env.examples(split))
        for a, b in zip(env.examples(split), plain.examples(split), strict=True):
            assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0])) and a.meta == b.meta


def test_canvas_colours_and_options_from_config():
    env = make_env(EnvConfig(name="zoom", n_sft=4, n_train=4, n_test=4,
                             options={"background": 30, "ink": 230, "noise": 0, "box_decimals": 1}))
    assert isinstance(env, ZoomEnv) and env.cfg.box_decimals == 1
    ex = env.examples("test")[0]
    px = np.asarray(ex.images[0]).reshape(-1, 3)
    assert (px == 30).all(1).mean() > 0.8 and (px == 230).all(1).any()  # dark canvas, light digits
    assert all(round(v, 1) == v for v in ex.meta["box"])
    with pytest.raises(ValueError, match="unknown env.options"):
        make_env(EnvConfig(name="zoom", n_sft=4, n_train=4, n_test=4, options={"nope": 1}))


def test_warm_start_diagnostics_on_a_tiny_vlm():
    import math
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from zoom_diagnostics import warm_start_diagnostics

    from credo.envs.zoom import box_iou
    from credo.models import build_policy
    from credo.trainer.config import ModelConfig

    assert box_iou([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0 and box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert abs(box_iou([0, 0, 2, 1], [1, 0, 3, 1]) - 1 / 3) < 1e-12
    torch.manual_seed(0)
    model, tok = build_policy(ModelConfig(kind="tinyvlm", d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=512,
                                          image_size=16, patch_size=4))
    env = ZoomEnv(ZoomConfig(canvas=64, digit_px=8, n_digits=2, n_sft=2, n_train=2, n_test=3))
    res = warm_start_diagnostics(model, tok, env, env.examples("test"), n_samples=2)
    for key in ("read_after_crop", "read_crop_prompt", "read_direct", "call_rate", "call_iou", "call_holds_frame",
                "acc_after_call"):
        assert 0.0 <= res[key] <= 1.0, key
    assert 1.0 < res["answer_nll_after_crop"] < 5.0 and math.isfinite(res["call_token_nll"])  # untrained: ~ln V
    assert model.training  # restored
