# Postern: build, run and test. README.md says what each target does.
#
#   make build   npm ci (when needed) + tsc -b + docs/parameters.md
#   make run     a sandbox instance under var/sandbox, in the foreground
#   make test    Debian test tools (when missing) + build + every test, one file at a time
#   make deb     the Debian package build/postern_<version>_all.deb (scripts/build-deb)
#   make clean   remove build output (node_modules, var/ and .cache/ stay)

SHELL := /bin/bash
.DEFAULT_GOAL := build

NODE ?= node
# `make test TESTS="test/dist/users.test.js"` runs a subset.
TESTS ?=
# A backstop so a hung test cannot hang CI forever (ms, per test); never an assertion.
TEST_TIMEOUT ?= 900000

.PHONY: deps build docs run run-deps test test-deps deb clean

# npm ci only when node_modules is missing or the lock file changed since the last install
# (npm ci writes node_modules/.package-lock.json).
deps: node_modules/.package-lock.json

node_modules/.package-lock.json: package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

build: deps
	node_modules/.bin/tsc -b
	$(NODE) scripts/gen-params-doc.js docs/parameters.md

# docs/parameters.md alone, from the compiled parameter table.
docs: deps
	node_modules/.bin/tsc -b packages/common
	$(NODE) scripts/gen-params-doc.js docs/parameters.md

# At run time Postern needs only node and openssl (for the instance's self-signed certificate).
run-deps:
	@.ci/apt-ensure openssl

run: run-deps build
	@scripts/run-sandbox

test-deps:
	@.ci/install-test-deps

# dpkg-deb is part of dpkg; no network beyond npm (scripts/build-deb)
deb: build
	@scripts/build-deb

# Sequential on purpose: the tests start real servers.
test: test-deps build
	@files="$(TESTS)"; \
	if [ -z "$$files" ]; then files=$$(find test/dist -name '*.test.js' | sort); fi; \
	if [ -z "$$files" ]; then echo "make test: no test files under test/dist" >&2; exit 1; fi; \
	echo "node --test --test-concurrency=1 $$(echo $$files)"; \
	$(NODE) --test --test-concurrency=1 --test-timeout=$(TEST_TIMEOUT) $$files

clean:
	-[ -x node_modules/.bin/tsc ] && node_modules/.bin/tsc -b --clean
	rm -rf packages/*/dist test/dist build
	find . -name '*.tsbuildinfo' -not -path './node_modules/*' -delete
