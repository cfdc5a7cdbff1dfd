#!/usr/bin/env bash
# Builds the tiny bootable test guest of SPEC §5 (idempotent, cached):
#   DIR/vmlinuz    Debian's cloud kernel (ACPI + PCIe hotplug built in)
#   DIR/initrd.gz  busybox-static + an /init, + the modules the networking tests need
#   DIR/info       kernel and busybox versions it was built from
# The /init mounts proc, sys and devtmpfs, prints HVGUEST-READY on the console
# and sleeps. Kernel command line switches (read from /proc/cmdline):
#   hv_modules=1      insmod the shipped modules (virtio, virtiofs, 8021q, bonding, dummy, ...)
#   hv_virtiofs=TAG   (implies hv_modules=1) mount virtiofs TAG at /host, bind the
#                     guest's /proc /sys /dev into it, a tmpfs on /host/run
#   hv_cmd=BASE64     after the ready marker: run the decoded shell command in
#                     `chroot /host /bin/sh -c`, print "HVGUEST-EXIT <rc>", power off
# Usage: scripts/guest.sh build [DIR] | clean [DIR]
#   DIR defaults to $HOOKVISOR_GUEST_DIR, else var/guest (relative to the repo).
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."

# The modules the virtiofs/networking flavour loads, in this order; their own
# dependencies come first, as modprobe resolves them from the package's modules.dep.
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
         fuse virtiofs llc stp garp mrp 8021q tls bonding dummy
         virtio_net virtio_blk veth bridge macvlan)
# No bond0/dummy0 appear by themselves (Debian's own modprobe.d says the same):
# the tests create the links they want.
declare -A MODOPTS=([bonding]="max_bonds=0" [dummy]="numdummies=0")

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

need_tools() {
    local missing=() p
    command -v cpio >/dev/null || missing+=(cpio)
    command -v depmod >/dev/null || [ -x /usr/sbin/depmod ] || [ -x /sbin/depmod ] || missing+=(kmod)
    if ((${#missing[@]})); then
        echo "guest: installing ${missing[*]}" >&2
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
}

# The versioned kernel package the metapackage points to (linux-image-<ver>-cloud-amd64).
kernel_package() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[^ ]*-cloud-amd64\)$/\1/p' | head -n1
}

# Our own hash: a change to this script (the recipe) invalidates the cache.
recipe() { sha256sum "$SELF" | cut -d' ' -f1; }

cached() {
    local dir=$1
    [ -s "$dir/vmlinuz" ] && [ -s "$dir/initrd.gz" ] && [ -f "$dir/recipe" ] &&
        [ "$(cat "$dir/recipe")" = "$(recipe)" ]
}

write_init() {
    cat >"$1" <<'INIT'
#!/bin/sh
# hookvisor tiny guest (scripts/guest.sh). PID 1: never exits.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
modules=0 fs= cmd=
for w in $(cat /proc/cmdline); do
    case "$w" in
        hv_modules=1) modules=1 ;;
        hv_virtiofs=*) fs=${w#hv_virtiofs=}; modules=1 ;;
        hv_cmd=*) cmd=${w#hv_cmd=} ;;
    esac
done
if [ "$modules" = 1 ]; then
    while read -r m args; do
        insmod "/lib/modules/$m" $args || echo "HVGUEST-ERROR insmod $m"
    done </etc/hvguest-modules
fi
ip link set lo up
if [ -n "$fs" ]; then
    mkdir -p /host
    if mount -t virtiofs "$fs" /host; then
        for d in proc sys dev; do mount --bind "/$d" "/host/$d"; done
        mount -t tmpfs tmpfs /host/run
    else
        echo "HVGUEST-ERROR mount virtiofs $fs"
    fi
fi
echo HVGUEST-READY
if [ -n "$cmd" ]; then
    c=$(echo "$cmd" | base64 -d)
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        chroot /host /bin/sh -c "$c"
    echo "HVGUEST-EXIT $?"
    sync
    poweroff -f
fi
while :; do sleep 3600; done
INIT
    chmod 755 "$1"
}

build() {
    local dir=$1
    if cached "$dir"; then
        echo "guest: cached in $dir" >&2
        return 0
    fi
    need_tools
    export PATH="$PATH:/usr/sbin:/sbin"
    local pkg
    pkg=$(kernel_package)
    if [ -z "$pkg" ]; then
        $SUDO apt-get update -qq
        pkg=$(kernel_package)
    fi
    [ -n "$pkg" ] || { echo "guest: cannot resolve linux-image-cloud-amd64" >&2; return 1; }

    mkdir -p "$dir/debs"
    local work
    work=$(mktemp -d "$dir/.build.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    # Downloaded once: kept in DIR/debs, reused while the kernel version holds.
    if ! ls "$dir/debs/${pkg}_"*.deb >/dev/null 2>&1 || ! ls "$dir/debs/busybox-static_"*.deb >/dev/null 2>&1; then
        rm -f "$dir/debs/"*.deb
        # Root downloads as root: apt's _apt sandbox user may not write into DIR.
        (cd "$dir/debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg" busybox-static)
    fi
    dpkg-deb -x "$dir/debs/${pkg}_"*.deb "$work/k"
    dpkg-deb -x "$dir/debs/busybox-static_"*.deb "$work/bb"
    local kver
    kver=$(basename "$(ls -d "$work/k/lib/modules/"*)")

    local root=$work/root
    mkdir -p "$root"/{bin,dev,proc,sys,run,tmp,host,etc,lib/modules}
    cp "$work/bb/bin/busybox" "$root/bin/busybox"
    local applet
    for applet in $("$root/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    # The kernel opens /dev/console before /init runs; without the node /init
    # starts with no stdout until it has mounted devtmpfs.
    [ "$(id -u)" = 0 ] && mknod -m 600 "$root/dev/console" c 5 1
    write_init "$root/init"

    # Debian's package has no modules.dep (its postinst makes it): make one.
    depmod -b "$work/k" "$kver"
    local moddir=$work/k/lib/modules/$kver/ line path name seen=" "
    : >"$root/etc/hvguest-modules"
    local m
    for m in "${MODULES[@]}"; do
        # -C /dev/null: the host's modprobe.d options do not leak in; ours are MODOPTS.
        while read -r line; do
            case "$line" in insmod\ *) ;; *) continue ;; esac
            path=${line#insmod }
            path=${path%% *}
            name=$(basename "$path")
            name=${name%%.ko*}
            case "$seen" in *" $name "*) continue ;; esac
            seen="$seen$name "
            # busybox insmod reads plain ELF only: decompress .ko.xz/.ko.zst.
            case "$path" in
                *.ko.xz) xz -dc "$path" >"$root/lib/modules/$name.ko" ;;
                *.ko.zst) zstd -qdc "$path" >"$root/lib/modules/$name.ko" ;;
                *.ko.gz) gzip -dc "$path" >"$root/lib/modules/$name.ko" ;;
                *) cp "$path" "$root/lib/modules/$name.ko" ;;
            esac
            echo "$name.ko ${MODOPTS[$name]:-}" >>"$root/etc/hvguest-modules"
        done < <(modprobe -C /dev/null -d "$work/k" -S "$kver" --show-depends "$m")
        case "$seen" in *" ${m//-/_} "*) ;; *)
            echo "guest: module $m not found in $pkg" >&2; return 1 ;;
        esac
    done

    (cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) | gzip -9 >"$work/initrd.gz"
    cp "$work/k/boot/vmlinuz-$kver" "$work/vmlinuz"
    printf 'kernel=%s\nbusybox=%s\nmodules=%s\n' "$pkg" \
        "$(basename "$dir/debs/busybox-static_"*.deb .deb)" "$(tr '\n' ' ' <"$root/etc/hvguest-modules")" \
        >"$work/info"
    # Files replaced by rename: a reader never sees half an image.
    mv -f "$work/vmlinuz" "$dir/vmlinuz"
    mv -f "$work/initrd.gz" "$dir/initrd.gz"
    mv -f "$work/info" "$dir/info"
    recipe >"$dir/recipe"
    echo "guest: built $dir (kernel $kver)" >&2
}

cmd=${1:-build}
dir=${2:-${HOOKVISOR_GUEST_DIR:-var/guest}}
case "$cmd" in
    build)
        mkdir -p "$dir"
        # One build at a time (a test fixture and test.sh may both ask).
        exec 9>"$dir/.lock"
        flock 9
        build "$dir"
        ;;
    clean) rm -rf "$dir" ;;
    *) echo "usage: $0 build [DIR] | clean [DIR]" >&2; exit 2 ;;
esac
