"""envs.filters.filter_overlong: env.max_prompt_tokens drops prompts longer than the limit (verl's
filter_overlong_prompts), counted in the policy's own tokens."""

from __future__ import annotations

import pytest

from credo.data import Example
from credo.envs import make_env
from credo.envs.filters import filter_overlong, prompt_tokens
from credo.models.tokenizer import CharTokenizer
from credo.models.vlm import VLMTokenizer
from credo.rollout.engine import encode_prompt
from credo.trainer.config import ConfigError, EnvConfig, load_config


class PlainEnv:
    """Renders a prompt as "Q: <prompt>" (3 extra characters)."""

    def render_prompt(self, example: Example) -> str:
        return f"Q: {example.prompt}"


EXAMPLES = [Example("a", "12", 12), Example("b", "1234", 1234), Example("c", "1", 1), Example("d", "123", 123)]


def test_char_tokens_of_the_rendered_prompt():
    # CharTokenizer frames a prompt as BOS + one token per character: "Q: 12" -> 1 + 5 = 6
    assert [prompt_tokens(e, PlainEnv(), CharTokenizer()) for e in EXAMPLES] == [6, 8, 5, 7]


def test_keeps_at_most_max_tokens_in_order_and_counts_the_rest():
    tok = CharTokenizer()
    assert filter_overlong(EXAMPLES, PlainEnv(), tok, 6) == ([EXAMPLES[0], EXAMPLES[2]], 2)
    assert filter_overlong(EXAMPLES, PlainEnv(), tok, 7) == ([EXAMPLES[0], EXAMPLES[2], EXAMPLES[3]], 1)
    assert filter_overlong(EXAMPLES, PlainEnv(), tok, 8) == (EXAMPLES, 0)
    assert filter_overlong(EXAMPLES, PlainEnv(), tok, 4) == ([], 4)


def test_zero_means_off_and_never_tokenizes():
    class Exploding:
        def encode_prompt(self, text: str) -> list[int]:
            raise AssertionError("tokenized although the filter is off")

    kept, n = filter_overlong(EXAMPLES, PlainEnv(), Exploding(), 0)
    assert kept == EXAMPLES and kept is not EXAMPLES and n == 0


def test_image_placeholders_count():
    tok = VLMTokenizer(n_patches=9)
    ex = Example("v", "12", 12, images=["img1", "img2"])
    assert prompt_tokens(ex, PlainEnv(), tok) == 6 + 2 * 9
    assert filter_overlong([ex], PlainEnv(), tok, 23) == ([], 1)
    assert filter_overlong([ex], PlainEnv(), tok, 24) == ([ex], 0)


def test_length_equals_what_the_rollout_feeds_the_policy():
    env = make_env(EnvConfig(n_test=20))
    tok = CharTokenizer()
    examples = env.examples("test")
    lengths = [prompt_tokens(e, env, tok) for e in examples]
    assert lengths == [len(encode_prompt(tok, env, e)) for e in examples]
    limit = sorted(lengths)[len(lengths) // 2]
    kept, n = filter_overlong(examples, env, tok, limit)
    assert n == sum(x > limit for x in lengths) and len(kept) + n == len(examples)
    assert all(prompt_tokens(e, env, tok) <= limit for e in kept)


def test_config_field_defaults_off_and_rejects_negative():
    assert load_config(None, []).env.max_prompt_tokens == 0
    assert load_config(None, ["env.max_prompt_tokens=256"]).env.max_prompt_tokens == 256
    with pytest.raises(ConfigError, match="env.max_prompt_tokens"):
        load_config(None, ["env.max_prompt_tokens=-1"])
