# Everything a contributor runs. Each target sets up what it needs (scripts/bootstrap.sh).
PLUGIN := mars_dtm_plugin
BUILD := build/$(PLUGIN)
VERSION := $(shell sed -n 's/^version=//p' metadata.txt)
ZIP := dist/$(PLUGIN)-$(VERSION).zip
PY := .venv/bin/python
ZIP_PY ?= python3
export QT_QPA_PLATFORM := offscreen

.PHONY: venv venv-train build zip test lint demo model bench bench-training clean

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
	find $(BUILD) \( -name __pycache__ -o -name '*.py[co]' -o -name '.*' \) -prune -exec rm -rf {} +

# The installable plugin zip: exactly $(BUILD) (package, metadata, icons, licence, bundled
# model), nothing from training/ or tests/. ALLOW_NO_MODEL=1 zips without the model (tests).
# Any Python 3 zips it: no development environment is needed.
zip: build
	@test -f $(BUILD)/models/mars_dtm_generator.onnx || [ "$(ALLOW_NO_MODEL)" = 1 ] || \
		{ echo "missing $(PLUGIN)/models/mars_dtm_generator.onnx: run make model" >&2; exit 1; }
	mkdir -p $(dir $(ZIP))
	rm -f $(ZIP)
	cd $(dir $(BUILD)) && $(ZIP_PY) -m zipfile -c $(abspath $(ZIP)) $(PLUGIN)
	@! $(ZIP_PY) -m zipfile -l $(ZIP) | grep -E '/(training|tests|__pycache__)/|\.py[co]\b|/\.' || \
		{ echo "$(ZIP) holds files that must not ship" >&2; rm -f $(ZIP); exit 1; }
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
	PYTHONPATH=build $(PY) -m bench.throughput --sun-azimuth 315
	PYTHONPATH=build $(PY) -m bench.memory
	PYTHONPATH=build $(PY) -m bench.memory --sun-azimuth 315
	PYTHONPATH=build $(PY) -m bench.providers

# Training steps per second on the CPU (and a GPU, if there is one).
bench-training: venv-train
	$(PY) -m bench.training

clean:
	rm -rf build dist out .pytest_cache
