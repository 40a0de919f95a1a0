"""The spec's column tables and spec/schema/*.json are exactly what tracefmt.schema generates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa

from tracefmt.enums import HistScheme, Kind, Phase, Severity
from tracefmt.schema import MANIFEST_FIELDS, TABLES, render_generated_regions, schema_document

SPEC = Path(__file__).resolve().parent.parent / "spec"
HINT = "regenerate with: python -m tracefmt.schema"


def test_spec_generated_regions_are_current():
    text = (SPEC / "TRACE_FORMAT.md").read_text()
    assert render_generated_regions(text) == text, HINT


def test_spec_has_a_generated_region_for_every_table_and_the_manifest():
    text = (SPEC / "TRACE_FORMAT.md").read_text()
    regions = set(re.findall(r"<!-- BEGIN GENERATED: (\w+) -->", text))
    assert regions == set(TABLES) | {"manifest"}
    for name, table in TABLES.items():
        body = text.split(f"<!-- BEGIN GENERATED: {name} -->")[1].split("<!-- END GENERATED")[0]
        rows = [line for line in body.splitlines() if line.startswith("| `")]
        assert [r.split("`")[1] for r in rows] == table.names
        # Every row has exactly the five cells of the header (no stray '|' in a meaning).
        assert all(len(re.split(r"(?<!\\)\|", r)) == 7 for r in rows), name


def test_schema_json_files_are_current():
    for name, table in TABLES.items():
        committed = json.loads((SPEC / "schema" / f"{name}.json").read_text())
        assert committed == schema_document(table), f"spec/schema/{name}.json is stale; {HINT}"
    manifest = json.loads((SPEC / "schema" / "manifest.json").read_text())
    assert set(manifest["fields"]) == set(MANIFEST_FIELDS)
    assert {k for k, v in manifest["fields"].items() if v["required"]} == {k for k, v in MANIFEST_FIELDS.items() if v[1]}
    assert {p.stem for p in (SPEC / "schema").glob("*.json")} == set(TABLES) | {"manifest"}


def test_schema_json_types_parse_back_to_the_arrow_types():
    """A third party can rebuild each Arrow schema from the JSON files alone."""
    simple = {"int32": pa.int32(), "int64": pa.int64(), "double": pa.float64(), "float": pa.float32(), "string": pa.string(), "bool": pa.bool_()}

    def parse(t: str) -> pa.DataType:
        m = re.fullmatch(r"list<item: (\w+)>", t)
        return pa.list_(simple[m.group(1)]) if m else simple[t]

    for name, table in TABLES.items():
        doc = json.loads((SPEC / "schema" / f"{name}.json").read_text())
        for col, spec_col in zip(table.columns, doc["columns"]):
            if spec_col["type"] == "arrow.fixed_shape_tensor":
                assert name == "tensors" and col.name == "values"
            else:
                assert parse(spec_col["type"]) == col.type, (name, col.name)


def test_spec_lists_every_enumeration_value():
    text = (SPEC / "TRACE_FORMAT.md").read_text()
    section = text.split("## 4. Enumerations")[1].split("## 5.")[0]
    for enum in (Kind, Phase, HistScheme, Severity):
        for member in enum:
            assert f"`{member.value}`" in section, member
