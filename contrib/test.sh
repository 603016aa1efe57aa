#!/usr/bin/env bash
# The whole test suite: installs what the tests need, builds, and runs every test against real
# etcd processes that the tests start on loopback ports and stop afterwards.
#   contrib/test.sh                  all tests, then the live demo (contrib/demo.sh --once)
#   contrib/test.sh HarpDCSTests     one target, suite or test (swift test --filter, debug build); no demo
set -euo pipefail
cd "$(dirname "$0")/.."
source contrib/install-deps.sh

swift build --build-tests
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
if [ -n "${1:-}" ]; then
  swift test --skip-build --disable-swift-testing --filter "$1" 2>&1 | tee "$log" || status=$?
else
  swift test --skip-build --disable-swift-testing 2>&1 | tee "$log" || status=$?
fi

passed=$(grep -cE "^Test Case '.*' passed" "$log" || true)
failed=$(grep -cE "^Test Case '.*' failed" "$log" || true)

# The live demo, on the debug build just made: it must finish and show both switchovers.
if [ -z "${1:-}" ]; then
  echo
  demo=$(mktemp)
  if HARP_BUILD=debug contrib/demo.sh --once 2>&1 | tee "$demo" && grep -q "after it port" "$demo" \
     && grep -q "after, same client connection: port" "$demo"; then
    echo "Test Case 'contrib/demo.sh --once' passed"; passed=$((passed + 1))
  else
    echo "Test Case 'contrib/demo.sh --once' failed"; failed=$((failed + 1))
  fi
  rm -f "$demo"
fi
echo
echo "tests: $passed passed, $failed failed"
if [ "$status" -ne 0 ] || [ "$failed" -ne 0 ] || [ "$passed" -eq 0 ]; then exit 1; fi
