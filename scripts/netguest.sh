#!/usr/bin/env bash
# Builds the tiny guest that runs the host's Python under a full kernel (SPEC §5):
# Debian's cloud kernel plus an initramfs of busybox-static and the modules for
# virtio, virtiofs, bridges, veth, 802.1Q, bonding and dummy links. The host's
# root is mounted read-write over virtiofs at /host; the guest mounts its own
# proc, sys, dev, /tmp and /run over it (so nothing it does reaches the host's
# kernel state), runs `sh <script>` chrooted there (the script named by
# `hv.cmd=` on the kernel command line) and powers off.
#
# Usage: scripts/netguest.sh [CACHE_DIR]   (default /var/tmp/hookvisor-netguest)
# Prints the directory holding vmlinuz and initrd.img. Needs root, apt-get,
# dpkg-deb, depmod and cpio. Rebuilt only when missing.
set -euo pipefail
cache=${1:-/var/tmp/hookvisor-netguest}
kernel_pkg=${HOOKVISOR_GUEST_KERNEL:-linux-image-cloud-amd64}
modules=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
         fuse virtiofs llc stp bridge veth garp mrp 8021q tls bonding dummy)
mkdir -p "$cache"
if [[ -s $cache/vmlinuz && -s $cache/initrd.img ]]; then
    echo "$cache"
    exit 0
fi
cd "$cache"
# The meta package names the versioned one; download both tools as .debs.
real_pkg=$(apt-cache depends "$kernel_pkg" | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' \
           | head -n 1)
real_pkg=${real_pkg:-$kernel_pkg}
ls ./"$real_pkg"_*.deb >/dev/null 2>&1 || apt-get download "$real_pkg" >&2
ls ./busybox-static_*.deb >/dev/null 2>&1 || apt-get download busybox-static >&2
rm -rf k bb root
mkdir k bb root
dpkg-deb -x "$(ls ./"$real_pkg"_*.deb | head -n 1)" k
dpkg-deb -x "$(ls ./busybox-static_*.deb | head -n 1)" bb
kver=$(ls k/lib/modules | head -n 1)
depmod -b k "$kver"

mkdir -p root/bin root/mods root/proc root/sys root/dev root/host
cp bb/bin/busybox root/bin/busybox
: > root/mods/order
for m in "${modules[@]}"; do
    path=$(sed -n "s#^\(kernel/[^:]*/$m\.ko\):.*#\1#p" "k/lib/modules/$kver/modules.dep")
    [[ -n $path ]] || { echo "module $m not found in $kver" >&2; exit 1; }
    cp "k/lib/modules/$kver/$path" root/mods/
    echo "$m.ko" >> root/mods/order
done
cat > root/init <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m || echo "HV-MODULE-FAILED $m"; done
mount -t virtiofs hostroot /host || echo "HV-NO-VIRTIOFS"
# The guest's own kernel state and scratch space, over the host's directories.
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mount -t tmpfs tmp /host/tmp
mount -t tmpfs run /host/run
ip link set lo up 2>/dev/null
cmd=$(sed -n 's/.*hv\.cmd=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "HV-READY $cmd"
chroot /host /bin/sh "$cmd"
echo "HV-RC=$?"
sync
poweroff -f
EOF
chmod 755 root/init
(cd root && find . | cpio -o -H newc --quiet | gzip -1) > initrd.img.tmp
cp "k/boot/vmlinuz-$kver" vmlinuz.tmp
mv initrd.img.tmp initrd.img
mv vmlinuz.tmp vmlinuz
rm -rf k bb root
echo "$cache"
