# Fresh machine: `make test` and `make results` set up .venv from pyproject.toml themselves.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PRESET  ?= cpu
DEVICE  ?= cpu
SHARED  ?= ../shared
JOBS    ?= $(if $(filter cpu,$(DEVICE)),2,1)

.PHONY: install test data results book bench clean-venv

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[book,test,cluster]"
	touch $@

install: $(VENV)/.installed

# The CIFAR-10 JPEG copy and the Tiny-ImageNet subset, unpacked from ../shared when they are there (tests that need
# them are skipped otherwise).
data: install
	@if [ ! -d data/cifar10-jpeg ] && [ -f $(SHARED)/data/cifar10-jpeg.tar.gz ]; then \
		ADVMOE_SHARED=$(SHARED) $(VENV)/bin/advmoe fetch cifar10-jpeg; fi
	@if [ ! -d data/tiny-imagenet-200 ] && [ -f $(SHARED)/data/tiny-imagenet-200-subset.tar.gz ]; then \
		ADVMOE_SHARED=$(SHARED) $(VENV)/bin/advmoe fetch tiny-imagenet; fi

# Unit tests, then the notebooks under nbval (cells tagged nbval-check-output must reproduce their output), and the
# browser check of the built site; the last line says when that check could not run (tests/test_site.py skips).
test: install data
	@$(PY) -m pytest tests notebooks book --nbval-lax -p no:cacheprovider; status=$$?; \
	if [ "$$ADVMOE_SITE_CHECK" != 1 ]; then \
	  if [ ! -f _build/html/index.html ]; then \
	    echo "make test: browser check of the site SKIPPED: no site built (make book first)"; \
	  elif ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	    echo "make test: browser check of the site SKIPPED: chromium and chromedriver missing (sudo apt-get install chromium chromium-driver)"; \
	  fi; \
	fi; exit $$status

# Train and evaluate the Table-1 slice of a preset (stored results are reused; RECOMPUTE=1 retrains).
results: install data
	$(VENV)/bin/advmoe run --preset $(PRESET) --device $(DEVICE) --jobs $(JOBS) $(if $(RECOMPUTE),--recompute)

# Re-execute every notebook (stored results reused; RECOMPUTE=1 retrains) and build _build/html.
book: install $(if $(RECOMPUTE),data)
	$(VENV)/bin/advmoe book --preset $(PRESET) --device $(DEVICE) --jobs $(JOBS) $(if $(RECOMPUTE),--recompute)

bench: install
	$(VENV)/bin/advmoe bench --output results/bench/speed.json

clean-venv:
	rm -rf $(VENV)
