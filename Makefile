# The README quick start: `make demo` and `make test`, each self-sufficient on a fresh Debian 12 machine (as root).
SHELL := /bin/bash
export npm_config_nodedir := /usr
HOST_DEPS := --qemu --netns

.PHONY: demo test build deps host-deps lint typecheck clean

host-deps:
	bash packaging/scripts/setup-host.sh $(HOST_DEPS)

# npm ci only when the lock file changed since the last install.
node_modules/.installed: package-lock.json
	npm ci --no-audit --no-fund
	touch $@

deps: host-deps node_modules/.installed

build: deps
	npm run build

demo: build
	node dist/node/demo/main.js

test: deps
	npm test

clean:
	rm -rf dist node_modules .demo
