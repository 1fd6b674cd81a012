"""VerifyRunner: errors and timeouts counted and unscorable (never a 0), no other item lost, any thread, inline
mode, and a reward function given by import path. Scoring functions live in tests/verify_helpers.py (workers
import it)."""

import logging
import math
import threading
import time

import pytest
import torch
import verify_helpers as vh

from credo.data import Example, Sample
from credo.envs.functions import RewardFunction, make_runner
from credo.envs.runner import ERROR, OK, TIMEOUT, VerifyRunner, run_inline
from credo.rewards import score_samples
from credo.trainer.config import RewardConfig


def _values(scores):
    """Each score's value, None where unscorable (an unscorable score's value is never used as a reward)."""
    return [s.value if s.scorable else None for s in scores]


@pytest.fixture(scope="module")
def pool():
    with VerifyRunner(vh.flaky, workers=2, timeout_s=1.0) as runner:
        yield runner


def _batch(n: int) -> tuple[list[tuple[str, int]], list[float]]:
    """n jobs, every third one wrong, and their expected values."""
    jobs = [(str(i), i if i % 3 else -1) for i in range(n)]
    return jobs, [1.0 if i % 3 else 0.0 for i in range(n)]


def test_inline_mode_catches_and_counts_errors():
    with VerifyRunner(vh.flaky, workers=0) as runner:
        v = runner.run([("a", "a"), ("raise", "a"), ("b", "a")])
    assert _values(v.scores) == [1.0, None, 0.0]
    assert v.status == [OK, ERROR, OK] and (v.errors, v.timeouts) == (1, 0)
    assert "boom" in v.messages[1] and "boom" in v.scores[1].reason and not v.scores[1].correct
    nan = run_inline(vh.nan_reward, [("x", None)])  # a non-finite value is an error too
    assert nan.status == [ERROR] and not nan.scores[0].scorable


def test_error_timeout_and_crash_lose_no_other_item(pool):
    head, want_head = _batch(40)
    jobs = head + [("raise", "x"), ("hang", "x"), ("crash", "x")] + head
    t = time.perf_counter()
    v = pool.run(jobs)
    assert time.perf_counter() - t < 60
    assert v.status[40:43] == [ERROR, TIMEOUT, ERROR]
    assert (v.errors, v.timeouts) == (2, 1)
    assert "timed out" in v.messages[41] and "died" in v.messages[42]
    assert _values(v.scores) == want_head + [None, None, None] + want_head
    assert v.scores[41].reason.startswith("timeout") and v.scores[42].reason.startswith("error")
    assert all(s.parts == {"format": 1.0} for i, s in enumerate(v.scores) if i not in (40, 41, 42))
    again, want = _batch(10)  # the pool is usable afterwards
    v = pool.run(again)
    assert v.status == [OK] * 10 and [s.value for s in v.scores] == want


def test_run_from_a_thread(pool):
    out = {}
    th = threading.Thread(target=lambda: out.update(v=pool.run([("hang", "x"), ("1", 1), ("raise", 1)])))
    th.start()
    th.join(120)
    v = out["v"]
    assert v.status == [TIMEOUT, OK, ERROR] and _values(v.scores) == [None, 1.0, None]


def test_order_and_overhead_of_a_large_batch(pool):
    jobs, want = _batch(1280)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        v = pool.run(jobs)
        times.append(time.perf_counter() - t)
        assert [s.value for s in v.scores] == want and v.errors == v.timeouts == 0
    assert min(times) < 0.5, times  # measured about 0.01 s on 2 cores


def test_score_samples_reports_errors_and_timeouts(pool):
    examples = {f"e{i}": Example(id=f"e{i}", prompt="p", reference=1) for i in range(3)}
    empty = torch.zeros(0)
    samples = [
        Sample(f"e{i}", 0, empty.long(), empty.long(), empty, empty.long(), empty, "stop", text=text)
        for i, text in enumerate(["1", "raise", "hang"])
    ]
    m = score_samples(samples, examples, None, {"outcome": 1.0, "format": 0.5}, pool)
    assert samples[0].reward == 1.5 and all(math.isnan(s.reward) for s in samples[1:])  # never trained as a 0
    assert [s.scorable for s in samples] == [True, False, False]
    assert m["verify/errors"] == 1.0 and m["verify/timeouts"] == 1.0 and m["verify/unscorable"] == 2.0
    assert m["reward/unscorable"] == 2.0
    assert m["reward/mean"] == pytest.approx(1.5)  # over the scorable sample only


def test_reward_function_by_import_path():
    examples = [Example(id="a", prompt="p", reference=0), Example(id="b", prompt="p", reference=0)]
    cfg = RewardConfig(function="verify_helpers:length_reward", workers=1, timeout_s=5.0)
    with make_runner(None, cfg) as runner:  # the function replaces the env's verifier
        v = runner.run([("abcd", examples[0]), ("", examples[1])])
    assert [s.value for s in v.scores] == [0.4, 0.0] and v.status == [OK, OK]
    assert RewardFunction("verify_helpers.length_reward")("ab", examples[0]).value == 0.2
    assert run_inline(RewardFunction("verify_helpers:nan_reward"), [("x", examples[0])]).errors == 1
    for bad in ("verify_helpers:missing", "no_such_module:fn", "nocolon"):
        with pytest.raises(ValueError, match="reward function"):
            RewardFunction(bad)


def test_unshippable_function_falls_back_to_inline(caplog):
    with caplog.at_level(logging.WARNING), VerifyRunner(lambda c, r: 1.0, workers=2) as runner:
        assert runner.workers == 0
        assert runner.run([("x", 1)]).scores[0].value == 1.0
    assert "inline" in caplog.text


def test_bad_arguments():
    with pytest.raises(ValueError, match="workers"):
        VerifyRunner(vh.echo, workers=-1)
    with pytest.raises(ValueError, match="timeout_s"):
        VerifyRunner(vh.echo, workers=0, timeout_s=0)


def test_math_verify_blowup_is_cut_off():
    """sympy simplifying 9^(9^9)·x - 2x runs for minutes: the reason credo enforces timeouts itself."""
    from credo.envs.verifiers.math import verify_math

    with VerifyRunner(verify_math, workers=1, timeout_s=3.0) as runner:
        v = runner.run([("\\boxed{\\frac12}", "0.5"), ("\\boxed{9^{9^{9}}x}", "2x"), ("<answer>3</answer>", "3")])
    assert v.status == [OK, TIMEOUT, OK] and _values(v.scores) == [1.0, None, 1.0]
