"""Commands a person runs by hand, beside the DVC stages: the review queue in the FiftyOne
App and the race/gender/age annotation tool. Same shape as a stage; not in ``dvc.yaml``."""
