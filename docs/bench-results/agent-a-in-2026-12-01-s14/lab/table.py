#!/usr/bin/env python3
# table.py FILE...: the lab A/B table of docs/benchmarks.md (session 14): agent A's
# cores per Gbit/s in bench net's protected bulk transfers and iperf3 phases.
import json,sys,os
print("| draw | load (before) | protected bulk MB/s out / in | throttled / paced s, in | A cores per Gbit/s, bulk out / in | iperf3 protected Mbit/s out / in | A cores per Gbit/s, iperf3 out / in | invariant failures |")
print("|---|---|---|---|---|---|---|---|")
for f in sys.argv[1:]:
    j=None
    for l in open(f):
        if l.startswith('{'): j=json.loads(l)
    if j is None:
        print(f"| {os.path.basename(f)[:-4]} | no result |"); continue
    up=open(f.replace('.txt','.uptime')).readline().split('load average:')[1].split(',')[0].strip()
    p=j['protected']
    ip=j['iperf3']['protected']
    ipa=lambda r: r['cpu']['agent_a_cores']/(r['mbit_s']/1000)
    print(f"| {os.path.basename(f)[:-4]} | {up} | {p['guest_to_client_MB_s']:.1f} / {p['client_to_guest_MB_s']:.1f} | "
          f"{p.get('client_to_guest_throttled_s',0):.1f} / {p.get('client_to_guest_paced_s',0):.1f} | "
          f"{p['guest_to_client_agent_a_cores_per_gbit']:.2f} / {p['client_to_guest_agent_a_cores_per_gbit']:.2f} | "
          f"{ip['guest_to_client']['mbit_s']:.0f} / {ip['client_to_guest']['mbit_s']:.0f} | {ipa(ip['guest_to_client']):.2f} / {ipa(ip['client_to_guest']):.2f} | {j['invariant_failures']} |")
