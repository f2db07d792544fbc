"""Accept/reject review of pseudo-labels in the FiftyOne App (the paper's binary labelling).

The record of every decision is an append-only journal on disk (``journal.py``); the
FiftyOne dataset is a view of it that can be rebuilt at any time (``dataset.py``) from the
pool on disk (``pool.py``). ``pipeline/tools/review.py`` opens the queue (``database.py``
reaches the database, ``config.py`` holds its params section), the App's operators live in
``pipeline/review_plugin/``, and the ``export_reviews`` stage turns the journals into the
file DVC tracks.
"""
