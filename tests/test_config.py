import pytest

from credo.cli import main
from credo.trainer.config import ConfigError, load_config, parse_override, resume_changes, to_dict


def test_defaults_and_overrides():
    cfg = load_config(None, ["rl.lr=1e-4", "rl.steps=7", "env.rl_depths=[5]", "run.name=x", "rl.eps_high=1"])
    assert cfg.rl.lr == 1e-4 and cfg.rl.steps == 7 and cfg.env.rl_depths == [5] and cfg.run.name == "x"
    assert isinstance(cfg.rl.eps_high, float)


def test_toml_preset(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[rl]\nsteps = 3\nadvantage = "rloo"\n[run]\nname = "t"\n')
    cfg = load_config(p, ["rl.steps=4"])
    assert (cfg.rl.steps, cfg.rl.advantage, cfg.run.name) == (4, "rloo", "t")


@pytest.mark.parametrize(
    "override,needle",
    [
        ("rl.stepz=3", "rl.stepz"),
        ("rll.steps=3", "rll"),
        ("rl.steps=three", "rl.steps"),
        ("rl.steps=1.5", "rl.steps"),
        ("env.rl_depths=[1,'a']", "env.rl_depths[1]"),
        ("run.progress=3", "run.progress"),
        ("rl.advantage=grpoo", "rl.advantage"),
        ("rl.aggregation=mean", "rl.aggregation"),
        ("rl.group_size=0", "rl.group_size"),
        ("sft.source=selff", "sft.source"),
        ("sft.self_samples=0", "sft.self_samples"),
        ("rl", "key=value"),
        ("env.name=foo", "env.name"),
        ("env.verifier=mathh", "env.verifier"),
        ("env.verifier=math", "own verifier"),  # arith (the default env) ignores it: say so
        ("model.dtype=bf16", "model.dtype"),
        ("rl.group_size=1", "rl.group_size"),
        ("rl.eps_low=1", "rl.eps_low"),
        ("run.name=", "run.name"),
        ("run.name=a/b", "run.name"),
        ("eval.pass_k=[1,16]", "eval.pass_k"),
        ("env.n_test=0", "env.n_test"),
    ],
)
def test_bad_key_or_value_names_it(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def test_bad_key_in_preset_names_file_and_key(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[rl]\nlearning_rate = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml.*rl\.learning_rate"):
        load_config(p)


def test_cli_reports_config_error(capsys):
    assert main(["train", "rl.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "rl.nope" in err and err.count("\n") == 1


def test_parse_override_types():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("a.b=hello") == ("a.b", "hello")
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


def test_string_fields_keep_override_text():
    cfg = load_config(None, ["run.name=nan", "model.path=123"])
    assert cfg.run.name == "nan" and cfg.model.path == "123"


def test_shipped_preset_equals_the_defaults():
    from pathlib import Path

    from credo.trainer.config import to_dict

    preset = Path(__file__).parents[1] / "configs" / "arith.toml"
    assert to_dict(load_config(preset)) == to_dict(load_config(None))


def test_quoted_string_override_is_unquoted():
    # quotes that reach the program (e.g. inside `credo ablate --variants 'off:curiosity.variant=""'`) are TOML
    # string syntax: the empty string switches curiosity off; an unknown quoted value is still rejected
    base = ["rl.multiturn=true", "curiosity.variant=paper"]
    assert load_config(None, [*base, 'curiosity.variant=""']).curiosity.variant == ""
    assert load_config(None, [*base, "curiosity.variant=''"]).curiosity.variant == ""
    assert load_config(None, [*base, "curiosity.variant="]).curiosity.variant == ""
    assert load_config(None, [*base, 'curiosity.variant="code"']).curiosity.variant == "code"
    assert load_config(None, ['run.name="a b"', 'model.path="x']).run.name == "a b"
    assert load_config(None, ['model.path="x']).model.path == '"x'  # not one quoted string: kept as given
    with pytest.raises(ConfigError, match="curiosity.variant"):
        load_config(None, [*base, 'curiosity.variant="nope"'])


def test_all_rows_of_a_dataset_is_n_zero():
    cfg = load_config(None, ["env.name=dataset", "env.n_test=0", "env.n_train=0"])
    assert cfg.env.n_test == 0 and cfg.env.n_train == 0


def test_resume_changes_block_another_model_or_env_and_list_the_rest():
    saved = to_dict(load_config(None, []))
    cfg = load_config(None, ["model.path=smollm2-135m-instruct", "env.name=reasoning_gym:chain_sum", "rl.lr=1e-4",
                             "model.dtype=bfloat16"])
    blocking, other = resume_changes(saved, cfg)
    assert blocking == ["env.name: 'arith' -> 'reasoning_gym:chain_sum'", "model.path: '' -> 'smollm2-135m-instruct'"]
    assert other == ["model.dtype: 'float32' -> 'bfloat16'", "rl.lr: 5e-05 -> 0.0001"]  # compute dtype: free
    del saved["rl"]["lr"]  # a checkpoint of an older credo: keys it lacks are not compared
    assert resume_changes(saved, load_config(None, ["rl.lr=1e-4"])) == ([], [])


def test_resuming_a_run_folder_with_another_model_stops_before_loading(tmp_path, capsys):
    from credo.trainer.loop import _check_resume

    saved = {"config": to_dict(load_config(None, [])), "step": 5}
    with pytest.raises(ConfigError, match=r"model\.d_model: 128 -> 64.*run\.name.*run\.resume=false"):
        _check_resume(saved, load_config(None, ["model.d_model=64"]), tmp_path / "checkpoint.pt")
    _check_resume(saved, load_config(None, ["rl.steps=3", "rl.lr=1e-4"]), tmp_path / "checkpoint.pt")
    out = capsys.readouterr().out
    assert "rl.lr: 5e-05 -> 0.0001" in out and "nothing to train" in out and "rl.steps=3" in out


def test_cli_names_a_file_that_is_not_a_checkpoint_in_one_line(tmp_path, capsys):
    bad = tmp_path / "metrics.jsonl"
    bad.write_text('{"step": 1}\n')
    assert main(["eval", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a credo checkpoint" in err and str(bad) in err and err.count("\n") == 1
