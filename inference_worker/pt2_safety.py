"""Load a ``torch.export`` archive (.pt2) without unpickling anything from it.

``torch.export.load`` unpickles parts of an archive: weights and constants its config marks ``use_pickle``
(``torch.load(weights_only=False)``), custom and opaque objects (``pickle.loads``), and sample inputs that
fail a
``weights_only`` load are loaded again without it. A planted archive then runs its payload in the worker. So
an
archive is checked first, and refused with a message naming the entry, if any entry would be unpickled:

- only the ``pt2`` archive format is accepted;
- no weight or constant may be marked ``use_pickle``, and no constant may be a custom or opaque object;
- the sample inputs must load with ``weights_only=True`` (then torch never falls back).

While torch loads the checked archive, its unpickling entry points refuse to run (:func:`no_unpickling`), so a
path this check does not know of fails loudly instead of running code. Tensors are read from raw bytes.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


class UnsafeArchive(ValueError):
    """An archive with an entry that would be unpickled; the message names it."""


def _entries(archive: zipfile.ZipFile) -> dict[str, str]:
    """Map each entry's name inside the archive's top folder to its full name."""
    names = {}
    for name in archive.namelist():
        _, _, inner = name.partition("/")
        names[inner] = name
    return names


def check_pt2(path: Path) -> None:
    """Refuse (:class:`UnsafeArchive`) an archive that ``torch.export.load`` would unpickle anything from."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise UnsafeArchive(f"{path}: not a .pt2 (zip) archive: {exc}") from None
    with archive:
        entries = _entries(archive)
        fmt = (
            archive.read(entries["archive_format"]).decode(errors="replace").strip()
            if "archive_format" in entries
            else ""
        )
        if fmt != "pt2":
            raise UnsafeArchive(f"{path}: archive_format is {fmt!r}; only 'pt2' archives are loaded")
        compiled = [
            n for n in entries if n.startswith("data/aotinductor/") or n.endswith((".so", ".dll", ".dylib"))
        ]
        if compiled:
            raise UnsafeArchive(
                f"{path}: holds compiled code ({compiled[0]}); only exported programs are loaded"
            )
        models = [
            n[len("models/") : -len(".json")]
            for n in entries
            if n.startswith("models/") and n.endswith(".json")
        ]
        if not models:
            raise UnsafeArchive(f"{path}: no models/<name>.json in the archive")
        for model in models:
            for kind in ("weights", "constants"):
                config_name = f"data/{kind}/{model}_{kind}_config.json"
                if config_name not in entries:
                    continue
                try:
                    config = json.loads(archive.read(entries[config_name])).get("config", {})
                except (ValueError, AttributeError) as exc:
                    raise UnsafeArchive(f"{path}: {config_name} is not valid JSON: {exc}") from None
                for fqn, meta in config.items():
                    if not isinstance(meta, dict):
                        raise UnsafeArchive(f"{path}: {config_name}: entry {fqn!r} is not an object")
                    if meta.get("use_pickle"):
                        raise UnsafeArchive(
                            f"{path}: {kind[:-1]} {fqn!r} is stored pickled (use_pickle); torchgate never "
                            "unpickles model files: export it again with tensors stored raw"
                        )
                    name = str(meta.get("path_name", ""))
                    if kind == "constants" and not name.startswith("tensor_"):
                        raise UnsafeArchive(
                            f"{path}: constant {fqn!r} is a pickled object ({name}); torchgate "
                            "never unpickles "
                            "model files"
                        )
            sample = f"data/sample_inputs/{model}.pt"
            if sample in entries:
                try:
                    torch.load(io.BytesIO(archive.read(entries[sample])), weights_only=True)
                except Exception as exc:
                    raise UnsafeArchive(
                        f"{path}: {sample} does not load with weights_only=True ({type(exc).__name__}); "
                        "torch would unpickle it"
                    ) from None


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise pickle.UnpicklingError("unpickling is refused while a model archive loads")


@contextlib.contextmanager
def no_unpickling() -> Iterator[None]:
    """Within the block, ``torch.load`` loads weights only and pickle's loaders refuse (not thread-safe)."""
    original_load = torch.load
    saved = {
        (pickle, "loads"): pickle.loads,
        (pickle, "load"): pickle.load,
        (torch._C, "_pickle_load_obj"): getattr(torch._C, "_pickle_load_obj", None),
    }

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original_load(*args, **kwargs)

    torch.load = weights_only_load
    for (owner, name), value in saved.items():
        if value is not None:
            setattr(owner, name, _refuse)
    try:
        yield
    finally:
        torch.load = original_load
        for (owner, name), value in saved.items():
            if value is not None:
                setattr(owner, name, value)


def load_pt2(path: Path) -> Any:
    """Check ``path`` (:func:`check_pt2`), then ``torch.export.load`` it with unpickling refused."""
    check_pt2(path)
    with no_unpickling():
        return torch.export.load(str(path))
