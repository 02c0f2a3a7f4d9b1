"""Load and warm up every version of one model, as a worker would, and print one JSON line per version.

``torchgate check`` runs this in a subprocess per model, so a model that crashes the interpreter, or leaks
what it imports, does not affect the check of the next one.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from inference_worker.repository import ConfigError, load_model_config


def check_model(folder: Path, device: str) -> list[dict[str, Any]]:
    """Return ``{model, version, ok, seconds, error}`` for each version of the model in ``folder``."""
    import torch

    from inference_worker.backends import LoadError, load_model
    from inference_worker.compute import Executor
    from inference_worker.pipeline import Pipeline, needs_pipeline

    try:
        config = load_model_config(folder)
    except ConfigError as exc:
        return [{"model": folder.name, "version": None, "ok": False, "seconds": 0.0, "error": str(exc)}]
    where = torch.device(device)
    results = []
    for version in sorted(config.versions, key=int):
        start = time.monotonic()
        try:
            if needs_pipeline(config):
                Pipeline(config, version, where).warm_up()
            else:
                Executor(config, version, load_model(config, version, where), where).warm_up()
        except LoadError as exc:
            error: str | None = str(exc)
        except Exception as exc:  # anything else a model's code raises
            error = f"model {config.name!r} version {version}: {type(exc).__name__}: {exc}"
        else:
            error = None
        results.append(
            {
                "model": config.name,
                "version": version,
                "ok": error is None,
                "seconds": round(time.monotonic() - start, 3),
                "error": error,
            }
        )
    return results


@click.command("check-model")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
def check_model_command(folder: Path, device: str, threads: int) -> None:
    """Load and warm up every version of the model in FOLDER; print one JSON line per version."""
    import torch

    torch.set_num_threads(max(1, threads))
    for result in check_model(folder, device):
        sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    check_model_command()
