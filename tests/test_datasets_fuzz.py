"""Property-based tests of the dataset reader on damaged input (hypothesis).

Corrupted, truncated and random files, D4RL and Minari: the reader either returns a
dataset or raises DatasetError naming the file. Never another exception, never a
hang, and the input is never modified.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_datasets import make_episodes, minari_kwargs

from replay.datasets import (
    DatasetError,
    OfflineDataset,
    load_dataset,
    write_d4rl,
    write_minari,
)

HANG_S = 20
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    episodes = make_episodes(lengths=(7, 3, 12))
    d4rl = write_d4rl(root / "d4rl.hdf5", episodes).read_bytes()
    minari_dir = write_minari(root / "minari", episodes, **minari_kwargs())
    files = {p.relative_to(minari_dir).as_posix(): p.read_bytes()
             for p in minari_dir.rglob("*") if p.is_file()}
    return {"d4rl": d4rl, "minari": files}


class _Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Hang


def read_checked(path: Path) -> tuple[str, bool]:
    """Read `path` with load_dataset under a HANG_S alarm: ('dataset' | 'DatasetError' |
    'hang' | the type of any other exception, whether any file under `path` changed)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(HANG_S)
    try:
        outcome = "dataset" if isinstance(load_dataset(path), OfflineDataset) else "other"
    except DatasetError as error:
        named = str(path) in str(error) or path.name in str(error)
        outcome = "DatasetError" if named else "DatasetError not naming the input"
    except _Hang:
        outcome = "hang"
    except Exception as error:  # anything else is what these tests look for
        outcome = f"{type(error).__name__}: {error}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    return outcome, after != before


ALLOWED = ("dataset", "DatasetError")


def damage(data: bytes, cut: int | None, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data if cut is None else data[: cut % (len(data) + 1)])
    for position, value in flips:
        if out:
            out[position % len(out)] = value
    return bytes(out)


damages = st.tuples(
    st.one_of(st.none(), st.integers(min_value=0, max_value=1 << 20)),
    st.lists(st.tuples(st.integers(min_value=0, max_value=1 << 20),
                       st.integers(min_value=0, max_value=255)), max_size=40),
)


@SETTINGS
@given(how=damages)
def test_damaged_d4rl_files_give_a_dataset_or_a_clear_error(originals, how):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.hdf5"
        path.write_bytes(damage(originals["d4rl"], *how))
        outcome, modified = read_checked(path)
    assert outcome in ALLOWED and not modified, (outcome, modified)


@SETTINGS
@given(how=damages, target=st.sampled_from(["data/main_data.hdf5", "data/metadata.json"]))
def test_damaged_minari_folders_give_a_dataset_or_a_clear_error(originals, how, target):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "minari"
        for name, data in originals["minari"].items():
            file = folder / name
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(damage(data, *how) if name == target else data)
        outcome, modified = read_checked(folder)
    assert outcome in ALLOWED and not modified, (outcome, modified)


@SETTINGS
@given(data=st.binary(max_size=4096), name=st.sampled_from(["x.hdf5", "main_data.hdf5"]))
def test_random_bytes_give_a_clear_error(data, name):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        outcome, modified = read_checked(path)
    assert outcome == "DatasetError" and not modified, (outcome, modified)


def test_the_fuzzed_originals_are_readable(originals, tmp_path):
    """The damage is what the reader refuses: undamaged copies read back whole."""
    path = tmp_path / "d.hdf5"
    path.write_bytes(originals["d4rl"])
    assert [e.length for e in load_dataset(path).episodes] == [7, 3, 12]
    folder = tmp_path / "m"
    for name, data in originals["minari"].items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    episodes = load_dataset(folder).episodes
    assert [e.length for e in episodes] == [7, 3, 12]
    np.testing.assert_array_equal(episodes[0].actions, make_episodes(lengths=(7, 3, 12))[0].actions)
    shutil.rmtree(folder)
