#!/usr/bin/env bash
# The reliability soak: the same tests as CI's short suite, with the counts
# the reliability issue asks for, against the local Garage server.
#
#   scripts/soak.sh                  # 60 SIGKILL trials, 8 writers x 20 rounds, a 2 GB cache,
#                                    # the full fault matrix, hostile archives, disk and secrets
#   SANDCACHE_SOAK_TRIALS=200 scripts/soak.sh
#   SANDCACHE_SOAK_SEED=1234 scripts/soak.sh    # replay one SIGKILL sequence
#
# It prints every trial and cell (--nocapture) and a closing `tests:` total.
# The fuzzers are separate: see docs/fuzzing.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export SANDCACHE_SOAK_TRIALS=${SANDCACHE_SOAK_TRIALS:-60}
export SANDCACHE_SOAK_ROUNDS=${SANDCACHE_SOAK_ROUNDS:-20}
export SANDCACHE_SOAK_BIG_MB=${SANDCACHE_SOAK_BIG_MB:-2048}
printf 'soak: %s SIGKILL trials, 8 writers x %s rounds, a %s MB cache\n' \
    "$SANDCACHE_SOAK_TRIALS" "$SANDCACHE_SOAK_ROUNDS" "$SANDCACHE_SOAK_BIG_MB" >&2

# Reliability tests only, one at a time so their timings mean something.
exec scripts/test.sh -p sandcache -p sandcache-engine -p sandcache-archive -- \
    --test-threads 1 --nocapture soak:: secrets:: faults:: resources:: hostile
