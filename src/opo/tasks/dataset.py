"""Math problems from anything ``datasets`` opens (``task.name=dataset``): a directory written by
``save_to_disk``, parquet/JSON/JSONL/CSV file(s) (a glob pattern for several), a directory of such
files (``datasets`` names the splits after the files), or a hub id.

Rows are checked as JSONL rows are (:func:`opo.tasks.math.parse_row`) and named by split and
0-based row index, as ``datasets`` numbers them: "dataset 'X' split 'train' row 17".
"""

from __future__ import annotations

import glob
import math
from pathlib import Path
from typing import Any, Callable, Optional

from opo.config import TaskConfig
from opo.jsonl import BadRow
from opo.tasks.math import DEFAULT, SKIP_KEY, Row, Source, parse_row

FORMATS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def load_sources(t: TaskConfig) -> tuple[Source, Optional[Source]]:
    """The rows of ``t.split`` and, with ``t.eval_split``, the held-out rows of that split."""
    if not t.data_path:
        raise ValueError("task.name=dataset needs task.data_path (a saved dataset directory, data file(s) or a hub id)")
    splits = open_splits(t.data_path, t.dataset_config)
    fields = (t.question_field or DEFAULT.question_field, t.answer_field or DEFAULT.answer_field,
              t.answer_format or DEFAULT.answer_format)
    train = read_split(splits, "task.split", t.split, t.data_path, fields, t.skip_bad_rows)
    if t.eval_split is None:
        return train, None
    return train, read_split(splits, "task.eval_split", t.eval_split, t.data_path, fields, t.skip_bad_rows)


def open_splits(path: str, config: Optional[str]) -> dict[str, Any]:
    """Every split of the dataset at ``path`` (``datasets.Dataset`` by name); a lone saved Dataset
    and data files given by name are one split, 'train' (as ``load_dataset`` names them)."""
    import datasets  # here: importing it takes seconds

    from opo.models import HUB_ID  # here: it imports torch

    local = Path(path).expanduser()
    markers = (datasets.config.DATASETDICT_JSON_FILENAME, datasets.config.DATASET_STATE_JSON_FILENAME)
    saved = local.is_dir() and any((local / name).is_file() for name in markers)  # what save_to_disk writes
    pattern = any(c in path for c in "*?[")
    if (saved or local.is_file() or pattern) and config is not None:
        raise ValueError(f"task.dataset_config='{config}': '{path}' has no configurations (only hub datasets and data "
                         "directories with a README that declares them do); remove the setting")
    who = f"task.data_path '{path}'" + (f" (task.dataset_config='{config}')" if config else "")
    if saved:
        data = _load(who, lambda: datasets.load_from_disk(str(local)))
    elif local.is_dir():
        data = _load(who, lambda: datasets.load_dataset(str(local), name=config))
    elif local.is_file() or (pattern and glob.glob(str(local), recursive=True)):
        builder = FORMATS.get(local.suffix.lower())
        if builder is None:
            raise ValueError(f"{who}: cannot read '{local.suffix}' files; task.name=dataset reads "
                             f"{', '.join(FORMATS)} files, directories and hub ids (docs/datasets.md)")
        data = _load(who, lambda: datasets.load_dataset(builder, data_files=str(local)))
    elif HUB_ID.match(path) and local.suffix.lower() not in FORMATS:
        data = _load_hub(datasets, who, path, config)
    else:
        raise ValueError(f"task.data_path '{path}' does not exist")
    return {"train": data} if isinstance(data, datasets.Dataset) else dict(data)


def _load(who: str, load: Callable[[], Any]) -> Any:
    """``load()``, any failure of it a one-line ValueError naming the setting (not a long traceback)."""
    try:
        return load()
    except _NotCached:
        raise
    except Exception as e:  # datasets raises many kinds for unreadable data
        raise ValueError(f"{who} cannot be read: {type(e).__name__}: {' '.join(str(e).split())}") from None


def _load_hub(datasets: Any, who: str, path: str, config: Optional[str]) -> Any:
    """The hub dataset ``path`` (every split) when the hub answers, else its copy in the local cache;
    with neither a one-line ValueError within about 5 seconds instead of a minute of retries."""
    from opo.models import hub_reachable, offline_by_environment  # here: it imports torch

    offline = datasets.config.HF_HUB_OFFLINE or offline_by_environment()
    if not offline and hub_reachable(datasets.config.HF_ENDPOINT):
        return _load(who, lambda: datasets.load_dataset(path, name=config))
    # datasets' own offline mode looks in its cache at once, without trying the network
    before, datasets.config.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE, True
    try:
        return _load(who, lambda: _from_cache(datasets, path, config))
    except _NotCached:
        why = "HF_HUB_OFFLINE is set" if offline else f"no network ({datasets.config.HF_ENDPOINT} did not answer)"
        raise ValueError(f"{who} is not a local path, and as a hub id it is not in the local cache "
                         f"({datasets.config.HF_DATASETS_CACHE}) and {why}: check the path, or load the dataset "
                         "once with network") from None
    finally:
        datasets.config.HF_HUB_OFFLINE = before


class _NotCached(Exception):
    pass


def _from_cache(datasets: Any, path: str, config: Optional[str]) -> Any:
    """``path`` from the local cache (hub offline); _NotCached when it is not there. Other failures
    (a bad configuration or split of a cached dataset) pass through with their own message."""
    from datasets.exceptions import DatasetNotFoundError

    try:
        return datasets.load_dataset(path, name=config)
    except (ConnectionError, FileNotFoundError, DatasetNotFoundError) as e:
        raise _NotCached() from e


def read_split(splits: dict[str, Any], key: str, split: str, path: str, fields: tuple[str, str, str],
               skip_bad_rows: bool) -> Source:
    """The rows of split ``split`` (named by the setting ``key``); a bad row raises ValueError naming
    split and row, or with ``skip_bad_rows`` is left out and listed in the Source's ``skipped``."""
    if split not in splits:
        raise ValueError(f"{key}='{split}': dataset '{path}' has no such split (its splits: {', '.join(splits)})")
    data = splits[split]
    where = f"dataset '{path}' split '{split}'"
    for field_key, name in zip(("task.question_field", "task.answer_field"), fields):
        if name not in data.column_names:
            raise ValueError(f"{field_key}='{name}' is not a column of {where} (its columns: "
                             f"{', '.join(data.column_names)})")
    rows, skipped = [], []
    for index, values in enumerate(data):
        try:
            rows.append(parse_values(values, index, fields))
        except BadRow as e:
            if not skip_bad_rows:
                raise ValueError(f"{where} row {index}: {e} ({SKIP_KEY}=true skips such rows)") from None
            skipped.append(f"{where} row {index}: {e}")
    if not rows:
        raise ValueError(f"{where} holds no usable rows" + (f" ({len(skipped)} skipped)" if skipped else ""))
    return Source(rows, where, where, "{where} row {line}", skipped)


def parse_values(values: dict, index: int, fields: tuple[str, str, str]) -> Row:
    """:func:`parse_row` of one dataset row. Stricter than for JSONL: a list or dict (e.g. a chat-format
    prompt column) would become its Python repr as question or answer, and CSV's missing numbers are NaN."""
    for name in fields[:2]:
        value = values.get(name)
        if isinstance(value, float) and math.isnan(value):
            raise BadRow(f"field '{name}' is missing or empty")
        if value is not None and not isinstance(value, (str, int, float)):
            raise BadRow(f"field '{name}' holds a {type(value).__name__}, not text or a number")
    return parse_row(values, index, *fields)
