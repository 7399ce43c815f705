#!/usr/bin/env python3
"""The README's method table, generated from the method registry (each method's `summary` and declared
ViT-B/16 count), between the `<!-- methods:begin -->` and `<!-- methods:end -->` markers.

Usage: python scripts/method_table.py --write   (rewrite the table in README.md)
       python scripts/method_table.py --check   (exit 1 if README.md differs from the registry)
Torch is not imported: the registry is torch-free.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.adapt.methods import METHODS  # noqa: E402
from core.adapt.recipe import AutoConfig  # noqa: E402

BEGIN, END = "<!-- methods:begin -->", "<!-- methods:end -->"


def table() -> str:
    rows = [(f"`{name}`", method.summary, str(method.vit_b16)) for name, method in METHODS.items()]
    rows.append(("`auto`", AutoConfig.summary, ""))
    header = ("method", "what trains", "ViT-B/16")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]

    def line(cells) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def render(readme: str) -> str:
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise SystemExit(f"README.md must contain {BEGIN} and then {END} exactly once")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the table in README.md")
    mode.add_argument("--check", action="store_true", help="fail if README.md's table is out of date")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = parser.parse_args(argv)
    current = args.readme.read_text()
    wanted = render(current)
    if args.write:
        if wanted != current:
            args.readme.write_text(wanted)
        return 0
    if wanted != current:
        print(f"{args.readme}: the method table is out of date; run python scripts/method_table.py --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
