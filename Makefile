# Everything a contributor runs. Each target sets up what it needs (scripts/bootstrap.sh).
PLUGIN := mars_dtm_plugin
BUILD := build/$(PLUGIN)
VERSION := $(shell sed -n 's/^version=//p' metadata.txt)
ZIP := dist/$(PLUGIN)-$(VERSION).zip
PY := .venv/bin/python
export QT_QPA_PLATFORM := offscreen

.PHONY: venv venv-train build zip test lint demo model bench clean

venv:
	scripts/bootstrap.sh dev

venv-train:
	scripts/bootstrap.sh train

# The plugin exactly as it ships: package, metadata, icons, licence, bundled model.
build:
	rm -rf $(BUILD)
	mkdir -p $(BUILD)
	cp -r $(PLUGIN)/. $(BUILD)/
	cp -r metadata.txt LICENSE icons resources.qrc $(BUILD)/
	find $(BUILD) -name __pycache__ -prune -exec rm -rf {} +

zip: build
	mkdir -p dist
	rm -f $(ZIP)
	cd build && $(CURDIR)/$(PY) -m zipfile -c $(CURDIR)/$(ZIP) $(PLUGIN)
	@echo "built $(ZIP)"

lint: venv
	.venv/bin/ruff check .

test: venv-train build lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

# A DTM from the built-in sample scene, with a PNG preview beside it.
demo: venv build
	mkdir -p out
	$(PY) -m training.synth --demo-scene out/demo_scene.tif
	PYTHONPATH=build $(PY) -m $(PLUGIN) predict out/demo_scene.tif out/demo_dtm.tif
	$(PY) -m $(PLUGIN).core.preview out/demo_scene.tif out/demo_dtm.tif out/demo_preview.png
	@echo "wrote out/demo_dtm.tif and out/demo_preview.png"

# Rebuild the bundled model from scratch: data, training, export, evaluation.
model: venv-train
	$(PY) -m training.make_model

bench: venv build
	PYTHONPATH=build $(PY) -m bench.throughput
	PYTHONPATH=build $(PY) -m bench.memory

clean:
	rm -rf build dist out .pytest_cache
