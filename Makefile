# Two commands do all the set-up on a fresh machine:
#   make demo   -- builds .venv, makes a phantom CT pair and registers it (outputs in demo_output/)
#   make test   -- builds .venv (and .venv-slicer, with Slicer's MRML from slicer-core), runs ruff and the tests,
#                  and installs the built wheel in a fresh environment to run the shipped cascade there
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SLICER_VENV ?= .venv-slicer
SLICER_STAMP := $(SLICER_VENV)/.installed
DEMO := demo_output

.PHONY: demo test venv clean baselines benchmark

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $@

$(SLICER_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(SLICER_VENV)
	$(SLICER_VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints.txt slicer-core==5.13.31053.0 \
		-e ".[test]"
	touch $@

demo: $(STAMP)
	$(BIN)/totalregistrator phantom -o $(DEMO)/phantom --pairs 1 --kind intra --seed 7 --spacing 4
	$(BIN)/totalregistrator register $(DEMO)/phantom/pair000_fixed.nii.gz $(DEMO)/phantom/pair000_moving.nii.gz \
		--fixed-labels $(DEMO)/phantom/pair000_fixed_labels.nii.gz \
		--moving-labels $(DEMO)/phantom/pair000_moving_labels.nii.gz -o $(DEMO)/registration
	$(BIN)/totalregistrator evaluate --transform $(DEMO)/registration/transform.h5 \
		--truth $(DEMO)/phantom/pair000_transform.h5 --mask $(DEMO)/phantom/pair000_fixed_labels.nii.gz \
		-o $(DEMO)/registration/evaluation.json

test: $(STAMP) $(SLICER_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q Testing --ignore=Testing/slicer_logic
	$(SLICER_VENV)/bin/python -m pytest -q Testing/slicer_logic
	Testing/check_wheel.sh $(BIN)/python

# Elastix, ANTs and ConvexAdam run in their own environments (antspyx pins an older numpy and scipy).
baselines: .venv-elastix/.installed .venv-ants/.installed .venv-convexadam/.installed

.venv-elastix/.installed:
	$(PYTHON) -m venv .venv-elastix
	.venv-elastix/bin/pip install --quiet --disable-pip-version-check itk-elastix==0.25.4
	touch $@

.venv-ants/.installed:
	$(PYTHON) -m venv .venv-ants
	.venv-ants/bin/pip install --quiet --disable-pip-version-check antspyx==0.6.3
	touch $@

# torch pinned exactly (the CPU wheel; a looser spec pulls the CUDA build), the rest as the main environment
.venv-convexadam/.installed: constraints.txt
	$(PYTHON) -m venv .venv-convexadam
	.venv-convexadam/bin/pip install --quiet --disable-pip-version-check -c constraints.txt convexadam==0.2.0 \
		torch==2.13.0 simpleitk
	touch $@

benchmark: $(STAMP) baselines
	$(BIN)/python benchmarks/compare.py --suite quick

clean:
	rm -rf $(DEMO)
