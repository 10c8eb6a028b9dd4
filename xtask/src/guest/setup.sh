# Runs inside the chroot of the host's root (as root in the guest), after the exports of
# run.sh (qemu.rs prepends them): the topology below is the one they name.
set -e
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
rdma link add rxe0 type rxe netdev eth0
t0=$(date +%s%N)
# Two more rxe devices, joined by a veth link. Both ends stay in the root network
# namespace: rxe on these kernels receives and routes there only (docs/harness.md). A
# client bound to the peer's address leaves on the peer's netdev; accept_local lets the
# other end take packets whose source is an address of this host.
srv=$FILEMR_SERVER_NETDEV peer=$FILEMR_PEER_NETDEV
ip link add "$srv" mtu 9000 type veth peer name "$peer" mtu 9000
for d in "$srv" "$peer"; do
    # No IPv6 on the link: its neighbour discovery would muddle the packet counts.
    sysctl -qw "net.ipv4.conf.$d.accept_local=1" "net.ipv6.conf.$d.disable_ipv6=1"
done
ip addr add "$FILEMR_SERVER_ADDR/24" dev "$srv"
ip addr add "$FILEMR_PEER_ADDR/24" dev "$peer"
ip link set "$srv" up
ip link set "$peer" up
rdma link add "$FILEMR_SERVER_DEVICE" type rxe netdev "$srv"
rdma link add "$FILEMR_PEER_DEVICE" type rxe netdev "$peer"
t1=$(date +%s%N)
echo "guest: $FILEMR_SERVER_DEVICE and $FILEMR_PEER_DEVICE up in $(( (t1 - t0) / 1000000 )) ms"
mkdir -p /tmp/dax /tmp/pc /tmp/xdax
mkfs.ext4 -q -F -b 4096 /dev/pmem0
mount -o dax /dev/pmem0 /tmp/dax
mkfs.ext4 -q -F -b 4096 /dev/pmem1
mount /dev/pmem1 /tmp/pc
mkfs.xfs -q -f -m reflink=0 /dev/pmem2
mount -o dax /dev/pmem2 /tmp/xdax
if ibv_devinfo -v -d rxe0 | grep -A2 general_odp_caps | grep -q ODP_SUPPORT; then echo yes > /tmp/out/odp; else echo no > /tmp/out/odp; fi
echo "guest: rxe0 up, odp=$(cat /tmp/out/odp); mounts:"
grep pmem /proc/mounts
