#!/usr/bin/env bash
# Reaction time to a leader change: etcd write -> old sessions closed, and -> a new client served
# by the new leader, over many switchovers (contrib/bench/reaction.py does the timing).
#   contrib/bench/reaction.sh [SWITCHOVERS] [SESSIONS]
source "$(dirname "$0")/../lib.sh"
command -v python3 >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq python3 >/dev/null; }
two_node_location
python3 contrib/bench/reaction.py "$etcd_port" "$harp_port" bench dc1 "node1:$a_port" "node2:$b_port" "${1:-100}" "${2:-5}"
