"""The user documentation matches the code: generated tables, settings keys, error messages."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml

from plugin.path_config import CONFIG_FIELDS
from plugin.path_role import ROLE_FIELDS
from server import settings as settings_mod

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _load_gen_docs():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_docs", module)
    spec.loader.exec_module(module)
    return module


gen_docs = _load_gen_docs()


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------
# Generated sections


def test_generated_sections_are_up_to_date() -> None:
    stale = gen_docs.stale_sections(DOCS / "configuration.md")
    assert stale == [], f"run .venv/bin/python scripts/gen_docs.py (stale: {stale})"


def test_check_mode_exit_codes(tmp_path: Path) -> None:
    doc = tmp_path / "configuration.md"
    doc.write_text(_read("configuration.md"), encoding="utf-8")
    assert gen_docs.main(["--check", "--doc", str(doc)]) == 0
    # Drop one row of the config table: check mode must notice, regeneration must fix it.
    text = doc.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `bound_issuer` |"))
    doc.write_text(text.replace(row + "\n", ""), encoding="utf-8")
    assert gen_docs.main(["--check", "--doc", str(doc)]) == 1
    assert gen_docs.main(["--doc", str(doc)]) == 0
    assert gen_docs.main(["--check", "--doc", str(doc)]) == 0
    assert row in doc.read_text(encoding="utf-8")


def test_missing_markers_are_an_error(tmp_path: Path) -> None:
    doc = tmp_path / "configuration.md"
    doc.write_text("# nothing generated here\n", encoding="utf-8")
    assert gen_docs.main(["--check", "--doc", str(doc)]) == 2
    with pytest.raises(ValueError, match="section 'config'"):
        gen_docs.replace_sections("no markers")


def test_hand_written_text_outside_markers_is_kept() -> None:
    text = _read("configuration.md")
    fresh, _ = gen_docs.replace_sections(text)
    outside = re.sub(r"<!-- BEGIN GENERATED: ([\w-]+) -->.*?<!-- END GENERATED: \1 -->", "", fresh, flags=re.S)
    assert "## 2. Mount config" in outside
    assert "### Key sources" in outside


@pytest.mark.parametrize(
    ("fields", "section"),
    [(CONFIG_FIELDS, "config"), (ROLE_FIELDS, "role")],
    ids=["config", "role"],
)
def test_every_field_has_a_row(fields, section: str) -> None:  # type: ignore[no-untyped-def]
    text = _read("configuration.md")
    for name in fields:
        assert re.search(rf"^\| `{re.escape(name)}` \|", text, re.M), f"{section} field {name} has no row"


def test_secret_fields_are_marked() -> None:
    table = gen_docs.render_table(CONFIG_FIELDS)
    for name in ("oidc_client_secret", "jwt_validation_hmac_secrets"):
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        assert "secret: never returned" in row


def test_cells_escape_pipes() -> None:
    from plugin.schema import Field, FieldSet, FieldType

    table = gen_docs.render_table(FieldSet({"x": Field(FieldType.STRING, "a | b\nc", default="")}))
    assert r"a \| b c" in table


# ---------------------------------------------------------------------------
# Server settings


def _settings_keys() -> list[str]:
    keys = sorted(settings_mod._TOP_KEYS)
    keys += [f"storage.{k}" for k in sorted(settings_mod._STORAGE_KEYS)]
    keys += [f"mounts[].{k}" for k in sorted(settings_mod._MOUNT_KEYS)]
    return keys


@pytest.mark.parametrize("key", _settings_keys())
def test_every_settings_key_is_documented(key: str) -> None:
    assert re.search(rf"^\| `{re.escape(key)}` \|", _read("configuration.md"), re.M), key


@pytest.mark.parametrize("name", ["dev", "postgres", "seeded"])
def test_example_configs_are_valid_settings(name: str) -> None:
    raw = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text(encoding="utf-8"))
    settings = settings_mod.settings_from_mapping(raw)
    assert settings.storage.type in ("sqlite", "postgres")
