#!/usr/bin/env python3
# summ.py FILE...: one row per bench net draw
import json,sys,os
def gbit(mbs): return mbs*(1<<20)*8/1e9
print("draw | ratio g->c / c->g | prot MB/s g->c / c->g | unprot MB/s | thr/paced s g->c | thr/paced s c->g | A,B cores g->c | A,B cores c->g | A per Gbit g->c / c->g | B per Gbit g->c / c->g | busy g->c/c->g | P,R cores g->c | P,R c->g | iperf prot c->g/g->c Mbit/s | A per Gbit iperf c->g/g->c | inv")
for f in sys.argv[1:]:
    j=None
    for l in open(f):
        if l.startswith('{'): j=json.loads(l)
    if not j: print(os.path.basename(f),"| no JSON"); continue
    p,u=j['protected'],j['unprotected']
    gc,cg=p['guest_to_client_cpu'],p['client_to_guest_cpu']
    ip=(j.get('iperf3') or {}).get('protected',{})
    ic,ig=ip.get('client_to_guest',{}),ip.get('guest_to_client',{})
    def ipg(r):
        m=r.get('mbit_s',0); c=r.get('cpu',{}).get('agent_a_cores',0)
        return c/(m/1000) if m else 0
    print(f"{os.path.basename(f)} | {j['guest_to_client_ratio']:.2f} / {j['client_to_guest_ratio']:.2f} | {p['guest_to_client_MB_s']:.1f} / {p['client_to_guest_MB_s']:.1f} | {u['guest_to_client_MB_s']:.1f} / {u['client_to_guest_MB_s']:.1f} | "
          f"{p.get('guest_to_client_throttled_s',0):.1f}/{p.get('guest_to_client_paced_s',0):.1f} | {p.get('client_to_guest_throttled_s',0):.1f}/{p.get('client_to_guest_paced_s',0):.1f} | "
          f"{gc['agent_a_cores']:.3f},{gc.get('agent_b_cores',0):.3f} | {cg['agent_a_cores']:.3f},{cg.get('agent_b_cores',0):.3f} | "
          f"{p['guest_to_client_agent_a_cores_per_gbit']:.2f} / {p['client_to_guest_agent_a_cores_per_gbit']:.2f} | "
          f"{gc.get('agent_b_cores',0)/gbit(p['guest_to_client_MB_s']):.2f} / {cg.get('agent_b_cores',0)/gbit(p['client_to_guest_MB_s']):.2f} | "
          f"{gc['machine_busy_cores']:.2f}/{cg['machine_busy_cores']:.2f} | {gc['primary_qemu_cores']:.2f},{gc.get('backup_qemu_cores',0):.2f} | {cg['primary_qemu_cores']:.2f},{cg.get('backup_qemu_cores',0):.2f} | "
          f"{ic.get('mbit_s',0):.0f}/{ig.get('mbit_s',0):.0f} | {ipg(ic):.2f}/{ipg(ig):.2f} | {j['invariant_failures']}")
