// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
/*
 * udp-director's kernel fast path (SPEC §8): a TC ingress program on the pod's interface
 * that carries the datagrams of sessions user space has put in the `legs` map.
 *
 * May:
 *   - read an IPv4 UDP datagram's headers and, for a client leg, up to its first 256 payload
 *     bytes (to tell control frames and tokens from game traffic);
 *   - rewrite a datagram that matches a leg exactly as the daemon would have sent it: from
 *     the local address it arrived at and the leg's port, to the leg's address and port
 *     (checksums fixed with the helpers that understand partially-offloaded checksums), and
 *     send it out with bpf_redirect_neigh;
 *   - count what it carried: per leg and per direction, in per-CPU values (no cache line is
 *     shared per datagram), with the time of the last datagram for the idle timeout.
 *
 * Must not:
 *   - decide anything: which sessions are carried, when a leg goes in or out, moves, proofs,
 *     caps and reaping are user space's (src/session, through src/shell/fast_path);
 *   - drop, answer or create a datagram: everything it does not carry goes up unchanged
 *     (TC_ACT_OK), so a miss is always safe. That includes non-IPv4, IP options, fragments,
 *     aggregated (GSO) packets, empty datagrams, packets not addressed to this host, a leg's
 *     client datagram that starts with the configured magic (every control frame and resume)
 *     or has the shape of a token (a keepalive or reset by token), and any datagram the
 *     kernel has no route for;
 *   - loop without a bound, or use XDP (on a pod's veth XDP cannot transmit without a program
 *     on the node's side, cannot see partial checksums and refuses jumbo MTUs).
 *
 * The map layouts below are read and written byte for byte by src/shell/fast_path/kernel.rs:
 * change both together. Addresses and ports are in network byte order, everything else in
 * the host's.
 */

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <stddef.h>

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* Where a datagram comes from and the local port it arrives at. 8 bytes:
 * [0..4) peer IPv4, [4..6) peer port, [6..8) local port. */
struct leg_key {
	__be32 peer_addr;
	__be16 peer_port;
	__be16 local_port;
};

#define LEG_FROM_CLIENT 1u

/* What to do with a matching datagram, and what the program carried on this CPU. 40 bytes:
 * [0..4) to IPv4, [4..6) to port, [6..8) from port, [8..12) flags, [12..16) zero,
 * [16..24) datagrams, [24..32) payload bytes, [32..40) last seen (bpf_ktime_get_ns). */
struct leg {
	__be32 to_addr;
	__be16 to_port;
	__be16 from_port;
	__u32 flags;
	__u32 pad;
	__u64 datagrams;
	__u64 bytes;
	__u64 last_seen_ns;
};

#define MAGIC_MAX 32
/* Longest token-length datagram the program inspects: a longer one that is in
 * [token_min, token_max] goes up unread (user space decides; a miss is always safe). */
#define TOKEN_SCAN_MAX 256
#define CHUNK 32

/* n, already known to be in [1, 32], in a form the verifier can see is (a helper's length
 * must be non-zero and fit the buffer; clang's own bounds checks can land on a copy of the
 * register the verifier does not track). */
#define LEN_1_32(n) ((((n) - 1) & 31) + 1)

/* What a client datagram is compared with. 40 bytes: [0..4) magic_len (1..=32),
 * [4..6) token_min, [6..8) token_max, [8..40) magic. */
struct matchers {
	__u32 magic_len;
	__u16 token_min;
	__u16 token_max;
	__u8 magic[MAGIC_MAX];
};

/* Per direction (0: to targets, 1: to clients). 16 bytes: datagrams, payload bytes. */
struct count {
	__u64 datagrams;
	__u64 bytes;
};

#define DIR_TO_TARGET 0
#define DIR_TO_CLIENT 1

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	/* Set by user space before load: 2 x maxSessions. Preallocated (nr_cpus x 40 bytes a
	 * leg and the table's own overhead, all at load): a load that cannot have it fails at
	 * start, and an insert fails only when the map is full (with BPF_F_NO_PREALLOC, filling
	 * 50 000 legs on a 2-CPU machine failed with ENOMEM part way instead). */
	__uint(max_entries, 2);
	__type(key, struct leg_key);
	__type(value, struct leg);
} legs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct matchers);
} matchers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct count);
} totals SEC(".maps");

#define IP_OFF ETH_HLEN
#define IP_SRC_OFF (IP_OFF + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (IP_OFF + offsetof(struct iphdr, daddr))
#define IP_CSUM_OFF (IP_OFF + offsetof(struct iphdr, check))
#define UDP_OFF (IP_OFF + sizeof(struct iphdr))
#define UDP_SPORT_OFF (UDP_OFF + offsetof(struct udphdr, source))
#define UDP_DPORT_OFF (UDP_OFF + offsetof(struct udphdr, dest))
#define UDP_CSUM_OFF (UDP_OFF + offsetof(struct udphdr, check))
#define PAYLOAD_OFF (UDP_OFF + sizeof(struct udphdr))

#define AF_INET 2 /* <sys/socket.h> is not for BPF targets */
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* base64url (A-Z a-z 0-9 - _) or ASCII whitespace (space \t \n \v \f \r). */
static __always_inline int token_byte(__u8 c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_' || c == ' ' || (c >= '\t' && c <= '\r');
}

/* The payload starts with the whole configured magic. */
static __always_inline int starts_with_magic(struct __sk_buff *skb, __u32 len,
					     const struct matchers *m)
{
	__u8 buf[MAGIC_MAX];
	__u32 n = m->magic_len;

	if (n == 0 || n > MAGIC_MAX || len < n)
		return 0;
	if (bpf_skb_load_bytes(skb, PAYLOAD_OFF, buf, LEN_1_32(n)) < 0)
		return 0;
	for (__u32 i = 0; i < MAGIC_MAX; i++) {
		if (i >= n)
			break;
		if (buf[i] != m->magic[i])
			return 0;
	}
	return 1;
}

/* A payload of a token's length made only of token bytes. Lengths past TOKEN_SCAN_MAX
 * count as token-shaped without being read: they go up, which is always safe. */
static __always_inline int token_shaped(struct __sk_buff *skb, __u32 len, const struct matchers *m)
{
	__u8 buf[CHUNK];

	if (len < m->token_min || len > m->token_max)
		return 0;
	if (len > TOKEN_SCAN_MAX)
		return 1;
	for (__u32 off = 0; off < TOKEN_SCAN_MAX; off += CHUNK) {
		if (off >= len)
			break;
		__u32 n = len - off;
		if (n > CHUNK)
			n = CHUNK;
		if (bpf_skb_load_bytes(skb, PAYLOAD_OFF + off, buf, LEN_1_32(n)) < 0)
			return 1;
		for (__u32 i = 0; i < CHUNK; i++) {
			if (i >= n)
				break;
			if (!token_byte(buf[i]))
				return 0;
		}
	}
	return 1;
}

/* A client datagram user space must see: a control frame or resume, or a token. */
static __always_inline int for_user_space(struct __sk_buff *skb, __u32 len)
{
	__u32 zero = 0;
	const struct matchers *m = bpf_map_lookup_elem(&matchers, &zero);

	/* Not configured yet: carry nothing of the client's. */
	if (!m || m->magic_len == 0)
		return 1;
	return starts_with_magic(skb, len, m) || token_shaped(skb, len, m);
}

SEC("classifier")
int udp_director_fp(struct __sk_buff *skb)
{
	if (skb->pkt_type != PACKET_HOST || skb->gso_size != 0)
		return TC_ACT_OK;
	__u32 in_ifindex = skb->ingress_ifindex;

	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (data + PAYLOAD_OFF > end) {
		if (bpf_skb_pull_data(skb, PAYLOAD_OFF) < 0)
			return TC_ACT_OK;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		if (data + PAYLOAD_OFF > end)
			return TC_ACT_OK;
	}
	struct ethhdr *eth = data;
	struct iphdr *ip = data + IP_OFF;
	struct udphdr *udp = data + UDP_OFF;

	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return TC_ACT_OK;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return TC_ACT_OK;

	__u32 ip_len = bpf_ntohs(ip->tot_len);
	__u32 udp_len = bpf_ntohs(udp->len);
	if (udp_len <= sizeof(struct udphdr) || ip_len < sizeof(struct iphdr) + udp_len)
		return TC_ACT_OK;
	__u32 payload = udp_len - sizeof(struct udphdr);

	struct leg_key key = {
		.peer_addr = ip->saddr,
		.peer_port = udp->source,
		.local_port = udp->dest,
	};
	__be32 old_saddr = ip->saddr;
	__be32 new_saddr = ip->daddr;
	__be16 old_sport = udp->source;
	__be16 old_dport = udp->dest;

	struct leg *leg = bpf_map_lookup_elem(&legs, &key);
	if (!leg)
		return TC_ACT_OK;
	/* Packet pointers are not used past this point: the helpers below invalidate them. */
	if ((leg->flags & LEG_FROM_CLIENT) && for_user_space(skb, payload))
		return TC_ACT_OK;

	__be32 new_daddr = leg->to_addr;
	__be16 new_sport = leg->from_port;
	__be16 new_dport = leg->to_port;

	/* Where the rewritten datagram leaves, before anything is changed. A pod does not
	 * forward (net.ipv4.ip_forward 0 in its namespace, and it cannot change that), and
	 * bpf_fib_lookup then answers FWD_DISABLED without looking: the datagram leaves by the
	 * interface it arrived on, where bpf_redirect_neigh (no next hop given) routes it with
	 * the kernel's output route lookup bound to that interface. That is a pod's one
	 * interface; a pod with several must list in `interfaces` only those its targets and
	 * clients are reached by. */
	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.l4_protocol = IPPROTO_UDP,
		.sport = new_sport,
		.dport = new_dport,
		.tot_len = ip_len,
		.ipv4_src = new_saddr,
		.ipv4_dst = new_daddr,
		.ifindex = in_ifindex,
	};
	long fib_ret = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	__u32 out_ifindex;
	if (fib_ret == BPF_FIB_LKUP_RET_SUCCESS || fib_ret == BPF_FIB_LKUP_RET_NO_NEIGH)
		out_ifindex = fib.ifindex;
	else if (fib_ret == BPF_FIB_LKUP_RET_FWD_DISABLED)
		out_ifindex = in_ifindex;
	else
		return TC_ACT_OK; /* no route (blackhole, unreachable, prohibited, ...): up */

	/* Rewrite. The old daddr is the new saddr, so the address pair (old_saddr, new_saddr)
	 * becomes (new_saddr, new_daddr): both sums change as if old_saddr became new_daddr.
	 * A zero UDP checksum (none) stays zero; a computed zero is written as 0xffff. The
	 * helpers fail only on offsets past the packet, which the checks above rule out; a
	 * half-rewritten datagram is never sent. */
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_saddr, new_daddr, sizeof(__be32)) < 0 ||
	    bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old_saddr, new_daddr,
				BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | sizeof(__be32)) < 0 ||
	    bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old_sport, new_sport,
				BPF_F_MARK_MANGLED_0 | sizeof(__be16)) < 0 ||
	    bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old_dport, new_dport,
				BPF_F_MARK_MANGLED_0 | sizeof(__be16)) < 0)
		return TC_ACT_SHOT;
	__be32 addrs[2] = {new_saddr, new_daddr};
	__be16 ports[2] = {new_sport, new_dport};
	if (bpf_skb_store_bytes(skb, IP_SRC_OFF, addrs, sizeof(addrs), 0) < 0 ||
	    bpf_skb_store_bytes(skb, UDP_SPORT_OFF, ports, sizeof(ports), 0) < 0)
		return TC_ACT_SHOT;

	__u32 dir = (leg->flags & LEG_FROM_CLIENT) ? DIR_TO_TARGET : DIR_TO_CLIENT;
	leg->datagrams += 1;
	leg->bytes += payload;
	leg->last_seen_ns = bpf_ktime_get_ns();
	struct count *total = bpf_map_lookup_elem(&totals, &dir);
	if (total) {
		total->datagrams += 1;
		total->bytes += payload;
	}

	/* A receive timestamp means nothing on the way out (fq would take it for a send time). */
	skb->tstamp = 0;
	return bpf_redirect_neigh(out_ifindex, NULL, 0, 0);
}

/* GPL-2.0 (one of the two licenses above): the kernel lets only GPL-compatible programs
 * call bpf_fib_lookup and bpf_redirect_neigh. */
char LICENSE[] SEC("license") = "GPL";
