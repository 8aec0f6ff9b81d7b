#!/usr/bin/env python3
# bound.py FILE...: per-MB CPU of each process in each bulk phase, and the two-core bound on the ratio
import json,sys,os
print("draw | phase | unprot P ms/MB | prot P / R / A / B ms/MB | prot total ms/MB | busy | P core share (prot/unprot) | P cost (unprot/prot) | ratio | 2-core bound")
for f in sys.argv[1:]:
    j=None
    for l in open(f):
        if l.startswith('{'): j=json.loads(l)
    if not j: continue
    for ph,mb,cpu,rk in (("g->c","guest_to_client_MB_s","guest_to_client_cpu","guest_to_client_ratio"),("c->g","client_to_guest_MB_s","client_to_guest_cpu","client_to_guest_ratio")):
        u,p=j['unprotected'],j['protected']
        uc,pc=u[cpu],p[cpu]
        up=1000*uc['primary_qemu_cores']/u[mb]
        P,R,A,B=(1000*pc.get(k,0)/p[mb] for k in ('primary_qemu_cores','backup_qemu_cores','agent_a_cores','agent_b_cores'))
        tot=P+R+A+B
        print(f"{os.path.basename(f)} | {ph} | {up:.1f} | {P:.1f} / {R:.1f} / {A:.1f} / {B:.1f} | {tot:.1f} | {pc['machine_busy_cores']:.2f} | {pc['primary_qemu_cores']/uc['primary_qemu_cores']:.2f} | {up/P:.2f} | {j[rk]:.2f} | {2*up/tot:.2f}")
