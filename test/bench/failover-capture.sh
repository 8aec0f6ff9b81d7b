#!/bin/bash
# While it runs, capture the lab guest's service port, ARP and RARP on every port of
# the bridge of each new lab (ftlab-net) and in host B's namespace, one pcap per lab,
# and follow both agents' logs, which the next lab's Up removes:
#
#     bash test/bench/failover-capture.sh DIR &   # then, in the lab queue:
#     ./build/ftvmd bench failover --runs 10; kill %1
#
# The tcpdumps run inside the lab's namespaces, so the lab's Down ends them. Read the
# pcaps with test/bench/failover-gaps.py. Needs tcpdump (apt-get install tcpdump).
set -u
dir=$1
mkdir -p "$dir"
tail -n0 -F /var/lib/ftvmd-lab/agent-a.log >> "$dir/agent-a.log" 2>/dev/null &
ta=$!
tail -n0 -F /var/lib/ftvmd-lab/agent-b.log >> "$dir/agent-b.log" 2>/dev/null &
tb=$!
pid=
pidb=
trap 'kill $ta $tb $pid $pidb 2>/dev/null; exit 0' TERM INT
n=0
while :; do
  if { [ -z "$pid" ] || ! kill -0 $pid 2>/dev/null; } && [ -e /run/netns/ftlab-net ] && ip netns exec ftlab-net ip link show port-c >/dev/null 2>&1; then
    n=$((n+1))
    ip netns exec ftlab-net tcpdump -U -i any -nn -s 128 -w "$dir/lab$n.pcap" 'tcp port 7000 or arp or rarp or ether proto 0x8035' >/dev/null 2>&1 &
    pid=$!
    ip netns exec ftlab-b tcpdump -U -i any -nn -s 128 -w "$dir/lab$n-b.pcap" "tcp port 7000 or arp or rarp or ether proto 0x8035" >/dev/null 2>&1 &
    pidb=$!
    echo "$(date -u +%T.%N) lab$n pcap pid $pid" >> "$dir/watch.log"
  fi
  sleep 0.2
done
