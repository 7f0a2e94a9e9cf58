# Every target goes through npm so that the project's own Node 24 (the `node` devDependency) is used.
.PHONY: install generate build lint typecheck test check breaking run bench token

install:
	npm ci

generate:
	npm run generate

build:
	npm run build

lint:
	npm run lint

typecheck:
	npm run typecheck

breaking:
	npm run breaking

test:
	npm test

# lint + generated-code freshness + buf breaking + typecheck + tests: what CI runs.
check:
	npm run check

run:
	npm start

bench:
	npm run bench

token:
	npm run token
