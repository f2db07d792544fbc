"""Race / gender / age of the people in portraits: the scheme, the CSV, the FiftyOne side.

Why: the ExtremeC3Net paper audits EG1800 by race (caucasian, asian, black), gender (man,
woman) and age (child, youth = youth or middle-aged, senior): 18 intersectional classes
(its Table 6), whose imbalance and per-group accuracy the ``bias_report`` stage measures.
``scheme`` is the one place that defines them; ``table`` reads and writes the attribute
CSV; ``annotation`` puts a table into FiftyOne (one ``Detection`` per person) and back.
The command that uses them is ``pipeline.tools.attributes``.
"""

from pipeline.attributes.scheme import (AGES, ATTRIBUTES, CLASSES, GENDERS, RACES, UNKNOWN, IntersectionalClass,
                                        class_by_number, class_number)
from pipeline.attributes.table import (BOX_COLUMNS, COLUMNS, REQUIRED_COLUMNS, AttributeTableError, empty_table,
                                       normalise_table, read_table, with_classes, write_table)

__all__ = ["AGES", "ATTRIBUTES", "CLASSES", "GENDERS", "RACES", "UNKNOWN", "IntersectionalClass", "class_by_number",
           "class_number", "BOX_COLUMNS", "COLUMNS", "REQUIRED_COLUMNS", "AttributeTableError", "empty_table",
           "normalise_table", "read_table", "with_classes", "write_table"]
