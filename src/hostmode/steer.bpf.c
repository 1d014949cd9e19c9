// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
// Host-mode steering: IP frames addressed to the host endpoint go to the
// AF_XDP socket of their RX queue; ARP, IPv6 neighbour discovery and all
// other traffic stay with the kernel. With no socket bound on a queue the
// frame gets the configured fallback (XDP_PASS = fail open, XDP_DROP = fail
// closed), so a dead enforcer never black-holes more than it was told to.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_QUEUES 64

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
} host_v4 SEC(".maps");

struct v6_key {
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct v6_key);
	__type(value, __u8);
} host_v6 SEC(".maps");

// [0]: fallback action when no socket is bound (XDP_PASS or XDP_DROP).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} config SEC(".maps");

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

static __always_inline int to_socket(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u32 *fallback = bpf_map_lookup_elem(&config, &zero);
	__u64 act = fallback ? *fallback : XDP_PASS;
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, act);
}

SEC("xdp")
int enforcer_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *l3;
	__u16 proto;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	proto = eth->h_proto;
	l3 = eth + 1;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct vlan_hdr *v = l3;
		if ((void *)(v + 1) > end)
			return XDP_PASS;
		proto = v->proto;
		l3 = v + 1;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return XDP_PASS;
		__u32 dst = ip->daddr;
		if (!bpf_map_lookup_elem(&host_v4, &dst))
			return XDP_PASS;
		return to_socket(ctx);
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return XDP_PASS;
		struct v6_key k;
		__builtin_memcpy(k.addr, &ip6->daddr, 16);
		if (!bpf_map_lookup_elem(&host_v6, &k))
			return XDP_PASS;
		// Neighbour discovery (RS/RA/NS/NA/redirect) belongs to the kernel.
		if (ip6->nexthdr == IPPROTO_ICMPV6) {
			__u8 *type = (void *)(ip6 + 1);
			if ((void *)(type + 1) > end)
				return XDP_PASS;
			if (*type >= 133 && *type <= 137)
				return XDP_PASS;
		}
		return to_socket(ctx);
	}
	return XDP_PASS;
}

// The re-entry veth's far end (host mode with a veth instead of the TAP):
// everything the host sends into the pair goes to the worker's socket of
// its queue; nothing else listens in the far end's namespace.
SEC("xdp")
int enforcer_reent(struct xdp_md *ctx)
{
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_DROP);
}

char _license[] SEC("license") = "Dual BSD/GPL";
