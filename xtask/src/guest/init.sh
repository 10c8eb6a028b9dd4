#!/bin/busybox sh
# filemr guest init: load modules, share the host's root, bring up rxe0 and pmem, run
# /tmp/out/setup.sh and /tmp/out/run.sh (written by the host) inside a chroot of the host.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "guest: init up, kernel $(uname -r), uptime $(cut -d" " -f1 /proc/uptime) s"
for m in $(cat /modules/order); do
    insmod "/modules/$m" 2>/dev/null || echo "guest: insmod $m failed (ignored)"
done
echo "guest: modules loaded, uptime $(cut -d' ' -f1 /proc/uptime) s"
fail() { echo "guest: FATAL: $*"; poweroff -f; }
opts=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o "$opts,ro" hostroot /host || fail "mount hostroot"
mount -t tmpfs -o size=768m tmp /host/tmp || fail "tmpfs"
mkdir -p /host/tmp/out
mount -t 9p -o "$opts" out /host/tmp/out || fail "mount out"
# The workspace (test binaries) at its own path, visible even when it lives under /tmp.
repo=$(cat /host/tmp/out/repo_path)
mkdir -p "/host$repo"
mount -t 9p -o "$opts,ro" repo "/host$repo" || fail "mount repo $repo"
mount -t devtmpfs devtmpfs /host/dev || fail "dev"
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
# A writable /run for `ip netns` (it keeps the namespaces' handles in /run/netns).
mount -t tmpfs -o size=16m run /host/run || fail "run tmpfs"
ip link set lo up
ip link set eth0 mtu 9000 || fail "eth0 mtu"
ip link set eth0 up || fail "no eth0"
ip addr add 198.18.0.2/24 dev eth0
chroot /host /bin/sh /tmp/out/setup.sh > /host/tmp/out/setup.log 2>&1 || { cat /host/tmp/out/setup.log; fail "setup"; }
cat /host/tmp/out/setup.log
echo "guest: running tests"
chroot /host /bin/sh /tmp/out/run.sh
sync
touch /host/tmp/out/done
echo "guest: done"
poweroff -f
