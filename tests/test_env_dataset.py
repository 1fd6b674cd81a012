"""The dataset environment: JSONL / CSV / parquet files, field mapping, templates, and errors naming the bad record."""

import json
import logging
import pickle
import random

import pytest

pytest.importorskip("datasets")
pd = pytest.importorskip("pandas")

from credo.cli import main  # noqa: E402
from credo.envs import make_env  # noqa: E402
from credo.envs.dataset import DatasetEnv, DatasetError  # noqa: E402
from credo.trainer.config import EnvConfig  # noqa: E402

ROWS = [
    {"question": "2+3", "final": 5, "topic": "add", "work": "2+3=5"},
    {"question": "4*2", "final": 8, "topic": "mul", "work": "4*2=8"},
    {"question": "9-7", "final": 2, "topic": "sub", "work": "9-7=2"},
]
FIELDS = {"prompt": "question", "answer": "final", "solution": "work"}


@pytest.fixture(autouse=True)
def _private_hf_cache(tmp_path, monkeypatch):
    """`datasets` caches what it reads; keep the tests' files out of the user's cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_csv(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def write_parquet(path, rows):
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def env_for(train, test=None, **kw):
    kw.setdefault("fields", FIELDS)
    kw.setdefault("verifier", "integer")
    return DatasetEnv(train_files=[train], test_files=[test or train], **kw)


@pytest.mark.parametrize("write", [write_jsonl, write_csv, write_parquet])
def test_loads_each_format_with_mapping(tmp_path, write):
    ext = {write_jsonl: "jsonl", write_csv: "csv", write_parquet: "parquet"}[write]
    env = env_for(write(tmp_path / f"d.{ext}", ROWS))
    train = env.examples("train")
    assert [e.prompt for e in train] == ["2+3", "4*2", "9-7"]
    assert [int(e.reference) for e in train] == [5, 8, 2]  # CSV keeps text: "5"
    assert train[0].meta["row"]["topic"] == "add"  # extra columns are kept
    assert env.render_prompt(train[0]).startswith("2+3\n") and "<answer>" in env.render_prompt(train[0])
    ex = train[0]
    assert env.verify(env.reference_completion(ex), ex).value == 1.0  # solution + appended answer tag
    assert env.reference_completion(ex) == "2+3=5\n<answer>5</answer>"
    assert env.verify("<answer>6</answer>", ex).value == 0.0
    assert env.verify("no tag", ex).parts["format"] == 0.0
    assert [e.prompt for e in env.examples("sft")] == [e.prompt for e in train]  # train rows with a solution
    assert pickle.loads(pickle.dumps(train))[1].meta["row"]["topic"] == "mul"


def test_csv_columns_are_text(tmp_path):
    env = env_for(write_csv(tmp_path / "d.csv", [{"question": "007", "final": "7"}]), fields={"prompt": "question",
                                                                                           "answer": "final"})
    (ex,) = env.examples("train")
    assert ex.prompt == "007" and ex.reference == "7"


def test_make_env_template_ids_and_limits(tmp_path, caplog):
    rows = [{**r, "uid": f"q{i}"} for i, r in enumerate(ROWS)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = EnvConfig(name="dataset", train_files=[path], test_files=[path], fields={**FIELDS, "id": "uid"},
                    verifier="integer", prompt_template="[{topic}] {prompt} =", n_train=2)
    env = make_env(cfg)
    with caplog.at_level(logging.WARNING, logger="credo.envs.dataset"):
        train = env.examples("train")
        assert len(env.examples("test")) == 3  # n_test (200) larger than the file: all rows, nothing said
    assert [e.id for e in train] == ["q0", "q1"]  # n_train smaller than the file: the first rows, said once
    (rec,) = caplog.records
    assert path in rec.getMessage() and "train split cut at its first 2" in rec.getMessage()
    assert env.render_prompt(train[1]) == "[mul] 4*2 ="
    cfg.n_train = 0  # 0: all rows
    assert len(make_env(cfg).examples("train")) == 3


def test_default_field_names_and_sft_files(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "1+1", "answer": "2"}])
    sft = write_csv(tmp_path / "s.csv", [{"prompt": "1+2", "solution": "1+2=3 <answer>3</answer>"}])
    env = DatasetEnv(train_files=[train], test_files=[train], sft_files=[sft], verifier="integer")
    (ex,) = env.examples("sft")
    assert env.reference_completion(ex) == "1+2=3 <answer>3</answer>"  # already tagged: unchanged
    assert [e.id for e in env.examples("train")] == ["train-0"]


def test_sft_from_train_without_solutions_is_a_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "1+1", "answer": "2"}])
    env = DatasetEnv(train_files=[path], test_files=[path], verifier="integer")
    with pytest.raises(DatasetError, match="sft split is empty"):
        env.examples("sft")


def bad_record(tmp_path, write, ext, rows, **kw):
    path = write(tmp_path / f"bad.{ext}", rows)
    env = DatasetEnv(train_files=[path], test_files=[path], verifier="integer", **kw)
    with pytest.raises(DatasetError) as err:
        env.examples("train")
    return str(err.value), path


def test_jsonl_missing_field_names_file_line_field(tmp_path):
    msg, path = bad_record(tmp_path, write_jsonl, "jsonl", [ROWS[0], {"question": "1+1"}, ROWS[2]], fields=FIELDS)
    assert path in msg and "line 2" in msg and "'answer'" in msg and "missing" in msg


def test_jsonl_null_and_empty_prompt(tmp_path):
    msg, path = bad_record(tmp_path, write_jsonl, "jsonl", [ROWS[0], ROWS[1], {"question": None, "final": 1}],
                           fields=FIELDS)
    assert path in msg and "line 3" in msg and "'prompt'" in msg and "null" in msg
    msg, _ = bad_record(tmp_path, write_jsonl, "jsonl", [{"question": "  ", "final": 1}], fields=FIELDS)
    assert "line 1" in msg and "'prompt'" in msg and "empty" in msg


def test_jsonl_non_string_prompt_and_wrong_answer_type(tmp_path):
    msg, path = bad_record(tmp_path, write_jsonl, "jsonl", [ROWS[0], {"question": 12, "final": 1}], fields=FIELDS)
    assert path in msg and "line 2" in msg and "'prompt'" in msg and "expected a string" in msg
    msg, _ = bad_record(tmp_path, write_jsonl, "jsonl", [ROWS[0], ROWS[1], {"question": "x", "final": [1, 2]}],
                        fields=FIELDS)
    assert "line 3" in msg and "'answer'" in msg and "expected a string or a number" in msg


def test_jsonl_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps({"question": "", "final": 1}) + "\n")
    env = DatasetEnv(train_files=[str(path)], test_files=[str(path)], verifier="integer", fields=FIELDS)
    with pytest.raises(DatasetError, match=r"gaps\.jsonl: line 3: field 'prompt'"):
        env.examples("train")


def test_malformed_json_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"question": "1+1", "final": \n')
    with pytest.raises(DatasetError) as err:
        DatasetEnv(train_files=[str(path)], test_files=[str(path)], verifier="integer").examples("train")
    assert str(path) in str(err.value) and "line 2" in str(err.value) and "malformed JSON" in str(err.value)


def test_csv_empty_cell_names_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('question,final\n"two\nlines",1\n3+4,\n')  # a quoted newline: the bad record is on line 4
    env = DatasetEnv(train_files=[str(path)], test_files=[str(path)], verifier="integer", fields=FIELDS)
    with pytest.raises(DatasetError) as err:
        env.examples("train")
    msg = str(err.value)
    assert str(path) in msg and "line 4" in msg and "'answer'" in msg and "null or empty" in msg


def test_parquet_null_names_row_index(tmp_path):
    msg, path = bad_record(tmp_path, write_parquet, "parquet",
                           [ROWS[0], {"question": None, "final": 8}, ROWS[2]], fields=FIELDS)
    assert path in msg and "row 1 (0-based row index)" in msg and "'prompt'" in msg


def test_parquet_wrong_type(tmp_path):
    msg, path = bad_record(tmp_path, write_parquet, "parquet", [{"question": 1, "final": 2}], fields=FIELDS)
    assert path in msg and "row 0" in msg and "'prompt'" in msg and "expected a string" in msg


def test_mapping_to_missing_column_lists_columns(tmp_path):
    msg, path = bad_record(tmp_path, write_csv, "csv", ROWS, fields={"prompt": "problem", "answer": "final"})
    assert path in msg and "'problem'" in msg and "question, final, topic, work" in msg


def test_duplicate_ids(tmp_path):
    rows = [{"prompt": "a", "answer": 1, "id": 7}, {"prompt": "b", "answer": 2, "id": 7}]
    msg, path = bad_record(tmp_path, write_jsonl, "jsonl", rows)
    assert path in msg and "line 2" in msg and "duplicate id" in msg


def test_template_naming_unknown_column(tmp_path):
    msg, path = bad_record(tmp_path, write_jsonl, "jsonl", ROWS, fields=FIELDS, prompt_template="{difficulty}")
    assert path in msg and "line 1" in msg and "difficulty" in msg and "topic" in msg


def test_missing_file_unknown_extension_unknown_field(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        DatasetEnv(train_files=[str(tmp_path / "nope.jsonl")], verifier="integer")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"d\.txt: unknown extension '\.txt'; supported: \.jsonl"):
        DatasetEnv(train_files=[str(tmp_path / "d.txt")], verifier="integer")
    with pytest.raises(DatasetError, match="unknown key.*question.*credo fields: prompt, answer"):
        DatasetEnv(fields={"question": "q"}, verifier="integer")
    with pytest.raises(DatasetError, match="test split is empty"):
        DatasetEnv(verifier="integer").examples("test")


def test_train_end_to_end(tmp_path):
    r = random.Random(0)
    rows = [{"q": f"{a}+{b}", "ans": a + b, "sol": f"{a}+{b}={a + b}"}
            for a, b in ((r.randint(0, 9), r.randint(0, 9)) for _ in range(24))]
    train, test = write_jsonl(tmp_path / "train.jsonl", rows[:20]), write_csv(tmp_path / "test.csv", rows[20:])
    rc = main(["train", f"run.out_dir={tmp_path}", "run.name=ds", "env.name=dataset", f'env.train_files=["{train}"]',
               f'env.test_files=["{test}"]', "env.fields.prompt=q", "env.fields.answer=ans", "env.fields.solution=sol",
               "env.verifier=integer", "sft.steps=2", "sft.batch_size=4", "sft.warmup=1", "rl.steps=1",
               "rl.prompts_per_step=2", "rl.group_size=2", "rl.max_new_tokens=8", "eval.n_samples=1",
               "eval.pass_k=[1]", "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.d_ff=64",
               "model.max_len=96", "run.progress=false", "run.threads=2"])
    assert rc == 0
    recs = [json.loads(x) for x in (tmp_path / "ds" / "metrics.jsonl").read_text().splitlines()]
    assert [r["verify/errors"] for r in recs if r["phase"] == "rl"] == [0.0]
