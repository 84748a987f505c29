#!/usr/bin/env bash
# Runs the integration suites under valgrind's memcheck (greenlet stacks are registered with
# valgrind, so stack switches are understood). Any invalid access fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
cargo test -q --no-run
for t in semantics timeouts regressions net monkey signals dns gevent_fidelity; do
  bin=$(ls -t target/debug/deps/"$t"-* | grep -v '\.d$' | head -1)
  echo "== $t"
  # No block cache: a freed greenlet goes back to malloc, so memcheck sees a use after free.
  EVERGREEN_BLOCK_CACHE=0 valgrind --error-exitcode=9 -q "$bin" --test-threads=1 2>&1 | tail -n 3
done
