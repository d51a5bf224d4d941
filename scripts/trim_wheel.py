"""Rewrite a wheel without the shared libraries a machine will never load (see scripts/gpu-wheels).

    python3 scripts/trim_wheel.py WHEEL --keep REGEX

Every `.so` file whose name does not match REGEX is dropped, and so is its line in the wheel's RECORD, so
the wheel stays consistent and pip installs it as usual. The wheel is replaced atomically.
"""

import argparse
import re
import zipfile
from pathlib import Path


def trim(wheel: Path, keep: re.Pattern) -> list[str]:
    """Drop the unwanted libraries from `wheel` in place; the names dropped."""
    dropped = []
    tmp = wheel.with_name(f".{wheel.name}.tmp")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as target:
        names = source.namelist()
        for name in names:
            base = name.rsplit("/", 1)[-1]
            if base.endswith(".so") and not keep.fullmatch(base):
                dropped.append(name)
        for name in names:
            if name in dropped:
                continue
            data = source.read(name)
            if name.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if line.split(",", 1)[0] not in dropped).encode()
            target.writestr(source.getinfo(name), data)
    tmp.replace(wheel)
    return dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--keep", required=True, help="regular expression for the library file names to keep")
    args = parser.parse_args()
    dropped = trim(args.wheel, re.compile(args.keep))
    print(f"{args.wheel.name}: dropped {len(dropped)} libraries: {', '.join(n.rsplit('/', 1)[-1] for n in dropped)}")


if __name__ == "__main__":
    main()
