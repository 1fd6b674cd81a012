"""Where a zoom warm start fails: reading after the real crop, reading from the crop as prompt, call boxes.

    python scripts/zoom_diagnostics.py MODEL_DIR CONFIG [key=value ...] [--samples 4]

Lives outside the package: it drives the model (teacher-forced scores, multi-turn rollouts) and the trainer's
config, which the environment layer must not import (`tests/test_layering.py`).
"""

from __future__ import annotations

import json
from typing import Any

from credo.data import Example
from credo.envs.tools import crop
from credo.envs.zoom import ZoomEnv, box_iou


def warm_start_diagnostics(policy: Any, tokenizer: Any, env: ZoomEnv, examples: list[Example], n_samples: int = 4,
                           seed: int = 0, tools: dict | None = None) -> dict[str, float]:
    """Where a zoom policy fails, on `examples` (held-out canvases):

    - `read_after_crop`: teacher-forced digit accuracy (argmax over the ten digits) at the answer of the
      reference tool trace, i.e. after the REAL crop of the reference box; `answer_nll_after_crop` its mean NLL
      (ln 10 = 2.30 is chance) and `call_token_nll` the mean NLL of the call's tokens;
    - `read_crop_prompt`: the same when the prompt image is the crop (a read trace); `read_direct`: the direct
      answer from the canvas alone;
    - from `n_samples` sampled multi-turn rollouts (T = 1, two turns): `call_rate` (≥ 1 valid crop),
      `call_iou` (mean IoU of the call's box with the reference box), `call_holds_frame` (share of calls whose
      box holds the whole red frame) and `acc_after_call` (accuracy of the rollouts that cropped).
    """
    import torch

    from credo.data import SEGMENTS
    from credo.rollout.multiturn import multiturn_rollout, parse_tool_call, reference_trajectory
    from credo.rollout.sampler import SamplingParams

    image_size = getattr(getattr(policy, "cfg", None), "image_size", 48)
    digits = [tokenizer.encode(str(d))[0] for d in range(10)]
    tag = tokenizer.encode("<answer>")

    def digit_logits(ids: list[int], images: list) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Logits at the answer digit (position k, after the last `<answer>`), all logits, and k."""
        k = max(i for i in range(len(ids) - len(tag) + 1) if ids[i : i + len(tag)] == tag) + len(tag)
        out = policy.forward(torch.tensor([ids[: k + 1]]), images=[images])
        return out[0, k - 1].float(), out[0].float(), k

    n = max(1, len(examples))
    sums = dict.fromkeys(("read_after_crop", "answer_nll_after_crop", "read_crop_prompt", "read_direct"), 0.0)
    call_nll, call_tokens = 0.0, 0
    was_training = policy.training
    policy.eval()
    try:
        with torch.no_grad():
            for ex in examples:
                s = reference_trajectory(tokenizer, env, ex, list(env.tool_trace(ex)), tools, image_size)
                ids = s.prompt_ids.tolist() + s.completion_ids.tolist()
                last, logits, k = digit_logits(ids, list(s.images or []))
                sums["read_after_crop"] += int(last[digits].argmax()) == ex.reference
                sums["answer_nll_after_crop"] -= float(torch.log_softmax(last, -1)[ids[k]])
                P = len(s.prompt_ids)  # logits cover ids[: k + 1]; lp[j] = log p(ids[j + 1] | ids[: j + 1])
                lp = torch.log_softmax(logits[:k], -1).gather(1, torch.tensor(ids[1 : k + 1])[:, None])[:, 0]
                call = ((s.segment_ids == SEGMENTS["tool_call"]) & (s.loss_mask > 0))[: k - P + 1]
                call_nll -= float(lp[P - 1 : k][call].sum())
                call_tokens += int(call.sum())
                prompt = tokenizer.with_images(tokenizer.encode_prompt(env.render_prompt(ex)), 1) + tag
                crop_img = crop(ex.images[0], ex.meta["box"], image_size)
                out = policy.forward(torch.tensor([prompt]), images=[[crop_img]])
                sums["read_crop_prompt"] += int(out[0, -1, digits].argmax()) == ex.reference
                direct = tokenizer.with_images(tokenizer.encode_prompt(env.render_prompt(ex)), 1) + tag
                out = policy.forward(torch.tensor([direct]), images=[list(ex.images)])
                sums["read_direct"] += int(out[0, -1, digits].argmax()) == ex.reference
        res = {k: v / n for k, v in sums.items()}
        res["call_token_nll"] = call_nll / max(1, call_tokens)
        samples, _ = multiturn_rollout(policy, tokenizer, env, examples, n_samples, SamplingParams(128, 1.0),
                                       torch.Generator().manual_seed(seed), max_turns=2, max_images=2, tools=tools)
    finally:
        policy.train(was_training)
    ious, holds, right = [], [], []
    for i, s in enumerate(samples):
        if s.n_tool_calls == 0:
            continue
        ex = examples[i // n_samples]
        call_text = s.text[: s.text.index("</tool_call>") + len("</tool_call>")]
        box = parse_tool_call(call_text)[1].get("bbox_2d")
        frame = ex.meta.get("frame", ex.meta["box"])
        ious.append(box_iou(box, ex.meta["box"]))
        holds.append(box[0] <= frame[0] and box[1] <= frame[1] and box[2] >= frame[2] and box[3] >= frame[3])
        right.append(bool(env.verify(s.text, ex).correct))
    m = max(1, len(ious))
    res.update(call_rate=len(ious) / max(1, len(samples)), call_iou=sum(ious) / m, call_holds_frame=sum(holds) / m,
               acc_after_call=sum(right) / m)
    return res


def main(argv: list[str] | None = None) -> int:
    """`python scripts/zoom_diagnostics.py MODEL_DIR CONFIG [key=value ...]`: `warm_start_diagnostics` of a saved
    model on the preset's held-out canvases, with the preset's tools, printed as JSON."""
    import argparse

    import torch

    from credo.envs import make_env
    from credo.envs.tools import TOOLS
    from credo.models import load_policy
    from credo.trainer.config import load_config

    ap = argparse.ArgumentParser(prog="python scripts/zoom_diagnostics.py", description=main.__doc__)
    ap.add_argument("model")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--samples", type=int, default=4)
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    torch.set_num_threads(cfg.run.threads)
    env = make_env(cfg.env)
    policy, tok = load_policy(args.model, cfg.model)
    res = warm_start_diagnostics(policy, tok, env, env.examples("test"), args.samples, cfg.run.seed,
                                 {name: TOOLS[name] for name in cfg.rl.tools})
    print(json.dumps({k: round(v, 4) for k, v in res.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
