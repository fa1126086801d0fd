# bpforge: set-up and entry points.
#
#   make demo       set up (if needed), then show info / verify / optimize / disasm / asm round trip / a bad-input
#                   error / run / jit / offload / partition / a fleet
#   make test       set up (if needed), then run the test-suite
#   make examples   rebuild examples/obj/*.o with clang-19 (make -C examples)
#
# Set-up is everything a fresh Debian 12 machine needs, done only when missing: the BPF toolchain from apt
# (as root, or through sudo) and a virtualenv .venv with bpforge installed editable. A stamp file makes
# repeated runs fast; it is redone when pyproject.toml changes.

SHELL        := /bin/bash
.SHELLFLAGS  := -euo pipefail -c

PYTHON       ?= python3
VENV         := .venv
STAMP        := $(VENV)/.bpforge-installed
BPFORGE      := $(VENV)/bin/bpforge
APT_PACKAGES := clang-19 llvm-19 bpftool libbpf-dev python3-venv
TOOLS        := clang-19 llvm-mc-19 llvm-objdump-19 llvm-objcopy-19 bpftool
SUDO         := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
OBJCOPY      := llvm-objcopy-19
DEMO         := build/demo
# An Ethernet + IPv4 + TCP frame for the run part of the demo.
DEMO_PACKET  := 000000000000020000000001080045000032000100004006000000000a0000020a000001303900500000000100000000500220000000000000000000000000000000

.PHONY: demo test examples setup tools clean

setup: tools $(STAMP)

# apt-get only when a tool, the libbpf headers or python3's venv support is missing.
tools:
	@missing=""; \
	for t in $(TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	[ -e /usr/include/bpf/bpf_helpers.h ] || missing="$$missing libbpf-dev"; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "set-up: missing$$missing; installing $(APT_PACKAGES)"; \
		$(SUDO) apt-get update; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $(APT_PACKAGES); \
	fi

$(STAMP): pyproject.toml
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test,report,jit,ray]'
	touch $@

test: setup
	$(VENV)/bin/python -m pytest

examples: tools
	$(MAKE) -C examples

# The main job of this stage on a bundled example: read an object, disassemble it, reassemble the text and
# check that every program byte comes back; then the same through raw bytecode and a word list; then a bad
# input (one line on stderr, exit code 2); then run a program in every engine.
demo: setup
	@mkdir -p $(DEMO)
	$(BPFORGE) info examples/obj/xdp_lb.o
	$(BPFORGE) verify examples/obj/xdp_lb.o
	printf 'r2 = *(u32 *)(r1 + 4)\nr1 = *(u32 *)(r1 + 0)\nr3 = r1\nr3 += 14\nif r3 > r2 goto +2\nr0 = *(u8 *)(r1 + 20)\nexit\nr0 = 2\nexit\n' > $(DEMO)/unchecked.s
	$(BPFORGE) verify $(DEMO)/unchecked.s || [ $$? = 1 ]
	@echo "optimize: rule passes, then stochastic search; every change proved by z3, the result kernel-checked"
	$(BPFORGE) optimize examples/obj/xdp_counter.o -o $(DEMO)/xdp_counter.opt.o --budget 10
	$(BPFORGE) info $(DEMO)/xdp_counter.opt.o | head -n 4
	$(BPFORGE) disasm examples/obj/xdp_lb.o > $(DEMO)/xdp_lb.s
	head -n 16 $(DEMO)/xdp_lb.s
	$(BPFORGE) asm $(DEMO)/xdp_lb.s -o $(DEMO)/xdp_lb.o
	$(OBJCOPY) -O binary --only-section=xdp examples/obj/xdp_lb.o $(DEMO)/xdp_lb.orig.bin
	$(OBJCOPY) -O binary --only-section=xdp $(DEMO)/xdp_lb.o $(DEMO)/xdp_lb.new.bin
	cmp $(DEMO)/xdp_lb.orig.bin $(DEMO)/xdp_lb.new.bin
	@echo "identical: section xdp, $$(stat -c %s $(DEMO)/xdp_lb.new.bin) bytes, original vs reassembled"
	$(BPFORGE) disasm --json examples/obj/xdp_lb.o > $(DEMO)/xdp_lb.orig.json
	$(BPFORGE) disasm --json $(DEMO)/xdp_lb.o > $(DEMO)/xdp_lb.new.json
	cmp $(DEMO)/xdp_lb.orig.json $(DEMO)/xdp_lb.new.json
	@echo "identical: disasm --json (instructions, functions, relocations), original vs reassembled"
	$(BPFORGE) disasm examples/obj/asm_xdp_pass.o > $(DEMO)/xdp_pass.s
	$(BPFORGE) asm $(DEMO)/xdp_pass.s -o $(DEMO)/xdp_pass.bin
	$(OBJCOPY) -O binary --only-section=xdp examples/obj/asm_xdp_pass.o $(DEMO)/xdp_pass.orig.bin
	cmp $(DEMO)/xdp_pass.orig.bin $(DEMO)/xdp_pass.bin
	@echo "identical: raw bytecode of asm_xdp_pass.o, original vs reassembled"
	$(BPFORGE) asm $(DEMO)/xdp_pass.s -o $(DEMO)/xdp_pass.words
	cat $(DEMO)/xdp_pass.words
	$(BPFORGE) disasm $(DEMO)/xdp_pass.words > $(DEMO)/from_words.s
	$(BPFORGE) asm $(DEMO)/from_words.s -o $(DEMO)/from_words.bin
	cmp $(DEMO)/xdp_pass.orig.bin $(DEMO)/from_words.bin
	@echo "identical: through a word list and back"
	head -c 20 $(DEMO)/xdp_pass.bin > $(DEMO)/cut.bin
	@echo "bad input: an instruction cut in half"
	rc=0; $(BPFORGE) disasm $(DEMO)/cut.bin || rc=$$?; echo "exit code $$rc"; [ $$rc = 2 ]
	@echo "run: the same program and packet in the fast tier, the reference interpreter and (as root) the kernel"
	$(BPFORGE) run examples/obj/xdp_counter.o --data $(DEMO_PACKET) --engine fast
	$(BPFORGE) run examples/obj/xdp_counter.o --data $(DEMO_PACKET) --engine interp --dump-maps | head -n 6
	$(BPFORGE) run examples/obj/xdp_counter.o --data $(DEMO_PACKET) --engine kernel || echo "(no kernel engine here)"
	@echo "jit: native x86-64 code for xdp_counter, listed under the BPF instruction each part came from, then run"
	$(BPFORGE) jit examples/obj/xdp_counter.o --arch x86_64 -o $(DEMO)/xdp_counter.x86_64 | head -n 24
	$(BPFORGE) run examples/obj/xdp_counter.o --data $(DEMO_PACKET) --engine jit --repeat 100000
	@echo "offload: the device profiles; what an NFP-like NIC can take of xdp_counter (a per-CPU map: partly, split"
	@echo "into a device part and a host part); xdp_counter on the riscv64 SmartNIC's emulated core and staged on the NFP"
	$(BPFORGE) offload devices
	$(BPFORGE) offload check examples/obj/xdp_counter.o --device nfp || [ $$? = 1 ]
	$(BPFORGE) offload run examples/obj/xdp_counter.o --device riscv64-smartnic --data $(DEMO_PACKET) | head -n 4
	$(BPFORGE) offload run examples/obj/xdp_counter.o --device nfp --data $(DEMO_PACKET) | head -n 3
	@echo "partition: examples/kvcache/server.py (a Python memcached-style UDP server) split into an XDP half that"
	@echo "answers GETs and the Python rest, profiled on a trace of 400 requests; every reply stays the server's"
	$(VENV)/bin/python -c "from bpforge.partition.workload import Mix, make_requests; print(''.join(r.payload.hex() + '\n' for r in make_requests(Mix(requests=400, seed=1))), end='')" > $(DEMO)/kvcache.trace
	$(BPFORGE) partition examples/kvcache/server.py --trace $(DEMO)/kvcache.trace -o $(DEMO)/kvcache --budget 0 --report $(DEMO)/kvcache.html
	head -n 12 $(DEMO)/kvcache/user.py
	@echo "fleet: every program of examples/obj optimized in turn with one shared rule store, resumable (the same"
	@echo "command again redoes nothing); asm_mem_sum.o is a failed row: the kernel rejects even its original"
	$(BPFORGE) optimize-many examples/obj -o $(DEMO)/fleet --no-search --rules $(DEMO)/rules.sqlite | tail -n 6 || [ $$? = 1 ]

clean:
	rm -rf build
