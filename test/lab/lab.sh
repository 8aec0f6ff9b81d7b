#!/usr/bin/env bash
# ftvmd lab: hypervisor hosts A, B and D and a client C in network namespaces on one
# bridged LAN.
#
#   test/lab/lab.sh up                    create (idempotent) and check connectivity
#   test/lab/lab.sh down [--purge]        kill processes in the namespaces, delete them and
#                                         the per-host dirs; --purge also deletes shared/
#   test/lab/lab.sh status                show what exists (exit 1 if no namespace exists)
#   test/lab/lab.sh exec a|b|c|d|net CMD... run CMD inside that namespace
#
# Constants (names, IPs, dirs, CPUs) are in lab.env beside this script.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lab.env
. "$here/lab.env"
export PATH=$PATH:/usr/sbin:/sbin

die() { printf 'lab: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'lab: %s\n' "$*" >&2; }

hosts=(a b c d)
ns_of() {
  case $1 in
    a|A|"$FTLAB_NS_A") echo "$FTLAB_NS_A" ;;
    b|B|"$FTLAB_NS_B") echo "$FTLAB_NS_B" ;;
    c|C|"$FTLAB_NS_C") echo "$FTLAB_NS_C" ;;
    d|D|"$FTLAB_NS_D") echo "$FTLAB_NS_D" ;;
    net|"$FTLAB_NS_NET") echo "$FTLAB_NS_NET" ;;
    *) die "unknown host '$1' (want a, b, c, d or net)" ;;
  esac
}
ip_of() { case $1 in a) echo "$FTLAB_IP_A" ;; b) echo "$FTLAB_IP_B" ;; c) echo "$FTLAB_IP_C" ;; d) echo "$FTLAB_IP_D" ;; esac; }
all_ns=("$FTLAB_NS_NET" "$FTLAB_NS_A" "$FTLAB_NS_B" "$FTLAB_NS_C" "$FTLAB_NS_D")
host_dirs=("$FTLAB_DIR_A" "$FTLAB_DIR_B" "$FTLAB_DIR_D")

ns_exists() { [ -e "/run/netns/$1" ]; }
link_exists() { ip -n "$1" link show dev "$2" >/dev/null 2>&1; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }

ensure_tools() {
  local need=()
  command -v ip >/dev/null || need+=(iproute2)
  command -v ping >/dev/null || need+=(iputils-ping)
  command -v nc >/dev/null || need+=(netcat-openbsd)
  command -v sysctl >/dev/null || need+=(procps)
  [ ${#need[@]} -eq 0 ] && return
  log "installing ${need[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# Bridge netfilter would push bridged frames through iptables: turn it off where present.
no_br_netfilter() {
  local k
  for k in iptables ip6tables arptables; do
    [ -e /proc/sys/net/bridge/bridge-nf-call-$k ] || continue
    nsx "$1" sysctl -qw "net.bridge.bridge-nf-call-$k=0" 2>/dev/null || true
  done
}

mk_bridge() { # ns
  link_exists "$1" "$FTLAB_BRIDGE" \
    || ip -n "$1" link add "$FTLAB_BRIDGE" type bridge stp_state 0 forward_delay 0
  ip -n "$1" link set "$FTLAB_BRIDGE" up
}

cmd_up() {
  need_root
  ensure_tools
  local ns h hns addr
  for ns in "${all_ns[@]}"; do
    ns_exists "$ns" || ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  mk_bridge "$FTLAB_NS_NET"
  no_br_netfilter "$FTLAB_NS_NET"

  for h in "${hosts[@]}"; do
    hns=$(ns_of "$h")
    addr=$(ip_of "$h")/$FTLAB_PREFIX
    # veth: port-<h> in ftlab-net <-> eth0 in the host namespace.
    if ! link_exists "$FTLAB_NS_NET" "port-$h" || ! link_exists "$hns" "$FTLAB_UPLINK"; then
      ip -n "$FTLAB_NS_NET" link del "port-$h" 2>/dev/null || true
      ip -n "$hns" link del "$FTLAB_UPLINK" 2>/dev/null || true
      ip -n "$FTLAB_NS_NET" link add "port-$h" type veth peer name "$FTLAB_UPLINK" netns "$hns"
    fi
    ip -n "$FTLAB_NS_NET" link set "port-$h" master "$FTLAB_BRIDGE" up
    if [ "$h" = c ]; then
      # The client: address directly on its veth.
      ip -n "$hns" addr replace "$addr" dev "$FTLAB_UPLINK"
      ip -n "$hns" link set "$FTLAB_UPLINK" up
    else
      # A hypervisor host: uplink enslaved to a local br0 that holds the host IP; the
      # agent attaches the VM's tap to this br0.
      mk_bridge "$hns"
      no_br_netfilter "$hns"
      ip -n "$hns" link set "$FTLAB_UPLINK" master "$FTLAB_BRIDGE" up
      ip -n "$hns" addr replace "$addr" dev "$FTLAB_BRIDGE"
    fi
  done

  mkdir -p "$FTLAB_SHARED" "${host_dirs[@]}"

  # Connectivity: every host pings every other (the first ping may wait for ARP).
  local from to fails=0
  for from in "${hosts[@]}"; do
    for to in "${hosts[@]}"; do
      [ "$from" = "$to" ] && continue
      if ! nsx "$(ns_of "$from")" ping -q -c1 -W1 "$(ip_of "$to")" >/dev/null 2>&1 \
         && ! nsx "$(ns_of "$from")" ping -q -c1 -W2 "$(ip_of "$to")" >/dev/null 2>&1; then
        printf 'lab: error: no connectivity %s (%s) -> %s (%s)\n' \
          "$from" "$(ip_of "$from")" "$to" "$(ip_of "$to")" >&2
        fails=$((fails+1))
      fi
    done
  done
  [ "$fails" = 0 ] || die "lab is up but $fails ping(s) failed; see '$0 status'"
  log "up: a=$FTLAB_IP_A b=$FTLAB_IP_B d=$FTLAB_IP_D c=$FTLAB_IP_C (guest $FTLAB_IP_GUEST), dirs under $FTLAB_ROOT"
}

cmd_down() {
  need_root
  local purge=
  case ${1:-} in --purge) purge=1 ;; "") ;; *) die "down: unknown option '$1'" ;; esac
  local ns pids i
  for ns in "${all_ns[@]}"; do
    ns_exists "$ns" || continue
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      log "killing in $ns: $(echo $pids)"
      echo "$pids" | xargs -r kill -9 2>/dev/null || true
      for i in $(seq 50); do
        [ -z "$(ip netns pids "$ns" 2>/dev/null || true)" ] && break
        sleep 0.1
      done
    fi
    ip netns del "$ns"   # deletes the veths and bridges inside with it
  done
  rm -rf "${host_dirs[@]}"
  if [ -n "$purge" ]; then
    rm -rf "$FTLAB_ROOT"
    log "down (purged $FTLAB_ROOT)"
  else
    log "down (kept $FTLAB_SHARED)"
  fi
}

cmd_status() {
  local ns any=
  for ns in "${all_ns[@]}"; do
    if ns_exists "$ns"; then
      any=1
      printf '%s: present, %s process(es)\n' "$ns" "$(ip netns pids "$ns" 2>/dev/null | wc -l)"
      ip -n "$ns" -br addr show 2>/dev/null | sed 's/^/    /'
    else
      printf '%s: absent\n' "$ns"
    fi
  done
  local d
  for d in "$FTLAB_SHARED" "${host_dirs[@]}"; do
    if [ -d "$d" ]; then printf '%s: present\n' "$d"; else printf '%s: absent\n' "$d"; fi
  done
  [ -n "$any" ]
}

cmd_exec() {
  [ $# -ge 2 ] || die "usage: $0 exec a|b|c|d|net CMD..."
  local ns
  ns=$(ns_of "$1"); shift
  ns_exists "$ns" || die "$ns does not exist (run '$0 up')"
  exec ip netns exec "$ns" "$@"
}

case ${1:-} in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) shift; cmd_status ;;
  exec) shift; cmd_exec "$@" ;;
  *) echo "usage: $0 up | down [--purge] | status | exec a|b|c|d|net CMD..." >&2; exit 2 ;;
esac
