"""What a Ray node that cannot see the study needs besides the script: its data.

The study's data travels as one tar through Ray's object store (put once by the
driver, unpacked once per node by :func:`.ray_warm.node_data`, linked into each
run's folder by :func:`.ray_warm.prepare`). It holds

- the data source the manifest names (``folder:``, ``csv:``, ``text:``), at its
  path relative to the study;
- the files the model file's own data function opens (``build_data()``,
  ``build_datasets()``, ``build_loaders()``): found by :func:`probe`, which runs
  that function as the baseline script does, in a folder laid out like the study,
  under an audit hook that records every file it opens for reading. A file opened
  by a path relative to the script or the working directory (the study, on a local
  run) travels at that relative path; a file opened by an absolute path travels
  as such, and the node puts a link to it at that path when nothing is there
  (see :func:`.ray_warm.place_absolute`).

A run folder stands for the study: a path with leading ``..`` is reached through
``up`` folders (``UP``): the script runs ``up`` levels deep when the furthest path
climbs that many. Files a ``Dataset`` opens only when an item is read (its
``__getitem__`` loading images one by one) are found too: the probe reads every
item of the datasets the function returns (a loader's dataset; an
``IterableDataset`` to its end) once, for at most ``WALK_S`` seconds. Past that
the files of the items not read are not seen (the driver warns): on a node
without them the run fails on the missing file, its path in the run's log.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablagen.core.errors import BackendError
from ablagen.core.audit import opened_for_reading

UP = "up"  # a run folder's stand-in for a leading ".." (ray_warm.UP)
ABSOLUTE = ".ablagen-absolute"  # in the bundle: files opened by absolute paths
USER_DATA = ("build_data", "build_datasets", "build_loaders")
PROBE_TIMEOUT_S = 600.0
WALK_S = 120.0  # the probe's time for reading every item of the returned datasets


@dataclass(frozen=True)
class Opened:
    """What the model file's data function opened: paths relative to the study
    (``relative``) and absolute ones (``absolute``), each a readable file."""

    relative: tuple[str, ...] = ()
    absolute: tuple[str, ...] = ()
    error: str | None = None  # the function failed (the runs will say so too)
    unread: bool = False  # WALK_S passed before every item of its datasets was read


@dataclass(frozen=True)
class Bundle:
    """The tar of a study's data, the ``up`` levels its run folder needs, and the
    absolute paths the node links to their copies in it."""

    blob: bytes
    up: int
    absolute: tuple[str, ...] = field(default=())


def _ups(rel: str) -> tuple[int, list[str]]:
    parts = posixpath.normpath(rel).split("/")
    up = 0
    while up < len(parts) and parts[up] == "..":
        up += 1
    return up, parts[up:]


def data_bundle(study_dir: Path, opened: Opened | None = None) -> Bundle | None:
    """The study's data (the manifest's data path, and the files ``opened`` names)
    as a tar whose entries sit where a run folder ``up`` levels deep finds them.
    None when there is nothing to ship (synthetic data, a function that opens no
    file)."""
    from ablagen.core.studydir import load_manifest

    items: list[tuple[Path, str]] = []  # (the file or folder, its path from the study)
    rel = (load_manifest(study_dir).config.get("data") or {}).get("path")
    if rel and not posixpath.isabs(rel):
        source = study_dir / posixpath.normpath(rel)
        if not source.exists():
            raise BackendError(
                f"the study's data {source} does not exist",
                "put the data back where the study was generated from, or regenerate it",
            )
        items.append((source, posixpath.normpath(rel)))
    if opened is not None:
        inside = [r for _, r in items]
        for path in opened.relative:
            if not any(path == d or path.startswith(d + "/") for d in inside):
                items.append((study_dir / path, path))
    absolute = tuple(opened.absolute) if opened is not None else ()
    if not items and not absolute:
        return None
    up = max((_ups(r)[0] for _, r in items), default=0)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for source, path in items:
            climbs, rest = _ups(path)
            arcname = "/".join([UP] * (up - climbs) + rest)
            tar.add(source, arcname=arcname, filter=_same_everywhere)
        for path in absolute:
            tar.add(
                path, arcname=f"{ABSOLUTE}/{path.lstrip('/')}", filter=_same_everywhere
            )
    return Bundle(buffer.getvalue(), up, absolute)


def _same_everywhere(info: Any) -> Any:
    """One bundle (one hash) for the same files, whoever made it when."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def start_probe(study_dir: Path) -> subprocess.Popen[str] | None:
    """Start :func:`probe` of the study's baseline script in a child process (it
    imports torch: it runs while the Ray actors start); None when the study's data
    does not come from the model file's own function."""
    from ablagen.core.studydir import BASELINE_ID, load_manifest

    manifest = load_manifest(study_dir)
    dataset = (manifest.config.get("data") or {}).get("dataset")
    if dataset not in USER_DATA:
        return None
    script = next(
        (v.script for v in manifest.variants if v.id == BASELINE_ID),
        manifest.variants[0].script if manifest.variants else None,
    )
    if script is None:
        return None
    return subprocess.Popen(
        [sys.executable, "-m", __name__, str(study_dir.resolve()), script, dataset],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def probe_result(proc: subprocess.Popen[str] | None) -> Opened | None:
    """What the started probe found (None: nothing was probed)."""
    if proc is None:
        return None
    try:
        out, err = proc.communicate(timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return Opened(error=f"it ran past {PROBE_TIMEOUT_S:.0f} s")
    lines = out.strip().splitlines()
    try:
        found = json.loads(lines[-1])
    except (IndexError, ValueError):
        last = (err.strip().splitlines() or ["no output"])[-1]
        return Opened(error=last[:300])
    return Opened(
        tuple(found["relative"]),
        tuple(found["absolute"]),
        found.get("error"),
        bool(found.get("unread")),
    )


# -- the probe itself: runs in its own process (python -m ablagen.orchestrate.ray_data)

MAX_UP = 8  # the furthest ".." a relative path may climb and still be found
_SKIP_DIRS = ("/proc/", "/sys/", "/dev/")
_CODE = (".py", ".pyc", ".so", ".pth")


def _mirror(study: Path, tmp: Path, script: str) -> Path:
    """A folder under ``tmp`` laid out like ``study`` and ``up`` of its ancestors
    (links to their entries; the chain itself made of ``up`` folders), so a path
    the script builds from its own folder or the working directory lands inside
    ``tmp`` -- unlike an absolute one. Returns the folder standing for the study."""
    chain = [study, *study.parents][: MAX_UP + 1]
    depth = len(chain) - 1
    for level, real in enumerate(chain):
        here = tmp.joinpath(*[UP] * (depth - level))
        here.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            for entry in os.scandir(real):
                name = entry.name
                if name == UP or (level == 0 and name == script):
                    continue
                if level > 0 and name == chain[level - 1].name:
                    (here / name).symlink_to(UP)  # back into the mirror
                else:
                    (here / name).symlink_to(entry.path)
    return tmp.joinpath(*[UP] * depth)


def _datasets(made: Any) -> list[Any]:
    """The torch datasets in what a data function returned: itself, the items of a
    tuple, list or dict, a loader's ``dataset``."""
    from torch.utils.data import Dataset, IterableDataset

    found, todo = [], [made]
    while todo:
        item = todo.pop(0)
        if isinstance(item, (tuple, list)):
            todo.extend(item)
        elif isinstance(item, dict):
            todo.extend(item.values())
        else:
            item = getattr(item, "dataset", item)  # a DataLoader stands for its data
            if isinstance(item, (Dataset, IterableDataset)):
                found.append(item)
    return found


def _read_every_item(datasets: list[Any], seconds: float) -> bool:
    """Read each dataset's items once, in order (iterate an ``IterableDataset``),
    so what ``__getitem__`` opens is opened now; False when ``seconds`` ran out."""
    from torch.utils.data import IterableDataset

    deadline = time.monotonic() + seconds
    for dataset in datasets:
        if isinstance(dataset, IterableDataset):
            items: Any = iter(dataset)
        else:
            items = (dataset[i] for i in range(len(dataset)))
        for _ in items:
            if time.monotonic() > deadline:
                return False
    return True


def probe(study: Path, script: str, dataset: str) -> dict[str, Any]:
    """Run the script's data function (as its run would: in the study, from its
    folder) and return the files it opened for reading: ``relative`` (to the study)
    and ``absolute``; ``error`` when it failed."""
    import runpy
    import shutil
    import tempfile

    study = Path(os.path.realpath(study))
    tmp = Path(os.path.realpath(tempfile.mkdtemp(prefix="ablagen-probe-")))
    opened: list[str] = []
    error, unread = None, False
    try:
        cwd = _mirror(study, tmp, script)
        path = cwd / script
        shutil.copyfile(study / script, path)
        os.chdir(cwd)
        sys.argv = [str(path)]
        sys.path.insert(0, str(cwd))
        space = runpy.run_path(str(path), run_name="__ablagen_probe__")
        if dataset == "build_loaders":

            def call() -> Any:  # the loaders are made, not iterated
                return space["build_loaders"](space.get("BATCH_SIZE", 1), 0)

        elif dataset == "build_datasets":
            call = space.get("build_datasets")
        else:  # the tensors as the script makes them (or the function itself)
            call = space.get("load_data") or space.get("build_data")
        recording = [True]

        def hook(event: str, args: tuple[Any, ...]) -> None:
            if event == "open" and recording[0]:
                read = opened_for_reading(args)
                if read is not None:
                    opened.append(os.path.abspath(read))

        sys.addaudithook(hook)
        try:
            if callable(call):
                unread = not _read_every_item(_datasets(call()), WALK_S)
        except Exception as exc:  # noqa: BLE001 - reported, the runs say it again
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        finally:
            recording[0] = False
        relative, absolute = [], []
        prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix}
        for name in dict.fromkeys(opened):
            if name.startswith(str(tmp) + os.sep):
                rel = os.path.relpath(name, cwd)
                if rel != script and os.path.isfile(name):
                    relative.append(Path(rel).as_posix())
            elif (
                os.path.isfile(name)
                and not name.endswith(_CODE)
                and not name.startswith(_SKIP_DIRS)
                and not any(name.startswith(p + os.sep) for p in prefixes)
            ):
                absolute.append(name)
    finally:
        os.chdir("/")
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "relative": relative,
        "absolute": absolute,
        "error": error,
        "unread": unread,
    }


if __name__ == "__main__":
    found = probe(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
    sys.stdout.write("\n" + json.dumps(found) + "\n")
