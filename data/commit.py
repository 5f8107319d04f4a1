"""Commits of a dataset being collected, and the recovery of one left by a killed run.

``reverie-collect`` writes a LeRobotDataset in commit groups. A commit is taken when lerobot's
writers are finalized (parquet and video files closed), so that every file on disk belongs to a
whole episode; it records, in ``<root>/.reverie/``, a copy of ``meta/`` and the list of the
dataset's files. While episodes past the last commit are written, the marker ``.reverie/writing``
exists. A commit takes six steps (``_COMMIT_STEPS``), each of which a kill may interrupt:

1. ``_snapshot_meta``: copy ``meta/`` to ``committed.tmp/meta``;
2. ``_write_file_list``: write ``committed.tmp/files.json`` (atomically, and last: its presence
   marks the snapshot complete);
3. ``_set_old_aside``: rename the previous commit ``committed`` to ``committed.old``;
4. ``_promote``: rename ``committed.tmp`` to ``committed``;
5. ``_drop_old``: delete ``committed.old``;
6. ``_clear_writing``: delete the ``writing`` marker.

Why a kill at any step loses nothing committed: the next run calls ``recover`` first.

* Killed before step 2 ended: the snapshot is incomplete and is deleted; the previous commit is
  still ``committed``, and as ``writing`` exists the dataset is rolled back to it: the files it
  does not list are removed (none of its own) and its ``meta/`` is restored.
* Killed after step 2 (also between the two renames, with no ``committed``): the snapshot is
  complete, and since nothing is written between finalizing and the end of a commit, the files
  on disk are the ones it lists. So the commit is finished rather than undone: steps 3 to 6 are
  redone, each written so that redoing it after it ran is harmless.
* Killed after step 4: ``committed`` is the new commit; a leftover ``committed.old`` is deleted,
  and a roll-back to the new commit (if ``writing`` is still there) removes nothing.

A roll-back killed midway is redone whole by the next run, since it deletes ``writing`` last. The
previous commit is set aside before the new one is renamed in and deleted only after, so one
commit is always there while episodes are written.

A run that ends with every episode whole calls ``finish``, which removes ``.reverie/`` (the marker
first): a dataset at rest holds only lerobot's files (and ``meta/reverie.json``), so lerobot's
``push_to_hub`` uploads none of this state and a folder copied or edited by lerobot carries none.
The next run commits before it writes (``data.collect``). Only a run killed hard leaves
``.reverie/``, which that next run needs. Creating the dataset (its first commit) and resuming the
collection are ``data.collect``'s; this module does not know what a dataset holds beyond its files
and ``meta/``.
"""

import json
import os
import shutil
from pathlib import Path

STATE_DIR = ".reverie"  # the commit snapshot and the "writing" marker, inside the root while a collection runs
_TMP, _COMMITTED, _OLD = "committed.tmp", "committed", "committed.old"
_WRITING = "writing"


def write_atomic(path: Path, text: str) -> None:
    """Writes ``path`` whole or not at all: a kill leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and STATE_DIR not in p.parts)


def _snapshot_meta(root: Path) -> None:
    state = root / STATE_DIR
    shutil.rmtree(state / _TMP, ignore_errors=True)
    shutil.copytree(root / "meta", state / _TMP / "meta")


def _write_file_list(root: Path) -> None:  # last, so that its presence marks the snapshot complete
    write_atomic(root / STATE_DIR / _TMP / "files.json", json.dumps(_files(root)))


def _set_old_aside(root: Path) -> None:
    state = root / STATE_DIR
    if (state / _COMMITTED).exists():
        (state / _COMMITTED).rename(state / _OLD)


def _promote(root: Path) -> None:
    (root / STATE_DIR / _TMP).rename(root / STATE_DIR / _COMMITTED)


def _drop_old(root: Path) -> None:
    shutil.rmtree(root / STATE_DIR / _OLD, ignore_errors=True)


def _clear_writing(root: Path) -> None:
    (root / STATE_DIR / _WRITING).unlink(missing_ok=True)


_COMMIT_STEPS = (_snapshot_meta, _write_file_list, _set_old_aside, _promote, _drop_old, _clear_writing)
_FINISHING = 2  # _COMMIT_STEPS[_FINISHING:] finish a commit whose snapshot is complete; each may be redone


def start_writing(root: Path) -> None:
    """Marks episodes past the last commit as being written: a run killed now is rolled back."""
    (root / STATE_DIR).mkdir(exist_ok=True)
    (root / STATE_DIR / _WRITING).touch()


def commit(root: Path) -> None:
    """Snapshot meta/ and the file list of a finalized dataset (call after ds.finalize())."""
    (root / STATE_DIR).mkdir(exist_ok=True)
    for step in _COMMIT_STEPS:
        step(root)


def finish(root: Path) -> None:
    """Drops the commit state of a dataset whose episodes are all whole (call after ds.finalize()).
    The marker goes first: killed after it, the rest is a snapshot that no roll-back reads and the
    next commit replaces."""
    _clear_writing(root)
    shutil.rmtree(root / STATE_DIR, ignore_errors=True)


def recover(root: Path) -> str | None:
    """Brings a dataset left by a killed run to a commit; returns what was done, for the log. Never
    removes a file of a commit."""
    state = root / STATE_DIR
    if (state / _TMP / "files.json").exists():
        # killed after a complete snapshot: the files on disk are the ones it lists (nothing is written
        # between ds.finalize() and the end of a commit), so the commit is finished rather than undone
        for step in _COMMIT_STEPS[_FINISHING:]:
            step(root)
        return "finished the commit its last run was killed in"
    shutil.rmtree(state / _TMP, ignore_errors=True)  # a snapshot killed while being taken
    if (state / _OLD).exists() and not (state / _COMMITTED).exists():  # the protocol never leaves this; be safe
        (state / _OLD).rename(state / _COMMITTED)
    _drop_old(root)
    if not (state / _WRITING).exists():
        return None
    if not (state / _COMMITTED).exists():
        raise RuntimeError(f"{root}: episodes were being written, and there is no commit to roll back to "
                           f"({state / _COMMITTED} is missing). Nothing was changed; pass --overwrite true to "
                           "collect again from the start")
    removed = _roll_back(root)
    return f"rolled back to its last commit, removing {removed} files of episodes a killed run left unfinished"


def _roll_back(root: Path) -> int:
    """Removes the files written since the last commit and restores its meta/; returns files removed.
    Killed midway, it is redone whole by the next run, since "writing" goes last."""
    state = root / STATE_DIR
    keep = set(json.loads((state / _COMMITTED / "files.json").read_text()))
    removed = [rel for rel in _files(root) if rel not in keep]
    for rel in removed:
        (root / rel).unlink()
    shutil.rmtree(root / "meta", ignore_errors=True)
    shutil.copytree(state / _COMMITTED / "meta", root / "meta")
    (state / _WRITING).unlink()
    return len(removed)
