import json,sys,re
def load(p):
    for l in open(p):
        l=l.strip()
        i=l.find('{"env"')
        if i>=0: return json.loads(l[i:])
def net(p):
    j=load(p); P=j['protected']; I=j['iperf3']['protected']
    rows=[]
    for name,mbs,cpu in [('bulk g->c',P['guest_to_client_MB_s'],P['guest_to_client_cpu']),('bulk c->g',P['client_to_guest_MB_s'],P['client_to_guest_cpu'])]:
        g=mbs*8/1000
        rows.append((name,g,cpu['agent_a_cores'],cpu['agent_b_cores'],cpu['agent_a_cores']/g,cpu['agent_b_cores']/g,cpu['machine_busy_cores']))
    for k,name in [('client_to_guest','iperf c->g'),('guest_to_client','iperf g->c')]:
        x=I[k]; g=x['mbit_s']/1000; cpu=x['cpu']
        rows.append((name,g,cpu['agent_a_cores'],cpu['agent_b_cores'],cpu['agent_a_cores']/g,cpu['agent_b_cores']/g,cpu['machine_busy_cores']))
    return j,rows
def cpu(p):
    j=load(p); c=j['cpu_protected']
    return j,(j['speed_ratio_protected_vs_unprotected'],c['agent_a_cores'],c['agent_b_cores'],j['throttled_s'],j['unprotected_s'][0],j['protected_s'][0],c['machine_busy_cores'])
for p in sys.argv[1:]:
    if 'cpu_protected' in load(p):
        j,r=cpu(p); print(f"{'/'.join(p.split('/')[-2:])[-30:]:30s} ratio {r[0]:.3f} A {r[1]:.3f} B {r[2]:.3f} throttled {r[3]:.1f}s unprot {r[4]:.1f}s prot {r[5]:.1f}s busy {r[6]:.2f}")
    else:
        j,rows=net(p)
        for r in rows: print(f"{'/'.join(p.split('/')[-2:])[-30:]:30s} {r[0]:11s} {r[1]:.3f} Gbit/s  A {r[2]:.3f} B {r[3]:.3f} cores  A/Gbit {r[4]:.2f} B/Gbit {r[5]:.2f} busy {r[6]:.2f}")
