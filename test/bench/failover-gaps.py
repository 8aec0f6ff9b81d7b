#!/usr/bin/env python3
"""The client's view of a failover drill, from a capture on the lab's bridge.

    python3 test/bench/failover-gaps.py PCAP [FAULT LIVE]

PCAP is a capture taken in the ftlab-net namespace on every port of the bridge
(test/bench/failover-capture.sh). FAULT and LIVE are UTC times of day (HH:MM:SS.frac):
the drill's "fault injected" line and host B's "vm started" line. It finds the
long-lived connection (the client port with the most packets), counts as answers the
guest's data segments delivered to the client that carry new bytes, and prints the
three longest gaps between answers with every segment in them relative to the fault
(RETRANS marks a sequence number seen before; ifindex 3/4/5 are port-a/-b/-c as
test/lab/lab.sh creates them), the first announcement from the guest's MAC, and with
LIVE the gap over the failover (ends after FAULT, starts before LIVE: the bench's
client_outage_ms) and the longest gap from 2 s before the fault on (max_gap_ms).
Used for docs/benchmarks.md, "Going live in place".
"""
import collections
import datetime
import re
import subprocess
import sys

pcap = sys.argv[1]
out = subprocess.run(["tcpdump", "-r", pcap, "-nn", "-tt", "-e", "tcp"], capture_output=True, text=True).stdout
rx = re.compile(r"^(\d+\.\d+) (\S+)\s+(In|Out|P|B|M|\?)?\s*ifindex (\d+) .*?IPv4.*?: (\d+\.\d+\.\d+\.\d+)\.(\d+) > (\d+\.\d+\.\d+\.\d+)\.(\d+): Flags \[([^\]]*)\], (?:seq (\d+):?(\d+)?, )?(?:ack (\d+), )?.*length (\d+)")
pk = []
for l in out.splitlines():
    m = rx.match(l)
    if not m: continue
    t, _, d, ifi, sip, sp, dip, dp, fl, s1, s2, ack, ln = m.groups()
    pk.append((float(t), d, int(ifi), sip, int(sp), dip, int(dp), fl, s1 and int(s1), s2 and int(s2), int(ln)))
if not pk: sys.exit("no packets")
cnt = collections.Counter(p[4] for p in pk if p[3] == "10.77.0.10")
cport = cnt.most_common(1)[0][0]
# client ifindex: where client packets arrive (direction P) ; guest-side ifindexes: where guest packets arrive
cif = collections.Counter(p[2] for p in pk if p[3] == "10.77.0.10" and p[1] == "P").most_common(1)[0][0]
conn = [p for p in pk if cport in (p[4], p[6])]
fault = None
if len(sys.argv) > 2:
    day = datetime.datetime.utcfromtimestamp(pk[0][0]).strftime("%Y-%m-%d")
    fault = datetime.datetime.strptime(day + " " + sys.argv[2][:15], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc).timestamp()
# answers delivered to the client: guest->client data, Out on cif
ans = []
hi = 0
for p in conn:
    if p[3] == "10.77.0.100" and p[2] == cif and p[10] > 0 and p[9] and p[9] > hi:
        hi = p[9]; ans.append(p)
req = [p for p in conn if p[3] == "10.77.0.10" and p[2] == cif and p[10] > 0]
def rel(t): return "%+.0f" % ((t - fault) * 1000) if fault else "%.3f" % t
gaps = sorted(((ans[i][0] - ans[i-1][0], i) for i in range(1, len(ans))), reverse=True)[:3]
for g, i in gaps:
    a0, a1 = ans[i-1][0], ans[i][0]
    print("gap %.0f ms: last answer %s ms, next %s ms (rel. fault)" % (g*1000, rel(a0), rel(a1)))
    seen = set()
    for p in conn:
        if a0 - 0.001 <= p[0] <= a1 + 0.001 and p[2] in (cif, 3, 4) and not (p[2] != cif and p[1] == "Out"):
            who = "client" if p[3] == "10.77.0.10" else "guest "
            key = (p[3], p[8])
            tag = "RETRANS" if key in seen else ""
            seen.add(key)
            print("   %s if%d %s %s %s seq %s len %d %s" % (rel(p[0]), p[2], p[1], who, p[7], p[8], p[10], tag))
    # which guest-side port carried packets in the gap
    ports = collections.Counter((p[2], p[1]) for p in conn if a0 <= p[0] <= a1 and p[2] != cif)
    print("   other ifindex/dir in gap:", dict(ports))
# RARP/announce times
rarp = subprocess.run(["tcpdump", "-r", pcap, "-nn", "-tt", "-e", "rarp or arp"], capture_output=True, text=True).stdout.splitlines()
ra = [float(l.split()[0]) for l in rarp if "52:54:00:12:34:56" in l and ("Reverse" in l or "tell 10.77.0.100" in l)]
if ra:
    print("first announce/garp: %s ms" % rel(ra[0]))
if fault and len(sys.argv) > 3:
    day = datetime.datetime.utcfromtimestamp(pk[0][0]).strftime("%Y-%m-%d")
    live = datetime.datetime.strptime(day + " " + sys.argv[3][:15], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc).timestamp()
    fg = max([(ans[i][0] - ans[i-1][0]) for i in range(1, len(ans)) if ans[i][0] > fault and ans[i-1][0] < live] or [0])
    mg = max([(ans[i][0] - ans[i-1][0]) for i in range(1, len(ans)) if ans[i][0] > fault - 2] or [0])
    print("SUMMARY failover_gap_ms %.0f max_gap_ms %.0f" % (fg * 1000, mg * 1000))
