.PHONY: test test-fast setup main ops clean

# The whole test suite (README's second command), Slurm tests included.
test: setup
	.venv/bin/python -m pytest -q

# The edit loop: everything but the Slurm, container and slowest tests
# (markers in pyproject.toml); under 2 minutes on 2 cores.
test-fast: setup
	@start=$$(date +%s); rc=0; \
	.venv/bin/python -m pytest -q -m "not slow and not slurm and not container" || rc=$$?; \
	echo "test-fast: wall time $$(( $$(date +%s) - start )) s (exit $$rc)"; \
	exit $$rc

setup:
	./run setup

main:
	./run

ops: setup
	scripts/build-ops

clean:
	rm -rf build snn_runner/sparse/_lib .pytest_cache

# Container image (docs/container.md). `image` builds with docker or podman
# and runs the smoke test; `image-test` is the full check on this Debian 12
# machine: podman set-up, a debootstrap base (no image registry here), the
# build, the main job via ./run read-only, the smoke test and %runscript.
.PHONY: image image-test check-container-files
image:
	scripts/build-image

image-test:
	@start=$$(date +%s); rc=0; \
	scripts/build-image --prepare-host --debian-base --main-job --runscript || rc=$$?; \
	echo "image-test: wall time $$(( $$(date +%s) - start )) s (exit $$rc)"; \
	exit $$rc

check-container-files:
	scripts/check-container-files
