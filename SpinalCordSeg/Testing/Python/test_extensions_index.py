"""The Extensions Index entry (``ExtensionsIndex/SpinalCordSeg.json``): what Slicer's catalogue expects.

Checked against the fields of Slicer's catalog-entry schema v1.0.1
(``Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json`` in Slicer's
repository: required ``$schema``, ``category``, ``scm_url``; no other
fields than the schema's; their types) and against the extension's own
``CMakeLists.txt``, so that the two never say different things.
"""

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
ENTRY = REPO / "ExtensionsIndex" / "SpinalCordSeg.json"
SCHEMA_URL = ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
              "slicer-extension-catalog-entry-schema-v1.0.1.json#")
FIELD_TYPES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
               "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}


def _cmake(variable: str) -> str:
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    return re.search(rf'set\({variable} "([^"]*)"\)', text).group(1)


def test_the_entry_follows_the_catalog_schema():
    entry = json.loads(ENTRY.read_text(encoding="utf-8"))
    assert entry["$schema"] == SCHEMA_URL and {"category", "scm_url"} <= set(entry)
    assert set(entry) <= set(FIELD_TYPES)
    assert all(isinstance(value, FIELD_TYPES[key]) for key, value in entry.items())
    assert entry.get("scm_type", "git") in ("git", "local") and entry.get("tier", 5) in (1, 3, 5)
    assert all(isinstance(name, str) for name in entry["build_dependencies"])
    # The index's own style: a file named after the extension, keys sorted, two-space indent, final newline.
    assert ENTRY.read_text(encoding="utf-8") == json.dumps(entry, indent=2, sort_keys=True) + "\n"


def test_the_entry_says_what_the_cmake_file_says():
    entry = json.loads(ENTRY.read_text(encoding="utf-8"))
    assert ENTRY.stem == re.search(r"project\((\w+)\)", (REPO / "CMakeLists.txt").read_text()).group(1)
    assert entry["category"] == _cmake("EXTENSION_CATEGORY")
    assert sorted(entry["build_dependencies"]) == sorted(_cmake("EXTENSION_DEPENDS").split())
    assert {"NNUNet", "PyTorch"} <= set(entry["build_dependencies"])
    assert entry["scm_url"].removesuffix(".git") == _cmake("EXTENSION_HOMEPAGE")
    assert entry["build_subdirectory"] == "."
