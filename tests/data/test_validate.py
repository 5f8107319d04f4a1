"""A corrupt or missing dataset is a clear error naming the file, the row and the feature, never a
training on garbage or a detour to the hub: values outside what lerobot recorded per episode,
non-finite values and statistics, truncated parquet files, a root that does not exist."""

import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.clips import ClipConfig, ClipDataset, DatasetConfig
from simulator import keys
from simulator.normalization import CorruptDatasetError, Normalizer, stats_path

CFG = ClipConfig(context=1, horizon=1)


@pytest.fixture
def dataset(tiny_dataset, tmp_path):
    """A private copy of the shared tiny dataset, without statistics, to corrupt."""
    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root)
    stats_path(root).unlink(missing_ok=True)
    return root


def last_data_file(root):
    return max((root / "data").glob("*/*.parquet"))


def set_action(path, row: int, dim: int, value: float) -> tuple[int, int]:
    """Rewrite one action value of a data parquet file; (episode, frame) of that row."""
    table = pq.read_table(path)
    column = table.column(keys.ACTION).combine_chunks()
    values = column.flatten().to_numpy().copy().reshape(len(column), -1)
    values[row, dim] = value
    actions = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), pa.float32()), values.shape[1])
    pq.write_table(table.set_column(table.schema.get_field_index(keys.ACTION), keys.ACTION, actions), path)
    return table.column("episode_index")[row].as_py(), table.column("frame_index")[row].as_py()


@pytest.mark.parametrize("value, problem", [(7e36, "outside"), (np.nan, "not finite"), (-np.inf, "not finite")])
def test_corrupt_action_value_names_file_row_and_feature(dataset, value, problem):
    path = last_data_file(dataset)
    episode, frame = set_action(path, row=30, dim=3, value=value)
    with pytest.raises(CorruptDatasetError, match=problem) as error:
        ClipDataset(root=dataset, config=CFG)
    message = str(error.value)
    assert str(path) in message and f"episode {episode}, frame {frame}" in message and f"{keys.ACTION}[3]" in message
    assert not stats_path(dataset).exists()  # no statistics computed from the corrupt values


def test_corrupt_episode_outside_the_loaded_ones_fails_the_statistics(dataset):
    """Statistics describe the whole dataset: a training on episodes 0-1 computes them from every episode."""
    path = last_data_file(dataset)
    episode, frame = set_action(path, row=-1, dim=0, value=-4614.0)
    assert episode not in (0, 1)
    with pytest.raises(CorruptDatasetError, match=f"episode {episode}, frame {frame}"):
        ClipDataset(root=dataset, config=CFG, episodes=[0, 1])


@pytest.mark.parametrize("where", ["values", "page header"])
def test_raw_bytes_overwritten_in_a_data_file_are_caught(dataset, where):
    """64 bytes overwritten in the action column's dictionary page: in the middle (the values decode to
    garbage without any error from pyarrow) or at its start (the page no longer decodes)."""
    path = last_data_file(dataset)
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(2)
    assert chunk.path_in_schema.startswith(keys.ACTION) and chunk.dictionary_page_offset is not None
    start = {"values": (chunk.dictionary_page_offset + chunk.data_page_offset) // 2,
             "page header": chunk.dictionary_page_offset}[where]
    data = bytearray(path.read_bytes())
    data[start:start + 64] = b"\x7f" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDatasetError, match=re.escape(str(path))):
        ClipDataset(root=dataset, config=CFG)


def test_truncated_data_file_is_named(dataset):
    path = last_data_file(dataset)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptDatasetError, match=re.escape(str(path))):
        ClipDataset(root=dataset, config=CFG)
    with pytest.raises(CorruptDatasetError, match=re.escape(str(path))):
        DatasetConfig(root=dataset).split()


def test_missing_data_file_is_named_not_fetched_from_the_hub(dataset):
    path = last_data_file(dataset)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        ClipDataset(root=dataset, config=CFG)


@pytest.mark.parametrize("std", [float("nan"), float("inf")])
def test_non_finite_stored_statistics_are_named(dataset, std):
    ClipDataset(root=dataset, config=CFG)  # writes the statistics
    path = stats_path(dataset)
    stats = json.loads(path.read_text())
    stats["features"][keys.ACTION]["std"][2] = std
    path.write_text(json.dumps(stats))
    with pytest.raises(CorruptDatasetError, match=rf"{re.escape(str(path))}.*{keys.ACTION}.*std.*not finite"):
        ClipDataset(root=dataset, config=CFG)
    with pytest.raises(ValueError, match=rf"{keys.ACTION}.*std.*not finite"):
        Normalizer(stats["features"])


def test_stored_statistics_of_corrupt_data_are_refused(dataset):
    """Statistics computed from corrupt values (std 1e35) outlive a repaired dataset of the same size."""
    ClipDataset(root=dataset, config=CFG)
    path = stats_path(dataset)
    stats = json.loads(path.read_text())
    stats["features"][keys.ACTION]["max"][1] = 7e36
    stats["features"][keys.ACTION]["std"][1] = 1e35
    path.write_text(json.dumps(stats))
    with pytest.raises(CorruptDatasetError, match=rf"{re.escape(str(path))}.*{keys.ACTION}\[1\].*delete it"):
        ClipDataset(root=dataset, config=CFG)


def test_missing_root_is_named_and_never_sent_to_the_hub(tmp_path):
    missing = tmp_path / "no_such_dataset"
    named = rf"{re.escape(str(missing))} is not a LeRobot dataset: the folder does not exist"
    for load in (DatasetConfig(root=missing).split, lambda: ClipDataset(root=missing)):
        with pytest.raises(FileNotFoundError, match=named):
            load()
    (missing / "meta").mkdir(parents=True)
    (missing / "meta" / "info.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not a LeRobot dataset: it has no meta/tasks.parquet, meta/episodes"):
        DatasetConfig(root=missing).split()


def test_non_finite_statistics_beside_a_world_model_are_named(tmp_path):
    from simulator.env import NORMALIZATION_FILE, load_normalizer

    path = tmp_path / NORMALIZATION_FILE
    path.write_text(json.dumps({keys.ACTION: {"mean": [0.0, float("nan")], "std": [1.0, 1.0]}}))
    with pytest.raises(CorruptDatasetError, match=rf"{re.escape(str(path))}: {keys.ACTION} mean\[1\] = nan is not finite"):
        load_normalizer(tmp_path)
