"""A synthetic world whose knowledge is known: invented people, places and firms, and for every
fact the number of times a pretraining corpus will state it (its *exposure*).

On a real model nobody knows which facts it "really" knows; here a fact stated 0 times cannot be
known and one stated 50 times should be, so every stage (probe, SFT, KL, restoration) can be
checked against the truth. Exposures follow a truncated power law, P(e) ∝ (e + 1)^-s on
0..max_exposure: most facts are rare, a long tail is frequent, so knowledge is graded.

Names are built from syllables, so a pretrained model cannot know them from elsewhere, and every
name is unique across the world (answers never contain one another). The facts are written as a
normal dataset (EntityQuestions layout, ``dataset.json`` named ``testbed``, the exposure as each
item's ``popularity``), so every sftscope stage reads them unchanged; the mapping templates are in
``sftscope/data/templates.yaml`` (``testbed:``): the corpus states facts through the first
``train_templates`` of them, and the probe also uses the rest, which the model never saw.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from sftscope.data.schema import SPLITS, Domain, Relation
from sftscope.io import atomic_write_json

TESTBED = "testbed"  # the dataset name (and its section of templates.yaml)

RELATIONS: tuple[Relation, ...] = (
    Relation(
        id="birthplace",
        name="place of birth",
        domain=Domain.IN_DOMAIN,
        question_template="Where was {subject} born?",
    ),
    Relation(
        id="employer",
        name="employer",
        domain=Domain.IN_DOMAIN,
        question_template="Which company does {subject} work for?",
    ),
    Relation(
        id="citizenship",
        name="country of citizenship",
        domain=Domain.IN_DOMAIN,
        question_template="Which country is {subject} a citizen of?",
    ),
    Relation(
        id="profession",
        name="profession",
        domain=Domain.OOD,
        question_template="What is the profession of {subject}?",
    ),
)
KIND = {
    "birthplace": "city",
    "employer": "company",
    "citizenship": "country",
    "profession": "profession",
}
PROFESSIONS = (
    "baker",
    "carpenter",
    "chemist",
    "dentist",
    "economist",
    "engineer",
    "farmer",
    "geologist",
    "historian",
    "journalist",
    "lawyer",
    "librarian",
    "mechanic",
    "musician",
    "nurse",
    "painter",
    "pharmacist",
    "photographer",
    "physicist",
    "pilot",
    "plumber",
    "poet",
    "sculptor",
    "surgeon",
    "tailor",
    "teacher",
    "translator",
    "veterinarian",
    "weaver",
    "architect",
)
_SYLLABLES = (
    "ba",
    "ce",
    "di",
    "fo",
    "gu",
    "ha",
    "ke",
    "li",
    "mo",
    "nu",
    "pa",
    "qui",
    "ro",
    "sa",
    "te",
    "vo",
    "wi",
    "xa",
    "ye",
    "zu",
    "bran",
    "dor",
    "fel",
    "gar",
    "hol",
    "kin",
    "lor",
    "mar",
    "nel",
    "pol",
    "ral",
    "sen",
    "tor",
    "val",
    "wen",
    "zor",
)
_SUFFIX = {
    "city": ("", "ton", "burg", "ville", "mouth"),
    "company": (" Corp", " Labs", " Works", " Systems", " Group"),
    "country": ("ia", "land", "stan", "ora", "esh"),
}


BUCKETS = ((0, 0), (1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 10**9))  # exposure tables


def bucket_of(exposure: int) -> str:
    lo, hi = next(b for b in BUCKETS if b[0] <= exposure <= b[1])
    return f"{lo}" if lo == hi else f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}"


class WorldConfig(BaseModel):
    """How big the world is and how its facts are exposed; seeded."""

    model_config = ConfigDict(extra="forbid")

    entities: int = Field(1000, ge=4, description="people; each has one fact per relation")
    objects: int = Field(40, ge=2, description="cities, companies and countries per kind")
    max_exposure: int = Field(64, ge=1, description="most statements of one fact")
    zipf_s: float = Field(1.2, gt=0, description="P(exposure e) ∝ (e + 1)^-s")
    dev_fraction: float = Field(0.1, ge=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    seed: int = 0


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    object: str
    exposure: int
    split: str


class _Names:
    """Unique capitalised syllable names (unique across the whole world)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set(PROFESSIONS)

    def word(self, low: int, high: int) -> str:
        return "".join(self.rng.choice(_SYLLABLES) for _ in range(self.rng.randint(low, high)))

    def new(self, make) -> str:
        for _ in range(10_000):
            name = make()
            if name.lower() not in self.used:
                self.used.add(name.lower())
                return name
        raise RuntimeError("name space exhausted: use fewer entities or objects")

    def person(self) -> str:
        return self.new(lambda: f"{self.word(2, 3).capitalize()} {self.word(2, 3).capitalize()}")

    def thing(self, kind: str) -> str:
        return self.new(lambda: self.word(2, 3).capitalize() + self.rng.choice(_SUFFIX[kind]))


def exposure_weights(cfg: WorldConfig) -> list[float]:
    return [(e + 1) ** -cfg.zipf_s for e in range(cfg.max_exposure + 1)]


def generate(cfg: WorldConfig) -> list[Fact]:
    """Every (person, relation) fact with its object, exposure and split; same seed ⇒ same
    world."""
    rng = random.Random(cfg.seed)
    names = _Names(rng)
    pools = {
        kind: [names.thing(kind) for _ in range(cfg.objects)]
        for kind in ("city", "company", "country")
    }
    pools["profession"] = list(PROFESSIONS)
    people = [names.person() for _ in range(cfg.entities)]
    weights = exposure_weights(cfg)
    facts: list[Fact] = []
    for rel in RELATIONS:
        order = list(range(len(people)))
        rng.shuffle(order)
        n_test = max(1, round(cfg.test_fraction * len(people)))
        n_dev = round(cfg.dev_fraction * len(people))
        split_of = {
            i: "test" if k < n_test else "dev" if k < n_test + n_dev else "train"
            for k, i in enumerate(order)
        }
        for i, person in enumerate(people):
            obj = rng.choice(pools[KIND[rel.id]])
            exposure = rng.choices(range(cfg.max_exposure + 1), weights)[0]
            facts.append(Fact(person, rel.id, obj, exposure, split_of[i]))
    return facts


def write_dataset(facts: list[Fact], cfg: WorldConfig, out: Path) -> Path:
    """The facts as a dataset folder every stage reads (and ``world.json`` with the config and
    every fact, for the corpus builder)."""
    out = Path(out)
    meta = {
        "name": TESTBED,
        "relations": [r.model_dump(mode="json") for r in RELATIONS],
        "source": "sftscope synthetic testbed",
        "config": cfg.model_dump(),
    }
    for split in SPLITS:
        for rel in RELATIONS:
            rows = [
                {
                    "question": rel.question_template.replace("{subject}", f.subject),
                    "answers": [f.object],
                    "subject": f.subject,
                    "popularity": f.exposure,
                }
                for f in facts
                if f.relation == rel.id and f.split == split
            ]
            atomic_write_json(out / split / f"{rel.id}.{split}.json", rows)
    atomic_write_json(
        out / "world.json", {"config": cfg.model_dump(), "facts": [asdict(f) for f in facts]}
    )
    atomic_write_json(out / "dataset.json", meta)  # last: marks a complete dataset
    return out


def read_world(path: Path) -> tuple[WorldConfig, list[Fact]]:
    data = json.loads((Path(path) / "world.json").read_text(encoding="utf-8"))
    return WorldConfig(**data["config"]), [Fact(**f) for f in data["facts"]]
