// SPDX-License-Identifier: Apache-2.0
//
// Keelson's eBPF in-pod redirection (docs/ARCHITECTURE.md, "eBPF redirection").
//
// One sk_lookup program per enrolled pod, attached to the pod's network namespace. The
// kernel runs it whenever a TCP connection request (or a UDP datagram) is to be delivered
// locally and no established socket claims it; it may hand the packet to any socket of the
// namespace with bpf_sk_assign(), whatever address that socket is bound to. The accepted
// socket then has the packet's own destination as its local address, so ztunnel reads the
// original destination with getsockname(), as with TPROXY.
//
// Outbound traffic reaches this program because the node agent adds policy routes in the pod
// (ip rules, no netfilter): the app's TCP, and its UDP/TCP to port 53, look up table 100,
// which holds `local 0.0.0.0/0 dev lo`, so the app's packets loop over lo and are delivered
// locally instead of leaving through eth0. Packets carrying ztunnel's mark 0x539 skip that
// table, and so do replies to the node's probes (169.254.7.127). Locally made packets to the
// pod's own addresses also come in by lo (table 101), so "came in by lo" means "made in
// this pod" and anything else came off the wire.
//
// Verdicts, in the order the rules of the iptables flavour give them:
//   from lo, to an address of the pod or of lo   -> pass (the app to itself; ztunnel's own
//                                                   connections into the app)
//   from lo, TCP or UDP to port 53               -> ztunnel's DNS proxy (15053)
//   from lo, any other TCP                       -> ztunnel's outbound listener (15001)
//   from the wire, from 169.254.7.127            -> pass (the node's probes)
//   from the wire, TCP to 15008                  -> pass (HBONE, ztunnel listens there)
//   from the wire, other TCP to the pod          -> ztunnel's inbound plaintext listener
//                                                   (15006); dropped if ztunnel is not
//                                                   there, never passed to the app
//   anything else                                -> pass

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define LOOPBACK_IFINDEX 1
#define HBONE_PORT 15008
#define DNS_PORT 53

// Slots of the `listeners` map: ztunnel puts its in-pod listeners there when it takes the
// pod (the loader's `Listener` enum names the same numbers).
#define SLOT_OUTBOUND 0
#define SLOT_INBOUND 1
#define SLOT_DNS_UDP 2
#define SLOT_DNS_TCP 3
#define SLOTS 4

// Slots of the `counters` map: how many lookups ended each way (shown by `keelson status`
// and ztunnel's admin /debug/ebpf).
#define COUNT_OUTBOUND 0
#define COUNT_INBOUND 1
#define COUNT_DNS 2
#define COUNT_PASSED 3
#define COUNT_NO_LISTENER 4
#define COUNTS 5

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	// Userspace writes socket descriptors (4 bytes); the kernel stores the sockets.
	__type(value, __u32);
} listeners SEC(".maps");

// An address of the pod: its interfaces' addresses, written by the loader. IPv4 addresses
// are stored as IPv4-mapped IPv6 (::ffff:a.b.c.d), in network byte order.
struct pod_addr {
	__u32 addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, struct pod_addr);
	__type(value, __u8);
} pod_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

// Context fields are read one load each, at a constant offset from the context pointer: the
// verifier refuses a load through a context pointer the compiler has moved (as it would to
// walk an array field), and the volatile access keeps it from doing so.
#define CTX(field) (*(volatile __u32 *)&ctx->field)

static __always_inline void count(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&counters, &what);
	// Per-CPU slot: no other CPU writes it, and the program is not preempted mid-update.
	if (n)
		*n += 1;
}

static __always_inline struct pod_addr local_addr(struct bpf_sk_lookup *ctx)
{
	struct pod_addr a = {};
	if (ctx->family == AF_INET) {
		a.addr[2] = bpf_htonl(0x0000ffff);
		a.addr[3] = ctx->local_ip4;
	} else {
		a.addr[0] = CTX(local_ip6[0]);
		a.addr[1] = CTX(local_ip6[1]);
		a.addr[2] = CTX(local_ip6[2]);
		a.addr[3] = CTX(local_ip6[3]);
	}
	return a;
}

static __always_inline int is_loopback(struct bpf_sk_lookup *ctx)
{
	if (ctx->family == AF_INET)
		return (bpf_ntohl(ctx->local_ip4) >> 24) == 127;
	return CTX(local_ip6[0]) == 0 && CTX(local_ip6[1]) == 0 && CTX(local_ip6[2]) == 0 &&
	       CTX(local_ip6[3]) == bpf_htonl(1);
}

// 169.254.7.127, or fd16:9254:7127:1337:ffff:ffff:ffff:ffff: where the node's probes come
// from once the node has rewritten their source (docs/WIRE.md §5.5).
static __always_inline int from_probe(struct bpf_sk_lookup *ctx)
{
	if (ctx->family == AF_INET)
		return ctx->remote_ip4 == bpf_htonl(0xa9fe077f);
	return CTX(remote_ip6[0]) == bpf_htonl(0xfd169254) &&
	       CTX(remote_ip6[1]) == bpf_htonl(0x71271337) &&
	       CTX(remote_ip6[2]) == 0xffffffff && CTX(remote_ip6[3]) == 0xffffffff;
}

// Hands the lookup to the listener in `slot`. `missing` is the verdict when ztunnel has no
// listener there (it has not taken the pod yet, or is restarting).
static __always_inline int assign(struct bpf_sk_lookup *ctx, __u32 slot, __u32 counter,
				  int missing)
{
	struct bpf_sock *sk = bpf_map_lookup_elem(&listeners, &slot);
	if (!sk) {
		count(COUNT_NO_LISTENER);
		return missing;
	}
	long err = bpf_sk_assign(ctx, sk, 0);
	// Every reference a sockmap lookup returns must be released, assigned or not.
	bpf_sk_release(sk);
	if (err) {
		count(COUNT_NO_LISTENER);
		return missing;
	}
	count(counter);
	return SK_PASS;
}

SEC("sk_lookup")
int keelson_redirect(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return SK_PASS;

	if (ctx->ingress_ifindex == LOOPBACK_IFINDEX) {
		struct pod_addr local = local_addr(ctx);
		if (is_loopback(ctx) || bpf_map_lookup_elem(&pod_addrs, &local)) {
			count(COUNT_PASSED);
			return SK_PASS;
		}
		// Only the app's own packets get here: the policy routes send nothing else to
		// table 100. With no listener, SK_PASS finds no socket either and the app gets a
		// reset (or an ICMP error): nothing leaves the pod unproxied.
		if (ctx->local_port == DNS_PORT)
			return assign(ctx,
				      ctx->protocol == IPPROTO_UDP ? SLOT_DNS_UDP : SLOT_DNS_TCP,
				      COUNT_DNS, SK_PASS);
		if (ctx->protocol == IPPROTO_TCP)
			return assign(ctx, SLOT_OUTBOUND, COUNT_OUTBOUND, SK_PASS);
		count(COUNT_PASSED);
		return SK_PASS;
	}

	if (ctx->protocol != IPPROTO_TCP || from_probe(ctx) || ctx->local_port == HBONE_PORT) {
		count(COUNT_PASSED);
		return SK_PASS;
	}
	struct pod_addr local = local_addr(ctx);
	if (!bpf_map_lookup_elem(&pod_addrs, &local)) {
		count(COUNT_PASSED);
		return SK_PASS;
	}
	// Plaintext to the app must go through ztunnel: without its listener, drop.
	return assign(ctx, SLOT_INBOUND, COUNT_INBOUND, SK_DROP);
}

char LICENSE[] SEC("license") = "Apache-2.0";
