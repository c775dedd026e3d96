.PHONY: test setup main ops clean

# The whole test suite (README's second command).
test: setup
	.venv/bin/python -m pytest -q

setup:
	./run setup

main:
	./run

ops: setup
	scripts/build-ops

clean:
	rm -rf build snn_runner/sparse/_lib .pytest_cache
