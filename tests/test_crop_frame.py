"""Issue 12, kind 7: crop boxes are read in the frame the policy saw (relative, seen pixels, 0–1000 grid)."""

import json

import numpy as np
import pytest
from PIL import Image

from credo.envs.tools import (
    FAMILY_BOX_FRAMES,
    TOOLS,
    USER_SPECS,
    ToolContext,
    ToolError,
    box_description,
    crop,
    register_tool,
    relative_box,
    tool_specs,
    tools_prompt,
)


def _quadrants(w: int, h: int) -> Image.Image:
    """Top-left red, top-right green, bottom-left blue, bottom-right white."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2 :] = (0, 255, 0)
    a[h // 2 :, : w // 2] = (0, 0, 255)
    a[h // 2 :, w // 2 :] = (255, 255, 255)
    return Image.fromarray(a)


def _resized(img: Image.Image, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    return np.asarray(img.crop(box).resize((size, size), Image.Resampling.BICUBIC))


CANVAS = _quadrants(192, 192)


def test_issue_case_192_canvas_seen_at_48():
    # the policy sees the 192 px canvas at 48 px; [24, 24, 48, 48] is the bottom-right quadrant of what it sees
    ctx = ToolContext(images=[CANVAS], image_size=48)
    obs = TOOLS["crop_image"]({"bbox_2d": [24, 24, 48, 48], "target_image": 1}, ctx)
    out = np.asarray(obs.images[0])
    # relative [0.5, 0.5, 1, 1], padded by 0.1 → [0.4, 0.4, 1, 1] → canvas pixels [76.8, 76.8, 192, 192] → floor 76
    assert np.array_equal(out, _resized(CANVAS, (76, 76, 192, 192), 48))
    assert obs.text == "Here is the cropped image (Image Size: 48x48):"
    # without padding the crop is exactly the quadrant (all white)
    exact = crop(CANVAS, [24, 24, 48, 48], 48, pad=0.0, frame=(48, 48))
    assert np.array_equal(np.asarray(exact), _resized(CANVAS, (96, 96, 192, 192), 48))
    assert (np.asarray(exact) == 255).all()


def test_the_old_reading_missed_the_quadrant():
    # the cause: read in the original 192 px frame the same box is [24, 48]² of the canvas, inside the red quadrant
    old = np.asarray(crop(CANVAS, [24, 24, 48, 48], 48, pad=0.0))
    assert (old == (255, 0, 0)).all(axis=-1).all()


@pytest.mark.parametrize(
    ("bbox", "box_frame"),
    [([0.5, 0.5, 1.0, 1.0], "pixels"), ([24, 24, 48, 48], "pixels"), ([500, 500, 1000, 1000], "grid1000"),
     ([0.5, 0.5, 1, 1], "grid1000")],
)
def test_each_form_names_the_same_quadrant(bbox, box_frame):
    ctx = ToolContext(images=[CANVAS], image_size=48, box_frame=box_frame)
    out = np.asarray(TOOLS["crop_image"]({"bbox_2d": bbox, "target_image": 1}, ctx).images[0])
    assert np.array_equal(out, _resized(CANVAS, (76, 76, 192, 192), 48))


def test_relative_box_hand_values():
    assert relative_box([24, 24, 48, 48], (48, 48)) == (0.5, 0.5, 1.0, 1.0)
    assert relative_box([16, 8, 48, 24], (64, 32)) == (0.25, 0.25, 0.75, 0.75)
    assert relative_box([250, 100, 750, 900], (48, 48), "grid1000") == (0.25, 0.1, 0.75, 0.9)
    assert relative_box([0.2, 0.3, 0.4, 0.5], (48, 48), "grid1000") == (0.2, 0.3, 0.4, 0.5)  # all ≤ 1: relative
    with pytest.raises(ToolError, match="box frame"):
        relative_box([2, 2, 4, 4], (48, 48), "percent")


def test_non_square_seen_frame():
    # a 200×100 image that a processor keeping the aspect ratio shows at 64×32: pixel box [32, 16, 64, 32] is its
    # bottom-right quadrant, i.e. original pixels [100, 50, 200, 100]
    img = _quadrants(200, 100)
    ctx = ToolContext(images=[img], image_size=16, seen_size=lambda w, h: (w * 32 // 100, h * 32 // 100))
    assert ctx.frame_of(img) == (64, 32)
    assert ctx.frame_of(np.asarray(img)) == (64, 32)
    exact = crop(img, [32, 16, 64, 32], 16, pad=0.0, frame=ctx.frame_of(img))
    assert np.array_equal(np.asarray(exact), _resized(img, (100, 50, 200, 100), 16))
    # through the tool (pad 0.1: relative [0.4, 0.4, 1, 1] → [80, 40, 200, 100])
    obs = TOOLS["crop_image"]({"bbox_2d": [32, 16, 64, 32], "target_image": 1}, ctx)
    assert np.array_equal(np.asarray(obs.images[0]), _resized(img, (80, 40, 200, 100), 16))


def test_crop_of_a_crop_is_read_in_the_crop_frame():
    # image 2 is the 48 px crop the first call returned (seen at 48 px): [0, 0, 24, 24] is its top-left quarter
    first = TOOLS["crop_image"]({"bbox_2d": [24, 24, 48, 48], "target_image": 1}, ToolContext([CANVAS], {}, 48))
    ctx = ToolContext(images=[CANVAS, first.images[0]], image_size=48)
    second = TOOLS["crop_image"]({"bbox_2d": [0, 0, 24, 24], "target_image": 2}, ctx).images[0]
    # relative [0, 0, 0.5, 0.5] padded → [0, 0, 0.6, 0.6] of the 48 px crop → pixels [0, 0, 28.8 → 29, 29]
    assert np.array_equal(np.asarray(second), _resized(first.images[0], (0, 0, 29, 29), 48))


def test_family_conventions():
    assert FAMILY_BOX_FRAMES["qwen2_5_vl"] == "pixels"  # absolute pixels of the resized input
    assert FAMILY_BOX_FRAMES["qwen2_vl"] == "grid1000"  # [0, 1000) grid
    assert FAMILY_BOX_FRAMES["tinyvlm"] == "pixels"


def test_tool_description_states_the_frame():
    text = tools_prompt(["crop_image", "select_frames"], image_size=48)
    block = text.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()
    crop_spec, frames_spec = (json.loads(line)["function"] for line in block)
    bbox = crop_spec["parameters"]["properties"]["bbox_2d"]["description"]
    assert crop_spec["name"] == "crop_image" and frames_spec["name"] == "select_frames"
    assert "between 0 and 1" in bbox and "pixels of the image as you see it" in bbox and "48x48" in bbox
    assert "0-1000 grid" in box_description("grid1000") and "pixels" not in box_description("grid1000")
    assert text.startswith("# Tools\n") and text.endswith("</tool_call>")
    with pytest.raises(KeyError):
        tool_specs(["no_such_tool"])


def test_user_tool_specs():
    def echo(arguments, ctx):
        """Echo the text back."""

    try:
        register_tool("echo_test", echo)
        assert tool_specs(["echo_test"])[0]["function"] == {
            "name": "echo_test", "description": "Echo the text back.", "parameters": {"type": "object"}}
        spec = {"description": "Echo.", "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}}
        register_tool("echo_test", echo, spec)
        assert tool_specs(["echo_test"])[0]["function"] == {"name": "echo_test", **spec}
    finally:
        TOOLS.pop("echo_test", None)
        USER_SPECS.pop("echo_test", None)
