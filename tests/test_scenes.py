"""The scenes sandbox: generation, rendering, claims, solver, env splits and verification, blame attribution."""

import pickle
import random

import numpy as np
import pytest

from credo.data import Example
from credo.envs import make_env
from credo.envs.scenes import ScenesConfig, ScenesEnv
from credo.envs.scenes.attribution import attribute, attribution_metrics, perception_correct, perception_sufficient
from credo.envs.scenes.claims import claim_scores, format_claims, parse_claims, perception_text
from credo.envs.scenes.questions import FAMILIES, Filter, Question, make_question
from credo.envs.scenes.render import RGB, render, to_array, to_pil
from credo.envs.scenes.scene import SceneObject, make_scene, perturb
from credo.envs.scenes.solver import explain, format_answer, solve
from credo.models.vlm import image_tensor
from credo.trainer.config import EnvConfig

Obj = SceneObject
SCENE = (
    Obj(1, 1, "circle", "red", "large"),
    Obj(1, 3, "square", "blue", "small"),
    Obj(2, 2, "square", "red", "small"),
    Obj(3, 1, "triangle", "yellow", "large"),
    Obj(3, 3, "circle", "red", "small"),
)
SMALL = ScenesConfig(n_sft=60, n_train=30, n_test=30)


# ---- scenes and rendering ---------------------------------------------------------------------------------

def test_scenes_are_seeded_and_valid():
    a = [make_scene(random.Random(7), max_objects=6) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    for seed in range(50):
        s = make_scene(random.Random(seed), min_objects=2, max_objects=5)
        assert 2 <= len(s) <= 5 and len({o.cell for o in s}) == len(s) and list(s) == sorted(s)
    with pytest.raises(ValueError):
        make_scene(random.Random(0), max_objects=10)


def test_render_shape_dtype_colours_and_determinism():
    x = render(SCENE, size=48, jitter=0)
    assert x.shape == (48, 48, 3) and x.dtype == np.uint8
    for o in SCENE:  # the centre pixel of every object has its colour
        assert tuple(x[int((o.row - 0.5) * 16), int((o.col - 0.5) * 16)].tolist()) == RGB[o.colour]
    assert tuple(x[24, 8].tolist()) == (235, 235, 235)  # r2c1 is empty
    assert np.array_equal(to_array(to_pil(x)), x)
    n1 = render(SCENE, jitter=1, noise=10, rng=random.Random(3))
    n2 = render(SCENE, jitter=1, noise=10, rng=random.Random(3))
    assert np.array_equal(n1, n2) and not np.array_equal(n1, x)
    assert render(SCENE, size=36).shape == (36, 36, 3)
    t = image_tensor(x, 48)  # what TinyVLM sees: float [3, H, W] in [0, 1]
    assert t.shape == (3, 48, 48) and t[:, 8, 8].tolist() == pytest.approx([220 / 255, 40 / 255, 40 / 255])


# ---- claims ------------------------------------------------------------------------------------------------

def test_claims_round_trip():
    text = format_claims(SCENE)
    assert text.startswith("large red circle r1c1; small blue square r1c3;")
    assert parse_claims(text) == (list(SCENE), 0)
    assert parse_claims(format_claims([])) == ([], 0)


@pytest.mark.parametrize("text,n_ok,n_bad", [
    ("red large circle at r1c1", 1, 0),  # any order, filler words
    ("large red circle r1 c1\nsmall blue square r1c3.", 2, 0),
    ("large red circle r1c1, small blue square r1c3", 2, 0),
    ("large red circle", 0, 1),  # no cell
    ("large red r1c1", 0, 1),  # no shape
    ("large small red circle r1c1", 0, 1),  # two sizes
    ("large purple circle r1c1", 0, 1),  # unknown word
    ("large red circle r4c1", 0, 1),  # outside the 3x3 grid
    ("large red circle r1c1 r2c2", 0, 1),  # two cells
    ("large red circle r1c1;;  ; nonsense", 1, 1),  # empty parts are skipped
    ("", 0, 0),
    ("None.", 0, 0),
])
def test_claims_malformed_counting(text, n_ok, n_bad):
    objs, bad = parse_claims(text)
    assert (len(objs), bad) == (n_ok, n_bad)


def test_claim_scores_and_perception_text():
    truth = list(SCENE)
    assert claim_scores(truth, 0, truth) == (1.0, 1.0)
    assert claim_scores(truth[:2], 2, truth) == (0.5, 0.4)
    assert claim_scores(truth[:1] * 2, 0, truth) == (0.5, 0.2)  # a repeated claim matches once
    assert claim_scores([], 0, truth) == (0.0, 0.0) and claim_scores([], 0, []) == (1.0, 1.0)
    assert perception_text("<think>x</think>") is None
    assert perception_text("<perception>a</perception><think>t</think><perception>b") == "a\nb"


# ---- questions and the solver ------------------------------------------------------------------------------

def q(family, a=None, b=None, relation="", target=""):
    return Question(family, "", a=a, b=b, relation=relation, target=target)


@pytest.mark.parametrize("question,answer", [
    (q("count", Filter(colour="red")), 3),
    (q("count", Filter(shape="circle")), 2),
    (q("count", Filter(size="small", shape="square")), 2),
    (q("count", Filter(colour="green")), 0),
    (q("compare", Filter(colour="red"), Filter(colour="blue")), "yes"),
    (q("compare", Filter(shape="square"), Filter(shape="circle")), "no"),  # 2 vs 2
    (q("arith", Filter(colour="red"), Filter(colour="blue"), "plus"), 4),
    (q("arith", Filter(shape="circle"), Filter(shape="triangle"), "minus"), 1),
    (q("arith", Filter(shape="triangle"), Filter(shape="circle"), "minus"), -1),
    (q("spatial", Filter("yellow", "triangle"), Filter("blue", "square"), "left of"), "yes"),
    (q("spatial", Filter("blue", "square"), Filter("yellow", "triangle"), "above"), "yes"),
    (q("spatial", Filter("yellow", "triangle"), Filter("blue", "square"), "above"), "no"),
    (q("spatial", Filter("yellow", "triangle"), Filter("red", "square"), "right of"), "no"),
    (q("spatial", Filter("red", "circle"), Filter("blue", "square"), "left of"), None),  # two red circles
    (q("colour", Filter(shape="square"), Filter("blue", "square"), "left of"), "red"),
    (q("colour", Filter(shape="circle"), Filter("blue", "square"), "below"), "red"),
    (q("colour", Filter(shape="circle"), Filter("yellow", "triangle"), "left of"), None),  # no such circle
    (q("set", Filter(shape="circle"), target="colour"), frozenset({"red"})),
    (q("set", Filter(colour="red"), target="shape"), frozenset({"circle", "square"})),
    (q("set", Filter(colour="green"), target="shape"), frozenset()),
    (q("exists", Filter("red", "circle", "large")), "yes"),
    (q("exists", Filter("red", "triangle", "small")), "no"),
])
def test_solver_on_a_hand_made_scene(question, answer):
    assert solve(question, SCENE) == answer


def test_solver_is_total_and_explains():
    assert solve(q("spatial", Filter("red", "circle"), None, "left of"), []) is None
    assert solve(q("nonsense"), SCENE) is None
    assert explain(q("count", Filter(colour="red")), SCENE) == "red objects r1c1 r2c2 r3c3 = 3"
    assert explain(q("spatial", Filter("yellow", "triangle"), Filter("blue", "square"), "left of"), SCENE) == (
        "yellow triangle r3c1; blue square r1c3; c1 < c3 yes")
    assert format_answer(frozenset({"red", "blue"})) == "blue, red" and format_answer(frozenset()) == "none"


def test_every_family_makes_answerable_questions():
    rng = random.Random(0)
    for family in FAMILIES:
        scenes = [make_scene(rng, min_objects=2, max_objects=5) for _ in range(30)]
        made = [(x, s) for s in scenes if (x := make_question(rng, family, s)) is not None]
        assert len(made) >= 10, family
        for x, s in made:  # on its own scene every question has an answer
            assert x.family == family and x.text.endswith("?") and solve(x, s) is not None
    with pytest.raises(ValueError):
        make_question(rng, "nope", SCENE)


# ---- the environment ---------------------------------------------------------------------------------------

def test_splits_are_deterministic_disjoint_and_typed():
    e1, e2 = ScenesEnv(SMALL), ScenesEnv(SMALL)
    for split in ("sft", "train", "test"):
        a, b = e1.examples(split), e2.examples(split)
        assert [x.prompt for x in a] == [x.prompt for x in b] and [x.reference for x in a] == [x.reference for x in b]
        assert all(np.array_equal(x.images[0], y.images[0]) for x, y in zip(a, b, strict=True))
    key = lambda e: (e.meta["objects"], e.prompt)  # noqa: E731
    test = {key(e) for e in e1.examples("test")}
    assert len(test) == SMALL.n_test
    assert not test & {key(e) for e in e1.examples("train") + e1.examples("sft")}
    other = ScenesEnv(ScenesConfig(n_sft=1, n_train=1, n_test=30, seed=1)).examples("test")
    assert [e.prompt for e in other] != [e.prompt for e in e1.examples("test")]
    assert {e.meta["family"] for e in e1.examples("sft")} == set(FAMILIES)
    ex = e1.examples("test")[0]
    assert ex.images[0].shape == (48, 48, 3) and ex.images[0].dtype == np.uint8
    with pytest.raises(ValueError):
        e1.examples("dev")


def test_reference_completions_verify_with_perfect_perception():
    env = ScenesEnv(SMALL)
    for ex in env.examples("test") + env.examples("sft"):
        s = env.verify(env.reference_completion(ex), ex)
        assert s.value == 1.0 and all(v == 1.0 for v in s.parts.values()), (ex.prompt, s)
        assert env.answer_key(env.reference_completion(ex)) is not None
    assert env.render_prompt(ex).startswith(ex.prompt + "\n") and "<perception>" in env.render_prompt(ex)


def test_yes_no_families_are_balanced():
    env = ScenesEnv(ScenesConfig(n_sft=210, n_train=1, n_test=1, families=("compare", "spatial", "exists")))
    yes = sum(e.reference == "yes" for e in env.examples("sft"))
    assert 70 <= yes <= 140


def test_verify_parts_and_totality():
    env = ScenesEnv(SMALL)
    ex = env.examples("test")[0]
    s = env.verify("<answer>" + format_answer(ex.reference) + "</answer>", ex)  # right answer, no perception
    assert s.value == 1.0 and s.parts["format"] == 0.0 and s.parts["perception_recall"] == 0.0
    for garbage in ("", "<perception>", "<perception>" * 1000 + "</answer>", "\x00" * 100):
        assert env.verify(garbage, ex).value == 0.0


def test_make_env_options_and_pickling():
    env = make_env(EnvConfig(name="scenes", n_sft=4, n_train=4, n_test=4, seed=3,
                             options={"image_size": 36, "families": ["count"], "noise": 5}))
    ex = env.examples("train")[0]
    assert ex.images[0].shape == (36, 36, 3) and ex.meta["family"] == "count"
    clone = pickle.loads(pickle.dumps(env))
    assert clone._splits == {} and clone.verify(env.reference_completion(ex), ex).value == 1.0
    cli = make_env(EnvConfig(name="scenes", n_sft=1, n_train=1, n_test=1, options={"families": "[count,set]"}))
    assert cli.cfg.families == ("count", "set")  # an unquoted command-line list
    with pytest.raises(ValueError, match="unknown env.options"):
        make_env(EnvConfig(name="scenes", options={"colours": 3}))
    with pytest.raises(ValueError, match="families"):
        ScenesEnv(ScenesConfig(families=("count", "nope")))


# ---- attribution -------------------------------------------------------------------------------------------

def scene_example(question: Question) -> Example:
    return Example("t", question.text, solve(question, SCENE), meta={"objects": SCENE, "question": question})


def completion(objects, answer: str) -> str:
    return f"<perception>{format_claims(objects)}</perception><think>...</think><answer>{answer}</answer>"


def test_attribution_on_hand_made_completions():
    ex = scene_example(Question("count", "How many red objects?", a=Filter(colour="red")))  # reference 3
    no_r3c3 = [o for o in SCENE if o.cell != "r3c3"]  # misses a red object
    no_r3c1 = [o for o in SCENE if o.cell != "r3c1"]  # misses the (irrelevant) yellow triangle
    cases = [
        (completion(SCENE, "3"), "correct", True, True),
        (completion(SCENE, "2"), "bad_thinking", True, True),  # saw right, counted wrong
        (completion(no_r3c3, "2"), "bad_seeing", False, False),  # missed a red object
        (completion(no_r3c1, "4"), "bad_thinking", False, True),  # a miss that does not matter
        ("<think>guess</think><answer>2</answer>", "bad_seeing", False, False),  # no perception at all
        (completion(no_r3c3, "3"), "correct", False, False),  # right answer despite wrong seeing
        (completion(SCENE, "3").replace("r3c1", "r3c1 blob"), "correct", False, True),  # a malformed claim
    ]
    for text, label, exact, sufficient in cases:
        a = attribute(text, ex)
        assert (a.label, a.perception_exact, a.perception_sufficient) == (label, exact, sufficient), text
        assert perception_correct(text, ex) == exact and perception_sufficient(text, ex) == sufficient
    assert attribute(completion(no_r3c1, "4"), ex, rule="exact").label == "bad_seeing"
    assert attribute(completion(SCENE, "2"), ex, rule="exact").label == "bad_thinking"
    m = attribution_metrics([attribute(t, ex) for t, *_ in cases])
    assert m["attribution/bad_seeing"] == pytest.approx(2 / 7) and m["attribution/correct"] == pytest.approx(3 / 7)
    with pytest.raises(ValueError):
        attribute("", ex, rule="vibes")


def test_moca_protocol_methods():
    from credo.rewards.perception import ProgramReasoner, extract_perception

    env = ScenesEnv(SMALL)
    ex = env.examples("test")[1]
    ref = env.reference_completion(ex)
    perception = extract_perception(ref)
    assert env.blind_answer(perception, ex) == format_answer(ex.reference)
    assert ProgramReasoner(env).answer(ex.prompt, perception, ex) == format_answer(ex.reference)
    assert env.perception_correct(perception, ex) and env.perception_sufficient(perception, ex)
    assert env.blind_answer("", ex) is None and not env.perception_correct("", ex)
    fewer = format_claims(ex.meta["objects"][1:])
    assert not env.perception_correct(fewer, ex)
    answer = env.blind_answer(fewer, ex)
    assert (answer is not None and env.verify(f"<answer>{answer}</answer>", ex).value == 1.0) == (
        env.perception_sufficient(fewer, ex))


def test_perturb_makes_exactly_one_error():
    rng = random.Random(0)
    for _ in range(200):
        s = make_scene(rng, min_objects=2)
        t = perturb(rng, s)
        diff = set(s) ^ set(t)
        # dropped / added: one object differs; changed: the old and the new version of one object
        assert t != s and (len(diff) == 1 or (len(diff) == 2 and len(s) == len(t)
                                              and len({o.cell for o in diff}) == 1))


def test_blind_examples_are_what_the_pv_reasoner_is_asked():
    from credo.rewards.perception import TEMPLATE, PolicyReasoner
    from credo.trainer.config import ModelConfig

    env = ScenesEnv(ScenesConfig(n_sft=200, n_train=5, n_test=20, blind=True, perturb=0.5))
    sft = env.examples("sft")
    perturbed = 0
    for ex in sft:
        assert ex.images == [] and env.verify(env.reference_completion(ex), ex).value == 1.0
        claims, truth = ex.meta["claims"], ex.meta["objects"]
        perturbed += claims != truth
        answer = solve(ex.meta["question"], claims)
        assert format_answer(ex.reference) == format_answer(answer)  # what the claims imply, right or wrong
        if claims == truth:
            assert ex.reference == solve(ex.meta["question"], truth)
        assert env.render_prompt(ex) == TEMPLATE.format(question=ex.prompt, perception=format_claims(claims))
    assert 70 <= perturbed <= 130
    assert env.sample_metrics([env.reference_completion(sft[0])], sft[:1]) == {}  # nothing to attribute
    # the prompt a `model:` reasoner is trained on = the one PolicyReasoner sends it at PV time
    from credo.models import build_policy
    from credo.rollout.engine import encode_prompt

    policy, tok = build_policy(ModelConfig(max_len=512))
    ex = sft[0]
    sent = PolicyReasoner(policy, tok)._encode(ex.prompt, format_claims(ex.meta["claims"]))
    assert sent == encode_prompt(tok, env, ex)
