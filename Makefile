# committee — one non-recursive Makefile.
#
#   make               build teacher-server and student-trainer (build/bin/)
#   make check         install missing Debian packages, build, run every Check suite
#   make check-asan    the same suites under AddressSanitizer + UBSan (build-asan/)
#   make valgrind      the suites under valgrind (no fork, leak check)
#   make bench         benchmark programs (bench/), prints their tables
#   make format        clang-format every source; make format-check fails on drift
#   make deps          install the Debian packages listed in deploy/packages.txt
#   make fuzz          libFuzzer harnesses of tests/fuzz (build-fuzz/); make fuzz-run runs them
#   make install       binaries, man pages, Python package, examples (PREFIX, DESTDIR); uninstall
#
# Variables: BUILD (output dir), SANITIZE=1, WERROR=1, CC.

BUILD    ?= build
CC       ?= cc
PKGS     := libzmq libprotobuf-c libuv openblas jansson zlib yaml-0.1
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS   := $(shell pkg-config --libs check 2>/dev/null)

WARNINGS := -Wall -Wextra -Wshadow -Wmissing-prototypes -Wno-unused-parameter
CFLAGS   ?= -O2 -g
CFLAGS   += -std=c11 -D_GNU_SOURCE -pthread -fno-strict-aliasing $(WARNINGS)
ifeq ($(WERROR),1)
CFLAGS   += -Werror
endif
ifeq ($(SANITIZE),1)
CFLAGS   += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS  += -fsanitize=address,undefined
endif
CPPFLAGS += -Icommon -I$(BUILD)/gen $(PKG_CFLAGS)
LDLIBS   += $(PKG_LIBS) -lm

GEN_DIR   := $(BUILD)/gen
PROTO_SRC := $(wildcard proto/*.proto)
PROTO_C   := $(patsubst proto/%.proto,$(GEN_DIR)/%.pb-c.c,$(PROTO_SRC))
PROTO_H   := $(PROTO_C:.c=.h)

COMMON_SRC  := $(wildcard common/*.c)
TEACHER_SRC := $(wildcard teacher_server/*.c)
TRAINER_SRC := $(wildcard student_trainer/*.c)
TEST_SRC    := $(wildcard tests/*.c)
TEST_SUITES := $(patsubst tests/check_%.c,%,$(filter-out tests/check_main.c,$(wildcard tests/check_*.c)))
BENCH_SRC   := $(wildcard bench/bench_*.c)
BENCH_LIB_SRC := $(filter-out $(BENCH_SRC),$(wildcard bench/*.c))

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
COMMON_OBJ  := $(call obj,$(COMMON_SRC)) $(patsubst $(GEN_DIR)/%.c,$(BUILD)/obj/gen/%.o,$(PROTO_C))
TEACHER_OBJ := $(call obj,$(TEACHER_SRC))
TRAINER_OBJ := $(call obj,$(TRAINER_SRC))
TRAINER_LIB_OBJ := $(filter-out %/main.o,$(TRAINER_OBJ))
TEST_OBJ    := $(call obj,$(TEST_SRC))
BENCH_BIN   := $(patsubst bench/%.c,$(BUILD)/bin/%,$(BENCH_SRC))

LIB         := $(BUILD)/libcommittee.a
TEACHER_BIN := $(BUILD)/bin/teacher-server
TRAINER_BIN := $(BUILD)/bin/student-trainer
CHECK_BIN   := $(BUILD)/bin/check_committee
SUITES_H    := $(GEN_DIR)/check_suites.h

.PHONY: all check check-run check-asan valgrind bench bench-run bench-quality format format-check deps clean
.DEFAULT_GOAL := all

all: $(TEACHER_BIN) $(TRAINER_BIN)

deps:
	@deploy/install-deps.sh

# Ordering: packages first, then the build (a recursive call, not recursion into directories).
check: deps
	@$(MAKE) --no-print-directory check-run

check-run: $(CHECK_BIN) $(TEACHER_BIN) $(TRAINER_BIN)
	COMMITTEE_BIN_DIR=$(BUILD)/bin $(CHECK_BIN)
	@$(MAKE) --no-print-directory check-python

# tests/lsan.supp: a leak LeakSanitizer reports inside libzmq (see the file).
check-asan: deps
	@LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
	    $(MAKE) --no-print-directory BUILD=build-asan SANITIZE=1 check-run

valgrind: deps
	@command -v valgrind >/dev/null || { echo "valgrind missing: run make deps as root"; exit 1; }
	@$(MAKE) --no-print-directory $(CHECK_BIN) $(TEACHER_BIN) $(TRAINER_BIN)
	CK_FORK=no COMMITTEE_BIN_DIR=$(BUILD)/bin COMMITTEE_SLOW_TESTS=0 valgrind --error-exitcode=3 \
	    --leak-check=full --errors-for-leak-kinds=definite,indirect --track-origins=yes \
	    --suppressions=tests/valgrind.supp $(CHECK_BIN)

bench: deps
	@$(MAKE) --no-print-directory bench-run

bench-run: $(BENCH_BIN) $(TEACHER_BIN) $(TRAINER_BIN) python
	@for program in $(BENCH_BIN) $(wildcard bench/bench_*.sh); do echo "== $$program"; \
	    COMMITTEE_BIN_DIR=$(BUILD)/bin $$program || exit 1; done

# The honest results tables, one section each (QUALITY_SECTIONS, default both):
#   vision     bench/quality.sh (~1.5-2 h on 2 cores, estimated): fits the committee (CNN fm)
#              unless its checkpoints exist in runs/quality, chooses recipes and hyper-parameters
#              on a holdout, writes bench/results/quality.{md,json} (QUALITY_ARGS: --refit);
#   movielens  bench/movielens/quality.sh (~40 min): the dataset folder, the teachers' grids, tuning
#              on valid, 3 seeds, writes bench/results/movielens.{md,json} (MOVIELENS_BENCH_ARGS).
QUALITY_SECTIONS ?= vision movielens
bench-quality: deps
	@$(MAKE) --no-print-directory $(TEACHER_BIN) $(TRAINER_BIN)
	@for section in $(QUALITY_SECTIONS); do \
	    case $$section in \
	    vision) echo "== bench-quality: vision (bench/quality.sh)"; \
	        BIN=$(CURDIR)/$(BUILD)/bin bench/quality.sh $(QUALITY_ARGS) || exit 1 ;; \
	    movielens) echo "== bench-quality: movielens (bench/movielens/quality.sh)"; \
	        BIN=$(CURDIR)/$(BUILD)/bin PYTHON=$(PYTHON) MOVIELENS_DIR=$(MOVIELENS_DIR) \
	            bench/movielens/quality.sh --out bench/results/movielens $(MOVIELENS_BENCH_ARGS) \
	            || exit 1 ;; \
	    *) echo "bench-quality: unknown section '$$section' in QUALITY_SECTIONS (vision, movielens)"; \
	        exit 2 ;; \
	    esac; \
	done

format:
	clang-format -i $(COMMON_SRC) $(wildcard common/*.h) $(TEACHER_SRC) $(wildcard teacher_server/*.h) \
	    $(TRAINER_SRC) $(wildcard student_trainer/*.h) $(TEST_SRC) $(wildcard tests/*.h) $(wildcard bench/*.c bench/*.h)

format-check:
	@clang-format --dry-run --Werror $(COMMON_SRC) $(wildcard common/*.h) $(TEACHER_SRC) \
	    $(wildcard teacher_server/*.h) $(TRAINER_SRC) $(wildcard student_trainer/*.h) $(TEST_SRC) \
	    $(wildcard tests/*.h) $(wildcard bench/*.c bench/*.h) && echo "format-check: clean"

clean:
	rm -rf build build-asan build-werror

$(GEN_DIR)/%.pb-c.c $(GEN_DIR)/%.pb-c.h: proto/%.proto
	@mkdir -p $(GEN_DIR)
	protoc-c --proto_path=proto --c_out=$(GEN_DIR) $<

$(SUITES_H): $(wildcard tests/check_*.c) Makefile
	@mkdir -p $(GEN_DIR)
	@printf '%s\n' $(foreach suite,$(TEST_SUITES),'CHECK_SUITE($(suite))') > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/gen/%.o: $(GEN_DIR)/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(filter-out $(WARNINGS),$(CFLAGS)) -MMD -MP -c $< -o $@

$(BUILD)/obj/%.o: %.c | $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/tests/%.o: tests/%.c $(SUITES_H) | $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Istudent_trainer $(CHECK_CFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(LIB): $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(TEACHER_BIN): $(TEACHER_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(CFLAGS) $^ $(LDLIBS) -o $@

$(TRAINER_BIN): $(TRAINER_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(CFLAGS) $^ $(LDLIBS) -o $@

$(CHECK_BIN): $(TEST_OBJ) $(TRAINER_LIB_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(CFLAGS) $^ $(CHECK_LIBS) $(LDLIBS) -o $@

$(BUILD)/bin/%: $(BUILD)/obj/bench/%.o $(call obj,$(BENCH_LIB_SRC)) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(CFLAGS) $^ $(LDLIBS) -o $@

.SECONDARY: $(PROTO_C) $(PROTO_H)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# Deployment: the demo, the compose end-to-end check, the network-namespace check.
.PHONY: demo check-docker check-swarm check-k8s check-netns

demo: deps
	@$(MAKE) --no-print-directory all python
	PYTHON=$(PYTHON) deploy/demo.sh

check-docker: deps
	@$(MAKE) --no-print-directory all
	deploy/check-docker.sh

# deploy/stack.yml on a single-node Docker Swarm: three teacher replicas, scaled to one and back
# mid-run (deploy/check-swarm.sh says what it checks).  SKIP when no Docker engine answers.
check-swarm: deps
	@$(MAKE) --no-print-directory all
	deploy/check-swarm.sh

# deploy/k8s (Kubernetes manifests), rendered and checked offline (deploy/k8s/check-k8s.sh).
check-k8s:
	deploy/k8s/check-k8s.sh

check-netns: deps
	@$(MAKE) --no-print-directory all
	deploy/netns-test.sh

# Python SDK (python/committee) and the conformance suite (tests/conformance), on Debian's
# python3-* packages only: `make python` generates committee_pb2 from proto/ into
# $(BUILD)/python (never committed); `make check-python` runs pytest against teacher-server
# serve and the Python teacher; `make bench-python` compares their served examples/s.
.PHONY: python check-python bench-python
PYTHON ?= /usr/bin/python3
PY_ENV  = PYTHONPATH=$(CURDIR)/python:$(CURDIR)/$(BUILD)/python COMMITTEE_BIN_DIR=$(CURDIR)/$(BUILD)/bin

python: $(BUILD)/python/committee_pb2.py

$(BUILD)/python/committee_pb2.py: proto/committee.proto
	@mkdir -p $(dir $@)
	protoc --proto_path=proto --python_out=$(dir $@) $<

check-python: python $(TEACHER_BIN) $(TRAINER_BIN)
	$(PY_ENV) $(PYTHON) -m pytest -q -p no:cacheprovider tests/python tests/conformance

bench-python: python $(TEACHER_BIN)
	$(PY_ENV) $(PYTHON) bench/bench_python.py

# PyTorch parity (bench/parity/run_parity.py, Debian's python3-torch, ~4 min): teacher fit and
# the ce, kd and avg-kd students replayed in PyTorch from the C runs' --save-initial weights,
# --log-steps batches and --record teacher outputs; prints the table of per-step loss and
# test accuracy differences (PARITY_ARGS=--quick: 20 steps, as tests/python/test_parity.py).
.PHONY: bench-parity
bench-parity: python $(TEACHER_BIN) $(TRAINER_BIN)
	OPENBLAS_NUM_THREADS=1 $(PY_ENV) $(PYTHON) bench/parity/run_parity.py $(PARITY_ARGS)

# bench-quality's vision section in its smoke mode (QUALITY_SMOKE=1: 2000 images, 1-2 epochs,
# one seed, one-point grids; ~80 s), run by tests/python/test_quality_vision.py, which also
# checks the report and that a rerun trains nothing (make check-python runs it too).
.PHONY: bench-quality-smoke
bench-quality-smoke: python $(TEACHER_BIN) $(TRAINER_BIN)
	$(PY_ENV) $(PYTHON) -m pytest -q -p no:cacheprovider tests/python/test_quality_vision.py

# committee's kernels next to PyTorch eager (Debian's python3-torch), one thread each, in one
# run with interleaved repetitions (bench/bench_torch.py; BENCH_TORCH_ARGS e.g. --reps 9).
.PHONY: bench-torch
bench-torch: $(BUILD)/bin/bench_torch
	OPENBLAS_NUM_THREADS=1 $(PYTHON) bench/bench_torch.py --bin $(BUILD)/bin $(BENCH_TORCH_ARGS)

# Fuzzing (issue 11): `make fuzz` builds every tests/fuzz/fuzz_*.c into a libFuzzer harness
# build-fuzz/fuzz_NAME with clang, linked with common/ compiled with the same sanitizers;
# `make fuzz-run FUZZ_SECONDS=60` runs each for that long over its seeds tests/fuzz/corpus/NAME/
# (read only; new inputs go to build-fuzz/corpus/NAME/) and fails on the first crash, leak,
# undefined behaviour or hang, leaving the input in build-fuzz/crashes/.  Reproduce one with
# `build-fuzz/fuzz_NAME build-fuzz/crashes/NAME-crash-...`.  tests/fuzz/NAME.dict, when it
# exists, is the harness's libFuzzer dictionary.  `make fuzz-corpus` rewrites the committed
# seeds with tests/fuzz/make_corpus.c.
.PHONY: fuzz fuzz-run fuzz-corpus
FUZZ_BUILD    := build-fuzz
FUZZ_CC       ?= clang
FUZZ_SECONDS  ?= 60
FUZZ_MAX_LEN  ?= 16384
FUZZ_SANITIZE := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS   := -O1 -g -std=c11 -D_GNU_SOURCE -pthread -fno-strict-aliasing $(FUZZ_SANITIZE)
FUZZ_SRC      := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN      := $(patsubst tests/fuzz/%.c,$(FUZZ_BUILD)/%,$(FUZZ_SRC))
FUZZ_LIB_OBJ  := $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(COMMON_SRC)) \
                 $(patsubst $(GEN_DIR)/%.c,$(FUZZ_BUILD)/obj/gen/%.o,$(PROTO_C))
FUZZ_LIB      := $(FUZZ_BUILD)/libcommittee-fuzz.a

fuzz:
	@command -v $(FUZZ_CC) >/dev/null || { echo "$(FUZZ_CC) missing: run make deps as root"; exit 1; }
	@$(MAKE) --no-print-directory $(FUZZ_BIN)

fuzz-run: fuzz
	@mkdir -p $(FUZZ_BUILD)/crashes
	@for harness in $(FUZZ_BIN); do name=$${harness##*/fuzz_}; \
	    mkdir -p $(FUZZ_BUILD)/corpus/$$name; \
	    seeds=""; [ -d tests/fuzz/corpus/$$name ] && seeds=tests/fuzz/corpus/$$name; \
	    dict=""; [ -f tests/fuzz/$$name.dict ] && dict=-dict=tests/fuzz/$$name.dict; \
	    echo "== $$harness for $(FUZZ_SECONDS) s, seeds: $${seeds:-none}"; \
	    $$harness -max_total_time=$(FUZZ_SECONDS) -timeout=30 -rss_limit_mb=2048 \
	        -max_len=$(FUZZ_MAX_LEN) -print_final_stats=1 $$dict \
	        -artifact_prefix=$(FUZZ_BUILD)/crashes/$$name- $(FUZZ_BUILD)/corpus/$$name $$seeds \
	        || { echo "fuzz-run: $$harness failed (input in $(FUZZ_BUILD)/crashes/)"; exit 1; }; \
	done

fuzz-corpus: $(FUZZ_BUILD)/make_corpus
	$(FUZZ_BUILD)/make_corpus tests/fuzz/corpus

$(FUZZ_BUILD)/obj/gen/%.o: $(GEN_DIR)/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

$(FUZZ_BUILD)/obj/%.o: %.c | $(PROTO_H)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

$(FUZZ_LIB): $(FUZZ_LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_%.o $(FUZZ_LIB)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $^ $(LDLIBS) -o $@

$(FUZZ_BUILD)/make_corpus: $(FUZZ_BUILD)/obj/tests/fuzz/make_corpus.o $(FUZZ_LIB)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $^ $(LDLIBS) -o $@

clean: clean-fuzz
.PHONY: clean-fuzz
clean-fuzz:
	rm -rf $(FUZZ_BUILD)

-include $(shell find $(FUZZ_BUILD)/obj -name '*.d' 2>/dev/null)

# Installing (issue 15): `make install PREFIX=/usr/local DESTDIR=` puts both binaries in
# PREFIX/bin, their man pages (deploy/man.sh, from each command's --help) in
# PREFIX/share/man/man1, the Python package with its generated committee_pb2 in
# PREFIX/share/committee/python (not a site directory: add it to PYTHONPATH; Debian's
# python3-* packages stay the only dependencies), examples/ in PREFIX/share/committee/examples
# and the README and docs/ in PREFIX/share/doc/committee.  `make uninstall` removes them.
.PHONY: install uninstall
PREFIX  ?= /usr/local
INSTALL ?= install
INSTALL_BIN    := $(DESTDIR)$(PREFIX)/bin
INSTALL_MAN    := $(DESTDIR)$(PREFIX)/share/man/man1
INSTALL_SHARE  := $(DESTDIR)$(PREFIX)/share/committee
INSTALL_DOC    := $(DESTDIR)$(PREFIX)/share/doc/committee
INSTALL_PY_SRC := $(wildcard python/committee/*.py)
INSTALL_EXAMPLES := $(wildcard examples/*.py examples/*.yaml)
MAN_PAGES      := $(BUILD)/man/teacher-server.1 $(BUILD)/man/student-trainer.1

$(MAN_PAGES) &: $(TEACHER_BIN) $(TRAINER_BIN) deploy/man.sh
	deploy/man.sh $(BUILD)/bin $(BUILD)/man

install: $(TEACHER_BIN) $(TRAINER_BIN) $(MAN_PAGES) python
	$(INSTALL) -d $(INSTALL_BIN) $(INSTALL_MAN) $(INSTALL_SHARE)/python/committee \
	    $(INSTALL_SHARE)/examples $(INSTALL_DOC)
	$(INSTALL) -m 0755 $(TEACHER_BIN) $(TRAINER_BIN) $(INSTALL_BIN)/
	$(INSTALL) -m 0644 $(MAN_PAGES) $(INSTALL_MAN)/
	$(INSTALL) -m 0644 $(INSTALL_PY_SRC) $(INSTALL_SHARE)/python/committee/
	$(INSTALL) -m 0644 $(BUILD)/python/committee_pb2.py $(INSTALL_SHARE)/python/
	$(INSTALL) -m 0644 $(INSTALL_EXAMPLES) $(INSTALL_SHARE)/examples/
	$(INSTALL) -m 0644 README.md docs/DIVERSEDISTILL.md $(INSTALL_DOC)/

uninstall:
	rm -f $(INSTALL_BIN)/teacher-server $(INSTALL_BIN)/student-trainer \
	    $(INSTALL_MAN)/teacher-server.1 $(INSTALL_MAN)/student-trainer.1
	rm -rf $(INSTALL_SHARE) $(INSTALL_DOC)

# MovieLens, the paper's experiment (bench/movielens, README "MovieLens: the paper's
# experiment"): `make movielens` exports Debian's r-cran-dslabs ratings once with Rscript and
# converts them into a dataset folder in $(MOVIELENS_DIR) (never committed: GroupLens's terms),
# then checks it; `make demo-movielens` fits, serves and distills a small committee on it;
# `make bench-movielens` is bench-quality's MovieLens section alone (bench/movielens/quality.sh;
# MOVIELENS_BENCH_ARGS passes its options, e.g. --seeds 1 --methods "ce dd").
.PHONY: movielens demo-movielens bench-movielens
MOVIELENS_DIR ?= $(BUILD)/data/movielens

movielens: $(TEACHER_BIN)
	BIN=$(CURDIR)/$(BUILD)/bin PYTHON=$(PYTHON) bench/movielens/prepare.sh $(MOVIELENS_DIR)

demo-movielens: $(TEACHER_BIN) $(TRAINER_BIN)
	BIN=$(CURDIR)/$(BUILD)/bin PYTHON=$(PYTHON) MOVIELENS_DIR=$(MOVIELENS_DIR) bench/movielens/demo.sh

bench-movielens:
	@$(MAKE) --no-print-directory bench-quality QUALITY_SECTIONS=movielens
