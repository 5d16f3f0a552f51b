# phiproxy — two commands for a newcomer: `make demo` and `make test`.
SHELL := /bin/bash
GO ?= go
export GOFLAGS ?= -buildvcs=false
# apt-get needs root: use sudo when not root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all build test demo deps deps-go deps-pg deps-system vet fuzz bench clean

all: build

build:
	$(GO) build -o bin/phiproxy ./cmd/phiproxy

# deps-pg installs the PostgreSQL 15 server when initdb is missing (what
# `make demo` needs); the postgres system user comes with it, and the
# throwaway clusters run as that user because initdb refuses root.
deps-pg:
	@if ! command -v initdb >/dev/null 2>&1 && ! [ -x "$$(pg_config --bindir 2>/dev/null)/initdb" ] && ! [ -x /usr/lib/postgresql/15/bin/initdb ]; then \
		echo "installing: postgresql-15 postgresql-client-15"; \
		export DEBIAN_FRONTEND=noninteractive; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-client-15 >/dev/null; \
	fi

# deps-system adds what the tests and the benchmark drive — PgBouncer,
# psycopg, pgjdbc with a JDK, node-postgres, Chromium (the observe report's
# headless rendering), and the ORM suite's stacks
# (integration/orm: Debian's SQLAlchemy, Django, psycopg2, ActiveRecord,
# ruby-pg and Hibernate 3.6; Sequelize, knex, TypeORM and MikroORM from npm) — but only what is missing: a
# machine that has them is left alone. The psycopg tests run Debian's
# /usr/bin/python3, whatever python3 is on PATH.
deps-system: deps-pg
	@missing=""; \
	command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing="$$missing pgbouncer"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	/usr/bin/python3 -c 'import psycopg' >/dev/null 2>&1 || missing="$$missing python3-psycopg"; \
	/usr/bin/python3 -c 'import psycopg2' >/dev/null 2>&1 || missing="$$missing python3-psycopg2"; \
	/usr/bin/python3 -c 'import sqlalchemy' >/dev/null 2>&1 || missing="$$missing python3-sqlalchemy"; \
	/usr/bin/python3 -c 'import django' >/dev/null 2>&1 || missing="$$missing python3-django"; \
	ruby -e 'require "active_record"; require "pg"' >/dev/null 2>&1 || missing="$$missing ruby-activerecord ruby-pg"; \
	command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	[ -f /usr/share/java/postgresql.jar ] || missing="$$missing libpostgresql-jdbc-java"; \
	command -v javac >/dev/null 2>&1 || missing="$$missing default-jdk-headless"; \
	[ -f /usr/share/java/hibernate-core.jar ] && [ -f /usr/share/java/javassist.jar ] || missing="$$missing libhibernate3-java libjavassist-java"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@for d in integration/clients/node integration/orm/node; do \
		if [ -f $$d/package.json ] && ! [ $$d/node_modules/.package-lock.json -nt $$d/package-lock.json ]; then \
			(cd $$d && npm ci --no-audit --no-fund --silent) || exit 1; \
		fi; \
	done

deps-go:
	$(GO) mod download

deps: deps-system deps-go

# staticcheck runs at a pinned version through `go run`, so nothing is
# installed by hand (the module cache keeps it after the first run).
STATICCHECK_VERSION ?= v0.8.2
vet:
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi

# The whole suite: unit, data-driven, fuzz seed corpora, and integration
# tests against a throwaway PostgreSQL 15 cluster with real clients. The
# session relay and the PHI interceptor run two goroutines per session, so
# the proxy packages run once more under the race detector.
test: deps vet
	$(GO) test -count=1 -timeout 14m ./...
	$(GO) test -race -count=1 -timeout 10m ./proxy/...

demo: deps-pg build
	./bin/phiproxy demo

# Every fuzz target for FUZZTIME each (go test runs one target at a time).
# What they find lands in the package's testdata/fuzz: commit it as a seed.
FUZZTIME ?= 60s
FUZZ_TARGETS = ./proxy:FuzzStartup ./codec:FuzzCanonical ./proxy/phi:FuzzCopyRows \
	./proxy/phi:FuzzCopyBinary ./proxy/phi:FuzzClientMessages ./proxy/phi:FuzzServerMessages \
	./rewrite:FuzzPlan ./rewrite:FuzzShapeCache ./rewrite:FuzzNormalize \
	./audit:FuzzVerifyDetectsAnyChange ./policy:FuzzParseWindow ./policy:FuzzAccessAndPrefix
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "== $${t#*:} ($${t%%:*}, $(FUZZTIME))"; \
		$(GO) test $${t%%:*} -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME); \
	done

bench: deps-system build
	./bench/run.sh

clean:
	rm -rf bin
