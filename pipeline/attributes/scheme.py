"""The paper's attribute scheme: 3 races x 2 genders x 3 ages = 18 intersectional classes.

Rules:
- ``unknown`` is a legal value for every attribute and is shown as such, never guessed;
- a person has an intersectional class only when all three attributes are known;
- class numbers run 1..18 race-major, then gender, then age (caucasian/man/child = 1,
  caucasian/man/youth = 2, ..., black/woman/senior = 18). The paper's Table 6 was not
  available to check its exact numbering; only the order of the numbers depends on it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass


UNKNOWN = "unknown"  # a legal value of every attribute: the photo does not tell
RACES = ("caucasian", "asian", "black")
GENDERS = ("man", "woman")
AGES = ("child", "youth", "senior")  # youth = youth or middle-aged, as in the paper
ATTRIBUTES: dict[str, tuple[str, ...]] = {"race": RACES, "gender": GENDERS, "age": AGES}


@dataclass(frozen=True)
class IntersectionalClass:
    number: int  # 1..18
    race: str
    gender: str
    age: str

    @property
    def label(self) -> str:
        return f"{self.number:02d} {self.race}/{self.gender}/{self.age}"


CLASSES: tuple[IntersectionalClass, ...] = tuple(
    IntersectionalClass(i + 1, race, gender, age)
    for i, (race, gender, age) in enumerate(itertools.product(RACES, GENDERS, AGES))
)


_CLASS_BY_TRIPLE = {(c.race, c.gender, c.age): c for c in CLASSES}
_CLASS_BY_NUMBER = {c.number: c for c in CLASSES}


def class_number(race: str, gender: str, age: str) -> int | None:
    """The intersectional class (1..18), or None when any attribute is unknown."""
    found = _CLASS_BY_TRIPLE.get((race, gender, age))
    if found is None:
        for name, value in (("race", race), ("gender", gender), ("age", age)):
            if value != UNKNOWN and value not in ATTRIBUTES[name]:
                raise ValueError(f"{name} {value!r} is not one of {', '.join(ATTRIBUTES[name] + (UNKNOWN,))}")
        return None
    return found.number


def class_by_number(number: int) -> IntersectionalClass:
    try:
        return _CLASS_BY_NUMBER[int(number)]
    except KeyError:
        raise ValueError(f"class number {number!r} is not in 1..{len(CLASSES)}") from None
