#!/usr/bin/env bash
# The kernel fast path benchmark (issue 26, item 7; Docs/Benchmarks.md "Kernel fast path in
# network namespaces"): direct, the hand-tuned forwarder, the director without and with the
# fast path, closed loop, in network namespaces this run makes and deletes (testkit::netns).
#
# usage: sudo bench/fastpath/run.sh [nsbench flags]   (default: --clients 1,64 --seconds 3 --reps 3)
#        make bench-fastpath
# env:   FAST_PATH=0      do not build the fast-path director (its column: "not available")
#        NICE="nice -n 10" prefix of every build (the machine is shared)
#
# Builds, all release:
#   target/release/{udp-director,nsbench}        the plain build
#   target/fast-path/udp-director                 a copy of `--features fast-path`'s binary;
#                                                 a build that fails is reported, not faked
#   /tmp/refproxy-target/release/refproxy         ../shared/bench/refproxy.sh's recipe
# Traffic stays inside the namespaces; every cell stops by itself.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
if [ "$(id -u)" != 0 ]; then
  echo "bench/fastpath/run.sh: needs root (ip netns, veths, CAP_NET_ADMIN); run it with sudo" >&2
  exit 1
fi
CARGO=${CARGO:-cargo}
NICE=${NICE:-nice -n 10}
refproxy_src=${REFPROXY_SRC:-$root/../shared/bench/refproxy}
refproxy_target=${REFPROXY_TARGET:-/tmp/refproxy-target}

echo "== refproxy ($refproxy_src)" >&2
(cd "$refproxy_src" && CARGO_TARGET_DIR=$refproxy_target $NICE "$CARGO" build --release --quiet)

fast_args=()
mkdir -p target/fast-path
rm -f target/fast-path/udp-director
if [ "${FAST_PATH:-1}" = 0 ]; then
  fast_args=(--fast-path-missing "not built (FAST_PATH=0)")
else
  # Built in the same target dir as the plain build (the dependencies are shared; only aya
  # and the daemon compile again), copied out, then the plain build below puts the plain
  # binary back in target/release.
  echo "== udp-director --features fast-path" >&2
  if $NICE "$CARGO" build --release --locked --bin udp-director -p udp-director --features fast-path \
       2> target/fast-path/build.log; then
    cp target/release/udp-director target/fast-path/udp-director
    fast_args=(--fast-path-director target/fast-path/udp-director)
  else
    tail -n 5 target/fast-path/build.log >&2
    fast_args=(--fast-path-missing "the --features fast-path build failed (target/fast-path/build.log)")
  fi
fi

echo "== udp-director, nsbench" >&2
$NICE "$CARGO" build --release --locked --bin udp-director -p udp-director
$NICE "$CARGO" build --release --locked --bin nsbench -p udp-director-testkit
if [ -f target/fast-path/udp-director ] && cmp -s target/release/udp-director target/fast-path/udp-director; then
  echo "bench/fastpath/run.sh: the plain and the fast-path binaries are the same file" >&2
  exit 1
fi

if [ "$#" = 0 ]; then
  set -- --clients 1,64 --seconds 3 --reps 3
fi
exec target/release/nsbench --director target/release/udp-director \
  --refproxy "$refproxy_target/release/refproxy" "${fast_args[@]}" "$@"
