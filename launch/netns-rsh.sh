#!/usr/bin/env bash
# Open MPI's remote-start agent for the simulated cluster of scripts/netns-cluster.sh: mpirun calls
# it in place of ssh (`--mca plm_rsh_agent launch/netns-rsh.sh`) to start its daemon (orted) on
# each host of the hostfile; it runs the command in that host's network namespace instead.
#
#   netns-rsh.sh [ssh-style options] HOST COMMAND...
#
# Open MPI 4.1 passes HOST as written in the hostfile, then the daemon's command line as words
# meant for a remote shell (`orted -mca ess "env" -mca orte_hnp_uri "...;tcp://..." ...`): like
# ssh, this joins them with spaces and hands them to `sh -c` in the namespace. HOST is a node's
# address ($NETNS_SUBNET.i, so the hostfile needs no /etc/hosts entries), its namespace name
# ($NETNS_PREFIX<i>) or node<i>. NETNS_PREFIX (default node) and NETNS_SUBNET (default 198.18.0)
# are those of netns-cluster.sh; mpirun passes its environment on to the agent.
# Needs root (ip netns exec). Every node keeps the host's hostname: Open MPI tells the daemons
# apart by the hostfile entry it gave each, not by hostname (each rank sees
# OMPI_COMM_WORLD_LOCAL_SIZE=1), so no UTS namespace is needed.
set -euo pipefail

PREFIX=${NETNS_PREFIX:-node}
SUBNET=${NETNS_SUBNET:-198.18.0}
die() { echo "netns-rsh: $*" >&2; exit 255; }  # 255: what ssh returns when it cannot connect

# ssh-style options before the host (e.g. from plm_rsh_args) mean nothing here: skip them.
while [ $# -gt 0 ]; do
  case $1 in
    -[bcDEeFIiJLlmOopQRSWw]) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || die "usage: $0 HOST COMMAND..."
host=${1#*@}  # user@host as ssh takes it
shift

case $host in
  "$SUBNET".*) i=${host#"$SUBNET".} ;;
  "$PREFIX"*) i=${host#"$PREFIX"} ;;
  node*) i=${host#node} ;;
  *) die "host '$host' is neither an address $SUBNET.N nor a node name ${PREFIX}N" ;;
esac
case $i in '' | *[!0-9]*) die "host '$host': no node number in it" ;; esac
ns=$PREFIX$i
ip netns list 2>/dev/null | grep -qw "^$ns" ||
  die "host '$host': network namespace $ns does not exist (scripts/netns-cluster.sh up)"
IFS=' '
exec ip netns exec "$ns" /bin/sh -c "$*"
