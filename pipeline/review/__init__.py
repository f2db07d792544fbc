"""Accept/reject review of pseudo-labels in the FiftyOne App (the paper's binary labelling).

The record of every decision is an append-only journal on disk (``journal.py``); the
FiftyOne dataset is a view of it that can be rebuilt at any time (``dataset.py``);
``app.py`` opens the queue and ``export.py`` turns the journal into the file DVC tracks.
"""
