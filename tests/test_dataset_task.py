"""task.name=dataset: math problems from anything ``datasets`` opens, written here by the library
itself (no hub access in tests): saved directories, parquet/JSON/JSONL/CSV files, hub ids offline."""

import json

import datasets
import pytest
from datasets import Dataset, DatasetDict

from opo.commands.train import train
from opo.config import ConfigError, TaskConfig, load_config
from opo.tasks import build_task
from opo.tasks.dataset import load_sources
from opo.tasks.math import MathTask

TRAIN = {"q": ["1+1?", "2+2?", "3+3?", "4+4?"], "a": ["2", "4", "6", "8"], "level": [1, 2, 3, 4]}
TEST = {"q": ["5+5?", "6+6?"], "a": ["10", "12"], "level": [5, 6]}


@pytest.fixture(autouse=True)
def dataset_cache(tmp_path, monkeypatch):
    """load_dataset writes an Arrow copy of data files to its cache: keep it in the test's directory."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")


def splits():
    return DatasetDict(train=Dataset.from_dict(TRAIN), test=Dataset.from_dict(TEST))


def task(path, for_training=False, **settings) -> MathTask:
    t = build_task(TaskConfig(name="dataset", data_path=str(path), question_field="q", answer_field="a",
                              **{"eval_size": 1, **settings}), for_training)
    assert isinstance(t, MathTask)
    return t


def questions(examples):
    return [e.messages[-1]["content"].split("\n")[0] for e in examples]


def train_questions(t, n):
    return [questions([t.train_example(i)])[0] for i in range(n)]


def write(kind, tmp_path):
    """TRAIN written as ``kind``; the path to give task.data_path."""
    data = Dataset.from_dict(TRAIN)
    if kind == "saved":
        data.save_to_disk(tmp_path / "saved")
        return tmp_path / "saved"
    if kind == "saved_dict":
        splits().save_to_disk(tmp_path / "saved")
        return tmp_path / "saved"
    if kind == "parquet_glob":  # several files, one split
        data.select(range(2)).to_parquet(tmp_path / "part-0.parquet")
        data.select(range(2, 4)).to_parquet(tmp_path / "part-1.parquet")
        return tmp_path / "part-*.parquet"
    if kind == "parquet_dir":  # datasets names the splits after the files
        (tmp_path / "d").mkdir()
        data.to_parquet(tmp_path / "d" / "train.parquet")
        Dataset.from_dict(TEST).to_parquet(tmp_path / "d" / "test.parquet")
        return tmp_path / "d"
    path = tmp_path / f"d.{kind}"
    if kind == "parquet":
        data.to_parquet(path)
    elif kind == "csv":
        data.to_csv(path, index=False)
    else:
        data.to_json(path, lines=kind == "jsonl")
    return path


@pytest.mark.parametrize("kind", ["saved", "saved_dict", "parquet", "json", "jsonl", "csv", "parquet_glob",
                                  "parquet_dir"])
def test_every_format_loads_with_field_mapping(tmp_path, kind):
    t = task(write(kind, tmp_path), eval_size=2)
    assert [(r.question, r.reference, r.fields["level"]) for r in t.rows] == list(zip(*TRAIN.values()))
    assert [e.reference for e in t.eval_examples()] == ["2", "4"]
    assert train_questions(t, 3) == ["3+3?", "4+4?", "3+3?"]
    row = t.train_example(0).metadata["row"]  # for task.reward_fn (CSV reads the answers as numbers)
    assert (row["q"], str(row["a"]), row["level"]) == ("3+3?", "6", 3)
    t.close()


def test_split_selects_the_rows_and_without_eval_split_its_first_rows_are_held_out(tmp_path):
    splits().save_to_disk(tmp_path / "d")
    t = task(tmp_path / "d", split="test")
    assert questions(t.eval_examples()) == ["5+5?"] and train_questions(t, 2) == ["6+6?", "6+6?"]
    t.close()


@pytest.mark.parametrize("eval_size, held", [(1, ["5+5?"]), (0, ["5+5?", "6+6?"])])
def test_eval_split_holds_out_its_first_rows_and_training_uses_all_of_split(tmp_path, eval_size, held):
    splits().save_to_disk(tmp_path / "d")
    t = task(tmp_path / "d", eval_split="test", eval_size=eval_size)
    assert questions(t.eval_examples()) == held
    assert train_questions(t, 5) == TRAIN["q"] + TRAIN["q"][:1]
    t.close()


def test_training_rows_repeating_a_held_out_split_question_are_left_out(tmp_path, capsys):
    DatasetDict(train=Dataset.from_dict({"q": ["1+1?", "5+5?"], "a": ["2", "10"]}),
                test=Dataset.from_dict(TEST)).save_to_disk(tmp_path / "d")
    t = task(tmp_path / "d", eval_split="test")
    assert train_questions(t, 2) == ["1+1?", "1+1?"] and t.held_out_repeats == 1
    assert f"dataset '{tmp_path / 'd'}' split 'train' row 1" in capsys.readouterr().err
    t.close()
    DatasetDict(train=Dataset.from_dict({"q": ["5+5?"], "a": ["10"]}),
                test=Dataset.from_dict(TEST)).save_to_disk(tmp_path / "e")
    with pytest.raises(ValueError, match=r"all 1 usable row of dataset '.*e' split 'train' repeats a question held "
                                         r"out from dataset '.*e' split 'test' .*task.exclude_eval=false"):
        task(tmp_path / "e", eval_split="test", for_training=True)


def test_gsm8k_answer_format_takes_the_answer_after_the_marker(tmp_path):
    Dataset.from_dict({"q": ["a", "b"], "a": ["2 + 2 = 4\n#### 4", "#### 1,000"]}).save_to_disk(tmp_path / "d")
    t = task(tmp_path / "d", answer_format="gsm8k")
    assert [r.reference for r in t.rows] == ["4", "1000"]
    t.close()
    Dataset.from_dict({"q": ["a", "b"], "a": ["#### 4", "4"]}).save_to_disk(tmp_path / "e")
    with pytest.raises(ValueError, match=r"dataset '.*e' split 'train' row 1: field 'a' has no '#### <answer>' line"):
        task(tmp_path / "e", answer_format="gsm8k")


BAD_ROWS = [
    ({"q": ["x", "y"], "a": ["1", ""]}, "field 'a' is missing or empty"),
    ({"q": ["x", None], "a": ["1", "2"]}, "field 'q' is missing or empty"),
    ({"q": ["x", "y"], "a": [[1], [2, 3]]}, "field 'a' holds a list, not text or a number"),  # row 0 too
    ({"q": ["x", "y"], "a": [1.0, float("nan")]}, "field 'a' is missing or empty"),  # CSV's empty number
]


@pytest.mark.parametrize("columns, reason", BAD_ROWS)
def test_a_bad_row_stops_loading_naming_dataset_split_row_and_field(tmp_path, columns, reason):
    Dataset.from_dict(columns).save_to_disk(tmp_path / "d")
    row = 0 if "list" in reason else 1
    message = f"dataset '{tmp_path / 'd'}' split 'train' row {row}: {reason} (task.skip_bad_rows=true skips such rows)"
    with pytest.raises(ValueError) as e:
        task(tmp_path / "d")
    assert str(e.value) == message


def test_skip_bad_rows_leaves_bad_rows_out_counted_with_one_warning(tmp_path, capsys):
    Dataset.from_dict({"q": ["x", "", "y", "z", None], "a": ["1", "2", "3", "", "5"]}).save_to_disk(tmp_path / "d")
    t = task(tmp_path / "d", skip_bad_rows=True)
    assert [r.line for r in t.rows] == [0, 2] and t.skipped_rows == 3
    err = capsys.readouterr().err
    assert err.count("opo: warning:") == 1 and "skipped 3 bad rows (task.skip_bad_rows=true)" in err
    assert f"dataset '{tmp_path / 'd'}' split 'train' row 4: field 'q' is missing or empty" in err
    t.close()
    Dataset.from_dict({"q": ["", None], "a": ["1", "2"]}).save_to_disk(tmp_path / "e")
    with pytest.raises(ValueError, match=r"split 'train' holds no usable rows \(2 skipped\)"):
        task(tmp_path / "e", skip_bad_rows=True)


def test_too_long_prompts_are_named_by_split_and_row_and_skipped_in_either_split(tmp_path, capsys):
    """Rows of the two splits share indices: dropping held-out row 0 must not drop training row 0."""
    DatasetDict(train=Dataset.from_dict({"q": ["1+1?", "2+2?"], "a": ["2", "4"]}),
                test=Dataset.from_dict({"q": ["LONG", "6+6?"], "a": ["10", "12"]})).save_to_disk(tmp_path / "d")

    def problem(example):
        return "too long" if "LONG" in example.messages[-1]["content"] else None

    with pytest.raises(ValueError, match=r"^dataset '.*d' split 'test' row 0: too long; shorten the prompt"):
        task(tmp_path / "d", eval_split="test").limit_prompts(problem)
    t = task(tmp_path / "d", eval_split="test", skip_bad_rows=True)
    t.limit_prompts(problem)
    assert questions(t.eval_examples()) == ["6+6?"] and train_questions(t, 2) == ["1+1?", "2+2?"]
    assert t.skipped_rows == 1 and "split 'test' row 0: too long" in capsys.readouterr().err
    t.close()


def test_unknown_split_missing_column_and_missing_path_name_the_key(tmp_path):
    splits().save_to_disk(tmp_path / "d")
    with pytest.raises(ValueError, match=r"^task.split='validation': dataset '.*d' has no such split \(its splits: "
                                         r"train, test\)$"):
        task(tmp_path / "d", split="validation")
    with pytest.raises(ValueError, match=r"^task.eval_split='dev': .* \(its splits: train, test\)$"):
        task(tmp_path / "d", eval_split="dev")
    with pytest.raises(ValueError, match=r"^task.answer_field='answer' is not a column of dataset '.*d' split 'train' "
                                         r"\(its columns: q, a, level\)$"):
        build_task(TaskConfig(name="dataset", data_path=str(tmp_path / "d"), question_field="q"))
    with pytest.raises(ValueError, match=r"^task.data_path '.*missing.parquet' does not exist$"):
        task(tmp_path / "missing.parquet")
    (tmp_path / "d.txt").write_text("q,a\n")
    with pytest.raises(ValueError, match=r"^task.data_path '.*d.txt': cannot read '.txt' files"):
        task(tmp_path / "d.txt")
    with pytest.raises(ValueError, match=r"^task.dataset_config='main': .* has no configurations"):
        task(tmp_path / "d", dataset_config="main")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"^task.data_path '.*bad.parquet' cannot be read: \w+: [^\n]*$"):
        task(tmp_path / "bad.parquet")


def hub_probe_must_not_run(endpoint, timeout=5.0):
    raise AssertionError("the hub was probed although HF_HUB_OFFLINE is set")


@pytest.mark.parametrize("library_offline", [False, True])  # HF_HUB_OFFLINE set after or before datasets' import
def test_a_hub_id_offline_fails_at_once_with_one_line(monkeypatch, library_offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", library_offline)
    monkeypatch.setattr("opo.models.hub_reachable", hub_probe_must_not_run)
    with pytest.raises(ValueError) as e:
        task("openai/gsm8k", dataset_config="main")
    assert str(e.value).startswith("task.data_path 'openai/gsm8k' (task.dataset_config='main') is not a local path, "
                                   "and as a hub id it is not in the local cache (")
    assert str(e.value).endswith("and HF_HUB_OFFLINE is set: check the path, or load the dataset once with network")
    assert datasets.config.HF_HUB_OFFLINE is library_offline  # datasets' offline switch is restored


def test_a_hub_id_without_network_fails_after_one_probe_saying_so(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    probes = []
    monkeypatch.setattr("opo.models.hub_reachable", lambda endpoint, timeout=5.0: probes.append(endpoint) or False)
    with pytest.raises(ValueError, match=r"^task.data_path 'someone/problems' is not a local path.* and no network "
                                         r"\(https://\S+ did not answer\)"):
        task("someone/problems")
    assert len(probes) == 1 and datasets.config.HF_HUB_OFFLINE is False


def test_config_requires_data_path_and_a_distinct_eval_split(tmp_path):
    with pytest.raises(ConfigError, match=r"task.name=dataset needs task.data_path"):
        load_config(None, ["task.name=dataset"])
    with pytest.raises(ConfigError, match=r"task.eval_split='train' is task.split"):
        load_config(None, ["task.name=dataset", f"task.data_path={tmp_path}", "task.eval_split=train"])
    cfg = load_config(None, ["task.name=dataset", f"task.data_path={tmp_path}", "task.split=test",
                             "task.eval_split=validation", "task.dataset_config=main"])
    assert (cfg.task.split, cfg.task.eval_split, cfg.task.dataset_config) == ("test", "validation", "main")


def test_build_task_from_settings_grades_with_the_math_grader(tmp_path):
    splits().save_to_disk(tmp_path / "d")
    cfg = load_config(None, ["task.name=dataset", f"task.data_path={tmp_path / 'd'}", "task.question_field=q",
                             "task.answer_field=a", "task.eval_split=test"])
    t = build_task(cfg.task)
    try:
        ex = t.eval_examples()[0]
        right, wrong = t.grade(["so it is \\boxed{10}", "\\boxed{11}"], [ex, ex])
        assert (right.reward, right.correct, wrong.reward, wrong.correct) == (1.0, True, 0.0, False)
    finally:
        t.close()


def test_load_sources_reads_the_held_out_split_only_when_named(tmp_path):
    splits().save_to_disk(tmp_path / "d")
    t = TaskConfig(name="dataset", data_path=str(tmp_path / "d"), question_field="q", answer_field="a")
    train_rows, held = load_sources(t)
    assert held is None and train_rows.where == f"dataset '{tmp_path / 'd'}' split 'train'"
    t.eval_split = "test"
    assert [r.question for r in load_sources(t)[1].rows] == TEST["q"]


def test_opo_train_one_step_on_a_saved_dataset(tmp_path):
    DatasetDict(train=Dataset.from_dict({"question": ["1+1?", "", "2+2?"], "answer": ["2", "3", "4"]}),
                test=Dataset.from_dict({"question": ["5+5?"], "answer": ["10"]})).save_to_disk(tmp_path / "d")
    run = tmp_path / "run"
    summary = train(load_config(None, [
        "model.path=tiny", "task.name=dataset", f"task.data_path={tmp_path / 'd'}", "task.eval_split=test",
        "task.skip_bad_rows=true", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
        "rollout.max_new_tokens=3", "train.eval_max_new_tokens=3", "train.steps=1", "train.eval_before=false",
        "run.progress=false", f"run.dir={run}"]))
    assert summary["data/skipped_rows"] == 1 and summary["after"]["eval/n"] == 1  # the test split's one row
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 1]
    assert len((run / "samples.jsonl").read_text().splitlines()) == 4  # 2 prompts x 2 samples
