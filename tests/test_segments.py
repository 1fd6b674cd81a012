"""Per-token segment labels from tags (`rollout/segments.py`), hand-computed on CharTokenizer and a toy BPE."""

import torch

from credo.data import SEGMENTS, Sample
from credo.envs.blocks import block_contents, block_spans
from credo.models.tokenizer import CharTokenizer
from credo.rollout.segments import label_samples, segment_ids_from_text

R, A, P, OBS = SEGMENTS["reasoning"], SEGMENTS["answer"], SEGMENTS["perception"], SEGMENTS["observation"]
TOK = CharTokenizer()


def labels(text: str, extra_ids=()):
    seg, m = segment_ids_from_text(TOK.encode(text) + list(extra_ids), TOK)
    return seg.tolist(), m


def test_well_formed_with_eos():
    text = "<perception>ab</perception><think>x</think><answer>3</answer>"
    seg, m = labels(text, [TOK.eos_id])
    assert seg == [P] * 27 + [R] * 16 + [A] * 18 + [A]  # EOS (decodes to nothing) inherits the answer label
    assert m["segments/unclosed"] == m["segments/missing_perception"] == m["segments/missing_answer"] == 0.0
    assert (m["segments/perception_tokens"], m["segments/reasoning_tokens"], m["segments/answer_tokens"]) == (
        27.0, 16.0, 19.0)


def test_unclosed_runs_to_the_end():
    seg, m = labels("<perception>ab")
    assert seg == [P] * 14
    assert (m["segments/unclosed"], m["segments/missing_answer"], m["segments/missing_perception"]) == (1.0, 1.0, 0.0)
    seg, m = labels("so <answer>12")
    assert seg == [R] * 3 + [A] * 10 and m["segments/unclosed"] == 1.0


def test_unclosed_block_ends_at_another_opening_tag():
    seg, m = labels("<perception>ab<answer>1</answer>")
    assert seg == [P] * 14 + [A] * 18
    assert m["segments/unclosed"] == 1.0 and m["segments/missing_answer"] == 0.0


def test_repeated_and_interleaved_blocks():
    seg, m = labels("<perception>a</perception>t<perception>b</perception><answer>1</answer>")
    assert seg == [P] * 26 + [R] + [P] * 26 + [A] * 18
    assert m["segments/unclosed"] == 0.0
    seg, _ = labels("<answer><answer>2</answer>")  # a repeated opening tag inside its block changes nothing
    assert seg == [A] * 26


def test_stray_closing_tag_and_no_tags():
    seg, m = labels("x</answer>y")
    assert seg == [R] * 11
    assert (m["segments/stray_close"], m["segments/missing_perception"], m["segments/missing_answer"]) == (
        1.0, 1.0, 1.0)
    seg, m = labels("")
    assert seg == [] and m["segments/missing_answer"] == 1.0


def test_multi_character_tokens_take_their_first_character_label():
    vocab = ["<answer", ">5</answe", "r>o", "k", "", "<perception>", "red", "</perception>"]

    def decode(ids):
        return "".join(vocab[i] for i in ids)

    seg, m = segment_ids_from_text(torch.tensor([5, 6, 7, 0, 1, 2, 3, 4]), decode)  # a bare decode function
    assert seg.tolist() == [P, P, P, A, A, A, R, R]  # "r>o" starts inside </answer>; "" inherits from "k"
    assert m["segments/unclosed"] == 0.0


def test_label_samples_keeps_observations():
    ids = TOK.encode("<answer>1</answer>")
    seg = torch.full((len(ids),), R)
    seg[:3] = OBS
    s = Sample("e", 0, torch.tensor([1]), torch.tensor(ids), torch.ones(len(ids)), seg, torch.zeros(len(ids)), "stop")
    m = label_samples([s], TOK)
    assert s.segment_ids.tolist() == [OBS] * 3 + [A] * 15 and m["segments/missing_answer"] == 0.0


def test_block_contents_match_the_labels():
    text = "<perception>a</perception><think>t</think><perception>b"
    assert block_contents(text, "perception") == ["a", "b"]
    assert [k for k, _, _ in block_spans(text)[0]] == ["perception", "think", "perception"]
