# The two commands of the README. Everything else is `nest --help`.
.PHONY: demo test lint
demo:
	@scripts/bootstrap
	@.venv/bin/nest-cluster demo

test:
	@scripts/bootstrap
	@.venv/bin/python -m pytest -q -p no:cacheprovider --durations=20 -n 3

lint:
	@scripts/bootstrap
	@scripts/lint
