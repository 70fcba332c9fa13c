# `make test` and `make demo` work on a fresh machine: they build .venv, install the Debian packages the renderer
# (and the web demo's browser test) needs, convert the offline perceptual-loss weights once, then run.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.editkit-installed
DEB_PKGS := libegl1 libgl1-mesa-dri libegl-mesa0 libgbm1 chromium
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo venv sysdeps weights bench clean

test: venv sysdeps weights
	$(PY) -m pytest -q

# The main job on the shipped demo model: invert an example photo through the student, then smile and turn it.
DEMO_OUT := out/demo
demo: venv sysdeps weights
	$(PY) -m editkit invert examples/synthetic_00.png --out $(DEMO_OUT) --force
	$(PY) -m editkit edit $(DEMO_OUT)/synthetic_00 --attr smile --strength 1.5 --yaw 30 --orbit --grid \
	  --out $(DEMO_OUT)/edited --force
	@echo "make demo: results in $(DEMO_OUT)/ (synthetic_00/compare.png, edited/edit.png, edited/orbit.mp4, edited/grid.png)"

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip wheel setuptools
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt
	# facenet-pytorch pins torch<2.3 in its metadata: install it without its dependencies (they are above).
	$(PIP) install -q --no-deps facenet-pytorch==2.6.0
	$(PIP) install -q --no-deps -e .
	touch $@

sysdeps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

weights: venv
	$(PY) -m editkit.weights setup

bench: venv sysdeps weights
	$(PY) benchmarks/teacher.py

clean:
	rm -rf .venv build *.egg-info .pytest_cache
