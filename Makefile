# The two entry points of the README. Both set up .venv first (idempotent).
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export FIFTYONE_DO_NOT_TRACK := true
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup pipeline test benchmarks profile

setup:
	bash scripts/setup.sh

# Whole pipeline, quick profile, from ../shared/datasets (params.yaml).
pipeline: setup
	dvc repro
	@dvc metrics show

test: setup
	pytest

# Another profile (profiles/$(PROFILE).yaml: cpu or paper) as one DVC experiment.
PROFILE ?= cpu
profile: setup
	python scripts/run_profile.py $(PROFILE)
	@dvc exp show --only-changed

benchmarks: setup
	for b in benchmarks/*.py; do python $$b || exit 1; done
