"""The reports' prose in every language: the tables of `reports/text/<lang>.json`, loaded once, looked up checked.

Each language file holds the same tables with the same keys: `compare` (the consistency report),
`config_keys` (the names of the shared settings listed in its configuration section, in that order),
`methods` (methods.md of `headattr methods`) and `sparse` (sparse.md of `headattr sparse`). A value is a
`str.format` template, or a list of them. An unknown language, a missing table or a missing key raises
`HeadattrError` naming it, instead of a bare KeyError from deep inside a renderer; the files are checked
against each other when they are loaded.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from headattr.errors import HeadattrError

LANGS = ("en", "zh")
TABLES = ("compare", "config_keys", "methods", "sparse")
TEXT_DIR = Path(__file__).with_name("text")


class Table(Mapping[str, Any]):
    """One table of one language: a read-only mapping whose missing keys fail loudly."""

    def __init__(self, lang: str, name: str, entries: dict[str, Any]) -> None:
        self.lang, self.name, self._entries = lang, name, entries

    def __getitem__(self, key: str) -> Any:
        try:
            return self._entries[key]
        except KeyError:
            raise HeadattrError(f"report text {self.lang}/{self.name}: no entry {key!r}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: str, default: Any = None) -> Any:
        return self._entries.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def format(self, key: str, **kw: Any) -> str:
        """The template `key` filled in with `kw`."""
        return self[key].format(**kw)


def check_lang(lang: str) -> None:
    """Raise unless `lang` is one of LANGS."""
    if lang not in LANGS:
        raise HeadattrError(f"unknown report language {lang!r}; choose one of {', '.join(LANGS)}")


def table(lang: str, name: str) -> Table:
    """The table `name` (one of TABLES) in `lang` (one of LANGS)."""
    check_lang(lang)
    if name not in TABLES:
        raise HeadattrError(f"report text: no table {name!r}; the tables are {', '.join(TABLES)}")
    return _load_all()[lang][name]


@functools.cache
def _load_all() -> dict[str, dict[str, Table]]:
    """Every language's tables, read once; raises when a file lacks a table or its keys differ from English."""
    loaded = {lang: json.loads((TEXT_DIR / f"{lang}.json").read_text(encoding="utf-8")) for lang in LANGS}
    reference = loaded[LANGS[0]]
    for lang, tables in loaded.items():
        if set(tables) != set(TABLES):
            raise HeadattrError(f"report text {lang}.json: tables {sorted(tables)}, expected {sorted(TABLES)}")
        for name in TABLES:
            missing = set(reference[name]) ^ set(tables[name])
            if missing:
                raise HeadattrError(f"report text {lang}/{name}: keys differ from {LANGS[0]}: {sorted(missing)}")
    return {lang: {name: Table(lang, name, tables[name]) for name in TABLES} for lang, tables in loaded.items()}


STRINGS: dict[str, Table] = {lang: table(lang, "compare") for lang in LANGS}
