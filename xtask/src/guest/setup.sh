# Runs inside the chroot of the host's root (as root in the guest).
set -e
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
rdma link add rxe0 type rxe netdev eth0
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
