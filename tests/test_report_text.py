"""The reports' prose tables (reports/text/<lang>.json): every key in every language, and the checked lookup."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

import headattr.reports.markdown as markdown_pkg
from headattr.benchmark import report as methods_report
from headattr.errors import HeadattrError
from headattr.reports.strings import LANGS, TABLES, table


def fields(template: str) -> set[str]:
    """The names a `str.format` template fills in."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@pytest.mark.parametrize("name", TABLES)
def test_every_key_in_every_language(name: str) -> None:
    reference = table(LANGS[0], name)
    for lang in LANGS:
        entries = table(lang, name)
        assert list(entries) == list(reference) if name == "config_keys" else set(entries) == set(reference)
        for key in reference:
            value, ref = entries[key], reference[key]
            assert type(value) is type(ref), (lang, name, key)
            if isinstance(ref, list):
                assert len(value) == len(ref), (lang, name, key)
                assert [fields(v) for v in value] == [fields(r) for r in ref], (lang, name, key)
            else:
                assert isinstance(value, str) and fields(value) == fields(ref), (lang, name, key)


def used_keys(source: str, pattern: str) -> set[str]:
    """The string literals `pattern` captures in `source` (keys built at run time, like "rec_" + rule, are not)."""
    return set(re.findall(pattern, source))


def test_the_keys_the_renderers_name_exist() -> None:
    sources = "".join(p.read_text(encoding="utf-8") for p in Path(markdown_pkg.__file__).parent.glob("*.py"))
    compare_keys = used_keys(sources, r"""self\.t\(\s*["']([a-z_0-9]+)["']\s*[,)]""")
    compare_keys |= used_keys(sources, r"""self\.s\[["']([a-z_0-9]+)["']\]""")
    assert len(compare_keys) > 50
    methods_keys = used_keys(Path(methods_report.__file__).read_text(encoding="utf-8"), r"""\bt\[["']([a-z_]+)["']\]""")
    assert methods_keys
    for lang in LANGS:
        assert compare_keys <= set(table(lang, "compare")), compare_keys - set(table(lang, "compare"))
        assert methods_keys <= set(table(lang, "methods")), methods_keys - set(table(lang, "methods"))


def test_missing_language_table_or_key_fails_loudly() -> None:
    with pytest.raises(HeadattrError, match="unknown report language 'fr'"):
        table("fr", "compare")
    with pytest.raises(HeadattrError, match="no table 'nope'"):
        table("en", "nope")
    with pytest.raises(HeadattrError, match="en/compare: no entry 'no_such_key'"):
        table("en", "compare")["no_such_key"]
    assert "no_such_key" not in table("zh", "compare") and table("zh", "compare").get("no_such_key") is None
