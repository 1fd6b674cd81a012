"""Tools: crop (relative / pixel boxes, padding, minimum size, errors), select_frames, calculator, registry."""

import numpy as np
import pytest
from PIL import Image

from credo.envs.tools import (
    TOOLS,
    Observation,
    ToolContext,
    ToolError,
    calculator,
    crop,
    register_tool,
    select_frames,
)


def _quadrants(n: int = 100) -> np.ndarray:
    """Top-left red, top-right green, bottom-left blue, bottom-right white."""
    a = np.zeros((n, n, 3), dtype=np.uint8)
    h = n // 2
    a[:h, :h] = (255, 0, 0)
    a[:h, h:] = (0, 255, 0)
    a[h:, :h] = (0, 0, 255)
    a[h:, h:] = (255, 255, 255)
    return a


def test_crop_relative_and_pixel_boxes_agree_and_resample():
    img = _quadrants()
    rel = crop(img, [0.6, 0.6, 0.9, 0.9], size=16, pad=0.0)
    pix = crop(img, [60, 60, 90, 90], size=16, pad=0.0)
    assert rel.size == (16, 16) and pix.size == (16, 16)
    assert np.array_equal(np.asarray(rel), np.asarray(pix))
    assert (np.asarray(rel) == 255).all()  # inside the white quadrant
    assert (np.asarray(crop(Image.fromarray(img), [0.1, 0.1, 0.3, 0.3], 8, pad=0.0))[..., 0] == 255).all()


def test_crop_padding_and_minimum_size():
    img = _quadrants()
    # padding 0.1 around the white quadrant's corner reaches into the other colours
    padded = np.asarray(crop(img, [0.55, 0.55, 0.9, 0.9], size=32, pad=0.1))
    assert not (padded == 255).all()
    # a 1-pixel box grows to min_size pixels around its centre, clipped inside the image
    tiny = np.asarray(crop(img, [99, 99, 100, 100], size=8, min_size=10, pad=0.0))
    assert (tiny == 255).all()


@pytest.mark.parametrize("bbox", [[0.5, 0.5, 0.2, 0.9], [1, 2, 3], "0,0,1,1", [0, 0, float("nan"), 1], [2, 2, 3, 3.0]])
def test_crop_bad_boxes_raise_tool_error(bbox):
    with pytest.raises(ToolError):
        crop(np.zeros((2, 2, 3), dtype=np.uint8), bbox, size=8, pad=0.0)


def test_select_frames():
    frames = list(range(10, 26))  # 16 frames
    assert select_frames(frames, [1, 16]) == [10, 25]
    for bad in ([], [0], [17], [1.5], list(range(1, 10))):
        with pytest.raises(ToolError):
            select_frames(frames, bad, max_count=8)


@pytest.mark.parametrize("expr,value", [("1+2", "3"), ("(7+2)*3 - 4/2", "25"), ("-3**2", "-9"), ("7/2", "3.5"),
                                        ("17 // 5 + 17 % 5", "5"), ("2**10", "1024")])
def test_calculator_values(expr, value):
    assert calculator(expr) == value


@pytest.mark.parametrize("expr", ["__import__('os').system('true')", "x+1", "(1).real", "1/0", "9**9**9", "2**1000",
                                  "[1, 2]", "", "1 +", "True + 1", "'a' * 3", "1" * 300])
def test_calculator_refuses_code_and_bad_input(expr):
    with pytest.raises(ToolError):
        calculator(expr)


def test_registry_adapters_and_user_tools():
    ctx = ToolContext(images=[_quadrants()], meta={"frames": [_quadrants(8)] * 16}, image_size=16)
    obs = TOOLS["crop_image"]({"bbox_2d": [0.6, 0.6, 0.9, 0.9], "target_image": 1}, ctx)
    assert obs.text.startswith("Here is the cropped image") and len(obs.images) == 1 and obs.images[0].size == (16, 16)
    with pytest.raises(ToolError, match="target_image"):
        TOOLS["crop_image"]({"bbox_2d": [0, 0, 1, 1], "target_image": 2}, ctx)
    with pytest.raises(ToolError, match="missing"):
        TOOLS["crop_image"]({}, ctx)
    frames = TOOLS["select_frames"]({"target_frames": [2, 5]}, ctx)
    assert len(frames.images) == 2 and frames.images[0].size == (16, 16)
    assert TOOLS["calculator"]({"expression": "6*7"}, ctx).text == "42"
    try:
        register_tool("echo", lambda args, ctx: Observation(str(args.get("x"))))
        assert TOOLS["echo"]({"x": 5}, ctx).text == "5"
    finally:
        TOOLS.pop("echo", None)


def test_zoom_sandbox_digit_only_readable_in_a_crop():
    from credo.envs.zoom import ZoomConfig, ZoomEnv

    env = ZoomEnv(ZoomConfig(n_sft=4, n_train=4, n_test=4))
    ex = env.examples("test")[0]
    again = ZoomEnv(ZoomConfig(n_sft=4, n_train=4, n_test=4)).examples("test")[0]
    assert np.array_equal(np.asarray(ex.images[0]), np.asarray(again.images[0]))  # seeded
    assert {e.id for e in env.examples("train")}.isdisjoint({e.id for e in env.examples("test")})
    assert env.verify(f"<answer>{ex.reference}</answer>", ex).value == 1.0
    assert env.verify(f"<answer>{(ex.reference + 1) % 10}</answer>", ex).value == 0.0
    view = np.asarray(ex.images[0].resize((48, 48))).mean(-1)  # what the model sees without the tool
    ctx = ToolContext(images=ex.images, image_size=48)
    zoomed = np.asarray(TOOLS["crop_image"]({"bbox_2d": ex.meta["box"], "target_image": 1}, ctx).images[0]).mean(-1)
    assert (view < 80).sum() == 0 and (zoomed < 80).sum() > 30  # the digit's strokes survive only in the crop
    call, answer = env.tool_trace(ex)
    from credo.rollout.multiturn import parse_tool_call

    assert parse_tool_call(call) == ("crop_image", {"bbox_2d": ex.meta["box"], "target_image": 1})
    assert answer == f"<answer>{ex.reference}</answer>"
