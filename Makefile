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
