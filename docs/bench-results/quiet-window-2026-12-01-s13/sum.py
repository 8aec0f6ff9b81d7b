import json,glob,os,sys
d=sys.argv[1]
for f in sorted(glob.glob(d+'/cpu-*.txt')):
    j=None
    for l in open(f):
        if l.startswith('{'): j=json.loads(l)
    if not j: print(os.path.basename(f),'no json'); continue
    u=j['cpu_unprotected']; p=j['cpu_protected']
    A=p['agent_a_cores']+p['agent_b_cores']
    print("%s ratio %.3f throttled %.1fs  P %.2f R %.2f A+B %.3f busy %.2f  rep/rec %.3f unprot %.1fs prot %.1fs" % (os.path.basename(f), j['speed_ratio_protected_vs_unprotected'], j['throttled_s'], p['primary_qemu_cores'], p['backup_qemu_cores'], A, p['machine_busy_cores'], j['replay_cpu_per_record_cpu'], j['unprotected_s'][0], j['protected_s'][0]))
