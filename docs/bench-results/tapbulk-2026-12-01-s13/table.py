#!/usr/bin/env python3
# table.py FILE...: the A/B table of docs/benchmarks.md (session 13)
import json,sys,os
def gbit(mbs): return mbs*(1<<20)*8/1e9
print("| draw | load (before) | ratio out / in | protected MB/s out / in | throttled / paced s, out | throttled / paced s, in | A + B ms CPU per MB out / in | A cores per Gbit/s out / in | B cores per Gbit/s out / in | iperf3 protected Mbit/s in / out | iperf3: A + B cores per Gbit/s in / out | invariant failures |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for f in sys.argv[1:]:
    j=None
    for l in open(f):
        if l.startswith('{'): j=json.loads(l)
    up=open(f.replace('.txt','.uptime')).readline().split('load average:')[1].split(',')[0].strip()
    p=j['protected']; gc,cg=p['guest_to_client_cpu'],p['client_to_guest_cpu']
    ip=j['iperf3']['protected']
    ipab=lambda r: (r['cpu']['agent_a_cores']+r['cpu'].get('agent_b_cores',0))/(r['mbit_s']/1000)
    ab=lambda c,mb: 1000*(c['agent_a_cores']+c.get('agent_b_cores',0))/mb
    print(f"| {os.path.basename(f)[:-4]} | {up} | {j['guest_to_client_ratio']:.2f} / {j['client_to_guest_ratio']:.2f} | {p['guest_to_client_MB_s']:.1f} / {p['client_to_guest_MB_s']:.1f} | "
          f"{p['guest_to_client_throttled_s']:.1f} / {p['guest_to_client_paced_s']:.1f} | {p['client_to_guest_throttled_s']:.1f} / {p['client_to_guest_paced_s']:.1f} | "
          f"{ab(gc,p['guest_to_client_MB_s']):.1f} / {ab(cg,p['client_to_guest_MB_s']):.1f} | {p['guest_to_client_agent_a_cores_per_gbit']:.2f} / {p['client_to_guest_agent_a_cores_per_gbit']:.2f} | "
          f"{gc['agent_b_cores']/gbit(p['guest_to_client_MB_s']):.2f} / {cg['agent_b_cores']/gbit(p['client_to_guest_MB_s']):.2f} | {ip['client_to_guest']['mbit_s']:.0f} / {ip['guest_to_client']['mbit_s']:.0f} | {ipab(ip['client_to_guest']):.2f} / {ipab(ip['guest_to_client']):.2f} | {j['invariant_failures']} |")
