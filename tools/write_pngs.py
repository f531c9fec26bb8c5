"""Write test images of a built-in dataset as PNG files named <index>_<label>.png.

python tools/write_pngs.py fashion_mnist examples/fashion_mnist --count 8
python tools/write_pngs.py fashion_mnist examples/fashion_folder --count 3000 --by-class
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from PIL import Image

from cnnctl.data.sources import BUILTINS, load_builtin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(BUILTINS))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument(
        "--by-class", action="store_true", help="one sub-folder per class, as for training"
    )
    args = parser.parse_args()
    arrays = load_builtin(args.dataset)
    names = BUILTINS[args.dataset].classes
    args.folder.mkdir(parents=True, exist_ok=True)
    for index in range(args.count):
        label = re.sub(r"[^A-Za-z0-9]+", "-", names[arrays.y_test[index]])
        image = arrays.x_test[index].squeeze()
        folder = args.folder / label if args.by_class else args.folder
        folder.mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:04d}_{label}.png")
    print(f"wrote {args.count} PNG files to {args.folder}/")


if __name__ == "__main__":
    main()
