import json,glob,os
R='/work/wt-agentcpu/docs/bench-results/agentcpu-2026-11-30-s12'
def load(p):
    for l in open(p):
        if l.startswith('{"env"'): return json.loads(l)
def load_avg(p):
    b=a=''
    for l in open(p):
        if l.startswith('# uptime before'): b=l.split('load average: ')[1].split(',')[0]
        if l.startswith('# uptime after'): a=l.split('load average: ')[1].split(',')[0]
    return b,a
rows=[]
print('| draw | quiet? | phase | Gbit/s | agent A cores | agent B cores | A per Gbit/s | B per Gbit/s |')
print('|---|---|---|---|---|---|---|---|')
for v,n in [('before','1'),('after','1'),('before','2'),('after','2'),('landed','3'),('before','3')]:
    p=f'{R}/net-{v}-{n}.txt'
    if not os.path.exists(p) or load(p) is None: continue
    j=load(p); P=j['protected']; I=j['iperf3']['protected']; u=j['unprotected']
    ub=max(u['guest_to_client_cpu']['machine_busy_cores'],u['client_to_guest_cpu']['machine_busy_cores'])
    quiet='yes' if ub<1.3 else f'no (unprotected busy {ub:.1f})'
    ph=[('bulk c->g',P['client_to_guest_MB_s']*8/1000,P['client_to_guest_cpu']),('bulk g->c',P['guest_to_client_MB_s']*8/1000,P['guest_to_client_cpu']),
        ('iperf3 c->g',I['client_to_guest']['mbit_s']/1000,I['client_to_guest']['cpu']),('iperf3 g->c',I['guest_to_client']['mbit_s']/1000,I['guest_to_client']['cpu'])]
    b,a=load_avg(p)
    for i,(name,g,c) in enumerate(ph):
        print(f"| {v} {n}{' (load '+b+'->'+a+')' if i==0 else ''} | {quiet if i==0 else ''} | {name} | {g:.2f} | {c['agent_a_cores']:.3f} | {c['agent_b_cores']:.3f} | {c['agent_a_cores']/g:.2f} | {c['agent_b_cores']/g:.2f} |")
print()
print('| draw | speed ratio | throttled | unprotected / protected | agent A cores | agent B cores | backup QEMU cores | load |')
print('|---|---|---|---|---|---|---|---|')
for v,n in [('before','1'),('after','1'),('before','2'),('after','2'),('before','3'),('landed','3')]:
    p=f'{R}/cpu-{v}-{n}.txt'
    if not os.path.exists(p) or load(p) is None: continue
    j=load(p); c=j['cpu_protected']; b,a=load_avg(p)
    print(f"| {v} {n} | {j['speed_ratio_protected_vs_unprotected']:.2f} | {j['throttled_s']:.0f} s | {j['unprotected_s'][0]:.1f} / {j['protected_s'][0]:.1f} s | {c['agent_a_cores']:.3f} | {c['agent_b_cores']:.3f} | {c['backup_qemu_cores']:.2f} | {b}->{a} |")
