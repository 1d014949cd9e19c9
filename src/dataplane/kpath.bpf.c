// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
// Inline mode's XDP program with the kernel path (docs/stream.md, "A kernel
// path for known bytes"). One program on both ports. A TCP segment whose
// payload lies in a range the engine published (the rest of an allowed
// body) goes straight to the other port, its window field replaced;
// everything else goes to the AF_XDP socket of its queue, as libxdp's
// default program would send it. With no socket bound the frame goes to the
// kernel (XDP_PASS), as with libxdp's program.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_QUEUES 64
#define RANGES 65536

// Key: side * MAX_QUEUES + RX queue.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 2 * MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

// Side -> the port's ifindex, to transmit on.
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} ports SEC(".maps");

// Side -> the port's ifindex, to tell which port a frame arrived on.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} sides SEC(".maps");

// The two endpoints in canonical order (the smaller address, then port,
// first), so that the engine, which knows the flow as its client sees it,
// and this program, which sees source and destination, build the same key
// without knowing which end is the client. Addresses as on the wire; IPv4
// in a[0], b[0].
struct range_key {
	__u32 a[4];
	__u32 b[4];
	__u16 pa;
	__u16 pb;
	__u8 dir; // the side the covered segments arrive on
	__u8 v6;
	__u8 pad[2];
};

struct range_val {
	__u32 lo;
	__u32 hi;
	__u32 ack;
	__u16 win;
	__u16 win_out;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, RANGES);
	__type(key, struct range_key);
	__type(value, struct range_val);
} ranges SEC(".maps");

// [0]: 1 while both ports take redirected frames (the shell checks their
// XDP features); 0: every frame goes to the sockets.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} config SEC(".maps");

// Ordering fence, one per side and queue (key as in `xsks`): `in` counts
// the frames this program gave that queue's socket, `done` (written by the
// worker that owns the socket, through an mmap, no syscall) the frames it
// has taken from the ring and finished with: transmitted, dropped or kept.
// While done < in, frames of this queue still wait in the worker, and a
// segment of a range forwarded here would overtake them: the receiver would
// see the body out of order (SACK, spurious fast retransmits, a halved
// window). So a covered segment is forwarded here only once done has
// caught up with in, and goes to the socket like any other frame until
// then. One cache line
// each, so that this program's writes and the worker's do not share one.
struct fence {
	__u64 in;
	__u64 pad0[7];
	__u64 done;
	__u64 pad1[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * MAX_QUEUES);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fence);
} fences SEC(".maps");

struct kstat {
	__u64 frames;
	__u64 bytes;
	__u64 fenced; // covered segments sent to the socket: fence shut
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kstat);
} stats SEC(".maps");

static __always_inline int to_socket(struct xdp_md *ctx, __u32 side)
{
	__u32 q = ctx->rx_queue_index;
	// No socket of ours serves such a queue (the shell refuses to start).
	if (q >= MAX_QUEUES)
		return XDP_PASS;
	__u32 key = side * MAX_QUEUES + q;
	int act = bpf_redirect_map(&xsks, key, XDP_PASS);
	if (act == XDP_REDIRECT) {
		struct fence *f = bpf_map_lookup_elem(&fences, &key);
		// Atomic: generic XDP may run one queue on two CPUs at once.
		if (f)
			__sync_fetch_and_add(&f->in, 1);
	}
	return act;
}

// Nothing this program gave the queue's socket is still with the worker.
static __always_inline int fence_open(struct xdp_md *ctx, __u32 side)
{
	__u32 key = side * MAX_QUEUES + ctx->rx_queue_index;
	struct fence *f = bpf_map_lookup_elem(&fences, &key);
	if (!f)
		return 0;
	__u64 done = *(volatile __u64 *)&f->done;
	return done >= *(volatile __u64 *)&f->in;
}

// (x, px) < (y, py), addresses compared as big-endian numbers.
static __always_inline int before(const __u32 *x, __u16 px, const __u32 *y, __u16 py)
{
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u32 a = bpf_ntohl(x[i]), b = bpf_ntohl(y[i]);
		if (a != b)
			return a < b;
	}
	return bpf_ntohs(px) < bpf_ntohs(py);
}

static __always_inline void csum_replace2(__u16 *sum, __u16 old, __u16 new)
{
	// RFC 1624: HC' = ~(~HC + ~m + m').
	__u32 c = (__u16)~*sum;
	c += (__u16)~old;
	c += new;
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	*sum = ~c;
}

SEC("xdp")
int enforcer_kpath(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct range_key k = {};
	struct tcphdr *tcp;
	__u32 side, other, len;
	__u32 zero = 0, one = 1;

	__u32 *if0 = bpf_map_lookup_elem(&sides, &zero);
	__u32 *if1 = bpf_map_lookup_elem(&sides, &one);
	if (!if0 || !if1)
		return XDP_PASS;
	if (ctx->ingress_ifindex == *if0)
		side = 0;
	else if (ctx->ingress_ifindex == *if1)
		side = 1;
	else
		return XDP_PASS;

	// Only untagged TCP without IP options' surprises: anything else is
	// the engine's, as without this program.
	if ((void *)(eth + 1) > end)
		return to_socket(ctx, side);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_TCP)
			return to_socket(ctx, side);
		// A fragment (MF set or an offset) never matches.
		if (ip->frag_off & bpf_htons(0x3fff))
			return to_socket(ctx, side);
		tcp = (void *)(ip + 1);
		if ((void *)(tcp + 1) > end)
			return to_socket(ctx, side);
		__u32 tot = bpf_ntohs(ip->tot_len);
		if ((void *)ip + tot > end || tot < sizeof(*ip) + tcp->doff * 4)
			return to_socket(ctx, side);
		len = tot - sizeof(*ip) - tcp->doff * 4;
		k.a[0] = ip->saddr;
		k.b[0] = ip->daddr;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_TCP)
			return to_socket(ctx, side);
		tcp = (void *)(ip6 + 1);
		if ((void *)(tcp + 1) > end)
			return to_socket(ctx, side);
		__u32 pl = bpf_ntohs(ip6->payload_len);
		if ((void *)tcp + pl > end || pl < tcp->doff * 4)
			return to_socket(ctx, side);
		len = pl - tcp->doff * 4;
		__builtin_memcpy(k.a, &ip6->saddr, 16);
		__builtin_memcpy(k.b, &ip6->daddr, 16);
		k.v6 = 1;
	} else {
		return to_socket(ctx, side);
	}
	// Flags within ACK|PSH, ACK set, a payload.
	if (tcp->syn || tcp->fin || tcp->rst || tcp->urg || !tcp->ack || len == 0 || tcp->doff < 5)
		return to_socket(ctx, side);

	k.pa = tcp->source;
	k.pb = tcp->dest;
	if (before(k.b, k.pb, k.a, k.pa)) {
		struct range_key s = k;
		__builtin_memcpy(k.a, s.b, 16);
		__builtin_memcpy(k.b, s.a, 16);
		k.pa = s.pb;
		k.pb = s.pa;
	}
	__u32 *on = bpf_map_lookup_elem(&config, &zero);
	if (!on || !*on)
		return to_socket(ctx, side);
	k.dir = side;
	struct range_val *r = bpf_map_lookup_elem(&ranges, &k);
	if (!r)
		return to_socket(ctx, side);
	// Payload inside [lo, hi), in wrapping arithmetic.
	__u32 span = r->hi - r->lo;
	__u32 seq = bpf_ntohl(tcp->seq);
	if (len > span || seq - r->lo > span - len || bpf_ntohl(tcp->ack_seq) != r->ack ||
	    bpf_ntohs(tcp->window) != r->win)
		return to_socket(ctx, side);
	__u16 win_out = r->win_out;
	struct kstat *st = bpf_map_lookup_elem(&stats, &zero);
	if (!fence_open(ctx, side)) {
		if (st)
			st->fenced += 1;
		return to_socket(ctx, side);
	}

	other = side ^ 1;
	// Only records the target; the frame may still be changed below.
	int act = bpf_redirect_map(&ports, other, 0);
	if (act != XDP_REDIRECT)
		return to_socket(ctx, side);
	if (win_out != r->win) {
		__u16 old = tcp->window;
		__u16 new = bpf_htons(win_out);
		tcp->window = new;
		csum_replace2(&tcp->check, old, new);
	}
	if (st) {
		st->frames += 1;
		st->bytes += (long)end - (long)data;
	}
	return act;
}

char _license[] SEC("license") = "Dual BSD/GPL";
