"""EntityQuestions (Sciavolino et al., 2021): the 24 relations and the paper's domain split.

The official layout is ``{split}/{relation}.{split}.json``, each a JSON list of
``{"question", "answers"}``; :mod:`sftscope.data.dataset` reads it. This module only knows the
relations: their Wikidata ids, question templates (docs/method.md §1.2) and which 10 are in-domain.
"""

from __future__ import annotations

from sftscope.data.schema import Domain, Relation

_IN = Domain.IN_DOMAIN
_OOD = Domain.OOD

EQ_RELATIONS: tuple[Relation, ...] = tuple(
    Relation(id=rid, name=name, question_template=template, domain=domain)
    for rid, name, template, domain in [
        # 10 location-related relations: the training pool and the in-domain test set.
        ("P17", "country", "Which country is {subject} located in?", _IN),
        ("P19", "place of birth", "Where was {subject} born?", _IN),
        ("P20", "place of death", "Where did {subject} die?", _IN),
        ("P36", "capital", "What is the capital of {subject}?", _IN),
        ("P69", "educated at", "Where was {subject} educated?", _IN),
        ("P131", "located in the administrative entity", "Where is {subject} located?", _IN),
        ("P159", "headquarters location", "Where is the headquarter of {subject}?", _IN),
        ("P276", "location", "Where is {subject} located?", _IN),
        ("P495", "country of origin", "Which country was {subject} created in?", _IN),
        ("P740", "location of formation", "Where was {subject} founded?", _IN),
        # 14 other relations: out-of-domain test only.
        ("P112", "founded by", "Who founded {subject}?", _OOD),
        ("P127", "owned by", "Who owns {subject}?", _OOD),
        ("P170", "creator", "Who was {subject} created by?", _OOD),
        ("P175", "performer", "Who performed {subject}?", _OOD),
        ("P176", "manufacturer", "Which company is {subject} produced by?", _OOD),
        ("P26", "spouse", "Who is {subject} married to?", _OOD),
        ("P40", "child", "Who is {subject}'s child?", _OOD),
        ("P413", "position played", "What position does {subject} play?", _OOD),
        ("P50", "author", "Who is the author of {subject}?", _OOD),
        ("P136", "genre", "What type of music does {subject} play?", _OOD),
        ("P106", "occupation", "What kind of work does {subject} do?", _OOD),
        ("P264", "record label", "What music label is {subject} represented by?", _OOD),
        ("P407", "language of work", "Which language was {subject} written in?", _OOD),
        ("P800", "notable work", "What is {subject} famous for?", _OOD),
    ]
)

IN_DOMAIN_IDS: tuple[str, ...] = tuple(r.id for r in EQ_RELATIONS if r.domain is _IN)
OOD_IDS: tuple[str, ...] = tuple(r.id for r in EQ_RELATIONS if r.domain is _OOD)
