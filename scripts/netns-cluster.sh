#!/usr/bin/env bash
# A simulated cluster on this host: NODES network namespaces (node1, node2, ...), each with its
# loopback up and one veth into a bridge in the root namespace, on a test range that nothing else
# uses (198.18.0.0/24, RFC 2544 benchmarking addresses): node i is 198.18.0.i, the root
# namespace (the "head node": coordinator, slurmctld) is 198.18.0.254 on the bridge. No route
# leads out of the range: traffic stays between these namespaces.
#
#   scripts/netns-cluster.sh up        # (re)create; prints the nodes and their addresses
#   scripts/netns-cluster.sh down      # kill every process in the namespaces, remove them and
#                                      # every link; safe to run when nothing is up
#   scripts/netns-cluster.sh status    # exit 0 when every namespace and the bridge exist
#   scripts/netns-cluster.sh exec N CMD...   # run CMD in node N's namespace (N: 1, 2, ... or nodeN)
#
# Needs root and iproute2. `up` removes what it made if it fails half way. Environment: NODES
# (default 2), NETNS_PREFIX (default "node": namespaces node1..), NETNS_BRIDGE (default shlm-br0),
# NETNS_SUBNET (default 198.18.0; a /24).
set -euo pipefail

NODES=${NODES:-2}
PREFIX=${NETNS_PREFIX:-node}
BRIDGE=${NETNS_BRIDGE:-shlm-br0}
SUBNET=${NETNS_SUBNET:-198.18.0}
HEAD_ADDR=$SUBNET.254

die() { echo "netns-cluster: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"; }
ns_name() { case $1 in "$PREFIX"*) echo "$1" ;; *) echo "$PREFIX$1" ;; esac; }

down() {
  local i ns pids
  for i in $(seq 1 "$NODES"); do
    ns=$PREFIX$i
    if ip netns list 2>/dev/null | grep -qw "^$ns"; then
      # Whatever runs in the namespace (daemons, ranks) goes first, or the namespace lingers.
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      if [ -n "$pids" ]; then
        kill -9 $pids 2>/dev/null || true
        for _ in $(seq 1 50); do
          [ -z "$(ip netns pids "$ns" 2>/dev/null || true)" ] && break
          sleep 0.1
        done
      fi
      ip netns del "$ns" 2>/dev/null || true
    fi
    # The root-side end of the veth (deleting the namespace removes its pair, but not when the
    # namespace never got its end).
    ip link del "veth-$ns" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

up() {
  need_root
  command -v ip >/dev/null || die "needs iproute2 (apt-get install iproute2)"
  down
  trap 'echo "netns-cluster: up failed; removing what was made" >&2; down' ERR
  ip link add "$BRIDGE" type bridge
  ip addr add "$HEAD_ADDR/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  local i ns
  for i in $(seq 1 "$NODES"); do
    ns=$PREFIX$i
    ip netns add "$ns"
    ip link add "veth-$ns" type veth peer name eth0 netns "$ns"
    ip link set "veth-$ns" master "$BRIDGE"
    ip link set "veth-$ns" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$SUBNET.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
  trap - ERR
  # The bridge forwards once its ports are up: wait until every node's link is.
  for i in $(seq 1 "$NODES"); do
    for _ in $(seq 1 50); do
      ip -n "$PREFIX$i" link show eth0 | grep -q 'LOWER_UP' && break
      sleep 0.1
    done
  done
  echo "head $HEAD_ADDR (root namespace, bridge $BRIDGE)"
  for i in $(seq 1 "$NODES"); do echo "$PREFIX$i $SUBNET.$i"; done
}

status() {
  ip link show "$BRIDGE" >/dev/null 2>&1 || return 1
  local i
  for i in $(seq 1 "$NODES"); do ip netns list | grep -qw "^$PREFIX$i" || return 1; done
}

case ${1:-} in
  up) up ;;
  down) need_root; down ;;
  status) status ;;
  exec)
    [ $# -ge 3 ] || die "usage: $0 exec NODE CMD..."
    ns=$(ns_name "$2"); shift 2
    exec ip netns exec "$ns" "$@" ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
