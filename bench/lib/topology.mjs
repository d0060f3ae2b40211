// Where the benchmark runs: the "places" a client, the proxy and the target sit in.
//
// As root, everything runs in network namespaces that the suite creates and deletes, so that
// the machine's own network, firewall and sysctls are never touched. Docker's topology, with
// the host played by a namespace of its own:
//
//   psb-client-PID                psb-host-PID (proxies, kernel NAT)             psb-ctr-PID
//   eth0 198.19.K.2/24 <-veth-> vc 198.19.K.1/24
//                               br0 198.18.K.1/24 (bridge) <-veth vk-> eth0 198.18.K.2/24
//
// Place "external": the client in its namespace connects to 198.19.K.1 (a published port
// reached from outside). Place "loopback": a client in the host namespace connects to
// 127.0.0.1, the case the userland proxy exists for (kernel NAT needs route_localnet and
// MASQUERADE there, as Docker sets them). --quick (or --loopback-only) as root: one place,
// client, proxy and target on 127.0.0.1 inside psb-host-PID. Without root: that place in the
// current namespace, without kernel NAT.
//
// Why the host is a namespace too: conntrack. Kernel NAT turns on connection tracking, and
// the new-connections test opens tens of thousands of connections whose entries stay for
// 120 s (TIME_WAIT), which filled the shared machine's table ("nf_conntrack: table full,
// dropping packet", for everyone). A namespace has its own count and its own timeouts: in
// psb-host-PID, TIME_WAIT entries expire after 1 s.
//
// Kernel NAT rules go to dedicated chains (PSB-PRE, -OUT, -POST in nat, PSB-FWD in filter)
// inside psb-host-PID; they vanish with the namespace.
import { onCleanup } from './cleanup.mjs';
import { freePort, isRoot, sh, which } from './sys.mjs';

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return error.code === 'EPERM';
  }
}

/** Deletes namespaces that a previous run (a process no longer alive) left behind. */
export function removeStale(log) {
  if (!isRoot || !which('ip')) return;
  for (const name of (sh(['ip', 'netns', 'list'], { allowFail: true }) ?? '').split('\n')) {
    const match = /^(psb-(?:host|client|ctr)-(\d+))/.exec(name.trim());
    if (match && Number(match[2]) !== process.pid && !alive(Number(match[2]))) {
      log(`removing stale namespace ${match[1]}`);
      sh(['ip', 'netns', 'del', match[1]], { allowFail: true });
    }
  }
}

/** Why namespaces cannot be used here, or null. */
export function netnsSkipReason() {
  if (!isRoot) return 'network namespaces need root';
  if (!which('ip')) return 'iproute2 (ip) is not installed';
  const probe = `psb-probe-${process.pid}`;
  if (sh(['ip', 'netns', 'add', probe], { allowFail: true }) === null) return 'ip netns add fails here';
  sh(['ip', 'netns', 'del', probe], { allowFail: true });
  return null;
}

function natSkipReason(ns) {
  if (!isRoot) return 'kernel NAT needs root (CAP_NET_ADMIN) for its iptables rules';
  if (!which('iptables')) return 'iptables is not installed (apt-get install iptables)';
  if (sh(['iptables', '-w', '5', '-t', 'nat', '-S', 'OUTPUT'], { ns, allowFail: true }) === null) {
    return 'iptables -t nat does not work on this kernel';
  }
  return null;
}

/** The dedicated iptables chains in namespace `ns`; rules are added per method and flushed after. */
class Nat {
  constructor(ns) {
    this.ns = ns;
    this.chains = {
      pre: { table: 'nat', name: 'PSB-PRE', from: 'PREROUTING' },
      out: { table: 'nat', name: 'PSB-OUT', from: 'OUTPUT' },
      post: { table: 'nat', name: 'PSB-POST', from: 'POSTROUTING' },
      fwd: { table: 'filter', name: 'PSB-FWD', from: 'FORWARD' },
    };
    for (const chain of Object.values(this.chains)) {
      this.#ipt(chain.table, ['-N', chain.name]);
      this.#ipt(chain.table, ['-I', chain.from, '1', '-j', chain.name]);
    }
  }

  #ipt(table, args, allowFail = false) {
    return sh(['iptables', '-w', '5', '-t', table, ...args], { ns: this.ns, allowFail });
  }

  add(chain, spec) {
    this.#ipt(this.chains[chain].table, ['-A', this.chains[chain].name, ...spec]);
  }

  /** Empties the nat chains (the FORWARD accepts stay). */
  flush() {
    for (const chain of ['pre', 'out', 'post']) this.#ipt('nat', ['-F', this.chains[chain].name], true);
  }
}

/**
 * A port allocator for listening sockets: in a private namespace, sequential from 20000, below
 * its ephemeral range (32768 and up); else a port found free.
 */
function portAllocator(ns, host) {
  let next = 20000;
  return ns
    ? async () => {
        if (next >= 32768) throw new Error('out of listening ports');
        return next++;
      }
    : () => freePort(host);
}

/** Creates namespace `name` with lo up; the cleanup deletes it. */
function addNamespace(name) {
  sh(['ip', 'netns', 'add', name]);
  onCleanup(() => sh(['ip', 'netns', 'del', name], { allowFail: true }), `delete netns ${name}`);
  sh(['ip', 'link', 'set', 'lo', 'up'], { ns: name });
}

/** The namespace the proxies run in, with forwarding on and short conntrack TIME_WAIT. */
function hostNamespace(tag) {
  const hostNs = `psb-host-${tag}`;
  addNamespace(hostNs);
  // Listening ports come from below 32768 (portAllocator), ephemeral ports from above.
  sh(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1', 'net.ipv4.ip_local_port_range=32768 65000'], {
    ns: hostNs,
  });
  // net.ipv4.tcp_tw_reuse stays at the kernel's default (2: loopback only), as on a real
  // host: the churn test measures how a proxy copes with it (the proxy must not change it).
  // Present once nf_conntrack is loaded; a namespace of our own, so no restore is needed.
  sh(['sysctl', '-q', '-w', 'net.netfilter.nf_conntrack_tcp_timeout_time_wait=1'], {
    ns: hostNs,
    allowFail: true,
  });
  return hostNs;
}

/**
 * One place, everything on 127.0.0.1: inside a private namespace as root (kernel NAT as an
 * OUTPUT DNAT from 127.0.0.1:P to 127.0.0.1:T), else in the current one without kernel NAT.
 */
export function loopbackOnly({ tag = String(process.pid), privateNs = isRoot } = {}) {
  const ns = privateNs ? hostNamespace(tag) : null;
  const natSkip = ns ? natSkipReason(ns) : natSkipReason(null) || 'kernel NAT needs a namespace of its own';
  const nat = natSkip ? null : new Nat(ns);
  const place = {
    id: 'loopback',
    title: 'loopback: client, proxy and target on 127.0.0.1',
    hostNs: ns,
    clientNs: ns,
    targetNs: ns,
    privateTargets: Boolean(ns),
    listenHost: '127.0.0.1',
    targetHost: '127.0.0.1',
    allocPort: portAllocator(ns, '127.0.0.1'),
    natSkip,
    natAdd: nat
      ? (proto, port, targetPort) =>
          nat.add('out', [
            ...['-d', '127.0.0.1/32', '-p', proto, '--dport', String(port)],
            ...['-j', 'DNAT', '--to-destination', `127.0.0.1:${targetPort}`],
          ])
      : null,
    natFlush: () => nat?.flush(),
  };
  return {
    places: [place],
    hostNs: ns,
    description: ns
      ? `one network namespace of its own (${ns}), loopback only`
      : 'the current network namespace, loopback only',
  };
}

/** Picks K so that 198.18.K.0/24 and 198.19.K.0/24 are not in use on this machine. */
function pickSubnet() {
  const addrs = sh(['ip', '-4', '-o', 'addr', 'show']);
  for (let k = 0; k < 256; k++) {
    if (!addrs.includes(`198.18.${k}.`) && !addrs.includes(`198.19.${k}.`)) return k;
  }
  throw new Error('no free /24 in 198.18.0.0/15');
}

/** Builds Docker's topology in three namespaces; the cleanup deletes them. */
export function dockerTopology({ tag = String(process.pid), log = () => {} } = {}) {
  const k = pickSubnet();
  const clientNs = `psb-client-${tag}`;
  const targetNs = `psb-ctr-${tag}`;
  const hostOnBridge = `198.18.${k}.1`;
  const target = `198.18.${k}.2`;
  const hostOnClient = `198.19.${k}.1`;
  const client = `198.19.${k}.2`;
  const hostNs = hostNamespace(tag);
  log(`namespaces ${clientNs}, ${hostNs}, ${targetNs} (198.18.${k}.0/24, 198.19.${k}.0/24)`);
  addNamespace(clientNs);
  addNamespace(targetNs);
  const h = { ns: hostNs };

  sh(['ip', 'link', 'add', 'br0', 'type', 'bridge'], h);
  sh(['ip', 'addr', 'add', `${hostOnBridge}/24`, 'dev', 'br0'], h);
  sh(['ip', 'link', 'set', 'br0', 'up'], h);
  sh(['ip', 'link', 'add', 'vk', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', targetNs], h);
  sh(['ip', 'link', 'set', 'vk', 'master', 'br0', 'up'], h);
  sh(['ip', 'addr', 'add', `${target}/24`, 'dev', 'eth0'], { ns: targetNs });
  sh(['ip', 'link', 'set', 'eth0', 'up'], { ns: targetNs });
  sh(['ip', 'route', 'add', 'default', 'via', hostOnBridge], { ns: targetNs });

  sh(['ip', 'link', 'add', 'vc', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', clientNs], h);
  sh(['ip', 'addr', 'add', `${hostOnClient}/24`, 'dev', 'vc'], h);
  sh(['ip', 'link', 'set', 'vc', 'up'], h);
  sh(['ip', 'addr', 'add', `${client}/24`, 'dev', 'eth0'], { ns: clientNs });
  sh(['ip', 'link', 'set', 'eth0', 'up'], { ns: clientNs });
  sh(['ip', 'route', 'add', 'default', 'via', hostOnClient], { ns: clientNs });
  // The client opens many short connections: let it reuse ports in TIME_WAIT (here only:
  // the client's own ports are not what the churn test measures).
  sh(['sysctl', '-q', '-w', 'net.ipv4.tcp_tw_reuse=1', 'net.ipv4.ip_local_port_range=1024 65000'], {
    ns: clientNs,
    allowFail: true,
  });
  // Locally generated 127.0.0.1 traffic DNATed to the container (Docker sets this on docker0).
  sh(['sysctl', '-q', '-w', 'net.ipv4.conf.br0.route_localnet=1'], h);

  const natSkip = natSkipReason(hostNs);
  const nat = natSkip ? null : new Nat(hostNs);
  if (nat) {
    nat.add('fwd', ['-d', `${target}/32`, '-j', 'ACCEPT']);
    nat.add('fwd', ['-s', `${target}/32`, '-j', 'ACCEPT']);
  }
  const dnat = (chain, dest) => (proto, port, targetPort) =>
    nat.add(chain, [
      ...['-d', `${dest}/32`, '-p', proto, '--dport', String(port)],
      ...['-j', 'DNAT', '--to-destination', `${target}:${targetPort}`],
    ]);
  let masquerading = false;
  const flush = () => {
    masquerading = false;
    nat?.flush();
  };
  const allocPort = portAllocator(hostNs);
  const common = {
    hostNs,
    targetNs,
    privateTargets: true,
    targetHost: target,
    natSkip,
    natFlush: flush,
    allocPort,
  };
  const external = {
    ...common,
    id: 'external',
    title: `external: client netns ${client} → host ${hostOnClient} → bridge → container ${target}`,
    clientNs,
    listenHost: hostOnClient,
    natAdd: nat ? dnat('pre', hostOnClient) : null,
  };
  const loopback = {
    ...common,
    id: 'loopback',
    title: `loopback: client on the host → 127.0.0.1 → bridge → container ${target}`,
    clientNs: hostNs,
    listenHost: '127.0.0.1',
    natAdd: nat
      ? (proto, port, targetPort) => {
          dnat('out', '127.0.0.1')(proto, port, targetPort);
          if (!masquerading) nat.add('post', ['-s', '127.0.0.0/8', '-o', 'br0', '-j', 'MASQUERADE']);
          masquerading = true;
        }
      : null,
  };
  return {
    places: [external, loopback],
    hostNs,
    description: `network namespaces of its own: client (${clientNs}), host (${hostNs}), container (${targetNs}) behind a bridge`,
  };
}
