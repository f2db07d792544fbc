"""The pipeline's DVC stages, one module each, in the order ``dvc.yaml`` runs them.

download -> prepare -> crop_portraits -> train_teacher -> pseudo_label -> (review, by a
person: ``pipeline.tools.review``) -> export_reviews -> assemble -> train@arch ->
evaluate@arch -> complexity -> compare -> bias_report@arch.

Every module has the same shape: its params section as a ``Section`` model, a pure core
taking plain values, and a thin ``main(argv)`` that reads params, calls the core and
writes outputs atomically. A stage never imports another stage: what two stages share
lives in the library beside this package (``pipeline/*.py``).
"""
