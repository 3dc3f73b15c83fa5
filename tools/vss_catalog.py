"""Builds the agent's built-in VSS catalog from a vss-tools JSON export (`make vss`).

Input: the tree `vspec export json` writes. Output: a gzip'd JSON object with one entry per
leaf (signal or attribute), keeping only what the agent checks and types by: the node type,
datatype, unit, min, max and allowed values. Written deterministically (sorted keys, gzip
mtime 0) so that regenerating an unchanged release gives the same bytes.

    python tools/vss_catalog.py EXPORT.json RELEASE OUT.json.gz
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

KEPT = ("type", "datatype", "unit", "min", "max", "allowed")


def leaves(tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}

    def walk(path: str, node: dict[str, Any]) -> None:
        children = node.get("children")
        if children is not None:
            for name, child in children.items():
                walk(f"{path}.{name}", child)
            return
        found[path] = {key: node[key] for key in KEPT if key in node}

    for name, node in tree.items():
        walk(name, node)
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    export, release, out = Path(argv[0]), argv[1], Path(argv[2])
    catalog = {
        "release": release,
        "generator": "vss-tools `vspec export json`, reduced by tools/vss_catalog.py",
        "leaves": leaves(json.loads(export.read_text(encoding="utf-8"))),
    }
    text = json.dumps(catalog, sort_keys=True, separators=(",", ":")).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(text)
    print(f"{out}: {len(catalog['leaves'])} leaves, {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
